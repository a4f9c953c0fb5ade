//! A watch-backed cache of one kind of object, for the loops inside the server: it lists
//! a key prefix, then follows the store's watch from the list's revision, and re-lists
//! whenever the watch falls off the retained log. One writer, many cheap readers.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
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
