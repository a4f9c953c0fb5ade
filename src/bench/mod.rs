//! `skiff bench`: benchmarks anyone can rerun, each measured side by side with a peer
//! where one exists, printed as a table and optionally written as JSON.

mod api;
mod etcd;
mod pods;
mod stats;

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Durable creates/s with concurrent clients, and watch delivery latency with many
    /// watchers; against etcd (the store Kubernetes uses) when `etcd` is installed.
    Api(api::ApiBenchArgs),
    /// Pod start latency (create to Running through a watch) over many pods on one node,
    /// and density: idle pods one agent holds, with its RSS.
    Pods(pods::PodBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which {
        Which::Api(a) => api::run(a).await,
        Which::Pods(a) => pods::run(a).await,
    }
}

/// Writes results as pretty JSON when asked.
fn write_json(path: Option<&PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)?)?;
        println!("results written to {}", path.display());
    }
    Ok(())
}
