//! The versioned object store: every write is a new cluster-wide revision, kept in a
//! change log that watches resume from (the etcd / kine model).
//!
//! The API server only ever talks to [`Store`]; two backends implement it:
//! [`redb::RedbStore`], one embedded file (the default, for one server), and
//! [`etcd::EtcdStore`], an etcd cluster that several servers share.

pub mod etcd;
pub mod redb;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

pub use watch::{EventSource, WatchStream};

/// A cluster-wide revision. It only ever grows, and becomes `metadata.resourceVersion`.
pub type Revision = u64;

/// An object as stored: its JSON, whose `metadata.resourceVersion` equals `rev`.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: String,
    /// The revision that last modified this key (etcd's mod_revision).
    pub rev: Revision,
    pub object: Arc<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One entry of the change log.
#[derive(Debug, Clone)]
pub struct Event {
    pub rev: Revision,
    pub kind: EventType,
    pub key: String,
    /// The new object. For `Deleted`, the last state of the object, with its
    /// `metadata.resourceVersion` set to the revision of the delete (as Kubernetes does).
    pub object: Arc<Value>,
    /// The state before this event: `None` for `Added`.
    pub prev: Option<Arc<Value>>,
}

/// One write, applied atomically. Preconditions are checked against the state the write
/// sees, which includes earlier writes of the same group commit.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Fails with `AlreadyExists` if `key` exists, and with `GuardMissing` if `guard`
    /// (e.g. the namespace object's key) does not exist.
    Create {
        key: String,
        object: Value,
        guard: Option<String>,
    },
    /// Replaces `key`. Fails with `NotFound` if absent and with `Conflict` if
    /// `expected_rev` is given and differs from the stored revision.
    Update {
        key: String,
        object: Value,
        expected_rev: Option<Revision>,
    },
    /// Removes `key`, with the same preconditions as `Update`.
    Delete {
        key: String,
        expected_rev: Option<Revision>,
    },
}

impl WriteOp {
    pub fn key(&self) -> &str {
        match self {
            WriteOp::Create { key, .. }
            | WriteOp::Update { key, .. }
            | WriteOp::Delete { key, .. } => key,
        }
    }
}

/// A consistent page of a key range.
#[derive(Debug, Clone)]
pub struct ListPage {
    pub items: Vec<Stored>,
    /// The revision the page was read at: watch from here to miss nothing.
    pub rev: Revision,
    /// True when more matching keys follow the last item.
    pub more: bool,
}

/// What to list.
pub struct ListRequest<'a> {
    /// Every key that starts with this prefix.
    pub prefix: &'a str,
    /// Only keys strictly greater than this one (for `continue`).
    pub start_after: Option<&'a str>,
    /// Read the range as it was at this revision (for `continue` and
    /// `resourceVersionMatch=Exact`); `None` reads the latest state. Fails with
    /// `Compacted` when the log no longer reaches back that far.
    pub at_rev: Option<Revision>,
    /// Stop after this many matching items (0 = no limit).
    pub limit: usize,
    /// Only items for which this returns true count and are returned.
    pub filter: &'a (dyn Fn(&Value) -> bool + Sync),
}

impl<'a> ListRequest<'a> {
    /// Every item under `prefix` that `filter` accepts, at the latest revision.
    pub fn all(prefix: &'a str, filter: &'a (dyn Fn(&Value) -> bool + Sync)) -> ListRequest<'a> {
        ListRequest {
            prefix,
            start_after: None,
            at_rev: None,
            limit: 0,
            filter,
        }
    }
}

/// How much of the change log to keep. Compaction keeps whichever of the two keeps more.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub revisions: u64,
    pub duration: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            revisions: 10_000,
            duration: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} not found")]
    NotFound { key: String },
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    #[error("{guard} does not exist")]
    GuardMissing { guard: String },
    #[error("revision {requested} has been compacted (oldest retained is {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("the store is shutting down")]
    Closed,
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend could not be reached in time; the operation may be retried. For a
    /// write, whether it was applied is unknown.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Why an object could not take a resourceVersion.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObjectShapeError {
    #[error("the object is not a JSON object")]
    NotAnObject,
    #[error("the object's metadata is not a JSON object")]
    MetadataNotAnObject,
}

/// Sets `metadata.resourceVersion` to `rev` as a decimal string, creating `metadata` if absent.
pub(crate) fn set_resource_version(
    object: &mut Value,
    rev: Revision,
) -> Result<(), ObjectShapeError> {
    let map = object
        .as_object_mut()
        .ok_or(ObjectShapeError::NotAnObject)?;
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    let metadata = metadata
        .as_object_mut()
        .ok_or(ObjectShapeError::MetadataNotAnObject)?;
    metadata.insert("resourceVersion".into(), Value::String(rev.to_string()));
    Ok(())
}

/// The object store. Implementations batch concurrent writes into one durable commit.
///
/// Reads are asynchronous because a backend may be remote (etcd); the embedded one
/// answers at once.
pub trait Store: Send + Sync + 'static {
    /// The newest revision this server knows to be committed. On redb that is the
    /// store's own; on etcd, the newest any response or watch event has shown this
    /// server (see [`Store::latest_revision`] for one that asks).
    fn current_revision(&self) -> Revision;
    /// The newest revision that compaction has removed from the log (0 if none), as far
    /// as this server knows.
    fn compacted_revision(&self) -> Revision;
    /// The newest committed revision, asked of the backend itself (a round trip on etcd).
    fn latest_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>>;
    /// The object under `key` as of the newest revision (a linearizable read).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Stored>, StoreError>>;
    /// The object under `key` from this server's cache where it keeps one: it reflects
    /// every write this server has acknowledged to that kind, and other servers' within
    /// the cache's watch latency (milliseconds). For reads that may be that stale, as
    /// kube-apiserver's admission and token checks read informers: tokens, namespaces.
    fn get_cached<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        self.get(key)
    }
    /// One consistent page: without `at_rev`, it reflects every write acknowledged
    /// before the call, whichever server made it.
    fn list<'a>(&'a self, req: ListRequest<'a>) -> BoxFuture<'a, Result<ListPage, StoreError>>;
    /// Applies one write durably. The future resolves once the write is on disk, with the
    /// stored object (for `Delete`, the deleted object as its event carries it).
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Stored, StoreError>>;
    /// Streams every event with a revision greater than `after` whose key starts with
    /// `prefix`, in revision order, with no gaps. Fails with `Compacted` if `after` is
    /// older than the retained log.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>>;
    /// Removes log entries outside the retention window; returns the new compacted revision.
    fn compact(&self, retention: Retention) -> BoxFuture<'static, Result<Revision, StoreError>>;
    /// Makes the store's revision at least `floor` and marks every revision up to the
    /// result compacted (a restore does this first, so that resourceVersions only grow
    /// across a backup and restore, and a watch from an old one gets 410 and re-lists).
    /// Returns the new revision. Only for a store no server is using yet.
    fn raise_revision(&self, floor: Revision) -> BoxFuture<'_, Result<Revision, StoreError>>;
    /// The store's commit metrics, which the server's `/metrics` serves.
    fn metrics(&self) -> StoreMetrics {
        StoreMetrics::default()
    }
    /// Stops taking writes and releases what the store holds (the file, connections).
    /// Idempotent.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// How the store's group commits go; clones share the series.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Seconds one durable commit takes (fsync included).
    pub commit_duration: prometheus_client::metrics::histogram::Histogram,
    /// Writes made durable by one commit.
    pub batch_size: prometheus_client::metrics::histogram::Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        StoreMetrics {
            // 100 µs doubling to 3.3 s: a fast disk's fsync to a stalled one.
            commit_duration: Histogram::new(exponential_buckets(1e-4, 2.0, 16)),
            // 1 doubling to the writer's largest batch, 1,024.
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
        }
    }
}
