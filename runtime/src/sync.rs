//! The agent's pod loop: watch the pods bound to this node and reconcile them against
//! the pod workers that are running. Level-based: every pass compares the whole desired
//! set with the whole running set, whatever event woke it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::EventType;
use crate::pod::{Runtime, log_dir, pod_dir, run_pod};

/// A full pass runs at least this often even when nothing is heard from the watch.
const RESYNC: Duration = Duration::from_secs(10);

struct Worker {
    pod: Arc<Pod>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// Set once the pod is terminating and its instances were told to stop.
    stopping: bool,
}

fn key(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Watches this node's pods and keeps a worker per live pod until `stop`.
pub async fn run(rt: Arc<Runtime>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(rt.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", rt.config.name));
    let (store, writer) = reflector::store();
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch_wake = wake.clone();
    // The reflector keeps the cache; it re-lists on 410 and resumes otherwise.
    let watch_task = tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(error = %e, "pod watch interrupted; retrying");
            }
            watch_wake.notify_one();
        }
    });
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await;
    loop {
        reconcile(&rt, &store, &mut workers, &wake).await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
    watch_task.abort();
    // Shutdown: stop every instance; the pods stay bound and come back on restart.
    for w in workers.values() {
        w.stop.cancel();
    }
    for (_, w) in workers.drain() {
        let _ = w.task.await;
    }
}

async fn reconcile(
    rt: &Arc<Runtime>,
    store: &Store<Pod>,
    workers: &mut HashMap<String, Worker>,
    wake: &Arc<tokio::sync::Notify>,
) {
    let desired: HashMap<String, Arc<Pod>> =
        store.state().into_iter().map(|p| (key(&p), p)).collect();
    for (uid, pod) in &desired {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        match workers.get_mut(uid) {
            None if terminating => confirm_deletion(rt, pod).await,
            None => {
                let stop = CancellationToken::new();
                let run = run_pod(rt.clone(), pod.clone(), stop.clone());
                let done = wake.clone();
                // A finished worker wakes the loop, so a stopped pod's deletion is confirmed at once.
                let task = tokio::spawn(async move {
                    run.await;
                    done.notify_one();
                });
                workers.insert(
                    uid.clone(),
                    Worker {
                        pod: pod.clone(),
                        stop,
                        task,
                        stopping: false,
                    },
                );
            }
            Some(w) if terminating && !w.stopping => {
                rt.events.record(
                    pod,
                    None,
                    EventType::Normal,
                    "Killing",
                    "Stopping the pod's instances".into(),
                );
                w.stop.cancel();
                w.stopping = true;
            }
            Some(w) if w.stopping && w.task.is_finished() => {
                confirm_deletion(rt, pod).await;
                if let Some(w) = workers.remove(uid) {
                    cleanup(rt, &w.pod);
                }
            }
            Some(_) => {}
        }
    }
    // Pods gone from the API (force-deleted, or moved): stop and clean up.
    let gone: Vec<String> = workers
        .keys()
        .filter(|uid| !desired.contains_key(*uid))
        .cloned()
        .collect();
    for uid in gone {
        if let Some(w) = workers.remove(&uid) {
            w.stop.cancel();
            let _ = w.task.await;
            cleanup(rt, &w.pod);
        }
    }
    rt.metrics.set_pods(workers.len());
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
        Ok(_) => tracing::info!(pod = %name, "pod deleted"),
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
