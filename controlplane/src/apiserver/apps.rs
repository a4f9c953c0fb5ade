//! Deploying in one request: `PUT /apis/skiff.dev/v1/namespaces/{ns}/apps/{name}` with
//! `Content-Type: application/wasm` and the raw module as the body. The module is
//! validated and stored, then the App is created or its module updated (a rolling
//! update). Query parameters: `replicas`, `route` (`HOST`, `/PATH` or `HOST/PATH`),
//! and `wait=true` (with `timeoutSeconds`, default 120) to answer only once the new
//! version serves on every replica, with `status.url` set. Invalid Wasm is 422 and
//! changes nothing.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::request::{Query, json_response};
use super::{Target, internal, modules};
use crate::error::{ApiError, ApiResult};
use crate::state::ApiServer;

/// Longest `wait` unless `timeoutSeconds` says otherwise.
const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// How often a waiting deploy looks at the App's status.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// Whether a request is a one-request deploy (raw Wasm to an App).
pub(crate) fn is_deploy(target: &Target, headers: &HeaderMap) -> bool {
    target.info.kind == skiff_api::app::KIND
        && matches!(
            super::request::content_type(headers).as_deref(),
            Some("application/wasm")
        )
}

fn route_of(text: &str) -> Value {
    match text.find('/') {
        Some(0) => json!({"path": text}),
        Some(i) => json!({"host": &text[..i], "path": &text[i..]}),
        None => json!({"host": text}),
    }
}

pub(crate) async fn deploy(
    api: &ApiServer,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let replicas: Option<i64> = query.number("replicas")?;
    if replicas.is_some_and(|r| r < 0) {
        return Err(ApiError::BadRequest("replicas must be 0 or more".into()));
    }
    let route = query.get("route").filter(|r| !r.is_empty()).map(route_of);
    let timeout = query
        .number::<u64>("timeoutSeconds")?
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WAIT);
    let (module, _) = modules::store(api, headers, body).await?;
    let digest = module["digest"].as_str().unwrap_or_default().to_string();
    let info = target.info;
    let ns = target.namespace.as_deref();
    let name = target.name();
    let existing = internal::get(api, info, ns, name).await?;
    let (code, app) = match existing {
        None => {
            let mut spec = json!({"module": digest, "replicas": replicas.unwrap_or(1)});
            if let Some(route) = &route {
                spec["route"] = route.clone();
            }
            let app = json!({
                "apiVersion": "skiff.dev/v1", "kind": "App",
                "metadata": {"name": name, "namespace": ns},
                "spec": spec,
            });
            match internal::create(api, info, ns, app).await {
                Ok(created) => (StatusCode::CREATED, created),
                Err(e) => return Err(e),
            }
        }
        Some(_) => {
            let updated = internal::update(api, info, ns, name, |cur| {
                let mut next = cur.clone();
                next["spec"]["module"] = json!(digest);
                if let Some(r) = replicas {
                    next["spec"]["replicas"] = json!(r);
                }
                if let Some(route) = &route {
                    next["spec"]["route"] = route.clone();
                }
                Ok(next)
            })
            .await?;
            (StatusCode::OK, updated)
        }
    };
    if !query.flag("wait") {
        return Ok(json_response(code, &app));
    }
    let app = wait_until_serving(api, target, &digest, timeout).await?;
    Ok(json_response(code, &app))
}

/// Whether an App's status says its current spec serves on every replica.
pub(crate) fn is_serving(app: &Value, digest: &str) -> bool {
    let status = app.get("status").cloned().unwrap_or_default();
    let ready = status
        .get("conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    ready
        && status.get("observedGeneration") == app.pointer("/metadata/generation")
        && status.get("moduleDigest").and_then(Value::as_str) == Some(digest)
}

async fn wait_until_serving(
    api: &ApiServer,
    target: &Target,
    digest: &str,
    timeout: Duration,
) -> ApiResult<Value> {
    let info = target.info;
    let ns = target.namespace.as_deref();
    let name = target.name();
    // A timeoutSeconds too large to add to the clock waits as long as the client stays.
    let now = tokio::time::Instant::now();
    let deadline = now
        .checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
    loop {
        let app = internal::get(api, info, ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found(info, name))?;
        if is_serving(&app, digest) {
            return Ok(app);
        }
        if tokio::time::Instant::now() >= deadline {
            let why = app
                .pointer("/status/conditions/0/message")
                .and_then(Value::as_str)
                .unwrap_or("no status yet")
                .to_string();
            return Err(ApiError::Timeout(format!(
                "app {name} did not serve the new module within {}s: {why}",
                timeout.as_secs()
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(WAIT_POLL) => {}
            _ = api.shutdown.cancelled() => {
                return Err(ApiError::Unavailable);
            }
        }
    }
}
