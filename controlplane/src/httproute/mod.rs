//! The gateway as a Gateway API controller (controller name `skiff.dev/gateway`): which
//! HTTPRoutes attach to which listeners of its Gateways, the routing table they make,
//! and what a matched rule does to a request (filters, weighted backend choice). Their
//! statuses are in [`status`].
//!
//! A Gateway is the gateway's when its `gatewayClassName` names a GatewayClass whose
//! `controllerName` is `skiff.dev/gateway`. Every listener of protocol HTTP or HTTPS is
//! served on the gateway's own ports (its `port` is not bound: `skiff server` serves
//! one HTTP and one HTTPS port for all of them). An HTTPRoute attaches through a
//! `parentRef` to such a Gateway (in the route's namespace unless the ref names one),
//! to the listener its `sectionName` or `port` picks or else to all, when the
//! listener's `allowedRoutes` lets it (namespaces `Same` or `All`; `Selector` is not
//! supported) and its hostnames intersect the listener's.
//!
//! Matching and precedence as the Gateway API specifies: the most specific host first
//! (exact, then the longest `*.` wildcard, which covers one or more labels, then any),
//! then an Exact path over a PathPrefix (matched on whole `/` elements), the longest
//! prefix, a method match, the most header matches, the most query matches, the oldest
//! route, the route's namespace/name, the rule's order. RegularExpression matches are
//! not supported: their rules are left out and the route shows
//! `PartiallyInvalid=True` (reason UnsupportedValue), as are rules with filters other
//! than RequestHeaderModifier and URLRewrite.
//!
//! In the gateway, HTTPRoutes come first, then Ingress rules, then the App routes, then
//! an Ingress default backend (see `crate::gateway`).

mod attach;
mod resolve;
pub mod status;

pub use attach::{
    Host, Parent, attach, certificate_ref, intersect, is_ours, listener_certificates, our_classes,
};
pub use resolve::{Resolved, resolve};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;

use crate::ingress::Backend;
use crate::objects;

pub use crate::kinds::gatewayclass::CONTROLLER;

/// How a rule's path matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PathMatch {
    Exact(String),
    /// Without its trailing `/` (empty for `/`).
    Prefix(String),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => {
                p.is_empty()
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
        }
    }
}

/// What a matched rule does to a request before it is forwarded.
#[derive(Debug, Default)]
pub struct Filters {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    rewrite_host: Option<HeaderValue>,
    rewrite_path: Option<PathRewrite>,
}

#[derive(Debug, Clone)]
enum PathRewrite {
    Full(String),
    Prefix(String),
}

/// A rule's backends and filters, shared by the entries of its matches.
#[derive(Debug)]
pub struct Action {
    /// Each backend with its weight (a weight of 0 never takes a request).
    pub backends: Vec<(Backend, u32)>,
    filters: Filters,
}

impl Action {
    /// The backend a request goes to: chosen at random in proportion to the weights
    /// (the Gateway API's weighted split). None when there is none to choose: no
    /// backend, or every weight 0 (the spec's 500).
    pub fn pick(&self) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut at = rand::random_range(0..total);
        for (backend, weight) in &self.backends {
            if at < u64::from(*weight) {
                return Some(backend);
            }
            at -= u64::from(*weight);
        }
        None
    }
}

/// One match of one rule, for one host.
#[derive(Debug)]
struct Entry {
    host: Host,
    path: PathMatch,
    method: Option<Method>,
    headers: Vec<(HeaderName, String)>,
    query: Vec<(String, String)>,
    action: Arc<Action>,
}

/// The HTTPRoute routing table: entries in precedence order.
#[derive(Debug, Default)]
pub struct HttpRoutes {
    entries: Vec<Entry>,
}

/// A request's match: the rule's action and the path prefix matched (for
/// ReplacePrefixMatch).
pub struct Hit<'a> {
    pub action: &'a Action,
    prefix: Option<&'a str>,
}

impl HttpRoutes {
    /// The routing table of the gateway's Gateways' routes.
    pub fn build(
        gateways: &[Arc<Value>],
        routes: &[Arc<Value>],
        classes: &HashSet<String>,
        services: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
    ) -> HttpRoutes {
        let mut ranked = Vec::new();
        for route in routes.iter().filter(|r| !objects::is_deleting(r)) {
            let hosts: Vec<Host> = attach(gateways, route, classes)
                .into_iter()
                .flat_map(|p| p.hosts)
                .fold(Vec::new(), |mut all, h| {
                    if !all.contains(&h) {
                        all.push(h);
                    }
                    all
                });
            if hosts.is_empty() {
                continue;
            }
            let created = objects::meta_str(route, "creationTimestamp")
                .unwrap_or_default()
                .to_string();
            let id = format!(
                "{}/{}",
                objects::namespace(route).unwrap_or_default(),
                objects::name(route)
            );
            for (r, rule) in resolve(route, services).rules.into_iter().enumerate() {
                let Some((matches, action)) = rule else {
                    continue;
                };
                for (m, matched) in matches.iter().enumerate() {
                    let path = matched.path.clone().unwrap_or_default();
                    let value = path.value.unwrap_or_else(|| "/".into());
                    let path = match path.type_.as_deref() {
                        Some("Exact") => PathMatch::Exact(value),
                        _ => PathMatch::Prefix(value.trim_end_matches('/').to_string()),
                    };
                    let method = matched
                        .method
                        .as_deref()
                        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
                    let headers: Vec<(HeaderName, String)> = matched
                        .headers
                        .iter()
                        .filter_map(|h| {
                            Some((HeaderName::try_from(h.name.as_str()).ok()?, h.value.clone()))
                        })
                        .collect();
                    let query: Vec<(String, String)> = matched
                        .query_params
                        .iter()
                        .map(|q| (q.name.clone(), q.value.clone()))
                        .collect();
                    for host in &hosts {
                        let (exact, len) = match &path {
                            PathMatch::Exact(p) => (0u8, p.len()),
                            PathMatch::Prefix(p) => (1, p.len()),
                        };
                        let key = (
                            host.rank(),
                            exact,
                            usize::MAX - len,
                            method.is_none(),
                            usize::MAX - headers.len(),
                            usize::MAX - query.len(),
                            created.clone(),
                            id.clone(),
                            r,
                            m,
                        );
                        ranked.push((
                            key,
                            Entry {
                                host: host.clone(),
                                path: path.clone(),
                                method: method.clone(),
                                headers: headers.clone(),
                                query: query.clone(),
                                action: action.clone(),
                            },
                        ));
                    }
                }
            }
        }
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        HttpRoutes {
            entries: ranked.into_iter().map(|(_, e)| e).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first entry, in precedence order, that a request to `host` (lowercase, no
    /// port) matches.
    pub fn route<B>(&self, host: &str, request: &http::Request<B>) -> Option<Hit<'_>> {
        let path = request.uri().path();
        let query: HashMap<String, String> = request
            .uri()
            .query()
            .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .rev()
            .collect();
        let entry = self.entries.iter().find(|e| {
            e.host.matches(host)
                && e.path.matches(path)
                && e.method.as_ref().is_none_or(|m| m == request.method())
                && e.headers.iter().all(|(name, value)| {
                    request
                        .headers()
                        .get(name)
                        .is_some_and(|v| v.as_bytes() == value.as_bytes())
                })
                && e.query
                    .iter()
                    .all(|(name, value)| query.get(name) == Some(value))
        })?;
        Some(Hit {
            action: &entry.action,
            prefix: match &entry.path {
                PathMatch::Prefix(p) => Some(p.as_str()),
                PathMatch::Exact(_) => None,
            },
        })
    }
}

impl Hit<'_> {
    /// Applies the rule's filters to the request: header changes, then rewrites.
    pub fn apply<B>(&self, request: &mut http::Request<B>) {
        let f = &self.action.filters;
        let headers = request.headers_mut();
        for (name, value) in &f.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &f.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &f.remove {
            headers.remove(name);
        }
        if let Some(host) = &f.rewrite_host {
            headers.insert(http::header::HOST, host.clone());
        }
        let Some(rewrite) = &f.rewrite_path else {
            return;
        };
        let path = request.uri().path();
        let new_path = match rewrite {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(replacement) => {
                let rest = &path[self.prefix.map_or(0, str::len).min(path.len())..];
                let joined = format!("{}{rest}", replacement.trim_end_matches('/'));
                if joined.is_empty() {
                    "/".to_string()
                } else {
                    joined
                }
            }
        };
        let pq = match request.uri().query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        let mut parts = request.uri().clone().into_parts();
        if let Ok(pq) = pq.parse() {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
}

#[cfg(test)]
mod tests;
