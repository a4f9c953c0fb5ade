//! The four walks server-side apply makes over objects, each guided by the schema's list
//! types: the set of fields a configuration names, the comparison of two objects
//! (added, modified, removed), the merge of a configuration into a live object, and the
//! removal of fields a manager stopped applying.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::ApplyError;
use super::fieldpath::{FieldSet, Path, PathElement};
use super::schema::{ApplySchema, ListType};

/// What changed from one object to another, as sets of paths.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }

    /// The paths whose value is new or different.
    pub fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

/// Where a walk is: the path so far, and the field names on it (what the schema is
/// asked about).
#[derive(Clone, Default)]
struct At {
    path: Path,
    names: Vec<String>,
}

impl At {
    fn field(&self, name: &str) -> At {
        let mut names = self.names.clone();
        names.push(name.to_string());
        At {
            path: self.path.field(name),
            names,
        }
    }

    fn item(&self, element: PathElement) -> At {
        At {
            path: self.path.child(element),
            names: self.names.clone(),
        }
    }

    fn list_type(&self, schema: &dyn ApplySchema, items: &[&Value]) -> ListType {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        schema.list_type(&names, items)
    }

    fn atomic_map(&self, schema: &dyn ApplySchema) -> bool {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        !names.is_empty() && schema.map_is_atomic(&names)
    }
}

/// A list's items with the path element naming each. `strict` refuses duplicate
/// elements (an applied configuration must name each item once); otherwise the first
/// of duplicates wins, as stored objects may hold them.
fn elements<'a>(
    at: &At,
    list: &'a [Value],
    list_type: &ListType,
    strict: bool,
) -> Result<Vec<(PathElement, &'a Value)>, ApplyError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let element = match list_type {
            ListType::Atomic => return Ok(Vec::new()),
            ListType::Set => PathElement::value(item),
            ListType::Map(keys) => {
                if !item.is_object() {
                    return Err(ApplyError::NotAMap(at.path.to_string()));
                }
                PathElement::key(item, keys)?
            }
        };
        if !seen.insert(element.clone()) {
            if strict {
                return Err(ApplyError::Duplicate(at.path.child(element).to_string()));
            }
            continue;
        }
        out.push((element, item));
    }
    Ok(out)
}

/// The fields `config` sets: its leaves, its set items and associative list items (each
/// a member, with its fields), and atomic lists and maps as one field each. Empty maps
/// name nothing.
pub fn to_field_set(config: &Value, schema: &dyn ApplySchema) -> Result<FieldSet, ApplyError> {
    let mut out = FieldSet::new();
    field_set_walk(config, &At::default(), schema, &mut out)?;
    Ok(out)
}

fn field_set_walk(
    v: &Value,
    at: &At,
    schema: &dyn ApplySchema,
    out: &mut FieldSet,
) -> Result<(), ApplyError> {
    match v {
        Value::Object(map) if !at.atomic_map(schema) => {
            for (k, child) in map {
                field_set_walk(child, &at.field(k), schema, out)?;
            }
        }
        Value::Array(list) => {
            let items: Vec<&Value> = list.iter().collect();
            let list_type = at.list_type(schema, &items);
            if list_type == ListType::Atomic {
                out.insert(&at.path);
                return Ok(());
            }
            for (element, item) in elements(at, list, &list_type, true)? {
                let item_at = at.item(element);
                out.insert(&item_at.path);
                if let (ListType::Map(_), Value::Object(fields)) = (&list_type, item) {
                    for (k, child) in fields {
                        field_set_walk(child, &item_at.field(k), schema, out)?;
                    }
                }
            }
        }
        _ => out.insert(&at.path),
    }
    Ok(())
}

/// What differs between `old` and `new`. A map that appears below the top level is
/// itself added (it shows as `.` in managedFields) besides its fields; so is an item of
/// an associative list.
pub fn compare(
    old: &Value,
    new: &Value,
    schema: &dyn ApplySchema,
) -> Result<Comparison, ApplyError> {
    let mut out = Comparison::default();
    compare_walk(Some(old), Some(new), &At::default(), schema, &mut out)?;
    Ok(out)
}

fn compare_walk(
    lhs: Option<&Value>,
    rhs: Option<&Value>,
    at: &At,
    schema: &dyn ApplySchema,
    out: &mut Comparison,
) -> Result<(), ApplyError> {
    let lhs = lhs.filter(|v| !v.is_null());
    let rhs = rhs.filter(|v| !v.is_null());
    let (l_obj, r_obj) = (lhs.map(Value::as_object), rhs.map(Value::as_object));
    let (l_arr, r_arr) = (lhs.map(Value::as_array), rhs.map(Value::as_array));
    let root = at.path.0.is_empty();
    let leaf = |out: &mut Comparison| {
        if root {
            return;
        }
        match (lhs, rhs) {
            (None, Some(_)) => out.added.insert(&at.path),
            (Some(_), None) => out.removed.insert(&at.path),
            (Some(a), Some(b)) if a != b => out.modified.insert(&at.path),
            _ => {}
        }
    };
    match (l_obj, r_obj) {
        (None | Some(Some(_)), None | Some(Some(_))) if lhs.is_some() || rhs.is_some() => {
            if at.atomic_map(schema) {
                leaf(out);
                return Ok(());
            }
            let l = l_obj.flatten();
            let r = r_obj.flatten();
            let empty = |m: Option<&Map<String, Value>>| m.is_none_or(Map::is_empty);
            if empty(l) && empty(r) {
                leaf(out);
                return Ok(());
            }
            // Top-level fields (spec, metadata, data) are not members themselves, as
            // Kubernetes' typed objects always hold them.
            if at.path.0.len() > 1 {
                if l.is_none() {
                    out.added.insert(&at.path);
                } else if r.is_none() {
                    out.removed.insert(&at.path);
                }
            }
            let mut keys: Vec<&String> = l.into_iter().flat_map(Map::keys).collect();
            keys.extend(r.into_iter().flat_map(Map::keys));
            keys.sort();
            keys.dedup();
            for k in keys {
                let (a, b) = (l.and_then(|m| m.get(k)), r.and_then(|m| m.get(k)));
                compare_walk(a, b, &at.field(k), schema, out)?;
            }
            return Ok(());
        }
        _ => {}
    }
    match (l_arr, r_arr) {
        (None | Some(Some(_)), None | Some(Some(_))) if lhs.is_some() || rhs.is_some() => {
            let l = l_arr.flatten().map(Vec::as_slice).unwrap_or_default();
            let r = r_arr.flatten().map(Vec::as_slice).unwrap_or_default();
            let items: Vec<&Value> = l.iter().chain(r).collect();
            let list_type = at.list_type(schema, &items);
            if list_type == ListType::Atomic || (l.is_empty() && r.is_empty()) {
                leaf(out);
                return Ok(());
            }
            let old = elements(at, l, &list_type, false)?;
            let new = elements(at, r, &list_type, false)?;
            for (element, item) in &new {
                let before = old.iter().find(|(e, _)| e == element).map(|(_, v)| *v);
                compare_walk(before, Some(item), &at.item(element.clone()), schema, out)?;
            }
            for (element, item) in &old {
                if !new.iter().any(|(e, _)| e == element) {
                    compare_walk(Some(item), None, &at.item(element.clone()), schema, out)?;
                }
            }
        }
        _ => leaf(out),
    }
    Ok(())
}

/// Merges an applied configuration into the live object: maps field by field, sets and
/// associative lists item by item (live order kept, new items appended), everything
/// else replaced by the configuration's value.
pub fn merge(live: &Value, config: &Value, schema: &dyn ApplySchema) -> Result<Value, ApplyError> {
    merge_walk(Some(live), config, &At::default(), schema)
}

fn merge_walk(
    live: Option<&Value>,
    config: &Value,
    at: &At,
    schema: &dyn ApplySchema,
) -> Result<Value, ApplyError> {
    match (live, config) {
        (Some(Value::Object(l)), Value::Object(c)) if !at.atomic_map(schema) => {
            let mut out = l.clone();
            for (k, v) in c {
                let merged = merge_walk(l.get(k), v, &at.field(k), schema)?;
                out.insert(k.clone(), merged);
            }
            Ok(Value::Object(out))
        }
        (Some(Value::Array(l)), Value::Array(c)) => {
            let items: Vec<&Value> = l.iter().chain(c).collect();
            let list_type = at.list_type(schema, &items);
            if list_type == ListType::Atomic {
                return Ok(config.clone());
            }
            let live_items = elements(at, l, &list_type, false)?;
            let mut out: Vec<(PathElement, Value)> = live_items
                .into_iter()
                .map(|(e, v)| (e, v.clone()))
                .collect();
            for (element, item) in elements(at, c, &list_type, true)? {
                match out.iter_mut().find(|(e, _)| *e == element) {
                    Some((_, existing)) => {
                        *existing = merge_walk(Some(existing), item, &at.item(element), schema)?;
                    }
                    None => out.push((element, item.clone())),
                }
            }
            Ok(Value::Array(out.into_iter().map(|(_, v)| v).collect()))
        }
        (_, other) => Ok(other.clone()),
    }
}

/// Removes the members of `remove` from `obj`, except those `keep` holds a member at or
/// below (a field another manager still owns stays).
pub fn remove(
    obj: &mut Value,
    remove: &FieldSet,
    keep: &FieldSet,
    schema: &dyn ApplySchema,
) -> Result<(), ApplyError> {
    remove_walk(obj, remove, Some(keep), &At::default(), schema)
}

fn remove_walk(
    v: &mut Value,
    remove: &FieldSet,
    keep: Option<&FieldSet>,
    at: &At,
    schema: &dyn ApplySchema,
) -> Result<(), ApplyError> {
    let kept = |e: &PathElement| keep.is_some_and(|k| k.covers(e));
    match v {
        Value::Object(map) => {
            let names: Vec<String> = map.keys().cloned().collect();
            for name in names {
                let e = PathElement::Field(name.clone());
                if remove.contains(&e) && !kept(&e) {
                    map.remove(&name);
                } else if let (Some(sub), Some(child)) = (remove.child(&e), map.get_mut(&name)) {
                    remove_walk(
                        child,
                        sub,
                        keep.and_then(|k| k.child(&e)),
                        &at.field(&name),
                        schema,
                    )?;
                }
            }
        }
        Value::Array(list) => {
            let items: Vec<&Value> = list.iter().collect();
            let list_type = at.list_type(schema, &items);
            if list_type == ListType::Atomic {
                return Ok(());
            }
            let named: Vec<PathElement> = elements(at, list, &list_type, false)?
                .into_iter()
                .map(|(e, _)| e)
                .collect();
            if named.len() != list.len() {
                // Duplicates: leave the list as it is rather than guess which to drop.
                return Ok(());
            }
            let mut out = Vec::with_capacity(list.len());
            for (e, mut item) in named.into_iter().zip(std::mem::take(list)) {
                if remove.contains(&e) && !kept(&e) {
                    continue;
                }
                if let Some(sub) = remove.child(&e) {
                    remove_walk(
                        &mut item,
                        sub,
                        keep.and_then(|k| k.child(&e)),
                        &at.item(e.clone()),
                        schema,
                    )?;
                }
                out.push(item);
            }
            *list = out;
        }
        _ => {}
    }
    Ok(())
}

/// A copy without null fields: in an applied configuration a null names no value.
pub fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::schema::Builtin;
    use serde_json::json;

    fn fields(v: &Value) -> Value {
        to_field_set(v, &Builtin).unwrap().to_fields_v1()
    }

    fn deployment(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 2, "template": {"spec": {
            "containers": [{"name": "app", "image": image, "args": ["a", "b"],
                            "ports": [{"containerPort": 80}]}],
        }}}})
    }

    #[test]
    fn a_configuration_names_its_leaves_and_keyed_items() {
        assert_eq!(
            fields(&deployment("a:1")),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                        "f:ports": {"k:{\"containerPort\":80}": {".": {}, "f:containerPort": {}}}},
                }}}},
            })
        );
        assert_eq!(
            fields(&json!({"metadata": {"finalizers": ["x", "y"], "annotations": {}}})),
            json!({"f:metadata": {"f:finalizers": {"v:\"x\"": {}, "v:\"y\"": {}}}})
        );
        let dup = json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}});
        assert!(
            matches!(to_field_set(&dup, &Builtin), Err(ApplyError::Duplicate(p)) if p == ".spec.containers[name=\"a\"]")
        );
        let keyless = json!({"spec": {"containers": [{"image": "a"}]}});
        assert!(matches!(
            to_field_set(&keyless, &Builtin),
            Err(ApplyError::MissingKey { .. })
        ));
    }

    #[test]
    fn comparison_finds_added_modified_and_removed_fields() {
        let old = deployment("a:1");
        let mut new = deployment("a:2");
        new["metadata"]["annotations"] = json!({"note": "x"});
        new["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "s"}));
        new["spec"].as_object_mut().unwrap().remove("replicas");
        let cmp = compare(&old, &new, &Builtin).unwrap();
        let c = "k:{\"name\":\"app\"}";
        assert_eq!(
            cmp.modified.to_fields_v1(),
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {c: {"f:image": {}}}}}}})
        );
        assert_eq!(
            cmp.removed.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        assert_eq!(
            cmp.added.to_fields_v1(),
            json!({
                "f:metadata": {"f:annotations": {".": {}, "f:note": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"side\"}": {".": {}, "f:name": {}, "f:image": {}}}}}},
            })
        );
        assert!(compare(&old, &old, &Builtin).unwrap().is_same());
    }

    #[test]
    fn merge_goes_by_keys_and_replaces_atomic_lists() {
        let live = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "a:1", "args": ["x"]}, {"name": "side", "image": "s"}],
            "tolerations": [{"key": "t"}],
        }}}, "metadata": {"finalizers": ["f1"]}});
        let config = json!({"spec": {"template": {"spec": {
            "containers": [{"name": "app", "image": "a:2", "args": ["y"]}, {"name": "new", "image": "n"}],
            "tolerations": [{"key": "u"}],
        }}}, "metadata": {"finalizers": ["f2", "f1"]}});
        let out = merge(&live, &config, &Builtin).unwrap();
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "app", "image": "a:2", "args": ["y"]}, {"name": "side", "image": "s"}, {"name": "new", "image": "n"}],
                "tolerations": [{"key": "u"}],
            }}}, "metadata": {"finalizers": ["f1", "f2"]}})
        );
    }

    #[test]
    fn removal_spares_what_others_keep() {
        let mut obj = deployment("a:1");
        obj["metadata"]["labels"]["tier"] = json!("front");
        let dropped = FieldSet::from_fields_v1(&json!({
            "f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}}}}}},
        }))
        .unwrap();
        let keep =
            FieldSet::from_fields_v1(&json!({"f:metadata": {"f:labels": {"f:tier": {}}}})).unwrap();
        remove(&mut obj, &dropped, &keep, &Builtin).unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"tier": "front"}));
        assert_eq!(obj["spec"]["template"]["spec"]["containers"], json!([]));
        assert_eq!(obj["spec"]["replicas"], 2);
    }

    #[test]
    fn nulls_are_dropped_from_configurations() {
        assert_eq!(
            strip_nulls(&json!({"a": null, "b": {"c": null, "d": [1]}})),
            json!({"b": {"d": [1]}})
        );
    }
}
