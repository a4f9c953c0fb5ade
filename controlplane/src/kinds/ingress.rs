//! Ingresses (networking.k8s.io/v1): rules of a host (exact, or a `*.` wildcard) and
//! paths, each path with a `pathType` and a backend that is a Service (by port number
//! or name) or a resource, TLS sections naming hosts and a Secret; checked with
//! Kubernetes' field paths. kubectl's CLASS, HOSTS, ADDRESS and PORTS columns. The
//! gateway is the controller of the class `skiff`; see `crate::ingress`.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{self as v, FieldError};

use super::Kind;
use crate::kinds::fields::{invalid, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "networking.k8s.io",
    version: "v1",
    kind: "Ingress",
    plural: "ingresses",
    singular: "ingress",
    namespaced: true,
    short_names: &["ing"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<k8s_openapi::api::networking::v1::Ingress>,
    schema: schema_of::<k8s_openapi::api::networking::v1::Ingress>,
};

pub(super) struct Ingress;

/// A rule's host: a DNS subdomain, or `*.` and one.
pub(super) fn validate_host(host: &str, field: &str, errs: &mut Vec<FieldError>) {
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        errs.push(invalid(
            field,
            host,
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and end with an alphanumeric character (e.g. '*.example.com', regex used for validation is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        ));
        return;
    }
    for message in v::is_dns1123_subdomain(name) {
        errs.push(invalid(field, host, &message));
    }
}

/// A backend: exactly one of a Service (with a port number or name) and a resource.
fn validate_backend(backend: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let service = backend.get("service").filter(|s| !s.is_null());
    let resource = backend.get("resource").filter(|s| !s.is_null());
    match (service, resource) {
        (Some(_), Some(_)) => errs.push(invalid(
            field,
            "",
            "cannot set both resource and service backends",
        )),
        (None, None) => errs.push(invalid(
            field,
            "",
            "resource or service backend is required",
        )),
        (Some(service), None) => {
            let name = service["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errs.push(required(format!("{field}.service.name")));
            } else {
                for message in v::is_dns1035_label(name) {
                    errs.push(invalid(format!("{field}.service.name"), name, &message));
                }
            }
            let port = &service["port"];
            let number = port.get("number").and_then(Value::as_i64);
            let port_name = port
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty());
            match (number, port_name) {
                (Some(_), Some(_)) => errs.push(invalid(
                    format!("{field}.service.port"),
                    "",
                    "cannot set both port name & port number",
                )),
                (None, None) => errs.push(invalid(
                    format!("{field}.service.port"),
                    "",
                    "port name or number is required",
                )),
                (Some(n), None) if !(1..=65535).contains(&n) => errs.push(invalid(
                    format!("{field}.service.port.number"),
                    &n.to_string(),
                    "must be between 1 and 65535, inclusive",
                )),
                _ => {}
            }
        }
        (None, Some(_)) => {}
    }
}

impl Kind for Ingress {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let rules = spec["rules"].as_array().cloned().unwrap_or_default();
        if rules.is_empty() && spec.get("defaultBackend").is_none_or(Value::is_null) {
            errs.push(invalid(
                "spec",
                "",
                "either `defaultBackend` or `rules` must be specified",
            ));
        }
        if let Some(backend) = spec.get("defaultBackend").filter(|b| !b.is_null()) {
            validate_backend(backend, "spec.defaultBackend", errs);
        }
        for (i, rule) in rules.iter().enumerate() {
            if let Some(host) = rule["host"].as_str().filter(|h| !h.is_empty()) {
                validate_host(host, &format!("spec.rules[{i}].host"), errs);
            }
            let Some(paths) = rule.pointer("/http/paths").and_then(Value::as_array) else {
                continue;
            };
            for (j, path) in paths.iter().enumerate() {
                let field = format!("spec.rules[{i}].http.paths[{j}]");
                let kind = path["pathType"].as_str().unwrap_or_default();
                let text = path["path"].as_str().unwrap_or_default();
                match kind {
                    "" => errs.push(required(format!("{field}.pathType"))),
                    "Exact" | "Prefix" => {
                        if !text.starts_with('/') {
                            errs.push(invalid(
                                format!("{field}.path"),
                                text,
                                "must be an absolute path",
                            ));
                        }
                        for bad in ["//", "/./", "/../", "%2f", "%2F"] {
                            if text.contains(bad) {
                                errs.push(invalid(
                                    format!("{field}.path"),
                                    text,
                                    &format!("must not contain '{bad}'"),
                                ));
                            }
                        }
                    }
                    "ImplementationSpecific" => {
                        if !text.is_empty() && !text.starts_with('/') {
                            errs.push(invalid(
                                format!("{field}.path"),
                                text,
                                "must be an absolute path",
                            ));
                        }
                    }
                    other => errs.push(FieldError::not_supported(
                        format!("{field}.pathType"),
                        other,
                        &["Exact", "ImplementationSpecific", "Prefix"],
                    )),
                }
                validate_backend(&path["backend"], &format!("{field}.backend"), errs);
            }
        }
        for (i, tls) in spec["tls"].as_array().into_iter().flatten().enumerate() {
            for (j, host) in tls["hosts"].as_array().into_iter().flatten().enumerate() {
                if let Some(host) = host.as_str() {
                    validate_host(host, &format!("spec.tls[{i}].hosts[{j}]"), errs);
                }
            }
        }
        if let Some(class) = spec["ingressClassName"].as_str() {
            for message in v::is_dns1123_subdomain(class) {
                errs.push(invalid("spec.ingressClassName", class, &message));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Class", "string", 0),
            ("Hosts", "string", 0),
            ("Address", "string", 0),
            ("Ports", "string", 0),
            AGE,
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let spec = &obj["spec"];
        let hosts: Vec<&str> = spec["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["host"].as_str().filter(|h| !h.is_empty()).unwrap_or("*"))
            .collect();
        let addresses: Vec<&str> = obj
            .pointer("/status/loadBalancer/ingress")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
            .collect();
        let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
        vec![
            print::name(obj),
            json!(spec["ingressClassName"].as_str().unwrap_or("<none>")),
            json!(if hosts.is_empty() {
                "*".to_string()
            } else {
                hosts.join(",")
            }),
            json!(addresses.join(",")),
            json!(if tls { "80, 443" } else { "80" }),
            age(obj),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut errs = Vec::new();
        Ingress.validate(&json!({"spec": spec}), &mut errs);
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn rules_are_checked_like_kubernetes() {
        let backend = json!({"service": {"name": "web", "port": {"number": 80}}});
        assert!(
            errors(
                json!({"rules": [{"host": "*.example.com", "http": {"paths": [
                    {"path": "/", "pathType": "Prefix", "backend": backend}
                ]}}]})
            )
            .is_empty()
        );
        assert!(errors(json!({}))[0].contains("either `defaultBackend` or `rules`"));
        let bad = errors(json!({"rules": [{"host": "a.*.com", "http": {"paths": [
            {"path": "x", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {}}}},
            {"path": "/", "pathType": "Sometimes", "backend": backend},
        ]}}]}));
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert!(bad[0].contains("spec.rules[0].host"));
        assert!(bad[1].contains("must be an absolute path"));
        assert!(bad[2].contains("port name or number is required"));
        assert!(bad[3].contains("Unsupported value: \"Sometimes\""));
    }

    #[test]
    fn columns_show_class_hosts_address_and_ports() {
        let cells = Ingress.cells(&json!({
            "metadata": {"name": "web"},
            "spec": {"ingressClassName": "skiff", "rules": [{"host": "a.test"}, {}], "tls": [{"hosts": ["a.test"]}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
        }));
        assert_eq!(cells[1], "skiff");
        assert_eq!(cells[2], "a.test,*");
        assert_eq!(cells[3], "127.0.0.1");
        assert_eq!(cells[4], "80, 443");
    }
}
