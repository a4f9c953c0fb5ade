//! `skiff bench footprint`: what Skiff costs a small device. The idle resident memory
//! of a real `skiff server` and a real `skiff agent` (joined over TLS, its tunnel open,
//! no pods), and the size of the binary that runs them.
//!
//! Each process is sampled repeatedly once it has settled, and the median is reported,
//! over several runs.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::SkiffProcess;

#[derive(clap::Args)]
pub struct FootprintBenchArgs {
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// How long each process idles before it is sampled.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// RSS samples of a process over one second, after it settled; their median.
async fn idle_rss(p: &SkiffProcess, settle: Duration) -> f64 {
    tokio::time::sleep(settle).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(p.rss_mib());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    median(samples)
}

pub async fn run(args: FootprintBenchArgs) -> anyhow::Result<()> {
    let (mut server_rss, mut agent_rss) = (Vec::new(), Vec::new());
    for run in 0..args.runs.max(1) {
        let dir = tempfile::tempdir()?;
        let server_dir = dir.path().join("server");
        let s = server_dir.display().to_string();
        let (server, url) = SkiffProcess::start(
            &["server", "--listen", "127.0.0.1:0", "--data-dir", &s],
            "api:",
        )
        .await?;
        let token = std::fs::read_to_string(server_dir.join("node-token"))?;
        let a = dir.path().join("agent").display().to_string();
        let (agent, _) = SkiffProcess::start(
            &[
                "agent",
                "--server",
                &url,
                "--token",
                token.trim(),
                "--name",
                "footprint-1",
                "--data-dir",
                &a,
                "--listen",
                "127.0.0.1:0",
            ],
            "agent:",
        )
        .await?;
        let (srv, agt) = tokio::join!(
            idle_rss(&server, args.settle),
            idle_rss(&agent, args.settle)
        );
        eprintln!("run {}: server {srv:.1} MiB, agent {agt:.1} MiB", run + 1);
        server_rss.push(srv);
        agent_rss.push(agt);
        agent.stop().await;
        server.stop().await;
    }
    let exe = std::env::current_exe()?;
    let size_mib = std::fs::metadata(&exe)?.len() as f64 / (1024.0 * 1024.0);
    let (server, agent) = (median(server_rss), median(agent_rss));
    println!();
    println!("{:<40} {:>10} {:>10}", "metric", "skiff", "target");
    println!(
        "{:<40} {:>10.1} {:>10}",
        "agent idle RSS (MiB)", agent, "<= 20"
    );
    println!(
        "{:<40} {:>10.1} {:>10}",
        "server idle RSS (MiB)", server, "<= 40"
    );
    println!("{:<40} {:>10.1} {:>10}", "binary size (MiB)", size_mib, "");
    println!("binary: {}", exe.display());
    super::write_json(
        args.json.as_ref(),
        &json!({
            "agent_idle_rss_mib": agent,
            "server_idle_rss_mib": server,
            "binary_mib": size_mib,
            "binary": exe.display().to_string(),
            "runs": args.runs,
        }),
    )
}
