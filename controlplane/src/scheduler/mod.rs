//! The scheduler: binds pods that have no node to the node that fits them best.
//!
//! Level-based: each pass reads the watch-backed caches of nodes and pods, works out
//! what every node has left, and places each pending pod (filter, then score). A pod
//! that fits nowhere gets `PodScheduled=False` with the counted reasons and a
//! FailedScheduling event, and is retried with back-off, or at once when a node changes.
//! Binding is compare-and-swap, so two schedulers can never both bind a pod.

pub(crate) mod filter;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use skiff_api::resources;

use crate::apiserver::{ApiServer, bind_pod, objects, record_event};
use crate::informer::{Cache, CacheEvent};
use crate::store::WriteOp;
use filter::{Resources, allocatable, nonzero_requests, pod_requests, refusal};

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

pub async fn run_scheduler(api: Arc<ApiServer>, stop: CancellationToken) {
    let nodes = Arc::new(Cache::default());
    let pods = Arc::new(Cache::default());
    let mut caches = JoinSet::new();
    let info = |plural| {
        resources::lookup("", "v1", plural)
            .expect("core kinds are served")
            .prefix()
    };
    caches.spawn(
        nodes
            .clone()
            .run(api.store.clone(), info("nodes"), stop.clone()),
    );
    caches.spawn(
        pods.clone()
            .run(api.store.clone(), info("pods"), stop.clone()),
    );
    let mut node_changes = nodes.subscribe();
    let mut pod_events = pods.events();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    // Pods bound by this scheduler that the cache may not show bound yet (the "assumed"
    // pods of Kubernetes' scheduler cache): counted on their node, never placed twice.
    let mut assumed: HashMap<String, (String, Instant)> = HashMap::new();
    let mut pass_needed = true;
    loop {
        if pass_needed && nodes.is_synced() && pods.is_synced() {
            schedule_pass(&api, &nodes, &pods, &mut backoff, &mut assumed).await;
            pass_needed = false;
        }
        let next_retry = backoff.values().map(|b| b.not_before).min();
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = node_changes.changed() => {
                // A changed node may fit what fitted nowhere: retry everything now.
                backoff.values_mut().for_each(|b| b.not_before = Instant::now());
                pass_needed = true;
            }
            event = pod_events.recv() => match event {
                // Only a pending pod, or resources freed while some pod waits, needs a
                // pass: status writes of running pods (most changes) don't.
                Ok(CacheEvent::Changed { object, .. }) => {
                    let pending = node_of(&object).is_none() && !objects::is_deleting(&object) && !is_terminal(&object);
                    let freed = is_terminal(&object) || objects::is_deleting(&object);
                    pass_needed |= pending || (freed && !backoff.is_empty());
                }
                Ok(CacheEvent::Deleted(_)) => pass_needed |= !backoff.is_empty(),
                Ok(CacheEvent::Resynced) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => pass_needed = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = tokio::time::sleep_until(next_retry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into()), if next_retry.is_some() => {
                pass_needed = true;
            }
        }
    }
    while caches.join_next().await.is_some() {}
}

fn is_terminal(pod: &Value) -> bool {
    matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    )
}

fn node_of(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

fn owner_of(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences/0/uid")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn zone_of(node: &Value) -> Option<&str> {
    node.pointer("/metadata/labels")
        .and_then(|l| l.get(ZONE_LABEL))
        .and_then(Value::as_str)
}

/// What the pass knows about the cluster, kept current as it binds.
struct View {
    nodes: Vec<Arc<Value>>,
    /// Requests bound to each node, for fitting.
    used: HashMap<String, Resources>,
    /// The same with default requests filled in, for scoring.
    scored: HashMap<String, Resources>,
    /// Each node's allocatable, parsed once per pass.
    alloc: HashMap<String, Resources>,
    /// Where the next pod's search over nodes starts, so searches that stop early
    /// still cover every node in turn.
    next_start: usize,
    /// Pods per (owner, node) and (owner, zone), for spreading.
    owner_on_node: HashMap<(String, String), u32>,
    owner_in_zone: HashMap<(String, String), u32>,
}

impl View {
    fn build(nodes: Vec<Arc<Value>>, pods: &[Arc<Value>]) -> View {
        let zones: HashMap<&str, &str> = nodes
            .iter()
            .filter_map(|n| Some((objects::name(n), zone_of(n)?)))
            .collect();
        let mut view = View {
            used: HashMap::new(),
            scored: HashMap::new(),
            alloc: HashMap::new(),
            next_start: 0,
            owner_on_node: HashMap::new(),
            owner_in_zone: HashMap::new(),
            nodes: Vec::new(),
        };
        for pod in pods.iter().filter(|p| !is_terminal(p)) {
            if let Some(node) = node_of(pod) {
                let zone = zones.get(node).map(|z| z.to_string());
                view.account(pod, node, zone);
            }
        }
        view.alloc = nodes
            .iter()
            .map(|n| (objects::name(n).to_string(), allocatable(n)))
            .collect();
        view.nodes = nodes;
        view
    }

    fn account(&mut self, pod: &Value, node: &str, zone: Option<String>) {
        self.used
            .entry(node.to_string())
            .or_default()
            .add(&pod_requests(pod));
        if let Some(owner) = owner_of(pod) {
            *self
                .owner_on_node
                .entry((owner.clone(), node.to_string()))
                .or_default() += 1;
            if let Some(z) = zone {
                *self.owner_in_zone.entry((owner, z)).or_default() += 1;
            }
        }
    }

    /// Least-allocated (0..100) minus spreading penalties for the pod's owner.
    fn score(&self, owner: Option<&str>, nonzero: &Resources, node: &Value) -> f64 {
        let name = objects::name(node);
        let alloc = self.alloc.get(name).copied().unwrap_or_default();
        let mut after = self.scored.get(name).copied().unwrap_or_default();
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
                self.owner_on_node
                    .get(&(owner.to_string(), name.to_string()))
                    .copied()
                    .unwrap_or(0),
                zone_of(node)
                    .and_then(|z| {
                        self.owner_in_zone
                            .get(&(owner.to_string(), z.to_string()))
                            .copied()
                    })
                    .unwrap_or(0),
            ),
            None => (0, 0),
        };
        least_allocated - 20.0 * f64::from(on_node) - 10.0 * f64::from(in_zone)
    }
}

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

/// Places every pending pod whose back-off has passed.
async fn schedule_pass(
    api: &ApiServer,
    nodes: &Cache,
    pods: &Cache,
    backoff: &mut HashMap<String, Backoff>,
    assumed: &mut HashMap<String, (String, Instant)>,
) {
    let mut all_nodes = nodes.snapshot();
    all_nodes.sort_by(|a, b| objects::name(a).cmp(objects::name(b)));
    let all_pods = pods.snapshot();
    let mut pending: Vec<&Arc<Value>> = all_pods
        .iter()
        .filter(|p| node_of(p).is_none() && !objects::is_deleting(p) && !is_terminal(p))
        .filter(|p| !assumed.contains_key(&pod_key(p)))
        .filter(|p| {
            p.pointer("/spec/schedulerName")
                .and_then(Value::as_str)
                .unwrap_or(SCHEDULER_NAME)
                == SCHEDULER_NAME
        })
        .collect();
    let keys: std::collections::HashSet<String> = pending.iter().map(|p| pod_key(p)).collect();
    backoff.retain(|k, _| keys.contains(k));
    if pending.is_empty() {
        return;
    }
    pending.sort_by(|a, b| {
        (objects::meta_str(a, "creationTimestamp"), objects::name(a))
            .cmp(&(objects::meta_str(b, "creationTimestamp"), objects::name(b)))
    });
    let mut view = View::build(all_nodes, &all_pods);
    // Forget assumptions the cache has caught up with (or that are too old to trust),
    // and count the rest on their nodes.
    let by_key: HashMap<String, &Arc<Value>> = all_pods.iter().map(|p| (pod_key(p), p)).collect();
    assumed.retain(|key, (_, at)| {
        by_key.get(key).is_some_and(|p| node_of(p).is_none()) && at.elapsed() < ASSUME_TTL
    });
    for (key, (node, _)) in assumed.iter() {
        if let Some(pod) = by_key.get(key) {
            let zone = view
                .nodes
                .iter()
                .find(|n| objects::name(n) == node)
                .and_then(|n| zone_of(n))
                .map(str::to_string);
            view.account(pod, node, zone);
        }
    }
    let now = Instant::now();
    let mut binds: Vec<(Arc<Value>, String)> = Vec::new();
    for pod in pending {
        let key = pod_key(pod);
        if backoff.get(&key).is_some_and(|b| b.not_before > now) {
            continue;
        }
        let requests = pod_requests(pod);
        let nonzero = nonzero_requests(pod);
        let owner = owner_of(pod);
        let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
        let mut best: Option<(f64, usize)> = None;
        let (total, wanted) = (view.nodes.len(), nodes_to_score(view.nodes.len()));
        let mut feasible = 0;
        let mut scanned = 0;
        while scanned < total && feasible < wanted {
            let i = (view.next_start + scanned) % total;
            scanned += 1;
            let node = &view.nodes[i];
            let name = objects::name(node);
            let used = view.used.get(name).copied().unwrap_or_default();
            let alloc = view.alloc.get(name).copied().unwrap_or_default();
            match refusal(pod, node, &alloc, &requests, &used) {
                Some(reason) => *reasons.entry(reason).or_default() += 1,
                None => {
                    feasible += 1;
                    let score = view.score(owner.as_deref(), &nonzero, node);
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
                let node = view.nodes[i].clone();
                let node_name = objects::name(&node).to_string();
                // Assume the placement now; the binding is written concurrently below.
                view.account(pod, &node_name, zone_of(&node).map(str::to_string));
                binds.push((pod.clone(), node_name));
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
                mark_unschedulable(api, pod, &message).await;
                delay(backoff, key);
            }
        }
    }
    let results: Vec<(String, String, bool)> = futures::stream::iter(binds)
        .map(|(pod, node)| async move {
            let (namespace, name) = (
                objects::namespace(&pod).unwrap_or("default"),
                objects::name(&pod),
            );
            let key = pod_key(&pod);
            match bind_pod(api, namespace, name, &node).await {
                Ok(()) => {
                    tracing::debug!(pod = %key, node = %node, "pod scheduled");
                    record_event(
                        api,
                        &pod,
                        "Normal",
                        "Scheduled",
                        format!("Successfully assigned {namespace}/{name} to {node}"),
                        "default-scheduler",
                    )
                    .await;
                    (key, node, true)
                }
                Err(e) => {
                    tracing::debug!(pod = %key, error = %e, "binding failed; will retry");
                    (key, node, false)
                }
            }
        })
        .buffer_unordered(BIND_CONCURRENCY)
        .collect()
        .await;
    for (key, node, ok) in results {
        if ok {
            backoff.remove(&key);
            assumed.insert(key, (node, Instant::now()));
        } else {
            delay(backoff, key);
        }
    }
}

fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}",
        objects::namespace(pod).unwrap_or_default(),
        objects::name(pod)
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
    let info = resources::lookup("", "v1", "pods").expect("pods are served");
    let key = info.key(objects::namespace(pod), objects::name(pod));
    let Ok(Some(stored)) = api.store.get(&key) else {
        return;
    };
    let mut updated = (*stored.object).clone();
    let mut conditions: Vec<Value> = updated
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastTransitionTime": objects::now_rfc3339()}));
    objects::set_path(&mut updated, &["status", "conditions"], json!(conditions));
    if api
        .store
        .write(WriteOp::Update {
            key,
            object: updated,
            expected_rev: Some(stored.rev),
        })
        .await
        .is_ok()
    {
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
