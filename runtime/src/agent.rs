//! `skiff agent`: registers the Node, keeps its Lease, serves its listener, and runs
//! the pods bound to it until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;

use skiff_api::client::{ClientConfig, Servers};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::events::EventRecorder;
use crate::images::ImageStore;
use crate::logs::LogRegistry;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::wasm::WasmEngine;
use crate::{node, server, sync};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("creating data directory {path}")]
    DataDirUnusable {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on {addr}")]
    BindFailed {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the wasm engine")]
    EngineFailed(#[source] crate::wasm::EngineError),
    #[error(transparent)]
    RegisterFailed(#[from] node::NodeError),
    #[error("opening the agent's local state")]
    LocalState(#[from] crate::local::LocalError),
    #[error("building the API client")]
    Client(#[source] kube::Error),
    /// The stored credential was revoked, and no join token was given to join again.
    #[error("{0}")]
    CredentialRefused(String),
    #[error("{0}")]
    Registries(String),
    #[error("no API server to talk to")]
    NoServers(#[source] skiff_api::client::failover::FailoverError),
}

/// A running agent.
pub struct Agent {
    pub listen: SocketAddr,
    pub name: String,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Binds the listener, registers the Node and starts running pods. Returns once the
    /// Node is registered. `api` lists the servers to start from; more are learned from
    /// the cluster.
    pub async fn start(config: AgentConfig, api: ClientConfig) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| {
            AgentError::DataDirUnusable {
                path: config.data_dir.clone(),
                source,
            }
        })?;
        let local = crate::local::LocalState::open(&config.data_dir)?;
        let servers = Servers::new(api.servers.clone()).map_err(AgentError::NoServers)?;
        let metrics = Metrics::new();
        let credential = Arc::new(crate::credential::CredentialHealth::new(
            &config.name,
            metrics.credential_refused.clone(),
        ));
        let client = crate::local::client(
            &api.kube,
            servers.clone(),
            local.clone(),
            credential.clone(),
        )
        .map_err(AgentError::Client)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| AgentError::BindFailed {
                addr: config.listen,
                source,
            })?;
        let listen = listener
            .local_addr()
            .map_err(|source| AgentError::BindFailed {
                addr: config.listen,
                source,
            })?;
        let engine = WasmEngine::new(config.engine.clone()).map_err(AgentError::EngineFailed)?;
        let report = engine.report().clone();
        tracing::info!(
            compiler = report.compiler,
            target = %report.target,
            memory_reservation = %report.memory.reservation_text(),
            address_space = %crate::wasm::host_bytes(report.memory.host.address_space),
            host_memory = %crate::wasm::host_bytes(report.memory.host.memory),
            "guests run on {} ({}); HTTP instances: {}",
            report.compiler,
            report.target,
            report.memory.http,
        );
        let images = ImageStore::new(
            client.clone(),
            engine,
            &config.data_dir,
            config.registries.clone(),
        )
        .map_err(AgentError::Registries)?;
        let rt = Arc::new(Runtime {
            client: client.clone(),
            images,
            events: EventRecorder::new(client.clone(), &config.name),
            host_ip: listen.ip().to_string(),
            logs: LogRegistry::default(),
            metrics,
            apps: Default::default(),
            local: local.clone(),
            config: config.clone(),
            credential: credential.clone(),
            usage: Default::default(),
            // Pods reach the API servers with the cluster CA the agent trusts; an
            // agent without one (a kubeconfig without a CA) gives them none.
            cluster_api: config.tunnel.as_ref().and_then(|auth| {
                crate::wasm::clusterapi::ClusterApi::new(servers.clone(), &auth.roots)
                    .map_err(|e| tracing::warn!(error = %e, "the cluster CA is unusable: pods cannot reach the API"))
                    .ok()
            }),
        });
        // Offline (an edge node cut off from its control plane), the agent starts anyway
        // and runs its pods from the local cache; the Lease loop registers the Node once
        // the API answers. A refusal from the API is still fatal.
        match node::register(&client, &config, &report, listen).await {
            Ok(()) => {}
            Err(node::NodeError::RegisterFailed {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 401 => {
                return Err(AgentError::CredentialRefused(credential.message()));
            }
            Err(node::NodeError::RegisterFailed {
                source: kube::Error::Api(status),
                name,
            }) => {
                return Err(AgentError::RegisterFailed(
                    node::NodeError::RegisterFailed {
                        name,
                        source: kube::Error::Api(status),
                    },
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, error.source = ?std::error::Error::source(&e), "the API is unreachable; starting from the local cache")
            }
        }

        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // What the agent's own loops log names the node (`skiff dev` runs several in
        // one process); pods and requests carry it in their own spans.
        let span = tracing::info_span!("agent", node = %config.name);
        tasks.spawn(server::serve(listener, rt.clone(), stop.clone()).instrument(span.clone()));
        tasks.spawn(
            node::keep_alive(
                client.clone(),
                config.clone(),
                report,
                listen,
                rt.images.present(),
                stop.clone(),
            )
            .instrument(span.clone()),
        );
        tasks.spawn(sync::run(rt.clone(), stop.clone()).instrument(span.clone()));
        tasks.spawn(reclaim_storage(rt.clone(), stop.clone()).instrument(span.clone()));
        tasks.spawn(
            crate::local::deliver_statuses(local.clone(), client.clone(), stop.clone())
                .instrument(span.clone()),
        );
        tasks.spawn(
            crate::apiservers::discover(client.clone(), servers.clone(), api.servers, stop.clone())
                .instrument(span.clone()),
        );
        if let Some(auth) = config.tunnel.clone() {
            tasks.spawn(
                crate::tunnel::run_all(servers, auth, rt.clone(), stop.clone()).instrument(span),
            );
        }
        tracing::info!(node = %config.name, %listen, "agent ready");
        Ok(Agent {
            listen,
            name: config.name,
            stop,
            tasks,
        })
    }

    /// Stops taking work, stops every instance, and waits for the loops to end.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!(node = %self.name, "agent stopped");
    }
}

/// How often the agent looks for directories of deleted volumes.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Removes the directories of local-path volumes deleted from the cluster (reclaim
/// policy Delete), at start and then every few seconds.
async fn reclaim_storage(rt: Arc<Runtime>, stop: CancellationToken) {
    let storage = rt.config.data_dir.join("storage");
    loop {
        crate::pod::volumes::reclaim_storage(&rt.client, &storage).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RECLAIM_EVERY) => {}
        }
    }
}
