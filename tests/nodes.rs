//! End to end with a real server and two real agent processes: an agent killed for good
//! gets its node marked Unknown and tainted, its pods are evicted after their toleration
//! and replaced on the healthy node, while an autonomous (edge) node keeps its pods.

mod common;

use std::time::Duration;

use common::{Api, Process, ServerProcess, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn agent(server: &ServerProcess, name: &str, dir: &std::path::Path) -> Process {
    let d = dir.join(name);
    let token = server.node_token();
    let (p, _) = Process::start(
        &[
            "agent",
            "--server",
            &server.url,
            "--token",
            &token,
            "--name",
            name,
            "--data-dir",
            d.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--lease-interval",
            "200ms",
        ],
        "agent:",
    );
    p
}

fn replicaset(name: &str, image: &str, node_selector: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"nodeSelector": node_selector, "containers": [{"name": "main", "image": image, "args": ["60m"]}]},
            },
        },
    })
}

async fn pod_node(api: &Api, app: &str) -> Vec<(String, bool)> {
    let (_, list) = api
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app%3D{app}"
        ))
        .await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["metadata"]["deletionTimestamp"].is_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_lost_node_is_tainted_and_its_pods_replaced_but_an_autonomous_node_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &dir.path().join("server"),
        &[
            "--node-monitor-grace",
            "1s",
            "--default-toleration-seconds",
            "1",
        ],
    );
    let api = server.api();
    let _healthy = agent(&server, "n1", dir.path());
    let lost = agent(&server, "n2", dir.path());
    let edge = agent(&server, "n3", dir.path());
    api.patch(
        "/api/v1/nodes/n3",
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"skiff.dev/autonomous":"true"}}}"#,
    )
    .await;
    let image = api.upload(workload("ticker.wasm")).await;
    // Place "moving" on n2: cordon n1 while it is scheduled, then open n1 again.
    api.patch(
        "/api/v1/nodes/n1",
        "application/merge-patch+json",
        r#"{"spec":{"unschedulable":true}}"#,
    )
    .await;
    api.post(
        "/apis/apps/v1/namespaces/default/replicasets",
        &replicaset("moving", &image, json!({"kubernetes.io/hostname": "n2"})),
    )
    .await;
    api.post(
        "/apis/apps/v1/namespaces/default/replicasets",
        &replicaset("edge", &image, json!({"kubernetes.io/hostname": "n3"})),
    )
    .await;
    for (app, node) in [("moving", "n2"), ("edge", "n3")] {
        eventually(&format!("{app} placed on {node}"), WAIT, || {
            let api = api.clone();
            async move {
                pod_node(&api, app)
                    .await
                    .iter()
                    .any(|(n, _)| n == node)
                    .then_some(())
            }
        })
        .await;
    }
    // From now on "moving" may go anywhere: its template no longer pins it.
    api.patch(
        "/apis/apps/v1/namespaces/default/replicasets/moving",
        "application/merge-patch+json",
        r#"{"spec":{"template":{"spec":{"nodeSelector":null}}}}"#,
    )
    .await;
    api.patch(
        "/api/v1/nodes/n1",
        "application/merge-patch+json",
        r#"{"spec":{"unschedulable":false}}"#,
    )
    .await;
    lost.kill9();
    edge.kill9();

    // n2 and n3 go Unknown and get the unreachable taint.
    for node in ["n2", "n3"] {
        let n = eventually(&format!("{node} marked Unknown and tainted"), WAIT, || {
            let api = api.clone();
            async move {
                let (_, n) = api.get(&format!("/api/v1/nodes/{node}")).await;
                let ready = n["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "Ready")?
                    .clone();
                let tainted = n["spec"]["taints"].as_array().is_some_and(|t| {
                    t.iter().any(|t| {
                        t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                    })
                });
                (ready["status"] == "Unknown" && tainted).then_some(n)
            }
        })
        .await;
        assert_eq!(n["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
    }
    // The pod on n2 is evicted and replaced on n1.
    eventually("the moving pod replaced on n1", WAIT, || {
        let api = api.clone();
        async move {
            let pods = pod_node(&api, "moving").await;
            (pods.iter().any(|(n, d)| n == "n2" && *d) || pods.iter().all(|(n, _)| n != "n2"))
                .then_some(())?;
            pods.iter().any(|(n, d)| n == "n1" && !d).then_some(())
        }
    })
    .await;
    // The autonomous node's pod is never evicted, even well past its toleration.
    eventually(
        "n3 tainted for longer than the 1 s toleration",
        WAIT,
        || {
            let api = api.clone();
            async move {
                let (_, n) = api.get("/api/v1/nodes/n3").await;
                let added = n["spec"]["taints"]
                    .as_array()?
                    .iter()
                    .find(|t| t["key"] == "node.kubernetes.io/unreachable")?["timeAdded"]
                    .as_str()?
                    .parse::<jiff::Timestamp>()
                    .ok()?;
                (jiff::Timestamp::now().duration_since(added).as_secs() >= 2).then_some(())
            }
        },
    )
    .await;
    let (_, edge_pods) = api
        .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dedge")
        .await;
    let edge_pod = &edge_pods["items"][0];
    assert_eq!(edge_pod["spec"]["nodeName"], "n3");
    assert!(
        edge_pod["metadata"]["deletionTimestamp"].is_null(),
        "{edge_pod}"
    );
}

#[tokio::test]
async fn a_daemonset_runs_on_every_node_including_one_that_joins_later_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let api = server.api();
    let _a = agent(&server, "edge-1", dir.path());
    let _b = agent(&server, "edge-2", dir.path());
    let image = api.upload(workload("ticker.wasm")).await;
    let ds = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "collector"},
        "spec": {
            "selector": {"matchLabels": {"app": "collector"}},
            "template": {"metadata": {"labels": {"app": "collector"}}, "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]}},
        },
    });
    assert_eq!(
        api.post("/apis/apps/v1/namespaces/default/daemonsets", &ds)
            .await
            .0,
        201
    );
    let running_on = |api: Api| async move {
        let (_, list) = api
            .get("/api/v1/namespaces/default/pods?labelSelector=app%3Dcollector")
            .await;
        let mut nodes: Vec<(String, String)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
            })
            .map(|p| {
                (
                    p["spec"]["nodeName"].as_str().unwrap().to_string(),
                    p["metadata"]["labels"]["controller-revision-hash"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        nodes.sort();
        nodes
    };
    eventually("a daemon on each node", WAIT, || {
        let api = api.clone();
        async move {
            (running_on(api)
                .await
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                == ["edge-1", "edge-2"])
            .then_some(())
        }
    })
    .await;

    // A node that joins later gets its daemon.
    let _c = agent(&server, "edge-3", dir.path());
    eventually("a daemon on the new node", WAIT, || {
        let api = api.clone();
        async move {
            (running_on(api)
                .await
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                == ["edge-1", "edge-2", "edge-3"])
            .then_some(())
        }
    })
    .await;
    let before: std::collections::BTreeSet<String> = running_on(api.clone())
        .await
        .into_iter()
        .map(|(_, h)| h)
        .collect();

    // A template change rolls out to every node, replacing the old daemons.
    api.patch(
        "/apis/apps/v1/namespaces/default/daemonsets/collector",
        "application/merge-patch+json",
        r#"{"spec":{"template":{"metadata":{"annotations":{"rev":"2"}}}}}"#,
    )
    .await;
    let after = eventually("the rollout to finish", WAIT, || {
        let api = api.clone();
        let before = before.clone();
        async move {
            let pods = running_on(api).await;
            let hashes: std::collections::BTreeSet<String> =
                pods.iter().map(|(_, h)| h.clone()).collect();
            (pods.len() == 3 && hashes.len() == 1 && hashes.is_disjoint(&before)).then_some(pods)
        }
    })
    .await;
    assert_eq!(
        after.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["edge-1", "edge-2", "edge-3"]
    );
    let (_, ds) = api
        .get("/apis/apps/v1/namespaces/default/daemonsets/collector")
        .await;
    let status = eventually("status to catch up", WAIT, || {
        let api = api.clone();
        async move {
            let (_, ds) = api
                .get("/apis/apps/v1/namespaces/default/daemonsets/collector")
                .await;
            (ds["status"]["numberReady"] == 3 && ds["status"]["updatedNumberScheduled"] == 3)
                .then_some(ds)
        }
    })
    .await;
    assert_eq!(status["status"]["desiredNumberScheduled"], 3);
    assert_eq!(
        status["status"]["observedGeneration"],
        ds["metadata"]["generation"]
    );
}
