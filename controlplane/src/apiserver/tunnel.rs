//! The reverse-tunnel routes: `GET /skiff/v1/tunnel`, which an agent opens with its
//! node credential and upgrades (see `crate::tunnel` for what travels over it), and
//! `nodes/NAME/proxy/PATH`, which reaches the agent's own endpoints (`/metrics`,
//! `/healthz`) through its tunnel.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::auth::Identity;
use crate::error::ApiError;
use crate::state::SharedApi;
use crate::tunnel::{PROTOCOL, TunnelBody, uri};

pub(super) async fn proxy(
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

pub(super) async fn open(State(api): State<SharedApi>, mut request: Request) -> Response {
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
