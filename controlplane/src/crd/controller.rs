//! The CRD controller. It runs on every API server, not only the leader: each server
//! serves what the stored CRDs define, so each follows the CRDs with its own informer
//! and registers, replaces and unregisters their kinds in its own registry ([`sync`]);
//! before a server starts serving, [`register_stored`] registers what is stored.
//!
//! Any server may write a CRD's status (`NamesAccepted`, `Established`,
//! `acceptedNames`, `storedVersions`, and `ValidationRulesSupported` False when some
//! rule cannot be evaluated here): the status is computed from the CRD alone and is
//! written only when it differs, so servers agree. A deleted CRD (held by the cleanup
//! finalizer) shows `Terminating`, its objects are deleted through the API (their own
//! finalizers honoured), and once none is left the finalizer goes and the CRD with it;
//! its kinds stop being served when the CRD is gone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::apiserver::{DeleteOptions, internal};
use crate::informer::SharedInformers;
use crate::kinds::customresourcedefinition::{CLEANUP_FINALIZER, info as crd_info};
use crate::objects;
use crate::state::ApiServer;
use crate::store::{ListRequest, StoreError};

/// How often a pass runs without changes: to retry a failed status write, and to
/// follow the deletion of a terminating CRD's objects.
const RESYNC: Duration = Duration::from_secs(1);

/// What this server serves for one CRD.
struct Served {
    /// The spec it was registered from.
    spec: Value,
    /// Group, version and resource of each served version.
    keys: Vec<(String, String, String)>,
    /// Why its names were refused, if they were.
    conflict: Option<String>,
    /// The rules the server does not evaluate: (rule, why).
    unsupported: Vec<(String, String)>,
}

static SERVED: LazyLock<Mutex<HashMap<String, Served>>> = LazyLock::new(Default::default);

fn served() -> std::sync::MutexGuard<'static, HashMap<String, Served>> {
    SERVED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a CRD's kinds cannot be served: a version's resource is the server's own, or
/// another CRD's.
fn conflict_of(
    name: &str,
    keys: &[(String, String, String)],
    all: &HashMap<String, Served>,
) -> Option<String> {
    for (g, v, p) in keys {
        if let Some(existing) = crate::kinds::lookup(g, v, p) {
            let owned_by_other = all.iter().any(|(other, s)| {
                other != name
                    && s.conflict.is_none()
                    && s.keys.contains(&(g.clone(), v.clone(), p.clone()))
            });
            if crate::kinds::is_builtin(existing) || owned_by_other {
                return Some(format!("{p}.{g}/{v} is already served"));
            }
        }
    }
    None
}

/// Brings the registry in step with these CRDs (every stored one): registers new ones,
/// replaces those whose spec changed, unregisters those that are gone.
pub fn sync(crds: &[Arc<Value>]) {
    let mut all = served();
    let mut present = Vec::new();
    for crd in crds {
        let name = objects::name(crd).to_string();
        present.push(name.clone());
        let spec = crd.get("spec").cloned().unwrap_or_default();
        if all
            .get(&name)
            .is_some_and(|s| s.spec == spec && s.conflict.is_none())
        {
            continue;
        }
        let kinds = super::kinds_of(crd);
        let keys: Vec<(String, String, String)> = kinds
            .iter()
            .map(|k| {
                let i = crate::kinds::Kind::info(k.as_ref());
                (
                    i.group.to_string(),
                    i.version.to_string(),
                    i.plural.to_string(),
                )
            })
            .collect();
        let mut conflict = conflict_of(&name, &keys, &all);
        let mut unsupported = Vec::new();
        if conflict.is_none() {
            for kind in kinds {
                unsupported.extend(kind.unsupported_rules());
                if let Err(e) = crate::kinds::replace(kind) {
                    conflict = Some(e);
                }
            }
        }
        unsupported.sort();
        unsupported.dedup();
        // Versions no longer served, by this CRD's previous registration.
        if let Some(previous) = all.get(&name)
            && previous.conflict.is_none()
        {
            for (g, v, p) in &previous.keys {
                if !keys.contains(&(g.clone(), v.clone(), p.clone())) {
                    crate::kinds::unregister(g, v, p);
                }
            }
        }
        let known = all
            .get(&name)
            .is_some_and(|s| s.spec == spec && s.conflict == conflict);
        if let Some(why) = &conflict {
            if !known {
                tracing::warn!(crd = %name, %why, "a CustomResourceDefinition is not served");
            }
        } else {
            tracing::info!(crd = %name, "serving a CustomResourceDefinition");
        }
        all.insert(
            name,
            Served {
                spec,
                keys,
                conflict,
                unsupported,
            },
        );
    }
    let gone: Vec<String> = all
        .keys()
        .filter(|n| !present.contains(n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(s) = all.remove(&name)
            && s.conflict.is_none()
        {
            for (g, v, p) in &s.keys {
                crate::kinds::unregister(g, v, p);
            }
            tracing::info!(crd = %name, "no longer serving a CustomResourceDefinition");
        }
    }
}

/// Registers the kinds of every stored CRD: what a server does before it serves.
pub async fn register_stored(api: &ApiServer) -> Result<(), StoreError> {
    let prefix = crd_info().prefix();
    let page = api.store.list(ListRequest::all(&prefix, &|_| true)).await?;
    let crds: Vec<Arc<Value>> = page.items.into_iter().map(|s| s.object).collect();
    sync(&crds);
    Ok(())
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The status the CRD should have, from what this server made of it.
fn desired_status(crd: &Value) -> Option<Value> {
    let all = served();
    let s = all.get(objects::name(crd))?;
    let mut conditions = Vec::new();
    match &s.conflict {
        None => {
            conditions.push(condition(
                "NamesAccepted",
                true,
                "NoConflicts",
                "no conflicts found",
            ));
            conditions.push(condition(
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ));
        }
        Some(why) => {
            conditions.push(condition("NamesAccepted", false, "NameConflict", why));
            conditions.push(condition(
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            ));
        }
    }
    if !s.unsupported.is_empty() {
        let rules: Vec<String> = s
            .unsupported
            .iter()
            .map(|(r, why)| format!("{r:?}: {why}"))
            .collect();
        conditions.push(condition(
            "ValidationRulesSupported",
            false,
            "UnsupportedValidationRule",
            &format!(
                "these x-kubernetes-validations rules are not evaluated by this server: {}",
                rules.join("; ")
            ),
        ));
    }
    if objects::is_deleting(crd) {
        conditions.push(condition(
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
        ));
    }
    let mut stored_versions: Vec<Value> = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(storage) = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == json!(true))
        .and_then(|v| v.get("name"))
        && !stored_versions.contains(storage)
    {
        stored_versions.push(storage.clone());
    }
    let accepted = if s.conflict.is_none() {
        crd.pointer("/spec/names").cloned().unwrap_or_default()
    } else {
        crd.pointer("/status/acceptedNames")
            .cloned()
            .unwrap_or(json!({"plural": "", "kind": ""}))
    };
    Some(
        json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored_versions}),
    )
}

/// Whether two statuses say the same, transition times aside.
fn same_status(current: Option<&Value>, desired: &Value) -> bool {
    let Some(current) = current else { return false };
    let strip = |v: &Value| {
        let mut v = v.clone();
        for c in v["conditions"].as_array_mut().into_iter().flatten() {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
        v
    };
    strip(current) == strip(desired)
}

async fn write_status(api: &ApiServer, crd: &Value) {
    let Some(mut desired) = desired_status(crd) else {
        return;
    };
    if same_status(crd.get("status"), &desired) {
        return;
    }
    let now = objects::now_rfc3339();
    let old = crd
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in desired["conditions"].as_array_mut().into_iter().flatten() {
        let kept = old
            .iter()
            .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
            .and_then(|o| o.get("lastTransitionTime").cloned());
        c["lastTransitionTime"] = kept.unwrap_or_else(|| json!(now));
    }
    let name = objects::name(crd).to_string();
    let result = internal::update_status(api, crd_info(), None, &name, |cur| {
        let mut next = cur.clone();
        next["status"] = desired.clone();
        Ok(next)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(crd = %name, error = %e, "the CRD's status was not written; retrying");
    }
}

/// Deletes a terminating CRD's objects; once none is left, lets the CRD go.
async fn clean_up(api: &ApiServer, crd: &Value) {
    let name = objects::name(crd).to_string();
    let group = crd
        .pointer("/spec/group")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let plural = crd
        .pointer("/spec/names/plural")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let info = crate::kinds::all()
        .into_iter()
        .find(|i| i.group == group && i.plural == plural && !crate::kinds::is_builtin(i));
    if let Some(info) = info {
        let prefix = info.prefix();
        let Ok(page) = api.store.list(ListRequest::all(&prefix, &|_| true)).await else {
            return;
        };
        if !page.items.is_empty() {
            for item in page.items {
                let obj = &item.object;
                if objects::is_deleting(obj) {
                    continue;
                }
                let ns = objects::namespace(obj).map(str::to_string);
                let result = internal::delete(
                    api,
                    info,
                    ns.as_deref(),
                    objects::name(obj),
                    &DeleteOptions::default(),
                )
                .await;
                if let Err(e) = result {
                    tracing::debug!(crd = %name, error = %e, "deleting a custom object failed; retrying");
                }
            }
            return;
        }
    }
    let result = internal::update(api, crd_info(), None, &name, |cur| {
        let mut next = cur.clone();
        let kept: Vec<Value> = objects::finalizers(cur)
            .into_iter()
            .filter(|f| f != CLEANUP_FINALIZER)
            .map(Value::from)
            .collect();
        next["metadata"]["finalizers"] = json!(kept);
        Ok(next)
    })
    .await;
    if let Err(e) = result {
        tracing::debug!(crd = %name, error = %e, "releasing a CRD failed; retrying");
    }
}

/// Follows the stored CRDs until `stop`: keeps the registry in step and writes status.
pub async fn run(api: Arc<ApiServer>, informers: Arc<SharedInformers>, stop: CancellationToken) {
    let scope = informers.scope(stop.clone());
    let cache = scope.cache(crd_info().group, crd_info().plural);
    let mut changes = cache.subscribe();
    if scope.synced(&[&cache]).await {
        loop {
            let crds = cache.snapshot();
            sync(&crds);
            for crd in &crds {
                write_status(&api, crd).await;
                if objects::is_deleting(crd)
                    && objects::finalizers(crd)
                        .iter()
                        .any(|f| f == CLEANUP_FINALIZER)
                {
                    clean_up(&api, crd).await;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }
    scope.shutdown().await;
}
