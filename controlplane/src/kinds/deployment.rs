//! Deployments: replica, history, deadline and RollingUpdate defaults; the strategy checked
//! as Kubernetes checks it; an immutable selector; kubectl's columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{FieldError, FieldErrorType};

use super::Kind;
use super::workload::{TEMPLATE_COLUMNS, default_template, template_cells, validate_replicated};
use crate::kinds::fields::default_at;
use crate::kinds::fields::{
    err, immutable, invalid, validate_int_or_percent, validate_non_negative,
};
use crate::kinds::print::{self, AGE, Column, NAME, age, n};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::apps::v1::Deployment>,
    schema: schema_of::<k8s_openapi::api::apps::v1::Deployment>,
};

/// A Deployment's strategy and its timing fields, as Kubernetes checks them.
fn validate_deployment_strategy(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_non_negative(
        obj,
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        errs,
    );
    let strategy = obj.pointer("/spec/strategy");
    let kind = strategy
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("RollingUpdate");
    let rolling = strategy
        .and_then(|s| s.get("rollingUpdate"))
        .filter(|r| !r.is_null());
    match kind {
        "Recreate" => {
            if rolling.is_some() {
                errs.push(err(
                    "spec.strategy.rollingUpdate",
                    FieldErrorType::Forbidden,
                    "Forbidden: may not be specified when strategy `type` is 'Recreate'",
                ));
            }
        }
        "RollingUpdate" => {
            let surge_zero = validate_int_or_percent(
                rolling.and_then(|r| r.get("maxSurge")),
                "spec.strategy.rollingUpdate.maxSurge",
                false,
                errs,
            );
            let unavailable = rolling.and_then(|r| r.get("maxUnavailable"));
            let unavailable_zero = validate_int_or_percent(
                unavailable,
                "spec.strategy.rollingUpdate.maxUnavailable",
                true,
                errs,
            );
            if surge_zero && unavailable_zero {
                errs.push(invalid(
                    "spec.strategy.rollingUpdate.maxUnavailable",
                    &unavailable
                        .map(Value::to_string)
                        .unwrap_or_default()
                        .replace('"', ""),
                    "may not be 0 when `maxSurge` is 0",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.strategy.type",
            other,
            &["Recreate", "RollingUpdate"],
        )),
    }
    let deadline = obj
        .pointer("/spec/progressDeadlineSeconds")
        .and_then(Value::as_i64);
    let min_ready = obj
        .pointer("/spec/minReadySeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    if let Some(d) = deadline
        && d <= min_ready
    {
        errs.push(err(
            "spec.progressDeadlineSeconds",
            FieldErrorType::Invalid,
            format!("Invalid value: {d}: must be greater than minReadySeconds"),
        ));
    }
}

pub(super) struct Deployment;

impl Kind for Deployment {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "replicas"], json!(1));
        default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
        default_at(obj, &["spec", "progressDeadlineSeconds"], json!(600));
        default_at(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
        if obj.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
            default_at(
                obj,
                &["spec", "strategy", "rollingUpdate", "maxSurge"],
                json!("25%"),
            );
            default_at(
                obj,
                &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                json!("25%"),
            );
        }
        default_template(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_replicated(obj, errs);
        validate_deployment_strategy(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/selector", "spec.selector", errs);
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            AGE,
        ];
        columns.extend(TEMPLATE_COLUMNS);
        columns
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let mut cells = vec![
            print::name(obj),
            json!(format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                n(obj, "/spec/replicas")
            )),
            json!(n(obj, "/status/updatedReplicas")),
            json!(n(obj, "/status/availableReplicas")),
            age(obj),
        ];
        cells.extend(template_cells(obj));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_gets_rolling_update_defaults_without_overwriting() {
        let mut d =
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        Deployment.default(&mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        Deployment.default(&mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }
}
