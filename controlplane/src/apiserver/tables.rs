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

use super::request::{Query, json_response};
use crate::error::{ApiError, ApiResult};

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
                // A whole object is shown at the version asked for.
                row["object"] = kind.served(&o).unwrap_or(o);
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
        let shown = if is_list {
            super::crud::served_list(info, value)
        } else {
            super::crud::served(info, value)
        };
        return Ok(json_response(StatusCode::OK, &shown));
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
