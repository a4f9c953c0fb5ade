//! HorizontalPodAutoscalers with the real kubectl: `kubectl autoscale` creates one,
//! `kubectl get hpa` and `kubectl describe hpa` show it as Kubernetes does, the same
//! object is served at autoscaling/v1 and v2, bad specs get a 422 with field causes, and
//! the controller reports, in the conditions, that it cannot yet read cpu usage.
//! (Scaling under load is tested in autoscaling_load.rs.)

mod common;

use std::time::Duration;

use common::{eventually, kubectl, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const V2: &str = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers";
const V1: &str = "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers";

#[tokio::test]
async fn kubectl_autoscale_get_and_describe() {
    let (dir, _cluster, api) = common::dev_cluster(1, &["--hpa-sync-period", "1s"]);
    let kubeconfig = dir.path().join("kubeconfig");
    let image = api.upload(workload("ticker.wasm")).await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"],
                    "resources": {"requests": {"cpu": "100m"}}}]},
            },
        },
    });
    let (code, _) = api
        .post("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    assert_eq!(code, 201);

    let out = kubectl(
        &kubeconfig,
        &[
            "autoscale",
            "deployment",
            "web",
            "--cpu-percent=50",
            "--min=1",
            "--max=3",
        ],
    );
    assert!(
        out.contains("horizontalpodautoscaler.autoscaling/web autoscaled"),
        "{out}"
    );

    // Stored once, served at both versions.
    let (code, v2) = api.get(&format!("{V2}/web")).await;
    assert_eq!(code, 200, "{v2}");
    assert_eq!(v2["apiVersion"], "autoscaling/v2");
    assert_eq!(v2["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        v2["spec"]["metrics"][0]["resource"]["target"],
        json!({"type": "Utilization", "averageUtilization": 50})
    );
    let (code, v1) = api.get(&format!("{V1}/web")).await;
    assert_eq!(code, 200, "{v1}");
    assert_eq!(v1["apiVersion"], "autoscaling/v1");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
    assert_eq!(v1["spec"]["maxReplicas"], 3);
    assert!(v1["spec"].get("metrics").is_none());

    // The controller has looked: the target's scale is read, cpu usage is not there yet.
    let status: Value = eventually("the autoscaler's status", WAIT, || async {
        let (_, hpa) = api.get(&format!("{V2}/web")).await;
        let conditions = hpa["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions
            .iter()
            .any(|c| c["type"] == "ScalingActive")
            .then(|| hpa["status"].clone())
    })
    .await;
    assert_eq!(status["currentReplicas"], 1, "{status}");
    let active = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ScalingActive")
        .unwrap()
        .clone();
    assert_eq!(active["status"], "False", "{active}");
    assert_eq!(active["reason"], "FailedGetResourceMetric", "{active}");

    let table = kubectl(&kubeconfig, &["get", "hpa"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ],
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("web "), "{table}");
    assert!(row.contains("Deployment/web"), "{table}");
    assert!(row.contains("cpu: <unknown>/50%"), "{table}");

    let described = kubectl(&kubeconfig, &["describe", "hpa", "web"]);
    for expected in [
        "Reference:",
        "Deployment/web",
        "Min replicas:",
        "Max replicas:",
        "Conditions:",
        "AbleToScale",
        "SucceededGetScale",
        "ScalingActive",
        "FailedGetResourceMetric",
    ] {
        assert!(described.contains(expected), "{expected} in:\n{described}");
    }

    // A v1 update keeps what only v2 can say.
    let (code, _) = api
        .patch(
            &format!("{V2}/web"),
            "application/merge-patch+json",
            &json!({"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}}}})
                .to_string(),
        )
        .await;
    assert_eq!(code, 200);
    let (code, patched) = api
        .patch(
            &format!("{V1}/web"),
            "application/merge-patch+json",
            &json!({"spec": {"maxReplicas": 5}}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["apiVersion"], "autoscaling/v1");
    let (_, v2) = api.get(&format!("{V2}/web")).await;
    assert_eq!(v2["spec"]["maxReplicas"], 5);
    assert_eq!(
        v2["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        30
    );
    assert_eq!(
        v2["spec"]["behavior"]["scaleUp"]["policies"][0]["value"], 4,
        "defaults filled in"
    );

    // Bad input is a 422 with field causes.
    let (code, status) = api
        .post(
            V2,
            &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "bad"},
                "spec": {"scaleTargetRef": {"kind": "Deployment"}, "minReplicas": 3, "maxReplicas": 2}}),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(fields.contains(&"spec.scaleTargetRef.name"), "{status}");
    assert!(fields.contains(&"spec.maxReplicas"), "{status}");
}

/// An App has a scale subresource an autoscaler can target: its Scale shows its replicas
/// and the selector of its pods, `kubectl scale app` writes it, and the App's
/// Deployment follows.
#[tokio::test]
async fn apps_scale_through_their_scale_subresource() {
    let (dir, _cluster, api) = common::dev_cluster(1, &[]);
    let kubeconfig = dir.path().join("kubeconfig");
    let module = api.upload(workload("ticker.wasm")).await;
    let (code, app) = api
        .post(
            "/apis/skiff.dev/v1/namespaces/default/apps",
            &json!({"apiVersion": "skiff.dev/v1", "kind": "App",
                "metadata": {"name": "hello"}, "spec": {"module": module}}),
        )
        .await;
    assert_eq!(code, 201, "{app}");
    let scale_path = "/apis/skiff.dev/v1/namespaces/default/apps/hello/scale";
    let (code, scale) = api.get(scale_path).await;
    assert_eq!(code, 200, "{scale}");
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(
        scale["spec"]["replicas"], 1,
        "an App without replicas runs one"
    );
    assert_eq!(scale["status"]["selector"], "app.skiff.dev/name=hello");

    let out = kubectl(&kubeconfig, &["scale", "app", "hello", "--replicas=3"]);
    assert!(out.contains("app.skiff.dev/hello scaled"), "{out}");
    let (_, app) = api
        .get("/apis/skiff.dev/v1/namespaces/default/apps/hello")
        .await;
    assert_eq!(app["spec"]["replicas"], 3);
    eventually("the App's Deployment at 3 replicas", WAIT, || async {
        let (code, d) = api
            .get("/apis/apps/v1/namespaces/default/deployments/hello")
            .await;
        (code == 200 && d["spec"]["replicas"] == 3).then_some(())
    })
    .await;
    // A bad count is refused as for any scale.
    let (code, status) = api
        .patch(
            scale_path,
            "application/merge-patch+json",
            &json!({"spec": {"replicas": -1}}).to_string(),
        )
        .await;
    assert_eq!(code, 422, "{status}");
}
