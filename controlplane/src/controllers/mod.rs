//! The controllers that run inside `skiff server`, and what they share: the leader
//! term's watch-backed caches (one per kind, shared with the scheduler), the helpers
//! that claim and release owned objects, and the [`harness`] that wires a controller's
//! caches to its work queue and workers.
//!
//! Every controller is level-based: `reconcile(key)` reads the current state of that
//! object and what it owns, decides, acts, and returns whether to look again later. It
//! is never told which event woke it, and it never modifies cached objects.

pub mod app;
pub mod clusterroleaggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpointslice;
pub mod gc;
pub mod harness;
pub mod hpa;
pub mod job;
pub mod nodelifecycle;
pub mod podutil;
pub mod queue;
pub mod replicaset;
pub mod serviceaccount;
pub mod statefulset;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;
use skiff_api::selector::LabelSelector;

use crate::apiserver::internal;
use crate::error::{ApiError, Subject};
use crate::informer::{Cache, Informers};
use crate::objects;
use crate::state::ApiServer;
pub use harness::Controller;
pub use queue::WorkQueue;

/// What a reconcile decided about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Converged: wait for the next change.
    Done,
    /// Look again after this long even if nothing changes (a timer the state implies).
    RequeueAfter(Duration),
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

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A node whose Lease is older than this is considered lost.
    pub node_monitor_grace: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated.
    pub hpa_sync_period: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace: Duration::from_secs(40),
            hpa_sync_period: hpa::DEFAULT_SYNC_PERIOD,
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
    let ctx = Context::new(api, informers);
    let mut set = JoinSet::new();
    set.spawn(replicaset::run(ctx.clone(), stop.clone()));
    set.spawn(deployment::run(ctx.clone(), stop.clone()));
    set.spawn(endpointslice::run(ctx.clone(), stop.clone()));
    set.spawn(app::run(ctx.clone(), stop.clone()));
    set.spawn(gc::run(ctx.clone(), stop.clone()));
    set.spawn(daemonset::run(ctx.clone(), stop.clone()));
    set.spawn(job::run(ctx.clone(), stop.clone()));
    set.spawn(disruption::run(ctx.clone(), stop.clone()));
    set.spawn(volume::run(ctx.clone(), stop.clone()));
    set.spawn(statefulset::run(ctx.clone(), stop.clone()));
    set.spawn(cronjob::run(ctx.clone(), stop.clone()));
    set.spawn(clusterroleaggregation::run(ctx.clone(), stop.clone()));
    set.spawn(serviceaccount::run(ctx.clone(), stop.clone()));
    set.spawn(hpa::run(ctx.clone(), config.hpa_sync_period, stop.clone()));
    set.spawn(nodelifecycle::run(
        ctx.clone(),
        config.node_monitor_grace,
        stop,
    ));
    set
}
