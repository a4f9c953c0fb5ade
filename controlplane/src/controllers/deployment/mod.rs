//! The Deployment controller: rolls a Deployment's pod template out through
//! ReplicaSets, one per template revision, as Kubernetes does.
//!
//! - **RollingUpdate** grows the new ReplicaSet while the total stays within
//!   `replicas + maxSurge`, and shrinks old ones while at least
//!   `replicas - maxUnavailable` pods stay available (unhealthy old pods go first).
//! - **Recreate** scales every old ReplicaSet to zero, waits for their pods to be gone,
//!   then scales the new one up.
//! - Revisions live in the `deployment.kubernetes.io/revision` annotation. A template
//!   equal to an old ReplicaSet's (what `kubectl rollout undo` writes) reuses that
//!   ReplicaSet under the next revision; `revisionHistoryLimit` bounds the old ones kept.
//! - `paused` stops rollouts but not scaling; a replicas change mid-rollout is spread
//!   proportionally over the ReplicaSets.
//! - Status carries replicas, updatedReplicas, readyReplicas, availableReplicas
//!   (ready for `minReadySeconds`), unavailableReplicas, observedGeneration and the
//!   Available and Progressing conditions, the latter turning False with
//!   `ProgressDeadlineExceeded` after `progressDeadlineSeconds` without progress: what
//!   `kubectl rollout status` reads.
//!
//! Availability is counted from the pod cache, capped by each ReplicaSet's desired
//! replicas, so pods about to be removed by a scale-down are never counted as available.
//!
//! This module holds the controller, its wiring and the pass that decides what to do;
//! [`rollout`] claims the ReplicaSets and moves pods between them, [`status`] reports
//! the outcome.

mod rollout;
mod status;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::labels;
use super::{Action, Context, Controller, controller_of, key_of, selector_of, split_key};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;
use crate::state::ApiServer;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The label that ties a ReplicaSet and its pods to one template revision.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// Deployment annotations never copied onto its ReplicaSets.
const NOT_COPIED: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
];
const COMPONENT: &str = "deployment-controller";
const WORKERS: usize = 4;

fn deploy_info() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "deployments").expect("deployments are served")
}

fn rs_info() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "replicasets").expect("replicasets are served")
}

pub struct DeploymentController {
    api: Arc<ApiServer>,
    deployments: Arc<Cache>,
    replicasets: Arc<Cache>,
    pods: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let deployments = ctx.cache("apps", "deployments");
    let replicasets = ctx.cache("apps", "replicasets");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(DeploymentController {
        api: ctx.api().clone(),
        deployments: deployments.clone(),
        replicasets: replicasets.clone(),
        pods: pods.clone(),
    });
    let (by_replicaset, by_pod) = (ctrl.clone(), ctrl.clone());
    Controller::new(&ctx, "deployment", &deployments)
        .watches(&replicasets, move |e| {
            by_replicaset.keys_for_replicaset_event(e)
        })
        .watches(&pods, move |e| by_pod.keys_for_pod_event(e))
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

fn int_field(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

fn spec_replicas(obj: &Value) -> i64 {
    int_field(obj, "/spec/replicas").unwrap_or(1).max(0)
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

fn revision(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// An IntOrString of a rolling update against `total`: percents round up for surge,
/// down for unavailability, as Kubernetes resolves them.
pub fn int_or_percent(value: Option<&Value>, total: i64, round_up: bool) -> i64 {
    match value {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0).max(0),
        Some(Value::String(s)) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(percent) if round_up => (total * percent.max(0) + 99) / 100,
            Some(percent) => total * percent.max(0) / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn is_recreate(d: &Value) -> bool {
    d.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate")
}

/// maxSurge and maxUnavailable as pod counts. Both resolving to zero (possible through
/// rounding) would stall the rollout, so unavailability is then one, as in Kubernetes.
fn fenceposts(d: &Value) -> (i64, i64) {
    if is_recreate(d) {
        return (0, 0);
    }
    let replicas = spec_replicas(d);
    let surge = int_or_percent(
        d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
        replicas,
        true,
    );
    let unavailable = int_or_percent(
        d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// Pods that may be unavailable while the Deployment still counts as Available.
fn max_unavailable(d: &Value) -> i64 {
    let replicas = spec_replicas(d);
    if is_recreate(d) || replicas == 0 {
        0
    } else {
        fenceposts(d).1.min(replicas)
    }
}

/// A template without its revision label, for comparing a ReplicaSet's to the
/// Deployment's. Nulls and empty objects are dropped, so the comparison is semantic
/// as Kubernetes' is over typed structs (`resources: {}` equals no resources).
pub(crate) fn without_hash(template: Option<&Value>) -> Value {
    fn prune(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.values_mut().for_each(prune);
                map.retain(|_, x| !(x.is_null() || x.as_object().is_some_and(|o| o.is_empty())));
            }
            Value::Array(items) => items.iter_mut().for_each(prune),
            _ => {}
        }
    }
    let mut t = template.cloned().unwrap_or_default();
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(TEMPLATE_HASH);
    }
    prune(&mut t);
    t
}

/// The revision label's value: a digest of the template (and of the collision count,
/// when a name was taken), in Kubernetes' alphabet without vowels or look-alikes.
pub fn template_hash(template: &Value, collisions: i64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut digest = Sha256::new();
    digest.update(template.to_string().as_bytes());
    if collisions > 0 {
        digest.update(collisions.to_string().as_bytes());
    }
    digest.finalize()[..10]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn owner_ref(d: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": objects::name(d), "uid": objects::meta_str(d, "uid"), "controller": true, "blockOwnerDeletion": true})
}

/// Pod counts of one ReplicaSet.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Pods neither deleting nor finished.
    active: i64,
    ready: i64,
    /// Ready for minReadySeconds.
    available: i64,
    /// Pods that exist at all, deleting ones included (what Recreate waits for).
    existing: i64,
}

/// One pass's view of a Deployment: its ReplicaSets and their pods' counts.
struct Rollout {
    d: Arc<Value>,
    /// Owned ReplicaSets, oldest first; the new one is `new`.
    old: Vec<Value>,
    new: Option<Value>,
    counts: HashMap<String, Counts>,
    /// Seconds until some ready pod becomes available, if any is waiting.
    next_available: Option<i64>,
    /// A ReplicaSet was created this pass.
    created: bool,
}

impl Rollout {
    fn counts(&self, rs: &Value) -> Counts {
        self.counts
            .get(objects::meta_str(rs, "uid").unwrap_or_default())
            .copied()
            .unwrap_or_default()
    }

    /// Available pods of a ReplicaSet, never more than it is meant to keep.
    fn available(&self, rs: &Value) -> i64 {
        self.counts(rs).available.min(spec_replicas(rs))
    }

    fn all(&self) -> impl Iterator<Item = &Value> {
        self.old.iter().chain(self.new.as_ref())
    }

    fn total_replicas(&self) -> i64 {
        self.all().map(spec_replicas).sum()
    }

    fn new_name(&self) -> Option<&str> {
        self.new.as_ref().map(objects::name)
    }
}

impl DeploymentController {
    /// A ReplicaSet change concerns its controlling Deployment, or, for an orphan,
    /// every Deployment in its namespace that might adopt it.
    fn keys_for_replicaset_event(&self, event: &CacheEvent) -> Vec<String> {
        let (rs, prev) = match event {
            CacheEvent::Changed { object, prev } => (object, prev.as_ref()),
            CacheEvent::Deleted(object) => (object, None),
            CacheEvent::Resynced => return vec![],
        };
        let ns = objects::namespace(rs).unwrap_or_default();
        let mut keys: Vec<String> = std::iter::once(rs)
            .chain(prev)
            .filter_map(|r| match controller_of(r) {
                Some(("Deployment", name, _)) => Some(format!("{ns}/{name}")),
                _ => None,
            })
            .collect();
        if keys.is_empty() {
            let rs_labels = labels(rs);
            keys = self
                .deployments
                .snapshot()
                .iter()
                .filter(|d| objects::namespace(d) == Some(ns))
                .filter(|d| selector_of(d).is_some_and(|s| s.matches(&rs_labels)))
                .map(|d| key_of(d))
                .collect();
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// A pod change concerns the Deployment that controls the pod's ReplicaSet.
    fn keys_for_pod_event(&self, event: &CacheEvent) -> Vec<String> {
        let pod = match event {
            CacheEvent::Changed { object, .. } | CacheEvent::Deleted(object) => object,
            CacheEvent::Resynced => return vec![],
        };
        let ns = objects::namespace(pod).unwrap_or_default();
        let Some(("ReplicaSet", rs_name, _)) = controller_of(pod) else {
            return vec![];
        };
        let Some(rs) = self.replicasets.get(&rs_info().key(Some(ns), rs_name)) else {
            return vec![];
        };
        match controller_of(&rs) {
            Some(("Deployment", name, _)) => vec![format!("{ns}/{name}")],
            _ => vec![],
        }
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(d) = self.deployments.get(&deploy_info().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&d) {
            return Ok(Action::Done);
        }
        let Some(mut rollout) = self.load(d).await? else {
            return Ok(Action::Done);
        };
        let d = rollout.d.clone();
        let paused = d.pointer("/spec/paused") == Some(&Value::Bool(true));
        if paused || self.is_scaling_event(&rollout) {
            self.find_new(&mut rollout, false).await?;
            self.scale(&mut rollout).await?;
            if paused {
                self.cleanup(&rollout).await?;
            }
            return self.update_status(&rollout, false).await;
        }
        if is_recreate(&d) {
            self.recreate(&mut rollout).await
        } else {
            self.rolling(&mut rollout).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percents_round_like_kubernetes() {
        assert_eq!(int_or_percent(Some(&json!("25%")), 10, true), 3);
        assert_eq!(int_or_percent(Some(&json!("25%")), 10, false), 2);
        assert_eq!(int_or_percent(Some(&json!(2)), 10, false), 2);
        assert_eq!(int_or_percent(Some(&json!("0%")), 10, true), 0);
        assert_eq!(int_or_percent(None, 10, true), 0);
    }

    #[test]
    fn both_fenceposts_zero_still_rolls() {
        let d = json!({"spec": {"replicas": 1, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "0%", "maxUnavailable": "25%"}}}});
        assert_eq!(fenceposts(&d), (0, 1));
        let r = json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}});
        assert_eq!(fenceposts(&r), (0, 0));
        assert_eq!(max_unavailable(&r), 0);
    }

    #[test]
    fn template_hash_is_stable_and_safe() {
        let t = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let h = template_hash(&t, 0);
        assert_eq!(h, template_hash(&t, 0));
        assert_ne!(h, template_hash(&t, 1));
        assert_eq!(h.len(), 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn templates_compare_without_the_hash_label_and_empty_fields() {
        let a = json!({"metadata": {"labels": {"app": "web", TEMPLATE_HASH: "abc"}}, "spec": {"containers": [{"name": "c", "resources": {}}]}});
        let b = json!({"metadata": {"labels": {"app": "web"}, "creationTimestamp": null}, "spec": {"containers": [{"name": "c"}]}});
        assert_eq!(without_hash(Some(&a)), without_hash(Some(&b)));
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "d"}]}});
        assert_ne!(without_hash(Some(&a)), without_hash(Some(&c)));
    }
}
