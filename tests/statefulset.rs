//! StatefulSets with persistent volumes, with the real kubectl: the default StorageClass
//! `local-path` provisions a directory per claim on the node where the claim's pod
//! lands; each pod of a StatefulSet of 3 writes into its own claim and reads back what
//! is there; the data survives the kill of the agent; scaling down and up again keeps
//! the claims; deleting a claim deletes its volume and its directory (reclaim policy
//! Delete).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Api, Process, ServerProcess, eventually, kubectl, workload};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
const PVC: &str = "/api/v1/namespaces/default/persistentvolumeclaims";

fn start_agent(server: &ServerProcess, data: &Path) -> Process {
    let token = server.node_token();
    Process::start(
        &[
            "agent",
            "--server",
            &server.url,
            "--token",
            &token,
            "--name",
            "edge-1",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "agent:",
    )
    .0
}

/// The directory of claim `claim`'s volume on the agent, once it is bound.
async fn volume_dir(api: &Api, agent_data: &Path, claim: &str) -> PathBuf {
    let pv = eventually(&format!("claim {claim} bound"), WAIT, || async {
        let (_, c) = api.get(&format!("{PVC}/{claim}")).await;
        (c["status"]["phase"] == "Bound")
            .then(|| c["spec"]["volumeName"].as_str().map(str::to_string))
            .flatten()
    })
    .await;
    agent_data.join("storage").join(pv)
}

/// Waits until pod `pod`'s log shows it read `text` from its claim.
async fn reads(kubeconfig: &Path, pod: &str, text: &str) {
    let want = format!("read /data/in.txt: {text}");
    eventually(&format!("{pod} to read {text:?}"), WAIT, || {
        let (kc, pod, want) = (kubeconfig.to_path_buf(), pod.to_string(), want.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let out = Command::new("kubectl")
                    .args(["logs", &pod])
                    .env("KUBECONFIG", &kc)
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout)
                    .contains(&want)
                    .then_some(())
            })
            .await
            .unwrap()
        }
    })
    .await;
}

async fn scale(api: &Api, replicas: i64) {
    let (code, body) = api
        .patch(
            &format!("{STS}/db/scale"),
            "application/merge-patch+json",
            &json!({"spec": {"replicas": replicas}}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
}

async fn pod_names(api: &Api) -> Vec<String> {
    let (_, list) = api
        .get("/api/v1/namespaces/default/pods?labelSelector=app%3Ddb")
        .await;
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_statefulset_keeps_each_pods_data_through_an_agent_kill_and_a_rescale() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let kubeconfig = server.kubeconfig();
    let api = server.api();
    let agent_data = dir.path().join("edge-1");
    let agent = start_agent(&server, &agent_data);

    // The default class, as k3s ships one.
    let classes = kubectl(&kubeconfig, &["get", "storageclass"]);
    assert!(
        classes
            .lines()
            .any(|l| l.starts_with("local-path (default)") && l.contains("skiff.dev/local-path")),
        "{classes}"
    );

    let image = api.upload(workload("files.wasm")).await;
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{
                    "name": "main", "image": image,
                    "args": ["/data", "/data/in.txt"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }]},
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
            }],
        },
    });
    let (code, body) = api.post(STS, &sts).await;
    assert_eq!(code, 201, "{body}");

    // Each pod gets its own claim and volume, and writes into it.
    let mut dirs = Vec::new();
    for i in 0..3 {
        let claim = format!("data-db-{i}");
        let volume = volume_dir(&api, &agent_data, &claim).await;
        eventually(&format!("db-{i} to write into its volume"), WAIT, || {
            let out = volume.join("out.txt");
            async move { out.exists().then_some(()) }
        })
        .await;
        dirs.push(volume);
    }
    assert_eq!(pod_names(&api).await, ["db-0", "db-1", "db-2"]);
    let (_, claim) = api.get(&format!("{PVC}/data-db-0")).await;
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    assert_eq!(claim["status"]["capacity"]["storage"], "64Mi");
    let (_, pv) = api
        .get(&format!(
            "/api/v1/persistentvolumes/{}",
            claim["spec"]["volumeName"].as_str().unwrap()
        ))
        .await;
    assert_eq!(pv["status"]["phase"], "Bound");
    assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Delete");
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        "edge-1"
    );

    // Something only each pod's volume holds; each pod reads its own.
    for (i, d) in dirs.iter().enumerate() {
        std::fs::write(d.join("in.txt"), format!("I am db-{i}\n")).unwrap();
    }
    for i in 0..3 {
        reads(&kubeconfig, &format!("db-{i}"), &format!("I am db-{i}")).await;
    }

    // The agent dies and comes back on the same data: the pods find their data.
    agent.kill9();
    for d in &dirs {
        std::fs::write(
            d.join("in.txt"),
            format!(
                "{} after the restart\n",
                d.file_name().unwrap().to_string_lossy()
            ),
        )
        .unwrap();
    }
    let _agent = start_agent(&server, &agent_data);
    for (i, d) in dirs.iter().enumerate() {
        let expect = format!(
            "{} after the restart",
            d.file_name().unwrap().to_string_lossy()
        );
        reads(&kubeconfig, &format!("db-{i}"), &expect).await;
    }

    // Scale down to 1 and up again: the claims stay (whenScaled: Retain), and db-2
    // comes back to its own data.
    scale(&api, 1).await;
    eventually("db-1 and db-2 gone", WAIT, || async {
        (pod_names(&api).await == ["db-0"]).then_some(())
    })
    .await;
    let (_, claims) = api.get(PVC).await;
    assert_eq!(
        claims["items"].as_array().unwrap().len(),
        3,
        "the claims stay"
    );
    std::fs::write(dirs[2].join("in.txt"), "db-2 kept its data\n").unwrap();
    scale(&api, 3).await;
    reads(&kubeconfig, "db-2", "db-2 kept its data").await;

    let table = kubectl(&kubeconfig, &["get", "sts", "db"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "AGE"]);
    let pvcs = kubectl(&kubeconfig, &["get", "pvc"]);
    let header: Vec<&str> = pvcs.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATUS",
            "VOLUME",
            "CAPACITY",
            "ACCESS",
            "MODES",
            "STORAGECLASS",
            "VOLUMEATTRIBUTESCLASS",
            "AGE"
        ]
    );
    assert!(
        pvcs.lines()
            .any(|l| l.starts_with("data-db-1") && l.contains("Bound") && l.contains("RWO")),
        "{pvcs}"
    );

    // Scale to 2 and delete db-2's claim: its volume (reclaim policy Delete) and the
    // directory on the node go.
    scale(&api, 2).await;
    eventually("db-2 gone", WAIT, || async {
        (pod_names(&api).await == ["db-0", "db-1"]).then_some(())
    })
    .await;
    let pv_name = dirs[2].file_name().unwrap().to_string_lossy().into_owned();
    let (code, _) = api.delete(&format!("{PVC}/data-db-2"), None).await;
    assert_eq!(code, 200);
    eventually("the volume and its directory to go", WAIT, || {
        let (api, gone_dir, pv_name) = (api.clone(), dirs[2].clone(), pv_name.clone());
        async move {
            let (code, _) = api
                .get(&format!("/api/v1/persistentvolumes/{pv_name}"))
                .await;
            (code == 404 && !gone_dir.exists()).then_some(())
        }
    })
    .await;
    assert!(dirs[1].exists(), "other volumes stay");
}

fn created(pod: &serde_json::Value) -> String {
    pod["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ready_at(pod: &serde_json::Value) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")?["lastTransitionTime"]
        .as_str()
        .map(str::to_string)
}

fn revision(pod: &serde_json::Value) -> String {
    pod["metadata"]["labels"]["controller-revision-hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn pod(api: &Api, name: &str) -> serde_json::Value {
    api.get(&format!("/api/v1/namespaces/default/pods/{name}"))
        .await
        .1
}

#[tokio::test]
async fn ordered_ready_creates_in_order_and_a_partitioned_update_spares_the_low_ordinals() {
    let (_dir, _process, api) = common::dev_cluster(1, &[]);
    let image = api.upload(workload("ticker.wasm")).await;
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 3,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "main", "image": image, "args": ["60m"]}]},
            },
        },
    });
    let (code, body) = api.post(STS, &sts).await;
    assert_eq!(code, 201, "{body}");
    let status = eventually("3 ready replicas", WAIT, || async {
        let (_, s) = api.get(&format!("{STS}/db")).await;
        (s["status"]["readyReplicas"] == 3).then_some(s["status"].clone())
    })
    .await;
    assert_eq!(status["currentRevision"], status["updateRevision"]);
    let first = status["updateRevision"].as_str().unwrap().to_string();
    // OrderedReady: each pod was made only once the one before it was Ready.
    for i in 1..3 {
        let (before, this) = (
            pod(&api, &format!("db-{}", i - 1)).await,
            pod(&api, &format!("db-{i}")).await,
        );
        let ready = ready_at(&before).expect("ready");
        assert!(
            created(&this) >= ready,
            "db-{i} made at {} before db-{} was ready at {ready}",
            created(&this),
            i - 1
        );
        assert_eq!(this["spec"]["hostname"], format!("db-{i}"));
        assert_eq!(this["spec"]["subdomain"], "db");
    }

    // A new template with partition 1: db-2 and db-1 are replaced, db-0 is not.
    let (code, body) = api
        .patch(
            &format!("{STS}/db"),
            "application/merge-patch+json",
            &json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let status = eventually("the partition to roll", WAIT, || async {
        let (_, s) = api.get(&format!("{STS}/db")).await;
        (s["status"]["updatedReplicas"] == 2 && s["status"]["readyReplicas"] == 3)
            .then_some(s["status"].clone())
    })
    .await;
    let second = status["updateRevision"].as_str().unwrap().to_string();
    assert_ne!(first, second);
    assert_eq!(
        status["currentRevision"], first,
        "db-0 still runs the first revision"
    );
    assert_eq!(revision(&pod(&api, "db-0").await), first);
    assert_eq!(revision(&pod(&api, "db-1").await), second);
    assert_eq!(revision(&pod(&api, "db-2").await), second);

    // Partition 0 finishes the rollout.
    let (code, _) = api
        .patch(
            &format!("{STS}/db"),
            "application/merge-patch+json",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
        )
        .await;
    assert_eq!(code, 200);
    eventually("every pod on the new revision", WAIT, || async {
        let (_, s) = api.get(&format!("{STS}/db")).await;
        (s["status"]["updatedReplicas"] == 3
            && s["status"]["readyReplicas"] == 3
            && s["status"]["currentRevision"] == second.as_str())
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_headless_services_pods_each_have_a_route_on_the_gateway() {
    let (_dir, process, api) = common::dev_cluster(1, &[]);
    let gateway = process
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let image = api.upload(workload("http-hello.wasm")).await;
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    });
    let (code, body) = api
        .post("/api/v1/namespaces/default/services", &service)
        .await;
    assert_eq!(code, 201, "{body}");
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": image, "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                ]}]},
            },
        },
    });
    let (code, body) = api.post(STS, &sts).await;
    assert_eq!(code, 201, "{body}");
    let http = reqwest::Client::new();
    for pod in ["web-0", "web-1"] {
        let host = format!("{pod}.web.default.localhost");
        eventually(&format!("{host} to reach {pod}"), WAIT, || {
            let (http, url, host, pod) = (
                http.clone(),
                format!("{gateway}/"),
                host.clone(),
                pod.to_string(),
            );
            async move {
                let r = http.get(&url).header("host", &host).send().await.ok()?;
                let body = r.text().await.ok()?;
                // Only ever this pod, never its sibling.
                let answered = body.split_whitespace().find_map(|w| w.strip_prefix("pod="));
                assert!(answered.is_none_or(|p| p == pod), "{host}: {body}");
                (answered == Some(pod.as_str())).then_some(())
            }
        })
        .await;
    }
}

#[tokio::test]
async fn on_delete_waits_for_deletions_and_delete_retention_removes_the_claims() {
    let (_dir, _process, api) = common::dev_cluster(1, &[]);
    let image = api.upload(workload("ticker.wasm")).await;
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 2,
            "serviceName": "db",
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Delete"},
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{
                    "name": "main", "image": image, "args": ["60m"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }]},
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Mi"}}},
            }],
        },
    });
    let (code, body) = api.post(STS, &sts).await;
    assert_eq!(code, 201, "{body}");
    let first = eventually("2 ready replicas", WAIT, || async {
        let (_, s) = api.get(&format!("{STS}/db")).await;
        (s["status"]["readyReplicas"] == 2)
            .then(|| s["status"]["updateRevision"].as_str().map(str::to_string))
            .flatten()
    })
    .await;

    // OnDelete: a new template replaces no pod by itself...
    let (code, _) = api
        .patch(
            &format!("{STS}/db"),
            "application/merge-patch+json",
            r#"{"spec":{"template":{"metadata":{"annotations":{"rev":"2"}}}}}"#,
        )
        .await;
    assert_eq!(code, 200);
    let second = eventually("the new revision to show", WAIT, || async {
        let (_, s) = api.get(&format!("{STS}/db")).await;
        s["status"]["updateRevision"]
            .as_str()
            .filter(|r| *r != first)
            .map(str::to_string)
    })
    .await;
    let (_, s) = api.get(&format!("{STS}/db")).await;
    assert_eq!(
        s["status"]["updatedReplicas"], 0,
        "OnDelete replaced a pod: {s}"
    );
    assert_eq!(revision(&pod(&api, "db-1").await), first);
    // ...but a deleted pod comes back on it.
    let (code, _) = api
        .delete("/api/v1/namespaces/default/pods/db-1", None)
        .await;
    assert_eq!(code, 200);
    eventually("db-1 back on the new revision", WAIT, || async {
        let p = pod(&api, "db-1").await;
        (revision(&p) == second && ready_at(&p).is_some()).then_some(())
    })
    .await;
    assert_eq!(revision(&pod(&api, "db-0").await), first);

    // whenScaled: Delete: db-1's claim goes with it.
    scale(&api, 1).await;
    eventually("data-db-1 deleted with db-1", WAIT, || async {
        let (code, _) = api.get(&format!("{PVC}/data-db-1")).await;
        (code == 404).then_some(())
    })
    .await;
    let (code, _) = api.get(&format!("{PVC}/data-db-0")).await;
    assert_eq!(code, 200, "db-0 keeps its claim");

    // whenDeleted: Delete: the StatefulSet's claims go with it.
    let (code, _) = api.delete(&format!("{STS}/db"), None).await;
    assert_eq!(code, 200);
    eventually("data-db-0 deleted with the StatefulSet", WAIT, || async {
        let (code, _) = api.get(&format!("{PVC}/data-db-0")).await;
        (code == 404).then_some(())
    })
    .await;
}
