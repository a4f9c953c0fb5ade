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
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<skiff_api::app::App>,
    schema: schema_of::<skiff_api::app::App>,
};

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
            json!(module.get(..19).unwrap_or(module)),
            age(obj),
            json!(
                obj.pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
            ),
        ]
    }
}
