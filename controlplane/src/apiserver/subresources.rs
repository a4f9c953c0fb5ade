//! The `scale` subresource (an `autoscaling/v1` Scale view of `spec.replicas`) and
//! `pods/binding`, which assigns a pod to a node exactly once. Their writes are rounds of
//! `crud::guaranteed_update`. (`pods/eviction` is in `eviction.rs`.)

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;
use skiff_api::selector::LabelSelector;

use super::Target;
use super::crud::{
    Change, Outcome, Round, apply_patch, get_stored, guaranteed_update, patch_type, precondition_of,
};
use super::request::{self, json_response};
use crate::error::{ApiError, ApiResult, Subject};
use crate::objects::{self, meta_mut, set_path};
use crate::state::ApiServer;

/// The Scale view of a workload: its `spec.replicas` (or what its kind runs without
/// one) and its pods' selector, as a label query.
/// A JSON pointer from field names.
fn pointer(fields: &[String]) -> String {
    fields.iter().map(|f| format!("/{f}")).collect()
}

fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let kind = crate::kinds::of(info);
    let (spec, status) = kind.replicas_fields();
    let selector = kind
        .scale_selector(obj)
        .and_then(|s| serde_json::from_value(s).ok())
        .and_then(|s| LabelSelector::from_label_selector(&s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
            "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(&pointer(&spec)).cloned().unwrap_or(json!(kind.default_replicas()))},
        "status": {
            "replicas": obj.pointer(&pointer(&status)).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

pub(crate) async fn get_scale(api: &ApiServer, target: &Target) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &read_scale(api, target).await?,
    ))
}

/// The Scale of a stored object of a kind with a `scale` subresource.
pub(crate) async fn read_scale(api: &ApiServer, target: &Target) -> ApiResult<Value> {
    let stored = get_stored(api, target.info, &target.key(), target.name()).await?;
    Ok(scale_of(target.info, &stored.object))
}

/// Sets `spec.replicas` from a desired Scale, with compare-and-swap.
async fn write_scale<F>(api: &ApiServer, target: &Target, desired: F) -> ApiResult<Response>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let scale = write_scale_value(api, target, desired).await?;
    Ok(json_response(StatusCode::OK, &scale))
}

/// [`write_scale`], answering the Scale written; what the server's own loops (the
/// autoscaler) call, so their writes are checked and versioned as a `kubectl scale` is.
pub(crate) async fn write_scale_value<F>(
    api: &ApiServer,
    target: &Target,
    mut desired: F,
) -> ApiResult<Value>
where
    F: FnMut(&Value) -> ApiResult<Value>,
{
    let info = target.info;
    let name = target.name();
    let outcome = guaranteed_update(api, info, &target.key(), name, |current| {
        let scale = desired(&scale_of(info, &current.object))?;
        let precondition = precondition_of(&scale)?;
        if precondition.is_some_and(|rv| rv != current.rev) {
            return Err(ApiError::Conflict(
                Subject::new(info, name),
                "the object has been modified; please apply your changes to the latest version and try again".into(),
            ));
        }
        let replicas = match scale.pointer("/spec/replicas") {
            Some(Value::Number(n))
                if n.as_i64()
                    .is_some_and(|n| (0..=i64::from(i32::MAX)).contains(&n)) =>
            {
                n.clone()
            }
            other => {
                return Err(ApiError::Invalid(
                    Subject::new(info, name).with_kind("Scale"),
                    vec![skiff_api::validation::FieldError {
                        field: "spec.replicas".into(),
                        reason: skiff_api::validation::FieldErrorType::Invalid,
                        message: format!(
                            "Invalid value: {}: must be greater than or equal to 0",
                            other.cloned().unwrap_or_default()
                        ),
                    }],
                ));
            }
        };
        // An App that scales itself has one autoscaler already: a second (an HPA, or
        // `kubectl scale`) would be overridden at its next decision.
        if info.kind == skiff_api::app::KIND
            && current
                .object
                .pointer("/spec/autoscale")
                .is_some_and(|a| !a.is_null())
        {
            return Err(ApiError::Conflict(
                Subject::new(info, name),
                "the App scales itself (spec.autoscale); remove spec.autoscale to set its replicas or to let a HorizontalPodAutoscaler scale it".into(),
            ));
        }
        let mut obj = (*current.object).clone();
        let (spec, _) = crate::kinds::of(info).replicas_fields();
        let change = if obj.pointer(&pointer(&spec)) != Some(&Value::Number(replicas.clone())) {
            let fields: Vec<&str> = spec.iter().map(String::as_str).collect();
            set_path(&mut obj, &fields, Value::Number(replicas));
            let generation = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), json!(generation + 1));
            Change::Update(obj)
        } else {
            Change::None(scale_of(info, &current.object))
        };
        Ok(Round {
            change,
            retry: precondition.is_none(),
        })
    })
    .await?;
    Ok(match outcome {
        Outcome::Unchanged(scale) => scale,
        Outcome::Updated(stored) | Outcome::Deleted(stored) => {
            scale_of(target.info, &stored.object)
        }
    })
}

pub(crate) async fn put_scale(
    api: &ApiServer,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    request::require_json(headers)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let scale = request::parse_json(&body)?;
    if scale
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Scale")
    {
        return Err(ApiError::BadRequest(
            "the body must be an autoscaling/v1 Scale".into(),
        ));
    }
    write_scale(api, target, |_| Ok(scale.clone())).await
}

pub(crate) async fn patch_scale(
    api: &ApiServer,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = patch_type(headers)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let (info, name) = (target.info, target.name().to_string());
    write_scale(api, target, |current| {
        let patched = apply_patch(info, &name, kind, current, &body)?;
        // The Scale view carries the current resourceVersion; only a changed one is a precondition.
        let mut patched = patched;
        if objects::resource_version(&patched) == objects::resource_version(current) {
            meta_mut(&mut patched).remove("resourceVersion");
        }
        Ok(patched)
    })
    .await
}

/// `POST pods/NAME/binding`: sets `spec.nodeName` once. A pod already bound, even to the
/// same node, is a Conflict, so two schedulers can never both win.
pub(crate) async fn bind(
    api: &ApiServer,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    request::require_json(headers)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let binding = request::parse_json(&body)?;
    let info = target.info;
    let name = target.name();
    if let Some(n) = objects::meta_str(&binding, "name")
        && n != name
    {
        return Err(ApiError::BadRequest(format!(
            "the name of the binding ({n}) does not match the pod ({name})"
        )));
    }
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::Invalid(
            Subject::new(info, name).with_kind("Binding"),
            vec![skiff_api::validation::FieldError {
                field: "target.name".into(),
                reason: skiff_api::validation::FieldErrorType::Required,
                message: "Required value".into(),
            }],
        ));
    }
    bind_pod(
        api,
        target.namespace.as_deref().unwrap_or_default(),
        name,
        &node,
    )
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// Assigns a pod to a node with compare-and-swap: a pod already bound, even to the same
/// node, is a Conflict. Shared by `pods/binding` and the in-process scheduler.
pub async fn bind_pod(api: &ApiServer, namespace: &str, name: &str, node: &str) -> ApiResult<()> {
    let info = crate::kinds::lookup("", "v1", "pods").expect("pods are served");
    let key = info.key(Some(namespace), name);
    guaranteed_update(api, info, &key, name, |current| {
        let obj = &*current.object;
        if let Some(existing) = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::Conflict(
                Subject::new(info, name),
                format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        if objects::is_deleting(obj) {
            return Err(ApiError::Conflict(
                Subject::new(info, name),
                format!("pod {name} is being deleted, cannot be assigned to a host"),
            ));
        }
        let mut new = obj.clone();
        set_path(&mut new, &["spec", "nodeName"], json!(node));
        let mut conditions: Vec<Value> = new
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        conditions.push(json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": objects::now_rfc3339()}));
        set_path(&mut new, &["status", "conditions"], json!(conditions));
        // A lost race is retried: the next round sees whether someone else bound it.
        Ok(Round::<()> {
            change: Change::Update(new),
            retry: true,
        })
    })
    .await?;
    Ok(())
}
