//! `skiff bench ha`: Skiff on etcd, measured against etcd itself in the same run.
//!
//! - **Durable creates/s**: 64 clients creating ConfigMaps through one `skiff server
//!   --store etcd` (HTTPS, bearer token, validation, a full object written by a
//!   compare-and-swap transaction), against 64 concurrent bare puts of an object of the
//!   same size straight to the same etcd over gRPC, with the client Skiff's store uses.
//!   The clock runs from the first request sent to the last acknowledged. The order of
//!   the two alternates run by run.
//! - **Watch delivery**: 1,000 watchers of one namespace on an etcd-backed server; the
//!   time from a create being sent to each watcher reading its event.
//! - **Failover**: three servers on the etcd, a hollow node; the leader is SIGKILLed and
//!   a pod is created through a survivor at once; the clock runs from the kill to a
//!   survivor's watch showing the pod bound by the new leader's scheduler. The killed
//!   server is restarted between kills.
//!
//! Each run starts a fresh three-member etcd cluster on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use skiff_controlplane::store::etcd::{EtcdClient, EtcdConfig, pb};

use super::stats::{Latencies, median};
use super::{SkiffProcess, free_port};

#[derive(clap::Args)]
pub struct HaBenchArgs {
    /// Concurrent clients doing creates (and concurrent puts on the etcd side).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Objects created per run, on each side.
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects written while the watchers listen.
    #[arg(long, default_value_t = 200)]
    watch_events: usize,
    /// Leader kills timed.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Runs of the create and watch measures; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A three-member etcd cluster on loopback, killed when dropped.
struct EtcdCluster {
    members: Vec<tokio::process::Child>,
    endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl EtcdCluster {
    async fn start(binary: &str, n: usize) -> anyhow::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            members.push(
                tokio::process::Command::new(binary)
                    .args(["--name", &format!("m{i}")])
                    .arg("--data-dir")
                    .arg(dir.path().join(format!("m{i}")))
                    .args([
                        "--listen-client-urls",
                        &url,
                        "--advertise-client-urls",
                        &url,
                    ])
                    .args(["--listen-peer-urls", &peer_url])
                    .args(["--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &initial])
                    .args(["--initial-cluster-token", "skiff-bench"])
                    .args(["--log-level", "error"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("starting {binary}"))?,
            );
            endpoints.push(url);
        }
        let cluster = EtcdCluster {
            members,
            endpoints,
            _dir: dir,
        };
        let client = cluster.client()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.status().await.is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not become healthy within 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    fn client(&self) -> anyhow::Result<EtcdClient> {
        Ok(EtcdClient::new(&EtcdConfig {
            endpoints: self.endpoints.clone(),
            ..Default::default()
        })?)
    }

    fn endpoints(&self) -> String {
        self.endpoints.join(",")
    }

    async fn stop(mut self) {
        for m in &mut self.members {
            let _ = m.kill().await;
        }
    }
}

/// The ConfigMap both sides write, so the bytes per write are alike.
fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "bench", "labels": {"bench": "ha"}},
        "data": {"payload": "0123456789abcdef0123456789abcdef"},
    })
}

/// What one write to etcd is, on the etcd side of the comparison.
#[derive(Clone, Copy)]
enum RawWrite {
    /// A bare put.
    Put,
    /// What Skiff's store (and kube-apiserver) sends for a create: a transaction that
    /// puts the object only if its key does not exist.
    CreateTxn,
}

/// 64 (or `clients`) concurrent writes straight to etcd.
async fn etcd_puts(cluster: &EtcdCluster, args: &HaBenchArgs) -> anyhow::Result<f64> {
    etcd_writes(cluster, args, RawWrite::Put, "put").await
}

async fn etcd_writes(
    cluster: &EtcdCluster,
    args: &HaBenchArgs,
    kind: RawWrite,
    tag: &str,
) -> anyhow::Result<f64> {
    let client = Arc::new(cluster.client()?);
    // Warm the connection up, as the server's is by the time it serves.
    client.status().await?;
    let value = serde_json::to_vec(&configmap("x"))?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (client, next, value, total, tag) = (
            client.clone(),
            next.clone(),
            value.clone(),
            args.creates,
            tag.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let key = format!("/bench-raw/configmaps/bench/{tag}-{i}").into_bytes();
                let put = |key: Vec<u8>, value: Vec<u8>| pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                };
                match kind {
                    RawWrite::Put => {
                        client.put(put(key, value.clone())).await?;
                    }
                    RawWrite::CreateTxn => {
                        let r = client
                            .txn(EtcdClient::create_txn(key, value.clone()))
                            .await?;
                        if !r.succeeded {
                            bail!("the create transaction found its key taken");
                        }
                    }
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(args.creates as f64 / started.elapsed().as_secs_f64())
}

/// A `skiff server` on the cluster, under its own prefix.
async fn start_server(
    cluster: &EtcdCluster,
    dir: &Path,
    prefix: &str,
    extra: &[&str],
) -> anyhow::Result<(SkiffProcess, String)> {
    let d = dir.display().to_string();
    let endpoints = cluster.endpoints();
    let mut args = vec![
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &d,
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        prefix,
    ];
    args.extend_from_slice(extra);
    SkiffProcess::start(&args, "api:").await
}

async fn http_for(dir: &Path, pool: usize) -> anyhow::Result<(String, reqwest::Client)> {
    let (url, builder) =
        skiff_api::client::http_client_builder(Some(&dir.join("kubeconfig"))).await?;
    Ok((url, builder.pool_max_idle_per_host(pool).build()?))
}

async fn ensure_namespace(url: &str, http: &reqwest::Client, name: &str) -> anyhow::Result<()> {
    let r = http
        .post(format!("{url}/api/v1/namespaces"))
        .json(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .send()
        .await?;
    if !r.status().is_success() && r.status().as_u16() != 409 {
        bail!("creating namespace {name}: {}", r.text().await?);
    }
    Ok(())
}

/// 64 (or `clients`) HTTPS clients creating ConfigMaps through one server.
async fn skiff_creates(
    url: &str,
    http: &reqwest::Client,
    args: &HaBenchArgs,
    tag: &str,
) -> anyhow::Result<f64> {
    ensure_namespace(url, http, "bench").await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (http, next, url, total, tag) = (
            http.clone(),
            next.clone(),
            url.to_string(),
            args.creates,
            tag.to_string(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(());
                }
                let r = http
                    .post(format!("{url}/api/v1/namespaces/bench/configmaps"))
                    .json(&configmap(&format!("{tag}-{i}")))
                    .send()
                    .await?;
                let status = r.status();
                let _ = r.bytes().await?;
                if !status.is_success() {
                    bail!("create failed: {status}");
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(args.creates as f64 / started.elapsed().as_secs_f64())
}

/// Watch delivery latency with `watchers` watchers of one namespace.
async fn watch_delivery(
    url: &str,
    http: &reqwest::Client,
    args: &HaBenchArgs,
) -> anyhow::Result<(Latencies, u64)> {
    ensure_namespace(url, http, "bench-watch").await?;
    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> =
        Arc::new((0..args.watch_events).map(|_| Default::default()).collect());
    let mut tasks = tokio::task::JoinSet::new();
    let opened = Arc::new(AtomicUsize::new(0));
    for _ in 0..args.watchers {
        let (http, url, sent, opened, expected) = (
            http.clone(),
            url.to_string(),
            sent.clone(),
            opened.clone(),
            args.watch_events,
        );
        tasks.spawn(async move {
            let resp = super::watch_from_now(
                &http,
                &format!("{url}/api/v1/namespaces/bench-watch/configmaps"),
                "",
            )
            .await?;
            opened.fetch_add(1, Ordering::Relaxed);
            let mut lines = super::WatchLines::new(resp);
            let mut lat = Latencies::new();
            let mut seen = 0;
            while seen < expected {
                let Some((now, batch)) = lines.next(Duration::from_secs(60)).await else {
                    break;
                };
                for line in batch {
                    let Ok(v) = serde_json::from_slice::<Value>(&line) else {
                        continue;
                    };
                    let Some(i) = v
                        .pointer("/object/metadata/name")
                        .and_then(Value::as_str)
                        .and_then(|n| n.strip_prefix("w-"))
                        .and_then(|i| i.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    if let Some(t) = sent.get(i).and_then(|s| s.get()) {
                        lat.record(now.duration_since(*t));
                        seen += 1;
                    }
                }
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Relaxed) < args.watchers {
        if Instant::now() > deadline {
            bail!("watches did not open within 120s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..args.watch_events {
        let _ = sent[i].set(Instant::now());
        let r = http
            .post(format!("{url}/api/v1/namespaces/bench-watch/configmaps"))
            .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w-{i}")}}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("create during watch failed: {}", r.status());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut all = Latencies::new();
    while let Some(r) = tasks.join_next().await {
        all.merge(&r??);
    }
    let delivered = all.len();
    Ok((all, delivered))
}

/// CPU time a process has used (user and system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The fields after the command name, which may contain spaces: utime and stime are
    // the 14th and 15th fields, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds so far of etcd's members, the Skiff server and this benchmark client.
#[derive(Clone, Copy, Default)]
struct Cpu {
    etcd: f64,
    server: f64,
    client: f64,
}

impl Cpu {
    fn now(cluster: &EtcdCluster, server: &SkiffProcess) -> Cpu {
        Cpu {
            etcd: cluster
                .members
                .iter()
                .filter_map(|m| m.id())
                .map(cpu_seconds)
                .sum(),
            server: server.pid().map(cpu_seconds).unwrap_or(0.0),
            client: cpu_seconds(std::process::id()),
        }
    }

    /// CPU milliseconds per write since `before`.
    fn per_write(self, before: Cpu, writes: usize) -> Cpu {
        let per = |a: f64, b: f64| (a - b) * 1000.0 / writes.max(1) as f64;
        Cpu {
            etcd: per(self.etcd, before.etcd),
            server: per(self.server, before.server),
            client: per(self.client, before.client),
        }
    }
}

struct Run {
    etcd_puts: f64,
    etcd_txns: f64,
    skiff_creates: f64,
    /// CPU milliseconds per write: bare puts, create transactions, Skiff creates.
    put_cpu: Cpu,
    txn_cpu: Cpu,
    skiff_cpu: Cpu,
    watch_p50: f64,
    watch_p99: f64,
    delivered: u64,
}

async fn one_run(args: &HaBenchArgs, run: usize) -> anyhow::Result<Run> {
    let cluster = EtcdCluster::start(&args.etcd, 3).await?;
    let dir = tempfile::tempdir()?;
    let (server, _) = start_server(&cluster, dir.path(), "/bench", &[]).await?;
    let (url, http) = http_for(dir.path(), args.clients.max(64)).await?;
    // Warm both sides up alike: a few hundred writes each.
    let warm = HaBenchArgs {
        creates: 500,
        ..args.clone_counts()
    };
    etcd_puts(&cluster, &warm).await?;
    skiff_creates(&url, &http, &warm, "warm").await?;
    etcd_writes(&cluster, &warm, RawWrite::CreateTxn, "warm").await?;
    // The three phases, in an order that alternates run by run; each also accounts
    // for the CPU every process used during it.
    let mut phases = [0usize, 1, 2];
    if !run.is_multiple_of(2) {
        phases.reverse();
    }
    let (mut etcd, mut txns, mut skiff) = (0.0, 0.0, 0.0);
    let (mut put_cpu, mut txn_cpu, mut skiff_cpu) =
        (Cpu::default(), Cpu::default(), Cpu::default());
    for phase in phases {
        let before = Cpu::now(&cluster, &server);
        match phase {
            0 => etcd = etcd_puts(&cluster, args).await?,
            1 => txns = etcd_writes(&cluster, args, RawWrite::CreateTxn, "txn").await?,
            _ => skiff = skiff_creates(&url, &http, args, "cm").await?,
        }
        let used = Cpu::now(&cluster, &server).per_write(before, args.creates);
        match phase {
            0 => put_cpu = used,
            1 => txn_cpu = used,
            _ => skiff_cpu = used,
        }
    }
    let (watch, delivered) = watch_delivery(&url, &http, args).await?;
    server.stop().await;
    cluster.stop().await;
    Ok(Run {
        etcd_puts: etcd,
        etcd_txns: txns,
        skiff_creates: skiff,
        put_cpu,
        txn_cpu,
        skiff_cpu,
        watch_p50: watch.ms(0.5),
        watch_p99: watch.ms(0.99),
        delivered,
    })
}

impl HaBenchArgs {
    fn clone_counts(&self) -> HaBenchArgs {
        HaBenchArgs {
            clients: self.clients,
            creates: self.creates,
            watchers: self.watchers,
            watch_events: self.watch_events,
            kills: self.kills,
            runs: self.runs,
            etcd: self.etcd.clone(),
            json: None,
        }
    }
}

/// The identity (`DIR/server-id`) of the server holding the leader Lease.
async fn leader(url: &str, http: &reqwest::Client) -> Option<String> {
    let lease: Value = http
        .get(format!(
            "{url}/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-controlplane"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// SIGKILL to leader, then a pod bound by the next leader, `kills` times.
async fn failover(args: &HaBenchArgs) -> anyhow::Result<Vec<f64>> {
    let cluster = EtcdCluster::start(&args.etcd, 3).await?;
    let dir = tempfile::tempdir()?;
    let dirs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("s{i}"))).collect();
    let mut servers: Vec<Option<(SkiffProcess, String)>> = Vec::new();
    servers.push(Some(
        start_server(&cluster, &dirs[0], "/failover", &[]).await?,
    ));
    let token = std::fs::read_to_string(dirs[0].join("server-token"))?
        .trim()
        .to_string();
    let first = servers[0].as_ref().expect("started").1.clone();
    let join = ["--join", first.as_str(), "--token", token.as_str()];
    for d in &dirs[1..] {
        servers.push(Some(start_server(&cluster, d, "/failover", &join).await?));
    }
    let identity = |i: usize| -> String {
        std::fs::read_to_string(dirs[i].join("server-id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let (url0, http) = http_for(&dirs[0], 16).await?;
    // One hollow node for pods to be bound to, its Lease kept fresh.
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "hollow-0", "labels": {"kubernetes.io/hostname": "hollow-0"}},
        "status": {"capacity": {"cpu": "4", "memory": "16Gi", "pods": "1000"},
                   "allocatable": {"cpu": "4", "memory": "16Gi", "pods": "1000"},
                   "conditions": [{"type": "Ready", "status": "True", "reason": "HollowNode"}]}});
    let r = http
        .post(format!("{url0}/api/v1/nodes"))
        .json(&node)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("registering the hollow node: {}", r.text().await?);
    }
    let mut times = Vec::new();
    for kill in 0..args.kills {
        // Every server up, and a leader known.
        let urls: Vec<String> = servers
            .iter()
            .map(|s| s.as_ref().expect("running").1.clone())
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        let holder = loop {
            if let Some(h) = leader(&urls[0], &http).await {
                break h;
            }
            if Instant::now() > deadline {
                bail!("no leader within 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let victim = (0..3)
            .find(|&i| identity(i) == holder)
            .context("the leader is none of the servers")?;
        let survivor = (victim + 1) % 3;
        let (surl, shttp) = http_for(&dirs[survivor], 4).await?;
        let name = format!("failover-{kill}");
        let watch = super::watch_from_now(
            &shttp,
            &format!("{surl}/api/v1/namespaces/default/pods"),
            &format!("&fieldSelector=metadata.name%3D{name}"),
        )
        .await?;
        let (process, _) = servers[victim].take().expect("running");
        let killed = Instant::now();
        process.kill9().await;
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": format!("sha256:{}", "0".repeat(64))}]}});
        let r = shttp
            .post(format!("{surl}/api/v1/namespaces/default/pods"))
            .json(&pod)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("creating {name} after the kill: {}", r.text().await?);
        }
        let mut lines = super::WatchLines::new(watch);
        let bound = 'wait: loop {
            let Some((at, batch)) = lines.next(Duration::from_secs(60)).await else {
                bail!("{name} was not bound within 60s of the kill");
            };
            for line in batch {
                let v: Value = serde_json::from_slice(&line).unwrap_or_default();
                if v.pointer("/object/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some()
                {
                    break 'wait at;
                }
            }
        };
        let took = bound.duration_since(killed).as_secs_f64() * 1000.0;
        eprintln!(
            "kill {}/{}: pod bound {took:.0} ms after the leader was killed",
            kill + 1,
            args.kills
        );
        times.push(took);
        // The killed server comes back (it rejoins with its own data directory).
        let extra: &[&str] = if victim == 0 { &[] } else { &join };
        servers[victim] = Some(start_server(&cluster, &dirs[victim], "/failover", extra).await?);
    }
    for (p, _) in servers.into_iter().flatten() {
        p.stop().await;
    }
    cluster.stop().await;
    Ok(times)
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

pub async fn run(args: HaBenchArgs) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for run in 0..args.runs {
        eprintln!("run {}/{}: creates and watches", run + 1, args.runs);
        let r = one_run(&args, run).await?;
        eprintln!(
            "  etcd puts/s {:.0}, etcd create txns/s {:.0}, skiff creates/s {:.0} ({:.2}x), watch p99 {:.1} ms ({} deliveries)",
            r.etcd_puts,
            r.etcd_txns,
            r.skiff_creates,
            r.skiff_creates / r.etcd_puts,
            r.watch_p99,
            r.delivered
        );
        eprintln!(
            "  CPU ms per write: put etcd {:.3} client {:.3}; create txn etcd {:.3} client {:.3}; skiff create etcd {:.3} server {:.3} client {:.3}",
            r.put_cpu.etcd,
            r.put_cpu.client,
            r.txn_cpu.etcd,
            r.txn_cpu.client,
            r.skiff_cpu.etcd,
            r.skiff_cpu.server,
            r.skiff_cpu.client
        );
        runs.push(r);
    }
    let kills = failover(&args).await?;
    let pick = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let (etcd, skiff) = (pick(|r| r.etcd_puts), pick(|r| r.skiff_creates));
    let ratio = median(runs.iter().map(|r| r.skiff_creates / r.etcd_puts).collect());
    println!(
        "\nskiff bench ha: 3-member etcd on loopback; {} creates by {} clients; {} watchers x {} events; medians of {} runs; {} leader kills\n",
        args.creates, args.clients, args.watchers, args.watch_events, args.runs, args.kills
    );
    println!("{:<44} {:>12} {:>12}", "metric", "value", "goal");
    println!("{:<44} {:>12.0}", "etcd bare puts/s (gRPC)", etcd);
    println!(
        "{:<44} {:>12.0}",
        "etcd create txns/s (what skiff sends)",
        pick(|r| r.etcd_txns)
    );
    println!("{:<44} {:>12.0}", "skiff durable creates/s on etcd", skiff);
    println!(
        "{:<44} {:>11.2}x",
        "skiff / etcd create txns",
        median(runs.iter().map(|r| r.skiff_creates / r.etcd_txns).collect())
    );
    println!(
        "{:<44} {:>12.3}",
        "skiff server CPU ms per create",
        pick(|r| r.skiff_cpu.server)
    );
    println!(
        "{:<44} {:>12.3} {:>12.3}",
        "etcd CPU ms per write: create txn / skiff",
        pick(|r| r.txn_cpu.etcd),
        pick(|r| r.skiff_cpu.etcd)
    );
    println!("{:<44} {:>11.2}x {:>12}", "skiff / etcd", ratio, ">= 0.70x");
    println!(
        "{:<44} {:>12.1} {:>12}",
        "watch delivery p99 (ms), 1,000 watchers",
        pick(|r| r.watch_p99),
        "<= 50"
    );
    println!(
        "{:<44} {:>12.1}",
        "watch delivery p50 (ms)",
        pick(|r| r.watch_p50)
    );
    println!(
        "{:<44} {:>12.0} {:>12}",
        "failover to first bind p50 (ms)",
        quantile(&kills, 0.5),
        ""
    );
    println!(
        "{:<44} {:>12.0} {:>12}",
        "failover to first bind p99 (ms)",
        quantile(&kills, 0.99),
        "<= 2000"
    );
    println!("(Kubernetes' default leader election: 15 s lease, so up to 15 s)");
    super::write_json(
        args.json.as_ref(),
        &json!({
            "benchmark": "ha",
            "clients": args.clients,
            "creates": args.creates,
            "watchers": args.watchers,
            "watch_events": args.watch_events,
            "runs": runs.iter().map(|r| json!({
                "etcd_puts_per_sec": r.etcd_puts,
                "etcd_create_txns_per_sec": r.etcd_txns,
                "cpu_ms_per_write": {
                    "etcd_put": {"etcd": r.put_cpu.etcd, "client": r.put_cpu.client},
                    "etcd_create_txn": {"etcd": r.txn_cpu.etcd, "client": r.txn_cpu.client},
                    "skiff_create": {"etcd": r.skiff_cpu.etcd, "server": r.skiff_cpu.server, "client": r.skiff_cpu.client},
                },
                "skiff_creates_per_sec": r.skiff_creates,
                "ratio": r.skiff_creates / r.etcd_puts,
                "watch_p50_ms": r.watch_p50,
                "watch_p99_ms": r.watch_p99,
                "deliveries": r.delivered,
                "expected_deliveries": (args.watchers * args.watch_events),
            })).collect::<Vec<_>>(),
            "etcd_puts_per_sec": etcd,
            "etcd_create_txns_per_sec": pick(|r| r.etcd_txns),
            "skiff_creates_per_sec": skiff,
            "ratio": ratio,
            "watch_p99_ms": pick(|r| r.watch_p99),
            "watch_p50_ms": pick(|r| r.watch_p50),
            "failover_ms": kills,
            "failover_p50_ms": quantile(&kills, 0.5),
            "failover_p99_ms": quantile(&kills, 0.99),
        }),
    )
}
