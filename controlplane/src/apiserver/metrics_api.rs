//! The resource metrics API (`metrics.k8s.io/v1beta1`: PodMetrics and NodeMetrics, what
//! `kubectl top` reads) and the custom metrics API (`custom.metrics.k8s.io/v1beta2`: the
//! request rate and the requests in flight of pods and Apps), served from the usage the
//! server scrapes from the agents (`crate::usage`). In Kubernetes both are served by
//! add-ons (metrics-server, a custom-metrics adapter) behind the aggregation layer; here
//! the server answers them itself, read-only, at the same paths and in the same shapes.

use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{APIGroup, APIResource, APIResourceList};
use serde_json::{Value, json};

use skiff_api::selector::{FieldSelector, LabelSelector};

use super::request::{Query, json_response};
use crate::error::{ApiError, ApiResult, Subject};
use crate::state::SharedApi;
use crate::store::ListRequest;
use crate::usage::{NodeUsage, PodUsage};

pub const RESOURCE_GROUP: &str = "metrics.k8s.io";
pub const RESOURCE_VERSION: &str = "v1beta1";
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
pub const CUSTOM_VERSION: &str = "v1beta2";

/// The custom metrics served, of pods and of Apps.
pub const REQUESTS_PER_SECOND: &str = "http_requests_per_second";
pub const REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
/// Requests the app answered with a 5xx, per second (what the dashboard charts as the
/// error rate next to the request rate).
pub const ERRORS_PER_SECOND: &str = "http_errors_per_second";
const CUSTOM_METRICS: [&str; 3] = [REQUESTS_PER_SECOND, REQUESTS_IN_FLIGHT, ERRORS_PER_SECOND];
/// The App kind's resource in custom metrics paths, as `kubectl get` would name it.
const APPS_RESOURCE: &str = "apps.skiff.dev";

/// The metrics groups, for `/apis` and `/apis/{group}`.
pub(super) fn group_names() -> [&'static str; 2] {
    [RESOURCE_GROUP, CUSTOM_GROUP]
}

pub(super) fn api_group(name: &str) -> Option<APIGroup> {
    let version = match name {
        RESOURCE_GROUP => RESOURCE_VERSION,
        CUSTOM_GROUP => CUSTOM_VERSION,
        _ => return None,
    };
    Some(super::discovery::one_version_group(name, version))
}

pub(super) fn resource_list(group: &str, version: &str) -> Option<APIResourceList> {
    let resource = |name: String, kind: &str, namespaced: bool, verbs: &[&str]| APIResource {
        name,
        singular_name: String::new(),
        namespaced,
        kind: kind.into(),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let resources = match (group, version) {
        (RESOURCE_GROUP, RESOURCE_VERSION) => vec![
            resource("nodes".into(), "NodeMetrics", false, &["get", "list"]),
            resource("pods".into(), "PodMetrics", true, &["get", "list"]),
        ],
        (CUSTOM_GROUP, CUSTOM_VERSION) => ["pods", APPS_RESOURCE]
            .iter()
            .flat_map(|of| {
                CUSTOM_METRICS
                    .iter()
                    .map(move |m| resource(format!("{of}/{m}"), "MetricValueList", true, &["get"]))
            })
            .collect(),
        _ => return None,
    };
    Some(APIResourceList {
        group_version: format!("{group}/{version}"),
        resources,
    })
}

/// A metrics object that is not there, named as metrics-server names it.
fn not_found(
    plural: &'static str,
    group: &'static str,
    kind: &'static str,
    name: &str,
) -> ApiError {
    ApiError::NotFound(Subject::virtual_resource(group, plural, kind, name))
}

fn only_reads(method: &Method) -> ApiResult<()> {
    if method == Method::GET {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(format!(
            "{method} is not supported: the metrics APIs are read-only"
        )))
    }
}

/// The selectors of a list: `labelSelector` and `fieldSelector` (`metadata.name`,
/// `metadata.namespace`).
fn selectors(query: &Query) -> ApiResult<(LabelSelector, FieldSelector)> {
    let labels = match query.get("labelSelector") {
        Some(s) => LabelSelector::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))?,
        None => LabelSelector::everything(),
    };
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok((labels, fields))
}

/// The objects of a kind (in one namespace, or all), from the store.
async fn objects(api: &SharedApi, plural: &str, namespace: Option<&str>) -> ApiResult<Vec<Value>> {
    let info = crate::kinds::lookup("", "v1", plural).ok_or(ApiError::NoRoute)?;
    let prefix = info.namespace_prefix(namespace);
    let page = api.store.list(ListRequest::all(&prefix, &|_| true)).await?;
    Ok(page
        .items
        .into_iter()
        .map(|s| (*s.object).clone())
        .collect())
}

fn labels_of(object: &Value) -> Value {
    object
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}))
}

fn rfc3339(at: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(at).map_or_else(
        |_| skiff_api::time::now_rfc3339(),
        skiff_api::time::format_time,
    )
}

fn seconds(window: std::time::Duration) -> String {
    format!("{}s", window.as_secs().max(1))
}

fn memory(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

fn pod_metrics(usage: &PodUsage, labels: Value) -> Value {
    json!({
        "kind": "PodMetrics",
        "apiVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
        "metadata": {
            "name": usage.name,
            "namespace": usage.namespace,
            "labels": labels,
            "creationTimestamp": skiff_api::time::now_rfc3339(),
        },
        "timestamp": rfc3339(usage.timestamp),
        "window": seconds(usage.window),
        "containers": usage.containers.iter().map(|c| json!({
            "name": c.name,
            "usage": {"cpu": format!("{}n", c.cpu_nanocores), "memory": memory(c.memory_bytes)},
        })).collect::<Vec<_>>(),
    })
}

fn node_metrics(usage: &NodeUsage, labels: Value) -> Value {
    json!({
        "kind": "NodeMetrics",
        "apiVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
        "metadata": {
            "name": usage.name,
            "labels": labels,
            "creationTimestamp": skiff_api::time::now_rfc3339(),
        },
        "timestamp": rfc3339(usage.timestamp),
        "window": seconds(usage.window),
        "usage": {"cpu": format!("{}n", usage.cpu_nanocores), "memory": memory(usage.memory_bytes)},
    })
}

fn list(kind: &str, api_version: String, items: Vec<Value>) -> Response {
    json_response(
        StatusCode::OK,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": {}, "items": items}),
    )
}

/// `GET /apis/metrics.k8s.io/v1beta1/...`: pods (all, in a namespace, or one) and nodes.
pub(super) async fn resource_metrics(
    State(api): State<SharedApi>,
    Path(rest): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    serve_resource_metrics(&api, &rest, &method, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve_resource_metrics(
    api: &SharedApi,
    rest: &str,
    method: &Method,
    query: Option<&str>,
) -> ApiResult<Response> {
    only_reads(method)?;
    let query = Query::parse(query)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let api_version = format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}");
    match segments.as_slice() {
        ["nodes"] => {
            let (labels, fields) = selectors(&query)?;
            let mut items = Vec::new();
            for node in objects(api, "nodes", None).await? {
                if !labels.matches_value(&node) || !fields.matches(&node) {
                    continue;
                }
                if let Some(usage) = api.usage.node(crate::objects::name(&node)) {
                    items.push(node_metrics(&usage, labels_of(&node)));
                }
            }
            Ok(list("NodeMetricsList", api_version, items))
        }
        ["nodes", name] => {
            let usage = api
                .usage
                .node(name)
                .ok_or_else(|| not_found("nodes", RESOURCE_GROUP, "NodeMetrics", name))?;
            let info = crate::kinds::lookup("", "v1", "nodes").ok_or(ApiError::NoRoute)?;
            let labels = api
                .store
                .get(&info.key(None, name))
                .await?
                .map_or_else(|| json!({}), |n| labels_of(&n.object));
            Ok(json_response(StatusCode::OK, &node_metrics(&usage, labels)))
        }
        ["pods"] => pods_list(api, None, &query, api_version).await,
        ["namespaces", namespace, "pods"] => {
            pods_list(api, Some(namespace), &query, api_version).await
        }
        ["namespaces", namespace, "pods", name] => {
            let usage = api
                .usage
                .pod(namespace, name)
                .ok_or_else(|| not_found("pods", RESOURCE_GROUP, "PodMetrics", name))?;
            let info = crate::kinds::lookup("", "v1", "pods").ok_or(ApiError::NoRoute)?;
            let labels = api
                .store
                .get(&info.key(Some(namespace), name))
                .await?
                .map_or_else(|| json!({}), |p| labels_of(&p.object));
            Ok(json_response(StatusCode::OK, &pod_metrics(&usage, labels)))
        }
        _ => Err(ApiError::NoRoute),
    }
}

async fn pods_list(
    api: &SharedApi,
    namespace: Option<&str>,
    query: &Query,
    api_version: String,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(query)?;
    let mut items = Vec::new();
    for pod in objects(api, "pods", namespace).await? {
        if !labels.matches_value(&pod) || !fields.matches(&pod) {
            continue;
        }
        if let Some(usage) = api.usage.of_pod(&pod) {
            items.push(pod_metrics(&usage, labels_of(&pod)));
        }
    }
    Ok(list("PodMetricsList", api_version, items))
}

/// A metric's value as a quantity: whole numbers plain, others in thousandths.
fn quantity(value: f64) -> String {
    let milli = (value * 1000.0).round() as i64;
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

fn metric_of(usage: &PodUsage, metric: &str) -> f64 {
    match metric {
        REQUESTS_IN_FLIGHT => usage.in_flight as f64,
        ERRORS_PER_SECOND => usage.errors_per_second,
        _ => usage.requests_per_second,
    }
}

fn metric_value(
    described: Value,
    metric: &str,
    at: std::time::SystemTime,
    window: std::time::Duration,
    value: f64,
) -> Value {
    json!({
        "describedObject": described,
        "metric": {"name": metric},
        "timestamp": rfc3339(at),
        "windowSeconds": window.as_secs().max(1),
        "value": quantity(value),
    })
}

/// `GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/{pods|apps.skiff.dev}/{NAME|*}/METRIC`.
pub(super) async fn custom_metrics(
    State(api): State<SharedApi>,
    Path(rest): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
) -> Response {
    serve_custom_metrics(&api, &rest, &method, query.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve_custom_metrics(
    api: &SharedApi,
    rest: &str,
    method: &Method,
    query: Option<&str>,
) -> ApiResult<Response> {
    only_reads(method)?;
    let query = Query::parse(query)?;
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let ["namespaces", namespace, resource, name, metric] = segments.as_slice() else {
        return Err(ApiError::NoRoute);
    };
    if !CUSTOM_METRICS.contains(metric) {
        return Err(ApiError::NotFound(Subject::virtual_resource(
            CUSTOM_GROUP,
            "metrics",
            "MetricValue",
            &format!("{resource}/{metric}"),
        )));
    }
    let (labels, _) = selectors(&query)?;
    let pods = objects(api, "pods", Some(namespace)).await?;
    let measured = |pod: &Value| api.usage.of_pod(pod);
    let mut items = Vec::new();
    match *resource {
        "pods" => {
            for pod in &pods {
                let named = *name == "*" || crate::objects::name(pod) == *name;
                if !named || !labels.matches_value(pod) {
                    continue;
                }
                if let Some(usage) = measured(pod) {
                    items.push(metric_value(
                        json!({"kind": "Pod", "namespace": namespace, "name": usage.name, "apiVersion": "/v1"}),
                        metric,
                        usage.timestamp,
                        usage.window,
                        metric_of(&usage, metric),
                    ));
                }
            }
            if *name != "*" && items.is_empty() {
                return Err(not_found("pods", CUSTOM_GROUP, "MetricValue", name));
            }
        }
        APPS_RESOURCE => {
            let apps = crate::controllers::app::apps();
            let prefix = apps.namespace_prefix(Some(namespace));
            let page = api.store.list(ListRequest::all(&prefix, &|_| true)).await?;
            for app in page.items.iter().map(|s| &s.object) {
                let app_name = crate::objects::name(app);
                if (*name != "*" && app_name != *name) || !labels.matches_value(app) {
                    continue;
                }
                // The App's figure is its pods' sum: its request rate as the gateway sees it.
                let of_app: Vec<PodUsage> = pods
                    .iter()
                    .filter(|p| {
                        p.pointer(&format!(
                            "/metadata/labels/{}",
                            crate::controllers::app::APP_LABEL.replace('/', "~1")
                        ))
                        .and_then(Value::as_str)
                            == Some(app_name)
                    })
                    .filter_map(measured)
                    .collect();
                let (Some(at), Some(window)) = (
                    of_app.iter().map(|u| u.timestamp).max(),
                    of_app.iter().map(|u| u.window).max(),
                ) else {
                    continue;
                };
                let total: f64 = of_app.iter().map(|u| metric_of(u, metric)).sum();
                items.push(metric_value(
                    json!({"kind": "App", "namespace": namespace, "name": app_name, "apiVersion": "skiff.dev/v1"}),
                    metric,
                    at,
                    window,
                    total,
                ));
            }
            if *name != "*" && items.is_empty() {
                return Err(not_found("apps", CUSTOM_GROUP, "MetricValue", name));
            }
        }
        _ => return Err(ApiError::NoRoute),
    }
    Ok(list(
        "MetricValueList",
        format!("{CUSTOM_GROUP}/{CUSTOM_VERSION}"),
        items,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quantities() {
        assert_eq!(quantity(5.0), "5");
        assert_eq!(quantity(1.5), "1500m");
        assert_eq!(quantity(0.0), "0");
        assert_eq!(quantity(0.0004), "0");
    }

    #[test]
    fn discovery_lists_the_metrics_resources() {
        let pods = resource_list(RESOURCE_GROUP, RESOURCE_VERSION).unwrap();
        assert!(
            pods.resources
                .iter()
                .any(|r| r.kind == "PodMetrics" && r.namespaced)
        );
        let custom = resource_list(CUSTOM_GROUP, CUSTOM_VERSION).unwrap();
        assert!(
            custom
                .resources
                .iter()
                .any(|r| r.name == "apps.skiff.dev/http_requests_per_second")
        );
        assert!(
            custom
                .resources
                .iter()
                .any(|r| r.name == "pods/http_errors_per_second")
        );
        assert!(resource_list(RESOURCE_GROUP, "v1").is_none());
    }
}
