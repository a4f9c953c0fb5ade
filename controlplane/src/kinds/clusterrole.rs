//! ClusterRoles (rbac.authorization.k8s.io/v1, cluster-scoped): rules of verbs on resources or paths, optionally aggregated from other ClusterRoles (see `controllers::clusterroleaggregation`). Who may write one is checked in `auth::rbac`: no one grants what they do not hold.

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::print::{Column, NAME};
use super::rbac;

static INFO: ResourceInfo = ResourceInfo {
    group: rbac::GROUP,
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::rbac::v1::ClusterRole>,
    schema: schema_of::<k8s_openapi::api::rbac::v1::ClusterRole>,
};

pub(super) struct ClusterRole;

impl Kind for ClusterRole {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<super::NameRules> {
        // Kubernetes allows any path segment name for roles (`system:node`).
        Some(skiff_api::validation::is_path_segment_name)
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_rules(obj, true, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![super::print::name(obj), rbac::created_at(obj)]
    }
}
