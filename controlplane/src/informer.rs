//! Watch-backed caches of objects for the loops inside the server, and the registry
//! that shares them.
//!
//! A [`Cache`] lists a key prefix, then follows the store's watch from the list's
//! revision, and re-lists whenever the watch falls off the retained log. One writer,
//! many cheap readers.
//!
//! [`SharedInformers`] holds one cache per kind for the whole server, as client-go's
//! SharedInformerFactory does: the scheduler, the controllers and the gateway ask it
//! for the kinds they read and get the same cache. They ask through an [`Informers`]
//! scope, which holds its kinds until it is shut down; a cache runs from its first
//! request while any scope holds it. So the gateway's caches live as long as the
//! server, the leader's as long as its term, and a kind both need is listed and
//! watched once; a server that loses the lead stops watching what only the leader
//! read, and a new term starts those caches afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::store::{EventType, ListRequest, Store, StoreError};

/// The cached objects by store key; readers get `Arc`s and never mutate them.
/// One change the cache applied, for controllers that map changes to work-queue keys.
#[derive(Debug, Clone)]
pub enum CacheEvent {
    /// Created or updated; `prev` is the object before, if it was cached.
    Changed {
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    },
    Deleted(Arc<Value>),
    /// The cache was (re-)listed: anything may have changed.
    Resynced,
}

/// Changes buffered per subscriber; one that falls further behind gets `Lagged` and
/// should treat it as `Resynced`.
const EVENT_BUFFER: usize = 16_384;

pub struct Cache {
    objects: RwLock<HashMap<String, Arc<Value>>>,
    events: tokio::sync::broadcast::Sender<CacheEvent>,
    /// Bumped after every change and after each (re-)list; nothing is missed by a
    /// subscriber that is busy when it happens.
    changed: tokio::sync::watch::Sender<u64>,
    synced: std::sync::atomic::AtomicBool,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            objects: RwLock::default(),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            changed: tokio::sync::watch::channel(0).0,
            synced: Default::default(),
        }
    }
}

impl Cache {
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A number that changes whenever the cache does.
    pub fn version(&self) -> u64 {
        *self.changed.borrow()
    }

    /// Every change from now on, one by one.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<CacheEvent> {
        self.events.subscribe()
    }

    pub fn snapshot(&self) -> Vec<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether any cached object satisfies `f`, read in place, without copying the set.
    pub fn any(&self, f: impl Fn(&Value) -> bool) -> bool {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|object| f(object))
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps the cache current until `stop`.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        prefix: String,
        stop: CancellationToken,
    ) {
        while !stop.is_cancelled() {
            if let Err(e) = self.list_and_watch(&store, &prefix, &stop).await {
                tracing::debug!(prefix, error = %e, "cache re-listing");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    async fn list_and_watch(
        &self,
        store: &Arc<dyn Store>,
        prefix: &str,
        stop: &CancellationToken,
    ) -> Result<(), StoreError> {
        let everything = |_: &Value| true;
        let page = store.list(ListRequest::all(prefix, &everything)).await?;
        let mut watch = store.watch(prefix, page.rev).await?;
        {
            let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
            *objects = page.items.into_iter().map(|s| (s.key, s.object)).collect();
        }
        self.synced
            .store(true, std::sync::atomic::Ordering::Release);
        // A re-list may have skipped any number of changes: subscribers that map
        // changes to work must look at everything again.
        let _ = self.events.send(CacheEvent::Resynced);
        self.changed.send_modify(|n| *n += 1);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                event = watch.next() => match event {
                    Some(Ok(e)) => {
                        let mut objects = self.objects.write().unwrap_or_else(|p| p.into_inner());
                        let change = match e.kind {
                            EventType::Deleted => {
                                objects.remove(&e.key);
                                CacheEvent::Deleted(e.object.clone())
                            }
                            _ => CacheEvent::Changed { prev: objects.insert(e.key.clone(), e.object.clone()), object: e.object.clone() },
                        };
                        drop(objects);
                        let _ = self.events.send(change);
                        self.changed.send_modify(|n| *n += 1);
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
    }
}

/// A kind of object, by API group ("" is core) and plural.
pub type Kind = (&'static str, &'static str);

/// One running cache and how many scopes hold it.
struct Shared {
    cache: Arc<Cache>,
    holders: usize,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The server's caches, one per kind, each running while some [`Informers`] scope
/// holds it.
pub struct SharedInformers {
    store: Arc<dyn Store>,
    running: Mutex<HashMap<Kind, Shared>>,
    /// Stops every cache, whoever holds it (the server's end).
    stop: CancellationToken,
}

impl SharedInformers {
    pub fn new(store: Arc<dyn Store>, stop: CancellationToken) -> Arc<SharedInformers> {
        Arc::new(SharedInformers {
            store,
            running: Mutex::default(),
            stop,
        })
    }

    /// A scope for one set of loops; waits for syncing end at `stop`.
    pub fn scope(self: &Arc<Self>, stop: CancellationToken) -> Arc<Informers> {
        Arc::new(Informers {
            shared: self.clone(),
            held: Mutex::default(),
            stop,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Kind, Shared>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cache of a kind, started if none runs; the caller holds it once more.
    fn acquire(&self, kind: Kind) -> Arc<Cache> {
        let mut running = self.lock();
        let shared = running.entry(kind).or_insert_with(|| {
            let (group, plural) = kind;
            // The key space of the resource, which outlives its kind being served (a
            // CRD's may be dropped at any time).
            let prefix = format!(
                "/{}/{plural}/",
                if group.is_empty() { "core" } else { group }
            );
            let cache = Arc::new(Cache::default());
            let stop = self.stop.child_token();
            let task = tokio::spawn(cache.clone().run(self.store.clone(), prefix, stop.clone()));
            Shared {
                cache,
                holders: 0,
                stop,
                task,
            }
        });
        shared.holders += 1;
        shared.cache.clone()
    }

    /// Lets go of kinds; those no one holds any more are stopped, and their tasks
    /// returned to wait for. A later request starts a fresh cache.
    fn release(&self, kinds: impl IntoIterator<Item = Kind>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut running = self.lock();
        let mut stopped = Vec::new();
        for kind in kinds {
            let Some(shared) = running.get_mut(&kind) else {
                continue;
            };
            shared.holders -= 1;
            if shared.holders == 0 {
                let shared = running.remove(&kind).expect("just seen");
                shared.stop.cancel();
                stopped.push(shared.task);
            }
        }
        stopped
    }
}

/// The caches one set of loops reads (a leader term's scheduler and controllers, the
/// gateway), taken from the [`SharedInformers`] on first use and let go together.
pub struct Informers {
    shared: Arc<SharedInformers>,
    held: Mutex<HashMap<Kind, Arc<Cache>>>,
    stop: CancellationToken,
}

impl Informers {
    /// The cache of a resource (group "" is core), started if new.
    pub fn cache(&self, group: &'static str, plural: &'static str) -> Arc<Cache> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.entry((group, plural))
            .or_insert_with(|| self.shared.acquire((group, plural)))
            .clone()
    }

    /// Waits for the caches to finish their first list; false if stopped first.
    pub async fn synced(&self, caches: &[&Arc<Cache>]) -> bool {
        for cache in caches {
            let mut changes = cache.subscribe();
            while !cache.is_synced() {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return false },
                    _ = self.stop.cancelled() => return false,
                }
            }
        }
        true
    }

    /// Lets go of this scope's caches and waits for those that stopped.
    pub async fn shutdown(&self) {
        for task in self.release() {
            let _ = task.await;
        }
    }

    fn release(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        self.shared.release(held.into_keys())
    }
}

impl Drop for Informers {
    /// A scope dropped without a shutdown still lets go (without waiting).
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;

    fn running(shared: &SharedInformers, kind: Kind) -> Option<(usize, bool)> {
        shared
            .lock()
            .get(&kind)
            .map(|s| (s.holders, s.stop.is_cancelled()))
    }

    #[tokio::test]
    async fn scopes_share_one_cache_per_kind_until_the_last_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        let shared = SharedInformers::new(store, CancellationToken::new());
        let server = shared.scope(CancellationToken::new());
        let term = shared.scope(CancellationToken::new());
        let nodes = server.cache("", "nodes");
        assert!(Arc::ptr_eq(&nodes, &term.cache("", "nodes")));
        assert!(
            Arc::ptr_eq(&nodes, &term.cache("", "nodes")),
            "held once per scope"
        );
        let pods = term.cache("", "pods");
        assert!(term.synced(&[&nodes, &pods]).await);
        assert_eq!(running(&shared, ("", "nodes")), Some((2, false)));

        // The term ends: what only it read stops, what the server still reads runs on.
        term.shutdown().await;
        assert_eq!(running(&shared, ("", "pods")), None);
        assert_eq!(running(&shared, ("", "nodes")), Some((1, false)));

        // A new term gets the running nodes cache and a fresh pods cache.
        let next = shared.scope(CancellationToken::new());
        assert!(Arc::ptr_eq(&nodes, &next.cache("", "nodes")));
        assert!(!Arc::ptr_eq(&pods, &next.cache("", "pods")));
        drop(next);
        assert_eq!(running(&shared, ("", "pods")), None);
        server.shutdown().await;
        assert!(shared.lock().is_empty());
    }
}
