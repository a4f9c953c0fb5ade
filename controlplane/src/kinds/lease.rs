//! Leases: the HOLDER column.

use serde_json::Value;

use skiff_api::resources::ResourceInfo;

use super::Kind;
use crate::apiserver::tables::{self, AGE, Column, NAME, age, or_none, s};

pub(super) struct Lease;

impl Kind for Lease {
    fn info(&self) -> &'static ResourceInfo {
        served!("coordination.k8s.io", "leases")
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Holder", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            tables::name(obj),
            or_none(s(obj, "/spec/holderIdentity").to_string()),
            age(obj),
        ]
    }
}
