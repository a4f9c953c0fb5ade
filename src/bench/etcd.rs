//! The etcd peer: a real etcd started on loopback, driven over gRPC with the client
//! Skiff's etcd store uses (as kube-apiserver drives etcd over gRPC). It writes what
//! kube-apiserver writes for a create (a transaction that puts the key only if it has
//! never been created) or a bare put, and watches a key prefix.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use futures::stream::BoxStream;

use skiff_controlplane::store::etcd::{EtcdClient, EtcdConfig, pb, prefix_end};

use super::free_port;

pub struct Etcd {
    child: tokio::process::Child,
    client: Arc<EtcdClient>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` with its data on a fresh temporary directory (same disk as Skiff's),
    /// and waits until it answers a status request over gRPC.
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
        let client = Arc::new(EtcdClient::new(&EtcdConfig {
            endpoints: vec![url],
            ..Default::default()
        })?);
        let etcd = Etcd {
            child,
            client,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while etcd.client.status().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not become healthy within 20s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(etcd)
    }

    /// The gRPC client: one HTTP/2 connection, which concurrent requests share.
    pub fn client(&self) -> &Arc<EtcdClient> {
        &self.client
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One create: the create transaction, which must succeed (the key is new).
pub async fn create(client: &EtcdClient, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
    if !client
        .txn(EtcdClient::create_txn(key, value))
        .await?
        .succeeded
    {
        bail!("the create transaction found its key taken");
    }
    Ok(())
}

/// One bare put.
pub async fn put(client: &EtcdClient, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
    client
        .put(pb::PutRequest {
            key,
            value,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// A gRPC watch of every key under a prefix: its responses as they arrive.
pub type Watch = BoxStream<'static, anyhow::Result<pb::WatchResponse>>;

/// Opens a watch on every key under `prefix` (its own gRPC stream, on the client's
/// connection); resolves once etcd has confirmed it is created.
pub async fn watch(client: &EtcdClient, prefix: &str) -> anyhow::Result<Watch> {
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                ..Default::default()
            },
        )),
    };
    // The request side stays open for the life of the watch, as a client's does.
    let requests = futures::stream::once(async move { create }).chain(futures::stream::pending());
    let (_, channel) = client.channel();
    let mut responses: Watch = EtcdClient::watcher(channel)
        .watch(requests)
        .await?
        .into_inner()
        .map(|r| r.map_err(anyhow::Error::from))
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), responses.next()).await {
        Ok(Some(Ok(first))) if first.created && !first.canceled => Ok(responses),
        Ok(Some(Ok(first))) => bail!("etcd refused the watch: {}", first.cancel_reason),
        Ok(Some(Err(e))) => Err(e.context("opening an etcd watch")),
        Ok(None) => bail!("etcd closed the watch before confirming it"),
        Err(_) => bail!("etcd did not confirm a watch within 10s"),
    }
}
