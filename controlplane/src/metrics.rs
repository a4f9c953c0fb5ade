//! The server's Prometheus metrics at `/metrics` (prometheus-client, the Prometheus
//! project's own Rust client). Where Kubernetes has a metric for the same thing, it has
//! the same name and labels, so existing dashboards apply:
//! - kube-apiserver: `apiserver_request_total`, `apiserver_request_duration_seconds`,
//!   `apiserver_registered_watchers`;
//! - kube-scheduler: `scheduler_schedule_attempts_total`,
//!   `scheduler_scheduling_attempt_duration_seconds`, `scheduler_pending_pods`;
//! - client-go work queues: `workqueue_depth`, `workqueue_adds_total`,
//!   `workqueue_retries_total`, `workqueue_work_duration_seconds`.
//!
//! The store (etcd's place) and the gateway (an ingress's) have `skiff_` names.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use skiff_api::metrics::AppRequests;

use crate::store::StoreMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
    profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PendingLabels {
    queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    name: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // kube-apiserver's buckets, in seconds.
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ])
}

/// kube-scheduler's buckets: 1 ms doubling to 16 s.
fn attempt_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// client-go's work-queue buckets: 1 µs to 10 s by powers of ten.
fn work_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 10.0, 8))
}

/// The scheduler's metrics; clones share the series.
#[derive(Clone)]
pub struct SchedulerMetrics {
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Histograms<AttemptLabels>,
    pending: Family<PendingLabels, Gauge>,
}

impl SchedulerMetrics {
    /// One scheduling attempt of one pod ended: `scheduled` (bound), `unschedulable`
    /// (no node fits) or `error` (the binding failed).
    pub fn attempt(&self, result: &'static str, took: Duration) {
        let labels = AttemptLabels {
            result,
            profile: "default-scheduler",
        };
        self.attempts.get_or_create(&labels).inc();
        self.attempt_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Pods waiting: `active` will be tried at the next pass, `backoff` wait out a delay.
    pub fn pending(&self, active: usize, backoff: usize) {
        for (queue, n) in [("active", active), ("backoff", backoff)] {
            self.pending
                .get_or_create(&PendingLabels { queue })
                .set(n as i64);
        }
    }
}

/// One controller's work-queue metrics, as client-go names them.
#[derive(Clone, Default)]
pub struct QueueMetrics {
    pub depth: Gauge,
    pub adds: Counter,
    pub retries: Counter,
    pub work_duration: Option<Histogram>,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Histograms<LatencyLabels>,
    watchers: Family<WatchLabels, Gauge>,
    pub scheduler: SchedulerMetrics,
    /// The gateway's requests, per app.
    pub gateway: AppRequests,
    /// How long requests to Apps scaled to zero waited for a replica.
    pub cold_start: Histogram,
    module_downloads: Family<NodeLabels, Counter>,
    queue_depth: Family<QueueLabels, Gauge>,
    queue_adds: Family<QueueLabels, Counter>,
    queue_retries: Family<QueueLabels, Counter>,
    queue_work: Histograms<QueueLabels>,
}

impl Default for Metrics {
    /// Metrics with a store of their own (not the server's), for tests.
    fn default() -> Self {
        Metrics::new(&StoreMetrics::default())
    }
}

impl Metrics {
    /// Every metric of the server; the store's series are the store's own handles.
    pub fn new(store: &StoreMetrics) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Requests, by verb, resource and HTTP code",
            requests.clone(),
        );
        let latency = Histograms::<LatencyLabels>::new_with_constructor(latency_histogram);
        registry.register(
            "apiserver_request_duration_seconds",
            "Time to the response headers, by verb and resource (watches excluded)",
            latency.clone(),
        );
        let watchers = Family::<WatchLabels, Gauge>::default();
        registry.register(
            "apiserver_registered_watchers",
            "Watches open now, by resource",
            watchers.clone(),
        );
        registry.register(
            "skiff_store_commit_duration_seconds",
            "Time of one durable group commit of the store (etcd's backend commit)",
            store.commit_duration.clone(),
        );
        registry.register(
            "skiff_store_commit_batch_size",
            "Writes made durable by one group commit",
            store.batch_size.clone(),
        );

        let scheduler = SchedulerMetrics {
            attempts: Family::default(),
            attempt_duration: Histograms::new_with_constructor(attempt_histogram),
            pending: Family::default(),
        };
        registry.register(
            "scheduler_schedule_attempts",
            "Attempts to schedule a pod, by result",
            scheduler.attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Time from the start of an attempt to its binding or its refusal",
            scheduler.attempt_duration.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Pods waiting to be scheduled, by queue (active or backoff)",
            scheduler.pending.clone(),
        );

        let queue_depth = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "workqueue_depth",
            "Keys waiting in a controller's work queue",
            queue_depth.clone(),
        );
        let queue_adds = Family::<QueueLabels, Counter>::default();
        registry.register(
            "workqueue_adds",
            "Keys added to a controller's work queue",
            queue_adds.clone(),
        );
        let queue_retries = Family::<QueueLabels, Counter>::default();
        registry.register(
            "workqueue_retries",
            "Keys requeued with back-off after a failed reconcile",
            queue_retries.clone(),
        );
        let queue_work = Histograms::<QueueLabels>::new_with_constructor(work_histogram);
        registry.register(
            "workqueue_work_duration_seconds",
            "Time one reconcile of a key takes",
            queue_work.clone(),
        );

        let gateway =
            AppRequests::register(&mut registry, "skiff_gateway", "the gateway forwarded");
        // 0.5 ms to ~16 s: a Wasm cold start is milliseconds, a slow pull seconds.
        let cold_start = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
        );
        registry.register(
            "skiff_gateway_cold_start_seconds",
            "How long a request to an App scaled to zero was held until a replica was ready",
            cold_start.clone(),
        );
        let module_downloads = Family::<NodeLabels, Counter>::default();
        registry.register(
            "skiff_node_module_downloads",
            "Module bytes served to nodes (agents pulling an image), by node",
            module_downloads.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watchers,
            scheduler,
            gateway,
            cold_start,
            module_downloads,
            queue_depth,
            queue_adds,
            queue_retries,
            queue_work,
        }
    }

    /// The metrics of one controller's work queue.
    pub fn queue(&self, name: &'static str) -> QueueMetrics {
        let labels = QueueLabels { name };
        QueueMetrics {
            depth: self.queue_depth.get_or_create(&labels).clone(),
            adds: self.queue_adds.get_or_create(&labels).clone(),
            retries: self.queue_retries.get_or_create(&labels).clone(),
            work_duration: Some(self.queue_work.get_or_create(&labels).clone()),
        }
    }

    /// A node was served a module's bytes: an agent pulled an image it had not cached.
    pub fn module_download(&self, node: &str) {
        self.module_downloads
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A watch open now; dropping it (the stream ending) counts it out.
struct OpenWatch {
    metrics: Arc<Metrics>,
    resource: String,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.metrics
            .watchers
            .get_or_create(&WatchLabels {
                resource: self.resource.clone(),
            })
            .dec();
    }
}

impl Metrics {
    /// Counts a request, and times it (a watch is counted as open until its stream
    /// ends instead). `verb` and `resource` are kube-apiserver's labels.
    pub fn observe(
        self: &Arc<Self>,
        verb: &'static str,
        resource: String,
        started: Instant,
        response: Response,
    ) -> Response {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.to_string(),
                resource: resource.clone(),
                code: response.status().as_u16().to_string(),
            })
            .inc();
        if verb == "WATCH" {
            if response.status() != StatusCode::OK {
                return response;
            }
            self.watchers
                .get_or_create(&WatchLabels {
                    resource: resource.clone(),
                })
                .inc();
            let open = OpenWatch {
                metrics: self.clone(),
                resource,
            };
            let (parts, body) = response.into_parts();
            // The guard lives as long as the body streams.
            let body = axum::body::Body::from_stream(futures::StreamExt::map(
                body.into_data_stream(),
                move |chunk| {
                    let _ = &open;
                    chunk
                },
            ));
            return Response::from_parts(parts, body);
        }
        self.latency
            .get_or_create(&LatencyLabels {
                verb: verb.to_string(),
                resource,
            })
            .observe(started.elapsed().as_secs_f64());
        response
    }
}
