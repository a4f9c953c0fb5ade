//! Chaos, bounded: for a minute and a half, a seeded schedule SIGKILLs and restarts the
//! agents and the server and partitions agents (network namespaces, see
//! common/netns.rs), while a writer scales a Deployment and writes ConfigMaps and two
//! clients call an App through the gateway. The real `skiff` binary: one server on its
//! redb store and three agents, each in a namespace of its own, on real sockets.
//!
//! The schedule is a function of the seed, which is printed; `SKIFF_CHAOS_SEED=N`
//! replays it (the faults, their order, targets and durations; the interleaving with
//! the cluster's own timing is the machine's). `SKIFF_CHAOS_SECS` changes the length.
//! A failed run keeps its data directory and every process's log (info level), and
//! prints where; `SKIFF_CHAOS_KEEP=1` keeps them for a run that passes too.
//! At most one agent is down or cut off at a time; the server is killed independently,
//! so its outages overlap the agents'.
//!
//! Afterwards, with everything back up, the test checks, each with a deadline:
//! - **No acknowledged write is lost.** Every write the API answered 2xx is there:
//!   a ConfigMap whose last acknowledged write got revision R is at R with that
//!   content, or at a later revision with the content of a write whose answer never
//!   came (it may have been applied); an acknowledged delete stays deleted; the
//!   Deployment's replicas are the last acknowledged scale's (or an unanswered later
//!   one's). The writer sends one write at a time: the revisions of its acknowledged
//!   ConfigMap writes (each sets a new value) strictly increase across the server's
//!   restarts, and those of its scales never go back (a scale to the replicas the
//!   Deployment has is a no-op and keeps its revision).
//! - Every Deployment (the scaled one and the App's) has its desired replicas, all
//!   updated, ready and available.
//! - No pod is left Terminating.
//! - **No module is fetched more than once per node.** Before the chaos, one pod of
//!   each module runs on each node, so each node fetches each module once; the server
//!   counts the module downloads it serves to each node
//!   (`skiff_node_module_downloads_total`). The test reads the counter from every
//!   server process just before killing it and at the end; the sum per node must stay
//!   at the two fetches of the warm-up, across agent restarts and partitions.
//! - **The App served every request that arrived while a replica was reachable.**
//!   - A request *arrived* if it was sent to a gateway whose server process was
//!     running from before it was sent until after it was answered or failed, and its
//!     connection was not refused. A request whose connection was refused (no process
//!     listening yet, or none at all) or that overlapped a kill of the server did not
//!     arrive.
//!   - A replica was *reachable* during a request sent at S and finished at E if its
//!     pod was seen Ready and not terminating on node N in a pod list the API returned
//!     before S and again in one it was asked for after E, and throughout
//!     [S - SETTLE, E] node N's agent process was running and its link was up. SETTLE
//!     (10 s) is the time an agent is given after its restart or a healed partition to
//!     reopen its tunnel and restart its pods. None is given after a restart of the
//!     server: the gateway waits for the agents' tunnels to come back.
//!   - Such a request must be answered 200 by the app (its body says `hello from
//!     skiff`), within the client's 60 s timeout. At least 100 requests must have
//!     been held to this, so the check cannot pass empty.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::netns::Topology;
use common::{Api, Process, eventually, workload};
use serde_json::{Value, json};

const AGENTS: usize = 3;
const NS: &str = "/api/v1/namespaces/default";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
/// Convergence deadlines after the chaos: generous for a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(120);
/// See the module comment: how long an agent gets to recover before its replicas
/// count as reachable.
const SETTLE: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The label of the ConfigMaps the writer creates.
const WRITTEN: &str = "chaos=write";

/// SplitMix64: the schedule's and the writer's choices, from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration in [lo, hi] milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What the schedule does at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    KillAgent(usize),
    StartAgent(usize),
    CutAgent(usize),
    HealAgent(usize),
    KillServer,
    StartServer,
}

/// The faults of a run: (offset from the start of the chaos, action), in order.
fn schedule(seed: u64, chaos: Duration) -> Vec<(Duration, Action)> {
    let mut rng = Rng(seed);
    let mut plan = Vec::new();
    // Agents: one fault at a time, a kill (down 0.3-3 s) or a partition (3-9 s).
    let mut t = rng.millis(1_000, 3_000);
    while t < chaos {
        let agent = rng.below(AGENTS as u64) as usize;
        if rng.below(2) == 0 {
            let down = rng.millis(300, 3_000);
            plan.push((t, Action::KillAgent(agent)));
            plan.push((t + down, Action::StartAgent(agent)));
            t += down;
        } else {
            let cut = rng.millis(3_000, 9_000);
            plan.push((t, Action::CutAgent(agent)));
            plan.push((t + cut, Action::HealAgent(agent)));
            t += cut;
        }
        t += rng.millis(1_000, 4_000);
    }
    // The server: killed every 12-25 s, down 0.3-2 s.
    let mut t = rng.millis(8_000, 15_000);
    while t < chaos {
        let down = rng.millis(300, 2_000);
        plan.push((t, Action::KillServer));
        plan.push((t + down, Action::StartServer));
        t += down + rng.millis(12_000, 25_000);
    }
    plan.sort_by_key(|(at, _)| *at);
    plan
}

/// When something was up: [start, end), end None while it still is.
type Spans = Vec<(Instant, Option<Instant>)>;

fn covers(spans: &Spans, from: Instant, to: Instant) -> bool {
    spans
        .iter()
        .any(|(start, end)| *start <= from && end.is_none_or(|e| e >= to))
}

/// What was up when, as the driver made it so.
#[derive(Default)]
struct Timeline {
    server: Spans,
    agents: Vec<Spans>,
    links: Vec<Spans>,
}

fn end_last(spans: &mut Spans, at: Instant) {
    if let Some((_, end @ None)) = spans.last_mut() {
        *end = Some(at);
    }
}

/// The processes; killed before the namespaces they run in go.
#[derive(Default)]
struct Processes {
    server: Option<Process>,
    agents: Vec<Option<Process>>,
}

/// The test's world: where everything lives and how to start it.
struct World {
    topology: Topology,
    dir: PathBuf,
    logs: PathBuf,
    /// The join token and an admin client, once the first server wrote them.
    token: std::sync::OnceLock<String>,
    api: std::sync::OnceLock<Api>,
    gateway: String,
    timeline: Mutex<Timeline>,
    processes: Mutex<Processes>,
    /// Module downloads per node, summed over the server processes so far.
    downloads: Mutex<BTreeMap<String, f64>>,
    incarnations: Mutex<usize>,
    agent_starts: Mutex<Vec<usize>>,
}

impl World {
    fn api(&self) -> &Api {
        self.api.get().expect("the admin client")
    }

    fn server_args(&self) -> Vec<String> {
        let data = self.dir.join("server");
        let mut args: Vec<String> = [
            "server",
            "--listen",
            "0.0.0.0:6443",
            "--gateway",
            "0.0.0.0:8080",
            "--node-monitor-grace",
            "3s",
            "--default-toleration-seconds",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for ip in std::iter::once(&self.topology.test_link.server_ip)
            .chain(self.topology.agents.iter().map(|(_, l)| &l.server_ip))
        {
            args.extend(["--tls-san".to_string(), ip.clone()]);
        }
        args
    }

    /// Starts the server (blocking until its `api:` line) and records it up.
    fn start_server(&self) {
        let n = {
            let mut n = self.incarnations.lock().unwrap();
            *n += 1;
            *n
        };
        let args = self.server_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Up from its start: a connection its listener accepted, even before the
        // `api:` line, arrived.
        let spawned = Instant::now();
        let (server, _) = Process::start_in_logged(
            Some(&self.topology.server_ns),
            &refs,
            "api:",
            "info",
            &self.logs.join(format!("server-{n}.log")),
        );
        self.processes.lock().unwrap().server = Some(server);
        self.timeline.lock().unwrap().server.push((spawned, None));
    }

    fn kill_server(&self) {
        let server = self.processes.lock().unwrap().server.take();
        if let Some(server) = server {
            end_last(&mut self.timeline.lock().unwrap().server, Instant::now());
            server.kill9();
        }
    }

    fn start_agent(&self, i: usize, join: bool) {
        let n = {
            let mut starts = self.agent_starts.lock().unwrap();
            starts[i] += 1;
            starts[i]
        };
        let (ns, link) = &self.topology.agents[i];
        let data = self.dir.join(format!("edge-{i}"));
        let server = format!("https://{}:6443", link.server_ip);
        let name = format!("edge-{i}");
        let mut args = vec![
            "agent",
            "--server",
            &server,
            "--name",
            &name,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--lease-interval",
            "500ms",
        ];
        if join {
            args.extend([
                "--token",
                self.token.get().expect("the server's join token"),
            ]);
        }
        let spawned = Instant::now();
        let (agent, _) = Process::start_in_logged(
            Some(ns),
            &args,
            "agent:",
            "info",
            &self.logs.join(format!("edge-{i}-{n}.log")),
        );
        self.processes.lock().unwrap().agents[i] = Some(agent);
        self.timeline.lock().unwrap().agents[i].push((spawned, None));
    }

    fn kill_agent(&self, i: usize) {
        let agent = self.processes.lock().unwrap().agents[i].take();
        if let Some(agent) = agent {
            end_last(&mut self.timeline.lock().unwrap().agents[i], Instant::now());
            agent.kill9();
        }
    }

    fn set_link(&self, i: usize, up: bool) {
        let now = Instant::now();
        {
            let mut timeline = self.timeline.lock().unwrap();
            if up {
                timeline.links[i].push((now, None));
            } else {
                end_last(&mut timeline.links[i], now);
            }
        }
        self.topology.set_agent_link(i, up);
    }

    /// Reads the module downloads the running server counted, per node, and adds
    /// them to the totals (before it is killed, and at the end).
    async fn collect_downloads(&self) -> BTreeMap<String, f64> {
        let counted = downloads_now(self.api()).await;
        let mut totals = self.downloads.lock().unwrap();
        for (node, n) in &counted {
            *totals.entry(node.clone()).or_default() += n;
        }
        counted
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The processes go before their namespaces (Topology's own drop, after this).
        let mut processes = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(server) = processes.server.take() {
            server.kill9();
        }
        for agent in processes.agents.iter_mut() {
            if let Some(agent) = agent.take() {
                agent.kill9();
            }
        }
    }
}

/// `skiff_node_module_downloads_total` of the running server, per node.
async fn downloads_now(api: &Api) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let sent = api
            .http
            .get(format!("{}/metrics", api.base))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if let Ok(resp) = sent
            && resp.status() == 200
            && let Ok(text) = resp.text().await
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the server's /metrics did not answer within 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("skiff_node_module_downloads_total{node=\"")?;
            let (node, value) = rest.split_once("\"} ")?;
            Some((node.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Keeps the data and logs of a failed run (of every run with `SKIFF_CHAOS_KEEP`
/// set), and says where.
struct KeepOnPanic(Option<tempfile::TempDir>);

impl Drop for KeepOnPanic {
    fn drop(&mut self) {
        if (std::thread::panicking() || std::env::var_os("SKIFF_CHAOS_KEEP").is_some())
            && let Some(dir) = self.0.take()
        {
            let path = dir.keep();
            eprintln!(
                "chaos: the run's logs and data are kept in {}",
                path.display()
            );
        }
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running"
        && pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

// ---------------------------------------------------------------------------------
// The writer: records what the API acknowledged.

/// How a write ended.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    /// 2xx, with the resourceVersion the API gave the object.
    Acked(u64),
    /// 2xx to a delete.
    Deleted,
    /// Never connected, or a 4xx: not applied.
    Refused(String),
    /// Any other failure: it may or may not have been applied.
    Unknown(String),
}

/// One write to one object: the content it sets (None: a delete) and its answer.
#[derive(Debug, Clone)]
struct Write {
    value: Option<String>,
    answer: Answer,
}

#[derive(Default)]
struct Writes {
    /// By object: `cm/NAME` or `deploy/tick`.
    objects: BTreeMap<String, Vec<Write>>,
    /// The revisions of the acknowledged writes that changed their object (ConfigMap
    /// creates and updates: each sets a new value), in the order acknowledged.
    revisions: Vec<(String, u64)>,
    /// Violations seen while writing (an acknowledged object missing).
    lost: Vec<String>,
}

async fn send_write(req: reqwest::RequestBuilder, deleting: bool) -> Answer {
    match req.timeout(WRITE_TIMEOUT).send().await {
        Err(e) if e.is_connect() => Answer::Refused(format!("connect: {e}")),
        Err(e) => Answer::Unknown(format!("{e}")),
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body: Value = match resp.bytes().await {
                Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                Err(e) => return Answer::Unknown(format!("{code}, body lost: {e}")),
            };
            match code {
                200..=299 if deleting => Answer::Deleted,
                200..=299 => match body["metadata"]["resourceVersion"]
                    .as_str()
                    .and_then(|rv| rv.parse().ok())
                {
                    Some(rv) => Answer::Acked(rv),
                    None => Answer::Unknown(format!("{code} without a resourceVersion: {body}")),
                },
                400..=499 => Answer::Refused(format!("{code}: {}", body["message"])),
                _ => Answer::Unknown(format!("{code}: {body}")),
            }
        }
    }
}

/// Scales `tick`, creates, updates and deletes ConfigMaps, one write at a time, until
/// `stop`.
async fn writer(api: Api, seed: u64, stop: Arc<AtomicBool>, writes: Arc<Mutex<Writes>>) {
    let mut rng = Rng(seed ^ 0x5eed_0f77_17e5);
    let mut counter = 0u64;
    // ConfigMaps whose create was acknowledged and that no unanswered write may have
    // deleted: the ones updates and deletes pick from.
    let mut live: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let value = counter.to_string();
        let roll = rng.below(100);
        let (key, write) = if roll < 30 {
            let replicas = 1 + rng.below(6);
            let req = api
                .http
                .patch(format!("{}{DEPLOYMENTS}/tick/scale", api.base))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"spec": {"replicas": replicas}}).to_string());
            let answer = send_write(req, false).await;
            (
                "deploy/tick".to_string(),
                Write {
                    value: Some(replicas.to_string()),
                    answer,
                },
            )
        } else if roll < 65 || live.is_empty() {
            let name = format!("w{counter}");
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "labels": {"chaos": "write"}},
                "data": {"v": value}});
            let req = api
                .http
                .post(format!("{}{NS}/configmaps", api.base))
                .json(&body);
            let answer = send_write(req, false).await;
            if matches!(answer, Answer::Acked(_)) {
                live.push(name.clone());
            }
            (
                format!("cm/{name}"),
                Write {
                    value: Some(value),
                    answer,
                },
            )
        } else if roll < 90 {
            let name = live[rng.below(live.len() as u64) as usize].clone();
            let req = api
                .http
                .patch(format!("{}{NS}/configmaps/{name}", api.base))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"data": {"v": value}}).to_string());
            let answer = send_write(req, false).await;
            (
                format!("cm/{name}"),
                Write {
                    value: Some(value),
                    answer,
                },
            )
        } else {
            let name = live.swap_remove(rng.below(live.len() as u64) as usize);
            let req = api
                .http
                .delete(format!("{}{NS}/configmaps/{name}", api.base));
            let answer = send_write(req, true).await;
            (
                format!("cm/{name}"),
                Write {
                    value: None,
                    answer,
                },
            )
        };
        {
            let mut writes = writes.lock().unwrap();
            // A scale to the replicas the Deployment has is a no-op, answered with the
            // revision it has; every ConfigMap write sets a new value.
            if let Answer::Acked(rv) = write.answer
                && key.starts_with("cm/")
            {
                writes.revisions.push((key.clone(), rv));
            }
            // A 404 to an update or delete of a ConfigMap whose create was acknowledged
            // and that nothing deleted since: the create was lost.
            if let Answer::Refused(why) = &write.answer
                && why.starts_with("404")
                && key.starts_with("cm/")
            {
                writes
                    .lost
                    .push(format!("{key}: an acknowledged object answered {why}"));
            }
            writes.objects.entry(key).or_default().push(write);
        }
        tokio::time::sleep(rng.millis(50, 250)).await;
    }
}

/// Checks the final state of every written object against what was acknowledged.
async fn check_writes(api: &Api, writes: &Writes) -> Vec<String> {
    let mut problems = writes.lost.clone();
    for pair in writes.revisions.windows(2) {
        if pair[1].1 <= pair[0].1 {
            problems.push(format!(
                "revisions went backwards: {} was acknowledged at {} after {} at {}",
                pair[1].0, pair[1].1, pair[0].0, pair[0].1
            ));
        }
    }
    let (code, list) = api
        .get(&format!("{NS}/configmaps?labelSelector={WRITTEN}"))
        .await;
    assert_eq!(code, 200, "{list}");
    let stored: BTreeMap<String, (u64, String)> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cm| {
            (
                format!("cm/{}", cm["metadata"]["name"].as_str().unwrap()),
                (
                    common::rv(cm),
                    cm["data"]["v"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect();
    let (code, deployment) = api.get(&format!("{DEPLOYMENTS}/tick")).await;
    assert_eq!(code, 200, "{deployment}");
    let tick = (
        common::rv(&deployment),
        deployment["spec"]["replicas"].to_string(),
    );
    for (key, history) in &writes.objects {
        let acked: Vec<u64> = history
            .iter()
            .filter_map(|w| match w.answer {
                Answer::Acked(rv) => Some(rv),
                _ => None,
            })
            .collect();
        if acked.windows(2).any(|p| p[1] < p[0]) {
            problems.push(format!("{key}: revisions went backwards: {acked:?}"));
        }
        let last_acked = history.iter().rposition(|w| {
            matches!(w.answer, Answer::Acked(_)) || matches!(w.answer, Answer::Deleted)
        });
        let Some(k) = last_acked else { continue };
        // What an unanswered write may have left instead.
        let unknown: Vec<&Option<String>> = history
            .iter()
            .filter(|w| matches!(w.answer, Answer::Unknown(_)))
            .map(|w| &w.value)
            .collect();
        let now = if key == "deploy/tick" {
            Some(&tick)
        } else {
            stored.get(key)
        };
        match (&history[k].answer, now) {
            (Answer::Deleted, None) => {}
            // Nothing writes a ConfigMap after its delete (each create has a new name).
            (Answer::Deleted, Some((rv, v))) => problems.push(format!(
                "{key}: deleted (acknowledged), yet there at {rv} with {v:?}"
            )),
            (Answer::Acked(rv), None) => {
                if !unknown.contains(&&None) {
                    problems.push(format!("{key}: acknowledged at {rv}, and gone"));
                }
            }
            (Answer::Acked(acked), Some((rv, v))) => {
                let expected = history[k].value.clone().unwrap();
                let fine = if key == "deploy/tick" {
                    // The controllers write the Deployment too: only its spec is ours.
                    rv >= acked && (*v == expected || unknown.contains(&&Some(v.clone())))
                } else if rv == acked {
                    *v == expected
                } else {
                    rv > acked && unknown.contains(&&Some(v.clone()))
                };
                if !fine {
                    problems.push(format!(
                        "{key}: acknowledged at {acked} with {expected:?}, found at {rv} with {v:?} (history {history:?})"
                    ));
                }
            }
            _ => unreachable!("k is an acknowledged write"),
        }
    }
    problems
}

// ---------------------------------------------------------------------------------
// Traffic and what the API said about the App's pods.

#[derive(Debug)]
enum Outcome {
    Served,
    /// No process listened: the request did not arrive.
    Refused,
    Failed(String),
}

#[derive(Debug)]
struct Request {
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

/// Calls `url` until `stop`, a new connection each time (so a connection to a killed
/// server is never reused), about 20 times a second.
async fn client(url: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Request>>>) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let outcome = match http.get(&url).send().await {
            Err(e) if e.is_connect() => Outcome::Refused,
            Err(e) => Outcome::Failed(format!("{e:?}")),
            Ok(resp) => {
                let code = resp.status().as_u16();
                match resp.text().await {
                    Ok(body) if code == 200 && body.starts_with("hello from skiff") => {
                        Outcome::Served
                    }
                    Ok(body) => Outcome::Failed(format!("{code}: {}", body.trim())),
                    Err(e) => Outcome::Failed(format!("{code}, body lost: {e:?}")),
                }
            }
        };
        let done = Instant::now();
        log.lock().unwrap().push(Request {
            sent,
            done,
            outcome,
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One list of the App's pods: when it was asked for and answered, and the ready
/// replicas in it (pod, node).
struct Snapshot {
    asked: Instant,
    answered: Instant,
    ready: Vec<(String, String)>,
}

/// Lists the App's pods about four times a second until `stop`.
async fn observer(api: Api, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Snapshot>>>) {
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let sent = api
            .http
            .get(format!(
                "{}{NS}/pods?labelSelector=app.skiff.dev/name=hello",
                api.base
            ))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(resp) = sent
            && resp.status() == 200
            && let Ok(list) = resp.json::<Value>().await
        {
            let ready = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| is_ready(p))
                .map(|p| {
                    (
                        p["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        p["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect();
            log.lock().unwrap().push(Snapshot {
                asked,
                answered: Instant::now(),
                ready,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether a replica was reachable throughout `req` (see the module comment).
fn reachable(req: &Request, timeline: &Timeline, snapshots: &[Snapshot]) -> bool {
    let Some(from) = req.sent.checked_sub(SETTLE) else {
        return false;
    };
    if !covers(&timeline.server, req.sent, req.done) {
        return false;
    }
    let before: Vec<&Snapshot> = snapshots
        .iter()
        .filter(|s| s.answered <= req.sent)
        .collect();
    let after: Vec<&Snapshot> = snapshots.iter().filter(|s| s.asked >= req.done).collect();
    (0..AGENTS).any(|i| {
        let node = format!("edge-{i}");
        covers(&timeline.agents[i], from, req.done)
            && covers(&timeline.links[i], from, req.done)
            && before.iter().any(|b| {
                b.ready.iter().any(|(pod, n)| {
                    *n == node
                        && after
                            .iter()
                            .any(|a| a.ready.iter().any(|(p, n)| p == pod && *n == node))
                })
            })
    })
}

// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_loses_no_write_strands_no_pod_and_drops_no_request() {
    let seed = std::env::var("SKIFF_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let chaos = Duration::from_secs(
        std::env::var("SKIFF_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(90),
    );
    eprintln!("chaos: seed {seed} (replay with SKIFF_CHAOS_SEED={seed}), {chaos:?} of chaos");
    let plan = schedule(seed, chaos);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let _keep = KeepOnPanic(Some(tmp));
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let topology = Topology::new(AGENTS);
    let server_ip = topology.test_link.server_ip.clone();
    let gateway = format!("http://{server_ip}:8080/default/hello/");
    let world = Arc::new(World {
        topology,
        dir: dir.clone(),
        logs,
        token: Default::default(),
        api: Default::default(),
        gateway,
        timeline: Mutex::new(Timeline {
            server: Vec::new(),
            agents: vec![Vec::new(); AGENTS],
            links: vec![vec![(Instant::now(), None)]; AGENTS],
        }),
        processes: Mutex::new(Processes {
            server: None,
            agents: (0..AGENTS).map(|_| None).collect(),
        }),
        downloads: Mutex::default(),
        incarnations: Mutex::new(0),
        agent_starts: Mutex::new(vec![0; AGENTS]),
    });

    // The server, and an admin client from the test's namespace.
    {
        let w = world.clone();
        tokio::task::spawn_blocking(move || w.start_server())
            .await
            .unwrap();
    }
    let server_dir = dir.join("server");
    let ca = std::fs::read(server_dir.join("tls/ca.crt")).unwrap();
    let ca = base64::engine::general_purpose::STANDARD.encode(ca);
    let admin = std::fs::read_to_string(server_dir.join("admin-token")).unwrap();
    let api = Api::with_token(
        &format!("https://{server_ip}:6443"),
        Some(&ca),
        admin.trim(),
    );
    let token = std::fs::read_to_string(server_dir.join("node-token")).unwrap();
    world.token.set(token.trim().to_string()).unwrap();
    world
        .api
        .set(api.clone())
        .unwrap_or_else(|_| unreachable!());
    let api = &api;
    {
        let w = world.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..AGENTS {
                w.start_agent(i, true);
            }
        })
        .await
        .unwrap();
    }
    eventually("every node Ready", WAIT, || async move {
        let (_, nodes) = api.get("/api/v1/nodes").await;
        let ready = nodes["items"]
            .as_array()?
            .iter()
            .filter(|n| node_ready(n))
            .count();
        (ready == AGENTS).then_some(())
    })
    .await;

    // Warm-up: one pod of each module on each node, so each node fetches each once.
    let ticker = api.upload(workload("ticker.wasm")).await;
    let hello = api.upload(workload("http-hello.wasm")).await;
    for i in 0..AGENTS {
        for (what, image, args) in [
            ("tick", &ticker, json!(["100ms"])),
            ("hello", &hello, json!([])),
        ] {
            let pod = json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("warm-{what}-{i}")},
                "spec": {"nodeName": format!("edge-{i}"),
                    "containers": [{"name": "main", "image": image, "args": args}]}});
            let (code, body) = api.post(&format!("{NS}/pods"), &pod).await;
            assert_eq!(code, 201, "{body}");
        }
    }
    let warm = eventually("every node fetched both modules", WAIT, || async move {
        let counted = downloads_now(api).await;
        (0..AGENTS)
            .all(|i| counted.get(&format!("edge-{i}")) == Some(&2.0))
            .then_some(counted)
    })
    .await;
    eprintln!("chaos: module downloads after the warm-up: {warm:?}");
    for i in 0..AGENTS {
        for what in ["tick", "hello"] {
            let (code, body) = api
                .delete(&format!("{NS}/pods/warm-{what}-{i}"), None)
                .await;
            assert_eq!(code, 200, "{body}");
        }
    }
    eventually("the warm-up pods gone", WAIT, || async move {
        let (_, pods) = api.get(&format!("{NS}/pods")).await;
        (pods["items"].as_array()?.is_empty()).then_some(())
    })
    .await;

    // The workloads: a Deployment the writer scales, and an App with a replica per node.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "tick"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "tick"}},
            "template": {"metadata": {"labels": {"app": "tick"}}, "spec": {"containers": [
                {"name": "main", "image": ticker, "args": ["100ms"]}]}}}});
    let (code, body) = api.post(DEPLOYMENTS, &deployment).await;
    assert_eq!(code, 201, "{body}");
    let app = json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": "hello"},
        "spec": {"module": hello, "replicas": 3}});
    let (code, body) = api
        .post("/apis/skiff.dev/v1/namespaces/default/apps", &app)
        .await;
    assert_eq!(code, 201, "{body}");
    settled(api).await.expect("the workloads start");
    let http = reqwest::Client::new();
    let body = http
        .get(&world.gateway)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.starts_with("hello from skiff"), "{body}");

    // The chaos, with the writer, the clients and the observer running through it.
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(Mutex::new(Writes::default()));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let snapshots = Arc::new(Mutex::new(Vec::new()));
    let writer = tokio::spawn(writer(api.clone(), seed, stop.clone(), writes.clone()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(client(
                world.gateway.clone(),
                stop.clone(),
                requests.clone(),
            ))
        })
        .collect();
    let observer_stop = Arc::new(AtomicBool::new(false));
    let observer = tokio::spawn(observer(
        api.clone(),
        observer_stop.clone(),
        snapshots.clone(),
    ));
    let started = tokio::time::Instant::now();
    let mut down_agent: Option<usize> = None;
    let mut cut_agent: Option<usize> = None;
    let mut server_down = false;
    for (at, action) in &plan {
        if *at >= chaos {
            break;
        }
        tokio::time::sleep_until(started + *at).await;
        eprintln!(
            "chaos: {:>6.1}s {action:?}",
            started.elapsed().as_secs_f64()
        );
        let w = world.clone();
        match *action {
            Action::KillAgent(i) => {
                down_agent = Some(i);
                w.kill_agent(i);
            }
            Action::StartAgent(i) => {
                down_agent = None;
                tokio::task::spawn_blocking(move || w.start_agent(i, false))
                    .await
                    .unwrap();
            }
            Action::CutAgent(i) => {
                cut_agent = Some(i);
                w.set_link(i, false);
            }
            Action::HealAgent(i) => {
                cut_agent = None;
                w.set_link(i, true);
            }
            Action::KillServer => {
                server_down = true;
                w.collect_downloads().await;
                w.kill_server();
            }
            Action::StartServer => {
                server_down = false;
                tokio::task::spawn_blocking(move || w.start_server())
                    .await
                    .unwrap();
            }
        }
    }
    tokio::time::sleep_until(started + chaos).await;
    // Everything back up.
    stop.store(true, Ordering::Relaxed);
    if let Some(i) = cut_agent {
        world.set_link(i, true);
    }
    {
        let w = world.clone();
        tokio::task::spawn_blocking(move || {
            if server_down {
                w.start_server();
            }
            if let Some(i) = down_agent {
                w.start_agent(i, false);
            }
        })
        .await
        .unwrap();
    }
    eprintln!(
        "chaos: over after {:.1}s; everything is up again",
        started.elapsed().as_secs_f64()
    );
    writer.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // One more list of the App's pods after the last request.
    let after_last = Instant::now();
    eventually("a list of the App's pods after the traffic", WAIT, || {
        let snapshots = snapshots.clone();
        async move {
            snapshots
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.asked >= after_last)
                .then_some(())
        }
    })
    .await;
    observer_stop.store(true, Ordering::Relaxed);
    observer.await.unwrap();

    // 1. No acknowledged write is lost.
    let writes = std::mem::take(&mut *writes.lock().unwrap());
    let acked = writes
        .objects
        .values()
        .flatten()
        .filter(|w| matches!(w.answer, Answer::Acked(_) | Answer::Deleted))
        .count();
    let unknown = writes
        .objects
        .values()
        .flatten()
        .filter(|w| matches!(w.answer, Answer::Unknown(_)))
        .count();
    eprintln!("chaos: {acked} writes acknowledged, {unknown} unanswered");
    let mut failures = check_writes(api, &writes).await;
    if acked < 50 {
        failures.push(format!("only {acked} writes were acknowledged"));
    }

    // 2. Every Deployment reaches its desired replicas, available; 3. no pod is left
    // Terminating.
    if let Err(e) = settled(api).await {
        failures.push(format!("the cluster did not settle: {e}"));
    }

    // 4. No module is fetched more than once per node.
    world.collect_downloads().await;
    let downloads = world.downloads.lock().unwrap().clone();
    if downloads != warm {
        failures.push(format!(
            "module downloads per node, over every server process: {downloads:?}; the warm-up fetched each module once per node: {warm:?}"
        ));
    }

    // 5. The App served every request that arrived while a replica was reachable.
    let requests = std::mem::take(&mut *requests.lock().unwrap());
    let snapshots = std::mem::take(&mut *snapshots.lock().unwrap());
    let timeline = world.timeline.lock().unwrap();
    let mut held = 0;
    let mut served = 0;
    let mut refused = 0;
    // Failures the check does not hold against the App: the request overlapped a kill
    // of the server, or no replica was reachable.
    let (mut overlapped, mut unreachable) = (0, 0);
    let mut dropped = Vec::new();
    let t0 = started.into_std();
    for r in &requests {
        match &r.outcome {
            Outcome::Served => served += 1,
            Outcome::Refused => refused += 1,
            Outcome::Failed(_) => {}
        }
        if matches!(r.outcome, Outcome::Refused) || !reachable(r, &timeline, &snapshots) {
            if let Outcome::Failed(why) = &r.outcome {
                if covers(&timeline.server, r.sent, r.done) {
                    unreachable += 1;
                    if unreachable <= 10 {
                        eprintln!(
                            "chaos: no replica reachable: sent at {:.1}s, failed after {:.1}s: {}",
                            r.sent.duration_since(t0).as_secs_f64(),
                            r.done.duration_since(r.sent).as_secs_f64(),
                            why.chars().take(300).collect::<String>()
                        );
                    }
                } else {
                    overlapped += 1;
                }
            }
            continue;
        }
        held += 1;
        if let Outcome::Failed(why) = &r.outcome {
            dropped.push(format!(
                "sent at {:.1}s, failed after {:.1}s: {why}",
                r.sent.duration_since(t0).as_secs_f64(),
                r.done.duration_since(r.sent).as_secs_f64()
            ));
        }
    }
    eprintln!(
        "chaos: {} requests: {served} served, {refused} refused (server down), {overlapped} failed across a server kill, {unreachable} failed with no replica reachable; {held} sent while a replica was reachable, {} of those failed",
        requests.len(),
        dropped.len()
    );
    if !dropped.is_empty() {
        failures.push(format!(
            "{} requests failed while a replica was reachable: {dropped:#?}",
            dropped.len()
        ));
    }
    if held < 100 {
        failures.push(format!(
            "only {held} requests were sent while a replica was reachable"
        ));
    }
    assert!(
        failures.is_empty(),
        "chaos (seed {seed}) broke what it must not: {failures:#?}"
    );
}

/// Waits until every Deployment has its desired replicas, all updated, ready and
/// available, every pod runs and is ready, and none is Terminating; or says what was
/// still not so at the deadline.
async fn settled(api: &Api) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let unsettled = unsettled(api).await;
        if unsettled.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("after {WAIT:?}: {unsettled:#?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What keeps the cluster from being settled (see `settled`).
async fn unsettled(api: &Api) -> Vec<String> {
    let mut out = Vec::new();
    let (code, list) = api.get(DEPLOYMENTS).await;
    if code != 200 {
        return vec![format!("listing Deployments: {code}")];
    }
    for d in list["items"].as_array().into_iter().flatten() {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let s = &d["status"];
        let at = |f: &str| s[f].as_i64().unwrap_or(0);
        let have = [
            at("replicas"),
            at("updatedReplicas"),
            at("readyReplicas"),
            at("availableReplicas"),
        ];
        if d["metadata"]["generation"] != s["observedGeneration"] || have != [want; 4] {
            out.push(format!(
                "Deployment {name}: wants {want}; replicas, updated, ready, available: {have:?}"
            ));
        }
    }
    let (code, pods) = api.get(&format!("{NS}/pods")).await;
    if code != 200 {
        out.push(format!("listing pods: {code}"));
        return out;
    }
    for p in pods["items"].as_array().into_iter().flatten() {
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let node = p["spec"]["nodeName"].as_str().unwrap_or("none");
        if !p["metadata"]["deletionTimestamp"].is_null() {
            out.push(format!("pod {name} on {node} is Terminating"));
        } else if !is_ready(p) {
            out.push(format!(
                "pod {name} on {node} is {} and not ready",
                p["status"]["phase"]
            ));
        }
    }
    out
}

#[test]
fn the_schedule_is_a_function_of_the_seed() {
    let chaos = Duration::from_secs(90);
    assert_eq!(schedule(7, chaos), schedule(7, chaos));
    assert_ne!(schedule(7, chaos), schedule(8, chaos));
    let plan = schedule(7, chaos);
    // At most one agent is disturbed at a time, and every fault is undone.
    let mut disturbed: Option<usize> = None;
    let mut server_down = false;
    for (_, action) in &plan {
        match *action {
            Action::KillAgent(i) | Action::CutAgent(i) => {
                assert_eq!(disturbed, None, "{plan:?}");
                disturbed = Some(i);
            }
            Action::StartAgent(i) | Action::HealAgent(i) => {
                assert_eq!(disturbed, Some(i), "{plan:?}");
                disturbed = None;
            }
            Action::KillServer => {
                assert!(!server_down);
                server_down = true;
            }
            Action::StartServer => {
                assert!(server_down);
                server_down = false;
            }
        }
    }
    assert!(plan.iter().any(|(_, a)| *a == Action::KillServer));
}
