//! Namespaces: names are DNS labels; the `kubernetes` finalizer by default; the built-in
//! namespaces can't be deleted; a deleted namespace turns Terminating and stays until the
//! namespace cleaner has drained it.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation as v;

use super::{Kind, NameRules};
use crate::error::{ApiError, ApiResult};
use crate::kinds::fields::default_at;
use crate::kinds::print::{self, AGE, Column, NAME, age, s};
use crate::objects::set_path;

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &[Subresource::Status],
    has_spec: false,
    status_on_create: StatusOnCreate::Phase("Active"),
    extra_fields: &["status.phase"],
    normalize: through::<k8s_openapi::api::core::v1::Namespace>,
    schema: schema_of::<k8s_openapi::api::core::v1::Namespace>,
};

/// The namespaces the server itself needs.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

pub(super) struct Namespace;

impl Kind for Namespace {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<NameRules> {
        Some(v::is_dns1123_label)
    }

    fn default(&self, obj: &mut Value) {
        default_at(obj, &["spec", "finalizers"], json!(["kubernetes"]));
    }

    fn check_delete(&self, name: &str) -> ApiResult<()> {
        if PROTECTED_NAMESPACES.contains(&name) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
            )));
        }
        Ok(())
    }

    fn removed_by_server(&self) -> bool {
        true
    }

    fn mark_deleting(&self, obj: &mut Value) {
        set_path(obj, &["status", "phase"], json!("Terminating"));
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Status", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![print::name(obj), json!(s(obj, "/status/phase")), age(obj)]
    }
}
