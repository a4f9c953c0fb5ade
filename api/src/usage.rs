//! What an agent reports of its pods' resource use (`GET /stats/usage` on the agent),
//! for the server to turn into `metrics.k8s.io` figures: cumulative counters, which
//! the server makes rates of between two scrapes, and current figures.
//!
//! `{"node": {"cpuNanos", "memoryBytes"}, "pods": [{"namespace", "name", "uid",
//! "containers": [{"name", "cpuNanos", "memoryBytes"}], "requests", "inFlight"}]}`

use serde::{Deserialize, Serialize};

/// The agent's path for the report.
pub const PATH: &str = "/stats/usage";

/// What an agent reports at one scrape: cumulative counters and current figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub node: NodeCounters,
    #[serde(default)]
    pub pods: Vec<PodCounters>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounters {
    /// CPU time the agent process has used (user + system), in nanoseconds.
    pub cpu_nanos: u64,
    /// The agent process's resident memory, in bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodCounters {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[serde(default)]
    pub containers: Vec<ContainerCounters>,
    /// HTTP requests the pod's handler has been given since it started.
    #[serde(default)]
    pub requests: u64,
    /// HTTP requests being served at the scrape.
    #[serde(default)]
    pub in_flight: u64,
    /// Of `requests`, those answered with a 5xx (a trap, a timeout, the app's own 5xx).
    #[serde(default)]
    pub errors: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerCounters {
    pub name: String,
    /// Time spent running the container's guests (polls of their instances), nanoseconds.
    pub cpu_nanos: u64,
    /// Linear memory and table storage its live instances hold, bytes.
    pub memory_bytes: u64,
}
