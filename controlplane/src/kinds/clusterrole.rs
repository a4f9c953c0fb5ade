//! ClusterRoles (rbac.authorization.k8s.io/v1, cluster-scoped): rules of verbs on
//! resources or paths, optionally aggregated from other ClusterRoles (see
//! `controllers::clusterroleaggregation`). What they check and show is `rbac.rs`'s,
//! shared with Roles; who may write one is `auth::escalation`'s.

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::rbac::{self, RoleKind};

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

pub(super) const KIND: RoleKind = RoleKind {
    info: &INFO,
    cluster: true,
};
