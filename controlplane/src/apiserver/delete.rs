//! Deletion: `DeleteOptions`, preconditions, finalizers and propagation policy, graceful
//! deletion for the kinds that have it (their `deletion_grace_seconds`), and delete and
//! deletecollection requests. Every delete is a round of the one compare-and-swap loop,
//! `crud::guaranteed_update`.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::resources::ResourceInfo;

use super::Target;
use super::crud::{Change, Outcome, Round, Selectors, guaranteed_update};
use super::request::{self, Query, json_response};
use crate::error::{ApiError, ApiResult, Subject};
use crate::kinds::{self, Kind, deletion_due};
use crate::objects::{self, meta_mut};
use crate::state::ApiServer;
use crate::store::ListRequest;

/// The parts of `DeleteOptions` the server acts on.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub propagation_policy: Option<String>,
    pub dry_run: bool,
}

impl DeleteOptions {
    /// Reads options from the body (a DeleteOptions object) and the query, the query winning.
    pub(crate) fn from_request(query: &Query, body: &[u8]) -> ApiResult<DeleteOptions> {
        let mut opts = DeleteOptions::default();
        if !body.iter().all(u8::is_ascii_whitespace) {
            let v = request::parse_json(body)?;
            opts.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
            opts.precondition_uid = v
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_string);
            opts.precondition_rv = v
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
            opts.propagation_policy = v
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string);
            if v.get("orphanDependents") == Some(&json!(true)) && opts.propagation_policy.is_none()
            {
                opts.propagation_policy = Some("Orphan".into());
            }
            opts.dry_run = v
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == "All"));
        }
        if let Some(g) = query.number("gracePeriodSeconds")? {
            opts.grace_period_seconds = Some(g);
        }
        if let Some(p) = query.get("propagationPolicy") {
            opts.propagation_policy = Some(p.to_string());
        }
        opts.dry_run |= query.dry_run()?;
        match opts.propagation_policy.as_deref() {
            None | Some("Background" | "Foreground" | "Orphan") => {}
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "propagationPolicy {other:?} is not supported: use Background, Foreground or Orphan"
                )));
            }
        }
        if opts.grace_period_seconds.is_some_and(|g| g < 0) {
            opts.grace_period_seconds = Some(0);
        }
        Ok(opts)
    }
}

/// What a delete did.
pub enum Deleted {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// The object stays until its grace period ends or finalizers are removed.
    Pending(Value),
}

/// Deletes one object: at once, or by marking it for graceful deletion, honouring
/// preconditions, finalizers and the propagation policy.
pub async fn delete_object(
    api: &ApiServer,
    info: &'static ResourceInfo,
    namespace: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> ApiResult<Deleted> {
    let kind = kinds::of(info);
    kind.check_delete(name)?;
    let key = info.key(namespace, name);
    let outcome = guaranteed_update(api, info, &key, name, |current| {
        let obj = &*current.object;
        if let Some(uid) = &opts.precondition_uid {
            let actual = objects::meta_str(obj, "uid").unwrap_or_default();
            if uid != actual {
                return Err(ApiError::Conflict(
                    Subject::new(info, name),
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            let actual = objects::resource_version(obj).unwrap_or_default();
            if rv != actual {
                return Err(ApiError::Conflict(
                    Subject::new(info, name),
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {actual}"
                    ),
                ));
            }
        }
        let marked = mark_for_deletion(&*kind, obj, opts);
        let now = jiff::Timestamp::now();
        let change = match marked {
            Some(m) if m == *obj && !deletion_due(info, &m, now) => {
                Change::None(Deleted::Pending(obj.clone()))
            }
            Some(m) if !deletion_due(info, &m, now) => {
                if opts.dry_run {
                    Change::None(Deleted::Pending(m))
                } else {
                    Change::Update(m)
                }
            }
            _ if opts.dry_run => Change::None(Deleted::Gone(obj.clone())),
            _ => Change::Delete,
        };
        Ok(Round {
            change,
            retry: opts.precondition_rv.is_none(),
        })
    })
    .await?;
    Ok(match outcome {
        Outcome::Unchanged(deleted) => deleted,
        Outcome::Updated(stored) => Deleted::Pending((*stored.object).clone()),
        Outcome::Deleted(stored) => Deleted::Gone((*stored.object).clone()),
    })
}

/// The object as it should look while its deletion is pending, or `None` to delete it at
/// once.
fn mark_for_deletion(kind: &dyn Kind, obj: &Value, opts: &DeleteOptions) -> Option<Value> {
    let mut marked = obj.clone();
    let already = objects::is_deleting(obj);
    let mut finalizers = objects::finalizers(obj);
    if !already {
        let extra = match opts.propagation_policy.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = extra.filter(|f| !finalizers.iter().any(|x| x == f)) {
            finalizers.push(f.to_string());
        }
    }
    let grace = kind.deletion_grace_seconds(obj, opts.grace_period_seconds);
    let stays = kind.removed_by_server();
    if grace == 0 && finalizers.is_empty() && !stays {
        return None;
    }
    let now = jiff::Timestamp::now();
    let deadline = now + jiff::SignedDuration::from_secs(grace);
    let meta = meta_mut(&mut marked);
    // A second delete may shorten the grace period, never lengthen it.
    let old_grace = meta
        .get("deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    if !already || old_grace.is_some_and(|g| grace < g) {
        meta.insert(
            "deletionTimestamp".into(),
            json!(objects::format_time(deadline)),
        );
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
    }
    if !finalizers.is_empty() {
        meta.insert("finalizers".into(), json!(finalizers));
    }
    kind.mark_deleting(&mut marked);
    Some(marked)
}

/// The body a delete answers with: the object for pending deletions and for kinds that
/// answer with it (pods, as Kubernetes does), otherwise a success Status naming it.
fn deleted_response(info: &'static ResourceInfo, deleted: Deleted) -> Value {
    match deleted {
        Deleted::Pending(obj) => kinds::of(info).served(&obj).unwrap_or(obj),
        Deleted::Gone(obj) if kinds::of(info).delete_returns_object() => {
            kinds::of(info).served(&obj).unwrap_or(obj)
        }
        Deleted::Gone(obj) => {
            let mut details = json!({
                "name": objects::name(&obj),
                "kind": info.plural,
                "uid": objects::meta_str(&obj, "uid").unwrap_or_default(),
            });
            if !info.group.is_empty() {
                details["group"] = json!(info.group);
            }
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
        }
    }
}

pub(crate) async fn delete(
    api: &ApiServer,
    target: &Target,
    query: &Query,
    body: Body,
) -> ApiResult<Response> {
    let body = request::read_body(&HeaderMap::new(), body, api.config.max_body_bytes).await?;
    let opts = DeleteOptions::from_request(query, &body)?;
    let deleted = delete_object(
        api,
        target.info,
        target.namespace.as_deref(),
        target.name(),
        &opts,
    )
    .await?;
    Ok(json_response(
        StatusCode::OK,
        &deleted_response(target.info, deleted),
    ))
}

pub(crate) async fn delete_collection(
    api: &ApiServer,
    target: &Target,
    query: &Query,
    body: Body,
) -> ApiResult<Response> {
    let info = target.info;
    let body = request::read_body(&HeaderMap::new(), body, api.config.max_body_bytes).await?;
    let opts = DeleteOptions::from_request(query, &body)?;
    let selectors = Selectors::from_query(info, query)?;
    let prefix = info.namespace_prefix(target.namespace.as_deref());
    let filter = |obj: &Value| selectors.matches(obj);
    let page = api.store.list(ListRequest::all(&prefix, &filter)).await?;
    let mut items = Vec::new();
    // As kube-apiserver does, an object that may not be deleted (a protected namespace)
    // does not spare the others: each is tried, and the first refusal is the answer.
    let mut refused = None;
    for item in page.items {
        let name = objects::name(&item.object).to_string();
        match delete_object(api, info, objects::namespace(&item.object), &name, &opts).await {
            Ok(Deleted::Gone(obj) | Deleted::Pending(obj)) => {
                items.push(kinds::of(info).served(&obj).unwrap_or(obj))
            }
            // Deleted by someone else meanwhile: that is what the client asked for.
            Err(ApiError::NotFound(_)) => {}
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    if let Some(e) = refused {
        return Err(e);
    }
    let list = json!({
        "kind": info.list_kind(),
        "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": api.store.current_revision().to_string()},
        "items": items,
    });
    Ok(json_response(StatusCode::OK, &list))
}
