//! `authorization.k8s.io/v1`: asking what RBAC allows, without doing it.
//!
//! - `selfsubjectaccessreviews`: may I do this? (`kubectl auth can-i`)
//! - `selfsubjectrulesreviews`: what may I do in this namespace? (`kubectl auth can-i --list`)
//! - `subjectaccessreviews`: may this user, in these groups, do this? (cluster-wide)
//! - `localsubjectaccessreviews`: the same, in one namespace.
//!
//! Each is create-only and stores nothing: the answer is the request with its `status`
//! filled in. Who may ask is RBAC's to say too (`system:basic-user` lets everyone ask
//! about themselves; `admin` grants local reviews in its namespace). The answers are
//! RBAC's: what a node's credential may do is the Node authorizer's, which these do not
//! consult.

use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIResourceList};
use serde_json::{Value, json};

use skiff_api::validation::{FieldError, FieldErrorType};

use super::request::{self, json_response};
use crate::auth::Identity;
use crate::auth::rbac::{Attributes, Subject as RbacSubject};
use crate::error::{ApiError, ApiResult, Subject};
use crate::state::SharedApi;

pub(super) const GROUP: &str = "authorization.k8s.io";
const VERSION: &str = "v1";

/// The reviews: resource, kind, namespaced.
const REVIEWS: [(&str, &str, bool); 4] = [
    ("selfsubjectaccessreviews", "SelfSubjectAccessReview", false),
    ("selfsubjectrulesreviews", "SelfSubjectRulesReview", false),
    ("subjectaccessreviews", "SubjectAccessReview", false),
    (
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
];

pub(super) fn api_group(name: &str) -> Option<APIGroup> {
    (name == GROUP).then(|| super::discovery::one_version_group(GROUP, VERSION))
}

pub(super) fn resource_list(group: &str, version: &str) -> Option<APIResourceList> {
    (group == GROUP && version == VERSION)
        .then(|| super::discovery::reviews(GROUP, VERSION, &REVIEWS))
}

/// `POST /apis/authorization.k8s.io/v1/...`.
pub(super) async fn review(
    State(api): State<SharedApi>,
    Path(rest): Path<String>,
    method: Method,
    identity: Option<Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let identity = identity
        .map(|Extension(i)| i)
        .unwrap_or(Identity::Anonymous);
    serve(&api, &rest, &method, &identity, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn invalid(kind: &'static str, plural: &'static str, field: &str, message: &str) -> ApiError {
    ApiError::Invalid(
        Subject::virtual_resource(GROUP, plural, kind, ""),
        vec![FieldError {
            field: field.into(),
            reason: FieldErrorType::Required,
            message: message.into(),
        }],
    )
}

async fn serve(
    api: &SharedApi,
    rest: &str,
    method: &Method,
    identity: &Identity,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, resource) = match segments.as_slice() {
        [resource] => (None, *resource),
        ["namespaces", ns, resource] => (Some(*ns), *resource),
        _ => return Err(ApiError::NoRoute),
    };
    let Some(&(plural, kind, namespaced)) = REVIEWS.iter().find(|(r, ..)| *r == resource) else {
        return Err(ApiError::NoRoute);
    };
    if namespaced != namespace.is_some() {
        return Err(ApiError::NoRoute);
    }
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "{plural}.{GROUP} can only be created: they ask, and store nothing"
        )));
    }
    request::require_json(headers)?;
    let bytes = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let mut review = request::parse_json(&bytes)?;
    if !review.is_object() {
        return Err(ApiError::BadRequest(format!(
            "a {kind} must be a JSON object"
        )));
    }
    let spec = review.get("spec").cloned().unwrap_or(Value::Null);
    let status = match plural {
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().filter(|s| !s.is_empty());
            rules_review(api, &identity.subject(), ns)
        }
        _ => {
            let subject = match plural {
                "selfsubjectaccessreviews" => identity.subject(),
                _ => {
                    let user = spec["user"].as_str().unwrap_or_default().to_string();
                    let groups: Vec<String> = spec["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect();
                    if user.is_empty() && groups.is_empty() {
                        return Err(invalid(
                            kind,
                            plural,
                            "spec.user",
                            "at least one of user or group must be specified",
                        ));
                    }
                    RbacSubject { user, groups }
                }
            };
            let attrs = attributes_of(&spec, kind, plural, namespace)?;
            match api.rbac.authorize(&subject, &attrs) {
                Some(grant) if grant.binding.is_empty() => {
                    json!({"allowed": true, "reason": "the user is in system:masters"})
                }
                Some(grant) => json!({
                    "allowed": true,
                    "reason": format!(
                        "RBAC: allowed by {} of {} to {}",
                        grant.binding, grant.role, subject.user
                    ),
                }),
                None => json!({"allowed": false, "reason": ""}),
            }
        }
    };
    review["status"] = status;
    review["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    review["kind"] = json!(kind);
    if review.get("metadata").is_none_or(Value::is_null) {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = Value::Null;
    Ok(json_response(StatusCode::CREATED, &review))
}

/// What a review's `spec` asks about.
fn attributes_of(
    spec: &Value,
    kind: &'static str,
    plural: &'static str,
    namespace: Option<&str>,
) -> ApiResult<Attributes> {
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
    let opt = |v: &Value, k: &str| v[k].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    match (
        spec.get("resourceAttributes").filter(|v| !v.is_null()),
        spec.get("nonResourceAttributes").filter(|v| !v.is_null()),
    ) {
        (Some(r), None) => {
            let mut ns = opt(r, "namespace");
            if let Some(local) = namespace {
                match &ns {
                    Some(n) if n != local => {
                        return Err(invalid(
                            kind,
                            plural,
                            "spec.resourceAttributes.namespace",
                            "must match the namespace of the request",
                        ));
                    }
                    _ => ns = Some(local.to_string()),
                }
            }
            Ok(Attributes::Resource {
                verb: text(r, "verb"),
                namespace: ns,
                group: text(r, "group"),
                resource: text(r, "resource"),
                subresource: opt(r, "subresource"),
                name: opt(r, "name"),
            })
        }
        (None, Some(n)) => Ok(Attributes::NonResource {
            verb: text(n, "verb"),
            path: text(n, "path"),
        }),
        _ => Err(invalid(
            kind,
            plural,
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

/// A SelfSubjectRulesReview's status: every rule the user holds in `namespace`.
fn rules_review(api: &SharedApi, subject: &RbacSubject, namespace: Option<&str>) -> Value {
    let rules = api.rbac.rules_for(subject, namespace);
    let resource_rules: Vec<Value> = rules
        .iter()
        .filter(|r| r.non_resource_urls.is_empty())
        .map(|r| r.to_json())
        .collect();
    let non_resource_rules: Vec<Value> = rules
        .iter()
        .filter(|r| !r.non_resource_urls.is_empty())
        .map(|r| json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}))
        .collect();
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}
