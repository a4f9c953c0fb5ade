//! The HTTP apps this agent serves: pods whose container is a wasi:http component,
//! registered while they run, and the routing of requests to them.
//!
//! A request reaches a pod in one of two ways, on the agent's listener and over its
//! tunnel alike:
//! - the gateway names the pod it chose in the `x-skiff-pod: NAMESPACE/NAME` header,
//!   and has already given the app its own path (see `gateway.rs`), so the request is
//!   served as it comes;
//! - otherwise, by the pod's routes (the `skiff.dev/routes` annotation the App
//!   controller sets): a Host (`web.default.localhost`) and/or a path prefix
//!   (`/default/web/`). The longest matching route wins; among its ready pods,
//!   requests go round-robin. A matched path prefix is stripped and named in
//!   `X-Forwarded-Prefix`, as the gateway does, so the app sees the same paths either
//!   way. This is what lets a client on an edge device reach an app while the control
//!   plane is away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::wasm::{HttpSpec, Program};

pub use skiff_api::routes::{
    OUTBOUND_ANNOTATION, POD_HEADER, ROUTES_ANNOTATION, Route, UNSERVED_HEADER,
};

/// Requests one pod serves at once unless its `skiff.dev/max-concurrency` annotation
/// says otherwise; more wait for a slot.
pub const DEFAULT_MAX_CONCURRENCY: usize = 100;

/// How long a request waits for a free slot before it gets 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// One running HTTP pod.
pub struct ServedPod {
    pub namespace: String,
    pub name: String,
    /// The app it serves, as metrics label it (see [`app_of`]).
    pub app: String,
    /// Its app's request series in the agent's metrics.
    pub requests: skiff_api::metrics::AppSeries,
    pub program: Arc<Program>,
    pub spec: HttpSpec,
    pub routes: Vec<Route>,
    /// Cancelled when the pod stops; in-flight instances are interrupted.
    pub stop: CancellationToken,
    /// Readiness (its probe, if any, passes); traffic by route goes to ready pods only.
    pub ready: AtomicBool,
    pub slots: Arc<Semaphore>,
    /// Requests handed to the app, and those in flight, for `kubectl top` and the
    /// autoscaler.
    pub counters: Arc<crate::usage::RequestCounters>,
}

/// The app a pod belongs to, for metrics: its App's name, else the conventional
/// `app.kubernetes.io/name` or `app` label, else the pod's own name.
pub fn app_of(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    let labels = pod.metadata.labels.as_ref();
    ["app.skiff.dev/name", "app.kubernetes.io/name", "app"]
        .iter()
        .find_map(|k| labels?.get(*k))
        .or(pod.metadata.name.as_ref())
        .cloned()
        .unwrap_or_default()
}

impl ServedPod {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stop.is_cancelled()
    }
}

/// What routing found for a request.
pub enum Routed {
    /// The pod, and the path prefix of the route that matched (stripped before the app
    /// sees the request), if it has one.
    Pod(Arc<ServedPod>, Option<String>),
    /// A route matched (the app's name is given) but none of its pods is ready.
    NoneReady(String),
    NotFound,
}

#[derive(Default)]
pub struct AppRegistry {
    pods: RwLock<HashMap<(String, String), Arc<ServedPod>>>,
    next: AtomicUsize,
}

impl AppRegistry {
    pub fn insert(&self, pod: Arc<ServedPod>) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, pod);
    }

    /// Removes the pod, if `served` is still the one registered under its name.
    pub fn remove(&self, served: &Arc<ServedPod>) {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        let key = (served.namespace.clone(), served.name.clone());
        if pods.get(&key).is_some_and(|p| Arc::ptr_eq(p, served)) {
            pods.remove(&key);
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<ServedPod>> {
        self.pods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.pods.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pod for a request by its Host and path: the most specific route's ready
    /// pods, round-robin.
    pub fn route(&self, host: &str, path: &str) -> Routed {
        let host = skiff_api::routes::request_host(host);
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let mut best: Option<(usize, &Route)> = None;
        let mut candidates: Vec<&Arc<ServedPod>> = Vec::new();
        for pod in pods.values() {
            // Equal scores mean the same route: no two different routes match one
            // request equally well.
            let matched = pod
                .routes
                .iter()
                .filter_map(|r| r.matches(&host, path).map(|score| (score, r)))
                .max_by_key(|(score, _)| *score);
            let Some((score, route)) = matched else {
                continue;
            };
            match best {
                Some((b, _)) if b > score => {}
                Some((b, _)) if b == score => candidates.push(pod),
                _ => {
                    best = Some((score, route));
                    candidates.clear();
                    candidates.push(pod);
                }
            }
        }
        let Some((_, route)) = best else {
            return Routed::NotFound;
        };
        let mut ready: Vec<&Arc<ServedPod>> =
            candidates.into_iter().filter(|p| p.is_ready()).collect();
        if ready.is_empty() {
            let app = route
                .host
                .clone()
                .or_else(|| route.path_prefix.clone())
                .unwrap_or_default();
            return Routed::NoneReady(app);
        }
        ready.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let i = self.next.fetch_add(1, Ordering::Relaxed) % ready.len();
        Routed::Pod(ready[i].clone(), route.path_prefix.clone())
    }
}
