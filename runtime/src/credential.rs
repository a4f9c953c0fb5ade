//! Whether the control plane still accepts this node's credential.
//!
//! Every answer the agent's API client gets passes through here: a 401 means the
//! credential was revoked (`skiff token revoke`), and the agent says so once in its log,
//! on `/readyz` and in `skiff_agent_credential_refused`, and keeps running its pods from
//! the local cache as it does offline. Restarted with a new join token, it joins again
//! under its name and picks its pods up where they are (see the `skiff agent` docs).

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;

pub struct CredentialHealth {
    node: String,
    refused: AtomicBool,
    gauge: Gauge,
}

impl CredentialHealth {
    pub fn new(node: &str, gauge: Gauge) -> CredentialHealth {
        CredentialHealth {
            node: node.to_string(),
            refused: AtomicBool::new(false),
            gauge,
        }
    }

    /// Notes one answer from the API. Only changes are logged.
    pub fn observe(&self, status: http::StatusCode) {
        if status == http::StatusCode::UNAUTHORIZED {
            if !self.refused.swap(true, Ordering::Relaxed) {
                self.gauge.set(1);
                tracing::error!(node = %self.node, "{}", self.message());
            }
        } else if !status.is_server_error() && self.refused.swap(false, Ordering::Relaxed) {
            // Any other answer the server gave (a 403 or a 404 too) authenticated us.
            self.gauge.set(0);
            tracing::info!(node = %self.node, "the control plane accepts this node's credential again");
        }
    }

    /// Whether the last answer that said either way refused the credential.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// What is wrong, and what to do about it.
    pub fn message(&self) -> String {
        format!(
            "the control plane refuses the credential of node {} (401 Unauthorized): it was \
             revoked (`skiff token revoke`). The pods here keep running from the local cache, \
             but the node can no longer report. To join again, restart the agent with \
             --server URL --token JOIN_TOKEN: it keeps its name and its pods",
            self.node
        )
    }
}

/// A layer for the agent's API client that shows every answer to `health`.
pub fn layer(
    health: std::sync::Arc<CredentialHealth>,
) -> tower::util::MapResponseLayer<
    impl Fn(http::Response<crate::local::ResponseBody>) -> http::Response<crate::local::ResponseBody>
    + Clone,
> {
    tower::util::MapResponseLayer::new(
        move |response: http::Response<crate::local::ResponseBody>| {
            health.observe(response.status());
            response
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_reported_until_the_credential_works_again() {
        let gauge = Gauge::default();
        let health = CredentialHealth::new("edge-1", gauge.clone());
        health.observe(http::StatusCode::OK);
        health.observe(http::StatusCode::NOT_FOUND);
        assert!(!health.refused());
        health.observe(http::StatusCode::UNAUTHORIZED);
        assert!(health.refused() && gauge.get() == 1);
        // A 5xx (a proxy, a server shutting down) says nothing about the credential.
        health.observe(http::StatusCode::SERVICE_UNAVAILABLE);
        health.observe(http::StatusCode::BAD_GATEWAY);
        assert!(health.refused());
        assert!(health.message().contains("edge-1") && health.message().contains("--token"));
        // A 403 or 404 comes only after the credential was accepted.
        health.observe(http::StatusCode::FORBIDDEN);
        assert!(!health.refused() && gauge.get() == 0);
    }
}
