//! The garbage collector: ownerReferences with background, foreground and orphan
//! propagation.
//!
//! - An object whose owners are all gone is deleted (background cascading).
//! - An owner being deleted with the `orphan` finalizer first has its reference removed
//!   from every dependent, then loses the finalizer.
//! - An owner being deleted with `foregroundDeletion` first has its dependents deleted,
//!   and loses the finalizer once none is left.
//!
//! Level-based: each pass looks at every cached object of the kinds that own or are
//! owned, and checks an owner's absence against the store itself, never the cache alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::Context;
use crate::apiserver::{DeleteOptions, internal};
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::objects;
use crate::state::ApiServer;

/// Changes are gathered for this long before a pass, so a burst costs one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// A pass also runs this often, to retry what failed.
const RESYNC: Duration = Duration::from_secs(10);

fn info_of(kind: &str, api_version: &str) -> Option<&'static ResourceInfo> {
    crate::kinds::by_kind(api_version, kind)
}

fn info_for(obj: &Value) -> Option<&'static ResourceInfo> {
    info_of(obj.get("kind")?.as_str()?, obj.get("apiVersion")?.as_str()?)
}

fn owner_refs(obj: &Value) -> Vec<Value> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// How often the collector looks for kinds registered or dropped at run time (a CRD's).
const KINDS_CHECK: Duration = Duration::from_secs(1);

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    // The kinds the collector follows change when a CRD is served or dropped: then it
    // starts over with the new set.
    loop {
        let generation = crate::kinds::generation();
        let round = stop.child_token();
        let stopped = collect(&ctx, &round, generation).await;
        round.cancel();
        if stopped || stop.is_cancelled() {
            return;
        }
    }
}

/// Collects over the kinds served at `generation` until `stop`, or until the served
/// kinds change; true when stopped.
async fn collect(ctx: &Arc<Context>, stop: &CancellationToken, generation: u64) -> bool {
    // The kinds the collector follows: those that own or are owned here, as each kind
    // says of itself.
    let caches: Vec<Arc<Cache>> = crate::kinds::all()
        .into_iter()
        .filter(|info| crate::kinds::of(info).garbage_collected())
        .map(|info| ctx.cache(info.group, info.plural))
        .collect();
    if !ctx.synced(&caches.iter().collect::<Vec<_>>()).await {
        return true;
    }
    let api = ctx.api().clone();
    // Each cache forwards only the changes that can matter to the collector; a channel
    // of one coalesces a burst into one pass.
    let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
    for cache in &caches {
        let mut events = cache.events();
        let (wake, stop) = (wake.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.recv() => e,
                };
                let relevant = match event {
                    Ok(CacheEvent::Changed { object, prev }) => matters(&object, prev.as_deref()),
                    Ok(CacheEvent::Deleted(object)) => {
                        object.get("kind") != Some(&json!("Pod")) || !owner_refs(&object).is_empty()
                    }
                    Ok(CacheEvent::Resynced)
                    | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if relevant {
                    let _ = wake.try_send(());
                }
            }
        });
    }
    loop {
        if let Err(e) = pass(&api, &caches).await {
            tracing::debug!(error = %e, "garbage collection pass failed; will retry");
        }
        let until = tokio::time::Instant::now() + RESYNC;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return true,
                _ = woken.recv() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    break;
                }
                _ = tokio::time::sleep_until(until) => break,
                _ = tokio::time::sleep(KINDS_CHECK) => {
                    if crate::kinds::generation() != generation {
                        return false;
                    }
                }
            }
        }
    }
}

/// Whether a created or updated object can give the collector work: it has owners it
/// didn't have before, or it is being deleted with a propagation finalizer.
fn matters(object: &Value, prev: Option<&Value>) -> bool {
    let refs = owner_refs(object);
    let refs_changed = !refs.is_empty() && prev.is_none_or(|p| owner_refs(p) != refs);
    let propagating = objects::is_deleting(object)
        && objects::finalizers(object)
            .iter()
            .any(|f| f == "orphan" || f == "foregroundDeletion");
    refs_changed || propagating
}

/// Whether the owner a reference names is gone (absent, or replaced by another uid).
async fn owner_gone(api: &ApiServer, dependent: &Value, owner: &Value) -> bool {
    let Some(info) = info_of(
        owner["kind"].as_str().unwrap_or_default(),
        owner["apiVersion"].as_str().unwrap_or_default(),
    ) else {
        // A kind this server doesn't serve can't exist here.
        return true;
    };
    let key = info.key(
        objects::namespace(dependent),
        owner["name"].as_str().unwrap_or_default(),
    );
    match api.store.get(&key).await {
        Ok(Some(stored)) => objects::meta_str(&stored.object, "uid") != owner["uid"].as_str(),
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn pass(api: &ApiServer, caches: &[Arc<Cache>]) -> Result<(), ApiError> {
    let all: Vec<Arc<Value>> = caches.iter().flat_map(|c| c.snapshot()).collect();
    // Dependents by owner uid.
    let mut dependents: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
    for obj in &all {
        for r in owner_refs(obj) {
            if let Some(uid) = r["uid"].as_str() {
                dependents
                    .entry(uid.to_string())
                    .or_default()
                    .push(obj.clone());
            }
        }
    }
    let present: std::collections::HashSet<&str> = all
        .iter()
        .filter_map(|o| objects::meta_str(o, "uid"))
        .collect();
    for obj in &all {
        let finalizers = objects::finalizers(obj);
        let uid = objects::meta_str(obj, "uid")
            .unwrap_or_default()
            .to_string();
        let mine = dependents.get(&uid).cloned().unwrap_or_default();
        if objects::is_deleting(obj) && finalizers.iter().any(|f| f == "orphan") {
            for d in &mine {
                strip_owner(api, d, &uid).await?;
            }
            remove_finalizer(api, obj, "orphan").await?;
        } else if objects::is_deleting(obj) && finalizers.iter().any(|f| f == "foregroundDeletion")
        {
            if mine.is_empty() {
                remove_finalizer(api, obj, "foregroundDeletion").await?;
            } else {
                for d in mine.iter().filter(|d| !objects::is_deleting(d)) {
                    delete(api, d, Some("Foreground")).await?;
                }
            }
        }
        // Background cascading: every owner gone means the dependent goes too.
        let refs = owner_refs(obj);
        // The cache answers "present" cheaply; only an owner missing from it is checked
        // against the store, since the cache may not have seen a brand-new owner yet.
        if refs.is_empty() || objects::is_deleting(obj) {
            continue;
        }
        let mut all_gone = true;
        for r in &refs {
            let cached = r["uid"].as_str().is_some_and(|u| present.contains(u));
            if cached || !owner_gone(api, obj, r).await {
                all_gone = false;
                break;
            }
        }
        if all_gone {
            delete(api, obj, None).await?;
        }
    }
    Ok(())
}

async fn delete(api: &ApiServer, obj: &Value, propagation: Option<&str>) -> Result<(), ApiError> {
    let Some(info) = info_for(obj) else {
        return Ok(());
    };
    let opts = DeleteOptions {
        propagation_policy: propagation.map(str::to_string),
        precondition_uid: objects::meta_str(obj, "uid").map(str::to_string),
        ..Default::default()
    };
    match internal::delete(
        api,
        info,
        objects::namespace(obj),
        objects::name(obj),
        &opts,
    )
    .await
    {
        Ok(_) | Err(ApiError::NotFound(_) | ApiError::Conflict(..)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Updates an object with `mutate`; one that is already gone needs nothing.
async fn update_if_present<F>(api: &ApiServer, obj: &Value, mutate: F) -> Result<(), ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    let Some(info) = info_for(obj) else {
        return Ok(());
    };
    match internal::update(
        api,
        info,
        objects::namespace(obj),
        objects::name(obj),
        mutate,
    )
    .await
    {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `list` as a metadata field: removed entirely when empty, as Kubernetes writes it.
fn list_or_null<T: serde::Serialize>(list: Vec<T>) -> Value {
    if list.is_empty() {
        Value::Null
    } else {
        json!(list)
    }
}

async fn strip_owner(api: &ApiServer, obj: &Value, owner_uid: &str) -> Result<(), ApiError> {
    update_if_present(api, obj, |cur| {
        let mut next = cur.clone();
        let refs: Vec<Value> = owner_refs(cur)
            .into_iter()
            .filter(|r| r["uid"] != owner_uid)
            .collect();
        next["metadata"]["ownerReferences"] = list_or_null(refs);
        Ok(next)
    })
    .await
}

async fn remove_finalizer(api: &ApiServer, obj: &Value, finalizer: &str) -> Result<(), ApiError> {
    update_if_present(api, obj, |cur| {
        let mut next = cur.clone();
        let rest: Vec<String> = objects::finalizers(cur)
            .into_iter()
            .filter(|f| f != finalizer)
            .collect();
        next["metadata"]["finalizers"] = list_or_null(rest);
        Ok(next)
    })
    .await
}
