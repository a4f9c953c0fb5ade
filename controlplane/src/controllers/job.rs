//! The Job controller: runs pods until `completions` succeed, at most `parallelism` at a
//! time, and fails the Job when `backoffLimit` failures or `activeDeadlineSeconds` are
//! exceeded, with Complete and Failed conditions; `ttlSecondsAfterFinished` deletes a
//! finished Job (and, through the garbage collector, its pods).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::pods_info;
use super::{Action, Context, Controller, controller_of, split_key};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;
use crate::state::ApiServer;

const WORKERS: usize = 2;
/// How long pods asked for but not yet seen hold back more creations.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(30);

fn job_info() -> &'static ResourceInfo {
    crate::kinds::lookup("batch", "v1", "jobs").expect("jobs are served")
}

pub struct JobController {
    api: Arc<ApiServer>,
    jobs: Arc<Cache>,
    pods: Arc<Cache>,
    /// Pods created but not yet seen in the cache, per Job.
    expected: Mutex<HashMap<String, (i64, Instant)>>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let jobs = ctx.cache("batch", "jobs");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(JobController {
        api: ctx.api().clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
        expected: Mutex::default(),
    });
    let observer = ctrl.clone();
    Controller::new(&ctx, "job", &jobs)
        .watches(&pods, move |e| observer.keys_for_pod_event(e))
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn finished_condition(job: &Value) -> Option<&Value> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
}

impl JobController {
    fn keys_for_pod_event(&self, e: &CacheEvent) -> Vec<String> {
        let (pod, created) = match e {
            CacheEvent::Changed { object, prev } => (object, prev.is_none()),
            CacheEvent::Deleted(object) => (object, false),
            CacheEvent::Resynced => return vec![],
        };
        let Some(("Job", name, _)) = controller_of(pod) else {
            return vec![];
        };
        let key = format!("{}/{name}", objects::namespace(pod).unwrap_or_default());
        if created
            && let Some(e) = self
                .expected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&key)
        {
            e.0 -= 1;
        }
        vec![key]
    }

    fn waiting_for_creations(&self, key: &str) -> bool {
        self.expected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|(n, at)| *n > 0 && at.elapsed() < EXPECTATION_TIMEOUT)
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(job) = self.jobs.get(&job_info().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&job) {
            return Ok(Action::Done);
        }
        let now = jiff::Timestamp::now();
        if let Some(done) = finished_condition(&job) {
            return self.after_finish(&job, done, now).await;
        }
        let uid = objects::meta_str(&job, "uid")
            .unwrap_or_default()
            .to_string();
        let pods: Vec<Arc<Value>> = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| {
                objects::namespace(p) == Some(ns)
                    && controller_of(p).is_some_and(|(_, _, u)| u == uid)
            })
            .collect();
        let active: Vec<&Arc<Value>> = pods
            .iter()
            .filter(|p| !objects::is_deleting(p) && !matches!(phase(p), "Succeeded" | "Failed"))
            .collect();
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let restart_policy = job
            .pointer("/spec/template/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Never");
        // With OnFailure, failures are container restarts inside running pods.
        let restarts: i64 = if restart_policy == "OnFailure" {
            pods.iter()
                .flat_map(|p| {
                    p.pointer("/status/containerStatuses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|c| c["restartCount"].as_i64())
                .sum()
        } else {
            0
        };
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64 + restarts;
        let completions = job
            .pointer("/spec/completions")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let parallelism = job
            .pointer("/spec/parallelism")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let backoff_limit = job
            .pointer("/spec/backoffLimit")
            .and_then(Value::as_i64)
            .unwrap_or(6);
        let start = job
            .pointer("/status/startTime")
            .and_then(Value::as_str)
            .and_then(objects::parse_time)
            .unwrap_or(now);
        let deadline = job
            .pointer("/spec/activeDeadlineSeconds")
            .and_then(Value::as_i64);
        let suspended = job.pointer("/spec/suspend") == Some(&json!(true));

        let outcome = if succeeded >= completions {
            Some((
                "Complete",
                "",
                format!("Job completed: {succeeded} of {completions} succeeded"),
            ))
        } else if failed > backoff_limit {
            Some((
                "Failed",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline.is_some_and(|d| now.duration_since(start).as_secs() >= d) {
            Some((
                "Failed",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        };
        if outcome.is_some() || suspended {
            for pod in &active {
                let opts = DeleteOptions {
                    precondition_uid: objects::meta_str(pod, "uid").map(str::to_string),
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                match internal::delete(&self.api, pods_info(), Some(ns), objects::name(pod), &opts)
                    .await
                {
                    Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => {}
                    Err(e) => return Err(e),
                }
            }
        } else if !self.waiting_for_creations(key) {
            let want = parallelism.min(completions - succeeded).max(0) as usize;
            if active.len() < want {
                let n = want - active.len();
                self.expected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string(), (n as i64, Instant::now()));
                for _ in 0..n {
                    internal::create(&self.api, pods_info(), Some(ns), pod_from_template(&job))
                        .await?;
                }
            }
        }
        let active_now = if outcome.is_some() { 0 } else { active.len() };
        let ready = active
            .iter()
            .filter(|p| {
                p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        let mut status = json!({
            "active": active_now,
            "succeeded": succeeded,
            "failed": failed,
            "ready": if outcome.is_some() { 0 } else { ready },
            "startTime": objects::format_time(start),
        });
        if let Some((kind, reason, message)) = &outcome {
            let stamp = objects::now_rfc3339();
            let mut condition = json!({"type": kind, "status": "True", "lastProbeTime": stamp, "lastTransitionTime": stamp, "message": message});
            if !reason.is_empty() {
                condition["reason"] = json!(reason);
            }
            status["conditions"] = json!([condition]);
            if *kind == "Complete" {
                status["completionTime"] = json!(stamp);
            }
            record_event(
                &self.api,
                &job,
                if *kind == "Complete" {
                    "Normal"
                } else {
                    "Warning"
                },
                if *kind == "Complete" {
                    "Completed"
                } else {
                    reason
                },
                message.clone(),
                "job-controller",
            )
            .await;
        }
        let changed = ["active", "succeeded", "failed", "ready", "startTime"]
            .iter()
            .any(|k| job.pointer(&format!("/status/{k}")) != status.get(*k))
            || outcome.is_some();
        if changed {
            internal::merge_status(&self.api, job_info(), Some(ns), name, &status).await?;
        }
        // The deadline is a timer the state implies.
        Ok(match deadline {
            Some(d) if outcome.is_none() => Action::RequeueAfter(Duration::from_secs(
                (d - now.duration_since(start).as_secs()).max(0) as u64 + 1,
            )),
            _ => Action::Done,
        })
    }

    /// A finished Job is deleted once its time-to-live after finishing has passed.
    async fn after_finish(
        &self,
        job: &Value,
        done: &Value,
        now: jiff::Timestamp,
    ) -> Result<Action, ApiError> {
        let Some(ttl) = job
            .pointer("/spec/ttlSecondsAfterFinished")
            .and_then(Value::as_i64)
        else {
            return Ok(Action::Done);
        };
        let finished = done["lastTransitionTime"]
            .as_str()
            .and_then(objects::parse_time)
            .unwrap_or(now);
        let age = now.duration_since(finished).as_secs();
        if age < ttl {
            return Ok(Action::RequeueAfter(Duration::from_secs(
                (ttl - age) as u64,
            )));
        }
        let opts = DeleteOptions {
            precondition_uid: objects::meta_str(job, "uid").map(str::to_string),
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        match internal::delete(
            &self.api,
            job_info(),
            objects::namespace(job),
            objects::name(job),
            &opts,
        )
        .await
        {
            Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

fn pod_from_template(job: &Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", objects::name(job)),
            "labels": job.pointer("/spec/template/metadata/labels"),
            "annotations": job.pointer("/spec/template/metadata/annotations"),
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": objects::name(job), "uid": objects::meta_str(job, "uid"), "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": job.pointer("/spec/template/spec"),
    })
}
