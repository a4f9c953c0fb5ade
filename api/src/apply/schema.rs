//! What server-side apply needs to know of a kind's schema: how each list merges.
//! Kubernetes reads it from the OpenAPI extensions `x-kubernetes-list-type` and
//! `x-kubernetes-list-map-keys` (or the older `x-kubernetes-patch-merge-key`); the
//! built-in kinds take it from the same table strategic merge patch uses
//! (`crate::strategic`), and a CustomResourceDefinition can implement [`ApplySchema`]
//! from its structural schema.

use serde_json::Value;

use crate::strategic::{self, ListStrategy};

/// How a list merges, as `x-kubernetes-list-type` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole and owned as one field (`atomic`, the default).
    Atomic,
    /// Items are scalars owned each on its own (`set`).
    Set,
    /// Items are maps identified by these keys and merged field by field (`map`).
    Map(Vec<String>),
}

/// The schema description apply merges by.
pub trait ApplySchema {
    /// How the list at `path` (the field names from the object's root, list items
    /// skipped: `["spec", "template", "spec", "containers"]`) merges; `items` are the
    /// list's items on both sides, for schemas where the item type decides.
    fn list_type(&self, path: &[&str], items: &[&Value]) -> ListType;

    /// Whether the map at `path` is owned and replaced whole
    /// (`x-kubernetes-map-type: atomic`). Granular by default.
    fn map_is_atomic(&self, _path: &[&str]) -> bool {
        false
    }
}

/// The built-in kinds: lists merge on the keys strategic merge patch uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Builtin;

impl ApplySchema for Builtin {
    fn list_type(&self, path: &[&str], items: &[&Value]) -> ListType {
        let field = path.last().copied().unwrap_or_default();
        match strategic::list_strategy(field, items.iter().copied()) {
            ListStrategy::MergeKey(key) => ListType::Map(vec![key.to_string()]),
            ListStrategy::MergePrimitives => ListType::Set,
            ListStrategy::Replace => ListType::Atomic,
        }
    }
}

/// A structural schema (a CustomResourceDefinition version's `openAPIV3Schema`): lists
/// merge as their `x-kubernetes-list-type` says (`atomic` when unset, as Kubernetes
/// treats custom resources), maps as their `x-kubernetes-map-type`.
#[derive(Debug, Clone)]
pub struct Structural<'a>(pub &'a Value);

impl Structural<'_> {
    /// The schema of the field at `path` (list items skipped, as [`ApplySchema`] names
    /// paths), through `properties`, `additionalProperties` and array `items`.
    fn at(&self, path: &[&str]) -> Option<&Value> {
        let mut here = self.0;
        for name in path {
            if here.get("type").and_then(Value::as_str) == Some("array") {
                here = here.get("items")?;
            }
            here = match here.pointer(&format!(
                "/properties/{}",
                name.replace('~', "~0").replace('/', "~1")
            )) {
                Some(p) => p,
                None => here.get("additionalProperties").filter(|a| a.is_object())?,
            };
        }
        Some(here)
    }
}

impl ApplySchema for Structural<'_> {
    fn list_type(&self, path: &[&str], _items: &[&Value]) -> ListType {
        let Some(schema) = self.at(path) else {
            return ListType::Atomic;
        };
        match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListType::Set,
            Some("map") => ListType::Map(
                schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            ),
            _ => ListType::Atomic,
        }
    }

    fn map_is_atomic(&self, path: &[&str]) -> bool {
        self.at(path)
            .and_then(|s| s.get("x-kubernetes-map-type"))
            .and_then(Value::as_str)
            == Some("atomic")
    }
}

#[cfg(test)]
mod structural_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_structural_schema_says_how_lists_and_maps_merge() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["port", "protocol"],
                "items": {"type": "object", "properties": {
                    "tags": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}}}}},
            "args": {"type": "array", "items": {"type": "string"}},
            "selector": {"type": "object", "x-kubernetes-map-type": "atomic",
                "additionalProperties": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "hosts": {"type": "array", "x-kubernetes-list-type": "set"}}}},
        }}}});
        let s = Structural(&schema);
        assert_eq!(
            s.list_type(&["spec", "ports"], &[]),
            ListType::Map(vec!["port".into(), "protocol".into()])
        );
        assert_eq!(s.list_type(&["spec", "ports", "tags"], &[]), ListType::Set);
        assert_eq!(
            s.list_type(&["spec", "args"], &[]),
            ListType::Atomic,
            "unset is atomic"
        );
        assert_eq!(s.list_type(&["spec", "nope"], &[]), ListType::Atomic);
        assert_eq!(
            s.list_type(&["spec", "labels", "any", "hosts"], &[]),
            ListType::Set
        );
        assert!(s.map_is_atomic(&["spec", "selector"]));
        assert!(!s.map_is_atomic(&["spec", "labels"]));
    }
}
