//! The server's Prometheus metrics at `/metrics` (prometheus-client, the Prometheus
//! project's own Rust client), named and labelled as kube-apiserver names its own so
//! existing dashboards apply: requests by verb, resource and code, their latency, and
//! the watches open.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::apiserver::SharedApi;

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

fn latency_histogram() -> Histogram {
    // kube-apiserver's buckets, in seconds.
    Histogram::new([
        0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
        10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
    ])
}

pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    watchers: Family<WatchLabels, Gauge>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "apiserver_request",
            "Requests, by verb, resource and HTTP code",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
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
        ApiMetrics {
            registry,
            requests,
            latency,
            watchers,
        }
    }
}

impl ApiMetrics {
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
    metrics: Arc<ApiMetrics>,
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

impl ApiMetrics {
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

/// `GET /metrics`.
pub fn routes(api: SharedApi) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .with_state(api)
}

async fn serve(State(api): State<SharedApi>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}
