//! RBAC's escalation checks, as kube-apiserver's RBAC storage makes them: nobody grants
//! a permission they do not hold.
//!
//! - Writing a Role or ClusterRole needs every permission in its rules (in the Role's
//!   namespace, or cluster-wide for a ClusterRole), or the `escalate` verb on it. An
//!   `aggregationRule` takes `escalate`, as the rules it will gather are unknown.
//! - Writing a RoleBinding or ClusterRoleBinding needs every permission of the role it
//!   refers to (where the binding grants it), or the `bind` verb on that role.
//!
//! `system:masters` (admin tokens) skip both, as `cluster-admin` holds everything.

use serde_json::Value;

use skiff_api::resources::ResourceInfo;

use super::authn::Identity;
use super::rbac::{Attributes, GROUP, MASTERS, Rule, rules_of, uncovered};
use crate::error::ApiError;
use crate::error::ApiResult;
use crate::objects;
use crate::state::ApiServer;

fn allowed(
    api: &ApiServer,
    identity: &Identity,
    verb: &str,
    plural: &str,
    ns: Option<&str>,
    name: &str,
) -> bool {
    let attrs = Attributes::Resource {
        verb: verb.into(),
        namespace: ns.map(str::to_string),
        group: GROUP.into(),
        resource: plural.into(),
        subresource: None,
        name: Some(name.into()),
    };
    api.rbac.authorize(&identity.subject(), &attrs).is_some()
}

fn refuse(identity: &Identity, info: &ResourceInfo, name: &str, why: String) -> ApiError {
    let groups = identity.groups();
    ApiError::Forbidden(format!(
        "{} \"{name}\" is forbidden: user \"{}\" (groups={groups:?}) {why}",
        info.qualified_plural(),
        identity.user(),
    ))
}

fn describe(rules: &[Rule]) -> String {
    rules
        .iter()
        .map(|r| format!("{}", r.to_json()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Admits a write of an RBAC object by `identity` (see the module's header).
pub fn admit(
    api: &ApiServer,
    identity: &Identity,
    info: &ResourceInfo,
    obj: &Value,
) -> ApiResult<()> {
    if info.group != GROUP || identity.groups().iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let subject = identity.subject();
    let name = objects::name(obj);
    let ns = objects::namespace(obj).filter(|_| info.namespaced);
    match info.plural {
        "roles" | "clusterroles" => {
            if allowed(api, identity, "escalate", info.plural, ns, name) {
                return Ok(());
            }
            if obj.get("aggregationRule").is_some_and(|a| !a.is_null()) {
                return Err(refuse(
                    identity,
                    info,
                    name,
                    "must have the escalate verb on clusterroles to use an aggregationRule".into(),
                ));
            }
            let missing = uncovered(&api.rbac.rules_for(&subject, ns), &rules_of(obj));
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(
                    identity,
                    info,
                    name,
                    format!(
                        "is attempting to grant RBAC permissions not currently held:\n{}",
                        describe(&missing)
                    ),
                ))
            }
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref = &obj["roleRef"];
            let role_name = role_ref["name"].as_str().unwrap_or_default();
            let (role_plural, role) = match role_ref["kind"].as_str() {
                Some("Role") => ("roles", ns.and_then(|ns| api.rbac.role(ns, role_name))),
                _ => ("clusterroles", api.rbac.cluster_role(role_name)),
            };
            if allowed(api, identity, "bind", role_plural, ns, role_name) {
                return Ok(());
            }
            let Some(role) = role else {
                return Err(refuse(
                    identity,
                    info,
                    name,
                    format!(
                        "cannot bind {role_plural} \"{role_name}\": it does not exist, and only who \
                         may bind it may bind it before it does"
                    ),
                ));
            };
            let missing = uncovered(&api.rbac.rules_for(&subject, ns), &rules_of(&role));
            if missing.is_empty() {
                Ok(())
            } else {
                Err(refuse(
                    identity,
                    info,
                    name,
                    format!(
                        "is attempting to grant RBAC permissions not currently held:\n{}",
                        describe(&missing)
                    ),
                ))
            }
        }
        _ => Ok(()),
    }
}
