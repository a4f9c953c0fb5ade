//! PodDisruptionBudgets (policy/v1): exactly one of `minAvailable` and `maxUnavailable`,
//! each a count or a percent; a valid selector; the unhealthy-pod eviction policy;
//! kubectl's MIN AVAILABLE, MAX UNAVAILABLE and ALLOWED DISRUPTIONS columns. The
//! disruption controller keeps the status, and the Eviction subresource reads it.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::selector::LabelSelector;
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::{invalid, validate_int_or_percent};
use crate::kinds::print::{self, AGE, Column, NAME, age, n};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "policy",
    version: "v1",
    kind: "PodDisruptionBudget",
    plural: "poddisruptionbudgets",
    singular: "poddisruptionbudget",
    namespaced: true,
    short_names: &["pdb"],
    categories: &[],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
    schema: schema_of::<k8s_openapi::api::policy::v1::PodDisruptionBudget>,
};

pub(super) struct PodDisruptionBudget;

/// Whether a budget covers a pod: same namespace, and its selector matches the pod's
/// labels. In policy/v1 an empty selector covers every pod of the namespace and a missing
/// one none.
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    if crate::objects::namespace(pdb) != crate::objects::namespace(pod)
        || crate::objects::is_deleting(pdb)
    {
        return false;
    }
    let Some(selector) = pdb.pointer("/spec/selector").filter(|s| !s.is_null()) else {
        return false;
    };
    let parsed = serde_json::from_value(selector.clone())
        .ok()
        .and_then(|s| LabelSelector::from_label_selector(&s).ok());
    parsed.is_some_and(|s| s.matches_value(pod))
}

/// An IntOrString as kubectl prints it, or N/A when unset.
fn int_or_string_cell(obj: &Value, pointer: &str) -> Value {
    match obj.pointer(pointer) {
        Some(Value::Number(n)) => json!(n.to_string()),
        Some(Value::String(s)) => json!(s),
        _ => json!("N/A"),
    }
}

/// The reason and message of a budget that allows no disruption for lack of healthy pods.
pub const INSUFFICIENT_PODS: (&str, &str) = ("InsufficientPods", "");

/// Sets a budget's `DisruptionAllowed` condition: True (SufficientPods) without a
/// `blocked` reason and message, False with one. The transition time stays when the
/// status does not change.
pub fn set_allowed_condition(budget: &mut Value, blocked: Option<(&str, &str)>) {
    let (status, reason, message) = match blocked {
        None => ("True", "SufficientPods", ""),
        Some((reason, message)) => ("False", reason, message),
    };
    let generation = budget
        .pointer("/metadata/generation")
        .cloned()
        .unwrap_or(json!(0));
    let mut conditions: Vec<Value> = budget
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let since = conditions
        .iter()
        .find(|c| c["type"] == "DisruptionAllowed" && c["status"] == status)
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(crate::objects::now_rfc3339()));
    conditions.retain(|c| c["type"] != "DisruptionAllowed");
    conditions.push(json!({
        "type": "DisruptionAllowed",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }));
    crate::objects::set_path(budget, &["status", "conditions"], json!(conditions));
}

impl Kind for PodDisruptionBudget {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let min = obj.pointer("/spec/minAvailable").filter(|v| !v.is_null());
        let max = obj.pointer("/spec/maxUnavailable").filter(|v| !v.is_null());
        if min.is_some() && max.is_some() {
            errs.push(invalid(
                "spec",
                "",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        validate_int_or_percent(min, "spec.minAvailable", true, errs);
        validate_int_or_percent(max, "spec.maxUnavailable", true, errs);
        if let Some(selector) = obj.pointer("/spec/selector").filter(|s| !s.is_null()) {
            let parsed = serde_json::from_value(selector.clone())
                .map_err(|e| e.to_string())
                .and_then(|s| LabelSelector::from_label_selector(&s).map_err(|e| e.to_string()));
            if let Err(e) = parsed {
                errs.push(invalid("spec.selector", &selector.to_string(), &e));
            }
        }
        if let Some(policy) = obj
            .pointer("/spec/unhealthyPodEvictionPolicy")
            .and_then(Value::as_str)
            && !["IfHealthyBudget", "AlwaysAllow"].contains(&policy)
        {
            errs.push(FieldError::not_supported(
                "spec.unhealthyPodEvictionPolicy",
                policy,
                &["AlwaysAllow", "IfHealthyBudget"],
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            print::name(obj),
            int_or_string_cell(obj, "/spec/minAvailable"),
            int_or_string_cell(obj, "/spec/maxUnavailable"),
            json!(n(obj, "/status/disruptionsAllowed")),
            age(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        PodDisruptionBudget.validate(&json!({"spec": spec}), &mut errs);
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn budgets_are_checked_like_kubernetes() {
        assert!(
            errors(json!({"minAvailable": 2, "selector": {"matchLabels": {"a": "b"}}})).is_empty()
        );
        assert!(errors(json!({"maxUnavailable": "25%"})).is_empty());
        let both = errors(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert!(both[0].contains("cannot be both set"), "{both:?}");
        assert!(errors(json!({"minAvailable": "150%"}))[0].contains("100%"));
        assert!(errors(json!({"maxUnavailable": -1}))[0].contains("greater than or equal to 0"));
        assert!(
            errors(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Sometimes"}))[0]
                .contains("Unsupported value")
        );
    }

    #[test]
    fn columns_print_counts_percents_and_na() {
        let cells = PodDisruptionBudget.cells(&json!({
            "metadata": {"name": "web"},
            "spec": {"minAvailable": "50%"},
            "status": {"disruptionsAllowed": 1}
        }));
        assert_eq!(cells[1], "50%");
        assert_eq!(cells[2], "N/A");
        assert_eq!(cells[3], 1);
    }
}
