//! `skiff bench pods`: pod start latency (create to Running, as seen through a watch,
//! with the module already compiled) over many pods on one node, two ways: pods bound
//! to the node in their create (`nodeName` set, so the scheduler has nothing to do), and
//! pods created without a node, which the scheduler binds (end to end, as Kubernetes'
//! pod-startup SLO counts it); and density (how many idle ticker pods one agent holds,
//! and its RSS, sampled several times).
//!
//! A third way, `--path outside`, measures pod start as an outside client sees it: the
//! official Kubernetes Python client (pod_start.py, beside this file, written out and
//! run once per run) creates each pod over HTTPS and waits for its own watch to show it
//! Running, so that figure includes the Python client's own work and the scheduler.
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
use super::stats::{Latencies, median};

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
    /// Runs of the latency measurement, each measuring every path asked for (in an
    /// order that alternates run by run); medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// How pods reach the node: `bound` (created with `nodeName`, no scheduler),
    /// `scheduled` (created without it; the scheduler binds them), `both` of these;
    /// `outside` (the official Kubernetes Python client creates each pod, unbound, and
    /// watches for it Running: needs `python3` with the `kubernetes` package), or `all`
    /// three.
    #[arg(long, value_enum, default_value = "both")]
    path: PathChoice,
    /// Pods per run of the outside-client path, each created once the one before is
    /// seen Running (per creator).
    #[arg(long, default_value_t = 200)]
    outside_pods: usize,
    /// Creators in the outside-client path, each a thread of the Python client creating
    /// its pods one after another.
    #[arg(long, default_value_t = 1)]
    outside_concurrency: usize,
    /// The Python interpreter that runs the outside client.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Samples of the agent's RSS (200 ms apart, once it has settled); the median is
    /// reported.
    #[arg(long, default_value_t = 5)]
    rss_samples: usize,
    /// Runs of the density measurement. Each reads both processes' RSS before the
    /// burst, with every pod running, and after the pods are deleted; medians are
    /// reported.
    #[arg(long, default_value_t = 3)]
    density_runs: usize,
    /// After the density pods are gone, how long RSS gets to come back (within
    /// `--settled-ratio` of what it was before the burst, both processes) before it is
    /// read anyway. Shorter keeps runs short; the goal is read at one minute.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// RSS counts as back once it is within this ratio of its figure before the burst.
    #[arg(long, default_value_t = 1.5)]
    settled_ratio: f64,
    /// Writes the start-latency distribution of all runs here (PNG).
    #[arg(long)]
    png: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum PathChoice {
    Bound,
    Scheduled,
    Both,
    Outside,
    All,
}

/// How a measured pod reaches its node.
#[derive(Clone, Copy, PartialEq, Debug)]
enum StartPath {
    /// Created with `nodeName: bench-1`: the agent sees it at once; no scheduler.
    Bound,
    /// Created without a node: the scheduler binds it to bench-1, then the agent starts
    /// it.
    Scheduled,
    /// Created without a node by the official Kubernetes Python client, which also
    /// watches for it Running: the figure an outside client sees.
    Outside,
}

impl StartPath {
    fn key(self) -> &'static str {
        match self {
            StartPath::Bound => "bound",
            StartPath::Scheduled => "scheduled",
            StartPath::Outside => "outside",
        }
    }

    /// How the table's rows name the path's figures.
    fn figure(self) -> &'static str {
        match self {
            StartPath::Outside => "outside client (Python)",
            path => path.label(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            StartPath::Bound => "bound directly, no scheduler",
            StartPath::Scheduled => "scheduled: create, bind, Running",
            StartPath::Outside => "outside client (Python), scheduled",
        }
    }
}

/// The paths a run measures, in the order it measures them: run by run the order
/// alternates, so neither path always goes first.
fn paths_for_run(choice: PathChoice, run: usize) -> Vec<StartPath> {
    match choice {
        PathChoice::Bound => vec![StartPath::Bound],
        PathChoice::Scheduled => vec![StartPath::Scheduled],
        PathChoice::Outside => vec![StartPath::Outside],
        PathChoice::Both if run.is_multiple_of(2) => vec![StartPath::Bound, StartPath::Scheduled],
        PathChoice::Both => vec![StartPath::Scheduled, StartPath::Bound],
        PathChoice::All => {
            // Each path goes first in turn.
            let mut all = vec![StartPath::Bound, StartPath::Scheduled, StartPath::Outside];
            all.rotate_left(run % 3);
            all
        }
    }
}

fn pod(name: &str, image: &str, args: &[&str], path: StartPath) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "pods"}},
        "spec": {"containers": [{"name": "main", "image": image, "args": args}]},
    });
    if path == StartPath::Bound {
        pod["spec"]["nodeName"] = json!("bench-1");
    }
    pod
}

/// Creates `names` and returns, per pod, the time from sending its create to seeing it
/// Running through a watch opened before the first create.
#[allow(clippy::too_many_arguments)]
async fn start_latencies(
    http: &reqwest::Client,
    url: &str,
    image: &str,
    names: Vec<String>,
    clients: usize,
    rate: f64,
    args: &[&str],
    path: StartPath,
) -> anyhow::Result<(Latencies, Duration)> {
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch =
        super::watch_from_now(http, &format!("{url}/api/v1/namespaces/default/pods"), "").await?;
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
                    .json(&pod(&name, &image, &argv, path))
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

/// The outside client: the official Kubernetes Python client creating pods and watching
/// for them Running (see the script's docstring for its clock).
const OUTSIDE_CLIENT: &str = include_str!("pod_start.py");

/// Warm-up pods each run of the outside client creates before the ones it measures: its
/// connections, and the first watch events, are set up on them.
const OUTSIDE_WARMUP: usize = 5;

/// What one run of the outside client measured, per pod in creation order, from just
/// before its create call: to the watch showing it Running, to the create call
/// returning, and to the watch showing it bound.
struct OutsideRun {
    running: Latencies,
    created: Latencies,
    bound: Latencies,
}

fn latencies_of(ms: &Value) -> Latencies {
    let mut lat = Latencies::new();
    for v in ms
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
    {
        lat.record(Duration::from_secs_f64(v / 1000.0));
    }
    lat
}

/// Runs the outside client once: `pods` pods (after its warm-up ones) named
/// `outside-RUN-I`, labelled `bench=pods` (so `delete_all` removes them).
async fn outside_latencies(
    python: &str,
    script: &std::path::Path,
    kubeconfig: &std::path::Path,
    image: &str,
    run: usize,
    pods: usize,
    concurrency: usize,
) -> anyhow::Result<(OutsideRun, Duration)> {
    let started = Instant::now();
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(kubeconfig)
        .arg(image)
        .args(["--pods", &pods.to_string()])
        .args(["--warmup", &OUTSIDE_WARMUP.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--label", "pods", "--prefix", &format!("outside-{run}")])
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running the outside client with {python}"))?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the outside client failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("the outside client printed no result: {stdout}"))?;
    Ok((
        OutsideRun {
            running: latencies_of(&result["running_ms"]),
            created: latencies_of(&result["created_ms"]),
            bound: latencies_of(&result["bound_ms"]),
        },
        took,
    ))
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

/// `n` samples of a process's RSS, 200 ms apart.
async fn sample_rss(process: &SkiffProcess, n: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n.max(1) {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        samples.push(process.rss_mib());
    }
    samples
}

/// The RSS of the agent and the server at one moment of a density run (MiB).
#[derive(Clone, Copy, Default)]
struct Rss {
    agent: f64,
    server: f64,
}

impl Rss {
    /// Medians of `n` samples of each, 200 ms apart.
    async fn sample(agent: &SkiffProcess, server: &SkiffProcess, n: usize) -> Rss {
        let mut agents = Vec::new();
        let mut servers = Vec::new();
        for i in 0..n.max(1) {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            agents.push(agent.rss_mib());
            servers.push(server.rss_mib());
        }
        Rss {
            agent: median(agents),
            server: median(servers),
        }
    }

    /// Both within `ratio` of `before`.
    fn back_to(&self, before: &Rss, ratio: f64) -> bool {
        self.agent <= before.agent * ratio && self.server <= before.server * ratio
    }

    fn to_json(self) -> Value {
        json!({"agent_mib": self.agent, "server_mib": self.server})
    }
}

/// One density run's memory: before the burst, with every pod running (`peak`), and
/// once the pods are gone (`after`, read as soon as both processes are back within the
/// settled ratio of what they took before the first run's burst, or at the settle
/// deadline), and how long that took.
struct MemoryRun {
    before: Rss,
    peak: Rss,
    after: Rss,
    settled: Option<Duration>,
}

impl MemoryRun {
    fn to_json(&self) -> Value {
        json!({
            "before": self.before.to_json(),
            "peak": self.peak.to_json(),
            "after": self.after.to_json(),
            "seconds_to_settle": self.settled.map(|d| d.as_secs_f64()),
        })
    }
}

/// From the moment the pods are gone: samples both processes' RSS every 500 ms until
/// both are back within `ratio` of `before`, or `settle` has passed; the last reading
/// and when it came back (if it did).
async fn wait_for_memory(
    agent: &SkiffProcess,
    server: &SkiffProcess,
    before: &Rss,
    ratio: f64,
    settle: Duration,
) -> (Rss, Option<Duration>) {
    let gone = Instant::now();
    loop {
        let now = Rss::sample(agent, server, 1).await;
        if now.back_to(before, ratio) {
            return (now, Some(gone.elapsed()));
        }
        if gone.elapsed() >= settle {
            return (now, None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn list_mib(samples: &[f64]) -> String {
    samples
        .iter()
        .map(|s| format!("{s:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the runs measured for one path.
#[derive(Default)]
struct PathRuns {
    p50s: Vec<f64>,
    p99s: Vec<f64>,
    rates: Vec<f64>,
    all: Option<Latencies>,
}

impl PathRuns {
    fn push(&mut self, lat: &Latencies, took: Duration) {
        self.p50s.push(lat.ms(0.5));
        self.p99s.push(lat.ms(0.99));
        self.rates.push(lat.len() as f64 / took.as_secs_f64());
        self.all.get_or_insert_with(Latencies::new).merge(lat);
    }

    fn p50(&self) -> f64 {
        median(self.p50s.clone())
    }

    fn p99(&self) -> f64 {
        median(self.p99s.clone())
    }

    fn rate(&self) -> f64 {
        median(self.rates.clone())
    }

    fn to_json(&self, path: StartPath) -> Value {
        json!({
            "path": path.label(),
            "runs": self.p50s.len(),
            "p50_ms": self.p50(),
            "p99_ms": self.p99(),
            "pods_per_sec": self.rate(),
            "per_run_p50_ms": self.p50s,
            "per_run_p99_ms": self.p99s,
            "per_run_pods_per_sec": self.rates,
            "cdf_ms": self.all.as_ref().map(Latencies::cdf),
        })
    }
}

fn per_run(values: &[f64], digits: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(args: PodBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
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
    let image = super::upload_module(&http, &url, bytes).await?;
    let idle_samples = sample_rss(&agent, args.rss_samples).await;
    let idle_rss = median(idle_samples.clone());
    eprintln!(
        "agent idle RSS, no pods: {idle_rss:.1} MiB (median of {} samples: {})",
        idle_samples.len(),
        list_mib(&idle_samples)
    );

    let kubeconfig = dir.path().join("server").join("kubeconfig");
    let script = dir.path().join("pod_start.py");
    std::fs::write(&script, OUTSIDE_CLIENT)?;

    // Warm-up, of each path measured: the module is fetched and compiled by the first
    // pod, so the runs measure starts. The outside client warms itself up in each run.
    for path in paths_for_run(args.path, 0)
        .into_iter()
        .filter(|p| *p != StartPath::Outside)
    {
        let (warm, _) = start_latencies(
            &http,
            &url,
            &image,
            vec![format!("warm-{}", path.key())],
            1,
            0.0,
            &["60m"],
            path,
        )
        .await?;
        eprintln!(
            "warm-up pod, {}: Running after {:.1} ms",
            path.label(),
            warm.ms(0.5)
        );
    }
    delete_all(&http, &url).await?;

    let mut bound = PathRuns::default();
    let mut scheduled = PathRuns::default();
    let mut outside = PathRuns::default();
    // The outside client's stages, per run: p50 to its create call returning, and to
    // its watch showing the pod bound.
    let (mut outside_created, mut outside_bound) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        for path in paths_for_run(args.path, run) {
            if path == StartPath::Outside {
                let (measured, took) = outside_latencies(
                    &args.python,
                    &script,
                    &kubeconfig,
                    &image,
                    run,
                    args.outside_pods,
                    args.outside_concurrency,
                )
                .await?;
                let lat = &measured.running;
                eprintln!(
                    "run {}/{}, {}: {} pods running, p50 {:.1} ms, p99 {:.1} ms (p50 to the create call returning {:.1} ms, to the watch showing it bound {:.1} ms)",
                    run + 1,
                    args.runs,
                    path.label(),
                    lat.len(),
                    lat.ms(0.5),
                    lat.ms(0.99),
                    measured.created.ms(0.5),
                    measured.bound.ms(0.5),
                );
                if lat.len() < args.outside_pods as u64 {
                    bail!(
                        "{}: only {} of {} pods reached Running",
                        path.label(),
                        lat.len(),
                        args.outside_pods
                    );
                }
                outside.push(lat, took);
                outside_created.push(measured.created.ms(0.5));
                outside_bound.push(measured.bound.ms(0.5));
                delete_all(&http, &url).await?;
                continue;
            }
            let names: Vec<String> = (0..args.pods)
                .map(|i| format!("{}-{run}-{i}", path.key()))
                .collect();
            let (lat, took) = start_latencies(
                &http,
                &url,
                &image,
                names,
                args.clients,
                args.rate,
                &["60m"],
                path,
            )
            .await?;
            eprintln!(
                "run {}/{}, {}: {} pods running, p50 {:.1} ms, p99 {:.1} ms",
                run + 1,
                args.runs,
                path.label(),
                lat.len(),
                lat.ms(0.5),
                lat.ms(0.99)
            );
            if lat.len() < args.pods as u64 {
                bail!(
                    "{}: only {} of {} pods reached Running",
                    path.label(),
                    lat.len(),
                    args.pods
                );
            }
            match path {
                StartPath::Bound => bound.push(&lat, took),
                StartPath::Scheduled => scheduled.push(&lat, took),
                StartPath::Outside => unreachable!("the outside client is measured above"),
            }
            delete_all(&http, &url).await?;
        }
    }

    let mut density = Value::Null;
    let mut memory: Vec<MemoryRun> = Vec::new();
    if args.density > 0 {
        let mut peaks = Vec::new();
        let mut peak_samples = Vec::new();
        let mut bursts = Vec::new();
        let mut healthy_min = usize::MAX;
        for run in 0..args.density_runs.max(1) {
            let before = Rss::sample(&agent, &server, args.rss_samples).await;
            let names: Vec<String> = (0..args.density)
                .map(|i| format!("idle-{run}-{i}"))
                .collect();
            let (lat, took) = start_latencies(
                &http,
                &url,
                &image,
                names,
                args.clients,
                0.0,
                &["60m"],
                StartPath::Bound,
            )
            .await?;
            // Let the burst's transient allocations settle before reading RSS.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let samples = sample_rss(&agent, args.rss_samples).await;
            let peak = Rss {
                agent: median(samples.clone()),
                server: median(sample_rss(&server, args.rss_samples).await),
            };
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
            drop(list);
            eprintln!(
                "density run {}/{}: {} idle pods running in {:.1} s ({healthy} running without a restart), agent RSS {:.0} MiB (median of {} samples: {}), server RSS {:.0} MiB",
                run + 1,
                args.density_runs.max(1),
                lat.len(),
                took.as_secs_f64(),
                peak.agent,
                samples.len(),
                list_mib(&samples),
                peak.server,
            );
            if healthy < lat.len() as usize {
                bail!(
                    "only {healthy} of {} density pods are running without restarts",
                    lat.len()
                );
            }
            healthy_min = healthy_min.min(healthy);
            delete_all(&http, &url).await?;
            // Every run is held to what the processes took before the first burst, so
            // memory one run kept cannot become the next run's allowance.
            let reference = memory.first().map_or(before, |m| m.before);
            let (after, settled) =
                wait_for_memory(&agent, &server, &reference, args.settled_ratio, args.settle).await;
            eprintln!(
                "density run {}/{} memory (MiB, agent / server): before {:.1} / {:.1}, peak {:.1} / {:.1}, after the pods went {:.1} / {:.1} ({})",
                run + 1,
                args.density_runs.max(1),
                before.agent,
                before.server,
                peak.agent,
                peak.server,
                after.agent,
                after.server,
                match settled {
                    Some(d) => format!(
                        "within {}x of before the first burst after {:.1} s",
                        args.settled_ratio,
                        d.as_secs_f64()
                    ),
                    None => format!(
                        "not within {}x of before the first burst after {:.0} s",
                        args.settled_ratio,
                        args.settle.as_secs_f64()
                    ),
                },
            );
            memory.push(MemoryRun {
                before,
                peak,
                after,
                settled,
            });
            peaks.push(peak.agent);
            // The JSON's samples are the first run's; every run's median is beside them.
            if peak_samples.is_empty() {
                peak_samples = samples;
            }
            bursts.push((lat, took));
        }
        let rss = median(peaks.clone());
        let pods = bursts.first().map(|(l, _)| l.len()).unwrap_or(0);
        let pick = |f: &dyn Fn(&(Latencies, Duration)) -> f64| {
            median(bursts.iter().map(f).collect::<Vec<_>>())
        };
        let took = pick(&|(_, t)| t.as_secs_f64());
        density = json!({
            "healthy": healthy_min,
            "pods": pods,
            "runs": memory.len(),
            "burst_pods_per_sec": pick(&|(l, t)| l.len() as f64 / t.as_secs_f64()),
            "burst_start_p50_ms": pick(&|(l, _)| l.ms(0.5)),
            "burst_start_p99_ms": pick(&|(l, _)| l.ms(0.99)),
            "agent_rss_mib": rss,
            "agent_rss_samples_mib": peak_samples,
            "per_run_agent_rss_mib": peaks,
            "rss_per_pod_kib": (rss - idle_rss) * 1024.0 / pods.max(1) as f64,
            "seconds_to_all_running": took,
        });
    }
    let memory_json = (!memory.is_empty()).then(|| {
        // The figure every run is held to: before the first burst.
        let first = memory[0].before;
        let med = |f: &dyn Fn(&MemoryRun) -> f64| median(memory.iter().map(f).collect::<Vec<_>>());
        json!({
            "settle_seconds": args.settle.as_secs_f64(),
            "settled_ratio": args.settled_ratio,
            "agent": {
                "before_mib": first.agent,
                "peak_mib": med(&|m| m.peak.agent),
                "after_mib": med(&|m| m.after.agent),
                "after_over_before": med(&|m| m.after.agent / first.agent),
            },
            "server": {
                "before_mib": first.server,
                "peak_mib": med(&|m| m.peak.server),
                "after_mib": med(&|m| m.after.server),
                "after_over_before": med(&|m| m.after.server / first.server),
            },
            "runs_settled": memory.iter().filter(|m| m.settled.is_some()).count(),
            "per_run": memory.iter().map(MemoryRun::to_json).collect::<Vec<_>>(),
        })
    });
    let server_rss = server.rss_mib();
    agent.stop().await;
    server.stop().await;
    let measured: Vec<(StartPath, &PathRuns)> = [
        (StartPath::Bound, &bound),
        (StartPath::Scheduled, &scheduled),
        (StartPath::Outside, &outside),
    ]
    .into_iter()
    .filter(|(_, r)| r.all.is_some())
    .collect();
    if let Some(png) = &args.png {
        super::plot::latency_cdf(
            png,
            "Pod start latency: create to Running, module cached, one node",
            &measured
                .iter()
                .map(|(path, r)| super::plot::Distribution {
                    label: format!(
                        "{}: {} pods in {} runs, {}",
                        path.label(),
                        r.all.as_ref().map(Latencies::len).unwrap_or(0),
                        r.p50s.len(),
                        if *path == StartPath::Outside {
                            "one after another per creator".to_string()
                        } else {
                            format!("created at {}/s", args.rate)
                        }
                    ),
                    points: r.all.as_ref().map(Latencies::cdf).unwrap_or_default(),
                })
                .collect::<Vec<_>>(),
        )?;
        println!("plot written to {}", png.display());
    }

    if bound.all.is_some() || scheduled.all.is_some() {
        println!(
            "\nskiff bench pods: {} pods per run and path on one node, created at {}/s by {} clients; median of {} runs, the paths' order alternating (every run in brackets)",
            args.pods, args.rate, args.clients, args.runs
        );
    }
    if outside.all.is_some() {
        println!(
            "\nskiff bench pods, outside client: {} pods per run on one node, created by the Python client one after another ({} creator(s)); median of {} runs (every run in brackets)",
            args.outside_pods, args.outside_concurrency, args.runs
        );
    }
    println!(
        "clock: from just before each create request is sent to the client's watch showing the pod Running (its guest instantiated)\n"
    );
    println!(
        "{:<52} {:>10} {:>10}  {:<22} runs",
        "metric", "skiff", "target", "Kubernetes"
    );
    let row = |name: &str, value: String, target: &str, peer: &str, runs: String| {
        println!("{name:<52} {value:>10} {target:>10}  {peer:<22} {runs}");
    };
    for (path, r) in &measured {
        // The goals and the peer's figure each row is set beside; the outside client
        // creates one pod after another, so its pods per second say nothing.
        let (p50_goal, p99_goal, p99_peer, rate_name) = match path {
            StartPath::Bound => ("", "<= 20", "", Some("bound directly")),
            StartPath::Scheduled => ("", "", "SLO p99 <= 5000", Some("scheduled")),
            StartPath::Outside => ("<= 5", "<= 15", "SLO p99 <= 5000", None),
        };
        let name = path.figure();
        row(
            &format!("start p50, {name} (ms)"),
            format!("{:.1}", r.p50()),
            p50_goal,
            "",
            format!("({})", per_run(&r.p50s, 1)),
        );
        row(
            &format!("start p99, {name} (ms)"),
            format!("{:.1}", r.p99()),
            p99_goal,
            p99_peer,
            format!("({})", per_run(&r.p99s, 1)),
        );
        if let Some(rate_name) = rate_name {
            row(
                &format!("pods Running per second, {rate_name}"),
                format!("{:.0}", r.rate()),
                "",
                "",
                format!("({})", per_run(&r.rates, 0)),
            );
        }
    }
    if outside.all.is_some() {
        row(
            "  p50 to its create call returning (ms)",
            format!("{:.1}", median(outside_created.clone())),
            "",
            "",
            format!("({})", per_run(&outside_created, 1)),
        );
        row(
            "  p50 to its watch showing the pod bound (ms)",
            format!("{:.1}", median(outside_bound.clone())),
            "",
            "",
            format!("({})", per_run(&outside_bound, 1)),
        );
    }
    row(
        "agent idle RSS, no pods (MiB)",
        format!("{idle_rss:.1}"),
        "",
        "",
        format!("(samples {})", list_mib(&idle_samples)),
    );
    if !density.is_null() {
        row(
            "idle ticker pods held (bound directly)",
            density["pods"].to_string(),
            ">= 5000",
            "110 per node",
            String::new(),
        );
        row(
            "agent RSS with them (MiB)",
            format!(
                "{:.0}",
                density["agent_rss_mib"].as_f64().unwrap_or(f64::NAN)
            ),
            "<= 1024",
            "",
            format!(
                "(samples {})",
                density["agent_rss_samples_mib"]
                    .as_array()
                    .map(|a| list_mib(&a.iter().filter_map(Value::as_f64).collect::<Vec<_>>()))
                    .unwrap_or_default()
            ),
        );
        row(
            "RSS per idle pod (KiB)",
            format!(
                "{:.1}",
                density["rss_per_pod_kib"].as_f64().unwrap_or(f64::NAN)
            ),
            "",
            "",
            String::new(),
        );
        row(
            "burst of all of them: pods running/s",
            format!(
                "{:.0}",
                density["burst_pods_per_sec"].as_f64().unwrap_or(f64::NAN)
            ),
            "",
            "",
            String::new(),
        );
    }
    if let Some(m) = &memory_json {
        // Every run's reading of `who` at `when`, for the brackets.
        let runs_of = |who: &str, when: &str| -> Vec<f64> {
            memory
                .iter()
                .map(|r| {
                    let rss = match when {
                        "before" => r.before,
                        "peak" => r.peak,
                        _ => r.after,
                    };
                    if who == "agent" {
                        rss.agent
                    } else {
                        rss.server
                    }
                })
                .collect()
        };
        for who in ["agent", "server"] {
            for (when, label) in [
                ("before", "before the first burst"),
                ("peak", "with every pod running"),
                ("after", "after the pods went"),
            ] {
                row(
                    &format!("{who} RSS {label} (MiB)"),
                    format!(
                        "{:.1}",
                        m[who][format!("{when}_mib")].as_f64().unwrap_or(f64::NAN)
                    ),
                    "",
                    "",
                    format!("({})", per_run(&runs_of(who, when), 1)),
                );
            }
            row(
                &format!("{who} RSS after / before the first burst"),
                format!(
                    "{:.2}",
                    m[who]["after_over_before"].as_f64().unwrap_or(f64::NAN)
                ),
                &format!("<= {}", args.settled_ratio),
                "",
                String::new(),
            );
        }
        row(
            "seconds until both were back",
            {
                let settled: Vec<f64> = memory
                    .iter()
                    .filter_map(|r| r.settled)
                    .map(|d| d.as_secs_f64())
                    .collect();
                if settled.len() == memory.len() {
                    format!("{:.1}", median(settled))
                } else {
                    format!("{}/{} runs", settled.len(), memory.len())
                }
            },
            &format!("<= {:.0}", args.settle.as_secs_f64()),
            "",
            format!(
                "({})",
                memory
                    .iter()
                    .map(|r| r
                        .settled
                        .map(|d| format!("{:.1}", d.as_secs_f64()))
                        .unwrap_or_else(|| "not back".into()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    row(
        "server RSS at the end (MiB)",
        format!("{server_rss:.1}"),
        "",
        "",
        String::new(),
    );
    if outside.all.is_some() {
        println!(
            "(outside client: the official Kubernetes Python client ({} creator(s), {} pods per run, \
             each created once the creator's previous pod is seen Running) creates each pod \
             over HTTPS without a node and watches for it; its clock runs from just before its \
             create call to its watch delivering the pod Running, so the figure includes the \
             Python client's own overhead, the scheduler and the agent)",
            args.outside_concurrency, args.outside_pods
        );
    }
    if scheduled.all.is_some() || outside.all.is_some() {
        println!(
            "(Kubernetes' pod-startup SLO: p99 <= 5 s from the pod's creation to Running seen \
             through a watch, scheduling included, image pulls excluded)"
        );
    }
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "pods",
            "pods": args.pods,
            "clients": args.clients,
            "rate": args.rate,
            "runs": args.runs,
            "clock": "from just before the create request is sent to the watch showing the pod Running",
            "bound": bound.all.is_some().then(|| bound.to_json(StartPath::Bound)),
            "scheduled": scheduled.all.is_some().then(|| scheduled.to_json(StartPath::Scheduled)),
            "outside": outside.all.is_some().then(|| {
                let mut o = outside.to_json(StartPath::Outside);
                o["client"] = json!("the official Kubernetes Python client (src/bench/pod_start.py)");
                o["pods_per_run"] = json!(args.outside_pods);
                o["concurrency"] = json!(args.outside_concurrency);
                o["clock"] = json!("from just before the client's create call to its watch delivering the pod Running; includes the Python client's own overhead, the scheduler and the agent");
                o["created_p50_ms"] = json!(median(outside_created.clone()));
                o["bound_p50_ms"] = json!(median(outside_bound.clone()));
                o["per_run_created_p50_ms"] = json!(outside_created);
                o["per_run_bound_p50_ms"] = json!(outside_bound);
                o
            }),
            "agent_idle_rss_mib": idle_rss,
            "agent_idle_rss_samples_mib": idle_samples,
            "density": density,
            "memory": memory_json,
            "server_rss_mib": server_rss,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_alternate_run_by_run() {
        use StartPath::*;
        assert_eq!(paths_for_run(PathChoice::Both, 0), [Bound, Scheduled]);
        assert_eq!(paths_for_run(PathChoice::Both, 1), [Scheduled, Bound]);
        assert_eq!(paths_for_run(PathChoice::Bound, 1), [Bound]);
        assert_eq!(paths_for_run(PathChoice::Scheduled, 0), [Scheduled]);
    }

    #[test]
    fn only_a_bound_pod_names_its_node() {
        let b = pod("a", "sha256:x", &[], StartPath::Bound);
        assert_eq!(b["spec"]["nodeName"], "bench-1");
        let s = pod("a", "sha256:x", &[], StartPath::Scheduled);
        assert!(s["spec"].get("nodeName").is_none(), "{s}");
    }
}
