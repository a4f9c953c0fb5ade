//! Resource and custom metrics with the real kubectl: `kubectl top pods` and `top nodes`
//! read `metrics.k8s.io` figures the server scrapes from the agents (every second here,
//! `--metric-resolution 1s`), and an App's request rate is served through
//! `custom.metrics.k8s.io`.

mod common;

use std::time::Duration;

use common::{eventually, kubectl, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const PODS: &str = "/api/v1/namespaces/default/pods";
const METRICS: &str = "/apis/metrics.k8s.io/v1beta1";

fn pod(name: &str, image: &str, args: &[&str], cpu_limit: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"tier": name}},
        "spec": {"containers": [{
            "name": "main", "image": image, "args": args,
            "resources": {"limits": {"cpu": cpu_limit, "memory": "64Mi"}},
        }]},
    })
}

/// `kubectl top pods` rows as (name, millicores, MiB); none while kubectl says
/// "metrics not available yet" (no pod has been measured over a whole window).
fn top_pods(kubeconfig: &std::path::Path) -> Vec<(String, u64, u64)> {
    let out = std::process::Command::new("kubectl")
        .args(["top", "pods", "--no-headers"])
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is installed by scripts/test");
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("metrics not available yet"),
            "kubectl top: {said}"
        );
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [name, cpu, memory] = cols.as_slice() else {
                return None;
            };
            Some((
                name.to_string(),
                cpu.strip_suffix('m')?.parse().ok()?,
                memory.strip_suffix("Mi")?.parse().ok()?,
            ))
        })
        .collect()
}

/// A spinner limited to 300m and a ticker that sleeps between ticks: `kubectl top
/// pods` shows the busy one near its limit and the idle one near zero, each holding
/// its linear memory; `kubectl top nodes` shows the node; the API's shapes and errors
/// are metrics-server's.
#[tokio::test]
async fn kubectl_top_shows_a_busy_pod_above_an_idle_one_within_its_limit() {
    let (dir, _cluster, api) = common::dev_cluster(1, &["--metric-resolution", "1s"]);
    let kubeconfig = dir.path().join("kubeconfig");
    let spinner = api.upload(workload("spinner.wasm")).await;
    let ticker = api.upload(workload("ticker.wasm")).await;
    for body in [
        pod("busy", &spinner, &[], "300m"),
        pod("idle", &ticker, &["1s"], "300m"),
    ] {
        let (code, created) = api.post(PODS, &body).await;
        assert_eq!(code, 201, "{created}");
    }

    // A window that began before the spinner was running shows it below its rate:
    // wait for one that shows it busy.
    let rows = eventually("kubectl top pods shows both pods", WAIT, || async {
        let rows = top_pods(&kubeconfig);
        let cpu = |name: &str| rows.iter().find(|r| r.0 == name).map(|r| r.1);
        match (cpu("busy"), cpu("idle")) {
            (Some(busy), Some(_)) if busy >= 150 => Some(rows),
            _ => None,
        }
    })
    .await;
    let find = |name: &str| rows.iter().find(|r| r.0 == name).cloned().unwrap();
    let (busy, idle) = (find("busy"), find("idle"));
    eprintln!("kubectl top pods: {rows:?}");
    assert!(busy.1 > idle.1 + 100, "busy {busy:?} idle {idle:?}");
    assert!(
        busy.1 <= 400,
        "300m limit, with room for one window's slack: {busy:?}"
    );
    assert!(idle.1 < 50, "a ticker sleeps: {idle:?}");

    // The API itself: one pod, by label, the node, and what is not there.
    let (code, one) = api
        .get(&format!("{METRICS}/namespaces/default/pods/busy"))
        .await;
    assert_eq!(code, 200, "{one}");
    assert_eq!(one["kind"], "PodMetrics");
    assert_eq!(one["metadata"]["labels"]["tier"], "busy");
    assert_eq!(one["containers"][0]["name"], "main");
    let memory = one["containers"][0]["usage"]["memory"].as_str().unwrap();
    let kib: u64 = memory.strip_suffix("Ki").unwrap().parse().unwrap();
    assert!(
        (64..=64 * 1024).contains(&kib),
        "linear memory, within the limit: {memory}"
    );
    let (_, by_label) = api
        .get(&format!(
            "{METRICS}/namespaces/default/pods?labelSelector=tier%3Didle"
        ))
        .await;
    let names: Vec<&str> = by_label["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["idle"]);
    let (code, missing) = api
        .get(&format!("{METRICS}/namespaces/default/pods/nothing"))
        .await;
    assert_eq!((code, missing["reason"].as_str()), (404, Some("NotFound")));
    let (code, refused) = api
        .delete(&format!("{METRICS}/namespaces/default/pods/busy"), None)
        .await;
    assert_eq!(code, 405, "{refused}");

    let nodes = kubectl(&kubeconfig, &["top", "nodes", "--no-headers"]);
    let row: Vec<&str> = nodes.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "dev-1", "{nodes}");
    let node_cpu: u64 = row[1].strip_suffix('m').unwrap().parse().unwrap();
    assert!(node_cpu >= 150, "the node runs the spinner: {nodes}");

    // A deleted pod leaves the figures.
    api.delete(
        &format!("{PODS}/busy"),
        Some(&json!({"gracePeriodSeconds": 0})),
    )
    .await;
    eventually("the deleted pod's metrics go", WAIT, || async {
        let (code, _) = api
            .get(&format!("{METRICS}/namespaces/default/pods/busy"))
            .await;
        (code == 404).then_some(())
    })
    .await;
}

/// A custom metric's value: a quantity such as `1500m` or `2`.
fn quantity(value: &str) -> Option<f64> {
    match value.strip_suffix('m') {
        Some(milli) => Some(milli.parse::<f64>().ok()? / 1000.0),
        None => value.parse::<f64>().ok(),
    }
}

/// An App's request rate and error rate (answers that are 5xx), through the gateway:
/// `custom.metrics.k8s.io` serves them for the App (the sum of its pods) and each pod.
#[tokio::test]
async fn an_apps_request_rate_is_a_custom_metric() {
    let (_dir, cluster, api) = common::dev_cluster(1, &["--metric-resolution", "1s"]);
    let gateway = cluster
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let image = api.upload(workload("http-hello.wasm")).await;
    let (code, created) = api
        .post(
            "/apis/skiff.dev/v1/namespaces/default/apps",
            &json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "web"},
                    "spec": {"module": image, "replicas": 2}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let http = reqwest::Client::new();
    let url = format!("{gateway}/default/web/hello");
    eventually("the app serves", WAIT, || async {
        let r = http.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    // Keep a steady trickle going while the figures are read: one request in four
    // traps the instance (a 500).
    let load = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        let trap = format!("{gateway}/default/web/trap");
        async move {
            for i in 0u64.. {
                let target = if i % 4 == 3 { &trap } else { &url };
                let _ = http.get(target).send().await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let custom = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default";
    let app = eventually("the App's request rate", WAIT, || async {
        let (code, list) = api
            .get(&format!(
                "{custom}/apps.skiff.dev/web/http_requests_per_second"
            ))
            .await;
        let item = list["items"].get(0)?.clone();
        let rate = quantity(item["value"].as_str()?)?;
        (code == 200 && rate >= 5.0).then_some(item)
    })
    .await;
    assert_eq!(app["describedObject"]["kind"], "App");
    assert_eq!(app["metric"]["name"], "http_requests_per_second");
    let errors = eventually("the App's error rate", WAIT, || async {
        let (code, list) = api
            .get(&format!(
                "{custom}/apps.skiff.dev/web/http_errors_per_second"
            ))
            .await;
        let item = list["items"].get(0)?.clone();
        let rate = quantity(item["value"].as_str()?)?;
        (code == 200 && rate >= 1.0).then_some(rate)
    })
    .await;
    assert!(errors > 0.0);
    let (code, pods) = api
        .get(&format!(
            "{custom}/pods/*/http_requests_per_second?labelSelector=app.skiff.dev%2Fname%3Dweb"
        ))
        .await;
    load.abort();
    assert_eq!(code, 200, "{pods}");
    assert_eq!(pods["items"].as_array().unwrap().len(), 2, "{pods}");
    let (code, unknown) = api.get(&format!("{custom}/pods/*/bogus_metric")).await;
    assert_eq!(code, 404, "{unknown}");
    // Discovery advertises both groups, as kubectl needs to find them.
    let (_, groups) = api.get("/apis").await;
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"metrics.k8s.io") && names.contains(&"custom.metrics.k8s.io"));
}
