//! `skiff bench api`: durable creates per second with concurrent clients, and watch
//! delivery latency with many concurrent watchers, against etcd driven over gRPC as
//! kube-apiserver drives it. Each run starts a fresh `skiff server` and a fresh etcd on
//! loopback, in an order that alternates run by run, and warms both up alike before
//! measuring; every run is printed, and the figures reported are medians over runs.

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
    /// Objects created per run (and, on etcd, as many bare puts besides).
    #[arg(long, default_value_t = 20_000)]
    creates: usize,
    /// Writes each system gets before it is measured, by the same clients on the same
    /// connections (not counted).
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Objects written while the watchers listen; each is delivered to every watcher.
    #[arg(long, default_value_t = 200)]
    watch_events: usize,
    /// Gap between those writes.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    watch_interval: Duration,
    /// Runs per system (Skiff first in odd runs, etcd first in even ones); medians are
    /// reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The etcd binary to measure side by side, or "none".
    #[arg(long, default_value = "etcd")]
    etcd: String,
    /// Also write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What each side does per write, as the output and the JSON say it.
const SKIFF_WRITE: &str = "one HTTPS request (TLS, a bearer token checked against the \
    server's token records, validation and defaulting) creating a ConfigMap; the server \
    writes the full object (uid, creation timestamp, resourceVersion) in a store \
    transaction acknowledged after fsync";
const ETCD_TXN: &str = "one gRPC create transaction (put the key if its create_revision \
    is 0, what kube-apiserver sends for a create) whose value is the ConfigMap as an API \
    server stores it (the clients' object with namespace, uid, creation timestamp and \
    managedFields added, as JSON); acknowledged after etcd's WAL fsync; plain HTTP/2, no \
    authentication, no validation";
const ETCD_PUT: &str = "one gRPC bare put of the same value (etcd's headline figure; no API \
    server sends it for a create)";

/// The ConfigMap every create writes: the Skiff clients' request body, and etcd's value.
fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"bench": "api"}},
        "data": {"payload": "0123456789abcdef0123456789abcdef"},
    })
}

/// The value etcd is given for a create: the clients' ConfigMap with what an API server
/// adds before it stores an object (its namespace, a uid, the creation timestamp, the
/// managedFields entry of the write).
fn stored_configmap(collection: &str, name: &str, i: usize) -> Value {
    let mut cm = configmap(name);
    let meta = &mut cm["metadata"];
    meta["namespace"] = json!(collection);
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
    let now = skiff_api::time::now_rfc3339();
    meta["creationTimestamp"] = json!(now);
    // Who wrote which fields, as kube-apiserver (and Skiff) record for every write.
    meta["managedFields"] = json!([{
        "manager": "skiff", "operation": "Update", "apiVersion": "v1", "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:data": {".": {}, "f:payload": {}},
            "f:metadata": {"f:labels": {".": {}, "f:bench": {}}}},
    }]);
    cm
}

/// One kind of durable write.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Write {
    /// A create through Skiff's API.
    SkiffCreate,
    /// etcd's create transaction.
    EtcdCreate,
    /// etcd's bare put.
    EtcdPut,
}

/// One system under test, on loopback.
enum System {
    Skiff {
        url: String,
        http: reqwest::Client,
        process: SkiffProcess,
        _dir: tempfile::TempDir,
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

    /// A fresh `skiff server`, and a client as Skiff's clients use it: over TLS, with a
    /// bearer token, keep-alive connections pooled.
    async fn start_skiff(pool: usize) -> anyhow::Result<System> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().display().to_string();
        let (process, url) = SkiffProcess::start(
            &["server", "--listen", "127.0.0.1:0", "--data-dir", &data_dir],
            "api:",
        )
        .await?;
        let http = skiff_api::client::http_client_builder(Some(&dir.path().join("kubeconfig")))
            .await?
            .1
            .pool_max_idle_per_host(pool)
            .build()?;
        Ok(System::Skiff {
            url,
            http,
            process,
            _dir: dir,
        })
    }

    async fn start_etcd(binary: &str) -> anyhow::Result<System> {
        Ok(System::Etcd(
            Etcd::start(binary)
                .await
                .context("the etcd peer (pass --etcd none to skip it)")?,
        ))
    }

    async fn stop(self) {
        match self {
            System::Skiff { process, .. } => process.stop().await,
            System::Etcd(e) => e.stop().await,
        }
    }

    /// The create this system is measured by.
    fn create(&self) -> Write {
        match self {
            System::Skiff { .. } => Write::SkiffCreate,
            System::Etcd(_) => Write::EtcdCreate,
        }
    }

    /// Prepares a collection to write into (a namespace, on Skiff).
    async fn make_collection(&self, name: &str) -> anyhow::Result<()> {
        if let System::Skiff { url, http, .. } = self {
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

    /// One durable write of object `name` (the `i`th) in `collection`, acknowledged.
    async fn write(
        &self,
        kind: Write,
        collection: &str,
        name: &str,
        i: usize,
    ) -> anyhow::Result<()> {
        match (self, kind) {
            (System::Skiff { url, http, .. }, Write::SkiffCreate) => {
                let resp = http
                    .post(format!("{url}/api/v1/namespaces/{collection}/configmaps"))
                    .json(&configmap(name))
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
                Ok(())
            }
            (System::Etcd(e), Write::EtcdCreate | Write::EtcdPut) => {
                let key = format!("/registry/configmaps/{collection}/{name}").into_bytes();
                let value = serde_json::to_vec(&stored_configmap(collection, name, i))?;
                if kind == Write::EtcdCreate {
                    etcd::create(e.client(), key, value).await
                } else {
                    etcd::put(e.client(), key, value).await
                }
            }
            _ => bail!("{kind:?} is not a write {} takes", self.name()),
        }
    }

    /// Bytes one object takes: on Skiff the object as the server serves it (read back),
    /// on etcd the value written.
    async fn object_bytes(&self, collection: &str, name: &str) -> anyhow::Result<usize> {
        match self {
            System::Skiff { url, http, .. } => Ok(http
                .get(format!(
                    "{url}/api/v1/namespaces/{collection}/configmaps/{name}"
                ))
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?
                .len()),
            System::Etcd(_) => {
                Ok(serde_json::to_vec(&stored_configmap(collection, name, 0))?.len())
            }
        }
    }

    /// Opens a watch on a collection; resolves once the server has registered it.
    async fn watch(&self, collection: &str) -> anyhow::Result<Watcher> {
        match self {
            System::Skiff { url, http, .. } => {
                let resp = super::watch_from_now(
                    http,
                    &format!("{url}/api/v1/namespaces/{collection}/configmaps"),
                    "",
                )
                .await?;
                if !resp.status().is_success() {
                    bail!("watch failed: {}", resp.status());
                }
                Ok(Watcher::Skiff(super::WatchLines::new(resp)))
            }
            System::Etcd(e) => Ok(Watcher::Etcd(
                etcd::watch(e.client(), &format!("/registry/configmaps/{collection}/")).await?,
            )),
        }
    }
}

/// One open watch, on either system.
enum Watcher {
    /// Skiff's watch: JSON lines over HTTPS.
    Skiff(super::WatchLines),
    /// etcd's: a gRPC stream of watch responses.
    Etcd(etcd::Watch),
}

impl Watcher {
    /// The names of the objects the next message carries, and when it arrived; `None`
    /// once the stream ends, fails, or is silent for `idle`.
    async fn next(&mut self, idle: Duration) -> Option<(Instant, Vec<String>)> {
        match self {
            Watcher::Skiff(lines) => {
                let (at, batch) = lines.next(idle).await?;
                let names = batch
                    .iter()
                    .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
                    .filter_map(|v| {
                        v.pointer("/object/metadata/name")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    })
                    .collect();
                Some((at, names))
            }
            Watcher::Etcd(stream) => {
                let response = tokio::time::timeout(idle, stream.next())
                    .await
                    .ok()??
                    .ok()?;
                let at = Instant::now();
                let names = response
                    .events
                    .iter()
                    .filter_map(|e| e.kv.as_ref())
                    .filter_map(|kv| std::str::from_utf8(&kv.key).ok())
                    .filter_map(|k| k.rsplit('/').next().map(str::to_string))
                    .collect();
                Some((at, names))
            }
        }
    }
}

struct RunResult {
    system: &'static str,
    /// Which run (from 0).
    run: usize,
    /// 1 if this system went first in its run, 2 if second.
    position: usize,
    creates_per_sec: f64,
    create_p50_ms: f64,
    create_p99_ms: f64,
    /// etcd only: bare puts per second.
    puts_per_sec: Option<f64>,
    object_bytes: usize,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
    deliveries: u64,
    expected_deliveries: u64,
}

/// `count` writes of `kind` by `clients` concurrent clients; writes per second from the
/// first sent to the last acknowledged, and each write's latency.
async fn measure_writes(
    sys: &Arc<System>,
    kind: Write,
    collection: &str,
    count: usize,
    clients: usize,
) -> anyhow::Result<(f64, Latencies)> {
    sys.make_collection(collection).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next, sys, collection) = (next.clone(), sys.clone(), collection.to_string());
        tasks.spawn(async move {
            let mut lat = Latencies::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                sys.write(kind, &collection, &format!("cm-{i}"), i).await?;
                lat.record(t.elapsed());
            }
        });
    }
    let mut all = Latencies::new();
    while let Some(r) = tasks.join_next().await {
        all.merge(&r??);
    }
    let rate = count as f64 / start.elapsed().as_secs_f64();
    Ok((rate, all))
}

async fn measure_watch(sys: &Arc<System>, args: &ApiBenchArgs) -> anyhow::Result<(Latencies, u64)> {
    sys.make_collection("bench-watch").await?;
    let sent: Arc<Vec<OnceLock<Instant>>> =
        Arc::new((0..args.watch_events).map(|_| OnceLock::new()).collect());
    let mut watchers = Vec::with_capacity(args.watchers);
    // Open watches a few at a time so the setup itself doesn't time out.
    let mut pending = futures::stream::iter((0..args.watchers).map(|_| sys.watch("bench-watch")))
        .buffer_unordered(64);
    while let Some(r) = pending.next().await {
        watchers.push(r?);
    }
    drop(pending);
    let expected = args.watch_events;
    let mut tasks = tokio::task::JoinSet::new();
    for mut watcher in watchers {
        let sent = sent.clone();
        tasks.spawn(async move {
            let mut lat = Latencies::new();
            let mut seen = 0usize;
            while seen < expected {
                let Some((now, names)) = watcher.next(Duration::from_secs(120)).await else {
                    break;
                };
                for name in names {
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
            lat
        });
    }
    for i in 0..args.watch_events {
        let _ = sent[i].set(Instant::now());
        sys.write(sys.create(), "bench-watch", &format!("w-{i}"), i)
            .await
            .context("create during watch")?;
        tokio::time::sleep(args.watch_interval).await;
    }
    let mut all = Latencies::new();
    while let Some(r) = tasks.join_next().await {
        all.merge(&r?);
    }
    let delivered = all.len();
    Ok((all, delivered))
}

async fn one_run(
    sys: &Arc<System>,
    args: &ApiBenchArgs,
    run: usize,
    position: usize,
) -> anyhow::Result<RunResult> {
    // Warm-up, alike on both systems: the same clients write on the same connections
    // first, not counted.
    if args.warmup > 0 {
        measure_writes(sys, sys.create(), "bench-warmup", args.warmup, args.clients).await?;
    }
    let (rate, create_lat) = measure_writes(
        sys,
        sys.create(),
        "bench-creates",
        args.creates,
        args.clients,
    )
    .await?;
    let puts_per_sec = match &**sys {
        System::Etcd(_) => Some(
            measure_writes(
                sys,
                Write::EtcdPut,
                "bench-puts",
                args.creates,
                args.clients,
            )
            .await?
            .0,
        ),
        System::Skiff { .. } => None,
    };
    let object_bytes = sys.object_bytes("bench-creates", "cm-0").await?;
    let (watch_lat, delivered) = measure_watch(sys, args).await?;
    Ok(RunResult {
        system: sys.name(),
        run,
        position,
        creates_per_sec: rate,
        create_p50_ms: create_lat.ms(0.5),
        create_p99_ms: create_lat.ms(0.99),
        puts_per_sec,
        object_bytes,
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

fn run_json(r: &RunResult) -> Value {
    json!({
        "position": r.position,
        "creates_per_sec": r.creates_per_sec,
        "create_p50_ms": r.create_p50_ms,
        "create_p99_ms": r.create_p99_ms,
        "puts_per_sec": r.puts_per_sec,
        "object_bytes": r.object_bytes,
        "watch_p50_ms": r.watch_p50_ms,
        "watch_p99_ms": r.watch_p99_ms,
        "deliveries": r.deliveries,
        "expected_deliveries": r.expected_deliveries,
    })
}

fn summarize(results: &[RunResult], per_write: &str) -> Value {
    let pick = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    let puts = results.iter().any(|r| r.puts_per_sec.is_some());
    json!({
        "runs": results.len(),
        "per_write": per_write,
        "creates_per_sec": pick(|r| r.creates_per_sec),
        "create_p50_ms": pick(|r| r.create_p50_ms),
        "create_p99_ms": pick(|r| r.create_p99_ms),
        "puts_per_sec": puts.then(|| pick(|r| r.puts_per_sec.unwrap_or(f64::NAN))),
        "per_put": puts.then_some(ETCD_PUT),
        "object_bytes": results.first().map(|r| r.object_bytes),
        "watch_p50_ms": pick(|r| r.watch_p50_ms),
        "watch_p99_ms": pick(|r| r.watch_p99_ms),
        "deliveries": results.iter().map(|r| r.deliveries).sum::<u64>(),
        "expected_deliveries": results.iter().map(|r| r.expected_deliveries).sum::<u64>(),
        "per_run": results.iter().map(run_json).collect::<Vec<_>>(),
        "per_run_creates_per_sec": results.iter().map(|r| r.creates_per_sec).collect::<Vec<_>>(),
        "per_run_watch_p99_ms": results.iter().map(|r| r.watch_p99_ms).collect::<Vec<_>>(),
    })
}

/// The order the systems run in, run by run: Skiff first in the first run, etcd first
/// in the second, and so on, so neither always has the fresher machine.
fn skiff_first(run: usize) -> bool {
    run.is_multiple_of(2)
}

pub async fn run(args: ApiBenchArgs) -> anyhow::Result<()> {
    let with_etcd = args.etcd != "none";
    let mut skiff_runs = Vec::new();
    let mut etcd_runs = Vec::new();
    for run in 0..args.runs {
        let order: &[&str] = match (with_etcd, skiff_first(run)) {
            (false, _) => &["skiff"],
            (true, true) => &["skiff", "etcd"],
            (true, false) => &["etcd", "skiff"],
        };
        for (i, which) in order.iter().enumerate() {
            let sys = Arc::new(if *which == "skiff" {
                System::start_skiff(args.clients.max(64)).await?
            } else {
                System::start_etcd(&args.etcd).await?
            });
            let r = one_run(&sys, &args, run, i + 1).await;
            stop(sys).await;
            let r = r?;
            eprintln!(
                "run {}/{} {which} ({}): {:.0} creates/s (p50 {:.1} ms, p99 {:.1} ms){}; watch p50 {:.1} ms, p99 {:.1} ms, {}/{} deliveries",
                run + 1,
                args.runs,
                if i == 0 { "first" } else { "second" },
                r.creates_per_sec,
                r.create_p50_ms,
                r.create_p99_ms,
                r.puts_per_sec
                    .map(|p| format!(", {p:.0} bare puts/s"))
                    .unwrap_or_default(),
                r.watch_p50_ms,
                r.watch_p99_ms,
                r.deliveries,
                r.expected_deliveries
            );
            if *which == "skiff" {
                skiff_runs.push(r);
            } else {
                etcd_runs.push(r);
            }
        }
    }
    let skiff = summarize(&skiff_runs, SKIFF_WRITE);
    let etcd = with_etcd.then(|| summarize(&etcd_runs, ETCD_TXN));
    println!(
        "\nskiff bench api: {} creates by {} clients; {} watchers x {} events; {} runs, the order alternating; {} warm-up writes each; medians\n",
        args.creates, args.clients, args.watchers, args.watch_events, args.runs, args.warmup
    );
    println!("per write:");
    println!(
        "  skiff:    {SKIFF_WRITE} ({} bytes: the object as served)",
        skiff["object_bytes"]
    );
    if let Some(e) = &etcd {
        println!("  etcd:     {ETCD_TXN} ({} bytes)", e["object_bytes"]);
        println!("  etcd put: {ETCD_PUT}");
    }
    println!(
        "\n{:<6} {:<8} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "run", "system", "order", "creates/s", "bare puts/s", "watch p50", "watch p99"
    );
    let mut all: Vec<&RunResult> = skiff_runs.iter().chain(&etcd_runs).collect();
    all.sort_by_key(|r| (r.run, r.position));
    for r in all {
        println!(
            "{:<6} {:<8} {:>6} {:>12.0} {:>12} {:>12.1} {:>12.1}",
            r.run + 1,
            r.system,
            if r.position == 1 { "first" } else { "second" },
            r.creates_per_sec,
            r.puts_per_sec
                .map(|p| format!("{p:.0}"))
                .unwrap_or_else(|| "-".into()),
            r.watch_p50_ms,
            r.watch_p99_ms
        );
    }
    println!(
        "\n{:<34} {:>12} {:>12} {:>12} {:>10}",
        "metric (median)", "skiff", "etcd", "skiff/etcd", "target"
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
        println!("{name:<34} {s:>12.1} {e:>12} {ratio:>12} {target:>10}");
    };
    row(
        "durable creates/s (etcd: txn)",
        "creates_per_sec",
        ">= 5000",
    );
    row("create latency p50 (ms)", "create_p50_ms", "");
    row("create latency p99 (ms)", "create_p99_ms", "");
    row("watch delivery p50 (ms)", "watch_p50_ms", "");
    row("watch delivery p99 (ms)", "watch_p99_ms", "<= 50");
    if let Some(puts) = etcd.as_ref().and_then(|e| e["puts_per_sec"].as_f64()) {
        let s = skiff["creates_per_sec"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<34} {:>12} {:>12.1} {:>12} {:>10}",
            "etcd bare puts/s",
            "-",
            puts,
            format!("{:.2}x", s / puts),
            ""
        );
    }
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
            "warmup": args.warmup,
            "watchers": args.watchers,
            "watch_events": args.watch_events,
            "order": (0..args.runs)
                .map(|r| if !with_etcd { "skiff" } else if skiff_first(r) { "skiff,etcd" } else { "etcd,skiff" })
                .collect::<Vec<_>>(),
            "skiff": skiff,
            "etcd": etcd,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_alternates_run_by_run() {
        assert!(skiff_first(0));
        assert!(!skiff_first(1));
        assert!(skiff_first(2));
    }
}
