//! What the four RBAC kinds (Role, ClusterRole, RoleBinding, ClusterRoleBinding in
//! rbac.authorization.k8s.io/v1) share: the two kinds' behaviour, [`RoleKind`] and
//! [`BindingKind`] (each file declares its kind's `INFO` and one of these), which check
//! rules, role references and subjects as kube-apiserver's validation does and show
//! kubectl's columns. Who may write them (the escalation checks) is `auth::escalation`'s.

use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;
use skiff_api::validation::FieldError;

use super::Kind;
use super::print::{self, AGE, Column, NAME, age};
use crate::kinds::fields::{immutable, invalid, required};

pub const GROUP: &str = crate::auth::rbac::GROUP;

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Checks a role's `rules`; a namespaced Role may not name paths.
fn validate_rules(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
    for (i, rule) in list(obj, "rules").iter().enumerate() {
        let at = |f: &str| format!("rules[{i}].{f}");
        if list(rule, "verbs").is_empty() {
            errs.push(required(at("verbs")));
        }
        let urls = !list(rule, "nonResourceURLs").is_empty();
        if urls && !cluster {
            errs.push(invalid(
                at("nonResourceURLs"),
                "",
                "namespaced rules cannot apply to non-resource URLs",
            ));
            continue;
        }
        let resources = !list(rule, "resources").is_empty() || !list(rule, "apiGroups").is_empty();
        if urls && resources {
            errs.push(invalid(
                at("nonResourceURLs"),
                "",
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        } else if !urls {
            if list(rule, "apiGroups").is_empty() {
                errs.push(required(at("apiGroups")));
            }
            if list(rule, "resources").is_empty() {
                errs.push(required(at("resources")));
            }
        }
    }
}

/// Checks a binding's `roleRef` (a ClusterRoleBinding may refer only to a ClusterRole)
/// and `subjects`.
fn validate_binding(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
    let role_ref = &obj["roleRef"];
    if role_ref["apiGroup"].as_str() != Some(GROUP) {
        errs.push(invalid(
            "roleRef.apiGroup",
            role_ref["apiGroup"].as_str().unwrap_or_default(),
            &format!("supported values: \"{GROUP}\""),
        ));
    }
    let kinds: &[&str] = if cluster {
        &["ClusterRole"]
    } else {
        &["Role", "ClusterRole"]
    };
    let kind = role_ref["kind"].as_str().unwrap_or_default();
    if !kinds.contains(&kind) {
        errs.push(invalid(
            "roleRef.kind",
            kind,
            &format!("supported values: {}", json!(kinds)),
        ));
    }
    if role_ref["name"].as_str().is_none_or(str::is_empty) {
        errs.push(required("roleRef.name"));
    }
    for (i, s) in list(obj, "subjects").iter().enumerate() {
        let at = |f: &str| format!("subjects[{i}].{f}");
        if s["name"].as_str().is_none_or(str::is_empty) {
            errs.push(required(at("name")));
        }
        match s["kind"].as_str().unwrap_or_default() {
            "User" | "Group" => {
                if s["apiGroup"].as_str() != Some(GROUP) {
                    errs.push(invalid(
                        at("apiGroup"),
                        s["apiGroup"].as_str().unwrap_or_default(),
                        &format!("supported values: \"{GROUP}\""),
                    ));
                }
            }
            "ServiceAccount" => {
                if s["apiGroup"].as_str().is_some_and(|g| !g.is_empty()) {
                    errs.push(invalid(
                        at("apiGroup"),
                        s["apiGroup"].as_str().unwrap_or_default(),
                        "supported values: \"\"",
                    ));
                }
                if cluster && s["namespace"].as_str().is_none_or(str::is_empty) {
                    errs.push(required(at("namespace")));
                }
            }
            other => errs.push(invalid(
                at("kind"),
                other,
                "supported values: \"ServiceAccount\", \"User\", \"Group\"",
            )),
        }
    }
}

/// A binding's role reference cannot change, as in Kubernetes: delete and recreate it.
fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    immutable(old, new, "/roleRef", "roleRef", errs);
}

/// Sets a subject's default API group, as Kubernetes does.
fn default_subjects(obj: &mut Value) {
    if let Some(subjects) = obj.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            if s.get("apiGroup").is_none() && matches!(s["kind"].as_str(), Some("User" | "Group")) {
                s["apiGroup"] = json!(GROUP);
            }
        }
    }
    if let Some(r) = obj.get_mut("roleRef")
        && r.get("apiGroup").is_none()
    {
        r["apiGroup"] = json!(GROUP);
    }
}

/// `ClusterRole/view`: a binding's ROLE column.
fn role_cell(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        print::s(obj, "/roleRef/kind"),
        print::s(obj, "/roleRef/name")
    ))
}

/// The names of a binding's subjects of one kind, comma-separated (the wide columns).
fn subjects_cell(obj: &Value, kind: &str) -> Value {
    let names: Vec<String> = list(obj, "subjects")
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| match (kind, s["namespace"].as_str()) {
            ("ServiceAccount", Some(ns)) => {
                format!("{ns}/{}", s["name"].as_str().unwrap_or_default())
            }
            _ => s["name"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    json!(names.join(", "))
}

/// `CREATED AT`, the column kubectl shows for roles.
fn created_at(obj: &Value) -> Value {
    json!(print::s(obj, "/metadata/creationTimestamp"))
}

/// A Role or a ClusterRole: the same rules, which only a ClusterRole's may give paths.
pub(super) struct RoleKind {
    pub info: &'static ResourceInfo,
    pub cluster: bool,
}

impl Kind for RoleKind {
    fn info(&self) -> &'static ResourceInfo {
        self.info
    }

    fn name_rules(&self) -> Option<super::NameRules> {
        // Kubernetes allows any path segment name for roles (`system:node`).
        Some(skiff_api::validation::is_path_segment_name)
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_rules(obj, self.cluster, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![NAME, ("Created At", "date", 0)]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![print::name(obj), created_at(obj)]
    }
}

/// A RoleBinding or a ClusterRoleBinding: a ClusterRoleBinding refers only to a
/// ClusterRole, and names the namespace of each ServiceAccount it binds.
pub(super) struct BindingKind {
    pub info: &'static ResourceInfo,
    pub cluster: bool,
}

impl Kind for BindingKind {
    fn info(&self) -> &'static ResourceInfo {
        self.info
    }

    fn name_rules(&self) -> Option<super::NameRules> {
        Some(skiff_api::validation::is_path_segment_name)
    }

    fn default(&self, obj: &mut Value) {
        default_subjects(obj);
    }

    fn validate(&self, obj: &Value, errs: &mut Vec<FieldError>) {
        validate_binding(obj, self.cluster, errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        validate_binding_update(old, new, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            ("Role", "string", 0),
            AGE,
            ("Users", "string", 1),
            ("Groups", "string", 1),
            ("ServiceAccounts", "string", 1),
        ]
    }

    fn cells(&self, obj: &Value) -> Vec<Value> {
        vec![
            print::name(obj),
            role_cell(obj),
            age(obj),
            subjects_cell(obj, "User"),
            subjects_cell(obj, "Group"),
            subjects_cell(obj, "ServiceAccount"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_and_bindings_are_checked_as_kubernetes_checks_them() {
        let mut errs = Vec::new();
        validate_rules(
            &json!({"rules": [
                {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
                {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
                {"verbs": ["get"], "nonResourceURLs": ["/metrics"]},
            ]}),
            false,
            &mut errs,
        );
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["rules[1].verbs", "rules[2].nonResourceURLs"]);
        let mut errs = Vec::new();
        let mut b = json!({"roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}]});
        default_subjects(&mut b);
        validate_binding(&b, true, &mut errs);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["roleRef.kind", "subjects[0].namespace", "subjects[1].kind"]
        );
    }
}
