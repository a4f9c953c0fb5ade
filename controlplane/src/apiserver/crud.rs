//! Create, get, list, update and patch, with Kubernetes semantics: system fields,
//! defaulting, validation and compare-and-swap on resourceVersion, the one loop every
//! read-modify-write goes through ([`guaranteed_update`]). Deletion is in `delete.rs`;
//! what differs between kinds is each kind's hooks (`crate::kinds`).

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};

use skiff_api::fields::{self, FieldProblem, FieldValidation};
use skiff_api::patch::{self, PatchError, PatchType};
use skiff_api::resources::{ResourceInfo, StatusOnCreate, Subresource};
use skiff_api::selector::{FieldSelector, LabelSelector};

use super::apply::{self, SERVER_MANAGER, Tracking};
use super::request::{self, Query, json_response};
use super::{Target, validate};
use crate::auth::{self, Identity};
use crate::error::{ApiError, ApiResult, Subject};
use crate::kinds::{self, CreateContext, deletion_due};
use crate::objects::{self, meta_mut, remove_path, set_path};
use crate::state::ApiServer;
use crate::store::{ListRequest, StoreError, Stored, WriteOp};

/// How often an update without a resourceVersion precondition retries a lost
/// compare-and-swap before giving up with a Conflict.
const MAX_UPDATE_RETRIES: usize = 32;
/// How many times a generated name is re-drawn when it collides.
const MAX_GENERATE_NAME_ATTEMPTS: usize = 8;

fn namespace_info() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "namespaces").expect("namespaces are served")
}

/// Reads a JSON body as an object of the target's kind, in normalised form, applying the request's `fieldValidation` to fields the kind does not
/// have or that the body names twice: Strict refuses them, Warn returns them as
/// warnings, Ignore drops them silently.
fn decode_validated(
    info: &'static ResourceInfo,
    body: &[u8],
    validation: FieldValidation,
) -> ApiResult<(Value, Vec<String>)> {
    let mut input = request::parse_json(body)?;
    check_type(info, &mut input)?;
    let normalized = normalize(info, input.clone())?;
    let problems = match validation {
        FieldValidation::Ignore => Vec::new(),
        _ => fields::problems(body, &input, &normalized),
    };
    let warnings = field_verdict(info, validation, problems)?;
    Ok((normalized, warnings))
}

/// The request's `fieldValidation` directive.
pub(crate) fn field_validation(query: &Query) -> ApiResult<FieldValidation> {
    FieldValidation::parse(query.get("fieldValidation")).map_err(ApiError::BadRequest)
}

/// Strict turns field problems into a BadRequest worded as Kubernetes words it; Warn
/// turns them into warnings.
fn field_verdict(
    info: &'static ResourceInfo,
    validation: FieldValidation,
    problems: Vec<FieldProblem>,
) -> ApiResult<Vec<String>> {
    if problems.is_empty() || validation == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    if validation == FieldValidation::Strict {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
            messages.join(", "),
            kind = info.kind,
            version = info.version,
        )));
    }
    Ok(messages)
}

/// Fills in or checks apiVersion and kind against the endpoint's kind.
pub(super) fn check_type(info: &'static ResourceInfo, value: &mut Value) -> ApiResult<()> {
    if !value.is_object() {
        return Err(ApiError::BadRequest(format!(
            "a {} must be a JSON object, not {}",
            info.kind,
            json_type(value)
        )));
    }
    let expected_av = info.api_version();
    match value.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => value["apiVersion"] = json!(expected_av),
        Some(av) if av != expected_av => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({expected_av})"
            )));
        }
        _ => {}
    }
    match value.get("kind").and_then(Value::as_str) {
        None | Some("") => value["kind"] = json!(info.kind),
        Some(kind) if kind != info.kind => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({kind}) does not match the expected kind ({}) for {}",
                info.kind,
                info.qualified_plural()
            )));
        }
        _ => {}
    }
    Ok(())
}

/// An object as the target's version shows it (see `Kind::served`).
pub(crate) fn served<'a>(info: &ResourceInfo, stored: &'a Value) -> Cow<'a, Value> {
    match kinds::of(info).served(stored) {
        Some(shown) => Cow::Owned(shown),
        None => Cow::Borrowed(stored),
    }
}

/// A list as the target's version shows its items; copied only if one differs.
pub(crate) fn served_list<'a>(info: &ResourceInfo, list: &'a Value) -> Cow<'a, Value> {
    let kind = kinds::of(info);
    let mut shown: Option<Value> = None;
    let items = list.get("items").and_then(Value::as_array);
    for (i, item) in items.into_iter().flatten().enumerate() {
        if let Some(converted) = kind.served(item) {
            shown.get_or_insert_with(|| list.clone())["items"][i] = converted;
        }
    }
    shown.map_or(Cow::Borrowed(list), Cow::Owned)
}

/// An object as the request's version shows it, in the form it is stored in.
pub(super) fn kind_to_stored(info: &'static ResourceInfo, value: Value) -> ApiResult<Value> {
    Ok(kinds::of(info).to_stored(normalize(info, value)?))
}

/// The request's `fieldValidation` verdict on fields of `obj` its kind does not have.
pub(super) fn unknown_field_verdict(
    info: &'static ResourceInfo,
    validation: FieldValidation,
    obj: &Value,
) -> ApiResult<Vec<String>> {
    if validation == FieldValidation::Ignore {
        return Ok(Vec::new());
    }
    let normalized = normalize(info, obj.clone())?;
    let problems = fields::unknown_fields(obj, &normalized)
        .into_iter()
        .map(FieldProblem::Unknown)
        .collect();
    field_verdict(info, validation, problems)
}

fn normalize(info: &'static ResourceInfo, value: Value) -> ApiResult<Value> {
    kinds::of(info).normalize(value).map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be decoded: {e}",
            info.kind, info.version
        ))
    })
}

fn check_namespace(target: &Target, obj: &mut Value) -> ApiResult<()> {
    if !target.info.namespaced {
        meta_mut(obj).remove("namespace");
        return Ok(());
    }
    let path_ns = target.namespace.as_deref().unwrap_or_default();
    match objects::namespace(obj) {
        None => {
            meta_mut(obj).insert("namespace".into(), json!(path_ns));
            Ok(())
        }
        Some(ns) if ns == path_ns => Ok(()),
        Some(_) => Err(ApiError::BadRequest(
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        )),
    }
}

fn reset_status(info: &'static ResourceInfo, obj: &mut Value) {
    match info.status_on_create {
        StatusOnCreate::Keep => {}
        StatusOnCreate::Reset => remove_path(obj, &["status"]),
        StatusOnCreate::Phase(phase) => {
            remove_path(obj, &["status"]);
            set_path(obj, &["status", "phase"], json!(phase));
        }
    }
}

/// Refuses new objects in a namespace that is being deleted.
async fn check_namespace_active(api: &ApiServer, target: &Target, name: &str) -> ApiResult<()> {
    let Some(ns) = target
        .namespace
        .as_deref()
        .filter(|_| target.info.namespaced)
    else {
        return Ok(());
    };
    let key = namespace_info().key(None, ns);
    // As Kubernetes' NamespaceLifecycle admission reads its informer: the store's
    // guard still refuses a create into a namespace that is gone.
    match api.store.get_cached(&key).await? {
        Some(stored) if objects::is_deleting(&stored.object) => Err(ApiError::Forbidden(format!(
            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
            target.info.qualified_plural()
        ))),
        Some(_) => Ok(()),
        None => Err(ApiError::NotFound(Subject::new(namespace_info(), ns))),
    }
}

pub(crate) async fn create(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if target.info.namespaced && target.namespace.is_none() {
        return Err(ApiError::MethodNotAllowed(format!(
            "create of {} needs a namespace in the path",
            target.info.qualified_plural()
        )));
    }
    request::require_json(headers)?;
    let validation = field_validation(query)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let (obj, warnings) = decode_validated(target.info, &body, validation)?;
    let obj = kinds::of(target.info).to_stored(obj);
    auth::admit(api, identity, target.info, None, &obj)?;
    let manager = apply::field_manager(query, headers)?;
    let created = create_shared(
        api,
        target,
        obj,
        query.dry_run()?,
        Tracking::Update(&manager),
    )
    .await?;
    Ok(request::with_warnings(
        json_response(StatusCode::CREATED, &served(target.info, &created)),
        &warnings,
    ))
}

/// Creates an object that has already been decoded; shared with internal callers.
pub(crate) async fn create_object(
    api: &ApiServer,
    target: &Target,
    obj: Value,
    dry_run: bool,
) -> ApiResult<Value> {
    Ok(Arc::unwrap_or_clone(
        create_shared(api, target, obj, dry_run, Tracking::Update(SERVER_MANAGER)).await?,
    ))
}

/// [`create_object`] recording field ownership as `tracking` says.
pub(super) async fn create_tracked(
    api: &ApiServer,
    target: &Target,
    obj: Value,
    dry_run: bool,
    tracking: Tracking<'_>,
) -> ApiResult<Value> {
    Ok(Arc::unwrap_or_clone(
        create_shared(api, target, obj, dry_run, tracking).await?,
    ))
}

/// [`create_object`], answering the object as the store shares it (a create's answer
/// is serialised from it, not from a copy).
async fn create_shared(
    api: &ApiServer,
    target: &Target,
    mut obj: Value,
    dry_run: bool,
    tracking: Tracking<'_>,
) -> ApiResult<Arc<Value>> {
    let info = target.info;
    check_namespace(target, &mut obj)?;
    let generate = objects::name(&obj).is_empty();
    let prefix = objects::meta_str(&obj, "generateName").map(str::to_string);
    let uid = uuid::Uuid::new_v4().to_string();
    {
        let meta = meta_mut(&mut obj);
        for system in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(system);
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
        if info.has_spec {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
    }
    reset_status(info, &mut obj);
    let kind = kinds::of(info);
    kind.prepare_create(
        &mut obj,
        &CreateContext {
            uid: &uid,
            config: &api.config,
        },
    );
    kind.default(&mut obj);

    for attempt in 0.. {
        if generate && let Some(prefix) = &prefix {
            meta_mut(&mut obj).insert(
                "name".into(),
                json!(format!("{prefix}{}", objects::random_suffix())),
            );
        }
        let name = objects::name(&obj).to_string();
        let errs = validate::validate(info, &obj);
        if !errs.is_empty() {
            return Err(ApiError::invalid(info, &name, errs));
        }
        // After validation, which refuses managedFields that are not well formed.
        if let Tracking::Update(manager) = tracking {
            let carried = obj.pointer("/metadata/managedFields").cloned();
            apply::record_update(info, Part::Main, manager, None, carried, &mut obj)?;
        }
        check_namespace_active(api, target, &name).await?;
        if dry_run {
            return Ok(Arc::new(obj));
        }
        let guard = info
            .namespaced
            .then(|| namespace_info().key(None, objects::namespace(&obj).unwrap_or_default()));
        let key = info.key(objects::namespace(&obj), &name);
        let retry = generate && prefix.is_some() && attempt < MAX_GENERATE_NAME_ATTEMPTS;
        // Only a create that may draw another name needs the object again.
        let object = if retry {
            obj.clone()
        } else {
            std::mem::take(&mut obj)
        };
        match api
            .store
            .write(WriteOp::Create { key, object, guard })
            .await
        {
            Ok(stored) => return Ok(stored.object),
            Err(StoreError::AlreadyExists { .. }) if retry => continue,
            Err(e) => return Err(ApiError::from_store(e, info, &name)),
        }
    }
    unreachable!("the loop returns")
}

pub(crate) async fn get(
    api: &ApiServer,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let stored = get_stored(api, target.info, &target.key(), target.name()).await?;
    super::tables::respond(target.info, headers, query, &stored.object, false)
}

pub(crate) async fn get_stored(
    api: &ApiServer,
    info: &'static ResourceInfo,
    key: &str,
    name: &str,
) -> ApiResult<Stored> {
    api.store
        .get(key)
        .await?
        .ok_or_else(|| ApiError::not_found(info, name))
}

/// Label and field selectors of a list or watch, checked against what the kind serves.
pub(crate) struct Selectors {
    label: LabelSelector,
    field: FieldSelector,
}

impl Selectors {
    pub fn from_query(info: &'static ResourceInfo, query: &Query) -> ApiResult<Selectors> {
        let label = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("unable to parse requirement: {e}")))?;
        let field = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("invalid field selector: {e}")))?;
        for (f, _, _) in field.requirements() {
            if !info.supports_field(f) {
                return Err(ApiError::BadRequest(format!(
                    "field label not supported: {f} (for {})",
                    info.qualified_plural()
                )));
            }
        }
        Ok(Selectors { label, field })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches_value(obj) && self.field.matches(obj)
    }
}

/// A continue token: where the previous page ended and the revision it was read at.
fn encode_continue(rev: u64, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": last_key}).to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(u64, String)> {
    let bad = || ApiError::BadRequest("continue key is not valid".into());
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_u64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !start.starts_with(prefix) {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

pub(crate) async fn list(
    api: &ApiServer,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let info = target.info;
    let selectors = Selectors::from_query(info, query)?;
    let prefix = info.namespace_prefix(target.namespace.as_deref());
    let limit: usize = query.number("limit")?.unwrap_or(0);
    let current = api.store.current_revision();
    let (at_rev, start_after) = match query.get("continue") {
        Some(token) => {
            let (rev, start) = decode_continue(token, &prefix)?;
            (Some(rev), Some(start))
        }
        None => {
            let rv: Option<u64> = match query.get("resourceVersion") {
                None => None,
                Some(rv) => Some(objects::parse_revision(rv).ok_or_else(|| {
                    ApiError::BadRequest(format!("invalid resourceVersion {rv:?}"))
                })?),
            };
            if rv.is_some_and(|rv| rv > current) {
                return Err(ApiError::Timeout(format!(
                    "Too large resource version: {}, current: {current}",
                    rv.unwrap_or_default()
                )));
            }
            match query.get("resourceVersionMatch") {
                Some("Exact") => (
                    Some(rv.ok_or_else(|| {
                        ApiError::BadRequest(
                            "resourceVersionMatch=Exact needs a resourceVersion".into(),
                        )
                    })?),
                    None,
                ),
                None | Some("NotOlderThan") => (None, None),
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                        "unsupported resourceVersionMatch {other:?}"
                    )));
                }
            }
        }
    };
    let filter = |obj: &Value| selectors.matches(obj);
    let page = api
        .store
        .list(ListRequest {
            prefix: &prefix,
            start_after: start_after.as_deref(),
            at_rev,
            limit,
            filter: &filter,
        })
        .await
        .map_err(|e| match e {
            StoreError::Compacted { .. } if query.get("continue").is_some() => ApiError::Expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter."
                    .into(),
            ),
            other => other.into(),
        })?;
    let mut metadata = json!({"resourceVersion": page.rev.to_string()});
    if page.more
        && let Some(last) = page.items.last()
    {
        metadata["continue"] = json!(encode_continue(page.rev, &last.key));
    }
    let items: Vec<&Value> = page.items.iter().map(|s| &*s.object).collect();
    let list = json!({
        "kind": info.list_kind(),
        "apiVersion": info.api_version(),
        "metadata": metadata,
        "items": items,
    });
    super::tables::respond(info, headers, query, &list, true)
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// The main resource: everything but status (for kinds with a status subresource).
    Main,
    /// The status subresource: only status.
    Status,
}

pub(super) fn part_of(target: &Target) -> Part {
    if target.sub == Some(Subresource::Status) {
        Part::Status
    } else {
        Part::Main
    }
}

/// Turns the object a client wants into the object to store: system fields come from
/// the stored object, the other part is kept, generation follows spec, and the result
/// is defaulted and validated.
fn prepare_update(
    info: &'static ResourceInfo,
    target: &Target,
    current: &Value,
    desired: Value,
    part: Part,
) -> ApiResult<Value> {
    let mut desired = desired;
    check_type(info, &mut desired)?;
    let mut desired = kinds::of(info).to_stored(normalize(info, desired)?);
    let name = target.name();
    match objects::name(&desired) {
        "" => {
            meta_mut(&mut desired).insert("name".into(), json!(name));
        }
        n if n != name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        _ => {}
    }
    check_namespace(target, &mut desired)?;

    let mut new = match part {
        Part::Status => {
            let mut new = current.clone();
            match desired.get("status") {
                Some(status) => new["status"] = status.clone(),
                None => remove_path(&mut new, &["status"]),
            }
            new
        }
        Part::Main => {
            if info.has_subresource(Subresource::Status) {
                match current.get("status") {
                    Some(status) => desired["status"] = status.clone(),
                    None => remove_path(&mut desired, &["status"]),
                }
            }
            let kind = kinds::of(info);
            kind.prepare_update(&mut desired);
            kind.default(&mut desired);
            desired
        }
    };
    {
        let old_meta = current.get("metadata").cloned().unwrap_or_default();
        let meta = meta_mut(&mut new);
        for system in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match old_meta.get(system) {
                Some(v) => meta.insert(system.into(), v.clone()),
                None => meta.remove(system),
            };
        }
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    if info.has_spec && current.get("spec") != new.get("spec") {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut new).insert("generation".into(), json!(generation + 1));
    }
    let errs = validate::validate_update(info, current, &new);
    if !errs.is_empty() {
        return Err(ApiError::invalid(info, name, errs));
    }
    Ok(new)
}

/// What one round of a [`guaranteed_update`] does with the object it read.
pub(crate) enum Change<T> {
    /// Write nothing: the update answers with this.
    None(T),
    /// Replace the object with this one.
    Update(Value),
    /// Remove the object.
    Delete,
}

/// One round's decision, and whether a write that loses the race to another writer may
/// read again and retry (not when the client named the resourceVersion it expects).
pub(crate) struct Round<T> {
    pub change: Change<T>,
    pub retry: bool,
}

/// How a [`guaranteed_update`] ended.
pub(crate) enum Outcome<T> {
    /// Nothing was written.
    Unchanged(T),
    /// The object as written.
    Updated(Stored),
    /// The object was removed; its last state.
    Deleted(Stored),
}

/// The one compare-and-swap loop every read-modify-write goes through, as
/// kube-apiserver's `GuaranteedUpdate`: reads the object, lets `round` decide what to do
/// with it (or fail), and writes that on the condition that the object is still the one
/// read. A lost race is retried with a fresh read while the round allows it, up to
/// [`MAX_UPDATE_RETRIES`] times; then, or when it may not retry, it is a Conflict.
pub(crate) async fn guaranteed_update<T, F>(
    api: &ApiServer,
    info: &'static ResourceInfo,
    key: &str,
    name: &str,
    mut round: F,
) -> ApiResult<Outcome<T>>
where
    F: FnMut(&Stored) -> ApiResult<Round<T>>,
{
    for _ in 0..MAX_UPDATE_RETRIES {
        let current = get_stored(api, info, key, name).await?;
        let Round { change, retry } = round(&current)?;
        let (op, deleting) = match change {
            Change::None(answer) => return Ok(Outcome::Unchanged(answer)),
            Change::Update(object) => (
                WriteOp::Update {
                    key: key.to_string(),
                    object,
                    expected_rev: Some(current.rev),
                },
                false,
            ),
            Change::Delete => (
                WriteOp::Delete {
                    key: key.to_string(),
                    expected_rev: Some(current.rev),
                },
                true,
            ),
        };
        match api.store.write(op).await {
            Ok(stored) if deleting => return Ok(Outcome::Deleted(stored)),
            Ok(stored) => return Ok(Outcome::Updated(stored)),
            Err(StoreError::Conflict { .. }) if retry => continue,
            Err(e) => return Err(ApiError::from_store(e, info, name)),
        }
    }
    Err(ApiError::Conflict(
        Subject::new(info, name),
        "too many concurrent writers; please try again".into(),
    ))
}

/// Updates an object through [`guaranteed_update`], retried on lost races unless the
/// client gave a resourceVersion precondition. `mutate` gets the stored object and returns
/// the object the client wants and that precondition; the result is prepared (system
/// fields, defaults, generation) and validated as `part` of the object. The server's own
/// writes own what they change as [`SERVER_MANAGER`].
pub(crate) async fn update_object<F>(
    api: &ApiServer,
    target: &Target,
    part: Part,
    dry_run: bool,
    mutate: F,
) -> ApiResult<Value>
where
    F: FnMut(&Stored) -> ApiResult<(Value, Option<u64>)>,
{
    update_tracked(
        api,
        target,
        part,
        dry_run,
        Tracking::Update(SERVER_MANAGER),
        mutate,
    )
    .await
}

/// [`update_object`], recording field ownership as `tracking` says.
pub(super) async fn update_tracked<F>(
    api: &ApiServer,
    target: &Target,
    part: Part,
    dry_run: bool,
    tracking: Tracking<'_>,
    mut mutate: F,
) -> ApiResult<Value>
where
    F: FnMut(&Stored) -> ApiResult<(Value, Option<u64>)>,
{
    let info = target.info;
    let key = target.key();
    let name = target.name();
    let outcome = guaranteed_update(api, info, &key, name, |current| {
        let (desired, precondition) = mutate(current)?;
        // A uid in the object is a precondition too: it must still be the same object.
        let (want_uid, have_uid) = (
            objects::meta_str(&desired, "uid"),
            objects::meta_str(&current.object, "uid"),
        );
        if let (Some(want), Some(have)) = (want_uid, have_uid)
            && want != have
        {
            return Err(ApiError::Conflict(
                Subject::new(info, name),
                format!(
                    "Precondition failed: UID in precondition: {want}, UID in object meta: {have}"
                ),
            ));
        }
        if precondition.is_some_and(|rv| rv != current.rev) {
            return Err(ApiError::from_store(
                StoreError::Conflict {
                    key: key.clone(),
                    expected: precondition.unwrap_or_default(),
                    actual: current.rev,
                },
                info,
                name,
            ));
        }
        let carried = desired.pointer("/metadata/managedFields").cloned();
        let mut new = prepare_update(info, target, &current.object, desired, part)?;
        match tracking {
            Tracking::Update(manager) => {
                apply::record_update(
                    info,
                    part,
                    manager,
                    Some(&current.object),
                    carried,
                    &mut new,
                )?;
            }
            Tracking::Keep => match carried {
                Some(m) => {
                    meta_mut(&mut new).insert("managedFields".into(), m);
                }
                None => {
                    meta_mut(&mut new).remove("managedFields");
                }
            },
        }
        let mut unchanged = (*current.object).clone();
        meta_mut(&mut unchanged).remove("resourceVersion");
        let change = if dry_run {
            // Nothing is written, so the object keeps the version it has.
            meta_mut(&mut new).insert("resourceVersion".into(), json!(current.rev.to_string()));
            Change::None(new)
        } else if new == unchanged {
            Change::None((*current.object).clone())
        } else if deletion_due(info, &new, jiff::Timestamp::now()) {
            Change::Delete
        } else {
            Change::Update(new)
        };
        Ok(Round {
            change,
            retry: precondition.is_none(),
        })
    })
    .await?;
    Ok(match outcome {
        Outcome::Unchanged(obj) => obj,
        Outcome::Updated(stored) | Outcome::Deleted(stored) => (*stored.object).clone(),
    })
}

/// Admission of an update against the object it would replace. A write of the status
/// subresource keeps the stored metadata (see [`prepare_update`]), so only writes of
/// the main resource can change what admission looks at.
pub(super) fn admit_update(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    part: Part,
    current: &Stored,
    desired: &Value,
) -> ApiResult<()> {
    match part {
        Part::Main => auth::admit(api, identity, target.info, Some(&current.object), desired),
        Part::Status => Ok(()),
    }
}

pub(crate) fn precondition_of(obj: &Value) -> ApiResult<Option<u64>> {
    match objects::resource_version(obj) {
        None => Ok(None),
        // A resourceVersion that is not one of ours can never match.
        Some(rv) => Ok(Some(objects::parse_revision(rv).unwrap_or(u64::MAX))),
    }
}

pub(crate) async fn update(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    request::require_json(headers)?;
    let validation = field_validation(query)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let (desired, warnings) = decode_validated(target.info, &body, validation)?;
    let precondition = precondition_of(&desired)?;
    let part = part_of(target);
    let manager = apply::field_manager(query, headers)?;
    let tracking = Tracking::Update(&manager);
    let out = update_tracked(api, target, part, query.dry_run()?, tracking, |current| {
        admit_update(api, identity, target, part, current, &desired)?;
        Ok((desired.clone(), precondition))
    })
    .await?;
    Ok(request::with_warnings(
        json_response(StatusCode::OK, &served(target.info, &out)),
        &warnings,
    ))
}

/// Applies a patch document of the given type to an object.
pub(crate) fn apply_patch(
    info: &'static ResourceInfo,
    name: &str,
    kind: PatchType,
    current: &Value,
    body: &[u8],
) -> ApiResult<Value> {
    let invalid = |message: String| {
        ApiError::Invalid(
            Subject::new(info, name),
            vec![skiff_api::validation::FieldError {
                field: String::new(),
                reason: skiff_api::validation::FieldErrorType::Invalid,
                message,
            }],
        )
    };
    let patched = patch::apply_patch(kind, current, body).map_err(|e| match e {
        PatchError::Malformed { .. } => ApiError::BadRequest(e.to_string()),
        PatchError::Unsupported(_) => ApiError::UnsupportedMediaType(format!(
            "{e}: use application/merge-patch+json, application/json-patch+json or \
             application/strategic-merge-patch+json"
        )),
        PatchError::TooManyOperations { .. } => ApiError::TooLarge(e.to_string()),
        other => invalid(other.to_string()),
    })?;
    // A JSON patch may replace the whole document (path ""), with anything.
    if !patched.is_object() {
        return Err(invalid(format!(
            "the patch turns the object into {}, not an object",
            json_type(&patched)
        )));
    }
    Ok(patched)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    let ct = request::content_type(headers).unwrap_or_default();
    PatchType::from_content_type(&ct).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json-patch+json, application/merge-patch+json, \
             application/strategic-merge-patch+json, application/apply-patch+yaml (got {ct:?})"
        ))
    })
}

pub(crate) async fn patch(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind = patch_type(headers)?;
    if kind == PatchType::Apply {
        return apply::apply(api, identity, target, query, headers, body).await;
    }
    apply::refuse_force(query)?;
    let manager = apply::field_manager(query, headers)?;
    let validation = field_validation(query)?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let info = target.info;
    let name = target.name().to_string();
    // Duplicates are a property of the patch document; unknown fields show in the
    // patched object, since the stored one has none.
    let duplicates = match (validation, kind) {
        (FieldValidation::Ignore, _) | (_, PatchType::Json) => Vec::new(),
        _ => fields::duplicate_fields(&body),
    };
    let mut warnings = Vec::new();
    let part = part_of(target);
    let tracking = Tracking::Update(&manager);
    let out = update_tracked(api, target, part, query.dry_run()?, tracking, |current| {
        // The patch is written against the object as this version shows it.
        let shown = served(info, &current.object);
        let mut patched = apply_patch(info, &name, kind, &shown, &body)?;
        if validation != FieldValidation::Ignore {
            check_type(info, &mut patched)?;
            let normalized = normalize(info, patched.clone())?;
            let problems = duplicates
                .iter()
                .cloned()
                .map(FieldProblem::Duplicate)
                .chain(
                    fields::unknown_fields(&patched, &normalized)
                        .into_iter()
                        .map(FieldProblem::Unknown),
                )
                .collect();
            warnings = field_verdict(info, validation, problems)?;
        }
        // A resourceVersion the patch itself sets is a precondition.
        let precondition = match objects::resource_version(&patched) {
            Some(rv) if Some(rv) != objects::resource_version(&current.object) => {
                precondition_of(&patched)?
            }
            _ => None,
        };
        admit_update(api, identity, target, part, current, &patched)?;
        Ok((patched, precondition))
    })
    .await?;
    Ok(request::with_warnings(
        json_response(StatusCode::OK, &served(info, &out)),
        &warnings,
    ))
}
