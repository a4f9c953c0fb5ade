//! `skiff bench rolling`: request throughput over time through the gateway while an App
//! is rolled to a new module and back, on `skiff dev` with two nodes. It records, per
//! time bucket (by when each request ended), the requests answered 2xx and those that
//! failed, and draws them. Every request sent is counted, however late it ends: one
//! still in flight when the load stops lands in a bucket past the end of the run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::SkiffProcess;
use super::stats::{Latencies, median};

#[derive(clap::Args)]
pub struct RollingBenchArgs {
    /// How long the load runs.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent clients, each sending requests back to back (keep-alive).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Replicas of the App.
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Width of a time bucket in the series.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    bucket: Duration,
    /// The app before and after the rollouts, and the one rolled to in between.
    #[arg(long, default_value = "workloads/bin/http-hello.wasm")]
    module: PathBuf,
    #[arg(long, default_value = "workloads/bin/http-echo.wasm")]
    update: PathBuf,
    /// Writes the throughput plot here (PNG).
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Requests answered 2xx and failed, per bucket of `width`, by when each ended. The
/// series grows past its planned end for requests that end late, so none is dropped.
struct Tally {
    width: Duration,
    buckets: Vec<(u64, u64)>,
}

impl Tally {
    fn new(width: Duration, planned: usize) -> Tally {
        Tally {
            width,
            buckets: vec![(0, 0); planned],
        }
    }

    /// Counts a request that ended `at` after the load began.
    fn record(&mut self, at: Duration, ok: bool) {
        let i = (at.as_secs_f64() / self.width.as_secs_f64()) as usize;
        if i >= self.buckets.len() {
            self.buckets.resize(i + 1, (0, 0));
        }
        let b = &mut self.buckets[i];
        if ok {
            b.0 += 1;
        } else {
            b.1 += 1;
        }
    }

    fn ok(&self) -> u64 {
        self.buckets.iter().map(|b| b.0).sum()
    }

    fn failed(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }
}

async fn put_app(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    module: Vec<u8>,
) -> anyhow::Result<Value> {
    let r = http
        .put(format!(
            "{url}/apis/skiff.dev/v1/namespaces/default/apps/web?{query}"
        ))
        .header("content-type", "application/wasm")
        .body(module)
        .timeout(Duration::from_secs(120))
        .send()
        .await?;
    let code = r.status();
    let body: Value = r.json().await?;
    if !code.is_success() {
        bail!("deploying the app answered {code}: {body}");
    }
    Ok(body)
}

pub async fn run(args: RollingBenchArgs) -> anyhow::Result<()> {
    let module = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let update = std::fs::read(&args.update)
        .with_context(|| format!("reading {}", args.update.display()))?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let (dev, _) = SkiffProcess::start(
        &[
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--nodes",
            "2",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
        ],
        "api:",
    )
    .await?;
    let (url, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
    let app = put_app(
        &http,
        &url,
        &format!("replicas={}&wait=true", args.replicas),
        module.clone(),
    )
    .await?;
    let app_url = app["status"]["url"]
        .as_str()
        .context("the App has no status.url")?
        .to_string();

    let buckets = (args.duration.as_secs_f64() / args.bucket.as_secs_f64()).ceil() as usize;
    let tally = Arc::new(Mutex::new(Tally::new(args.bucket, buckets)));
    let sent = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Latencies::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let load = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (load, app_url, tally, latencies, stop, sent) = (
            load.clone(),
            app_url.clone(),
            tally.clone(),
            latencies.clone(),
            stop.clone(),
            sent.clone(),
        );
        clients.spawn(async move {
            let mut mine = Latencies::new();
            while !stop.load(Ordering::Relaxed) {
                sent.fetch_add(1, Ordering::Relaxed);
                let at = Instant::now();
                let ok = match load.get(&app_url).send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                mine.record(at.elapsed());
                tally
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record(began.elapsed(), ok);
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .merge(&mine);
        });
    }

    // Two rollouts: to the other module at a quarter of the run, and back at 60%.
    let mut updates = Vec::new();
    for (at, bytes, label) in [
        (0.25, update, "rollout to v2"),
        (0.60, module, "rollout back to v1"),
    ] {
        let when = began + args.duration.mul_f64(at);
        tokio::time::sleep_until(when.into()).await;
        let from = began.elapsed().as_secs_f64();
        put_app(&http, &url, "wait=true", bytes).await?;
        let to = began.elapsed().as_secs_f64();
        eprintln!("{label}: {:.2} s to {:.2} s", from, to);
        updates.push((from, to, label.to_string()));
    }
    tokio::time::sleep_until((began + args.duration).into()).await;
    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}
    dev.stop().await;

    let width = args.bucket.as_secs_f64();
    let tally = tally.lock().unwrap_or_else(|p| p.into_inner());
    let lat = latencies.lock().unwrap_or_else(|p| p.into_inner());
    let (ok, failed, sent) = (tally.ok(), tally.failed(), sent.load(Ordering::Relaxed));
    if ok + failed != sent {
        bail!("{sent} requests were sent but {} were counted", ok + failed);
    }
    let series = &tally.buckets;
    // Rates come from the buckets of the run itself; a bucket past its end holds only
    // the requests still in flight when the load stopped (counted above, and drawn).
    let in_run = &series[..buckets.min(series.len())];
    let late = series[in_run.len()..]
        .iter()
        .fold((0, 0), |(o, f), b| (o + b.0, f + b.1));
    let rate = |b: &(u64, u64)| b.0 as f64 / width;
    let during = |i: usize| {
        let t = i as f64 * width;
        updates
            .iter()
            .any(|(from, to, _)| t + width > *from && t < *to)
    };
    let steady = median(
        in_run
            .iter()
            .enumerate()
            .filter(|(i, _)| !during(*i))
            .map(|(_, b)| rate(b))
            .collect(),
    );
    let rolling = median(
        in_run
            .iter()
            .enumerate()
            .filter(|(i, _)| during(*i))
            .map(|(_, b)| rate(b))
            .collect(),
    );
    let lowest = in_run
        .iter()
        .enumerate()
        .filter(|(i, _)| during(*i))
        .map(|(_, b)| rate(b))
        .fold(f64::INFINITY, f64::min);

    if let Some(png) = &args.png {
        let points: Vec<super::plot::Bucket> = series
            .iter()
            .enumerate()
            .map(|(i, b)| super::plot::Bucket {
                at: (i as f64 + 0.5) * width,
                ok_per_sec: b.0 as f64 / width,
                failed_per_sec: b.1 as f64 / width,
            })
            .collect();
        super::plot::throughput(
            png,
            &format!(
                "Requests/s through the gateway, {} replicas on 2 nodes, two rolling updates",
                args.replicas
            ),
            &points,
            &updates,
        )?;
        println!("plot written to {}", png.display());
    }

    println!(
        "\nskiff bench rolling: {} clients through the gateway for {:?}, two rollouts\n",
        args.clients, args.duration
    );
    println!("{:<44} {:>12} {:>12}", "metric", "skiff", "target");
    println!("{:<44} {:>12} {:>12}", "requests sent", sent, "");
    println!("{:<44} {:>12} {:>12}", "requests answered 2xx", ok, "");
    println!("{:<44} {:>12} {:>12}", "requests failed", failed, "0");
    println!(
        "{:<44} {:>12} {:>12}",
        "of them ended after the last bucket of the run",
        format!("{} ok, {} failed", late.0, late.1),
        ""
    );
    println!(
        "{:<44} {:>12.0} {:>12}",
        "requests/s outside rollouts (median)", steady, ""
    );
    println!(
        "{:<44} {:>12.0} {:>12}",
        "requests/s during rollouts (median)", rolling, ""
    );
    println!(
        "{:<44} {:>12.0} {:>12}",
        "lowest bucket during rollouts (req/s)", lowest, ""
    );
    println!(
        "{:<44} {:>12.1} {:>12}",
        "request latency p99 (ms)",
        lat.ms(0.99),
        ""
    );
    for (from, to, label) in &updates {
        println!(
            "{:<44} {:>12.0} {:>12}",
            format!("{label} (ms)"),
            (to - from) * 1000.0,
            ""
        );
    }
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "rolling",
            "clients": args.clients,
            "replicas": args.replicas,
            "duration_s": args.duration.as_secs_f64(),
            "bucket_s": width,
            "sent": sent,
            "ok": ok,
            "failed": failed,
            "ended_after_the_last_bucket": {"ok": late.0, "failed": late.1},
            "steady_rps": steady,
            "rollout_rps": rolling,
            "lowest_rollout_bucket_rps": lowest,
            "latency_p50_ms": lat.ms(0.5),
            "latency_p99_ms": lat.ms(0.99),
            "updates": updates.iter().map(|(f, t, l)| json!({"label": l, "from_s": f, "to_s": t})).collect::<Vec<_>>(),
            "series": series.iter().enumerate().map(|(i, b)| json!({"at_s": i as f64 * width, "ok": b.0, "failed": b.1})).collect::<Vec<_>>(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_ends_after_the_last_bucket_is_counted() {
        let mut t = Tally::new(Duration::from_millis(250), 4);
        t.record(Duration::from_millis(100), true);
        t.record(Duration::from_millis(999), true);
        // In flight when the load stopped at 1 s, failed 9 s later (a client timeout).
        t.record(Duration::from_millis(10_100), false);
        assert_eq!((t.ok(), t.failed()), (2, 1));
        assert_eq!(t.buckets.len(), 41);
        assert_eq!(t.buckets[40], (0, 1));
        assert_eq!(t.buckets[3], (1, 0));
    }
}
