//! End to end against the real binary: TLS with the cluster CA, bearer tokens, the
//! roles (admin, viewer, node, join), joining with a token that pins the CA, and
//! revocation taking effect on the next request.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Api, Process, ServerProcess, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// `skiff ARGS`, to completion: (success, stdout, stderr).
fn skiff(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running skiff");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn agent(server: &ServerProcess, name: &str, dir: &Path, token: &str) -> Process {
    let d = dir.join(name);
    let (p, _) = Process::start(
        &[
            "agent",
            "--server",
            &server.url,
            "--token",
            token,
            "--name",
            name,
            "--data-dir",
            d.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "agent:",
    );
    p
}

/// A client with the credential a joined agent keeps.
fn node_api(dir: &Path, name: &str) -> Api {
    Api::from_kubeconfig(&dir.join(name).join("credential.kubeconfig"))
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn pod_using_secret(name: &str, node: &str, image: &str, secret: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "image": image, "args": ["1s"],
                "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
        },
    })
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    tls_tokens_roles_join_and_revocation,
    a_node_may_not_label_itself_into_trust,
    deleting_every_object_locks_nobody_out,
    a_revoked_node_says_so_and_joins_again_with_its_pods,
);

async fn tls_tokens_roles_join_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let admin = server.api();
    let kubeconfig = server.kubeconfig();
    let kc = kubeconfig.to_str().unwrap();

    // TLS with the cluster CA; the kubeconfig carries it and the admin token, 0600.
    assert!(server.url.starts_with("https://"), "{}", server.url);
    assert_eq!(mode(&kubeconfig), 0o600);
    assert_eq!(mode(&server.data_dir.join("node-token")), 0o600);
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("certificate-authority-data:") && text.contains("token:"));
    let plain = server.url.replace("https://", "http://");
    assert!(
        reqwest::get(format!("{plain}/version")).await.is_err()
            || reqwest::get(format!("{plain}/version"))
                .await
                .is_ok_and(|r| r.status() == 400),
        "plain HTTP is not served"
    );

    // Anonymous: 401 except health, version and the CA.
    let anonymous = Api::anonymous(&server.url);
    for open in ["/healthz", "/livez", "/readyz", "/version", "/cacerts"] {
        assert_eq!(anonymous.text(open).await.0, 200, "{open}");
    }
    let (code, status) = anonymous.get("/api/v1/namespaces/default/pods").await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (401, Some("Unauthorized"))
    );
    let forged = Api::with_token(
        &server.url,
        None,
        "abcdefgh.0123456789abcdefghijklmnopqrstuv",
    );
    assert_eq!(forged.get("/api/v1/pods").await.0, 401);

    // Joining: the right token works, and the credential is kept (0600) for restarts.
    let token = server.node_token();
    let nodes_dir = dir.path().join("nodes");
    let edge1 = agent(&server, "edge-1", &nodes_dir, &token);
    let _edge2 = agent(&server, "edge-2", &nodes_dir, &token);
    let credential = nodes_dir.join("edge-1/credential.kubeconfig");
    assert_eq!(mode(&credential), 0o600);
    drop(edge1);
    let (restarted, _) = Process::start(
        &[
            "agent",
            "--name",
            "edge-1",
            "--data-dir",
            nodes_dir.join("edge-1").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "agent:",
    );
    let _edge1 = restarted;

    // A wrong secret, a server whose CA is not the one pinned, a name already taken.
    let (id_secret, ca_hash) = {
        let (pin, cred) = token.split_once("::").unwrap();
        (cred.to_string(), pin.trim_start_matches("K10").to_string())
    };
    let wrong_secret = format!(
        "K10{ca_hash}::{}.{}",
        id_secret.split('.').next().unwrap(),
        "x".repeat(32)
    );
    let other_ca = format!("K10{}::{id_secret}", "0".repeat(64));
    let d = nodes_dir.join("intruder");
    let d = d.to_str().unwrap();
    let join = |t: &str, name: &str| {
        skiff(&[
            "agent",
            "--server",
            &server.url,
            "--token",
            t,
            "--name",
            name,
            "--data-dir",
            d,
            "--listen",
            "127.0.0.1:0",
        ])
    };
    let (ok, _, err) = join(&wrong_secret, "intruder");
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    let (ok, _, err) = join(&other_ca, "intruder");
    assert!(
        !ok && err.contains("refusing to join") && err.contains(&ca_hash),
        "{err}"
    );
    let (ok, _, err) = join(&token, "edge-2");
    assert!(!ok && err.contains("already has a credential"), "{err}");
    assert!(!Path::new(d).join("credential.kubeconfig").exists());

    // Node restriction: a node reaches its own objects and what its pods reference.
    let ticker = admin.upload(workload("ticker.wasm")).await;
    for (name, node) in [("s1", "edge-1"), ("s2", "edge-2")] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"k": "v"}});
        assert_eq!(
            admin
                .post("/api/v1/namespaces/default/secrets", &secret)
                .await
                .0,
            201
        );
        let pod = pod_using_secret(&format!("p-{node}"), node, &ticker, name);
        assert_eq!(
            admin.post("/api/v1/namespaces/default/pods", &pod).await.0,
            201
        );
    }
    eventually("edge-1 runs its pod", WAIT, || {
        let admin = admin.clone();
        async move {
            let (_, p) = admin.get("/api/v1/namespaces/default/pods/p-edge-1").await;
            (p["status"]["phase"] == "Running").then_some(())
        }
    })
    .await;
    let n1 = node_api(&nodes_dir, "edge-1");
    let ns = "/api/v1/namespaces/default";
    assert_eq!(n1.get(&format!("{ns}/secrets/s1")).await.0, 200);
    let (code, status) = n1.get(&format!("{ns}/secrets/s2")).await;
    assert_eq!((code, status["reason"].as_str()), (403, Some("Forbidden")));
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains(r#"User "system:node:edge-1" cannot get resource "secrets""#),
        "{status}"
    );
    let label = r#"{"metadata":{"labels":{"touched":"yes"}}}"#;
    let merge = "application/merge-patch+json";
    assert_eq!(n1.patch("/api/v1/nodes/edge-1", merge, label).await.0, 200);
    assert_eq!(n1.patch("/api/v1/nodes/edge-2", merge, label).await.0, 403);
    assert_eq!(
        n1.patch(&format!("{ns}/pods/p-edge-2/status"), merge, "{}")
            .await
            .0,
        403
    );
    assert_eq!(n1.get(&format!("{ns}/pods/p-edge-1")).await.0, 200);
    assert_eq!(n1.get("/api/v1/pods").await.0, 403, "only its own pods");
    assert_eq!(
        n1.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1")
            .await
            .0,
        200
    );
    assert_eq!(
        n1.post(
            &format!("{ns}/configmaps"),
            &common::configmap("x", json!({}))
        )
        .await
        .0,
        403
    );
    assert_eq!(n1.get("/apis/apps/v1/deployments").await.0, 403);

    // A viewer reads everything but Secrets, and writes nothing.
    let (ok, out, err) = skiff(&[
        "token",
        "create",
        "--role",
        "viewer",
        "--description",
        "dashboards",
        "--kubeconfig",
        kc,
    ]);
    assert!(ok, "{err}");
    let viewer_token = out.trim().to_string();
    let ca = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .unwrap()
        .trim()
        .to_string();
    let viewer = Api::with_token(&server.url, Some(&ca), &viewer_token);
    assert_eq!(viewer.get(&format!("{ns}/pods")).await.0, 200);
    assert_eq!(viewer.get("/api/v1/nodes").await.0, 200);
    assert_eq!(viewer.get(&format!("{ns}/secrets")).await.0, 403);
    assert_eq!(viewer.get(&format!("{ns}/secrets/s1")).await.0, 403);
    assert_eq!(
        viewer
            .post(
                &format!("{ns}/configmaps"),
                &common::configmap("v", json!({}))
            )
            .await
            .0,
        403
    );

    // Metrics: the server's for admin and viewer; an agent's through the node proxy
    // path (its tunnel), with no inbound port; none for nodes or anonymous users.
    let (code, text) = admin.text("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        text.contains(r#"apiserver_request_total{verb="POST",resource="pods",code="201"}"#)
            && text.contains("apiserver_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains(r#"apiserver_request_total{verb="LIST",resource="pods",code="403"}"#),
        "refused requests are counted: {text}"
    );
    assert_eq!(viewer.text("/metrics").await.0, 200);
    assert_eq!(n1.text("/metrics").await.0, 403);
    assert_eq!(anonymous.text("/metrics").await.0, 401);
    let (code, text) = admin.text("/api/v1/nodes/edge-2/proxy/metrics").await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains("skiff_agent_running_instances"), "{text}");
    assert_eq!(
        viewer.text("/api/v1/nodes/edge-2/proxy/metrics").await.0,
        200
    );
    assert_eq!(n1.text("/api/v1/nodes/edge-2/proxy/metrics").await.0, 403);

    // `skiff token list` shows roles and nodes, never secrets.
    let (ok, out, err) = skiff(&["token", "list", "--kubeconfig", kc]);
    assert!(ok, "{err}");
    assert!(
        out.contains("viewer") && out.contains("dashboards"),
        "{out}"
    );
    assert!(out.contains("edge-1") && out.contains("edge-2"), "{out}");
    assert!(!out.contains(viewer_token.split('.').nth(1).unwrap()));
    let id_of = |needle: &str| {
        out.lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap()
            .to_string()
    };
    let (viewer_id, edge1_id) = (id_of("dashboards"), id_of("edge-1"));

    // Revocation works on the next request.
    for id in [&viewer_id, &edge1_id] {
        let (ok, _, err) = skiff(&["token", "revoke", id, "--kubeconfig", kc]);
        assert!(ok, "{err}");
    }
    assert_eq!(viewer.get(&format!("{ns}/pods")).await.0, 401);
    assert_eq!(n1.get("/api/v1/nodes/edge-1").await.0, 401);
    let (ok, _, err) = skiff(&["token", "revoke", &viewer_id, "--kubeconfig", kc]);
    assert!(!ok && err.contains("no token"), "{err}");

    // A joined node's credential joins nothing, and kubectl prints a Forbidden cleanly.
    let n2 = node_api(&nodes_dir, "edge-2");
    let (code, _) = n2.post("/skiff/v1/join", &json!({"node": "edge-3"})).await;
    assert_eq!(code, 403);
    let out = std::process::Command::new("kubectl")
        .args(["get", "secrets", "--kubeconfig"])
        .arg(nodes_dir.join("edge-2/credential.kubeconfig"))
        .output()
        .expect("kubectl is installed by scripts/test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Error from server (Forbidden)") && err.contains("system:node:edge-2"),
        "{err}"
    );
}

/// NodeRestriction for labels: with its own credential a node may set the labels a
/// kubelet may and labels outside the reserved namespaces, but neither add, change nor
/// remove the ones that make a nodeSelector or the control plane trust it; admins may.
async fn a_node_may_not_label_itself_into_trust() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let admin = server.api();
    let token = server.node_token();
    let nodes_dir = dir.path().join("nodes");
    let edge = agent(&server, "edge-1", &nodes_dir, &token);
    let node = node_api(&nodes_dir, "edge-1");
    let path = "/api/v1/nodes/edge-1";
    let merge = "application/merge-patch+json";
    let label = |key: &str, value: Value| json!({"metadata": {"labels": {key: value}}}).to_string();

    let refused = [
        ("node-restriction.kubernetes.io/x", json!("1")),
        ("node-role.kubernetes.io/control-plane", json!("")),
        ("skiff.dev/autonomous", json!("true")),
    ];
    for (key, value) in &refused {
        let (code, status) = node.patch(path, merge, &label(key, value.clone())).await;
        assert_eq!(
            (code, status["reason"].as_str()),
            (403, Some("Forbidden")),
            "{key}: {status}"
        );
        let message = status["message"].as_str().unwrap();
        assert_eq!(
            message,
            format!(r#"nodes "edge-1" is forbidden: is not allowed to modify labels: {key}"#),
        );
    }
    for (key, value) in [
        ("topology.kubernetes.io/zone", "z1"),
        ("example.com/foo", "bar"),
    ] {
        let (code, status) = node.patch(path, merge, &label(key, json!(value))).await;
        assert_eq!(code, 200, "{key}: {status}");
        assert_eq!(status["metadata"]["labels"][key], value);
    }

    // An admin may set them all; the node keeps them, may write its Node back as it
    // is, but may neither change nor remove them.
    for (key, value) in &refused {
        let (code, status) = admin.patch(path, merge, &label(key, value.clone())).await;
        assert_eq!(code, 200, "{key}: {status}");
    }
    let (code, mut current) = node.get(path).await;
    assert_eq!(code, 200);
    current["metadata"]["labels"]["example.com/foo"] = json!("baz");
    let (code, status) = node.put(path, &current).await;
    assert_eq!(code, 200, "{status}");
    let (code, status) = node
        .patch(path, merge, &label("skiff.dev/autonomous", Value::Null))
        .await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .ends_with("skiff.dev/autonomous"),
        "{status}"
    );
    let (_, mut current) = node.get(path).await;
    current["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] = json!("x");
    assert_eq!(node.put(path, &current).await.0, 403, "a change by update");
    let json_patch =
        r#"[{"op":"remove","path":"/metadata/labels/node-restriction.kubernetes.io~1x"}]"#;
    assert_eq!(
        node.patch(path, "application/json-patch+json", json_patch)
            .await
            .0,
        403,
        "a removal by JSON patch"
    );
    let (_, now) = admin.get(path).await;
    for (key, value) in &refused {
        assert_eq!(
            &now["metadata"]["labels"][key], value,
            "{key} is as the admin set it"
        );
    }
    // A node cannot register itself with them either.
    let (code, status) = node
        .post(
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "edge-1", "labels": {"skiff.dev/autonomous": "true"}}}),
        )
        .await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"].as_str().unwrap().ends_with(
            r#"node "edge-1" is not allowed to set the following labels: skiff.dev/autonomous"#
        ),
        "{status}"
    );
    // Its status writes go on, and a restarted agent registers again (its own labels
    // only) with the admin's labels in place.
    let status = json!({"status": {"conditions": now["status"]["conditions"]}}).to_string();
    assert_eq!(
        node.patch(&format!("{path}/status"), merge, &status)
            .await
            .0,
        200
    );
    drop(edge);
    let (_restarted, _) = Process::start(
        &[
            "agent",
            "--name",
            "edge-1",
            "--data-dir",
            nodes_dir.join("edge-1").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        "agent:",
    );
    let (_, after) = admin.get(path).await;
    assert_eq!(after["metadata"]["labels"]["skiff.dev/autonomous"], "true");

    // An agent asked to label itself so is refused at registration, and says why.
    let d = nodes_dir.join("edge-2");
    let (ok, _, err) = skiff(&[
        "agent",
        "--server",
        &server.url,
        "--token",
        &token,
        "--name",
        "edge-2",
        "--data-dir",
        d.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--node-label",
        "node-role.kubernetes.io/control-plane=",
    ]);
    assert!(
        !ok && err.contains(
            "not allowed to set the following labels: node-role.kubernetes.io/control-plane"
        ),
        "{err}"
    );
}

/// Every resource that serves `deletecollection`: (path of its collection in namespace
/// NS, or at the cluster scope), from discovery as a generic client finds them.
async fn collections(admin: &Api) -> Vec<(String, bool)> {
    let mut group_versions = vec!["/api/v1".to_string()];
    let (_, groups) = admin.get("/apis").await;
    for g in groups["groups"].as_array().unwrap() {
        for v in g["versions"].as_array().unwrap() {
            group_versions.push(format!("/apis/{}", v["groupVersion"].as_str().unwrap()));
        }
    }
    let mut out = Vec::new();
    for gv in group_versions {
        let (code, list) = admin.get(&gv).await;
        assert_eq!(code, 200, "{gv}: {list}");
        for r in list["resources"].as_array().unwrap() {
            let name = r["name"].as_str().unwrap();
            let verbs = r["verbs"].as_array().unwrap();
            if name.contains('/') || !verbs.iter().any(|v| v == "deletecollection") {
                continue;
            }
            out.push((format!("{gv}/{name}"), r["namespaced"] == true));
        }
    }
    out
}

/// What a generic API fuzzer did to an early cluster: a `deletecollection` of every
/// kind in every namespace, as admin (the Secrets in kube-system among them). The
/// admin's and the nodes' identities are not objects, so afterwards the admin still
/// works, the agents register again and run new pods, and the join token still joins.
async fn deleting_every_object_locks_nobody_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let admin = server.api();
    let token = server.node_token();
    let nodes_dir = dir.path().join("nodes");
    let agent_fast = |name: &str| {
        let d = nodes_dir.join(name);
        Process::start(
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
                "1s",
            ],
            "agent:",
        )
        .0
    };
    let _agents = [agent_fast("edge-1"), agent_fast("edge-2")];
    let ticker = admin.upload(workload("ticker.wasm")).await;
    let run_on = |name: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": ticker, "args": ["1s"]}]}})
    };
    let running = |name: String| {
        let admin = admin.clone();
        async move {
            let (_, p) = admin
                .get(&format!("/api/v1/namespaces/default/pods/{name}"))
                .await;
            (p["status"]["phase"] == "Running").then_some(())
        }
    };
    for node in ["edge-1", "edge-2"] {
        let (code, body) = admin
            .post(
                "/api/v1/namespaces/default/pods",
                &run_on(&format!("before-{node}"), node),
            )
            .await;
        assert_eq!(code, 201, "{body}");
        eventually("a pod runs before", WAIT, || {
            running(format!("before-{node}"))
        })
        .await;
    }

    // The exact command of the report first, then everything else.
    let out = std::process::Command::new("kubectl")
        .args([
            "delete",
            "secrets",
            "--all",
            "-n",
            "kube-system",
            "--kubeconfig",
        ])
        .arg(server.kubeconfig())
        .output()
        .expect("kubectl is installed by scripts/test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, namespaces) = admin.get("/api/v1/namespaces").await;
    let namespaces: Vec<String> = namespaces["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(namespaces.contains(&"kube-system".to_string()));
    let collections = collections(&admin).await;
    assert!(
        collections.iter().any(|(p, _)| p == "/api/v1/secrets")
            && collections.iter().any(|(p, _)| p == "/api/v1/nodes"),
        "{collections:?}"
    );
    for (path, namespaced) in &collections {
        let paths: Vec<String> = if *namespaced {
            let (prefix, plural) = path.rsplit_once('/').unwrap();
            namespaces
                .iter()
                .map(|ns| format!("{prefix}/namespaces/{ns}/{plural}"))
                .collect()
        } else {
            vec![path.clone()]
        };
        for p in paths {
            let (code, body) = admin.delete(&p, None).await;
            // The system namespaces may not be deleted: that is the one refusal.
            let protected = p == "/api/v1/namespaces" && code == 403;
            assert!(code == 200 || protected, "DELETE {p}: {code} {body}");
        }
    }

    // The admin still works.
    let (code, body) = admin
        .post(
            "/api/v1/namespaces/default/configmaps",
            &common::configmap("after", json!({})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (ok, out, err) = skiff(&[
        "token",
        "list",
        "--kubeconfig",
        server.kubeconfig().to_str().unwrap(),
    ]);
    assert!(
        ok && out.contains("edge-1") && out.contains("edge-2"),
        "{out}{err}"
    );

    // The agents register again, and run new pods.
    for node in ["edge-1", "edge-2"] {
        eventually("the node registered again, Ready", WAIT, || {
            let admin = admin.clone();
            async move {
                let (code, n) = admin.get(&format!("/api/v1/nodes/{node}")).await;
                let ready = n["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                (code == 200 && ready).then_some(())
            }
        })
        .await;
        let (code, body) = admin
            .post(
                "/api/v1/namespaces/default/pods",
                &run_on(&format!("after-{node}"), node),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    // The module was deleted with everything else: upload it again, as a user would.
    let again = admin.upload(workload("ticker.wasm")).await;
    assert_eq!(again, ticker);
    for node in ["edge-1", "edge-2"] {
        eventually("a new pod runs after", WAIT, || {
            running(format!("after-{node}"))
        })
        .await;
    }

    // The server's join token survived too: a new node joins with it.
    let _edge3 = agent_fast("edge-3");
    let (code, _) = admin.get("/api/v1/nodes/edge-3").await;
    assert_eq!(code, 200);
}

/// A node whose credential is revoked says so (log, `/readyz`, metric) and keeps
/// serving its pods; restarted without a token it refuses to start and says how to
/// join again; restarted with a new join token it joins again under its name, with the
/// same pods.
async fn a_revoked_node_says_so_and_joins_again_with_its_pods() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let admin = server.api();
    let kc = server.kubeconfig();
    let kc = kc.to_str().unwrap();
    let data = dir.path().join("edge-1");
    let log = dir.path().join("edge-1.log");
    let start = |token: Option<&str>, log: &Path| {
        let mut args = vec![
            "agent",
            "--name",
            "edge-1",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend(["--listen", "127.0.0.1:0", "--lease-interval", "1s"]);
        if let Some(token) = token {
            args.extend(["--server", &server.url, "--token", token]);
        }
        let (p, line) = Process::start_logged(&args, "agent:", "warn", log);
        let listen = line.rsplit(' ').next().unwrap().to_string();
        (p, format!("http://{listen}"))
    };
    let (agent, url) = start(Some(&server.node_token()), &log);
    let echo = admin.upload(workload("http-echo.wasm")).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "main", "image": echo}]}});
    assert_eq!(
        admin.post("/api/v1/namespaces/default/pods", &pod).await.0,
        201
    );
    let http = reqwest::Client::new();
    let serves = |url: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{url}/hi"))
                .header("x-skiff-pod", "default/web")
                .send()
                .await;
            r.is_ok_and(|r| r.status() == 200).then_some(())
        }
    };
    eventually("the pod serves", WAIT, || serves(url.clone())).await;
    let (_, before) = admin.get("/api/v1/namespaces/default/pods/web").await;
    let uid = before["metadata"]["uid"].clone();

    // Revoked: the agent says so within a lease interval, and serves on.
    let (ok, out, err) = skiff(&["token", "list", "--kubeconfig", kc]);
    assert!(ok, "{err}");
    let old_id = out
        .lines()
        .find(|l| l.contains("edge-1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let (ok, _, err) = skiff(&["token", "revoke", &old_id, "--kubeconfig", kc]);
    assert!(ok, "{err}");
    let readyz = eventually("the agent reports the refusal", WAIT, || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(format!("{url}/readyz")).send().await.ok()?;
            (r.status() == 503).then_some(r.text().await.ok()?)
        }
    })
    .await;
    assert!(
        readyz.contains("revoked") && readyz.contains("--token"),
        "{readyz}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ERROR") && logged.contains("refuses the credential of node edge-1"),
        "{logged}"
    );
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("skiff_agent_credential_refused 1"),
        "{metrics}"
    );
    assert!(
        serves(url.clone()).await.is_some(),
        "the pod serves on while revoked"
    );
    agent.terminate(WAIT);

    // Without a join token it cannot start, and says what to do.
    let (ok, _, err) = skiff(&[
        "agent",
        "--name",
        "edge-1",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        !ok && err.contains("revoked") && err.contains("--token"),
        "{err}"
    );

    // With a new join token it joins again under its name, with the same pod.
    let (ok, new_token, err) = skiff(&[
        "token",
        "create",
        "--description",
        "rejoin",
        "--kubeconfig",
        kc,
    ]);
    assert!(ok, "{err}");
    let (_agent, url) = start(Some(new_token.trim()), &dir.path().join("edge-1.again.log"));
    eventually("the pod serves again", WAIT, || serves(url.clone())).await;
    let (_, after) = admin.get("/api/v1/namespaces/default/pods/web").await;
    assert_eq!(after["metadata"]["uid"], uid, "the same pod, not a new one");
    assert_eq!(after["status"]["phase"], "Running");
    let (_, out, _) = skiff(&["token", "list", "--kubeconfig", kc]);
    let new_id = out
        .lines()
        .find(|l| l.contains("edge-1"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    assert_ne!(new_id, old_id, "a new credential");
    let ready = http.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}
