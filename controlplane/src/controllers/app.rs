//! The App controller: an App (`skiff.dev/v1`) owns a Deployment and a Service of its
//! name, and its status reports the URL on the gateway that serves it, its replica
//! counts, the module it serves, and a Ready condition.
//!
//! - The Deployment's pods run the App's module as one container `app`, with the App's
//!   env (plus POD_NAME, POD_NAMESPACE and NODE_NAME), resources and probes, and the
//!   annotations the agent reads: routes and allowed outbound hosts.
//! - Updates roll with `maxUnavailable: 0, maxSurge: 1`, so serving capacity never
//!   drops while a new module rolls out.
//! - The Service selects the App's pods; its `skiff.dev/routes` annotation gives the
//!   gateway the App's own route, besides the default `/NAMESPACE/NAME/` and
//!   `NAME.NAMESPACE.localhost`.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::{Action, Context, Controller, controller_of, split_key};
use crate::apiserver::{internal, record_event};
use crate::error::ApiError;
use crate::informer::Cache;
use crate::objects;
use crate::state::ApiServer;

/// The label that ties an App's Deployment, Service and pods to it.
pub use crate::kinds::app::APP_LABEL;
pub use skiff_api::app::SCALE_FROM_ZERO_ANNOTATION;
pub use skiff_api::routes::{OUTBOUND_ANNOTATION, ROUTES_ANNOTATION};
const WORKERS: usize = 2;

pub fn apps() -> &'static ResourceInfo {
    crate::kinds::lookup("skiff.dev", "v1", "apps").expect("apps are served")
}

fn deployments() -> &'static ResourceInfo {
    crate::kinds::lookup("apps", "v1", "deployments").expect("deployments are served")
}

fn services() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "services").expect("services are served")
}

/// The default path of an App on the gateway.
pub fn default_path(namespace: &str, name: &str) -> String {
    format!("/{namespace}/{name}/")
}

/// Every route of an App, as the routes annotation lists them.
pub fn routes(app: &Value) -> String {
    let ns = objects::namespace(app).unwrap_or("default");
    let name = objects::name(app);
    let mut routes = vec![default_path(ns, name), format!("{name}.{ns}.localhost")];
    let host = app.pointer("/spec/route/host").and_then(Value::as_str);
    let path = app.pointer("/spec/route/path").and_then(Value::as_str);
    match (host, path) {
        (Some(h), Some(p)) => routes.push(format!("{h}{p}")),
        (Some(h), None) => routes.push(h.to_string()),
        (None, Some(p)) => routes.push(p.to_string()),
        (None, None) => {}
    }
    routes.join(",")
}

pub struct AppController {
    api: Arc<ApiServer>,
    apps: Arc<Cache>,
    deployments: Arc<Cache>,
    services: Arc<Cache>,
    pods: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let apps = ctx.cache("skiff.dev", "apps");
    let deployments = ctx.cache("apps", "deployments");
    let services = ctx.cache("", "services");
    // Read for the imageID the App's pods report; a pod's readiness reaches the App
    // through its Deployment's status, so the pods need no watch of their own here.
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(AppController {
        api: ctx.api().clone(),
        apps: apps.clone(),
        deployments: deployments.clone(),
        services: services.clone(),
        pods,
    });
    let autoscaler = autoscale(ctrl.clone(), stop.clone());
    let controller = Controller::new(&ctx, "app", &apps)
        .owns(&deployments, "App")
        .owns(&services, "App")
        .workers(WORKERS)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop);
    tokio::join!(autoscaler, controller);
}

/// How often the autoscaler looks at the Apps' demand (the figures themselves are as
/// fresh as the last scrape, see `crate::usage`).
const AUTOSCALE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The autoscaler's decision for one App: the replicas to scale to, if any.
/// `lower` is when demand first fell below `current`, and the most replicas it has
/// asked for since (kept between ticks). Up at once; down only after demand has stayed
/// lower for `delay`, and then to the most it asked for over that time (so a dip does
/// not take replicas a moment later wants back); never while a replica has no figure
/// yet (it just started, and may be serving the request that woke the App).
fn decide(
    current: i64,
    desired: i64,
    unmeasured: bool,
    lower: &mut Option<(std::time::Instant, i64)>,
    now: std::time::Instant,
    delay: std::time::Duration,
) -> Option<i64> {
    if desired >= current || unmeasured {
        *lower = None;
        return (desired > current).then_some(desired);
    }
    let (since, highest) = lower.get_or_insert((now, desired));
    *highest = (*highest).max(desired);
    if now.duration_since(*since) >= delay {
        let to = *highest;
        *lower = None;
        Some(to)
    } else {
        None
    }
}

/// The replicas `demand` asks for: its ratio to the target, rounded up, within the
/// bounds; any traffic at all keeps one.
fn desired_replicas(scale: &Autoscale, rps: f64, in_flight: f64) -> i64 {
    let (demand, per) = match scale.target {
        Target::RequestsPerSecond(per) => (rps, per),
        Target::Concurrency(per) => (in_flight, per),
    };
    let mut desired = (demand / per).ceil() as i64;
    if rps > 0.0 || in_flight > 0.0 {
        desired = desired.max(1);
    }
    desired.clamp(scale.min, scale.max)
}

/// Scales each App that has `spec.autoscale` with its requests: the request rate or
/// concurrency its pods report (`crate::usage`), against the target per replica.
async fn autoscale(ctrl: Arc<AppController>, stop: CancellationToken) {
    let mut lower: std::collections::HashMap<String, (std::time::Instant, i64)> =
        Default::default();
    let mut tick = tokio::time::interval(AUTOSCALE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let pods = ctrl.pods.snapshot();
        let mut seen = std::collections::HashSet::new();
        for app in ctrl.apps.snapshot() {
            let Some(scale) = autoscale_of(&app) else {
                continue;
            };
            if objects::is_deleting(&app) {
                continue;
            }
            let ns = objects::namespace(&app).unwrap_or("default");
            let name = objects::name(&app);
            let key = format!("{ns}/{name}");
            let Some(deployment) = ctrl.deployments.get(&deployments().key(Some(ns), name)) else {
                continue;
            };
            let uid = objects::meta_str(&app, "uid").unwrap_or_default();
            if controller_of(&deployment).is_none_or(|(_, _, u)| u != uid) {
                continue;
            }
            let current = deployment
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let (mut rps, mut in_flight, mut unmeasured) = (0.0, 0.0, false);
            let live: Vec<&Arc<Value>> = pods
                .iter()
                .filter(|p| {
                    objects::namespace(p) == Some(ns)
                        && !objects::is_deleting(p)
                        && p.pointer("/metadata/labels")
                            .and_then(|l| l.get(APP_LABEL))
                            .and_then(Value::as_str)
                            == Some(name)
                })
                .collect();
            // Replicas asked for but not yet created (the App was just woken): their
            // pods may be about to serve the requests that woke it.
            if (live.len() as i64) < current {
                unmeasured = true;
            }
            for pod in live {
                match ctrl.api.usage.of_pod(pod) {
                    Some(usage) => {
                        rps += usage.requests_per_second;
                        in_flight += usage.in_flight as f64;
                    }
                    // Only a running pod is measured; one that cannot start (Pending,
                    // Failed) has no figure and holds nothing.
                    None if pod.pointer("/status/phase").and_then(Value::as_str)
                        == Some("Running") =>
                    {
                        unmeasured = true;
                    }
                    None => {}
                }
            }
            let desired = desired_replicas(&scale, rps, in_flight);
            let mut since = lower.remove(&key);
            let decision = decide(
                current,
                desired,
                unmeasured,
                &mut since,
                std::time::Instant::now(),
                scale.delay,
            );
            if let Some(since) = since {
                lower.insert(key.clone(), since);
            }
            seen.insert(key);
            let Some(to) = decision else {
                continue;
            };
            let scaled = internal::update(&ctrl.api, deployments(), Some(ns), name, |cur| {
                let mut next = cur.clone();
                // Only from the count decided on: the gateway may have woken the App since.
                if cur.pointer("/spec/replicas").and_then(Value::as_i64) == Some(current) {
                    next["spec"]["replicas"] = json!(to);
                }
                Ok(next)
            })
            .await;
            if let Err(e) = scaled {
                tracing::warn!(app = %format_args!("{ns}/{name}"), error = %e, "autoscaling the App failed");
                continue;
            }
            let demand = match scale.target {
                Target::RequestsPerSecond(per) => {
                    format!("{rps:.1} requests/s against a target of {per} per replica")
                }
                Target::Concurrency(per) => {
                    format!("{in_flight} requests in flight against a target of {per} per replica")
                }
            };
            let (reason, message) = match to {
                0 => (
                    "ScaledToZero",
                    format!("Scaled to zero: no requests for {:?}", scale.delay),
                ),
                _ if to > current => (
                    "ScaledUp",
                    format!("Scaled from {current} to {to} replicas: {demand}"),
                ),
                _ => (
                    "ScaledDown",
                    format!("Scaled from {current} to {to} replicas: {demand}"),
                ),
            };
            ctrl.event(&app, "Normal", reason, message).await;
        }
        lower.retain(|k, _| seen.contains(k));
    }
}

fn owner_ref(app: &Value) -> Value {
    json!({"apiVersion": "skiff.dev/v1", "kind": "App", "name": objects::name(app), "uid": objects::meta_str(app, "uid"), "controller": true, "blockOwnerDeletion": true})
}

/// An App's `spec.autoscale`: (min, max, target, scale-down delay).
pub(crate) struct Autoscale {
    pub min: i64,
    pub max: i64,
    pub target: Target,
    pub delay: std::time::Duration,
}

/// What one replica should take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    RequestsPerSecond(f64),
    Concurrency(f64),
}

pub(crate) fn autoscale_of(app: &Value) -> Option<Autoscale> {
    let scale = app.pointer("/spec/autoscale").filter(|v| v.is_object())?;
    let int = |f: &str| scale.get(f).and_then(Value::as_i64);
    let target = match (int("targetRequestsPerSecond"), int("targetConcurrency")) {
        (Some(rps), _) => Target::RequestsPerSecond(rps.max(1) as f64),
        (None, Some(c)) => Target::Concurrency(c.max(1) as f64),
        (None, None) => return None,
    };
    let max = int("maxReplicas").unwrap_or(1).max(1);
    Some(Autoscale {
        min: int("minReplicas").unwrap_or(1).clamp(0, max),
        max,
        target,
        delay: scale
            .get("scaleDownDelay")
            .and_then(Value::as_str)
            .and_then(skiff_api::app::parse_delay)
            .unwrap_or(skiff_api::app::DEFAULT_SCALE_DOWN_DELAY),
    })
}

/// The replicas an App's Deployment should have: `spec.replicas` (default 1); with
/// autoscaling, what the Deployment has (the autoscaler's last decision) within
/// [minReplicas, maxReplicas], starting from `spec.replicas` (default 1).
fn wanted_replicas(app: &Value, deployment: Option<&Value>) -> i64 {
    let asked = app
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    match autoscale_of(app) {
        None => asked,
        Some(a) => deployment
            .and_then(|d| d.pointer("/spec/replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(asked)
            .clamp(a.min, a.max),
    }
}

/// The Deployment an App wants.
fn deployment_for(app: &Value, current: Option<&Value>) -> Value {
    let name = objects::name(app);
    let spec = app.get("spec").cloned().unwrap_or_default();
    let field = |path: &str| {
        ["POD_NAME", "POD_NAMESPACE", "NODE_NAME"]
            .iter()
            .zip(["metadata.name", "metadata.namespace", "spec.nodeName"])
            .find(|(n, _)| **n == path)
            .map(|(n, f)| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": f}}}))
            .expect("listed")
    };
    let mut env: Vec<Value> = vec![
        field("POD_NAME"),
        field("POD_NAMESPACE"),
        field("NODE_NAME"),
    ];
    env.extend(
        spec.get("env")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    );
    let mut container = json!({
        "name": "app",
        "image": image_of(app),
        "env": env,
    });
    for key in ["resources", "readinessProbe", "livenessProbe"] {
        if let Some(v) = spec.get(key).filter(|v| !v.is_null()) {
            container[key] = v.clone();
        }
    }
    let mut pod_spec = json!({"containers": [container]});
    if let Some(secrets) = spec.get("imagePullSecrets").filter(|v| !v.is_null()) {
        pod_spec["imagePullSecrets"] = secrets.clone();
    }
    let mut annotations = json!({ROUTES_ANNOTATION: routes(app)});
    if let Some(hosts) = spec.get("allowedOutboundHosts").and_then(Value::as_array) {
        let hosts: Vec<&str> = hosts.iter().filter_map(Value::as_str).collect();
        annotations[OUTBOUND_ANNOTATION] = json!(hosts.join(","));
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {APP_LABEL: name},
            "ownerReferences": [owner_ref(app)],
        },
        "spec": {
            "replicas": wanted_replicas(app, current),
            "selector": {"matchLabels": {APP_LABEL: name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {APP_LABEL: name}, "annotations": annotations},
                "spec": pod_spec,
            },
        },
    })
}

/// The pods' image: `spec.module`, without the `oci://` an App may write in front of a
/// registry reference.
fn image_of(app: &Value) -> &str {
    let module = module_of(app);
    module.strip_prefix("oci://").unwrap_or(module)
}

/// The `imageID` the App's ready pods of its current module report, when they all
/// report the same one.
fn image_id_of(app: &Value, pods: &[Arc<Value>]) -> Option<String> {
    let ns = objects::namespace(app);
    let name = objects::name(app);
    let image = image_of(app);
    let mut ids = pods
        .iter()
        .filter(|p| {
            objects::namespace(p) == ns
                && p.pointer("/metadata/labels")
                    .and_then(|l| l.get(APP_LABEL))
                    .and_then(Value::as_str)
                    == Some(name)
                && p.pointer("/spec/containers/0/image")
                    .and_then(Value::as_str)
                    == Some(image)
                && p.pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .map(|p| {
            p.pointer("/status/containerStatuses/0/imageID")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
        });
    let first = ids.next()??;
    ids.all(|id| id == Some(first)).then(|| first.to_string())
}

fn module_of(app: &Value) -> &str {
    app.pointer("/spec/module")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The routes, and whether the gateway holds requests while a replica starts.
fn service_annotations(app: &Value) -> Value {
    let mut annotations = json!({ROUTES_ANNOTATION: routes(app)});
    if autoscale_of(app).is_some_and(|a| a.min == 0) {
        annotations[SCALE_FROM_ZERO_ANNOTATION] = json!("true");
    }
    annotations
}

fn service_for(app: &Value) -> Value {
    let name = objects::name(app);
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "labels": {APP_LABEL: name},
            "annotations": service_annotations(app),
            "ownerReferences": [owner_ref(app)],
        },
        "spec": {
            "selector": {APP_LABEL: name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    })
}

impl AppController {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(app) = self.apps.get(&apps().key(Some(ns), name)) else {
            return Ok(Action::Done);
        };
        if objects::is_deleting(&app) {
            return Ok(Action::Done);
        }
        let uid = objects::meta_str(&app, "uid").unwrap_or_default();
        let ours = |obj: &Value| controller_of(obj).is_some_and(|(_, _, u)| u == uid);

        // The Deployment.
        let existing = self.deployments.get(&deployments().key(Some(ns), name));
        let wanted = deployment_for(&app, existing.as_deref());
        let deployment = match existing {
            None => {
                match internal::create(&self.api, deployments(), Some(ns), wanted.clone()).await {
                    Ok(created) => {
                        self.event(
                            &app,
                            "Normal",
                            "Created",
                            format!("Created Deployment {name} for module {}", module_of(&app)),
                        )
                        .await;
                        Some(Arc::new(created))
                    }
                    Err(ApiError::AlreadyExists(_)) => None,
                    Err(e) => return Err(e),
                }
            }
            Some(current) if !ours(&current) => {
                self.conflict(
                    &app,
                    &format!("a Deployment named {name} exists and is not this App's"),
                )
                .await?;
                return Ok(Action::Done);
            }
            Some(current) => {
                let differs = current.pointer("/spec/replicas") != wanted.pointer("/spec/replicas")
                    || !same_template(&current, &wanted);
                if differs {
                    let (reason, message) = if same_template(&current, &wanted) {
                        let replicas = wanted
                            .pointer("/spec/replicas")
                            .cloned()
                            .unwrap_or_default();
                        ("Scaled", format!("Scaled Deployment {name} to {replicas}"))
                    } else {
                        (
                            "RollingOut",
                            format!(
                                "Rolling out module {} to Deployment {name}",
                                module_of(&app)
                            ),
                        )
                    };
                    self.event(&app, "Normal", reason, message).await;
                    let updated =
                        internal::update(&self.api, deployments(), Some(ns), name, |cur| {
                            let mut next = cur.clone();
                            // From the stored Deployment, not the cached one: the
                            // autoscaler or the gateway may have scaled it since.
                            next["spec"]["replicas"] = json!(wanted_replicas(&app, Some(cur)));
                            next["spec"]["template"] = wanted["spec"]["template"].clone();
                            next["spec"]["strategy"] = wanted["spec"]["strategy"].clone();
                            Ok(next)
                        })
                        .await?;
                    Some(Arc::new(updated))
                } else {
                    Some(current)
                }
            }
        };

        // The Service.
        let wanted = service_for(&app);
        match self.services.get(&services().key(Some(ns), name)) {
            None => match internal::create(&self.api, services(), Some(ns), wanted).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            },
            Some(current) if !ours(&current) => {
                self.conflict(
                    &app,
                    &format!("a Service named {name} exists and is not this App's"),
                )
                .await?;
                return Ok(Action::Done);
            }
            Some(current) => {
                let holds = |s: &Value| {
                    s.pointer("/metadata/annotations")
                        .and_then(|a| a.get(SCALE_FROM_ZERO_ANNOTATION))
                        .cloned()
                };
                if routes_of(&current) != routes_of(&wanted) || holds(&current) != holds(&wanted) {
                    internal::update(&self.api, services(), Some(ns), name, |cur| {
                        let mut next = cur.clone();
                        objects::set_path(
                            &mut next,
                            &["metadata", "annotations", ROUTES_ANNOTATION],
                            json!(routes_of(&wanted)),
                        );
                        if let Some(annotations) = next
                            .pointer_mut("/metadata/annotations")
                            .and_then(Value::as_object_mut)
                        {
                            match holds(&wanted) {
                                Some(v) => {
                                    annotations.insert(SCALE_FROM_ZERO_ANNOTATION.into(), v);
                                }
                                None => {
                                    annotations.remove(SCALE_FROM_ZERO_ANNOTATION);
                                }
                            }
                        }
                        Ok(next)
                    })
                    .await?;
                }
            }
        }
        self.update_status(&app, deployment.as_deref()).await?;
        Ok(Action::Done)
    }

    async fn event(&self, app: &Value, kind: &str, reason: &str, message: String) {
        record_event(&self.api, app, kind, reason, message, "app-controller").await;
    }

    async fn conflict(&self, app: &Value, message: &str) -> Result<(), ApiError> {
        let already = app
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "NameConflict"));
        if !already {
            self.event(app, "Warning", "NameConflict", message.to_string())
                .await;
        }
        let status = json!({
            "observedGeneration": app.pointer("/metadata/generation"),
            "conditions": [{"type": "Ready", "status": "False", "reason": "NameConflict", "message": message, "lastTransitionTime": objects::now_rfc3339()}],
        });
        match internal::merge_status(
            &self.api,
            apps(),
            objects::namespace(app),
            objects::name(app),
            &status,
        )
        .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn update_status(&self, app: &Value, deployment: Option<&Value>) -> Result<(), ApiError> {
        let ns = objects::namespace(app).unwrap_or("default");
        let name = objects::name(app);
        let replicas = wanted_replicas(app, deployment);
        let d = deployment
            .and_then(|d| d.get("status"))
            .cloned()
            .unwrap_or_default();
        let count = |f: &str| d.get(f).and_then(Value::as_i64).unwrap_or(0);
        let current = deployment
            .is_some_and(|dep| d.get("observedGeneration") == dep.pointer("/metadata/generation"));
        let rolled_out = current
            && count("updatedReplicas") == replicas
            && count("replicas") == replicas
            && count("availableReplicas") == replicas;
        let progress_failed = d
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Progressing" && c["status"] == "False")
            .and_then(|c| c["message"].as_str())
            .map(str::to_string);
        let (ready, reason, message) = if rolled_out {
            (
                "True",
                "RolledOut",
                format!("{replicas} of {replicas} replicas serve the current module"),
            )
        } else if let Some(failed) = progress_failed {
            ("False", "ProgressDeadlineExceeded", failed)
        } else {
            (
                "False",
                "RollingOut",
                format!(
                    "{} of {replicas} replicas updated, {} available",
                    count("updatedReplicas"),
                    count("availableReplicas")
                ),
            )
        };
        let url = self
            .api
            .config
            .gateway_url
            .as_ref()
            .map(|g| format!("{g}{}", default_path(ns, name)));
        let previous = app
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
            .cloned();
        let transition = previous
            .as_ref()
            .filter(|c| c["status"] == ready)
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(objects::now_rfc3339()));
        let mut status = json!({
            "url": url,
            "replicas": count("replicas"),
            "readyReplicas": count("readyReplicas"),
            "updatedReplicas": count("updatedReplicas"),
            "availableReplicas": count("availableReplicas"),
            "moduleDigest": app.pointer("/spec/module"),
            "observedGeneration": app.pointer("/metadata/generation"),
            "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message, "lastTransitionTime": transition, "observedGeneration": app.pointer("/metadata/generation")}],
        });
        if let Some(id) = image_id_of(app, &self.pods.snapshot()) {
            status["imageID"] = json!(id);
        }
        let old = app.get("status").cloned().unwrap_or_default();
        if old == status {
            return Ok(());
        }
        if ready == "True" && previous.is_none_or(|c| c["status"] != "True") {
            self.event(
                app,
                "Normal",
                "Ready",
                format!(
                    "{message}{}",
                    url.as_deref()
                        .map(|u| format!(", at {u}"))
                        .unwrap_or_default()
                ),
            )
            .await;
        }
        match internal::update_status(&self.api, apps(), Some(ns), name, |cur| {
            let mut next = cur.clone();
            next["status"] = status.clone();
            Ok(next)
        })
        .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn routes_of(service: &Value) -> String {
    service
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ROUTES_ANNOTATION))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Whether the Deployment's template already is the wanted one, compared as stored:
/// the wanted one goes through the same normalization and defaulting first.
fn same_template(current: &Value, wanted: &Value) -> bool {
    let kind = crate::kinds::of(deployments());
    let Ok(mut wanted) = kind.normalize(wanted.clone()) else {
        return false;
    };
    kind.default(&mut wanted);
    super::deployment::without_hash(current.pointer("/spec/template"))
        == super::deployment::without_hash(wanted.pointer("/spec/template"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, image: &str, ready: bool, image_id: Option<&str>) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {APP_LABEL: "web"}},
            "spec": {"containers": [{"name": "app", "image": image}]},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "app", "imageID": image_id}],
            },
        }))
    }

    #[test]
    fn image_id_is_what_the_ready_current_pods_agree_on() {
        let app = json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"module": "reg.example/t/web:v2"},
        });
        let v1 = "reg.example/t/web:v1";
        let v2 = "reg.example/t/web:v2";
        let (id1, id2) = ("reg.example/t/web@sha256:01", "reg.example/t/web@sha256:02");
        // Old pods and unready ones do not count.
        let pods = vec![
            pod("a", v2, true, Some(id2)),
            pod("b", v2, true, Some(id2)),
            pod("c", v1, true, Some(id1)),
            pod("d", v2, false, Some(id1)),
        ];
        assert_eq!(image_id_of(&app, &pods).as_deref(), Some(id2));
        // Another App's pod, or one in another namespace, does not count either.
        let mut other = pod("e", v2, true, Some(id1));
        Arc::make_mut(&mut other)["metadata"]["labels"][APP_LABEL] = json!("other");
        let mut elsewhere = pod("f", v2, true, Some(id1));
        Arc::make_mut(&mut elsewhere)["metadata"]["namespace"] = json!("prod");
        let more = [pods.clone(), vec![other, elsewhere]].concat();
        assert_eq!(image_id_of(&app, &more).as_deref(), Some(id2));
        // Ready pods of the current module that disagree (a tag moved mid-rollout), or
        // one that reports none: no imageID.
        let split = [pods.clone(), vec![pod("g", v2, true, Some(id1))]].concat();
        assert_eq!(image_id_of(&app, &split), None);
        let unreported = [pods, vec![pod("h", v2, true, None)]].concat();
        assert_eq!(image_id_of(&app, &unreported), None);
        assert_eq!(image_id_of(&app, &[]), None);
    }

    #[test]
    fn pull_secrets_reach_the_pods() {
        let app = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u"},
            "spec": {"module": "reg.example/t/web:v2", "imagePullSecrets": [{"name": "regcred"}]},
        });
        let deployment = deployment_for(&app, None);
        assert_eq!(
            deployment.pointer("/spec/template/spec/imagePullSecrets"),
            Some(&json!([{"name": "regcred"}]))
        );
        assert_eq!(
            deployment.pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("reg.example/t/web:v2"))
        );
        let oci =
            json!({"metadata": {"name": "web"}, "spec": {"module": "oci://reg.example/t/web:v2"}});
        assert_eq!(
            deployment_for(&oci, None).pointer("/spec/template/spec/containers/0/image"),
            Some(&json!("reg.example/t/web:v2"))
        );
        let plain = json!({"metadata": {"name": "web"}, "spec": {"module": "sha256:00"}});
        assert_eq!(
            deployment_for(&plain, None).pointer("/spec/template/spec/imagePullSecrets"),
            None
        );
    }
}

#[cfg(test)]
mod autoscale_tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn scale(min: i64, max: i64, target: Target) -> Autoscale {
        Autoscale {
            min,
            max,
            target,
            delay: Duration::from_secs(30),
        }
    }

    #[test]
    fn demand_over_the_target_per_replica_rounded_up_within_bounds() {
        let rps = scale(0, 5, Target::RequestsPerSecond(10.0));
        assert_eq!(desired_replicas(&rps, 0.0, 0.0), 0);
        assert_eq!(desired_replicas(&rps, 0.5, 0.0), 1, "any traffic keeps one");
        assert_eq!(
            desired_replicas(&rps, 0.0, 1.0),
            1,
            "so does a request in flight"
        );
        assert_eq!(desired_replicas(&rps, 25.0, 0.0), 3);
        assert_eq!(desired_replicas(&rps, 900.0, 0.0), 5);
        let conc = scale(1, 4, Target::Concurrency(2.0));
        assert_eq!(desired_replicas(&conc, 0.0, 0.0), 1);
        assert_eq!(desired_replicas(&conc, 50.0, 5.0), 3);
    }

    #[test]
    fn up_at_once_down_after_the_delay_and_never_while_a_replica_is_unmeasured() {
        let delay = Duration::from_secs(30);
        let t0 = Instant::now();
        let mut lower = None;
        assert_eq!(decide(1, 3, false, &mut lower, t0, delay), Some(3));
        assert_eq!(decide(3, 0, false, &mut lower, t0, delay), None);
        assert_eq!(lower, Some((t0, 0)));
        let later = t0 + Duration::from_secs(10);
        assert_eq!(decide(3, 0, false, &mut lower, later, delay), None);
        // A new replica without figures resets the wait.
        assert_eq!(decide(3, 0, true, &mut lower, later, delay), None);
        assert_eq!(lower, None);
        let t1 = t0 + Duration::from_secs(40);
        assert_eq!(decide(3, 0, false, &mut lower, t1, delay), None);
        // A moment within the window that wanted two keeps two.
        assert_eq!(
            decide(3, 2, false, &mut lower, t1 + Duration::from_secs(5), delay),
            None
        );
        assert_eq!(decide(3, 0, false, &mut lower, t1 + delay, delay), Some(2));
        assert_eq!(lower, None);
    }

    #[test]
    fn autoscale_bounds_clamp_the_deployment() {
        let app = json!({"spec": {"module": "m", "replicas": 7,
            "autoscale": {"minReplicas": 0, "maxReplicas": 3, "targetConcurrency": 5}}});
        assert_eq!(wanted_replicas(&app, None), 3);
        let deployment = json!({"spec": {"replicas": 0}});
        assert_eq!(wanted_replicas(&app, Some(&deployment)), 0);
        assert_eq!(
            service_annotations(&app)[SCALE_FROM_ZERO_ANNOTATION],
            json!("true")
        );
        let fixed = json!({"spec": {"module": "m", "replicas": 2}});
        assert_eq!(wanted_replicas(&fixed, Some(&deployment)), 2);
    }
}
