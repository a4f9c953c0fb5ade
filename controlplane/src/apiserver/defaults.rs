//! Defaulting, as the Kubernetes API server does it, for the fields controllers and
//! clients rely on being set (a Deployment's strategy, a Pod's restartPolicy, ...).
//! Runs on create and update, before validation. Each kind's defaults are its `default`
//! in `crate::kinds`; this holds what they are written with.

use serde_json::Value;

use crate::objects::set_path;

/// Sets `path` to `value` if it is absent or null.
pub(crate) fn default_at(obj: &mut Value, path: &[&str], value: Value) {
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
