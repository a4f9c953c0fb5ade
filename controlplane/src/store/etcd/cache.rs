//! The watch cache: every object of the cluster in this server's memory, kept current
//! by one etcd watch, as kube-apiserver's watch cache keeps each resource.
//!
//! - **Per resource.** Objects and recent events are kept per kind (`/core/pods/`, …),
//!   each with its own broadcast hub, so a thousand pod watchers are a thousand
//!   receivers of one channel and never see other kinds' traffic, and etcd serves one
//!   watch per server whatever the number of clients.
//! - **Consistent lists.** The cache's revision is that of the last event it applied.
//!   A list first writes the sync key, which lies in the watched range, and waits until
//!   the cache has applied that write, so a list through any server sees every write
//!   acknowledged before it began. This is kube-apiserver's "consistent reads from
//!   cache", with a write of our own in place of etcd's progress notifications (which
//!   etcd 3.4, Debian's, can send ahead of earlier events: etcd issue 15220); lists
//!   that overlap share one write, and writes of objects pay nothing for it.
//! - **No `prev_kv`.** The cache's own watch asks etcd for no previous values: the
//!   cache holds them, so etcd reads nothing extra per event.
//! - **Watches** replay the kind's recent events from memory and then follow its hub.
//!   A watch from before the oldest event kept (or one that fell that far behind) is
//!   served by etcd itself (see `direct`).
//! - **Re-list.** If the cache's own watch falls off etcd's compacted history, it lists
//!   everything again and replaces every kind's state; open watches on the old state end
//!   and their clients resume, as after any watch that ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::client::{EtcdClient, prefix_end};
use super::direct::ResumingWatch;
use super::{CACHE_WAIT, Layout, pb, rev_of, stored};
use crate::store::watch::{DEFAULT_WATCH_BUFFER, LogChunk, LogSource, LogWatch, WatchHub};
use crate::store::{
    Event, EventSource, EventType, ListPage, ListRequest, Revision, StoreError, Stored,
};

/// Recent events kept per kind for watches to resume from. At the pace of the create
/// benchmark (tens of thousands a second) this is a fraction of a second; at a normal
/// cluster's pace, minutes. Older resumes go to etcd.
const EVENTS_PER_KIND: usize = 4096;

/// The resource prefix (`/group/plural/`) a store key or key prefix belongs to, if it
/// names one kind.
pub(super) fn kind_of(prefix: &str) -> Option<&str> {
    let rest = prefix.strip_prefix('/')?;
    let first = rest.find('/')?;
    let second = rest[first + 1..].find('/')?;
    Some(&prefix[..first + second + 3])
}

/// One kind's objects and recent events.
pub(super) struct Shard {
    state: RwLock<ShardState>,
    hub: WatchHub,
}

struct ShardState {
    objects: BTreeMap<String, Stored>,
    /// Every event of this kind with a revision above `oldest`, in order.
    events: VecDeque<Arc<Event>>,
    oldest: Revision,
    /// Every event of this kind up to here is applied.
    through: Revision,
}

impl Shard {
    fn new(from: Revision) -> Shard {
        Shard {
            state: RwLock::new(ShardState {
                objects: BTreeMap::new(),
                events: VecDeque::new(),
                oldest: from,
                through: from,
            }),
            hub: WatchHub::new(DEFAULT_WATCH_BUFFER, from),
        }
    }

    /// An etcd event as the store's event, its previous state taken from this shard
    /// (the cache's watch carries no `prev_kv`).
    fn event(&self, e: &pb::Event, key: &str) -> Result<Option<Event>, StoreError> {
        let Some(kv) = &e.kv else { return Ok(None) };
        let rev = rev_of(kv.mod_revision);
        let prev = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .get(key)
            .map(|s| s.object.clone());
        if e.r#type == pb::event::EventType::Delete as i32 {
            let Some(last) = prev else {
                // Nothing cached to delete (created and deleted before the list).
                return Ok(None);
            };
            // Kubernetes sends the last state, stamped with the delete's revision.
            let mut object = (*last).clone();
            crate::store::set_resource_version(&mut object, rev)
                .map_err(|e| StoreError::Corrupt(format!("object {key}: {e}")))?;
            return Ok(Some(Event {
                rev,
                kind: EventType::Deleted,
                key: key.to_string(),
                object: Arc::new(object),
                prev: Some(last),
            }));
        }
        Ok(Some(Event {
            rev,
            kind: if kv.create_revision == kv.mod_revision {
                EventType::Added
            } else {
                EventType::Modified
            },
            key: key.to_string(),
            object: super::decode(key, &kv.value, rev)?,
            prev,
        }))
    }

    fn apply(&self, event: Arc<Event>) {
        {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            match event.kind {
                EventType::Deleted => {
                    state.objects.remove(&event.key);
                }
                _ => {
                    state.objects.insert(
                        event.key.clone(),
                        Stored {
                            key: event.key.clone(),
                            rev: event.rev,
                            object: event.object.clone(),
                        },
                    );
                }
            }
            if state.events.len() == EVENTS_PER_KIND
                && let Some(dropped) = state.events.pop_front()
            {
                state.oldest = dropped.rev;
            }
            state.events.push_back(event.clone());
            state.through = event.rev;
        }
        let rev = event.rev;
        self.hub.publish([event], rev);
    }
}

impl LogSource for Shard {
    fn hub(&self) -> &WatchHub {
        &self.hub
    }

    fn read_log(&self, prefix: &str, after: Revision, max: usize) -> Result<LogChunk, StoreError> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        if after < state.oldest {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.oldest,
            });
        }
        // Events are in revision order: skip to the first one after `after`.
        let start = state.events.partition_point(|e| e.rev <= after);
        let mut chunk = LogChunk {
            events: Vec::new(),
            scanned_to: after,
            reached_end: false,
        };
        for (taken, event) in state.events.range(start..).enumerate() {
            if taken == max {
                return Ok(chunk);
            }
            if event.key.starts_with(prefix) {
                chunk.events.push(event.clone());
            }
            chunk.scanned_to = event.rev;
        }
        chunk.reached_end = true;
        chunk.scanned_to = chunk.scanned_to.max(state.through);
        Ok(chunk)
    }
}

struct Shards {
    by_kind: HashMap<String, Arc<Shard>>,
    /// The revision of the last (re-)list: every shard holds every event after it.
    listed_at: Revision,
    synced: bool,
}

pub(super) struct WatchCache {
    layout: Layout,
    shards: Mutex<Shards>,
    /// Every object event up to this revision is applied.
    rev: tokio::sync::watch::Sender<Revision>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
    /// The store's compaction record, kept current from the watch.
    compacted: Arc<AtomicU64>,
}

impl WatchCache {
    pub fn start(
        client: Arc<EtcdClient>,
        layout: Layout,
        known: Arc<AtomicU64>,
        compacted: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Arc<WatchCache> {
        let cache = Arc::new(WatchCache {
            layout,
            shards: Mutex::new(Shards {
                by_kind: HashMap::new(),
                listed_at: 0,
                synced: false,
            }),
            rev: tokio::sync::watch::channel(0).0,
            task: Mutex::new(None),
            stop: stop.clone(),
            compacted,
        });
        let task = tokio::spawn(cache.clone().run(client, known, stop));
        *cache.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        cache
    }

    pub async fn close(&self) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        for shard in shards.by_kind.values() {
            shard.hub.close();
        }
    }

    fn shard(&self, kind: &str) -> Option<Arc<Shard>> {
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        if !shards.synced {
            return None;
        }
        let from = shards.listed_at;
        Some(
            shards
                .by_kind
                .entry(kind.to_string())
                .or_insert_with(|| Arc::new(Shard::new(from)))
                .clone(),
        )
    }

    /// One object from memory once the cache has applied `newest`; `None` if it cannot
    /// answer (not synced, or not caught up in time).
    pub async fn get(&self, key: &str, newest: Revision) -> Option<Option<Stored>> {
        let kind = kind_of(key)?;
        if *self.rev.borrow() < newest {
            let mut rev = self.rev.subscribe();
            // The guard `wait_for` answers with is dropped at once (see `list`).
            let caught_up = matches!(
                tokio::time::timeout(CACHE_WAIT, rev.wait_for(|r| *r >= newest)).await,
                Ok(Ok(_))
            );
            if !caught_up {
                return None;
            }
        }
        let shard = self.shard(kind)?;
        let state = shard.state.read().unwrap_or_else(PoisonError::into_inner);
        Some(state.objects.get(key).cloned())
    }

    /// A page from memory once the cache has applied `newest`; `None` if it cannot
    /// (not synced in time, or a prefix that is not one kind's).
    pub async fn list(&self, req: &ListRequest<'_>, newest: Revision) -> Option<ListPage> {
        let kind = kind_of(req.prefix)?;
        let mut rev = self.rev.subscribe();
        // `wait_for` answers with a read guard on the revision: it must go before the
        // revision is read again below. Held, a writer queued in between (the cache's
        // own loop) blocks that second read, and the loop waits for this guard: both
        // stall for good.
        let caught_up = matches!(
            tokio::time::timeout(CACHE_WAIT, rev.wait_for(|r| *r >= newest)).await,
            Ok(Ok(_))
        );
        if !caught_up {
            tracing::debug!(
                newest,
                cache = *self.rev.borrow(),
                "watch cache is behind; reading etcd"
            );
            return None;
        }
        let shard = self.shard(kind)?;
        let state = shard.state.read().unwrap_or_else(PoisonError::into_inner);
        // The page is exactly the state as of this revision: everything applied to this
        // kind, and every other revision up to the cache's, which did not touch it.
        let at = state.through.max(*self.rev.borrow());
        let lower = match req.start_after {
            Some(after) if after >= req.prefix => Bound::Excluded(after.to_string()),
            _ => Bound::Included(req.prefix.to_string()),
        };
        let mut items = Vec::new();
        let mut more = false;
        for (key, item) in state.objects.range((lower, Bound::Unbounded)) {
            if !key.starts_with(req.prefix) {
                break;
            }
            if !(req.filter)(&item.object) {
                continue;
            }
            if req.limit != 0 && items.len() == req.limit {
                more = true;
                break;
            }
            items.push(item.clone());
        }
        Some(ListPage {
            items,
            rev: at,
            more,
        })
    }

    /// A watch from memory, if the kind's recent events reach back to `after`.
    pub fn watch(&self, prefix: &str, after: Revision) -> Option<CachedWatch> {
        let kind = kind_of(prefix)?;
        let shard = self.shard(kind)?;
        {
            let state = shard.state.read().unwrap_or_else(PoisonError::into_inner);
            if after < state.oldest {
                return None;
            }
        }
        let watch = LogWatch::start(shard, prefix, after).ok()?;
        Some(CachedWatch { watch })
    }

    async fn run(
        self: Arc<Self>,
        client: Arc<EtcdClient>,
        known: Arc<AtomicU64>,
        stop: CancellationToken,
    ) {
        while !stop.is_cancelled() {
            match self.list_and_watch(&client, &known, &stop).await {
                Ok(()) => return,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch cache re-listing");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    /// Lists every object at one revision, then applies the watch from there.
    async fn list_and_watch(
        &self,
        client: &Arc<EtcdClient>,
        known: &AtomicU64,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let registry = self.layout.registry().into_bytes();
        let end = prefix_end(&registry);
        let mut from = registry.clone();
        let mut rev = 0i64;
        let mut by_kind: HashMap<String, BTreeMap<String, Stored>> = HashMap::new();
        loop {
            let r = client
                .range(pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: super::RANGE_PAGE,
                    revision: rev,
                    ..Default::default()
                })
                .await
                .map_err(super::unavailable)?;
            if rev == 0 {
                rev = r.header.as_ref().map(|h| h.revision).unwrap_or(0);
            }
            for kv in &r.kvs {
                let Some(item) = stored(&self.layout, kv)? else {
                    continue;
                };
                let Some(kind) = kind_of(&item.key) else {
                    continue;
                };
                by_kind
                    .entry(kind.to_string())
                    .or_default()
                    .insert(item.key.clone(), item);
            }
            match r.kvs.last() {
                Some(last) if r.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => break,
            }
        }
        let listed = rev_of(rev);
        known.fetch_max(listed, Ordering::AcqRel);
        let mut watch =
            ResumingWatch::start(client.clone(), registry, listed, false, stop.clone()).await?;
        {
            let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
            for old in shards.by_kind.values() {
                // Watches on the old state end; their clients resume from their revision.
                old.hub.close();
            }
            shards.by_kind = by_kind
                .into_iter()
                .map(|(kind, objects)| {
                    let shard = Shard::new(listed);
                    shard
                        .state
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .objects = objects;
                    (kind, Arc::new(shard))
                })
                .collect();
            shards.listed_at = listed;
            shards.synced = true;
        }
        self.rev.send_replace(listed);
        tracing::debug!(revision = listed, "etcd watch cache listed");

        let record = self.layout.compaction_record();
        loop {
            let batch = watch.next().await?;
            known.fetch_max(batch.header_rev, Ordering::AcqRel);
            let mut newest = None;
            for e in &batch.events {
                let Some(kv) = &e.kv else { continue };
                // Every event moves the cache's revision, bookkeeping (sync writes) too.
                newest = Some(rev_of(kv.mod_revision));
                if kv.key == record {
                    if let Some(rev) = super::compaction_record_value(&kv.value) {
                        self.compacted.fetch_max(rev, Ordering::AcqRel);
                    }
                    continue;
                }
                let Some(key) = self.layout.store_key(&kv.key) else {
                    continue;
                };
                let Some(shard) = kind_of(key).and_then(|kind| self.shard(kind)) else {
                    continue;
                };
                if let Some(event) = shard.event(e, key)? {
                    shard.apply(Arc::new(event));
                }
            }
            if let Some(rev) = newest {
                self.rev.send_if_modified(|r| {
                    let moved = rev > *r;
                    *r = (*r).max(rev);
                    moved
                });
            }
        }
    }
}

/// A store watch served from the cache; if it falls behind what the cache keeps, it
/// reports `Compacted` from the kind's events and the caller (the store) does not see
/// a gap, because the store only hands out cached watches that start within the window.
pub(super) struct CachedWatch {
    watch: LogWatch,
}

impl EventSource for CachedWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Arc<Event>, StoreError>>> {
        Box::pin(self.watch.next())
    }

    fn progress(&self) -> Revision {
        self.watch.progress()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_first_two_segments() {
        assert_eq!(kind_of("/core/pods/default/web"), Some("/core/pods/"));
        assert_eq!(kind_of("/core/pods/"), Some("/core/pods/"));
        assert_eq!(kind_of("/apps/deployments/ns/"), Some("/apps/deployments/"));
        assert_eq!(kind_of("/core/"), None);
        assert_eq!(kind_of(""), None);
        assert_eq!(kind_of("/"), None);
    }
}
