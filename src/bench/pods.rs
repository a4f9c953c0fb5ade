//! `skiff bench pods`: pod start latency (create to Running, as seen through a watch,
//! with the module already compiled) over many pods bound to one node, and density
//! (how many idle ticker pods one agent holds, and its RSS).
//!
//! It runs a real `skiff server` and a real `skiff agent` as separate processes on
//! loopback, so the agent's RSS is its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use super::SkiffProcess;
use super::stats::Latencies;

#[derive(clap::Args)]
pub struct PodBenchArgs {
    /// Pods created for the start-latency measurement.
    #[arg(long, default_value_t = 1000)]
    pods: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Creates per second in the latency runs, as Kubernetes' density tests pace pod
    /// creation. 0 creates as fast as the clients can (a burst: then the figure is mostly
    /// queueing, and the throughput line is the one to read).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Idle pods for the density measurement (0 skips it).
    #[arg(long, default_value_t = 5000)]
    density: usize,
    /// The guest to run (an idle ticker by default).
    #[arg(long, default_value = "workloads/bin/ticker.wasm")]
    module: PathBuf,
    /// Runs of the latency measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Writes the start-latency distribution of all runs here (PNG).
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn pod(name: &str, image: &str, args: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"nodeName": "bench-1", "containers": [{"name": "main", "image": image, "args": args}]},
    })
}

/// Creates `names` and returns, per pod, the time from sending its create to seeing it
/// Running through a watch opened before the first create.
async fn start_latencies(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    names: Vec<String>,
    clients: usize,
    rate: f64,
    args: &[&str],
) -> anyhow::Result<(Latencies, Duration)> {
    let list: Value = http
        .get(format!("{url}/api/v1/namespaces/default/pods?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("0")
        .to_string();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = http
        .get(format!(
            "{url}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
        ))
        .send()
        .await?;
    let total = names.len();
    let seen_sent = sent.clone();
    let watcher = tokio::spawn(async move {
        let mut lat = Latencies::new();
        let mut done = std::collections::HashSet::new();
        let mut lines = super::WatchLines::new(watch);
        while done.len() < total {
            let Some((now, batch)) = lines.next(Duration::from_secs(120)).await else {
                break;
            };
            for line in batch {
                let Ok(e) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                if e["object"]["status"]["phase"] != "Running" {
                    continue;
                }
                let name = e["object"]["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if let Some(t) = seen_sent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    && done.insert(name)
                {
                    lat.record(now.duration_since(*t));
                }
            }
        }
        lat
    });
    let started = Instant::now();
    let image = image.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let gap = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    };
    let begin = tokio::time::Instant::now();
    futures::stream::iter(names.into_iter().enumerate())
        .map(|(i, name)| {
            let (http, sent, image, args) =
                (http.clone(), sent.clone(), image.clone(), args.clone());
            let url = url.to_string();
            async move {
                tokio::time::sleep_until(begin + gap * i as u32).await;
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), Instant::now());
                let r = http
                    .post(format!("{url}/api/v1/namespaces/default/pods"))
                    .json(&pod(&name, &image, &argv))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("create {name}: {}", r.text().await?);
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let lat = watcher.await?;
    Ok((lat, started.elapsed()))
}

async fn delete_all(http: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    http.delete(format!(
        "{url}/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods&gracePeriodSeconds=0"
    ))
    .send()
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let list: Value = http
            .get(format!(
                "{url}/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods"
            ))
            .send()
            .await?
            .json()
            .await?;
        if list["items"].as_array().is_some_and(|a| a.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pods were not deleted within 120s")
}

pub async fn run(args: PodBenchArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let dir = tempfile::tempdir()?;
    let server_dir = dir.path().join("server").display().to_string();
    let agent_dir = dir.path().join("agent").display().to_string();
    let (server, url) = SkiffProcess::start(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &server_dir,
        ],
        "api:",
    )
    .await?;
    let token = std::fs::read_to_string(dir.path().join("server").join("node-token"))?;
    let (agent, _) = SkiffProcess::start(
        &[
            "agent",
            "--server",
            &url,
            "--token",
            token.trim(),
            "--name",
            "bench-1",
            "--data-dir",
            &agent_dir,
            "--listen",
            "127.0.0.1:0",
            "--pod-capacity",
            "20000",
        ],
        "agent:",
    )
    .await?;
    let (_, http) =
        skiff_api::client::http_client(Some(&dir.path().join("server").join("kubeconfig"))).await?;
    let module: Value = http
        .post(format!("{url}/apis/skiff.dev/v1/modules"))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await?
        .json()
        .await?;
    let image = module["digest"]
        .as_str()
        .context("upload answered no digest")?
        .to_string();
    let idle_rss = agent.rss_mib();

    // Warm-up: the module is fetched and compiled once, so the runs measure starts.
    let (warm, _) =
        start_latencies(&http, &url, &image, vec!["warm".into()], 1, 0.0, &["60m"]).await?;
    eprintln!(
        "warm-up pod (fetch + compile) running after {:.1} ms",
        warm.ms(0.5)
    );
    delete_all(&http, &url).await?;

    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut rates = Vec::new();
    let mut all = Latencies::new();
    for run in 0..args.runs {
        let names: Vec<String> = (0..args.pods).map(|i| format!("start-{run}-{i}")).collect();
        let (lat, took) = start_latencies(
            &http,
            &url,
            &image,
            names,
            args.clients,
            args.rate,
            &["60m"],
        )
        .await?;
        eprintln!(
            "run {}/{}: {} pods running, p50 {:.1} ms, p99 {:.1} ms",
            run + 1,
            args.runs,
            lat.len(),
            lat.ms(0.5),
            lat.ms(0.99)
        );
        if lat.len() < args.pods as u64 {
            bail!("only {} of {} pods reached Running", lat.len(), args.pods);
        }
        p50s.push(lat.ms(0.5));
        p99s.push(lat.ms(0.99));
        all.merge(&lat);
        rates.push(args.pods as f64 / took.as_secs_f64());
        delete_all(&http, &url).await?;
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v[v.len() / 2]
    };
    let (p50, p99, rate) = (med(p50s.clone()), med(p99s.clone()), med(rates));

    let mut density = Value::Null;
    if args.density > 0 {
        let names: Vec<String> = (0..args.density).map(|i| format!("idle-{i}")).collect();
        let (lat, took) =
            start_latencies(&http, &url, &image, names, args.clients, 0.0, &["60m"]).await?;
        // Let the burst's transient allocations settle before reading RSS.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = agent.rss_mib();
        // Count only instances that are really up: running, never restarted.
        let list: Value = http
            .get(format!(
                "{url}/api/v1/namespaces/default/pods?labelSelector=bench%3Dpods"
            ))
            .send()
            .await?
            .json()
            .await?;
        let healthy = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                let c = &p["status"]["containerStatuses"][0];
                c["state"]["running"].is_object() && c["restartCount"] == 0
            })
            .count();
        eprintln!(
            "density: {} idle pods running in {:.1} s ({healthy} running without a restart), agent RSS {rss:.0} MiB",
            lat.len(),
            took.as_secs_f64()
        );
        if healthy < lat.len() as usize {
            bail!(
                "only {healthy} of {} density pods are running without restarts",
                lat.len()
            );
        }
        density = json!({"healthy": healthy, "pods": lat.len(), "burst_pods_per_sec": lat.len() as f64 / took.as_secs_f64(), "burst_start_p50_ms": lat.ms(0.5), "burst_start_p99_ms": lat.ms(0.99), "agent_rss_mib": rss, "rss_per_pod_kib": (rss - idle_rss) * 1024.0 / lat.len().max(1) as f64, "seconds_to_all_running": took.as_secs_f64()});
    }
    let server_rss = server.rss_mib();
    agent.stop().await;
    server.stop().await;
    if let Some(png) = &args.png {
        super::plot::latency_cdf(
            png,
            "Pod start latency: create to Running, module cached, one node",
            &[super::plot::Distribution {
                label: format!(
                    "{} pods in {} runs, created at {}/s",
                    all.len(),
                    args.runs,
                    args.rate
                ),
                points: all.cdf(),
            }],
        )?;
        println!("plot written to {}", png.display());
    }

    println!(
        "\nskiff bench pods: {} pods per run on one node, created at {}/s by {} clients, median of {} runs\n",
        args.pods, args.rate, args.clients, args.runs
    );
    println!("{:<40} {:>12} {:>12}", "metric", "skiff", "target");
    println!(
        "{:<40} {:>12.1} {:>12}",
        "pod start latency p50 (ms)", p50, ""
    );
    println!(
        "{:<40} {:>12.1} {:>12}",
        "pod start latency p99 (ms)", p99, "<= 20"
    );
    println!(
        "{:<40} {:>12.0} {:>12}",
        "pods started per second", rate, ""
    );
    println!(
        "{:<40} {:>12.1} {:>12}",
        "agent idle RSS, no pods (MiB)", idle_rss, ""
    );
    if !density.is_null() {
        println!(
            "{:<40} {:>12} {:>12}",
            "idle ticker pods held", density["pods"], ">= 5000"
        );
        println!(
            "{:<40} {:>12.0} {:>12}",
            "agent RSS with them (MiB)",
            density["agent_rss_mib"].as_f64().unwrap_or(f64::NAN),
            "<= 1024"
        );
        println!(
            "{:<40} {:>12.1} {:>12}",
            "RSS per idle pod (KiB)",
            density["rss_per_pod_kib"].as_f64().unwrap_or(f64::NAN),
            ""
        );
        println!(
            "{:<40} {:>12.0} {:>12}",
            "burst of all of them: pods running/s",
            density["burst_pods_per_sec"].as_f64().unwrap_or(f64::NAN),
            ""
        );
    }
    println!(
        "{:<40} {:>12.1} {:>12}",
        "server RSS at the end (MiB)", server_rss, ""
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "pods",
            "pods": args.pods,
            "clients": args.clients,
            "rate": args.rate,
            "runs": args.runs,
            "start_p50_ms": p50,
            "start_p99_ms": p99,
            "per_run_p50_ms": p50s,
            "per_run_p99_ms": p99s,
            "start_cdf_ms": all.cdf(),
            "pods_per_sec": rate,
            "agent_idle_rss_mib": idle_rss,
            "density": density,
            "server_rss_mib": server_rss,
        }),
    )
}
