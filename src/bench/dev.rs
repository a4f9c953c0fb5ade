//! `skiff bench dev`: how long `skiff dev` takes from the command to a usable cluster:
//! the API answering (its `api:` line), and every node Ready as the API reports it.
//! The peers (kind, k3d, minikube) need a container runtime this machine lacks, so their
//! figures are the published ones, quoted in docs/benchmarks.md.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::SkiffProcess;
use super::stats::median;

#[derive(clap::Args)]
pub struct DevBenchArgs {
    /// Agents the cluster starts (`skiff dev --nodes`).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Cold starts measured, each in a fresh data directory; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Nodes whose Ready condition is True.
fn ready_nodes(list: &Value) -> usize {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count()
}

/// One cold start: milliseconds to the `api:` line, to all nodes Ready, and to exit
/// after SIGTERM.
async fn once(nodes: usize) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let n = nodes.to_string();
    let began = Instant::now();
    let (dev, _) = SkiffProcess::start(
        &[
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--nodes",
            &n,
            "--listen",
            "127.0.0.1:0",
            // Free ports only: a benchmark must not depend on 8080 being free.
            "--gateway",
            "127.0.0.1:0",
        ],
        "api:",
    )
    .await?;
    let api_ms = began.elapsed().as_secs_f64() * 1000.0;
    let (url, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
    let deadline = began + Duration::from_secs(60);
    let ready_ms = loop {
        let list: Value = http
            .get(format!("{url}/api/v1/nodes"))
            .send()
            .await?
            .json()
            .await?;
        if ready_nodes(&list) >= nodes {
            break began.elapsed().as_secs_f64() * 1000.0;
        }
        if Instant::now() > deadline {
            bail!("{} of {nodes} nodes Ready after 60 s", ready_nodes(&list));
        }
        // A benchmark's poll, fine-grained so it adds at most a millisecond.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let stopping = Instant::now();
    dev.stop().await;
    Ok((api_ms, ready_ms, stopping.elapsed().as_secs_f64() * 1000.0))
}

pub async fn run(args: DevBenchArgs) -> anyhow::Result<()> {
    let (mut api, mut ready, mut stop) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (a, r, s) = once(args.nodes).await?;
        eprintln!(
            "run {}/{}: API answering after {a:.0} ms, {} nodes Ready after {r:.0} ms, stopped in {s:.0} ms",
            run + 1,
            args.runs,
            args.nodes
        );
        api.push(a);
        ready.push(r);
        stop.push(s);
    }
    let (a, r, s) = (
        median(api.clone()),
        median(ready.clone()),
        median(stop.clone()),
    );
    println!(
        "\nskiff bench dev: `skiff dev --nodes {}` from a fresh data directory, median of {} runs\n",
        args.nodes, args.runs
    );
    println!("{:<40} {:>12} {:>12}", "metric", "skiff", "target");
    println!("{:<40} {:>12.0} {:>12}", "to the API answering (ms)", a, "");
    println!(
        "{:<40} {:>12.0} {:>12}",
        "to all nodes Ready (ms)", r, "<= 1000"
    );
    println!("{:<40} {:>12.0} {:>12}", "SIGTERM to exit (ms)", s, "");
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "dev",
            "nodes": args.nodes,
            "runs": args.runs,
            "api_ms": a,
            "all_ready_ms": r,
            "stop_ms": s,
            "per_run_api_ms": api,
            "per_run_all_ready_ms": ready,
            "per_run_stop_ms": stop,
        }),
    )
}
