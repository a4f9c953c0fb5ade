//! Which listeners of the gateway's Gateways an HTTPRoute attaches to, and the hosts
//! it answers for there: the Gateway API's parentRef, allowedRoutes and hostname
//! intersection rules.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::CONTROLLER;
use crate::objects;
use skiff_api::gatewayapi::{GROUP, HTTPRoute};

/// The names of the GatewayClasses whose controller is the gateway.
pub fn our_classes(classes: &[Arc<Value>]) -> HashSet<String> {
    classes
        .iter()
        .filter(|c| c.pointer("/spec/controllerName").and_then(Value::as_str) == Some(CONTROLLER))
        .map(|c| objects::name(c).to_string())
        .collect()
}

/// Whether a Gateway is the gateway's.
pub fn is_ours(gateway: &Value, classes: &HashSet<String>) -> bool {
    !objects::is_deleting(gateway)
        && gateway
            .pointer("/spec/gatewayClassName")
            .and_then(Value::as_str)
            .is_some_and(|c| classes.contains(c))
}

/// A host a route answers for, as matched against a request's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Exact(String),
    /// The suffix with its dot (`.example.com` for `*.example.com`).
    Wildcard(String),
    Any,
}

impl Host {
    fn parse(text: &str) -> Host {
        let text = text.to_ascii_lowercase();
        match text.strip_prefix('*') {
            Some(suffix) => Host::Wildcard(suffix.to_string()),
            None => Host::Exact(text),
        }
    }

    pub(super) fn matches(&self, host: &str) -> bool {
        match self {
            Host::Exact(h) => h == host,
            Host::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
            Host::Any => true,
        }
    }

    /// Smaller is more specific.
    pub(super) fn rank(&self) -> (u8, usize) {
        match self {
            Host::Exact(_) => (0, 0),
            Host::Wildcard(s) => (1, usize::MAX - s.len()),
            Host::Any => (2, 0),
        }
    }
}

/// The hosts a route with `hostnames` answers for on a listener with `listener`'s
/// hostname; empty when they do not intersect.
pub fn intersect(listener: Option<&str>, hostnames: &[String]) -> Vec<Host> {
    let listener = listener.filter(|l| !l.is_empty()).map(Host::parse);
    if hostnames.is_empty() {
        return vec![listener.unwrap_or(Host::Any)];
    }
    let mut out = Vec::new();
    for h in hostnames.iter().map(|h| Host::parse(h)) {
        let meet = match (&listener, &h) {
            (None, _) => Some(h.clone()),
            (Some(l), Host::Exact(name)) => l.matches(name).then(|| h.clone()),
            (Some(Host::Exact(name)), Host::Wildcard(_)) => {
                h.matches(name).then(|| Host::Exact(name.clone()))
            }
            (Some(Host::Wildcard(l)), Host::Wildcard(r)) => {
                if r.ends_with(l.as_str()) {
                    Some(h.clone())
                } else if l.ends_with(r.as_str()) {
                    listener.clone()
                } else {
                    None
                }
            }
            (Some(Host::Any), _) => Some(h.clone()),
            (Some(_), Host::Any) => listener.clone(),
        };
        if let Some(host) = meet
            && !out.contains(&host)
        {
            out.push(host);
        }
    }
    out
}

/// Where a route's parentRef led: the Gateway and its listeners it attached to, or why
/// it did not attach. Only parentRefs to the gateway's Gateways are here.
#[derive(Debug, Clone)]
pub struct Parent {
    /// Index in the route's `spec.parentRefs`.
    pub index: usize,
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// The names of the listeners it attached to.
    pub listeners: Vec<String>,
    /// The hosts it answers for there.
    pub hosts: Vec<Host>,
    /// Why it did not attach (an Accepted=False reason and message).
    pub refused: Option<(&'static str, String)>,
}

/// Where each route's parentRefs lead, for the gateway's Gateways.
pub fn attach(gateways: &[Arc<Value>], route: &Value, classes: &HashSet<String>) -> Vec<Parent> {
    let namespace = objects::namespace(route).unwrap_or("default");
    let Ok(typed) = serde_json::from_value::<HTTPRoute>(route.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (index, parent) in typed.spec.parent_refs.iter().enumerate() {
        if parent.group.as_deref().unwrap_or(GROUP) != GROUP
            || parent.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gw_namespace = parent.namespace.as_deref().unwrap_or(namespace);
        let Some(gateway) = gateways.iter().find(|g| {
            objects::name(g) == parent.name && objects::namespace(g) == Some(gw_namespace)
        }) else {
            continue;
        };
        if !is_ours(gateway, classes) {
            continue;
        }
        let mut found = Parent {
            index,
            gateway: format!("{gw_namespace}/{}", parent.name),
            listeners: Vec::new(),
            hosts: Vec::new(),
            refused: None,
        };
        let mut why: Option<(&'static str, String)> = None;
        for l in gateway
            .pointer("/spec/listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = l["name"].as_str().unwrap_or_default();
            if parent.section_name.as_deref().is_some_and(|s| s != name)
                || parent
                    .port
                    .is_some_and(|p| l["port"].as_i64() != Some(i64::from(p)))
            {
                continue;
            }
            if !matches!(l["protocol"].as_str(), Some("HTTP" | "HTTPS")) {
                why.get_or_insert((
                    "NotAllowedByListeners",
                    format!("listener {name} does not serve HTTP"),
                ));
                continue;
            }
            let from = l
                .pointer("/allowedRoutes/namespaces/from")
                .and_then(Value::as_str)
                .unwrap_or("Same");
            let kinds_ok = l
                .pointer("/allowedRoutes/kinds")
                .and_then(Value::as_array)
                .filter(|k| !k.is_empty())
                .is_none_or(|k| k.iter().any(|k| k["kind"] == "HTTPRoute"));
            if !kinds_ok || !(from == "All" || (from == "Same" && gw_namespace == namespace)) {
                why.get_or_insert((
                    "NotAllowedByListeners",
                    format!("listener {name} does not allow this route"),
                ));
                continue;
            }
            let hosts = intersect(l["hostname"].as_str(), &typed.spec.hostnames);
            if hosts.is_empty() {
                why.get_or_insert((
                    "NoMatchingListenerHostname",
                    format!("no hostname matches listener {name}'s"),
                ));
                continue;
            }
            found.listeners.push(name.to_string());
            for h in hosts {
                if !found.hosts.contains(&h) {
                    found.hosts.push(h);
                }
            }
        }
        if found.listeners.is_empty() {
            found.refused = Some(why.unwrap_or((
                "NoMatchingParent",
                format!(
                    "gateway {} has no listener {}",
                    found.gateway,
                    parent.section_name.as_deref().unwrap_or("")
                ),
            )));
        }
        out.push(found);
    }
    out
}

/// The Secret an HTTPS listener's first `certificateRefs` names, as `(namespace, name)`;
/// Err saying why it cannot be used (another kind, or another namespace: ReferenceGrants
/// are not served). None for a listener with no TLS.
pub fn certificate_ref(
    listener: &Value,
    namespace: &str,
) -> Option<Result<(String, String), String>> {
    let r = listener.pointer("/tls/certificateRefs/0")?;
    let name = r["name"].as_str().unwrap_or_default();
    if !r["group"].as_str().unwrap_or("").is_empty()
        || r["kind"].as_str().unwrap_or("Secret") != "Secret"
    {
        return Some(Err(format!("{name} is not a Secret")));
    }
    match r["namespace"].as_str() {
        Some(other) if other != namespace => Some(Err(format!(
            "secret {other}/{name} is in another namespace"
        ))),
        _ => Some(Ok((namespace.to_string(), name.to_string()))),
    }
}

/// The certificates the gateway's Gateways' HTTPS listeners with a hostname name: host,
/// namespace and Secret, for the HTTPS port's SNI lookup.
pub fn listener_certificates(
    gateways: &[Arc<Value>],
    classes: &HashSet<String>,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for gateway in gateways.iter().filter(|g| is_ours(g, classes)) {
        let namespace = objects::namespace(gateway).unwrap_or("default");
        for l in gateway
            .pointer("/spec/listeners")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if l["protocol"] != "HTTPS" {
                continue;
            }
            if let (Some(host), Some(Ok((ns, name)))) =
                (l["hostname"].as_str(), certificate_ref(l, namespace))
            {
                out.push((host.to_string(), ns, name));
            }
        }
    }
    out
}
