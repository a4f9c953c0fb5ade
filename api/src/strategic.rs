//! Strategic merge patch (`application/strategic-merge-patch+json`), what `kubectl apply`,
//! `edit`, `set`, `cordon` and `rollout pause` send: a merge patch whose lists of
//! objects merge item by item on a key, as the Kubernetes types declare with
//! `patchMergeKey` and `patchStrategy` (containers and env by `name`, container ports by
//! `containerPort`, volume mounts by `mountPath`, conditions by `type`, ...). Lists
//! without a merge key are replaced whole, as in Kubernetes.
//!
//! Directives: `$patch: replace | delete | merge` in a map or a list item,
//! `$setElementOrder/FIELD`, `$retainKeys` and `$deleteFromPrimitiveList/FIELD`.

use serde_json::{Map, Value};

/// How a list field merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Items are maps merged by this key.
    MergeKey(&'static str),
    /// Items are primitives; the union is kept (finalizers).
    MergePrimitives,
    /// The patch's list replaces the stored one.
    Replace,
}

/// The strategy of a list field of the served kinds, from its name (and, for `ports`,
/// from what its items look like: container ports merge on `containerPort`, Service
/// ports on `port`).
fn strategy(field: &str, target: Option<&Vec<Value>>, patch: &[Value]) -> ListStrategy {
    let has = |key: &str| {
        patch
            .iter()
            .chain(target.into_iter().flatten())
            .any(|v| v.get(key).is_some())
    };
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => ListStrategy::MergeKey("name"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "ports" if has("containerPort") => ListStrategy::MergeKey("containerPort"),
        "ports" => ListStrategy::MergeKey("port"),
        "conditions" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "finalizers" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

/// How the list field `field` of a served kind merges, judged from its name and its
/// `items` (container ports and Service ports are both `ports`). Server-side apply
/// (`crate::apply`) reads the same table, so both merges key lists alike.
pub fn list_strategy<'a>(field: &str, items: impl IntoIterator<Item = &'a Value>) -> ListStrategy {
    let items: Vec<Value> = items
        .into_iter()
        .filter(|v| v.get("containerPort").is_some())
        .take(1)
        .cloned()
        .collect();
    strategy(field, None, &items)
}

/// How a list field is declared in the OpenAPI documents, as the
/// `x-kubernetes-patch-strategy` and `x-kubernetes-patch-merge-key` extensions that
/// clients such as `kubectl apply` compute their patches from. `item_schema` names the
/// items' schema (`io.k8s.api.core.v1.ContainerPort`), which decides what `ports` merge on.
/// `None` for lists that are replaced whole.
pub fn declared(field: &str, item_schema: &str) -> Option<(&'static str, Option<&'static str>)> {
    let container_port = serde_json::json!({"containerPort": 0});
    let items = if item_schema.ends_with(".ContainerPort") {
        std::slice::from_ref(&container_port)
    } else {
        &[]
    };
    match strategy(field, None, items) {
        ListStrategy::MergeKey(key) => Some(("merge", Some(key))),
        ListStrategy::MergePrimitives => Some(("merge", None)),
        ListStrategy::Replace => None,
    }
}

/// Why a strategic merge patch could not apply (a 422, or 400 for a malformed body).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct StrategicError(pub String);

/// Applies a strategic merge patch to `target`.
pub fn apply(target: &Value, patch: &Value) -> Result<Value, StrategicError> {
    let Value::Object(patch) = patch else {
        return Err(StrategicError(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let mut out = target.clone();
    merge_map(&mut out, patch)?;
    Ok(out)
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) -> Result<(), StrategicError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            replaced.remove("$patch");
            *target = Value::Object(strip_directives(replaced));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(StrategicError(format!(
                "unknown patch type {other:?} in a $patch directive"
            )));
        }
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let map = target.as_object_mut().expect("made an object above");
    if let Some(keep) = patch.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or_else(|| StrategicError("$retainKeys must be a list of field names".into()))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        map.retain(|k, _| keep.contains(&k.as_str()));
    }
    // Deletions from primitive lists come first, whatever the key order of the patch,
    // so a list the same patch adds to is merged into what is left (as Kubernetes does).
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(list) = map.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|v| !remove.contains(v));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                map.remove(key);
            }
            Value::Object(sub) => {
                let slot = map.entry(key.clone()).or_insert(Value::Null);
                merge_map(slot, sub)?;
                if slot.is_null() {
                    map.remove(key);
                }
            }
            Value::Array(items) => {
                let order = patch
                    .get(&format!("$setElementOrder/{key}"))
                    .and_then(Value::as_array);
                let current = map.get(key).and_then(Value::as_array);
                let merged = merge_list(key, current, items, order)?;
                map.insert(key.clone(), Value::Array(merged));
            }
            other => {
                map.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(())
}

fn strip_directives(mut map: Map<String, Value>) -> Map<String, Value> {
    map.retain(|k, _| !k.starts_with('$'));
    for v in map.values_mut() {
        if let Value::Object(m) = v {
            *m = strip_directives(std::mem::take(m));
        }
    }
    map
}

fn merge_list(
    field: &str,
    current: Option<&Vec<Value>>,
    patch: &[Value],
    order: Option<&Vec<Value>>,
) -> Result<Vec<Value>, StrategicError> {
    // `$patch: replace` as a list item replaces the whole list with the other items.
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|v| v.get("$patch").is_none())
            .cloned()
            .collect());
    }
    match strategy(field, current, patch) {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::MergePrimitives => Ok(merge_primitives(
            current.map(Vec::as_slice).unwrap_or_default(),
            patch,
            order.map(Vec::as_slice),
        )),
        ListStrategy::MergeKey(key) => {
            let mut out: Vec<Value> = current.cloned().unwrap_or_default();
            for item in patch {
                let Some(id) = item.get(key) else {
                    return Err(StrategicError(format!(
                        "map: {item} does not contain declared merge key: {key}"
                    )));
                };
                let existing = out.iter().position(|v| v.get(key) == Some(id));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (existing, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let sub = item.as_object().cloned().unwrap_or_default();
                        merge_map(&mut out[i], &sub)?;
                    }
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        merge_map(&mut fresh, item.as_object().expect("has a key, so a map"))?;
                        out.push(fresh);
                    }
                }
            }
            if let Some(order) = order {
                out = reorder(out, order, key);
            }
            Ok(out)
        }
    }
}

/// The union of a list of scalars and a patch's items, ordered as Kubernetes orders it:
/// the patch's items in the patch's order (or `$setElementOrder`'s), the items only the
/// server had in their old order, the two interleaved where the old list orders both.
/// Applying the same patch to the result gives the result again.
fn merge_primitives(current: &[Value], patch: &[Value], order: Option<&[Value]>) -> Vec<Value> {
    let patch_order = order.unwrap_or(patch);
    let mut ours: Vec<&Value> = Vec::new();
    for v in patch_order.iter().chain(patch) {
        if patch.contains(v) && !ours.contains(&v) {
            ours.push(v);
        }
    }
    let theirs: Vec<&Value> =
        current
            .iter()
            .filter(|v| !patch.contains(v))
            .fold(Vec::new(), |mut seen, v| {
                if !seen.contains(&v) {
                    seen.push(v);
                }
                seen
            });
    let at = |v: &Value| current.iter().position(|c| c == v);
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(ours.len() + theirs.len());
    while i < theirs.len() || j < ours.len() {
        let server_first = match (theirs.get(i), ours.get(j)) {
            (Some(_), None) => true,
            (None, _) => false,
            (Some(l), Some(r)) => matches!((at(l), at(r)), (Some(a), Some(b)) if a < b),
        };
        if server_first {
            out.push(theirs[i].clone());
            i += 1;
        } else {
            out.push(ours[j].clone());
            j += 1;
        }
    }
    out
}

/// Orders items as `$setElementOrder` lists them; items it doesn't list keep their
/// relative order after the listed ones.
fn reorder(items: Vec<Value>, order: &[Value], key: &str) -> Vec<Value> {
    let rank = |v: &Value| {
        order
            .iter()
            .position(|o| o.get(key).is_some() && o.get(key) == v.get(key))
            .unwrap_or(usize::MAX)
    };
    let mut indexed: Vec<(usize, usize, Value)> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| (rank(&v), i, v))
        .collect();
    indexed.sort_by_key(|(r, i, _)| (*r, *i));
    indexed.into_iter().map(|(_, _, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"spec": {"replicas": 2, "template": {"spec": {
            "containers": [
                {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                {"name": "sidecar", "image": "s:1"},
            ],
            "tolerations": [{"key": "x", "operator": "Exists"}],
        }}}})
    }

    #[test]
    fn lists_of_objects_merge_on_their_key() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
        ]}}}});
        let out = apply(&deployment(), &patch).unwrap();
        let containers = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers.as_array().unwrap().len(), 2, "the sidecar stays");
        assert_eq!(containers[0]["image"], "a:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80);
        assert_eq!(containers[1]["image"], "s:1");
    }

    #[test]
    fn lists_without_a_key_are_replaced_and_nulls_delete() {
        let patch = json!({"spec": {"replicas": null, "template": {"spec": {"tolerations": [{"key": "y", "operator": "Exists"}]}}}});
        let out = apply(&deployment(), &patch).unwrap();
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "y", "operator": "Exists"}])
        );
    }

    #[test]
    fn directives_delete_replace_order_and_retain() {
        let delete = json!({"spec": {"template": {"spec": {"containers": [{"name": "sidecar", "$patch": "delete"}]}}}});
        let out = apply(&deployment(), &delete).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let order = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [{"name": "sidecar", "image": "s:2"}],
        }}}});
        let out = apply(&deployment(), &order).unwrap();
        let names: Vec<&str> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidecar", "app"]);

        let replace = json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "only"}]}}}});
        let out = apply(&deployment(), &replace).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"],
            json!({"containers": [{"name": "only"}]})
        );

        let retain = json!({"spec": {"$retainKeys": ["template"], "template": {"metadata": {"labels": {"a": "b"}}}}});
        let out = apply(&deployment(), &retain).unwrap();
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(out["spec"]["template"]["metadata"]["labels"]["a"], "b");

        let finalizers = json!({"metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        let out = apply(
            &json!({"metadata": {"finalizers": ["a", "c"]}}),
            &finalizers,
        )
        .unwrap();
        // Kubernetes puts the patch's items first where the old list can't order them.
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn lists_of_scalars_keep_the_patch_order_and_a_second_apply_changes_nothing() {
        let patch = json!({"metadata": {"finalizers": ["a", "b"], "$deleteFromPrimitiveList/finalizers": ["a"]}});
        let once = apply(&json!({}), &patch).unwrap();
        assert_eq!(once["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(apply(&once, &patch).unwrap(), once);

        // Items only the server has keep their order, placed by where the old list had
        // them against the patch's items.
        let current = json!({"metadata": {"finalizers": ["x", "b", "y", "a"]}});
        let patch = json!({"metadata": {"finalizers": ["a", "b"]}});
        let once = apply(&current, &patch).unwrap();
        assert_eq!(once["metadata"]["finalizers"], json!(["x", "y", "a", "b"]));
        assert_eq!(apply(&once, &patch).unwrap(), once);

        let ordered =
            json!({"metadata": {"finalizers": ["n"], "$setElementOrder/finalizers": ["n", "x"]}});
        let out = apply(&json!({"metadata": {"finalizers": ["x"]}}), &ordered).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["n", "x"]));
    }

    #[test]
    fn service_ports_merge_on_port_and_bad_items_are_refused() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = apply(
            &svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        )
        .unwrap();
        assert_eq!(out["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
        let err = apply(
            &deployment(),
            &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}}),
        );
        assert!(err.unwrap_err().0.contains("merge key: name"));
        assert!(apply(&deployment(), &json!([1])).is_err());
    }
}
