//! PATCH bodies applied to an object (`skiff_api::patch`): JSON merge patch (RFC 7386),
//! strategic merge patch and JSON patch (RFC 6902).
//!
//! The input is the stored object as JSON on its first line and the patch body after
//! it. None of the three panics. A merge patch and a strategic merge patch are
//! idempotent: applied to their own result they change nothing (what makes `kubectl
//! apply` and a retried PATCH safe). A strategic merge patch with no `$` directives and
//! no list that merges by key is exactly a JSON merge patch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skiff_api::patch::{PatchType, apply_json_patch, apply_merge_patch, apply_patch};

skiff_fuzz::cap_allocations!();

/// Whether a strategic merge patch means just what a JSON merge patch does: no `$` keys
/// anywhere, and no list under a field whose lists merge item by item.
fn plain(patch: &Value) -> bool {
    match patch {
        Value::Object(map) => map.iter().all(|(key, value)| {
            let directive = key.starts_with('$');
            let keyed_list = value.is_array() && skiff_api::strategic::declared(key, "").is_some();
            !(directive || keyed_list) && plain(value)
        }),
        Value::Array(items) => items.iter().all(plain),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let (object, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b"{}"[..], data),
    };
    let Ok(object) = serde_json::from_slice::<Value>(object) else {
        return;
    };

    let merged = apply_merge_patch(&object, body);
    if let Ok(merged) = &merged {
        let again = apply_merge_patch(merged, body).expect("the patch applied once");
        assert_eq!(
            &again, merged,
            "a merge patch applied twice changed the object again"
        );
    }

    let strategic = apply_patch(PatchType::StrategicMerge, &object, body);
    if let Ok(once) = &strategic {
        match apply_patch(PatchType::StrategicMerge, once, body) {
            Ok(twice) => assert_eq!(
                &twice, once,
                "a strategic merge patch applied twice changed the object again"
            ),
            Err(e) => panic!("a strategic merge patch applied once but not twice: {e}"),
        }
    }
    if let Ok(patch) = serde_json::from_slice::<Value>(body)
        && plain(&patch)
    {
        assert_eq!(
            strategic.as_ref().ok(),
            merged.as_ref().ok(),
            "a strategic merge patch without directives or keyed lists differs from a merge patch"
        );
    }

    let _ = apply_json_patch(&object, body);
});
