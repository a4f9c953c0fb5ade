//! What an edge agent keeps so it can work without its control plane: a redb file in
//! its data directory (`state.redb`) holding
//!
//! - the pods bound to it, as last seen from the API, so a restart while disconnected
//!   brings them back;
//! - the ConfigMaps and Secrets they read (written by the client layer below), so
//!   their env and volumes resolve offline;
//! - an outbox of pod status updates, delivered in order per pod, at least once, when
//!   the API can be reached again.
//!
//! Module bytes and compiled artifacts are already kept on disk by the image store.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// (pod uid, sequence) → `{"namespace", "name", "patch"}`.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");

/// Most bytes of `state.redb` kept in memory: the agent reads it at start and when the
/// API is unreachable, and otherwise only writes it.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A queued status: (pod uid, sequence) and `{"namespace", "name", "patch"}`.
type Queued = ((String, u64), Value);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("opening {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("the local state store failed: {0}")]
    Store(String),
}

fn failed(e: impl std::fmt::Display) -> LocalError {
    LocalError::Store(e.to_string())
}

pub struct LocalState {
    db: Database,
    /// Signalled when the outbox gets an entry.
    outbox_wake: tokio::sync::Notify,
    /// The pods (by uid) with statuses in the outbox: their next status must queue
    /// behind them, to keep the order.
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl LocalState {
    pub fn open(data_dir: &Path) -> Result<Arc<LocalState>, LocalError> {
        std::fs::create_dir_all(data_dir).map_err(failed)?;
        let path = data_dir.join("state.redb");
        // redb's default cache (1 GiB, filled by every page written) kept a node that
        // once ran thousands of pods holding their records in memory after they went.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| LocalError::Open {
                path: path.clone(),
                source,
            })?;
        // It holds the Secrets the node's pods read: the owner's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(failed)?;
        }
        let txn = db.begin_write().map_err(failed)?;
        for table in [PODS, OBJECTS] {
            txn.open_table(table).map_err(failed)?;
        }
        txn.open_table(OUTBOX).map_err(failed)?;
        txn.commit().map_err(failed)?;
        let state = LocalState {
            db,
            outbox_wake: tokio::sync::Notify::new(),
            pending: Default::default(),
        };
        let queued: std::collections::HashSet<String> =
            state.heads().into_iter().map(|((uid, _), _)| uid).collect();
        *state.pending.lock().unwrap_or_else(|p| p.into_inner()) = queued;
        Ok(Arc::new(state))
    }

    /// The pods last seen bound to this node.
    pub fn pods(&self) -> Vec<Pod> {
        let read = || -> Result<Vec<Pod>, LocalError> {
            let txn = self.db.begin_read().map_err(failed)?;
            let table = txn.open_table(PODS).map_err(failed)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(failed)? {
                let (_, v) = entry.map_err(failed)?;
                if let Ok(pod) = serde_json::from_slice(v.value()) {
                    out.push(pod);
                }
            }
            Ok(out)
        };
        read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the cached pods failed");
            Vec::new()
        })
    }

    /// Records pods that changed (`Some`) or went (`None`); with `replace`, every pod
    /// not named goes too (after a full list).
    pub fn save_pods(&self, changes: &[(String, Option<Vec<u8>>)], replace: bool) {
        let write = || -> Result<(), LocalError> {
            // Durable (redb's non-durable commits are lost even to a kill -9): a batch of
            // watch events shares one fsync.
            let txn = self.db.begin_write().map_err(failed)?;
            {
                let mut table = txn.open_table(PODS).map_err(failed)?;
                if replace {
                    table.retain(|_, _| false).map_err(failed)?;
                }
                for (key, value) in changes {
                    match value {
                        Some(v) => table.insert(key.as_str(), v.as_slice()).map_err(failed)?,
                        None => table.remove(key.as_str()).map_err(failed)?,
                    };
                }
            }
            txn.commit().map_err(failed)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "caching pods failed");
        }
    }

    fn object(&self, key: &str) -> Option<Vec<u8>> {
        let txn = self.db.begin_read().ok()?;
        let table = txn.open_table(OBJECTS).ok()?;
        table.get(key).ok()?.map(|v| v.value().to_vec())
    }

    fn put_object(&self, key: &str, value: Option<&[u8]>) {
        let write = || -> Result<(), LocalError> {
            let txn = self.db.begin_write().map_err(failed)?;
            {
                let mut table = txn.open_table(OBJECTS).map_err(failed)?;
                match value {
                    Some(v) => table.insert(key, v).map_err(failed)?,
                    None => table.remove(key).map_err(failed)?,
                };
            }
            txn.commit().map_err(failed)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, "caching an object failed");
        }
    }

    /// Queues a status patch for a pod, durably, after those already queued for it.
    pub fn push_status(&self, uid: &str, namespace: &str, name: &str, patch: &Value) {
        // Held across the write, so `pending` and the table never disagree.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let write = || -> Result<(), LocalError> {
            let txn = self.db.begin_write().map_err(failed)?;
            {
                let mut table = txn.open_table(OUTBOX).map_err(failed)?;
                let next = table
                    .range((uid, 0)..=(uid, u64::MAX))
                    .map_err(failed)?
                    .next_back()
                    .transpose()
                    .map_err(failed)?
                    .map_or(0, |(k, _)| k.value().1 + 1);
                let entry =
                    serde_json::json!({"namespace": namespace, "name": name, "patch": patch});
                table
                    .insert((uid, next), entry.to_string().as_bytes())
                    .map_err(failed)?;
            }
            txn.commit().map_err(failed)
        };
        match write() {
            Ok(()) => {
                pending.insert(uid.to_string());
                self.outbox_wake.notify_one();
            }
            Err(e) => tracing::warn!(error = %e, "queueing a pod status failed"),
        }
    }

    /// Whether statuses of pod `uid` wait in the outbox.
    pub fn has_queued(&self, uid: &str) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(uid)
    }

    /// The oldest queued status of every pod that has one.
    fn heads(&self) -> Vec<Queued> {
        let read = || -> Result<Vec<Queued>, LocalError> {
            let txn = self.db.begin_read().map_err(failed)?;
            let table = txn.open_table(OUTBOX).map_err(failed)?;
            let mut out: Vec<Queued> = Vec::new();
            for entry in table.iter().map_err(failed)? {
                let (k, v) = entry.map_err(failed)?;
                let (uid, seq) = k.value();
                if out.last().is_some_and(|((u, _), _)| u == uid) {
                    continue;
                }
                let value = serde_json::from_slice(v.value()).unwrap_or_default();
                out.push(((uid.to_string(), seq), value));
            }
            Ok(out)
        };
        read().unwrap_or_default()
    }

    fn remove_status(&self, uid: &str, seq: Option<u64>) {
        // Held across the write, so `pending` and the table never disagree.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let write = || -> Result<bool, LocalError> {
            let txn = self.db.begin_write().map_err(failed)?;
            let left = {
                let mut table = txn.open_table(OUTBOX).map_err(failed)?;
                let keys: Vec<u64> = match seq {
                    Some(seq) => vec![seq],
                    None => table
                        .range((uid, 0)..=(uid, u64::MAX))
                        .map_err(failed)?
                        .filter_map(Result::ok)
                        .map(|(k, _)| k.value().1)
                        .collect(),
                };
                for k in keys {
                    table.remove((uid, k)).map_err(failed)?;
                }
                table
                    .range((uid, 0)..=(uid, u64::MAX))
                    .map_err(failed)?
                    .next()
                    .is_some()
            };
            txn.commit().map_err(failed)?;
            Ok(left)
        };
        match write() {
            Ok(false) => {
                pending.remove(uid);
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "dequeueing a pod status failed"),
        }
    }

    /// Queued statuses (for tests and metrics).
    pub fn queued_statuses(&self) -> usize {
        let count = || -> Option<u64> {
            let txn = self.db.begin_read().ok()?;
            txn.open_table(OUTBOX).ok()?.len().ok()
        };
        count().unwrap_or(0) as usize
    }
}

/// Delivers queued pod statuses until `stop`: per pod in order, each until the API
/// takes it (at least once); a pod that is gone or was replaced drops its queue.
pub async fn deliver_statuses(
    local: Arc<LocalState>,
    client: kube::Client,
    stop: CancellationToken,
) {
    use kube::api::{Api, Patch, PatchParams};
    let mut backoff = Duration::from_millis(200);
    loop {
        let heads = {
            let local = local.clone();
            tokio::task::spawn_blocking(move || local.heads())
                .await
                .unwrap_or_default()
        };
        let mut failed = false;
        for ((uid, seq), entry) in heads {
            let (Some(ns), Some(name)) = (entry["namespace"].as_str(), entry["name"].as_str())
            else {
                local.remove_status(&uid, Some(seq));
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            let sent = api
                .patch_status(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(&entry["patch"]),
                )
                .await;
            let local = local.clone();
            match sent {
                Ok(_) => {
                    tokio::task::spawn_blocking(move || local.remove_status(&uid, Some(seq)))
                        .await
                        .ok();
                }
                // Gone, or a new pod under the name (the uid precondition): nothing to tell.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    tokio::task::spawn_blocking(move || local.remove_status(&uid, None))
                        .await
                        .ok();
                }
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    tracing::warn!(pod = %name, error = %s.message, "the API refused a pod status; dropping it");
                    tokio::task::spawn_blocking(move || local.remove_status(&uid, Some(seq)))
                        .await
                        .ok();
                }
                Err(e) => {
                    tracing::debug!(pod = %name, error = %e, "delivering a pod status failed; will retry");
                    failed = true;
                }
            }
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
            continue;
        }
        backoff = Duration::from_millis(200);
        if local.queued_statuses() > 0 {
            continue;
        }
        tokio::select! {
            _ = local.outbox_wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// A tower layer for the agent's API client: a GET of a ConfigMap or Secret keeps a
/// copy of the answer, and when the API cannot be reached the copy answers instead.
#[derive(Clone)]
pub struct OfflineReads {
    local: Arc<LocalState>,
}

impl OfflineReads {
    pub fn new(local: Arc<LocalState>) -> OfflineReads {
        OfflineReads { local }
    }
}

impl<S> tower::Layer<S> for OfflineReads {
    type Service = OfflineReadsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OfflineReadsService {
            inner,
            local: self.local.clone(),
        }
    }
}

pub struct OfflineReadsService<S> {
    inner: S,
    local: Arc<LocalState>,
}

type DynBody = dyn http_body::Body<Data = Bytes, Error = Box<dyn std::error::Error + Send + Sync>>
    + Send
    + Unpin;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of the answers the agent's API client gets.
pub type ResponseBody = Box<DynBody>;

/// The cache key of a request this layer keeps answers for.
fn cacheable(request: &http::Request<kube::client::Body>) -> Option<String> {
    if request.method() != http::Method::GET
        || request.uri().query().is_some_and(|q| q.contains("watch"))
    {
        return None;
    }
    let segs: Vec<&str> = request.uri().path().split('/').collect();
    match segs.as_slice() {
        [
            "",
            "api",
            "v1",
            "namespaces",
            ns,
            kind @ ("configmaps" | "secrets"),
            name,
        ] => Some(format!("{kind}/{ns}/{name}")),
        _ => None,
    }
}

fn full(bytes: Bytes) -> Box<DynBody> {
    Box::new(http_body_util::Full::new(bytes).map_err(|never| match never {}))
}

impl<S> tower::Service<http::Request<kube::client::Body>> for OfflineReadsService<S>
where
    S: tower::Service<
            http::Request<kube::client::Body>,
            Response = http::Response<Box<DynBody>>,
            Error = BoxError,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Box<DynBody>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<kube::client::Body>) -> Self::Future {
        let key = cacheable(&request);
        let future = self.inner.call(request);
        let local = self.local.clone();
        Box::pin(async move {
            let Some(key) = key else {
                return future.await;
            };
            match future.await {
                Ok(response) if response.status() == http::StatusCode::OK => {
                    let (parts, body) = response.into_parts();
                    let bytes = body.collect().await?.to_bytes();
                    let (l, k, b) = (local.clone(), key.clone(), bytes.clone());
                    tokio::task::spawn_blocking(move || l.put_object(&k, Some(&b)))
                        .await
                        .ok();
                    Ok(http::Response::from_parts(parts, full(bytes)))
                }
                Ok(response) if response.status() == http::StatusCode::NOT_FOUND => {
                    let l = local.clone();
                    tokio::task::spawn_blocking(move || l.put_object(&key, None))
                        .await
                        .ok();
                    Ok(response)
                }
                Ok(response) => Ok(response),
                Err(e) => match local.object(&key) {
                    Some(cached) => {
                        tracing::debug!(%key, error = %e, "the API is unreachable; answering from the local copy");
                        Ok(http::Response::builder()
                            .status(http::StatusCode::OK)
                            .header(http::header::CONTENT_TYPE, "application/json")
                            .body(full(Bytes::from(cached)))
                            .expect("a valid response"))
                    }
                    None => Err(e),
                },
            }
        })
    }
}

/// The agent's API client: the failover client over `servers`, with the offline layer
/// on top (it answers only once every server has failed the request).
pub fn client(
    config: &kube::Config,
    servers: skiff_api::client::Servers,
    local: Arc<LocalState>,
    credential: Arc<crate::credential::CredentialHealth>,
) -> Result<kube::Client, kube::Error> {
    Ok(
        skiff_api::client::failover::client_builder(config, servers)?
            .with_layer(&OfflineReads::new(local))
            .with_layer(&crate::credential::layer(credential))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_outbox_keeps_order_per_pod_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let local = LocalState::open(dir.path()).unwrap();
            for (uid, n) in [("a", 1), ("b", 1), ("a", 2), ("a", 3)] {
                local.push_status(uid, "ns", uid, &json!({"n": n}));
            }
            assert!(local.has_queued("a") && local.has_queued("b"));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let local = LocalState::open(dir.path()).unwrap();
        assert_eq!(local.queued_statuses(), 4);
        assert!(local.has_queued("a"), "the pending set is rebuilt on open");
        let mut delivered = Vec::new();
        while local.queued_statuses() > 0 {
            for ((uid, seq), entry) in local.heads() {
                delivered.push((uid.clone(), entry["patch"]["n"].as_i64().unwrap()));
                local.remove_status(&uid, Some(seq));
            }
        }
        let a: Vec<i64> = delivered
            .iter()
            .filter(|(u, _)| u == "a")
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(a, [1, 2, 3], "in order per pod");
        assert!(!local.has_queued("a") && !local.has_queued("b"));
    }

    #[test]
    fn cached_pods_are_replaced_by_a_full_list() {
        let dir = tempfile::tempdir().unwrap();
        let local = LocalState::open(dir.path()).unwrap();
        let pod = |name: &str| {
            serde_json::to_vec(&json!({"metadata": {"name": name, "namespace": "d"}})).unwrap()
        };
        local.save_pods(
            &[
                ("d/x".into(), Some(pod("x"))),
                ("d/y".into(), Some(pod("y"))),
            ],
            false,
        );
        local.save_pods(&[("d/y".into(), None)], false);
        assert_eq!(local.pods().len(), 1);
        local.save_pods(&[("d/z".into(), Some(pod("z")))], true);
        let names: Vec<String> = local
            .pods()
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["z"]);
    }
}
