//! Reverse tunnels: how the control plane reaches agents that only dial out.
//!
//! An agent opens `GET /skiff/v1/tunnel` with its node credential and upgrades the
//! connection (HTTP/1.1 `Upgrade: skiff-tunnel`). Over the upgraded stream the roles
//! turn around: the agent serves HTTP/2 and the server is its client, so one TLS
//! connection the agent keeps open carries any number of concurrent requests (log
//! streams, app traffic from the gateway). Nodes behind NAT or a firewall that admits
//! no inbound connection work the same as any other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::apiserver::SharedApi;
use crate::apiserver::error::ApiError;
use crate::auth::Identity;

/// The upgrade token of the tunnel protocol.
pub const PROTOCOL: &str = "skiff-tunnel";
pub const PATH: &str = "/skiff/v1/tunnel";

/// The body of a request sent through a tunnel.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, axum::Error>;

/// The open tunnels, by node name. A node that reconnects replaces its old tunnel.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<String, (u64, SendRequest<TunnelBody>)>>,
    generation: AtomicU64,
}

impl Tunnels {
    /// A handle to send requests to `node`'s agent, if it has a tunnel open.
    pub fn get(&self, node: &str) -> Option<SendRequest<TunnelBody>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(node)
            .filter(|(_, s)| !s.is_closed())
            .map(|(_, s)| s.clone())
    }

    fn insert(&self, node: &str, sender: SendRequest<TunnelBody>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), (generation, sender));
        generation
    }

    fn remove(&self, node: &str, generation: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.get(node).is_some_and(|(g, _)| *g == generation) {
            open.remove(node);
        }
    }

    /// Sends `request` to `node`'s agent through its tunnel. The URI's path and query
    /// are what the agent sees.
    pub async fn send(
        &self,
        node: &str,
        request: http::Request<TunnelBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, TunnelError> {
        let sender = self
            .get(node)
            .ok_or_else(|| TunnelError::NotConnected(node.to_string()))?;
        send(sender, request).await
    }
}

/// Sends `request` on a tunnel handle from `Tunnels::get`.
pub async fn send(
    mut sender: SendRequest<TunnelBody>,
    request: http::Request<TunnelBody>,
) -> Result<http::Response<hyper::body::Incoming>, TunnelError> {
    sender.ready().await.map_err(TunnelError::Failed)?;
    sender
        .send_request(request)
        .await
        .map_err(TunnelError::Failed)
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("node {0} has no tunnel open")]
    NotConnected(String),
    #[error("the tunnel failed")]
    Failed(#[source] hyper::Error),
}

/// The URI of a request for `path_and_query` sent through a tunnel (HTTP/2 wants a
/// scheme and an authority; the agent looks only at the path).
pub fn uri(path_and_query: &str) -> String {
    format!("http://tunnel{path_and_query}")
}

/// The route agents open their tunnel on, and `nodes/NAME/proxy/PATH`, which reaches
/// the agent's own endpoints (`/metrics`, `/healthz`) through it.
pub fn routes(api: SharedApi) -> Router {
    Router::new()
        .route(PATH, get(open))
        .route("/api/v1/nodes/{name}/proxy/{*path}", get(proxy))
        .with_state(api)
}

async fn proxy(
    State(api): State<SharedApi>,
    axum::extract::Path((node, path)): axum::extract::Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let mut target = format!("/{}", path.trim_start_matches('/'));
    if let Some(q) = query {
        target = format!("{target}?{q}");
    }
    let request = match http::Request::get(uri(&target)).body(TunnelBody::default()) {
        Ok(r) => r,
        Err(e) => return ApiError::BadRequest(e.to_string()).into_response(),
    };
    match api.tunnels.send(&node, request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => ApiError::Upstream(format!("proxying to node {node}: {e}")).into_response(),
    }
}

async fn open(State(api): State<SharedApi>, mut request: Request) -> Response {
    let node = match request.extensions().get::<Identity>() {
        Some(Identity::Node { name, .. }) => name.clone(),
        _ => {
            return ApiError::Forbidden("only a node's credential opens a tunnel".into())
                .into_response();
        }
    };
    let wants = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !wants {
        return ApiError::BadRequest(format!("a tunnel is opened with Upgrade: {PROTOCOL}"))
            .into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let shutdown = api.shutdown.clone();
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(%node, error = %e, "tunnel upgrade failed");
                return;
            }
        };
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Dead links are found by pings, not by waiting for TCP to give up.
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, TunnelBody>(upgraded)
            .await;
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%node, error = %e, "tunnel handshake failed");
                return;
            }
        };
        let generation = api.tunnels.insert(&node, sender);
        tracing::info!(%node, "tunnel open");
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::info!(%node, error = %e, "tunnel closed");
                } else {
                    tracing::info!(%node, "tunnel closed");
                }
            }
            _ = shutdown.cancelled() => {}
        }
        api.tunnels.remove(&node, generation);
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::CONNECTION, "upgrade"), (header::UPGRADE, PROTOCOL)],
        Body::empty(),
    )
        .into_response()
}
