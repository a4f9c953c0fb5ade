//! `skiff bench http`: HTTP throughput and latency of a wasi:http component, served by a
//! Skiff agent (straight to its listener, and through the gateway) and by
//! `wasmtime serve` on the same component in the same run, loaded with wrk; and the
//! cold path, from the deploy request to the first 200.

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
    /// Rounds; each runs every target once, alternating, and medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
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
    let out = tokio::process::Command::new("wrk")
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

pub async fn run(args: HttpBenchArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading {}", args.component.display()))?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let (cluster, gateway) = SkiffProcess::start(
        &[
            "dev",
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
    let (api, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
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

    // The cold path: deploy request to first 200, module never seen before; then the
    // same for a second app, with the module already compiled.
    let path = "/default/bench/";
    let url = format!("{gateway}{path}");
    let cold = deploy_to_first_200(&http, &api, "bench", &bytes, &url).await?;
    let warm = deploy_to_first_200(
        &http,
        &api,
        "bench2",
        &bytes,
        &format!("{gateway}/default/bench2/"),
    )
    .await?;

    let peer = if args.wasmtime == "none" {
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
        wait_for_200(&http, &peer_url, Duration::from_secs(30)).await?;
        Some((child, peer_url))
    };

    let targets: Vec<(&str, String)> = [
        Some(("agent", format!("{agent}{path}"))),
        Some(("gateway", url.clone())),
        peer.as_ref().map(|(_, u)| ("wasmtime serve", u.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut results: Vec<Vec<Load>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            let load = wrk(url, args.duration, args.connections).await?;
            eprintln!(
                "round {} {name}: {:.0} req/s, p99 {:.2} ms, {} errors",
                round + 1,
                load.rps,
                load.p99_ms,
                load.errors
            );
            results[i].push(load);
        }
    }
    drop(peer);
    cluster.stop().await;

    let med = |i: usize, f: fn(&Load) -> f64| median(results[i].iter().map(f).collect());
    println!(
        "\nskiff bench http: {} ({} bytes), wrk -t2 -c{} for {}s, median of {} rounds\n",
        args.component.display(),
        bytes.len(),
        args.connections,
        args.duration.as_secs(),
        args.rounds
    );
    println!(
        "{:<18} {:>12} {:>10} {:>10} {:>8} {:>14}",
        "target", "req/s", "p50 ms", "p99 ms", "errors", "vs wasmtime"
    );
    let peer_rps = targets
        .iter()
        .position(|(n, _)| *n == "wasmtime serve")
        .map(|i| med(i, |l| l.rps));
    let mut rows = Vec::new();
    for (i, (name, _)) in targets.iter().enumerate() {
        let rps = med(i, |l| l.rps);
        let ratio = peer_rps.map(|p| rps / p);
        let errors: u64 = results[i].iter().map(|l| l.errors).sum();
        println!(
            "{:<18} {:>12.0} {:>10.2} {:>10.2} {:>8} {:>14}",
            name,
            rps,
            med(i, |l| l.p50_ms),
            med(i, |l| l.p99_ms),
            errors,
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_default()
        );
        rows.push(json!({"target": name, "rps": rps, "p50_ms": med(i, |l| l.p50_ms), "p99_ms": med(i, |l| l.p99_ms), "errors": errors, "ratio_to_wasmtime": ratio}));
    }
    println!(
        "\ndeploy to first 200: cold (compile) {:.1} ms, cached module {:.1} ms  (target <= 100 ms)",
        cold.as_secs_f64() * 1000.0,
        warm.as_secs_f64() * 1000.0
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "http",
            "component_bytes": bytes.len(),
            "targets": rows,
            "deploy_to_first_200_ms": cold.as_secs_f64() * 1000.0,
            "deploy_to_first_200_cached_ms": warm.as_secs_f64() * 1000.0,
        }),
    )
}
