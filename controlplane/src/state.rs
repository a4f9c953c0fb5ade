//! The API server's shared state: the store, the module blobs, the configuration, the
//! shutdown signal, the agents' tunnels, the metrics and the cache of verified tokens.
//! Every handler, the auth layer, the controllers, the scheduler and the server's other
//! loops hold it, so it sits below all of them and knows none of them (the token cache
//! is a type of `crate::auth`'s, which only the auth layer fills and reads).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::blobs::ModuleBlobs;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tunnel::Tunnels;

/// Largest request body accepted by default (Kubernetes' own limit is 3 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Largest module upload accepted by default.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_body_bytes: usize,
    pub max_module_bytes: usize,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// The address clients reach the API at, for discovery's serverAddressByClientCIDRs.
    pub advertise_address: String,
    /// How long a new pod tolerates its node being not-ready or unreachable before it is
    /// evicted (Kubernetes' DefaultTolerationSeconds admission adds these tolerations).
    pub default_toleration_seconds: i64,
    /// The gateway's URL, when one runs: Apps' `status.url` is on it.
    pub gateway_url: Option<String>,
    /// The server's data directory (its secrets go into backups).
    pub data_dir: std::path::PathBuf,
    /// `redb` or `etcd`, recorded in backups.
    pub store_kind: &'static str,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            bookmark_interval: Duration::from_secs(10),
            advertise_address: String::new(),
            default_toleration_seconds: 300,
            gateway_url: None,
            data_dir: std::path::PathBuf::new(),
            store_kind: "redb",
        }
    }
}

/// Everything a request handler needs.
pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub modules: ModuleBlobs,
    pub config: ApiConfig,
    /// Cancelled when the server starts shutting down, so long-lived watches end and
    /// graceful shutdown can finish.
    pub shutdown: CancellationToken,
    /// The reverse tunnels agents keep open, by node.
    pub tunnels: Arc<Tunnels>,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
    /// Bearer tokens already verified, until their records change (filled and emptied
    /// by `crate::auth`; empty, so every request reads the record, until
    /// `crate::auth::follow_tokens` runs).
    pub tokens: crate::auth::TokenCache,
    /// The time controllers read: the system's, or a fake one tests move
    /// (`--fake-clock`, `POST /skiff/v1/clock`).
    pub clock: crate::clock::Clock,
    /// Pods' and nodes' resource usage, from the agents' last scrapes
    /// (`crate::usage`; filled by `crate::apiserver::metrics_api::scrape`).
    pub usage: Arc<crate::usage::Usage>,
    /// The roles and bindings authorization reads (`crate::auth::rbac`), from caches
    /// every server keeps.
    pub rbac: crate::auth::rbac::Rbac,
    /// Signs and verifies ServiceAccount tokens with the cluster's shared key
    /// (`crate::auth::satokens`).
    pub service_accounts: Arc<crate::auth::ServiceAccountTokens>,
    /// The pods the Node authorizer looks at, from a cache every server keeps
    /// (`crate::auth::NodePods`).
    pub node_pods: crate::auth::NodePods,
}

pub type SharedApi = Arc<ApiServer>;

#[cfg(test)]
impl ApiServer {
    /// A server on a fresh redb store in `dir`, with the system namespaces, for tests
    /// that call handlers and helpers in-process.
    pub(crate) fn on_redb_for_tests(dir: &std::path::Path) -> ApiServer {
        let store = crate::store::redb::RedbStore::open(&dir.join("store.redb")).unwrap();
        futures::executor::block_on(crate::server::bootstrap_namespaces(&*store)).unwrap();
        ApiServer {
            store,
            modules: ModuleBlobs::new(dir.join("blobs")),
            config: ApiConfig::default(),
            shutdown: CancellationToken::new(),
            tunnels: Default::default(),
            metrics: Default::default(),
            tokens: Default::default(),
            clock: Default::default(),
            usage: Default::default(),
            rbac: Default::default(),
            service_accounts: Default::default(),
            node_pods: Default::default(),
        }
    }
}
