//! The agent's Node: registering it with capacity, labels, addresses and nodeInfo,
//! renewing its Lease, and registering again whenever the control plane has lost it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::AgentConfig;
use crate::wasm::EngineReport;

/// How long the control plane waits for a renewal before it considers the node gone.
const LEASE_DURATION_SECONDS: i32 = 40;

pub const RUNTIME_LABEL: (&str, &str) = ("skiff.dev/runtime", "wasmtime");

/// The label that says which code generator runs guests here: `cranelift` (native code)
/// or `pulley` (wasmtime's interpreter). A pod that needs native speed can select it.
pub const ENGINE_LABEL: &str = "skiff.dev/wasm-engine";

/// The annotations that say how guests' memory is set up on this host, and why.
pub const TARGET_ANNOTATION: &str = "skiff.dev/wasm-target";
pub const RESERVATION_ANNOTATION: &str = "skiff.dev/wasm-memory-reservation";
pub const ALLOCATION_ANNOTATION: &str = "skiff.dev/http-instance-allocation";
pub const ALLOCATION_REASON_ANNOTATION: &str = "skiff.dev/http-instance-allocation-reason";

fn engine_annotations(engine: &EngineReport) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TARGET_ANNOTATION.to_owned(), engine.target.clone()),
        (
            RESERVATION_ANNOTATION.to_owned(),
            engine.memory.reservation_text(),
        ),
        (
            ALLOCATION_ANNOTATION.to_owned(),
            engine.memory.http.mode().to_owned(),
        ),
        (
            ALLOCATION_REASON_ANNOTATION.to_owned(),
            engine.memory.http.to_string(),
        ),
    ])
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    read_trimmed("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn total_memory_kib() -> u64 {
    crate::wasm::host_memory_total().unwrap_or(0) / 1024
}

/// The Node object this agent registers.
pub fn node_object(
    config: &AgentConfig,
    engine: &EngineReport,
    listen: SocketAddr,
) -> serde_json::Value {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), config.name.clone()),
        (
            "kubernetes.io/os".to_string(),
            std::env::consts::OS.to_string(),
        ),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        (RUNTIME_LABEL.0.to_string(), RUNTIME_LABEL.1.to_string()),
        (ENGINE_LABEL.to_string(), engine.compiler.to_string()),
    ]);
    labels.extend(config.labels.iter().cloned());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let resources = json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", total_memory_kib()),
        "pods": config.pod_capacity.to_string(),
    });
    let now = skiff_api::time::now_rfc3339();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.name,
            "labels": labels,
            "annotations": engine_annotations(engine),
        },
        "spec": {},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": listen.ip().to_string()},
                {"type": "Hostname", "address": config.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": listen.port()}},
            "nodeInfo": {
                "machineID": read_trimmed("/etc/machine-id"),
                "systemUUID": "",
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "osImage": os_image(),
                "containerRuntimeVersion": "wasmtime://48.0.8",
                "kubeletVersion": concat!("v1.37.0-skiff-", env!("CARGO_PKG_VERSION")),
                "kubeProxyVersion": "",
                "operatingSystem": std::env::consts::OS,
                "architecture": arch(),
            },
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "skiff agent is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("registering node {name}")]
    RegisterFailed {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("renewing the lease of node {name}")]
    LeaseRenewFailed {
        name: String,
        #[source]
        source: kube::Error,
    },
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Creates the Node, or brings an existing one up to date (labels and status).
pub async fn register(
    client: &kube::Client,
    config: &AgentConfig,
    engine: &EngineReport,
    listen: SocketAddr,
) -> Result<(), NodeError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let desired = node_object(config, engine, listen);
    let fail = |source| NodeError::RegisterFailed {
        name: config.name.clone(),
        source,
    };
    let node: Node = serde_json::from_value(desired.clone()).expect("node_object is a valid Node");
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 409) => {
            let meta = json!({"metadata": {
                "labels": desired["metadata"]["labels"],
                "annotations": desired["metadata"]["annotations"],
            }});
            nodes
                .patch(&config.name, &PatchParams::default(), &Patch::Merge(&meta))
                .await
                .map_err(fail)?;
            let status = json!({"status": desired["status"]});
            nodes
                .patch_status(
                    &config.name,
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await
                .map_err(fail)?;
        }
        Err(e) => return Err(fail(e)),
    }
    tracing::info!(node = %config.name, "node registered");
    Ok(())
}

/// Renews the node's Lease (creating it if missing).
async fn renew_lease(client: &kube::Client, config: &AgentConfig) -> Result<(), NodeError> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let fail = |source| NodeError::LeaseRenewFailed {
        name: config.name.clone(),
        source,
    };
    let now = MicroTime(jiff::Timestamp::now());
    let spec = json!({"spec": {"holderIdentity": config.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": now}});
    match leases
        .patch(&config.name, &PatchParams::default(), &Patch::Merge(&spec))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": config.name, "namespace": "kube-node-lease"},
                "spec": spec["spec"],
            }))
            .expect("a valid Lease");
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
                .map_err(fail)
        }
        Err(e) => Err(fail(e)),
    }
}

/// Keeps the node registered and its Lease fresh until `stop`.
pub async fn keep_alive(
    client: kube::Client,
    config: AgentConfig,
    engine: EngineReport,
    listen: SocketAddr,
    mut images: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    stop: CancellationToken,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut ticker = tokio::time::interval(config.lease_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The images last written to the Node's status; None until written.
    let mut reported: Option<std::collections::BTreeSet<String>> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            changed = images.changed() => {
                if changed.is_ok() {
                    report_images(&nodes, &config, &images, &mut reported).await;
                }
                continue;
            }
        }
        // The control plane may have restarted from scratch or lost the Node: register again.
        match nodes.get_opt(&config.name).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(node = %config.name, "node object is gone; registering again");
                if let Err(e) = register(&client, &config, &engine, listen).await {
                    tracing::warn!(error = %e, "re-registration failed");
                    continue;
                }
                // A new Node object lists no images yet.
                reported = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable");
                continue;
            }
        }
        if let Err(e) = renew_lease(&client, &config).await {
            tracing::warn!(error = %e, "lease renewal failed");
        }
        if reported.as_ref() != Some(&*images.borrow()) {
            report_images(&nodes, &config, &images, &mut reported).await;
        }
    }
}

/// Most images a Node lists, as the kubelet's `--node-status-max-images` default.
const MAX_IMAGES: usize = 50;

/// Writes the images this node holds into its status (`status.images`), as the kubelet
/// does, for the scheduler's image locality score.
async fn report_images(
    nodes: &Api<Node>,
    config: &AgentConfig,
    images: &tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    reported: &mut Option<std::collections::BTreeSet<String>>,
) {
    let now = images.borrow().clone();
    let listed: Vec<serde_json::Value> = now
        .iter()
        .take(MAX_IMAGES)
        .map(|image| json!({"names": [image]}))
        .collect();
    let patch = json!({"status": {"images": listed}});
    match nodes
        .patch_status(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => *reported = Some(now),
        Err(e) => tracing::debug!(error = %e, "reporting the node's images failed"),
    }
}
