//! The ClusterRole aggregation controller: a ClusterRole with an `aggregationRule` gets
//! the rules of every ClusterRole its selectors select, as Kubernetes'
//! clusterrole-aggregation controller keeps them. So the default `admin`, `edit` and
//! `view` roles grow with every role labelled
//! `rbac.authorization.k8s.io/aggregate-to-view: "true"` (and so on), which is how
//! a CRD's installer gives `view` the right to read its resources.

use std::sync::Arc;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Action, Context, Controller, split_key};
use crate::apiserver::internal;
use crate::auth::rbac;
use crate::error::ApiError;
use crate::informer::Cache;
use crate::state::ApiServer;

struct Aggregation {
    api: Arc<ApiServer>,
    roles: Arc<Cache>,
}

pub async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    let roles = ctx.cache(rbac::GROUP, "clusterroles");
    let ctrl = Arc::new(Aggregation {
        api: ctx.api().clone(),
        roles: roles.clone(),
    });
    // Any role's change may change what any aggregated role selects.
    Controller::new(&ctx, "clusterrole-aggregation", &roles)
        .watches_all(&roles)
        .run(ctrl, |c, key| async move { c.sync(&key).await }, stop)
        .await;
}

impl Aggregation {
    async fn sync(&self, key: &str) -> Result<Action, ApiError> {
        let (_, name) = split_key(key);
        let info = crate::kinds::lookup(rbac::GROUP, "v1", "clusterroles").expect("served");
        let Some(role) = self.roles.get(&info.key(None, name)) else {
            return Ok(Action::Done);
        };
        let Some(rules) = rbac::aggregate(&role, &self.roles.snapshot()) else {
            return Ok(Action::Done);
        };
        let current = role.get("rules").cloned().unwrap_or(Value::Array(vec![]));
        if current == Value::Array(rules.clone()) {
            return Ok(Action::Done);
        }
        let result = internal::update(&self.api, info, None, name, |current| {
            let mut next = current.clone();
            next["rules"] = Value::Array(rules.clone());
            Ok(next)
        })
        .await;
        match result {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}
