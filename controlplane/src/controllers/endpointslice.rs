//! The EndpointSlice controller: for every Service with a selector, one
//! `discovery.k8s.io/v1` EndpointSlice listing the pods the selector picks, with the
//! conditions Kubernetes gives them (`ready`, `serving`, `terminating`), their node and
//! a reference to the pod. The gateway routes to the ready ones.
//!
//! Slices are named after their Service (`NAME-skiff`), labelled
//! `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`, and owned by
//! the Service, so deleting the Service collects them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::podutil::{is_ready, labels};
use super::{Action, Context, Controller, split_key};
use crate::apiserver::internal;
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;
use crate::state::ApiServer;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.skiff.dev";
const WORKERS: usize = 2;

fn services() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "services").expect("services are served")
}

fn slices() -> &'static ResourceInfo {
    crate::kinds::lookup("discovery.k8s.io", "v1", "endpointslices")
        .expect("endpointslices are served")
}

/// The slice name for a Service.
pub fn slice_name(service: &str) -> String {
    format!("{service}-skiff")
}

pub struct EndpointSliceController {
    api: Arc<ApiServer>,
    services: Arc<Cache>,
    pods: Arc<Cache>,
    slices: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let services = ctx.cache("", "services");
    let pods = ctx.cache("", "pods");
    let slices = ctx.cache("discovery.k8s.io", "endpointslices");
    let ctrl = Arc::new(EndpointSliceController {
        api: ctx.api().clone(),
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
    });
    let observer = ctrl.clone();
    Controller::new(&ctx, "endpointslice", &services)
        .watches(&pods, move |e| observer.keys_for_pod_event(e))
        .owns(&slices, "Service")
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

/// A Service's selector as a label map; None for a Service without one (its endpoints
/// are managed by hand).
fn selector(service: &Value) -> Option<BTreeMap<String, String>> {
    let map = service.pointer("/spec/selector")?.as_object()?;
    if map.is_empty() {
        return None;
    }
    Some(
        map.iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

fn selects(selector: &BTreeMap<String, String>, pod: &Value) -> bool {
    let have = labels(pod);
    selector.iter().all(|(k, v)| have.get(k) == Some(v))
}

impl EndpointSliceController {
    /// Services in the pod's namespace whose selector picks it (before or after).
    fn keys_for_pod_event(&self, event: &CacheEvent) -> Vec<String> {
        let (pod, prev) = match event {
            CacheEvent::Changed { object, prev } => (object, prev.as_ref()),
            CacheEvent::Deleted(object) => (object, None),
            CacheEvent::Resynced => return vec![],
        };
        let ns = objects::namespace(pod).unwrap_or_default();
        self.services
            .snapshot()
            .iter()
            .filter(|s| objects::namespace(s) == Some(ns))
            .filter(|s| {
                selector(s)
                    .is_some_and(|sel| selects(&sel, pod) || prev.is_some_and(|p| selects(&sel, p)))
            })
            .map(|s| super::key_of(s))
            .collect()
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(service) = self.services.get(&services().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&service) {
            return Ok(Action::Done);
        }
        let Some(selector) = selector(&service) else {
            return Ok(Action::Done);
        };
        let mut endpoints: Vec<Value> = self
            .pods
            .snapshot()
            .iter()
            .filter(|p| objects::namespace(p) == Some(ns) && selects(&selector, p))
            .filter_map(|p| endpoint(p))
            .collect();
        endpoints.sort_by(|a, b| {
            a["targetRef"]["name"]
                .as_str()
                .cmp(&b["targetRef"]["name"].as_str())
        });
        let ports: Vec<Value> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                json!({
                    "name": p.get("name").cloned().unwrap_or(json!("")),
                    "port": p.get("targetPort").filter(|t| t.is_number()).or(p.get("port")).cloned(),
                    "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP")),
                })
            })
            .collect();
        let slice_name = slice_name(name);
        let wanted = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": ns,
                "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "uid": objects::meta_str(&service, "uid"), "controller": true, "blockOwnerDeletion": true}],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ports,
        });
        let current = self.slices.get(&slices().key(Some(ns), &slice_name));
        match current {
            None => match internal::create(&self.api, slices(), Some(ns), wanted).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            },
            Some(current) => {
                let same = current.get("endpoints").unwrap_or(&Value::Null)
                    == wanted.get("endpoints").unwrap_or(&Value::Null)
                    && current.get("ports") == wanted.get("ports");
                if !same {
                    internal::update(&self.api, slices(), Some(ns), &slice_name, |cur| {
                        let mut next = cur.clone();
                        next["endpoints"] = wanted["endpoints"].clone();
                        next["ports"] = wanted["ports"].clone();
                        Ok(next)
                    })
                    .await?;
                }
            }
        }
        Ok(Action::Done)
    }
}

/// A pod as an endpoint, once it is on a node with an address; finished pods are not
/// endpoints.
fn endpoint(pod: &Value) -> Option<Value> {
    let phase = pod.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    let ip = pod
        .pointer("/status/podIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())?;
    let terminating = objects::is_deleting(pod);
    let ready = is_ready(pod);
    Some(json!({
        "addresses": [ip],
        "conditions": {"ready": ready && !terminating, "serving": ready, "terminating": terminating},
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": objects::namespace(pod), "name": objects::name(pod), "uid": objects::meta_str(pod, "uid")},
    }))
}
