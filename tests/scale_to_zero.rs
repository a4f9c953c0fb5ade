//! Apps that scale to zero: with `autoscale.minReplicas: 0` an idle App runs no
//! replica, and the gateway holds the next requests while one starts, so they get 200,
//! marked as cold starts, and measured in the gateway's metrics.

mod common;

use std::time::Duration;

use common::{eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const APPS: &str = "/apis/skiff.dev/v1/namespaces/default/apps";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/default/deployments/web";

async fn pods_of_web(api: &common::Api) -> Vec<Value> {
    let (_, list) = api
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dweb")
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the App runs no replica: its Deployment at 0 and its pods gone.
async fn scaled_to_zero(api: &common::Api) {
    eventually("the idle App scales to zero", WAIT, || async {
        let (_, d) = api.get(DEPLOYMENT).await;
        (d["spec"]["replicas"] == 0 && pods_of_web(api).await.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_app_scales_to_zero_and_its_next_requests_all_get_200() {
    let (_dir, cluster, api) = common::dev_cluster(2, &["--metric-resolution", "1s"]);
    let gateway = cluster
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let image = api.upload(workload("http-hello.wasm")).await;

    // Validation first: bounds and exactly one target.
    let (code, bad) = api
        .post(
            APPS,
            &json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "bad"},
            "spec": {"module": image, "autoscale": {"minReplicas": 3, "maxReplicas": 2,
                "targetConcurrency": 1, "targetRequestsPerSecond": 5, "scaleDownDelay": "soon"}}}),
        )
        .await;
    assert_eq!(code, 422, "{bad}");
    let causes: Vec<&str> = bad["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        causes,
        [
            "spec.autoscale.maxReplicas",
            "spec.autoscale",
            "spec.autoscale.scaleDownDelay"
        ],
        "{bad}"
    );

    let (code, created) = api
        .post(
            APPS,
            &json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "web"},
            "spec": {"module": image, "autoscale": {"minReplicas": 0, "maxReplicas": 3,
                "targetConcurrency": 50, "scaleDownDelay": "2s"}}}),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let http = reqwest::Client::new();
    let url = format!("{gateway}/default/web/hello");
    // It starts with one replica, which serves (a request sent before it is ready is
    // held for it, as for a cold start).
    eventually("the app serves", WAIT, || async {
        let r = http.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    let (_, d) = api.get(DEPLOYMENT).await;
    assert_eq!(d["spec"]["replicas"], 1);
    let first_node = pods_of_web(&api).await[0]["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();
    // That node reports the module among its images, for the scheduler.
    eventually("the node lists the module", WAIT, || async {
        let (_, node) = api.get(&format!("/api/v1/nodes/{first_node}")).await;
        node["status"]["images"]
            .as_array()?
            .iter()
            .any(|i| i["names"][0] == image.as_str())
            .then_some(())
    })
    .await;

    // It has one autoscaler: the scale subresource refuses a second.
    let (code, refused) = api
        .patch(
            &format!("{APPS}/web/scale"),
            "application/merge-patch+json",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    assert_eq!(code, 409, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("spec.autoscale")
    );

    // Idle for the delay, it goes to zero, and says so.
    scaled_to_zero(&api).await;
    let (_, events) = api
        .get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb")
        .await;
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "ScaledToZero"),
        "{events}"
    );

    // The next request is held while a replica starts, and gets 200.
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let waited: f64 = response.headers()["x-skiff-cold-start"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited > 0.0 && waited < 30_000.0, "waited {waited} ms");
    assert!(response.text().await.unwrap().contains("hello"));
    // Woken on the node that holds the module compiled, of two idle nodes.
    let woken = pods_of_web(&api).await;
    assert_eq!(woken.len(), 1);
    assert_eq!(woken[0]["spec"]["nodeName"], first_node.as_str());

    // Back to zero; then 100 first requests at once all get 200.
    scaled_to_zero(&api).await;
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                let r = http.get(&url).send().await.unwrap();
                (
                    r.status().as_u16(),
                    r.headers().contains_key("x-skiff-cold-start"),
                )
            })
        })
        .collect();
    let mut cold = 0;
    for request in burst {
        let (status, was_cold) = request.await.unwrap();
        assert_eq!(status, 200);
        cold += usize::from(was_cold);
    }
    assert!(cold >= 1, "the burst woke the App");

    // Scaled to zero while requests keep coming (the autoscaler's decision racing
    // them): a request the stopping replica no longer takes is held for the replica
    // it wakes, and one it already took finishes. Every one gets 200.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (http, url, running) = (http.clone(), url.clone(), running.clone());
            tokio::spawn(async move {
                let mut codes = Vec::new();
                while running.load(std::sync::atomic::Ordering::Relaxed) {
                    let r = http.get(&url).send().await.unwrap();
                    codes.push(r.status().as_u16());
                }
                codes
            })
        })
        .collect();
    for _ in 0..3 {
        let (code, scaled) = api
            .patch(
                &format!("{DEPLOYMENT}/scale"),
                "application/merge-patch+json",
                r#"{"spec":{"replicas":0}}"#,
            )
            .await;
        assert_eq!(code, 200, "{scaled}");
        eventually("the racing requests wake it again", WAIT, || async {
            let (_, d) = api.get(DEPLOYMENT).await;
            (d["status"]["readyReplicas"] == 1 && d["spec"]["replicas"] == 1).then_some(())
        })
        .await;
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for codes in loops {
        let codes = codes.await.unwrap();
        sent += codes.len();
        assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    }
    assert!(sent > 0);

    // The waits are in the gateway's metrics, one per held request.
    let (_, metrics) = api.text("/metrics").await;
    let count: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("skiff_gateway_cold_start_seconds_count "))
        .expect("the cold-start histogram")
        .trim()
        .parse()
        .unwrap();
    assert!(count > cold as u64, "{count} held requests counted");
}
