//! GatewayClasses (gateway.networking.k8s.io/v1, cluster-scoped): a controller name,
//! immutable; a status the class's controller writes; kubectl's CONTROLLER and ACCEPTED
//! columns as the standard CRD prints them. The server creates the class `skiff`, whose
//! controller is the gateway (`crate::httproute`).

use serde_json::{Value, json};

use skiff_api::gatewayapi::{GROUP, VERSION};
use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::{immutable, invalid, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

pub use crate::kinds::ingressclass::CONTROLLER;
/// The class the server creates.
pub const DEFAULT_CLASS: &str = "skiff";

static INFO: ResourceInfo = ResourceInfo {
    group: GROUP,
    version: VERSION,
    kind: "GatewayClass",
    plural: "gatewayclasses",
    singular: "gatewayclass",
    namespaced: false,
    short_names: &["gc"],
    categories: &["gateway-api"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<skiff_api::gatewayapi::GatewayClass>,
    schema: schema_of::<skiff_api::gatewayapi::GatewayClass>,
};

pub(super) struct GatewayClass;

/// The condition of `type` in an object's status, as a column cell shows it.
pub(super) fn condition_status(obj: &Value, type_: &str) -> Value {
    json!(
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == type_)
            .and_then(|c| c["status"].as_str())
            .unwrap_or("Unknown")
    )
}

impl Kind for GatewayClass {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let name = obj
            .pointer("/spec/controllerName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // The CRD's GatewayController: a domain-prefixed path.
        match name.split_once('/') {
            _ if name.is_empty() => errs.push(required("spec.controllerName")),
            Some((domain, path))
                if !domain.is_empty()
                    && skiff_api::validation::is_dns1123_subdomain(domain).is_empty()
                    && !path.is_empty()
                    && name.len() <= 253 => {}
            _ => errs.push(invalid(
                "spec.controllerName",
                name,
                "must be a domain-prefixed path (such as \"example.com/bar\")",
            )),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(
            old,
            new,
            "/spec/controllerName",
            "spec.controllerName",
            errs,
        );
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Controller", "string", 0),
            ("Accepted", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            print::name(obj),
            json!(print::s(obj, "/spec/controllerName")),
            condition_status(obj, "Accepted"),
            age(obj),
        ]
    }
}

/// The class the server creates at start, if missing.
pub fn default_class() -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "GatewayClass",
        "metadata": {"name": DEFAULT_CLASS},
        "spec": {
            "controllerName": CONTROLLER,
            "description": "Skiff's built-in gateway (skiff server --gateway)",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_name_is_a_domain_prefixed_path() {
        let check = |name: &str| {
            let mut errs = Vec::new();
            GatewayClass.validate(&json!({"spec": {"controllerName": name}}), &mut errs);
            errs.len()
        };
        assert_eq!(check(CONTROLLER), 0);
        assert_eq!(check(""), 1);
        assert_eq!(check("no-path"), 1);
        assert_eq!(check("Bad_Domain/x"), 1);
        let cells = GatewayClass.cells(&json!({"metadata": {"name": "skiff"},
            "spec": {"controllerName": CONTROLLER},
            "status": {"conditions": [{"type": "Accepted", "status": "True"}]}}));
        assert_eq!(cells[1], CONTROLLER);
        assert_eq!(cells[2], "True");
    }
}
