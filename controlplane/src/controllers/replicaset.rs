//! The ReplicaSet controller: keeps `spec.replicas` pods matching the selector, adopts
//! orphans the selector matches, releases pods it no longer matches, and reports
//! replicas, readyReplicas, availableReplicas and observedGeneration.
//!
//! Its caches can lag its own writes by a moment, so, like Kubernetes, it keeps
//! *expectations*: after creating or deleting pods it waits to see those changes in the
//! pod cache (or for a timeout) before counting again, and never double-creates.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::{availability, is_active, is_ready, labels, pods_info};
use super::{
    Action, Context, Controller, adopt, controller_of, key_of, release, selector_of, split_key,
};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;
use crate::state::ApiServer;

/// Pods created or deleted in one pass at most, so one huge scale-up doesn't monopolise
/// the API (the rest follow on the next pass).
const MAX_BURST: usize = 500;
/// How long unmet expectations hold a ReplicaSet before it counts again anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);
const WORKERS: usize = 4;

fn rs_info() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "replicasets").expect("replicasets are served")
}

#[derive(Debug, Clone, Copy)]
struct Expectation {
    adds: i64,
    deletes: i64,
    set_at: Instant,
}

pub struct ReplicaSetController {
    api: Arc<ApiServer>,
    replicasets: Arc<Cache>,
    pods: Arc<Cache>,
    expectations: Mutex<HashMap<String, Expectation>>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let replicasets = ctx.cache("apps", "replicasets");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(ReplicaSetController {
        api: ctx.api().clone(),
        replicasets: replicasets.clone(),
        pods: pods.clone(),
        expectations: Mutex::default(),
    });
    let observer = ctrl.clone();
    Controller::new(&ctx, "replicaset", &replicasets)
        .watches(&pods, move |e| observer.keys_for_pod_event(e))
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

impl ReplicaSetController {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Expectation>> {
        self.expectations.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Which ReplicaSets a pod change concerns, noting creations and deletions expected.
    fn keys_for_pod_event(&self, event: &CacheEvent) -> Vec<String> {
        let (pod, prev, gone) = match event {
            CacheEvent::Changed { object, prev } => (object, prev.as_ref(), false),
            CacheEvent::Deleted(object) => (object, None, true),
            CacheEvent::Resynced => return vec![],
        };
        let ns = objects::namespace(pod).unwrap_or_default();
        let mut keys = Vec::new();
        for p in std::iter::once(pod).chain(prev) {
            if let Some(("ReplicaSet", name, _)) = controller_of(p) {
                keys.push(format!("{ns}/{name}"));
            }
        }
        if let Some(key) = keys.first() {
            let mut exp = self.lock();
            if let Some(e) = exp.get_mut(key) {
                let newly_deleting =
                    objects::is_deleting(pod) && prev.is_some_and(|p| !objects::is_deleting(p));
                if prev.is_none() && !gone {
                    e.adds -= 1;
                } else if gone || newly_deleting {
                    e.deletes -= 1;
                }
            }
        } else if !gone {
            // An orphan: every ReplicaSet in its namespace that might adopt it.
            let pod_labels = labels(pod);
            for rs in self
                .replicasets
                .snapshot()
                .iter()
                .filter(|r| objects::namespace(r) == Some(ns))
            {
                if selector_of(rs).is_some_and(|s| s.matches(&pod_labels)) {
                    keys.push(key_of(rs));
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn expect(&self, key: &str, adds: i64, deletes: i64) {
        self.lock().insert(
            key.to_string(),
            Expectation {
                adds,
                deletes,
                set_at: Instant::now(),
            },
        );
    }

    fn satisfied(&self, key: &str) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes <= 0) || e.set_at.elapsed() > EXPECTATION_TIMEOUT,
        }
    }

    fn lower_expected_adds(&self, key: &str, by: i64) {
        if let Some(e) = self.lock().get_mut(key) {
            e.adds -= by;
        }
    }
}

/// A pod from the ReplicaSet's template, owned by it.
fn pod_from_template(rs: &Value) -> Value {
    let template = rs.pointer("/spec/template").cloned().unwrap_or_default();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", objects::name(rs)),
            "labels": template.pointer("/metadata/labels"),
            "annotations": template.pointer("/metadata/annotations"),
            "ownerReferences": [owner_ref(rs)],
        },
        "spec": template.get("spec"),
    })
}

fn owner_ref(rs: &Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": objects::name(rs), "uid": objects::meta_str(rs, "uid"), "controller": true, "blockOwnerDeletion": true})
}

/// The order pods are removed in: unscheduled, then pending, then not ready, then the
/// most recently created (as Kubernetes ranks them).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let unscheduled = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    let pending = pod.pointer("/status/phase").and_then(Value::as_str) == Some("Pending");
    let ready = is_ready(pod);
    (
        u8::from(!unscheduled),
        u8::from(!pending),
        u8::from(ready),
        std::cmp::Reverse(
            objects::meta_str(pod, "creationTimestamp")
                .unwrap_or_default()
                .to_string(),
        ),
    )
}

impl ReplicaSetController {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(rs) = self.replicasets.get(&rs_info().key(Some(ns), name)) else {
            self.lock().remove(key);
            return Ok(Action::Done);
        };
        if objects::is_deleting(&rs) {
            return Ok(Action::Done);
        }
        let Some(selector) = selector_of(&rs) else {
            return Ok(Action::Done);
        };
        let uid = objects::meta_str(&rs, "uid")
            .unwrap_or_default()
            .to_string();
        let mut owned: Vec<Arc<Value>> = Vec::new();
        for pod in self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| objects::namespace(p) == Some(ns))
        {
            let matches = selector.matches(&labels(&pod));
            match controller_of(&pod) {
                Some((_, _, owner)) if owner == uid => {
                    if matches {
                        owned.push(pod);
                    } else {
                        release(&self.api, pods_info(), &pod, &uid).await?;
                    }
                }
                Some(_) => {}
                None if matches && is_active(&pod) => {
                    if let Some(adopted) =
                        adopt(&self.api, pods_info(), &pod, owner_ref(&rs)).await?
                    {
                        owned.push(Arc::new(adopted));
                    }
                }
                None => {}
            }
        }
        let active: Vec<&Arc<Value>> = owned.iter().filter(|p| is_active(p)).collect();
        let wanted = rs
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .max(0) as usize;
        if self.satisfied(key) {
            if active.len() < wanted {
                let n = (wanted - active.len()).min(MAX_BURST);
                self.expect(key, n as i64, 0);
                let template = pod_from_template(&rs);
                let creates = (0..n)
                    .map(|_| internal::create(&self.api, pods_info(), Some(ns), template.clone()));
                let results = futures::future::join_all(creates).await;
                let failed = results.iter().filter(|r| r.is_err()).count();
                self.lower_expected_adds(key, failed as i64);
                if n > failed {
                    record_event(
                        &self.api,
                        &rs,
                        "Normal",
                        "SuccessfulCreate",
                        format!("Created {} pod(s)", n - failed),
                        "replicaset-controller",
                    )
                    .await;
                }
                if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                    return Err(e);
                }
            } else if active.len() > wanted {
                let mut victims: Vec<&Arc<Value>> = active.clone();
                victims.sort_by_key(|p| deletion_rank(p));
                victims.truncate((active.len() - wanted).min(MAX_BURST));
                self.expect(key, 0, victims.len() as i64);
                for pod in &victims {
                    match internal::delete(
                        &self.api,
                        pods_info(),
                        Some(ns),
                        objects::name(pod),
                        &DeleteOptions::default(),
                    )
                    .await
                    {
                        Ok(_) | Err(ApiError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                record_event(
                    &self.api,
                    &rs,
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted {} pod(s)", victims.len()),
                    "replicaset-controller",
                )
                .await;
            }
        }
        self.update_status(&rs, &owned).await
    }

    /// Writes replicas, readyReplicas, availableReplicas and observedGeneration; asks to
    /// come back when a ready pod will have been ready for minReadySeconds.
    async fn update_status(&self, rs: &Value, owned: &[Arc<Value>]) -> Result<Action, ApiError> {
        let min_ready = rs
            .pointer("/spec/minReadySeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let now = jiff::Timestamp::now();
        let template_labels = rs
            .pointer("/spec/template/metadata/labels")
            .cloned()
            .unwrap_or_default();
        let active: Vec<&Arc<Value>> = owned.iter().filter(|p| is_active(p)).collect();
        let mut ready = 0;
        let mut available = 0;
        let mut next_check: Option<i64> = None;
        for pod in &active {
            match availability(pod, min_ready, now) {
                Ok(()) => {
                    ready += 1;
                    available += 1;
                }
                Err(Some(wait)) => {
                    ready += 1;
                    next_check = Some(next_check.map_or(wait, |w: i64| w.min(wait)));
                }
                Err(None) => {}
            }
        }
        let fully_labeled = active
            .iter()
            .filter(|p| {
                template_labels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| p.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
            })
            .count();
        let status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": fully_labeled,
            "readyReplicas": ready,
            "availableReplicas": available,
            "observedGeneration": rs.pointer("/metadata/generation").cloned().unwrap_or(json!(0)),
        });
        let current = rs.get("status").cloned().unwrap_or_default();
        let changed = [
            "replicas",
            "fullyLabeledReplicas",
            "readyReplicas",
            "availableReplicas",
            "observedGeneration",
        ]
        .iter()
        .any(|f| current.get(*f).cloned().unwrap_or(json!(0)) != status[*f]);
        if changed {
            let result = internal::merge_status(
                &self.api,
                rs_info(),
                objects::namespace(rs),
                objects::name(rs),
                &status,
            )
            .await;
            match result {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(match next_check {
            Some(secs) => Action::RequeueAfter(Duration::from_secs(secs.max(0) as u64 + 1)),
            None => Action::Done,
        })
    }
}
