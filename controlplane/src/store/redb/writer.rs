//! The writer thread: the only place that opens redb write transactions. It group-commits
//! every queued write in one durable transaction, and runs compactions in between.
//!
//! One fsync per batch instead of one per write is what lets a busy control plane commit
//! thousands of writes a second on an ordinary disk.

use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{SystemTime, UNIX_EPOCH};

use ::redb::{Database, Durability, ReadableTable, Table};
use tokio::sync::oneshot;

use super::codec::{self, LogRecord};
use super::{
    LOG, META, META_COMPACTED, META_CURRENT, OBJECTS, RedbFailure, Shared, failed, read_meta,
};
use crate::store::{Event, EventType, Retention, Revision, StoreError, Stored, WriteOp};

/// Most requests applied in one transaction. It bounds one commit's latency and memory
/// under a flood; the rest wait for the next commit, a few milliseconds later.
const MAX_BATCH: usize = 1024;

/// Most log entries one compaction removes. Deleting them is one transaction, so this
/// bounds how long compaction holds up writes; the rest goes at the next call.
pub(super) const MAX_COMPACT_PER_CALL: u64 = 50_000;

pub(super) enum Request {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<Stored, StoreError>>,
    },
    Compact {
        retention: Retention,
        reply: oneshot::Sender<Result<Revision, StoreError>>,
    },
    RaiseRevision {
        floor: Revision,
        reply: oneshot::Sender<Result<Revision, StoreError>>,
    },
}

struct PendingWrite {
    op: WriteOp,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Why one write of a batch did not apply.
enum OpError {
    /// A precondition failed: only this write fails, the rest of the batch goes on.
    Rejected(StoreError),
    /// redb failed mid-transaction: the whole batch is abandoned.
    Storage(RedbFailure),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Rejected(e)
    }
}

impl From<RedbFailure> for OpError {
    fn from(e: RedbFailure) -> Self {
        OpError::Storage(e)
    }
}

/// A whole batch failed to commit; every caller of the batch gets a shared copy.
#[derive(Debug, thiserror::Error)]
#[error("the group commit of {writes} writes failed")]
struct GroupCommitFailed {
    writes: usize,
    #[source]
    source: RedbFailure,
}

pub(super) fn spawn(
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    last_timestamp_ms: u64,
) -> io::Result<JoinHandle<()>> {
    let mut writer = Writer {
        shared,
        last_timestamp_ms,
    };
    thread::Builder::new()
        .name("skiff-store-writer".into())
        .spawn(move || writer.run(&requests))
}

struct Writer {
    shared: Arc<Shared>,
    /// Log timestamps never go backwards, even if the wall clock does, so compaction can
    /// stop its scan at the first entry that is too young.
    last_timestamp_ms: u64,
}

impl Writer {
    fn run(&mut self, requests: &mpsc::Receiver<Request>) {
        // Blocks for the first request; ends once the store dropped its sender and the queue
        // is empty, so writes accepted before shutdown still commit.
        while let Ok(first) = requests.recv() {
            let mut writes = Vec::new();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(request) = next.take() {
                taken += 1;
                match request {
                    Request::Write { op, reply } => writes.push(PendingWrite { op, reply }),
                    Request::Compact { retention, reply } => {
                        // Writes queued before the compaction commit before it runs.
                        self.commit_writes(mem::take(&mut writes));
                        let _ =
                            reply.send(self.with_db(|db, writer| writer.compact(db, retention)));
                    }
                    Request::RaiseRevision { floor, reply } => {
                        self.commit_writes(mem::take(&mut writes));
                        let _ = reply.send(self.with_db(|db, writer| writer.raise(db, floor)));
                    }
                }
                if taken < MAX_BATCH {
                    next = requests.try_recv().ok();
                }
            }
            self.commit_writes(writes);
        }
    }

    fn with_db<T>(
        &mut self,
        f: impl FnOnce(&Database, &mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let shared = self.shared.clone();
        let db = shared.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = db.as_ref().ok_or(StoreError::Closed)?;
        f(db, self)
    }

    fn commit_writes(&mut self, writes: Vec<PendingWrite>) {
        if writes.is_empty() {
            return;
        }
        let count = writes.len();
        let (ops, replies): (Vec<_>, Vec<_>) = writes.into_iter().map(|w| (w.op, w.reply)).unzip();
        let outcome = self.with_db(|db, writer| Ok(writer.apply_and_commit(db, ops)));
        let outcomes = match outcome {
            Ok(Ok(outcomes)) => outcomes,
            Err(_closed) => {
                // Only a closed database gets here, and it committed nothing.
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                return;
            }
            Ok(Err(source)) => {
                let failure = Arc::new(GroupCommitFailed {
                    writes: count,
                    source,
                });
                let cause = &failure.source.source;
                tracing::error!(error = %failure, %cause, "store commit failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Backend(Box::new(failure.clone()))));
                }
                self.resync();
                return;
            }
        };
        let events: Vec<Arc<Event>> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok().cloned())
            .collect();
        if let Some(last) = events.last() {
            self.shared.current.store(last.rev, Ordering::Release);
            self.shared
                .writes
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        let current = self.shared.current.load(Ordering::Acquire);
        self.shared.hub.publish(events, current);
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let answer = outcome.map(|event| Stored {
                key: event.key.clone(),
                rev: event.rev,
                object: event.object.clone(),
            });
            // A caller that stopped waiting still has its write committed, as with etcd.
            let _ = reply.send(answer);
        }
    }

    /// Applies the ops in order in one transaction and commits it durably. The outer error
    /// fails the whole batch (see `resync` for what redb may have kept); the inner results
    /// are per op.
    #[allow(
        clippy::type_complexity,
        reason = "the nesting is the contract: batch, then op"
    )]
    fn apply_and_commit(
        &mut self,
        db: &Database,
        ops: Vec<WriteOp>,
    ) -> Result<Vec<Result<Arc<Event>, StoreError>>, RedbFailure> {
        let base = self.shared.current.load(Ordering::Acquire);
        let timestamp_ms = self.next_timestamp();
        let mut txn = db
            .begin_write()
            .map_err(failed("beginning a write transaction"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(failed("requesting a durable commit"))?;
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut rev = base;
        {
            let mut objects = txn.open_table(OBJECTS).map_err(failed("opening objects"))?;
            let mut log = txn.open_table(LOG).map_err(failed("opening the log"))?;
            for op in ops {
                match apply_one(&mut objects, &mut log, op, rev + 1, timestamp_ms) {
                    Ok(event) => {
                        rev = event.rev;
                        outcomes.push(Ok(Arc::new(event)));
                    }
                    Err(OpError::Rejected(e)) => outcomes.push(Err(e)),
                    Err(OpError::Storage(failure)) => return Err(failure),
                }
            }
            if rev > base {
                let mut meta = txn.open_table(META).map_err(failed("opening meta"))?;
                meta.insert(META_CURRENT, rev)
                    .map_err(failed("updating the current revision"))?;
            }
        }
        if rev == base {
            // Every op was rejected: there is nothing to make durable, so skip the fsync.
            txn.abort()
                .map_err(failed("aborting an empty transaction"))?;
            return Ok(outcomes);
        }
        let committing = std::time::Instant::now();
        txn.commit().map_err(failed("committing"))?;
        let metrics = &self.shared.metrics;
        metrics
            .commit_duration
            .observe(committing.elapsed().as_secs_f64());
        metrics.batch_size.observe((rev - base) as f64);
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(outcomes)
    }

    /// After a failed commit, trusts the file again rather than memory: redb may or may not
    /// have made the batch durable, and the revision counter must match whatever it did.
    fn resync(&self) {
        let read = self.shared.read_txn().and_then(|txn| read_meta(&txn));
        match read {
            Ok((current, compacted)) => {
                self.shared.current.store(current, Ordering::Release);
                self.shared.compacted.store(compacted, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, "store could not re-read its revisions after a failed commit")
            }
        }
    }

    fn next_timestamp(&mut self) -> u64 {
        let now = unix_millis();
        self.last_timestamp_ms = self.last_timestamp_ms.max(now);
        self.last_timestamp_ms
    }

    /// Removes log entries outside the retention window; see [`Retention`].
    /// Moves the revision counter up to `floor` and marks everything up to it compacted,
    /// so a watch or list from an older revision (of the cluster a backup came from)
    /// gets 410 and re-lists instead of missing what changed.
    fn raise(&mut self, db: &Database, floor: Revision) -> Result<Revision, StoreError> {
        // Everything before the restore's first write counts as compacted, even if the
        // store was already past `floor`.
        let floor = floor.max(self.shared.current.load(Ordering::Acquire));
        let txn = db.begin_write().map_err(failed("raising the revision"))?;
        {
            let mut log = txn.open_table(LOG).map_err(failed("opening the log"))?;
            log.retain_in(..=floor, |_, _| false)
                .map_err(failed("deleting log entries"))?;
            let mut meta = txn.open_table(META).map_err(failed("opening meta"))?;
            meta.insert(META_CURRENT, floor)
                .map_err(failed("raising the revision"))?;
            meta.insert(META_COMPACTED, floor)
                .map_err(failed("raising the revision"))?;
        }
        txn.commit().map_err(failed("raising the revision"))?;
        self.shared.compacted.store(floor, Ordering::Release);
        self.shared.current.store(floor, Ordering::Release);
        self.shared.hub.publish(std::iter::empty(), floor);
        Ok(floor)
    }

    fn compact(&mut self, db: &Database, retention: Retention) -> Result<Revision, StoreError> {
        let current = self.shared.current.load(Ordering::Acquire);
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        let by_count = current.saturating_sub(retention.revisions);
        let end = by_count.min(compacted.saturating_add(MAX_COMPACT_PER_CALL));
        if end <= compacted {
            return Ok(compacted);
        }
        let retention_ms = u64::try_from(retention.duration.as_millis()).unwrap_or(u64::MAX);
        let cutoff_ms = unix_millis().saturating_sub(retention_ms);

        let txn = db.begin_write().map_err(failed("beginning a compaction"))?;
        let mut target = compacted;
        {
            let mut log = txn.open_table(LOG).map_err(failed("opening the log"))?;
            // Timestamps are monotonic, so the first entry younger than the cutoff ends the
            // scan: the time bound is the newest entry at least `duration` old.
            for entry in log
                .range(compacted + 1..=end)
                .map_err(failed("scanning the log"))?
            {
                let (rev, record) = entry.map_err(failed("scanning the log"))?;
                if LogRecord::timestamp_of(rev.value(), record.value())? > cutoff_ms {
                    break;
                }
                target = rev.value();
            }
            if target > compacted {
                log.retain_in(compacted + 1..=target, |_, _| false)
                    .map_err(failed("deleting log entries"))?;
                let mut meta = txn.open_table(META).map_err(failed("opening meta"))?;
                meta.insert(META_COMPACTED, target)
                    .map_err(failed("updating the compacted revision"))?;
            }
        }
        if target == compacted {
            txn.abort()
                .map_err(failed("aborting an empty compaction"))?;
            return Ok(compacted);
        }
        txn.commit().map_err(failed("committing a compaction"))?;
        self.shared.compacted.store(target, Ordering::Release);
        Ok(target)
    }
}

/// Applies one write at revision `rev`. Preconditions are checked before anything is
/// modified, so a rejected write leaves the transaction as it found it.
fn apply_one(
    objects: &mut Table<&'static str, &'static [u8]>,
    log: &mut Table<u64, &'static [u8]>,
    op: WriteOp,
    rev: Revision,
    timestamp_ms: u64,
) -> Result<Event, OpError> {
    let key = op.key().to_owned();
    let existing = objects
        .get(key.as_str())
        .map_err(failed("reading an object"))?
        .map(|v| v.value().to_vec());
    let existing = match &existing {
        Some(bytes) => Some(codec::decode_object(&key, bytes)?),
        None => None,
    };
    let check = |expected: Option<Revision>| -> Result<(Revision, &[u8]), StoreError> {
        let (actual, json) = existing.ok_or_else(|| StoreError::NotFound { key: key.clone() })?;
        match expected {
            Some(expected) if expected != actual => Err(StoreError::Conflict {
                key: key.clone(),
                expected,
                actual,
            }),
            _ => Ok((actual, json)),
        }
    };
    let (kind, object, prev) = match op {
        WriteOp::Create { object, guard, .. } => {
            if existing.is_some() {
                return Err(StoreError::AlreadyExists { key }.into());
            }
            if let Some(guard) = guard
                && objects
                    .get(guard.as_str())
                    .map_err(failed("reading a guard"))?
                    .is_none()
            {
                return Err(StoreError::GuardMissing { guard }.into());
            }
            (EventType::Added, object, None)
        }
        WriteOp::Update {
            object,
            expected_rev,
            ..
        } => (EventType::Modified, object, Some(check(expected_rev)?)),
        WriteOp::Delete { expected_rev, .. } => {
            let (prev_rev, prev_json) = check(expected_rev)?;
            // Kubernetes sends the last state, stamped with the delete's revision.
            (
                EventType::Deleted,
                codec::parse_json(&key, prev_json)?,
                Some((prev_rev, prev_json)),
            )
        }
    };
    let mut object = object;
    codec::set_resource_version(&mut object, rev).map_err(|e| invalid(&key, e))?;
    // A delete stores no object of its own: its event object is derived from `prev`.
    let json = match kind {
        EventType::Deleted => None,
        _ => Some(serde_json::to_vec(&object).map_err(|e| invalid(&key, e))?),
    };
    let prev_value = match prev {
        Some((_, prev_json)) => Some(Arc::new(codec::parse_json(&key, prev_json)?)),
        None => None,
    };

    let record = LogRecord {
        kind,
        timestamp_ms,
        key: &key,
        object: json.as_deref(),
        prev,
    };
    log.insert(rev, record.encode().as_slice())
        .map_err(failed("appending to the log"))?;
    match &json {
        Some(json) => {
            objects
                .insert(key.as_str(), codec::encode_object(rev, json).as_slice())
                .map_err(failed("storing an object"))?;
        }
        None => {
            objects
                .remove(key.as_str())
                .map_err(failed("removing an object"))?;
        }
    }
    Ok(Event {
        rev,
        kind,
        key,
        object: Arc::new(object),
        prev: prev_value,
    })
}

/// An object the store cannot stamp: the API layer should have rejected it.
#[derive(Debug, thiserror::Error)]
#[error("{key} cannot be stored")]
struct InvalidObject {
    key: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn invalid(key: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(InvalidObject {
        key: key.to_owned(),
        source: Box::new(e),
    }))
}

fn unix_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
