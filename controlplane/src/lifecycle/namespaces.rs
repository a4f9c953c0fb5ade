//! The namespace cleaner: a namespace marked for deletion is drained of every object in
//! it, through the same delete path clients use, before the namespace itself goes.
//!
//! Level-based: on every change to a namespace, and on a short requeue while any
//! namespace is still draining, it reconciles each terminating namespace from scratch.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::RETRY_DELAY;
use crate::apiserver::{DeleteOptions, delete_object};
use crate::objects;
use crate::state::ApiServer;
use crate::store::{ListRequest, StoreError, WriteOp};

/// How soon a namespace that still has content is looked at again.
const REQUEUE: Duration = Duration::from_millis(250);

pub async fn run_namespace_cleaner(api: Arc<ApiServer>, stop: CancellationToken) {
    let namespaces = crate::kinds::lookup("", "v1", "namespaces").expect("namespaces are served");
    let prefix = namespaces.prefix();
    'outer: while !stop.is_cancelled() {
        let mut watch = match api.store.watch(&prefix, api.store.current_revision()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "namespace cleaner cannot watch");
                tokio::time::sleep(RETRY_DELAY).await;
                continue;
            }
        };
        loop {
            let pending = match reconcile_all(&api).await {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::warn!(error = %e, "namespace cleaner failed; retrying");
                    true
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                event = watch.next() => match event {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => continue 'outer,
                    None => return,
                },
                _ = tokio::time::sleep(REQUEUE), if pending => {}
            }
        }
    }
}

/// Drains every terminating namespace; returns whether any still has content.
async fn reconcile_all(api: &ApiServer) -> Result<bool, StoreError> {
    let namespaces = crate::kinds::lookup("", "v1", "namespaces").expect("namespaces are served");
    let deleting = |o: &Value| objects::is_deleting(o);
    let page = api
        .store
        .list(ListRequest::all(&namespaces.prefix(), &deleting))
        .await?;
    let mut pending = false;
    for ns in page.items {
        let name = objects::name(&ns.object).to_string();
        if drain(api, &name).await? {
            pending = true;
            continue;
        }
        // Empty: the namespace goes, unless the user put finalizers on its metadata.
        if objects::finalizers(&ns.object).is_empty() {
            match api
                .store
                .write(WriteOp::Delete {
                    key: ns.key.clone(),
                    expected_rev: Some(ns.rev),
                })
                .await
            {
                Ok(_) => tracing::info!(namespace = name, "namespace deleted"),
                Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => pending = true,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(pending)
}

/// Deletes what is left in a namespace; returns whether anything remains.
async fn drain(api: &ApiServer, namespace: &str) -> Result<bool, StoreError> {
    let mut remaining = false;
    let everything = |_: &Value| true;
    for info in crate::kinds::all().into_iter().filter(|r| r.namespaced) {
        let prefix = info.namespace_prefix(Some(namespace));
        let page = api
            .store
            .list(ListRequest::all(&prefix, &everything))
            .await?;
        for item in page.items {
            remaining = true;
            if objects::is_deleting(&item.object) {
                continue;
            }
            let name = objects::name(&item.object).to_string();
            if let Err(e) =
                delete_object(api, info, Some(namespace), &name, &DeleteOptions::default()).await
            {
                tracing::debug!(namespace, name, error = %e, "namespace cleaner could not delete an object yet");
            }
        }
    }
    Ok(remaining)
}
