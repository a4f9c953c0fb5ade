//! `skiff server`: opens the store, serves the API on a socket, runs the loops that
//! belong to the control plane, and shuts all of it down in two phases.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apiserver;

use crate::blobs::ModuleBlobs;

use crate::state::{ApiConfig, ApiServer};

use crate::cluster::bootstrap::{self, Joined};
use crate::informer::SharedInformers;
use crate::lifecycle;
use crate::store::etcd::{EtcdOptions, EtcdStore, blobs::EtcdBlobs};
use crate::store::redb::RedbStore;
use crate::store::{Retention, Store, StoreError, WriteOp};

/// The namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Which store holds the cluster.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// One redb file in the data directory (the default; one server).
    Redb,
    /// An etcd cluster, which several servers share.
    Etcd(EtcdOptions),
}

/// metrics-server's default `--metric-resolution`.
pub const DEFAULT_METRIC_RESOLUTION: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]

pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// A further server of an etcd cluster: the first server's `DIR/server-token`.
    pub join_token: Option<String>,
    /// A further server's `--join URL`: checked to present the CA the token pins.
    pub join_url: Option<String>,
    /// The address other servers, agents and clients reach this one at (published in
    /// the `kubernetes` Endpoints); default: the listen address, or this host's
    /// outbound address when listening on a wildcard.
    pub advertise_address: Option<std::net::IpAddr>,
    pub listen: SocketAddr,
    pub api: ApiConfig,
    pub retention: Retention,
    /// How often the change log is compacted.
    pub compact_interval: Duration,
    /// How long in-flight requests get to finish on shutdown before they are cut.
    pub shutdown_grace: Duration,
    pub controllers: crate::controllers::ControllerConfig,
    /// Leader election timing; an empty identity is derived from the data directory.
    pub leader: crate::leader::LeaderConfig,
    /// Where the HTTP gateway listens, if anywhere (port 0 picks one).
    pub gateway: Option<SocketAddr>,
    /// Where the gateway serves HTTPS for the Ingresses' TLS hosts, if anywhere.
    pub gateway_https: Option<SocketAddr>,
    /// Extra names (DNS or IP) the serving certificate covers, besides loopback, the
    /// listen address and the host name.
    pub tls_sans: Vec<String>,
    /// The controllers' clock: the system's, or a fake one for end-to-end tests.
    pub clock: crate::clock::Clock,
    /// How often the agents' usage is scraped: the window of `kubectl top`'s figures.
    pub metric_resolution: Duration,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            data_dir: data_dir.into(),
            store: StoreConfig::Redb,
            join_token: None,
            join_url: None,
            advertise_address: None,
            listen,
            api: ApiConfig::default(),
            retention: Retention::default(),
            compact_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            controllers: crate::controllers::ControllerConfig::default(),
            leader: crate::leader::LeaderConfig::new(""),
            gateway: None,
            gateway_https: None,
            tls_sans: Vec::new(),
            clock: crate::clock::Clock::system(),
            metric_resolution: DEFAULT_METRIC_RESOLUTION,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating data directory {path}")]
    DataDirUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the store")]
    StoreOpenFailed(#[source] StoreError),
    #[error("creating the system namespaces")]
    BootstrapFailed(#[source] StoreError),
    #[error("listening on {addr}")]
    BindFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("reading or writing the server identity {path}")]
    IdentityUnusable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the cluster's certificates")]
    Pki(#[from] crate::auth::pki::PkiError),
    #[error("loading the service-account signing key (DIR/tls/sa.key)")]
    ServiceAccountKey(#[from] crate::auth::SigningKeyError),
    #[error("setting up the server's tokens")]
    Tokens(#[source] std::io::Error),
    #[error("sharing the cluster's secrets through etcd")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("writing {path}")]
    KubeconfigWriteFailed {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The loops a leader runs: scheduler, controllers, pod reaper, namespace cleaner and
/// compaction, until `term` ends.
async fn run_leader_loops(
    api: Arc<ApiServer>,
    informers: Arc<SharedInformers>,
    controllers: crate::controllers::ControllerConfig,
    compaction: (Retention, Duration),
    term: CancellationToken,
) {
    // The scheduler and the controllers share the term's caches; those the gateway
    // does not also hold stop with the term.
    let informers = informers.scope(term.clone());
    let mut set = JoinSet::new();
    set.spawn(compact_periodically(
        api.store.clone(),
        compaction.0,
        compaction.1,
        term.clone(),
    ));
    set.spawn(lifecycle::run_pod_reaper(api.store.clone(), term.clone()));
    set.spawn(lifecycle::run_namespace_cleaner(api.clone(), term.clone()));
    set.spawn(crate::scheduler::run_scheduler(
        api.clone(),
        informers.clone(),
        term.clone(),
    ));
    let mut controllers = crate::controllers::start(api, informers.clone(), controllers, term);
    set.spawn(async move { while controllers.join_next().await.is_some() {} });
    while set.join_next().await.is_some() {}
    informers.shutdown().await;
}

/// This server's leader-election identity: `HOSTNAME_RANDOM`, kept in the data
/// directory so a restarted server renews its own Lease at once instead of waiting out
/// its previous incarnation's.
fn server_identity(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("server-id");
    let fail = |source| ServerError::IdentityUnusable {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skiff".to_string());
    let id = format!("{host}_{}", uuid::Uuid::new_v4());
    std::fs::write(&path, &id).map_err(fail)?;
    Ok(id)
}

/// A running server.
pub struct Server {
    pub api_url: String,
    /// The gateway's URL, when it runs.
    pub gateway_url: Option<String>,
    /// The gateway's HTTPS URL, when it serves one.
    pub gateway_https_url: Option<String>,
    pub kubeconfig: PathBuf,
    api: Arc<ApiServer>,
    store: Arc<dyn Store>,
    stop_loops: CancellationToken,
    loops: JoinSet<()>,
    http: tokio::task::JoinHandle<()>,
    shutdown_grace: Duration,
}

impl Server {
    /// Opens the store, binds the listener and starts serving. Returns once the API
    /// answers requests.
    pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| {
            ServerError::DataDirUnusable {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let (store, etcd, joined) = match &config.store {
            StoreConfig::Redb => {
                let store = RedbStore::open(&config.data_dir.join("store.redb"))
                    .map_err(ServerError::StoreOpenFailed)?;
                (store as Arc<dyn Store>, None, Joined::First)
            }
            StoreConfig::Etcd(options) => {
                let etcd = EtcdStore::open(options)
                    .await
                    .map_err(ServerError::StoreOpenFailed)?;
                let joined = bootstrap::prepare(
                    &etcd,
                    &config.data_dir,
                    config.join_token.as_deref(),
                    config.join_url.as_deref(),
                )
                .await?;
                (etcd.clone() as Arc<dyn Store>, Some(etcd), joined)
            }
        };
        write_store_config(&config.data_dir, &config.store)?;
        bootstrap_namespaces(&*store)
            .await
            .map_err(ServerError::BootstrapFailed)?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::BindFailed {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::BindFailed {
                addr: config.listen,
                source,
            })?;
        let api_url = format!("https://{addr}");
        let advertise = SocketAddr::new(
            config
                .advertise_address
                .unwrap_or_else(|| advertise_ip(addr.ip())),
            addr.port(),
        );
        let mut sans = config.tls_sans.clone();
        sans.push(advertise.ip().to_string());
        let pki = crate::auth::pki::load_or_create(
            &config.data_dir.join("tls"),
            &crate::auth::pki::default_sans(addr, &sans),
        )?;

        let bind = |at: SocketAddr| async move {
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|source| ServerError::BindFailed { addr: at, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServerError::BindFailed { addr: at, source })?;
            Ok::<_, ServerError>((listener, bound))
        };
        let gateway = match config.gateway {
            Some(at) => {
                let (http, bound) = bind(at).await?;
                let https = match config.gateway_https {
                    Some(at) => Some(bind(at).await?),
                    None => None,
                };
                // Ingresses show where the gateway answers: its own address, or the
                // server's advertised one when it listens on every address.
                let ip = if bound.ip().is_unspecified() {
                    advertise.ip()
                } else {
                    bound.ip()
                };
                let https_url = https.as_ref().map(|(_, b)| format!("https://{b}"));
                Some((
                    crate::gateway::Listeners {
                        http,
                        https: https.map(|(l, _)| l),
                        address: ip.to_string(),
                    },
                    crate::gateway::url_of(bound),
                    https_url,
                ))
            }
            None => None,
        };
        let gateway_url = gateway.as_ref().map(|(_, url, _)| url.clone());
        let gateway_https_url = gateway.as_ref().and_then(|(_, _, url)| url.clone());

        let mut api_config = config.api.clone();
        api_config.advertise_address = addr.to_string();
        api_config.gateway_url = gateway_url.clone();
        api_config.data_dir = config.data_dir.clone();
        api_config.store_kind = match config.store {
            StoreConfig::Redb => "redb",
            StoreConfig::Etcd(_) => "etcd",
        };
        let api = Arc::new(ApiServer {
            store: store.clone(),
            modules: match &etcd {
                Some(etcd) => ModuleBlobs::shared(
                    apiserver_blob_dir(&config.data_dir),
                    EtcdBlobs::new(etcd.client().clone(), etcd.layout().clone()),
                ),
                None => ModuleBlobs::new(apiserver_blob_dir(&config.data_dir)),
            },
            config: api_config,
            shutdown: CancellationToken::new(),
            tunnels: Default::default(),
            metrics: Arc::new(crate::metrics::Metrics::new(&store.metrics())),
            tokens: Default::default(),
            clock: config.clock.clone(),
            usage: Default::default(),
            rbac: Default::default(),
            service_accounts: Arc::new(crate::auth::ServiceAccountTokens::from_pem(
                &pki.sa_key_pem,
            )?),
            node_pods: Default::default(),
        });

        let stop_loops = CancellationToken::new();
        let mut loops = JoinSet::new();
        loops.spawn(crate::auth::follow_tokens(api.clone(), stop_loops.clone()));
        // One cache per kind for the whole server: the gateway's for as long as the
        // server runs, the leader's for as long as its term.
        let informers = SharedInformers::new(api.store.clone(), stop_loops.clone());
        // Every server scrapes the agents, so `kubectl top` answers whichever one is
        // asked (each agent keeps its tunnel to one server; the others reach it at its
        // address).
        let scraping = informers.scope(stop_loops.clone());
        // Authorization reads roles and bindings from caches on every server; they are
        // listed before the first request is served.
        if !api.rbac.follow(&scraping).await {
            tracing::warn!("stopped before the RBAC caches were listed");
        }
        api.node_pods.follow(&scraping);
        // A scope lets its caches go when dropped: this one is held until the server
        // stops, or the scraper's nodes and RBAC's roles would stop following changes.
        loops.spawn({
            let (scope, stop) = (scraping.clone(), stop_loops.clone());
            async move {
                stop.cancelled().await;
                scope.shutdown().await;
            }
        });
        loops.spawn(crate::usage::scrape_agents(
            api.clone(),
            scraping.cache("", "nodes"),
            config.metric_resolution,
            stop_loops.clone(),
        ));
        // The scheduler and controllers run only while this server holds the
        // leadership Lease, so two servers never run two of each.
        let mut leader = config.leader.clone();
        if leader.identity.is_empty() {
            leader.identity = server_identity(&config.data_dir)?;
        }
        let controllers = config.controllers.clone();
        let leading_api = api.clone();
        let compaction = (config.retention, config.compact_interval);
        let identity = leader.identity.clone();
        let leading_informers = informers.clone();
        loops.spawn(crate::leader::run(
            api.clone(),
            leader,
            stop_loops.clone(),
            move |term| {
                run_leader_loops(
                    leading_api.clone(),
                    leading_informers.clone(),
                    controllers.clone(),
                    compaction,
                    term,
                )
            },
        ));

        if let Some((listeners, url, _)) = gateway {
            loops.spawn(crate::gateway::serve(
                listeners,
                informers.clone(),
                api.clone(),
                api.shutdown.clone(),
            ));
            tracing::info!(%url, "gateway ready");
        }

        let (admin, join) = crate::auth::ensure_tokens(&api, &config.data_dir, &pki.ca_hash())
            .await
            .map_err(ServerError::Tokens)?;
        if let (Some(etcd), Joined::First) = (&etcd, &joined) {
            bootstrap::publish(etcd, &config.data_dir).await?;
            tracing::info!(path = %config.data_dir.join("server-token").display(), "further servers join with the server token");
        }
        // The kinds of the stored CRDs are served from the first request on; then every
        // server (not only the leader) follows the CRDs.
        crate::crd::register_stored(&api)
            .await
            .map_err(ServerError::BootstrapFailed)?;
        loops.spawn(crate::crd::run(
            api.clone(),
            informers.clone(),
            stop_loops.clone(),
        ));
        loops.spawn(crate::cluster::endpoints::run(
            api.clone(),
            identity,
            advertise,
            stop_loops.clone(),
        ));
        let app = apiserver::router(api.clone())
            .merge(crate::auth::routes(api.clone(), pki.ca_pem.clone()))
            .layer(axum::middleware::from_fn_with_state(
                api.clone(),
                crate::auth::layer,
            ))
            // Outermost, so that early answers from authentication reach the client too.
            .layer(axum::middleware::from_fn_with_state(
                api.config.max_body_bytes,
                apiserver::drain::unread_body,
            ));
        let shutdown = api.shutdown.clone();
        let listener = crate::auth::pki::TlsListener::new(listener, pki.server_config.clone())
            .map_err(|source| ServerError::BindFailed {
                addr: config.listen,
                source,
            })?;
        let http = tokio::spawn(async move {
            let serve = axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(async move { shutdown.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API server stopped with an error");
            }
        });

        // This server first (kubectl reads only that one), then the other live servers
        // the cluster lists, for Skiff's clients to fail over to.
        let mut servers = vec![api_url.clone()];
        let endpoints = crate::kinds::lookup("", "v1", "endpoints").expect("served");
        if etcd.is_some()
            && let Ok(Some(listed)) = apiserver::internal::get(
                &api,
                endpoints,
                Some("default"),
                crate::cluster::endpoints::ENDPOINTS_NAME,
            )
            .await
        {
            let me = format!("https://{advertise}");
            for url in skiff_api::client::endpoints_urls(&listed) {
                if url != me && !servers.contains(&url) {
                    servers.push(url);
                }
            }
        }
        let kubeconfig = config.data_dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &servers, &pki.ca_pem, &admin.to_string())?;
        tracing::info!(path = %config.data_dir.join("node-token").display(), ca_hash = %join.ca_hash, "agents join with the node token");
        tracing::info!(url = %api_url, data_dir = %config.data_dir.display(), "API server ready");
        Ok(Server {
            api_url,
            gateway_url,
            gateway_https_url,
            kubeconfig,
            api,
            store,
            stop_loops,
            loops,
            http,
            shutdown_grace: config.shutdown_grace,
        })
    }

    /// Two-phase shutdown: stop taking requests and end watches, let in-flight requests
    /// finish within the grace period, then stop the loops and close the store.
    pub async fn shutdown(mut self) {
        self.api.shutdown.cancel();
        let http_abort = self.http.abort_handle();
        if tokio::time::timeout(self.shutdown_grace, &mut self.http)
            .await
            .is_err()
        {
            tracing::warn!(
                "in-flight requests did not finish within the shutdown grace; cutting them"
            );
            http_abort.abort();
        }
        self.stop_loops.cancel();
        while self.loops.join_next().await.is_some() {}
        self.store.close().await;
        tracing::info!("server stopped");
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.api.store.clone()
    }
}

fn apiserver_blob_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("modules")
}

/// The address to publish for a server listening on `listen`: the listen address, or
/// for a wildcard the address this host would send from (found by connecting a UDP
/// socket, which sends nothing), or loopback if there is none.
fn advertise_ip(listen: std::net::IpAddr) -> std::net::IpAddr {
    if !listen.is_unspecified() {
        return listen;
    }
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// `DIR/store.json`: which store this server uses, so `skiff backup --data-dir DIR`
/// and `skiff restore` reach the same one.
fn write_store_config(data_dir: &Path, store: &StoreConfig) -> Result<(), ServerError> {
    let value = match store {
        StoreConfig::Redb => json!({"store": "redb"}),
        StoreConfig::Etcd(o) => json!({
            "store": "etcd",
            "endpoints": o.config.endpoints,
            "prefix": o.prefix,
            "caFile": o.config.ca_file,
            "certFile": o.config.cert_file,
            "keyFile": o.config.key_file,
        }),
    };
    let path = data_dir.join("store.json");
    skiff_api::client::write_file(&path, &format!("{value:#}\n"), 0o644)
        .map_err(|source| ServerError::IdentityUnusable { path, source })
}

/// Creates the system namespaces if they are missing.
pub(crate) async fn bootstrap_namespaces(store: &dyn Store) -> Result<(), StoreError> {
    bootstrap_classes(store).await?;
    crate::auth::policy::bootstrap(store).await?;
    let info = crate::kinds::lookup("", "v1", "namespaces").expect("namespaces are served");
    for name in SYSTEM_NAMESPACES {
        let key = info.key(None, name);
        if store.get(&key).await?.is_some() {
            continue;
        }
        let object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": crate::objects::now_rfc3339(),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        match store
            .write(WriteOp::Create {
                key,
                object,
                guard: None,
            })
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates the objects a cluster ships with, if missing, at each start (as k3s
/// re-applies its bundled manifests): the IngressClass `skiff` (the gateway's) and the
/// StorageClass `local-path` (the built-in provisioner's), each the default of its kind,
/// and the GatewayClass `skiff` (the gateway's, for Gateway API Gateways).
/// One that exists is left as it is (a user may take away its default annotation).
async fn bootstrap_classes(store: &dyn Store) -> Result<(), StoreError> {
    let objects = [
        (
            ("networking.k8s.io", "ingressclasses"),
            crate::kinds::ingressclass::default_class(),
        ),
        (
            ("storage.k8s.io", "storageclasses"),
            crate::kinds::storageclass::local_path_class(),
        ),
        (
            ("gateway.networking.k8s.io", "gatewayclasses"),
            crate::kinds::gatewayclass::default_class(),
        ),
    ];
    for ((group, plural), mut object) in objects {
        let info = crate::kinds::lookup(group, "v1", plural).expect("the kind is served");
        let key = info.key(None, crate::objects::name(&object));
        if store.get(&key).await?.is_some() {
            continue;
        }
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        object["metadata"]["creationTimestamp"] = json!(crate::objects::now_rfc3339());
        object["metadata"]["generation"] = json!(1);
        match store
            .write(WriteOp::Create {
                key,
                object,
                guard: None,
            })
            .await
        {
            Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn compact_periodically(
    store: Arc<dyn Store>,
    retention: Retention,
    every: Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => match store.compact(retention).await {
                Ok(rev) => tracing::debug!(compacted = rev, "change log compacted"),
                Err(e) => tracing::warn!(error = %e, "compaction failed"),
            },
        }
    }
}

/// Writes a kubeconfig for this server, atomically and readable by the owner only.
fn write_kubeconfig(
    path: &Path,
    servers: &[String],
    ca_pem: &str,
    token: &str,
) -> Result<(), ServerError> {
    let text = skiff_api::client::kubeconfig_for_servers(servers, ca_pem, "admin", token);
    skiff_api::client::write_private(path, &text).map_err(|source| {
        ServerError::KubeconfigWriteFailed {
            path: path.to_path_buf(),
            source,
        }
    })
}
