//! `kubectl port-forward` (the pinned kubectl that scripts/test installs) to an App's
//! pod, Service and Deployment: over the WebSocket kubectl opens by default, and over
//! the SPDY upgrade it falls back to; the forwarded port reaches the pod's HTTP handler
//! through the node's tunnel, several requests on one connection and several
//! connections at once.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Api, workload};
use serde_json::Value;

const APPS: &str = "/apis/skiff.dev/v1/namespaces/default/apps";
const WAIT: Duration = Duration::from_secs(30);

/// A running `kubectl port-forward` and the local port it listens on.
struct Forward {
    child: Child,
    port: u16,
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kubectl port-forward TARGET :PORT` and reads the local port it chose from
/// its "Forwarding from 127.0.0.1:N -> PORT" line.
async fn forward(kubeconfig: &Path, target: &str, port: u16, websockets: bool) -> Forward {
    let mut child = Command::new("kubectl")
        .args(["port-forward", target, &format!(":{port}")])
        .env("KUBECONFIG", kubeconfig)
        // kubectl's own switch between its WebSocket tunnel and the SPDY upgrade.
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed by scripts/test");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT))
        .await
        .unwrap();
    let Ok(line) = line else {
        let _ = child.kill();
        panic!(
            "kubectl port-forward {target} printed no forwarding line: {}",
            errors.join().unwrap()
        );
    };
    let local = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected kubectl output: {line}"));
    Forward { child, port: local }
}

async fn hello_through(http: &reqwest::Client, port: u16, path: &str) -> String {
    let response = http
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET through the forward: {e}"));
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

async fn app_pod(api: &Api, app: &str) -> Value {
    let (_, list) = api
        .get(&format!(
            "/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3D{app}"
        ))
        .await;
    list["items"][0].clone()
}

/// The cluster's kubeconfig with a new viewer token in place of the admin's.
fn viewer_kubeconfig(kubeconfig: &Path) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["token", "create", "--role", "viewer", "--kubeconfig"])
        .arg(kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let viewer: String = text
        .lines()
        .map(|l| match l.split_once("token:") {
            Some((indent, _)) => format!("{indent}token: {token}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let path = kubeconfig.with_file_name("viewer-kubeconfig");
    std::fs::write(&path, viewer).unwrap();
    path
}

#[tokio::test]
async fn kubectl_port_forward_reaches_an_apps_handler() {
    let (dir, _process, api) = common::dev_cluster(1, &[]);
    let kubeconfig = dir.path().join("kubeconfig");
    let (code, app) = api
        .raw(
            reqwest::Method::PUT,
            &format!("{APPS}/hello?wait=true"),
            "application/wasm",
            workload("http-hello.wasm"),
        )
        .await;
    assert!(code == 200 || code == 201, "{code}: {app}");
    let pod = app_pod(&api, "hello").await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();

    for websockets in [true, false] {
        let fwd = forward(&kubeconfig, &format!("pod/{pod_name}"), 8080, websockets).await;
        // Two requests on one kept-alive connection, then a new client on a new one.
        let http = reqwest::Client::new();
        for path in ["/", "/again"] {
            let body = hello_through(&http, fwd.port, path).await;
            assert!(
                body.starts_with("hello from skiff") && body.contains(&pod_name),
                "websockets={websockets}: {body}"
            );
        }
        // Several connections at once share the session's streams.
        let bodies = futures::future::join_all(
            (0..8).map(|_| async { hello_through(&reqwest::Client::new(), fwd.port, "/").await }),
        )
        .await;
        assert!(bodies.iter().all(|b| b.starts_with("hello from skiff")));
        // A streamed answer comes through chunk by chunk, to its end.
        let stream = hello_through(&http, fwd.port, "/stream?n=3&ms=10").await;
        assert_eq!(stream, "chunk 1\nchunk 2\nchunk 3\n");
    }

    // Through the App's Service and Deployment, as kubectl resolves them to a pod.
    for target in ["svc/hello", "deploy/hello"] {
        let fwd = forward(&kubeconfig, target, 80, true).await;
        let body = hello_through(&reqwest::Client::new(), fwd.port, "/").await;
        assert!(body.starts_with("hello from skiff"), "{target}: {body}");
    }

    // A viewer may not reach into pods, as with Kubernetes' view role.
    let viewer = viewer_kubeconfig(&kubeconfig);
    let out = Command::new("kubectl")
        .args(["port-forward", &format!("pod/{pod_name}"), ":8080"])
        .env("KUBECONFIG", &viewer)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("forbidden"), "{said}");
}
