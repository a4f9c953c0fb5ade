//! The state every part of the agent shares: the API client, the image store, the
//! event recorder, the configuration, the container logs, the metrics, the HTTP apps and
//! the local state. The pod loops, the listener and the tunnels all hold it, so it sits
//! below all of them.

use std::sync::Arc;

use crate::config::AgentConfig;
use crate::events::EventRecorder;
use crate::images::ImageStore;
use crate::logs::LogRegistry;
use crate::metrics::Metrics;

/// What every pod on this agent shares.
pub struct Runtime {
    pub client: kube::Client,
    pub images: ImageStore,
    pub events: EventRecorder,
    pub config: AgentConfig,
    pub host_ip: String,
    pub logs: LogRegistry,
    pub metrics: Metrics,
    /// The HTTP apps of the pods running here, for the listener to route to.
    pub apps: crate::apps::AppRegistry,
    /// What the agent keeps to work without the control plane.
    pub local: Arc<crate::local::LocalState>,
    /// Whether the control plane still accepts this node's credential.
    pub credential: Arc<crate::credential::CredentialHealth>,
    /// The running pods' CPU, memory and request counters, for `kubectl top`.
    pub usage: crate::usage::UsageRegistry,
    /// The API servers, as pods reach them at `kubernetes.default.svc`.
    pub cluster_api: Option<crate::wasm::clusterapi::ClusterApi>,
}
