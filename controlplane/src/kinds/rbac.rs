//! What the four RBAC kinds (Role, ClusterRole, RoleBinding, ClusterRoleBinding in
//! rbac.authorization.k8s.io/v1) share: checking rules, role references and subjects as
//! kube-apiserver's validation does, and their Table cells. Who may write them (the
//! escalation checks) is `auth::rbac`'s and `apiserver::crud`'s.

use serde_json::{Value, json};

use skiff_api::validation::FieldError;

use crate::kinds::fields::{immutable, invalid, required};
use crate::kinds::print;

pub const GROUP: &str = crate::auth::rbac::GROUP;

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Checks a role's `rules`; a namespaced Role may not name paths.
pub fn validate_rules(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
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
pub fn validate_binding(obj: &Value, cluster: bool, errs: &mut Vec<FieldError>) {
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
pub fn validate_binding_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    immutable(old, new, "/roleRef", "roleRef", errs);
}

/// Sets a subject's default API group, as Kubernetes does.
pub fn default_subjects(obj: &mut Value) {
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
pub fn role_cell(obj: &Value) -> Value {
    json!(format!(
        "{}/{}",
        print::s(obj, "/roleRef/kind"),
        print::s(obj, "/roleRef/name")
    ))
}

/// The names of a binding's subjects of one kind, comma-separated (the wide columns).
pub fn subjects_cell(obj: &Value, kind: &str) -> Value {
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
pub fn created_at(obj: &Value) -> Value {
    json!(print::s(obj, "/metadata/creationTimestamp"))
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
