//! Pods: pod spec defaults and validation, the node-problem tolerations a new pod gets,
//! which spec fields an update may change, graceful deletion of a bound pod, and
//! kubectl's READY, STATUS and RESTARTS columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};
use skiff_api::validation::{FieldError, FieldErrorType};

use super::workload::{default_pod_spec, validate_pod_spec};
use super::{CreateContext, Kind};
use crate::kinds::fields::err;
use crate::kinds::print::{self, AGE, Column, NAME, age, n, or_none, s, since};
use crate::objects::set_path;

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Pod",
    plural: "pods",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    categories: &["all"],
    subresources: &[
        Subresource::Status,
        Subresource::Binding,
        Subresource::Log,
        Subresource::Eviction,
        Subresource::PortForward,
    ],
    has_spec: true,
    status_on_create: StatusOnCreate::Phase("Pending"),
    extra_fields: &[
        "spec.nodeName",
        "status.phase",
        "spec.restartPolicy",
        "spec.schedulerName",
        "status.podIP",
    ],
    normalize: through::<k8s_openapi::api::core::v1::Pod>,
    schema: schema_of::<k8s_openapi::api::core::v1::Pod>,
};

/// The grace a pod gets when neither the request nor the pod names one (Kubernetes' default).
const DEFAULT_POD_GRACE_SECONDS: i64 = 30;

/// The taints the node lifecycle controller puts on a node it has lost contact with.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Gives a new pod `tolerationSeconds` of patience with a not-ready or unreachable node,
/// unless it says otherwise, so that it is evicted (and replaced) after that long.
fn node_problem_tolerations(pod: &mut Value, seconds: i64) {
    let tolerations = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = tolerations.clone();
    for key in [TAINT_NOT_READY, TAINT_UNREACHABLE] {
        let covered = tolerations.iter().any(|t| {
            (t["key"] == key
                || (t["key"].as_str().unwrap_or_default().is_empty() && t["operator"] == "Exists"))
                && t["effect"]
                    .as_str()
                    .is_none_or(|e| e.is_empty() || e == "NoExecute")
        });
        if !covered {
            out.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}));
        }
    }
    if pod.get("spec").is_some() {
        set_path(pod, &["spec", "tolerations"], json!(out));
    }
}

/// The pod spec fields Kubernetes lets an update change.
fn mutable_pod_fields_cleared(spec: Option<&Value>) -> Value {
    let mut spec = spec.cloned().unwrap_or(Value::Null);
    for list in ["containers", "initContainers"] {
        if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("image");
                }
            }
        }
    }
    if let Some(m) = spec.as_object_mut() {
        m.remove("activeDeadlineSeconds");
        m.remove("tolerations");
        m.remove("terminationGracePeriodSeconds");
    }
    spec
}

/// What kubectl shows as a pod's STATUS.
fn pod_status(pod: &Value) -> String {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(pod, "/status/phase").to_string();
    if let Some(r) = pod.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_string();
    }
    for c in pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(w) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = w.to_string();
        } else if let Some(t) = c.pointer("/state/terminated") {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) => r.to_string(),
                None => format!("ExitCode:{}", n(t, "/exitCode")),
            };
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

pub(super) struct Pod;

impl Kind for Pod {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn garbage_collected(&self) -> bool {
        true
    }

    fn prepare_create(&self, obj: &mut Value, ctx: &CreateContext<'_>) {
        node_problem_tolerations(obj, ctx.config.default_toleration_seconds);
        default_service_account(obj);
    }

    fn default(&self, obj: &mut Value) {
        if let Some(spec) = obj.get_mut("spec") {
            default_pod_spec(spec);
        }
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_spec(obj.get("spec"), "spec", errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if mutable_pod_fields_cleared(old.get("spec"))
            != mutable_pod_fields_cleared(new.get("spec"))
        {
            errs.push(err(
                "spec",
                FieldErrorType::Forbidden,
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, \
                 `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` \
                 (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`",
            ));
        }
    }

    /// A pod bound to a node and still running goes gracefully: its agent stops it and
    /// confirms, or the grace runs out.
    fn deletion_grace_seconds(&self, obj: &Value, requested: Option<i64>) -> i64 {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        let requested = requested.unwrap_or_else(|| {
            obj.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(DEFAULT_POD_GRACE_SECONDS)
        });
        if bound && !finished {
            requested.max(0)
        } else {
            0
        }
    }

    fn delete_returns_object(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            AGE,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
        let statuses: Vec<&Value> = obj
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let total = obj
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let ready = statuses.iter().filter(|c| c["ready"] == true).count();
        let restarts: i64 = statuses.iter().map(|c| n(c, "/restartCount")).sum();
        let last = statuses
            .iter()
            .filter_map(|c| c.pointer("/lastState/terminated/finishedAt"))
            .filter_map(Value::as_str)
            .max()
            .map(|t| since(&json!({"t": t}), "/t"));
        let restarts = match (restarts, last) {
            (r, Some(ago)) if r > 0 => format!("{r} ({ago} ago)"),
            (r, _) => r.to_string(),
        };
        vec![
            name,
            json!(format!("{ready}/{total}")),
            json!(pod_status(obj)),
            json!(restarts),
            age(obj),
            or_none(s(obj, "/status/podIP").to_string()),
            or_none(s(obj, "/spec/nodeName").to_string()),
            json!("<none>"),
            json!("<none>"),
        ]
    }
}

/// A new pod runs as the ServiceAccount it names (the deprecated `serviceAccount` alias
/// too), else as `default`: Kubernetes' ServiceAccount admission. As in current
/// Kubernetes, a pod naming an account that does not exist yet is admitted; its token
/// cannot be issued until the account exists, so its containers wait.
fn default_service_account(obj: &mut Value) {
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let named = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let account = named("serviceAccountName")
        .or_else(|| named("serviceAccount"))
        .unwrap_or_else(|| super::serviceaccount::DEFAULT.to_string());
    spec.insert("serviceAccountName".into(), Value::String(account.clone()));
    spec.insert("serviceAccount".into(), Value::String(account));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_show_ready_status_and_restarts() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "dev-1"},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "containerStatuses": [
                {"ready": true, "restartCount": 0, "state": {"running": {}}},
                {"ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ]},
        });
        let c = Pod.cells(&pod);
        assert_eq!(c[0], "web-1");
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "2");
        assert_eq!(c[6], "dev-1");
        assert_eq!(c.len(), Pod.columns().len());
    }
}
