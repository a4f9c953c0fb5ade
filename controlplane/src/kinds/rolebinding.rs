//! RoleBindings (rbac.authorization.k8s.io/v1, namespaced): grant a Role's or a
//! ClusterRole's rules in their namespace to users, groups and ServiceAccounts. What they
//! check and show is `rbac.rs`'s, shared with ClusterRoleBindings; binding a role takes
//! holding it, or the `bind` verb on it (`auth::escalation`).

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::rbac::{self, BindingKind};

static INFO: ResourceInfo = ResourceInfo {
    group: rbac::GROUP,
    version: "v1",
    kind: "RoleBinding",
    plural: "rolebindings",
    singular: "rolebinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::rbac::v1::RoleBinding>,
    schema: schema_of::<k8s_openapi::api::rbac::v1::RoleBinding>,
};

pub(super) const KIND: BindingKind = BindingKind {
    info: &INFO,
    cluster: false,
};
