//! What the controllers ask of pods: are they still counted, ready, available.

use serde_json::Value;

use skiff_api::resources::ResourceInfo;

use crate::objects;
pub use crate::objects::labels;

pub fn pods_info() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "pods").expect("pods are served")
}

/// Neither being deleted nor finished: the pod counts toward its controller's replicas.
pub fn is_active(pod: &Value) -> bool {
    !objects::is_deleting(pod)
        && !matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

/// When the pod's Ready condition last became True, if it is True now.
pub fn ready_since(pod: &Value) -> Option<jiff::Timestamp> {
    let c = pod
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?;
    if c["status"] != "True" {
        return None;
    }
    c["lastTransitionTime"]
        .as_str()
        .and_then(objects::parse_time)
        .or(Some(jiff::Timestamp::UNIX_EPOCH))
}

pub fn is_ready(pod: &Value) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been ready for `min_ready_secs` at `now`; if it is ready but not
/// yet for long enough, how many seconds are left.
pub fn availability(
    pod: &Value,
    min_ready_secs: i64,
    now: jiff::Timestamp,
) -> Result<(), Option<i64>> {
    let since = ready_since(pod).ok_or(None)?;
    let ready_for = now.duration_since(since).as_secs();
    if ready_for >= min_ready_secs {
        Ok(())
    } else {
        Err(Some(min_ready_secs - ready_for))
    }
}
