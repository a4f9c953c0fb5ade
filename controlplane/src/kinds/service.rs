//! Services: names are DNS labels; type, session affinity, port protocol and target
//! port defaults; port checks; an immutable cluster IP; kubectl's columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError, FieldErrorType};

use super::{Kind, NameRules};
use crate::kinds::fields::default_at;
use crate::kinds::fields::{err, immutable, required};
use crate::kinds::print::{self, AGE, Column, NAME, age, label_list, n, or_none, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    singular: "service",
    namespaced: true,
    short_names: &["svc"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::Service>,
    schema: schema_of::<k8s_openapi::api::core::v1::Service>,
};

pub(super) struct Service;

impl Kind for Service {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn name_rules(&self) -> Option<NameRules> {
        Some(v::is_dns1123_label)
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "type"], json!("ClusterIP"));
        default_at(obj, &["spec", "sessionAffinity"], json!("None"));
        if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports {
                default_at(p, &["protocol"], json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    default_at(p, &["targetPort"], port);
                }
            }
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
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

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.pointer("/spec/clusterIP").is_some() {
            immutable(old, new, "/spec/clusterIP", "spec.clusterIP", errs);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            AGE,
            ("Selector", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        let ports: Vec<String> = obj
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| format!("{}/{}", n(p, "/port"), s(p, "/protocol")))
            .collect();
        vec![
            name,
            json!(s(obj, "/spec/type")),
            or_none(s(obj, "/spec/clusterIP").to_string()),
            json!("<none>"),
            or_none(ports.join(",")),
            age(obj),
            label_list(obj.pointer("/spec/selector")),
        ]
    }
}
