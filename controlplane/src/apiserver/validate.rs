//! Validation of objects on create and update, reporting every problem as a field cause
//! the way Kubernetes does (`spec.containers[0].image: Required value`). Metadata is
//! checked here for every kind; what a kind checks beyond it is its `validate` and
//! `validate_update` in `crate::kinds`, built from the helpers here.

use serde_json::Value;
use skiff_api::resources::ResourceInfo;
use skiff_api::validation::{self as v, FieldError, FieldErrorType};

use crate::kinds::Kind;
use crate::kinds::fields::{err, invalid, required, string_map};

fn validate_metadata(
    info: &ResourceInfo,
    kind: &dyn Kind,
    obj: &Value,
    errs: &mut Vec<FieldError>,
) {
    let meta = obj.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        errs.push(err(
            "metadata.name",
            FieldErrorType::Required,
            "name or generateName is required",
        ));
    } else if let Some(rules) = kind.name_rules() {
        for msg in rules(name) {
            errs.push(invalid("metadata.name", name, &msg));
        }
    }
    if info.namespaced
        && meta
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .is_empty()
    {
        errs.push(required("metadata.namespace"));
    }
    errs.extend(v::validate_labels(
        &string_map(meta.and_then(|m| m.get("labels"))),
        "metadata.labels",
    ));
    errs.extend(v::validate_annotations(
        &string_map(meta.and_then(|m| m.get("annotations"))),
        "metadata.annotations",
    ));
    // The one field of ObjectMeta whose type does not check its value: `fieldsV1` holds
    // raw JSON, which is a field set, so an object.
    let managed = meta
        .and_then(|m| m.get("managedFields"))
        .and_then(Value::as_array);
    for (i, entry) in managed.into_iter().flatten().enumerate() {
        if let Some(fields) = entry.get("fieldsV1").filter(|f| !f.is_object()) {
            errs.push(err(
                format!("metadata.managedFields[{i}].fieldsV1"),
                FieldErrorType::Invalid,
                format!("Invalid value: {fields}: must be an object"),
            ));
        }
    }
}

/// Checks a complete object about to be stored: its metadata, then what its kind checks.
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<FieldError> {
    let kind = crate::kinds::of(info);
    let mut errs = Vec::new();
    validate_metadata(info, &*kind, obj, &mut errs);
    kind.validate(obj, &mut errs);
    errs
}

/// Checks an update against the stored object: the new object as [`validate`] does, then
/// the fields its kind makes immutable.
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = validate(info, new);
    crate::kinds::of(info).validate_update(old, new, &mut errs);
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_errors(strategy: Value, extra: Value) -> Vec<String> {
        let info = crate::kinds::lookup("apps", "v1", "deployments").unwrap();
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": 2,
                "strategy": strategy,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "sha256:00"}]}},
            },
        });
        for (k, v) in extra.as_object().unwrap() {
            d["spec"][k] = v.clone();
        }
        validate(info, &d)
            .into_iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect()
    }

    #[test]
    fn deployment_strategies_are_checked_like_kubernetes() {
        let ok = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}});
        assert!(deployment_errors(ok, json!({})).is_empty());
        assert!(deployment_errors(json!({"type": "Recreate"}), json!({})).is_empty());

        let both_zero = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        assert_eq!(
            deployment_errors(both_zero, json!({})),
            [
                "spec.strategy.rollingUpdate.maxUnavailable: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0"
            ]
        );
        let bad = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "lots", "maxUnavailable": "150%"}});
        let errs = deployment_errors(bad, json!({}));
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with(
            "spec.strategy.rollingUpdate.maxSurge: Invalid value: \"lots\": a valid percent string"
        ));
        assert!(errs[1].ends_with("must not be greater than 100%"));
        let recreate = json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}});
        assert_eq!(
            deployment_errors(recreate, json!({})),
            [
                "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'"
            ]
        );
        assert_eq!(
            deployment_errors(json!({"type": "BlueGreen"}), json!({})),
            [
                "spec.strategy.type: Unsupported value: \"BlueGreen\": supported values: \"Recreate\", \"RollingUpdate\""
            ]
        );
        assert_eq!(
            deployment_errors(
                json!({"type": "Recreate"}),
                json!({"minReadySeconds": 10, "progressDeadlineSeconds": 5})
            ),
            [
                "spec.progressDeadlineSeconds: Invalid value: 5: must be greater than minReadySeconds"
            ]
        );
    }
}
