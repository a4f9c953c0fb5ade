//! `skiff bench registry`: pod start when the image comes from an OCI registry. A
//! loopback registry (Debian's `docker-registry`, the CNCF distribution registry) holds
//! a small Rust component and a 13 MB JavaScript one, pushed with `skiff push` as users
//! push. For each, a fresh `skiff dev` (nothing cached) runs a pod of the image (cold),
//! then a second pod of it (warm: the node has it). The clock runs from just before the
//! pod's create request to the watch showing it Running. The agent's Pulled event splits
//! the cold figure: transfer (the layer download), compile (Cranelift), the rest of the
//! pull (resolving the tag, the manifest, reading the bytes), and start (the rest:
//! scheduling, instantiation, the status write).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::SkiffProcess;
use super::stats::median;

#[derive(clap::Args)]
pub struct RegistryBenchArgs {
    /// The small component.
    #[arg(long, default_value = "workloads/bin/http-hello.wasm")]
    small: PathBuf,
    /// The large component (componentize-js output).
    #[arg(long, default_value = "workloads/bin/hello-js.wasm")]
    large: PathBuf,
    /// The registry binary (Debian's docker-registry package).
    #[arg(long, default_value = "docker-registry")]
    registry_bin: PathBuf,
    /// Runs per component; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// A `docker-registry` on a free loopback port, storage in a temporary directory.
struct Registry {
    child: tokio::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    async fn start(bin: &Path) -> anyhow::Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = super::free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\n\
                 storage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http:\n  addr: {addr}\n  secret: skiff-bench\n",
                dir.path().join("store").display()
            ),
        )?;
        let child = tokio::process::Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (apt install docker-registry)", bin.display()))?;
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("http://{addr}/v2/")).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the registry did not answer on {addr} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Registry {
            child,
            addr,
            _dir: dir,
        })
    }
}

/// One cold and one warm start of a component, in milliseconds.
#[derive(Debug, Default, Clone)]
struct Run {
    cold: f64,
    transfer: f64,
    compile: f64,
    pull_other: f64,
    start: f64,
    warm: f64,
}

/// Seconds in the Pulled event: "in 0.123s (0.125s including waiting). Image size: N
/// bytes. (transfer 0.010s, compile 0.100s)".
fn seconds_after(message: &str, label: &str) -> Option<f64> {
    let at = message.find(label)? + label.len();
    let rest = &message[at..];
    let end = rest.find('s')?;
    rest[..end].trim().parse().ok()
}

async fn pod_running(
    http: &reqwest::Client,
    url: &str,
    name: &str,
    image: &str,
) -> anyhow::Result<f64> {
    let pods = format!("{url}/api/v1/namespaces/default/pods");
    let watch = super::watch_from_now(http, &pods, "").await?;
    let mut lines = super::WatchLines::new(watch);
    let sent = Instant::now();
    let r = http
        .post(&pods)
        .json(&json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "main", "image": image}]},
        }))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("create {name}: {}", r.text().await?);
    }
    loop {
        let Some((now, batch)) = lines.next(Duration::from_secs(120)).await else {
            bail!("{name} not Running within 120 s");
        };
        for line in batch {
            let Ok(e) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let o = &e["object"];
            if o["metadata"]["name"] == name && o["status"]["phase"] == "Running" {
                return Ok(now.duration_since(sent).as_secs_f64() * 1000.0);
            }
            let waiting = &o["status"]["containerStatuses"][0]["state"]["waiting"];
            if o["metadata"]["name"] == name
                && matches!(
                    waiting["reason"].as_str(),
                    Some("ErrImagePull" | "InvalidModule")
                )
            {
                bail!("{name}: {}", waiting["message"]);
            }
        }
    }
}

async fn pulled_message(http: &reqwest::Client, url: &str, pod: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: Value = http
            .get(format!(
                "{url}/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{pod}"
            ))
            .send()
            .await?
            .json()
            .await?;
        if let Some(m) = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["reason"] == "Pulled")
            .and_then(|e| e["message"].as_str())
        {
            return Ok(m.to_string());
        }
        if Instant::now() > deadline {
            bail!("no Pulled event for {pod}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn once(reg: &Registry, file: &Path, repo: &str) -> anyhow::Result<Run> {
    let image = format!("{}/{repo}:v1", reg.addr);
    let exe = std::env::current_exe()?;
    let pushed = tokio::process::Command::new(&exe)
        .args(["push", &file.display().to_string(), &image, "--plain-http"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await?;
    if !pushed.status.success() {
        bail!(
            "skiff push {image}: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let (dev, _) = SkiffProcess::start(
        &[
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--nodes",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--gateway",
            "127.0.0.1:0",
            "--insecure-registry",
            &reg.addr,
        ],
        "api:",
    )
    .await?;
    let (url, http) = skiff_api::client::http_client(Some(&dir.path().join("kubeconfig"))).await?;
    // The node must be there before the clock starts, so scheduling is not waiting for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: Value = http
            .get(format!("{url}/api/v1/nodes"))
            .send()
            .await?
            .json()
            .await?;
        if nodes["items"].as_array().is_some_and(|n| !n.is_empty()) {
            break;
        }
        if Instant::now() > deadline {
            bail!("no node registered within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold = pod_running(&http, &url, "cold", &image).await?;
    let message = pulled_message(&http, &url, "cold").await?;
    let took = seconds_after(&message, " in ").context("the Pulled event's time")? * 1000.0;
    let transfer = seconds_after(&message, "transfer ").unwrap_or(0.0) * 1000.0;
    let compile = seconds_after(&message, "compile ").unwrap_or(0.0) * 1000.0;
    let warm = pod_running(&http, &url, "warm", &image).await?;
    dev.stop().await;
    Ok(Run {
        cold,
        transfer,
        compile,
        pull_other: (took - transfer - compile).max(0.0),
        start: (cold - took).max(0.0),
        warm,
    })
}

pub async fn run(args: RegistryBenchArgs) -> anyhow::Result<()> {
    let reg = Registry::start(&args.registry_bin).await?;
    let mut out = serde_json::Map::new();
    for (label, file) in [("small", &args.small), ("large", &args.large)] {
        let size = std::fs::metadata(file)
            .with_context(|| format!("reading {}", file.display()))?
            .len();
        let mut runs = Vec::new();
        for i in 0..args.runs {
            let r = once(&reg, file, &format!("bench-{label}-{i}/app")).await?;
            println!(
                "{label} ({size} bytes) run {}/{}: cold {:.1} ms (transfer {:.1}, compile {:.1}, rest of pull {:.1}, start {:.1}), warm {:.1} ms",
                i + 1,
                args.runs,
                r.cold,
                r.transfer,
                r.compile,
                r.pull_other,
                r.start,
                r.warm
            );
            runs.push(r);
        }
        let med = |f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let row = json!({
            "file": file.display().to_string(),
            "bytes": size,
            "cold_ms": med(|r| r.cold),
            "transfer_ms": med(|r| r.transfer),
            "compile_ms": med(|r| r.compile),
            "pull_other_ms": med(|r| r.pull_other),
            "start_ms": med(|r| r.start),
            "warm_ms": med(|r| r.warm),
            "runs": runs.iter().map(|r| json!({
                "cold_ms": r.cold, "transfer_ms": r.transfer, "compile_ms": r.compile,
                "pull_other_ms": r.pull_other, "start_ms": r.start, "warm_ms": r.warm,
            })).collect::<Vec<_>>(),
        });
        println!(
            "{label} ({size} bytes), median of {}: cold {:.1} ms = transfer {:.1} + compile {:.1} + rest of pull {:.1} + start {:.1}; warm {:.1} ms",
            args.runs,
            row["cold_ms"].as_f64().unwrap_or(f64::NAN),
            row["transfer_ms"].as_f64().unwrap_or(f64::NAN),
            row["compile_ms"].as_f64().unwrap_or(f64::NAN),
            row["pull_other_ms"].as_f64().unwrap_or(f64::NAN),
            row["start_ms"].as_f64().unwrap_or(f64::NAN),
            row["warm_ms"].as_f64().unwrap_or(f64::NAN),
        );
        out.insert(label.to_string(), row);
    }
    drop(reg.child);
    out.insert(
        "clock".into(),
        json!("from just before the pod's create request to the watch showing it Running; cold = fresh skiff dev, image only in the loopback registry; warm = a second pod on the same node"),
    );
    super::write_json(args.json.as_ref(), &Value::Object(out))
}
