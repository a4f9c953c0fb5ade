//! Kubernetes Events about pods, recorded the way the kubelet records them (Pulling,
//! Pulled, Created, Started, BackOff, Killing, Failed, OOMKilled, Trap).
//!
//! An event that repeats (the same pod, container, type, reason and message, as a
//! crash-looping container's BackOff does) is one Event whose `count` and
//! `lastTimestamp` move, as the kubelet's event correlator aggregates them, rather
//! than a new object each time: `kubectl describe` then says `x12 over 3m`, and the
//! event list of a node with a failing pod stays short. The repeated one is named from
//! what identifies it (`POD.<hash>`), so an agent that restarts finds it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Bound on events being sent at once; beyond it events are dropped (and logged), so a
/// crash-looping node cannot pile up unbounded tasks against a slow control plane.
const MAX_IN_FLIGHT: usize = 256;

/// How long after its last occurrence a repeat still counts on the same Event (the
/// kubelet's correlator keeps a series alive while it keeps happening).
const AGGREGATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Most event series remembered. Past it, series quiet for longer than the window go,
/// then (if still full) all of them: a repeat then starts a new count on the same
/// Event, which it finds by name.
const MAX_SERIES: usize = 4096;

#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    node: String,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    series: Arc<Mutex<HashMap<String, Series>>>,
}

/// One repeating event: how many times it happened and when it last did.
struct Series {
    count: i32,
    last: Instant,
}

/// What the event was sent as: a new Event, or a repeat to count on the existing one.
enum Send {
    Create,
    Repeat(i32),
}

#[derive(Debug, Clone, Copy)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventRecorder {
    pub fn new(client: kube::Client, node: &str) -> EventRecorder {
        EventRecorder {
            client,
            node: node.to_string(),
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            series: Arc::default(),
        }
    }

    /// Counts one occurrence of the series `name`: the first (or the first after the
    /// window) creates its Event, the others count on it.
    fn occur(&self, name: &str) -> Send {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if series.len() >= MAX_SERIES && !series.contains_key(name) {
            series.retain(|_, s| now.duration_since(s.last) < AGGREGATE_WINDOW);
            if series.len() >= MAX_SERIES {
                series.clear();
            }
        }
        match series.get_mut(name) {
            Some(s) if now.duration_since(s.last) < AGGREGATE_WINDOW => {
                s.count += 1;
                s.last = now;
                Send::Repeat(s.count)
            }
            _ => {
                series.insert(
                    name.to_string(),
                    Series {
                        count: 1,
                        last: now,
                    },
                );
                Send::Create
            }
        }
    }

    /// Records an event about a pod (and one of its containers), without waiting.
    pub fn record(
        &self,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        self.record_after(None, pod, container, kind, reason, message);
    }

    /// Records an event as `record` does, but sends it only once `gate` is cancelled
    /// (its timestamps are still those of now). A pod worker holds its events behind its
    /// first status write: the control plane makes writes durable in group commits, and
    /// events sent just before the status (Pulled, Created, Started) would otherwise
    /// take the commit the status then has to wait out, on the path from a pod's
    /// binding to its `Running`.
    pub fn record_after(
        &self,
        gate: Option<&CancellationToken>,
        pod: &Pod,
        container: Option<&str>,
        kind: EventType,
        reason: &str,
        message: String,
    ) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(reason, %message, "dropping event: too many in flight");
            return;
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let now = skiff_api::time::now_rfc3339();
        let kind = match kind {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        let field_path = container.map(|c| format!("spec.containers{{{c}}}"));
        let series = series_name(
            &name,
            pod.metadata.uid.as_deref().unwrap_or_default(),
            field_path.as_deref(),
            kind,
            reason,
            &message,
        );
        let send = self.occur(&series);
        let event = json!({
            "metadata": {"name": series, "namespace": namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": namespace,
                "name": name,
                "uid": pod.metadata.uid,
                "fieldPath": field_path,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "skiff-agent", "host": self.node},
            "reportingComponent": "skiff-agent",
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let client = self.client.clone();
        let gate = gate.cloned();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(gate) = gate {
                gate.cancelled().await;
            }
            let Ok(event) = serde_json::from_value::<Event>(event) else {
                return;
            };
            let api: Api<Event> = Api::namespaced(client, &namespace);
            if let Err(e) = send_event(&api, &event, send, &now).await {
                tracing::debug!(error = %e, "recording an event failed");
            }
        });
    }
}

/// The name of a series of events: the pod's name and a hash of what makes two events
/// the same one (the kubelet's correlator keys on the same fields).
fn series_name(
    pod: &str,
    uid: &str,
    field_path: Option<&str>,
    kind: &str,
    reason: &str,
    message: &str,
) -> String {
    // SHA-256 rather than std's hasher, whose output may change between Rust releases:
    // an upgraded agent finds the same Event again.
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for part in [uid, field_path.unwrap_or_default(), kind, reason, message] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    let hash = hex::encode(&hasher.finalize()[..8]);
    // A pod's name is at most 253 characters, as an Event's; room for the suffix.
    let prefix: String = pod.chars().take(253 - 17).collect();
    format!("{prefix}.{hash}")
}

/// Sends one occurrence: creates the Event, or counts on it. Whichever the recorder
/// thought, the API decides: a repeat whose Event is gone (expired) creates it again,
/// and a create that finds it there (an agent restarted within its lifetime) counts
/// on from the Event's own count.
async fn send_event(api: &Api<Event>, event: &Event, send: Send, now: &str) -> kube::Result<()> {
    let name = event.metadata.name.clone().unwrap_or_default();
    let count = match send {
        Send::Create => match api.create(&PostParams::default(), event).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.get(&name).await?.count.unwrap_or(1).saturating_add(1)
            }
            Err(e) => return Err(e),
        },
        Send::Repeat(count) => count,
    };
    let patch = json!({"count": count, "lastTimestamp": now});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let mut fresh = event.clone();
            fresh.count = Some(count);
            api.create(&PostParams::default(), &fresh).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_series_is_named_by_what_makes_it_the_same_event() {
        let a = series_name(
            "web-1",
            "u1",
            Some("spec.containers{app}"),
            "Warning",
            "BackOff",
            "m",
        );
        assert_eq!(
            a,
            series_name(
                "web-1",
                "u1",
                Some("spec.containers{app}"),
                "Warning",
                "BackOff",
                "m"
            )
        );
        assert!(a.starts_with("web-1."));
        for other in [
            series_name(
                "web-1",
                "u2",
                Some("spec.containers{app}"),
                "Warning",
                "BackOff",
                "m",
            ),
            series_name("web-1", "u1", None, "Warning", "BackOff", "m"),
            series_name(
                "web-1",
                "u1",
                Some("spec.containers{app}"),
                "Warning",
                "Failed",
                "m",
            ),
            series_name(
                "web-1",
                "u1",
                Some("spec.containers{app}"),
                "Warning",
                "BackOff",
                "n",
            ),
        ] {
            assert_ne!(a, other);
        }
        let long = "p".repeat(253);
        assert_eq!(
            series_name(&long, "u", None, "Normal", "Pulled", "m").len(),
            253
        );
    }
}
