//! ConfigMaps: key names, immutable data once `immutable` is set, the DATA column.
//! Secrets check their data alike.

use serde_json::{Value, json};

use std::collections::HashSet;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::{self as v, FieldError, FieldErrorType};

use super::Kind;
use crate::kinds::fields::{err, immutable, invalid};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ConfigMap",
    plural: "configmaps",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::ConfigMap>,
    schema: schema_of::<k8s_openapi::api::core::v1::ConfigMap>,
};

/// Keys of `data` and `binaryData` are ConfigMap keys, each used once across both.
pub(super) fn validate_data_keys(obj: &Value, errs: &mut Vec<FieldError>) {
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

/// An object stored with `immutable: true` keeps its data and stays immutable.
pub(super) fn validate_immutable_data(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    if old.get("immutable") == Some(&Value::Bool(true)) {
        immutable(old, new, "/data", "data", errs);
        immutable(old, new, "/binaryData", "binaryData", errs);
        immutable(old, new, "/immutable", "immutable", errs);
    }
}

pub(super) struct ConfigMap;

impl Kind for ConfigMap {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_data_keys(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_immutable_data(old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Data", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        let count = ["data", "binaryData"]
            .iter()
            .filter_map(|f| obj.get(*f).and_then(Value::as_object))
            .map(|m| m.len())
            .sum::<usize>();
        vec![name, json!(count), age(obj)]
    }
}
