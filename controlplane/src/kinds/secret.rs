//! Secrets: `stringData` folded into `data`, type Opaque by default, data checked as a
//! ConfigMap's, the TYPE and DATA columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::configmap::{validate_data_keys, validate_immutable_data};
use super::{CreateContext, Kind};
use crate::kinds::fields::default_at;
use crate::kinds::print::{self, AGE, Column, NAME, age, s};
use crate::objects::set_path;

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &["type"],
    normalize: through::<k8s_openapi::api::core::v1::Secret>,
    schema: schema_of::<k8s_openapi::api::core::v1::Secret>,
};

/// A Secret's `stringData` is a write-only convenience: it is merged into `data`
/// (base64) and never stored.
fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        set_path(obj, &["data", &k], json!(encoded));
    }
}

pub(super) struct Secret;

impl Kind for Secret {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn prepare_create(&self, obj: &mut Value, _ctx: &CreateContext<'_>) {
        fold_string_data(obj);
    }

    /// `stringData` is write-only on updates too, as in Kubernetes.
    fn prepare_update(&self, obj: &mut Value) {
        fold_string_data(obj);
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["type"], json!("Opaque"));
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_data_keys(obj, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_immutable_data(old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Type", "string", 0), ("Data", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        let count = ["data", "stringData"]
            .iter()
            .filter_map(|f| obj.get(*f).and_then(Value::as_object))
            .map(|m| m.len())
            .sum::<usize>();
        vec![name, json!(s(obj, "/type")), json!(count), age(obj)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_folded_into_data() {
        let mut s = json!({"stringData": {"user": "admin"}, "data": {"x": "eA=="}});
        fold_string_data(&mut s);
        assert_eq!(s, json!({"data": {"x": "eA==", "user": "YWRtaW4="}}));
    }
}
