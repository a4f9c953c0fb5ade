//! IngressClasses (networking.k8s.io/v1, cluster-scoped): a controller name and optional
//! parameters; kubectl's CONTROLLER and PARAMETERS columns. The server creates the class
//! `skiff`, whose controller is the gateway, as the cluster's default (as k3s ships
//! Traefik's).

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::{immutable, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// The controller name of the gateway's class.
pub const CONTROLLER: &str = "skiff.dev/gateway";
/// The class the server creates.
pub const DEFAULT_CLASS: &str = "skiff";
/// The annotation that makes a class the default for Ingresses that name none.
pub const IS_DEFAULT: &str = "ingressclass.kubernetes.io/is-default-class";

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "IngressClass",
    plural: "ingressclasses",
    singular: "ingressclass",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: true,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::networking::v1::IngressClass>,
    schema: schema_of::<k8s_openapi::api::networking::v1::IngressClass>,
};

pub(super) struct IngressClass;

impl Kind for IngressClass {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        if obj
            .pointer("/spec/controller")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            errs.push(required("spec.controller"));
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        immutable(old, new, "/spec/controller", "spec.controller", errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Controller", "string", 0),
            ("Parameters", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let parameters = obj
            .pointer("/spec/parameters")
            .map(|p| {
                let group = p["apiGroup"]
                    .as_str()
                    .map(|g| format!(".{g}"))
                    .unwrap_or_default();
                format!(
                    "{}{group}/{}",
                    p["kind"].as_str().unwrap_or_default(),
                    p["name"].as_str().unwrap_or_default()
                )
            })
            .unwrap_or_else(|| "<none>".into());
        vec![
            print::name(obj),
            json!(
                obj.pointer("/spec/controller")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            ),
            json!(parameters),
            age(obj),
        ]
    }
}

/// The class the server creates at start, if missing.
pub fn default_class() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {
            "name": DEFAULT_CLASS,
            "annotations": {IS_DEFAULT: "true"},
        },
        "spec": {"controller": CONTROLLER},
    })
}
