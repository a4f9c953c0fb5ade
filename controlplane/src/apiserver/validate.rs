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
        // An App's name becomes its Service's name and part of its host name.
        "App" => v::is_dns1035_label,
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

/// An App: a module reference, a non-negative replica count, a route that is a host
/// and/or an absolute path, and non-empty outbound hosts.
fn validate_app(obj: &Value, errs: &mut Vec<FieldError>) {
    let module = obj
        .pointer("/spec/module")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if module.is_empty() {
        errs.push(required("spec.module"));
    } else if skiff_api::module::parse_digest(module).is_none() {
        errs.push(invalid(
            "spec.module",
            module,
            "must be a module reference: sha256: and 64 lowercase hex digits",
        ));
    }
    validate_non_negative(obj, "/spec/replicas", "spec.replicas", errs);
    if let Some(path) = obj.pointer("/spec/route/path").and_then(Value::as_str)
        && !path.starts_with('/')
    {
        errs.push(invalid("spec.route.path", path, "must start with '/'"));
    }
    if let Some(host) = obj.pointer("/spec/route/host").and_then(Value::as_str) {
        for msg in v::is_dns1123_subdomain(host) {
            errs.push(invalid("spec.route.host", host, &msg));
        }
    }
    for (i, host) in obj
        .pointer("/spec/allowedOutboundHosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = host.as_str().unwrap_or_default();
        if text.trim().is_empty() || text.contains(',') {
            errs.push(invalid(
                format!("spec.allowedOutboundHosts[{i}]"),
                text,
                "must be a host, host:port, *.domain or *",
            ));
        }
    }
}

/// One IntOrString of a rolling update: a non-negative count, or a percent (at most
/// 100% where `at_most_100`). Returns whether it is zero.
fn validate_int_or_percent(
    value: Option<&Value>,
    field: &str,
    at_most_100: bool,
    errs: &mut Vec<FieldError>,
) -> bool {
    match value {
        None => false,
        Some(Value::Number(n)) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                errs.push(err(
                    field,
                    FieldErrorType::Invalid,
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
            n == 0
        }
        Some(Value::String(text)) => {
            let percent = text
                .strip_suffix('%')
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|p| p.parse::<u64>().ok());
            match percent {
                None => {
                    errs.push(invalid(
                        field,
                        text,
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ));
                    false
                }
                Some(p) => {
                    if at_most_100 && p > 100 {
                        errs.push(invalid(field, text, "must not be greater than 100%"));
                    }
                    p == 0
                }
            }
        }
        Some(other) => {
            errs.push(invalid(
                field,
                &other.to_string(),
                "must be an integer or a percent",
            ));
            false
        }
    }
}

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
        other => errs.push(err(
            "spec.strategy.type",
            FieldErrorType::NotSupported,
            format!(
                "Unsupported value: \"{other}\": supported values: \"Recreate\", \"RollingUpdate\""
            ),
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
            validate_non_negative(
                obj,
                "/spec/minReadySeconds",
                "spec.minReadySeconds",
                &mut errs,
            );
            validate_pod_spec(
                obj.pointer("/spec/template/spec"),
                "spec.template.spec",
                &mut errs,
            );
            if info.kind == "Deployment" {
                validate_deployment_strategy(obj, &mut errs);
            }
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
        "App" => validate_app(obj, &mut errs),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment_errors(strategy: Value, extra: Value) -> Vec<String> {
        let info = skiff_api::resources::lookup("apps", "v1", "deployments").unwrap();
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
