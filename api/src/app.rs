//! The `skiff.dev/v1` App kind: an HTTP app from one Wasm module, replicated,
//! load-balanced and routed on the gateway. Its controller owns a Deployment and a
//! Service; its status carries the URL that serves it.

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, Probe, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const KIND: &str = "App";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.App")]
/// An HTTP app served from one Wasm component: replicated, load-balanced and routed on
/// the gateway. It owns a Deployment and a Service of the same name.
pub struct App {
    /// `skiff.dev/v1`.
    #[serde(default = "api_version")]
    pub api_version: String,
    /// `App`.
    #[serde(default = "kind")]
    pub kind: String,
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to serve and how many replicas.
    #[serde(default)]
    pub spec: AppSpec,
    /// The URL that serves the app, its replica counts and its Ready condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
}

/// What the user asks for.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.AppSpec")]
pub struct AppSpec {
    /// The Wasm to serve, as a container image: `sha256:<hex>` for a module in the
    /// cluster's store (what `skiff deploy FILE` uploads), or an OCI reference
    /// (`REGISTRY/REPOSITORY:TAG` or `...@sha256:<hex>`, optionally with `oci://` in
    /// front) that the nodes pull.
    #[serde(default)]
    pub module: String,
    /// Secrets (`kubernetes.io/dockerconfigjson`) in the App's namespace holding the
    /// credentials to pull an OCI `module` with; copied into the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// How many instances serve it (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Where the gateway serves it besides the default routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<AppRoute>,
    /// Environment variables of the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    /// CPU and memory per replica; the memory limit caps each request's instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Hosts the app may call out to (`host`, `host:port`, `*.domain`, `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_outbound_hosts: Option<Vec<String>>,
    /// An httpGet probe against the handler; ready replicas get traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// An httpGet probe against the handler; failing replicas are restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// Scale the replicas with the requests, down to zero if `minReplicas` is 0. When
    /// set, `replicas` is only the count to start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AppAutoscale>,
}

/// How an App scales with its traffic. Exactly one target is given.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.AppAutoscale")]
pub struct AppAutoscale {
    /// Fewest replicas (default 1). 0: none run while the App is idle; the gateway
    /// holds the first request while a replica starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_replicas: Option<i32>,
    /// Most replicas.
    #[serde(default)]
    pub max_replicas: i32,
    /// Requests per second one replica should take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_requests_per_second: Option<i32>,
    /// Requests in flight one replica should hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<i32>,
    /// How long demand must stay lower before replicas are removed (and, at the end,
    /// the last one): `30s`, `5m`. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<String>,
}

/// `scaleDownDelay` unless given.
pub const DEFAULT_SCALE_DOWN_DELAY: std::time::Duration = std::time::Duration::from_secs(60);

/// A duration as `scaleDownDelay` writes it: a whole number and `ms`, `s`, `m` or `h`.
pub fn parse_delay(text: &str) -> Option<std::time::Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(std::time::Duration::from_millis(n)),
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(secs))
}

/// The Service annotation that tells the gateway to hold requests for an App with no
/// replica while one starts (set by the App controller when `minReplicas` is 0).
pub const SCALE_FROM_ZERO_ANNOTATION: &str = "skiff.dev/scale-from-zero";

/// A Host and/or a path prefix.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.AppRoute")]
pub struct AppRoute {
    /// A Host header the gateway routes to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A path prefix the gateway routes to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "dev.skiff.v1.AppStatus")]
pub struct AppStatus {
    /// A full URL on the gateway that serves the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_replicas: Option<i32>,
    /// The module the current version serves: `spec.module` as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module_digest: Option<String>,
    /// What the ready replicas of the current version run, as their containers'
    /// `imageID` reports it (for an OCI module, `REGISTRY/REPOSITORY@sha256:<manifest
    /// digest>`); set when they all agree.
    #[serde(default, rename = "imageID", skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

fn api_version() -> String {
    crate::module::API_VERSION.to_string()
}

fn kind() -> String {
    KIND.to_string()
}
