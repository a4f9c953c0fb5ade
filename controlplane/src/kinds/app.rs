//! Apps: names are DNS-1035 labels (an App's name becomes its Service's and part of its
//! host name); module, replicas, route and outbound hosts checked; kubectl's columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError};

use super::{Kind, NameRules};
use crate::kinds::fields::{invalid, required, validate_non_negative};
use crate::kinds::print::{self, AGE, Column, NAME, age, n, or_none, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: skiff_api::module::GROUP,
    version: skiff_api::module::VERSION,
    kind: "App",
    plural: "apps",
    singular: "app",
    namespaced: true,
    short_names: &[],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<skiff_api::app::App>,
    schema: schema_of::<skiff_api::app::App>,
};

/// The label an App's Deployment gives its pods, and selects them by.
pub const APP_LABEL: &str = "app.skiff.dev/name";

/// An App: a module reference (the store's `sha256:<hex>` or an OCI reference), a
/// non-negative replica count, a route that is a host and/or an absolute path, and
/// non-empty outbound hosts.
fn validate_app(obj: &Value, errs: &mut Vec<FieldError>) {
    let module = obj
        .pointer("/spec/module")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if module.is_empty() {
        errs.push(required("spec.module"));
    } else if let Err(e) = skiff_api::image::ImageRef::parse(module) {
        use skiff_api::image::ImageError;
        let why = match e {
            ImageError::BadModuleDigest(_) => "sha256: takes 64 lowercase hex digits".into(),
            ImageError::BadReference { reason, .. } => reason,
        };
        errs.push(invalid(
            "spec.module",
            module,
            &format!(
                "must be sha256:<hex> or an OCI reference \
                 (REGISTRY/REPOSITORY[:TAG][@sha256:<hex>]): {why}"
            ),
        ));
    }
    validate_non_negative(obj, "/spec/replicas", "spec.replicas", errs);
    if let Some(scale) = obj.pointer("/spec/autoscale").filter(|v| !v.is_null()) {
        validate_autoscale(scale, errs);
    }
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

/// `spec.autoscale`: 0 ≤ minReplicas ≤ maxReplicas, maxReplicas ≥ 1, exactly one
/// positive target, a delay that parses.
fn validate_autoscale(scale: &Value, errs: &mut Vec<FieldError>) {
    let int = |field: &str| scale.get(field).and_then(Value::as_i64);
    let min = int("minReplicas").unwrap_or(1);
    let max = int("maxReplicas").unwrap_or(0);
    if min < 0 {
        errs.push(invalid(
            "spec.autoscale.minReplicas",
            &min.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    if max < 1 {
        errs.push(invalid(
            "spec.autoscale.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to 1",
        ));
    } else if min > max {
        errs.push(invalid(
            "spec.autoscale.maxReplicas",
            &max.to_string(),
            "must be greater than or equal to minReplicas",
        ));
    }
    let targets: Vec<&str> = ["targetRequestsPerSecond", "targetConcurrency"]
        .into_iter()
        .filter(|t| scale.get(*t).is_some_and(|v| !v.is_null()))
        .collect();
    match targets.as_slice() {
        [one] => {
            if int(one).is_none_or(|n| n < 1) {
                errs.push(invalid(
                    format!("spec.autoscale.{one}"),
                    &scale[*one].to_string(),
                    "must be greater than 0",
                ));
            }
        }
        [] => errs.push(required("spec.autoscale.targetRequestsPerSecond")),
        _ => errs.push(invalid(
            "spec.autoscale",
            "",
            "may set only one of targetRequestsPerSecond and targetConcurrency",
        )),
    }
    if let Some(delay) = scale.get("scaleDownDelay").and_then(Value::as_str)
        && skiff_api::app::parse_delay(delay).is_none()
    {
        errs.push(invalid(
            "spec.autoscale.scaleDownDelay",
            delay,
            "must be a whole number with a unit: ms, s, m or h (`30s`, `5m`)",
        ));
    }
}

pub(super) struct App;

impl Kind for App {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<NameRules> {
        Some(v::is_dns1035_label)
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_app(obj, errs);
    }

    /// An App without `spec.replicas` runs one.
    fn default_replicas(&self) -> i64 {
        1
    }

    /// An App's pods are its Deployment's, which select them by the App's name.
    fn scale_selector(&self, obj: &Value) -> Option<Value> {
        Some(json!({"matchLabels": {APP_LABEL: print::name(obj)}}))
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Ready", "string", 0),
            ("URL", "string", 0),
            ("Module", "string", 0),
            AGE,
            ("Replicas", "integer", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        let module = s(obj, "/spec/module");
        vec![
            name,
            json!(format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            )),
            or_none(s(obj, "/status/url").to_string()),
            // A store digest is shown short, as kubectl shows image IDs; a reference whole.
            json!(if module.starts_with(skiff_api::module::DIGEST_PREFIX) {
                module.get(..19).unwrap_or(module)
            } else {
                module
            }),
            age(obj),
            json!(
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(module: &str) -> Vec<String> {
        let mut errs = Vec::new();
        validate_app(&json!({"spec": {"module": module}}), &mut errs);
        errs.iter().map(|e| format!("{e:?}")).collect()
    }

    #[test]
    fn module_is_a_store_digest_or_an_oci_reference() {
        let hex = "0123456789abcdef".repeat(4);
        for good in [
            format!("sha256:{hex}"),
            "registry.example.com/team/app:v1".to_string(),
            "oci://127.0.0.1:5000/t/hello:v1".to_string(),
            "localhost:5000/app".to_string(),
            format!("ghcr.io/acme/app@sha256:{hex}"),
            "nginx".to_string(),
        ] {
            assert_eq!(errors(&good), Vec::<String>::new(), "{good}");
        }
        for bad in [
            "sha256:abc".to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            "registry.example.com/Team/App:v1".to_string(),
            "oci://".to_string(),
            "a b".to_string(),
        ] {
            let errs = errors(&bad);
            assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
            assert!(
                errs[0].contains("must be sha256:<hex> or an OCI reference"),
                "{bad}: {errs:?}"
            );
        }
        assert_eq!(errors("").len(), 1);
    }
}
