//! What a Deployment reports: replica counts, the Available condition, and the
//! Progressing condition with its deadline, as `kubectl rollout status` reads them.

use std::time::Duration;

use serde_json::{Value, json};

use super::{
    COMPONENT, Counts, DeploymentController, Rollout, deploy_info, int_field, max_unavailable,
    spec_replicas,
};
use crate::apiserver::{internal, record_event};
use crate::controllers::Action;
use crate::error::ApiError;
use crate::objects;

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

impl DeploymentController {
    /// The new ReplicaSet has every replica, all available, and nothing old is left.
    pub(super) fn complete(&self, r: &Rollout) -> bool {
        let replicas = spec_replicas(&r.d);
        let Some(new) = &r.new else {
            return replicas == 0 && r.old.iter().all(|rs| r.counts(rs).active == 0);
        };
        let c = r.counts(new);
        c.active == replicas
            && r.old.iter().all(|rs| r.counts(rs).active == 0)
            && c.available.min(replicas) == replicas
    }

    /// Writes the status `kubectl rollout status` reads; with `track_progress`, the
    /// Progressing condition follows the rollout and its deadline. Asks to come back
    /// when a pod becomes available or the deadline passes.
    pub(super) async fn update_status(
        &self,
        r: &Rollout,
        track_progress: bool,
    ) -> Result<Action, ApiError> {
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
