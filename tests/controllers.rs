//! End to end on a 3-node cluster on each store (`skiff dev` on redb; see
//! `common::cluster`): the ReplicaSet controller keeps its count through scaling and pod
//! loss, adopts matching orphans, releases pods it stops matching, and reports status;
//! its pods are scheduled and run as Wasm.

mod common;

use std::time::Duration;

use common::{Api, eventually, workload};
use serde_json::{Value, json};

const RS: &str = "/apis/apps/v1/namespaces/default/replicasets";
const PODS: &str = "/api/v1/namespaces/default/pods";
const WAIT: Duration = Duration::from_secs(60);

fn cluster() -> (tempfile::TempDir, common::Cluster, Api) {
    common::cluster(3)
}

fn replicaset(name: &str, image: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]},
            },
        },
    })
}

/// Live (not terminating) pods with the label app=NAME.
async fn live_pods(api: &Api, app: &str) -> Vec<Value> {
    let (_, list) = api.get(&format!("{PODS}?labelSelector=app%3D{app}")).await;
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

async fn wait_for_count(api: &Api, app: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} live pods of {app}"), WAIT, || {
        let api = api.clone();
        async move {
            let pods = live_pods(&api, app).await;
            (pods.len() == n).then_some(pods)
        }
    })
    .await
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    a_replicaset_keeps_its_count_and_reports_status,
    orphans_are_adopted_and_unmatched_pods_released,
    cascading_delete_in_all_three_propagation_modes,
    jobs_complete_fail_on_backoff_and_deadline_and_expire,
);

async fn a_replicaset_keeps_its_count_and_reports_status() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    assert_eq!(api.post(RS, &replicaset("web", &image, 3)).await.0, 201);
    let pods = wait_for_count(&api, "web", 3).await;
    for p in &pods {
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let rs = eventually("all three ready and available", WAIT, || {
        let api = api.clone();
        async move {
            let (_, rs) = api.get(&format!("{RS}/web")).await;
            (rs["status"]["readyReplicas"] == 3 && rs["status"]["availableReplicas"] == 3)
                .then_some(rs)
        }
    })
    .await;
    assert_eq!(rs["status"]["replicas"], 3);
    assert_eq!(
        rs["status"]["observedGeneration"],
        rs["metadata"]["generation"]
    );
    let nodes: std::collections::BTreeSet<String> = live_pods(&api, "web")
        .await
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes.len(), 3, "one replica per node: {nodes:?}");

    // Scale up and down through the scale subresource.
    api.patch(
        &format!("{RS}/web/scale"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":5}}"#,
    )
    .await;
    wait_for_count(&api, "web", 5).await;
    api.patch(
        &format!("{RS}/web/scale"),
        "application/merge-patch+json",
        r#"{"spec":{"replicas":2}}"#,
    )
    .await;
    wait_for_count(&api, "web", 2).await;

    // A lost pod is replaced.
    let victim = live_pods(&api, "web").await[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    api.delete(&format!("{PODS}/{victim}?gracePeriodSeconds=0"), None)
        .await;
    let pods = wait_for_count(&api, "web", 2).await;
    assert!(
        pods.iter()
            .all(|p| p["metadata"]["name"] != victim.as_str())
    );
}

async fn orphans_are_adopted_and_unmatched_pods_released() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    // An orphan that matches exists first: the ReplicaSet adopts it and creates one more.
    let orphan = json!({"metadata": {"name": "orphan", "labels": {"app": "db"}}, "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]}});
    api.post(PODS, &orphan).await;
    api.post(RS, &replicaset("db", &image, 2)).await;
    let pods = wait_for_count(&api, "db", 2).await;
    let adopted = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "orphan")
        .expect("the orphan is one of the two");
    assert_eq!(adopted["metadata"]["ownerReferences"][0]["name"], "db");

    // Relabel it: the ReplicaSet lets go of it and makes a replacement.
    api.patch(
        &format!("{PODS}/orphan"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"app":"other"}}}"#,
    )
    .await;
    let pods = wait_for_count(&api, "db", 2).await;
    assert!(pods.iter().all(|p| p["metadata"]["name"] != "orphan"));
    let released = eventually("the ownerReference to go", WAIT, || {
        let api = api.clone();
        async move {
            let (_, p) = api.get(&format!("{PODS}/orphan")).await;
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|r| r.is_empty())
                .then_some(p)
        }
    })
    .await;
    assert_eq!(released["metadata"]["labels"]["app"], "other");
}

async fn cascading_delete_in_all_three_propagation_modes() {
    let (_d, _p, api) = cluster();
    let image = api.upload(workload("ticker.wasm")).await;
    for name in ["bg", "fg", "or"] {
        api.post(RS, &replicaset(name, &image, 2)).await;
        wait_for_count(&api, name, 2).await;
    }

    // Background (the default): the owner goes at once, its pods follow.
    let (code, _) = api.delete(&format!("{RS}/bg"), None).await;
    assert_eq!(code, 200);
    assert_eq!(api.get(&format!("{RS}/bg")).await.0, 404);
    wait_for_count(&api, "bg", 0).await;

    // Foreground: the owner stays, marked, until its pods are gone.
    let (_, marked) = api
        .delete(
            &format!("{RS}/fg"),
            Some(&json!({"propagationPolicy": "Foreground"})),
        )
        .await;
    assert_eq!(
        marked["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    eventually("the foreground owner to go after its pods", WAIT, || {
        let api = api.clone();
        async move {
            let (_, pods) = api.get(&format!("{PODS}?labelSelector=app%3Dfg")).await;
            let owner_gone = api.get(&format!("{RS}/fg")).await.0 == 404;
            if owner_gone {
                assert!(
                    pods["items"].as_array().unwrap().is_empty(),
                    "the owner went before its pods: {pods}"
                );
            }
            owner_gone.then_some(())
        }
    })
    .await;

    // Orphan: the owner goes, its pods stay, without the reference.
    api.delete(
        &format!("{RS}/or"),
        Some(&json!({"propagationPolicy": "Orphan"})),
    )
    .await;
    eventually("the orphaning owner to go", WAIT, || {
        let api = api.clone();
        async move { (api.get(&format!("{RS}/or")).await.0 == 404).then_some(()) }
    })
    .await;
    let pods = wait_for_count(&api, "or", 2).await;
    for p in pods {
        assert!(
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|r| r.is_empty()),
            "{p}"
        );
    }
}

fn job(name: &str, image: &str, spec: Value) -> Value {
    let mut j = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": image}]}}},
    });
    for (k, v) in spec.as_object().unwrap() {
        j["spec"][k] = v.clone();
    }
    j
}

async fn job_condition(api: &Api, name: &str) -> Value {
    eventually(&format!("job {name} to finish"), WAIT, || {
        let api = api.clone();
        let name = name.to_string();
        async move {
            let (_, j) = api
                .get(&format!("/apis/batch/v1/namespaces/default/jobs/{name}"))
                .await;
            j["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["status"] == "True")
                .map(|_| j.clone())
        }
    })
    .await
}

async fn jobs_complete_fail_on_backoff_and_deadline_and_expire() {
    let (_d, _p, api) = cluster();
    let hello = api.upload(workload("hello.wasm")).await;
    let exit3 = api.upload(workload("exit3.wasm")).await;
    let ticker = api.upload(workload("ticker.wasm")).await;
    const JOBS: &str = "/apis/batch/v1/namespaces/default/jobs";

    api.post(
        JOBS,
        &job("three", &hello, json!({"completions": 3, "parallelism": 2})),
    )
    .await;
    let done = job_condition(&api, "three").await;
    assert_eq!(
        done["status"]["conditions"][0]["type"], "Complete",
        "{done}"
    );
    assert_eq!(
        (
            done["status"]["succeeded"].as_i64(),
            done["status"]["active"].as_i64()
        ),
        (Some(3), Some(0))
    );
    assert!(done["status"]["completionTime"].is_string());

    api.post(JOBS, &job("flaky", &exit3, json!({"backoffLimit": 2})))
        .await;
    let failed = job_condition(&api, "flaky").await;
    assert_eq!(
        failed["status"]["conditions"][0]["type"], "Failed",
        "{failed}"
    );
    assert_eq!(
        failed["status"]["conditions"][0]["reason"],
        "BackoffLimitExceeded"
    );
    assert_eq!(
        failed["status"]["failed"], 3,
        "backoffLimit 2 allows three attempts"
    );

    api.post(
        JOBS,
        &job("slow", &ticker, json!({"activeDeadlineSeconds": 1})),
    )
    .await;
    let late = job_condition(&api, "slow").await;
    assert_eq!(
        late["status"]["conditions"][0]["reason"], "DeadlineExceeded",
        "{late}"
    );

    api.post(
        JOBS,
        &job("brief", &hello, json!({"ttlSecondsAfterFinished": 1})),
    )
    .await;
    job_condition(&api, "brief").await;
    eventually("the finished job to expire", WAIT, || {
        let api = api.clone();
        async move { (api.get(&format!("{JOBS}/brief")).await.0 == 404).then_some(()) }
    })
    .await;
}
