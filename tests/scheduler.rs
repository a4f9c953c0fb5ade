//! End to end on a 3-node `skiff dev`: the scheduler spreads pods, counts why a pod fits
//! nowhere, honours nodeSelector, required node affinity, taints and cordons, and places
//! a waiting pod as soon as a node changes so that it fits.

mod common;

use std::time::Duration;

use common::{Api, Process, eventually, workload};
use serde_json::{Value, json};

const PODS: &str = "/api/v1/namespaces/default/pods";
const WAIT: Duration = Duration::from_secs(60);

fn cluster() -> (tempfile::TempDir, Process, Api) {
    common::dev_cluster(3, &[])
}

/// An unbound pod running the ticker guest, with extra spec fields merged in.
fn pod(name: &str, image: &str, spec: Value) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

async fn node_of(api: &Api, name: &str) -> String {
    let path = format!("{PODS}/{name}");
    eventually(&format!("{name} to be scheduled"), WAIT, || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (_, p) = api.get(&path).await;
            p["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        }
    })
    .await
}

async fn unschedulable_message(api: &Api, name: &str) -> String {
    let path = format!("{PODS}/{name}");
    eventually(&format!("{name} to be marked unschedulable"), WAIT, || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (_, p) = api.get(&path).await;
            let c = p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled")?
                .clone();
            (c["status"] == "False" && c["reason"] == "Unschedulable")
                .then(|| c["message"].as_str().unwrap_or_default().to_string())
        }
    })
    .await
}

#[tokio::test]
async fn pods_spread_and_run() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    // A real (non-controller) owner, so the garbage collector leaves the pods alone and
    // the scheduler spreads them as one group.
    let (_, group) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "web"}}),
        )
        .await;
    let owner = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "web", "uid": group["metadata"]["uid"]}]);
    for i in 0..6 {
        let mut p = pod(&format!("web-{i}"), &image, json!({}));
        p["metadata"]["ownerReferences"] = owner.clone();
        assert_eq!(api.post(PODS, &p).await.0, 201);
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(&api, &format!("web-{i}")).await)
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    // Scheduled pods run on their node, and the binding is recorded as an event.
    eventually("web-0 running", WAIT, || {
        let api = api.clone();
        async move {
            (api.get(&format!("{PODS}/web-0")).await.1["status"]["phase"] == "Running")
                .then_some(())
        }
    })
    .await;
    eventually("a Scheduled event per pod", WAIT, || {
        let api = api.clone();
        async move {
            let (_, events) = api
                .get("/api/v1/namespaces/default/events?fieldSelector=reason%3DScheduled")
                .await;
            (events["items"].as_array().unwrap().len() == 6).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn a_pod_that_fits_nowhere_says_why() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    let mut greedy = pod("greedy", &image, json!({}));
    greedy["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "64", "memory": "1Mi"}});
    api.post(PODS, &greedy).await;
    assert_eq!(
        unschedulable_message(&api, "greedy").await,
        "0/3 nodes are available: 3 Insufficient cpu."
    );
    let (_, p) = api.get(&format!("{PODS}/greedy")).await;
    assert_eq!(p["status"]["phase"], "Pending");
    // The event is recorded just after the condition is written.
    let event = eventually("a FailedScheduling event", WAIT, || {
        let api = api.clone();
        async move {
            let (_, events) = api.get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dgreedy,reason%3DFailedScheduling").await;
            events["items"].as_array().and_then(|i| i.first()).cloned()
        }
    })
    .await;
    assert_eq!(
        event["message"],
        "0/3 nodes are available: 3 Insufficient cpu."
    );

    // Mixed reasons are counted per reason.
    api.patch(
        "/api/v1/nodes/dev-1",
        "application/merge-patch+json",
        r#"{"spec":{"unschedulable":true}}"#,
    )
    .await;
    let picky = pod(
        "picky",
        &image,
        json!({"nodeSelector": {"kubernetes.io/hostname": "dev-2"}, "containers": [{"name": "main", "image": image, "resources": {"requests": {"cpu": "64"}}}]}),
    );
    api.post(PODS, &picky).await;
    assert_eq!(
        unschedulable_message(&api, "picky").await,
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable."
    );
}

#[tokio::test]
async fn selectors_affinity_and_taints() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    api.patch(
        "/api/v1/nodes/dev-2",
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"disk":"ssd"}}}"#,
    )
    .await;
    api.post(
        PODS,
        &pod("ssd", &image, json!({"nodeSelector": {"disk": "ssd"}})),
    )
    .await;
    assert_eq!(node_of(&api, "ssd").await, "dev-2");

    let not_one_or_two = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["dev-1", "dev-2"]}]}
    ]}}});
    api.post(
        PODS,
        &pod("affine", &image, json!({"affinity": not_one_or_two})),
    )
    .await;
    assert_eq!(node_of(&api, "affine").await, "dev-3");

    for n in ["dev-1", "dev-2", "dev-3"] {
        api.patch(
            &format!("/api/v1/nodes/{n}"),
            "application/merge-patch+json",
            r#"{"spec":{"taints":[{"key":"dedicated","value":"edge","effect":"NoSchedule"}]}}"#,
        )
        .await;
    }
    api.post(PODS, &pod("intolerant", &image, json!({}))).await;
    assert_eq!(
        unschedulable_message(&api, "intolerant").await,
        "0/3 nodes are available: 3 node(s) had untolerated taint {dedicated: edge}."
    );
    let tolerations =
        json!([{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}]);
    api.post(
        PODS,
        &pod("tolerant", &image, json!({"tolerations": tolerations})),
    )
    .await;
    node_of(&api, "tolerant").await;

    // The waiting pod is placed as soon as a node stops refusing it.
    api.patch(
        "/api/v1/nodes/dev-3",
        "application/merge-patch+json",
        r#"{"spec":{"taints":null}}"#,
    )
    .await;
    assert_eq!(node_of(&api, "intolerant").await, "dev-3");
}
