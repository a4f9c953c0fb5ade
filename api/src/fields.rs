//! Server-side field validation (`fieldValidation=Strict|Warn|Ignore`): the fields of a
//! request body that its kind does not have, and the fields a JSON object names twice.
//! Paths are written as Kubernetes writes them: `spec.template.spec.containers[0].foo`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// What the server does with unknown or duplicate fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Refuse the request (400 BadRequest).
    Strict,
    /// Accept it, dropping the fields, and say so in `Warning` headers (the default).
    #[default]
    Warn,
    /// Accept it, dropping the fields silently.
    Ignore,
}

impl FieldValidation {
    /// Parses the `fieldValidation` query parameter; absent means Warn, as in Kubernetes.
    pub fn parse(raw: Option<&str>) -> Result<FieldValidation, String> {
        match raw.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Strict" => Ok(FieldValidation::Strict),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(format!(
                "fieldValidation parameter unsupported: {other:?}: supported values are \
                 \"Ignore\", \"Warn\" and \"Strict\""
            )),
        }
    }
}

/// One problem with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldProblem {
    Unknown(String),
    Duplicate(String),
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::Unknown(path) => write!(f, "unknown field {path:?}"),
            FieldProblem::Duplicate(path) => write!(f, "duplicate field {path:?}"),
        }
    }
}

/// The fields of `input` that did not survive the round trip through the kind's typed
/// form, `normalized`. A field set to `null` is treated as absent, as Kubernetes does.
pub fn unknown_fields(input: &Value, normalized: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, Some(normalized), &mut String::new(), &mut out);
    out
}

fn walk_unknown(input: &Value, kept: Option<&Value>, path: &mut String, out: &mut Vec<String>) {
    match (input, kept) {
        (Value::Object(map), Some(Value::Object(kept))) => {
            for (key, value) in map {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match kept.get(key) {
                    None if !value.is_null() => out.push(path.clone()),
                    found => walk_unknown(value, found, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(items), Some(Value::Array(kept))) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk_unknown(item, kept.get(i), path, out);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The keys a JSON document names twice in one object. Malformed JSON gives no
/// findings here; the real parse reports it.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    let _ = Dups {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut de);
    found
}

/// Walks a JSON value without building it, recording duplicate keys.
struct Dups<'a> {
    path: String,
    found: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for Dups<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dups<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        loop {
            let seed = Dups {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            };
            if seq.next_element_seed(seed)?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.found.push(path);
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            map.next_value_seed(Dups {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

/// Everything wrong with the fields of a body: duplicates in the raw bytes, then the
/// fields its kind does not know.
pub fn problems(body: &[u8], input: &Value, normalized: &Value) -> Vec<FieldProblem> {
    duplicate_fields(body)
        .into_iter()
        .map(FieldProblem::Duplicate)
        .chain(
            unknown_fields(input, normalized)
                .into_iter()
                .map(FieldProblem::Unknown),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_by_path_and_nulls_are_not_unknown() {
        let input = json!({
            "spec": {"replicas": 1, "colour": "red", "template": {"spec": {"containers": [
                {"name": "a", "image": "x"}, {"name": "b", "imagePolicy": "y"}
            ]}}},
            "extra": null,
            "top": 1,
        });
        let kept = json!({
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "a", "image": "x"}, {"name": "b"}
            ]}}},
        });
        assert_eq!(
            unknown_fields(&input, &kept),
            vec![
                "spec.colour".to_string(),
                "spec.template.spec.containers[1].imagePolicy".to_string(),
                "top".to_string(),
            ]
        );
        assert!(unknown_fields(&kept, &kept).is_empty());
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let body =
            br#"{"kind":"Pod","kind":"Pod","spec":{"containers":[{"name":"a","name":"b"}]}}"#;
        assert_eq!(
            duplicate_fields(body),
            vec!["kind".to_string(), "spec.containers[0].name".to_string()]
        );
        assert!(duplicate_fields(br#"{"a":{"b":1},"c":{"b":2}}"#).is_empty());
        assert!(duplicate_fields(b"{not json").is_empty());
    }

    #[test]
    fn the_parameter_parses_as_kubernetes_spells_it() {
        assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
        assert_eq!(
            FieldValidation::parse(Some("Strict")),
            Ok(FieldValidation::Strict)
        );
        assert_eq!(
            FieldValidation::parse(Some("Ignore")),
            Ok(FieldValidation::Ignore)
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
    }
}
