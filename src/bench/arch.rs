//! `skiff bench arch`: agents for other architectures, cross-built by `scripts/cross`
//! and run under qemu-user emulation, against the native agent in the same run.
//!
//! One native `skiff server` serves every agent. Each round starts every agent in turn
//! (the order reverses round by round), one at a time so they never share the CPU, and
//! measures on it:
//! - pod start: `--pods` ticker pods bound to the agent's node one after another, each
//!   timed from just before its create is sent to the watch event that shows it Running
//!   (after a warm-up pod, so the module is compiled and cached first);
//! - HTTP: a pod of the wasi:http component bound to the node, loaded with wrk on the
//!   agent's own listener (the pod named by `x-skiff-pod`), so the native gateway is not
//!   in the path.
//!
//! The agents are all the agent-only build with the same profile, from `scripts/cross
//! --profile release x86_64 aarch64 armv7`: the native x86-64 one, the same on Pulley
//! (`--wasm-compiler pulley`), aarch64 under `qemu-aarch64` on Cranelift and on Pulley,
//! and armv7 under `qemu-arm` (Pulley: there is no Cranelift backend for 32-bit ARM).
//! The server is this binary. Emulation makes absolute times meaningless;
//! the ratios against the native agent of the same round, and of Pulley against
//! Cranelift on the same emulator, are the figures.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::stats::median;
use super::{SkiffProcess, WatchLines, watch_from_now};

#[derive(clap::Args)]
pub struct ArchBenchArgs {
    /// Where scripts/cross put its builds (`DIR/TRIPLE/PROFILE/skiff`); the native agent
    /// is its x86_64-unknown-linux-gnu build.
    #[arg(long, default_value = "target/cross")]
    cross_dir: PathBuf,
    /// The profile of the cross builds to run.
    #[arg(long, default_value = "release")]
    profile: String,
    /// The native agent's binary, instead of the x86_64 build in --cross-dir (such as
    /// this full build, whose agent allocates with jemalloc).
    #[arg(long)]
    native_binary: Option<PathBuf>,
    /// Agents to measure, of: native, native-pulley, aarch64, aarch64-pulley, armv7.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "native,native-pulley,aarch64,aarch64-pulley,armv7"
    )]
    agents: Vec<String>,
    /// Rounds; each measures every agent once, in an order that reverses round by round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pods started one after another per agent and round.
    #[arg(long, default_value_t = 10)]
    pods: usize,
    /// Length of each wrk run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// wrk connections.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// How one agent is run.
struct Agent {
    key: String,
    /// The emulator and the sysroot it loads the binary's libraries from; `None`: natively.
    emulator: Option<(&'static str, &'static str)>,
    binary: PathBuf,
    compiler: &'static str,
}

fn agent(key: &str, args: &ArchBenchArgs) -> anyhow::Result<Agent> {
    let cross = |triple: &str| {
        args.cross_dir
            .join(triple)
            .join(&args.profile)
            .join("skiff")
    };
    let (emulator, binary, compiler) = match key {
        "native" | "native-pulley" => (
            None,
            args.native_binary
                .clone()
                .unwrap_or_else(|| cross("x86_64-unknown-linux-gnu")),
            if key == "native" { "auto" } else { "pulley" },
        ),
        "aarch64" | "aarch64-pulley" => (
            Some(("qemu-aarch64", "/usr/aarch64-linux-gnu")),
            cross("aarch64-unknown-linux-gnu"),
            if key == "aarch64" { "auto" } else { "pulley" },
        ),
        "armv7" => (
            Some(("qemu-arm", "/usr/arm-linux-gnueabihf")),
            cross("armv7-unknown-linux-gnueabihf"),
            "auto",
        ),
        other => bail!("unknown agent '{other}'"),
    };
    if !binary.exists() {
        bail!(
            "{} is missing: build it with scripts/cross --profile {}",
            binary.display(),
            args.profile
        );
    }
    Ok(Agent {
        key: key.to_owned(),
        emulator,
        binary,
        compiler,
    })
}

/// What one agent measured in one round.
struct Sample {
    start_ms: Vec<f64>,
    rps: f64,
    p50_ms: f64,
    engine: String,
}

/// The server every agent joins, and a client for its API.
struct Server {
    _process: SkiffProcess,
    url: String,
    http: reqwest::Client,
    token: String,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("server");
        let data_arg = data.display().to_string();
        let (process, url) = SkiffProcess::start(
            &["server", "--listen", "127.0.0.1:0", "--data-dir", &data_arg],
            "api:",
        )
        .await?;
        let token = std::fs::read_to_string(data.join("node-token"))?
            .trim()
            .to_owned();
        let (_, http) = skiff_api::client::http_client(Some(&data.join("kubeconfig"))).await?;
        Ok(Server {
            _process: process,
            url,
            http,
            token,
            dir,
        })
    }

    async fn upload(&self, path: &Path) -> anyhow::Result<String> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        super::upload_module(&self.http, &self.url, bytes).await
    }

    fn pods(&self) -> String {
        format!("{}/api/v1/namespaces/default/pods", self.url)
    }

    /// Creates a pod bound to `node` and waits for it Running; returns the time from
    /// just before the create to the watch event.
    async fn start_pod(
        &self,
        node: &str,
        name: &str,
        image: &str,
        args: &[&str],
    ) -> anyhow::Result<Duration> {
        let watch = watch_from_now(
            &self.http,
            &self.pods(),
            &format!("&fieldSelector=metadata.name%3D{name}"),
        )
        .await?;
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "arch"}},
            "spec": {"nodeName": node,
                     "containers": [{"name": "main", "image": image, "args": args}]}});
        let sent = Instant::now();
        let r = self.http.post(self.pods()).json(&pod).send().await?;
        if !r.status().is_success() {
            bail!("creating {name}: {}", r.text().await?);
        }
        let mut lines = WatchLines::new(watch);
        while let Some((at, batch)) = lines.next(Duration::from_secs(300)).await {
            for line in batch {
                let event: Value = serde_json::from_slice(&line).unwrap_or_default();
                match event["object"]["status"]["phase"].as_str() {
                    Some("Running") => return Ok(at.duration_since(sent)),
                    Some("Failed") => bail!("{name} failed: {}", event["object"]["status"]),
                    _ => {}
                }
            }
        }
        bail!("{name} was not Running within 300s")
    }

    /// Deletes every pod of the bench at once, without waiting for them to go.
    async fn delete_pods(&self) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}?labelSelector=bench%3Darch", self.pods()))
            .json(&json!({"gracePeriodSeconds": 0}))
            .send()
            .await?;
        Ok(())
    }

    async fn wait_node_ready(&self, node: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            if let Ok(r) = self
                .http
                .get(format!("{}/api/v1/nodes/{node}", self.url))
                .send()
                .await
                && r.status() == 200
            {
                let n: Value = r.json().await?;
                let ready = n["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                if ready {
                    return Ok(n);
                }
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("node {node} was not Ready within 300s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// wrk against the agent's listener, the pod named by its header: (requests/s, p50 ms).
/// Any failed request fails the run: a figure with errors in it means nothing here.
async fn wrk(
    url: &str,
    pod: &str,
    duration: Duration,
    connections: u32,
) -> anyhow::Result<(f64, f64)> {
    let header = format!("x-skiff-pod: {pod}");
    let load = super::http::wrk_with(url, duration, connections, &[&header]).await?;
    if load.errors > 0 {
        bail!("{} requests to {pod} failed", load.errors);
    }
    Ok((load.rps, load.p50_ms))
}

async fn measure(
    server: &Server,
    agent: &Agent,
    round: usize,
    images: (&str, &str),
    args: &ArchBenchArgs,
) -> anyhow::Result<Sample> {
    let node = format!("{}-r{round}", agent.key);
    let data = server.dir.path().join(&node).display().to_string();
    let agent_args = [
        "agent",
        "--server",
        &server.url,
        "--token",
        &server.token,
        "--name",
        &node,
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--wasm-compiler",
        agent.compiler,
        "--lease-interval",
        "2s",
    ];
    let (process, listen) = match agent.emulator {
        None => SkiffProcess::start_binary(&agent.binary, &agent_args, "agent:").await?,
        Some((qemu, sysroot)) => {
            SkiffProcess::start_program(
                qemu.as_ref(),
                &["-L".as_ref(), sysroot.as_ref(), agent.binary.as_os_str()],
                &agent_args,
                "agent:",
                Duration::from_secs(300),
            )
            .await?
        }
    };
    let listen = listen
        .rsplit(' ')
        .next()
        .context("the agent printed no address")?
        .to_owned();
    let node_object = server.wait_node_ready(&node).await?;
    let engine = node_object["metadata"]["labels"]["skiff.dev/wasm-engine"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    let (ticker, http_component) = images;
    // Warm-up: the module is fetched and compiled (and cached) by the first pod.
    server
        .start_pod(&node, &format!("{node}-warm"), ticker, &["60m"])
        .await?;
    let mut start_ms = Vec::new();
    for i in 0..args.pods {
        let took = server
            .start_pod(&node, &format!("{node}-{i}"), ticker, &["60m"])
            .await?;
        start_ms.push(took.as_secs_f64() * 1000.0);
    }
    let web = format!("{node}-web");
    server.start_pod(&node, &web, http_component, &[]).await?;
    let url = format!("http://{listen}/");
    let pod = format!("default/{web}");
    // A short run first, not counted: the first requests instantiate cold.
    wrk(&url, &pod, Duration::from_secs(1), args.connections).await?;
    let (rps, p50_ms) = wrk(&url, &pod, args.duration, args.connections).await?;
    server.delete_pods().await?;
    process.stop().await;
    server
        .http
        .delete(format!("{}/api/v1/nodes/{node}", server.url))
        .send()
        .await?;
    let sample = Sample {
        start_ms,
        rps,
        p50_ms,
        engine,
    };
    eprintln!(
        "round {round}, {} ({}): pod start p50 {:.1} ms, {:.0} req/s (p50 {:.2} ms)",
        agent.key,
        sample.engine,
        median(sample.start_ms.clone()),
        sample.rps,
        sample.p50_ms
    );
    Ok(sample)
}

pub async fn run(args: ArchBenchArgs) -> anyhow::Result<()> {
    if args.rounds == 0 || args.pods == 0 {
        bail!("--rounds and --pods must be at least 1");
    }
    let agents = args
        .agents
        .iter()
        .map(|k| agent(k, &args))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let server = Server::start().await?;
    let ticker = server
        .upload(Path::new("workloads/bin/ticker.wasm"))
        .await?;
    let web = server
        .upload(Path::new("workloads/bin/http-hello.wasm"))
        .await?;
    let mut samples: Vec<Vec<Sample>> = agents.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for i in super::http::round_order(agents.len(), round) {
            let sample = measure(&server, &agents[i], round, (&ticker, &web), &args).await?;
            samples[i].push(sample);
        }
    }

    // Per agent: the median over rounds of each round's pod-start median, and of its
    // requests/s; each against the native agent's.
    let summary = |i: usize| {
        let starts = samples[i]
            .iter()
            .map(|s| median(s.start_ms.clone()))
            .collect::<Vec<_>>();
        let rps = samples[i].iter().map(|s| s.rps).collect::<Vec<_>>();
        (median(starts.clone()), median(rps.clone()), starts, rps)
    };
    let native = agents.iter().position(|a| a.key == "native");
    let (native_start, native_rps) = native
        .map(|i| {
            let (s, r, _, _) = summary(i);
            (s, r)
        })
        .unwrap_or((f64::NAN, f64::NAN));
    println!(
        "{:<16} {:<10} {:>10} {:>9} {:>10} {:>9} {:>10}",
        "agent", "engine", "binary MB", "start ms", "× native", "req/s", "× native"
    );
    let mut rows = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let (start, rps, starts, all_rps) = summary(i);
        let bytes = std::fs::metadata(&agent.binary).map_or(0, |m| m.len());
        println!(
            "{:<16} {:<10} {:>10.1} {:>9.1} {:>10.2} {:>9.0} {:>10.3}",
            agent.key,
            samples[i][0].engine,
            bytes as f64 / 1e6,
            start,
            start / native_start,
            rps,
            rps / native_rps
        );
        rows.push(json!({
            "agent": agent.key,
            "engine": samples[i][0].engine,
            "binary_bytes": bytes,
            "pod_start_ms_p50": start,
            "pod_start_ms_p50_per_round": starts,
            "pod_start_vs_native": start / native_start,
            "requests_per_second": rps,
            "requests_per_second_per_round": all_rps,
            "requests_vs_native": rps / native_rps,
        }));
    }
    // Pulley against Cranelift on the same host (native, and the same emulator).
    for (pulley, cranelift) in [("native-pulley", "native"), ("aarch64-pulley", "aarch64")] {
        let find = |k: &str| agents.iter().position(|a| a.key == k);
        if let (Some(p), Some(c)) = (find(pulley), find(cranelift)) {
            let (ps, pr, _, _) = summary(p);
            let (cs, cr, _, _) = summary(c);
            println!(
                "{pulley} against {cranelift}: pod start {:.2}×, requests/s {:.3}×",
                ps / cs,
                pr / cr
            );
        }
    }
    super::write_json(
        args.json.as_ref(),
        &json!({"rounds": args.rounds, "pods": args.pods, "agents": rows}),
    )
}
