//! The `skiff` binary: command-line wiring for the server (`skiff server`), the node
//! agent (`skiff agent`), a whole local cluster in one process (`skiff dev`), backup and
//! restore, the benchmarks (`skiff bench`) and the client verbs (`deploy`, `push`,
//! `apps`, `logs`, `token`). Built without the `server` feature, it is the agent and the
//! client verbs only.

#[cfg(feature = "server")]
mod backup;
#[cfg(feature = "server")]
mod bench;
mod cli;
#[cfg(feature = "server")]
mod dev;
mod push;

// The global allocator: jemalloc (the default `jemalloc` feature), with its background
// thread purging freed pages (dirty pages decay in 10 s and go back to the OS). Measured
// with `skiff bench pods` (issue 17; docs/benchmarks.md, "Pods: memory after the pods
// go"): after 5,000 idle pods came and went, the system's malloc still held 357 MiB in
// the agent and 344 MiB in the server a minute later (it had 57 and 47 before), as
// freed memory stayed in its per-thread arenas; with jemalloc the agent was back at
// 86-92 MiB and the server at 107-111 MiB, run after run. mimalloc is the feature to
// measure against it. An agent built for small devices (`--no-default-features`) keeps
// the system's malloc, which costs no binary size.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

#[cfg(feature = "server")]
use skiff_controlplane::server::{Server, ServerConfig};
#[cfg(feature = "server")]
use skiff_controlplane::store::Retention;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A Kubernetes-compatible orchestrator that runs pods as WebAssembly"
)]
struct Cli {
    /// Log format; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: API server and store.
    #[cfg(feature = "server")]
    Server(ServerArgs),
    /// Run a node agent: join a control plane and run the pods bound to this node.
    Agent(AgentArgs),
    /// Run a whole local cluster (a server and N agents) in one process.
    #[cfg(feature = "server")]
    Dev(dev::DevArgs),
    /// Write a consistent backup of a cluster (objects, modules, secrets) to one file.
    #[cfg(feature = "server")]
    Backup(backup::BackupArgs),
    /// Restore a backup into a new data directory or etcd prefix.
    #[cfg(feature = "server")]
    Restore(backup::RestoreArgs),
    /// Run a benchmark and print its results.
    #[cfg(feature = "server")]
    Bench(bench::BenchArgs),
    /// Deploy a wasi:http component as an app and print its URL.
    Deploy(cli::DeployArgs),
    /// Push a .wasm file to an OCI registry in the CNCF Wasm layout.
    Push(push::PushArgs),
    /// List apps with their URL and ready replicas.
    Apps(cli::AppsArgs),
    /// Print the logs of an app's pods (app/NAME) or of a pod.
    Logs(cli::LogsArgs),
    /// Create, list and revoke tokens: join tokens, viewer and admin tokens, and the
    /// credentials nodes were given when they joined.
    #[command(subcommand)]
    Token(cli::TokenCommand),
    /// Print (and open, where a browser is at hand) a link that signs in to the web
    /// dashboard with a short-lived token.
    Dashboard(cli::DashboardArgs),
}

/// Flags that shape how an agent runs pods (shared by `skiff agent` and `skiff dev`).
#[derive(clap::Args, Clone)]
pub struct PodFlags {
    /// How often the node Lease is renewed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    lease_interval: Duration,
    /// Pods this node admits.
    #[arg(long, default_value_t = skiff_runtime::config::DEFAULT_POD_CAPACITY)]
    pod_capacity: u32,
    /// A host directory hostPath volumes may use (repeatable). None by default.
    #[arg(long = "allow-host-path")]
    allow_host_path: Vec<PathBuf>,
    /// First delay of restart and image-pull back-off (doubles up to --backoff-max).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
    /// Size at which a container log file is rotated.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    log_max_bytes: u64,
    /// CPU time one HTTP request may use before it is stopped with 504.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Largest HTTP request body an app accepts (413 beyond).
    #[arg(long, default_value_t = skiff_runtime::wasm::DEFAULT_MAX_REQUEST_BODY)]
    max_request_body: u64,
    /// A registry (HOST:PORT) reached over plain HTTP (repeatable). Every other
    /// registry is reached over HTTPS only.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registry: Vec<String>,
    /// A PEM file of CA certificates trusted for registries, besides the bundled
    /// Mozilla roots (repeatable).
    #[arg(long = "registry-ca", value_name = "FILE")]
    registry_ca: Vec<PathBuf>,
    /// The largest Wasm artifact pulled from a registry, as a quantity (128Mi).
    #[arg(long, default_value = "128Mi", value_parser = parse_bytes)]
    max_image_size: u64,
    /// How HTTP apps' per-request instances get their memory: auto (a pool sized from
    /// the host where one fits, else on demand), pooling, or on-demand. The choice is in
    /// the agent's log and the Node's skiff.dev/http-instance-allocation annotation.
    #[arg(long, default_value = "auto", value_name = "auto|pooling|on-demand")]
    http_instance_allocation: skiff_runtime::wasm::InstanceAllocation,
    /// The HTTP instance pool's size (concurrent requests across the node's apps),
    /// instead of the one sized from the host's memory and address space.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    http_pool_instances: Option<u32>,
    /// What runs guests: auto (Cranelift's native code where it has a backend for the
    /// host, wasmtime's Pulley interpreter elsewhere, as on 32-bit ARM), cranelift, or
    /// pulley (slower, but never maps executable memory). Shown by the Node's
    /// skiff.dev/wasm-engine label.
    #[arg(long, default_value = "auto", value_name = "auto|cranelift|pulley")]
    wasm_compiler: skiff_runtime::wasm::Compiler,
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    skiff_api::quantity::bytes(s)
}

impl PodFlags {
    pub fn apply(&self, config: &mut skiff_runtime::AgentConfig) {
        config.lease_interval = self.lease_interval;
        config.pod_capacity = self.pod_capacity;
        config.allowed_host_paths = self.allow_host_path.clone();
        config.backoff_base = self.backoff_base;
        config.backoff_max = self.backoff_max;
        config.log_max_bytes = self.log_max_bytes;
        config.request_timeout = self.request_timeout;
        config.max_request_body = self.max_request_body;
        config.registries = skiff_runtime::oci::RegistrySettings {
            insecure: self.insecure_registry.clone(),
            ca_files: self.registry_ca.clone(),
            max_image_bytes: self.max_image_size,
        };
        config.engine.http_allocation = self.http_instance_allocation;
        config.engine.http_pool_instances = self.http_pool_instances;
        config.engine.compiler = self.wasm_compiler;
    }
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The API servers' URLs, comma-separated: joining with --token goes through the
    /// first that answers, and the agent fails over between them (and the others it
    /// learns from the cluster).
    #[arg(long, env = "SKIFF_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// The server's join token (`K10<CA hash>::<id>.<secret>`, in the server's
    /// DIR/node-token). Used once: the credential it is traded for is kept in
    /// --data-dir and used from then on.
    #[arg(long, env = "SKIFF_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A kubeconfig to reach the API server with, instead of joining.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// This node's name.
    #[arg(long)]
    name: String,
    /// Where module bytes, compiled modules, volumes and logs live.
    #[arg(long)]
    data_dir: PathBuf,
    /// The agent's listener (logs, metrics, apps); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:10250")]
    listen: SocketAddr,
    /// Extra node label KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[command(flatten)]
    pods: PodFlags,
}

pub(crate) fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

/// The credential an agent keeps in its data directory once it has joined.
pub fn credential_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("credential.kubeconfig")
}

/// What an agent connects with: its API configuration (with every server it knows),
/// and the credential its tunnels use.
pub struct AgentConnection {
    pub api: skiff_api::client::ClientConfig,
    pub tunnel: Option<skiff_runtime::TunnelAuth>,
}

impl AgentConnection {
    /// `given` are server URLs from the command line: tried after the ones `api` lists.
    fn new(
        mut api: skiff_api::client::ClientConfig,
        given: &[String],
    ) -> anyhow::Result<AgentConnection> {
        use secrecy::ExposeSecret;
        for url in given {
            let url = skiff_api::client::failover::parse_server(url)?;
            if !api.servers.contains(&url) {
                api.servers.push(url);
            }
        }
        let tunnel = api
            .kube
            .auth_info
            .token
            .as_ref()
            .map(|token| skiff_runtime::TunnelAuth {
                roots: api.kube.root_cert.clone().unwrap_or_default(),
                token: token.expose_secret().to_string(),
            });
        Ok(AgentConnection { api, tunnel })
    }
}

/// How an agent connects: its stored credential; else a join with the server's token
/// through the first of `servers` that answers, whose credential is stored for
/// restarts; else an explicit kubeconfig.
pub async fn agent_client(
    name: &str,
    data_dir: &std::path::Path,
    servers: &[String],
    token: Option<&str>,
    kubeconfig: Option<&std::path::Path>,
) -> anyhow::Result<AgentConnection> {
    if let Some(path) = kubeconfig {
        return AgentConnection::new(skiff_api::client::config(Some(path)).await?, servers);
    }
    let credential = credential_path(data_dir);
    // A stored credential the control plane refuses was revoked: with a join token at
    // hand, join again under the same name (the server allows it once the old one is
    // revoked). The node's pods stay bound to it and run again here.
    let rejoin = credential.exists()
        && token.is_some()
        && !servers.is_empty()
        && credential_refused(&credential, name).await;
    if !credential.exists() || rejoin {
        let (false, Some(token)) = (servers.is_empty(), token) else {
            anyhow::bail!(
                "this agent has not joined yet: pass --server URL[,URL...] --token TOKEN (the \
                 server's DIR/node-token), or --kubeconfig"
            );
        };
        let list = servers.join(",");
        let kubeconfig = skiff_api::client::join(servers, token, name)
            .await
            .with_context(|| format!("joining {list} as node {name}"))?;
        skiff_api::client::write_private(&credential, &kubeconfig)
            .with_context(|| format!("storing the credential in {}", credential.display()))?;
        if rejoin {
            tracing::info!(servers = %list, node = %name, "this node's credential was revoked; joined again with the join token given");
        } else {
            tracing::info!(servers = %list, node = %name, "joined the cluster");
        }
    }
    let config = skiff_api::client::config(Some(&credential))
        .await
        .with_context(|| format!("using the credential in {}", credential.display()))?;
    AgentConnection::new(config, servers)
}

/// Whether the control plane answers 401 to the credential at `path`: it was revoked.
/// Unreachable or slow servers say nothing (an edge node may start offline).
async fn credential_refused(path: &std::path::Path, node: &str) -> bool {
    use k8s_openapi::api::core::v1::Node;
    let probe = async {
        let client = skiff_api::client::connect(Some(path)).await.ok()?;
        match kube::Api::<Node>::all(client).get_opt(node).await {
            Err(kube::Error::Api(s)) => Some(s.code == 401),
            _ => Some(false),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let connection = agent_client(
        &args.name,
        &args.data_dir,
        &args.server,
        args.token.as_deref(),
        args.kubeconfig.as_deref(),
    )
    .await?;
    let mut config = skiff_runtime::AgentConfig::new(&args.name, &args.data_dir, args.listen);
    config.labels = args.labels;
    args.pods.apply(&mut config);
    config.tunnel = connection.tunnel;
    let agent = skiff_runtime::Agent::start(config, connection.api)
        .await
        .context("starting the agent")?;
    println!("agent: {} listening on {}", agent.name, agent.listen);
    shutdown_signal().await;
    agent.shutdown().await;
    Ok(())
}

#[cfg(feature = "server")]
#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, modules and kubeconfig live.
    #[arg(long, default_value = "skiff-data")]
    data_dir: PathBuf,
    /// Address to serve the API on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = skiff_controlplane::state::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Largest module upload accepted, in bytes.
    #[arg(long, default_value_t = skiff_controlplane::state::DEFAULT_MAX_MODULE_BYTES)]
    max_module_bytes: usize,
    /// Keep at least this many revisions of the change log for watches to resume from.
    #[arg(long, default_value_t = 10_000)]
    retain_revisions: u64,
    /// Keep at least this much time of the change log (whichever keeps more).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    retain_duration: Duration,
    /// How often the change log is compacted.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    compact_interval: Duration,
    /// How often watches that allow bookmarks get one.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    bookmark_interval: Duration,
    /// A node whose Lease is older than this is marked lost and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    node_monitor_grace: Duration,
    /// How often each HorizontalPodAutoscaler is evaluated (kube-controller-manager's
    /// --horizontal-pod-autoscaler-sync-period).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    hpa_sync_period: Duration,
    /// How long new pods tolerate a lost node before they are evicted.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Serve the HTTP gateway here (port 0 picks one); off unless given.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Serve HTTPS for the Ingresses' TLS hosts here (port 0 picks one), by SNI with
    /// the certificates of their `kubernetes.io/tls` Secrets; needs --gateway.
    #[arg(long, requires = "gateway")]
    gateway_https: Option<SocketAddr>,
    /// Another DNS name or IP address the serving certificate covers (repeatable).
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    #[command(flatten)]
    store: StoreArgs,
    /// The first server's URL, when this one joins a cluster on etcd: it must present
    /// the CA that --token pins.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The first server's DIR/server-token (`K10<CA hash>::server:<secret>`), to join
    /// its cluster on etcd: it opens the cluster's shared secrets there.
    #[arg(long, env = "SKIFF_SERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The address agents, clients and the other servers reach this server at
    /// (default: the listen address, or this host's outbound address for 0.0.0.0).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// How long a leader's Lease lasts without renewal before another server takes
    /// over (whole seconds; default 15s on redb, 1s on etcd, where servers fail over).
    #[arg(long, value_parser = humantime::parse_duration)]
    leader_elect_lease_duration: Option<Duration>,
    /// A leader that cannot renew for this long stops leading; shorter than the lease
    /// (default 10s on redb, 700ms on etcd).
    #[arg(long, value_parser = humantime::parse_duration)]
    leader_elect_renew_deadline: Option<Duration>,
    /// How often the leader renews and candidates try (default 2s on redb, 200ms on etcd).
    #[arg(long, value_parser = humantime::parse_duration)]
    leader_elect_retry_period: Option<Duration>,
    /// Test only: the controllers read a clock that starts at the real time and that an
    /// admin moves forward with `POST /skiff/v1/clock` (`{"advanceSeconds": N}`).
    #[arg(long, hide = true)]
    fake_clock: bool,
    /// How often the agents' resource usage is scraped, and so the window of
    /// `kubectl top` and of the autoscaler's figures.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    metric_resolution: Duration,
}

/// Where a server keeps the cluster: redb in its data directory, or etcd.
#[cfg(feature = "server")]
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store: `redb` (one file in --data-dir; one server) or `etcd` (shared by
    /// several servers).
    #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
    store: StoreKind,
    /// etcd client URLs, comma-separated (http:// or https://).
    #[arg(long, value_delimiter = ',', required_if_eq("store", "etcd"))]
    etcd_endpoints: Vec<String>,
    /// The CA that signed etcd's certificates.
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    /// A client certificate for etcd (with --etcd-keyfile).
    #[arg(long, requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    #[arg(long, requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// The key prefix this cluster lives under in etcd.
    #[arg(long, default_value = "/skiff")]
    etcd_prefix: String,
}

#[cfg(feature = "server")]
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Redb,
    Etcd,
}

#[cfg(feature = "server")]
impl StoreArgs {
    pub fn config(&self) -> skiff_controlplane::server::StoreConfig {
        use skiff_controlplane::server::StoreConfig;
        use skiff_controlplane::store::etcd::{EtcdConfig, EtcdOptions};
        match self.store {
            StoreKind::Redb => StoreConfig::Redb,
            StoreKind::Etcd => StoreConfig::Etcd(EtcdOptions {
                config: EtcdConfig {
                    endpoints: self.etcd_endpoints.clone(),
                    ca_file: self.etcd_cafile.clone(),
                    cert_file: self.etcd_certfile.clone(),
                    key_file: self.etcd_keyfile.clone(),
                },
                prefix: self.etcd_prefix.clone(),
            }),
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(feature = "server")]
async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(&args.data_dir, args.listen);
    config.api.max_body_bytes = args.max_body_bytes;
    config.api.max_module_bytes = args.max_module_bytes;
    config.api.bookmark_interval = args.bookmark_interval;
    config.retention = Retention {
        revisions: args.retain_revisions,
        duration: args.retain_duration,
    };
    config.compact_interval = args.compact_interval;
    config.controllers.node_monitor_grace = args.node_monitor_grace;
    config.controllers.hpa_sync_period = args.hpa_sync_period;
    config.api.default_toleration_seconds = args.default_toleration_seconds;
    config.gateway = args.gateway;
    config.gateway_https = args.gateway_https;
    config.tls_sans = args.tls_sans;
    config.store = args.store.config();
    config.join_token = args.token;
    config.join_url = args.join;
    config.advertise_address = args.advertise_address;
    if args.fake_clock {
        config.clock = skiff_controlplane::clock::Clock::fake();
    }
    config.metric_resolution = args.metric_resolution;
    if args.store.store == StoreKind::Etcd {
        config.leader = skiff_controlplane::leader::LeaderConfig::for_failover("");
    }
    if let Some(d) = args.leader_elect_lease_duration {
        config.leader.lease_duration = d;
    }
    if let Some(d) = args.leader_elect_renew_deadline {
        config.leader.renew_deadline = d;
    }
    if let Some(d) = args.leader_elect_retry_period {
        config.leader.retry_period = d;
    }
    anyhow::ensure!(
        config.leader.renew_deadline < config.leader.lease_duration,
        "--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration"
    );
    let server = Server::start(config).await.context("starting the server")?;
    if let Some(url) = &server.gateway_url {
        println!("gateway: {url}");
    }
    if let Some(url) = &server.gateway_https_url {
        println!("gateway https: {url}");
    }
    // Tests and scripts wait for this line: the API answers once it is printed.
    println!("api: {}", server.api_url);
    println!("dashboard: {}/ui/", server.api_url.trim_end_matches('/'));
    println!("kubeconfig: {}", server.kubeconfig.display());
    println!("node token: {}", args.data_dir.join("node-token").display());
    let server_token = args.data_dir.join("server-token");
    if server_token.exists() {
        println!("server token: {}", server_token.display());
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// `RUST_BACKTRACE=1` asks for a backtrace when a thread panics; Rust's error types
/// (wasmtime's, anyhow's) also read it, and then capture a backtrace whenever an error is
/// made, even one that is handled and dropped. wasmtime makes one each time a store with
/// a component instance is dropped, so with the variable set every HTTP request paid for
/// a stack walk (5 % of the agent's CPU serving a small component). Unless the user set
/// `RUST_LIB_BACKTRACE` (which errors read first, and panics do not), errors capture none;
/// panics keep theirs.
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: called first thing in `main`, before any thread exists that could read
        // the environment at the same time.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

fn main() -> anyhow::Result<()> {
    quiet_library_backtraces();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // A server holds a socket per watch and an agent many instances: lift the soft
    // open-files limit to the hard one, as Go programs do at start-up.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-files limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        match cli.command {
            #[cfg(feature = "server")]
            Command::Server(args) => run_server(args).await,
            Command::Agent(args) => run_agent(args).await,
            #[cfg(feature = "server")]
            Command::Dev(args) => dev::run(args).await,
            #[cfg(feature = "server")]
            Command::Bench(args) => bench::run(args).await,
            #[cfg(feature = "server")]
            Command::Backup(args) => backup::backup(args).await,
            #[cfg(feature = "server")]
            Command::Restore(args) => backup::restore(args).await,
            Command::Deploy(args) => cli::deploy(args).await,
            Command::Push(args) => push::push(args).await,
            Command::Apps(args) => cli::apps(args).await,
            Command::Logs(args) => cli::logs(args).await,
            Command::Token(command) => cli::token(command).await,
            Command::Dashboard(args) => cli::dashboard(args).await,
        }
    })
}
