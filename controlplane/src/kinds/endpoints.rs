//! Endpoints: the ENDPOINTS column of ADDRESS:PORT pairs.

use serde_json::Value;

use skiff_api::resources::ResourceInfo;

use super::Kind;
use crate::apiserver::tables::{self, AGE, Column, NAME, age, or_none};

pub(super) struct Endpoints;

impl Kind for Endpoints {
    fn info(&self) -> &'static ResourceInfo {
        served!("", "endpoints")
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Endpoints", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = tables::name(obj);
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
