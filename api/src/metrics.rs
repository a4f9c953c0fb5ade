//! Metrics the gateway and the agent both keep, so their series have the same shape:
//! HTTP requests to apps, by namespace, app and code, and their latency.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    namespace: String,
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppCodeLabels {
    namespace: String,
    app: String,
    code: String,
}

/// 1 ms doubling to 32 s: apps and pod starts here take milliseconds.
pub fn millisecond_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Requests answered by apps, and how long each took to its response head; clones
/// share the series.
#[derive(Clone)]
pub struct AppRequests {
    requests: Family<AppCodeLabels, Counter>,
    duration: Family<AppLabels, Histogram, fn() -> Histogram>,
}

impl AppRequests {
    /// Registers `PREFIX_requests_total` and `PREFIX_request_duration_seconds`; `whose`
    /// says who answered them, for the help texts.
    pub fn register(registry: &mut Registry, prefix: &str, whose: &str) -> AppRequests {
        let metrics = AppRequests {
            requests: Family::default(),
            duration: Family::new_with_constructor(millisecond_histogram),
        };
        registry.register(
            format!("{prefix}_requests"),
            format!("Requests {whose}, by namespace, app and HTTP code"),
            metrics.requests.clone(),
        );
        registry.register(
            format!("{prefix}_request_duration_seconds"),
            format!("Time from a request's arrival to its response head ({whose}), by app"),
            metrics.duration.clone(),
        );
        metrics
    }

    /// The series of one app, resolved once: what a server of many requests to one
    /// app keeps, so a request costs no label allocation or map lookup.
    pub fn app(&self, namespace: &str, app: &str) -> AppSeries {
        AppSeries {
            family: self.clone(),
            namespace: namespace.to_string(),
            app: app.to_string(),
            duration: self
                .duration
                .get_or_create(&AppLabels {
                    namespace: namespace.to_string(),
                    app: app.to_string(),
                })
                .clone(),
            codes: Default::default(),
        }
    }
}

/// One app's series (see [`AppRequests::app`]); its per-code counters are resolved on
/// first use.
pub struct AppSeries {
    family: AppRequests,
    namespace: String,
    app: String,
    duration: Histogram,
    codes: std::sync::RwLock<Vec<(u16, Counter)>>,
}

impl AppSeries {
    /// A request answered `code` after `took`.
    pub fn observe(&self, code: u16, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        let known = self
            .codes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, counter)| counter.clone());
        let counter = known.unwrap_or_else(|| {
            let counter = self
                .family
                .requests
                .get_or_create(&AppCodeLabels {
                    namespace: self.namespace.clone(),
                    app: self.app.clone(),
                    code: code.to_string(),
                })
                .clone();
            self.codes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .push((code, counter.clone()));
            counter
        });
        counter.inc();
    }
}
