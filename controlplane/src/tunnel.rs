//! Reverse tunnels: how the control plane reaches agents that only dial out.
//!
//! An agent opens `GET /skiff/v1/tunnel` with its node credential and upgrades the
//! connection (HTTP/1.1 `Upgrade: skiff-tunnel`). Over the upgraded stream the roles
//! turn around: the agent serves HTTP/2 and the server is its client, so one TLS
//! connection the agent keeps open carries any number of concurrent requests (log
//! streams, app traffic from the gateway). Nodes behind NAT or a firewall that admits
//! no inbound connection work the same as any other.
//!
//! This module holds the open tunnels and sends through them; the API server serves
//! the routes that open them and proxy to nodes (`apiserver/tunnel.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::client::conn::http2::SendRequest;

/// The upgrade token of the tunnel protocol.
pub const PROTOCOL: &str = "skiff-tunnel";
pub const PATH: &str = "/skiff/v1/tunnel";

/// The body of a request sent through a tunnel.
pub type TunnelBody = http_body_util::combinators::UnsyncBoxBody<Bytes, axum::Error>;

/// The open tunnels, by node name. A node that reconnects replaces its old tunnel.
pub struct Tunnels {
    open: Mutex<HashMap<String, (u64, SendRequest<TunnelBody>)>>,
    generation: AtomicU64,
    /// Bumped each time a tunnel opens, for whoever waits for a node to connect.
    opened: tokio::sync::watch::Sender<u64>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: Mutex::default(),
            generation: AtomicU64::new(0),
            opened: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Tunnels {
    /// A handle to send requests to `node`'s agent, if it has a tunnel open.
    pub fn get(&self, node: &str) -> Option<SendRequest<TunnelBody>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(node)
            .filter(|(_, s)| !s.is_closed())
            .map(|(_, s)| s.clone())
    }

    pub(crate) fn insert(&self, node: &str, sender: SendRequest<TunnelBody>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), (generation, sender));
        self.opened.send_modify(|n| *n += 1);
        generation
    }

    /// Changes each time a tunnel opens (see `insert`): taken before looking for a
    /// node's tunnel, it wakes the caller when one may have come since.
    pub fn opened(&self) -> tokio::sync::watch::Receiver<u64> {
        self.opened.subscribe()
    }

    pub(crate) fn remove(&self, node: &str, generation: u64) {
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

/// The URI of a request sent through a tunnel for the path and query of one received
/// (`/` if none), without formatting or parsing it again.
pub fn request_uri(path_and_query: Option<&http::uri::PathAndQuery>) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::from_static("tunnel"));
    parts.path_and_query = Some(
        path_and_query
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    http::Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
}
