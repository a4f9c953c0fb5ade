//! `skiff bench scheduler`: scheduler throughput with hollow nodes (Node objects with
//! renewed Leases and no agent behind them, as Kubernetes' kubemark does): create the
//! nodes, then many unscheduled pods, and measure pods bound per second and the latency
//! from create to bound. Each run starts a fresh server; every run is printed and the
//! medians are reported.

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
pub struct SchedulerBenchArgs {
    /// Hollow nodes.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to schedule.
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Runs, each on a fresh server; every run is printed, medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn hollow_node(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "skiff.dev/hollow": "true"}},
        "status": {
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "HollowNode"}],
        },
    })
}

fn lease(name: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()},
    })
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"bench": "scheduler"}},
        "spec": {"containers": [{"name": "main", "image": format!("sha256:{}", "0".repeat(64)),
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    })
}

async fn post_all(
    http: &reqwest::Client,
    url: &str,
    items: Vec<Value>,
    clients: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(items)
        .map(|item| {
            let http = http.clone();
            let url = url.to_string();
            async move {
                let r = http.post(&url).json(&item).send().await?;
                if !r.status().is_success() {
                    bail!("create failed: {}", r.text().await?);
                }
                Ok(())
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// What one run measured.
struct RunResult {
    backlog_rate: f64,
    per_pod_us: f64,
    election_s: f64,
    streamed_rate: f64,
    bound_p50_ms: f64,
    bound_p99_ms: f64,
    created_s: f64,
    min_per_node: usize,
    max_per_node: usize,
}

impl RunResult {
    fn to_json(&self) -> Value {
        json!({
            "backlog_pods_bound_per_sec": self.backlog_rate,
            "backlog_us_per_pod": self.per_pod_us,
            "backlog_leadership_regained_s": self.election_s,
            "pods_bound_per_sec": self.streamed_rate,
            "bound_p50_ms": self.bound_p50_ms,
            "bound_p99_ms": self.bound_p99_ms,
            "seconds_to_create": self.created_s,
            "min_pods_per_node": self.min_per_node,
            "max_pods_per_node": self.max_per_node,
        })
    }
}

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let r = one_run(&args).await?;
        eprintln!(
            "run {}/{}: backlog {:.0} pods bound/s ({:.0} us per pod, leadership regained after {:.1} s); streamed {:.0} pods bound/s, create-to-bound p50 {:.1} ms, p99 {:.1} ms; pods per node {}..{}",
            run + 1,
            args.runs,
            r.backlog_rate,
            r.per_pod_us,
            r.election_s,
            r.streamed_rate,
            r.bound_p50_ms,
            r.bound_p99_ms,
            r.min_per_node,
            r.max_per_node
        );
        runs.push(r);
    }
    let med = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
    let per_run = |f: fn(&RunResult) -> f64, digits: usize| {
        runs.iter()
            .map(|r| format!("{:.*}", digits, f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nskiff bench scheduler: {} pods onto {} hollow nodes, created by {} clients; median of {} runs, each on a fresh server (every run in brackets)\n",
        args.pods, args.nodes, args.clients, args.runs
    );
    println!("{:<46} {:>12} {:>12}  runs", "metric", "skiff", "target");
    let row = |name: &str, value: String, target: &str, runs: String| {
        println!("{name:<46} {value:>12} {target:>12}  ({runs})");
    };
    row(
        "backlog: pods bound per second",
        format!("{:.0}", med(|r| r.backlog_rate)),
        ">= 5000",
        per_run(|r| r.backlog_rate, 0),
    );
    row(
        "backlog: scheduling time per pod (us)",
        format!("{:.0}", med(|r| r.per_pod_us)),
        "",
        per_run(|r| r.per_pod_us, 0),
    );
    row(
        "backlog: leadership regained after (s)",
        format!("{:.1}", med(|r| r.election_s)),
        "",
        per_run(|r| r.election_s, 1),
    );
    row(
        "streamed: pods bound per second",
        format!("{:.0}", med(|r| r.streamed_rate)),
        "",
        per_run(|r| r.streamed_rate, 0),
    );
    row(
        "streamed: create-to-bound p50 (ms)",
        format!("{:.1}", med(|r| r.bound_p50_ms)),
        "",
        per_run(|r| r.bound_p50_ms, 1),
    );
    row(
        "streamed: create-to-bound p99 (ms)",
        format!("{:.1}", med(|r| r.bound_p99_ms)),
        "",
        per_run(|r| r.bound_p99_ms, 1),
    );
    row(
        "streamed: all pods created after (s)",
        format!("{:.1}", med(|r| r.created_s)),
        "",
        per_run(|r| r.created_s, 1),
    );
    let min_per_node = runs.iter().map(|r| r.min_per_node).min().unwrap_or(0);
    let max_per_node = runs.iter().map(|r| r.max_per_node).max().unwrap_or(0);
    row(
        "streamed: pods per node (min..max, all runs)",
        format!("{min_per_node}..{max_per_node}"),
        "",
        runs.iter()
            .map(|r| format!("{}..{}", r.min_per_node, r.max_per_node))
            .collect::<Vec<_>>()
            .join(", "),
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "scheduler",
            "nodes": args.nodes,
            "pods": args.pods,
            "runs": args.runs,
            "backlog_pods_bound_per_sec": med(|r| r.backlog_rate),
            "backlog_us_per_pod": med(|r| r.per_pod_us),
            "backlog_leadership_regained_s": med(|r| r.election_s),
            "pods_bound_per_sec": med(|r| r.streamed_rate),
            "bound_p50_ms": med(|r| r.bound_p50_ms),
            "bound_p99_ms": med(|r| r.bound_p99_ms),
            "seconds_to_create": med(|r| r.created_s),
            "min_pods_per_node": min_per_node,
            "max_pods_per_node": max_per_node,
            "per_run": runs.iter().map(RunResult::to_json).collect::<Vec<_>>(),
        }),
    )
}

/// One run on a fresh server: the streamed phase, then the backlog.
async fn one_run(args: &SchedulerBenchArgs) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let (server, url) = SkiffProcess::start(
        &["server", "--listen", "127.0.0.1:0", "--data-dir", &data],
        "api:",
    )
    .await?;
    let (_, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
    let names: Vec<String> = (0..args.nodes).map(|i| format!("hollow-{i:04}")).collect();
    post_all(
        &http,
        &format!("{url}/api/v1/nodes"),
        names.iter().map(|n| hollow_node(n)).collect(),
        args.clients,
    )
    .await?;
    post_all(
        &http,
        &format!("{url}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"),
        names.iter().map(|n| lease(n)).collect(),
        args.clients,
    )
    .await?;
    eprintln!("{} hollow nodes registered", args.nodes);
    // Hollow nodes stay healthy only while their Leases are renewed, as an agent would.
    let renewer = {
        let (http, url, names) = (http.clone(), url.clone(), names.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let renew = |n: String| {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let body = json!({"spec": {"renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()}});
                        let _ = http
                            .patch(format!("{url}/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{n}"))
                            .header("content-type", "application/merge-patch+json")
                            .body(body.to_string())
                            .send()
                            .await;
                    }
                };
                futures::stream::iter(names.clone())
                    .map(renew)
                    .buffer_unordered(32)
                    .collect::<Vec<_>>()
                    .await;
            }
        })
    };

    // Phase 1: pods arrive while the scheduler runs; create-to-bound for each.
    let sent: Sent = Arc::default();
    let watch = BindWatch::open(&http, &url, "p-", args.pods, sent.clone()).await?;
    let started = Instant::now();
    create_pods(&http, &url, "p-", args.pods, args.clients, Some(&sent)).await?;
    let created = started.elapsed();
    let streamed = watch.finish().await?;
    let rate = args.pods as f64 / streamed.last.duration_since(started).as_secs_f64();

    // Phase 2: a backlog, as Kubernetes' scheduler_perf measures throughput. The bench
    // takes the leadership Lease so the server's scheduler steps down, creates the pods,
    // then releases the Lease; the scheduler comes back to find them all pending.
    let lease_url = format!(
        "{url}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-controlplane"
    );
    set_lease_holder(&http, &lease_url, Some("skiff-bench")).await?;
    // The leader notices at its next renewal, every 2 s; any pod bound after this wait
    // would show in the watch below and fail the run.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let watch = BindWatch::open(&http, &url, "b-", args.pods, Sent::default()).await?;
    create_pods(&http, &url, "b-", args.pods, args.clients, None).await?;
    let released = Instant::now();
    if watch.bound_so_far() > 0 {
        bail!("pods were bound while the bench held the leadership lease");
    }
    set_lease_holder(&http, &lease_url, None).await?;
    let backlog = watch.finish().await?;
    let first = backlog.first.context("no pod bound")?;
    let backlog_rate = args.pods as f64 / backlog.last.duration_since(first).as_secs_f64();
    let per_pod_us = backlog.last.duration_since(first).as_secs_f64() * 1e6 / args.pods as f64;
    let election_s = first.duration_since(released).as_secs_f64();

    renewer.abort();
    server.stop().await;
    let lat = streamed.latencies;
    let per_node = streamed.per_node;
    Ok(RunResult {
        backlog_rate,
        per_pod_us,
        election_s,
        streamed_rate: rate,
        bound_p50_ms: lat.ms(0.5),
        bound_p99_ms: lat.ms(0.99),
        created_s: created.as_secs_f64(),
        min_per_node: per_node.values().copied().min().unwrap_or(0),
        max_per_node: per_node.values().copied().max().unwrap_or(0),
    })
}

/// When each pod's create was sent, by name.
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// Creates `count` pods named PREFIX00000.., `clients` at a time.
async fn create_pods(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    count: usize,
    clients: usize,
    sent: Option<&Sent>,
) -> anyhow::Result<()> {
    let pods_url = format!("{url}/api/v1/namespaces/default/pods");
    futures::stream::iter((0..count).map(|i| format!("{prefix}{i:05}")))
        .map(|name| {
            let (http, sent, pods_url) = (http.clone(), sent.cloned(), pods_url.clone());
            async move {
                if let Some(sent) = sent {
                    sent.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), Instant::now());
                }
                let r = http.post(&pods_url).json(&pod(&name)).send().await?;
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
    Ok(())
}

/// Sets (or, with None, clears) the holder of the scheduler's leadership Lease.
async fn set_lease_holder(
    http: &reqwest::Client,
    lease_url: &str,
    holder: Option<&str>,
) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string();
    let body =
        json!({"spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600, "renewTime": now}});
    let r = http
        .patch(lease_url)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("updating the leadership lease: {}", r.text().await?);
    }
    Ok(())
}

/// What a watch saw of pods getting their node.
struct Bound {
    latencies: Latencies,
    first: Option<Instant>,
    last: Instant,
    per_node: HashMap<String, usize>,
}

/// Watches pods named PREFIX.. until `total` of them have a node.
struct BindWatch {
    task: tokio::task::JoinHandle<Bound>,
    count: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
}

impl BindWatch {
    async fn open(
        http: &reqwest::Client,
        url: &str,
        prefix: &str,
        total: usize,
        sent: Sent,
    ) -> anyhow::Result<BindWatch> {
        let watch =
            super::watch_from_now(http, &format!("{url}/api/v1/namespaces/default/pods"), "")
                .await?;
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            let mut b = Bound {
                latencies: Latencies::new(),
                first: None,
                last: Instant::now(),
                per_node: HashMap::new(),
            };
            let mut bound = std::collections::HashSet::new();
            let mut lines = super::WatchLines::new(watch);
            while bound.len() < total {
                let Some((now, batch)) = lines.next(Duration::from_secs(60)).await else {
                    break;
                };
                for line in batch {
                    let Ok(e) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let Some(node) = e["object"]["spec"]["nodeName"].as_str() else {
                        continue;
                    };
                    let name = e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if !name.starts_with(&prefix) || !bound.insert(name.clone()) {
                        continue;
                    }
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(t) = sent
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&name)
                        .copied()
                    {
                        b.latencies.record(now.duration_since(t));
                    }
                    *b.per_node.entry(node.to_string()).or_default() += 1;
                    b.first.get_or_insert(now);
                    b.last = now;
                }
            }
            b
        });
        Ok(BindWatch { task, count, total })
    }

    fn bound_so_far(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for every pod to be bound.
    async fn finish(self) -> anyhow::Result<Bound> {
        let b = self.task.await.context("watcher")?;
        let n: usize = b.per_node.values().sum();
        if n < self.total {
            bail!("only {n} of {} pods were bound", self.total);
        }
        Ok(b)
    }
}
