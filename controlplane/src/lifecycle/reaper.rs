//! The pod reaper: a pod marked for graceful deletion goes away when its grace period
//! ends (if no finalizer holds it), even when no agent confirms the kill.
//!
//! Level-based: it keeps the deadline of every terminating pod from a list-then-watch of
//! pods, and at each deadline re-reads the pod and deletes it with compare-and-swap.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::RETRY_DELAY;
use crate::objects;
use crate::store::{EventType, ListRequest, Store, WriteOp};

fn deadline_of(obj: &Value) -> Option<jiff::Timestamp> {
    objects::meta_str(obj, "deletionTimestamp").and_then(objects::parse_time)
}

/// The deletion deadline of every terminating pod, in order.
#[derive(Default)]
struct Deadlines {
    queue: BTreeSet<(jiff::Timestamp, String)>,
    by_key: HashMap<String, jiff::Timestamp>,
}

impl Deadlines {
    /// Records the current state of a pod (`None` once it is gone).
    fn track(&mut self, key: &str, obj: Option<&Value>) {
        if let Some(old) = self.by_key.remove(key) {
            self.queue.remove(&(old, key.to_string()));
        }
        if let Some(d) = obj.and_then(deadline_of) {
            self.by_key.insert(key.to_string(), d);
            self.queue.insert((d, key.to_string()));
        }
    }

    fn next(&self) -> Option<jiff::Timestamp> {
        self.queue.first().map(|(d, _)| *d)
    }

    /// Takes the key of a pod whose deadline has passed.
    fn pop_due(&mut self, now: jiff::Timestamp) -> Option<String> {
        let (d, key) = self.queue.first().cloned().filter(|(d, _)| *d <= now)?;
        self.queue.remove(&(d, key.clone()));
        self.by_key.remove(&key);
        Some(key)
    }
}

pub async fn run_pod_reaper(store: Arc<dyn Store>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(e) = reap(&store, &stop).await {
            tracing::warn!(error = %e, "pod reaper restarting");
            tokio::select! {
                _ = tokio::time::sleep(RETRY_DELAY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

async fn reap(
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
) -> Result<(), crate::store::StoreError> {
    let pods = crate::kinds::lookup("", "v1", "pods").expect("pods are served");
    let prefix = pods.prefix();
    let terminating = |o: &Value| objects::is_deleting(o);
    let page = store.list(ListRequest::all(&prefix, &terminating)).await?;
    let mut deadlines = Deadlines::default();
    for item in &page.items {
        deadlines.track(&item.key, Some(&item.object));
    }
    let mut watch = store.watch(&prefix, page.rev).await?;
    loop {
        let next_deadline = deadlines.next();
        let sleep = match next_deadline {
            Some(d) => {
                let wait = d.duration_since(jiff::Timestamp::now());
                std::time::Duration::try_from(wait).unwrap_or_default()
            }
            None => std::time::Duration::from_secs(3600),
        };
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            event = watch.next() => match event {
                Some(Ok(e)) => {
                    let obj = (e.kind != EventType::Deleted).then_some(&*e.object);
                    deadlines.track(&e.key, obj);
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            _ = tokio::time::sleep(sleep), if next_deadline.is_some() => {
                let now = jiff::Timestamp::now();
                while let Some(key) = deadlines.pop_due(now) {
                    delete_if_due(store, &key, now).await;
                }
            }
        }
    }
}

async fn delete_if_due(store: &Arc<dyn Store>, key: &str, now: jiff::Timestamp) {
    let Ok(Some(current)) = store.get(key).await else {
        return;
    };
    let obj = &*current.object;
    if !objects::finalizers(obj).is_empty() || deadline_of(obj).is_none_or(|d| d > now) {
        return;
    }
    match store
        .write(WriteOp::Delete {
            key: key.to_string(),
            expected_rev: Some(current.rev),
        })
        .await
    {
        Ok(_) => tracing::info!(pod = key, "deleted pod whose grace period ended"),
        // Changed meanwhile: the watch brings the new state and a new deadline.
        Err(e) => tracing::debug!(pod = key, error = %e, "pod reaper lost a race"),
    }
}
