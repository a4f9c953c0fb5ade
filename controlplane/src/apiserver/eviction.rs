//! `POST pods/NAME/eviction` with a `policy/v1` Eviction: deletes the pod with the
//! Eviction's `deleteOptions` unless a PodDisruptionBudget forbids it, as
//! kube-apiserver's eviction REST does, so `kubectl drain` waits for a budget.
//!
//! A pod that is finished, pending or already being deleted is evicted whatever the
//! budgets say. Otherwise the one budget that covers it (several are refused, as in
//! Kubernetes) must allow a disruption: its status, written by the disruption
//! controller, is checked and decremented, and the pod recorded in `disruptedPods`, in
//! one guarded write of the budget's status, so two evictions racing for the last
//! allowed disruption cannot both win. A refusal is 429 TooManyRequests with a
//! `DisruptionBudget` cause; kubectl retries it.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;

use super::Target;
use super::internal;
use super::request::{self, json_response};
use crate::error::{ApiError, ApiResult};
use crate::kinds::poddisruptionbudget::{INSUFFICIENT_PODS, selects, set_allowed_condition};
use crate::kinds::print::n;
use crate::objects;
use crate::state::ApiServer;
use crate::store::ListRequest;

/// More unconfirmed evictions than this in one budget's status are refused, as in
/// Kubernetes (the disruption controller has fallen behind).
const MAX_DISRUPTED_PODS: usize = 2000;

/// What kubectl prints while it waits.
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn budgets_info() -> &'static ResourceInfo {
    crate::kinds::lookup("policy", "v1", "poddisruptionbudgets").expect("budgets are served")
}

pub(crate) async fn evict(
    api: &ApiServer,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    request::require_json(headers)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let eviction = request::parse_json(&body)?;
    let name = target.name();
    let namespace = target.namespace.as_deref();
    if let Some(n) = objects::meta_str(&eviction, "name")
        && n != name
    {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object ({n} != {name})"
        )));
    }
    let options = eviction
        .get("deleteOptions")
        .filter(|o| !o.is_null())
        .map(|o| o.to_string().into_bytes())
        .unwrap_or_default();
    let mut options =
        super::delete::DeleteOptions::from_request(&request::Query::parse(None)?, &options)?;
    let pod = internal::get(api, target.info, namespace, name)
        .await?
        .ok_or_else(|| ApiError::not_found(target.info, name))?;
    if !budget_irrelevant(&pod) {
        let budgets = covering_budgets(api, &pod).await?;
        match budgets.as_slice() {
            [] => {}
            [budget] => {
                take_disruption(api, budget, &pod, options.dry_run).await?;
                // The budget counted this pod: delete that pod, not a successor of the
                // same name.
                if options.precondition_uid.is_none() {
                    options.precondition_uid = objects::meta_str(&pod, "uid").map(str::to_string);
                }
            }
            // Kubernetes answers 500 here too: the request cannot be served as made.
            _ => {
                return Err(ApiError::Upstream(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
                ));
            }
        }
    }
    if !options.dry_run {
        super::delete::delete_object(api, target.info, namespace, name, &options).await?;
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    ))
}

/// A pod no budget protects: finished, not yet running, or already on its way out.
fn budget_irrelevant(pod: &Value) -> bool {
    objects::is_deleting(pod)
        || matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed" | "Pending") | None
        )
}

/// The budgets of the pod's namespace that select it.
async fn covering_budgets(api: &ApiServer, pod: &Value) -> ApiResult<Vec<Value>> {
    let prefix = budgets_info().namespace_prefix(objects::namespace(pod));
    let filter = |budget: &Value| selects(budget, pod);
    let page = api.store.list(ListRequest::all(&prefix, &filter)).await?;
    Ok(page
        .items
        .into_iter()
        .map(|s| (*s.object).clone())
        .collect())
}

fn too_many(cause: String) -> ApiError {
    ApiError::TooManyRequests(REFUSED.into(), vec![("DisruptionBudget", cause)])
}

/// Checks that `budget` allows one more disruption and takes it, recording the pod; a
/// pod that is not ready goes without taking one when the budget is healthy anyway (or
/// its policy is AlwaysAllow).
async fn take_disruption(
    api: &ApiServer,
    budget: &Value,
    pod: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let pod_name = objects::name(pod).to_string();
    let ready = crate::controllers::podutil::is_ready(pod);
    if !ready {
        let always =
            budget.pointer("/spec/unhealthyPodEvictionPolicy") == Some(&json!("AlwaysAllow"));
        let healthy = n(budget, "/status/currentHealthy");
        let desired = n(budget, "/status/desiredHealthy");
        if always || (desired > 0 && healthy >= desired) {
            return Ok(());
        }
    }
    let check = |current: &Value| -> ApiResult<Value> {
        let name = objects::name(current);
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if n(current, "/status/observedGeneration") < generation {
            return Err(too_many(format!(
                "The disruption budget {name} is still being processed by the server."
            )));
        }
        let allowed = n(current, "/status/disruptionsAllowed");
        if allowed < 0 {
            return Err(ApiError::Forbidden(
                "pdb disruptions allowed is negative".into(),
            ));
        }
        let disrupted = current
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
        if disrupted > MAX_DISRUPTED_PODS {
            return Err(ApiError::Forbidden(
                "DisruptedPods map too big - too many evictions not confirmed by PDB controller"
                    .into(),
            ));
        }
        if allowed == 0 {
            return Err(too_many(format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                n(current, "/status/desiredHealthy"),
                n(current, "/status/currentHealthy"),
            )));
        }
        let mut next = current.clone();
        objects::set_path(
            &mut next,
            &["status", "disruptionsAllowed"],
            json!(allowed - 1),
        );
        objects::set_path(
            &mut next,
            &["status", "disruptedPods", &pod_name],
            json!(objects::now_rfc3339()),
        );
        if allowed == 1 {
            set_allowed_condition(&mut next, Some(INSUFFICIENT_PODS));
        }
        Ok(next)
    };
    if dry_run {
        check(budget)?;
        return Ok(());
    }
    internal::update_status(
        api,
        budgets_info(),
        objects::namespace(budget),
        objects::name(budget),
        check,
    )
    .await?;
    Ok(())
}
