//! Reads Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) as
//! JSON. Go clients (client-go's typed clientsets, and so `kubectl create configmap`,
//! `create deployment`, `create secret` ...) always send built-in kinds this way.
//!
//! A body is the magic `k8s\0` and a `runtime.Unknown` envelope naming the apiVersion
//! and kind, whose `raw` bytes are the object's message. Field numbers come from the
//! generated `table.rs` (Kubernetes' wire contract); JSON names and nesting come from the
//! kind's OpenAPI schema, walked alongside, so the JSON is exactly what a client would
//! have sent as JSON. Quantity, Time, MicroTime, IntOrString, RawExtension and FieldsV1
//! are written as their JSON forms, and unset fields that Go clients encode anyway (""
//! strings, zero times) are left out as their JSON would leave them out.

mod table;

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::resources::ResourceInfo;

/// Every Kubernetes protobuf body starts with these four bytes.
pub const MAGIC: &[u8] = b"k8s\0";
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// How a field is encoded.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wire {
    Str,
    Bytes,
    Bool,
    Int,
    // reason: no message the server reads has a floating-point field today, but the
    // generator emits these for any that does.
    #[allow(dead_code)]
    Double,
    #[allow(dead_code)]
    Float,
    Message(&'static str),
    MapStr,
    MapBytes,
    MapOf(&'static str),
}

/// One field of a message.
#[derive(Debug)]
pub(crate) struct Field {
    tag: u32,
    name: &'static str,
    wire: Wire,
    repeated: bool,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the request body is not valid Kubernetes protobuf: {0}")]
pub struct ProtobufError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ProtobufError> {
    Err(ProtobufError(msg.into()))
}

fn messages() -> &'static HashMap<&'static str, &'static [Field]> {
    static MESSAGES: OnceLock<HashMap<&'static str, &'static [Field]>> = OnceLock::new();
    MESSAGES.get_or_init(|| table::MESSAGES.iter().copied().collect())
}

/// The OpenAPI schemas of everything a body may hold, by name, and the root schema
/// name of each `apiVersion`/`kind` a body may carry.
struct Schemas {
    by_name: Map<String, Value>,
    roots: HashMap<(String, String), String>,
}

fn schemas(served: impl FnOnce() -> Vec<&'static ResourceInfo>) -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        use k8s_openapi::api::{authentication, autoscaling, core, policy};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions;
        let served = served();
        let mut generator = SchemaSettings::openapi3().into_generator();
        let mut roots = HashMap::new();
        for info in &served {
            let name = ref_name(&(info.schema)(&mut generator).to_value());
            roots.insert((info.api_version(), info.kind.to_string()), name);
        }
        let mut extra = |api_version: &str, kind: &str, schema: schemars::Schema| {
            roots.insert(
                (api_version.to_string(), kind.to_string()),
                ref_name(&schema.to_value()),
            );
        };
        extra(
            "policy/v1",
            "Eviction",
            generator.subschema_for::<policy::v1::Eviction>(),
        );
        extra(
            "autoscaling/v1",
            "Scale",
            generator.subschema_for::<autoscaling::v1::Scale>(),
        );
        extra(
            "v1",
            "Binding",
            generator.subschema_for::<core::v1::Binding>(),
        );
        // The bodies of `serviceaccounts/token` and of the identity reviews.
        extra(
            "authentication.k8s.io/v1",
            "TokenRequest",
            generator.subschema_for::<authentication::v1::TokenRequest>(),
        );
        extra(
            "authentication.k8s.io/v1",
            "TokenReview",
            generator.subschema_for::<authentication::v1::TokenReview>(),
        );
        extra(
            "authentication.k8s.io/v1",
            "SelfSubjectReview",
            generator.subschema_for::<authentication::v1::SelfSubjectReview>(),
        );
        let delete = generator.subschema_for::<DeleteOptions>();
        // Clients encode DeleteOptions under the group-version they talk to.
        let mut group_versions: Vec<(&str, &str)> = Vec::new();
        for info in &served {
            if !group_versions.contains(&(info.group, info.version)) {
                group_versions.push((info.group, info.version));
            }
        }
        for (group, version) in group_versions {
            let av = if group.is_empty() {
                version.to_string()
            } else {
                format!("{group}/{version}")
            };
            extra(&av, "DeleteOptions", delete.clone());
        }
        extra("meta.k8s.io/v1", "DeleteOptions", delete);
        Schemas {
            by_name: generator.take_definitions(true),
            roots,
        }
    })
}

fn ref_name(schema: &Value) -> String {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_string()
}

/// The named schema a property refers to, looking through `allOf`, array items and
/// map values.
fn referred<'a>(prop: &'a Value, by_name: &'a Map<String, Value>) -> Option<&'a Value> {
    if let Some(inner) = prop
        .get("items")
        .or_else(|| prop.get("additionalProperties"))
    {
        return referred(inner, by_name);
    }
    if let Some(first) = prop.get("allOf").and_then(|a| a.get(0)) {
        return referred(first, by_name);
    }
    by_name.get(&ref_name(prop))
}

fn squash(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Decodes a protobuf body into the JSON object a client would have sent, for the
/// `served` kinds. `served` is called once, on the first call, when the decoder learns
/// their schemas: the built-in kinds never change while a server runs, and kinds served
/// from data (CRDs) are JSON-only, as in Kubernetes.
pub fn decode(
    body: &[u8],
    served: impl FnOnce() -> Vec<&'static ResourceInfo>,
) -> Result<Value, ProtobufError> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return err("it does not start with the k8s protobuf magic");
    };
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut encoding = String::new();
    for item in Reader(envelope) {
        let (tag, value) = item?;
        match (tag, value) {
            (1, Raw::Len(type_meta)) => {
                for item in Reader(type_meta) {
                    match item? {
                        (1, Raw::Len(b)) => api_version = utf8(b)?,
                        (2, Raw::Len(b)) => kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Raw::Len(b)) => raw = b,
            (3, Raw::Len(b)) => encoding = utf8(b)?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return err(format!("content encoding {encoding:?} is not supported"));
    }
    let schemas = schemas(served);
    let Some(root) = schemas.roots.get(&(api_version.clone(), kind.clone())) else {
        return err(format!(
            "{kind} in {api_version} is not a kind this server reads as protobuf"
        ));
    };
    let Some(schema) = schemas.by_name.get(root) else {
        return err(format!("no schema for {root}"));
    };
    let mut object = message(root, schema, raw, &schemas.by_name)?;
    if let Value::Object(map) = &mut object {
        map.insert("apiVersion".into(), json!(api_version));
        map.insert("kind".into(), json!(kind));
    }
    Ok(object)
}

fn utf8(bytes: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).or_else(|_| err("a string field is not UTF-8"))
}

/// Decodes one message. `name` is its protobuf name in the table, `schema` its OpenAPI
/// schema.
fn message(
    name: &str,
    schema: &Value,
    bytes: &[u8],
    by_name: &Map<String, Value>,
) -> Result<Value, ProtobufError> {
    if let Some(special) = well_known(name, bytes)? {
        return Ok(special);
    }
    let Some(fields) = messages().get(name) else {
        return err(format!("no field table for {name}"));
    };
    let props = schema.get("properties").and_then(Value::as_object);
    let mut out = Map::new();
    for item in Reader(bytes) {
        let (tag, raw) = item?;
        let Some(field) = fields.iter().find(|f| f.tag == tag) else {
            continue; // a field this version does not know, as protobuf allows
        };
        let squashed = squash(field.name);
        let Some((json_name, prop)) =
            props.and_then(|p| p.iter().find(|(k, _)| squash(k) == squashed))
        else {
            continue; // a field the served schema does not have
        };
        let value = match field.wire {
            Wire::MapStr | Wire::MapBytes | Wire::MapOf(_) => {
                let (key, value) = map_entry(field.wire, raw, prop, by_name)?;
                let entry = out
                    .entry(json_name.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(key, value);
                }
                continue;
            }
            Wire::Int if field.repeated => {
                if let Raw::Len(packed) = raw {
                    let entry = out
                        .entry(json_name.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    let mut rest = packed;
                    while !rest.is_empty() {
                        let (v, n) = varint(rest)?;
                        rest = &rest[n..];
                        if let Value::Array(a) = entry {
                            a.push(json!(v as i64));
                        }
                    }
                    continue;
                }
                scalar(field.wire, raw)?
            }
            Wire::Message(target) => {
                let Raw::Len(b) = raw else {
                    return err(format!("{name}.{}: expected a message", field.name));
                };
                let Some(sub) = referred(prop, by_name) else {
                    return err(format!("{name}.{}: no schema", field.name));
                };
                message(target, sub, b, by_name)?
            }
            _ => scalar(field.wire, raw)?,
        };
        // Go clients encode every non-pointer field, so an unset string arrives as "" and
        // an unset time as the zero time; their JSON would omit both (or send null).
        let unset = value.is_null() || (matches!(field.wire, Wire::Str) && value == "");
        if unset && !field.repeated {
            continue;
        }
        if field.repeated {
            let entry = out
                .entry(json_name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(a) = entry {
                a.push(value);
            }
        } else {
            out.insert(json_name.clone(), value);
        }
    }
    Ok(Value::Object(out))
}

/// The messages whose JSON form is a scalar or free-form JSON.
fn well_known(name: &str, bytes: &[u8]) -> Result<Option<Value>, ProtobufError> {
    let fields = || -> Result<HashMap<u32, Raw<'_>>, ProtobufError> { Reader(bytes).collect() };
    Ok(Some(match name {
        "io.k8s.apimachinery.pkg.api.resource.Quantity" => match fields()?.get(&1) {
            Some(Raw::Len(b)) => json!(utf8(b)?),
            _ => json!("0"),
        },
        "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let f = fields()?;
            let int = |tag| match f.get(&tag) {
                Some(Raw::Varint(v)) => *v as i64,
                _ => 0,
            };
            if int(1) == 0 && int(2) == 0 {
                return Ok(Some(Value::Null));
            }
            let ts = jiff::Timestamp::new(int(1), int(2) as i32)
                .or_else(|e| err(format!("a time is out of range: {e}")))?;
            if name.ends_with("MicroTime") {
                json!(ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
            } else {
                json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            }
        }
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString" => {
            let f = fields()?;
            match (f.get(&1), f.get(&2), f.get(&3)) {
                (Some(Raw::Varint(1)), _, Some(Raw::Len(s))) => json!(utf8(s)?),
                (Some(Raw::Varint(1)), _, _) => json!(""),
                (_, Some(Raw::Varint(i)), _) => json!(*i as i64 as i32),
                _ => json!(0),
            }
        }
        "io.k8s.apimachinery.pkg.runtime.RawExtension"
        | "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1" => match fields()?.get(&1) {
            Some(Raw::Len(b)) if !b.is_empty() => serde_json::from_slice(b)
                .or_else(|e| err(format!("embedded JSON is malformed: {e}")))?,
            _ => Value::Null,
        },
        _ => return Ok(None),
    }))
}

fn scalar(wire: Wire, raw: Raw<'_>) -> Result<Value, ProtobufError> {
    Ok(match (wire, raw) {
        (Wire::Str, Raw::Len(b)) => json!(utf8(b)?),
        (Wire::Bytes, Raw::Len(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        (Wire::Bool, Raw::Varint(v)) => json!(v != 0),
        (Wire::Int, Raw::Varint(v)) => json!(v as i64),
        (Wire::Double, Raw::Fixed64(v)) => json!(f64::from_bits(v)),
        (Wire::Float, Raw::Fixed32(v)) => json!(f32::from_bits(v)),
        (wire, _) => return err(format!("a {wire:?} field has the wrong wire type")),
    })
}

fn map_entry(
    wire: Wire,
    raw: Raw<'_>,
    prop: &Value,
    by_name: &Map<String, Value>,
) -> Result<(String, Value), ProtobufError> {
    let Raw::Len(entry) = raw else {
        return err("a map entry is not length-delimited");
    };
    let mut key = String::new();
    let mut value = match wire {
        Wire::MapStr => json!(""),
        Wire::MapBytes => json!(""),
        _ => Value::Null,
    };
    for item in Reader(entry) {
        match item? {
            (1, Raw::Len(k)) => key = utf8(k)?,
            (2, v) => {
                value = match wire {
                    Wire::MapStr => scalar(Wire::Str, v)?,
                    Wire::MapBytes => scalar(Wire::Bytes, v)?,
                    Wire::MapOf(target) => {
                        let Raw::Len(b) = v else {
                            return err("a map value is not a message");
                        };
                        let Some(sub) = referred(prop, by_name) else {
                            return err(format!("no schema for map values of {target}"));
                        };
                        message(target, sub, b, by_name)?
                    }
                    _ => unreachable!("only maps have entries"),
                }
            }
            _ => {}
        }
    }
    Ok((key, value))
}

/// One field's raw value.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

fn varint(bytes: &[u8]) -> Result<(u64, usize), ProtobufError> {
    let mut value = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    err("a varint is truncated or too long")
}

/// Iterates over the (tag, value) pairs of a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Iterator for Reader<'a> {
    type Item = Result<(u32, Raw<'a>), ProtobufError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = (|| {
            let (key, n) = varint(self.0)?;
            let rest = &self.0[n..];
            let tag = u32::try_from(key >> 3).or_else(|_| err("a field number is too large"))?;
            let (raw, used) = match key & 7 {
                0 => {
                    let (v, n) = varint(rest)?;
                    (Raw::Varint(v), n)
                }
                1 => {
                    let b: [u8; 8] = rest
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| ProtobufError("a fixed64 is truncated".into()))?;
                    (Raw::Fixed64(u64::from_le_bytes(b)), 8)
                }
                2 => {
                    let (len, n) = varint(rest)?;
                    let end = usize::try_from(len)
                        .ok()
                        .and_then(|l| n.checked_add(l))
                        .filter(|end| *end <= rest.len())
                        .ok_or_else(|| ProtobufError("a field is truncated".into()))?;
                    (Raw::Len(&rest[n..end]), end)
                }
                5 => {
                    let b: [u8; 4] = rest
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| ProtobufError("a fixed32 is truncated".into()))?;
                    (Raw::Fixed32(u32::from_le_bytes(b)), 4)
                }
                other => return err(format!("wire type {other} is not supported")),
            };
            self.0 = &rest[used..];
            Ok((tag, raw))
        })();
        if item.is_err() {
            self.0 = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests;
