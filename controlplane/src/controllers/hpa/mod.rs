//! The horizontal pod autoscaler: every sync period (`--hpa-sync-period`, 15 s as
//! kube-controller-manager's), each HorizontalPodAutoscaler reads its target's `scale`
//! subresource (a Deployment, ReplicaSet, StatefulSet or App), the pods the Scale's
//! selector picks, and their usage from the last scrapes (`crate::usage`); works out
//! the replicas each metric asks for ([`calc`]), takes the largest, applies `behavior`
//! ([`behavior`]) and min and max, and writes the result through the `scale`
//! subresource, as `kubectl scale` would. Its status says what it saw
//! (`currentMetrics`, `currentReplicas`, `desiredReplicas`, `lastScaleTime`) and why it
//! did what it did (the `AbleToScale`, `ScalingActive` and `ScalingLimited`
//! conditions), with the events `kubectl describe hpa` shows.
//!
//! Metrics: Resource and ContainerResource (cpu and memory, as a percent of the pods'
//! requests or as an average value), Pods (`http_requests_per_second`,
//! `http_requests_in_flight`), Object (the same two summed over the pods of a scalable
//! object, such as an App). External metrics are not served: an autoscaler that names
//! one says so in `ScalingActive`, as Kubernetes does for a metric it cannot get.
//!
//! Time is the API's clock (`api.clock`), so tests move the windows with a fake one.

pub mod behavior;
pub mod calc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::quantity::format_milli;
use skiff_api::resources::{ResourceInfo, Subresource};
use skiff_api::selector::LabelSelector;

use super::podutil::is_ready;
use super::{Action, Context, Controller, split_key};
use crate::apiserver::{internal, record_event};
use crate::error::ApiError;
use crate::informer::Cache;
use crate::kinds::horizontalpodautoscaler::info as hpa_info;
use crate::objects;
use crate::state::ApiServer;
use crate::usage::PodUsage;
use behavior::{History, rules_of};
use calc::{Calculator, Sample, Samples, pod_requests};

/// kube-controller-manager's `--horizontal-pod-autoscaler-sync-period` default.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(15);

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The per-pod metrics the agents count, as Pods and Object metrics name them.
pub const REQUESTS_PER_SECOND: &str = "http_requests_per_second";
pub const REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";

struct Autoscaler {
    api: Arc<ApiServer>,
    hpas: Arc<Cache>,
    pods: Arc<Cache>,
    sync_period: Duration,
    memory: Mutex<HashMap<String, Memory>>,
}

/// What the controller keeps of one autoscaler between syncs.
#[derive(Default)]
struct Memory {
    history: History,
    /// When it last synced, and at which generation.
    synced: Option<(Timestamp, i64)>,
    /// The warnings of the last sync, and of this one: a lasting failure is one event,
    /// not one per sync.
    warned: HashSet<String>,
    warning: HashSet<String>,
}

pub async fn run(ctx: Arc<Context>, sync_period: Duration, stop: CancellationToken) {
    let hpas = ctx.cache("autoscaling", "horizontalpodautoscalers");
    let pods = ctx.cache("", "pods");
    let ctrl = Arc::new(Autoscaler {
        api: ctx.api().clone(),
        hpas: hpas.clone(),
        pods: pods.clone(),
        sync_period,
        memory: Mutex::new(HashMap::new()),
    });
    // Pods are read at each sync, not followed: the sync period paces the controller.
    Controller::new(&ctx, "horizontalpodautoscaler", &hpas)
        .watches(&pods, |_| Vec::new())
        .wakes_on(&ctx.api().clock)
        .workers(2)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

/// A condition as the status lists it.
#[derive(Debug, Clone, PartialEq)]
struct Condition {
    kind: &'static str,
    status: bool,
    reason: String,
    message: String,
}

fn condition(
    kind: &'static str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
) -> Condition {
    Condition {
        kind,
        status,
        reason: reason.to_string(),
        message: message.into(),
    }
}

/// Why a metric gave no replica count.
#[derive(Debug, Clone, PartialEq)]
struct MetricFailure {
    reason: &'static str,
    error: String,
}

/// What one metric asks for.
#[derive(Debug, Clone, PartialEq)]
struct Proposal {
    replicas: i64,
    /// How the rescale event names the metric.
    label: String,
    status: Value,
}

/// What the metrics were read as, and the ScalingActive condition that says whether
/// they gave a replica count.
struct Reading {
    statuses: Vec<Value>,
    active: Condition,
}

/// The outcome of one sync, to be written as status.
struct Outcome {
    current: i64,
    desired: Option<i64>,
    metrics: Option<Vec<Value>>,
    conditions: Vec<Condition>,
    rescaled: bool,
}

fn target_info(reference: &Value) -> Result<&'static ResourceInfo, String> {
    let kind = reference["kind"].as_str().unwrap_or_default();
    let api_version = reference["apiVersion"].as_str().unwrap_or_default();
    let found = if api_version.is_empty() {
        crate::kinds::all()
            .into_iter()
            .find(|i| i.kind == kind && i.has_subresource(Subresource::Scale))
    } else {
        crate::kinds::by_kind(api_version, kind)
    };
    let (group, _) = api_version.split_once('/').unwrap_or(("", api_version));
    match found {
        None => Err(format!(
            "no matches for kind \"{kind}\" in group \"{group}\""
        )),
        Some(info) if !info.has_subresource(Subresource::Scale) => Err(format!(
            "{} has no scale subresource",
            info.qualified_plural()
        )),
        Some(info) => Ok(info),
    }
}

fn metric_failure_reason(kind: &str) -> &'static str {
    match kind {
        "Resource" => "FailedGetResourceMetric",
        "ContainerResource" => "FailedGetContainerResourceMetric",
        "Pods" => "FailedGetPodsMetric",
        "Object" => "FailedGetObjectMetric",
        "External" => "FailedGetExternalMetric",
        _ => "InvalidMetricSourceType",
    }
}

fn milli_of(value: Option<&Value>, resource: &str) -> Option<i64> {
    let text = match value? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    calc::milli(&text, resource)
}

fn timestamp_of(usage: &PodUsage) -> Timestamp {
    Timestamp::try_from(usage.timestamp).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A pod's value of a per-pod metric the agents count, in thousandths.
fn pod_metric(usage: &PodUsage, metric: &str) -> Option<i64> {
    match metric {
        REQUESTS_PER_SECOND => Some((usage.requests_per_second * 1000.0).round() as i64),
        REQUESTS_IN_FLIGHT => Some(usage.in_flight as i64 * 1000),
        _ => None,
    }
}

/// What a sync reads: the pods, and a way to their usage.
struct View<'a> {
    pods: Vec<Arc<Value>>,
    usage: &'a crate::usage::Usage,
    calc: Calculator,
}

impl View<'_> {
    fn samples(&self, value: impl Fn(&PodUsage) -> Option<i64>) -> Samples {
        let mut out = Samples::new();
        for pod in &self.pods {
            let name = objects::name(pod);
            if let Some(u) = self.usage.of_pod(pod)
                && let Some(v) = value(&u)
            {
                out.insert(
                    name.to_string(),
                    Sample {
                        value: v,
                        timestamp: timestamp_of(&u),
                        window: u.window,
                    },
                );
            }
        }
        out
    }

    fn ready_pods(&self) -> usize {
        self.pods
            .iter()
            .filter(|p| {
                p.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && is_ready(p)
            })
            .count()
    }
}

/// A resource (cpu or memory) of each pod, or of one container of each.
fn resource_value(usage: &PodUsage, resource: &str, container: Option<&str>) -> Option<i64> {
    let pick = |c: &crate::usage::ContainerUsage| match resource {
        "cpu" => Some((c.cpu_nanocores / 1_000_000) as i64),
        "memory" => Some(c.memory_bytes as i64 * 1000),
        _ => None,
    };
    match container {
        Some(name) => usage
            .containers
            .iter()
            .find(|c| c.name == name)
            .and_then(pick),
        None => usage.containers.iter().map(pick).sum(),
    }
}

/// The replicas a Resource or ContainerResource metric asks for.
fn resource_proposal(
    view: &View<'_>,
    metric: &Value,
    current: i64,
    container: Option<&str>,
) -> Result<Proposal, String> {
    let field = if container.is_some() {
        "containerResource"
    } else {
        "resource"
    };
    let kind = if container.is_some() {
        "ContainerResource"
    } else {
        "Resource"
    };
    let source = &metric[field];
    let name = source["name"].as_str().unwrap_or_default();
    let samples = view.samples(|u| resource_value(u, name, container));
    if samples.is_empty() {
        return Err(format!(
            "unable to get metrics for resource {name}: no metrics returned from resource metrics API"
        ));
    }
    let cpu = name == "cpu";
    let what = if container.is_some() {
        "container resource"
    } else {
        "resource"
    };
    let mut status = json!({"type": kind, field: {"name": name}});
    if let Some(c) = container {
        status[field]["container"] = json!(c);
    }
    let target = &source["target"];
    if let Some(average) = milli_of(target.get("averageValue").filter(|v| !v.is_null()), name) {
        let (replicas, usage) = view
            .calc
            .plain_replicas(current, average, &view.pods, samples, cpu)?;
        status[field]["current"] = json!({"averageValue": format_milli(usage.max(0) as u64)});
        return Ok(Proposal {
            replicas,
            label: format!("{name} {what}"),
            status,
        });
    }
    let percent = target["averageUtilization"].as_i64().unwrap_or(0);
    let requests = pod_requests(&view.pods, container, name)?;
    let result = view
        .calc
        .resource_replicas(current, percent, &view.pods, samples, &requests, cpu)?;
    status[field]["current"] = json!({
        "averageUtilization": result.utilization,
        "averageValue": format_milli(result.average.max(0) as u64),
    });
    Ok(Proposal {
        replicas: result.replicas,
        label: format!("{name} {what} utilization (percentage of request)"),
        status,
    })
}

impl Autoscaler {
    fn memory<T>(&self, key: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut all = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(key.to_string()).or_default())
    }

    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (ns, name) = split_key(key);
        let Some(hpa) = self.hpas.get(&hpa_info().key(Some(ns), name)) else {
            self.memory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return Ok(Action::Done);
        };
        if objects::is_deleting(&hpa) {
            return Ok(Action::Done);
        }
        let now = self.api.clock.now();
        let generation = hpa
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let period = SignedDuration::try_from(self.sync_period).unwrap_or(SignedDuration::ZERO);
        // Woken by its own status write, or early: wait out the period, unless the spec
        // changed.
        if let Some((at, seen)) = self.memory(key, |m| m.synced)
            && seen == generation
            && now.duration_since(at) < period
        {
            let left = period - now.duration_since(at);
            return Ok(Action::RequeueAfter(left.unsigned_abs()));
        }
        self.memory(key, |m| {
            m.synced = Some((now, generation));
            m.warning.clear();
        });
        let outcome = self.reconcile(key, &hpa, now).await;
        self.memory(key, |m| m.warned = std::mem::take(&mut m.warning));
        self.write_status(&hpa, outcome, now).await?;
        Ok(Action::RequeueAfter(self.sync_period))
    }

    /// Records a warning unless it is the one last recorded for this autoscaler.
    async fn warn(&self, key: &str, hpa: &Value, reason: &str, message: String) {
        let text = format!("{reason}: {message}");
        let repeated = self.memory(key, |m| {
            m.warning.insert(text.clone());
            m.warned.contains(&text)
        });
        if repeated {
            return;
        }
        record_event(&self.api, hpa, "Warning", reason, message, COMPONENT).await;
    }

    async fn reconcile(&self, key: &str, hpa: &Value, now: Timestamp) -> Outcome {
        let ns = objects::namespace(hpa).unwrap_or("default");
        let spec = &hpa["spec"];
        let reference = &spec["scaleTargetRef"];
        let target_name = reference["name"].as_str().unwrap_or_default();
        let mut outcome = Outcome {
            current: hpa
                .pointer("/status/currentReplicas")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            desired: None,
            metrics: None,
            conditions: Vec::new(),
            rescaled: false,
        };
        let scale = match target_info(reference) {
            Ok(info) => internal::get_scale(&self.api, info, Some(ns), target_name)
                .await
                .map(|s| (info, s))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let (info, scale) = match scale {
            Ok(found) => found,
            Err(e) => {
                self.warn(key, hpa, "FailedGetScale", e.clone()).await;
                outcome.conditions.push(condition(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    format!("the HPA controller was unable to get the target's current scale: {e}"),
                ));
                return outcome;
            }
        };
        let current = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let status_replicas = scale
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        outcome.current = current;
        outcome.conditions.push(condition(
            "AbleToScale",
            true,
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        ));
        let min = spec["minReplicas"].as_i64().unwrap_or(1);
        let max = spec["maxReplicas"].as_i64().unwrap_or(min);
        let (desired, reason) = if current == 0 && min != 0 {
            outcome.desired = Some(0);
            outcome.conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ));
            return outcome;
        } else if current > max {
            (
                max,
                "Current number of replicas above Spec.MaxReplicas".to_string(),
            )
        } else if current < min {
            (
                min,
                "Current number of replicas below Spec.MinReplicas".to_string(),
            )
        } else {
            let selector = scale
                .pointer("/status/selector")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let proposed = match self
                .metrics_replicas(key, hpa, ns, selector, current, status_replicas, now)
                .await
            {
                Ok(found) => found,
                Err(failed) => {
                    outcome.metrics = Some(failed.statuses);
                    outcome.conditions.push(failed.active);
                    return outcome;
                }
            };
            let (metric_replicas, label, reading) = proposed;
            outcome.metrics = Some(reading.statuses);
            outcome.conditions.push(reading.active);
            let reason = if metric_replicas < current {
                "All metrics below target".to_string()
            } else {
                format!("{label} above target")
            };
            let (up, down) = rules_of(spec.get("behavior"));
            let (stable, limited) = self.memory(key, |m| {
                let stable = m
                    .history
                    .stabilize(now, current, metric_replicas, &up, &down);
                let limited = m
                    .history
                    .limit(now, current, stable.replicas, min, max, &up, &down);
                (stable, limited)
            });
            outcome.conditions.retain(|c| c.kind != "AbleToScale");
            outcome
                .conditions
                .push(if stable.replicas != metric_replicas {
                    condition("AbleToScale", true, stable.reason, stable.message)
                } else {
                    condition(
                        "AbleToScale",
                        true,
                        "ReadyForNewScale",
                        "recommended size matches current size",
                    )
                });
            outcome.conditions.push(condition(
                "ScalingLimited",
                limited.replicas != stable.replicas,
                limited.reason,
                limited.message,
            ));
            (limited.replicas, reason)
        };
        outcome.desired = Some(desired);
        if desired == current {
            return outcome;
        }
        match internal::set_scale(&self.api, info, Some(ns), target_name, desired).await {
            Ok(_) => {
                outcome.conditions.retain(|c| c.kind != "AbleToScale");
                outcome.conditions.push(condition(
                    "AbleToScale",
                    true,
                    "SucceededRescale",
                    format!("the HPA controller was able to update the target scale to {desired}"),
                ));
                outcome.rescaled = true;
                let (up, down) = rules_of(spec.get("behavior"));
                self.memory(key, |m| {
                    m.history.record_scale(now, current, desired, &up, &down)
                });
                record_event(
                    &self.api,
                    hpa,
                    "Normal",
                    "SuccessfulRescale",
                    format!("New size: {desired}; reason: {reason}"),
                    COMPONENT,
                )
                .await;
            }
            Err(e) => {
                outcome.desired = None;
                outcome.conditions.retain(|c| c.kind != "AbleToScale");
                outcome.conditions.push(condition(
                    "AbleToScale",
                    false,
                    "FailedUpdateScale",
                    format!("the HPA controller was unable to update the target scale: {e}"),
                ));
                self.warn(
                    key,
                    hpa,
                    "FailedRescale",
                    format!("New size: {desired}; reason: {reason}; error: {e}"),
                )
                .await;
            }
        }
        outcome
    }

    /// The largest replica count the metrics ask for, with how to name that metric, the
    /// metrics' statuses and the ScalingActive condition; or, when no metric gave a
    /// count (or some failed and the rest would scale down), the statuses and the
    /// conditions that say why.
    #[allow(clippy::too_many_arguments)] // reason: the parts of one sync, passed once
    async fn metrics_replicas(
        &self,
        key: &str,
        hpa: &Value,
        ns: &str,
        selector: &str,
        current: i64,
        status_replicas: i64,
        now: Timestamp,
    ) -> Result<(i64, String, Reading), Reading> {
        let metrics = hpa
            .pointer("/spec/metrics")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if selector.is_empty() {
            self.warn(key, hpa, "SelectorRequired", "selector is required".into())
                .await;
            return Err(Reading {
                statuses: Vec::new(),
                active: condition(
                    "ScalingActive",
                    false,
                    "InvalidSelector",
                    "the HPA target's scale is missing a selector",
                ),
            });
        }
        let parsed = match LabelSelector::parse(selector) {
            Ok(s) => s,
            Err(e) => {
                let message = format!(
                    "couldn't convert selector into a corresponding internal selector object: {e}"
                );
                self.warn(key, hpa, "InvalidSelector", message.clone())
                    .await;
                return Err(Reading {
                    statuses: Vec::new(),
                    active: condition("ScalingActive", false, "InvalidSelector", message),
                });
            }
        };
        let pods: Vec<Arc<Value>> = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| objects::namespace(p) == Some(ns) && parsed.matches_value(p))
            .collect();
        let view = View {
            pods,
            usage: &self.api.usage,
            calc: Calculator::new(now),
        };
        let mut statuses = Vec::new();
        let mut best: Option<(i64, String)> = None;
        let mut first_failure: Option<(MetricFailure, &'static str)> = None;
        let mut failures = 0;
        for metric in &metrics {
            match self
                .metric_replicas(&view, ns, metric, current, status_replicas)
                .await
            {
                Ok(p) => {
                    statuses.push(p.status);
                    if best.as_ref().is_none_or(|(r, _)| p.replicas > *r) {
                        best = Some((p.replicas, p.label));
                    }
                }
                Err(failure) => {
                    statuses.push(json!({"type": ""}));
                    failures += 1;
                    if first_failure.is_none() {
                        let kind = metric["type"].as_str().unwrap_or_default();
                        first_failure = Some((failure, metric_failure_reason(kind)));
                    }
                }
            }
        }
        let scale_down = best.as_ref().is_some_and(|(r, _)| *r < current);
        if let Some((failure, reason)) = first_failure
            && (best.is_none() || scale_down)
        {
            self.warn(key, hpa, reason, failure.error.clone()).await;
            let active = condition(
                "ScalingActive",
                false,
                failure.reason,
                format!(
                    "the HPA was unable to compute the replica count: {}",
                    failure.error
                ),
            );
            if best.is_none() {
                self.warn(
                    key,
                    hpa,
                    "FailedComputeMetricsReplicas",
                    format!(
                        "invalid metrics ({failures} invalid out of {}), first error is: {}",
                        metrics.len(),
                        failure.error
                    ),
                )
                .await;
            }
            return Err(Reading { statuses, active });
        }
        let Some((replicas, label)) = best else {
            return Err(Reading {
                statuses,
                active: condition(
                    "ScalingActive",
                    false,
                    "FailedGetResourceMetric",
                    "the HPA was unable to compute the replica count: no metrics",
                ),
            });
        };
        let active = condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            format!("the HPA was able to successfully calculate a replica count from {label}"),
        );
        Ok((replicas, label, Reading { statuses, active }))
    }

    async fn metric_replicas(
        &self,
        view: &View<'_>,
        ns: &str,
        metric: &Value,
        current: i64,
        status_replicas: i64,
    ) -> Result<Proposal, MetricFailure> {
        let kind = metric["type"].as_str().unwrap_or_default();
        let fail = |error: String| MetricFailure {
            reason: metric_failure_reason(kind),
            error,
        };
        match kind {
            "Resource" => resource_proposal(view, metric, current, None).map_err(fail),
            "ContainerResource" => {
                let container = metric
                    .pointer("/containerResource/container")
                    .and_then(Value::as_str);
                resource_proposal(view, metric, current, container).map_err(fail)
            }
            "Pods" => {
                let source = &metric["pods"];
                let name = source
                    .pointer("/metric/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !serves_pod_metric(name) {
                    return Err(fail(format!(
                        "unable to get metric {name}: the server could not find the metric {name} for pods (served: {REQUESTS_PER_SECOND}, {REQUESTS_IN_FLIGHT})"
                    )));
                }
                let target = milli_of(source.pointer("/target/averageValue"), "").unwrap_or(0);
                let samples = view.samples(|u| pod_metric(u, name));
                if samples.is_empty() {
                    return Err(fail(format!(
                        "unable to get metric {name}: no metrics returned from custom metrics API"
                    )));
                }
                let (replicas, average) = view
                    .calc
                    .plain_replicas(current, target, &view.pods, samples, false)
                    .map_err(fail)?;
                Ok(Proposal {
                    replicas,
                    label: format!("pods metric {name}"),
                    status: json!({"type": "Pods", "pods": {
                        "metric": source["metric"].clone(),
                        "current": {"averageValue": format_milli(average.max(0) as u64)}}}),
                })
            }
            "Object" => {
                let source = &metric["object"];
                let name = source
                    .pointer("/metric/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let described = &source["describedObject"];
                let usage = self.object_metric(ns, described, name).await.map_err(|e| {
                    fail(format!(
                        "unable to get metric {name}: {}/{}: {e}",
                        described["kind"].as_str().unwrap_or_default(),
                        described["name"].as_str().unwrap_or_default()
                    ))
                })?;
                let target = &source["target"];
                let label = format!(
                    "{} metric {name}",
                    described["kind"].as_str().unwrap_or_default()
                );
                let mut status = json!({"type": "Object", "object": {
                    "describedObject": described.clone(), "metric": source["metric"].clone()}});
                let replicas = if let Some(average) =
                    milli_of(target.get("averageValue").filter(|v| !v.is_null()), "")
                {
                    let (replicas, per_pod) =
                        view.calc
                            .object_per_pod_replicas(status_replicas, usage, average.max(1));
                    status["object"]["current"] =
                        json!({"averageValue": format_milli(per_pod.max(0) as u64)});
                    replicas
                } else {
                    let value = milli_of(target.get("value"), "").unwrap_or(1).max(1);
                    if current != 0 && view.pods.is_empty() {
                        return Err(fail(
                            "no pods returned by selector while calculating replica count".into(),
                        ));
                    }
                    status["object"]["current"] =
                        json!({"value": format_milli(usage.max(0) as u64)});
                    view.calc
                        .object_replicas(current, usage, value, view.ready_pods())
                };
                Ok(Proposal {
                    replicas,
                    label,
                    status,
                })
            }
            "External" => {
                let name = metric
                    .pointer("/external/metric/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Err(fail(format!(
                    "unable to get external metric {ns}/{name}: external metrics (external.metrics.k8s.io) are not served by this cluster"
                )))
            }
            other => Err(fail(format!("unknown metric source type {other:?}"))),
        }
    }

    /// An object's metric: a per-pod metric summed over the pods of a scalable object
    /// (an App, or a Deployment, ReplicaSet or StatefulSet), in thousandths.
    async fn object_metric(
        &self,
        ns: &str,
        described: &Value,
        metric: &str,
    ) -> Result<i64, String> {
        if !serves_pod_metric(metric) {
            return Err(format!(
                "the server could not find the metric (served: {REQUESTS_PER_SECOND}, {REQUESTS_IN_FLIGHT})"
            ));
        }
        let info = target_info(described)?;
        let name = described["name"].as_str().unwrap_or_default();
        let scale = internal::get_scale(&self.api, info, Some(ns), name)
            .await
            .map_err(|e| e.to_string())?;
        let selector = scale
            .pointer("/status/selector")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if selector.is_empty() {
            return Err("the object has no pod selector".into());
        }
        let selector = LabelSelector::parse(selector).map_err(|e| e.to_string())?;
        let pods: Vec<Arc<Value>> = self
            .pods
            .snapshot()
            .into_iter()
            .filter(|p| {
                objects::namespace(p) == Some(ns)
                    && selector.matches_value(p)
                    && !objects::is_deleting(p)
            })
            .collect();
        let mut total = 0;
        let mut measured = 0;
        for pod in &pods {
            if let Some(u) = self.api.usage.of_pod(pod) {
                total += pod_metric(&u, metric).unwrap_or(0);
                measured += 1;
            }
        }
        // No pods serve nothing: that is a measurement (zero), not a missing one.
        if measured == 0 && !pods.is_empty() {
            return Err("no metrics returned from custom metrics API".into());
        }
        Ok(total)
    }

    async fn write_status(
        &self,
        hpa: &Value,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let mut status = hpa
            .get("status")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        status["observedGeneration"] = hpa
            .pointer("/metadata/generation")
            .cloned()
            .unwrap_or(json!(0));
        status["currentReplicas"] = json!(outcome.current);
        if let Some(desired) = outcome.desired {
            status["desiredReplicas"] = json!(desired);
        } else if status.get("desiredReplicas").is_none() {
            status["desiredReplicas"] = json!(outcome.current);
        }
        if let Some(metrics) = outcome.metrics {
            status["currentMetrics"] = json!(metrics);
        }
        if outcome.rescaled {
            status["lastScaleTime"] = json!(objects::format_time(now));
        }
        let mut conditions: Vec<Value> =
            status["conditions"].as_array().cloned().unwrap_or_default();
        for c in &outcome.conditions {
            let value = if c.status { "True" } else { "False" };
            let since = conditions
                .iter()
                .find(|old| old["type"] == c.kind && old["status"] == value)
                .and_then(|old| old.get("lastTransitionTime").cloned())
                .unwrap_or_else(|| json!(objects::format_time(now)));
            conditions.retain(|old| old["type"] != c.kind);
            conditions.push(json!({
                "type": c.kind,
                "status": value,
                "lastTransitionTime": since,
                "reason": c.reason,
                "message": c.message,
            }));
        }
        // Kubernetes lists them in this order.
        let rank = |c: &Value| match c["type"].as_str() {
            Some("AbleToScale") => 0,
            Some("ScalingActive") => 1,
            Some("ScalingLimited") => 2,
            _ => 3,
        };
        conditions.sort_by_key(rank);
        status["conditions"] = json!(conditions);
        if hpa.get("status") == Some(&status) {
            return Ok(());
        }
        let result = internal::update_status(
            &self.api,
            hpa_info(),
            objects::namespace(hpa),
            objects::name(hpa),
            |current| {
                let mut next = current.clone();
                next["status"] = status.clone();
                Ok(next)
            },
        )
        .await;
        match result {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether the agents count this per-pod metric.
fn serves_pod_metric(name: &str) -> bool {
    [REQUESTS_PER_SECOND, REQUESTS_IN_FLIGHT].contains(&name)
}

#[cfg(test)]
mod tests;
