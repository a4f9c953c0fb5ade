//! Gateways (gateway.networking.k8s.io/v1): a class and listeners (a name, port,
//! protocol, optional hostname and the routes they allow), checked as the standard CRD's
//! OpenAPI and CEL rules check them; kubectl's CLASS, ADDRESS and PROGRAMMED columns.
//! The gateway programs those of its classes; see `crate::httproute`.

use std::collections::HashSet;

use serde_json::{Value, json};

use skiff_api::gatewayapi::{GROUP, VERSION};
use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError};

use super::Kind;
use super::gatewayclass::condition_status;
use super::ingress::validate_host;
use crate::kinds::fields::{default_at, invalid, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// The CRD's bound on listeners.
const MAX_LISTENERS: usize = 64;

static INFO: ResourceInfo = ResourceInfo {
    group: GROUP,
    version: VERSION,
    kind: "Gateway",
    plural: "gateways",
    singular: "gateway",
    namespaced: true,
    short_names: &["gtw"],
    categories: &["gateway-api"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<skiff_api::gatewayapi::Gateway>,
    schema: schema_of::<skiff_api::gatewayapi::Gateway>,
};

pub(super) struct Gateway;

impl Kind for Gateway {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn default(&self, obj: &mut Value) {
        let count = obj
            .pointer("/spec/listeners")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        for i in 0..count {
            let listener = &mut obj["spec"]["listeners"][i];
            default_at(
                listener,
                &["allowedRoutes", "namespaces", "from"],
                json!("Same"),
            );
            if matches!(listener["protocol"].as_str(), Some("HTTPS" | "TLS"))
                && listener.get("tls").is_some_and(|t| !t.is_null())
            {
                default_at(listener, &["tls", "mode"], json!("Terminate"));
            }
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let class = spec["gatewayClassName"].as_str().unwrap_or_default();
        if class.is_empty() {
            errs.push(required("spec.gatewayClassName"));
        }
        let listeners = spec["listeners"].as_array().cloned().unwrap_or_default();
        if listeners.is_empty() {
            errs.push(required("spec.listeners"));
        }
        if listeners.len() > MAX_LISTENERS {
            errs.push(invalid(
                "spec.listeners",
                &listeners.len().to_string(),
                &format!("must have at most {MAX_LISTENERS} items"),
            ));
        }
        let mut names = HashSet::new();
        let mut bindings = HashSet::new();
        for (i, l) in listeners.iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            let name = l["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errs.push(required(format!("{field}.name")));
            } else {
                for m in v::is_dns1123_label(name) {
                    errs.push(invalid(format!("{field}.name"), name, &m));
                }
                if !names.insert(name.to_string()) {
                    errs.push(FieldError::duplicate(format!("{field}.name"), name));
                }
            }
            let port = l["port"].as_i64().unwrap_or(0);
            if !(1..=65535).contains(&port) {
                errs.push(invalid(
                    format!("{field}.port"),
                    &port.to_string(),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            let protocol = l["protocol"].as_str().unwrap_or_default();
            if protocol.is_empty() {
                errs.push(required(format!("{field}.protocol")));
            }
            let hostname = l["hostname"].as_str();
            if let Some(h) = hostname {
                validate_host(h, &format!("{field}.hostname"), errs);
                if matches!(protocol, "TCP" | "UDP") {
                    errs.push(FieldError::forbidden(
                        format!("{field}.hostname"),
                        "hostname must not be specified for protocols ['TCP', 'UDP']",
                    ));
                }
            }
            let tls = l.get("tls").is_some_and(|t| !t.is_null());
            if matches!(protocol, "HTTPS" | "TLS") && !tls {
                errs.push(required(format!("{field}.tls")));
            }
            if matches!(protocol, "HTTP" | "TCP" | "UDP") && tls {
                errs.push(FieldError::forbidden(
                    format!("{field}.tls"),
                    "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
                ));
            }
            if !bindings.insert((port, protocol.to_string(), hostname.unwrap_or_default())) {
                errs.push(invalid(
                    field.clone(),
                    name,
                    "Combination of port, protocol and hostname must be unique for each listener",
                ));
            }
            let from = l
                .pointer("/allowedRoutes/namespaces/from")
                .and_then(Value::as_str);
            if let Some(from) = from
                && !matches!(from, "All" | "Same" | "Selector")
            {
                errs.push(FieldError::not_supported(
                    format!("{field}.allowedRoutes.namespaces.from"),
                    from,
                    &["All", "Same", "Selector"],
                ));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Class", "string", 0),
            ("Address", "string", 0),
            ("Programmed", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        // The CRD's column is `.status.addresses[*].value`.
        let addresses: Vec<&str> = obj
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a["value"].as_str())
            .collect();
        vec![
            print::name(obj),
            json!(print::s(obj, "/spec/gatewayClassName")),
            json!(addresses.join(",")),
            condition_status(obj, "Programmed"),
            age(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut obj = json!({"spec": spec});
        Gateway.default(&mut obj);
        let mut errs = Vec::new();
        Gateway.validate(&obj, &mut errs);
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn listeners_are_checked_as_the_crd_checks_them() {
        let ok = json!({"gatewayClassName": "skiff", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.example.com"}]});
        assert!(errors(ok).is_empty());
        let bad = errors(json!({"listeners": [
            {"name": "a", "port": 80, "protocol": "HTTP"},
            {"name": "a", "port": 0, "protocol": "HTTPS", "hostname": "a.*"},
            {"name": "c", "port": 80, "protocol": "HTTP"},
        ]}));
        assert_eq!(bad.len(), 6, "{bad:?}");
        assert!(bad[0].contains("spec.gatewayClassName"));
    }

    #[test]
    fn defaults_allow_routes_from_the_same_namespace() {
        let mut obj = json!({"spec": {"listeners": [{"name": "http"}]}});
        Gateway.default(&mut obj);
        assert_eq!(
            obj.pointer("/spec/listeners/0/allowedRoutes/namespaces/from"),
            Some(&json!("Same"))
        );
    }
}
