//! `skiff dev`: a whole local cluster in one process: the control plane and N agents
//! named dev-1..dev-N, on loopback, with free ports and the embedded store.

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
    /// The API server's address; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// A node whose Lease is older than this is marked lost and tainted unreachable.
    #[arg(long, default_value = "40s", value_parser = humantime::parse_duration)]
    node_monitor_grace: std::time::Duration,
    /// How long new pods tolerate a lost node before they are evicted.
    #[arg(long, default_value_t = 300)]
    default_toleration_seconds: i64,
    /// Where the HTTP gateway listens; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway: SocketAddr,
    #[command(flatten)]
    pods: PodFlags,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut server_config = ServerConfig::new(args.data_dir.join("server"), args.listen);
    server_config.controllers.node_monitor_grace = args.node_monitor_grace;
    server_config.api.default_toleration_seconds = args.default_toleration_seconds;
    server_config.gateway = Some(args.gateway);
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
    if let Some(url) = &server.gateway_url {
        println!("gateway: {url}");
    }
    println!("api: {}", server.api_url);
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
