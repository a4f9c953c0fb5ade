//! Observability end to end on `skiff dev`: the server's and the agent's Prometheus
//! metrics move with what the cluster does (store commits, scheduling, work queues, pod
//! starts, the module cache, app requests and their faults, restarts), the agent's are
//! read through the server's node proxy, and JSON logs carry pod, node and request ids.

mod common;

use std::time::Duration;

use common::{Api, Process, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The value of the sample whose name-and-labels part is exactly `series`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

fn at_least(metrics: &str, series: &str, min: f64) -> bool {
    sample(metrics, series).is_some_and(|v| v >= min)
}

/// The log lines (JSON) whose spans include one with `field` equal to `value`.
fn logged_in_span(log: &str, field: &str, value: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s[field] == value))
        })
        .collect()
}

#[tokio::test]
async fn metrics_and_spans_follow_what_the_cluster_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let log_path = dir.path().join("skiff.log");
    let (process, _) = Process::start_logged(
        &[
            "--log-format",
            "json",
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--request-timeout",
            "500ms",
        ],
        "api:",
        "info,skiff_runtime=debug",
        &log_path,
    );
    let gateway = process.printed("gateway:").expect("a gateway line");
    let api = Api::from_kubeconfig(&data.join("kubeconfig"));

    // An app, served through the gateway: answers, a trap and a CPU timeout.
    let (code, app) = api
        .raw(
            reqwest::Method::PUT,
            "/apis/skiff.dev/v1/namespaces/default/apps/web?wait=true",
            "application/wasm",
            workload("http-hello.wasm"),
        )
        .await;
    assert_eq!(code, 201, "{app}");
    let url = app["status"]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&gateway), "{url} is not on {gateway}");
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let trap = http
        .get(format!("{url}trap"))
        .header("x-request-id", "req-trap-1")
        .send()
        .await
        .unwrap();
    assert_eq!(trap.status(), 500);
    let spin = http.get(format!("{url}spin")).send().await.unwrap();
    assert_eq!(spin.status(), 504);

    // A command that exits 3 and is restarted.
    let exit3 = api.upload(workload("exit3.wasm")).await;
    let (code, pod) = api
        .post(
            "/api/v1/namespaces/default/pods",
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
                    "spec": {"containers": [{"name": "main", "image": exit3}]}}),
        )
        .await;
    assert_eq!(code, 201, "{pod}");
    eventually("the crasher restarted", WAIT, || async {
        let (_, p) = api.get("/api/v1/namespaces/default/pods/crasher").await;
        (p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1)).then_some(())
    })
    .await;

    // The server's metrics, read with the admin credential; every API answer has an
    // Audit-Id.
    let response = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert!(response.headers().contains_key("audit-id"));
    let server = response.text().await.unwrap();
    for (series, min) in [
        ("skiff_store_commit_duration_seconds_count", 5.0),
        ("skiff_store_commit_batch_size_count", 5.0),
        (
            r#"scheduler_schedule_attempts_total{result="scheduled",profile="default-scheduler"}"#,
            2.0,
        ),
        (
            r#"scheduler_scheduling_attempt_duration_seconds_count{result="scheduled",profile="default-scheduler"}"#,
            2.0,
        ),
        (r#"workqueue_adds_total{name="app"}"#, 1.0),
        (r#"workqueue_adds_total{name="deployment"}"#, 1.0),
        (
            r#"workqueue_work_duration_seconds_count{name="replicaset"}"#,
            1.0,
        ),
        (r#"workqueue_depth{name="endpointslice"}"#, 0.0),
        (
            r#"skiff_gateway_requests_total{namespace="default",app="web",code="200"}"#,
            3.0,
        ),
        (
            r#"skiff_gateway_requests_total{namespace="default",app="web",code="500"}"#,
            1.0,
        ),
        (
            r#"skiff_gateway_requests_total{namespace="default",app="web",code="504"}"#,
            1.0,
        ),
        (
            r#"skiff_gateway_request_duration_seconds_count{namespace="default",app="web"}"#,
            5.0,
        ),
        (
            r#"apiserver_request_total{verb="POST",resource="pods",code="201"}"#,
            1.0,
        ),
    ] {
        assert!(
            at_least(&server, series, min),
            "{series} < {min}:\n{server}"
        );
    }
    // Every pod is bound: none waits to be tried.
    assert_eq!(
        sample(&server, r#"scheduler_pending_pods{queue="active"}"#),
        Some(0.0),
        "{server}"
    );

    // The agent's, through the node proxy.
    let (code, agent) = api.text("/api/v1/nodes/dev-1/proxy/metrics").await;
    assert_eq!(code, 200, "{agent}");
    for (series, min) in [
        ("kubelet_pod_start_duration_seconds_count", 2.0),
        ("kubelet_running_pods", 2.0),
        ("skiff_agent_running_instances", 1.0),
        ("skiff_agent_module_cache_misses_total", 2.0),
        ("skiff_agent_module_compile_duration_seconds_count", 2.0),
        (r#"skiff_agent_module_cache_hits_total{tier="disk"}"#, 1.0),
        (
            r#"skiff_agent_http_requests_total{namespace="default",app="web",code="200"}"#,
            3.0,
        ),
        (
            r#"skiff_agent_http_request_faults_total{namespace="default",app="web",reason="trap"}"#,
            1.0,
        ),
        (
            r#"skiff_agent_http_request_faults_total{namespace="default",app="web",reason="timeout"}"#,
            1.0,
        ),
        (
            r#"kube_pod_container_status_restarts_total{namespace="default",pod="crasher",container="main"}"#,
            1.0,
        ),
    ] {
        assert!(at_least(&agent, series, min), "{series} < {min}:\n{agent}");
    }

    // JSON logs: the trap was logged inside the request's span (its id came from the
    // client), and the crash inside the pod's span, both naming the node.
    let log = eventually("the spans in the log", WAIT, || async {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let ok = !logged_in_span(&log, "request_id", "req-trap-1").is_empty()
            && !logged_in_span(&log, "pod", "default/crasher").is_empty();
        ok.then_some(log)
    })
    .await;
    let trap = &logged_in_span(&log, "request_id", "req-trap-1")[0];
    assert_eq!(trap["level"], "DEBUG", "{trap}");
    let spans = trap["spans"].as_array().unwrap();
    assert!(
        spans.iter().any(|s| s["node"] == "dev-1"
            && s["app"] == "web"
            && s["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with("default/web-"))),
        "{trap}"
    );
    let crash = logged_in_span(&log, "pod", "default/crasher")
        .into_iter()
        .find(|l| l["fields"]["message"] == "container exited")
        .unwrap_or_else(|| panic!("no exit logged for the crasher:\n{log}"));
    assert_eq!(crash["fields"]["exit_code"], 3, "{crash}");
    let span = &crash["span"];
    assert_eq!(span["node"], "dev-1", "{crash}");
    assert!(
        span["uid"].as_str().is_some_and(|u| !u.is_empty()),
        "{crash}"
    );
}
