//! Server-side printing: a `meta.k8s.io/v1` Table when the client asks for one (kubectl
//! does, with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the columns
//! kubectl users know for each kind. Columns of priority 1 are the ones `-o wide` adds.
//! `includeObject` (None, Metadata, the default, or Object) says what each row carries.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;

use super::error::{ApiError, ApiResult};
use super::request::{Query, json_response};

/// Whether the Accept header asks for a Table (v1 or v1beta1) before plain JSON.
pub(crate) fn wants_table(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    for part in accept.split(',') {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        let media = params.first().copied().unwrap_or_default();
        if media != "application/json" {
            continue;
        }
        let has = |p: &str| params.contains(&p);
        if has("as=Table") && has("g=meta.k8s.io") {
            if has("v=v1") {
                return Some("meta.k8s.io/v1");
            }
            if has("v=v1beta1") {
                return Some("meta.k8s.io/v1beta1");
            }
        } else if params.len() == 1 {
            // Plain JSON is preferred over any Table listed after it.
            return None;
        }
    }
    None
}

/// Kubernetes' HumanDuration, as kubectl prints ages.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86_400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        let y = d / 365;
        if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        }
    } else {
        format!("{}y", d / 365)
    }
}

fn since(obj: &Value, pointer: &str) -> String {
    match obj
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(crate::objects::parse_time)
    {
        Some(t) => human_duration(jiff::Timestamp::now().duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn age(obj: &Value) -> Value {
    json!(since(obj, "/metadata/creationTimestamp"))
}

fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// Comma-joined `name` fields of `/spec/template/spec/containers` (and their images).
fn containers(obj: &Value, pointer: &str, field: &str) -> Value {
    let list: Vec<&str> = obj
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get(field).and_then(Value::as_str))
        .collect();
    or_none(list.join(","))
}

/// A map of labels as kubectl prints it: `k=v` pairs, sorted, comma-joined.
fn label_list(map: Option<&Value>) -> Value {
    let mut parts: Vec<String> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    or_none(parts.join(","))
}

fn selector(obj: &Value) -> Value {
    label_list(obj.pointer("/spec/selector/matchLabels").or_else(|| {
        obj.pointer("/spec/selector")
            .filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
    }))
}

/// Column name, type and priority (1: only with `-o wide`).
type Column = (&'static str, &'static str, u8);

const NAME: Column = ("Name", "string", 0);
const AGE: Column = ("Age", "string", 0);

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            AGE,
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Deployment" => vec![
            NAME,
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "DaemonSet" => vec![
            NAME,
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "Job" => vec![
            NAME,
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
            AGE,
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "Node" => vec![
            NAME,
            ("Status", "string", 0),
            ("Roles", "string", 0),
            AGE,
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "Service" => vec![
            NAME,
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            AGE,
            ("Selector", "string", 1),
        ],
        "Namespace" => vec![NAME, ("Status", "string", 0), AGE],
        "Event" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        "Lease" => vec![NAME, ("Holder", "string", 0), AGE],
        "ConfigMap" => vec![NAME, ("Data", "integer", 0), AGE],
        "Secret" => vec![NAME, ("Type", "string", 0), ("Data", "integer", 0), AGE],
        "Endpoints" => vec![NAME, ("Endpoints", "string", 0), AGE],
        "EndpointSlice" => vec![
            NAME,
            ("AddressType", "string", 0),
            ("Ports", "string", 0),
            ("Endpoints", "string", 0),
            AGE,
        ],
        "App" => vec![
            NAME,
            ("Ready", "string", 0),
            ("URL", "string", 0),
            ("Module", "string", 0),
            AGE,
            ("Replicas", "integer", 1),
        ],
        "Module" => vec![NAME, ("Type", "string", 0), ("Size", "integer", 0), AGE],
        _ => vec![NAME, AGE],
    }
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

fn cells(kind: &str, obj: &Value) -> Vec<Value> {
    let name = json!(s(obj, "/metadata/name"));
    match kind {
        "Pod" => {
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
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                n(obj, "/status/readyReplicas"),
                n(obj, "/spec/replicas")
            )),
            json!(n(obj, "/status/updatedReplicas")),
            json!(n(obj, "/status/availableReplicas")),
            age(obj),
            containers(obj, "/spec/template/spec/containers", "name"),
            containers(obj, "/spec/template/spec/containers", "image"),
            selector(obj),
        ],
        "ReplicaSet" => vec![
            name,
            json!(n(obj, "/spec/replicas")),
            json!(n(obj, "/status/replicas")),
            json!(n(obj, "/status/readyReplicas")),
            age(obj),
            containers(obj, "/spec/template/spec/containers", "name"),
            containers(obj, "/spec/template/spec/containers", "image"),
            selector(obj),
        ],
        "DaemonSet" => {
            vec![
                name,
                json!(n(obj, "/status/desiredNumberScheduled")),
                json!(n(obj, "/status/currentNumberScheduled")),
                json!(n(obj, "/status/numberReady")),
                json!(n(obj, "/status/updatedNumberScheduled")),
                json!(n(obj, "/status/numberAvailable")),
                label_list(obj.pointer("/spec/template/spec/nodeSelector")),
                age(obj),
                containers(obj, "/spec/template/spec/containers", "name"),
                containers(obj, "/spec/template/spec/containers", "image"),
                selector(obj),
            ]
        }
        "Job" => {
            let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
            let has = |t: &str| {
                conditions
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == t && c["status"] == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if obj.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else {
                "Running"
            };
            let start = obj
                .pointer("/status/startTime")
                .and_then(Value::as_str)
                .and_then(crate::objects::parse_time);
            let end = obj
                .pointer("/status/completionTime")
                .and_then(Value::as_str)
                .and_then(crate::objects::parse_time)
                .unwrap_or_else(jiff::Timestamp::now);
            let duration = start
                .map(|s| human_duration(end.duration_since(s).as_secs()))
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/succeeded"),
                    obj.pointer("/spec/completions")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(duration),
                age(obj),
                containers(obj, "/spec/template/spec/containers", "name"),
                containers(obj, "/spec/template/spec/containers", "image"),
                selector(obj),
            ]
        }
        "Node" => {
            let ready = obj
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .map(|c| match c["status"].as_str() {
                    Some("True") => "Ready",
                    Some("False") => "NotReady",
                    _ => "Unknown",
                })
                .unwrap_or("Unknown");
            let mut status = ready.to_string();
            if obj.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<&str> = obj
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
                .collect();
            roles.sort();
            let address = |t: &str| {
                obj.pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|a| a["type"] == t)
                    .and_then(|a| a["address"].as_str())
                    .unwrap_or("<none>")
                    .to_string()
            };
            vec![
                name,
                json!(status),
                or_none(roles.join(",")),
                age(obj),
                json!(s(obj, "/status/nodeInfo/kubeletVersion")),
                json!(address("InternalIP")),
                json!(address("ExternalIP")),
                or_none(s(obj, "/status/nodeInfo/osImage").to_string()),
                or_none(s(obj, "/status/nodeInfo/kernelVersion").to_string()),
                or_none(s(obj, "/status/nodeInfo/containerRuntimeVersion").to_string()),
            ]
        }
        "Service" => {
            let ports: Vec<String> = obj
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| format!("{}/{}", n(p, "/port"), s(p, "/protocol")))
                .collect();
            vec![
                name,
                json!(s(obj, "/spec/type")),
                or_none(s(obj, "/spec/clusterIP").to_string()),
                json!("<none>"),
                or_none(ports.join(",")),
                age(obj),
                label_list(obj.pointer("/spec/selector")),
            ]
        }
        "Namespace" => vec![name, json!(s(obj, "/status/phase")), age(obj)],
        "Event" => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find(|p| obj.pointer(p).and_then(Value::as_str).is_some())
            .map(|p| since(obj, p))
            .unwrap_or_else(|| "<unknown>".into());
            vec![
                json!(last),
                json!(s(obj, "/type")),
                json!(s(obj, "/reason")),
                json!(format!(
                    "{}/{}",
                    s(obj, "/involvedObject/kind").to_ascii_lowercase(),
                    s(obj, "/involvedObject/name")
                )),
                json!(s(obj, "/message")),
            ]
        }
        "Lease" => vec![
            name,
            or_none(s(obj, "/spec/holderIdentity").to_string()),
            age(obj),
        ],
        "ConfigMap" => {
            let count = ["data", "binaryData"]
                .iter()
                .filter_map(|f| obj.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), age(obj)]
        }
        "Secret" => {
            let count = ["data", "stringData"]
                .iter()
                .filter_map(|f| obj.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(s(obj, "/type")), json!(count), age(obj)]
        }
        "Endpoints" => {
            // ADDRESS:PORT pairs, as kubectl prints them.
            let pairs: Vec<String> = obj
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|subset| {
                    let ports: Vec<i64> = subset
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p["port"].as_i64())
                        .collect();
                    let ips: Vec<String> = subset
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a["ip"].as_str().map(str::to_string))
                        .collect();
                    ips.into_iter()
                        .flat_map(move |ip| {
                            ports.clone().into_iter().map(move |p| format!("{ip}:{p}"))
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            vec![name, or_none(pairs.join(",")), age(obj)]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = obj
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| n(p, "/port").to_string())
                .collect();
            let endpoints: Vec<String> = obj
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.pointer("/addresses/0").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            vec![
                name,
                json!(s(obj, "/addressType")),
                or_none(ports.join(",")),
                or_none(endpoints.join(",")),
                age(obj),
            ]
        }
        "App" => {
            let module = s(obj, "/spec/module");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    n(obj, "/status/readyReplicas"),
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                or_none(s(obj, "/status/url").to_string()),
                json!(module.get(..19).unwrap_or(module)),
                age(obj),
                json!(
                    obj.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ),
            ]
        }
        "Module" => vec![
            name,
            json!(s(obj, "/type")),
            json!(n(obj, "/size")),
            age(obj),
        ],
        _ => vec![name, age(obj)],
    }
}

/// The object a row carries, as `includeObject` asks.
fn row_object(obj: &Value, include: &str, table_version: &str) -> Option<Value> {
    match include {
        "None" => None,
        "Object" => Some(obj.clone()),
        _ => Some(json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": table_version,
            "metadata": obj.get("metadata").cloned().unwrap_or_default(),
        })),
    }
}

/// A Table of the given objects, with or without the column definitions.
pub(crate) fn table(
    info: &ResourceInfo,
    objects: &[&Value],
    metadata: Value,
    include: &str,
    table_version: &'static str,
    with_columns: bool,
) -> Value {
    let columns: Vec<Value> = columns(info.kind)
        .into_iter()
        .map(|(name, kind, priority)| {
            json!({
                "name": name,
                "type": kind,
                "format": if name == "Name" { "name" } else { "" },
                "description": match name {
                    "Name" => "Name must be unique within a namespace. Cannot be updated.",
                    "Age" => "The time since the object was created.",
                    _ => "",
                },
                "priority": priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(info.kind, obj)});
            if let Some(o) = row_object(obj, include, table_version) {
                row["object"] = o;
            }
            row
        })
        .collect();
    let mut t = json!({
        "kind": "Table",
        "apiVersion": table_version,
        "metadata": metadata,
        "rows": rows,
    });
    if with_columns {
        t["columnDefinitions"] = json!(columns);
    }
    t
}

pub(crate) fn include_object(query: &Query) -> ApiResult<&'static str> {
    match query.get("includeObject") {
        None | Some("") | Some("Metadata") => Ok("Metadata"),
        Some("None") => Ok("None"),
        Some("Object") => Ok("Object"),
        Some(other) => Err(ApiError::BadRequest(format!(
            "includeObject must be None, Metadata or Object, not {other:?}"
        ))),
    }
}

/// Answers a get or list: as a Table if the client asked for one, else as JSON.
pub(crate) fn respond(
    info: &ResourceInfo,
    headers: &HeaderMap,
    query: &Query,
    value: &Value,
    is_list: bool,
) -> ApiResult<Response> {
    let Some(version) = wants_table(headers) else {
        return Ok(json_response(StatusCode::OK, value));
    };
    let include = include_object(query)?;
    let t = if is_list {
        let items: Vec<&Value> = value
            .get("items")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        table(
            info,
            &items,
            value.get("metadata").cloned().unwrap_or_default(),
            include,
            version,
            true,
        )
    } else {
        let rv = value
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or_default();
        table(
            info,
            &[value],
            json!({"resourceVersion": rv}),
            include,
            version,
            true,
        )
    };
    Ok(json_response(StatusCode::OK, &t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(125), "2m5s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86_400 + 3600), "3d1h");
        assert_eq!(human_duration(400 * 86_400), "400d");
        assert_eq!(human_duration(-5), "<invalid>");
    }

    #[test]
    fn the_accept_header_decides() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert_eq!(wants_table(&h), Some("meta.k8s.io/v1"));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert_eq!(wants_table(&h), None);
    }

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
        let c = cells("Pod", &pod);
        assert_eq!(c[0], "web-1");
        assert_eq!(c[1], "1/2");
        assert_eq!(c[2], "CrashLoopBackOff");
        assert_eq!(c[3], "2");
        assert_eq!(c[6], "dev-1");
        assert_eq!(c.len(), columns("Pod").len());
    }
}
