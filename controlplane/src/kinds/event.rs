//! Events: kubectl's LAST SEEN, TYPE, REASON, OBJECT and MESSAGE columns.

use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;

use super::Kind;
use crate::apiserver::tables::{Column, s, since};

pub(super) struct Event;

impl Kind for Event {
    fn info(&self) -> &'static ResourceInfo {
        served!("", "events")
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
