//! A work queue in the style of client-go's: keys are deduplicated while queued, a key
//! being processed is never handed to a second worker (a change meanwhile queues it once
//! more), and failures requeue with exponential back-off until forgotten.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::Notify;

use crate::metrics::QueueMetrics;

/// First and last delay of the failure back-off.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Keys added while being processed: queued again when done.
    again: HashSet<String>,
    delayed: BTreeMap<(Instant, u64), String>,
    seq: u64,
    failures: HashMap<String, u32>,
    closed: bool,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
    metrics: QueueMetrics,
}

impl WorkQueue {
    /// A queue whose depth, adds and retries show in `/metrics`.
    pub fn with_metrics(metrics: QueueMetrics) -> WorkQueue {
        WorkQueue {
            metrics,
            ..WorkQueue::default()
        }
    }

    pub fn metrics(&self) -> &QueueMetrics {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the depth: keys ready to be handed out, as client-go counts it.
    fn publish(&self, s: &State) {
        self.metrics.depth.set(s.ready.len() as i64);
    }

    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        self.metrics.adds.inc();
        let mut s = self.lock();
        if s.processing.contains(&key) {
            s.again.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
            self.publish(&s);
            drop(s);
            self.wake.notify_one();
        }
    }

    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let mut s = self.lock();
        s.seq += 1;
        let seq = s.seq;
        s.delayed.insert((Instant::now() + delay, seq), key.into());
        drop(s);
        self.wake.notify_one();
    }

    /// Requeues after a failure, waiting longer each consecutive time.
    pub fn retry(&self, key: &str) {
        self.metrics.retries.inc();
        let n = {
            let mut s = self.lock();
            let n = s.failures.entry(key.to_string()).or_default();
            *n += 1;
            *n
        };
        let delay = BACKOFF_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(BACKOFF_MAX);
        self.add_after(key, delay);
    }

    /// A key reconciled successfully: its back-off starts over.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// The next key to work on; `None` once the queue is shut down.
    pub async fn get(&self) -> Option<String> {
        loop {
            // Registered before the state is read, so a shutdown (notify_waiters) between
            // the check and the wait cannot be missed.
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let sleep_until = {
                let mut s = self.lock();
                if s.closed {
                    return None;
                }
                let now = Instant::now();
                while let Some((&(at, seq), _)) = s.delayed.first_key_value() {
                    if at > now {
                        break;
                    }
                    let key = s.delayed.remove(&(at, seq)).expect("just seen");
                    if s.processing.contains(&key) {
                        s.again.insert(key);
                    } else if s.queued.insert(key.clone()) {
                        s.ready.push_back(key);
                    }
                }
                let next = s.ready.pop_front();
                self.publish(&s);
                if let Some(key) = next {
                    s.queued.remove(&key);
                    s.processing.insert(key.clone());
                    return Some(key);
                }
                s.delayed.first_key_value().map(|((at, _), _)| *at)
            };
            match sleep_until {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// The worker finished with `key`.
    pub fn done(&self, key: &str) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.again.remove(key) && s.queued.insert(key.to_string()) {
            s.ready.push_back(key.to_string());
            self.publish(&s);
            drop(s);
            self.wake.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        let s = self.lock();
        s.ready.len() + s.delayed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shutdown(&self) {
        self.lock().closed = true;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_never_processed_twice_at_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        q.add("a"); // changed while being processed
        assert_eq!(q.get().await.unwrap(), "b");
        q.done("b");
        q.done("a");
        assert_eq!(
            q.get().await.unwrap(),
            "a",
            "queued again once processing ended"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_and_forget_resets() {
        let q = WorkQueue::default();
        q.retry("k");
        let started = tokio::time::Instant::now();
        assert_eq!(q.get().await.unwrap(), "k");
        q.done("k");
        q.retry("k");
        assert_eq!(q.get().await.unwrap(), "k");
        assert!(
            started.elapsed() >= BACKOFF_FIRST * 3,
            "second retry waits twice as long"
        );
        q.done("k");
        q.forget("k");
        assert!(q.lock().failures.is_empty());
        q.shutdown();
        assert!(q.get().await.is_none());
    }
}
