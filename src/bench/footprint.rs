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
use super::stats::median;

#[derive(clap::Args)]
pub struct FootprintBenchArgs {
    /// Runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// How long each process idles before it is sampled.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Run the agent from this binary instead (an agent-only build:
    /// `cargo build --release --no-default-features`); its size is reported too.
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// RSS and its private part, sampled over one second after the process settled;
/// their medians.
async fn idle_rss(p: &SkiffProcess, settle: Duration) -> (f64, f64) {
    tokio::time::sleep(settle).await;
    let (mut rss, mut anon) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        rss.push(p.rss_mib());
        anon.push(p.rss_anon_mib());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (median(rss), median(anon))
}

/// The size of the binary without its debug information, as it would ship (`strip`
/// into a temporary file); `None` where `strip` is not installed.
fn stripped_size_mib(exe: &std::path::Path) -> Option<f64> {
    let dir = tempfile::tempdir().ok()?;
    let out = dir.path().join("skiff");
    let ok = std::process::Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(exe)
        .status()
        .ok()?
        .success();
    ok.then(|| std::fs::metadata(&out).ok())
        .flatten()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

pub async fn run(args: FootprintBenchArgs) -> anyhow::Result<()> {
    let (mut server_rss, mut agent_rss) = (Vec::new(), Vec::new());
    let (mut server_anon, mut agent_anon) = (Vec::new(), Vec::new());
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
        let agent_exe = match &args.agent_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let (agent, _) = SkiffProcess::start_binary(
            &agent_exe,
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
        let ((srv, srv_anon), (agt, agt_anon)) = tokio::join!(
            idle_rss(&server, args.settle),
            idle_rss(&agent, args.settle)
        );
        eprintln!("run {}: server {srv:.1} MiB, agent {agt:.1} MiB", run + 1);
        server_rss.push(srv);
        agent_rss.push(agt);
        server_anon.push(srv_anon);
        agent_anon.push(agt_anon);
        agent.stop().await;
        server.stop().await;
    }
    let exe = std::env::current_exe()?;
    let size_mib = std::fs::metadata(&exe)?.len() as f64 / (1024.0 * 1024.0);
    let stripped = stripped_size_mib(&exe);
    let (server, agent) = (median(server_rss), median(agent_rss));
    let (server_private, agent_private) = (median(server_anon), median(agent_anon));
    let line = |metric: &str, value: String, target: &str| {
        println!("{metric:<40} {value:>10} {target:>10}");
    };
    println!();
    line("metric", "skiff".into(), "target");
    line("agent idle RSS (MiB)", format!("{agent:.1}"), "<= 20");
    line(
        "  of which private (MiB)",
        format!("{agent_private:.1}"),
        "",
    );
    line("server idle RSS (MiB)", format!("{server:.1}"), "<= 40");
    line(
        "  of which private (MiB)",
        format!("{server_private:.1}"),
        "",
    );
    line("binary size, as built (MiB)", format!("{size_mib:.1}"), "");
    line(
        "binary size, stripped (MiB)",
        stripped.map_or("no strip".into(), |s| format!("{s:.1}")),
        "",
    );
    let agent_stripped = args.agent_binary.as_deref().and_then(stripped_size_mib);
    if let Some(size) = agent_stripped {
        line(
            "agent-only binary, stripped (MiB)",
            format!("{size:.1}"),
            "",
        );
    }
    println!("binary: {}", exe.display());
    super::write_json(
        args.json.as_ref(),
        &json!({
            "agent_idle_rss_mib": agent,
            "agent_private_mib": agent_private,
            "server_idle_rss_mib": server,
            "server_private_mib": server_private,
            "binary_mib": size_mib,
            "binary_stripped_mib": stripped,
            "agent_binary": args.agent_binary.as_ref().map(|p| p.display().to_string()),
            "agent_binary_stripped_mib": agent_stripped,
            "binary": exe.display().to_string(),
            "runs": args.runs,
        }),
    )
}
