//! The redb backend: one file holding the objects, the change log and the revision
//! counters, with every write funnelled through one group-committing writer thread.
//!
//! Reads run on the caller's thread in redb read transactions (consistent snapshots, never
//! blocked by the writer). Writes go to [`writer`], which applies whatever is queued in one
//! transaction and one fsync, then answers the callers and publishes the events.

mod codec;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, mpsc};
use std::thread::JoinHandle;

use ::redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::watch::{DEFAULT_WATCH_BUFFER, LogChunk, LogSource, LogWatch, WatchHub};
use super::{
    ListPage, ListRequest, Retention, Revision, Store, StoreError, Stored, WatchStream, WriteOp,
};
use codec::LogRecord;
use writer::Request;

/// Key -> 8-byte big-endian mod revision, then the object's JSON.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Revision -> one encoded [`LogRecord`].
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// The counters below, committed in the same transaction as the data they describe.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_CURRENT: &str = "current_rev";
const META_COMPACTED: &str = "compacted_rev";

/// Most bytes of the file redb keeps in memory by default. redb's own default is 1 GiB,
/// and it fills it with every page it writes, so after a burst of writes (thousands of
/// pods, their events and the change log) a server held the whole file in memory for
/// good. The hot pages (the trees' upper levels, the namespaces and token records every
/// create reads) fit many times over; the rest is read from the OS's page cache.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Tuning for [`RedbStore::open_with`].
#[derive(Debug, Clone, Copy)]
pub struct RedbOptions {
    /// Live events buffered per watcher before it lags and re-reads the log.
    pub watch_buffer: usize,
    /// Most bytes of the file redb caches in memory.
    pub cache_bytes: usize,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions {
            watch_buffer: DEFAULT_WATCH_BUFFER,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// Counters of the writer's work, to observe group commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// Durable transactions committed for writes (compactions not included).
    pub commits: u64,
    /// Writes that succeeded, each with its own revision.
    pub writes: u64,
}

/// A redb operation that failed, and what the store was doing at the time.
#[derive(Debug, thiserror::Error)]
#[error("redb failed while {during}")]
pub struct RedbFailure {
    during: &'static str,
    #[source]
    source: ::redb::Error,
}

impl From<RedbFailure> for StoreError {
    fn from(failure: RedbFailure) -> Self {
        match failure.source {
            // Only a store that is shutting down drops its database under a reader.
            ::redb::Error::DatabaseClosed => StoreError::Closed,
            _ => StoreError::Backend(Box::new(failure)),
        }
    }
}

/// Wraps a redb error with what the store was doing, for `map_err`.
fn failed<E: Into<::redb::Error>>(during: &'static str) -> impl FnOnce(E) -> RedbFailure {
    move |e| RedbFailure {
        during,
        source: e.into(),
    }
}

/// The object store on one redb file.
pub struct RedbStore {
    shared: Arc<Shared>,
    /// `None` once shutdown began: new writes fail with `Closed`.
    requests: RwLock<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// What the store, its writer thread and its watch streams share.
struct Shared {
    /// `None` after shutdown, which releases the file so it can be reopened.
    db: RwLock<Option<Database>>,
    /// Mirrors `meta.current_rev` as of the last commit; only the writer stores it.
    current: AtomicU64,
    compacted: AtomicU64,
    hub: WatchHub,
    commits: AtomicU64,
    writes: AtomicU64,
    metrics: super::StoreMetrics,
}

impl RedbStore {
    /// Opens the store at `path`, creating the file if needed.
    pub fn open(path: &Path) -> Result<Arc<RedbStore>, StoreError> {
        RedbStore::open_with(path, RedbOptions::default())
    }

    pub fn open_with(path: &Path, options: RedbOptions) -> Result<Arc<RedbStore>, StoreError> {
        let db = Database::builder()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(failed("opening the database file"))?;
        RedbStore::start(db, options)
    }

    /// Starts the store on an open database (tests inject failing storage this way).
    fn start(db: Database, options: RedbOptions) -> Result<Arc<RedbStore>, StoreError> {
        // Creating the tables up front means no read ever meets a missing table.
        let txn = db
            .begin_write()
            .map_err(failed("initializing the tables"))?;
        txn.open_table(OBJECTS)
            .map_err(failed("initializing the tables"))?;
        txn.open_table(LOG)
            .map_err(failed("initializing the tables"))?;
        txn.open_table(META)
            .map_err(failed("initializing the tables"))?;
        txn.commit().map_err(failed("initializing the tables"))?;

        let txn = db.begin_read().map_err(failed("reading the revisions"))?;
        let (current, compacted) = read_meta(&txn)?;
        let log = txn.open_table(LOG).map_err(failed("reading the log"))?;
        let last_timestamp_ms = match log.last().map_err(failed("reading the log"))? {
            Some((rev, record)) => LogRecord::timestamp_of(rev.value(), record.value())?,
            None => 0,
        };
        drop(log);
        drop(txn);

        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            current: AtomicU64::new(current),
            compacted: AtomicU64::new(compacted),
            hub: WatchHub::new(options.watch_buffer, current),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            metrics: Default::default(),
        });
        let (sender, receiver) = mpsc::channel();
        let writer = writer::spawn(shared.clone(), receiver, last_timestamp_ms)
            .map_err(|e| StoreError::Backend(Box::new(e)))?;
        Ok(Arc::new(RedbStore {
            shared,
            requests: RwLock::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
        }
    }

    /// Stops taking writes, lets the writer commit what is already queued, and releases the
    /// file. Blocks the calling thread for at most that last commit. Idempotent.
    pub fn shutdown(&self) {
        // Dropping the only sender ends the writer's loop once the queue is drained.
        drop(
            self.requests
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
        self.shared.hub.close();
        drop(
            self.shared
                .db
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// [`Store::get`], answered on the calling thread.
    pub fn get_now(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let txn = self.shared.read_txn()?;
        let objects = txn.open_table(OBJECTS).map_err(failed("opening objects"))?;
        let Some(value) = objects.get(key).map_err(failed("reading an object"))? else {
            return Ok(None);
        };
        let (rev, json) = codec::decode_object(key, value.value())?;
        codec::parse_stored(key, rev, json).map(Some)
    }

    /// [`Store::list`], answered on the calling thread.
    pub fn list_now(&self, req: ListRequest<'_>) -> Result<ListPage, StoreError> {
        let txn = self.shared.read_txn()?;
        let (current, compacted) = read_meta(&txn)?;
        let at = match req.at_rev {
            Some(at) if at < compacted => {
                return Err(StoreError::Compacted {
                    requested: at,
                    compacted,
                });
            }
            // A revision from the future cannot be answered; the latest state is the best
            // truthful page, labelled with the revision it really is.
            Some(at) if at < current => at,
            _ => current,
        };
        let history = if at < current {
            history_since(&txn, &req, at, current)?
        } else {
            BTreeMap::new()
        };
        let mut page = PageBuilder {
            req: &req,
            items: Vec::new(),
            more: false,
        };
        let mut history = history.into_iter().peekable();

        let objects = txn.open_table(OBJECTS).map_err(failed("opening objects"))?;
        let lower = match req.start_after {
            Some(after) if after >= req.prefix => Bound::Excluded(after),
            _ => Bound::Included(req.prefix),
        };
        for entry in objects
            .range::<&str>((lower, Bound::Unbounded))
            .map_err(failed("scanning objects"))?
        {
            let (key, value) = entry.map_err(failed("scanning objects"))?;
            let key = key.value();
            // Keys sharing a prefix are contiguous, so the first one without it ends the range.
            if !key.starts_with(req.prefix) {
                break;
            }
            // Keys deleted after `at` that sort before this one come back first.
            while let Some((_, state)) = history.next_if(|(k, _)| k.as_str() < key) {
                if let Some(stored) = state
                    && !page.offer(stored)
                {
                    return Ok(page.finish(at));
                }
            }
            // A key changed after `at` shows its state at `at`, or nothing if created later.
            if let Some((_, state)) = history.next_if(|(k, _)| k == key) {
                if let Some(stored) = state
                    && !page.offer(stored)
                {
                    return Ok(page.finish(at));
                }
                continue;
            }
            let (rev, json) = codec::decode_object(key, value.value())?;
            if !page.offer(codec::parse_stored(key, rev, json)?) {
                return Ok(page.finish(at));
            }
        }
        // Keys deleted after `at` that sort after every live key.
        for stored in history.filter_map(|(_, state)| state) {
            if !page.offer(stored) {
                break;
            }
        }
        Ok(page.finish(at))
    }

    /// A watch as the log and hub give it (the trait's watch wraps this).
    pub(crate) fn log_watch(&self, prefix: &str, after: Revision) -> Result<LogWatch, StoreError> {
        let compacted = self.compacted_revision();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        LogWatch::start(self.shared.clone(), prefix, after)
    }

    fn send(&self, request: Request) -> Result<(), StoreError> {
        let requests = self.requests.read().unwrap_or_else(PoisonError::into_inner);
        let sender = requests.as_ref().ok_or(StoreError::Closed)?;
        sender.send(request).map_err(|_| StoreError::Closed)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Store for RedbStore {
    fn metrics(&self) -> super::StoreMetrics {
        self.shared.metrics.clone()
    }

    fn current_revision(&self) -> Revision {
        self.shared.current.load(Ordering::Acquire)
    }

    fn compacted_revision(&self) -> Revision {
        self.shared.compacted.load(Ordering::Acquire)
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Stored, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Request::Write { op, reply });
        Box::pin(async move {
            sent?;
            // A dropped reply means the writer died before committing this op.
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn latest_revision(&self) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(std::future::ready(Ok(self.current_revision())))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Stored>, StoreError>> {
        Box::pin(std::future::ready(self.get_now(key)))
    }

    fn list<'a>(&'a self, req: ListRequest<'a>) -> BoxFuture<'a, Result<ListPage, StoreError>> {
        Box::pin(std::future::ready(self.list_now(req)))
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        after: Revision,
    ) -> BoxFuture<'a, Result<WatchStream, StoreError>> {
        Box::pin(std::future::ready(
            self.log_watch(prefix, after).map(WatchStream::new),
        ))
    }

    fn raise_revision(&self, floor: Revision) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Request::RaiseRevision { floor, reply });
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The writer's last commit blocks; keep it off the async threads.
            tokio::task::block_in_place(|| self.shutdown());
        })
    }

    fn compact(&self, retention: Retention) -> BoxFuture<'static, Result<Revision, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Request::Compact { retention, reply });
        Box::pin(async move {
            sent?;
            answer.await.map_err(|_| StoreError::Closed)?
        })
    }
}

impl Shared {
    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        let db = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let db = db.as_ref().ok_or(StoreError::Closed)?;
        // The transaction owns its snapshot, so the lock is not held while reading.
        Ok(db
            .begin_read()
            .map_err(failed("beginning a read transaction"))?)
    }
}

impl LogSource for Shared {
    fn hub(&self) -> &WatchHub {
        &self.hub
    }

    fn read_log(&self, prefix: &str, after: Revision, max: usize) -> Result<LogChunk, StoreError> {
        let txn = self.read_txn()?;
        let (current, compacted) = read_meta(&txn)?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let log = txn.open_table(LOG).map_err(failed("opening the log"))?;
        let mut entries = log
            .range(after.saturating_add(1)..)
            .map_err(failed("scanning the log"))?;
        let mut chunk = LogChunk {
            events: Vec::new(),
            scanned_to: after,
            reached_end: false,
        };
        for _ in 0..max {
            let Some(entry) = entries.next() else {
                chunk.reached_end = true;
                chunk.scanned_to = chunk.scanned_to.max(current);
                return Ok(chunk);
            };
            let (rev, record) = entry.map_err(failed("scanning the log"))?;
            let rev = rev.value();
            let record = LogRecord::decode(rev, record.value())?;
            if record.key.starts_with(prefix) {
                chunk.events.push(Arc::new(record.to_event(rev)?));
            }
            chunk.scanned_to = rev;
        }
        Ok(chunk)
    }
}

/// Reads `(current_rev, compacted_rev)` as of the transaction's snapshot.
fn read_meta(txn: &ReadTransaction) -> Result<(Revision, Revision), StoreError> {
    let meta = txn.open_table(META).map_err(failed("opening meta"))?;
    let read = |name| -> Result<Revision, StoreError> {
        Ok(meta
            .get(name)
            .map_err(failed("reading meta"))?
            .map(|v| v.value())
            .unwrap_or(0))
    };
    Ok((read(META_CURRENT)?, read(META_COMPACTED)?))
}

/// For every key in the request's range changed after `at`, its state at `at`: the `prev`
/// of its earliest later log entry (`None` if that entry created it).
fn history_since(
    txn: &ReadTransaction,
    req: &ListRequest<'_>,
    at: Revision,
    current: Revision,
) -> Result<BTreeMap<String, Option<Stored>>, StoreError> {
    let log = txn.open_table(LOG).map_err(failed("opening the log"))?;
    let mut states = BTreeMap::new();
    for entry in log
        .range(at + 1..=current)
        .map_err(failed("scanning the log"))?
    {
        let (rev, record) = entry.map_err(failed("scanning the log"))?;
        let rev = rev.value();
        let record = LogRecord::decode(rev, record.value())?;
        let in_range = record.key.starts_with(req.prefix)
            && req.start_after.is_none_or(|after| record.key > after);
        if in_range && !states.contains_key(record.key) {
            states.insert(record.key.to_owned(), record.prev_stored()?);
        }
    }
    Ok(states)
}

/// Collects one page: applies the filter and the limit, and notices whether more follow.
struct PageBuilder<'r, 'a> {
    req: &'r ListRequest<'a>,
    items: Vec<Stored>,
    more: bool,
}

impl PageBuilder<'_, '_> {
    /// Offers the next key in order; false once the page is full and `more` is known.
    fn offer(&mut self, stored: Stored) -> bool {
        if !(self.req.filter)(&stored.object) {
            return true;
        }
        if self.req.limit != 0 && self.items.len() == self.req.limit {
            self.more = true;
            return false;
        }
        self.items.push(stored);
        true
    }

    fn finish(self, rev: Revision) -> ListPage {
        ListPage {
            items: self.items,
            rev,
            more: self.more,
        }
    }
}
