//! ServiceAccounts: the identities pods run as. The `default` one of every namespace is
//! made (and remade) by the ServiceAccount controller (`controllers/serviceaccount.rs`);
//! their tokens are TokenRequests (`serviceaccounts/NAME/token`, `auth/tokenrequest.rs`),
//! never stored. The SECRETS column counts the legacy `secrets` list, as kubectl shows it.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};

use super::Kind;
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    subresources: &[Subresource::Token],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::ServiceAccount>,
    schema: schema_of::<k8s_openapi::api::core::v1::ServiceAccount>,
};

/// The ServiceAccount every namespace has, and pods run as unless they name another.
pub const DEFAULT: &str = "default";

pub(super) struct ServiceAccount;

impl Kind for ServiceAccount {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Secrets", "integer", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let secrets = obj
            .get("secrets")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        vec![print::name(obj), json!(secrets), age(obj)]
    }
}
