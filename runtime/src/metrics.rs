//! The agent's Prometheus metrics, served at `/metrics` on its listener.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    running_instances: Gauge,
    instance_starts: Counter,
    module_compiles: Counter,
    pods: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("skiff_agent");
        let running_instances = Gauge::default();
        registry.register(
            "running_instances",
            "Wasm instances running now",
            running_instances.clone(),
        );
        let instance_starts = Counter::default();
        registry.register(
            "instance_starts",
            "Wasm instances started, restarts included",
            instance_starts.clone(),
        );
        let module_compiles = Counter::default();
        registry.register(
            "module_compiles",
            "Modules compiled with Cranelift (not loaded from the cache)",
            module_compiles.clone(),
        );
        let pods = Gauge::default();
        registry.register("pods", "Pods this agent is running", pods.clone());
        Metrics {
            registry,
            running_instances,
            instance_starts,
            module_compiles,
            pods,
        }
    }

    pub fn instance_started(&self) {
        self.running_instances.inc();
        self.instance_starts.inc();
    }

    pub fn instance_ended(&self) {
        self.running_instances.dec();
    }

    pub fn module_compiled(&self) {
        self.module_compiles.inc();
    }

    pub fn set_pods(&self, n: usize) {
        self.pods.set(n as i64);
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
