//! The agent's pod loop: watch the pods bound to this node and reconcile them against
//! the pod workers that are running.
//!
//! Level-based: reconciling a pod compares its desired state (the watch cache) with its
//! running state (the worker), whatever event marked it. Events only say *which* pods to
//! look at, so a busy node does work per change rather than per pod; a periodic full
//! pass looks at every pod regardless.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::EventType;
use crate::pod::{log_dir, pod_dir, run_pod};
use crate::runtime::Runtime;

/// A full pass runs at least this often even when nothing is heard from the watch.
const RESYNC: Duration = Duration::from_secs(10);

/// A pod by namespace and name.
type Key = (String, String);

fn key_of(pod: &Pod) -> Key {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

struct Worker {
    pod: Arc<Pod>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Set once the pod is terminating and its instances were told to stop.
    stopping: bool,
}

impl Worker {
    fn uid(&self) -> Option<&str> {
        self.pod.metadata.uid.as_deref()
    }
}

/// Pods to look at next, shared by the watch, the workers and the loop.
#[derive(Default)]
struct Queue {
    dirty: Mutex<(HashSet<Key>, bool)>,
    wake: Notify,
}

impl Queue {
    fn mark(&self, key: Key) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert(key);
        self.wake.notify_one();
    }

    fn mark_all(&self) {
        self.dirty.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.wake.notify_one();
    }

    /// The marked pods, or `None` when everything should be looked at.
    fn take(&self) -> Option<HashSet<Key>> {
        let mut d = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let all = std::mem::take(&mut d.1);
        let keys = std::mem::take(&mut d.0);
        (!all).then_some(keys)
    }
}

/// A change to the local copy of this node's pods.
enum Persist {
    Put(String, Vec<u8>),
    Delete(String),
    /// After a full list: exactly these.
    Replace(Vec<(String, Vec<u8>)>),
}

fn cache_key(key: &Key) -> String {
    format!("{}/{}", key.0, key.1)
}

/// Writes the pod changes the watch reports to the local cache, a batch per
/// transaction, so a restart without the control plane finds them.
async fn persist_pods(
    local: Arc<crate::local::LocalState>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Persist>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let local = local.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut changes: Vec<(String, Option<Vec<u8>>)> = Vec::new();
            for item in batch {
                match item {
                    Persist::Put(k, v) => changes.push((k, Some(v))),
                    Persist::Delete(k) => changes.push((k, None)),
                    Persist::Replace(all) => {
                        let all: Vec<(String, Option<Vec<u8>>)> =
                            all.into_iter().map(|(k, v)| (k, Some(v))).collect();
                        local.save_pods(&all, true);
                        changes.clear();
                    }
                }
            }
            if !changes.is_empty() {
                local.save_pods(&changes, false);
            }
        })
        .await;
    }
}

/// Watches this node's pods and keeps a worker per live pod until `stop`.
///
/// Until the first list from the API arrives, the pods last seen (kept in the local
/// cache) are the desired state: an edge agent restarted without its control plane
/// brings its pods back. Once the API answers, its list is the truth: pods deleted
/// meanwhile stop, new ones start, and unchanged ones keep running.
pub async fn run(rt: Arc<Runtime>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(rt.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", rt.config.name));
    let (store, writer) = reflector::store();
    let queue = Arc::new(Queue::default());
    let watch_queue = queue.clone();
    let (persist, persisted) = tokio::sync::mpsc::unbounded_channel();
    let persist_task = tokio::spawn(persist_pods(rt.local.clone(), persisted));
    let listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (watch_listed, watch_store) = (listed.clone(), store.clone());
    // The reflector keeps the cache; it re-lists on 410 and resumes otherwise.
    let watch_task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(stream);
        let encode = |p: &Pod| serde_json::to_vec(p).unwrap_or_default();
        while let Some(event) = stream.next().await {
            match event {
                // The reconcile loop is woken first: encoding the pod for the local
                // cache is not on the path to starting it.
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    watch_queue.mark(key_of(&p));
                    let _ = persist.send(Persist::Put(cache_key(&key_of(&p)), encode(&p)));
                }
                Ok(watcher::Event::Delete(p)) => {
                    watch_queue.mark(key_of(&p));
                    let _ = persist.send(Persist::Delete(cache_key(&key_of(&p))));
                }
                // A (re-)list: pods may have gone while we weren't watching.
                Ok(watcher::Event::InitDone) => {
                    let all = watch_store
                        .state()
                        .iter()
                        .map(|p| (cache_key(&key_of(p)), encode(p)))
                        .collect();
                    let _ = persist.send(Persist::Replace(all));
                    watch_listed.store(true, std::sync::atomic::Ordering::Release);
                    watch_queue.mark_all();
                }
                Ok(watcher::Event::Init) => watch_queue.mark_all(),
                Err(e) => tracing::warn!(error = %e, "pod watch interrupted; retrying"),
            }
        }
    });
    let mut workers: HashMap<Key, Worker> = HashMap::new();
    let cached: HashMap<Key, Arc<Pod>> = {
        let local = rt.local.clone();
        tokio::task::spawn_blocking(move || local.pods())
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|p| (key_of(&p), Arc::new(p)))
            .collect()
    };
    // With pods cached, wait for the API only briefly: they run either way.
    let patience = if cached.is_empty() { 30 } else { 2 };
    let _ = tokio::time::timeout(Duration::from_secs(patience), store.wait_until_ready()).await;
    let mut cached = Some(cached);
    if listed.load(std::sync::atomic::Ordering::Acquire) {
        cached = None;
    } else if let Some(c) = &cached {
        tracing::warn!(
            pods = c.len(),
            "the API is unreachable; running the pods last seen from the local cache"
        );
    }
    queue.mark_all();
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = queue.wake.notified() => {}
            _ = resync.tick() => queue.mark_all(),
        }
        if cached.is_some() && listed.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("the API answered; reconciling the cached pods with it");
            cached = None;
            queue.mark_all();
        }
        let keys: Vec<Key> = match queue.take() {
            Some(keys) => keys.into_iter().collect(),
            None => {
                let desired: Vec<Key> = match &cached {
                    Some(c) => c.keys().cloned().collect(),
                    None => store.state().iter().map(|p| key_of(p)).collect(),
                };
                desired
                    .into_iter()
                    .chain(workers.keys().cloned())
                    .collect::<HashSet<_>>()
                    .into_iter()
                    .collect()
            }
        };
        for key in keys {
            let desired = match &cached {
                Some(c) => c.get(&key).cloned(),
                None => store.get(&ObjectRef::new(&key.1).within(&key.0)),
            };
            reconcile(&rt, desired, &mut workers, &queue, key).await;
        }
        rt.metrics.set_pods(workers.len());
    }
    watch_task.abort();
    // Whatever the watch reported is written before the agent stops.
    let _ = persist_task.await;
    // Shutdown: stop every instance; the pods stay bound and come back on restart.
    for w in workers.values() {
        w.stop.cancel();
    }
    for (_, w) in workers.drain() {
        let _ = w.task.await;
    }
}

/// Brings one pod's running state in line with its desired state.
async fn reconcile(
    rt: &Arc<Runtime>,
    desired: Option<Arc<Pod>>,
    workers: &mut HashMap<Key, Worker>,
    queue: &Arc<Queue>,
    key: Key,
) {
    // A worker for another pod of the same name (deleted and recreated) goes first.
    let stale = workers.get(&key).is_some_and(|w| {
        desired
            .as_ref()
            .is_none_or(|p| p.metadata.uid.as_deref() != w.uid())
    });
    if stale && let Some(w) = workers.remove(&key) {
        w.stop.cancel();
        let _ = w.task.await;
        cleanup(rt, &w.pod);
    }
    let Some(pod) = desired else { return };
    let terminating = pod.metadata.deletion_timestamp.is_some();
    match workers.get_mut(&key) {
        None if terminating => confirm_deletion(rt, &pod).await,
        None => {
            let stop = CancellationToken::new();
            let run = run_pod(rt.clone(), pod.clone(), stop.clone());
            let (done, done_key) = (queue.clone(), key.clone());
            // A finished worker marks its pod, so a stopped pod's deletion is confirmed at once.
            let task = tokio::spawn(async move {
                run.await;
                done.mark(done_key);
            });
            workers.insert(
                key,
                Worker {
                    pod,
                    stop,
                    task,
                    stopping: false,
                },
            );
        }
        Some(w) if terminating && !w.stopping => {
            rt.events.record(
                &pod,
                None,
                EventType::Normal,
                "Killing",
                "Stopping the pod's instances".into(),
            );
            w.stop.cancel();
            w.stopping = true;
        }
        Some(w) if w.stopping && w.task.is_finished() => {
            confirm_deletion(rt, &pod).await;
            if let Some(w) = workers.remove(&key) {
                cleanup(rt, &w.pod);
            }
        }
        Some(_) => {}
    }
}

/// Tells the control plane the pod's instances are gone: delete with grace 0, only if
/// it is still the same pod (uid precondition).
async fn confirm_deletion(rt: &Runtime, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(
        rt.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    match api.delete(&name, &params).await {
        Ok(_) => tracing::debug!(pod = %name, "pod deletion confirmed"),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
        Err(e) => tracing::warn!(pod = %name, error = %e, "confirming deletion failed; will retry"),
    }
}

fn cleanup(rt: &Runtime, pod: &Pod) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    rt.logs.remove(&ns, &name);
    let _ = std::fs::remove_dir_all(pod_dir(
        &rt.config,
        pod.metadata.uid.as_deref().unwrap_or("none"),
    ));
    let _ = std::fs::remove_dir_all(log_dir(&rt.config, pod));
}
