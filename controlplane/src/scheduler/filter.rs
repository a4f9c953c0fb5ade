//! Whether a pod fits a node: readiness, cordoning, resource requests against what is
//! allocatable after the pods already bound there, nodeSelector, required node affinity,
//! and taints against tolerations. Each refusal carries the phrase Kubernetes counts in
//! its "0/3 nodes are available: ..." message.

use std::borrow::Cow;
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

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

pub fn is_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A taint that keeps pods off (NoSchedule or NoExecute).
#[derive(Debug, Clone)]
pub struct Taint {
    key: String,
    value: String,
    effect: String,
}

/// What filtering and scoring need of a node, read from its JSON once per pass.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable: Resources,
    /// The images the node holds ready to run (its `status.images` names: for Skiff,
    /// modules compiled and loaded), for the image locality score.
    pub images: std::collections::HashSet<String>,
}

impl NodeInfo {
    pub fn from_node(node: &Value) -> NodeInfo {
        NodeInfo {
            name: node
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            ready: is_ready(node),
            unschedulable: node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)),
            labels: crate::objects::labels(node),
            taints: node
                .pointer("/spec/taints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|t| matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")))
                .map(|t| Taint {
                    key: str_of(t, "key").to_string(),
                    value: str_of(t, "value").to_string(),
                    effect: str_of(t, "effect").to_string(),
                })
                .collect(),
            allocatable: allocatable(node),
            images: node
                .pointer("/status/images")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("names")?.as_array())
                .flatten()
                .filter_map(|n| Some(n.as_str()?.to_string()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
    Unknown,
}

/// One node selector requirement.
#[derive(Debug, Clone)]
struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    fn from_json(expr: &Value) -> Requirement {
        Requirement {
            key: str_of(expr, "key").to_string(),
            operator: match str_of(expr, "operator") {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                "Gt" => Operator::Gt,
                "Lt" => Operator::Lt,
                _ => Operator::Unknown,
            },
            values: expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        }
    }

    fn matches(&self, have: Option<&str>) -> bool {
        let listed = |v: &str| self.values.iter().any(|w| w == v);
        match self.operator {
            Operator::In => have.is_some_and(listed),
            Operator::NotIn => have.is_none_or(|v| !listed(v)),
            Operator::Exists => have.is_some(),
            Operator::DoesNotExist => have.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(have), Some(want)) = (
                    have.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    have > want
                } else {
                    have < want
                }
            }
            Operator::Unknown => false,
        }
    }
}

/// A node selector term: label expressions and field expressions, all ANDed.
#[derive(Debug, Clone)]
struct Term {
    expressions: Vec<Requirement>,
    fields: Vec<Requirement>,
}

#[derive(Debug, Clone)]
struct Toleration {
    key: String,
    exists: bool,
    value: String,
    effect: String,
}

impl Toleration {
    fn tolerates(&self, taint: &Taint) -> bool {
        let effect_ok = self.effect.is_empty() || self.effect == taint.effect;
        if self.exists {
            effect_ok && (self.key.is_empty() || self.key == taint.key)
        } else {
            effect_ok && self.key == taint.key && self.value == taint.value
        }
    }
}

/// What filtering needs of a pod, read from its JSON once per pass.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub requests: Resources,
    /// Requests with defaults for missing ones, for scoring.
    pub nonzero: Resources,
    node_selector: Vec<(String, String)>,
    /// Required node affinity: terms ORed; None when there is none.
    affinity: Option<Vec<Term>>,
    tolerations: Vec<Toleration>,
    /// What the pod's volumes allow: None when they allow any node.
    pub volumes: Option<VolumeConstraint>,
    /// Its containers' images.
    pub images: Vec<String>,
}

/// Where a pod's persistent volumes let it run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeConstraint {
    /// Only these nodes: those its bound local volumes are pinned to.
    Nodes(Vec<String>),
    /// Nowhere yet, and why (a claim that does not exist).
    Unavailable(String),
}

/// The nodes a pod's claims pin it to: a claim bound to a volume with required node
/// affinity on `kubernetes.io/hostname` allows only those hosts. A claim that does not
/// exist allows none; an unbound one any (its volume is made where the pod lands).
pub fn volume_constraint(
    pod: &Value,
    claims: &crate::informer::Cache,
    volumes: &crate::informer::Cache,
) -> Option<VolumeConstraint> {
    let names = crate::controllers::volume::claim_names(pod);
    if names.is_empty() {
        return None;
    }
    let claim_kind = crate::kinds::lookup("", "v1", "persistentvolumeclaims")?;
    let volume_kind = crate::kinds::lookup("", "v1", "persistentvolumes")?;
    let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str);
    let mut allowed: Option<Vec<String>> = None;
    for name in names {
        let Some(claim) = claims.get(&claim_kind.key(ns, &name)) else {
            return Some(VolumeConstraint::Unavailable(format!(
                "persistentvolumeclaim \"{name}\" not found"
            )));
        };
        let Some(volume) = claim.pointer("/spec/volumeName").and_then(Value::as_str) else {
            continue;
        };
        let Some(pv) = volumes.get(&volume_kind.key(None, volume)) else {
            continue;
        };
        let hosts: Vec<String> = pv
            .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|t| {
                t["matchExpressions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
            .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if hosts.is_empty() {
            continue;
        }
        allowed = Some(match allowed {
            None => hosts,
            Some(before) => before.into_iter().filter(|h| hosts.contains(h)).collect(),
        });
    }
    allowed.map(VolumeConstraint::Nodes)
}

impl PodInfo {
    pub fn from_pod(pod: &Value) -> PodInfo {
        let terms = pod
            .pointer("/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
            .and_then(Value::as_array);
        let requirements = |t: &Value, field: &str| -> Vec<Requirement> {
            t[field]
                .as_array()
                .into_iter()
                .flatten()
                .map(Requirement::from_json)
                .collect()
        };
        PodInfo {
            requests: pod_requests(pod),
            nonzero: nonzero_requests(pod),
            node_selector: pod
                .pointer("/spec/nodeSelector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            affinity: terms.map(|terms| {
                terms
                    .iter()
                    .map(|t| Term {
                        expressions: requirements(t, "matchExpressions"),
                        fields: requirements(t, "matchFields"),
                    })
                    .collect()
            }),
            tolerations: pod
                .pointer("/spec/tolerations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|t| Toleration {
                    key: str_of(t, "key").to_string(),
                    exists: str_of(t, "operator") == "Exists",
                    value: str_of(t, "value").to_string(),
                    effect: str_of(t, "effect").to_string(),
                })
                .collect(),
            volumes: None,
            images: pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| Some(c.get("image")?.as_str()?.to_string()))
                .collect(),
        }
    }

    /// The share (0..1) of the pod's images the node already holds: Kubernetes'
    /// ImageLocality, without its size weighting (a module's compile time, which is
    /// what a node that holds it saves, is not known from its size alone).
    pub fn image_locality(&self, node: &NodeInfo) -> f64 {
        if self.images.is_empty() {
            return 0.0;
        }
        let held = self
            .images
            .iter()
            .filter(|i| node.images.contains(*i))
            .count();
        held as f64 / self.images.len() as f64
    }

    /// nodeSelector and required node affinity.
    pub fn selector_matches(&self, node: &NodeInfo) -> bool {
        let label = |k: &str| node.labels.get(k).map(String::as_str);
        let selector_ok = self
            .node_selector
            .iter()
            .all(|(k, v)| label(k) == Some(v.as_str()));
        let affinity_ok = self.affinity.as_ref().is_none_or(|terms| {
            terms.iter().any(|t| {
                t.expressions.iter().all(|r| r.matches(label(&r.key)))
                    && t.fields.iter().all(|r| {
                        r.matches((r.key == "metadata.name").then_some(node.name.as_str()))
                    })
            })
        });
        selector_ok && affinity_ok
    }

    /// The first NoSchedule/NoExecute taint of the node the pod does not tolerate,
    /// as Kubernetes prints it (`key: value`, or `key` alone).
    pub fn untolerated_taint(&self, node: &NodeInfo) -> Option<String> {
        node.taints
            .iter()
            .find(|t| !self.tolerations.iter().any(|tol| tol.tolerates(t)))
            .map(|t| {
                if t.value.is_empty() {
                    t.key.clone()
                } else {
                    format!("{}: {}", t.key, t.value)
                }
            })
    }

    /// Why the node cannot take the pod, as the phrase Kubernetes counts per node.
    pub fn refusal(&self, node: &NodeInfo, used: &Resources) -> Option<Cow<'static, str>> {
        if !node.ready {
            return Some("node(s) were not ready".into());
        }
        if node.unschedulable {
            return Some("node(s) were unschedulable".into());
        }
        if !self.selector_matches(node) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
        if let Some(taint) = self.untolerated_taint(node) {
            return Some(format!("node(s) had untolerated taint {{{taint}}}").into());
        }
        match &self.volumes {
            Some(VolumeConstraint::Unavailable(why)) => return Some(why.clone().into()),
            Some(VolumeConstraint::Nodes(nodes)) if !nodes.contains(&node.name) => {
                return Some("node(s) had volume node affinity conflict".into());
            }
            _ => {}
        }
        let mut free = node.allocatable;
        free.sub(used);
        if self.requests.pods > free.pods {
            return Some("Too many pods".into());
        }
        if self.requests.cpu_milli > free.cpu_milli {
            return Some("Insufficient cpu".into());
        }
        if self.requests.memory > free.memory {
            return Some("Insufficient memory".into());
        }
        None
    }
}

/// nodeSelector and required node affinity of a pod against a node.
pub(crate) fn selector_matches(pod: &Value, node: &Value) -> bool {
    PodInfo::from_pod(pod).selector_matches(&NodeInfo::from_node(node))
}

/// The first NoSchedule/NoExecute taint of the node the pod does not tolerate.
pub(crate) fn untolerated_taint(pod: &Value, node: &Value) -> Option<String> {
    PodInfo::from_pod(pod).untolerated_taint(&NodeInfo::from_node(node))
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
        let plain = json!({"spec": {}});
        assert_eq!(
            PodInfo::from_pod(&plain)
                .refusal(&NodeInfo::from_node(&n), &none)
                .as_deref(),
            Some("node(s) had untolerated taint {dedicated: gpu}")
        );
        let tolerant = json!({"spec": {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}});
        assert_eq!(
            PodInfo::from_pod(&tolerant).refusal(&NodeInfo::from_node(&n), &none),
            None
        );
        let wrong_zone = json!({"spec": {"nodeSelector": {"zone": "b"}, "tolerations": [{"operator": "Exists"}]}});
        assert_eq!(
            PodInfo::from_pod(&wrong_zone)
                .refusal(&NodeInfo::from_node(&n), &none)
                .as_deref(),
            Some("node(s) didn't match Pod's node affinity/selector")
        );
        let affinity = json!({"spec": {"tolerations": [{"operator": "Exists"}], "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]},
            {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}, {"key": "zone", "operator": "In", "values": ["a", "c"]}]},
        ]}}}}});
        assert_eq!(
            PodInfo::from_pod(&affinity).refusal(&NodeInfo::from_node(&n), &none),
            None
        );
        let big = json!({"spec": {"tolerations": [{"operator": "Exists"}], "containers": [{"resources": {"requests": {"cpu": "1500m"}}}]}});
        let used = Resources {
            cpu_milli: 1000,
            memory: 0,
            pods: 3,
        };
        assert_eq!(
            PodInfo::from_pod(&big)
                .refusal(&NodeInfo::from_node(&n), &used)
                .as_deref(),
            Some("Insufficient cpu")
        );
        let mut cordoned = n.clone();
        cordoned["spec"]["unschedulable"] = json!(true);
        assert_eq!(
            PodInfo::from_pod(&tolerant)
                .refusal(&NodeInfo::from_node(&cordoned), &none)
                .as_deref(),
            Some("node(s) were unschedulable")
        );
    }
}

#[cfg(test)]
mod image_locality_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_node_holding_the_pods_modules_scores_its_share_of_them() {
        let node = NodeInfo::from_node(&json!({"metadata": {"name": "n1"},
            "status": {"images": [{"names": ["sha256:aa"]}, {"names": ["reg.example/app:v1"]}]}}));
        let pod = |images: &[&str]| {
            PodInfo::from_pod(&json!({"spec": {"containers": images.iter()
                .map(|i| json!({"name": "c", "image": i})).collect::<Vec<_>>()}}))
        };
        assert_eq!(pod(&["sha256:aa"]).image_locality(&node), 1.0);
        assert_eq!(pod(&["sha256:aa", "sha256:bb"]).image_locality(&node), 0.5);
        assert_eq!(pod(&["sha256:bb"]).image_locality(&node), 0.0);
        assert_eq!(pod(&[]).image_locality(&node), 0.0);
    }
}
