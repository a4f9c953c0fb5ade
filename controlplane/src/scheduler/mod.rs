//! The scheduler: binds pods that have no node to the node that fits them best.
//!
//! Level-based: each pass reads the watch-backed caches of nodes and pods, works out
//! what every node has left, and places each pending pod (filter, then score). A pod
//! that fits nowhere gets `PodScheduled=False` with the counted reasons and a
//! FailedScheduling event, and is retried with back-off, or at once when a node changes.
//! Binding is compare-and-swap, so two schedulers can never both bind a pod.

pub(crate) mod filter;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::apiserver::{bind_pod, internal, record_event};
use crate::informer::{Cache, CacheEvent, Informers};
use crate::objects;
use crate::state::ApiServer;
use filter::{NodeInfo, PodInfo, Resources, nonzero_requests, pod_requests};

const SCHEDULER_NAME: &str = "default-scheduler";
/// Back-off for a pod that fits nowhere: it doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// When an unschedulable pod may be tried again.
struct Backoff {
    attempts: u32,
    not_before: Instant,
}

/// Schedules until `stop`, reading the nodes and pods caches of `informers`.
pub async fn run_scheduler(
    api: Arc<ApiServer>,
    informers: Arc<Informers>,
    stop: CancellationToken,
) {
    let nodes = informers.cache("", "nodes");
    let pods = informers.cache("", "pods");
    let mut node_changes = nodes.subscribe();
    let mut pod_events = pods.events();
    let (results_tx, mut results) = mpsc::unbounded_channel::<BindResult>();
    let mut state = State {
        backoff: HashMap::new(),
        assumed: HashMap::new(),
        facts: Facts::default(),
        binds: Arc::new(Semaphore::new(BIND_CONCURRENCY)),
        results: results_tx,
        claims: informers.cache("", "persistentvolumeclaims"),
        volumes: informers.cache("", "persistentvolumes"),
    };
    // Both caches must have listed before the first pass; a store that lists over the
    // network (etcd) syncs them at different moments.
    let mut pod_changes = pods.subscribe();
    while !(nodes.is_synced() && pods.is_synced()) {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = node_changes.changed() => {}
            _ = pod_changes.changed() => {}
        }
    }
    drop(pod_changes);
    let mut pass_needed = true;
    loop {
        if pass_needed && nodes.is_synced() && pods.is_synced() {
            schedule_pass(&api, &nodes, &pods, &mut state).await;
            pass_needed = false;
        }
        let next_retry = state.backoff.values().map(|b| b.not_before).min();
        tokio::select! {
            _ = stop.cancelled() => break,
            Some((key, _node, ok)) = results.recv() => {
                if ok {
                    state.backoff.remove(&key);
                } else {
                    // Lost a race or failed: forget the placement and retry later.
                    state.assumed.remove(&key);
                    delay(&mut state.backoff, key);
                    pass_needed = true;
                }
            }
            _ = node_changes.changed() => {
                // A changed node may fit what fitted nowhere: retry everything now.
                state.backoff.values_mut().for_each(|b| b.not_before = Instant::now());
                pass_needed = true;
            }
            event = pod_events.recv() => match event {
                // Only a pending pod, or resources freed while some pod waits, needs a
                // pass: status writes of running pods (most changes) don't.
                Ok(CacheEvent::Changed { object, .. }) => {
                    let pending = node_of(&object).is_none() && !objects::is_deleting(&object) && !is_terminal(&object);
                    let freed = is_terminal(&object) || objects::is_deleting(&object);
                    pass_needed |= pending || (freed && !state.backoff.is_empty());
                }
                Ok(CacheEvent::Deleted(_)) => pass_needed |= !state.backoff.is_empty(),
                Ok(CacheEvent::Resynced) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => pass_needed = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(next_retry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into()), if next_retry.is_some() => {
                pass_needed = true;
            }
        }
    }
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.get("status")
            .and_then(|s| s.get("phase"))
            .and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(pod: &Value) -> Option<&str> {
    pod.get("spec")?
        .get("nodeName")?
        .as_str()
        .filter(|n| !n.is_empty())
}

fn owner_of(pod: &Value) -> Option<String> {
    pod.get("metadata")?
        .get("ownerReferences")?
        .get(0)?
        .get("uid")?
        .as_str()
        .map(str::to_string)
}

/// What a pass reads from each pod, derived once per version of the pod rather than
/// from its JSON on every pass: a pass looks at every pod in the cache, and walking
/// each one's JSON (status, node, uid, requests) made a pass over a few hundred pods
/// cost milliseconds, on the path from a pod's creation to its binding.
///
/// The cache replaces a pod's `Arc` whenever the pod changes and never mutates one in
/// place, so a version is known by its allocation's address. Each entry holds a `Weak`
/// of it, which keeps the address from being reused for another pod while the entry
/// lives, without keeping the pod itself alive.
#[derive(Default)]
struct Facts {
    by_version: HashMap<usize, PodFacts>,
    pass: u64,
}

struct PodFacts {
    _pin: std::sync::Weak<Value>,
    /// Succeeded or Failed: holds nothing on its node.
    terminal: bool,
    node: Option<String>,
    cost: Cost,
    /// The last pass that saw this version.
    seen: u64,
}

#[derive(Clone)]
struct Cost {
    requests: Resources,
    nonzero: Resources,
    owner: Option<String>,
}

impl Facts {
    fn of(&mut self, pod: &Arc<Value>) -> &PodFacts {
        let pass = self.pass;
        let facts = self
            .by_version
            .entry(Arc::as_ptr(pod) as usize)
            .or_insert_with(|| PodFacts {
                _pin: Arc::downgrade(pod),
                terminal: is_terminal(pod),
                node: node_of(pod).map(str::to_string),
                cost: Cost {
                    requests: pod_requests(pod),
                    nonzero: nonzero_requests(pod),
                    owner: owner_of(pod),
                },
                seen: pass,
            });
        facts.seen = pass;
        facts
    }

    /// Starts a pass; versions the previous one did not see (replaced or deleted pods)
    /// are forgotten.
    fn next_pass(&mut self) {
        let last = self.pass;
        self.by_version.retain(|_, f| f.seen == last);
        self.pass += 1;
    }
}

fn zone_of(node: &Value) -> Option<&str> {
    node.pointer("/metadata/labels")
        .and_then(|l| l.get(ZONE_LABEL))
        .and_then(Value::as_str)
}

/// What the pass knows about the cluster, kept current as it places pods: nodes parsed
/// once into typed form, and per-node sums indexed by position.
struct View {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Each node's zone, interned.
    zone: Vec<Option<u32>>,
    /// Requests bound to each node, for fitting.
    used: Vec<Resources>,
    /// The same with default requests filled in, for scoring.
    scored: Vec<Resources>,
    /// Where the next pod's search over nodes starts, so searches that stop early
    /// still cover every node in turn.
    next_start: usize,
    /// Owner uids, interned; pods per (owner, node) and (owner, zone), for spreading.
    owners: HashMap<String, u32>,
    owner_on_node: HashMap<(u32, usize), u32>,
    owner_in_zone: HashMap<(u32, u32), u32>,
}

impl View {
    fn build(nodes: &[Arc<Value>]) -> View {
        let mut zones: HashMap<String, u32> = HashMap::new();
        let mut zone = Vec::with_capacity(nodes.len());
        for n in nodes {
            zone.push(zone_of(n).map(|z| {
                let next = zones.len() as u32;
                *zones.entry(z.to_string()).or_insert(next)
            }));
        }
        let infos: Vec<NodeInfo> = nodes.iter().map(|n| NodeInfo::from_node(n)).collect();
        View {
            index: infos
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect(),
            used: vec![Resources::default(); infos.len()],
            scored: vec![Resources::default(); infos.len()],
            nodes: infos,
            zone,
            next_start: 0,
            owners: HashMap::new(),
            owner_on_node: HashMap::new(),
            owner_in_zone: HashMap::new(),
        }
    }

    fn owner_id(&mut self, owner: Option<&String>) -> Option<u32> {
        let uid = owner?;
        if let Some(id) = self.owners.get(uid) {
            return Some(*id);
        }
        let id = self.owners.len() as u32;
        self.owners.insert(uid.clone(), id);
        Some(id)
    }

    /// Counts a pod (bound, or placed this pass) on a node.
    fn account(
        &mut self,
        node: usize,
        requests: &Resources,
        nonzero: &Resources,
        owner: Option<u32>,
    ) {
        self.used[node].add(requests);
        self.scored[node].add(nonzero);
        if let Some(owner) = owner {
            *self.owner_on_node.entry((owner, node)).or_default() += 1;
            if let Some(z) = self.zone[node] {
                *self.owner_in_zone.entry((owner, z)).or_default() += 1;
            }
        }
    }

    fn account_pod(&mut self, cost: &Cost, node: &str) {
        if let Some(&i) = self.index.get(node) {
            let owner = self.owner_id(cost.owner.as_ref());
            self.account(i, &cost.requests, &cost.nonzero, owner);
        }
    }

    /// Least-allocated (0..100) minus spreading penalties for the pod's owner.
    fn score(&self, node: usize, nonzero: &Resources, owner: Option<u32>) -> f64 {
        let alloc = self.nodes[node].allocatable;
        let mut after = self.scored[node];
        after.add(nonzero);
        let free = |a: u64, u: u64| {
            if a == 0 {
                0.0
            } else {
                (a.saturating_sub(u)) as f64 / a as f64
            }
        };
        let least_allocated =
            50.0 * (free(alloc.cpu_milli, after.cpu_milli) + free(alloc.memory, after.memory));
        let (on_node, in_zone) = match owner {
            Some(owner) => (
                self.owner_on_node.get(&(owner, node)).copied().unwrap_or(0),
                self.zone[node]
                    .and_then(|z| self.owner_in_zone.get(&(owner, z)).copied())
                    .unwrap_or(0),
            ),
            None => (0, 0),
        };
        least_allocated - 20.0 * f64::from(on_node) - 10.0 * f64::from(in_zone)
    }
}

/// Points (on the 0..100 least-allocated scale) for a node that holds all of a pod's
/// images.
const IMAGE_LOCALITY_WEIGHT: f64 = 10.0;

/// How many feasible nodes to find before choosing, as Kubernetes'
/// percentageOfNodesToScore adapts it: all of a small cluster, a shrinking share of a
/// large one, never fewer than 100.
fn nodes_to_score(total: usize) -> usize {
    let percent = (50 - (total / 125) as i64).max(5) as usize;
    (total * percent / 100).max(100).min(total)
}

/// How long an assumed binding is trusted before the cache must confirm it.
const ASSUME_TTL: Duration = Duration::from_secs(30);

/// Bindings in flight at once: concurrent writes share the store's group commits.
const BIND_CONCURRENCY: usize = 64;

/// The outcome of one binding: pod key, node, success.
type BindResult = (String, String, bool);

/// Pods waiting in back-off now.
fn backing_off(backoff: &HashMap<String, Backoff>) -> usize {
    let now = Instant::now();
    backoff.values().filter(|b| b.not_before > now).count()
}

/// What the scheduler carries from pass to pass.
struct State {
    /// Pods that fit nowhere, and when to try them again.
    backoff: HashMap<String, Backoff>,
    /// Pods placed by this scheduler that the cache may not show bound yet (the
    /// "assumed" pods of Kubernetes' scheduler cache): counted on their node, never
    /// placed twice.
    assumed: HashMap<String, (String, Instant)>,
    facts: Facts,
    /// Bindings in flight, bounded.
    binds: Arc<Semaphore>,
    results: mpsc::UnboundedSender<BindResult>,
    /// The claims and volumes caches: a pod whose claim is bound to a volume pinned to
    /// a node goes to that node.
    claims: Arc<Cache>,
    volumes: Arc<Cache>,
}

/// Places every pending pod whose back-off has passed. Bindings are written in the
/// background as pods are placed; each is assumed on its node at once and its result
/// comes back on `results`.
async fn schedule_pass(api: &Arc<ApiServer>, nodes: &Cache, pods: &Cache, state: &mut State) {
    let State {
        backoff,
        assumed,
        facts,
        binds,
        results,
        claims,
        volumes,
    } = state;
    let mut all_nodes = nodes.snapshot();
    all_nodes.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
    let all_pods = pods.snapshot();
    let mut pending: Vec<&Arc<Value>> = Vec::new();
    let mut by_key: HashMap<String, &Arc<Value>> = HashMap::new();
    let mut view = View::build(&all_nodes);
    facts.next_pass();
    for p in &all_pods {
        let f = facts.of(p);
        if f.terminal {
            continue;
        }
        match &f.node {
            Some(node) => view.account_pod(&f.cost, node),
            None => {
                let key = pod_key(p);
                if !objects::is_deleting(p)
                    && !assumed.contains_key(&key)
                    && p.pointer("/spec/schedulerName")
                        .and_then(Value::as_str)
                        .unwrap_or(SCHEDULER_NAME)
                        == SCHEDULER_NAME
                {
                    pending.push(p);
                }
                by_key.insert(key, p);
            }
        }
    }
    // Forget assumptions the cache has caught up with (or that are too old to trust),
    // and count the rest on their nodes.
    assumed.retain(|key, (_, at)| by_key.contains_key(key) && at.elapsed() < ASSUME_TTL);
    for (key, (node, _)) in assumed.iter() {
        if let Some(pod) = by_key.get(key) {
            view.account_pod(&facts.of(pod).cost, node);
        }
    }
    let keys: std::collections::HashSet<String> = pending.iter().map(|p| pod_key(p)).collect();
    backoff.retain(|k, _| keys.contains(k));
    // Pods this pass will try (the "active" queue) count down as it tries them.
    let waiting = backing_off(backoff);
    let mut active = pending.len().saturating_sub(waiting);
    api.metrics.scheduler.pending(active, waiting);
    if pending.is_empty() {
        return;
    }
    pending.sort_by(|a, b| {
        (objects::meta_str(a, "creationTimestamp"), objects::name(a))
            .cmp(&(objects::meta_str(b, "creationTimestamp"), objects::name(b)))
    });
    let now = Instant::now();
    for pod in pending {
        let key = pod_key(pod);
        if backoff.get(&key).is_some_and(|b| b.not_before > now) {
            continue;
        }
        let attempt = Instant::now();
        active = active.saturating_sub(1);
        api.metrics.scheduler.pending(active, waiting);
        let mut info = PodInfo::from_pod(pod);
        info.volumes = filter::volume_constraint(pod, claims, volumes);
        let owner = view.owner_id(facts.of(pod).cost.owner.as_ref());
        let mut reasons: BTreeMap<Cow<'static, str>, u32> = BTreeMap::new();
        let mut best: Option<(f64, usize)> = None;
        let (total, wanted) = (view.nodes.len(), nodes_to_score(view.nodes.len()));
        let mut feasible = 0;
        let mut scanned = 0;
        while scanned < total && feasible < wanted {
            let i = (view.next_start + scanned) % total;
            scanned += 1;
            match info.refusal(&view.nodes[i], &view.used[i]) {
                Some(reason) => *reasons.entry(reason).or_default() += 1,
                None => {
                    feasible += 1;
                    // A node that holds the pod's module starts it without fetching
                    // or compiling it: worth less than the spreading penalty of one
                    // replica of its owner there, so it decides between like nodes
                    // (an App woken from zero) but never stacks replicas on one.
                    let score = view.score(i, &info.nonzero, owner)
                        + IMAGE_LOCALITY_WEIGHT * info.image_locality(&view.nodes[i]);
                    if best.is_none_or(|(s, _)| score > s) {
                        best = Some((score, i));
                    }
                }
            }
        }
        if total > 0 {
            view.next_start = (view.next_start + scanned) % total;
        }
        match best {
            Some((_, i)) => {
                // Assume the placement now; the binding is written in the background.
                view.account(i, &info.requests, &info.nonzero, owner);
                let node = view.nodes[i].name.clone();
                assumed.insert(key.clone(), (node.clone(), Instant::now()));
                let permit = binds
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (api, pod, results) = (api.clone(), pod.clone(), results.clone());
                tokio::spawn(async move {
                    let ok = bind(&api, &pod, &node).await;
                    drop(permit);
                    let result = if ok { "scheduled" } else { "error" };
                    api.metrics.scheduler.attempt(result, attempt.elapsed());
                    let _ = results.send((key, node, ok));
                });
            }
            None => {
                let message = if view.nodes.is_empty() {
                    "no nodes available to schedule pods".to_string()
                } else {
                    let counted: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    format!(
                        "0/{} nodes are available: {}.",
                        view.nodes.len(),
                        counted.join(", ")
                    )
                };
                api.metrics
                    .scheduler
                    .attempt("unschedulable", attempt.elapsed());
                mark_unschedulable(api, pod, &message).await;
                delay(backoff, key);
            }
        }
    }
    api.metrics.scheduler.pending(0, backing_off(backoff));
}

/// Writes a binding and records Scheduled; false if it lost a race or failed.
async fn bind(api: &ApiServer, pod: &Value, node: &str) -> bool {
    let (namespace, name) = (
        objects::namespace(pod).unwrap_or("default"),
        objects::name(pod),
    );
    match bind_pod(api, namespace, name, node).await {
        Ok(()) => {
            tracing::debug!(pod = %name, node = %node, "pod scheduled");
            record_event(
                api,
                pod,
                "Normal",
                "Scheduled",
                format!("Successfully assigned {namespace}/{name} to {node}"),
                SCHEDULER_NAME,
            )
            .await;
            true
        }
        Err(e) => {
            tracing::debug!(pod = %name, error = %e, "binding failed; will retry");
            false
        }
    }
}

/// A pod's identity for the scheduler's own bookkeeping (assumed bindings, backoff):
/// its uid too, so a pod made again under the same name (a StatefulSet's `NAME-i`) is a
/// new pod, not one already placed.
fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}/{}",
        objects::namespace(pod).unwrap_or_default(),
        objects::name(pod),
        objects::meta_str(pod, "uid").unwrap_or_default()
    )
}

fn delay(backoff: &mut HashMap<String, Backoff>, key: String) {
    let b = backoff.entry(key).or_insert(Backoff {
        attempts: 0,
        not_before: Instant::now(),
    });
    let wait = BACKOFF_FIRST
        .saturating_mul(1 << b.attempts.min(8))
        .min(BACKOFF_MAX);
    b.attempts += 1;
    b.not_before = Instant::now() + wait;
}

/// Sets `PodScheduled=False` (reason Unschedulable) and records FailedScheduling, only
/// when the message changed, so a pass over an unchanged cluster writes nothing.
async fn mark_unschedulable(api: &ApiServer, pod: &Value, message: &str) {
    let current = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"));
    if current.is_some_and(|c| c["status"] == "False" && c["message"] == message) {
        return;
    }
    let info = crate::kinds::lookup("", "v1", "pods").expect("pods are served");
    let written = internal::update_status(
        api,
        info,
        objects::namespace(pod),
        objects::name(pod),
        |current| {
            let mut updated = current.clone();
            let mut conditions: Vec<Value> = updated
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c["type"] != "PodScheduled");
            conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": objects::now_rfc3339()}));
            objects::set_path(&mut updated, &["status", "conditions"], json!(conditions));
            Ok(updated)
        },
    )
    .await;
    if written.is_ok() {
        record_event(
            api,
            pod,
            "Warning",
            "FailedScheduling",
            message.to_string(),
            "default-scheduler",
        )
        .await;
    }
}
