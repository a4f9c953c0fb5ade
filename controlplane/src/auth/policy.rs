//! The roles and bindings a cluster starts with, as kube-apiserver's bootstrap policy:
//! written at every start when missing, and brought up to date when they carry
//! `rbac.authorization.kubernetes.io/autoupdate: "true"` (remove the annotation to keep
//! an edited default as it is).
//!
//! - `cluster-admin`: everything; bound to the group `system:masters`, which admin
//!   tokens belong to.
//! - `admin`, `edit`, `view`: the user-facing roles, aggregated from
//!   `system:aggregate-to-admin`, `-edit` and `-view` and from any role labelled to
//!   join them. `view` reads what a namespace holds except Secrets; `edit` also writes
//!   it, reads Secrets and reaches into pods; `admin` also manages Roles and
//!   RoleBindings in the namespace.
//! - `system:discovery`, `system:basic-user`, `system:service-account-issuer-discovery`:
//!   what every authenticated user may do (discovery and OpenAPI, asking what it may
//!   do, who it is, and the token issuer's public keys).
//! - `skiff:viewer`: what viewer tokens (the group `skiff:viewers`) could always do:
//!   read every kind the server serves except Secrets, the resource metrics,
//!   `nodes/proxy` and `/metrics`.
//!
//! Nodes are authorized by the Node authorizer before RBAC (`authz.rs`), as with
//! kube-apiserver's `--authorization-mode=Node,RBAC`; join tokens may only join.

use serde_json::{Value, json};

use super::rbac::{GROUP, MASTERS};
use crate::store::{Store, StoreError, WriteOp};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group viewer tokens belong to.
pub const VIEWERS: &str = "skiff:viewers";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(verbs: &[&str], group: &str, resources: &[&str]) -> Value {
    json!({"apiGroups": [group], "resources": resources, "verbs": verbs})
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRole",
        "metadata": {
            "name": name,
            "labels": merge(json!({"kubernetes.io/bootstrapping": "rbac-defaults"}), labels),
            "annotations": {AUTOUPDATE: "true"},
        },
        "rules": rules,
    })
}

fn aggregated(name: &str, labels: Value, selector: &str) -> Value {
    let mut role = cluster_role(name, labels, vec![]);
    role["aggregationRule"] =
        json!({"clusterRoleSelectors": [{"matchLabels": {selector: "true"}}]});
    role
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn binding(name: &str, role: &str, kind: &str, subject: &str) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "annotations": {AUTOUPDATE: "true"},
        },
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": GROUP, "kind": kind, "name": subject}],
    })
}

const AGG: &str = "rbac.authorization.k8s.io/aggregate-to-";

/// What a namespace holds, by group, that `view` reads and `edit` writes.
fn namespaced_resources() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "",
            vec![
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status",
                "serviceaccounts",
                "events",
            ],
        ),
        (
            "apps",
            vec![
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        (
            "autoscaling",
            vec![
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        (
            "batch",
            vec!["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        ("networking.k8s.io", vec!["ingresses", "ingresses/status"]),
        (
            "policy",
            vec!["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        ("discovery.k8s.io", vec!["endpointslices"]),
        (
            skiff_api::module::GROUP,
            vec!["apps", "apps/scale", "apps/status", "modules"],
        ),
        (
            "gateway.networking.k8s.io",
            vec![
                "gateways",
                "gateways/status",
                "httproutes",
                "httproutes/status",
            ],
        ),
    ]
}

/// The default ClusterRoles.
pub fn cluster_roles() -> Vec<Value> {
    let mut view: Vec<Value> = namespaced_resources()
        .into_iter()
        .map(|(g, r)| rule(READ, g, &r))
        .collect();
    view.push(rule(READ, "", &["namespaces", "namespaces/status"]));
    let mut edit: Vec<Value> = namespaced_resources()
        .into_iter()
        .map(|(g, r)| {
            let writable: Vec<&str> = r
                .into_iter()
                .filter(|r| !r.ends_with("/status") && *r != "pods/log")
                .collect();
            rule(WRITE, g, &writable)
        })
        .collect();
    edit.extend([
        rule(&[READ, WRITE].concat(), "", &["secrets"]),
        rule(
            &[READ, WRITE].concat(),
            "",
            &["pods/portforward", "pods/exec", "pods/attach", "pods/proxy"],
        ),
        rule(&["create"], "", &["pods/eviction", "serviceaccounts/token"]),
        rule(&["impersonate"], "", &["serviceaccounts"]),
    ]);
    let admin = vec![
        rule(&[READ, WRITE].concat(), GROUP, &["roles", "rolebindings"]),
        rule(
            &["create"],
            "authorization.k8s.io",
            &["localsubjectaccessreviews"],
        ),
    ];
    let mut viewer_rules: Vec<Value> = crate::kinds::all()
        .into_iter()
        // Built-in kinds only, so the role is the same at every start: a CRD's installer
        // grants reading its resources, as in Kubernetes (label a role to join view).
        .filter(|r| crate::kinds::is_builtin(r))
        .filter(|r| !(r.group.is_empty() && r.plural == "secrets"))
        .map(|r| {
            let mut resources = vec![r.plural.to_string()];
            resources.extend(
                r.subresources
                    .iter()
                    .filter(|s| !matches!(s, skiff_api::resources::Subresource::PortForward))
                    .map(|s| format!("{}/{}", r.plural, s.name())),
            );
            json!({"apiGroups": [r.group], "resources": resources, "verbs": READ})
        })
        .collect();
    viewer_rules.extend([
        rule(READ, "metrics.k8s.io", &["pods", "nodes"]),
        rule(READ, "custom.metrics.k8s.io", &["*"]),
        rule(&["get"], "", &["nodes/proxy"]),
        json!({"nonResourceURLs": ["/metrics"], "verbs": ["get"]}),
    ]);
    vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![
                json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}),
                json!({"nonResourceURLs": ["*"], "verbs": ["*"]}),
            ],
        ),
        aggregated(
            "admin",
            json!({}),
            "rbac.authorization.k8s.io/aggregate-to-admin",
        ),
        aggregated(
            "edit",
            json!({format!("{AGG}admin"): "true"}),
            "rbac.authorization.k8s.io/aggregate-to-edit",
        ),
        aggregated(
            "view",
            json!({format!("{AGG}edit"): "true"}),
            "rbac.authorization.k8s.io/aggregate-to-view",
        ),
        cluster_role(
            "system:aggregate-to-admin",
            json!({format!("{AGG}admin"): "true"}),
            admin,
        ),
        cluster_role(
            "system:aggregate-to-edit",
            json!({format!("{AGG}edit"): "true"}),
            edit,
        ),
        cluster_role(
            "system:aggregate-to-view",
            json!({format!("{AGG}view"): "true"}),
            view,
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![json!({"nonResourceURLs": [
                "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz",
                "/version", "/version/", "/openapi", "/openapi/*",
            ], "verbs": ["get"]})],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["create"],
                    "authorization.k8s.io",
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    "authentication.k8s.io",
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![json!({"nonResourceURLs": [
                "/.well-known/openid-configuration", "/openid/v1/jwks",
            ], "verbs": ["get"]})],
        ),
        cluster_role("skiff:viewer", json!({}), viewer_rules),
    ]
}

/// The default ClusterRoleBindings.
pub fn cluster_role_bindings() -> Vec<Value> {
    vec![
        binding("cluster-admin", "cluster-admin", "Group", MASTERS),
        binding(
            "system:discovery",
            "system:discovery",
            "Group",
            AUTHENTICATED,
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            "Group",
            AUTHENTICATED,
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            "Group",
            AUTHENTICATED,
        ),
        binding("skiff:viewers", "skiff:viewer", "Group", VIEWERS),
    ]
}

/// What reconciling a default changes in the stored object: everything but the rules
/// of an aggregated role, which its controller keeps.
fn reconciled(stored: &Value, default: &Value) -> Option<Value> {
    let auto = stored
        .pointer(&format!(
            "/metadata/annotations/{}",
            AUTOUPDATE.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some("true");
    if !auto {
        return None;
    }
    let mut next = stored.clone();
    for field in ["rules", "aggregationRule", "roleRef", "subjects"] {
        if field == "rules" && default.get("aggregationRule").is_some() {
            continue;
        }
        match default.get(field) {
            Some(v) => next[field] = v.clone(),
            None => {
                if let Some(o) = next.as_object_mut() {
                    o.remove(field);
                }
            }
        }
    }
    (next != *stored).then_some(next)
}

/// Writes the default roles and bindings (see the module's header). Several servers
/// starting at once may race: the loser of a create or update leaves it to the winner.
pub async fn bootstrap(store: &dyn Store) -> Result<(), StoreError> {
    let defaults = cluster_roles()
        .into_iter()
        .map(|r| ("clusterroles", r))
        .chain(
            cluster_role_bindings()
                .into_iter()
                .map(|b| ("clusterrolebindings", b)),
        );
    for (plural, mut object) in defaults {
        let info = crate::kinds::lookup(GROUP, "v1", plural).expect("RBAC kinds are served");
        let key = info.key(None, crate::objects::name(&object));
        let op = match store.get(&key).await? {
            Some(stored) => {
                let Some(next) = reconciled(&stored.object, &object) else {
                    continue;
                };
                let mut next = next;
                if let Some(meta) = next["metadata"].as_object_mut() {
                    meta.remove("resourceVersion");
                }
                WriteOp::Update {
                    key,
                    object: next,
                    expected_rev: Some(stored.rev),
                }
            }
            None => {
                object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
                object["metadata"]["creationTimestamp"] = json!(crate::objects::now_rfc3339());
                WriteOp::Create {
                    key,
                    object,
                    guard: None,
                }
            }
        };
        match store.write(op).await {
            Ok(_) | Err(StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rbac::{Rule, rules_of, uncovered};

    #[test]
    fn the_user_facing_roles_nest_and_view_reads_no_secrets() {
        let roles = cluster_roles();
        let by_name = |n: &str| roles.iter().find(|r| r["metadata"]["name"] == n).unwrap();
        let view = rules_of(by_name("system:aggregate-to-view"));
        let secrets = Rule::from_json(
            &json!({"verbs": ["get"], "apiGroups": [""], "resources": ["secrets"]}),
        );
        assert_eq!(uncovered(&view, std::slice::from_ref(&secrets)).len(), 1);
        let edit = rules_of(by_name("system:aggregate-to-edit"));
        assert!(uncovered(&edit, &[secrets]).is_empty());
        let viewer = rules_of(by_name("skiff:viewer"));
        let nodes =
            Rule::from_json(&json!({"verbs": ["list"], "apiGroups": [""], "resources": ["nodes"]}));
        assert!(uncovered(&viewer, &[nodes]).is_empty());
        // edit joins admin, view joins edit.
        assert_eq!(
            by_name("view")["metadata"]["labels"][format!("{AGG}edit")],
            "true"
        );
        assert_eq!(
            by_name("edit")["metadata"]["labels"][format!("{AGG}admin")],
            "true"
        );
    }

    #[test]
    fn only_annotated_defaults_are_brought_up_to_date() {
        let default = cluster_roles().remove(0);
        let mut stored = default.clone();
        stored["rules"] = json!([]);
        assert!(reconciled(&stored, &default).is_some());
        stored["metadata"]["annotations"][AUTOUPDATE] = json!("false");
        assert!(reconciled(&stored, &default).is_none());
    }
}
