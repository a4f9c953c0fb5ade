//! The node lifecycle controller: a node whose Lease has not been renewed within the
//! grace period is marked `Ready=Unknown` and tainted `node.kubernetes.io/unreachable:
//! NoExecute`; its pods that don't tolerate the taint (for their `tolerationSeconds`)
//! are evicted, so their controllers replace them elsewhere. A node labelled
//! `skiff.dev/autonomous=true` (an edge node that keeps working offline) is marked but
//! never evicted from. A node whose Lease is fresh again gets `Ready=True` back and
//! loses the taint.
//!
//! Level-based: every period it looks at every node and its Lease.

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
    loop {
        let now = jiff::Timestamp::now();
        for node in nodes.snapshot() {
            let name = objects::name(&node);
            let renewed = leases
                .get(&leases_info.key(Some("kube-node-lease"), name))
                .and_then(|l| {
                    l.pointer("/spec/renewTime")
                        .and_then(Value::as_str)
                        .and_then(objects::parse_time)
                });
            // A node that never had a lease is judged by when it registered.
            let last_seen = renewed.or_else(|| {
                objects::meta_str(&node, "creationTimestamp").and_then(objects::parse_time)
            });
            let lost =
                last_seen.is_none_or(|t| now.duration_since(t).as_secs_f64() > grace.as_secs_f64());
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
