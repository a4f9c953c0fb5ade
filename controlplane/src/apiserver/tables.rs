//! Server-side printing: a `meta.k8s.io/v1` Table when the client asks for one (kubectl
//! does, with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the columns
//! kubectl users know for each kind (each kind's `columns` and `cells`, in `crate::kinds`;
//! the helpers here print values as kubectl does). Columns of priority 1 are the ones
//! `-o wide` adds.
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

/// How long ago the time at `pointer` was, as kubectl prints it.
pub(crate) fn since(obj: &Value, pointer: &str) -> String {
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
pub(crate) fn age(obj: &Value) -> Value {
    json!(since(obj, "/metadata/creationTimestamp"))
}

/// The string at `pointer`, or empty.
pub(crate) fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The integer at `pointer`, or 0.
pub(crate) fn n(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The text, or `<none>` if empty.
pub(crate) fn or_none(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// Comma-joined `name` fields of `/spec/template/spec/containers` (and their images).
pub(crate) fn containers(obj: &Value, pointer: &str, field: &str) -> Value {
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
pub(crate) fn label_list(map: Option<&Value>) -> Value {
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
pub(crate) fn selector(obj: &Value) -> Value {
    label_list(obj.pointer("/spec/selector/matchLabels").or_else(|| {
        obj.pointer("/spec/selector")
            .filter(|s| s.get("matchLabels").is_none() && s.get("matchExpressions").is_none())
    }))
}

/// Column name, type and priority (1: only with `-o wide`).
pub type Column = (&'static str, &'static str, u8);

pub(crate) const NAME: Column = ("Name", "string", 0);
pub(crate) const AGE: Column = ("Age", "string", 0);

/// The Name cell.
pub(crate) fn name(obj: &Value) -> Value {
    json!(s(obj, "/metadata/name"))
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
    let kind = crate::kinds::of(info);
    let columns: Vec<Value> = kind
        .columns()
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
            let mut row = json!({"cells": kind.cells(obj)});
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
}
