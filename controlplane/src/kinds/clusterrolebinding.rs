//! ClusterRoleBindings (rbac.authorization.k8s.io/v1, cluster-scoped: grants a ClusterRole's rules everywhere) to users, groups and ServiceAccounts. Binding a role takes holding it, or the `bind` verb on it (`auth::rbac`).

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::print::{AGE, Column, NAME, age};
use super::rbac;

static INFO: ResourceInfo = ResourceInfo {
    group: rbac::GROUP,
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
    schema: schema_of::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>,
};

pub(super) struct ClusterRoleBinding;

impl Kind for ClusterRoleBinding {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn name_rules(&self) -> Option<super::NameRules> {
        Some(skiff_api::validation::is_path_segment_name)
    }

    fn default(&self, obj: &mut Value) {
        rbac::default_subjects(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding(obj, true, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        rbac::validate_binding_update(old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Role", "string", 0),
            AGE,
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            super::print::name(obj),
            rbac::role_cell(obj),
            age(obj),
            rbac::subjects_cell(obj, "User"),
            rbac::subjects_cell(obj, "Group"),
            rbac::subjects_cell(obj, "ServiceAccount"),
        ]
    }
}
