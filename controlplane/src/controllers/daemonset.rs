//! The DaemonSet controller: one pod per matching node (the edge pattern), including
//! nodes that join later, with RollingUpdate of the template, and status.
//!
//! A daemon pod is bound to its node directly. It tolerates the taints a node gets when
//! it is not ready, unreachable or cordoned, as Kubernetes' daemon pods do, so edge nodes
//! keep their daemons through outages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::{is_active, is_ready, pods_info};
use super::{Action, Context, Controller, controller_of, split_key};
use crate::apiserver::{DeleteOptions, internal};
use crate::error::ApiError;
use crate::informer::Cache;
use crate::objects;
use crate::scheduler::filter::{selector_matches, untolerated_taint};
use crate::state::ApiServer;

/// The label that tells which template revision made a daemon pod.
pub const REVISION_LABEL: &str = "controller-revision-hash";
const WORKERS: usize = 2;

fn ds_info() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "daemonsets").expect("daemonsets are served")
}

/// Tolerations every daemon pod gets, as Kubernetes adds them.
fn daemon_tolerations() -> Vec<Value> {
    [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ]
    .iter()
    .map(|k| json!({"key": k, "operator": "Exists", "effect": "NoExecute"}))
    .chain(
        [
            "node.kubernetes.io/unschedulable",
            "node.kubernetes.io/disk-pressure",
        ]
        .iter()
        .map(|k| json!({"key": k, "operator": "Exists", "effect": "NoSchedule"})),
    )
    .collect()
}

/// A short hash of the pod template: pods carrying another one are out of date.
fn template_hash(ds: &Value) -> String {
    let template = ds.pointer("/spec/template").cloned().unwrap_or_default();
    hex::encode(&Sha256::digest(template.to_string().as_bytes())[..5])
}

pub struct DaemonSetController {
    api: Arc<ApiServer>,
    daemonsets: Arc<Cache>,
    nodes: Arc<Cache>,
    pods: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let daemonsets = ctx.cache("apps", "daemonsets");
    let nodes = ctx.cache("", "nodes");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(DaemonSetController {
        api: ctx.api().clone(),
        daemonsets: daemonsets.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
    });
    Controller::new(&ctx, "daemonset", &daemonsets)
        // Any node change may add or remove a daemon's place.
        .watches_all(&nodes)
        .owns(&pods, "DaemonSet")
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

impl DaemonSetController {
    /// The daemon pod for a node, from the template.
    fn pod_for(&self, ds: &Value, node: &str, hash: &str) -> Value {
        let mut spec = ds
            .pointer("/spec/template/spec")
            .cloned()
            .unwrap_or(json!({}));
        spec["nodeName"] = json!(node);
        let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
        tolerations.extend(daemon_tolerations());
        spec["tolerations"] = json!(tolerations);
        let mut labels = ds
            .pointer("/spec/template/metadata/labels")
            .cloned()
            .unwrap_or(json!({}));
        labels[REVISION_LABEL] = json!(hash);
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": format!("{}-", objects::name(ds)),
                "labels": labels,
                "annotations": ds.pointer("/spec/template/metadata/annotations"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": objects::name(ds), "uid": objects::meta_str(ds, "uid"), "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": spec,
        })
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(ds) = self.daemonsets.get(&ds_info().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&ds) {
            return Ok(Action::Done);
        }
        let uid = objects::meta_str(&ds, "uid")
            .unwrap_or_default()
            .to_string();
        let hash = template_hash(&ds);
        let probe = self.pod_for(&ds, "", &hash);
        // Nodes that should run the daemon.
        let wanted: Vec<String> = self
            .nodes
            .snapshot()
            .iter()
            .filter(|n| selector_matches(&probe, n) && untolerated_taint(&probe, n).is_none())
            .map(|n| objects::name(n).to_string())
            .collect();
        let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for pod in self.pods.snapshot() {
            if objects::namespace(&pod) == Some(ns)
                && controller_of(&pod).is_some_and(|(_, _, u)| u == uid)
                && is_active(&pod)
            {
                let node = pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                by_node.entry(node).or_default().push(pod);
            }
        }
        let mut deletes: Vec<Arc<Value>> = Vec::new();
        let mut creates: Vec<String> = Vec::new();
        for node in &wanted {
            match by_node.get(node).map(Vec::as_slice) {
                None | Some([]) => creates.push(node.clone()),
                Some([_keep, extra @ ..]) => deletes.extend(extra.iter().cloned()),
            }
        }
        for (node, pods) in &by_node {
            if !wanted.contains(node) {
                deletes.extend(pods.iter().cloned());
            }
        }
        // Rolling update: replace out-of-date pods, at most maxUnavailable unavailable at once.
        let max_unavailable = ds
            .pointer("/spec/updateStrategy/rollingUpdate/maxUnavailable")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(1) as usize;
        let rolling = ds
            .pointer("/spec/updateStrategy/type")
            .and_then(Value::as_str)
            != Some("OnDelete");
        let current: Vec<&Arc<Value>> = wanted
            .iter()
            .filter_map(|n| by_node.get(n).and_then(|p| p.first()))
            .collect();
        let unavailable = wanted.len() - current.iter().filter(|p| is_ready(p)).count();
        if rolling {
            let budget = max_unavailable.saturating_sub(unavailable);
            let outdated = current.iter().filter(|p| {
                p.pointer(&format!("/metadata/labels/{REVISION_LABEL}"))
                    .and_then(Value::as_str)
                    != Some(hash.as_str())
            });
            deletes.extend(outdated.take(budget).map(|p| (*p).clone()));
        }
        for node in &creates {
            internal::create(
                &self.api,
                pods_info(),
                Some(ns),
                self.pod_for(&ds, node, &hash),
            )
            .await?;
        }
        for pod in &deletes {
            let opts = DeleteOptions {
                precondition_uid: objects::meta_str(pod, "uid").map(str::to_string),
                ..Default::default()
            };
            match internal::delete(&self.api, pods_info(), Some(ns), objects::name(pod), &opts)
                .await
            {
                Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => {}
                Err(e) => return Err(e),
            }
        }
        let scheduled = current.len();
        let ready = current.iter().filter(|p| is_ready(p)).count();
        let updated = current
            .iter()
            .filter(|p| {
                p.pointer(&format!("/metadata/labels/{REVISION_LABEL}"))
                    .and_then(Value::as_str)
                    == Some(hash.as_str())
            })
            .count();
        let misscheduled = by_node.keys().filter(|n| !wanted.contains(n)).count();
        let status = json!({
            "desiredNumberScheduled": wanted.len(),
            "currentNumberScheduled": scheduled,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": wanted.len().saturating_sub(ready),
            "updatedNumberScheduled": updated,
            "numberMisscheduled": misscheduled,
            "observedGeneration": ds.pointer("/metadata/generation").cloned().unwrap_or(json!(0)),
        });
        let differs = status
            .as_object()
            .expect("an object")
            .iter()
            .any(|(k, v)| ds.pointer(&format!("/status/{k}")).unwrap_or(&json!(0)) != v);
        if differs {
            internal::update_status(&self.api, ds_info(), Some(ns), name, |cur| {
                let mut next = cur.clone();
                next["status"] = status.clone();
                Ok(next)
            })
            .await?;
        }
        // While a rollout or a start is under way, look again shortly.
        let converging = !creates.is_empty()
            || !deletes.is_empty()
            || ready < wanted.len()
            || updated < wanted.len();
        Ok(if converging {
            Action::RequeueAfter(Duration::from_millis(500))
        } else {
            Action::Done
        })
    }
}
