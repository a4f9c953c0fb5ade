//! Authentication: who a request's bearer token belongs to. Tokens live in the store
//! as token records (see `tokens.rs`), read through the store's cache; a token once
//! verified is remembered until its record changes (`verified.rs`).

use axum::http::{HeaderMap, header};

use skiff_api::resources::ResourceInfo;
use skiff_api::token::{Role, Token};

use crate::error::{ApiError, ApiResult};
use crate::state::ApiServer;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Admin {
        id: String,
    },
    Viewer {
        id: String,
    },
    Node {
        id: String,
        name: String,
    },
    Join {
        id: String,
    },
    /// A user token's user (`skiff token create --user NAME --group G`), or the user an
    /// impersonating request acts as: allowed what RBAC grants the name and groups.
    User {
        id: String,
        name: String,
        groups: Vec<String>,
    },
}

impl Identity {
    /// The user name Kubernetes would show for this identity.
    pub fn user(&self) -> String {
        match self {
            Identity::Anonymous => "system:anonymous".into(),
            Identity::Admin { id } => format!("admin:{id}"),
            Identity::Viewer { id } => format!("viewer:{id}"),
            Identity::Node { name, .. } => format!("system:node:{name}"),
            Identity::Join { id } => format!("system:bootstrap:{id}"),
            Identity::User { name, .. } => name.clone(),
        }
    }

    /// The groups Kubernetes would put this identity in: admins are `system:masters`
    /// (whom RBAC allows everything), viewers `skiff:viewers` (bound to `skiff:viewer`),
    /// nodes `system:nodes`; every authenticated identity is `system:authenticated`.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = match self {
            Identity::Anonymous => return vec!["system:unauthenticated".into()],
            Identity::Admin { .. } => vec![super::rbac::MASTERS.into()],
            Identity::Viewer { .. } => vec![super::policy::VIEWERS.into()],
            Identity::Node { .. } => vec!["system:nodes".into()],
            Identity::Join { .. } => vec!["system:bootstrappers".into()],
            Identity::User { groups, .. } => groups.clone(),
        };
        if !groups.iter().any(|g| g == super::policy::AUTHENTICATED) {
            groups.push(super::policy::AUTHENTICATED.into());
        }
        groups
    }

    /// Who RBAC sees.
    pub fn subject(&self) -> super::rbac::Subject {
        super::rbac::Subject {
            user: self.user(),
            groups: self.groups(),
        }
    }
}

pub(super) fn secrets() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "secrets").expect("secrets are served")
}

/// Reads the bearer token of a request, if any, and finds whose it is.
pub async fn authenticate(api: &ApiServer, headers: &HeaderMap) -> ApiResult<Identity> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Identity::Anonymous);
    };
    let bearer = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::Unauthorized)?;
    if let Some(identity) = api.tokens.get(bearer) {
        return Ok(identity);
    }
    // Taken before the record is read, so a revocation meanwhile keeps it uncached.
    let generation = api.tokens.generation();
    let token = Token::parse(bearer).ok_or(ApiError::Unauthorized)?;
    let record = super::tokens::record(api, &token.id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let (role, node) = token.verify(&record).ok_or(ApiError::Unauthorized)?;
    let id = token.id.clone();
    let identity = match role {
        Role::User => {
            let info =
                skiff_api::token::TokenInfo::from_record(&record).ok_or(ApiError::Unauthorized)?;
            Identity::User {
                id,
                name: info.user.unwrap_or_default(),
                groups: info.groups,
            }
        }
        Role::Admin => Identity::Admin { id },
        Role::Viewer => Identity::Viewer { id },
        Role::Join => Identity::Join { id },
        Role::Node => Identity::Node {
            id,
            name: node.unwrap_or_default(),
        },
    };
    api.tokens
        .insert(bearer, &token.id, identity.clone(), generation);
    Ok(identity)
}

/// Whether an object exists at `key` (read from the store, not its cache).
pub(super) async fn exists(api: &ApiServer, key: &str) -> ApiResult<bool> {
    Ok(api
        .store
        .get(key)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .is_some())
}
