//! `skiff bench scheduler`: scheduler throughput with hollow nodes (Node objects with
//! renewed Leases and no agent behind them, as Kubernetes' kubemark does): create the
//! nodes, then many unscheduled pods, and measure pods bound per second and the latency
//! from create to bound.

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

pub async fn run(args: SchedulerBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let (server, url) = SkiffProcess::start(
        &["server", "--listen", "127.0.0.1:0", "--data-dir", &data],
        "api:",
    )
    .await?;
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
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
    let watch = http
        .get(format!(
            "{url}/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
        ))
        .send()
        .await?;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = args.pods;
    let seen = sent.clone();
    let watcher = tokio::spawn(async move {
        let mut lat = Latencies::new();
        let mut bound = std::collections::HashSet::new();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        let mut body = watch.bytes_stream();
        let mut buf = Vec::new();
        let mut last = Instant::now();
        while bound.len() < total {
            let Ok(Some(Ok(chunk))) =
                tokio::time::timeout(Duration::from_secs(60), body.next()).await
            else {
                break;
            };
            let now = Instant::now();
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
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
                if let Some(t) = seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&name)
                    .copied()
                    && bound.insert(name)
                {
                    lat.record(now.duration_since(t));
                    *per_node.entry(node.to_string()).or_default() += 1;
                    last = now;
                }
            }
        }
        (lat, last, per_node)
    });
    let started = Instant::now();
    let pods_url = format!("{url}/api/v1/namespaces/default/pods");
    futures::stream::iter((0..args.pods).map(|i| format!("p-{i:05}")))
        .map(|name| {
            let (http, sent, pods_url) = (http.clone(), sent.clone(), pods_url.clone());
            async move {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name.clone(), Instant::now());
                let r = http.post(&pods_url).json(&pod(&name)).send().await?;
                if !r.status().is_success() {
                    bail!("create {name}: {}", r.text().await?);
                }
                Ok::<_, anyhow::Error>(())
            }
        })
        .buffer_unordered(args.clients)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let created = started.elapsed();
    let (lat, last, per_node) = watcher.await.context("watcher")?;
    renewer.abort();
    server.stop().await;
    if lat.len() < args.pods as u64 {
        bail!("only {} of {} pods were bound", lat.len(), args.pods);
    }
    let took = last.duration_since(started);
    let rate = args.pods as f64 / took.as_secs_f64();
    let max_per_node = per_node.values().copied().max().unwrap_or(0);
    let min_per_node = per_node.values().copied().min().unwrap_or(0);
    println!(
        "\nskiff bench scheduler: {} pods onto {} hollow nodes, created by {} clients\n",
        args.pods, args.nodes, args.clients
    );
    println!("{:<40} {:>12} {:>12}", "metric", "skiff", "target");
    println!(
        "{:<40} {:>12.0} {:>12}",
        "pods bound per second", rate, ">= 5000"
    );
    println!(
        "{:<40} {:>12.1} {:>12}",
        "create-to-bound latency p50 (ms)",
        lat.ms(0.5),
        ""
    );
    println!(
        "{:<40} {:>12.1} {:>12}",
        "create-to-bound latency p99 (ms)",
        lat.ms(0.99),
        ""
    );
    println!(
        "{:<40} {:>12.1} {:>12}",
        "all pods created after (s)",
        created.as_secs_f64(),
        ""
    );
    println!(
        "{:<40} {:>12} {:>12}",
        "pods per node (min..max)",
        format!("{min_per_node}..{max_per_node}"),
        ""
    );
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "scheduler",
            "nodes": args.nodes,
            "pods": args.pods,
            "pods_bound_per_sec": rate,
            "bound_p50_ms": lat.ms(0.5),
            "bound_p99_ms": lat.ms(0.99),
            "seconds_to_create": created.as_secs_f64(),
            "min_pods_per_node": min_per_node,
            "max_pods_per_node": max_per_node,
        }),
    )
}
