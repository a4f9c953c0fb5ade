//! Endpoints: the ENDPOINTS column of ADDRESS:PORT pairs.

use serde_json::Value;

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::Kind;
use crate::kinds::print::{self, AGE, Column, NAME, age, or_none};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    singular: "endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::core::v1::Endpoints>,
    schema: schema_of::<k8s_openapi::api::core::v1::Endpoints>,
};

pub(super) struct Endpoints;

impl Kind for Endpoints {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Endpoints", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        // ADDRESS:PORT pairs, as kubectl prints them.
        let pairs: Vec<String> = obj
            .get("subsets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|subset| {
                let ports: Vec<i64> = subset
                    .get("ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_i64())
                    .collect();
                let ips: Vec<String> = subset
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["ip"].as_str().map(str::to_string))
                    .collect();
                ips.into_iter()
                    .flat_map(move |ip| ports.clone().into_iter().map(move |p| format!("{ip}:{p}")))
                    .collect::<Vec<_>>()
            })
            .collect();
        vec![name, or_none(pairs.join(",")), age(obj)]
    }
}
