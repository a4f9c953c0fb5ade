//! `skiff bench cold-start`: Apps that scale to zero, on `skiff dev` with one node.
//!
//! - **Scale from zero.** An App with `autoscale.minReplicas: 0` is put at zero
//!   replicas (its Deployment scaled to 0, as the autoscaler does after its delay) and
//!   left until its pods are gone; then one GET goes to it through the gateway. The
//!   clock starts just before that request is sent and stops when its whole 200
//!   response has been read: the gateway's hold, the scheduling, the pod's start on a
//!   node that holds the module compiled, and the request. Repeated `--cold-starts`
//!   times; p50 and p99, and the gateway's own hold (`x-skiff-cold-start`) beside them.
//! - **Reaction.** An App at one replica with a target of `--target` requests in
//!   flight per replica gets a step of `--clients` concurrent clients; the clock starts
//!   with the step and stops when the last of the replicas the step asks for answers a
//!   request. Bounded by the scrape interval (`--metric-resolution`: two scrapes make a
//!   rate), the autoscaler's 1 s tick, and the pods' start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::SkiffProcess;
use super::stats::{Latencies, median};

#[derive(clap::Args)]
pub struct ColdStartBenchArgs {
    /// Cold starts measured.
    #[arg(long, default_value_t = 100)]
    cold_starts: usize,
    /// Reaction runs (each a step of load on an App at one replica).
    #[arg(long, default_value_t = 3)]
    reactions: usize,
    /// Concurrent clients in the reaction's step.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests in flight per replica the reaction's App targets.
    #[arg(long, default_value_t = 8)]
    target: u32,
    /// The scrape interval of the cluster under test.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    metric_resolution: Duration,
    #[arg(long, default_value = "workloads/bin/http-hello.wasm")]
    module: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

const NS: &str = "/apis/skiff.dev/v1/namespaces/default";

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let r = http
        .request(method, url)
        .header("content-type", "application/merge-patch+json")
        .json(body)
        .send()
        .await?;
    let code = r.status();
    let body: Value = r.json().await?;
    if !code.is_success() {
        bail!("{url} answered {code}: {body}");
    }
    Ok(body)
}

/// Creates an App of `module` (uploaded) with `autoscale`, and returns its URL.
async fn create_app(
    http: &reqwest::Client,
    api: &str,
    name: &str,
    digest: &str,
    autoscale: Value,
) -> anyhow::Result<String> {
    let app = json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": name},
        "spec": {"module": digest, "autoscale": autoscale}});
    let r = http
        .post(format!("{api}{NS}/apps"))
        .json(&app)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "creating the App answered {}: {}",
            r.status(),
            r.text().await?
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let app: Value = http
            .get(format!("{api}{NS}/apps/{name}"))
            .send()
            .await?
            .json()
            .await?;
        if let Some(url) = app["status"]["url"].as_str() {
            return Ok(url.to_string());
        }
        if Instant::now() > deadline {
            bail!("the App {name} has no URL after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn pods_of(http: &reqwest::Client, api: &str, name: &str) -> anyhow::Result<usize> {
    let list: Value = http
        .get(format!(
            "{api}/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3D{name}"
        ))
        .send()
        .await?
        .json()
        .await?;
    Ok(list["items"].as_array().map_or(0, Vec::len))
}

/// Scales the App's Deployment to zero and waits for its pods to be gone.
async fn to_zero(http: &reqwest::Client, api: &str, name: &str) -> anyhow::Result<()> {
    send(
        http,
        reqwest::Method::PATCH,
        &format!("{api}/apis/apps/v1/namespaces/default/deployments/{name}/scale"),
        &json!({"spec": {"replicas": 0}}),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pods_of(http, api, name).await? > 0 {
        if Instant::now() > deadline {
            bail!("{name}'s pods were not gone 60 s after scaling to zero");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The `pod=NAME` an http-hello answer names.
fn pod_in(body: &str) -> Option<String> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pod="))
        .map(str::to_string)
}

pub async fn run(args: ColdStartBenchArgs) -> anyhow::Result<()> {
    let module = std::fs::read(&args.module)
        .with_context(|| format!("reading {}", args.module.display()))?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let resolution = humantime::format_duration(args.metric_resolution).to_string();
    let (dev, _) = SkiffProcess::start(
        &[
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--metric-resolution",
            &resolution,
        ],
        "api:",
    )
    .await?;
    let (api, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
    let digest = super::upload_module(&http, &api, module).await?;
    let load = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;

    // Scale from zero. A delay longer than the run, so only this bench scales it down.
    let url = create_app(
        &http,
        &api,
        "cold",
        &digest,
        json!({"minReplicas": 0, "maxReplicas": 1, "targetConcurrency": 100, "scaleDownDelay": "1h"}),
    )
    .await?;
    // The first start compiles the module on the node; every measured one finds it.
    let first = load.get(&url).send().await?;
    if !first.status().is_success() {
        bail!("the App's first request answered {}", first.status());
    }
    let (mut total, mut held) = (Latencies::new(), Latencies::new());
    for i in 0..args.cold_starts {
        to_zero(&http, &api, "cold").await?;
        let started = Instant::now();
        let response = load.get(&url).send().await?;
        let status = response.status();
        let hold = response
            .headers()
            .get(skiff_controlplane::gateway::COLD_START_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok());
        let body = response.text().await?;
        let took = started.elapsed();
        if !status.is_success() {
            bail!("cold start {i} answered {status}: {body}");
        }
        total.record(took);
        if let Some(ms) = hold {
            held.record(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    println!(
        "scale from zero: {} cold starts, first request to 200: p50 {:.1} ms, p99 {:.1} ms (gateway hold p50 {:.1} ms, p99 {:.1} ms)",
        total.len(),
        total.ms(0.5),
        total.ms(0.99),
        held.ms(0.5),
        held.ms(0.99)
    );

    // Reaction to a step of load.
    let mut reactions = Vec::new();
    for run in 0..args.reactions {
        let name = format!("step{run}");
        let wanted = (args.clients as u32).div_ceil(args.target).max(1);
        let url = create_app(
            &http,
            &api,
            &name,
            &digest,
            json!({"minReplicas": 1, "maxReplicas": wanted, "targetConcurrency": args.target,
                "scaleDownDelay": "1h"}),
        )
        .await?;
        // Ready at one replica, and measured, before the step.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !load
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if Instant::now() > deadline {
                bail!("{name} did not serve");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(args.metric_resolution * 2).await;
        // Each request holds its slot a while (the `stream` route sleeps between
        // chunks), so the clients keep `clients` requests in flight.
        let step_url = format!("{url}stream?n=5&ms=20");
        let seen: Arc<Mutex<HashMap<String, Duration>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let step = Instant::now();
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..args.clients {
            let (load, step_url, url, seen, stop) = (
                load.clone(),
                step_url.clone(),
                url.clone(),
                seen.clone(),
                stop.clone(),
            );
            clients.spawn(async move {
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    // One request in eight names its pod; the rest hold the load.
                    let target = if n.is_multiple_of(8) { &url } else { &step_url };
                    if let Ok(r) = load.get(target).send().await
                        && let Ok(body) = r.text().await
                        && let Some(pod) = pod_in(&body)
                    {
                        seen.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(pod)
                            .or_insert_with(|| step.elapsed());
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let reacted = loop {
            let served = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if served.len() >= wanted as usize {
                break served.values().max().copied();
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        while clients.join_next().await.is_some() {}
        let reacted = reacted
            .with_context(|| format!("{name} did not reach {wanted} replicas within 60 s"))?;
        println!(
            "reaction run {}: a step to {} clients served by {wanted} replicas after {:.2} s",
            run + 1,
            args.clients,
            reacted.as_secs_f64()
        );
        reactions.push(reacted.as_secs_f64());
    }
    let reaction = median(reactions.clone());
    println!(
        "reaction: median {reaction:.2} s over {} runs",
        reactions.len()
    );
    dev.stop().await;
    super::write_json(
        args.json.as_ref(),
        &json!({
            "cold_starts": total.len(),
            "cold_start_p50_ms": total.ms(0.5),
            "cold_start_p99_ms": total.ms(0.99),
            "hold_p50_ms": held.ms(0.5),
            "hold_p99_ms": held.ms(0.99),
            "reaction_s": reactions,
            "reaction_median_s": reaction,
            "metric_resolution_s": args.metric_resolution.as_secs_f64(),
        }),
    )
}
