//! What the pod-template kinds (Pod, Deployment, ReplicaSet, DaemonSet, Job) share: pod
//! spec defaults and validation, the workload selector check, and the `-o wide` template
//! columns.

use std::collections::HashSet;

use serde_json::{Value, json};

use skiff_api::selector::LabelSelector;
use skiff_api::validation::{self as v, FieldError, FieldErrorType};

use crate::kinds::fields::default_at;
use crate::kinds::fields::{err, invalid, required, string_map, validate_non_negative};
use crate::kinds::print::{self, Column};

/// The defaults of a pod spec, a Pod's or a template's.
pub(super) fn default_pod_spec(spec: &mut Value) {
    default_at(spec, &["restartPolicy"], json!("Always"));
    default_at(spec, &["terminationGracePeriodSeconds"], json!(30));
    default_at(spec, &["dnsPolicy"], json!("ClusterFirst"));
    default_at(spec, &["schedulerName"], json!("default-scheduler"));
    default_at(spec, &["securityContext"], json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                default_at(
                    c,
                    &["terminationMessagePath"],
                    json!("/dev/termination-log"),
                );
                default_at(c, &["terminationMessagePolicy"], json!("File"));
                // Kubernetes' default: Always for a `latest` (or unstated) tag.
                let policy = skiff_api::image::PullPolicy::default_for(
                    c.get("image").and_then(Value::as_str).unwrap_or_default(),
                );
                default_at(c, &["imagePullPolicy"], json!(policy.as_str()));
                // A struct, not a pointer, in Kubernetes: it always shows, even empty.
                default_at(c, &["resources"], json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default_at(p, &["protocol"], json!("TCP"));
                    }
                }
            }
        }
    }
}

/// Defaults the pod spec of a workload's template.
pub(super) fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// A pod spec at `path`: containers, their mounts, restart policy and volumes.
pub(super) fn validate_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(required(path));
        return;
    };
    let volumes: HashSet<&str> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    match spec.get("containers").and_then(Value::as_array) {
        Some(cs) if !cs.is_empty() => {
            let mut names = HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let at = format!("{path}.containers[{i}]");
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                if name.is_empty() {
                    errs.push(required(format!("{at}.name")));
                } else {
                    for msg in v::is_dns1123_label(name) {
                        errs.push(invalid(format!("{at}.name"), name, &msg));
                    }
                    if !names.insert(name) {
                        errs.push(err(
                            format!("{at}.name"),
                            FieldErrorType::Duplicate,
                            format!("Duplicate value: \"{name}\""),
                        ));
                    }
                }
                if c.get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim()
                    .is_empty()
                {
                    errs.push(required(format!("{at}.image")));
                }
                if let Some(policy) = c.get("imagePullPolicy").and_then(Value::as_str)
                    && !["Always", "IfNotPresent", "Never"].contains(&policy)
                {
                    errs.push(FieldError::not_supported(
                        format!("{at}.imagePullPolicy"),
                        policy,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
                for (j, m) in c
                    .get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let vname = m.get("name").and_then(Value::as_str).unwrap_or_default();
                    if !volumes.contains(vname) {
                        errs.push(err(
                            format!("{at}.volumeMounts[{j}].name"),
                            FieldErrorType::NotFound,
                            format!("Not found: \"{vname}\""),
                        ));
                    }
                    if m.get("mountPath")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                    {
                        errs.push(required(format!("{at}.volumeMounts[{j}].mountPath")));
                    }
                }
            }
        }
        _ => errs.push(required(format!("{path}.containers"))),
    }
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str)
        && !["Always", "OnFailure", "Never"].contains(&policy)
    {
        errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
    let mut seen = HashSet::new();
    for (i, vol) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let name = vol.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            errs.push(required(format!("{path}.volumes[{i}].name")));
        } else if !seen.insert(name) {
            errs.push(err(
                format!("{path}.volumes[{i}].name"),
                FieldErrorType::Duplicate,
                format!("Duplicate value: \"{name}\""),
            ));
        }
    }
}

/// A workload's selector must be present and must select its own template.
pub(super) fn validate_selector_and_template(obj: &Value, errs: &mut Vec<FieldError>) {
    let selector = obj.pointer("/spec/selector");
    let parsed = selector.cloned().and_then(|s| {
        serde_json::from_value::<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>(s)
            .ok()
    });
    match parsed.as_ref().map(LabelSelector::from_label_selector) {
        None => errs.push(required("spec.selector")),
        Some(Err(e)) => errs.push(err(
            "spec.selector",
            FieldErrorType::Invalid,
            format!("Invalid value: {e}"),
        )),
        Some(Ok(sel)) if sel.is_empty() => errs.push(err(
            "spec.selector",
            FieldErrorType::Invalid,
            "Invalid value: empty selector is invalid for deployment",
        )),
        Some(Ok(sel)) => {
            let labels = string_map(obj.pointer("/spec/template/metadata/labels"));
            if !sel.matches(&labels) {
                errs.push(err(
                    "spec.template.metadata.labels",
                    FieldErrorType::Invalid,
                    "Invalid value: `selector` does not match template `labels`",
                ));
            }
        }
    }
}

/// What Deployments, ReplicaSets and DaemonSets check alike: the selector, the counts and
/// the template's pod spec.
pub(super) fn validate_replicated(obj: &Value, errs: &mut Vec<FieldError>) {
    validate_selector_and_template(obj, errs);
    validate_non_negative(obj, "/spec/replicas", "spec.replicas", errs);
    validate_non_negative(obj, "/spec/minReadySeconds", "spec.minReadySeconds", errs);
    validate_pod_spec(
        obj.pointer("/spec/template/spec"),
        "spec.template.spec",
        errs,
    );
}

/// The template columns `-o wide` adds to a workload's.
pub(super) const TEMPLATE_COLUMNS: [Column; 3] = [
    ("Containers", "string", 1),
    ("Images", "string", 1),
    ("Selector", "string", 1),
];

/// The cells of [`TEMPLATE_COLUMNS`].
pub(super) fn template_cells(obj: &Value) -> [Value; 3] {
    [
        print::containers(obj, "/spec/template/spec/containers", "name"),
        print::containers(obj, "/spec/template/spec/containers", "image"),
        print::selector(obj),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pull_policy_defaults_by_tag_and_is_validated() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let mut spec = json!({"containers": [
            {"name": "a", "image": "reg.example/app"},
            {"name": "b", "image": "reg.example/app:v1"},
            {"name": "c", "image": digest},
            {"name": "d", "image": "reg.example/app", "imagePullPolicy": "Never"},
        ]});
        default_pod_spec(&mut spec);
        let policies: Vec<&str> = spec["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["imagePullPolicy"].as_str().unwrap())
            .collect();
        assert_eq!(
            policies,
            ["Always", "IfNotPresent", "IfNotPresent", "Never"]
        );
        let mut errs = Vec::new();
        validate_pod_spec(Some(&spec), "spec", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");

        spec["containers"][0]["imagePullPolicy"] = json!("Sometimes");
        validate_pod_spec(Some(&spec), "spec", &mut errs);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.containers[0].imagePullPolicy");
        assert!(matches!(errs[0].reason, FieldErrorType::NotSupported));
    }
}
