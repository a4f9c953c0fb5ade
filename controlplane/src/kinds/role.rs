//! Roles (rbac.authorization.k8s.io/v1, namespaced): rules of verbs on resources. Who may write one is checked in `auth::rbac`: no one grants what they do not hold.

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::print::{Column, NAME};
use super::rbac;

static INFO: ResourceInfo = ResourceInfo {
    group: rbac::GROUP,
    version: "v1",
    kind: "Role",
    plural: "roles",
    singular: "role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::rbac::v1::Role>,
    schema: schema_of::<k8s_openapi::api::rbac::v1::Role>,
};

pub(super) struct Role;

impl Kind for Role {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<super::NameRules> {
        // Kubernetes allows any path segment name for roles (`system:node`).
        Some(skiff_api::validation::is_path_segment_name)
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_rules(obj, false, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![super::print::name(obj), rbac::created_at(obj)]
    }
}
