//! Field paths and sets of them, and their `FieldsV1` encoding in
//! `metadata.managedFields` (`{"f:spec":{"f:replicas":{}}}`), as
//! sigs.k8s.io/structured-merge-diff defines them: `f:NAME` a map field, `k:{...}` a
//! list item by its keys, `v:VALUE` an item of a set, `i:N` a list item by position, and
//! `.` marking that a node with children is itself a member.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use super::ApplyError;

/// One step of a path into an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a map: `f:name`.
    Field(String),
    /// An item of an associative list, by its keys: `k:{"name":"app"}`. Held as the
    /// canonical JSON of the keys (sorted, compact), which is also how it is encoded.
    Key(String),
    /// An item of a set, by its value: `v:"a"`. Held as canonical JSON.
    Value(String),
    /// An item of a list by position: `i:0` (atomic lists never have these; kept so
    /// that entries written by others decode).
    Index(usize),
}

impl PathElement {
    /// The element naming the item `item` of a list keyed by `keys`.
    pub fn key(item: &Value, keys: &[String]) -> Result<PathElement, ApplyError> {
        let mut parts = BTreeMap::new();
        for k in keys {
            match item.get(k) {
                Some(v) if !v.is_null() => {
                    parts.insert(k.as_str(), v);
                }
                _ => {
                    return Err(ApplyError::MissingKey {
                        key: k.clone(),
                        item: truncate(&item.to_string()),
                    });
                }
            }
        }
        Ok(PathElement::Key(canonical_map(parts)))
    }

    /// The element naming the set item `item`.
    pub fn value(item: &Value) -> PathElement {
        PathElement::Value(canonical(item))
    }

    fn encode(&self) -> String {
        match self {
            PathElement::Field(f) => format!("f:{f}"),
            PathElement::Key(k) => format!("k:{k}"),
            PathElement::Value(v) => format!("v:{v}"),
            PathElement::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Result<PathElement, ApplyError> {
        let bad = || ApplyError::BadFieldsV1(format!("unknown path element {s:?}"));
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        Ok(match kind {
            "f" => PathElement::Field(rest.to_string()),
            "k" => {
                let v: Value = serde_json::from_str(rest).map_err(|_| bad())?;
                let Value::Object(map) = v else {
                    return Err(bad());
                };
                PathElement::Key(canonical_map(
                    map.iter().map(|(k, v)| (k.as_str(), v)).collect(),
                ))
            }
            "v" => {
                let v: Value = serde_json::from_str(rest).map_err(|_| bad())?;
                PathElement::Value(canonical(&v))
            }
            "i" => PathElement::Index(rest.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }
}

/// Paths print as structured-merge-diff prints them in conflict messages:
/// `.spec.containers[name="app"].image`, `.metadata.finalizers[="a"]`, `.args[0]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(keys) => {
                let map: Map<String, Value> = serde_json::from_str(keys).unwrap_or_default();
                let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(v) => write!(f, "[={v}]"),
            PathElement::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path from the object's root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Path(pub Vec<PathElement>);

impl Path {
    pub fn child(&self, element: PathElement) -> Path {
        let mut p = self.0.clone();
        p.push(element);
        Path(p)
    }

    pub fn field(&self, name: &str) -> Path {
        self.child(PathElement::Field(name.to_string()))
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A set of paths, as a tree: `members` are the paths that end at this node's children,
/// `children` the nodes below. A path may be a member and have members below it (a
/// list item owned as a whole and its fields).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds `path` (the empty path is the object itself, never a member).
    pub fn insert(&mut self, path: &Path) {
        let Some((last, parents)) = path.0.split_last() else {
            return;
        };
        let mut node = self;
        for e in parents {
            node = node.children.entry(e.clone()).or_default();
        }
        node.members.insert(last.clone());
    }

    pub fn has(&self, path: &Path) -> bool {
        let Some((last, parents)) = path.0.split_last() else {
            return false;
        };
        let mut node = self;
        for e in parents {
            match node.children.get(e) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.members.contains(last)
    }

    /// Whether `path` or anything below it is in the set.
    pub fn has_prefix(&self, path: &Path) -> bool {
        let Some((last, parents)) = path.0.split_last() else {
            return !self.is_empty();
        };
        let mut node = self;
        for e in parents {
            match node.children.get(e) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.members.contains(last) || node.children.get(last).is_some_and(|c| !c.is_empty())
    }

    /// The set below `element`, if any.
    pub fn child(&self, element: &PathElement) -> Option<&FieldSet> {
        self.children.get(element)
    }

    /// Whether `element` (a path one step long) is a member.
    pub fn contains(&self, element: &PathElement) -> bool {
        self.members.contains(element)
    }

    /// Whether `element` or anything below it is in the set.
    pub fn covers(&self, element: &PathElement) -> bool {
        self.members.contains(element) || self.children.get(element).is_some_and(|c| !c.is_empty())
    }

    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (e, c) in &other.children {
            let merged = match out.children.get(e) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(e.clone(), merged);
        }
        out
    }

    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: self.members.difference(&other.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            let left = match other.children.get(e) {
                Some(theirs) => c.difference(theirs),
                None => c.clone(),
            };
            if !left.is_empty() {
                out.children.insert(e.clone(), left);
            }
        }
        out
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            members: self.members.intersection(&other.members).cloned().collect(),
            children: BTreeMap::new(),
        };
        for (e, c) in &self.children {
            if let Some(theirs) = other.children.get(e) {
                let both = c.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(e.clone(), both);
                }
            }
        }
        out
    }

    /// Every member, as a full path, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&Path::default(), &mut out);
        out
    }

    fn collect(&self, prefix: &Path, out: &mut Vec<Path>) {
        let mut elements: BTreeSet<&PathElement> = self.members.iter().collect();
        elements.extend(self.children.keys());
        for e in elements {
            let path = prefix.child(e.clone());
            if self.members.contains(e) {
                out.push(path.clone());
            }
            if let Some(c) = self.children.get(e) {
                c.collect(&path, out);
            }
        }
    }

    /// The `FieldsV1` JSON of the set.
    pub fn to_fields_v1(&self) -> Value {
        let mut map = Map::new();
        let mut elements: BTreeSet<&PathElement> = self.members.iter().collect();
        elements.extend(self.children.keys());
        for e in elements {
            let mut value = match self.children.get(e) {
                Some(c) => c.to_fields_v1(),
                None => Value::Object(Map::new()),
            };
            if self.members.contains(e)
                && let Some(obj) = value.as_object_mut()
                && !obj.is_empty()
            {
                obj.insert(".".into(), Value::Object(Map::new()));
            }
            map.insert(e.encode(), value);
        }
        Value::Object(map)
    }

    /// Reads a `FieldsV1` JSON document.
    pub fn from_fields_v1(value: &Value) -> Result<FieldSet, ApplyError> {
        let Value::Object(map) = value else {
            return Err(ApplyError::BadFieldsV1(
                "fieldsV1 must be a JSON object".into(),
            ));
        };
        let mut out = FieldSet::new();
        for (k, v) in map {
            if k == "." {
                continue;
            }
            let e = PathElement::decode(k)?;
            let Value::Object(sub) = v else {
                return Err(ApplyError::BadFieldsV1(format!(
                    "{k} must map to an object"
                )));
            };
            if sub.is_empty() || sub.contains_key(".") {
                out.members.insert(e.clone());
            }
            let child = FieldSet::from_fields_v1(v)?;
            if !child.is_empty() {
                out.children.insert(e, child);
            }
        }
        Ok(out)
    }
}

/// Compact JSON with map keys sorted, so equal values name equal path elements.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => canonical_map(m.iter().map(|(k, v)| (k.as_str(), v)).collect()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

fn canonical_map(parts: BTreeMap<&str, &Value>) -> String {
    let body: Vec<String> = parts
        .into_iter()
        .map(|(k, v)| format!("{}:{}", Value::String(k.to_string()), canonical(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(elements: &[PathElement]) -> Path {
        Path(elements.to_vec())
    }

    fn f(name: &str) -> PathElement {
        PathElement::Field(name.into())
    }

    #[test]
    fn fields_v1_round_trips_every_element_kind() {
        let doc = json!({
            "f:metadata": {"f:labels": {"f:app": {}}, "f:finalizers": {"v:\"a\"": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:args": {"i:0": {}},
                "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}},
                }}},
            },
        });
        let set = FieldSet::from_fields_v1(&doc).unwrap();
        assert_eq!(set.to_fields_v1(), doc);
        let item = path(&[
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            PathElement::Key("{\"name\":\"app\"}".into()),
        ]);
        assert!(set.has(&item), "a node marked `.` is a member");
        assert!(set.has(&item.field("image")));
        assert!(!set.has(&path(&[f("spec")])), "a node without `.` is not");
        assert!(set.has_prefix(&path(&[f("spec")])));
        assert_eq!(set.paths().len(), 7);
    }

    #[test]
    fn keys_are_canonical_and_print_as_kubernetes_prints_them() {
        let a = PathElement::key(
            &json!({"protocol": "TCP", "port": 80, "x": 1}),
            &["protocol".into(), "port".into()],
        )
        .unwrap();
        assert_eq!(
            a,
            PathElement::Key("{\"port\":80,\"protocol\":\"TCP\"}".into())
        );
        let decoded = PathElement::decode("k:{\"protocol\":\"TCP\",\"port\":80}").unwrap();
        assert_eq!(decoded, a);
        let p = path(&[f("spec"), f("ports"), a, f("targetPort")]);
        assert_eq!(
            p.to_string(),
            ".spec.ports[port=80,protocol=\"TCP\"].targetPort"
        );
        let v = path(&[
            f("metadata"),
            f("finalizers"),
            PathElement::value(&json!("a")),
        ]);
        assert_eq!(v.to_string(), ".metadata.finalizers[=\"a\"]");
        assert!(PathElement::key(&json!({"image": "x"}), &["name".into()]).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:y": 1})).is_err());
    }

    #[test]
    fn set_operations() {
        let mut a = FieldSet::new();
        let mut b = FieldSet::new();
        let replicas = path(&[f("spec"), f("replicas")]);
        let paused = path(&[f("spec"), f("paused")]);
        let label = path(&[f("metadata"), f("labels"), f("app")]);
        a.insert(&replicas);
        a.insert(&label);
        b.insert(&replicas);
        b.insert(&paused);
        assert_eq!(
            a.union(&b).paths(),
            vec![label.clone(), paused.clone(), replicas.clone()]
        );
        assert_eq!(a.intersection(&b).paths(), vec![replicas.clone()]);
        assert_eq!(a.difference(&b).paths(), vec![label.clone()]);
        assert!(
            a.difference(&a).is_empty(),
            "no empty nodes are left behind"
        );
        assert!(FieldSet::new().intersection(&a).is_empty());
    }
}
