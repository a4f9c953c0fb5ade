//! The harness every queue-driven controller runs in: a [`Controller`] builder that
//! wires a primary kind's cache, the kinds it owns or watches, a work queue and the
//! workers, so a controller is its reconcile function plus a few lines:
//!
//! ```ignore
//! Controller::new(&ctx, "job", &jobs)
//!     .watches(&pods, move |e| observer.keys_for_pod_event(e))
//!     .workers(2)
//!     .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
//!     .await;
//! ```
//!
//! Also here: the feeds that map cache changes to queue keys, and the worker loop.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Action, Context, WorkQueue, controller_of, key_of};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;

/// One controller's reconcile function over `namespace/name` keys.
pub trait Reconciler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ApiError>>;
}

/// Maps a change of a watched kind to the primary keys it concerns.
type Mapper = Box<dyn Fn(&CacheEvent) -> Vec<String> + Send + 'static>;

/// How a watched kind's changes reach the queue.
enum Watch {
    Map(Mapper),
    /// Any change may concern every primary object.
    All,
}

/// A controller being wired: its primary kind, and what else wakes it.
pub struct Controller {
    ctx: Arc<Context>,
    name: &'static str,
    primary: Arc<Cache>,
    watches: Vec<(Arc<Cache>, Watch)>,
    /// A fake clock's jumps, which enqueue every primary key (see [`Controller::wakes_on`]).
    jumps: Option<tokio::sync::watch::Receiver<u64>>,
    workers: usize,
}

impl Controller {
    /// A controller named `name` (its queue's name in `/metrics`) over the objects of
    /// `primary`: each change of one enqueues its key.
    pub fn new(ctx: &Arc<Context>, name: &'static str, primary: &Arc<Cache>) -> Controller {
        Controller {
            ctx: ctx.clone(),
            name,
            primary: primary.clone(),
            watches: Vec::new(),
            jumps: None,
            workers: 1,
        }
    }

    /// A change of an object in `child` whose controller is a `kind` enqueues that
    /// controller's key (a pod to its DaemonSet, a slice to its Service, ...).
    pub fn owns(self, child: &Arc<Cache>, kind: &'static str) -> Controller {
        self.watches(child, controller_keys(kind))
    }

    /// A change of an object in `other` enqueues the keys `map` gives.
    pub fn watches(
        mut self,
        other: &Arc<Cache>,
        map: impl Fn(&CacheEvent) -> Vec<String> + Send + 'static,
    ) -> Controller {
        self.watches
            .push((other.clone(), Watch::Map(Box::new(map))));
        self
    }

    /// Any change of an object in `other` enqueues every primary key.
    pub fn watches_all(mut self, other: &Arc<Cache>) -> Controller {
        self.watches.push((other.clone(), Watch::All));
        self
    }

    /// Each jump of `clock` (a fake one, moved by a test) enqueues every primary key:
    /// a controller that requeued "in an hour" of that clock looks again when the clock
    /// skips the hour. Between jumps a fake clock runs at the real rate, so the timers
    /// of `Action::RequeueAfter` stay right. The system clock never jumps.
    pub fn wakes_on(mut self, clock: &crate::clock::Clock) -> Controller {
        self.jumps = clock.jumps();
        self
    }

    /// How many keys are reconciled at once (distinct keys only: the queue never
    /// hands out a key that is being worked on).
    pub fn workers(mut self, workers: usize) -> Controller {
        self.workers = workers;
        self
    }

    /// Waits for every cache to sync, then feeds the queue (every primary key first)
    /// and runs the workers, which call `reconcile(state, key)`, until `stop`.
    pub async fn run<S, F, Fut>(self, state: Arc<S>, reconcile: F, stop: CancellationToken)
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ApiError>> + Send + 'static,
    {
        let caches: Vec<&Arc<Cache>> = std::iter::once(&self.primary)
            .chain(self.watches.iter().map(|(c, _)| c))
            .collect();
        if !self.ctx.synced(&caches).await {
            return;
        }
        let queue = self.ctx.queue(self.name);
        let all = all_keys(self.primary.clone());
        tokio::spawn(feed_own(queue.clone(), self.primary, stop.clone()));
        for (cache, watch) in self.watches {
            match watch {
                Watch::Map(map) => {
                    tokio::spawn(feed(queue.clone(), cache, map, all.clone(), stop.clone()))
                }
                Watch::All => {
                    let every = all.clone();
                    tokio::spawn(feed(
                        queue.clone(),
                        cache,
                        move |_| every(),
                        all.clone(),
                        stop.clone(),
                    ))
                }
            };
        }
        if let Some(jumps) = self.jumps {
            tokio::spawn(feed_jumps(queue.clone(), jumps, all.clone(), stop.clone()));
        }
        let reconciler = Arc::new(FnReconciler {
            name: self.name,
            state,
            reconcile,
        });
        run_workers(reconciler, queue, self.workers, stop).await;
    }
}

/// A reconcile function and the state it works on, as a [`Reconciler`].
struct FnReconciler<S, F> {
    name: &'static str,
    state: Arc<S>,
    reconcile: F,
}

impl<S, F, Fut> Reconciler for FnReconciler<S, F>
where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ApiError>> + Send + 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ApiError>> {
        Box::pin((self.reconcile)(self.state.clone(), key))
    }
}

/// Feeds a queue from a cache: each change maps to keys; a re-list (or falling behind)
/// enqueues what `all` returns.
pub fn feed<M, A>(
    queue: Arc<WorkQueue>,
    cache: Arc<Cache>,
    map: M,
    all: A,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    M: Fn(&CacheEvent) -> Vec<String> + Send + 'static,
    A: Fn() -> Vec<String> + Send + 'static,
{
    let mut events = cache.events();
    async move {
        // Subscribed first, then everything the cache already holds: a controller that
        // starts (a new leader, say) reconciles every object once, as an informer's
        // initial ADDED events make client-go's controllers do.
        all().into_iter().for_each(|k| queue.add(k));
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(CacheEvent::Resynced)
                | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    all().into_iter().for_each(|k| queue.add(k));
                }
                Ok(e) => map(&e).into_iter().for_each(|k| queue.add(k)),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Feeds a queue every key `all` returns each time the clock jumps, until `stop`.
async fn feed_jumps<A>(
    queue: Arc<WorkQueue>,
    mut jumps: tokio::sync::watch::Receiver<u64>,
    all: A,
    stop: CancellationToken,
) where
    A: Fn() -> Vec<String> + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = jumps.changed() => {
                if changed.is_err() {
                    return;
                }
                all().into_iter().for_each(|k| queue.add(k));
            }
        }
    }
}

/// Maps a change of an owned object to the key of its controller, when that is a
/// `kind` (a pod to its DaemonSet, a slice to its Service, ...).
pub fn controller_keys(
    kind: &'static str,
) -> impl Fn(&CacheEvent) -> Vec<String> + Clone + Send + 'static {
    move |e| match e {
        CacheEvent::Changed { object, .. } | CacheEvent::Deleted(object) => {
            match controller_of(object) {
                Some((k, name, _)) if k == kind => vec![format!(
                    "{}/{name}",
                    objects::namespace(object).unwrap_or_default()
                )],
                _ => vec![],
            }
        }
        CacheEvent::Resynced => vec![],
    }
}

/// The keys of every object in a cache, for feeds to enqueue on a re-list.
pub fn all_keys(cache: Arc<Cache>) -> impl Fn() -> Vec<String> + Clone + Send + 'static {
    move || cache.snapshot().iter().map(|o| key_of(o)).collect()
}

/// Feeds a controller's queue with the keys of its own kind's objects as they change.
pub fn feed_own(
    queue: Arc<WorkQueue>,
    cache: Arc<Cache>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let all = all_keys(cache.clone());
    feed(
        queue,
        cache,
        |e| match e {
            CacheEvent::Changed { object, .. } | CacheEvent::Deleted(object) => {
                vec![key_of(object)]
            }
            CacheEvent::Resynced => vec![],
        },
        all,
        stop,
    )
}

/// Runs `workers` loops that take keys from the queue and reconcile them, until `stop`.
pub async fn run_workers<R: Reconciler>(
    reconciler: Arc<R>,
    queue: Arc<WorkQueue>,
    workers: usize,
    stop: CancellationToken,
) {
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (r, q) = (reconciler.clone(), queue.clone());
        set.spawn(async move {
            while let Some(key) = q.get().await {
                let started = std::time::Instant::now();
                // A bug that panics on one object must not stop the controller for
                // all of them: the key is retried with back-off like any failure.
                let span = tracing::debug_span!("reconcile", controller = r.name(), key = %key);
                let reconcile = r.clone().reconcile(key.clone()).instrument(span);
                let outcome = std::panic::AssertUnwindSafe(reconcile)
                    .catch_unwind()
                    .await;
                if let Some(work) = &q.metrics().work_duration {
                    work.observe(started.elapsed().as_secs_f64());
                }
                match outcome {
                    Ok(Ok(Action::Done)) => q.forget(&key),
                    Ok(Ok(Action::RequeueAfter(d))) => {
                        q.forget(&key);
                        q.add_after(key.clone(), d);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(controller = r.name(), key, error = %e, "reconcile failed; retrying with back-off");
                        q.retry(&key);
                    }
                    Err(_) => {
                        tracing::error!(controller = r.name(), key, "reconcile panicked; retrying with back-off");
                        q.retry(&key);
                    }
                }
                q.done(&key);
            }
        });
    }
    stop.cancelled().await;
    queue.shutdown();
    while set.join_next().await.is_some() {}
}
