//! Token records: where the cluster's identities live, and the admin's API for them.
//!
//! A token's record is a system record at `/skiff.dev/~tokens/<id>` (see
//! `skiff_api::token`): in the store, so every server sees it, backups keep it and a
//! revocation is immediate, but outside every served kind, so deleting objects (even a
//! `deletecollection` of every kind in every namespace) cannot lock the admin or the
//! nodes out. Only these routes, which need an admin, change them:
//!
//! - `GET /skiff/v1/tokens`: every record, without hashes (`skiff token list`);
//! - `POST /skiff/v1/tokens` `{"role": "join"|"viewer"|"admin"|"user", "description":
//!   ..., "expirationSeconds": N}`: a new token, shown only in this answer (`skiff token
//!   create`); with `expirationSeconds` it stops working that long from now (`skiff
//!   dashboard`'s sign-in links), and making one sweeps away the records of expired ones;
//! - `DELETE /skiff/v1/tokens/<id>`: revokes it (`skiff token revoke`).
//!
//! Tokens from before records were Secrets in `kube-system`; `migrate_legacy` moves
//! them on start, so existing agents and kubeconfigs keep working.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde_json::{Value, json};

use skiff_api::token::{self, JoinToken, Role, Token, TokenInfo};

use crate::error::{ApiError, ApiResult, Subject};
use crate::state::{ApiServer, SharedApi};
use crate::store::{ListRequest, StoreError, WriteOp};

/// The record of token `id`, from the store's cache (as Kubernetes reads bootstrap
/// tokens from an informer: a token revoked through this server is refused at once,
/// through another server within the cache's watch latency).
pub(super) async fn record(api: &ApiServer, id: &str) -> ApiResult<Option<Arc<Value>>> {
    Ok(api
        .store
        .get_cached(&token::record_key(id))
        .await?
        .map(|s| s.object))
}

/// Records `t` for `role` (and `node`). `AlreadyExists` if its id is taken.
pub(super) async fn create(
    api: &ApiServer,
    t: &Token,
    role: Role,
    node: Option<&str>,
    description: &str,
) -> ApiResult<()> {
    put(api, &t.id, t.record(role, node, description)).await
}

async fn put(api: &ApiServer, id: &str, record: Value) -> ApiResult<()> {
    match api
        .store
        .write(WriteOp::Create {
            key: token::record_key(id),
            object: record,
            guard: None,
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(StoreError::AlreadyExists { .. }) => Err(ApiError::AlreadyExists(Subject::token(id))),
        Err(e) => Err(e.into()),
    }
}

/// Every token's record, read consistently.
pub(super) async fn list(api: &ApiServer) -> ApiResult<Vec<TokenInfo>> {
    let page = api
        .store
        .list(ListRequest::all(token::RECORD_PREFIX, &|_| true))
        .await?;
    Ok(page
        .items
        .iter()
        .filter_map(|s| TokenInfo::from_record(&s.object))
        .collect())
}

/// Removes token `id`'s record: it stops working on the next request.
pub(super) async fn revoke(api: &ApiServer, id: &str) -> ApiResult<TokenInfo> {
    let deleted = api
        .store
        .write(WriteOp::Delete {
            key: token::record_key(id),
            expected_rev: None,
        })
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => ApiError::NotFound(Subject::token(id)),
            other => other.into(),
        })?;
    // Before the revocation is answered, so the token's very next request is refused
    // (the records' watch does the same, a moment later, on every server).
    api.tokens.invalidate(id);
    TokenInfo::from_record(&deleted.object)
        .ok_or_else(|| ApiError::Internal(format!("token {id}'s record is malformed").into()))
}

/// Moves tokens kept as Secrets (before token records) into records, then deletes the
/// Secrets, so an upgraded server keeps every agent and kubeconfig working and the
/// hashes are no longer deletable objects. Safe to run on every start, and on several
/// servers at once.
pub(super) async fn migrate_legacy(api: &ApiServer) -> ApiResult<usize> {
    let secrets = super::authn::secrets();
    let prefix = secrets.namespace_prefix(Some(token::legacy::NAMESPACE));
    let filter =
        |s: &Value| s.get("type").and_then(Value::as_str) == Some(token::legacy::SECRET_TYPE);
    let page = api.store.list(ListRequest::all(&prefix, &filter)).await?;
    let mut moved = 0;
    for item in page.items {
        let Some(record) = token::record_from_legacy_secret(&item.object) else {
            continue;
        };
        let id = crate::objects::name(&record).to_string();
        match put(api, &id, record).await {
            Ok(()) | Err(ApiError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        match api
            .store
            .write(WriteOp::Delete {
                key: item.key.clone(),
                expected_rev: Some(item.rev),
            })
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(
            tokens = moved,
            "moved tokens kept as Secrets in kube-system into token records"
        );
    }
    Ok(moved)
}

/// `/skiff/v1/tokens` and `/skiff/v1/tokens/{id}`. `ca_hash` is what join tokens pin.
pub fn routes(api: SharedApi, ca_hash: String) -> Router {
    Router::new()
        .route(
            "/skiff/v1/tokens",
            get(list_route)
                .post(move |state, headers, body| create_route(state, headers, body, ca_hash)),
        )
        .route("/skiff/v1/tokens/{id}", delete(revoke_route).get(get_route))
        .with_state(api)
}

fn answer(result: ApiResult<(StatusCode, Value)>) -> Response {
    match result {
        Ok((code, v)) => (code, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_route(State(api): State<SharedApi>) -> Response {
    answer(list(&api).await.map(|items| {
        let items: Vec<Value> = items.iter().map(TokenInfo::to_json).collect();
        (
            StatusCode::OK,
            json!({"apiVersion": token::RECORD_API_VERSION, "kind": "TokenList", "items": items}),
        )
    }))
}

async fn get_route(State(api): State<SharedApi>, Path(id): Path<String>) -> Response {
    answer(
        async {
            let record = record(&api, &id)
                .await?
                .ok_or_else(|| ApiError::NotFound(Subject::token(&id)))?;
            let info = TokenInfo::from_record(&record).ok_or_else(|| {
                ApiError::Internal(format!("token {id}'s record is malformed").into())
            })?;
            Ok((StatusCode::OK, info.to_json()))
        }
        .await,
    )
}

async fn create_route(
    State(api): State<SharedApi>,
    headers: HeaderMap,
    body: Body,
    ca_hash: String,
) -> Response {
    answer(
        async {
            let bytes = crate::apiserver::read_body(&headers, body, 64 * 1024).await?;
            let request = crate::apiserver::parse_body(&bytes)?;
            let role = match request.get("role").and_then(Value::as_str) {
                Some("join") => Role::Join,
                Some("viewer") => Role::Viewer,
                Some("admin") => Role::Admin,
                Some("user") => Role::User,
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "\"role\" must be \"join\", \"viewer\", \"admin\" or \"user\" (a \
                         node's credential is made by joining), not {other:?}"
                    )));
                }
            };
            let user = user_of(&request, role)?;
            let description = match request.get("description") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) if s.len() <= 1024 => s.as_str(),
                Some(_) => {
                    return Err(ApiError::BadRequest(
                        "\"description\" must be a string of at most 1024 bytes".into(),
                    ));
                }
            };
            let expires = expiry_of(&request, role, api.clock.now())?;
            let t = Token::generate();
            let mut record = t.record(role, None, description);
            if let Some((name, groups)) = user {
                record["user"] = json!(name);
                record["groups"] = json!(groups);
            }
            if let Some(at) = expires {
                record["expires"] = json!(skiff_api::time::format_time(at));
            }
            put(&api, &t.id, record.clone()).await?;
            sweep_expired(&api).await;
            let mut shown = TokenInfo::from_record(&record)
                .expect("a fresh record is well-formed")
                .to_json();
            shown["token"] = json!(match role {
                Role::Join => JoinToken { ca_hash, token: t }.to_string(),
                _ => t.to_string(),
            });
            Ok((StatusCode::CREATED, shown))
        }
        .await,
    )
}

/// The longest a short-lived token may last: a year.
const MAX_EXPIRATION_SECONDS: i64 = 365 * 24 * 3600;

/// When a new token stops working: `{"expirationSeconds": N}` from now (as a
/// TokenRequest asks it), or never. Join tokens carry their own lifetime in how agents
/// use them and take none.
fn expiry_of(
    request: &Value,
    role: Role,
    now: jiff::Timestamp,
) -> ApiResult<Option<jiff::Timestamp>> {
    let Some(value) = request.get("expirationSeconds").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let seconds = value
        .as_i64()
        .filter(|s| (1..=MAX_EXPIRATION_SECONDS).contains(s))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "\"expirationSeconds\" must be a whole number of seconds from 1 to \
                 {MAX_EXPIRATION_SECONDS}, not {value}"
            ))
        })?;
    if role == Role::Join {
        return Err(ApiError::BadRequest(
            "join tokens do not expire: revoke one with `skiff token revoke`".into(),
        ));
    }
    Ok(Some(now + jiff::SignedDuration::from_secs(seconds)))
}

/// Deletes the records of short-lived tokens past their expiry (they no longer
/// authenticate anyway), so sign-in links don't pile up. Best effort: a failure leaves
/// them for the next token made.
async fn sweep_expired(api: &ApiServer) {
    let Ok(all) = list(api).await else { return };
    let now = api.clock.now();
    for info in all {
        if info.expiry().is_some_and(|at| at <= now) {
            let _ = revoke(api, &info.id).await;
        }
    }
}

/// A user token's user name and groups: `{"user": NAME, "groups": [G, ...]}`, which only
/// user tokens have. The `system:` prefix is Kubernetes' own (nodes, service accounts,
/// `system:masters`): a token for such a name or group would pass for one of them.
fn user_of(request: &Value, role: Role) -> ApiResult<Option<(String, Vec<String>)>> {
    let user = request.get("user").and_then(Value::as_str);
    let groups = request.get("groups");
    if role != Role::User {
        if user.is_some() || groups.is_some() {
            return Err(ApiError::BadRequest(
                "\"user\" and \"groups\" are for tokens of the role \"user\"".into(),
            ));
        }
        return Ok(None);
    }
    let name = user
        .filter(|u| !u.is_empty() && u.len() <= 253)
        .ok_or_else(|| {
            ApiError::BadRequest("a user token needs \"user\": a name of 1 to 253 bytes".into())
        })?;
    let groups: Vec<String> = match groups {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|g| {
                g.as_str()
                    .filter(|g| !g.is_empty() && g.len() <= 253)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        ApiError::BadRequest(
                            "\"groups\" must be a list of names of 1 to 253 bytes".into(),
                        )
                    })
            })
            .collect::<ApiResult<_>>()?,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "\"groups\" must be a list of names".into(),
            ));
        }
    };
    if let Some(reserved) = std::iter::once(name)
        .chain(groups.iter().map(String::as_str))
        .find(|n| n.starts_with("system:"))
    {
        return Err(ApiError::BadRequest(format!(
            "{reserved:?}: names and groups starting with \"system:\" are Kubernetes' own; \
             give an admin token instead of a user in system:masters"
        )));
    }
    Ok(Some((name.to_string(), groups)))
}

async fn revoke_route(State(api): State<SharedApi>, Path(id): Path<String>) -> Response {
    answer(
        async {
            let info = revoke(&api, &id).await?;
            tracing::info!(token = %id, role = %info.role, node = ?info.node, "token revoked");
            Ok((StatusCode::OK, info.to_json()))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_secrets_of_older_servers_become_records_that_still_authenticate() {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::on_redb_for_tests(dir.path());
        let t = Token::generate();
        // What an older server stored: the hash in a Secret in kube-system.
        let mut record = t.record(Role::Node, Some("edge-1"), "old");
        let hash = record["secretHash"].take();
        use base64::Engine;
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": token::legacy::SECRET_TYPE,
            "metadata": {
                "name": format!("skiff-token-{}", t.id), "namespace": "kube-system",
                "labels": {token::legacy::ROLE_LABEL: "node", token::legacy::NODE_LABEL: "edge-1"},
            },
            "data": {token::legacy::HASH_KEY: base64::engine::general_purpose::STANDARD
                .encode(hash.as_str().unwrap())},
        });
        let secrets = super::super::authn::secrets();
        crate::apiserver::internal::create(&api, secrets, Some("kube-system"), secret)
            .await
            .unwrap();
        assert_eq!(migrate_legacy(&api).await.unwrap(), 1);
        let stored = super::record(&api, &t.id).await.unwrap().unwrap();
        assert_eq!(t.verify(&stored), Some((Role::Node, Some("edge-1".into()))));
        let key = secrets.key(Some("kube-system"), &format!("skiff-token-{}", t.id));
        assert!(
            api.store.get(&key).await.unwrap().is_none(),
            "the Secret is gone"
        );
        assert_eq!(migrate_legacy(&api).await.unwrap(), 0, "once");
        let listed = list(&api).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            revoke(&api, &t.id).await.unwrap().node.as_deref(),
            Some("edge-1")
        );
        assert!(matches!(
            revoke(&api, &t.id).await,
            Err(ApiError::NotFound(_))
        ));
    }
}
