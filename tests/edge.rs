//! Edge nodes on separate hosts: network namespaces for a server and two agents (see
//! common/netns.rs). The agents listen only on their own loopback, so nothing can dial
//! them: logs and app traffic reach them through the tunnels they keep open. One agent
//! is partitioned by taking its link down: its pods keep serving locally, the
//! Deployment's pods are replaced on the other node, and when the link comes back the
//! agent stops what was deleted and leaves what did not change running.

mod common;

use std::time::Duration;

use base64::Engine;
use common::netns::Topology;
use common::{Api, Process, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "/api/v1/namespaces/default";

/// Fields drop in order: the processes go before their namespaces and files.
struct Cluster {
    agents: Vec<(Process, u16)>,
    _server: Process,
    api: Api,
    gateway: String,
    topology: Topology,
    dir: tempfile::TempDir,
}

fn cluster() -> Cluster {
    let topology = Topology::new(2);
    let dir = tempfile::tempdir().unwrap();
    let server_dir = dir.path().join("server");
    let mut args: Vec<String> = [
        "server",
        "--listen",
        "0.0.0.0:6443",
        "--gateway",
        "0.0.0.0:8080",
        "--node-monitor-grace",
        "3s",
        "--default-toleration-seconds",
        "2",
        "--data-dir",
        server_dir.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for ip in std::iter::once(&topology.test_link.server_ip)
        .chain(topology.agents.iter().map(|(_, l)| &l.server_ip))
    {
        args.extend(["--tls-san".to_string(), ip.clone()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, _) = Process::start_in(Some(&topology.server_ns), &refs, "api:");
    let ca = std::fs::read(server_dir.join("tls/ca.crt")).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let admin = std::fs::read_to_string(server_dir.join("admin-token")).unwrap();
    let api = Api::with_token(
        &format!("https://{}:6443", topology.test_link.server_ip),
        Some(&ca),
        admin.trim(),
    );
    let token = std::fs::read_to_string(server_dir.join("node-token")).unwrap();
    let agents = (0..topology.agents.len())
        .map(|i| start_agent(&topology, dir.path(), i, Some(token.trim())))
        .collect();
    let gateway = format!("http://{}:8080", topology.test_link.server_ip);
    Cluster {
        topology,
        dir,
        _server: server,
        agents,
        api,
        gateway,
    }
}

/// Starts agent `edge-I` in its namespace (joining with `token` the first time);
/// returns it with its listener's port.
fn start_agent(
    topology: &Topology,
    dir: &std::path::Path,
    i: usize,
    token: Option<&str>,
) -> (Process, u16) {
    let (ns, link) = &topology.agents[i];
    let data = dir.join(format!("edge-{i}"));
    let server = format!("https://{}:6443", link.server_ip);
    let name = format!("edge-{i}");
    let mut args = vec![
        "agent",
        "--server",
        &server,
        "--name",
        &name,
        "--data-dir",
        data.to_str().unwrap(),
        // Its own loopback: no other host can connect to it.
        "--listen",
        "127.0.0.1:0",
        "--lease-interval",
        "500ms",
    ];
    if let Some(token) = token {
        args.extend(["--token", token]);
    }
    let (p, rest) = Process::start_in(Some(ns), &args, "agent:");
    let port = rest.rsplit(':').next().unwrap().parse().unwrap();
    (p, port)
}

/// `curl` run inside network namespace `ns`: (HTTP code, body).
fn curl_in(ns: &str, args: &[&str]) -> (u16, String) {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

async fn pods(api: &Api, selector: &str) -> Vec<Value> {
    let (_, list) = api
        .get(&format!("{NS}/pods?labelSelector={selector}"))
        .await;
    list["items"].as_array().cloned().unwrap_or_default()
}

fn running_on(pod: &Value) -> Option<&str> {
    (pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null())
        .then(|| pod["spec"]["nodeName"].as_str())
        .flatten()
}

/// `skiff agent` run to completion inside `ns`: (success, stderr).
fn join_in(ns: &str, server: &str, token: &str, dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_skiff")])
        .args([
            "agent", "--server", server, "--token", token, "--name", "intruder",
        ])
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn outbound_only_agents_serve_through_tunnels_and_ride_out_a_partition() {
    let mut c = cluster();
    let api = &c.api.clone();

    // Joining across hosts: a wrong secret is refused, and so is a server whose CA is
    // not the one the token pins (the agents of `cluster()` joined with the right one).
    let token = std::fs::read_to_string(c.dir.path().join("server/node-token")).unwrap();
    let (pin, credential) = token.trim().split_once("::").unwrap();
    let (ns1, link1) = &c.topology.agents[1];
    let server1 = format!("https://{}:6443", link1.server_ip);
    let id = credential.split('.').next().unwrap();
    let intruder = c.dir.path().join("intruder");
    let (ok, err) = join_in(
        ns1,
        &server1,
        &format!("{pin}::{id}.{}", "x".repeat(32)),
        &intruder,
    );
    assert!(!ok && err.contains("Unauthorized"), "{err}");
    let (ok, err) = join_in(
        ns1,
        &server1,
        &format!("K10{}::{credential}", "f".repeat(64)),
        &intruder,
    );
    assert!(!ok && err.contains("refusing to join"), "{err}");
    assert!(!intruder.join("credential.kubeconfig").exists());
    eventually("both nodes Ready", WAIT, || async move {
        let (_, nodes) = api.get("/api/v1/nodes").await;
        let ready = nodes["items"]
            .as_array()?
            .iter()
            .filter(|n| {
                n["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count();
        (ready == 2).then_some(())
    })
    .await;

    // A Deployment spread over both nodes, an App on both, and a pod pinned to edge-0
    // that tolerates a lost node for ever (so it must outlive the partition).
    let ticker = api.upload(workload("ticker.wasm")).await;
    let hello = api.upload(workload("http-hello.wasm")).await;
    let template = |name: &str| {
        json!({"metadata": {"labels": {"app": name}}, "spec": {"containers": [
            {"name": "main", "image": ticker, "args": ["100ms"]}]}})
    };
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tick"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "tick"}},
                 "template": template("tick")}});
    assert_eq!(
        api.post("/apis/apps/v1/namespaces/default/deployments", &deployment)
            .await
            .0,
        201
    );
    let app = json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "hello"},
        "spec": {"module": hello, "replicas": 2}});
    assert_eq!(
        api.post("/apis/skiff.dev/v1/namespaces/default/apps", &app)
            .await
            .0,
        201
    );
    let steady = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "steady", "labels": {"app": "steady"}},
        "spec": {"nodeName": "edge-0",
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
            "containers": [{"name": "main", "image": ticker, "args": ["100ms"]}]}});
    assert_eq!(api.post(&format!("{NS}/pods"), &steady).await.0, 201);
    eventually(
        "tick on both nodes, hello ready, steady running",
        WAIT,
        || async move {
            let ticks = pods(api, "app=tick").await;
            let mut nodes: Vec<&str> = ticks.iter().filter_map(running_on).collect();
            nodes.sort();
            let (_, app) = api
                .get("/apis/skiff.dev/v1/namespaces/default/apps/hello")
                .await;
            let (_, s) = api.get(&format!("{NS}/pods/steady")).await;
            (nodes == ["edge-0", "edge-1"]
                && app["status"]["readyReplicas"] == 2
                && s["status"]["phase"] == "Running")
                .then_some(())
        },
    )
    .await;

    // Logs and app traffic reach the agents only through their tunnels.
    let (_, log) = api.text(&format!("{NS}/pods/steady/log")).await;
    assert!(log.contains("tick"), "{log}");
    let http = reqwest::Client::new();
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let body = http
            .get(format!("{}/default/hello/", c.gateway))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if let Some(node) = body
            .split_whitespace()
            .find_map(|w| w.strip_prefix("node="))
        {
            served_by.insert(node.to_string());
        }
    }
    assert_eq!(
        served_by.into_iter().collect::<Vec<_>>(),
        ["edge-0", "edge-1"]
    );
    let steady_before = api.get(&format!("{NS}/pods/steady")).await.1;
    let started =
        steady_before["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
    let hello_on_0 = pods(api, "app.skiff.dev/name=hello")
        .await
        .into_iter()
        .find(|p| running_on(p) == Some("edge-0"))
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .unwrap();

    // Partition edge-0.
    c.topology.set_agent_link(0, false);
    let (edge0_ns, _) = &c.topology.agents[0];
    let local = format!("http://127.0.0.1:{}/", c.agents[0].1);
    let pod_header = format!("x-skiff-pod: default/{hello_on_0}");
    // Its pods keep serving on its own listener.
    let (code, body) = curl_in(edge0_ns, &["-H", &pod_header, &local]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("node=edge-0"), "{body}");
    // The control plane gives up on it and the Deployment's pods come back on edge-1.
    eventually("tick replaced on edge-1", WAIT, || async move {
        let ticks = pods(api, "app=tick").await;
        let on: Vec<&str> = ticks.iter().filter_map(running_on).collect();
        (on == ["edge-1", "edge-1"]).then_some(())
    })
    .await;
    // Meanwhile, still serving locally.
    let (code, _) = curl_in(edge0_ns, &["-H", &pod_header, &local]);
    assert_eq!(code, 200);

    // The agent dies and comes back while still cut off: its pods come back from its
    // local cache (specs, modules, compiled code), with no control plane to ask.
    let (old, _) = c.agents.remove(0);
    old.kill9();
    let (agent, port) = start_agent(&c.topology, c.dir.path(), 0, None);
    c.agents.insert(0, (agent, port));
    let local = format!("http://127.0.0.1:{port}/");
    eventually("the cached pods serve again on edge-0", WAIT, || {
        let (ns, local, header) = (edge0_ns.clone(), local.clone(), pod_header.clone());
        async move {
            let (code, body) = curl_in(&ns, &["-H", &header, &local]);
            (code == 200 && body.contains("node=edge-0")).then_some(())
        }
    })
    .await;

    // A pod bound to edge-0 while it is cut off waits for the link.
    let late = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"},
        "spec": {"nodeName": "edge-0",
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}],
            "containers": [{"name": "main", "image": ticker, "args": ["100ms"]}]}});
    assert_eq!(api.post(&format!("{NS}/pods"), &late).await.0, 201);

    // The link comes back: the agent stops what was deleted, starts what is new, and
    // keeps what did not change.
    c.topology.set_agent_link(0, true);
    eventually("edge-0 Ready again", WAIT, || async move {
        let (_, n) = api.get("/api/v1/nodes/edge-0").await;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    })
    .await;
    let hello_gone = hello_on_0.clone();
    eventually(
        "the deleted hello replica stops serving on edge-0",
        WAIT,
        || {
            let (ns, local, hello_gone) = (edge0_ns.clone(), local.clone(), hello_gone.clone());
            async move {
                let header = format!("x-skiff-pod: default/{hello_gone}");
                let (code, _) = curl_in(&ns, &["-H", &header, &local]);
                (code != 200).then_some(())
            }
        },
    )
    .await;
    eventually("the pod bound while cut off runs", WAIT, || async move {
        let (_, p) = api.get(&format!("{NS}/pods/late")).await;
        (p["status"]["phase"] == "Running").then_some(())
    })
    .await;
    // The status the restarted agent queued while cut off reaches the API: the steady
    // pod runs since the offline restart.
    let restarted = eventually("the queued status of steady arrives", WAIT, || {
        let started = started.clone();
        async move {
            let (_, s) = api.get(&format!("{NS}/pods/steady")).await;
            let at = s["status"]["containerStatuses"][0]["state"]["running"]["startedAt"].clone();
            (at.is_string() && at != started).then_some(at)
        }
    })
    .await;
    // Reconnecting restarted nothing that did not change: one run since then, and the
    // start time the API has is the offline one.
    let (_, log) = api.text(&format!("{NS}/pods/steady/log")).await;
    assert_eq!(
        log.lines().filter(|l| *l == "tick 1").count(),
        1,
        "one run of the guest since the agent restarted: {log}"
    );
    let (_, s) = api.get(&format!("{NS}/pods/steady")).await;
    let status = &s["status"]["containerStatuses"][0];
    // One restart: the instance died with the agent. None for the reconnection.
    assert_eq!(status["restartCount"], 1, "{s}");
    assert_eq!(status["state"]["running"]["startedAt"], restarted);
    let ticks: Vec<u64> = log
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "the guest ran on without a break: {ticks:?}"
    );
}
