//! `skiff bench api`: durable creates per second with concurrent clients, and watch
//! delivery latency with many concurrent watchers. Each run starts a fresh `skiff
//! server` (and a fresh etcd, the peer) on loopback, so runs are independent; the
//! figures reported are medians over runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use super::SkiffProcess;
use super::etcd::{self, Etcd};
use super::stats::{Latencies, median};

#[derive(clap::Args)]
pub struct ApiBenchArgs {
    /// Concurrent clients doing creates.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Objects created per run.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects written while the watchers listen; each is delivered to every watcher.
    #[arg(long, default_value_t = 200)]
    watch_events: usize,
    /// Gap between those writes.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Runs per system; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The etcd binary to measure side by side, or "none".
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One system under test, reached over HTTP on loopback.
enum System {
    Skiff {
        url: String,
        process: SkiffProcess,
        dir: tempfile::TempDir,
    },
    Etcd(Etcd),
}

impl System {
    fn name(&self) -> &'static str {
        match self {
            System::Skiff { .. } => "skiff",
            System::Etcd(_) => "etcd",
        }
    }

    async fn start_skiff() -> anyhow::Result<System> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().display().to_string();
        let (process, url) = SkiffProcess::start(
            &["server", "--listen", "127.0.0.1:0", "--data-dir", &data_dir],
            "api:",
        )
        .await?;
        Ok(System::Skiff { url, process, dir })
    }

    async fn stop(self) {
        match self {
            System::Skiff { process, .. } => process.stop().await,
            System::Etcd(e) => e.stop().await,
        }
    }

    /// Prepares a collection to write into; returns a handle string for it.
    async fn make_collection(&self, http: &reqwest::Client, name: &str) -> anyhow::Result<()> {
        if let System::Skiff { url, .. } = self {
            let r = http
                .post(format!("{url}/api/v1/namespaces"))
                .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
                .send()
                .await?;
            if !r.status().is_success() {
                bail!("creating namespace {name}: {}", r.text().await?);
            }
        }
        Ok(())
    }

    /// One durable create of object `name` in `collection`.
    fn create(
        &self,
        http: &reqwest::Client,
        collection: &str,
        name: &str,
    ) -> reqwest::RequestBuilder {
        match self {
            System::Skiff { url, .. } => http.post(format!("{url}/api/v1/namespaces/{collection}/configmaps")).json(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"bench": "api"}},
                "data": {"payload": "0123456789abcdef0123456789abcdef"},
            })),
            System::Etcd(e) => http.post(format!("{}/v3/kv/txn", e.url)).json(&etcd::create_txn(
                &format!("/registry/configmaps/{collection}/{name}"),
                r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"},"data":{"payload":"0123456789abcdef0123456789abcdef"}}"#,
            )),
        }
    }

    /// Opens a watch on a collection; resolves once the server has registered it.
    async fn watch(
        &self,
        http: &reqwest::Client,
        collection: &str,
    ) -> anyhow::Result<reqwest::Response> {
        let resp = match self {
            System::Skiff { url, .. } => {
                let list: Value = http
                    .get(format!(
                        "{url}/api/v1/namespaces/{collection}/configmaps?limit=1"
                    ))
                    .send()
                    .await?
                    .json()
                    .await?;
                let rv = list["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string();
                http.get(format!(
                    "{url}/api/v1/namespaces/{collection}/configmaps?watch=1&resourceVersion={rv}"
                ))
                .send()
                .await?
            }
            System::Etcd(e) => {
                http.post(format!("{}/v3/watch", e.url))
                    .json(&etcd::watch_request(&format!(
                        "/registry/configmaps/{collection}/"
                    )))
                    .send()
                    .await?
            }
        };
        if !resp.status().is_success() {
            bail!("watch failed: {}", resp.status());
        }
        Ok(resp)
    }

    /// The names of the objects an event line carries.
    fn names_in(&self, line: &[u8]) -> Vec<String> {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return Vec::new();
        };
        match self {
            System::Skiff { .. } => v
                .pointer("/object/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .into_iter()
                .collect(),
            System::Etcd(_) => v
                .pointer("/result/events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.pointer("/kv/key").and_then(Value::as_str))
                .filter_map(|k| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k).ok()
                })
                .filter_map(|k| String::from_utf8(k).ok())
                .filter_map(|k| k.rsplit('/').next().map(str::to_string))
                .collect(),
        }
    }
}

struct RunResult {
    creates_per_sec: f64,
    create_p50_ms: f64,
    create_p99_ms: f64,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
    deliveries: u64,
    expected_deliveries: u64,
}

async fn measure_creates(
    sys: &Arc<System>,
    args: &ApiBenchArgs,
    http: &reqwest::Client,
) -> anyhow::Result<(f64, Latencies)> {
    sys.make_collection(http, "bench-creates").await?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (next, http, total) = (next.clone(), http.clone(), args.creates);
        let sys_ref = sys.clone();
        tasks.spawn(async move {
            let mut lat = Latencies::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let resp = sys_ref
                    .create(&http, "bench-creates", &format!("cm-{i}"))
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                if !status.is_success() {
                    bail!(
                        "create failed: {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
                lat.record(t.elapsed());
            }
        });
    }
    let mut all = Latencies::new();
    while let Some(r) = tasks.join_next().await {
        all.merge(&r??);
    }
    let rate = args.creates as f64 / start.elapsed().as_secs_f64();
    Ok((rate, all))
}

async fn measure_watch(
    sys: &Arc<System>,
    args: &ApiBenchArgs,
    http: &reqwest::Client,
) -> anyhow::Result<(Latencies, u64)> {
    sys.make_collection(http, "bench-watch").await?;
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..args.watch_events).map(|_| OnceLock::new()).collect());
    let mut streams = Vec::with_capacity(args.watchers);
    // Open watches a few at a time so the setup itself doesn't time out.
    let mut pending =
        futures::stream::iter((0..args.watchers).map(|_| sys.watch(http, "bench-watch")))
            .buffer_unordered(64);
    while let Some(r) = pending.next().await {
        streams.push(r?);
    }
    drop(pending);
    let expected = args.watch_events;
    let mut tasks = tokio::task::JoinSet::new();
    for resp in streams {
        let sent = sent.clone();
        let sys_ref = sys.clone();
        tasks.spawn(async move {
            let mut lat = Latencies::new();
            let mut seen = 0usize;
            let mut lines = super::WatchLines::new(resp);
            while seen < expected {
                let Some((now, batch)) = lines.next(Duration::from_secs(120)).await else {
                    break;
                };
                for line in batch {
                    for name in sys_ref.names_in(&line) {
                        if let Some(i) = name
                            .strip_prefix("w-")
                            .and_then(|i| i.parse::<usize>().ok())
                            && let Some(t) = sent.get(i).and_then(OnceLock::get)
                        {
                            lat.record(now.duration_since(*t));
                            seen += 1;
                        }
                    }
                }
            }
            lat
        });
    }
    for i in 0..args.watch_events {
        let _ = sent[i].set(Instant::now());
        let resp = sys
            .create(http, "bench-watch", &format!("w-{i}"))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("create during watch failed: {}", resp.status());
        }
        tokio::time::sleep(args.watch_interval).await;
    }
    let mut all = Latencies::new();
    while let Some(r) = tasks.join_next().await {
        all.merge(&r?);
    }
    let delivered = all.len();
    Ok((all, delivered))
}

async fn one_run(sys: &Arc<System>, args: &ApiBenchArgs) -> anyhow::Result<RunResult> {
    let builder = match &**sys {
        // Skiff is measured as its clients use it: over TLS, with a bearer token.
        System::Skiff { dir, .. } => {
            skiff_api::client::http_client_builder(Some(&dir.path().join("kubeconfig")))
                .await?
                .1
        }
        System::Etcd(_) => reqwest::Client::builder().tcp_nodelay(true),
    };
    let http = builder
        .pool_max_idle_per_host(args.clients.max(64))
        .build()?;
    let (rate, create_lat) = measure_creates(sys, args, &http).await?;
    let (watch_lat, delivered) = measure_watch(sys, args, &http).await?;
    Ok(RunResult {
        creates_per_sec: rate,
        create_p50_ms: create_lat.ms(0.5),
        create_p99_ms: create_lat.ms(0.99),
        watch_p50_ms: watch_lat.ms(0.5),
        watch_p99_ms: watch_lat.ms(0.99),
        deliveries: delivered,
        expected_deliveries: (args.watchers * args.watch_events) as u64,
    })
}

/// Stops a system once every task that used it has finished.
async fn stop(sys: Arc<System>) {
    match Arc::try_unwrap(sys) {
        Ok(sys) => sys.stop().await,
        // Still shared: dropping it kills the child processes (kill_on_drop).
        Err(_) => tracing::warn!("benchmark tasks outlived their run"),
    }
}

fn summarize(results: &[RunResult]) -> Value {
    let pick = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    json!({
        "runs": results.len(),
        "creates_per_sec": pick(|r| r.creates_per_sec),
        "create_p50_ms": pick(|r| r.create_p50_ms),
        "create_p99_ms": pick(|r| r.create_p99_ms),
        "watch_p50_ms": pick(|r| r.watch_p50_ms),
        "watch_p99_ms": pick(|r| r.watch_p99_ms),
        "deliveries": results.iter().map(|r| r.deliveries).sum::<u64>(),
        "expected_deliveries": results.iter().map(|r| r.expected_deliveries).sum::<u64>(),
        "per_run_creates_per_sec": results.iter().map(|r| r.creates_per_sec).collect::<Vec<_>>(),
        "per_run_watch_p99_ms": results.iter().map(|r| r.watch_p99_ms).collect::<Vec<_>>(),
    })
}

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let with_etcd = args.etcd != "none";
    let mut skiff_runs = Vec::new();
    let mut etcd_runs = Vec::new();
    // Alternate the systems run by run, so a noisy neighbour hurts both alike.
    for run in 0..args.runs {
        let sys = Arc::new(System::start_skiff().await?);
        eprintln!("run {}/{}: {}", run + 1, args.runs, sys.name());
        let r = one_run(&sys, &args).await;
        stop(sys).await;
        skiff_runs.push(r?);
        if with_etcd {
            let sys = Arc::new(System::Etcd(
                Etcd::start(&args.etcd)
                    .await
                    .context("the etcd peer (pass --etcd none to skip it)")?,
            ));
            eprintln!("run {}/{}: {}", run + 1, args.runs, sys.name());
            let r = one_run(&sys, &args).await;
            stop(sys).await;
            etcd_runs.push(r?);
        }
    }
    let skiff = summarize(&skiff_runs);
    let etcd = with_etcd.then(|| summarize(&etcd_runs));
    println!(
        "\nskiff bench api: {} creates by {} clients; {} watchers x {} events; median of {} runs\n",
        args.creates, args.clients, args.watchers, args.watch_events, args.runs
    );
    println!(
        "{:<28} {:>12} {:>12} {:>12} {:>10}",
        "metric", "skiff", "etcd", "skiff/etcd", "target"
    );
    let row = |name: &str, key: &str, target: &str| {
        let s = skiff[key].as_f64().unwrap_or(f64::NAN);
        let (e, ratio) = match &etcd {
            Some(e) => {
                let e = e[key].as_f64().unwrap_or(f64::NAN);
                (format!("{e:.1}"), format!("{:.2}x", s / e))
            }
            None => ("-".into(), "-".into()),
        };
        println!("{name:<28} {s:>12.1} {e:>12} {ratio:>12} {target:>10}");
    };
    row("durable creates/s", "creates_per_sec", ">= 5000");
    row("create latency p50 (ms)", "create_p50_ms", "");
    row("create latency p99 (ms)", "create_p99_ms", "");
    row("watch delivery p50 (ms)", "watch_p50_ms", "");
    row("watch delivery p99 (ms)", "watch_p99_ms", "<= 50");
    println!("(for latencies, a ratio below 1 means skiff is faster)");
    println!(
        "\nwatch deliveries: skiff {}/{}{}",
        skiff["deliveries"],
        skiff["expected_deliveries"],
        etcd.as_ref()
            .map(|e| format!(", etcd {}/{}", e["deliveries"], e["expected_deliveries"]))
            .unwrap_or_default()
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "api",
            "clients": args.clients,
            "creates": args.creates,
            "watchers": args.watchers,
            "watch_events": args.watch_events,
            "skiff": skiff,
            "etcd": etcd,
        }),
    )
}
