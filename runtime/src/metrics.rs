//! The agent's Prometheus metrics, served at `/metrics` on its listener and through its
//! tunnel (`/api/v1/nodes/NAME/proxy/metrics` on the server). Where the kubelet or
//! kube-state-metrics has a metric for the same thing, it has the same name and labels:
//! `kubelet_pod_start_duration_seconds`, `kubelet_running_pods`,
//! `kube_pod_container_status_restarts_total`. The rest are `skiff_agent_`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use skiff_api::metrics::{AppRequests, millisecond_histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    namespace: String,
    app: String,
    reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    running_instances: Gauge,
    instance_starts: Counter,
    pods: Gauge,
    pod_start: Histogram,
    cache_hits: Family<TierLabels, Counter>,
    cache_misses: Counter,
    compile: Histogram,
    pulled_bytes: Counter,
    pull_transfer: Histogram,
    restarts: Family<ContainerLabels, Counter>,
    http: AppRequests,
    http_faults: Family<FaultLabels, Counter>,
    /// 1 while the control plane refuses this node's credential (`credential.rs`).
    pub credential_refused: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let running_instances = Gauge::default();
        registry.register(
            "skiff_agent_running_instances",
            "Wasm instances running now (HTTP components count one per pod)",
            running_instances.clone(),
        );
        let instance_starts = Counter::default();
        registry.register(
            "skiff_agent_instance_starts",
            "Wasm instances started, restarts included",
            instance_starts.clone(),
        );
        let pods = Gauge::default();
        registry.register(
            "kubelet_running_pods",
            "Pods this agent is running",
            pods.clone(),
        );
        let pod_start = millisecond_histogram();
        registry.register(
            "kubelet_pod_start_duration_seconds",
            "Time from the agent first seeing a pod to all its containers running",
            pod_start.clone(),
        );
        let cache_hits = Family::<TierLabels, Counter>::default();
        registry.register(
            "skiff_agent_module_cache_hits",
            "Programs found compiled, by tier: memory (loaded) or disk (a cached artifact)",
            cache_hits.clone(),
        );
        let cache_misses = Counter::default();
        registry.register(
            "skiff_agent_module_cache_misses",
            "Programs that had to be compiled",
            cache_misses.clone(),
        );
        // 10 ms doubling to 82 s: a small module to a very large component.
        let compile = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "skiff_agent_module_compile_duration_seconds",
            "Time Cranelift took to compile a module or component",
            compile.clone(),
        );
        let pulled_bytes = Counter::default();
        registry.register(
            "skiff_agent_image_pull_bytes",
            "Bytes of Wasm downloaded from registries and the module store",
            pulled_bytes.clone(),
        );
        // 1 ms doubling to 65 s: a small component on loopback to a large one far away.
        let pull_transfer = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "skiff_agent_image_pull_transfer_duration_seconds",
            "Time an image download took",
            pull_transfer.clone(),
        );
        let restarts = Family::<ContainerLabels, Counter>::default();
        registry.register(
            "kube_pod_container_status_restarts",
            "Restarts of a container of a pod running here",
            restarts.clone(),
        );
        let http = AppRequests::register(
            &mut registry,
            "skiff_agent_http",
            "the apps on this agent answered",
        );
        let http_faults = Family::<FaultLabels, Counter>::default();
        registry.register(
            "skiff_agent_http_request_faults",
            "Requests whose instance trapped, ran out of memory or hit its CPU time limit",
            http_faults.clone(),
        );
        let credential_refused = Gauge::default();
        registry.register(
            "skiff_agent_credential_refused",
            "1 while the control plane refuses this node's credential (revoked): re-join with a new join token",
            credential_refused.clone(),
        );
        Metrics {
            registry,
            running_instances,
            instance_starts,
            pods,
            pod_start,
            cache_hits,
            cache_misses,
            compile,
            pulled_bytes,
            pull_transfer,
            restarts,
            http,
            http_faults,
            credential_refused,
        }
    }

    pub fn instance_started(&self) {
        self.running_instances.inc();
        self.instance_starts.inc();
    }

    pub fn instance_ended(&self) {
        self.running_instances.dec();
    }

    pub fn set_pods(&self, n: usize) {
        self.pods.set(n as i64);
    }

    pub fn pod_started(&self, took: Duration) {
        self.pod_start.observe(took.as_secs_f64());
    }

    /// A program was found compiled: `memory` or `disk`.
    pub fn module_cache_hit(&self, tier: &'static str) {
        self.cache_hits.get_or_create(&TierLabels { tier }).inc();
    }

    /// A program had to be compiled, which took `took`.
    pub fn module_compiled(&self, took: Duration) {
        self.cache_misses.inc();
        self.compile.observe(took.as_secs_f64());
    }

    /// An image of `bytes` was downloaded in `took`.
    pub fn image_pulled(&self, bytes: u64, took: Duration) {
        self.pulled_bytes.inc_by(bytes);
        self.pull_transfer.observe(took.as_secs_f64());
    }

    pub fn container_restarted(&self, namespace: &str, pod: &str, container: &str) {
        self.restarts
            .get_or_create(&ContainerLabels {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.to_string(),
            })
            .inc();
    }

    /// A pod left this agent: its series go with it.
    pub fn forget_pod(&self, namespace: &str, pod: &str, containers: &[String]) {
        for container in containers {
            self.restarts.remove(&ContainerLabels {
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                container: container.clone(),
            });
        }
    }

    /// An app answered a request `code` after `took` (to the response head).
    /// The request series of one app, for its pods to count into.
    pub fn app_requests(&self, namespace: &str, app: &str) -> skiff_api::metrics::AppSeries {
        self.http.app(namespace, app)
    }

    /// A request's instance failed: `trap`, `memory` or `timeout`.
    pub fn http_fault(&self, namespace: &str, app: &str, reason: &'static str) {
        self.http_faults
            .get_or_create(&FaultLabels {
                namespace: namespace.to_string(),
                app: app.to_string(),
                reason,
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
