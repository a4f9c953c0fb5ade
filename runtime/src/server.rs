//! The agent's listener: container logs for the API server's `pods/log` proxy, health,
//! metrics, and everything else to the HTTP apps of the pods running here (see
//! `apps.rs` for how a request finds its pod).

use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::logs::{self, ContainerLog, LogQuery};
use crate::runtime::Runtime;

pub fn router(rt: Arc<Runtime>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(skiff_api::usage::PATH, get(usage))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .fallback(serve_app)
        .with_state(rt)
}

/// Ready unless the control plane refuses this node's credential: then it says why and
/// what to do (the pods keep running; the node can no longer report).
async fn readyz(State(rt): State<Arc<Runtime>>) -> Response {
    if rt.credential.refused() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]credential failed: {}\n", rt.credential.message()),
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}

async fn metrics(State(rt): State<Arc<Runtime>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        rt.metrics.render(),
    )
        .into_response()
}

/// The running pods' usage, which the server scrapes for `kubectl top` and autoscaling.
async fn usage(State(rt): State<Arc<Runtime>>) -> Response {
    axum::Json(rt.usage.report()).into_response()
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code.as_u16()});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn parse_query(q: &HashMap<String, String>) -> Result<LogQuery, String> {
    let flag = |k: &str| matches!(q.get(k).map(String::as_str), Some("true" | "1"));
    let num = |k: &str| -> Result<Option<i64>, String> {
        q.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<i64>().map_err(|_| format!("invalid {k}: {v:?}")))
            .transpose()
    };
    let since = match (
        num("sinceSeconds")?,
        q.get("sinceTime").filter(|v| !v.is_empty()),
    ) {
        (Some(s), _) => Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(s.max(0))),
        (None, Some(t)) => Some(t.parse().map_err(|_| format!("invalid sinceTime: {t:?}"))?),
        _ => None,
    };
    Ok(LogQuery {
        previous: flag("previous"),
        tail_lines: num("tailLines")?.filter(|n| *n >= 0).map(|n| n as usize),
        since,
        timestamps: flag("timestamps"),
        limit_bytes: num("limitBytes")?.filter(|n| *n > 0).map(|n| n as usize),
        follow: flag("follow"),
    })
}

async fn container_logs(
    State(rt): State<Arc<Runtime>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    Query(raw): Query<HashMap<String, String>>,
) -> Response {
    let query = match parse_query(&raw) {
        Ok(q) => q,
        Err(m) => return status(StatusCode::BAD_REQUEST, "BadRequest", m),
    };
    let Some(log) = rt.logs.get(&namespace, &pod, &container) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("container {container} of pod {namespace}/{pod} has no logs on this node"),
        );
    };
    let files = log.files(query.previous);
    if query.previous && files.is_empty() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
        );
    }
    let (lines, offset) =
        match tokio::task::spawn_blocking(move || logs::read_lines(&files, query_tail(&raw))).await
        {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    format!("reading logs: {e}"),
                );
            }
            Err(e) => {
                return status(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    e.to_string(),
                );
            }
        };
    let mut first = logs::render(&lines, &query);
    if let Some(limit) = query.limit_bytes {
        first.truncate(limit);
    }
    let follow =
        query.follow && !query.previous && query.limit_bytes.is_none_or(|l| first.len() < l);
    let body = if follow {
        Body::from_stream(follow_stream(log, first, offset, query))
    } else {
        Body::from(first)
    };
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn query_tail(raw: &HashMap<String, String>) -> Option<usize> {
    raw.get("tailLines")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(|n| n as usize)
}

/// The lines already written, then new ones as they come, until the instance ends or
/// the byte limit is reached.
fn follow_stream(
    log: Arc<ContainerLog>,
    first: Vec<u8>,
    offset: u64,
    query: LogQuery,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut sent = first.len();
        if !first.is_empty() && tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        let mut changes = log.subscribe();
        let mut offset = offset;
        let current = log.files(false).pop();
        loop {
            let running = log.is_running();
            if let Some(path) = &current {
                let path = path.clone();
                let read =
                    tokio::task::spawn_blocking(move || logs::read_from(&path, offset)).await;
                if let Ok(Ok((lines, next))) = read {
                    offset = next;
                    let mut out = logs::render(
                        &lines,
                        &LogQuery {
                            since: None,
                            ..query.clone()
                        },
                    );
                    if let Some(limit) = query.limit_bytes {
                        out.truncate(limit.saturating_sub(sent));
                    }
                    sent += out.len();
                    if !out.is_empty() && tx.send(Ok(Bytes::from(out))).await.is_err() {
                        return;
                    }
                    if query.limit_bytes.is_some_and(|l| sent >= l) {
                        return;
                    }
                }
            }
            if !running {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A response the agent gives itself when no app handled the request, marked so the
/// gateway knows the request never reached an app and may try another endpoint.
fn unserved(code: StatusCode, text: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (
                header::HeaderName::from_static(crate::apps::UNSERVED_HEADER),
                "1",
            ),
        ],
        format!("{text}\n"),
    )
        .into_response()
}

/// Whether a path is one of the agent's own endpoints rather than app traffic.
pub fn is_agent_path(path: &str) -> bool {
    path == "/healthz"
        || path == "/readyz"
        || path == "/metrics"
        || path == skiff_api::usage::PATH
        || path.starts_with("/containerLogs/")
}

/// Routes a request to the HTTP app of a pod on this node and serves it.
async fn serve_app(State(rt): State<Arc<Runtime>>, request: axum::extract::Request) -> Response {
    let request = request.map(|body| {
        http_body_util::BodyExt::map_err(body, |_| wasmtime_wasi_http::Error::ConnectionTerminated)
    });
    serve_app_request(rt, request).await
}

/// Routes a request (any body) to the HTTP app of a pod on this node and serves it.
pub async fn serve_app_request<B>(rt: Arc<Runtime>, mut request: http::Request<B>) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    use crate::apps::{POD_HEADER, QUEUE_TIMEOUT, Routed};
    let started = std::time::Instant::now();
    let id = skiff_api::routes::ensure_request_id(request.headers_mut());
    let named = request
        .headers()
        .get(POD_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let routed = match named {
        Some(named) => {
            let (namespace, name) = named.split_once('/').unwrap_or(("default", &named));
            match rt.apps.get(namespace, name) {
                Some(pod) if pod.is_ready() => Routed::Pod(pod, None),
                Some(_) => Routed::NoneReady(named.clone()),
                None => {
                    return unserved(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("pod {named} is not served on this node"),
                    );
                }
            }
        }
        None => rt
            .apps
            .route(&skiff_api::routes::host_of(&request), request.uri().path()),
    };
    let pod = match routed {
        Routed::Pod(pod, prefix) => {
            if let Some(prefix) = prefix {
                skiff_api::routes::strip_route_prefix(&mut request, &prefix);
            }
            pod
        }
        Routed::NotFound => {
            return unserved(
                StatusCode::NOT_FOUND,
                format!("no app is routed at {}", request.uri().path()),
            );
        }
        Routed::NoneReady(app) => {
            return unserved(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no ready replica of {app}"),
            );
        }
    };
    // At debug level: a span per request costs a few per cent of throughput at info,
    // and nothing on this path logs above debug.
    let span = tracing::debug_span!(
        "http",
        request_id = %id,
        pod = %format_args!("{}/{}", pod.namespace, pod.name),
        app = %pod.app,
        node = %rt.config.name,
    );
    let response = async {
        let Ok(Ok(slot)) =
            tokio::time::timeout(QUEUE_TIMEOUT, pod.slots.clone().acquire_owned()).await
        else {
            return unserved(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{}/{} has too many requests in flight",
                    pod.namespace, pod.name
                ),
            );
        };
        // A request that waited for a slot behind a drain gets one only once the pod has
        // stopped: it never reached the app, so the gateway may try another replica.
        if pod.stop.is_cancelled() {
            return unserved(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}/{} is stopping", pod.namespace, pod.name),
            );
        }
        let in_flight = pod.counters.start();
        let response = pod
            .program
            .serve(&pod.spec, request, pod.stop.clone())
            .await;
        if response.status().is_server_error() {
            pod.counters.failed();
        }
        // The slot is held until the body has been sent, not just the head: a pod that
        // stops drains its requests (see the container's drain) and a streamed body is
        // part of one.
        response.map(|body| {
            use http_body_util::BodyExt;
            Body::new(body.map_frame(move |frame| {
                let _held = (&slot, &in_flight);
                frame
            }))
        })
    }
    .instrument(span)
    .await;
    pod.requests
        .observe(response.status().as_u16(), started.elapsed());
    response
}

/// Whether a request is app traffic the gateway sent, for the pod it names: such a
/// request always goes to that pod, whatever its path (once the gateway stripped an
/// app's prefix, `/healthz` or `/metrics` are the app's own paths, not the agent's).
fn names_a_pod<B>(request: &http::Request<B>) -> bool {
    request.headers().contains_key(crate::apps::POD_HEADER)
}

/// What one connection serves, on the listener or over the tunnel: app traffic goes
/// straight to the pods, the agent's own endpoints through the router.
pub(crate) fn connection_service(
    router: Router,
    rt: Arc<Runtime>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    use tower::ServiceExt;
    hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let (router, rt) = (router.clone(), rt.clone());
        async move {
            let response = if is_agent_path(request.uri().path()) && !names_a_pod(&request) {
                match router.oneshot(request.map(Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            } else {
                serve_app_request(rt, request).await
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    })
}

/// Serves the agent's listener until `stop`: HTTP/1.1 with keep-alive, TCP_NODELAY on
/// every connection; app traffic goes straight to the pods, the agent's own endpoints
/// through the router. On stop, connections finish their current request (5 s at most).
pub async fn serve(
    listener: tokio::net::TcpListener,
    rt: Arc<Runtime>,
    stop: tokio_util::sync::CancellationToken,
) {
    let router = router(rt.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Without TCP_NODELAY, small responses wait out delayed ACKs (~40 ms).
        let _ = tcp.set_nodelay(true);
        let (service, stop) = (connection_service(router.clone(), rt.clone()), stop.clone());
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}
