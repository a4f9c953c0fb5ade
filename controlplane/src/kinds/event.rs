//! Events: kubectl's LAST SEEN, TYPE, REASON, OBJECT and MESSAGE columns.

use serde_json::{Value, json};

use skiff_api::resources::{ResourceInfo, StatusOnCreate, schema_of, through};

use super::Kind;
use crate::kinds::print::{Column, s, since};

/// What the kind is: its group, version, names, scope and subresources.
static INFO: ResourceInfo = ResourceInfo {
    group: "",
    version: "v1",
    kind: "Event",
    plural: "events",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
    has_spec: false,
    status_on_create: StatusOnCreate::Keep,
    extra_fields: &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ],
    normalize: through::<k8s_openapi::api::core::v1::Event>,
    schema: schema_of::<k8s_openapi::api::core::v1::Event>,
};

pub(super) struct Event;

impl Kind for Event {
    fn info(&self) -> &'static ResourceInfo {
        &INFO
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
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
}
