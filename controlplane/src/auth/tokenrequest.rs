//! `POST .../serviceaccounts/NAME/token`: an `authentication.k8s.io/v1` TokenRequest,
//! answered with a signed token (`satokens.rs`) and never stored, as Kubernetes does.
//!
//! The ServiceAccount must exist; a token may be bound to a pod (`boundObjectRef` of
//! kind Pod) that runs as that ServiceAccount, and then dies with the pod. A node may
//! only ask for tokens bound to a pod bound to it (Kubernetes' NodeRestriction): the
//! agent mounts them into that pod.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::validation::FieldError;

use super::authn::Identity;
use super::satokens::{self, MAX_EXPIRATION_SECONDS, Named, TokenSpec};
use crate::apiserver::Target;
use crate::error::{ApiError, ApiResult, Subject};
use crate::kinds::fields::invalid;
use crate::objects;
use crate::state::ApiServer;

/// Largest TokenRequest body read: it holds a few names and audiences.
const MAX_TOKEN_REQUEST_BYTES: usize = 64 * 1024;
/// Most audiences one token may carry.
const MAX_AUDIENCES: usize = 32;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn uid_of(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn pods() -> &'static skiff_api::resources::ResourceInfo {
    crate::kinds::lookup("", "v1", "pods").expect("pods are served")
}

fn refused(name: &str, causes: Vec<FieldError>) -> ApiError {
    ApiError::Invalid(
        Subject::virtual_resource(
            "authentication.k8s.io",
            "tokenrequests",
            "TokenRequest",
            name,
        ),
        causes,
    )
}

/// Serves a TokenRequest for the ServiceAccount `target` names.
pub(crate) async fn request_token(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let namespace = target.namespace.clone().unwrap_or_default();
    let name = target.name().to_string();
    let bytes = crate::apiserver::read_body(headers, body, MAX_TOKEN_REQUEST_BYTES).await?;
    let request = crate::apiserver::parse_body(&bytes)?;
    if let Some(kind) = request.get("kind").and_then(Value::as_str)
        && kind != "TokenRequest"
    {
        return Err(ApiError::BadRequest(format!(
            "the body of a token request must be a TokenRequest, not a {kind}"
        )));
    }
    let spec = &request["spec"];
    let audiences = satokens::audiences_of(spec.get("audiences"));
    let min = api.service_accounts.min_expiration();
    let mut causes = Vec::new();
    if audiences.len() > MAX_AUDIENCES {
        causes.push(invalid(
            "spec.audiences",
            &audiences.len().to_string(),
            &format!("may not name more than {MAX_AUDIENCES} audiences"),
        ));
    }
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => satokens::DEFAULT_EXPIRATION_SECONDS,
        Some(v) => match v.as_i64() {
            Some(s) if s < min => {
                causes.push(invalid(
                    "spec.expirationSeconds",
                    &s.to_string(),
                    &format!("may not specify a duration less than {min} seconds"),
                ));
                s
            }
            // Kubernetes caps a request at its maximum rather than refusing it.
            Some(s) => s.min(MAX_EXPIRATION_SECONDS),
            None => {
                causes.push(invalid(
                    "spec.expirationSeconds",
                    &v.to_string(),
                    "must be a whole number of seconds",
                ));
                0
            }
        },
    };
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    if let Some(b) = bound
        && b["kind"].as_str() != Some("Pod")
    {
        causes.push(invalid(
            "spec.boundObjectRef.kind",
            b["kind"].as_str().unwrap_or_default(),
            "only a Pod may be bound to a token here (Kubernetes also allows Secret and Node)",
        ));
    }
    if !causes.is_empty() {
        return Err(refused(&name, causes));
    }

    let accounts = target.info;
    let account = api
        .store
        .get(&accounts.key(Some(&namespace), &name))
        .await
        .map_err(|e| ApiError::from_store(e, accounts, &name))?
        .ok_or_else(|| ApiError::not_found(accounts, &name))?;
    let service_account = Named {
        name: name.clone(),
        uid: uid_of(&account.object),
    };

    let pod = match bound {
        Some(b) => Some(bound_pod(api, &namespace, &name, b).await?),
        None => None,
    };
    if let Identity::Node { name: node, .. } = identity {
        let on_node = pod
            .as_ref()
            .is_some_and(|(_, n)| n.as_deref() == Some(node.as_str()));
        if !on_node {
            return Err(ApiError::Forbidden(format!(
                "serviceaccounts \"{name}\" is forbidden: node \"{node}\" may only request tokens bound to a pod bound to it"
            )));
        }
    }
    let (token, exp) = api.service_accounts.issue(
        &TokenSpec {
            namespace: &namespace,
            service_account,
            pod: pod.map(|(p, _)| p),
            audiences: audiences.clone(),
            expiration_seconds: expiration,
        },
        unix_now(),
    );
    let expires = jiff::Timestamp::from_second(exp)
        .map(objects::format_time)
        .unwrap_or_default();
    let audiences = if audiences.is_empty() {
        vec![satokens::ISSUER.to_string()]
    } else {
        audiences
    };
    let mut response_spec = json!({"audiences": audiences, "expirationSeconds": expiration});
    if let Some(b) = bound {
        response_spec["boundObjectRef"] = b.clone();
    }
    let answer = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": objects::now_rfc3339(),
        },
        "spec": response_spec,
        "status": {"token": token, "expirationTimestamp": expires},
    });
    Ok(crate::apiserver::json_response(
        StatusCode::CREATED,
        &answer,
    ))
}

/// The pod a request binds its token to, and the node it is bound to: it must exist
/// (with the uid given, if any) and run as the ServiceAccount.
async fn bound_pod(
    api: &ApiServer,
    namespace: &str,
    account: &str,
    bound: &Value,
) -> ApiResult<(Named, Option<String>)> {
    let name = bound["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(refused(
            account,
            vec![crate::kinds::fields::required("spec.boundObjectRef.name")],
        ));
    }
    let info = pods();
    let pod = api
        .store
        .get(&info.key(Some(namespace), name))
        .await
        .map_err(|e| ApiError::from_store(e, info, name))?
        .ok_or_else(|| ApiError::not_found(info, name))?;
    let uid = uid_of(&pod.object);
    if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
        && want != uid
    {
        return Err(ApiError::Conflict(
            Subject::new(info, name),
            format!(
                "the UID in the bound object reference ({want}) does not match the pod's ({uid})"
            ),
        ));
    }
    let runs_as = pod
        .object
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or(crate::kinds::serviceaccount::DEFAULT);
    if runs_as != account {
        return Err(ApiError::BadRequest(format!(
            "cannot bind a token for serviceaccount \"{account}\" to pod \"{name}\", which runs as serviceaccount \"{runs_as}\""
        )));
    }
    let node = pod
        .object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((
        Named {
            name: name.to_string(),
            uid,
        },
        node,
    ))
}
