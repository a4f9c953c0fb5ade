//! `metadata.managedFields`: which manager owns which fields, and how an apply or an
//! update changes that, following structured-merge-diff's `Updater` (`Apply`, `Update`)
//! and kube-apiserver's field manager (entry identity, sorting, the cap on update
//! entries, and the client-side apply upgrade path).

use serde_json::{Value, json};

use super::fieldpath::{FieldSet, Path};
use super::schema::ApplySchema;
use super::typed::{self, compare, merge, to_field_set};
use super::{ApplyError, Conflict};

/// The field manager kubectl uses for `apply --server-side`; its applies may take over
/// fields from client-side apply without conflict (see [`apply`]).
pub const KUBECTL_MANAGER: &str = "kubectl";
/// The annotation client-side apply keeps its last configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Most `Update` entries kept; older ones fold into one `ancient-changes` entry, so that
/// many writers cannot grow an object without bound (kube-apiserver's
/// `DefaultMaxUpdateManagers`).
pub const MAX_UPDATE_MANAGERS: usize = 10;
const ANCIENT_CHANGES: &str = "ancient-changes";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    /// An applier is one entry whatever version it applied at; an updater one per version.
    fn is(&self, w: &Writer<'_>, operation: Operation) -> bool {
        self.manager == w.manager
            && self.operation == operation
            && self.subresource == w.subresource
            && (operation == Operation::Apply || self.api_version == w.api_version)
    }

    /// How conflict messages name the manager, as kube-apiserver prints it.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
            if let Some(t) = &self.time {
                s.push_str(&format!(" at {t}"));
            }
        }
        s
    }

    fn to_value(&self) -> Value {
        let mut v = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": "FieldsV1",
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(t) = &self.time {
            v["time"] = json!(t);
        }
        if !self.subresource.is_empty() {
            v["subresource"] = json!(self.subresource);
        }
        v
    }
}

/// Who writes: the field manager, the version it writes at, the subresource (empty for
/// the main resource) and the time to record.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub manager: &'a str,
    pub api_version: &'a str,
    pub subresource: &'a str,
    pub time: &'a str,
}

/// All entries of one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagedFields(pub Vec<Entry>);

impl ManagedFields {
    /// Reads `metadata.managedFields` of an object (none is an empty set).
    pub fn of(obj: &Value) -> Result<ManagedFields, ApplyError> {
        let Some(list) = obj.pointer("/metadata/managedFields") else {
            return Ok(ManagedFields::default());
        };
        let Some(list) = list.as_array() else {
            return Err(ApplyError::BadFieldsV1(
                "managedFields must be a list".into(),
            ));
        };
        let mut out = Vec::with_capacity(list.len());
        for e in list {
            let s = |k: &str| {
                e.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let operation = match s("operation").as_str() {
                "Apply" => Operation::Apply,
                "Update" => Operation::Update,
                other => {
                    return Err(ApplyError::BadFieldsV1(format!(
                        "unknown operation {other:?}"
                    )));
                }
            };
            if s("fieldsType") != "FieldsV1" {
                return Err(ApplyError::BadFieldsV1(format!(
                    "fieldsType must be FieldsV1, not {:?}",
                    s("fieldsType")
                )));
            }
            let fields = FieldSet::from_fields_v1(e.get("fieldsV1").unwrap_or(&json!({})))?;
            out.push(Entry {
                manager: s("manager"),
                operation,
                api_version: s("apiVersion"),
                time: e.get("time").and_then(Value::as_str).map(str::to_string),
                subresource: s("subresource"),
                fields,
            });
        }
        Ok(ManagedFields(out))
    }

    /// The `managedFields` list, in kube-apiserver's order: appliers first, then by
    /// time, manager, version and subresource.
    pub fn to_value(&self) -> Value {
        let mut entries: Vec<&Entry> = self.0.iter().collect();
        entries.sort_by(|a, b| {
            (
                a.operation,
                &a.time,
                &a.manager,
                &a.api_version,
                &a.subresource,
            )
                .cmp(&(
                    b.operation,
                    &b.time,
                    &b.manager,
                    &b.api_version,
                    &b.subresource,
                ))
        });
        Value::Array(entries.into_iter().map(Entry::to_value).collect())
    }

    pub fn entries(&self) -> &[Entry] {
        &self.0
    }

    fn finish(&mut self) {
        self.0.retain(|e| !e.fields.is_empty());
        self.cap_updaters();
    }

    /// Folds the oldest update entries into one once there are too many.
    fn cap_updaters(&mut self) {
        let updaters = self
            .0
            .iter()
            .filter(|e| e.operation == Operation::Update)
            .count();
        if updaters <= MAX_UPDATE_MANAGERS {
            return;
        }
        let mut order: Vec<usize> = (0..self.0.len())
            .filter(|&i| {
                self.0[i].operation == Operation::Update && self.0[i].manager != ANCIENT_CHANGES
            })
            .collect();
        order.sort_by(|&a, &b| self.0[a].time.cmp(&self.0[b].time));
        let excess = updaters - MAX_UPDATE_MANAGERS + 1;
        let folded: Vec<usize> = order.into_iter().take(excess).collect();
        let mut ancient = self
            .0
            .iter()
            .position(|e| e.manager == ANCIENT_CHANGES)
            .map(|i| self.0[i].fields.clone())
            .unwrap_or_default();
        let mut time = None;
        for &i in &folded {
            ancient = ancient.union(&self.0[i].fields);
            time = time.max(self.0[i].time.clone());
        }
        let api_version = folded
            .first()
            .map(|&i| self.0[i].api_version.clone())
            .unwrap_or_default();
        let mut i = 0;
        self.0.retain(|e| {
            let drop = folded.contains(&i) || e.manager == ANCIENT_CHANGES;
            i += 1;
            !drop
        });
        self.0.push(Entry {
            manager: ANCIENT_CHANGES.into(),
            operation: Operation::Update,
            api_version,
            time,
            subresource: String::new(),
            fields: ancient,
        });
    }
}

/// Records a write that is not an apply (create, update, patch): the fields it added or
/// changed become the writer's, taken from whoever owned them; removed fields leave
/// every manager. `live` and `new` are the parts of the object managers can own.
pub fn update(
    managed: &mut ManagedFields,
    live: &Value,
    new: &Value,
    w: &Writer<'_>,
    schema: &dyn ApplySchema,
) -> Result<(), ApplyError> {
    let cmp = compare(live, new, schema)?;
    let changed = cmp.changed();
    for e in managed.0.iter_mut() {
        if !e.is(w, Operation::Update) {
            e.fields = e.fields.difference(&changed).difference(&cmp.removed);
        }
    }
    let mine = match managed.0.iter().position(|e| e.is(w, Operation::Update)) {
        Some(i) => &mut managed.0[i],
        None => {
            managed.0.push(Entry {
                manager: w.manager.to_string(),
                operation: Operation::Update,
                api_version: w.api_version.to_string(),
                time: None,
                subresource: w.subresource.to_string(),
                fields: FieldSet::new(),
            });
            managed.0.last_mut().expect("just pushed")
        }
    };
    let fields = mine.fields.difference(&cmp.removed).union(&changed);
    if fields != mine.fields || !cmp.is_same() {
        mine.time = Some(w.time.to_string());
    }
    mine.fields = fields;
    managed.finish();
    Ok(())
}

/// What an apply produces: the merged object and the new ownership.
#[derive(Debug, Clone)]
pub struct Applied {
    pub object: Value,
    pub managed: ManagedFields,
}

/// Applies `config` for `w.manager` to `live` (`{}` when creating). `view` cuts an object
/// down to the part managers can own (no system metadata; for the main resource no
/// status, for the status subresource only status).
///
/// The configuration's fields become the manager's; fields it applied last time and
/// no longer does are removed unless another manager owns them; a changed field another
/// manager owns is a conflict unless `force`, which takes it over. For kubectl's
/// manager, conflicts over fields that still hold the value client-side apply last
/// applied are taken over, as kube-apiserver upgrades client-side apply.
pub fn apply(
    live: &Value,
    config: &Value,
    managed: &ManagedFields,
    w: &Writer<'_>,
    force: bool,
    schema: &dyn ApplySchema,
    view: &dyn Fn(&Value) -> Value,
) -> Result<Applied, ApplyError> {
    let config = typed::strip_nulls(config);
    let mut object = merge(live, &config, schema)?;
    let applied = to_field_set(&view(&config), schema)?;
    let mut managed = managed.clone();
    let last = managed
        .0
        .iter()
        .position(|e| e.is(w, Operation::Apply))
        .map(|i| managed.0.remove(i));
    let others = managed
        .0
        .iter()
        .fold(FieldSet::new(), |acc, e| acc.union(&e.fields));
    if let Some(last) = &last {
        typed::remove(
            &mut object,
            &last.fields.difference(&applied),
            &others,
            schema,
        )?;
    }

    let live_view = view(live);
    let cmp = compare(&live_view, &view(&object), schema)?;
    let changed = cmp.changed();
    let mut conflicts: Vec<(usize, Path)> = Vec::new();
    for (i, e) in managed.0.iter().enumerate() {
        for path in e.fields.intersection(&changed).paths() {
            conflicts.push((i, path));
        }
    }
    if !conflicts.is_empty() && !force {
        let allowed = if w.manager == KUBECTL_MANAGER {
            upgradable_from_client_side(live, &live_view, schema, view)
        } else {
            FieldSet::new()
        };
        conflicts.retain(|(i, path)| {
            !(managed.0[*i].manager == CLIENT_SIDE_APPLY_MANAGER && allowed.has(path))
        });
        if !conflicts.is_empty() {
            return Err(ApplyError::Conflicts(
                conflicts
                    .into_iter()
                    .map(|(i, path)| Conflict {
                        manager: managed.0[i].describe(),
                        path: path.to_string(),
                    })
                    .collect(),
            ));
        }
    }
    for e in managed.0.iter_mut() {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    let time = match &last {
        Some(last) if cmp.is_same() && last.fields == applied => last.time.clone(),
        _ => Some(w.time.to_string()),
    };
    managed.0.push(Entry {
        manager: w.manager.to_string(),
        operation: Operation::Apply,
        api_version: w.api_version.to_string(),
        time,
        subresource: w.subresource.to_string(),
        fields: applied,
    });
    managed.finish();
    if w.manager == KUBECTL_MANAGER {
        refresh_last_applied(&mut object, &config);
    }
    Ok(Applied { object, managed })
}

/// The manager kubectl's client-side apply writes as.
pub const CLIENT_SIDE_APPLY_MANAGER: &str = "kubectl-client-side-apply";

/// The fields client-side apply last applied that still hold the value it applied:
/// kubectl's server-side apply may take those over without a conflict.
fn upgradable_from_client_side(
    live: &Value,
    live_view: &Value,
    schema: &dyn ApplySchema,
    view: &dyn Fn(&Value) -> Value,
) -> FieldSet {
    let Some(text) = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
    else {
        return FieldSet::new();
    };
    let Ok(last) = serde_json::from_str::<Value>(text) else {
        return FieldSet::new();
    };
    let last = view(&typed::strip_nulls(&last));
    let (Ok(set), Ok(cmp)) = (
        to_field_set(&last, schema),
        compare(&last, live_view, schema),
    ) else {
        return FieldSet::new();
    };
    set.difference(&cmp.modified)
}

/// kubectl's server-side apply keeps a client-side apply annotation in step with what
/// it applied, so a later client-side apply computes its patch from the right base.
fn refresh_last_applied(object: &mut Value, config: &Value) {
    let has = object
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .is_some();
    if !has {
        return;
    }
    let mut last = config.clone();
    if let Some(annotations) = last
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(LAST_APPLIED);
    }
    object["metadata"]["annotations"][LAST_APPLIED] = json!(last.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::schema::Builtin;

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: "",
            time: "2026-01-01T00:00:00Z",
        }
    }

    fn cut(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("status");
        }
        v
    }

    fn apply_as(
        live: &Value,
        config: Value,
        m: &ManagedFields,
        who: &str,
        force: bool,
    ) -> Result<Applied, ApplyError> {
        apply(live, &config, m, &writer(who), force, &Builtin, &cut)
    }

    #[test]
    fn applying_owns_the_fields_and_reapplying_changes_nothing() {
        let config = json!({"spec": {"replicas": 2}, "metadata": {"labels": {"a": "b"}}});
        let first = apply_as(
            &json!({}),
            config.clone(),
            &ManagedFields::default(),
            "alice",
            false,
        )
        .unwrap();
        assert_eq!(first.object, config);
        let entries = first.managed.to_value();
        assert_eq!(entries[0]["manager"], "alice");
        assert_eq!(entries[0]["operation"], "Apply");
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:spec": {"f:replicas": {}}})
        );
        let mut later = writer("alice");
        later.time = "2027-01-01T00:00:00Z";
        let again = apply(
            &first.object,
            &config,
            &first.managed,
            &later,
            false,
            &Builtin,
            &cut,
        )
        .unwrap();
        assert_eq!(again.object, first.object);
        assert_eq!(again.managed, first.managed, "a no-op keeps the time too");
    }

    #[test]
    fn changing_anothers_field_conflicts_unless_forced() {
        let live = json!({"spec": {"replicas": 2}});
        let mut m = ManagedFields::default();
        update(
            &mut m,
            &json!({}),
            &live,
            &Writer {
                manager: "kubectl-client-side-apply",
                ..writer("")
            },
            &Builtin,
        )
        .unwrap();
        let same = apply_as(&live, json!({"spec": {"replicas": 2}}), &m, "bob", false).unwrap();
        assert_eq!(
            same.managed.0.len(),
            2,
            "the same value is shared, not a conflict"
        );

        let err = apply_as(&live, json!({"spec": {"replicas": 3}}), &m, "bob", false).unwrap_err();
        let ApplyError::Conflicts(c) = &err else {
            panic!("{err}")
        };
        assert_eq!(c[0].path, ".spec.replicas");
        assert_eq!(
            err.to_string(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1 at 2026-01-01T00:00:00Z: .spec.replicas"
        );
        let forced = apply_as(&live, json!({"spec": {"replicas": 3}}), &m, "bob", true).unwrap();
        assert_eq!(forced.object["spec"]["replicas"], 3);
        assert_eq!(
            forced.managed.0.len(),
            1,
            "the old owner lost its only field"
        );
        assert_eq!(forced.managed.0[0].manager, "bob");
    }

    #[test]
    fn fields_no_longer_applied_go_unless_someone_else_owns_them() {
        let m = ManagedFields::default();
        let a = apply_as(
            &json!({}),
            json!({"metadata": {"labels": {"x": "1", "y": "2"}}}),
            &m,
            "alice",
            false,
        )
        .unwrap();
        let b = apply_as(
            &a.object,
            json!({"metadata": {"labels": {"y": "2"}}}),
            &a.managed,
            "bob",
            false,
        )
        .unwrap();
        let c = apply_as(
            &b.object,
            json!({"metadata": {"labels": {}}}),
            &b.managed,
            "alice",
            false,
        )
        .unwrap();
        assert_eq!(
            c.object["metadata"]["labels"],
            json!({"y": "2"}),
            "x dropped, y kept by bob"
        );
        assert_eq!(c.managed.0.len(), 1);
        assert_eq!(c.managed.0[0].manager, "bob");
    }

    #[test]
    fn updates_take_what_they_change() {
        let mut m = ManagedFields::default();
        let a = apply_as(
            &json!({}),
            json!({"spec": {"replicas": 1, "paused": true}}),
            &m,
            "alice",
            false,
        )
        .unwrap();
        m = a.managed;
        let new = json!({"spec": {"replicas": 5}});
        update(&mut m, &a.object, &new, &writer("kubectl-scale"), &Builtin).unwrap();
        let v = m.to_value();
        assert_eq!(
            v.as_array().unwrap().len(),
            1,
            "alice lost replicas to the update and paused to its removal"
        );
        assert_eq!(v[0]["manager"], "kubectl-scale");
        assert_eq!(v[0]["operation"], "Update");
        assert_eq!(v[0]["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    }

    #[test]
    fn kubectl_takes_over_what_client_side_apply_applied() {
        let last = json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 2}})
            .to_string();
        let live =
            json!({"metadata": {"annotations": {LAST_APPLIED: last}}, "spec": {"replicas": 2}});
        let mut m = ManagedFields::default();
        update(
            &mut m,
            &json!({}),
            &live,
            &writer(CLIENT_SIDE_APPLY_MANAGER),
            &Builtin,
        )
        .unwrap();
        let out = apply_as(
            &live,
            json!({"spec": {"replicas": 4}}),
            &m,
            KUBECTL_MANAGER,
            false,
        )
        .unwrap();
        assert_eq!(out.object["spec"]["replicas"], 4);
        let ann = out.object["metadata"]["annotations"][LAST_APPLIED]
            .as_str()
            .unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(ann).unwrap(),
            json!({"spec": {"replicas": 4}})
        );
        // Another manager gets the conflict.
        assert!(apply_as(&live, json!({"spec": {"replicas": 4}}), &m, "other", false).is_err());
    }

    #[test]
    fn update_entries_are_capped() {
        let mut m = ManagedFields::default();
        let mut live = json!({});
        for i in 0..(MAX_UPDATE_MANAGERS + 5) {
            let mut new = live.clone();
            new["data"][format!("k{i}")] = json!("v");
            let name = format!("m{i}");
            let time = format!("2026-01-01T00:00:{i:02}Z");
            update(
                &mut m,
                &live,
                &new,
                &Writer {
                    manager: &name,
                    api_version: "v1",
                    subresource: "",
                    time: &time,
                },
                &Builtin,
            )
            .unwrap();
            live = new;
        }
        assert_eq!(m.0.len(), MAX_UPDATE_MANAGERS);
        assert!(m.0.iter().any(|e| e.manager == ANCIENT_CHANGES));
        assert_eq!(
            ManagedFields::of(&json!({"metadata": {"managedFields": m.to_value()}}))
                .unwrap()
                .0
                .len(),
            m.0.len()
        );
    }
}
