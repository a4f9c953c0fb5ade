//! Kubernetes Events about pods, recorded the way the kubelet records them (Pulling,
//! Pulled, Created, Started, BackOff, Killing, Failed, OOMKilled, Trap).

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Bound on events being sent at once; beyond it events are dropped (and logged), so a
/// crash-looping node cannot pile up unbounded tasks against a slow control plane.
const MAX_IN_FLIGHT: usize = 256;

#[derive(Clone)]
pub struct EventRecorder {
    client: kube::Client,
    node: String,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
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
        let event = json!({
            "metadata": {"generateName": format!("{name}."), "namespace": namespace},
            "involvedObject": {
                "kind": "Pod",
                "apiVersion": "v1",
                "namespace": namespace,
                "name": name,
                "uid": pod.metadata.uid,
                "fieldPath": container.map(|c| format!("spec.containers{{{c}}}")),
            },
            "reason": reason,
            "message": message,
            "type": match kind { EventType::Normal => "Normal", EventType::Warning => "Warning" },
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
            if let Err(e) = api.create(&PostParams::default(), &event).await {
                tracing::debug!(error = %e, "recording an event failed");
            }
        });
    }
}
