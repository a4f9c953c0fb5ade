//! The disruption controller: keeps each PodDisruptionBudget's status (how many of its
//! pods are healthy, how many must be, how many may be disrupted now), which the
//! Eviction subresource reads and decrements. As Kubernetes computes it:
//! - `minAvailable: N` needs N healthy of the pods the budget selects;
//! - a percent `minAvailable`, or any `maxUnavailable`, is taken of the pods' controllers'
//!   scale (`spec.replicas`; a ReplicaSet's Deployment when it has one), so a budget is
//!   judged against the replicas wanted, not the pods that happen to exist;
//! - a pod is healthy when it is Ready and neither being deleted nor just evicted (in
//!   `disruptedPods`, which forgets a pod once it is deleted, or after two minutes if
//!   its deletion never came).
//!
//! `disruptionsAllowed` is healthy minus desired, never below zero, and zero when no
//! pods are expected. A budget whose pods have no scalable controller gets
//! `DisruptionAllowed=False` with reason SyncFailed, as in Kubernetes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::{ResourceInfo, Subresource};

use super::podutil::is_ready;
use super::{Action, Context, Controller, controller_of, key_of, split_key};
use crate::apiserver::{internal, record_event};
use crate::error::{ApiError, Subject};
use crate::informer::{Cache, CacheEvent};
use crate::kinds::poddisruptionbudget::{INSUFFICIENT_PODS, selects, set_allowed_condition};
use crate::objects;
use crate::state::ApiServer;

/// How long an eviction the budget granted may take to show as a deleted pod before the
/// budget stops holding a disruption for it.
const DELETION_TIMEOUT: Duration = Duration::from_secs(120);

fn budgets_info() -> &'static ResourceInfo {
    crate::kinds::lookup("policy", "v1", "poddisruptionbudgets").expect("budgets are served")
}

struct Disruption {
    api: Arc<ApiServer>,
    budgets: Arc<Cache>,
    pods: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let budgets = ctx.cache("policy", "poddisruptionbudgets");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(Disruption {
        api: ctx.api().clone(),
        budgets: budgets.clone(),
        pods: pods.clone(),
    });
    let of_pod = budgets.clone();
    Controller::new(&ctx, "disruption", &budgets)
        .watches(&pods, move |e| budgets_of_pod(&of_pod, e))
        .workers(2)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

/// The budgets a pod's change concerns: those that select it before or after.
fn budgets_of_pod(budgets: &Cache, e: &CacheEvent) -> Vec<String> {
    let (pod, prev) = match e {
        CacheEvent::Changed { object, prev } => (object, prev.as_ref()),
        CacheEvent::Deleted(object) => (object, None),
        CacheEvent::Resynced => return vec![],
    };
    budgets
        .snapshot()
        .into_iter()
        .filter(|b| selects(b, pod) || prev.is_some_and(|p| selects(b, p)))
        .map(|b| key_of(&b))
        .collect()
}

/// What a budget's status says, before the condition.
#[derive(Debug, PartialEq)]
struct Counts {
    expected: i64,
    desired: i64,
    healthy: i64,
    allowed: i64,
}

/// An IntOrString against `total`, percents rounded up, as the disruption controller
/// resolves both fields.
fn scaled(value: &Value, total: i64) -> i64 {
    super::deployment::int_or_percent(Some(value), total, true)
}

/// The counts of a budget over its pods; `scale` is the replicas wanted of the pods'
/// controllers, needed only for percents and `maxUnavailable`.
fn counts(
    budget: &Value,
    pods: &[Arc<Value>],
    disrupted: &Map<String, Value>,
    scale: Option<i64>,
) -> Counts {
    let min = budget
        .pointer("/spec/minAvailable")
        .filter(|v| !v.is_null());
    let max = budget
        .pointer("/spec/maxUnavailable")
        .filter(|v| !v.is_null());
    let (expected, desired) = match (min, max) {
        (_, Some(max)) => {
            let expected = scale.unwrap_or(0);
            (expected, (expected - scaled(max, expected)).max(0))
        }
        (Some(Value::String(_)), None) => {
            let expected = scale.unwrap_or(0);
            (expected, scaled(min.unwrap_or(&Value::Null), expected))
        }
        (Some(min), None) => (pods.len() as i64, min.as_i64().unwrap_or(0)),
        (None, None) => (pods.len() as i64, 0),
    };
    let healthy = pods
        .iter()
        .filter(|p| {
            !objects::is_deleting(p) && !disrupted.contains_key(objects::name(p)) && is_ready(p)
        })
        .count() as i64;
    let allowed = if expected <= 0 {
        0
    } else {
        (healthy - desired).max(0)
    };
    Counts {
        expected,
        desired,
        healthy,
        allowed,
    }
}

fn needs_scale(budget: &Value) -> bool {
    let max = budget
        .pointer("/spec/maxUnavailable")
        .filter(|v| !v.is_null());
    max.is_some()
        || budget
            .pointer("/spec/minAvailable")
            .is_some_and(Value::is_string)
}

impl Disruption {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(budget) = self.budgets.get(&budgets_info().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&budget) {
            return Ok(Action::Done);
        }
        let pods: Vec<Arc<Value>> = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| selects(&budget, p))
            .collect();
        let now = jiff::Timestamp::now();
        let by_name: HashMap<&str, &Arc<Value>> =
            pods.iter().map(|p| (objects::name(p), p)).collect();
        // An evicted pod stays in the map until it is seen going, or for the timeout.
        let mut disrupted = Map::new();
        let mut recheck: Option<Duration> = None;
        for (pod, at) in budget
            .pointer("/status/disruptedPods")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let going = by_name
                .get(pod.as_str())
                .is_none_or(|p| objects::is_deleting(p));
            let age = at
                .as_str()
                .and_then(objects::parse_time)
                .map(|t| now.duration_since(t).unsigned_abs())
                .unwrap_or(DELETION_TIMEOUT);
            if going || age >= DELETION_TIMEOUT {
                continue;
            }
            let left = DELETION_TIMEOUT - age;
            recheck = Some(recheck.map_or(left, |r| r.min(left)));
            disrupted.insert(pod.clone(), at.clone());
        }
        let scale = if needs_scale(&budget) {
            match self.expected_scale(&pods).await {
                Ok(scale) => Some(scale),
                Err(message) => {
                    record_event(
                        &self.api,
                        &budget,
                        "Warning",
                        "CalculateExpectedPodCountFailed",
                        format!("Failed to calculate the number of expected pods: {message}"),
                        "controllermanager",
                    )
                    .await;
                    return self.write(&budget, None, &disrupted, Some(&message)).await;
                }
            }
        } else {
            None
        };
        let counts = counts(&budget, &pods, &disrupted, scale);
        self.write(&budget, Some(&counts), &disrupted, None).await?;
        Ok(recheck.map_or(Action::Done, |r| {
            Action::RequeueAfter(r + Duration::from_secs(1))
        }))
    }

    /// The replicas wanted of the controllers of `pods`, each controller counted once.
    async fn expected_scale(&self, pods: &[Arc<Value>]) -> Result<i64, String> {
        let mut scales: HashMap<String, i64> = HashMap::new();
        for pod in pods {
            let Some(owner) = owner_ref(pod) else {
                return Err(format!(
                    "found no controller ref for pod \"{}\"",
                    objects::name(pod)
                ));
            };
            if scales.contains_key(&owner.uid) {
                continue;
            }
            let found = self
                .scalable_controller(objects::namespace(pod), owner)
                .await
                .map_err(|e| e.to_string())?;
            let Some((uid, replicas)) = found else {
                return Err(format!(
                    "found no controllers for pod \"{}\"",
                    objects::name(pod)
                ));
            };
            scales.insert(uid, replicas);
        }
        Ok(scales.values().sum())
    }

    /// The controller whose scale counts for a pod owned by `owner`: a ReplicaSet's
    /// Deployment when it has one, else the owner itself if its kind has a scale
    /// subresource. Its uid and `spec.replicas`.
    async fn scalable_controller(
        &self,
        ns: Option<&str>,
        mut owner: OwnerRef,
    ) -> Result<Option<(String, i64)>, ApiError> {
        // At most two hops: pod → ReplicaSet → Deployment.
        for _ in 0..2 {
            let Some(info) = crate::kinds::by_kind(&owner.api_version, &owner.kind) else {
                return Ok(None);
            };
            let Some(obj) = internal::get(&self.api, info, ns, &owner.name).await? else {
                return Ok(None);
            };
            if objects::meta_str(&obj, "uid") != Some(owner.uid.as_str()) {
                return Ok(None);
            }
            if let Some(up) = owner_ref(&obj).filter(|o| o.kind == "Deployment") {
                owner = up;
                continue;
            }
            if !info.subresources.contains(&Subresource::Scale) {
                return Ok(None);
            }
            let replicas = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            return Ok(Some((owner.uid, replicas)));
        }
        Ok(None)
    }

    /// Writes the status if it changed, only over the budget this sync read: an eviction
    /// that took a disruption meanwhile wins, and its change wakes the next sync.
    async fn write(
        &self,
        budget: &Value,
        counts: Option<&Counts>,
        disrupted: &Map<String, Value>,
        failure: Option<&str>,
    ) -> Result<Action, ApiError> {
        let mut next = (*budget).clone();
        let generation = budget
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(0));
        let zero = Counts {
            expected: 0,
            desired: 0,
            healthy: 0,
            allowed: 0,
        };
        let c = counts.unwrap_or(&zero);
        for (field, value) in [
            ("observedGeneration", generation),
            ("disruptedPods", Value::Object(disrupted.clone())),
            ("disruptionsAllowed", json!(c.allowed)),
            ("currentHealthy", json!(c.healthy)),
            ("desiredHealthy", json!(c.desired)),
            ("expectedPods", json!(c.expected)),
        ] {
            objects::set_path(&mut next, &["status", field], value);
        }
        let blocked = match failure {
            Some(message) => Some(("SyncFailed", message)),
            None if c.allowed == 0 => Some(INSUFFICIENT_PODS),
            None => None,
        };
        set_allowed_condition(&mut next, blocked);
        if next.get("status") == budget.get("status") {
            return Ok(Action::Done);
        }
        let read = objects::resource_version(budget).map(str::to_string);
        let status = next["status"].clone();
        let result = internal::update_status(
            &self.api,
            budgets_info(),
            objects::namespace(budget),
            objects::name(budget),
            |current| {
                if objects::resource_version(current).map(str::to_string) != read {
                    return Err(ApiError::Conflict(
                        Subject::new(budgets_info(), objects::name(current)),
                        "changed since it was read".into(),
                    ));
                }
                let mut next = current.clone();
                next["status"] = status.clone();
                Ok(next)
            },
        )
        .await;
        match result {
            Ok(_) | Err(ApiError::Conflict(..) | ApiError::NotFound(_)) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

struct OwnerRef {
    api_version: String,
    kind: String,
    name: String,
    uid: String,
}

fn owner_ref(obj: &Value) -> Option<OwnerRef> {
    let (kind, name, uid) = controller_of(obj)?;
    let api_version = obj
        .pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["uid"] == uid)?
        .get("apiVersion")?
        .as_str()?
        .to_string();
    Some(OwnerRef {
        api_version,
        kind: kind.to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
    }

    fn budget(spec: Value) -> Value {
        json!({"metadata": {"name": "b", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn counts_follow_kubernetes() {
        let pods = vec![pod("a", true), pod("b", true), pod("c", false)];
        let none = Map::new();
        // minAvailable: 1 of the 3 pods that exist; two healthy, so one may go.
        let c = counts(&budget(json!({"minAvailable": 1})), &pods, &none, None);
        assert_eq!(
            c,
            Counts {
                expected: 3,
                desired: 1,
                healthy: 2,
                allowed: 1
            }
        );
        // 50% of 4 wanted replicas, rounded up: 2 needed, 2 healthy, none may go.
        let c = counts(
            &budget(json!({"minAvailable": "50%"})),
            &pods,
            &none,
            Some(4),
        );
        assert_eq!(
            c,
            Counts {
                expected: 4,
                desired: 2,
                healthy: 2,
                allowed: 0
            }
        );
        // maxUnavailable 1 of 3 wanted: 2 needed.
        let c = counts(&budget(json!({"maxUnavailable": 1})), &pods, &none, Some(3));
        assert_eq!(
            c,
            Counts {
                expected: 3,
                desired: 2,
                healthy: 2,
                allowed: 0
            }
        );
        // maxUnavailable 34% of 3 rounds up to 2: 1 needed.
        let c = counts(
            &budget(json!({"maxUnavailable": "34%"})),
            &pods,
            &none,
            Some(3),
        );
        assert_eq!(c.desired, 1);
        assert_eq!(c.allowed, 1);
        // A pod just evicted is not healthy any more.
        let mut evicted = Map::new();
        evicted.insert("a".into(), json!("2026-01-01T00:00:00Z"));
        let c = counts(&budget(json!({"minAvailable": 1})), &pods, &evicted, None);
        assert_eq!(c.healthy, 1);
        assert_eq!(c.allowed, 0);
        // Nothing expected: nothing may go.
        let c = counts(&budget(json!({"minAvailable": 0})), &[], &none, None);
        assert_eq!(c.allowed, 0);
    }
}
