//! `skiff dev`: a whole local cluster in one process: the control plane and N agents
//! named dev-1..dev-N, on loopback, with free ports and the embedded store. The API
//! server and the gateway take their usual ports (6443, 8080) unless another program
//! holds them; then `skiff dev` says which port is busy and takes a free one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use skiff_controlplane::server::{Server, ServerConfig};

use crate::PodFlags;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the cluster's store, nodes and kubeconfig live.
    #[arg(long, default_value = "skiff-dev")]
    data_dir: PathBuf,
    /// How many agents (nodes) to run.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// The API server's address; port 0 picks a free port. Default: 127.0.0.1:6443, or
    /// a free port if that one is busy.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A node whose Lease is older than this is marked lost and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    node_monitor_grace: std::time::Duration,
    /// How often each HorizontalPodAutoscaler is evaluated.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    hpa_sync_period: std::time::Duration,
    /// How long new pods tolerate a lost node before they are evicted.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Where the HTTP gateway listens; port 0 picks a free port. Default:
    /// 127.0.0.1:8080, or a free port if that one is busy.
    #[arg(long)]
    gateway: Option<SocketAddr>,
    /// Where the gateway serves HTTPS for Ingresses' TLS hosts; port 0 picks a free
    /// port. Default: 127.0.0.1:8443, or a free port if that one is busy.
    #[arg(long)]
    gateway_https: Option<SocketAddr>,
    #[command(flatten)]
    pods: PodFlags,
    /// Test only: the controllers read a clock that an admin moves forward with
    /// `POST /skiff/v1/clock` (see `skiff server --fake-clock`).
    #[arg(long, hide = true)]
    fake_clock: bool,
    /// How often the agents' resource usage is scraped, and so the window of
    /// `kubectl top` and of the autoscaler's figures.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    metric_resolution: std::time::Duration,
}

/// The API server's address unless `--listen` is given.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6443);
/// The gateway's address unless `--gateway` is given.
const DEFAULT_GATEWAY: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
/// The gateway's HTTPS address unless `--gateway-https` is given.
const DEFAULT_GATEWAY_HTTPS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8443);

/// A default address another program holds: why, to say so once the free port taken
/// instead is known.
struct Busy {
    default: SocketAddr,
    error: std::io::Error,
}

impl Busy {
    fn say(&self, what: &str, url: &str) {
        println!(
            "port {} is busy ({}: {}), so the {what} took a free port: {url}",
            self.default.port(),
            self.default,
            self.error
        );
    }
}

/// The address to serve on: the one given; else `default` when it can be bound (it is
/// let go at once, for the server to bind); else a free port on the same host, with
/// why. An address given explicitly is used as is, so a busy one still fails.
async fn address(given: Option<SocketAddr>, default: SocketAddr) -> (SocketAddr, Option<Busy>) {
    if let Some(given) = given {
        return (given, None);
    }
    match tokio::net::TcpListener::bind(default).await {
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => (
            SocketAddr::new(default.ip(), 0),
            Some(Busy { default, error }),
        ),
        // Free, or unusable for another reason the server then reports.
        _ => (default, None),
    }
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (listen, listen_busy) = address(args.listen, DEFAULT_LISTEN).await;
    let (gateway, gateway_busy) = address(args.gateway, DEFAULT_GATEWAY).await;
    let (gateway_https, https_busy) = address(args.gateway_https, DEFAULT_GATEWAY_HTTPS).await;
    let mut server_config = ServerConfig::new(args.data_dir.join("server"), listen);
    server_config.controllers.node_monitor_grace = args.node_monitor_grace;
    server_config.controllers.hpa_sync_period = args.hpa_sync_period;
    server_config.api.default_toleration_seconds = args.default_toleration_seconds;
    server_config.gateway = Some(gateway);
    server_config.gateway_https = Some(gateway_https);
    server_config.metric_resolution = args.metric_resolution;
    if args.fake_clock {
        server_config.clock = skiff_controlplane::clock::Clock::fake();
    }
    let server = Server::start(server_config)
        .await
        .context("starting the control plane")?;
    // The kubeconfig sits at the top of the dev directory, where users look for it.
    let kubeconfig = args.data_dir.join("kubeconfig");
    std::fs::copy(&server.kubeconfig, &kubeconfig).context("writing the kubeconfig")?;
    // Agents join as remote ones do: with the server's node token, over TLS.
    let node_token = std::fs::read_to_string(args.data_dir.join("server").join("node-token"))
        .context("reading the node token")?;
    let node_token = node_token.trim();
    let agents = futures::future::try_join_all((1..=args.nodes).map(|i| {
        let name = format!("dev-{i}");
        let mut config = skiff_runtime::AgentConfig::new(
            &name,
            args.data_dir.join("nodes").join(&name),
            "127.0.0.1:0".parse().expect("a valid address"),
        );
        args.pods.apply(&mut config);
        let url = server.api_url.clone();
        let dir = config.data_dir.clone();
        async move {
            let connection =
                crate::agent_client(&name, &dir, &[url], Some(node_token), None).await?;
            let mut config = config;
            config.tunnel = connection.tunnel;
            skiff_runtime::Agent::start(config, connection.api)
                .await
                .with_context(|| format!("starting agent {name}"))
        }
    }))
    .await?;
    if let Some(busy) = &listen_busy {
        busy.say("API server", &server.api_url);
    }
    if let Some(url) = &server.gateway_url {
        if let Some(busy) = &gateway_busy {
            busy.say("gateway", url);
        }
        println!("gateway: {url}");
    }
    if let Some(url) = &server.gateway_https_url {
        if let Some(busy) = &https_busy {
            busy.say("gateway's HTTPS", url);
        }
        println!("gateway https: {url}");
    }
    println!("api: {}", server.api_url);
    println!(
        "dashboard: {}/ui/ (`skiff dashboard --kubeconfig {}` signs in)",
        server.api_url.trim_end_matches('/'),
        kubeconfig.display()
    );
    println!("kubeconfig: {}", kubeconfig.display());
    println!(
        "nodes: {} ready in {} ms",
        agents.len(),
        started.elapsed().as_millis()
    );
    crate::shutdown_signal().await;
    tracing::info!("stopping the dev cluster");
    futures::future::join_all(agents.into_iter().map(|a| a.shutdown())).await;
    server.shutdown().await;
    Ok(())
}
