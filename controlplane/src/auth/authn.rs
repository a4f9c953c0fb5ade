//! Authentication: who a request's bearer token belongs to. Skiff's own tokens live in
//! the store as token records (see `tokens.rs`), read through the store's cache; a token
//! once verified is remembered until its record changes (`verified.rs`). ServiceAccount
//! tokens are JWTs (`satokens.rs`): verified by signature, expiry and audience, then
//! checked against the server's cache (`Store::get_cached`, as kube-apiserver reads its
//! informers) that their ServiceAccount, and the pod they are bound to, still exist
//! with the uids the token names.

use axum::http::{HeaderMap, header};

use skiff_api::resources::ResourceInfo;
use skiff_api::token::{Role, Token};

use crate::error::{ApiError, ApiResult};
use crate::state::ApiServer;

/// Who sent a request. RBAC binds subjects by [`Identity::user`] (a User subject) and
/// [`Identity::groups`] (Group subjects); a ServiceAccount subject `{namespace, name}`
/// is the user `system:serviceaccount:NS:NAME`, as in Kubernetes.
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
    /// A ServiceAccount token's bearer: the account (with the uid the token was issued
    /// for) and, for a pod-bound token, the pod's name and uid.
    ServiceAccount {
        namespace: String,
        name: String,
        uid: String,
        pod: Option<(String, String)>,
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
            Identity::ServiceAccount {
                namespace, name, ..
            } => format!("system:serviceaccount:{namespace}:{name}"),
        }
    }

    /// Who RBAC sees.
    pub fn subject(&self) -> super::rbac::Subject {
        super::rbac::Subject {
            user: self.user(),
            groups: self.groups(),
        }
    }

    /// The groups Kubernetes would put this identity in: `system:authenticated` for
    /// everyone signed in; `system:masters` for admins (who may do everything),
    /// `system:nodes` for nodes, `system:bootstrappers` for join tokens, and
    /// `system:serviceaccounts` plus `system:serviceaccounts:NS` for ServiceAccounts.
    /// Viewers are in `skiff:viewers` (bound to `skiff:viewer`), which has no Kubernetes
    /// counterpart; a user token's user, or an impersonated user, in the groups given.
    pub fn groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = match self {
            Identity::Anonymous => return vec!["system:unauthenticated".into()],
            Identity::Admin { .. } => vec!["system:masters".into()],
            Identity::Viewer { .. } => vec!["skiff:viewers".into()],
            Identity::Node { .. } => vec!["system:nodes".into()],
            Identity::Join { .. } => vec!["system:bootstrappers".into()],
            Identity::User { groups, .. } => groups.clone(),
            Identity::ServiceAccount { namespace, .. } => vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
            ],
        };
        if !groups.iter().any(|g| g == super::policy::AUTHENTICATED) {
            groups.push(super::policy::AUTHENTICATED.into());
        }
        groups
    }

    /// The uid Kubernetes reports for this identity (a ServiceAccount's), if any.
    pub fn uid(&self) -> Option<&str> {
        match self {
            Identity::ServiceAccount { uid, .. } => Some(uid),
            _ => None,
        }
    }

    /// The extra attributes Kubernetes reports (a pod-bound token's pod).
    pub fn extra(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut extra = serde_json::Map::new();
        if let Identity::ServiceAccount {
            pod: Some((name, uid)),
            ..
        } = self
        {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                serde_json::json!([name]),
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                serde_json::json!([uid]),
            );
        }
        extra
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
    if super::satokens::looks_like_jwt(bearer) {
        return service_account(api, bearer, &[])
            .await
            .map_err(|_| ApiError::Unauthorized);
    }
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
    let info = skiff_api::token::TokenInfo::from_record(&record).ok_or(ApiError::Unauthorized)?;
    let expiry = info.expiry();
    if expiry.is_some_and(|at| at <= api.clock.now()) {
        return Err(ApiError::Unauthorized);
    }
    let id = token.id.clone();
    let identity = match role {
        Role::User => Identity::User {
            id,
            name: info.user.unwrap_or_default(),
            groups: info.groups,
        },
        Role::Admin => Identity::Admin { id },
        Role::Viewer => Identity::Viewer { id },
        Role::Join => Identity::Join { id },
        Role::Node => Identity::Node {
            id,
            name: node.unwrap_or_default(),
        },
    };
    // A short-lived token is checked against its record every time, so it stops at its
    // expiry without the cache having to know the time.
    if expiry.is_none() {
        api.tokens
            .insert(bearer, &token.id, identity.clone(), generation);
    }
    Ok(identity)
}

/// Why a ServiceAccount token does not authenticate (what a TokenReview reports).
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountRejected {
    #[error(transparent)]
    Token(#[from] super::satokens::TokenRejected),
    #[error("service account {0} has been deleted")]
    AccountGone(String),
    #[error("service account {0} was recreated: the token was issued for its predecessor")]
    AccountReplaced(String),
    #[error("pod {0} has been deleted")]
    PodGone(String),
    #[error("pod {0} was recreated: the token was issued for its predecessor")]
    PodReplaced(String),
    #[error("looking the token's objects up: {0}")]
    Lookup(String),
}

/// Authenticates a ServiceAccount token for `audiences` (the API's own when empty): its
/// signature, issuer, expiry and audience, then its ServiceAccount and bound pod, read
/// from the server's cache, which Kubernetes reads from its informers too.
pub async fn service_account(
    api: &ApiServer,
    token: &str,
    audiences: &[String],
) -> Result<Identity, ServiceAccountRejected> {
    let claims = api.service_accounts.verify(token, audiences)?;
    let k = &claims.kubernetes;
    let (namespace, account) = (&k.namespace, &k.serviceaccount);
    let accounts =
        crate::kinds::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are served");
    let who = format!("{namespace}/{}", account.name);
    check_uid(
        api,
        &accounts.key(Some(namespace), &account.name),
        &account.uid,
    )
    .await?
    .map_err(|gone| {
        if gone {
            ServiceAccountRejected::AccountGone(who.clone())
        } else {
            ServiceAccountRejected::AccountReplaced(who.clone())
        }
    })?;
    if let Some(pod) = &k.pod {
        let pods = crate::kinds::lookup("", "v1", "pods").expect("pods are served");
        let which = format!("{namespace}/{}", pod.name);
        check_uid(api, &pods.key(Some(namespace), &pod.name), &pod.uid)
            .await?
            .map_err(|gone| {
                if gone {
                    ServiceAccountRejected::PodGone(which.clone())
                } else {
                    ServiceAccountRejected::PodReplaced(which.clone())
                }
            })?;
    }
    Ok(Identity::ServiceAccount {
        namespace: namespace.clone(),
        name: account.name.clone(),
        uid: account.uid.clone(),
        pod: k.pod.as_ref().map(|p| (p.name.clone(), p.uid.clone())),
    })
}

/// Whether the cached object at `key` has `uid`: Err(true) if it is gone, Err(false)
/// if another object holds the name (or it is being deleted).
async fn check_uid(
    api: &ApiServer,
    key: &str,
    uid: &str,
) -> Result<Result<(), bool>, ServiceAccountRejected> {
    let stored = api
        .store
        .get_cached(key)
        .await
        .map_err(|e| ServiceAccountRejected::Lookup(e.to_string()))?;
    Ok(match stored {
        None => Err(true),
        // As Kubernetes: a terminating object's tokens work until its deletion time
        // (a pod's grace period), not after.
        Some(s)
            if s.object
                .pointer("/metadata/deletionTimestamp")
                .and_then(serde_json::Value::as_str)
                .and_then(crate::objects::parse_time)
                .is_some_and(|at| at <= jiff::Timestamp::now()) =>
        {
            Err(true)
        }
        Some(s)
            if s.object
                .pointer("/metadata/uid")
                .and_then(serde_json::Value::as_str)
                == Some(uid) =>
        {
            Ok(())
        }
        Some(_) => Err(false),
    })
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

#[cfg(test)]
mod tests {
    use super::super::satokens::{Named, TokenSpec};
    use super::*;
    use crate::apiserver::internal;
    use serde_json::json;

    fn now() -> i64 {
        jiff::Timestamp::now().as_second()
    }

    async fn create(api: &ApiServer, plural: &str, obj: serde_json::Value) -> String {
        let info = crate::kinds::lookup("", "v1", plural).unwrap();
        let made = internal::create(api, info, Some("default"), obj)
            .await
            .unwrap();
        made["metadata"]["uid"].as_str().unwrap().to_string()
    }

    async fn delete(api: &ApiServer, plural: &str, name: &str) {
        let info = crate::kinds::lookup("", "v1", plural).unwrap();
        internal::delete(api, info, Some("default"), name, &Default::default())
            .await
            .unwrap();
    }

    fn token(api: &ApiServer, sa_uid: &str, pod: Option<Named>) -> String {
        let spec = TokenSpec {
            namespace: "default",
            service_account: Named {
                name: "builder".into(),
                uid: sa_uid.into(),
            },
            pod,
            audiences: Vec::new(),
            expiration_seconds: 600,
        };
        api.service_accounts.issue(&spec, now()).0
    }

    #[tokio::test]
    async fn a_token_ends_with_its_account_and_its_pod() {
        let dir = tempfile::tempdir().unwrap();
        let api = ApiServer::on_redb_for_tests(dir.path());
        let sa = json!({"metadata": {"name": "builder"}});
        let uid = create(&api, "serviceaccounts", sa.clone()).await;
        let plain = token(&api, &uid, None);
        let who = service_account(&api, &plain, &[]).await.unwrap();
        assert_eq!(who.user(), "system:serviceaccount:default:builder");
        assert_eq!(
            who.groups(),
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );

        let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "builder",
            "containers": [{"name": "c", "image": "sha256:".to_string() + &"a".repeat(64)}]}});
        let pod_uid = create(&api, "pods", pod).await;
        let bound = token(
            &api,
            &uid,
            Some(Named {
                name: "p".into(),
                uid: pod_uid,
            }),
        );
        let who = service_account(&api, &bound, &[]).await.unwrap();
        assert!(
            who.extra()
                .contains_key("authentication.kubernetes.io/pod-name")
        );
        delete(&api, "pods", "p").await;
        assert!(matches!(
            service_account(&api, &bound, &[]).await,
            Err(ServiceAccountRejected::PodGone(_))
        ));

        delete(&api, "serviceaccounts", "builder").await;
        assert!(matches!(
            service_account(&api, &plain, &[]).await,
            Err(ServiceAccountRejected::AccountGone(_))
        ));
        create(&api, "serviceaccounts", sa).await;
        assert!(matches!(
            service_account(&api, &plain, &[]).await,
            Err(ServiceAccountRejected::AccountReplaced(_))
        ));
    }
}
