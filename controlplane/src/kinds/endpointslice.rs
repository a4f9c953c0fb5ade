//! EndpointSlices: a supported addressType; the ADDRESSTYPE, PORTS and ENDPOINTS columns.

use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;
use skiff_api::validation::{FieldError, FieldErrorType};

use super::Kind;
use crate::apiserver::tables::{self, AGE, Column, NAME, age, n, or_none, s};
use crate::apiserver::validate::{err, required};

pub(super) struct EndpointSlice;

impl Kind for EndpointSlice {
    fn info(&self) -> &'static ResourceInfo {
        served!("discovery.k8s.io", "endpointslices")
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match obj.get("addressType").and_then(Value::as_str) {
            None => errs.push(required("addressType")),
            Some(t) if !["IPv4", "IPv6", "FQDN"].contains(&t) => errs.push(err(
                "addressType",
                FieldErrorType::NotSupported,
                format!(
                    "Unsupported value: \"{t}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
                ),
            )),
            _ => {}
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = tables::name(obj);
        let ports: Vec<String> = obj
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| n(p, "/port").to_string())
            .collect();
        let endpoints: Vec<String> = obj
            .get("endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        vec![
            name,
            json!(s(obj, "/addressType")),
            or_none(ports.join(",")),
            or_none(endpoints.join(",")),
            age(obj),
        ]
    }
}
