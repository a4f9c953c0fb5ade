//! EndpointSlices: a supported addressType; the ADDRESSTYPE, PORTS and ENDPOINTS columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use crate::kinds::fields::required;
use crate::kinds::print::{self, AGE, Column, NAME, age, n, or_none, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    singular: "endpointslice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::discovery::v1::EndpointSlice>,
    schema: schema_of::<k8s_openapi::api::discovery::v1::EndpointSlice>,
};

pub(super) struct EndpointSlice;

impl Kind for EndpointSlice {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        match obj.get("addressType").and_then(Value::as_str) {
            None => errs.push(required("addressType")),
            Some(t) if !["IPv4", "IPv6", "FQDN"].contains(&t) => errs.push(
                FieldError::not_supported("addressType", t, &["FQDN", "IPv4", "IPv6"]),
            ),
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
        let name = print::name(obj);
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
