//! End to end on `skiff dev --fake-clock`: CronJobs start Jobs as the controllers'
//! clock (moved with `POST /skiff/v1/clock`) reaches their schedule times, and those
//! Jobs' pods run to completion as Wasm; the concurrency policies, history limits,
//! missed times, starting deadlines and suspend behave as in Kubernetes; kubectl lists
//! CronJobs and creates Jobs from them.
//!
//! The fake clock keeps flowing at the real rate between jumps, so a real minute may
//! pass during a test and start one more Job: the assertions count what a jump must
//! have done, never that nothing else happened.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Api, eventually, workload};
use jiff::Timestamp;
use serde_json::{Value, json};

const CRONJOBS: &str = "/apis/batch/v1/namespaces/default/cronjobs";
const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";
const WAIT: Duration = Duration::from_secs(60);

fn cronjob(name: &str, image: &str, schedule: &str, spec: Value) -> Value {
    let mut cj = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": image}],
            }}}},
        },
    });
    for (k, v) in spec.as_object().unwrap() {
        cj["spec"][k] = v.clone();
    }
    cj
}

async fn create(api: &Api, cj: Value) -> Value {
    let (code, created) = api.post(CRONJOBS, &cj).await;
    assert_eq!(code, 201, "{created}");
    created
}

/// Moves the controllers' clock forward; returns its new time.
async fn advance(api: &Api, seconds: i64) -> Timestamp {
    clock(api, json!({"advanceSeconds": seconds})).await
}

async fn clock(api: &Api, body: Value) -> Timestamp {
    let (code, out) = api.post("/skiff/v1/clock", &body).await;
    assert_eq!(code, 200, "{out}");
    out["time"].as_str().unwrap().parse().unwrap()
}

fn minute(t: Timestamp) -> i64 {
    t.as_second().div_euclid(60)
}

/// The minute since the epoch a CronJob's Job was scheduled for (from its name).
fn job_minute(job: &Value) -> i64 {
    minute_of(job["metadata"]["name"].as_str().unwrap())
}

fn minute_of(job_name: &str) -> i64 {
    job_name.rsplit('-').next().unwrap().parse().unwrap()
}

/// The Jobs a CronJob controls, oldest schedule first.
async fn jobs_of(api: &Api, cronjob: &str) -> Vec<Value> {
    let (_, list) = api.get(JOBS).await;
    let mut jobs: Vec<Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| {
            j["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "CronJob" && r["name"] == cronjob)
        })
        .cloned()
        .collect();
    jobs.sort_by_key(|j| j["metadata"]["name"].as_str().unwrap().to_string());
    jobs
}

fn finished(job: &Value) -> Option<&str> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["status"] == "True")
        .and_then(|c| c["type"].as_str())
}

fn is_active(job: &Value) -> bool {
    job["metadata"]["deletionTimestamp"].is_null() && finished(job).is_none()
}

async fn get_cronjob(api: &Api, name: &str) -> Value {
    let (code, cj) = api.get(&format!("{CRONJOBS}/{name}")).await;
    assert_eq!(code, 200, "{cj}");
    cj
}

/// Waits for a Job of `cronjob` scheduled at `at_least` or later, and returns it.
async fn job_from(api: &Api, cronjob: &str, at_least: i64) -> Value {
    eventually(
        &format!("a job of {cronjob} scheduled at minute {at_least} or later"),
        WAIT,
        || async move {
            jobs_of(api, cronjob)
                .await
                .into_iter()
                .rfind(|j| job_minute(j) >= at_least)
        },
    )
    .await
}

async fn until_finished(api: &Api, job: &Value) -> Value {
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    eventually(&format!("job {name} to finish"), WAIT, || {
        let name = name.clone();
        async move {
            let (_, j) = api.get(&format!("{JOBS}/{name}")).await;
            finished(&j).is_some().then_some(j)
        }
    })
    .await
}

/// The (reason, message) of the events about a CronJob.
async fn events_of(api: &Api, name: &str) -> Vec<(String, String)> {
    let (_, list) = api.get("/api/v1/namespaces/default/events").await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["involvedObject"]["kind"] == "CronJob" && e["involvedObject"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn event(api: &Api, name: &str, reason: &str) -> String {
    eventually(
        &format!("a {reason} event of {name}"),
        WAIT,
        || async move {
            events_of(api, name)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, m)| m)
        },
    )
    .await
}

#[tokio::test]
async fn a_minutely_cronjob_runs_a_job_per_minute_and_keeps_two() {
    let (_dir, _cluster, api) = common::dev_cluster(1, &["--fake-clock"]);
    let api = &api;
    let hello = api.upload(workload("hello.wasm")).await;
    let created = create(
        api,
        cronjob(
            "every",
            &hello,
            "*/1 * * * *",
            json!({"successfulJobsHistoryLimit": 2}),
        ),
    )
    .await;
    assert_eq!(created["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(created["spec"]["suspend"], false);
    assert_eq!(created["spec"]["failedJobsHistoryLimit"], 1);

    let mut ran = Vec::new();
    for _ in 0..3 {
        let now = advance(api, 60).await;
        let job = until_finished(api, &job_from(api, "every", minute(now)).await).await;
        assert_eq!(finished(&job), Some("Complete"), "{job}");
        assert_eq!(job["status"]["succeeded"], 1, "its pod ran to Succeeded");
        let owner = &job["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["controller"], &owner["uid"]),
            (&json!("CronJob"), &json!(true), &created["metadata"]["uid"])
        );
        let stamp: Timestamp =
            job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
        assert_eq!(minute(stamp), job_minute(&job));
        ran.push(job_minute(&job));
    }

    // Only the two newest finished Jobs stay; the status has caught up with them.
    let kept = eventually("two finished jobs kept", WAIT, || async move {
        let jobs = jobs_of(api, "every").await;
        (jobs.len() == 2 && jobs.iter().all(|j| finished(j).is_some())).then_some(jobs)
    })
    .await;
    assert!(job_minute(&kept[0]) >= ran[1], "the oldest went first");
    let cj = eventually("the status to catch up", WAIT, || async move {
        let cj = get_cronjob(api, "every").await;
        (cj["status"]["active"].is_null() && cj["status"]["lastSuccessfulTime"].is_string())
            .then_some(cj)
    })
    .await;
    let last: Timestamp = cj["status"]["lastScheduleTime"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(minute(last), job_minute(&kept[1]));
    let events = events_of(api, "every").await;
    for (reason, start) in [
        ("SuccessfulCreate", "Created job every-"),
        ("SawCompletedJob", "Saw completed job: every-"),
        ("SuccessfulDelete", "Deleted job every-"),
    ] {
        assert!(
            events
                .iter()
                .any(|(r, m)| r == reason && m.starts_with(start)),
            "{reason}: {events:?}"
        );
    }

    // Deleting the CronJob deletes its Jobs (the garbage collector follows owners).
    let (code, _) = api.delete(&format!("{CRONJOBS}/every"), None).await;
    assert_eq!(code, 200);
    eventually("the jobs to be collected", WAIT, || async move {
        jobs_of(api, "every").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn forbid_skips_while_a_job_runs_and_replace_replaces_it() {
    let (_dir, _cluster, api) = common::dev_cluster(1, &["--fake-clock"]);
    let api = &api;
    let ticker = api.upload(workload("ticker.wasm")).await;
    create(
        api,
        cronjob(
            "busy",
            &ticker,
            "*/1 * * * *",
            json!({"concurrencyPolicy": "Forbid"}),
        ),
    )
    .await;
    let now = advance(api, 60).await;
    let first = job_from(api, "busy", minute(now)).await;
    let first_name = first["metadata"]["name"].as_str().unwrap().to_string();
    let first_name = first_name.as_str();

    // The ticker never exits: the next time is skipped while it runs.
    advance(api, 60).await;
    let message = event(api, "busy", "JobAlreadyActive").await;
    assert_eq!(
        message,
        "Not starting job because prior execution is running and concurrency policy is Forbid"
    );
    let jobs = jobs_of(api, "busy").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let cj = get_cronjob(api, "busy").await;
    assert_eq!(cj["status"]["active"][0]["name"], first_name);

    // Replace: the running Job is deleted and the next time started.
    let (code, out) = api
        .patch(
            &format!("{CRONJOBS}/busy"),
            "application/merge-patch+json",
            r#"{"spec": {"concurrencyPolicy": "Replace"}}"#,
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let now = advance(api, 60).await;
    let second = job_from(api, "busy", minute(now)).await;
    assert_ne!(second["metadata"]["name"], first_name);
    assert!(is_active(&second));
    let replaced = format!("Deleted job {first_name}");
    eventually("the running job's replacement", WAIT, || {
        let replaced = replaced.clone();
        async move {
            events_of(api, "busy")
                .await
                .into_iter()
                .any(|(r, m)| r == "SuccessfulDelete" && m == replaced)
                .then_some(())
        }
    })
    .await;
    eventually("the replaced job to go", WAIT, || async move {
        let (code, _) = api.get(&format!("{JOBS}/{first_name}")).await;
        (code == 404).then_some(())
    })
    .await;
    // (Switching to Replace may itself start the skipped time first, replacing the
    // running Job; the jump's time replaces that one in turn.)
    eventually(
        "only the latest time's job to be active",
        WAIT,
        || async move {
            let cj = get_cronjob(api, "busy").await;
            let active = cj["status"]["active"].as_array()?;
            (active.len() == 1 && minute_of(active[0]["name"].as_str()?) >= minute(now))
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn missed_times_deadlines_and_suspend() {
    let (_dir, _cluster, api) = common::dev_cluster(1, &["--fake-clock"]);
    let api = &api;
    let hello = api.upload(workload("hello.wasm")).await;
    let before = advance(api, 0).await;
    create(api, cronjob("late", &hello, "*/1 * * * *", json!({}))).await;
    create(
        api,
        cronjob("paused", &hello, "*/1 * * * *", json!({"suspend": true})),
    )
    .await;
    // Hourly, but only within 10 seconds of the hour.
    create(
        api,
        cronjob(
            "strict",
            &hello,
            "0 * * * *",
            json!({"startingDeadlineSeconds": 10}),
        ),
    )
    .await;

    // Three hours pass: 180 minutely times were missed; only the latest starts.
    let now = advance(api, 3 * 3600).await;
    let latest = job_from(api, "late", minute(now)).await;
    let message = event(api, "late", "TooManyMissedTimes").await;
    let missed: i64 = message
        .strip_prefix("too many missed start times: ")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{message}"));
    assert!((179..=182).contains(&missed), "{message}");
    assert!(
        message.ends_with(". Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
        "{message}"
    );
    let started_by_the_jump: Vec<i64> = jobs_of(api, "late")
        .await
        .iter()
        .map(job_minute)
        .filter(|m| *m > minute(before) + 1)
        .collect();
    assert_eq!(started_by_the_jump, [job_minute(&latest)]);

    // Suspended: nothing started, even with times missed; resumed, it catches up with
    // the latest one.
    assert!(jobs_of(api, "paused").await.is_empty());
    let (code, out) = api
        .patch(
            &format!("{CRONJOBS}/paused"),
            "application/merge-patch+json",
            r#"{"spec": {"suspend": false}}"#,
        )
        .await;
    assert_eq!(code, 200, "{out}");
    job_from(api, "paused", minute(now)).await;

    // The hour passed more than 10 seconds ago: skipped. The next hour, reached within
    // 10 seconds, starts.
    let now = advance(api, 0).await;
    let next_hour = (minute(now) / 60 + 1) * 3600;
    let half_past = Timestamp::from_second(next_hour + 1800).unwrap();
    clock(api, json!({"time": half_past.to_string()})).await;
    // The jump wakes every CronJob; once the minutely ones started their half-past
    // Jobs the controller has most likely looked at this one too, and it started none.
    job_from(api, "late", minute(half_past)).await;
    job_from(api, "paused", minute(half_past)).await;
    let strict = jobs_of(api, "strict").await;
    assert!(
        strict.iter().all(|j| job_minute(j) != next_hour / 60),
        "{strict:?}"
    );
    let on_time = Timestamp::from_second(next_hour + 3600 + 2).unwrap();
    clock(api, json!({"time": on_time.to_string()})).await;
    let job = job_from(api, "strict", minute(on_time)).await;
    assert_eq!(job_minute(&job), (next_hour + 3600) / 60);
    assert!(
        jobs_of(api, "strict")
            .await
            .iter()
            .all(|j| job_minute(j) != next_hour / 60),
        "the late time was not started"
    );
}

/// kubectl's exit status and output.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let (kc, args): (std::path::PathBuf, Vec<String>) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kc)
            .output()
            .expect("kubectl is installed by scripts/test");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    })
    .await
    .unwrap()
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out) = kubectl(kubeconfig, args).await;
    assert!(success, "kubectl {args:?} failed:\n{out}");
    out
}

#[tokio::test]
async fn kubectl_lists_cronjobs_and_creates_jobs_from_them() {
    let (dir, _cluster, api) = common::dev_cluster(1, &["--fake-clock"]);
    let api = &api;
    let kc = dir.path().join("kubeconfig");
    let hello = api.upload(workload("hello.wasm")).await;
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/cronjob.yaml"),
    )
    .unwrap()
    .replace("${HELLO}", &hello);
    let file = dir.path().join("cronjob.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out = ok(&kc, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.contains("cronjob.batch/report created"), "{out}");
    // kubectl's typed client may send protobuf.
    let out = ok(
        &kc,
        &[
            "create",
            "cronjob",
            "tidy",
            "--image",
            &hello,
            "--schedule",
            "@hourly",
        ],
    )
    .await;
    assert!(out.contains("cronjob.batch/tidy created"), "{out}");

    let out = ok(&kc, &["get", "cronjobs"]).await;
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    let report: Vec<&str> = lines
        .find(|l| l.starts_with("report"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &report[..9],
        [
            "report",
            "0",
            "6",
            "*",
            "*",
            "MON-FRI",
            "Europe/Paris",
            "False",
            "0"
        ]
    );
    assert_eq!(report[9], "<none>", "{out}");
    let out = ok(&kc, &["get", "cj", "tidy", "-o", "wide"]).await;
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[8..], ["CONTAINERS", "IMAGES", "SELECTOR"], "{out}");
    assert!(out.contains("@hourly") && out.contains("<none>"), "{out}");
    let out = ok(&kc, &["get", "all"]).await;
    assert!(out.contains("cronjob.batch/report"), "{out}");

    // A Job made by hand from the template, marked so and owned by the CronJob.
    let out = ok(&kc, &["create", "job", "by-hand", "--from=cronjob/report"]).await;
    assert!(out.contains("job.batch/by-hand created"), "{out}");
    let (code, job) = api.get(&format!("{JOBS}/by-hand")).await;
    assert_eq!(code, 200, "{job}");
    assert_eq!(
        job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
        "manual"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
    assert_eq!(job["metadata"]["ownerReferences"][0]["name"], "report");
    assert_eq!(
        job["spec"]["template"]["metadata"]["labels"]["app"],
        "report"
    );
    let done = until_finished(api, &job).await;
    assert_eq!(finished(&done), Some("Complete"), "{done}");

    // Bad schedules get Kubernetes' causes.
    let (code, status) = api
        .post(
            CRONJOBS,
            &cronjob("bad", &hello, "CRON_TZ=UTC 0 * * * *", json!({})),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["message"],
        "Invalid value: \"CRON_TZ=UTC 0 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
    );
    assert_eq!(status["details"]["causes"][0]["field"], "spec.schedule");

    // The clock only moves forward.
    let (code, _) = api
        .post("/skiff/v1/clock", &json!({"time": "2001-01-01T00:00:00Z"}))
        .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn without_the_flag_the_clock_cannot_be_moved() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(dir.path(), &[]);
    let (code, _) = server
        .api()
        .post("/skiff/v1/clock", &json!({"advanceSeconds": 60}))
        .await;
    assert_eq!(code, 404);
}
