//! `pods/{name}/log`: the API server finds the node that runs the pod and streams the
//! container's log from that node's agent, as kube-apiserver does with the kubelet.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use futures::TryStreamExt;
use serde_json::Value;

use super::Target;
use super::crud::get_stored;
use super::request::Query;
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::state::ApiServer;

/// The query parameters passed through to the agent.
const LOG_PARAMS: &[&str] = &[
    "follow",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "previous",
    "limitBytes",
];

/// Which container to read: the one named, the default-container annotation, or the only one.
fn choose_container(pod: &Value, name: &str, query: &Query) -> ApiResult<String> {
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect();
    let wanted = query.get("container").map(str::to_string).or_else(|| {
        pod.pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match wanted {
        Some(c) if containers.contains(&c.as_str()) => Ok(c),
        Some(c) => Err(ApiError::BadRequest(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].to_string()),
        None => Err(ApiError::BadRequest(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

pub(crate) async fn proxy(api: &ApiServer, target: &Target, query: &Query) -> ApiResult<Response> {
    let name = target.name();
    let pod = get_stored(api, target.info, &target.key(), name).await?;
    let container = choose_container(&pod.object, name, query)?;
    let node_name = pod
        .object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    let Some(node_name) = node_name else {
        return Err(ApiError::BadRequest(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let namespace = target.namespace.as_deref().unwrap_or_default();
    let mut path = reqwest::Url::parse(&format!(
        "http://node/containerLogs/{namespace}/{name}/{container}"
    ))
    .map_err(ApiError::internal)?;
    for p in LOG_PARAMS {
        if let Some(v) = query.get(p) {
            path.query_pairs_mut().append_pair(p, v);
        }
    }
    let path_and_query = match path.query() {
        Some(q) => format!("{}?{q}", path.path()),
        None => path.path().to_string(),
    };
    // The agent's tunnel first: it needs no inbound port on the node.
    if let Some(tunnel) = api.tunnels.get(node_name) {
        let request = http::Request::get(crate::tunnel::uri(&path_and_query))
            .body(crate::tunnel::TunnelBody::default())
            .map_err(ApiError::internal)?;
        let upstream = crate::tunnel::send(tunnel, request)
            .await
            .map_err(|e| ApiError::Upstream(format!("reading logs from node {node_name}: {e}")))?;
        let (parts, body) = upstream.into_parts();
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("text/plain"));
        return Response::builder()
            .status(parts.status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::new(body))
            .map_err(ApiError::internal);
    }
    let nodes = crate::kinds::lookup("", "v1", "nodes").expect("nodes are served");
    let node = get_stored(api, nodes, &nodes.key(None, node_name), node_name).await?;
    let endpoint = objects::agent_address(&node.object).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "node {node_name} has no reachable address for logs"
        ))
    })?;
    let url = reqwest::Url::parse(&format!("http://{endpoint}{path_and_query}"))
        .map_err(ApiError::internal)?;
    let upstream = reqwest::Client::new()
        .get(url)
        .send()
        .await
        .map_err(|e| ApiError::Upstream(format!("reading logs from node {node_name}: {e}")))?;
    let status =
        StatusCode::from_u16(upstream.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = upstream
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("text/plain")
        .to_string();
    let body = Body::from_stream(upstream.bytes_stream().map_err(std::io::Error::other));
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body)
        .map_err(ApiError::internal)
}
