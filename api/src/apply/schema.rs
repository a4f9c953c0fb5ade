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
