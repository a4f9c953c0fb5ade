//! The node lifecycle controller: a node whose Lease has not been renewed within the
//! grace period is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable:
//! NoExecute`; its pods that don't tolerate the taint (for their `tolerationSeconds`)
//! are evicted, so their controllers replace them elsewhere. A node labelled
//! `skiff.dev/autonomous=true` (an edge node that keeps working offline) is marked but
//! never evicted from. A node whose Lease is fresh again gets `Ready=True` back and
//! loses the taint.
//!
//! Level-based: every period it looks at every node and its Lease. As in Kubernetes,
//! a Lease counts as renewed when this controller sees its `renewTime` *change*, timed
//! by the controller's own clock, not by the time the agent wrote into it: an edge
//! device whose clock is hours off is judged by whether it still renews, and a new
//! leader gives every node a full grace period.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::Context;
use super::podutil::pods_info;
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::error::ApiError;
use crate::kinds::pod::TAINT_UNREACHABLE;
use crate::objects;
use crate::state::ApiServer;

pub const AUTONOMOUS_LABEL: &str = "skiff.dev/autonomous";
/// How often nodes are checked.
const PERIOD: Duration = Duration::from_millis(500);

fn nodes_info() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "nodes").expect("nodes are served")
}

pub async fn run(ctx: Arc<Context>, grace: Duration, stop: CancellationToken) {
    let nodes = ctx.cache("", "nodes");
    let leases = ctx.cache("coordination.k8s.io", "leases");
    let pods = ctx.cache("", "pods");
    if !ctx.synced(&[&nodes, &leases, &pods]).await {
        return;
    }
    let api = ctx.api().clone();
    let leases_info =
        crate::kinds::lookup("coordination.k8s.io", "v1", "leases").expect("leases are served");
    let mut heartbeats = Heartbeats::default();
    loop {
        let now = jiff::Timestamp::now();
        let snapshot = nodes.snapshot();
        heartbeats.retain(snapshot.iter().map(|n| objects::name(n)));
        for node in snapshot {
            let name = objects::name(&node);
            let lease = leases.get(&leases_info.key(Some("kube-node-lease"), name));
            let renew = lease
                .as_deref()
                .and_then(|l| l.pointer("/spec/renewTime"))
                .and_then(Value::as_str);
            let lost = match heartbeats.observe(name, renew, std::time::Instant::now()) {
                Some(since) => since.elapsed() > grace,
                // A node that never had a lease is judged by when it registered (a
                // time the server wrote).
                None => objects::meta_str(&node, "creationTimestamp")
                    .and_then(objects::parse_time)
                    .is_none_or(|t| now.duration_since(t).as_secs_f64() > grace.as_secs_f64()),
            };
            let result = if lost {
                mark_lost(&api, &node).await
            } else {
                mark_back(&api, &node).await
            };
            if let Err(e) = result {
                tracing::debug!(node = name, error = %e, "node lifecycle update failed; will retry");
            }
            if let Some(since) = taint_added(&node) {
                let autonomous = node
                    .pointer("/metadata/labels")
                    .and_then(|l| l.get(AUTONOMOUS_LABEL))
                    == Some(&json!("true"));
                if !autonomous {
                    evict(&api, &pods.snapshot(), name, since, now).await;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// When each node's Lease was last seen to change, on this controller's clock.
#[derive(Default)]
struct Heartbeats(std::collections::HashMap<String, (String, std::time::Instant)>);

impl Heartbeats {
    /// Notes the node's current `renewTime` and answers when it last changed (the
    /// first time a node is seen counts as a change); `None` if it has no Lease.
    fn observe(
        &mut self,
        node: &str,
        renew: Option<&str>,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        let Some(renew) = renew else {
            self.0.remove(node);
            return None;
        };
        match self.0.get_mut(node) {
            Some((seen, at)) if seen == renew => Some(*at),
            Some((seen, at)) => {
                *seen = renew.to_string();
                *at = now;
                Some(now)
            }
            None => {
                self.0.insert(node.to_string(), (renew.to_string(), now));
                Some(now)
            }
        }
    }

    /// Forgets the nodes that are gone.
    fn retain<'a>(&mut self, nodes: impl Iterator<Item = &'a str>) {
        let live: std::collections::HashSet<&str> = nodes.collect();
        self.0.retain(|name, _| live.contains(name.as_str()));
    }
}

fn ready_status(node: &Value) -> Option<&str> {
    node.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?["status"]
        .as_str()
}

fn taint_added(node: &Value) -> Option<jiff::Timestamp> {
    let taint = node
        .pointer("/spec/taints")?
        .as_array()?
        .iter()
        .find(|t| t["key"] == TAINT_UNREACHABLE && t["effect"] == "NoExecute")?;
    Some(
        taint["timeAdded"]
            .as_str()
            .and_then(objects::parse_time)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH),
    )
}

fn set_ready(node: &Value, status: &str, reason: &str, message: &str) -> Value {
    let mut next = node.clone();
    let now = objects::now_rfc3339();
    let mut conditions: Vec<Value> = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "Ready");
    conditions.push(json!({"type": "Ready", "status": status, "reason": reason, "message": message, "lastHeartbeatTime": now, "lastTransitionTime": now}));
    next["status"]["conditions"] = json!(conditions);
    next
}

async fn mark_lost(api: &ApiServer, node: &Value) -> Result<(), ApiError> {
    let name = objects::name(node);
    if ready_status(node) != Some("Unknown") {
        internal::update_status(api, nodes_info(), None, name, |cur| {
            Ok(set_ready(
                cur,
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.",
            ))
        })
        .await?;
        record_event(
            api,
            node,
            "Normal",
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
            "node-controller",
        )
        .await;
    }
    if taint_added(node).is_none() {
        internal::update(api, nodes_info(), None, name, |cur| {
            let mut next = cur.clone();
            let mut taints: Vec<Value> = cur.pointer("/spec/taints").and_then(Value::as_array).cloned().unwrap_or_default();
            taints.push(json!({"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": objects::now_rfc3339()}));
            next["spec"]["taints"] = json!(taints);
            Ok(next)
        })
        .await?;
    }
    Ok(())
}

async fn mark_back(api: &ApiServer, node: &Value) -> Result<(), ApiError> {
    let name = objects::name(node);
    if taint_added(node).is_some() {
        internal::update(api, nodes_info(), None, name, |cur| {
            let mut next = cur.clone();
            let taints: Vec<Value> = cur
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t["key"] != TAINT_UNREACHABLE)
                .collect();
            next["spec"]["taints"] = if taints.is_empty() {
                Value::Null
            } else {
                json!(taints)
            };
            Ok(next)
        })
        .await?;
    }
    if ready_status(node) == Some("Unknown") {
        internal::update_status(api, nodes_info(), None, name, |cur| {
            Ok(set_ready(
                cur,
                "True",
                "KubeletReady",
                "skiff agent is posting ready status",
            ))
        })
        .await?;
        record_event(
            api,
            node,
            "Normal",
            "NodeReady",
            format!("Node {name} status is now: NodeReady"),
            "node-controller",
        )
        .await;
    }
    Ok(())
}

/// How long a pod tolerates the unreachable taint: `None` forever, `Some(0)` not at all.
fn tolerated_for(pod: &Value) -> Option<i64> {
    let tolerations = pod.pointer("/spec/tolerations").and_then(Value::as_array)?;
    let t = tolerations.iter().find(|t| {
        (t["key"] == TAINT_UNREACHABLE
            || (t["key"].as_str().unwrap_or_default().is_empty() && t["operator"] == "Exists"))
            && t["effect"]
                .as_str()
                .is_none_or(|e| e.is_empty() || e == "NoExecute")
    });
    match t {
        None => Some(0),
        Some(t) => t["tolerationSeconds"].as_i64(),
    }
}

/// Deletes the node's pods whose toleration of the taint has run out.
async fn evict(
    api: &ApiServer,
    pods: &[Arc<Value>],
    node: &str,
    since: jiff::Timestamp,
    now: jiff::Timestamp,
) {
    let elapsed = now.duration_since(since).as_secs();
    for pod in pods.iter().filter(|p| {
        p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && !objects::is_deleting(p)
    }) {
        if tolerated_for(pod).is_some_and(|secs| elapsed >= secs) {
            let opts = DeleteOptions {
                precondition_uid: objects::meta_str(pod, "uid").map(str::to_string),
                ..Default::default()
            };
            match internal::delete(
                api,
                pods_info(),
                objects::namespace(pod),
                objects::name(pod),
                &opts,
            )
            .await
            {
                Ok(_) => {
                    record_event(
                        api,
                        pod,
                        "Normal",
                        "TaintManagerEviction",
                        format!("Marking for deletion Pod {}", super::key_of(pod)),
                        "taint-eviction-controller",
                    )
                    .await
                }
                Err(e) => tracing::debug!(error = %e, "eviction failed; will retry"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_lease_is_fresh_when_it_changes_whatever_time_it_says() {
        let mut beats = Heartbeats::default();
        let t0 = Instant::now();
        // An agent whose clock is a day behind: its renewTime is always "old".
        assert_eq!(
            beats.observe("edge", Some("2026-01-01T00:00:00.000001Z"), t0),
            Some(t0)
        );
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            beats.observe("edge", Some("2026-01-01T00:00:10.000001Z"), t1),
            Some(t1),
            "a renewal, however old its time, is a renewal"
        );
        // No change since: the node ages from when the change was seen.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(
            beats.observe("edge", Some("2026-01-01T00:00:10.000001Z"), t2),
            Some(t1)
        );
        // An agent whose clock runs ahead and stops renewing is not kept alive by it.
        let t3 = t0 + Duration::from_secs(5);
        beats.observe("fast", Some("2099-01-01T00:00:00Z"), t0);
        assert_eq!(
            beats.observe("fast", Some("2099-01-01T00:00:00Z"), t3),
            Some(t0)
        );
        // No lease: judged elsewhere; gone nodes are forgotten.
        assert_eq!(beats.observe("new", None, t0), None);
        beats.retain(["edge"].into_iter());
        assert_eq!(beats.0.len(), 1);
    }
}
