//! The statuses the gateway writes as the controller of its GatewayClasses, as the
//! Gateway API conformance tests read them: a class `Accepted`; a Gateway `Accepted`
//! and `Programmed` with the gateway's address and, per listener, its attached routes,
//! supported kinds and conditions; an HTTPRoute's `parents` entry per Gateway of ours,
//! `Accepted` and `ResolvedRefs` (and `PartiallyInvalid` when rules were left out).
//! Each function returns the whole status wanted, keeping a condition's
//! `lastTransitionTime` while its status stays, so the caller writes only on change.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{CONTROLLER, attach, is_ours, resolve};
use crate::objects;
use skiff_api::gatewayapi::GROUP;

/// A condition at the object's generation; its transition time kept from `old` (the
/// object's current conditions) if its status is the same.
fn condition(
    obj: &Value,
    old: Option<&Value>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = old
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map(str::to_string)
        .unwrap_or_else(objects::now_rfc3339);
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": obj.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
        "lastTransitionTime": since,
    })
}

/// A GatewayClass of the gateway's: Accepted.
pub fn class_status(class: &Value) -> Value {
    let old = class.pointer("/status/conditions");
    json!({"conditions": [condition(class, old, "Accepted", true, "Accepted", "the skiff gateway serves this class")]})
}

/// How many routes attach to each listener: by `namespace/gateway` and listener name.
pub fn attached_routes(
    gateways: &[Arc<Value>],
    routes: &[Arc<Value>],
    classes: &HashSet<String>,
) -> HashMap<(String, String), i64> {
    let mut counts = HashMap::new();
    for route in routes.iter().filter(|r| !objects::is_deleting(r)) {
        let mut seen = HashSet::new();
        for parent in attach(gateways, route, classes) {
            for l in parent.listeners {
                if seen.insert((parent.gateway.clone(), l.clone())) {
                    *counts.entry((parent.gateway.clone(), l)).or_default() += 1;
                }
            }
        }
    }
    counts
}

/// A Gateway of the gateway's: Accepted and Programmed, at `address` (kept beside those
/// other servers' gateways wrote), and its listeners.
pub fn gateway_status(
    gateway: &Value,
    secrets: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
    address: &str,
    attached: &HashMap<(String, String), i64>,
) -> Value {
    let id = format!(
        "{}/{}",
        objects::namespace(gateway).unwrap_or_default(),
        objects::name(gateway)
    );
    let old = gateway.get("status").cloned().unwrap_or(Value::Null);
    let mut addresses: Vec<Value> = old["addresses"].as_array().cloned().unwrap_or_default();
    if !addresses.iter().any(|a| a["value"] == address) {
        addresses.push(json!({"type": "IPAddress", "value": address}));
    }
    let mut listeners = Vec::new();
    for l in gateway
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = l["name"].as_str().unwrap_or_default();
        let old_conditions = old["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == name)
            .and_then(|s| s.get("conditions"));
        let http = matches!(l["protocol"].as_str(), Some("HTTP" | "HTTPS"));
        // An HTTPS listener's certificate: a `kubernetes.io/tls` Secret of its namespace.
        let certificate =
            match super::certificate_ref(l, objects::namespace(gateway).unwrap_or("default")) {
                None if l["protocol"] == "HTTPS" => {
                    Err("the listener names no certificate".to_string())
                }
                None => Ok(()),
                Some(Err(why)) => Err(why),
                Some(Ok((ns, name))) => secrets(&ns, &name).map(|_| ()).ok_or(format!(
                    "secret {ns}/{name} is not a kubernetes.io/tls Secret that exists"
                )),
            };
        let (accepted, programmed) = if http && certificate.is_err() {
            (
                ("Accepted", "the listener is served"),
                ("Invalid", "the listener's certificate cannot be used"),
            )
        } else if http {
            (
                ("Accepted", "the listener is served"),
                (
                    "Programmed",
                    "the listener is served on the gateway's ports",
                ),
            )
        } else {
            (
                (
                    "UnsupportedProtocol",
                    "the skiff gateway serves HTTP and HTTPS",
                ),
                ("Invalid", "the listener is not served"),
            )
        };
        let kinds = if http {
            json!([{"group": GROUP, "kind": "HTTPRoute"}])
        } else {
            json!([])
        };
        listeners.push(json!({
            "name": name,
            "supportedKinds": kinds,
            "attachedRoutes": attached.get(&(id.clone(), name.to_string())).copied().unwrap_or(0),
            "conditions": [
                condition(gateway, old_conditions, "Accepted", http, accepted.0, accepted.1),
                condition(gateway, old_conditions, "Programmed", http && certificate.is_ok(), programmed.0, programmed.1),
                match &certificate {
                    Ok(()) => condition(gateway, old_conditions, "ResolvedRefs", true, "ResolvedRefs", "references are resolved"),
                    Err(why) => condition(gateway, old_conditions, "ResolvedRefs", false, "InvalidCertificateRef", why),
                },
            ],
        }));
    }
    let old_conditions = old.get("conditions");
    json!({
        "addresses": addresses,
        "conditions": [
            condition(gateway, old_conditions, "Accepted", true, "Accepted", "the skiff gateway serves this Gateway"),
            condition(gateway, old_conditions, "Programmed", true, "Programmed", "the skiff gateway routes this Gateway's listeners"),
        ],
        "listeners": listeners,
    })
}

/// An HTTPRoute's status: the `parents` other controllers wrote, and one of ours per
/// parentRef to a Gateway of ours. None when it names none and had none.
pub fn route_status(
    route: &Value,
    gateways: &[Arc<Value>],
    classes: &HashSet<String>,
    services: &dyn Fn(&str, &str) -> Option<Arc<Value>>,
) -> Option<Value> {
    let old: Vec<Value> = route
        .pointer("/status/parents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parents = attach(gateways, route, classes);
    let had = old.iter().any(|p| p["controllerName"] == CONTROLLER);
    if parents.is_empty() && !had {
        return None;
    }
    let resolved = resolve(route, services);
    let mut out: Vec<Value> = old
        .iter()
        .filter(|p| p["controllerName"] != CONTROLLER)
        .cloned()
        .collect();
    for parent in parents {
        let parent_ref = route
            .pointer(&format!("/spec/parentRefs/{}", parent.index))
            .cloned()
            .unwrap_or(Value::Null);
        let before = old
            .iter()
            .find(|p| p["controllerName"] == CONTROLLER && p["parentRef"] == parent_ref)
            .and_then(|p| p.get("conditions"));
        let mut conditions = vec![match &parent.refused {
            Some((reason, why)) => condition(route, before, "Accepted", false, reason, why),
            None => condition(
                route,
                before,
                "Accepted",
                true,
                "Accepted",
                "the route is attached",
            ),
        }];
        conditions.push(match &resolved.unresolved {
            Some((reason, why)) => condition(route, before, "ResolvedRefs", false, reason, why),
            None => condition(
                route,
                before,
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every backend is resolved",
            ),
        });
        if !resolved.unsupported.is_empty() {
            conditions.push(condition(
                route,
                before,
                "PartiallyInvalid",
                true,
                "UnsupportedValue",
                &resolved.unsupported.join("; "),
            ));
        }
        out.push(json!({"parentRef": parent_ref, "controllerName": CONTROLLER, "conditions": conditions}));
    }
    Some(json!({"parents": out}))
}

/// The gateway's Gateways, as `is_ours` says.
pub fn ours<'a>(
    gateways: &'a [Arc<Value>],
    classes: &'a HashSet<String>,
) -> impl Iterator<Item = &'a Arc<Value>> {
    gateways.iter().filter(move |g| is_ours(g, classes))
}

/// Writes the statuses of the gateway's classes, Gateways and the HTTPRoutes that name
/// them, each only when it differs from what is stored (a write failure is logged; the
/// next change of the caches retries).
pub async fn write_statuses(
    api: &crate::state::ApiServer,
    classes: &[Arc<Value>],
    gateways: &[Arc<Value>],
    routes: &[Arc<Value>],
    services: &(dyn Fn(&str, &str) -> Option<Arc<Value>> + Sync),
    secrets: &(dyn Fn(&str, &str) -> Option<Arc<Value>> + Sync),
    address: &str,
) {
    let kind =
        |plural| crate::kinds::lookup(GROUP, "v1", plural).expect("Gateway API kinds are served");
    let ours_by_name = super::our_classes(classes);
    let attached = attached_routes(gateways, routes, &ours_by_name);
    let mut writes: Vec<(
        &'static skiff_api::resources::ResourceInfo,
        &Arc<Value>,
        Value,
    )> = Vec::new();
    for class in classes
        .iter()
        .filter(|c| ours_by_name.contains(objects::name(c)))
    {
        writes.push((kind("gatewayclasses"), class, class_status(class)));
    }
    for gateway in ours(gateways, &ours_by_name) {
        writes.push((
            kind("gateways"),
            gateway,
            gateway_status(gateway, secrets, address, &attached),
        ));
    }
    for route in routes.iter().filter(|r| !objects::is_deleting(r)) {
        if let Some(status) = route_status(route, gateways, &ours_by_name, services) {
            writes.push((kind("httproutes"), route, status));
        }
    }
    for (info, obj, status) in writes {
        if obj.get("status") == Some(&status) {
            continue;
        }
        let result = crate::apiserver::internal::update_status(
            api,
            info,
            objects::namespace(obj),
            objects::name(obj),
            |current| {
                let mut next = current.clone();
                next["status"] = status.clone();
                Ok(next)
            },
        )
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, kind = info.kind, name = %objects::name(obj), "writing a Gateway API status failed; the next change retries");
        }
    }
}
