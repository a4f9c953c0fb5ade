//! Running one pod: prepare its volumes, run each container's loop, and report the
//! pod's status (phase, conditions, container statuses) as it changes.

mod container;
pub mod env;
mod probe;
pub mod serviceaccount;
pub mod state;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::logs::ContainerLog;
use crate::runtime::Runtime;
use state::{ContainerStatus, PodState, State, phase};
use volumes::Volumes;

/// How long a pod's first status write waits for its containers to leave the initial
/// "ContainerCreating" state.
const TRANSIENT_STATE_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

pub fn pod_dir(config: &AgentConfig, uid: &str) -> PathBuf {
    config.data_dir.join("pods").join(uid)
}

pub fn log_dir(config: &AgentConfig, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    config.data_dir.join("logs").join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
        m.uid.as_deref().unwrap_or_default()
    ))
}

/// The container statuses a pod starts from: restart counts continue from what the
/// control plane last heard (after an agent restart).
fn initial_state(pod: &Pod) -> PodState {
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let restarts = previous
                .iter()
                .find(|p| p.name == c.name)
                .map(|p| p.restart_count.max(0) as u32)
                .unwrap_or(0);
            let ran = previous.iter().any(|p| {
                p.name == c.name
                    && (p.restart_count > 0
                        || p.state
                            .as_ref()
                            .is_some_and(|s| s.running.is_some() || s.terminated.is_some()))
            });
            let mut status =
                ContainerStatus::new(&c.name, c.image.as_deref().unwrap_or_default(), restarts);
            // An instance the control plane saw running died with the old agent: that is a restart.
            if ran {
                status.restart_count += 1;
                status.started_once = true;
            }
            status
        })
        .collect();
    PodState {
        containers,
        failure: None,
    }
}

/// Runs a pod until `stop`: its containers, and a reporter that writes its status. All
/// it logs carries the pod's span: namespace/name, uid and node.
pub async fn run_pod(rt: Arc<Runtime>, pod: Arc<Pod>, stop: CancellationToken) {
    let span = tracing::info_span!(
        "pod",
        pod = %format_args!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
        uid = pod.metadata.uid.as_deref().unwrap_or_default(),
        node = %rt.config.name,
    );
    run_pod_inner(rt, pod, stop).instrument(span).await
}

async fn run_pod_inner(rt: Arc<Runtime>, pod: Arc<Pod>, stop: CancellationToken) {
    let seen = std::time::Instant::now();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (status_tx, status_rx) = tokio::sync::watch::channel(initial_state(&pod));
    // Pod start latency, as the kubelet measures it: from first seeing the pod to all
    // its containers running. The watch holds only the newest state, so a container that
    // has run since this agent took the pod, and already exited, counts as started too;
    // otherwise a guest that crashes at once would never be counted.
    let mut started = status_tx.subscribe();
    let mut timing = {
        let (rt, stop) = (rt.clone(), stop.clone());
        let initial: Vec<(bool, u32)> = started
            .borrow()
            .containers
            .iter()
            .map(|c| (c.started_once, c.restart_count))
            .collect();
        tokio::spawn(async move {
            loop {
                let running = started
                    .borrow_and_update()
                    .containers
                    .iter()
                    .zip(&initial)
                    .all(|(c, &(was_started, restarts))| {
                        matches!(c.state, State::Running { .. })
                            || (c.started_once && !was_started)
                            || c.restart_count > restarts
                    });
                if running {
                    rt.metrics.pod_started(seen.elapsed());
                    return;
                }
                tokio::select! {
                    changed = started.changed() => if changed.is_err() { return },
                    _ = stop.cancelled() => return,
                }
            }
        })
    };
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| skiff_api::time::format_time(t.0))
        .unwrap_or_else(skiff_api::time::now_rfc3339);
    let reporter_stop = CancellationToken::new();
    // The pod's events wait for its first status write (or the reporter's end).
    let events_after = CancellationToken::new();
    let reporter = tokio::spawn(
        report_status(
            rt.clone(),
            pod.clone(),
            start_time,
            status_rx,
            reporter_stop.clone(),
            events_after.clone(),
        )
        .in_current_span(),
    );

    let ca = rt
        .config
        .tunnel
        .as_ref()
        .map(|t| serviceaccount::ca_pem(&t.roots))
        .unwrap_or_default();
    let volumes = loop {
        match Volumes::prepare(
            &rt.client,
            &pod,
            &pod_dir(&rt.config, &uid),
            &rt.config.data_dir.join("storage"),
            &rt.config.allowed_host_paths,
            &ca,
        )
        .await
        {
            Ok(v) => break Some(Arc::new(v)),
            Err(e) => {
                let message = e.to_string();
                rt.events.record_after(
                    Some(&events_after),
                    &pod,
                    None,
                    crate::events::EventType::Warning,
                    "FailedMount",
                    message.clone(),
                );
                if e.is_permanent() {
                    status_tx.send_modify(|s| {
                        s.failure = Some(("FailedMount", message.clone()));
                        for c in &mut s.containers {
                            c.state =
                                State::waiting("CreateContainerConfigError", Some(message.clone()));
                            c.done = true;
                        }
                    });
                    break None;
                }
                status_tx.send_modify(|s| {
                    for c in &mut s.containers {
                        c.state = State::waiting("ContainerCreating", Some(message.clone()));
                    }
                });
                tokio::select! {
                    _ = tokio::time::sleep(rt.config.backoff_base) => {}
                    _ = stop.cancelled() => break None,
                }
            }
        }
    };

    let mut loops = tokio::task::JoinSet::new();
    let usage = crate::usage::PodUsage::new(
        &uid,
        pod.spec
            .iter()
            .flat_map(|s| s.containers.iter().map(|c| c.name.clone())),
    );
    rt.usage.insert(&namespace, &name, usage.clone());
    if let Some(mount) = volumes.as_ref().and_then(|v| v.service_account.clone()) {
        loops.spawn(
            serviceaccount::keep_fresh(rt.client.clone(), pod.clone(), mount, stop.clone())
                .in_current_span(),
        );
    }
    if let Some(volumes) = volumes {
        let spec_containers = pod.spec.as_ref().map(|s| s.containers.len()).unwrap_or(0);
        for index in 0..spec_containers {
            let cname = pod.spec.as_ref().expect("checked above").containers[index]
                .name
                .clone();
            let log = Arc::new(ContainerLog::open(
                log_dir(&rt.config, &pod).join(&cname),
                rt.config.log_max_bytes,
            ));
            rt.logs.insert(&namespace, &name, &cname, log.clone());
            loops.spawn(
                container::ContainerLoop {
                    rt: rt.clone(),
                    pod: pod.clone(),
                    index,
                    volumes: volumes.clone(),
                    log,
                    status: status_tx.clone(),
                    stop: stop.clone(),
                    events_after: events_after.clone(),
                    usage: usage.clone(),
                }
                .run()
                .in_current_span(),
            );
        }
    }
    while loops.join_next().await.is_some() {}
    stop.cancelled().await;
    rt.usage.remove(&namespace, &name, &usage);
    reporter_stop.cancel();
    let _ = reporter.await;
    timing.abort();
    let _ = (&mut timing).await;
    let containers: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    rt.metrics.forget_pod(&namespace, &name, &containers);
}

/// Writes the pod's status whenever its state changes, coalescing bursts. Cancels
/// `events_after` once the first write is done (or failed), and when it returns.
async fn report_status(
    rt: Arc<Runtime>,
    pod: Arc<Pod>,
    start_time: String,
    mut rx: tokio::sync::watch::Receiver<PodState>,
    stop: CancellationToken,
    events_after: CancellationToken,
) {
    let _release_events = events_after.clone().drop_guard();
    let api: Api<Pod> = Api::namespaced(
        rt.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut ready_since: Option<(bool, String)> = None;
    let mut last_written: Option<Value> = None;
    // A pod whose module is cached reaches Running within milliseconds: skip writing the
    // transient "ContainerCreating" state unless it lasts, so a start costs one write.
    let _ = tokio::time::timeout(TRANSIENT_STATE_GRACE, async {
        while rx.borrow().containers.iter().all(|c| {
            matches!(
                c.state,
                State::Waiting {
                    reason: "ContainerCreating",
                    ..
                }
            )
        }) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    loop {
        let state = rx.borrow_and_update().clone();
        let ready = state.failure.is_none() && state.containers.iter().all(ContainerStatus::ready);
        let transition = match &ready_since {
            Some((r, t)) if *r == ready => t.clone(),
            _ => {
                let now = skiff_api::time::now_rfc3339();
                ready_since = Some((ready, now.clone()));
                now
            }
        };
        let status = pod_status(&rt.host_ip, &uid, &start_time, &state, ready, &transition);
        if last_written.as_ref() != Some(&status) {
            let patch = json!({"metadata": {"uid": uid}, "status": status});
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            // Statuses the API could not take wait in the local outbox; later ones queue
            // behind them, so they arrive in order, at least once.
            let queue = |rt: &Arc<Runtime>| {
                let (local, uid, name, patch) =
                    (rt.local.clone(), uid.clone(), name.clone(), patch.clone());
                let namespace = namespace.clone();
                tokio::task::spawn_blocking(move || {
                    local.push_status(&uid, &namespace, &name, &patch)
                })
            };
            if rt.local.has_queued(&uid) {
                let _ = queue(&rt).await;
                last_written = Some(status);
            } else {
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => last_written = Some(status),
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
                    Err(e @ kube::Error::Api(_)) => {
                        tracing::warn!(pod = %name, error = %e, "the API refused the pod status; will retry");
                        events_after.cancel();
                        tokio::select! {
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                            _ = stop.cancelled() => return,
                        }
                    }
                    Err(e) => {
                        tracing::debug!(pod = %name, error = %e, "the API is unreachable; queueing the pod status");
                        let _ = queue(&rt).await;
                        last_written = Some(status);
                    }
                }
            }
        }
        // The first status is written (or queued): the pod's events may follow.
        events_after.cancel();
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
    }
}

fn condition(kind: &str, ok: bool, transition: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "lastTransitionTime": transition})
}

/// The pod's `.status`, as the kubelet would write it.
fn pod_status(
    host_ip: &str,
    uid: &str,
    start_time: &str,
    state: &PodState,
    ready: bool,
    transition: &str,
) -> Value {
    let phase = if state.failure.is_some() {
        "Failed"
    } else {
        phase(&state.containers)
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            condition("PodReadyToStartContainers", true, start_time),
            condition("Initialized", true, start_time),
            condition("Ready", ready, transition),
            condition("ContainersReady", ready, transition),
            condition("PodScheduled", true, start_time),
        ],
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": host_ip,
        "podIPs": [{"ip": host_ip}],
        "startTime": start_time,
        "containerStatuses": state.containers.iter().map(|c| c.to_json(uid)).collect::<Vec<_>>(),
        "reason": null,
        "message": null,
    });
    if let Some((reason, message)) = &state.failure {
        status["reason"] = json!(reason);
        status["message"] = json!(message);
    }
    status
}
