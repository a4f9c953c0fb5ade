//! What an HTTPRoute's rules resolve to: the filters and weighted Service backends of
//! each supported rule, the rules left out as unsupported, and the backends that do
//! not resolve.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::{Action, Filters, PathRewrite};
use crate::ingress::Backend;
use crate::objects;
use skiff_api::gatewayapi::HTTPRoute;

/// What a route's rules resolve to: the actions of its supported rules, why rules were
/// left out (PartiallyInvalid), and the backends that did not resolve (ResolvedRefs).
pub struct Resolved {
    /// Per rule: its matches and action, None if it was left out.
    pub rules: Vec<Option<(Vec<skiff_api::gatewayapi::HTTPRouteMatch>, Arc<Action>)>>,
    pub unsupported: Vec<String>,
    /// The first unresolved backend: the ResolvedRefs=False reason and message.
    pub unresolved: Option<(&'static str, String)>,
}

pub fn resolve(route: &Value, services: &dyn Fn(&str, &str) -> Option<Arc<Value>>) -> Resolved {
    let namespace = objects::namespace(route).unwrap_or("default");
    let typed: Option<HTTPRoute> = serde_json::from_value(route.clone()).ok();
    let mut out = Resolved {
        rules: Vec::new(),
        unsupported: Vec::new(),
        unresolved: None,
    };
    for (i, rule) in typed.iter().flat_map(|t| &t.spec.rules).enumerate() {
        let mut unsupported = Vec::new();
        for m in &rule.matches {
            if m.path.as_ref().and_then(|p| p.type_.as_deref()) == Some("RegularExpression") {
                unsupported.push(format!(
                    "rule {i}: RegularExpression path matches are not supported"
                ));
            }
            if m.headers
                .iter()
                .chain(&m.query_params)
                .any(|h| h.type_.as_deref().unwrap_or("Exact") != "Exact")
            {
                unsupported.push(format!(
                    "rule {i}: only Exact header and query matches are supported"
                ));
            }
        }
        let mut filters = Filters::default();
        for f in &rule.filters {
            match (f.type_.as_str(), &f.request_header_modifier, &f.url_rewrite) {
                ("RequestHeaderModifier", Some(m), _) => {
                    let pairs = |list: &[skiff_api::gatewayapi::HTTPHeader]| {
                        list.iter()
                            .filter_map(|h| {
                                Some((
                                    HeaderName::try_from(h.name.as_str()).ok()?,
                                    HeaderValue::try_from(h.value.as_str()).ok()?,
                                ))
                            })
                            .collect::<Vec<_>>()
                    };
                    filters.set = pairs(&m.set);
                    filters.add = pairs(&m.add);
                    filters.remove = m
                        .remove
                        .iter()
                        .filter_map(|n| HeaderName::try_from(n.as_str()).ok())
                        .collect();
                }
                ("URLRewrite", _, Some(r)) => {
                    filters.rewrite_host = r
                        .hostname
                        .as_deref()
                        .and_then(|h| HeaderValue::try_from(h).ok());
                    filters.rewrite_path = r.path.as_ref().and_then(|p| match p.type_.as_str() {
                        "ReplaceFullPath" => p.replace_full_path.clone().map(PathRewrite::Full),
                        "ReplacePrefixMatch" => {
                            p.replace_prefix_match.clone().map(PathRewrite::Prefix)
                        }
                        _ => None,
                    });
                }
                (other, _, _) => {
                    unsupported.push(format!("rule {i}: {other} filters are not supported"))
                }
            }
        }
        if rule.backend_refs.iter().any(|b| !b.filters.is_empty()) {
            unsupported.push(format!("rule {i}: backendRef filters are not supported"));
        }
        if !unsupported.is_empty() {
            out.unsupported.extend(unsupported);
            out.rules.push(None);
            continue;
        }
        let mut backends = Vec::new();
        for b in &rule.backend_refs {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let backend = resolve_backend(namespace, b, services);
            if let Err((reason, why)) = &backend {
                out.unresolved.get_or_insert((reason, why.clone()));
            }
            backends.push((
                backend.unwrap_or_else(|(_, why)| Backend::Broken(why)),
                weight,
            ));
        }
        out.rules.push(Some((
            rule.matches.clone(),
            Arc::new(Action { backends, filters }),
        )));
    }
    out
}

fn resolve_backend(
    namespace: &str,
    b: &skiff_api::gatewayapi::HTTPBackendRef,
    services: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
) -> Result<Backend, (&'static str, String)> {
    if !b.group.as_deref().unwrap_or("").is_empty()
        || b.kind.as_deref().unwrap_or("Service") != "Service"
    {
        return Err((
            "InvalidKind",
            format!("backend {} is not a Service", b.name),
        ));
    }
    if b.namespace.as_deref().is_some_and(|n| n != namespace) {
        // ReferenceGrants are not served: a Service of another namespace is never allowed.
        return Err((
            "RefNotPermitted",
            format!(
                "service {}/{} is in another namespace",
                b.namespace.as_deref().unwrap_or_default(),
                b.name
            ),
        ));
    }
    let Some(svc) = services(namespace, &b.name) else {
        return Err((
            "BackendNotFound",
            format!("service {namespace}/{} does not exist", b.name),
        ));
    };
    let port = b.port.unwrap_or(0);
    let has_port = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|p| p["port"].as_i64() == Some(i64::from(port)));
    if !has_port {
        return Err((
            "BackendNotFound",
            format!("service {namespace}/{} has no port {port}", b.name),
        ));
    }
    Ok(Backend::Service {
        namespace: namespace.to_string(),
        name: b.name.clone(),
    })
}
