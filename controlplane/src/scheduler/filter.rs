//! Whether a pod fits a node: readiness, cordoning, resource requests against what is
//! allocatable after the pods already bound there, nodeSelector, required node affinity,
//! and taints against tolerations. Each refusal carries the phrase Kubernetes counts in
//! its "0/3 nodes are available: ..." message.

use std::collections::BTreeMap;

use serde_json::Value;
use skiff_api::quantity;

/// Resources a pod asks for, or a node has: millicores, bytes and a pod count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub cpu_milli: u64,
    pub memory: u64,
    pub pods: u64,
}

impl Resources {
    pub fn add(&mut self, other: &Resources) {
        self.cpu_milli += other.cpu_milli;
        self.memory += other.memory;
        self.pods += other.pods;
    }

    pub fn sub(&mut self, other: &Resources) {
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
    }
}

/// One container's cpu (millicores) and memory (bytes) requests; limits stand in for
/// missing requests, as in Kubernetes.
fn container_requests(c: &Value) -> (u64, u64) {
    let res = c.get("resources");
    let get = |name: &str| {
        res.and_then(|r| {
            r.pointer(&format!("/requests/{name}"))
                .or_else(|| r.pointer(&format!("/limits/{name}")))
        })
        .and_then(Value::as_str)
    };
    let cpu = get("cpu")
        .and_then(|q| quantity::millicores(q).ok())
        .unwrap_or(0) as u64;
    let memory = get("memory")
        .and_then(|q| quantity::bytes(q).ok())
        .unwrap_or(0);
    (cpu, memory)
}

/// Sums the pod's containers, each mapped by `each`, plus one pod.
fn sum_containers(pod: &Value, each: impl Fn(u64, u64) -> (u64, u64)) -> Resources {
    let mut r = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (cpu, memory) = container_requests(c);
        let (cpu, memory) = each(cpu, memory);
        r.cpu_milli += cpu;
        r.memory += memory;
    }
    r
}

/// The sum of a pod's container requests, plus one pod.
pub fn pod_requests(pod: &Value) -> Resources {
    sum_containers(pod, |cpu, memory| (cpu, memory))
}

/// What the scorer assumes a container without requests uses, as Kubernetes does, so
/// pods that request nothing still spread instead of piling onto one node.
const DEFAULT_CPU_MILLI: u64 = 100;
const DEFAULT_MEMORY: u64 = 200 * 1024 * 1024;

/// Requests for scoring: a container's missing cpu or memory request counts as the default.
pub fn nonzero_requests(pod: &Value) -> Resources {
    let or_default = |v: u64, default: u64| if v == 0 { default } else { v };
    sum_containers(pod, |cpu, memory| {
        (
            or_default(cpu, DEFAULT_CPU_MILLI),
            or_default(memory, DEFAULT_MEMORY),
        )
    })
}

/// What a node offers (`status.allocatable`).
pub fn allocatable(node: &Value) -> Resources {
    let get = |name: &str| {
        node.pointer(&format!("/status/allocatable/{name}"))
            .and_then(Value::as_str)
    };
    Resources {
        cpu_milli: get("cpu")
            .and_then(|q| quantity::millicores(q).ok())
            .unwrap_or(0) as u64,
        memory: get("memory")
            .and_then(|q| quantity::bytes(q).ok())
            .unwrap_or(0),
        pods: get("pods").and_then(|q| q.parse().ok()).unwrap_or(0),
    }
}

fn labels(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn expression_matches(expr: &Value, labels: &BTreeMap<String, String>) -> bool {
    let key = expr["key"].as_str().unwrap_or_default();
    let values: Vec<&str> = expr["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let have = labels.get(key);
    match expr["operator"].as_str().unwrap_or_default() {
        "In" => have.is_some_and(|v| values.contains(&v.as_str())),
        "NotIn" => have.is_none_or(|v| !values.contains(&v.as_str())),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(want)) = (
                have.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if expr["operator"] == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

/// nodeSelector and required node affinity (terms are ORed, expressions ANDed).
pub(crate) fn selector_matches(pod: &Value, node: &Value) -> bool {
    let node_labels = labels(node);
    let selector_ok = pod
        .pointer("/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| node_labels.get(k).map(String::as_str) == v.as_str());
    let terms = pod
        .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    let affinity_ok = match terms {
        None => true,
        Some(terms) => terms.iter().any(|t| {
            t["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| expression_matches(e, &node_labels))
                && t["matchFields"].as_array().into_iter().flatten().all(|e| {
                    let name = node
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    expression_matches(
                        e,
                        &BTreeMap::from([("metadata.name".to_string(), name.to_string())]),
                    )
                })
        }),
    };
    selector_ok && affinity_ok
}

fn tolerates(tolerations: &[Value], taint: &Value) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
        let key = t["key"].as_str().unwrap_or_default();
        match t["operator"].as_str().unwrap_or("Equal") {
            "Exists" => effect_ok && (key.is_empty() || Some(key) == taint["key"].as_str()),
            _ => {
                effect_ok
                    && Some(key) == taint["key"].as_str()
                    && t["value"].as_str().unwrap_or_default()
                        == taint["value"].as_str().unwrap_or_default()
            }
        }
    })
}

/// The first NoSchedule/NoExecute taint the pod does not tolerate.
pub(crate) fn untolerated_taint(pod: &Value, node: &Value) -> Option<String> {
    let tolerations: Vec<Value> = pod
        .pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    node.pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
        .find(|t| !tolerates(&tolerations, t))
        .map(|t| {
            let (k, v) = (
                t["key"].as_str().unwrap_or_default(),
                t["value"].as_str().unwrap_or_default(),
            );
            if v.is_empty() {
                format!("{k}: ")
            } else {
                format!("{k}: {v}")
            }
            .trim_end_matches(": ")
            .to_string()
        })
}

/// Why a node cannot take a pod, as the phrase Kubernetes counts per node.
pub fn refusal(
    pod: &Value,
    node: &Value,
    allocatable: &Resources,
    requests: &Resources,
    used: &Resources,
) -> Option<String> {
    if !is_ready(node) {
        return Some("node(s) were not ready".into());
    }
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        return Some("node(s) were unschedulable".into());
    }
    if !selector_matches(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(taint) = untolerated_taint(pod, node) {
        return Some(format!("node(s) had untolerated taint {{{taint}}}"));
    }
    let free = {
        let mut a = *allocatable;
        a.sub(used);
        a
    };
    if requests.pods > free.pods {
        return Some("Too many pods".into());
    }
    if requests.cpu_milli > free.cpu_milli {
        return Some("Insufficient cpu".into());
    }
    if requests.memory > free.memory {
        return Some("Insufficient memory".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints},
               "status": {"allocatable": {"cpu": "2", "memory": "1Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn requests_add_up_and_limits_stand_in() {
        let pod = json!({"spec": {"containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
        ]}});
        assert_eq!(
            pod_requests(&pod),
            Resources {
                cpu_milli: 1250,
                memory: (64 << 20) + (1 << 30),
                pods: 1
            }
        );
    }

    #[test]
    fn each_filter_names_its_reason() {
        let n = node(
            json!({"zone": "a"}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        );
        let none = Resources::default();
        let small = Resources {
            pods: 1,
            ..Default::default()
        };
        let plain = json!({"spec": {}});
        assert_eq!(
            refusal(&plain, &n, &allocatable(&n), &small, &none).as_deref(),
            Some("node(s) had untolerated taint {dedicated: gpu}")
        );
        let tolerant = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}});
        assert_eq!(
            refusal(&tolerant, &n, &allocatable(&n), &small, &none),
            None
        );
        let wrong_zone = json!({"spec": {"nodeSelector": {"zone": "b"}, "tolerations": [{"operator": "Exists"}]}});
        assert_eq!(
            refusal(&wrong_zone, &n, &allocatable(&n), &small, &none).as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        let affinity = json!({"spec": {"tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]},
            {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}, {"key": "zone", "operator": "In", "values": ["a", "c"]}]},
        ]}}}}});
        assert_eq!(
            refusal(&affinity, &n, &allocatable(&n), &small, &none),
            None
        );
        let big = Resources {
            cpu_milli: 1500,
            memory: 0,
            pods: 1,
        };
        let used = Resources {
            cpu_milli: 1000,
            memory: 0,
            pods: 3,
        };
        assert_eq!(
            refusal(&tolerant, &n, &allocatable(&n), &big, &used).as_deref(),
            Some("Insufficient cpu")
        );
        let mut cordoned = n.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert_eq!(
            refusal(&tolerant, &cordoned, &allocatable(&cordoned), &small, &none).as_deref(),
            Some("node(s) were unschedulable")
        );
    }
}
