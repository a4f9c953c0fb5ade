//! The controllers that run inside `skiff server`, and what they share: the leader
//! term's watch-backed caches (one per kind, shared with the scheduler), a work queue
//! per controller, and the worker loop that reconciles keys and requeues failures with
//! back-off.
//!
//! Every controller is level-based: `reconcile(key)` reads the current state of that
//! object and what it owns, decides, acts, and returns whether to look again later. It
//! is never told which event woke it, and it never modifies cached objects.

pub mod app;
pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod nodelifecycle;
pub mod podutil;
pub mod queue;
pub mod replicaset;

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use skiff_api::resources::ResourceInfo;
use skiff_api::selector::LabelSelector;

use crate::apiserver::ApiServer;
use crate::apiserver::error::{ApiError, Subject};
use crate::apiserver::internal;
use crate::apiserver::objects;
use crate::informer::{Cache, CacheEvent, Informers};
pub use queue::WorkQueue;

/// What a reconcile decided about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Converged: wait for the next change.
    Done,
    /// Look again after this long even if nothing changes (a timer the state implies).
    RequeueAfter(Duration),
}

/// One controller's reconcile function over `namespace/name` keys.
pub trait Reconciler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn reconcile(self: Arc<Self>, key: String) -> BoxFuture<'static, Result<Action, ApiError>>;
}

/// What every controller starts from: the API, and the caches of the leader's term
/// (shared with the scheduler through the server's [`SharedInformers`]).
///
/// [`SharedInformers`]: crate::informer::SharedInformers
pub struct Context {
    api: Arc<ApiServer>,
    informers: Arc<Informers>,
}

impl Context {
    pub fn new(api: Arc<ApiServer>, informers: Arc<Informers>) -> Arc<Context> {
        Arc::new(Context { api, informers })
    }

    pub fn api(&self) -> &Arc<ApiServer> {
        &self.api
    }

    /// A work queue for the controller `name`, counted in `/metrics`.
    pub fn queue(&self, name: &'static str) -> Arc<WorkQueue> {
        Arc::new(WorkQueue::with_metrics(self.api.metrics.queue(name)))
    }

    /// The cache of a resource (group "" is core), started if new.
    pub fn cache(&self, group: &'static str, plural: &'static str) -> Arc<Cache> {
        self.informers.cache(group, plural)
    }

    /// Waits for the caches to finish their first list; false if stopped first.
    pub async fn synced(&self, caches: &[&Arc<Cache>]) -> bool {
        self.informers.synced(caches).await
    }
}

/// `namespace/name` of an object.
pub fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        objects::namespace(obj).unwrap_or_default(),
        objects::name(obj)
    )
}

pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The controller owner reference of an object (kind and uid).
pub fn controller_of(obj: &Value) -> Option<(&str, &str, &str)> {
    obj.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller") == Some(&Value::Bool(true)))
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default(),
                r["uid"].as_str().unwrap_or_default(),
            )
        })
}

/// The label selector in an object's `spec.selector`; None when missing, invalid or
/// empty (which would select everything).
pub fn selector_of(obj: &Value) -> Option<LabelSelector> {
    let sel = serde_json::from_value(obj.pointer("/spec/selector")?.clone()).ok()?;
    LabelSelector::from_label_selector(&sel)
        .ok()
        .filter(|s| !s.is_empty())
}

/// Makes `owner` the controller of an orphan that its selector matches. None when
/// another controller took it, or it went away, meanwhile.
pub async fn adopt(
    api: &ApiServer,
    info: &'static ResourceInfo,
    obj: &Value,
    owner: Value,
) -> Result<Option<Value>, ApiError> {
    let result = internal::update(
        api,
        info,
        objects::namespace(obj),
        objects::name(obj),
        |current| {
            if controller_of(current).is_some() {
                return Err(ApiError::Conflict(
                    Subject::new(info, objects::name(current)),
                    "already owned".into(),
                ));
            }
            let mut next = current.clone();
            let refs = next["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            next["metadata"]["ownerReferences"] =
                Value::Array(refs.into_iter().chain([owner.clone()]).collect());
            Ok(next)
        },
    )
    .await;
    match result {
        Ok(v) => Ok(Some(v)),
        Err(ApiError::Conflict(..) | ApiError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lets go of an object the owner's selector no longer matches.
pub async fn release(
    api: &ApiServer,
    info: &'static ResourceInfo,
    obj: &Value,
    owner_uid: &str,
) -> Result<(), ApiError> {
    let result = internal::update(
        api,
        info,
        objects::namespace(obj),
        objects::name(obj),
        |current| {
            let mut next = current.clone();
            if let Some(refs) = next
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r["uid"] != owner_uid);
            }
            Ok(next)
        },
    )
    .await;
    match result {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
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

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease is older than this is considered lost.
    pub node_monitor_grace: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(40),
        }
    }
}

/// Starts every controller, reading the caches of `informers`; they stop with `stop`.
pub fn start(
    api: Arc<ApiServer>,
    informers: Arc<Informers>,
    config: ControllerConfig,
    stop: CancellationToken,
) -> JoinSet<()> {
    let informers = Context::new(api, informers);
    let mut set = JoinSet::new();
    set.spawn(replicaset::run(informers.clone(), stop.clone()));
    set.spawn(deployment::run(informers.clone(), stop.clone()));
    set.spawn(endpointslice::run(informers.clone(), stop.clone()));
    set.spawn(app::run(informers.clone(), stop.clone()));
    set.spawn(gc::run(informers.clone(), stop.clone()));
    set.spawn(daemonset::run(informers.clone(), stop.clone()));
    set.spawn(job::run(informers.clone(), stop.clone()));
    set.spawn(nodelifecycle::run(
        informers.clone(),
        config.node_monitor_grace,
        stop,
    ));
    set
}
