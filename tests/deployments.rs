//! End to end on a 3-node cluster on each store (`skiff dev` on redb; see
//! `common::cluster`): Deployments roll out through ReplicaSets.
//! Availability during a rolling update is checked on every pod event of a watch, not
//! by sampling; rollback reuses the old ReplicaSet under a new revision; Recreate never
//! overlaps old and new pods; paused Deployments scale but don't roll; history is
//! bounded; minReadySeconds and the progress deadline show in the status.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Api, eventually, workload};
use serde_json::{Value, json};

const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";
const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const PODS: &str = "/api/v1/namespaces/default/pods";
const WAIT: Duration = Duration::from_secs(60);
const HASH: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

fn deployment(name: &str, image: &str, replicas: i64, strategy: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kubernetes.io/change-cause": "v1"}},
        "spec": {
            "replicas": replicas,
            "strategy": strategy,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]},
            },
        },
    })
}

/// Waits until the Deployment reports what `kubectl rollout status` calls done.
async fn rolled_out(api: &Api, name: &str) -> Value {
    eventually(&format!("deployment {name} rolled out"), WAIT, || {
        let api = api.clone();
        async move {
            let (_, d) = api.get(&format!("{DEPLOY}/{name}")).await;
            let replicas = &d["spec"]["replicas"];
            let s = &d["status"];
            let progressing = s["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Progressing");
            (s["observedGeneration"] == d["metadata"]["generation"]
                && &s["updatedReplicas"] == replicas
                && &s["replicas"] == replicas
                && &s["availableReplicas"] == replicas
                && progressing.is_some_and(|c| c["reason"] == "NewReplicaSetAvailable"))
            .then_some(d)
        }
    })
    .await
}

async fn replicasets(api: &Api, app: &str) -> Vec<Value> {
    let (_, list) = api.get(&format!("{RS}?labelSelector=app%3D{app}")).await;
    let mut items = list["items"].as_array().unwrap().clone();
    items.sort_by_key(revision);
    items
}

fn revision(obj: &Value) -> u64 {
    obj["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn pods(api: &Api, app: &str) -> (Vec<Value>, String) {
    let (_, list) = api.get(&format!("{PODS}?labelSelector=app%3D{app}")).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    (list["items"].as_array().unwrap().clone(), rv)
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn live(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
}

fn hash_of(pod: &Value) -> String {
    pod["metadata"]["labels"][HASH]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn patch(api: &Api, name: &str, body: Value) {
    let (code, out) = api
        .patch(
            &format!("{DEPLOY}/{name}"),
            "application/merge-patch+json",
            &body.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{out}");
}

/// Follows pod events from `rv` until the Deployment has rolled out, calling `on_event`
/// with the pods as they stand after each event.
async fn follow_rollout(
    api: &Api,
    name: &str,
    rv: &str,
    initial: Vec<Value>,
    mut on_event: impl FnMut(&str, &Value, &HashMap<String, Value>),
) {
    let mut pods: HashMap<String, Value> = initial
        .into_iter()
        .map(|p| (p["metadata"]["name"].as_str().unwrap().to_string(), p))
        .collect();
    let mut watch = api
        .watch(&format!(
            "{PODS}?watch=true&labelSelector=app%3D{name}&resourceVersion={rv}&allowWatchBookmarks=true"
        ))
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout of {name} did not finish"
        );
        match watch.next_change(Duration::from_millis(500)).await {
            Some(event) => {
                let pod = event["object"].clone();
                let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
                let kind = event["type"].as_str().unwrap().to_string();
                if kind == "DELETED" {
                    pods.remove(&pod_name);
                } else {
                    pods.insert(pod_name, pod.clone());
                }
                on_event(&kind, &pod, &pods);
            }
            None => {
                // Quiet for a moment: done if the Deployment says so.
                let (_, d) = api.get(&format!("{DEPLOY}/{name}")).await;
                let s = &d["status"];
                let r = &d["spec"]["replicas"];
                if s["observedGeneration"] == d["metadata"]["generation"]
                    && &s["updatedReplicas"] == r
                    && &s["availableReplicas"] == r
                    && &s["replicas"] == r
                {
                    return;
                }
            }
        }
    }
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    a_rolling_update_keeps_availability_and_rolls_back,
    recreate_pause_history_min_ready_and_deadline,
    kubectl_rollout_status_history_and_undo,
);

async fn a_rolling_update_keeps_availability_and_rolls_back() {
    let (_d, _p, api) = common::cluster(3);
    // The loops below run because this server holds the leadership Lease.
    let (code, lease) = api
        .get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-controlplane")
        .await;
    assert_eq!(code, 200, "{lease}");
    assert!(!lease["spec"]["holderIdentity"].as_str().unwrap().is_empty());
    let image = api.upload(workload("ticker.wasm")).await;
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}});
    let (code, out) = api
        .post(DEPLOY, &deployment("web", &image, 4, strategy))
        .await;
    assert_eq!(code, 201, "{out}");
    let d = rolled_out(&api, "web").await;
    assert_eq!(d["metadata"]["annotations"][REVISION], "1");
    let first = replicasets(&api, "web").await;
    assert_eq!(first.len(), 1);
    let v1_hash = first[0]["metadata"]["labels"][HASH]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        first[0]["metadata"]["name"],
        format!("web-{v1_hash}"),
        "ReplicaSets are named after the template hash"
    );
    assert_eq!(first[0]["spec"]["selector"]["matchLabels"][HASH], v1_hash);
    assert_eq!(
        first[0]["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "v1"
    );
    assert_eq!(
        first[0]["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );

    // Roll out v2, watching every pod event: at least replicas - maxUnavailable
    // (4 - 1) pods ready and not terminating, and at most replicas + maxSurge (5) live.
    let (before, rv) = pods(&api, "web").await;
    assert_eq!(before.iter().filter(|p| is_ready(p)).count(), 4);
    patch(
        &api,
        "web",
        json!({
            "metadata": {"annotations": {"kubernetes.io/change-cause": "v2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "main", "image": image, "args": ["60m"], "env": [{"name": "VERSION", "value": "2"}]}]}}},
        }),
    )
    .await;
    let (mut min_ready, mut max_live, mut events) = (usize::MAX, 0, 0);
    follow_rollout(&api, "web", &rv, before, |_, _, pods| {
        events += 1;
        let ready = pods.values().filter(|p| live(p) && is_ready(p)).count();
        let alive = pods.values().filter(|p| live(p)).count();
        min_ready = min_ready.min(ready);
        max_live = max_live.max(alive);
    })
    .await;
    assert!(events >= 8, "saw the rollout's pod events ({events})");
    assert!(
        min_ready >= 3,
        "availability fell to {min_ready} ready pods"
    );
    assert!(max_live <= 5, "surged to {max_live} pods");

    let d = rolled_out(&api, "web").await;
    assert_eq!(d["metadata"]["annotations"][REVISION], "2");
    let sets = replicasets(&api, "web").await;
    assert_eq!(sets.len(), 2);
    assert_eq!(
        sets[0]["spec"]["replicas"], 0,
        "the old ReplicaSet is scaled down"
    );
    assert_eq!(revision(&sets[1]), 2);
    assert_eq!(
        sets[1]["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "v2"
    );
    let v2_hash = sets[1]["metadata"]["labels"][HASH]
        .as_str()
        .unwrap()
        .to_string();
    let (now, _) = pods(&api, "web").await;
    let current: Vec<&Value> = now.iter().filter(|p| live(p)).collect();
    assert_eq!(current.len(), 4);
    assert!(current.iter().all(|p| hash_of(p) == v2_hash));
    assert!(
        current
            .iter()
            .all(|p| p["spec"]["containers"][0]["env"][0]["value"] == "2")
    );

    // Roll back as `kubectl rollout undo` does: the revision-1 template, with its
    // change-cause, goes back into the Deployment.
    let mut template = sets[0]["spec"]["template"].clone();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove(HASH);
    let undo = json!([
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": {REVISION: "2", "kubernetes.io/change-cause": "v1"}},
    ]);
    let (code, out) = api
        .patch(
            &format!("{DEPLOY}/web"),
            "application/json-patch+json",
            &undo.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let d = rolled_out(&api, "web").await;
    assert_eq!(d["metadata"]["annotations"][REVISION], "3");
    let sets = replicasets(&api, "web").await;
    assert_eq!(sets.len(), 2, "the old ReplicaSet is reused, not copied");
    assert_eq!(sets[1]["metadata"]["labels"][HASH], v1_hash.as_str());
    assert_eq!(revision(&sets[1]), 3);
    assert_eq!(
        sets[1]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    let (now, _) = pods(&api, "web").await;
    let current: Vec<&Value> = now.iter().filter(|p| live(p)).collect();
    assert_eq!(current.len(), 4);
    assert!(current.iter().all(|p| hash_of(p) == v1_hash));
    assert!(
        current
            .iter()
            .all(|p| p["spec"]["containers"][0]["env"].is_null())
    );

    // Scaling is recorded as events on the Deployment.
    let (_, events) = api
        .get("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb,reason%3DScalingReplicaSet")
        .await;
    assert!(events["items"].as_array().unwrap().len() >= 3, "{events}");

    // Deleting the Deployment takes its ReplicaSets and pods with it.
    api.delete(&format!("{DEPLOY}/web"), None).await;
    eventually("ReplicaSets and pods collected", WAIT, || {
        let api = api.clone();
        async move {
            let sets = replicasets(&api, "web").await;
            let (pods, _) = pods(&api, "web").await;
            (sets.is_empty() && pods.is_empty()).then_some(())
        }
    })
    .await;
}

async fn recreate_pause_history_min_ready_and_deadline() {
    let (_d, _p, api) = common::cluster(3);
    let image = api.upload(workload("ticker.wasm")).await;
    let mut d = deployment("batch", &image, 2, json!({"type": "Recreate"}));
    // No annotations at all, as most Deployments come.
    d["metadata"].as_object_mut().unwrap().remove("annotations");
    d["spec"]["revisionHistoryLimit"] = json!(1);
    d["spec"]["minReadySeconds"] = json!(3);
    let (code, out) = api.post(DEPLOY, &d).await;
    assert_eq!(code, 201, "{out}");

    // minReadySeconds: pods count as available only after being ready that long.
    let (pods_then, _) = eventually("two available", WAIT, || {
        let api = api.clone();
        async move {
            let (_, d) = api.get(&format!("{DEPLOY}/batch")).await;
            if d["status"]["availableReplicas"] != 2 {
                return None;
            }
            Some(pods(&api, "batch").await)
        }
    })
    .await;
    let now = jiff::Timestamp::now();
    for p in &pods_then {
        let since: jiff::Timestamp = p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()["lastTransitionTime"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        // Timestamps have whole seconds, so allow one of rounding.
        assert!(
            now.duration_since(since).as_secs() >= 2,
            "counted available {}s after becoming ready",
            now.duration_since(since).as_secs()
        );
    }
    rolled_out(&api, "batch").await;

    // Recreate: no pod of the new template appears while an old one still exists.
    let (before, rv) = pods(&api, "batch").await;
    let v1 = hash_of(&before[0]);
    patch(
        &api,
        "batch",
        json!({"spec": {"minReadySeconds": 0, "template": {"metadata": {"labels": {"app": "batch", "v": "2"}}}}}),
    )
    .await;
    let mut overlaps = Vec::new();
    let mut new_seen = 0;
    follow_rollout(&api, "batch", &rv, before, |kind, pod, pods| {
        if kind == "ADDED" && hash_of(pod) != v1 {
            new_seen += 1;
            let old = pods.values().filter(|p| hash_of(p) == v1).count();
            if old > 0 {
                overlaps.push(old);
            }
        }
    })
    .await;
    assert_eq!(new_seen, 2);
    assert!(
        overlaps.is_empty(),
        "new pods overlapped old ones: {overlaps:?}"
    );

    // A third revision: only one old ReplicaSet is kept.
    patch(
        &api,
        "batch",
        json!({"spec": {"template": {"metadata": {"labels": {"app": "batch", "v": "3"}}}}}),
    )
    .await;
    rolled_out(&api, "batch").await;
    let sets = eventually("history trimmed to one", WAIT, || {
        let api = api.clone();
        async move {
            let sets = replicasets(&api, "batch").await;
            (sets.len() == 2).then_some(sets)
        }
    })
    .await;
    assert_eq!(
        sets.iter().map(revision).collect::<Vec<_>>(),
        vec![2, 3],
        "revision 1 was removed"
    );

    // Paused: a template change waits, but scaling still happens.
    patch(&api, "batch", json!({"spec": {"paused": true}})).await;
    patch(
        &api,
        "batch",
        json!({"spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "batch", "v": "4"}}}}}),
    )
    .await;
    let d = eventually("paused and scaled", WAIT, || {
        let api = api.clone();
        async move {
            let (_, d) = api.get(&format!("{DEPLOY}/batch")).await;
            let paused = d["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused");
            (paused
                && d["status"]["observedGeneration"] == d["metadata"]["generation"]
                && d["status"]["availableReplicas"] == 3)
                .then_some(d)
        }
    })
    .await;
    assert_eq!(
        d["status"]["updatedReplicas"], 0,
        "nothing rolled while paused"
    );
    assert_eq!(replicasets(&api, "batch").await.len(), 2);
    patch(&api, "batch", json!({"spec": {"paused": false}})).await;
    let d = rolled_out(&api, "batch").await;
    assert_eq!(d["metadata"]["annotations"][REVISION], "4");
    let (now, _) = pods(&api, "batch").await;
    assert_eq!(now.iter().filter(|p| live(p)).count(), 3);
    assert!(
        now.iter()
            .filter(|p| live(p))
            .all(|p| p["metadata"]["labels"]["v"] == "4")
    );

    // A rollout that cannot progress reports ProgressDeadlineExceeded.
    let mut stuck = deployment(
        "stuck",
        &format!("sha256:{}", "ab".repeat(32)),
        1,
        json!({"type": "RollingUpdate"}),
    );
    stuck["spec"]["progressDeadlineSeconds"] = json!(2);
    assert_eq!(api.post(DEPLOY, &stuck).await.0, 201);
    let cond = eventually("progress deadline exceeded", WAIT, || {
        let api = api.clone();
        async move {
            let (_, d) = api.get(&format!("{DEPLOY}/stuck")).await;
            d["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Progressing" && c["status"] == "False")
                .cloned()
        }
    })
    .await;
    assert_eq!(cond["reason"], "ProgressDeadlineExceeded");
    let (_, d) = api.get(&format!("{DEPLOY}/stuck")).await;
    let available = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Available")
        .unwrap()
        .clone();
    assert_eq!(available["status"], "False");
    assert_eq!(d["status"]["unavailableReplicas"], 1);
}

/// Runs the real kubectl against the cluster; panics with its output if it fails.
fn kubectl(kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl is installed by scripts/test");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Revisions `kubectl rollout history` lists.
fn history(kubeconfig: &std::path::Path, name: &str) -> Vec<String> {
    kubectl(
        kubeconfig,
        &["rollout", "history", &format!("deployment/{name}")],
        None,
    )
    .lines()
    .skip_while(|l| !l.starts_with("REVISION"))
    .skip(1)
    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
    .collect()
}

async fn kubectl_rollout_status_history_and_undo() {
    let (dir, _p, api) = common::cluster(2);
    let kubeconfig = dir.path().join("kubeconfig");
    let image = api.upload(workload("ticker.wasm")).await;
    let mut manifest = deployment("web", &image, 2, json!({"type": "RollingUpdate"}));
    // A strategy given as type alone makes kubectl send $retainKeys on every apply (it
    // would say "configured" against any server): leave it to the defaults.
    manifest["spec"].as_object_mut().unwrap().remove("strategy");
    let manifest = manifest.to_string();
    let kc = kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        // No OpenAPI yet (issue 6), so client-side validation is off.
        let created = kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
        assert!(created.contains("deployment.apps/web created"), "{created}");
        // Client-side apply again, unchanged: a strategic merge patch that changes nothing.
        let again = kubectl(&kc, &["apply", "-f", "-"], Some(&manifest));
        assert!(again.contains("deployment.apps/web unchanged"), "{again}");
        kubectl(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
            None,
        )
    })
    .await
    .unwrap();
    assert!(out.contains("successfully rolled out"), "{out}");

    let kc = kubeconfig.clone();
    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": image, "args": ["30m"]}]}}}}).to_string();
    let (out, revisions) = tokio::task::spawn_blocking(move || {
        kubectl(
            &kc,
            &["patch", "deployment/web", "--type=merge", "-p", &patch],
            None,
        );
        let out = kubectl(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
            None,
        );
        (out, history(&kc, "web"))
    })
    .await
    .unwrap();
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(revisions, ["1", "2"]);

    let kc = kubeconfig.clone();
    let (undo, revisions) = tokio::task::spawn_blocking(move || {
        let undo = kubectl(&kc, &["rollout", "undo", "deployment/web"], None);
        kubectl(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
            None,
        );
        (undo, history(&kc, "web"))
    })
    .await
    .unwrap();
    assert!(undo.contains("rolled back"), "{undo}");
    assert_eq!(
        revisions,
        ["2", "3"],
        "the first ReplicaSet came back as revision 3"
    );

    // Strategic merge patches: set env merges into the container's env by name, and
    // cordon marks the node.
    let kc = kubeconfig.clone();
    let (env, nodes) = tokio::task::spawn_blocking(move || {
        kubectl(&kc, &["set", "env", "deployment/web", "EXTRA=1"], None);
        kubectl(
            &kc,
            &["rollout", "status", "deployment/web", "--timeout=60s"],
            None,
        );
        let env = kubectl(
            &kc,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].env}",
            ],
            None,
        );
        kubectl(&kc, &["cordon", "dev-2"], None);
        let nodes = kubectl(&kc, &["get", "nodes"], None);
        kubectl(&kc, &["uncordon", "dev-2"], None);
        (env, nodes)
    })
    .await
    .unwrap();
    assert!(env.contains("EXTRA"), "{env}");
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("dev-2") && l.contains("SchedulingDisabled")),
        "{nodes}"
    );

    // Drain evicts through the policy/v1 Eviction subresource; the Deployment's pods
    // come back on the other node.
    let kc = kubeconfig.clone();
    let drained = tokio::task::spawn_blocking(move || {
        kubectl(
            &kc,
            &["drain", "dev-2", "--ignore-daemonsets", "--timeout=60s"],
            None,
        )
    })
    .await
    .unwrap();
    assert!(drained.contains("node/dev-2 drained"), "{drained}");
    eventually("the drained node's pods back on dev-1", WAIT, || {
        let api = api.clone();
        async move {
            let (all, _) = pods(&api, "web").await;
            let live: Vec<Value> = all.into_iter().filter(live).collect();
            (live.len() == 2 && live.iter().all(|p| p["spec"]["nodeName"] == "dev-1")).then_some(())
        }
    })
    .await;
    let kc = kubeconfig.clone();
    tokio::task::spawn_blocking(move || kubectl(&kc, &["uncordon", "dev-2"], None))
        .await
        .unwrap();

    // Table output: the columns kubectl users know.
    let kc = kubeconfig.clone();
    let (deployments, wide) = tokio::task::spawn_blocking(move || {
        (
            kubectl(&kc, &["get", "deployments"], None),
            kubectl(&kc, &["get", "pods", "-o", "wide"], None),
        )
    })
    .await
    .unwrap();
    let header: Vec<&str> = deployments
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    let row: Vec<&str> = deployments
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "web", "{deployments}");
    let header = wide.lines().next().unwrap();
    for column in ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"] {
        assert!(header.contains(column), "{wide}");
    }
    assert!(
        wide.lines()
            .skip(1)
            .any(|l| l.contains("Running") && l.contains("dev-")),
        "{wide}"
    );
    let current = eventually("only revision-3 pods left", WAIT, || {
        let api = api.clone();
        async move {
            let (all, _) = pods(&api, "web").await;
            let current: Vec<Value> = all.into_iter().filter(live).collect();
            (current.len() == 2).then_some(current)
        }
    })
    .await;
    assert!(
        current
            .iter()
            .all(|p| p["spec"]["containers"][0]["args"][0] == "60m")
    );
}
