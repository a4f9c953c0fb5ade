//! The agent's configuration, with the defaults a node gets when nothing is said.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Pods one agent admits by default. Wasm instances cost kilobytes, so a node holds
/// thousands, not Kubernetes' 110.
pub const DEFAULT_POD_CAPACITY: u32 = 5000;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The Node's name.
    pub name: String,
    /// Where module bytes, compiled artifacts, volumes and logs live.
    pub data_dir: PathBuf,
    /// The agent's own listener: logs, metrics and the HTTP apps of its pods. Port 0
    /// picks one.
    pub listen: SocketAddr,
    /// How often the node Lease is renewed.
    pub lease_interval: Duration,
    /// Pods this node admits (`status.capacity.pods`).
    pub pod_capacity: u32,
    /// Host directories a `hostPath` volume may name (or lie under). Empty: none.
    pub allowed_host_paths: Vec<PathBuf>,
    /// First delay of the restart and image-pull back-off; it doubles up to the max.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Size at which a container's log file is rotated; one rotated file is kept.
    pub log_max_bytes: u64,
    /// Extra node labels.
    pub labels: Vec<(String, String)>,
    /// CPU time one HTTP request may use before it is stopped with 504 (a pod's
    /// `skiff.dev/request-timeout` annotation overrides it).
    pub request_timeout: Duration,
    /// Largest HTTP request body an app accepts (413 beyond).
    pub max_request_body: u64,
    /// The credential to keep a reverse tunnel open with to every API server, so each
    /// reaches this agent (for logs and app traffic) without an inbound connection.
    pub tunnel: Option<TunnelAuth>,
    /// How OCI registries are reached: plain-HTTP ones, extra CAs, the size limit.
    pub registries: crate::oci::RegistrySettings,
    /// The wasmtime engine's settings: time slices, and how HTTP instances are allocated
    /// (sized from the host unless said otherwise).
    pub engine: crate::wasm::EngineConfig,
}

impl AgentConfig {
    pub fn new(
        name: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        listen: SocketAddr,
    ) -> AgentConfig {
        AgentConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            listen,
            lease_interval: Duration::from_secs(10),
            pod_capacity: DEFAULT_POD_CAPACITY,
            allowed_host_paths: Vec::new(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            log_max_bytes: 10 * 1024 * 1024,
            labels: Vec::new(),
            request_timeout: crate::wasm::DEFAULT_REQUEST_TIMEOUT,
            max_request_body: crate::wasm::DEFAULT_MAX_REQUEST_BODY,
            tunnel: None,
            registries: Default::default(),
            engine: Default::default(),
        }
    }
}

/// How the agent authenticates its tunnels. Every server of a cluster presents a
/// certificate of the same CA and accepts the same node credential.
#[derive(Clone)]
pub struct TunnelAuth {
    /// DER certificates to trust: the cluster CA.
    pub roots: Vec<Vec<u8>>,
    /// The node's bearer token.
    pub token: String,
}

impl std::fmt::Debug for TunnelAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelAuth").finish_non_exhaustive()
    }
}

/// Exponential back-off: `base`, doubling per attempt, capped at `max`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap() {
        let (b, m) = (Duration::from_secs(10), Duration::from_secs(300));
        let got: Vec<u64> = (0..7).map(|a| backoff(b, m, a).as_secs()).collect();
        assert_eq!(got, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(b, m, 1000), m);
    }
}
