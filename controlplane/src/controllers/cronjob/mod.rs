//! The CronJob controller, as Kubernetes' CronJob controller v2: at each schedule time
//! it creates a Job from the template, named `NAME-<scheduled minute since the epoch>`
//! so that a time is never started twice; it keeps `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`, honours `suspend`,
//! `startingDeadlineSeconds` and the concurrency policy, deletes finished Jobs beyond
//! the history limits, and requeues itself for the next schedule time.
//!
//! Time comes from the server's [`Clock`], so an end-to-end test can skip hours with
//! `--fake-clock`; the controller wakes on the clock's jumps as on a Job's changes.

mod times;

use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::{Action, Context, Controller, controller_of, split_key};
use crate::apiserver::{DeleteOptions, internal, record_event};
use crate::clock::Clock;
use crate::cron::{self, Schedule};
use crate::error::ApiError;
use crate::informer::Cache;
use crate::objects;
use crate::state::ApiServer;
pub use times::{Missed, job_name, most_recent_schedule_time};
use times::{earliest_time, next_schedule_delay, rfc3339_in, starting_deadline, time_at};

const COMPONENT: &str = "cronjob-controller";
/// The annotation a scheduled Job carries: its schedule time, in the CronJob's zone.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

fn cronjob_info() -> &'static ResourceInfo {
    crate::kinds::lookup("batch", "v1", "cronjobs").expect("cronjobs are served")
}

fn job_info() -> &'static ResourceInfo {
    crate::kinds::lookup("batch", "v1", "jobs").expect("jobs are served")
}

pub struct CronJobController {
    api: Arc<ApiServer>,
    jobs: Arc<Cache>,
    clock: Clock,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let cronjobs = ctx.cache("batch", "cronjobs");
    let jobs = ctx.cache("batch", "jobs");
    let clock = ctx.api().clock.clone();
    let ctrl = Arc::new(CronJobController {
        api: ctx.api().clone(),
        jobs: jobs.clone(),
        clock: clock.clone(),
    });
    Controller::new(&ctx, "cronjob", &cronjobs)
        .owns(&jobs, "CronJob")
        .wakes_on(&clock)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

/// The condition that finished a Job (Complete or Failed), if it has finished.
fn finished_condition(job: &Value) -> Option<&str> {
    job.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

fn uid(obj: &Value) -> &str {
    objects::meta_str(obj, "uid").unwrap_or_default()
}

/// An ObjectReference to a Job, as `status.active` holds them.
fn job_ref(job: &Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": objects::name(job),
        "namespace": objects::namespace(job),
        "uid": uid(job),
        "resourceVersion": objects::resource_version(job),
    })
}

/// The Job for the time `scheduled`: the template's labels, annotations and spec,
/// owned by the CronJob (Kubernetes' `getJobFromTemplate2`).
fn job_from_template(cj: &Value, scheduled: Timestamp, tz: &TimeZone) -> Value {
    let template = cj.pointer("/spec/jobTemplate").cloned().unwrap_or_default();
    let mut annotations = template
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    annotations.insert(SCHEDULED_TIMESTAMP.into(), json!(rfc3339_in(scheduled, tz)));
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(objects::name(cj), scheduled),
            "labels": template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": objects::name(cj),
                "uid": uid(cj), "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
    })
}

/// The status a sync works on and writes back if it changed.
struct Status {
    active: Vec<Value>,
    last_schedule: Option<Value>,
    last_successful: Option<Timestamp>,
    changed: bool,
}

impl Status {
    fn of(cj: &Value) -> Status {
        Status {
            active: cj
                .pointer("/status/active")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            last_schedule: cj.pointer("/status/lastScheduleTime").cloned(),
            last_successful: time_at(cj, "/status/lastSuccessfulTime"),
            changed: false,
        }
    }

    fn is_active(&self, job_uid: &str) -> bool {
        self.active.iter().any(|r| r["uid"] == job_uid)
    }

    fn remove_active(&mut self, job_uid: &str) {
        self.active.retain(|r| r["uid"] != job_uid);
        self.changed = true;
    }

    fn to_json(&self) -> Value {
        let mut status = Map::new();
        if !self.active.is_empty() {
            status.insert("active".into(), json!(self.active));
        }
        if let Some(t) = &self.last_schedule {
            status.insert("lastScheduleTime".into(), t.clone());
        }
        if let Some(t) = self.last_successful {
            status.insert("lastSuccessfulTime".into(), json!(objects::format_time(t)));
        }
        Value::Object(status)
    }
}

impl CronJobController {
    async fn event(&self, cj: &Value, kind: &str, reason: &str, message: String) {
        record_event(&self.api, cj, kind, reason, message, COMPONENT).await;
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        // Read from the store, not the cache: a sync must see the status the previous
        // one wrote (its `active` list), or Forbid could start a second Job while the
        // cache lags (Kubernetes re-reads the CronJob for the same reason).
        let Some(cj) = internal::get(&self.api, cronjob_info(), Some(ns), name).await? else {
            return Ok(Action::Done);
        };
        let jobs: Vec<Arc<Value>> = self
            .jobs
            .snapshot()
            .into_iter()
            .filter(|j| {
                objects::namespace(j) == Some(ns)
                    && controller_of(j).is_some_and(|(k, _, u)| k == "CronJob" && u == uid(&cj))
            })
            .collect();
        let mut status = Status::of(&cj);
        self.observe_jobs(&cj, &jobs, &mut status).await?;
        let action = if objects::is_deleting(&cj) {
            Action::Done
        } else {
            self.schedule(&cj, &mut status).await?
        };
        self.clean_up_history(&cj, &jobs, &mut status).await;
        if status.changed {
            // Written over the version it was computed from, as Kubernetes' UpdateStatus
            // does: if someone wrote meanwhile, the retry starts from their version.
            let next = status.to_json();
            let seen = objects::resource_version(&cj).map(str::to_string);
            internal::update_status(&self.api, cronjob_info(), Some(ns), name, |current| {
                if objects::resource_version(current).map(str::to_string) != seen {
                    return Err(ApiError::Conflict(
                        crate::error::Subject::new(cronjob_info(), name),
                        "the object has been modified; please apply your changes to the latest version and try again".into(),
                    ));
                }
                let mut current = current.clone();
                current["status"] = next.clone();
                Ok(current)
            })
            .await?;
        }
        Ok(action)
    }

    /// Brings `status.active` and `lastSuccessfulTime` up to date with the Jobs.
    async fn observe_jobs(
        &self,
        cj: &Value,
        jobs: &[Arc<Value>],
        status: &mut Status,
    ) -> Result<(), ApiError> {
        for job in jobs {
            let job_uid = uid(job);
            match (status.is_active(job_uid), finished_condition(job)) {
                (false, None) => {
                    self.event(
                        cj,
                        "Warning",
                        "UnexpectedJob",
                        format!(
                            "Saw a job that the controller did not create or forgot: {}",
                            objects::name(job)
                        ),
                    )
                    .await;
                }
                (true, Some(condition)) => {
                    status.remove_active(job_uid);
                    self.event(
                        cj,
                        "Normal",
                        "SawCompletedJob",
                        format!(
                            "Saw completed job: {}, condition: {condition}",
                            objects::name(job)
                        ),
                    )
                    .await;
                }
                _ => {}
            }
            if let Some(done) = time_at(job, "/status/completionTime")
                && status.last_successful.is_none_or(|t| done > t)
            {
                status.last_successful = Some(done);
                status.changed = true;
            }
        }
        // An active Job that is gone: asked of the store, not the cache, which may
        // merely lag behind.
        for reference in status.active.clone() {
            let job_uid = reference["uid"].as_str().unwrap_or_default();
            if jobs.iter().any(|j| uid(j) == job_uid) {
                continue;
            }
            let job_name = reference["name"].as_str().unwrap_or_default();
            let stored =
                internal::get(&self.api, job_info(), objects::namespace(cj), job_name).await?;
            if stored.is_none_or(|j| uid(&j) != job_uid) {
                status.remove_active(job_uid);
                self.event(
                    cj,
                    "Normal",
                    "MissingJob",
                    format!("Active job went missing: {job_name}"),
                )
                .await;
            }
        }
        Ok(())
    }

    /// Starts the Job of the latest unmet schedule time, if the CronJob's settings let
    /// it, and says when to look again.
    async fn schedule(&self, cj: &Value, status: &mut Status) -> Result<Action, ApiError> {
        let zone = cj.pointer("/spec/timeZone").and_then(Value::as_str);
        let tz = match cron::time_zone(zone) {
            Ok(tz) => tz,
            Err(e) => {
                let zone = zone.unwrap_or_default();
                let message = format!("invalid timeZone: {zone:?}: {e}");
                self.event(cj, "Warning", "UnknownTimeZone", message).await;
                return Ok(Action::Done);
            }
        };
        if cj.pointer("/spec/suspend") == Some(&json!(true)) {
            return Ok(Action::Done);
        }
        let spec = cj
            .pointer("/spec/schedule")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let schedule = match Schedule::parse(spec) {
            Ok(s) => s,
            Err(e) => {
                let message = format!("unparseable schedule: {spec:?} : {e}");
                self.event(cj, "Warning", "UnparseableSchedule", message)
                    .await;
                return Ok(Action::Done);
            }
        };
        let now = self.clock.now();
        let requeue = |cj: &Value| match next_schedule_delay(cj, &schedule, &tz, now) {
            Some(d) => Action::RequeueAfter(d),
            None => Action::Done,
        };

        let earliest = earliest_time(cj, now, true);
        let scheduled = match most_recent_schedule_time(&schedule, &tz, earliest, now) {
            (Some(t), missed) => {
                if let Missed::Many(n) = missed {
                    let message = format!(
                        "too many missed start times: {n}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                    );
                    self.event(cj, "Warning", "TooManyMissedTimes", message)
                        .await;
                }
                t
            }
            (None, _) => return Ok(requeue(cj)),
        };
        if let Some(deadline) = starting_deadline(cj)
            && scheduled
                .checked_add(jiff::SignedDuration::from_secs(deadline))
                .is_ok_and(|last_start| last_start < now)
        {
            let message = format!(
                "Missed scheduled time to start a job: {}",
                scheduled.strftime("%a, %d %b %Y %H:%M:%S +0000")
            );
            self.event(cj, "Warning", "MissSchedule", message).await;
            return Ok(requeue(cj));
        }
        let name = job_name(objects::name(cj), scheduled);
        let scheduled_text = json!(objects::format_time(scheduled));
        if status.active.iter().any(|r| r["name"] == name.as_str())
            || status.last_schedule.as_ref() == Some(&scheduled_text)
        {
            return Ok(requeue(cj));
        }
        let policy = cj
            .pointer("/spec/concurrencyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Allow");
        if policy == "Forbid" && !status.active.is_empty() {
            let message = "Not starting job because prior execution is running and concurrency policy is Forbid";
            self.event(cj, "Normal", "JobAlreadyActive", message.into())
                .await;
            return Ok(requeue(cj));
        }
        if policy == "Replace" {
            for reference in status.active.clone() {
                let job_name = reference["name"].as_str().unwrap_or_default();
                let job_uid = reference["uid"].as_str().unwrap_or_default();
                if !self.delete_job(cj, job_name, job_uid, status).await {
                    return Err(ApiError::Conflict(
                        crate::error::Subject::new(job_info(), job_name),
                        "could not replace the job".into(),
                    ));
                }
            }
        }

        let ns = objects::namespace(cj);
        let job = match internal::create(
            &self.api,
            job_info(),
            ns,
            job_from_template(cj, scheduled, &tz),
        )
        .await
        {
            Ok(job) => {
                self.event(
                    cj,
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created job {name}"),
                )
                .await;
                job
            }
            Err(ApiError::AlreadyExists(_)) => {
                // Made by an earlier sync whose status write was lost, or by someone
                // else: take it into the status only if it is this CronJob's.
                let Some(job) = internal::get(&self.api, job_info(), ns, &name).await? else {
                    return Ok(requeue(cj));
                };
                let ours = controller_of(&job).is_some_and(|(_, _, u)| u == uid(cj));
                if !ours || status.is_active(uid(&job)) {
                    return Ok(requeue(cj));
                }
                job
            }
            Err(e) => {
                self.event(
                    cj,
                    "Warning",
                    "FailedCreate",
                    format!("Error creating job: {e}"),
                )
                .await;
                return Err(e);
            }
        };
        status.active.push(job_ref(&job));
        status.last_schedule = Some(scheduled_text);
        status.changed = true;
        Ok(requeue(cj))
    }

    /// Deletes a Job and its pods (in the background); false if it could not.
    async fn delete_job(
        &self,
        cj: &Value,
        job_name: &str,
        job_uid: &str,
        status: &mut Status,
    ) -> bool {
        let opts = DeleteOptions {
            precondition_uid: Some(job_uid.to_string()),
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        let ns = objects::namespace(cj);
        match internal::delete(&self.api, job_info(), ns, job_name, &opts).await {
            Ok(_) => {
                if status.is_active(job_uid) {
                    status.remove_active(job_uid);
                }
                let message = format!("Deleted job {job_name}");
                self.event(cj, "Normal", "SuccessfulDelete", message).await;
                true
            }
            // Deleted already (by an earlier sync whose status the cache had not yet
            // shown): only the status is behind.
            Err(ApiError::NotFound(_)) => {
                if status.is_active(job_uid) {
                    status.remove_active(job_uid);
                }
                true
            }
            Err(e) => {
                let message = format!("Deleted job: {e}");
                self.event(cj, "Warning", "FailedDelete", message).await;
                false
            }
        }
    }

    /// Deletes the oldest finished Jobs beyond `successfulJobsHistoryLimit` and
    /// `failedJobsHistoryLimit`.
    async fn clean_up_history(&self, cj: &Value, jobs: &[Arc<Value>], status: &mut Status) {
        for (condition, limit) in [
            ("Complete", "/spec/successfulJobsHistoryLimit"),
            ("Failed", "/spec/failedJobsHistoryLimit"),
        ] {
            let Some(limit) = cj.pointer(limit).and_then(Value::as_i64) else {
                continue;
            };
            let mut finished: Vec<&Arc<Value>> = jobs
                .iter()
                .filter(|j| !objects::is_deleting(j) && finished_condition(j) == Some(condition))
                .collect();
            let excess = finished.len().saturating_sub(limit.max(0) as usize);
            if excess == 0 {
                continue;
            }
            // Oldest start first, a Job not started last, then by name.
            finished.sort_by(|a, b| {
                let (sa, sb) = (
                    time_at(a, "/status/startTime"),
                    time_at(b, "/status/startTime"),
                );
                match (sa, sb) {
                    (Some(x), Some(y)) if x != y => x.cmp(&y),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    _ => objects::name(a).cmp(objects::name(b)),
                }
            });
            for job in finished.into_iter().take(excess) {
                self.delete_job(cj, objects::name(job), uid(job), status)
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn jobs_are_named_by_their_minute_and_stamped_in_the_zone() {
        let t = utc("2026-12-07T09:00:00Z");
        assert_eq!(
            job_name("nightly", t),
            format!("nightly-{}", t.as_second() / 60)
        );
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        assert_eq!(rfc3339_in(t, &tokyo), "2026-12-07T18:00:00+09:00");
        assert_eq!(rfc3339_in(t, &TimeZone::UTC), "2026-12-07T09:00:00Z");
        let cj = json!({
            "metadata": {"name": "nightly", "uid": "u1"},
            "spec": {"jobTemplate": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"template": {"spec": {"containers": []}}},
            }},
        });
        let job = job_from_template(&cj, t, &TimeZone::UTC);
        assert_eq!(job["metadata"]["labels"]["a"], "b");
        assert_eq!(
            job["metadata"]["annotations"][SCHEDULED_TIMESTAMP],
            "2026-12-07T09:00:00Z"
        );
        assert_eq!(job["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "u1");
    }
}
