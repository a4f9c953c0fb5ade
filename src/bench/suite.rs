//! `skiff bench all`: every benchmark in one run, summed up in one table (each figure
//! beside its goal and a peer's figure) and one JSON file, with the PNG plots.
//!
//! Each benchmark runs as its own subcommand would, with its detailed output, and
//! writes its JSON into the output directory; the summary reads those files. A
//! benchmark that fails is reported as failed and the rest still run.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct SuiteArgs {
    /// Where the JSON results and the PNG plots go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Smaller runs (one run each, fewer objects): minutes instead of a quarter hour,
    /// for checking the suite works rather than for figures to publish.
    #[arg(long)]
    quick: bool,
    /// An agent-only build (`cargo build --release --no-default-features`, stripped)
    /// whose idle RSS the footprint benchmark also measures.
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// Benchmarks to leave out (api, pods, scheduler, http, rolling, dev, footprint, ha).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

/// Parses a benchmark's own command line, as `skiff bench NAME ARGS` would.
#[derive(Parser)]
#[command(no_binary_name = true)]
struct One {
    #[command(subcommand)]
    which: super::Which,
}

/// A benchmark of the suite: its name and its arguments (full, then quick).
struct Step {
    name: &'static str,
    full: Vec<String>,
    quick: Vec<String>,
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub async fn run(a: SuiteArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.out)?;
    let out = |file: &str| a.out.join(file).display().to_string();
    let mut footprint = args(&["--runs", "3"]);
    if let Some(agent) = &a.agent_binary {
        footprint.extend(["--agent-binary".into(), agent.display().to_string()]);
    }
    let mut footprint_quick = args(&["--runs", "1"]);
    footprint_quick.extend(footprint.iter().skip(2).cloned());
    let steps = [
        Step {
            name: "api",
            full: vec![],
            quick: args(&[
                "--creates",
                "5000",
                "--warmup",
                "200",
                "--watchers",
                "200",
                "--runs",
                "1",
            ]),
        },
        Step {
            name: "pods",
            full: vec!["--png".into(), out("pod-start-latency.png")],
            quick: vec![
                "--png".into(),
                out("pod-start-latency.png"),
                "--pods".into(),
                "300".into(),
                "--density".into(),
                "1000".into(),
                "--runs".into(),
                "1".into(),
            ],
        },
        Step {
            name: "scheduler",
            full: vec![],
            quick: args(&["--nodes", "200", "--pods", "2000", "--runs", "1"]),
        },
        Step {
            name: "http",
            full: vec![],
            quick: args(&[
                "--duration",
                "2s",
                "--rounds",
                "1",
                "--warmup",
                "1s",
                "--deploys",
                "1",
            ]),
        },
        Step {
            name: "rolling",
            full: vec!["--png".into(), out("rolling-update.png")],
            quick: vec![
                "--png".into(),
                out("rolling-update.png"),
                "--duration".into(),
                "8s".into(),
            ],
        },
        Step {
            name: "dev",
            full: vec![],
            quick: args(&["--runs", "2"]),
        },
        Step {
            name: "footprint",
            full: footprint,
            quick: footprint_quick,
        },
        Step {
            name: "ha",
            full: vec![],
            quick: args(&[
                "--creates",
                "2000",
                "--watchers",
                "200",
                "--runs",
                "1",
                "--kills",
                "3",
            ]),
        },
    ];
    let mut failures = Vec::new();
    for step in &steps {
        if a.skip.iter().any(|s| s == step.name) {
            continue;
        }
        let json = a.out.join(format!("{}.json", step.name));
        let _ = std::fs::remove_file(&json);
        let mut argv = vec![
            step.name.to_string(),
            "--json".into(),
            json.display().to_string(),
        ];
        argv.extend(
            if a.quick { &step.quick } else { &step.full }
                .iter()
                .cloned(),
        );
        eprintln!("\n=== skiff bench {}", argv.join(" "));
        let one = One::try_parse_from(&argv)?;
        if let Err(e) = Box::pin(super::dispatch(one.which)).await {
            eprintln!("skiff bench {} failed: {e:#}", step.name);
            failures.push((step.name, format!("{e:#}")));
        }
    }

    let results = Results::read(&a.out);
    let rows = results.rows();
    print_table(&rows, a.quick);
    for (name, error) in &failures {
        println!("FAILED: skiff bench {name}: {error}");
    }
    let summary = json!({
        "suite": if a.quick { "quick" } else { "full" },
        "machine": machine(),
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "failed": failures.iter().map(|(n, e)| json!({"benchmark": n, "error": e})).collect::<Vec<_>>(),
        "results": results.0,
    });
    super::write_json(Some(&a.out.join("results.json")), &summary)?;
    if !failures.is_empty() {
        anyhow::bail!("{} benchmark(s) failed", failures.len());
    }
    Ok(())
}

/// The benchmarks' JSON files, by name.
struct Results(serde_json::Map<String, Value>);

impl Results {
    fn read(dir: &Path) -> Results {
        let mut map = serde_json::Map::new();
        for name in [
            "api",
            "pods",
            "scheduler",
            "http",
            "rolling",
            "dev",
            "footprint",
            "ha",
        ] {
            if let Some(v) = std::fs::read(dir.join(format!("{name}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                map.insert(name.into(), v);
            }
        }
        Results(map)
    }

    fn num(&self, bench: &str, pointer: &str) -> Option<f64> {
        self.0.get(bench)?.pointer(pointer)?.as_f64()
    }

    /// A count from a benchmark's settings, for a row's label ("?" if it did not run).
    fn int(&self, bench: &str, pointer: &str) -> String {
        self.num(bench, pointer)
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "?".into())
    }

    /// The HTTP benchmark's row for a target (`agent`, `gateway`, `wasmtime serve`).
    fn http(&self, target: &str, field: &str) -> Option<f64> {
        self.0
            .get("http")?
            .get("targets")?
            .as_array()?
            .iter()
            .find(|t| t["target"] == target)?
            .get(field)?
            .as_f64()
    }

    fn rows(&self) -> Vec<Row> {
        let watchers = self.int("api", "/watchers");
        let etcd = |p: &str| self.num("api", &format!("/etcd/{p}"));
        let skiff = |p: &str| self.num("api", &format!("/skiff/{p}"));
        let density = self.num("pods", "/density/pods");
        let wasmtime = self.http("wasmtime serve", "rps");
        vec![
            Row::new(
                "API",
                &format!(
                    "durable creates/s, {} clients (etcd: create txn, gRPC)",
                    self.int("api", "/clients")
                ),
            )
            .skiff(skiff("creates_per_sec"), 0)
            .peer("etcd txn", etcd("creates_per_sec"), 0)
            .goal(">= 5,000", |v| v >= 5000.0)
            .published("etcd docs: 50,104 writes/s, 1,000 clients, 3 x 8 vCPU"),
            Row::new("API", "durable creates/s against etcd bare puts (gRPC)")
                .skiff(skiff("creates_per_sec"), 0)
                .peer("etcd put", etcd("puts_per_sec"), 0),
            Row::new(
                "API",
                &format!("watch delivery p99, {watchers} watchers (ms)"),
            )
            .skiff(skiff("watch_p99_ms"), 1)
            .peer("etcd", etcd("watch_p99_ms"), 1)
            .goal("<= 50", |v| v <= 50.0),
            Row::new("API", "watch delivery p50 (ms)")
                .skiff(skiff("watch_p50_ms"), 1)
                .peer("etcd", etcd("watch_p50_ms"), 1),
            Row::new("pods", "start p50, bound directly, no scheduler (ms)")
                .skiff(self.num("pods", "/bound/p50_ms"), 1),
            Row::new("pods", "start p99, bound directly, no scheduler (ms)")
                .skiff(self.num("pods", "/bound/p99_ms"), 1)
                .goal("<= 20", |v| v <= 20.0),
            Row::new("pods", "start p50, scheduled: create, bind, Running (ms)")
                .skiff(self.num("pods", "/scheduled/p50_ms"), 1),
            Row::new("pods", "start p99, scheduled: create, bind, Running (ms)")
                .skiff(self.num("pods", "/scheduled/p99_ms"), 1)
                .published("Kubernetes SLO: p99 <= 5 s, scheduling included"),
            Row::new("pods", "idle pods held by one agent")
                .skiff(density, 0)
                .goal(">= 5,000", |v| v >= 5000.0)
                .published("Kubernetes: at most 110 pods per node"),
            Row::new("pods", "agent RSS holding them (MiB)")
                .skiff(self.num("pods", "/density/agent_rss_mib"), 0)
                .goal("<= 1,024", |v| v <= 1024.0),
            Row::new(
                "scheduler",
                &format!(
                    "pods bound/s: {} pods, {} hollow nodes",
                    self.int("scheduler", "/pods"),
                    self.int("scheduler", "/nodes")
                ),
            )
            .skiff(self.num("scheduler", "/backlog_pods_bound_per_sec"), 0)
            .goal(">= 5,000", |v| v >= 5000.0)
            .published("kube-scheduler CI threshold: 680 pods/s (5,000 nodes)"),
            Row::new("HTTP", "agent listener, req/s")
                .skiff(self.http("agent", "rps"), 0)
                .peer("wasmtime serve", wasmtime, 0)
                .goal("ratio >= 1.0", |_| true)
                .ratio_goal(1.0),
            Row::new("HTTP", "agent listener, p99 (ms)")
                .skiff(self.http("agent", "p99_ms"), 2)
                .peer("wasmtime serve", self.http("wasmtime serve", "p99_ms"), 2),
            Row::new("HTTP", "through the gateway, req/s")
                .skiff(self.http("gateway", "rps"), 0)
                .peer("wasmtime serve", wasmtime, 0)
                .goal("ratio >= 0.7", |_| true)
                .ratio_goal(0.7),
            Row::new("HTTP", "through the gateway, p99 (ms)")
                .skiff(self.http("gateway", "p99_ms"), 2)
                .peer("wasmtime serve", self.http("wasmtime serve", "p99_ms"), 2),
            Row::new("HTTP", "deploy to first 200, new module (ms)")
                .skiff(self.num("http", "/deploy_to_first_200_ms"), 1)
                .goal("<= 100", |v| v <= 100.0),
            Row::new("HTTP", "deploy to first 200, module cached (ms)")
                .skiff(self.num("http", "/deploy_to_first_200_cached_ms"), 1),
            Row::new("rollout", "requests failed during two rollouts")
                .skiff(self.num("rolling", "/failed"), 0)
                .goal("0", |v| v == 0.0),
            Row::new("rollout", "req/s during rollouts / outside").skiff(
                self.num("rolling", "/rollout_rps")
                    .zip(self.num("rolling", "/steady_rps"))
                    .map(|(r, s)| r / s),
                2,
            ),
            Row::new(
                "dev",
                &format!(
                    "`skiff dev --nodes {}` to all nodes Ready (ms)",
                    self.int("dev", "/nodes")
                ),
            )
            .skiff(self.num("dev", "/all_ready_ms"), 0)
            .goal("<= 1,000", |v| v <= 1000.0)
            .published("minikube bench: k3d 19.9 s, kind 33.0 s, minikube 50.8 s"),
            Row::new("footprint", "server idle RSS (MiB)")
                .skiff(self.num("footprint", "/server_idle_rss_mib"), 1)
                .goal("<= 40", |v| v <= 40.0)
                .published("k3s profile: server 1,596 MB (with a workload)"),
            Row::new("footprint", "agent idle RSS (MiB)")
                .skiff(self.num("footprint", "/agent_idle_rss_mib"), 1)
                .goal("<= 20", |v| v <= 20.0)
                .published("k3s profile: agent 275 MB"),
            Row::new("footprint", "binary, stripped (MiB)")
                .skiff(self.num("footprint", "/binary_stripped_mib"), 1)
                .published("k3s: a binary under 100 MB"),
            Row::new(
                "HA",
                &format!(
                    "creates/s on a 3-member etcd, {} clients",
                    self.int("ha", "/clients")
                ),
            )
            .skiff(self.num("ha", "/skiff_creates_per_sec"), 0)
            .peer("etcd put", self.num("ha", "/etcd_puts_per_sec"), 0)
            .goal("ratio >= 0.7", |_| true)
            .ratio_goal(0.7),
            Row::new(
                "HA",
                &format!(
                    "watch delivery p99 on etcd, {} watchers (ms)",
                    self.int("ha", "/watchers")
                ),
            )
            .skiff(self.num("ha", "/watch_p99_ms"), 1)
            .goal("<= 50", |v| v <= 50.0),
            Row::new("HA", "leader killed to first pod bound, p50 (ms)")
                .skiff(self.num("ha", "/failover_p50_ms"), 0),
            Row::new("HA", "leader killed to first pod bound, p99 (ms)")
                .skiff(self.num("ha", "/failover_p99_ms"), 0)
                .goal("<= 2,000", |v| v <= 2000.0)
                .published("Kubernetes' default leader election: up to 15 s"),
        ]
    }
}

/// One line of the summary.
struct Row {
    area: &'static str,
    metric: String,
    skiff: Option<f64>,
    digits: usize,
    peer: Option<(&'static str, Option<f64>)>,
    goal: Option<(&'static str, bool)>,
    ratio_goal: Option<f64>,
    published: &'static str,
}

impl Row {
    fn new(area: &'static str, metric: &str) -> Row {
        Row {
            area,
            metric: metric.to_string(),
            skiff: None,
            digits: 0,
            peer: None,
            goal: None,
            ratio_goal: None,
            published: "",
        }
    }

    fn skiff(mut self, v: Option<f64>, digits: usize) -> Row {
        self.skiff = v.filter(|v| v.is_finite());
        self.digits = digits;
        self
    }

    fn peer(mut self, name: &'static str, v: Option<f64>, _digits: usize) -> Row {
        self.peer = Some((name, v.filter(|v| v.is_finite())));
        self
    }

    /// The goal, and whether the figure meets it (judged only when there is one).
    fn goal(mut self, text: &'static str, met: impl Fn(f64) -> bool) -> Row {
        self.goal = Some((text, self.skiff.is_some_and(met)));
        self
    }

    /// A goal on the ratio to the peer instead of the figure.
    fn ratio_goal(mut self, at_least: f64) -> Row {
        self.ratio_goal = Some(at_least);
        let met = self.ratio().is_some_and(|r| r >= at_least);
        if let Some((text, _)) = self.goal {
            self.goal = Some((text, met));
        }
        self
    }

    fn published(mut self, text: &'static str) -> Row {
        self.published = text;
        self
    }

    fn ratio(&self) -> Option<f64> {
        let (_, peer) = self.peer?;
        Some(self.skiff? / peer?)
    }

    fn fmt(&self, v: Option<f64>) -> String {
        match v {
            Some(v) => format!("{v:.*}", self.digits),
            None => "-".into(),
        }
    }

    fn verdict(&self) -> String {
        match self.goal {
            Some((text, _)) if self.skiff.is_none() => format!("{text} (no figure)"),
            Some((text, true)) => format!("{text} met"),
            Some((text, false)) => format!("{text} MISSED"),
            None => String::new(),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "area": self.area,
            "metric": self.metric,
            "skiff": self.skiff,
            "peer": self.peer.map(|(n, _)| n),
            "peer_value": self.peer.and_then(|(_, v)| v),
            "ratio": self.ratio(),
            "goal": self.goal.map(|(g, _)| g),
            "goal_met": self.goal.map(|(_, m)| m && self.skiff.is_some()),
            "published_peer": (!self.published.is_empty()).then_some(self.published),
        })
    }
}

fn print_table(rows: &[Row], quick: bool) {
    println!(
        "\nskiff bench all{}: one table; details above and in the JSON\n",
        if quick {
            " --quick (small runs: not figures to publish)"
        } else {
            ""
        }
    );
    println!(
        "{:<10} {:<46} {:>10} {:>24} {:>7}  {:<20} published peer figure",
        "area", "metric", "skiff", "peer, same run", "ratio", "goal"
    );
    for r in rows {
        let peer = match r.peer {
            Some((name, v)) => format!("{name} {}", r.fmt(v)),
            None => String::new(),
        };
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_default();
        println!(
            "{:<10} {:<46} {:>10} {:>24} {:>7}  {:<20} {}",
            r.area,
            r.metric,
            r.fmt(r.skiff),
            peer,
            ratio,
            r.verdict(),
            r.published
        );
    }
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0 / 1024.0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": memory_gib,
        "skiff_version": env!("CARGO_PKG_VERSION"),
        "date": jiff::Timestamp::now().to_string(),
    })
}
