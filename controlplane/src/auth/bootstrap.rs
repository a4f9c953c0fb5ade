//! The token bootstrap: the server's own tokens (admin and node join), made on first
//! start, and the routes an agent joins by: `/cacerts` (the CA it checks against its
//! join token) and `POST /skiff/v1/join` (a join token traded for a node credential).

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use skiff_api::token::{self, Role, Token};

use super::authn::Identity;
use crate::error::{ApiError, ApiResult};
use crate::state::{ApiServer, SharedApi};

/// `/cacerts`, `/skiff/v1/join`, and the admin's `/skiff/v1/tokens` (`tokens.rs`).
pub fn routes(api: SharedApi, ca_pem: String) -> Router {
    let tokens = super::tokens::routes(api.clone(), token::ca_hash(&ca_pem));
    Router::new()
        .route(
            "/cacerts",
            get(move || {
                let ca = ca_pem.clone();
                async move { ([(header::CONTENT_TYPE, "application/x-pem-file")], ca) }
            }),
        )
        .route("/skiff/v1/join", post(join))
        .with_state(api.clone())
        .merge(tokens)
        .merge(super::reviews::routes(api))
}

/// Trades a join token for a credential of one node: `{"node": NAME}` →
/// `{"node": NAME, "token": "<id>.<secret>"}`. A node that already has a credential
/// keeps it: joining again under its name is refused until that one is revoked.
async fn join(
    State(api): State<SharedApi>,
    identity: Option<axum::Extension<Identity>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let Some(axum::Extension(Identity::Join { id })) = identity else {
            return Err(ApiError::Forbidden("joining takes a join token".into()));
        };
        let bytes = crate::apiserver::read_body(&headers, body, 64 * 1024).await?;
        let request = crate::apiserver::parse_body(&bytes)?;
        let node = request["node"].as_str().unwrap_or_default().to_string();
        let errs = skiff_api::validation::is_dns1123_subdomain(&node);
        if node.is_empty() || !errs.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "\"node\" must be a valid node name: {node:?}"
            )));
        }
        if let Some(existing) = super::tokens::list(&api)
            .await?
            .into_iter()
            .find(|t| t.node.as_deref() == Some(node.as_str()))
        {
            let id = existing.id;
            return Err(ApiError::Forbidden(format!(
                "node {node:?} already has a credential ({id}); revoke it with `skiff token revoke {id}` to join again under this name"
            )));
        }
        let credential = Token::generate();
        super::tokens::create(
            &api,
            &credential,
            Role::Node,
            Some(&node),
            &format!("credential of node {node}, joined with token {id}"),
        )
        .await?;
        tracing::info!(%node, join_token = %id, "node joined");
        Ok(json!({
            "apiVersion": "skiff.dev/v1",
            "kind": "NodeCredential",
            "node": node,
            "token": credential.to_string(),
        }))
    }
    .await;
    match result {
        Ok(v) => (StatusCode::CREATED, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The server's own tokens, kept in its data directory (mode 0600) as k3s keeps them:
/// `admin-token` for the kubeconfig, and `node-token` (`K10<CA hash>::<id>.<secret>`)
/// for agents to join with. Made on first start. The admin token's record is restored
/// if it went missing (whoever can read the data directory is its owner anyway); a
/// revoked join token stays revoked.
pub async fn ensure_tokens(
    api: &ApiServer,
    data_dir: &std::path::Path,
    ca_hash: &str,
) -> Result<(Token, token::JoinToken), std::io::Error> {
    let other = |e: ApiError| std::io::Error::other(e.to_string());
    super::tokens::migrate_legacy(api).await.map_err(other)?;
    let admin = match read_token(&data_dir.join("admin-token"))? {
        Some(t) => {
            let t = Token::parse(&t).ok_or_else(|| {
                std::io::Error::other("admin-token is not a token; delete it to make a new one")
            })?;
            if super::tokens::record(api, &t.id)
                .await
                .map_err(other)?
                .is_none()
            {
                record(api, &t, Role::Admin, "the server's admin token")
                    .await
                    .map_err(other)?;
            }
            t
        }
        None => {
            let t = Token::generate();
            record(api, &t, Role::Admin, "the server's admin token")
                .await
                .map_err(other)?;
            write_secret_file(&data_dir.join("admin-token"), &t.to_string())?;
            t
        }
    };
    let join = match read_token(&data_dir.join("node-token"))? {
        Some(t) => {
            let mut j = token::JoinToken::parse(&t).map_err(std::io::Error::other)?;
            if j.ca_hash != ca_hash {
                // The CA was replaced: the same credential, pinned to the new CA.
                j.ca_hash = ca_hash.to_string();
                write_secret_file(&data_dir.join("node-token"), &j.to_string())?;
            }
            j
        }
        None => {
            let t = Token::generate();
            record(api, &t, Role::Join, "the server's node join token")
                .await
                .map_err(other)?;
            let j = token::JoinToken {
                ca_hash: ca_hash.to_string(),
                token: t,
            };
            write_secret_file(&data_dir.join("node-token"), &j.to_string())?;
            j
        }
    };
    Ok((admin, join))
}

fn read_token(path: &std::path::Path) -> Result<Option<String>, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_secret_file(path: &std::path::Path, text: &str) -> Result<(), std::io::Error> {
    skiff_api::client::write_private(path, &format!("{text}\n"))
}

async fn record(api: &ApiServer, t: &Token, role: Role, description: &str) -> ApiResult<()> {
    match super::tokens::create(api, t, role, None, description).await {
        Ok(()) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
