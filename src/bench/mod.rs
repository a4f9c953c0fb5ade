//! `skiff bench`: benchmarks anyone can rerun, each measured side by side with a peer
//! where one exists, printed as a table and optionally written as JSON.

mod api;
mod arch;
mod coldstart;
mod dev;
mod etcd;
mod footprint;
mod ha;
mod http;
mod plot;
mod pods;
mod registry;
mod rolling;
mod scheduler;
mod stats;
mod suite;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Every benchmark below in turn: one summary table (each figure beside its goal
    /// and a peer's), one JSON file and the PNG plots, in --out.
    All(suite::SuiteArgs),
    /// Durable creates/s with concurrent clients, and watch delivery latency with many
    /// watchers; against etcd (the store Kubernetes uses), driven over gRPC as
    /// kube-apiserver drives it, when `etcd` is installed.
    Api(api::ApiBenchArgs),
    /// Pod start latency (create to Running through a watch) over many pods on one node,
    /// bound directly and through the scheduler; and density: idle pods one agent
    /// holds, with its RSS.
    Pods(pods::PodBenchArgs),
    /// Scheduler throughput onto hollow nodes (Node objects and Leases, no agents).
    Scheduler(scheduler::SchedulerBenchArgs),
    /// HTTP requests/s and p99 of a wasi:http component on the agent and through the
    /// gateway, against `wasmtime serve` on the same component; and deploy to first 200.
    Http(http::HttpBenchArgs),
    /// Request throughput over time through the gateway while an App rolls to a new
    /// module and back; failed requests counted, and plotted.
    Rolling(rolling::RollingBenchArgs),
    /// Time from `skiff dev` to the API answering and to all its nodes Ready.
    Dev(dev::DevBenchArgs),
    /// Idle RSS of a server and of an agent (joined, no pods), and the binary's size.
    Footprint(footprint::FootprintBenchArgs),
    /// Skiff on a three-member etcd: creates/s against etcd's own puts, watch delivery
    /// with 1,000 watchers, and leader failover to the first pod bound.
    Ha(ha::HaBenchArgs),
    /// Pod start from an OCI registry: create to Running for a small and a 13 MB
    /// component pulled from a loopback registry, cold and warm, split into transfer,
    /// compile and start.
    Registry(registry::RegistryBenchArgs),
    /// Apps that scale to zero: first request to 200 from zero replicas (p50, p99 over
    /// many cold starts), and the time from a step of load to the new replicas serving.
    ColdStart(coldstart::ColdStartBenchArgs),
    /// Agents for other architectures, cross-built by scripts/cross and run under
    /// qemu-user, against the native agent in the same run: pod start and HTTP
    /// requests/s, Cranelift against Pulley, and the binaries' sizes. Emulated, so only
    /// the ratios mean anything.
    Arch(arch::ArchBenchArgs),
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    dispatch(args.which).await
}

async fn dispatch(which: Which) -> anyhow::Result<()> {
    match which {
        Which::All(a) => suite::run(a).await,
        Which::Api(a) => api::run(a).await,
        Which::Pods(a) => pods::run(a).await,
        Which::Scheduler(a) => scheduler::run(a).await,
        Which::Http(a) => http::run(a).await,
        Which::Rolling(a) => rolling::run(a).await,
        Which::Dev(a) => dev::run(a).await,
        Which::Footprint(a) => footprint::run(a).await,
        Which::Ha(a) => ha::run(a).await,
        Which::Registry(a) => registry::run(a).await,
        Which::ColdStart(a) => coldstart::run(a).await,
        Which::Arch(a) => arch::run(a).await,
    }
}

/// A free loopback port, for a peer or an etcd member to listen on.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `skiff` child process of a benchmark; killed if dropped.
pub(crate) struct SkiffProcess {
    child: tokio::process::Child,
}

impl SkiffProcess {
    /// Starts `skiff ARGS` and waits for a stdout line starting with `marker`; returns
    /// the process and the rest of that line.
    pub(crate) async fn start(
        args: &[&str],
        marker: &str,
    ) -> anyhow::Result<(SkiffProcess, String)> {
        Self::start_binary(&std::env::current_exe()?, args, marker).await
    }

    /// Like `start`, with another `skiff` binary (an agent-only build, say).
    pub(crate) async fn start_binary(
        exe: &std::path::Path,
        args: &[&str],
        marker: &str,
    ) -> anyhow::Result<(SkiffProcess, String)> {
        Self::start_program(exe.as_os_str(), &[], args, marker, Duration::from_secs(30)).await
    }

    /// Like `start_binary`, as `PROGRAM PREFIX... ARGS...` (skiff under an emulator,
    /// say), waiting up to `within` for the marker.
    pub(crate) async fn start_program(
        program: &std::ffi::OsStr,
        prefix: &[&std::ffi::OsStr],
        args: &[&str],
        marker: &str,
        within: Duration,
    ) -> anyhow::Result<(SkiffProcess, String)> {
        // Skiff's default log level, as users run it (spans included), unless the
        // benchmark's caller sets another.
        let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = tokio::process::Command::new(program)
            .args(prefix)
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let rest = tokio::time::timeout(within, async {
            while let Some(l) = lines.next_line().await? {
                if let Some(rest) = l.strip_prefix(marker) {
                    return Ok(rest.trim().to_string());
                }
            }
            bail!("exited before printing {marker}")
        })
        .await
        .context("start timed out")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((SkiffProcess { child }, rest))
    }

    /// The child's process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory, from /proc.
    pub(crate) fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// The private (anonymous) part of the RSS; the rest is the shared, reclaimable
    /// mapping of the binary and libraries.
    pub(crate) fn rss_anon_mib(&self) -> f64 {
        self.status_mib("RssAnon:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let pid = self.child.id().unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// SIGKILL: no chance to clean up (a crashed machine).
    pub(crate) async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, as in production, then wait for the exit.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

/// Uploads a module's bytes to the API; returns its digest, the image pods name.
pub(crate) async fn upload_module(
    http: &reqwest::Client,
    api: &str,
    bytes: Vec<u8>,
) -> anyhow::Result<String> {
    let module: serde_json::Value = http
        .post(format!("{api}/apis/skiff.dev/v1/modules"))
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await?
        .json()
        .await?;
    Ok(module["digest"]
        .as_str()
        .context("the upload answered no digest")?
        .to_owned())
}

/// Writes results as pretty JSON when asked.
fn write_json(path: Option<&PathBuf>, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(value)?)?;
        println!("results written to {}", path.display());
    }
    Ok(())
}

/// Opens a watch of `collection` (a list URL) from now: from the resourceVersion of a
/// one-item list, so it delivers every change after this call and nothing before.
/// `query` is appended to the watch's query (`&fieldSelector=...`).
pub(crate) async fn watch_from_now(
    http: &reqwest::Client,
    collection: &str,
    query: &str,
) -> anyhow::Result<reqwest::Response> {
    let list: serde_json::Value = http
        .get(format!("{collection}?limit=1"))
        .send()
        .await?
        .json()
        .await?;
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0");
    Ok(http
        .get(format!("{collection}?watch=1&resourceVersion={rv}{query}"))
        .send()
        .await?)
}

/// A watch response read as it arrives: each chunk's complete lines (one event each),
/// stamped with when the chunk arrived.
pub(crate) struct WatchLines {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchLines {
    pub(crate) fn new(response: reqwest::Response) -> WatchLines {
        WatchLines {
            response,
            buf: Vec::new(),
        }
    }

    /// The lines completed by the next chunk, and when it arrived; `None` once the
    /// stream ends, fails, or is silent for `idle`.
    pub(crate) async fn next(
        &mut self,
        idle: Duration,
    ) -> Option<(std::time::Instant, Vec<Vec<u8>>)> {
        let chunk = tokio::time::timeout(idle, self.response.chunk())
            .await
            .ok()?
            .ok()??;
        let now = std::time::Instant::now();
        self.buf.extend_from_slice(&chunk);
        let mut lines = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            lines.push(self.buf.drain(..=pos).collect());
        }
        Some((now, lines))
    }
}
