//! `skiff agent`: registers the Node, keeps its Lease, serves its listener, and runs
//! the pods bound to it until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::events::EventRecorder;
use crate::images::ImageStore;
use crate::metrics::Metrics;
use crate::pod::{LogRegistry, Runtime};
use crate::wasm::{EngineConfig, WasmEngine};
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
    /// Node is registered.
    pub async fn start(config: AgentConfig, client: kube::Client) -> Result<Agent, AgentError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| {
            AgentError::DataDirUnusable {
                path: config.data_dir.clone(),
                source,
            }
        })?;
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
        let engine = WasmEngine::new(EngineConfig::default()).map_err(AgentError::EngineFailed)?;
        let rt = Arc::new(Runtime {
            client: client.clone(),
            images: ImageStore::new(client.clone(), engine, &config.data_dir),
            events: EventRecorder::new(client.clone(), &config.name),
            host_ip: listen.ip().to_string(),
            logs: LogRegistry::default(),
            metrics: Metrics::new(),
            apps: Default::default(),
            config: config.clone(),
        });
        node::register(&client, &config, listen).await?;

        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(server::serve(listener, rt.clone(), stop.clone()));
        tasks.spawn(node::keep_alive(
            client.clone(),
            config.clone(),
            listen,
            stop.clone(),
        ));
        tasks.spawn(sync::run(rt.clone(), stop.clone()));
        if let Some(target) = config.tunnel.clone() {
            tasks.spawn(crate::tunnel::run(target, rt.clone(), stop.clone()));
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
