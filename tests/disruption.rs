//! PodDisruptionBudgets (policy/v1) with the real kubectl: the disruption controller's
//! status, the Eviction subresource's 429 when a budget would break, and a `kubectl
//! drain` that waits for the budget and finishes once the Deployment has grown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Api, eventually, kubectl, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const PDB: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets";
const PODS: &str = "/api/v1/namespaces/default/pods";

fn ready(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn web_pods(api: &Api) -> Vec<Value> {
    let (_, list) = api.get(&format!("{PODS}?labelSelector=app%3Dweb")).await;
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the budget's status shows these counts.
async fn budget_shows(api: &Api, expected: i64, desired: i64, healthy: i64, allowed: i64) -> Value {
    eventually(
        &format!("budget web at {expected}/{desired}/{healthy}/{allowed}"),
        WAIT,
        || async {
            let (_, b) = api.get(&format!("{PDB}/web")).await;
            let s = &b["status"];
            (s["expectedPods"] == expected
                && s["desiredHealthy"] == desired
                && s["currentHealthy"] == healthy
                && s["disruptionsAllowed"] == allowed
                && s["observedGeneration"] == b["metadata"]["generation"])
                .then_some(b)
        },
    )
    .await
}

common::store::store_tests!(#[tokio::test] async fn a_drain_waits_for_the_disruption_budget);

/// A budget of minAvailable 2 over a Deployment of 2: no disruption is allowed, an
/// eviction gets 429 with the budget's cause, and `kubectl drain` keeps retrying until
/// a third replica is up; percents are taken of the Deployment's scale.
async fn a_drain_waits_for_the_disruption_budget() {
    let (dir, _cluster, api) = common::cluster(2);
    let kubeconfig = dir.path().join("kubeconfig");
    let image = api.upload(workload("ticker.wasm")).await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]},
            },
        },
    });
    let (code, _) = api
        .post("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    assert_eq!(code, 201);

    // Validation as Kubernetes words it.
    let (code, bad) = api
        .post(PDB, &json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "bad"},
            "spec": {"minAvailable": 1, "maxUnavailable": "150%", "selector": {"matchLabels": {"app": "web"}}},
        }))
        .await;
    assert_eq!(code, 422, "{bad}");
    let message = bad["message"].as_str().unwrap();
    assert!(
        message.contains("minAvailable and maxUnavailable cannot be both set"),
        "{message}"
    );
    assert!(
        message.contains("must not be greater than 100%"),
        "{message}"
    );

    let (code, _) = api
        .post(
            PDB,
            &json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}},
            }),
        )
        .await;
    assert_eq!(code, 201);
    let budget = budget_shows(&api, 2, 2, 2, 0).await;
    let condition = budget["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "DisruptionAllowed")
        .cloned()
        .unwrap();
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InsufficientPods");

    // kubectl's columns.
    let table = kubectl(&kubeconfig, &["get", "pdb"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["web", "2", "N/A", "0"], "{table}");

    // An eviction the budget forbids: 429, and the pod stays.
    let pods = web_pods(&api).await;
    let victim = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    let (code, refused) = api
        .post(
            &format!("{PODS}/{victim}/eviction"),
            &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": victim}}),
        )
        .await;
    assert_eq!(code, 429, "{refused}");
    assert_eq!(refused["reason"], "TooManyRequests");
    assert_eq!(
        refused["message"],
        "Cannot evict pod as it would violate the pod's disruption budget."
    );
    assert_eq!(
        refused["details"]["causes"][0]["reason"],
        "DisruptionBudget"
    );
    assert_eq!(
        refused["details"]["causes"][0]["message"],
        "The disruption budget web needs 2 healthy pods and has 2 currently"
    );
    let (code, still) = api.get(&format!("{PODS}/{victim}")).await;
    assert_eq!(code, 200);
    assert!(still["metadata"]["deletionTimestamp"].is_null());

    // Drain the node of that pod: kubectl retries the refused eviction...
    let node = pods[0]["spec"]["nodeName"].as_str().unwrap().to_string();
    let mut drain = Command::new("kubectl")
        .args(["drain", &node, "--ignore-daemonsets", "--timeout=120s"])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed by scripts/test");
    let stderr = drain.stderr.take().unwrap();
    let (retry_tx, retry_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("would violate the pod's disruption budget") {
                let _ = retry_tx.send(line.clone());
            }
            seen.push(line);
        }
        seen
    });
    let retried = tokio::task::spawn_blocking(move || retry_rx.recv_timeout(WAIT))
        .await
        .unwrap()
        .expect("kubectl drain reports the refused eviction and retries it");
    assert!(retried.contains("will retry after"), "{retried}");
    assert!(
        drain.try_wait().unwrap().is_none(),
        "drain must wait for the budget"
    );
    let (_, still) = api.get(&format!("{PODS}/{victim}")).await;
    assert!(
        still["metadata"]["deletionTimestamp"].is_null(),
        "the budget held the pod"
    );

    // ...until a third replica is Ready elsewhere and one disruption is allowed.
    let (code, _) = api
        .patch(
            "/apis/apps/v1/namespaces/default/deployments/web",
            "application/merge-patch+json",
            r#"{"spec":{"replicas":3}}"#,
        )
        .await;
    assert_eq!(code, 200);
    // kubectl gives up by itself after its --timeout.
    let status = tokio::task::spawn_blocking(move || drain.wait().unwrap())
        .await
        .unwrap();
    let said = reader.join().unwrap().join("\n");
    assert!(status.success(), "drain failed: {said}");
    eventually("three ready pods off the drained node", WAIT, || async {
        let pods = web_pods(&api).await;
        let live: Vec<&Value> = pods.iter().filter(|p| ready(p)).collect();
        (live.len() == 3 && live.iter().all(|p| p["spec"]["nodeName"] != node.as_str()))
            .then_some(())
    })
    .await;
    budget_shows(&api, 3, 2, 3, 1).await;

    // maxUnavailable as a percent of the Deployment's 3 replicas: 34% rounds up to 2,
    // so one pod must stay healthy.
    let (code, _) = api
        .patch(
            &format!("{PDB}/web"),
            "application/merge-patch+json",
            r#"{"spec":{"minAvailable":null,"maxUnavailable":"34%"}}"#,
        )
        .await;
    assert_eq!(code, 200);
    budget_shows(&api, 3, 1, 3, 2).await;
}
