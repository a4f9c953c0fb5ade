//! Nodes: kubectl's STATUS (Ready, SchedulingDisabled), ROLES and addresses columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource, schema_of, through};

use super::Kind;
use crate::kinds::print::{self, AGE, Column, NAME, age, or_none, s};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Node",
    plural: "nodes",
    singular: "node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &[Subresource::Status],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &["spec.unschedulable"],
    normalize: through::<k8s_openapi::api::core::v1::Node>,
    schema: schema_of::<k8s_openapi::api::core::v1::Node>,
};

pub(super) struct Node;

impl Kind for Node {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn columns(&self) -> Vec<Column> {
        vec![
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
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        let name = print::name(obj);
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
}
