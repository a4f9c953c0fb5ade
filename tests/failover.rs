//! End to end: agents and client verbs with several API servers. An agent joins
//! through whichever server answers, learns the others from the `default/kubernetes`
//! Endpoints, keeps a tunnel to each, and rides out the loss of one; a client verb skips
//! a dead server in its kubeconfig. Real binary, real etcd, loopback sockets.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Api, Process, ServerProcess, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// A loopback URL nothing listens on: connections are refused, as by a dead server.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("https://{}", listener.local_addr().unwrap())
}

/// `skiff agent` named `name`, joining through `servers` (comma-separated) with
/// `token`, with a fast Lease.
fn agent(servers: &str, token: &str, name: &str, dir: &Path) -> Process {
    let data = dir.join(name);
    let (process, _) = Process::start(
        &[
            "agent",
            "--server",
            servers,
            "--token",
            token,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--lease-interval",
            "200ms",
        ],
        "agent:",
    );
    process
}

/// Two servers of one cluster on the shared etcd: the first, and one that joined it.
fn two_servers(test: &str, dir: &Path) -> (ServerProcess, ServerProcess) {
    let flags = common::etcd::server_flags(test);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let a = ServerProcess::start(&dir.join("a"), &flags);
    let token = std::fs::read_to_string(dir.join("a/server-token")).unwrap();
    let mut joining = flags.clone();
    joining.extend(["--join", &a.url, "--token", token.trim()]);
    let b = ServerProcess::start(&dir.join("b"), &joining);
    (a, b)
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn node_ready(api: &Api, name: &str) {
    let path = format!("/api/v1/nodes/{name}");
    eventually(&format!("node {name} Ready"), WAIT, || {
        let (api, path) = (api.clone(), path.clone());
        async move { is_ready(&api.get(&path).await.1).then_some(()) }
    })
    .await;
}

/// The API server URLs the cluster publishes.
async fn published(api: &Api) -> Vec<String> {
    let (_, endpoints) = api
        .get("/api/v1/namespaces/default/endpoints/kubernetes")
        .await;
    let mut urls = skiff_api::client::endpoints_urls(&endpoints);
    urls.sort();
    urls
}

/// The node's Lease's renewTime, as `api` reads it.
async fn renewed(api: &Api, node: &str) -> Option<String> {
    let (code, lease) = api
        .get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        ))
        .await;
    (code == 200).then(|| lease["spec"]["renewTime"].as_str().map(str::to_string))?
}

/// The logs of `pod`, once they hold a tick, read through `api`.
async fn ticks_through(api: &Api, pod: &str) -> String {
    let path = format!("/api/v1/namespaces/default/pods/{pod}/log");
    eventually(&format!("{pod}'s ticks through {}", api.base), WAIT, || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (code, logs) = api.text(&path).await;
            (code == 200 && logs.contains("tick ")).then_some(logs)
        }
    })
    .await
}

#[tokio::test]
async fn an_agent_joins_through_the_first_server_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(
        &dir.path().join("server"),
        &common::etcd::server_flags("join-any")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let dead = dead_url();
    let _agent = agent(
        &format!("{dead},{}", server.url),
        &server.node_token(),
        "edge-1",
        dir.path(),
    );
    node_ready(&server.api(), "edge-1").await;

    // The credential keeps both servers, the one that answered first (for kubectl).
    let credential = dir.path().join("edge-1/credential.kubeconfig");
    let kc = kube::config::Kubeconfig::read_from(&credential).unwrap();
    let cluster = kc.clusters[0].cluster.clone().unwrap();
    assert_eq!(cluster.server.as_deref(), Some(server.url.as_str()));
    let listed = cluster
        .extensions
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == skiff_api::client::SERVERS_EXTENSION)
        .expect("the server list")
        .extension;
    assert_eq!(listed["servers"], json!([server.url, dead]));
}

#[tokio::test]
async fn an_agent_learns_every_server_tunnels_to_each_and_rides_out_losing_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_servers("learn", dir.path());
    let (api_a, api_b) = (a.api(), b.api());
    let mut both = vec![a.url.clone(), b.url.clone()];
    both.sort();
    eventually("both servers published", WAIT, || {
        let (api, both) = (api_a.clone(), both.clone());
        async move { (published(&api).await == both).then_some(()) }
    })
    .await;

    // Told only of A, the agent finds B in the Endpoints and opens a tunnel to it:
    // B reaches the node's own endpoints, which only a tunnel carries.
    let _agent = agent(&a.url, &a.node_token(), "edge-1", dir.path());
    node_ready(&api_a, "edge-1").await;
    eventually("B reaching the node through its tunnel", WAIT, || {
        let api = api_b.clone();
        async move {
            let (code, body) = api.text("/api/v1/nodes/edge-1/proxy/healthz").await;
            (code == 200 && body == "ok").then_some(())
        }
    })
    .await;
    let ticker = api_b.upload(workload("ticker.wasm")).await;
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ticker"},
        "spec": {"nodeName": "edge-1", "containers": [{"name": "main", "image": ticker, "args": ["100ms"]}]},
    });
    let (code, created) = api_b.post("/api/v1/namespaces/default/pods", &pod).await;
    assert_eq!(code, 201, "{created}");
    ticks_through(&api_b, "ticker").await;

    // Without A, the agent carries on through B: its Lease keeps being renewed, the
    // node stays Ready, and its logs still come through B.
    a.kill9();
    let mut renewals = vec![renewed(&api_b, "edge-1").await];
    let deadline = std::time::Instant::now() + WAIT;
    while renewals.len() <= 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Lease was not renewed through B: {renewals:?}"
        );
        let now = renewed(&api_b, "edge-1").await;
        if renewals.last() != Some(&now) {
            renewals.push(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, node) = api_b.get("/api/v1/nodes/edge-1").await;
    assert!(is_ready(&node), "{node}");
    let ticks = |logs: &str| logs.lines().filter(|l| l.starts_with("tick ")).count();
    let before = ticks(&ticks_through(&api_b, "ticker").await);
    eventually("new ticks through B", WAIT, || {
        let api = api_b.clone();
        async move { (ticks(&ticks_through(&api, "ticker").await) > before).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn client_verbs_skip_a_dead_server_in_the_kubeconfig() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let text = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let dead = dead_url();
    let comma = dir.path().join("comma.kubeconfig");
    std::fs::write(
        &comma,
        text.replace(
            &format!("server: {}", server.url),
            &format!("server: {dead},{}", server.url),
        ),
    )
    .unwrap();
    let skiff = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(args)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "skiff {args:?}: {stdout}{stderr}");
        stdout
    };
    let apps = skiff(&["apps", "--kubeconfig", comma.to_str().unwrap()]);
    assert!(apps.contains("No apps found."), "{apps}");
    // A join token is pinned to the CA the plain HTTP client fetches: it tries the
    // servers in order too.
    let join = skiff(&[
        "token",
        "create",
        "--role",
        "join",
        "--kubeconfig",
        comma.to_str().unwrap(),
    ]);
    assert!(join.trim().starts_with("K10"), "{join}");
}
