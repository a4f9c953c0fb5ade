//! `skiff bench http`: HTTP throughput and latency of a wasi:http component, served by a
//! Skiff agent (straight to its listener, and through the gateway) and by
//! `wasmtime serve` on the same component in the same run, loaded with wrk in an order
//! that alternates round by round, after a warm-up of each alike; and the cold path,
//! from the deploy request to the first 200, on a fresh cluster each run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::stats::median;
use super::{SkiffProcess, free_port};

#[derive(clap::Args)]
pub struct HttpBenchArgs {
    /// The component to serve.
    #[arg(long, default_value = "workloads/bin/http-hello.wasm")]
    component: PathBuf,
    /// The `wasmtime` binary (wasmtime-cli 48.0.8) for the peer; `none` to skip it.
    #[arg(long, default_value = "wasmtime")]
    wasmtime: String,
    /// Length of each wrk run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Rounds; each runs every target once, in an order that reverses round by round,
    /// and medians are reported. 0 measures only deploy to first 200 (no wrk needed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A wrk run of each target before the rounds, not counted (0s: none).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Deploy-to-first-200 runs, each on a fresh `skiff dev` (a node that has never
    /// seen the module); medians are reported.
    #[arg(long, default_value_t = 3)]
    deploys: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: u64,
}

fn parse_ms(text: &str) -> Option<f64> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| c.is_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk against `url` and parses requests/s and the latency percentiles.
async fn wrk(url: &str, duration: Duration, connections: u32) -> anyhow::Result<Load> {
    wrk_with(url, duration, connections, &[]).await
}

/// Like `wrk`, with extra request headers (`NAME: VALUE`).
pub(super) async fn wrk_with(
    url: &str,
    duration: Duration,
    connections: u32,
    headers: &[&str],
) -> anyhow::Result<Load> {
    let mut command = tokio::process::Command::new("wrk");
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            url,
        ])
        .output()
        .await
        .context("running wrk (install it: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let p50_ms = field("50%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    let p99_ms = field("99%").and_then(|v| parse_ms(&v)).unwrap_or(f64::NAN);
    let errors = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("Non-2xx or 3xx responses:")
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum::<u64>()
        + field("Socket errors:")
            .map(|v| {
                v.split(',')
                    .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
    Ok(Load {
        rps,
        p50_ms,
        p99_ms,
        errors,
    })
}

async fn wait_for_200(
    http: &reqwest::Client,
    url: &str,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status() == 200
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{url} did not answer 200 within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Deploys `bytes` as app NAME in one request and times it to the first 200 at `url`.
async fn deploy_to_first_200(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    bytes: &[u8],
    url: &str,
) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    let r = http
        .put(format!(
            "{api}/apis/skiff.dev/v1/namespaces/default/apps/{name}?replicas=1"
        ))
        .header("content-type", "application/wasm")
        .body(bytes.to_vec())
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("deploy failed: {}", r.text().await?);
    }
    wait_for_200(http, url, Duration::from_secs(60)).await?;
    Ok(sent.elapsed())
}

/// A fresh `skiff dev` with one node and its gateway, and a client for its API.
struct Cluster {
    process: SkiffProcess,
    api: String,
    gateway: String,
    http: reqwest::Client,
    /// The agent's own listener, `http://HOST:PORT`.
    agent: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().display().to_string();
        let (process, gateway) = SkiffProcess::start(
            &[
                "dev",
                "--gateway-https",
                "127.0.0.1:0",
                "--nodes",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--gateway",
                "127.0.0.1:0",
                "--data-dir",
                &data,
            ],
            "gateway:",
        )
        .await?;
        let (api, http) =
            skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
        // The API may still be starting its loops: wait for the node.
        let node_url = format!("{api}/api/v1/nodes/dev-1");
        let started = Instant::now();
        let node: Value = loop {
            if let Ok(r) = http.get(&node_url).send().await
                && r.status() == 200
            {
                break r.json().await?;
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("node dev-1 never registered");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let agent = format!(
            "http://{}:{}",
            node["status"]["addresses"][0]["address"]
                .as_str()
                .unwrap_or("127.0.0.1"),
            node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        );
        Ok(Cluster {
            process,
            api,
            gateway,
            http,
            agent,
            _dir: dir,
        })
    }

    /// Deploy to first 200 of app NAME through the gateway.
    async fn deploy(&self, name: &str, bytes: &[u8]) -> anyhow::Result<Duration> {
        deploy_to_first_200(
            &self.http,
            &self.api,
            name,
            bytes,
            &format!("{}/default/{name}/", self.gateway),
        )
        .await
    }
}

/// The order the targets are loaded in, round by round: as listed in even rounds,
/// reversed in odd ones, so no target always runs first (or last) on a machine that
/// warms up or slows down.
pub(super) fn round_order(targets: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..targets).collect();
    if !round.is_multiple_of(2) {
        order.reverse();
    }
    order
}

fn ms_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(args: HttpBenchArgs) -> anyhow::Result<()> {
    if args.deploys == 0 {
        bail!("--deploys must be at least 1 (the load rounds use its app)");
    }
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;

    // The cold path, on a fresh cluster each run: deploy request to first 200 with a
    // module the node has never seen (compiled then); then the same for a second app,
    // with the module already compiled. The last cluster stays up for the load rounds.
    let (mut cold, mut cached) = (Vec::new(), Vec::new());
    let mut kept = None;
    for run in 0..args.deploys {
        let cluster = Cluster::start().await?;
        let c = cluster.deploy("bench", &bytes).await?.as_secs_f64() * 1000.0;
        let w = cluster.deploy("bench2", &bytes).await?.as_secs_f64() * 1000.0;
        eprintln!(
            "deploy run {}/{}: first 200 after {c:.1} ms with a new module, {w:.1} ms with it compiled",
            run + 1,
            args.deploys
        );
        cold.push(c);
        cached.push(w);
        if run + 1 == args.deploys {
            kept = Some(cluster);
        } else {
            cluster.process.stop().await;
        }
    }
    let cluster = kept.context("no deploy run")?;
    let path = "/default/bench/";
    let url = format!("{}{path}", cluster.gateway);

    let peer = if args.wasmtime == "none" || args.rounds == 0 {
        None
    } else {
        let port = free_port()?;
        let child = tokio::process::Command::new(&args.wasmtime)
            .args(["serve", "-Scli", "--addr", &format!("127.0.0.1:{port}")])
            .arg(&args.component)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve (wasmtime-cli 48.0.8)", args.wasmtime))?;
        let peer_url = format!("http://127.0.0.1:{port}{path}");
        wait_for_200(&cluster.http, &peer_url, Duration::from_secs(30)).await?;
        Some((child, peer_url))
    };

    let targets: Vec<(&str, String)> = [
        Some(("agent", format!("{}{path}", cluster.agent))),
        Some(("gateway", url.clone())),
        peer.as_ref().map(|(_, u)| ("wasmtime serve", u.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut results: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
    if args.rounds > 0 && !args.warmup.is_zero() {
        for (name, url) in &targets {
            let load = wrk(url, args.warmup, args.connections).await?;
            eprintln!("warm-up {name}: {:.0} req/s (not counted)", load.rps);
        }
    }
    for round in 0..args.rounds {
        for i in round_order(targets.len(), round) {
            let (name, url) = &targets[i];
            let load = wrk(url, args.duration, args.connections).await?;
            eprintln!(
                "round {} {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                round + 1,
                load.rps,
                load.p50_ms,
                load.p99_ms,
                load.errors
            );
            results[i].push(load);
        }
    }
    drop(peer);
    cluster.process.stop().await;

    let med = |i: usize, f: fn(&Load) -> f64| median(results[i].iter().map(f).collect());
    let mut rows = Vec::new();
    if args.rounds > 0 {
        println!(
            "\nskiff bench http: {} ({} bytes), wrk -t2 -c{} for {}s, {} rounds in alternating order after a {}s warm-up of each; medians (every round in brackets)\n",
            args.component.display(),
            bytes.len(),
            args.connections,
            args.duration.as_secs(),
            args.rounds,
            args.warmup.as_secs()
        );
        println!(
            "{:<18} {:>12} {:>10} {:>10} {:>8} {:>14}  req/s per round",
            "target", "req/s", "p50 ms", "p99 ms", "errors", "vs wasmtime"
        );
        let peer_rps = targets
            .iter()
            .position(|(n, _)| *n == "wasmtime serve")
            .map(|i| med(i, |l| l.rps));
        for (i, (name, _)) in targets.iter().enumerate() {
            let rps = med(i, |l| l.rps);
            let ratio = peer_rps.map(|p| rps / p);
            let errors: u64 = results[i].iter().map(|l| l.errors).sum();
            let per_round: Vec<f64> = results[i].iter().map(|l| l.rps).collect();
            println!(
                "{:<18} {:>12.0} {:>10.2} {:>10.2} {:>8} {:>14}  ({})",
                name,
                rps,
                med(i, |l| l.p50_ms),
                med(i, |l| l.p99_ms),
                errors,
                ratio.map(|r| format!("{r:.2}x")).unwrap_or_default(),
                per_round
                    .iter()
                    .map(|r| format!("{r:.0}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            rows.push(json!({"target": name, "rps": rps, "p50_ms": med(i, |l| l.p50_ms), "p99_ms": med(i, |l| l.p99_ms), "errors": errors, "ratio_to_wasmtime": ratio, "per_round_rps": per_round}));
        }
    }
    let (cold_ms, cached_ms) = (median(cold.clone()), median(cached.clone()));
    println!(
        "\ndeploy request to first 200 through the gateway, median of {} runs on fresh clusters:\n  new module (compiled on the node) {cold_ms:.1} ms ({})  (target <= 100 ms)\n  module already compiled {cached_ms:.1} ms ({})",
        args.deploys,
        ms_list(&cold),
        ms_list(&cached)
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "http",
            "component_bytes": bytes.len(),
            "rounds": args.rounds,
            "warmup_s": args.warmup.as_secs_f64(),
            "targets": rows,
            "deploys": args.deploys,
            "deploy_to_first_200_ms": cold_ms,
            "deploy_to_first_200_cached_ms": cached_ms,
            "per_run_deploy_to_first_200_ms": cold,
            "per_run_deploy_to_first_200_cached_ms": cached,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_order_reverses_round_by_round() {
        assert_eq!(round_order(3, 0), [0, 1, 2]);
        assert_eq!(round_order(3, 1), [2, 1, 0]);
        assert_eq!(round_order(3, 2), [0, 1, 2]);
        assert_eq!(round_order(2, 1), [1, 0]);
    }

    #[test]
    fn wrk_durations_parse_in_milliseconds() {
        assert_eq!(parse_ms("812.00us"), Some(0.812));
        assert_eq!(parse_ms(" 7.49ms"), Some(7.49));
        assert_eq!(parse_ms("1.20s"), Some(1200.0));
        assert_eq!(parse_ms("7.49"), None);
    }
}
