//! Defaulting, as the Kubernetes API server does it, for the fields controllers and
//! clients rely on being set (a Deployment's strategy, a Pod's restartPolicy, ...).
//! Runs on create and update, before validation.

use serde_json::{Value, json};

use crate::objects::set_path;

/// Sets `path` to `value` if it is absent or null.
fn default_at(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = &*obj;
    for seg in path {
        match cur.get(*seg) {
            Some(next) if !next.is_null() => cur = next,
            _ => {
                set_path(obj, path, value);
                return;
            }
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    default_at(spec, &["restartPolicy"], json!("Always"));
    default_at(spec, &["terminationGracePeriodSeconds"], json!(30));
    default_at(spec, &["dnsPolicy"], json!("ClusterFirst"));
    default_at(spec, &["schedulerName"], json!("default-scheduler"));
    default_at(spec, &["securityContext"], json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers {
                default_at(
                    c,
                    &["terminationMessagePath"],
                    json!("/dev/termination-log"),
                );
                default_at(c, &["terminationMessagePolicy"], json!("File"));
                default_at(c, &["imagePullPolicy"], json!("IfNotPresent"));
                // A struct, not a pointer, in Kubernetes: it always shows, even empty.
                default_at(c, &["resources"], json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        default_at(p, &["protocol"], json!("TCP"));
                    }
                }
            }
        }
    }
}

fn default_template(obj: &mut Value) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// Applies the defaults of `kind` to a whole object.
pub fn apply(kind: &str, obj: &mut Value) {
    match kind {
        "Pod" => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        "Deployment" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default_at(obj, &["spec", "progressDeadlineSeconds"], json!(600));
            default_at(obj, &["spec", "strategy", "type"], json!("RollingUpdate"));
            if obj.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
                default_at(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxSurge"],
                    json!("25%"),
                );
                default_at(
                    obj,
                    &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
                    json!("25%"),
                );
            }
            default_template(obj);
        }
        "ReplicaSet" => {
            default_at(obj, &["spec", "replicas"], json!(1));
            default_template(obj);
        }
        "DaemonSet" => {
            default_at(obj, &["spec", "revisionHistoryLimit"], json!(10));
            default_at(
                obj,
                &["spec", "updateStrategy", "type"],
                json!("RollingUpdate"),
            );
            if obj.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                default_at(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "maxUnavailable"],
                    json!(1),
                );
                default_at(
                    obj,
                    &["spec", "updateStrategy", "rollingUpdate", "maxSurge"],
                    json!(0),
                );
            }
            default_template(obj);
        }
        "Job" => {
            default_at(obj, &["spec", "parallelism"], json!(1));
            default_at(obj, &["spec", "completions"], json!(1));
            default_at(obj, &["spec", "backoffLimit"], json!(6));
            default_at(obj, &["spec", "completionMode"], json!("NonIndexed"));
            default_at(obj, &["spec", "suspend"], json!(false));
            default_template(obj);
        }
        "Service" => {
            default_at(obj, &["spec", "type"], json!("ClusterIP"));
            default_at(obj, &["spec", "sessionAffinity"], json!("None"));
            if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports {
                    default_at(p, &["protocol"], json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        default_at(p, &["targetPort"], port);
                    }
                }
            }
        }
        "Namespace" => default_at(obj, &["spec", "finalizers"], json!(["kubernetes"])),
        "Secret" => default_at(obj, &["type"], json!("Opaque")),
        _ => {}
    }
}

/// The taints the node lifecycle controller puts on a node it has lost contact with.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// Gives a new pod `tolerationSeconds` of patience with a not-ready or unreachable node,
/// unless it says otherwise, so that it is evicted (and replaced) after that long.
pub fn node_problem_tolerations(pod: &mut Value, seconds: i64) {
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

/// A Job selects its own pods by a label carrying its uid, unless the user asked to pick
/// the selector (`manualSelector`), as Kubernetes does.
pub fn job_selector(obj: &mut Value, uid: &str) {
    if obj.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    set_path(
        obj,
        &["spec", "selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    for (key, value) in [
        ("batch.kubernetes.io/controller-uid", json!(uid)),
        ("batch.kubernetes.io/job-name", name.clone()),
        ("controller-uid", json!(uid)),
        ("job-name", name),
    ] {
        set_path(obj, &["spec", "template", "metadata", "labels", key], value);
    }
}

/// A Secret's `stringData` is a write-only convenience: it is merged into `data`
/// (base64) and never stored.
pub fn fold_string_data(obj: &mut Value) {
    use base64::Engine;
    let Some(Value::Object(string_data)) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    for (k, v) in string_data {
        let text = v.as_str().unwrap_or_default();
        let encoded = base64::engine::general_purpose::STANDARD.encode(text);
        set_path(obj, &["data", &k], json!(encoded));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_gets_rolling_update_defaults_without_overwriting() {
        let mut d =
            json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a"}]}}}});
        apply("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply("Deployment", &mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn string_data_is_folded_into_data() {
        let mut s = json!({"stringData": {"user": "admin"}, "data": {"x": "eA=="}});
        fold_string_data(&mut s);
        assert_eq!(s, json!({"data": {"x": "eA==", "user": "YWRtaW4="}}));
    }

    #[test]
    fn job_selector_labels_template() {
        let mut j = json!({"metadata": {"name": "pi"}, "spec": {"template": {}}});
        job_selector(&mut j, "u1");
        assert_eq!(
            j["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            "u1"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "pi"
        );
    }
}
