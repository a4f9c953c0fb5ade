//! Validation of objects on create and update, per kind, reporting every problem as a
//! field cause the way Kubernetes does (`spec.containers[0].image: Required value`).

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;
use skiff_api::resources::ResourceInfo;
use skiff_api::selector::LabelSelector;
use skiff_api::validation::{self as v, FieldError, FieldErrorType};

fn err(field: impl Into<String>, reason: FieldErrorType, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason,
        message: message.into(),
    }
}

fn required(field: impl Into<String>) -> FieldError {
    err(field, FieldErrorType::Required, "Required value")
}

fn invalid(field: impl Into<String>, value: &str, why: &str) -> FieldError {
    err(
        field,
        FieldErrorType::Invalid,
        format!("Invalid value: \"{value}\": {why}"),
    )
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces and Services are DNS labels; other names are DNS subdomains.
fn name_rules(kind: &str) -> fn(&str) -> Vec<String> {
    match kind {
        "Namespace" | "Service" => v::is_dns1123_label,
        _ => v::is_dns1123_subdomain,
    }
}

fn validate_metadata(info: &ResourceInfo, obj: &Value, errs: &mut Vec<FieldError>) {
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
    } else if info.kind != "Module" {
        for msg in name_rules(info.kind)(name) {
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
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
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
        errs.push(err(
            format!("{path}.restartPolicy"),
            FieldErrorType::NotSupported,
            format!("Unsupported value: \"{policy}\": supported values: \"Always\", \"OnFailure\", \"Never\""),
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
fn validate_selector_and_template(obj: &Value, errs: &mut Vec<FieldError>) {
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

fn validate_non_negative(obj: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = obj.pointer(pointer).and_then(Value::as_i64)
        && n < 0
    {
        errs.push(err(
            field,
            FieldErrorType::Invalid,
            format!("Invalid value: {n}: must be greater than or equal to 0"),
        ));
    }
}

fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();
    for field in ["data", "binaryData"] {
        for key in obj
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flat_map(|m| m.keys())
        {
            for msg in v::is_config_map_key(key) {
                errs.push(invalid(format!("{field}[{key}]"), key, &msg));
            }
            if !seen.insert(key.clone()) {
                errs.push(err(
                    format!("{field}[{key}]"),
                    FieldErrorType::Invalid,
                    "Invalid value: duplicate of key present in data",
                ));
            }
        }
    }
}

/// Checks a complete object about to be stored.
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_metadata(info, obj, &mut errs);
    match info.kind {
        "Pod" => validate_pod_spec(obj.get("spec"), "spec", &mut errs),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            validate_selector_and_template(obj, &mut errs);
            validate_non_negative(obj, "/spec/replicas", "spec.replicas", &mut errs);
            validate_pod_spec(
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
                &mut errs,
            );
        }
        "Job" => {
            validate_selector_and_template(obj, &mut errs);
            for (p, f) in [
                ("/spec/parallelism", "spec.parallelism"),
                ("/spec/completions", "spec.completions"),
                ("/spec/backoffLimit", "spec.backoffLimit"),
            ] {
                validate_non_negative(obj, p, f, &mut errs);
            }
            validate_pod_spec(
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
                &mut errs,
            );
            let policy = obj
                .pointer("/spec/template/spec/restartPolicy")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !["OnFailure", "Never"].contains(&policy) {
                errs.push(err(
                    "spec.template.spec.restartPolicy",
                    FieldErrorType::NotSupported,
                    format!("Unsupported value: \"{policy}\": supported values: \"OnFailure\", \"Never\""),
                ));
            }
        }
        "Service" => {
            let ports = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, p) in ports.iter().enumerate() {
                match p.get("port").and_then(Value::as_i64) {
                    None => errs.push(required(format!("spec.ports[{i}].port"))),
                    Some(n) if !(1..=65535).contains(&n) => errs.push(err(
                        format!("spec.ports[{i}].port"),
                        FieldErrorType::Invalid,
                        format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                    )),
                    _ => {}
                }
                if ports.len() > 1
                    && p.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .is_empty()
                {
                    errs.push(required(format!("spec.ports[{i}].name")));
                }
            }
        }
        "ConfigMap" | "Secret" => validate_data_keys(obj, &mut errs),
        "EndpointSlice" => match obj.get("addressType").and_then(Value::as_str) {
            None => errs.push(required("addressType")),
            Some(t) if !["IPv4", "IPv6", "FQDN"].contains(&t) => errs.push(err(
                "addressType",
                FieldErrorType::NotSupported,
                format!(
                    "Unsupported value: \"{t}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                ),
            )),
            _ => {}
        },
        _ => {}
    }
    errs
}

fn immutable(old: &Value, new: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    if old.pointer(pointer) != new.pointer(pointer) {
        errs.push(err(
            field,
            FieldErrorType::Invalid,
            "Invalid value: field is immutable",
        ));
    }
}

/// The pod spec fields Kubernetes lets an update change.
fn mutable_pod_fields_cleared(spec: Option<&Value>) -> Value {
    let mut spec = spec.cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("image");
                }
            }
        }
    }
    if let Some(m) = spec.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    spec
}

/// Checks an update against the stored object: the fields Kubernetes makes immutable.
pub fn validate_update(info: &ResourceInfo, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = validate(info, new);
    match info.kind {
        "Pod"
            if mutable_pod_fields_cleared(old.get("spec"))
                != mutable_pod_fields_cleared(new.get("spec")) =>
        {
            errs.push(err(
                    "spec",
                    FieldErrorType::Forbidden,
                    "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, \
                     `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` \
                     (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
                ));
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            immutable(old, new, "/spec/selector", "spec.selector", &mut errs)
        }
        "Job" => {
            immutable(old, new, "/spec/selector", "spec.selector", &mut errs);
            immutable(old, new, "/spec/completions", "spec.completions", &mut errs);
        }
        "ConfigMap" | "Secret" if old.get("immutable") == Some(&Value::Bool(true)) => {
            immutable(old, new, "/data", "data", &mut errs);
            immutable(old, new, "/binaryData", "binaryData", &mut errs);
            immutable(old, new, "/immutable", "immutable", &mut errs);
        }
        "Service" if old.pointer("/spec/clusterIP").is_some() => {
            immutable(old, new, "/spec/clusterIP", "spec.clusterIP", &mut errs);
        }
        _ => {}
    }
    errs
}
