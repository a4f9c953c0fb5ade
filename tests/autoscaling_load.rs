//! HorizontalPodAutoscalers under a driven load, on the real figures the server scrapes
//! from the agents (`--metric-resolution 1s`, `--hpa-sync-period 1s`): one on CPU
//! utilization scales a Deployment of HTTP pods whose requests burn CPU, one on
//! `http_requests_per_second` scales an App; both come back down once the load stops,
//! no sooner than their scale-down stabilization window.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Api, eventually, kubectl, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const HPAS: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
/// The scale-down stabilization window both HPAs are given.
const STABILIZATION: Duration = Duration::from_secs(6);

/// `tasks` clients sending GETs to `url` back to back (each pausing `pause`) until
/// the flag is cleared.
fn drive(url: String, tasks: usize, pause: Duration) -> Arc<AtomicBool> {
    let running = Arc::new(AtomicBool::new(true));
    let http = reqwest::Client::new();
    for _ in 0..tasks {
        let (http, url, running) = (http.clone(), url.clone(), running.clone());
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let _ = http.get(&url).send().await;
                tokio::time::sleep(pause).await;
            }
        });
    }
    running
}

async fn replicas(api: &Api, path: &str) -> i64 {
    let (_, scale) = api.get(&format!("{path}/scale")).await;
    scale["spec"]["replicas"].as_i64().unwrap_or(-1)
}

async fn hpa_condition(api: &Api, name: &str, kind: &str) -> (String, String) {
    let (_, hpa) = api.get(&format!("{HPAS}/{name}")).await;
    hpa["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

/// Waits for `path`'s scale to reach `want` replicas.
async fn scaled_to(api: &Api, path: &str, want: i64) {
    eventually(&format!("{path} at {want} replicas"), WAIT, || async {
        (replicas(api, path).await == want).then_some(())
    })
    .await;
}

/// Waits for the scale to come back to 1 after the load stopped at `stopped`, and
/// checks it took at least the stabilization window.
async fn back_to_one(api: &Api, path: &str, stopped: Instant) {
    scaled_to(api, path, 1).await;
    let took = stopped.elapsed();
    assert!(
        took >= STABILIZATION,
        "scaled down {took:?} after the load stopped, inside the {STABILIZATION:?} window"
    );
}

fn behavior() -> Value {
    json!({"scaleDown": {"stabilizationWindowSeconds": STABILIZATION.as_secs(),
        "policies": [{"type": "Percent", "value": 100, "periodSeconds": 1}]}})
}

#[tokio::test]
async fn an_hpa_on_cpu_scales_a_deployment_up_under_load_and_back_down() {
    // Each `spin` request burns CPU until its 300 ms budget ends (504).
    let (dir, cluster, api) = common::dev_cluster(
        1,
        &[
            "--metric-resolution",
            "1s",
            "--hpa-sync-period",
            "1s",
            "--request-timeout",
            "300ms",
        ],
    );
    let kubeconfig = dir.path().join("kubeconfig");
    let gateway = cluster
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let image = api.upload(workload("http-hello.wasm")).await;
    let deployments = "/apis/apps/v1/namespaces/default/deployments";
    let (code, created) = api
        .post(deployments, &json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "burn"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "burn"}},
                "template": {"metadata": {"labels": {"app": "burn"}},
                    "spec": {"containers": [{"name": "main", "image": image,
                        "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "300m"}}}]}}},
        }))
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, created) = api
        .post(
            "/api/v1/namespaces/default/services",
            &json!({
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "burn"},
                "spec": {"selector": {"app": "burn"}, "ports": [{"port": 80}]},
            }),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, created) = api
        .post(HPAS, &json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "burn"},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "burn"},
                "minReplicas": 1, "maxReplicas": 3, "behavior": behavior(),
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 50}}}]},
        }))
        .await;
    assert_eq!(code, 201, "{created}");
    let path = format!("{deployments}/burn");
    let http = reqwest::Client::new();
    eventually("the pods serve", WAIT, || async {
        let r = http
            .get(format!("{gateway}/default/burn/hello"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    // Idle, it has a figure and stays at one.
    eventually("the HPA reads cpu", WAIT, || async {
        let (status, reason) = hpa_condition(&api, "burn", "ScalingActive").await;
        (status == "True" && reason == "ValidMetricFound").then_some(())
    })
    .await;
    assert_eq!(replicas(&api, &path).await, 1);

    let load = drive(format!("{gateway}/default/burn/spin"), 4, Duration::ZERO);
    scaled_to(&api, &path, 3).await;
    // Under the sustained load it wants more than it may have (a sync right after a
    // rescale, with the new pods not yet measured, may read otherwise).
    eventually("the HPA is limited by maxReplicas", WAIT, || async {
        let (status, reason) = hpa_condition(&api, "burn", "ScalingLimited").await;
        (status == "True" && reason == "TooManyReplicas").then_some(())
    })
    .await;
    let described = kubectl(&kubeconfig, &["describe", "hpa", "burn"]);
    assert!(described.contains("SuccessfulRescale"), "{described}");
    load.store(false, Ordering::Relaxed);
    let stopped = Instant::now();
    back_to_one(&api, &path, stopped).await;
}

#[tokio::test]
async fn an_hpa_on_requests_per_second_scales_an_app_and_back() {
    let (_dir, cluster, api) =
        common::dev_cluster(1, &["--metric-resolution", "1s", "--hpa-sync-period", "1s"]);
    let gateway = cluster
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let image = api.upload(workload("http-hello.wasm")).await;
    let apps = "/apis/skiff.dev/v1/namespaces/default/apps";
    let (code, created) = api
        .post(
            apps,
            &json!({"apiVersion": "skiff.dev/v1", "kind": "App",
            "metadata": {"name": "web"}, "spec": {"module": image, "replicas": 1}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let (code, created) = api
        .post(HPAS, &json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {"scaleTargetRef": {"apiVersion": "skiff.dev/v1", "kind": "App", "name": "web"},
                "minReplicas": 1, "maxReplicas": 3, "behavior": behavior(),
                "metrics": [{"type": "Pods", "pods": {"metric": {"name": "http_requests_per_second"},
                    "target": {"type": "AverageValue", "averageValue": "5"}}}]},
        }))
        .await;
    assert_eq!(code, 201, "{created}");
    let url = format!("{gateway}/default/web/hello");
    let http = reqwest::Client::new();
    eventually("the app serves", WAIT, || async {
        let r = http.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let path = format!("{apps}/web");
    // Far above 5 requests per second per replica: it goes to the maximum.
    let load = drive(url, 4, Duration::from_millis(5));
    scaled_to(&api, &path, 3).await;
    let (_, app) = api.get(&path).await;
    assert_eq!(app["spec"]["replicas"], 3, "the HPA wrote the App's scale");
    load.store(false, Ordering::Relaxed);
    let stopped = Instant::now();
    back_to_one(&api, &path, stopped).await;
}
