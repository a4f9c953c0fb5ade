//! How kinds print their Table cells: the helpers each kind's `columns` and `cells` are
//! written with, printing values the way kubectl does.

use serde_json::{Value, json};

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

/// How long ago the time at `pointer` was, as kubectl prints it.
pub fn since(obj: &Value, pointer: &str) -> String {
    match obj
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(crate::objects::parse_time)
    {
        Some(t) => human_duration(jiff::Timestamp::now().duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

/// The Age cell.
pub fn age(obj: &Value) -> Value {
    json!(since(obj, "/metadata/creationTimestamp"))
}

/// The string at `pointer`, or empty.
pub fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The integer at `pointer`, or 0.
pub fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The text, or `<none>` if empty.
pub fn or_none(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// Comma-joined `name` fields of `/spec/template/spec/containers` (and their images).
pub fn containers(obj: &Value, pointer: &str, field: &str) -> Value {
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
pub fn label_list(map: Option<&Value>) -> Value {
    let mut parts: Vec<String> = map
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    parts.sort();
    or_none(parts.join(","))
}

/// A workload's `spec.selector`, as kubectl prints it.
pub fn selector(obj: &Value) -> Value {
    label_list(obj.pointer("/spec/selector/matchLabels").or_else(|| {
        obj.pointer("/spec/selector")
            .filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
    }))
}

/// Column name, type and priority (1: only with `-o wide`).
pub type Column = (&'static str, &'static str, u8);

pub const NAME: Column = ("Name", "string", 0);
pub const AGE: Column = ("Age", "string", 0);

/// The Name cell.
pub fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
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
}
