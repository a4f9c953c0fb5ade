//! Server-side apply (`PATCH` with `application/apply-patch+yaml`) and the field
//! ownership every write records in `metadata.managedFields`. The merge and ownership
//! rules are `skiff_api::apply`'s; this module decides who the field manager is, which
//! part of an object a write may own, and runs an apply through the same create and
//! compare-and-swap paths as every other write (`crud.rs`).

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use skiff_api::apply::{
    self as ssa, ApplyError, ApplySchema, Builtin, ManagedFields, Structural, Writer,
};
use skiff_api::fields::FieldValidation;
use skiff_api::resources::{ResourceInfo, Subresource};
use skiff_api::validation::{FieldError, FieldErrorType};

use super::Target;
use super::crud::{self, Part};
use super::request::{self, Query, json_response};
use crate::auth::{self, Identity};
use crate::error::{ApiError, ApiResult, Subject};
use crate::objects::{self, meta_mut};
use crate::state::ApiServer;

/// Most bytes of a field manager's name, as kube-apiserver limits it.
const MAX_MANAGER_BYTES: usize = 128;

/// The manager the server's own loops (controllers, the scheduler) write as.
pub(crate) const SERVER_MANAGER: &str = "skiff-controlplane";

/// How a write records field ownership.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tracking<'a> {
    /// As an `Update` by this manager: what the write changed becomes its own.
    Update(&'a str),
    /// The object already carries its new `managedFields` (an apply computed them).
    Keep,
}

/// Metadata no manager owns: the server sets it, or it names the object.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of `obj` a write of `part` can own: no type or system metadata; for a kind
/// with a status subresource, the main resource owns everything but status and the
/// status subresource only status (kube-apiserver's reset fields).
pub(crate) fn owned_part(info: &ResourceInfo, part: Part, obj: &Value) -> Value {
    let Some(map) = obj.as_object() else {
        return json!({});
    };
    match part {
        Part::Status => match map.get("status") {
            Some(status) => json!({"status": status}),
            None => json!({}),
        },
        Part::Main => {
            let mut out = map.clone();
            out.remove("apiVersion");
            out.remove("kind");
            if info.has_subresource(Subresource::Status) {
                out.remove("status");
            }
            if let Some(Value::Object(meta)) = out.get_mut("metadata") {
                for f in SYSTEM_METADATA {
                    meta.remove(*f);
                }
                // What is left of it is owned field by field; an empty map would be
                // owned as a field of its own.
                if meta.is_empty() {
                    out.remove("metadata");
                }
            }
            Value::Object(out)
        }
    }
}

fn subresource(part: Part) -> &'static str {
    match part {
        Part::Main => "",
        Part::Status => "status",
    }
}

/// The field manager of a write that is not an apply: the `fieldManager` parameter, or
/// the User-Agent up to its first `/` (`kubectl/v1.37.1 (linux/amd64)` is `kubectl`), as
/// kube-apiserver defaults it.
pub(crate) fn field_manager(query: &Query, headers: &HeaderMap) -> ApiResult<String> {
    if let Some(m) = query.get("fieldManager") {
        return checked_manager(m, "UpdateOptions");
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let prefix = agent.split('/').next().unwrap_or_default();
    let mut end = prefix.len().min(MAX_MANAGER_BYTES);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    Ok(prefix[..end].to_string())
}

/// A write option that is out of bounds: a 422 about the options, as Kubernetes
/// answers (`PatchOptions.meta.k8s.io "" is invalid: force: Forbidden: ...`).
fn invalid_option(
    options: &'static str,
    field: &str,
    reason: FieldErrorType,
    message: String,
) -> ApiError {
    ApiError::Invalid(
        Subject::virtual_resource("meta.k8s.io", options, options, "").with_kind(options),
        vec![FieldError {
            field: field.into(),
            reason,
            message,
        }],
    )
}

fn checked_manager(m: &str, options: &'static str) -> ApiResult<String> {
    if m.len() > MAX_MANAGER_BYTES {
        return Err(invalid_option(
            options,
            "fieldManager",
            FieldErrorType::TooLong,
            format!("may not be more than {MAX_MANAGER_BYTES} bytes"),
        ));
    }
    Ok(m.to_string())
}

/// `force` means something only to an apply.
pub(crate) fn refuse_force(query: &Query) -> ApiResult<()> {
    if query.get("force").is_some() {
        return Err(invalid_option(
            "PatchOptions",
            "force",
            FieldErrorType::Forbidden,
            "may not be specified for non-apply patch".into(),
        ));
    }
    Ok(())
}

fn to_api_error(info: &ResourceInfo, e: ApplyError) -> ApiError {
    match e {
        ApplyError::Conflicts(conflicts) => {
            let message = ApplyError::Conflicts(conflicts.clone()).to_string();
            let causes = conflicts
                .into_iter()
                .map(|c| (format!("conflict with {}", c.manager), c.path))
                .collect();
            ApiError::ApplyConflict(message, causes)
        }
        ApplyError::BadFieldsV1(m) => ApiError::BadRequest(format!("invalid managedFields: {m}")),
        other => ApiError::BadRequest(format!(
            "failed to create typed patch object ({}, Kind={}): {other}",
            info.api_version(),
            info.kind
        )),
    }
}

/// Records a write of `part` by `manager` in `new`'s managedFields. The entries start
/// from those the client sent with the object (a client may rewrite them, as kubectl
/// does when it moves client-side apply's fields to server-side apply) or, when it sent
/// none or they do not decode, from the stored object's.
pub(crate) fn record_update(
    info: &ResourceInfo,
    part: Part,
    manager: &str,
    live: Option<&Value>,
    carried: Option<Value>,
    new: &mut Value,
) -> ApiResult<()> {
    let carried = carried
        .filter(|_| part == Part::Main)
        .map(|m| json!({"metadata": {"managedFields": m}}))
        .and_then(|o| ManagedFields::of(&o).ok())
        .filter(|m| !m.entries().is_empty());
    let mut managed = carried
        .or_else(|| live.and_then(|l| ManagedFields::of(l).ok()))
        .unwrap_or_default();
    let now = objects::now_rfc3339();
    let api_version = info.api_version();
    let writer = Writer {
        manager,
        api_version: &api_version,
        subresource: subresource(part),
        time: &now,
    };
    let before = live.map_or_else(|| json!({}), |l| owned_part(info, part, l));
    let kind = crate::kinds::of(info);
    ssa::update(
        &mut managed,
        &before,
        &owned_part(info, part, new),
        &writer,
        &*merge_schema(&*kind),
    )
    .map_err(|e| to_api_error(info, e))?;
    set_managed(new, &managed);
    Ok(())
}

fn set_managed(obj: &mut Value, managed: &ManagedFields) {
    let meta = meta_mut(obj);
    if managed.entries().is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), managed.to_value());
    }
}

/// Reads an apply configuration: YAML (JSON is YAML too) holding one object.
fn parse_config(body: &[u8]) -> ApiResult<Value> {
    // serde_yaml_ng: the maintained fork of the deprecated serde_yaml (see Cargo.toml).
    let value: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "an apply configuration must be a YAML or JSON object".into(),
        ));
    }
    Ok(value)
}

/// `PATCH` with `application/apply-patch+yaml`: merges the configuration into the object
/// (creating it when missing) and makes its fields the manager's.
pub(crate) async fn apply(
    api: &ApiServer,
    identity: &Identity,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let info = target.info;
    let name = target.name();
    let kind = crate::kinds::of(info);
    let schema = merge_schema(&*kind);
    let manager = match query.get("fieldManager") {
        Some(m) => checked_manager(m, "PatchOptions")?,
        None => {
            return Err(invalid_option(
                "PatchOptions",
                "fieldManager",
                FieldErrorType::Required,
                "is required for apply patch".into(),
            ));
        }
    };
    let force = query.flag("force");
    let validation = crud::field_validation(query)?;
    let dry_run = query.dry_run()?;
    let body = request::read_body(headers, body, api.config.max_body_bytes).await?;
    let mut config = parse_config(&body)?;
    crud::check_type(info, &mut config)?;
    if config.pointer("/metadata/managedFields").is_some() {
        return Err(ApiError::BadRequest(
            "metadata.managedFields must be nil in an apply configuration".into(),
        ));
    }
    match objects::meta_str(&config, "name") {
        None | Some("") => {
            meta_mut(&mut config).insert("name".into(), json!(name));
        }
        Some(n) if n != name => {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        Some(_) => {}
    }
    let part = crud::part_of(target);
    let now = objects::now_rfc3339();
    let api_version = info.api_version();
    let writer = Writer {
        manager: &manager,
        api_version: &api_version,
        subresource: subresource(part),
        time: &now,
    };
    let view = |v: &Value| owned_part(info, part, v);
    let precondition = crud::precondition_of(&config)?;

    let exists = api.store.get(&target.key()).await?.is_some();
    if !exists {
        if part == Part::Status || precondition.is_some() {
            return Err(ApiError::not_found(info, name));
        }
        let applied = ssa::apply(
            &json!({}),
            &config,
            &ManagedFields::default(),
            &writer,
            force,
            &*schema,
            &view,
        )
        .map_err(|e| to_api_error(info, e))?;
        let mut obj = applied.object;
        let warnings = crud::unknown_field_verdict(info, validation, &obj)?;
        set_managed(&mut obj, &applied.managed);
        let obj = crud::kind_to_stored(info, obj)?;
        auth::may_create(api, identity, target)?;
        auth::admit(api, identity, info, None, &obj)?;
        let created = crud::create_tracked(api, target, obj, dry_run, Tracking::Keep).await?;
        return Ok(request::with_warnings(
            json_response(StatusCode::CREATED, &crud::served(info, &created)),
            &warnings,
        ));
    }

    let mut warnings = Vec::new();
    let out = crud::update_tracked(api, target, part, dry_run, Tracking::Keep, |current| {
        let shown = crud::served(info, &current.object).into_owned();
        // Entries that do not decode are dropped rather than failing every apply.
        let managed = ManagedFields::of(&shown).unwrap_or_default();
        let applied = ssa::apply(&shown, &config, &managed, &writer, force, &*schema, &view)
            .map_err(|e| to_api_error(info, e))?;
        let mut obj = applied.object;
        if validation != FieldValidation::Ignore {
            warnings = crud::unknown_field_verdict(info, validation, &obj)?;
        }
        set_managed(&mut obj, &applied.managed);
        crud::admit_update(api, identity, target, part, current, &obj)?;
        Ok((obj, precondition))
    })
    .await?;
    Ok(request::with_warnings(
        json_response(StatusCode::OK, &crud::served(info, &out)),
        &warnings,
    ))
}

/// How `kind`'s lists and maps merge: by its structural schema (a custom resource's),
/// else by the built-in kinds' merge keys.
fn merge_schema(kind: &dyn crate::kinds::Kind) -> Box<dyn ApplySchema + Send + Sync + '_> {
    match kind.structural_schema() {
        Some(schema) => Box::new(Structural(schema)),
        None => Box::new(Builtin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_default_manager_is_the_user_agent_up_to_its_first_slash() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static("kubectl/v1.37.1 (linux/amd64) kubernetes/abc"),
        );
        let q = Query::parse(None).unwrap();
        assert_eq!(field_manager(&q, &headers).unwrap(), "kubectl");
        let q = Query::parse(Some("fieldManager=me")).unwrap();
        assert_eq!(field_manager(&q, &headers).unwrap(), "me");
        let long = format!("fieldManager={}", "x".repeat(200));
        assert!(field_manager(&Query::parse(Some(&long)).unwrap(), &headers).is_err());
        assert!(refuse_force(&Query::parse(Some("force=true")).unwrap()).is_err());
    }

    #[test]
    fn bad_yaml_is_a_bad_request() {
        assert!(matches!(
            parse_config(b"a: [1"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_config(b"- 1"), Err(ApiError::BadRequest(_))));
        // Aliases that expand a small body into a huge document are refused, not expanded.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in ["b", "c", "d", "e", "f", "g", "h", "i"]
            .iter()
            .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
        {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        assert!(matches!(
            parse_config(bomb.as_bytes()),
            Err(ApiError::BadRequest(_))
        ));
        let v = parse_config(b"apiVersion: v1\nkind: ConfigMap\ndata:\n  a: \"1\"\n").unwrap();
        assert_eq!(v["data"]["a"], "1");
    }

    #[test]
    fn the_main_resource_and_status_own_separate_parts() {
        let pods = crate::kinds::lookup("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "uid": "u", "labels": {"a": "b"}},
            "spec": {"x": 1}, "status": {"phase": "Running"}});
        assert_eq!(
            owned_part(pods, Part::Main, &pod),
            json!({"metadata": {"labels": {"a": "b"}}, "spec": {"x": 1}})
        );
        let bare = json!({"metadata": {"name": "p"}, "spec": {"x": 1}});
        assert_eq!(
            owned_part(pods, Part::Main, &bare),
            json!({"spec": {"x": 1}})
        );
        assert_eq!(
            owned_part(pods, Part::Status, &pod),
            json!({"status": {"phase": "Running"}})
        );
    }
}
