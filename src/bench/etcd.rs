//! The etcd peer: a real etcd started on loopback, driven through its JSON gateway with
//! the same HTTP client and concurrency as Skiff, doing what kube-apiserver does for a
//! create (a transaction that puts only if the key does not exist).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

use super::free_port;

pub struct Etcd {
    child: tokio::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` with its data on a fresh temporary directory (same disk as Skiff's).
    pub async fn start(binary: &str) -> anyhow::Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let (client, peer) = (free_port()?, free_port()?);
        let url = format!("http://127.0.0.1:{client}");
        let child = tokio::process::Command::new(binary)
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let etcd = Etcd {
            child,
            url,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http
                .get(format!("{}/health", etcd.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(etcd);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("etcd did not become healthy within 20s")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The body of a create: put `key` only if it has never been created.
pub fn create_txn(key: &str, value: &str) -> Value {
    json!({
        "compare": [{"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
        "success": [{"request_put": {"key": b64(key), "value": b64(value)}}],
    })
}

/// The body of a watch on every key under a prefix.
pub fn watch_request(prefix: &str) -> Value {
    // range_end = prefix with its last byte incremented: every key that starts with prefix.
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let end = base64::engine::general_purpose::STANDARD.encode(end);
    json!({"create_request": {"key": b64(prefix), "range_end": end}})
}
