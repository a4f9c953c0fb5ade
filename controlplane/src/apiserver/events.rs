//! Events recorded by the server's own loops (the scheduler), through the same create
//! path clients use.

use serde_json::{Value, json};

use super::Target;
use super::crud::create_object;
use crate::objects;
use crate::state::ApiServer;

/// Records an Event about an object; failures are logged, never returned, since an event
/// is a report and not part of the work it reports on.
pub async fn record_event(
    api: &ApiServer,
    involved: &Value,
    kind: &str,
    reason: &str,
    message: String,
    component: &str,
) {
    let namespace = objects::namespace(involved)
        .unwrap_or("default")
        .to_string();
    let name = objects::name(involved);
    let now = objects::now_rfc3339();
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{name}."), "namespace": namespace},
        "involvedObject": {
            "kind": involved.get("kind"),
            "apiVersion": involved.get("apiVersion"),
            "namespace": namespace,
            "name": name,
            "uid": objects::meta_str(involved, "uid"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let info = crate::kinds::lookup("", "v1", "events").expect("events are served");
    let Ok(event) = crate::kinds::of(info).normalize(event) else {
        return;
    };
    let target = Target {
        info,
        namespace: Some(namespace),
        name: None,
        sub: None,
    };
    if let Err(e) = create_object(api, &target, event, false).await {
        tracing::debug!(error = %e, reason, "recording an event failed");
    }
}
