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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::{self, ResourceInfo};

use super::podutil::{availability, is_active, labels};
use super::{
    Action, Context, Controller, adopt, controller_of, key_of, release, selector_of, split_key,
};
use crate::apiserver::error::ApiError;
use crate::apiserver::{ApiServer, DeleteOptions, internal, objects, record_event};
use crate::informer::{Cache, CacheEvent};

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
    resources::lookup("apps", "v1", "deployments").expect("deployments are served")
}

fn rs_info() -> &'static ResourceInfo {
    resources::lookup("apps", "v1", "replicasets").expect("replicasets are served")
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

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
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

    /// Claims the Deployment's ReplicaSets (adopting orphans its selector matches,
    /// releasing those it no longer does) and counts their pods.
    async fn load(&self, d: Arc<Value>) -> Result<Option<Rollout>, ApiError> {
        let ns = objects::namespace(&d).unwrap_or_default();
        let Some(selector) = selector_of(&d) else {
            return Ok(None);
        };
        let uid = objects::meta_str(&d, "uid").unwrap_or_default();
        let mut owned: Vec<Value> = Vec::new();
        for rs in self
            .replicasets
            .snapshot()
            .into_iter()
            .filter(|r| objects::namespace(r) == Some(ns))
        {
            let matches = selector.matches(&labels(&rs));
            match controller_of(&rs) {
                Some((_, _, owner)) if owner == uid => {
                    if matches {
                        owned.push((*rs).clone());
                    } else {
                        release(&self.api, rs_info(), &rs, uid).await?;
                    }
                }
                None if matches && !objects::is_deleting(&rs) => {
                    if let Some(adopted) = adopt(&self.api, rs_info(), &rs, owner_ref(&d)).await? {
                        owned.push(adopted);
                    }
                }
                _ => {}
            }
        }
        owned.sort_by(|a, b| {
            (objects::meta_str(a, "creationTimestamp"), objects::name(a))
                .cmp(&(objects::meta_str(b, "creationTimestamp"), objects::name(b)))
        });
        let uids: HashMap<&str, ()> = owned
            .iter()
            .filter_map(|r| objects::meta_str(r, "uid"))
            .map(|u| (u, ()))
            .collect();
        let min_ready = int_field(&d, "/spec/minReadySeconds").unwrap_or(0);
        let now = jiff::Timestamp::now();
        let mut counts: HashMap<String, Counts> = HashMap::new();
        let mut next_available: Option<i64> = None;
        for pod in self.pods.snapshot() {
            if objects::namespace(&pod) != Some(ns) {
                continue;
            }
            let Some(("ReplicaSet", _, rs_uid)) = controller_of(&pod) else {
                continue;
            };
            if !uids.contains_key(rs_uid) {
                continue;
            }
            let c = counts.entry(rs_uid.to_string()).or_default();
            let terminal = matches!(
                pod.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            );
            c.existing += i64::from(!terminal);
            if !is_active(&pod) {
                continue;
            }
            c.active += 1;
            match availability(&pod, min_ready, now) {
                Ok(()) => {
                    c.ready += 1;
                    c.available += 1;
                }
                Err(Some(wait)) => {
                    c.ready += 1;
                    next_available = Some(next_available.map_or(wait, |w| w.min(wait)));
                }
                Err(None) => {}
            }
        }
        Ok(Some(Rollout {
            d,
            old: owned,
            new: None,
            counts,
            next_available,
            created: false,
        }))
    }

    /// A replicas change that the ReplicaSets haven't been told of yet.
    fn is_scaling_event(&self, r: &Rollout) -> bool {
        let wanted = spec_replicas(&r.d).to_string();
        r.all()
            .filter(|rs| spec_replicas(rs) > 0)
            .any(|rs| annotation(rs, DESIRED_REPLICAS).is_some_and(|v| v != wanted))
    }

    /// Finds the ReplicaSet of the current template (creating it if asked) and moves it
    /// from `old` to `new`, giving it the next revision if an older template came back.
    async fn find_new(&self, r: &mut Rollout, create: bool) -> Result<(), ApiError> {
        let d = r.d.clone();
        let wanted = without_hash(d.pointer("/spec/template"));
        let pos = r
            .old
            .iter()
            .position(|rs| without_hash(rs.pointer("/spec/template")) == wanted);
        let existing = pos.map(|i| r.old.remove(i));
        let next_revision = r.old.iter().map(revision).max().unwrap_or(0) + 1;
        let new = match existing {
            Some(rs) => {
                let stale_revision = revision(&rs) < next_revision;
                let min_ready = d.pointer("/spec/minReadySeconds");
                if stale_revision || rs.pointer("/spec/minReadySeconds") != min_ready {
                    let old_revision = revision(&rs);
                    let min_ready = min_ready.cloned();
                    internal::update(
                        &self.api,
                        rs_info(),
                        objects::namespace(&rs),
                        objects::name(&rs),
                        |cur| {
                            let mut next = cur.clone();
                            if stale_revision {
                                let history = annotation(cur, REVISION_HISTORY)
                                    .map(|h| format!("{h},{old_revision}"))
                                    .unwrap_or_else(|| old_revision.to_string());
                                let ann = annotations_mut(&mut next);
                                ann[REVISION] = json!(next_revision.to_string());
                                if old_revision > 0 {
                                    ann[REVISION_HISTORY] = json!(history);
                                }
                                copy_annotations(&d, &mut next);
                            }
                            match &min_ready {
                                Some(v) => next["spec"]["minReadySeconds"] = v.clone(),
                                None => {
                                    objects::remove_path(&mut next, &["spec", "minReadySeconds"])
                                }
                            }
                            Ok(next)
                        },
                    )
                    .await?
                } else {
                    rs
                }
            }
            None if create => {
                r.created = true;
                self.create_new(&d, next_revision).await?
            }
            None => return Ok(()),
        };
        let revision = revision(&new).to_string();
        if annotation(&d, REVISION) != Some(revision.as_str()) {
            let updated = internal::update(
                &self.api,
                deploy_info(),
                objects::namespace(&d),
                objects::name(&d),
                |cur| {
                    let mut next = cur.clone();
                    let ann = annotations_mut(&mut next);
                    ann[REVISION] = json!(revision);
                    Ok(next)
                },
            )
            .await?;
            r.d = Arc::new(updated);
        }
        r.new = Some(new);
        Ok(())
    }

    /// Creates the ReplicaSet of the current template, with no pods yet.
    async fn create_new(&self, d: &Value, revision: i64) -> Result<Value, ApiError> {
        let collisions = int_field(d, "/status/collisionCount").unwrap_or(0);
        let template = d.pointer("/spec/template").cloned().unwrap_or_default();
        let hash = template_hash(&template, collisions);
        let mut template = template;
        objects::set_path(
            &mut template,
            &["metadata", "labels", TEMPLATE_HASH],
            json!(hash),
        );
        let mut selector = d.pointer("/spec/selector").cloned().unwrap_or_default();
        objects::set_path(&mut selector, &["matchLabels", TEMPLATE_HASH], json!(hash));
        let (surge, _) = fenceposts(d);
        let replicas = spec_replicas(d);
        let mut rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("{}-{hash}", objects::name(d)),
                "labels": template.pointer("/metadata/labels"),
                "annotations": {
                    REVISION: revision.to_string(),
                    DESIRED_REPLICAS: replicas.to_string(),
                    MAX_REPLICAS: (replicas + surge).to_string(),
                },
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {
                "replicas": 0,
                "selector": selector,
                "template": template,
            },
        });
        if let Some(v) = d.pointer("/spec/minReadySeconds") {
            rs["spec"]["minReadySeconds"] = v.clone();
        }
        copy_annotations(d, &mut rs);
        let ns = objects::namespace(d);
        match internal::create(&self.api, rs_info(), ns, rs.clone()).await {
            Ok(created) => {
                self.event(
                    d,
                    format!("Created new replica set {}", objects::name(&created)),
                )
                .await;
                Ok(created)
            }
            Err(ApiError::AlreadyExists(subject)) => {
                // Ours already (the cache hadn't shown it yet), or a hash collision.
                if let Some(current) =
                    internal::get(&self.api, rs_info(), ns, objects::name(&rs)).await?
                {
                    let ours = controller_of(&current)
                        .is_some_and(|(_, _, uid)| Some(uid) == objects::meta_str(d, "uid"));
                    if ours
                        && without_hash(current.pointer("/spec/template"))
                            == without_hash(d.pointer("/spec/template"))
                    {
                        return Ok(current);
                    }
                }
                internal::merge_status(
                    &self.api,
                    deploy_info(),
                    ns,
                    objects::name(d),
                    &json!({"collisionCount": collisions + 1}),
                )
                .await?;
                Err(ApiError::AlreadyExists(subject))
            }
            Err(e) => Err(e),
        }
    }

    /// Sets a ReplicaSet's replicas (and the annotations saying for which Deployment
    /// size); true if the replicas changed.
    async fn scale_rs(&self, r: &Rollout, rs: &mut Value, replicas: i64) -> Result<bool, ApiError> {
        let d = &r.d;
        let (surge, _) = fenceposts(d);
        let desired = spec_replicas(d).to_string();
        let max = (spec_replicas(d) + surge).to_string();
        let from = spec_replicas(rs);
        if from == replicas
            && annotation(rs, DESIRED_REPLICAS) == Some(desired.as_str())
            && annotation(rs, MAX_REPLICAS) == Some(max.as_str())
        {
            return Ok(false);
        }
        let updated = internal::update(
            &self.api,
            rs_info(),
            objects::namespace(rs),
            objects::name(rs),
            |cur| {
                let mut next = cur.clone();
                next["spec"]["replicas"] = json!(replicas);
                let ann = annotations_mut(&mut next);
                ann[DESIRED_REPLICAS] = json!(desired);
                ann[MAX_REPLICAS] = json!(max);
                Ok(next)
            },
        )
        .await?;
        *rs = updated;
        if from != replicas {
            let way = if replicas > from { "up" } else { "down" };
            self.event(
                d,
                format!(
                    "Scaled {way} replica set {} from {from} to {replicas}",
                    objects::name(rs)
                ),
            )
            .await;
        }
        Ok(from != replicas)
    }

    async fn event(&self, d: &Value, message: String) {
        record_event(
            &self.api,
            d,
            "Normal",
            "ScalingReplicaSet",
            message,
            COMPONENT,
        )
        .await;
    }

    /// One step of a rolling update: surge the new ReplicaSet, or else retire old pods
    /// as far as availability allows; then clean up and report.
    async fn rolling(&self, r: &mut Rollout) -> Result<Action, ApiError> {
        self.find_new(r, true).await?;
        let d = r.d.clone();
        let replicas = spec_replicas(&d);
        let (surge, unavailable) = fenceposts(&d);
        // Grow (or trim) the new ReplicaSet.
        let mut new = r.new.take().expect("find_new created it");
        let current = spec_replicas(&new);
        let target = if current >= replicas {
            replicas
        } else {
            let total = r.total_replicas() + current;
            let room = (replicas + surge - total).max(0);
            current + room.min(replicas - current)
        };
        let scaled_up = self.scale_rs(r, &mut new, target).await? && target > current;
        r.new = Some(new);
        if scaled_up {
            return self.update_status(r, true).await;
        }
        // Shrink old ReplicaSets within the availability budget.
        let old_pods: i64 = r.old.iter().map(spec_replicas).sum();
        if old_pods > 0 {
            let new_rs = r.new.as_ref().expect("set above");
            let min_available = replicas - unavailable;
            let new_unavailable = spec_replicas(new_rs) - r.available(new_rs);
            let budget = r.total_replicas() - min_available - new_unavailable;
            let mut scaled_down = false;
            if budget > 0 {
                // First old pods that aren't available: removing them costs nothing.
                let mut cleaned = 0;
                for i in 0..r.old.len() {
                    let rs = &r.old[i];
                    let unhealthy = spec_replicas(rs) - r.available(rs);
                    if cleaned >= budget || unhealthy <= 0 {
                        continue;
                    }
                    let n = unhealthy.min(budget - cleaned);
                    let mut rs = r.old[i].clone();
                    let to = spec_replicas(&rs) - n;
                    scaled_down |= self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                    cleaned += n;
                }
                // Then available ones, oldest first, keeping minAvailable.
                let available: i64 = r.all().map(|rs| r.available(rs)).sum();
                let mut allowed = (available - min_available).max(0);
                for i in 0..r.old.len() {
                    if allowed == 0 {
                        break;
                    }
                    let n = spec_replicas(&r.old[i]).min(allowed);
                    if n == 0 {
                        continue;
                    }
                    let mut rs = r.old[i].clone();
                    let to = spec_replicas(&rs) - n;
                    scaled_down |= self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                    allowed -= n;
                }
            }
            if scaled_down {
                return self.update_status(r, true).await;
            }
        }
        if self.complete(r) {
            self.cleanup(r).await?;
        }
        self.update_status(r, true).await
    }

    /// Recreate: every old pod gone before the new ReplicaSet gets any.
    async fn recreate(&self, r: &mut Rollout) -> Result<Action, ApiError> {
        self.find_new(r, false).await?;
        let mut scaled_down = false;
        for i in 0..r.old.len() {
            let mut rs = r.old[i].clone();
            if spec_replicas(&rs) > 0 {
                scaled_down |= self.scale_rs(r, &mut rs, 0).await?;
                r.old[i] = rs;
            }
        }
        let old_pods_left = r.old.iter().any(|rs| r.counts(rs).existing > 0);
        if scaled_down || old_pods_left {
            return self.update_status(r, true).await;
        }
        if r.new.is_none() {
            self.find_new(r, true).await?;
        }
        let mut new = r.new.take().expect("find_new created it");
        self.scale_rs(r, &mut new, spec_replicas(&r.d)).await?;
        r.new = Some(new);
        if self.complete(r) {
            self.cleanup(r).await?;
        }
        self.update_status(r, true).await
    }

    /// Resizes the ReplicaSets for a new replicas count without rolling anything:
    /// a lone ReplicaSet takes it all; mid-rollout, the change is spread over them in
    /// proportion to their sizes, as Kubernetes does.
    async fn scale(&self, r: &mut Rollout) -> Result<(), ApiError> {
        let replicas = spec_replicas(&r.d);
        let active: Vec<usize> = (0..r.old.len())
            .filter(|i| spec_replicas(&r.old[*i]) > 0)
            .collect();
        let new_active = r.new.as_ref().is_some_and(|n| spec_replicas(n) > 0);
        let saturated = r
            .new
            .as_ref()
            .is_some_and(|n| spec_replicas(n) == replicas && r.available(n) >= replicas);
        if active.is_empty() || saturated {
            // The new ReplicaSet alone (if any) takes the count; old ones go.
            if let Some(mut new) = r.new.take() {
                self.scale_rs(r, &mut new, replicas).await?;
                r.new = Some(new);
            }
            for i in active {
                let mut rs = r.old[i].clone();
                self.scale_rs(r, &mut rs, 0).await?;
                r.old[i] = rs;
            }
            return Ok(());
        }
        if (active.len() == 1 && !new_active) || is_recreate(&r.d) {
            // One ReplicaSet holds every pod: it takes the whole count.
            let last = active[active.len() - 1];
            let mut rs = r.old[last].clone();
            self.scale_rs(r, &mut rs, replicas).await?;
            r.old[last] = rs;
            return Ok(());
        }
        // Mid-rollout: spread the change in proportion to sizes, largest first; among
        // equals, newer ones grow first and older ones shrink first.
        let (surge, _) = fenceposts(&r.d);
        let total = r.total_replicas();
        let to_add = replicas + surge - total;
        let mut sizes: Vec<(Option<usize>, i64)> = r
            .new
            .iter()
            .map(|n| (None, spec_replicas(n)))
            .chain(
                active
                    .iter()
                    .rev()
                    .map(|i| (Some(*i), spec_replicas(&r.old[*i]))),
            )
            .filter(|(_, n)| *n > 0)
            .collect();
        if to_add < 0 {
            sizes.reverse();
        }
        sizes.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let mut added = 0;
        let mut targets: Vec<(Option<usize>, i64)> = Vec::new();
        for (idx, n) in &sizes {
            let share = if total > 0 { n * to_add / total } else { 0 };
            let share = if to_add > 0 {
                share.min(to_add - added)
            } else {
                share.max(to_add - added)
            };
            added += share;
            targets.push((*idx, n + share));
        }
        if let Some(first) = targets.first_mut() {
            first.1 = (first.1 + to_add - added).max(0);
        }
        for (idx, to) in targets {
            match idx {
                None => {
                    let mut new = r.new.take().expect("listed above");
                    self.scale_rs(r, &mut new, to).await?;
                    r.new = Some(new);
                }
                Some(i) => {
                    let mut rs = r.old[i].clone();
                    self.scale_rs(r, &mut rs, to).await?;
                    r.old[i] = rs;
                }
            }
        }
        Ok(())
    }

    /// The new ReplicaSet has every replica, all available, and nothing old is left.
    fn complete(&self, r: &Rollout) -> bool {
        let replicas = spec_replicas(&r.d);
        let Some(new) = &r.new else {
            return replicas == 0 && r.old.iter().all(|rs| r.counts(rs).active == 0);
        };
        let c = r.counts(new);
        c.active == replicas
            && r.old.iter().all(|rs| r.counts(rs).active == 0)
            && c.available.min(replicas) == replicas
    }

    /// Deletes the oldest scaled-down ReplicaSets beyond revisionHistoryLimit.
    async fn cleanup(&self, r: &Rollout) -> Result<(), ApiError> {
        let limit = int_field(&r.d, "/spec/revisionHistoryLimit")
            .unwrap_or(10)
            .max(0) as usize;
        let mut idle: Vec<&Value> = r
            .old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0 && r.counts(rs).existing == 0 && !objects::is_deleting(rs)
            })
            .collect();
        if idle.len() <= limit {
            return Ok(());
        }
        idle.sort_by_key(|rs| revision(rs));
        for rs in &idle[..idle.len() - limit] {
            match internal::delete(
                &self.api,
                rs_info(),
                objects::namespace(rs),
                objects::name(rs),
                &DeleteOptions::default(),
            )
            .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes the status `kubectl rollout status` reads; with `track_progress`, the
    /// Progressing condition follows the rollout and its deadline. Asks to come back
    /// when a pod becomes available or the deadline passes.
    async fn update_status(&self, r: &Rollout, track_progress: bool) -> Result<Action, ApiError> {
        let d = &r.d;
        let replicas = spec_replicas(d);
        let old = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let sum = |f: fn(&Counts) -> i64| -> i64 { r.all().map(|rs| f(&r.counts(rs))).sum() };
        let total = sum(|c| c.active);
        let updated = r.new.as_ref().map_or(0, |n| r.counts(n).active);
        let ready = sum(|c| c.ready);
        let available = sum(|c| c.available);
        let now = objects::now_rfc3339();
        let mut conditions: Vec<Value> = old
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let set = |conditions: &mut Vec<Value>,
                   kind: &str,
                   status: &str,
                   reason: &str,
                   message: String| {
            let previous = conditions.iter().position(|c| c["type"] == kind);
            let transition = previous
                .map(|i| &conditions[i])
                .filter(|c| c["status"] == status)
                .and_then(|c| c.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(now));
            let same = previous.is_some_and(|i| {
                conditions[i]["status"] == status
                    && conditions[i]["reason"] == reason
                    && conditions[i]["message"] == message.as_str()
            });
            let update_time = match previous {
                Some(i) if same && kind == "Available" => conditions[i]["lastUpdateTime"].clone(),
                _ => json!(now),
            };
            let c = json!({"type": kind, "status": status, "reason": reason, "message": message, "lastUpdateTime": update_time, "lastTransitionTime": transition});
            match previous {
                Some(i) => conditions[i] = c,
                None => conditions.push(c),
            }
        };
        if available >= replicas - max_unavailable(d) {
            set(
                &mut conditions,
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            );
        } else {
            set(
                &mut conditions,
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            );
        }
        let deadline = int_field(d, "/spec/progressDeadlineSeconds");
        let paused = d.pointer("/spec/paused") == Some(&Value::Bool(true));
        let progressing = condition(&json!({"conditions": conditions}), "Progressing").cloned();
        let reason = progressing
            .as_ref()
            .and_then(|c| c["reason"].as_str())
            .unwrap_or_default()
            .to_string();
        let subject = match r.new_name() {
            Some(n) => format!("ReplicaSet \"{n}\""),
            None => format!("Deployment \"{}\"", objects::name(d)),
        };
        let mut requeue: Option<i64> = r.next_available;
        if deadline.is_none() {
            conditions.retain(|c| c["type"] != "Progressing");
        } else if paused {
            if reason != "DeploymentPaused" {
                set(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                );
            }
        } else if track_progress {
            let now_complete = self.complete(r);
            let old_of = |s: &Value| {
                s.get("replicas").and_then(Value::as_i64).unwrap_or(0)
                    - s.get("updatedReplicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
            };
            let field = |s: &Value, f: &str| s.get(f).and_then(Value::as_i64).unwrap_or(0);
            let moved = updated > field(&old, "updatedReplicas")
                || total - updated < old_of(&old)
                || ready > field(&old, "readyReplicas")
                || available > field(&old, "availableReplicas");
            if reason == "DeploymentPaused" {
                set(
                    &mut conditions,
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                );
            } else if now_complete {
                if reason != "NewReplicaSetAvailable" {
                    set(
                        &mut conditions,
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        format!("{subject} has successfully progressed."),
                    );
                }
            } else if r.created {
                set(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "NewReplicaSetCreated",
                    format!(
                        "Created new replica set \"{}\"",
                        r.new_name().unwrap_or_default()
                    ),
                );
            } else if moved
                || progressing.is_none()
                || reason == "NewReplicaSetAvailable"
                || reason == "DeploymentResumed"
            {
                set(
                    &mut conditions,
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("{subject} is progressing."),
                );
            }
            // The deadline runs from the last progress.
            if !now_complete {
                let c = condition(&json!({"conditions": conditions}), "Progressing")
                    .cloned()
                    .unwrap_or_default();
                let since = c["lastUpdateTime"].as_str().and_then(objects::parse_time);
                if let (Some(limit), Some(since), false) =
                    (deadline, since, c["reason"] == "ProgressDeadlineExceeded")
                {
                    let elapsed = jiff::Timestamp::now().duration_since(since).as_secs();
                    if elapsed >= limit {
                        set(
                            &mut conditions,
                            "Progressing",
                            "False",
                            "ProgressDeadlineExceeded",
                            format!("{subject} has timed out progressing."),
                        );
                        record_event(
                            &self.api,
                            d,
                            "Warning",
                            "ProgressDeadlineExceeded",
                            format!("{subject} has timed out progressing."),
                            COMPONENT,
                        )
                        .await;
                    } else {
                        let left = limit - elapsed;
                        requeue = Some(requeue.map_or(left, |w| w.min(left)));
                    }
                }
            }
        }
        let mut status = json!({
            "observedGeneration": d.pointer("/metadata/generation").cloned().unwrap_or(json!(1)),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0),
            "conditions": conditions,
        });
        if let Some(c) = old.get("collisionCount") {
            status["collisionCount"] = c.clone();
        }
        if status != old {
            match internal::update_status(
                &self.api,
                deploy_info(),
                objects::namespace(d),
                objects::name(d),
                |cur| {
                    let mut next = cur.clone();
                    let mut s = status.clone();
                    // A collision counted meanwhile must not be lost.
                    if let Some(c) = cur.pointer("/status/collisionCount") {
                        s["collisionCount"] = c.clone();
                    }
                    next["status"] = s;
                    Ok(next)
                },
            )
            .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match requeue {
            Some(secs) => Action::RequeueAfter(Duration::from_secs(secs.max(0) as u64 + 1)),
            None => Action::Done,
        })
    }
}

/// An object's annotations as a JSON object, created if missing.
fn annotations_mut(obj: &mut Value) -> &mut Value {
    let ann = objects::meta_mut(obj)
        .entry("annotations")
        .or_insert_with(|| json!({}));
    if !ann.is_object() {
        *ann = json!({});
    }
    ann
}

/// Copies the Deployment's own annotations (change-cause and the like) onto a
/// ReplicaSet, as `kubectl rollout history` expects to find them there.
fn copy_annotations(d: &Value, rs: &mut Value) {
    let Some(from) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    else {
        return;
    };
    let ann = annotations_mut(rs);
    for (k, v) in from {
        if !NOT_COPIED.contains(&k.as_str()) {
            ann[k] = v.clone();
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
