//! The ServiceAccount controller, as Kubernetes' ServiceAccountsController: every
//! active namespace has a ServiceAccount `default`, made when the namespace appears
//! and made again if it is deleted. (A new `default` has a new uid, so the tokens of
//! the old one stop working: `auth/authn.rs` checks the uid.)

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use super::{Action, Context, Controller, split_key};
use crate::apiserver::internal;
use crate::error::ApiError;
use crate::informer::{Cache, CacheEvent};
use crate::kinds::serviceaccount::DEFAULT;
use crate::objects;
use crate::state::ApiServer;

fn namespaces() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "namespaces").expect("namespaces are served")
}

fn accounts() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are served")
}

pub struct ServiceAccountController {
    api: Arc<ApiServer>,
    namespaces: Arc<Cache>,
    accounts: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let namespaces = ctx.cache("", "namespaces");
    let accounts = ctx.cache("", "serviceaccounts");
    let ctrl = Arc::new(ServiceAccountController {
        api: ctx.api().clone(),
        namespaces: namespaces.clone(),
        accounts: accounts.clone(),
    });
    Controller::new(&ctx, "serviceaccount", &namespaces)
        .watches(&accounts, keys_for_account_event)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

/// A `default` ServiceAccount that went away concerns its namespace.
fn keys_for_account_event(event: &CacheEvent) -> Vec<String> {
    match event {
        CacheEvent::Deleted(account) if objects::name(account) == DEFAULT => {
            vec![format!(
                "/{}",
                objects::namespace(account).unwrap_or_default()
            )]
        }
        _ => Vec::new(),
    }
}

fn is_active(namespace: &Value) -> bool {
    namespace.pointer("/metadata/deletionTimestamp").is_none()
        && namespace.pointer("/status/phase").and_then(Value::as_str) != Some("Terminating")
}

impl ServiceAccountController {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (_, ns) = split_key(key);
        let Some(namespace) = self.namespaces.get(&namespaces().key(None, ns)) else {
            return Ok(Action::Done);
        };
        if !is_active(&namespace)
            || self
                .accounts
                .get(&accounts().key(Some(ns), DEFAULT))
                .is_some()
        {
            return Ok(Action::Done);
        }
        let account = json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": DEFAULT, "namespace": ns},
        });
        match internal::create(&self.api, accounts(), Some(ns), account).await {
            Ok(_) => {
                tracing::debug!(namespace = %ns, "made the default ServiceAccount");
                Ok(Action::Done)
            }
            // Made meanwhile (the cache lags a write), or the namespace is going away.
            Err(ApiError::AlreadyExists(_) | ApiError::NotFound(_) | ApiError::Forbidden(_)) => {
                Ok(Action::Done)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_deleted_default_account_wakes_its_namespace() {
        let account =
            |name: &str| Arc::new(json!({"metadata": {"name": name, "namespace": "team"}}));
        assert_eq!(
            keys_for_account_event(&CacheEvent::Deleted(account("default"))),
            vec!["/team".to_string()]
        );
        assert!(keys_for_account_event(&CacheEvent::Deleted(account("builder"))).is_empty());
        assert!(
            keys_for_account_event(&CacheEvent::Changed {
                object: account("default"),
                prev: None
            })
            .is_empty()
        );
        assert!(!is_active(&json!({"status": {"phase": "Terminating"}})));
        assert!(is_active(&json!({"status": {"phase": "Active"}})));
    }
}
