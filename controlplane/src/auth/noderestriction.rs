//! NodeRestriction for labels: which labels a node's own credential may add, change or
//! remove on its Node, as Kubernetes' NodeRestriction admission plugin bounds a
//! kubelet. The Node authorizer (`authz.rs`) already confines a node to its own Node;
//! this decides what it may write there, so a compromised node cannot label itself
//! into the trust of a nodeSelector or of the control plane.
//!
//! A node may change a label only if it is
//! - outside the `kubernetes.io`, `k8s.io` and `skiff.dev` namespaces (and their
//!   subdomains), or
//! - one the kubelet sets itself: hostname, arch, os, instance type, zone and region,
//!   or any key in the `kubelet.kubernetes.io` and `node.kubernetes.io` namespaces, or
//! - `skiff.dev/runtime` and `skiff.dev/wasm-engine`, which the agent sets to describe
//!   itself (which runtime, and whether it runs guests as native code or interpreted);
//!
//! and never a key in the `node-restriction.kubernetes.io` namespace, which exists so
//! admins can mark nodes in a way nodes cannot. So `node-role.kubernetes.io/*` and
//! `skiff.dev/autonomous` (which keeps the node lifecycle controller from evicting the
//! node's pods) are for admins. Only labels that differ from the stored object count:
//! a node keeps whatever an admin gave it, and may write its Node back unchanged.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use skiff_api::resources::ResourceInfo;

use super::authn::Identity;
use crate::error::{ApiError, ApiResult};
use crate::objects;

/// The `kubernetes.io` labels a kubelet sets about itself (Kubernetes'
/// `kubeletapis.IsKubeletLabel`).
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Namespaces whose every label a kubelet may set.
const KUBELET_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];

/// Namespaces only admins may label nodes in, but for the kubelet's own labels above.
const RESERVED_NAMESPACES: &[&str] = &["kubernetes.io", "k8s.io", "skiff.dev"];

/// The `skiff.dev` labels the agent sets about itself.
const AGENT_LABELS: &[&str] = &["skiff.dev/runtime", "skiff.dev/wasm-engine"];

/// Never a node's to set.
const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// The prefix of a label key, before the `/`; empty for a key without one.
fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Whether `ns` is `domain` or a subdomain of it.
fn within(ns: &str, domain: &str) -> bool {
    ns.strip_suffix(domain)
        .is_some_and(|head| head.is_empty() || head.ends_with('.'))
}

/// Whether a node may add, change or remove the label `key` on its own Node.
pub fn node_may_set(key: &str) -> bool {
    let ns = namespace(key);
    if within(ns, NODE_RESTRICTION_NAMESPACE) {
        return false;
    }
    if !RESERVED_NAMESPACES.iter().any(|d| within(ns, d)) {
        return true;
    }
    KUBELET_LABELS.contains(&key)
        || AGENT_LABELS.contains(&key)
        || KUBELET_NAMESPACES.iter().any(|d| within(ns, d))
}

fn labels(obj: Option<&Value>) -> Map<String, Value> {
    obj.and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The label keys added, changed or removed between `old` (none for a create) and `new`.
fn modified(old: Option<&Value>, new: &Value) -> BTreeSet<String> {
    let (old, new) = (labels(old), labels(Some(new)));
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// Admits a write of the main resource by `identity`: `old` is the stored object (none
/// for a create) and `new` the one it would store. Only a node's writes of Nodes are
/// restricted; a node's writes of other Nodes never get here (the Node authorizer).
pub fn admit(
    api: &crate::state::ApiServer,
    identity: &Identity,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &Value,
) -> ApiResult<()> {
    super::escalation::admit(api, identity, info, new)?;
    let Identity::Node { name: node, .. } = identity else {
        return Ok(());
    };
    if !(info.group.is_empty() && info.plural == "nodes") {
        return Ok(());
    }
    let forbidden: Vec<String> = modified(old, new)
        .into_iter()
        .filter(|k| !node_may_set(k))
        .collect();
    if forbidden.is_empty() {
        return Ok(());
    }
    let list = forbidden.join(", ");
    // Kubernetes' wording, for a registration and for an update.
    let why = match old {
        None => format!("node \"{node}\" is not allowed to set the following labels: {list}"),
        Some(_) => format!("is not allowed to modify labels: {list}"),
    };
    Err(ApiError::Forbidden(format!(
        "{} \"{}\" is forbidden: {why}",
        info.qualified_plural(),
        objects::name(new)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_sets_its_own_description_and_nothing_that_confers_trust() {
        for allowed in [
            "kubernetes.io/hostname",
            "kubernetes.io/os",
            "kubernetes.io/arch",
            "beta.kubernetes.io/instance-type",
            "topology.kubernetes.io/zone",
            "topology.kubernetes.io/region",
            "failure-domain.beta.kubernetes.io/zone",
            "node.kubernetes.io/instance-type",
            "node.kubernetes.io/anything",
            "kubelet.kubernetes.io/anything",
            "x.kubelet.kubernetes.io/anything",
            "skiff.dev/runtime",
            "skiff.dev/wasm-engine",
            "example.com/foo",
            "notkubernetes.io/x",
            "mykubernetes.io/x",
            "plain",
        ] {
            assert!(node_may_set(allowed), "{allowed}");
        }
        for refused in [
            "node-restriction.kubernetes.io/x",
            "a.node-restriction.kubernetes.io/x",
            "node-role.kubernetes.io/control-plane",
            "kubernetes.io/role",
            "k8s.io/x",
            "example.k8s.io/x",
            "topology.kubernetes.io/other",
            "skiff.dev/autonomous",
            "skiff.dev/anything-new",
            "edge.skiff.dev/x",
        ] {
            assert!(!node_may_set(refused), "{refused}");
        }
    }

    fn node(labels: Value) -> Value {
        json!({"metadata": {"name": "n1", "labels": labels}})
    }

    fn nodes() -> &'static ResourceInfo {
        crate::kinds::lookup("", "v1", "nodes").unwrap()
    }

    #[test]
    fn only_labels_that_change_count_and_only_for_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let api = crate::state::ApiServer::on_redb_for_tests(dir.path());
        let me = Identity::Node {
            id: "id".into(),
            name: "n1".into(),
        };
        let trusted = node(json!({"skiff.dev/autonomous": "true", "a": "1"}));
        // Writing back what an admin set is fine; changing or removing it is not.
        assert!(admit(&api, &me, nodes(), Some(&trusted), &trusted).is_ok());
        let relabelled = node(json!({"skiff.dev/autonomous": "true", "a": "2"}));
        assert!(admit(&api, &me, nodes(), Some(&trusted), &relabelled).is_ok());
        let removed = node(json!({"a": "1"}));
        let Err(ApiError::Forbidden(message)) = admit(&api, &me, nodes(), Some(&trusted), &removed)
        else {
            panic!("removing an admin's label is refused");
        };
        assert_eq!(
            message,
            "nodes \"n1\" is forbidden: is not allowed to modify labels: skiff.dev/autonomous"
        );
        // Registering with a reserved label is refused, naming each.
        let registering = node(json!({"node-role.kubernetes.io/x": "", "k8s.io/y": "1"}));
        let Err(ApiError::Forbidden(message)) = admit(&api, &me, nodes(), None, &registering)
        else {
            panic!("registering with reserved labels is refused");
        };
        assert!(
            message.ends_with(
                "node \"n1\" is not allowed to set the following labels: k8s.io/y, node-role.kubernetes.io/x"
            ),
            "{message}"
        );
        // Admins, and other kinds, are not restricted here.
        let admin = Identity::Admin { id: "a".into() };
        assert!(admit(&api, &admin, nodes(), Some(&trusted), &removed).is_ok());
        let configmaps = crate::kinds::lookup("", "v1", "configmaps").unwrap();
        assert!(admit(&api, &me, configmaps, None, &registering).is_ok());
    }
}
