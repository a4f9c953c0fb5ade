//! Leases: the HOLDER column.

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::Kind;
use crate::kinds::print::{self, AGE, Column, NAME, age, or_none, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "coordination.k8s.io",
    version: "v1",
    kind: "Lease",
    plural: "leases",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::coordination::v1::Lease>,
    schema: schema_of::<k8s_openapi::api::coordination::v1::Lease>,
};

pub(super) struct Lease;

impl Kind for Lease {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Holder", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            print::name(obj),
            or_none(s(obj, "/spec/holderIdentity").to_string()),
            age(obj),
        ]
    }
}
