//! ClusterRoleBindings (rbac.authorization.k8s.io/v1, cluster-scoped): grant a
//! ClusterRole's rules everywhere to users, groups and ServiceAccounts. What they check
//! and show is `rbac.rs`'s, shared with RoleBindings; binding a role takes holding it, or
//! the `bind` verb on it (`auth::escalation`).

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::rbac::{self, BindingKind};

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

pub(super) const KIND: BindingKind = BindingKind {
    info: &INFO,
    cluster: true,
};
