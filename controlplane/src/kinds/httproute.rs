//! HTTPRoutes (gateway.networking.k8s.io/v1): parents, hostnames and rules of matches,
//! filters and weighted Service backends; defaulted and checked as the standard CRD's
//! OpenAPI defaults and CEL rules do for the fields Skiff serves; kubectl's HOSTNAMES
//! column. The gateway routes them; see `crate::httproute`.

use std::collections::HashSet;

use serde_json::{Value, json};

use skiff_api::gatewayapi::{GROUP, VERSION};
use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::FieldError;

use super::Kind;
use super::ingress::validate_host;
use crate::kinds::fields::{default_at, invalid, required};
use crate::kinds::print::{self, AGE, Column, NAME, age};

/// The CRD's bounds: parents, hostnames, rules, and backends or filters of a rule.
const MAX_PARENTS: usize = 32;
const MAX_HOSTNAMES: usize = 16;
const MAX_RULES: usize = 16;
const MAX_PER_RULE: usize = 16;
/// A backend's weight is at most this (the CRD's maximum).
pub const MAX_WEIGHT: i64 = 1_000_000;

const FILTER_TYPES: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

static INFO: ResourceInfo = ResourceInfo {
    group: GROUP,
    version: VERSION,
    kind: "HTTPRoute",
    plural: "httproutes",
    singular: "httproute",
    namespaced: true,
    short_names: &[],
    categories: &["gateway-api"],
    subresources: &[Subresource::Status],
    has_spec: true,
    status_on_create: StatusOnCreate::Reset,
    extra_fields: &[],
    normalize: through::<skiff_api::gatewayapi::HTTPRoute>,
    schema: schema_of::<skiff_api::gatewayapi::HTTPRoute>,
};

pub(super) struct HTTPRoute;

fn each(obj: &mut Value, pointer: &str, mut f: impl FnMut(&mut Value)) {
    if let Some(list) = obj.pointer_mut(pointer).and_then(Value::as_array_mut) {
        list.iter_mut().for_each(&mut f);
    }
}

impl Kind for HTTPRoute {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn default(&self, obj: &mut Value) {
        let root = json!([{"path": {"type": "PathPrefix", "value": "/"}}]);
        each(obj, "/spec/parentRefs", |p| {
            default_at(p, &["group"], json!(GROUP));
            default_at(p, &["kind"], json!("Gateway"));
        });
        if obj
            .pointer("/spec/rules")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        {
            default_at(obj, &["spec", "rules"], json!([{"matches": root}]));
        }
        each(obj, "/spec/rules", |rule| {
            default_at(rule, &["matches"], root.clone());
            each(rule, "/matches", |m| {
                default_at(m, &["path"], json!({}));
                default_at(m, &["path", "type"], json!("PathPrefix"));
                default_at(m, &["path", "value"], json!("/"));
                each(m, "/headers", |h| default_at(h, &["type"], json!("Exact")));
                each(m, "/queryParams", |q| {
                    default_at(q, &["type"], json!("Exact"))
                });
            });
            each(rule, "/backendRefs", |b| {
                default_at(b, &["group"], json!(""));
                default_at(b, &["kind"], json!("Service"));
                default_at(b, &["weight"], json!(1));
            });
        });
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        let spec = &obj["spec"];
        let list = |p: &str| spec[p].as_array().cloned().unwrap_or_default();
        let bound = |errs: &mut Vec<FieldError>, field: &str, len: usize, max: usize| {
            if len > max {
                errs.push(invalid(
                    field,
                    &len.to_string(),
                    &format!("must have at most {max} items"),
                ));
            }
        };
        let parents = list("parentRefs");
        bound(errs, "spec.parentRefs", parents.len(), MAX_PARENTS);
        for (i, p) in parents.iter().enumerate() {
            if p["name"].as_str().is_none_or(str::is_empty) {
                errs.push(required(format!("spec.parentRefs[{i}].name")));
            }
        }
        let hostnames = list("hostnames");
        bound(errs, "spec.hostnames", hostnames.len(), MAX_HOSTNAMES);
        for (i, h) in hostnames.iter().enumerate() {
            validate_host(
                h.as_str().unwrap_or_default(),
                &format!("spec.hostnames[{i}]"),
                errs,
            );
        }
        let rules = list("rules");
        bound(errs, "spec.rules", rules.len(), MAX_RULES);
        for (i, rule) in rules.iter().enumerate() {
            validate_rule(rule, &format!("spec.rules[{i}]"), errs);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Hostnames", "string", 0), AGE]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        // The CRD's column is `.spec.hostnames`, which kubectl prints as JSON.
        let hostnames = obj
            .pointer("/spec/hostnames")
            .filter(|h| h.as_array().is_some_and(|a| !a.is_empty()))
            .map(Value::to_string)
            .unwrap_or_default();
        vec![print::name(obj), json!(hostnames), age(obj)]
    }
}

fn validate_rule(rule: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let matches = rule["matches"].as_array().cloned().unwrap_or_default();
    for (j, m) in matches.iter().enumerate() {
        let field = format!("{field}.matches[{j}]");
        let kind = m
            .pointer("/path/type")
            .and_then(Value::as_str)
            .unwrap_or("PathPrefix");
        let value = m
            .pointer("/path/value")
            .and_then(Value::as_str)
            .unwrap_or("/");
        match kind {
            "Exact" | "PathPrefix" => {
                if !value.starts_with('/') {
                    errs.push(invalid(
                        format!("{field}.path.value"),
                        value,
                        "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']",
                    ));
                }
                for bad in ["//", "/./", "/../", "%2f", "%2F", "#"] {
                    if value.contains(bad) {
                        errs.push(invalid(
                            format!("{field}.path.value"),
                            value,
                            &format!(
                                "must not contain '{bad}' when type one of ['Exact', 'PathPrefix']"
                            ),
                        ));
                    }
                }
            }
            "RegularExpression" => {}
            other => errs.push(FieldError::not_supported(
                format!("{field}.path.type"),
                other,
                &["Exact", "PathPrefix", "RegularExpression"],
            )),
        }
        let mut names = HashSet::new();
        for (k, h) in m["headers"].as_array().into_iter().flatten().enumerate() {
            let hf = format!("{field}.headers[{k}]");
            let name = h["name"].as_str().unwrap_or_default();
            if name.is_empty() {
                errs.push(required(format!("{hf}.name")));
            } else if !names.insert(name.to_ascii_lowercase()) {
                errs.push(FieldError::duplicate(format!("{hf}.name"), name));
            }
            let t = h["type"].as_str().unwrap_or("Exact");
            if !matches!(t, "Exact" | "RegularExpression") {
                errs.push(FieldError::not_supported(
                    format!("{hf}.type"),
                    t,
                    &["Exact", "RegularExpression"],
                ));
            }
        }
        if let Some(method) = m["method"].as_str()
            && !METHODS.contains(&method)
        {
            errs.push(FieldError::not_supported(
                format!("{field}.method"),
                method,
                METHODS,
            ));
        }
    }
    let filters = rule["filters"].as_array().cloned().unwrap_or_default();
    validate_filters(&filters, field, errs);
    let replaces_prefix = filters.iter().any(|f| {
        f.pointer("/urlRewrite/path/type").and_then(Value::as_str) == Some("ReplacePrefixMatch")
    });
    let one_prefix = matches.len() == 1
        && matches[0].pointer("/path/type").and_then(Value::as_str) == Some("PathPrefix");
    if replaces_prefix && !one_prefix {
        errs.push(invalid(
            field,
            "",
            "When using URLRewrite filter with path.replacePrefixMatch, exactly one PathPrefix match must be specified",
        ));
    }
    let backends = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    if backends.len() > MAX_PER_RULE {
        errs.push(invalid(
            format!("{field}.backendRefs"),
            &backends.len().to_string(),
            &format!("must have at most {MAX_PER_RULE} items"),
        ));
    }
    for (j, b) in backends.iter().enumerate() {
        let bf = format!("{field}.backendRefs[{j}]");
        if b["name"].as_str().is_none_or(str::is_empty) {
            errs.push(required(format!("{bf}.name")));
        }
        let weight = b["weight"].as_i64().unwrap_or(1);
        if !(0..=MAX_WEIGHT).contains(&weight) {
            errs.push(invalid(
                format!("{bf}.weight"),
                &weight.to_string(),
                &format!("must be between 0 and {MAX_WEIGHT}, inclusive"),
            ));
        }
        let service = b["group"].as_str().unwrap_or("").is_empty()
            && b["kind"].as_str().unwrap_or("Service") == "Service";
        match b["port"].as_i64() {
            None if service => errs.push(invalid(
                bf.clone(),
                "",
                "Must have port for Service reference",
            )),
            Some(p) if !(1..=65535).contains(&p) => errs.push(invalid(
                format!("{bf}.port"),
                &p.to_string(),
                "must be between 1 and 65535, inclusive",
            )),
            _ => {}
        }
        let filters = b["filters"].as_array().cloned().unwrap_or_default();
        validate_filters(&filters, &bf, errs);
    }
}

/// Each filter names a known type and carries the field of that type (and no other), as
/// the CRD's CEL rules say; a rule has at most one of each header modifier.
fn validate_filters(filters: &[Value], field: &str, errs: &mut Vec<FieldError>) {
    if filters.len() > MAX_PER_RULE {
        errs.push(invalid(
            format!("{field}.filters"),
            &filters.len().to_string(),
            &format!("must have at most {MAX_PER_RULE} items"),
        ));
    }
    let mut seen = HashSet::new();
    for (k, f) in filters.iter().enumerate() {
        let ff = format!("{field}.filters[{k}]");
        let t = f["type"].as_str().unwrap_or_default();
        if !FILTER_TYPES.contains(&t) {
            errs.push(FieldError::not_supported(
                format!("{ff}.type"),
                t,
                FILTER_TYPES,
            ));
            continue;
        }
        let own = match t {
            "URLRewrite" => "urlRewrite".to_string(),
            other => {
                let mut c = other.chars();
                c.next()
                    .map(|x| x.to_ascii_lowercase().to_string() + c.as_str())
                    .unwrap_or_default()
            }
        };
        if f.get(&own).is_none_or(Value::is_null) {
            errs.push(invalid(
                ff.clone(),
                t,
                &format!("filter.{own} must be specified for {t} filter.type"),
            ));
        }
        if matches!(
            t,
            "RequestHeaderModifier" | "ResponseHeaderModifier" | "URLRewrite" | "RequestRedirect"
        ) && !seen.insert(t)
        {
            errs.push(invalid(
                ff.clone(),
                t,
                &format!("{t} filter cannot be repeated"),
            ));
        }
        if let Some(path) = f.pointer("/urlRewrite/path") {
            let pt = path["type"].as_str().unwrap_or_default();
            let (wants, other) = match pt {
                "ReplaceFullPath" => ("replaceFullPath", "replacePrefixMatch"),
                "ReplacePrefixMatch" => ("replacePrefixMatch", "replaceFullPath"),
                _ => {
                    errs.push(FieldError::not_supported(
                        format!("{ff}.urlRewrite.path.type"),
                        pt,
                        &["ReplaceFullPath", "ReplacePrefixMatch"],
                    ));
                    continue;
                }
            };
            if path.get(wants).is_none_or(Value::is_null)
                || path.get(other).is_some_and(|v| !v.is_null())
            {
                errs.push(invalid(
                    format!("{ff}.urlRewrite.path"),
                    pt,
                    &format!("{wants} must be specified (and {other} must not) when type is {pt}"),
                ));
            }
        }
        if let Some(h) = f.pointer("/urlRewrite/hostname").and_then(Value::as_str) {
            validate_host(h, &format!("{ff}.urlRewrite.hostname"), errs);
        }
    }
    if seen.contains("URLRewrite") && seen.contains("RequestRedirect") {
        errs.push(invalid(
            format!("{field}.filters"),
            "",
            "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(spec: Value) -> Vec<String> {
        let mut obj = json!({"spec": spec});
        HTTPRoute.default(&mut obj);
        let mut errs = Vec::new();
        HTTPRoute.validate(&obj, &mut errs);
        errs.into_iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn defaults_are_the_crds() {
        let mut obj = json!({"spec": {"parentRefs": [{"name": "gw"}],
            "rules": [{"matches": [{"headers": [{"name": "x", "value": "1"}]}],
                       "backendRefs": [{"name": "web", "port": 80}]}]}});
        HTTPRoute.default(&mut obj);
        let spec = &obj["spec"];
        assert_eq!(spec["parentRefs"][0]["kind"], "Gateway");
        assert_eq!(spec["parentRefs"][0]["group"], GROUP);
        let m = &spec["rules"][0]["matches"][0];
        assert_eq!(m["path"], json!({"type": "PathPrefix", "value": "/"}));
        assert_eq!(m["headers"][0]["type"], "Exact");
        assert_eq!(spec["rules"][0]["backendRefs"][0]["weight"], 1);
        assert_eq!(spec["rules"][0]["backendRefs"][0]["kind"], "Service");
        let mut empty = json!({"spec": {}});
        HTTPRoute.default(&mut empty);
        assert_eq!(
            empty["spec"]["rules"][0]["matches"][0]["path"]["value"],
            "/"
        );
    }

    #[test]
    fn rules_are_checked_as_the_crds_cel_rules_check_them() {
        let good = json!({"hostnames": ["a.test", "*.b.test"], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}],
            "backendRefs": [{"name": "a", "port": 80, "weight": 90}, {"name": "b", "port": 80, "weight": 10}]}]});
        assert!(errors(good).is_empty());
        let bad = errors(json!({"hostnames": ["a.*.test"], "rules": [{
            "matches": [{"path": {"type": "Exact", "value": "/x"}, "headers": [{"name": "h", "value": "1", "type": "Prefix"}]}],
            "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
                        {"type": "RequestHeaderModifier"}],
            "backendRefs": [{"name": "a", "weight": 1000001}]}]}));
        let text = bad.join("\n");
        assert_eq!(bad.len(), 6, "{text}");
        for expected in [
            "spec.hostnames[0]",
            "Unsupported value: \"Prefix\"",
            "filter.requestHeaderModifier must be specified",
            "exactly one PathPrefix match must be specified",
            "must be between 0 and 1000000",
            "Must have port for Service reference",
        ] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
    }

    #[test]
    fn the_hostnames_column_prints_the_list() {
        let cells =
            HTTPRoute.cells(&json!({"metadata": {"name": "r"}, "spec": {"hostnames": ["a.test"]}}));
        assert_eq!(cells[1], "[\"a.test\"]");
    }
}
