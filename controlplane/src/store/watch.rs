//! Watch streams: replay the change log from a revision, then follow live commits.
//!
//! A backend publishes each committed event once to a [`WatchHub`] (a broadcast channel),
//! so a thousand watchers cost a thousand receivers, not a thousand log readers. A stream
//! subscribes before it reads the log backlog, then drops live events it already replayed
//! (the kine / sample-controller recipe), and falls back to the log when it lags.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::BoxFuture;
use tokio::sync::broadcast;

use super::{Event, Revision, StoreError};

/// Live events buffered per watcher before it lags and must re-read the log. A burst of
/// this many commits costs one log read per slow watcher instead of a lost event.
pub(crate) const DEFAULT_WATCH_BUFFER: usize = 8192;

/// Log entries read per catch-up step. It bounds both one read transaction and the
/// backlog a stream holds in memory: 1,000 streams catching up hold at most this many
/// events each.
pub(crate) const LOG_CHUNK: usize = 1024;

/// What a stream needs from its backend besides live events: the change log.
pub(crate) trait LogSource: Send + Sync + 'static {
    fn hub(&self) -> &WatchHub;
    /// Reads up to `max` log entries after `after` from one consistent snapshot, keeping
    /// those whose key starts with `prefix`. Fails with `Compacted` if the log no longer
    /// reaches back to `after + 1`.
    fn read_log(&self, prefix: &str, after: Revision, max: usize) -> Result<LogChunk, StoreError>;
}

/// One step of a log replay.
pub(crate) struct LogChunk {
    /// The matching events, in revision order.
    pub events: Vec<Arc<Event>>,
    /// Every revision up to this one was examined (matching or not).
    pub scanned_to: Revision,
    /// True when the snapshot had nothing after `scanned_to`.
    pub reached_end: bool,
}

/// The fan-out point a backend publishes committed events to.
pub(crate) struct WatchHub {
    /// `None` once the store has shut down: dropping the sender ends every stream.
    sender: Mutex<Option<broadcast::Sender<Arc<Event>>>>,
    /// The newest revision whose events have all been sent (or that had none to send).
    published: AtomicU64,
}

impl WatchHub {
    pub fn new(capacity: usize, current: Revision) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        WatchHub {
            sender: Mutex::new(Some(sender)),
            published: AtomicU64::new(current),
        }
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Arc<Event>>> {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|s| s.subscribe())
    }

    /// Sends `events` (committed, in revision order) and then marks `through` as published.
    pub fn publish(&self, events: impl IntoIterator<Item = Arc<Event>>, through: Revision) {
        if let Some(sender) = self
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            for event in events {
                // An error only means nobody is subscribed, which is fine.
                let _ = sender.send(event);
            }
        }
        // Release pairs with the Acquire in `progress`: whoever sees `through` also sees
        // the sends before it.
        self.published.fetch_max(through, Ordering::Release);
    }

    pub fn published(&self) -> Revision {
        self.published.load(Ordering::Acquire)
    }

    /// Ends every stream once it has drained what was already sent.
    pub fn close(&self) {
        self.sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// The events after a revision whose key starts with a prefix, in order, without gaps:
/// what every backend's watch hands out.
pub struct WatchStream {
    inner: Box<dyn EventSource>,
}

/// A backend's watch: the events in order, and how far they are known to be complete.
pub trait EventSource: Send + 'static {
    /// The next event; `None` once the store shuts down or after an error was yielded.
    /// Cancel-safe: dropping the future loses nothing.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Arc<Event>, StoreError>>>;
    /// A revision R such that every matching event up to R has already been yielded.
    fn progress(&self) -> Revision;
}

impl WatchStream {
    pub fn new(source: impl EventSource) -> WatchStream {
        WatchStream {
            inner: Box::new(source),
        }
    }

    /// The next event; `None` once the store shuts down or after an error was yielded.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        self.inner.next().await
    }

    /// A revision R such that every matching event up to R has already been yielded.
    pub fn progress(&self) -> Revision {
        self.inner.progress()
    }
}

/// A watch over a [`LogSource`]: replays the log from a revision, then follows the
/// hub's live events.
pub(crate) struct LogWatch {
    source: Arc<dyn LogSource>,
    rx: broadcast::Receiver<Arc<Event>>,
    prefix: String,
    /// Every revision up to here has been examined: yielded, queued in `backlog`, or
    /// skipped as outside the prefix.
    scanned: Revision,
    /// Replayed events not yet yielded. Kept here, not in a future, so that dropping
    /// `next()` mid-way (e.g. in `select!`) loses nothing.
    backlog: VecDeque<Arc<Event>>,
    /// True while the log may hold revisions the receiver will never deliver: at the
    /// start, and after the receiver lagged.
    catching_up: bool,
    /// Ended after yielding an error or seeing the store close.
    done: bool,
    #[cfg(test)]
    pub(crate) log_reads: u64,
}

impl EventSource for LogWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Arc<Event>, StoreError>>> {
        Box::pin(LogWatch::next(self))
    }

    fn progress(&self) -> Revision {
        LogWatch::progress(self)
    }
}

impl LogWatch {
    /// Subscribes first, so that nothing committed after the backlog's snapshot is missed.
    pub(crate) fn start(
        source: Arc<dyn LogSource>,
        prefix: &str,
        after: Revision,
    ) -> Result<Self, StoreError> {
        let rx = source.hub().subscribe().ok_or(StoreError::Closed)?;
        Ok(LogWatch {
            source,
            rx,
            prefix: prefix.to_owned(),
            scanned: after,
            backlog: VecDeque::new(),
            catching_up: true,
            done: false,
            #[cfg(test)]
            log_reads: 0,
        })
    }

    /// The next event; `None` once the store shuts down or after an error was yielded.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.backlog.pop_front() {
                return Some(Ok(event));
            }
            if self.catching_up {
                match self.read_log_chunk() {
                    Ok(()) => continue,
                    // A store shutting down ends its streams quietly, as the channel does.
                    Err(StoreError::Closed) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            // The only await point; `recv` is cancel-safe, and nothing below awaits.
            match self.rx.recv().await {
                Ok(event) => {
                    if event.rev <= self.scanned {
                        continue;
                    }
                    self.scanned = event.rev;
                    if event.key.starts_with(&self.prefix) {
                        return Some(Ok(event));
                    }
                }
                // What the receiver dropped is in the log; the receiver resumes at its oldest
                // retained event, and replayed revisions are skipped as duplicates.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// A revision R such that every matching event up to R has already been yielded.
    pub fn progress(&self) -> Revision {
        if let Some(front) = self.backlog.front() {
            return front.rev - 1;
        }
        if self.catching_up {
            return self.scanned;
        }
        // Load `published` before checking the receiver: events up to it were sent before it
        // was stored, so an empty receiver has already handed them all to us.
        let published = self.source.hub().published();
        if self.rx.is_empty() {
            self.scanned.max(published)
        } else {
            self.scanned
        }
    }

    fn read_log_chunk(&mut self) -> Result<(), StoreError> {
        #[cfg(test)]
        {
            self.log_reads += 1;
        }
        let chunk = self
            .source
            .read_log(&self.prefix, self.scanned, LOG_CHUNK)?;
        self.backlog.extend(chunk.events);
        self.scanned = self.scanned.max(chunk.scanned_to);
        if chunk.reached_end {
            self.catching_up = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::redb::{RedbOptions, RedbStore};
    use crate::store::{EventType, ListRequest, Retention, Store, WriteOp};

    const DEADLINE: Duration = Duration::from_secs(20);

    fn open(dir: &tempfile::TempDir) -> Arc<RedbStore> {
        RedbStore::open(&dir.path().join("store.redb")).unwrap()
    }

    async fn put(store: &RedbStore, key: &str, n: u64) -> Revision {
        let object = json!({"metadata": {"name": key}, "n": n});
        match store.get_now(key).unwrap() {
            None => {
                store
                    .write(WriteOp::Create {
                        key: key.into(),
                        object,
                        guard: None,
                    })
                    .await
                    .unwrap()
                    .rev
            }
            Some(_) => {
                store
                    .write(WriteOp::Update {
                        key: key.into(),
                        object,
                        expected_rev: None,
                    })
                    .await
                    .unwrap()
                    .rev
            }
        }
    }

    async fn next_event(stream: &mut LogWatch) -> Arc<Event> {
        tokio::time::timeout(DEADLINE, stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .unwrap()
    }

    #[tokio::test]
    async fn watch_from_zero_replays_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..10 {
            put(&store, &format!("/a/{}", i % 3), i).await;
        }
        store
            .write(WriteOp::Delete {
                key: "/a/0".into(),
                expected_rev: None,
            })
            .await
            .unwrap();
        let mut stream = store.log_watch("/a/", 0).unwrap();
        for rev in 1..=11 {
            let event = next_event(&mut stream).await;
            assert_eq!(event.rev, rev);
        }
        assert_eq!(stream.progress(), 11);
        // Live events follow the replay.
        put(&store, "/a/9", 0).await;
        assert_eq!(next_event(&mut stream).await.rev, 12);
    }

    #[tokio::test]
    async fn watch_resumes_from_the_middle_and_filters_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..6 {
            put(&store, if i % 2 == 0 { "/a/x" } else { "/b/x" }, i).await;
        }
        let mut stream = store.log_watch("/a/", 3).unwrap();
        assert_eq!(next_event(&mut stream).await.rev, 5);
        // Revision 6 is outside the prefix, yet the stream has accounted for it.
        assert_eq!(stream.progress(), 6);
        put(&store, "/b/x", 7).await;
        put(&store, "/a/x", 8).await;
        let event = next_event(&mut stream).await;
        assert_eq!((event.rev, event.kind), (8, EventType::Modified));
        assert_eq!(event.prev.as_ref().unwrap()["n"], json!(4));
    }

    #[tokio::test]
    async fn list_then_watch_misses_nothing_and_duplicates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in 0..40u64 {
                        let key = format!("/k/{}", (w * 7 + i) % 25);
                        let op = if i % 5 == 4 {
                            WriteOp::Delete {
                                key,
                                expected_rev: None,
                            }
                        } else {
                            WriteOp::Create {
                                key,
                                object: json!({"w": w, "i": i}),
                                guard: None,
                            }
                        };
                        // Races between writers make some ops fail; only committed ones matter.
                        if store.write(op).await.is_err() {
                            let key = format!("/k/{}", (w * 7 + i) % 25);
                            let object = json!({"w": w, "i": i});
                            let _ = store
                                .write(WriteOp::Update {
                                    key,
                                    object,
                                    expected_rev: None,
                                })
                                .await;
                        }
                    }
                })
            })
            .collect();
        // Let some writes land before the list, so both list and watch carry data.
        while store.current_revision() < 20 {
            tokio::task::yield_now().await;
        }
        let page = store
            .list_now(ListRequest {
                prefix: "/k/",
                start_after: None,
                at_rev: None,
                limit: 0,
                filter: &|_| true,
            })
            .unwrap();
        let mut state: BTreeMap<String, Revision> =
            page.items.iter().map(|s| (s.key.clone(), s.rev)).collect();
        let mut stream = store.log_watch("/k/", page.rev).unwrap();
        for writer in writers {
            writer.await.unwrap();
        }
        let final_rev = store.current_revision();
        let mut last = page.rev;
        while last < final_rev {
            let event = next_event(&mut stream).await;
            assert_eq!(event.rev, last + 1, "gap or duplicate after {last}");
            last = event.rev;
            match event.kind {
                EventType::Deleted => state.remove(&event.key),
                _ => state.insert(event.key.clone(), event.rev),
            };
        }
        let fresh = store
            .list_now(ListRequest {
                prefix: "/k/",
                start_after: None,
                at_rev: None,
                limit: 0,
                filter: &|_| true,
            })
            .unwrap();
        let expected: BTreeMap<String, Revision> =
            fresh.items.iter().map(|s| (s.key.clone(), s.rev)).collect();
        assert_eq!(state, expected);
    }

    #[tokio::test]
    async fn watch_from_a_compacted_revision_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        for i in 0..10 {
            put(&store, "/a", i).await;
        }
        let mut stale = store.log_watch("", 2).unwrap();
        let compacted = store
            .compact(Retention {
                revisions: 3,
                duration: Duration::ZERO,
            })
            .await
            .unwrap();
        assert_eq!(compacted, 7);
        assert!(matches!(
            store.log_watch("", 6),
            Err(StoreError::Compacted {
                requested: 6,
                compacted: 7
            })
        ));
        assert!(store.log_watch("", 7).is_ok());
        // A stream opened before the compaction but not yet replayed learns it on first read.
        let result = tokio::time::timeout(DEADLINE, stale.next()).await.unwrap();
        assert!(matches!(result, Some(Err(StoreError::Compacted { .. }))));
        assert!(stale.next().await.is_none());
    }

    #[tokio::test]
    async fn lagged_watcher_recovers_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = RedbOptions {
            watch_buffer: 4,
            ..Default::default()
        };
        let store = RedbStore::open_with(&dir.path().join("store.redb"), options).unwrap();
        put(&store, "/a", 0).await;
        let mut stream = store.log_watch("", 0).unwrap();
        assert_eq!(next_event(&mut stream).await.rev, 1);
        let reads_when_live = stream.log_reads;
        // 100 commits while the watcher is not polling: far more than its buffer of 4.
        for i in 1..=100 {
            put(&store, "/a", i).await;
        }
        for rev in 2..=101 {
            assert_eq!(next_event(&mut stream).await.rev, rev);
        }
        assert!(
            stream.log_reads > reads_when_live,
            "the stream should have re-read the log"
        );
        put(&store, "/a", 101).await;
        assert_eq!(next_event(&mut stream).await.rev, 102);
    }

    #[tokio::test]
    async fn next_is_cancel_safe_under_select() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut stream = store.log_watch("", 0).unwrap();
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    put(&store, "/a", i).await;
                }
            })
        };
        let mut seen = Vec::new();
        let collect = async {
            while seen.len() < 50 {
                tokio::select! {
                    event = stream.next() => seen.push(event.unwrap().unwrap().rev),
                    // A short timer keeps cancelling `next()` mid-wait, as a bookmark timer would.
                    _ = tokio::time::sleep(Duration::from_micros(50)) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, collect)
            .await
            .expect("all events in time");
        writer.await.unwrap();
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn many_watchers_all_see_every_event_and_end_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut streams: Vec<_> = (0..1000)
            .map(|_| store.log_watch("/a", 0).unwrap())
            .collect();
        for i in 0..20 {
            put(&store, "/a", i).await;
        }
        for stream in &mut streams {
            for rev in 1..=20 {
                assert_eq!(next_event(stream).await.rev, rev);
            }
        }
        store.shutdown();
        for stream in &mut streams {
            assert!(
                tokio::time::timeout(DEADLINE, stream.next())
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }
}
