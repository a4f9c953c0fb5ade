//! Roles (rbac.authorization.k8s.io/v1, namespaced): rules of verbs on resources.
//! What they check and show is `rbac.rs`'s, shared with ClusterRoles; who may write one
//! is `auth::escalation`'s: no one grants what they do not hold.

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::rbac::{self, RoleKind};

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

pub(super) const KIND: RoleKind = RoleKind {
    info: &INFO,
    cluster: false,
};
