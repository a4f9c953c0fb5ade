//! The Kubernetes-compatible API server: `router(state)` builds the axum Router that
//! serves discovery, CRUD, watch, subresources and the module store, and the server's
//! own routes: health, backups, metrics, and the agents' reverse tunnels. The state it
//! serves from is `crate::state`.

mod apply;
mod apps;
mod authorization_api;
mod clock;
mod crud;
mod delete;
mod discovery;
pub mod drain;
mod events;
mod eviction;
pub mod internal;
mod logs;
pub(crate) mod metrics_api;
mod modules;
mod openapi;
mod portforward;
mod request;
mod subresources;
pub(crate) mod tables;
mod tunnel;
pub(crate) mod validate;
mod watch;

use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use skiff_api::resources::Subresource;

pub use delete::{DeleteOptions, Deleted, delete_object};
pub use events::record_event;
pub(crate) use modules::inspect as inspect_module;
pub use request::{parse_json as parse_body, read_body};
pub use subresources::bind_pod;

use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};
use crate::state::SharedApi;
pub(crate) use discovery::{one_version_group, reviews};
pub(crate) use request::{Query, Target, json_response, parse_target};

/// Builds the API router. Tests call it with `oneshot`, the server serves it on a socket.
pub fn router(api: SharedApi) -> Router {
    Router::new()
        .route("/api", get(discovery::core_versions))
        .route("/api/{version}", get(discovery::core_resources))
        .route("/api/{version}/{*rest}", any(core_resource))
        .route("/apis", get(discovery::groups))
        .route("/apis/{group}", get(discovery::group))
        .route("/apis/{group}/{version}", get(discovery::group_resources))
        .route("/apis/{group}/{version}/{*rest}", any(group_resource))
        .route(
            "/apis/authorization.k8s.io/v1/{*rest}",
            any(authorization_api::review),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/{*rest}",
            any(metrics_api::resource_metrics),
        )
        .route(
            "/apis/custom.metrics.k8s.io/v1beta2/{*rest}",
            any(metrics_api::custom_metrics),
        )
        .route("/version", get(discovery::version))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/skiff/v1/backup", get(backup))
        .route("/skiff/v1/clock", axum::routing::post(clock::advance))
        .route("/metrics", get(metrics))
        .route(crate::tunnel::PATH, get(tunnel::open))
        .route("/api/v1/nodes/{name}/proxy/{*path}", get(tunnel::proxy))
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError::NoRoute })
        .with_state(api)
}

/// `GET /skiff/v1/backup` (admin only, as every path outside the resource API is): a
/// consistent backup of the running cluster, as `skiff backup` writes it.
async fn backup(State(api): State<SharedApi>) -> Response {
    let result = async {
        // Written whole before the first byte is sent, so a failure is a clean error
        // rather than a truncated download.
        let file = tempfile::tempfile_in(&api.config.data_dir).map_err(ApiError::internal)?;
        let writer = file.try_clone().map_err(ApiError::internal)?;
        let summary = crate::backup::write(
            &*api.store,
            &api.modules,
            &api.config.data_dir,
            api.config.store_kind,
            writer,
        )
        .await
        .map_err(ApiError::internal)?;
        let mut file = tokio::fs::File::from_std(file);
        use tokio::io::AsyncSeekExt;
        file.rewind().await.map_err(ApiError::internal)?;
        tracing::info!(
            revision = summary.revision,
            objects = summary.objects,
            modules = summary.modules,
            "backup taken"
        );
        Response::builder()
            .status(StatusCode::OK)
            .header(axum::http::header::CONTENT_TYPE, "application/gzip")
            .header(
                axum::http::header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"skiff-backup-{}.tar.gz\"",
                    summary.revision
                ),
            )
            .body(axum::body::Body::from_stream(
                tokio_util::io::ReaderStream::new(file),
            ))
            .map_err(ApiError::internal)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /metrics`: the server's own metrics (see `crate::metrics`).
async fn metrics(State(api): State<SharedApi>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}

/// How long `/readyz` waits for the store to answer before calling it failed.
const STORE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `/livez` and `/healthz`: the process serves (`?verbose` lists the one check).
async fn health(RawQuery(query): RawQuery) -> Response {
    checks_answer("livez", &[("ping", Ok(()))], query.as_deref())
}

/// `/readyz`: kube-apiserver's checks, by name: `ping`; the store (`redb` or `etcd`)
/// answering a read of its newest revision within [`STORE_CHECK_TIMEOUT`]; and
/// `shutdown`, failed once the server has begun to stop. `?verbose` lists each.
async fn ready(State(api): State<SharedApi>, RawQuery(query): RawQuery) -> Response {
    let store = match tokio::time::timeout(STORE_CHECK_TIMEOUT, api.store.latest_revision()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} s",
            STORE_CHECK_TIMEOUT.as_secs()
        )),
    };
    let shutdown = if api.shutdown.is_cancelled() {
        Err("shutting down".to_string())
    } else {
        Ok(())
    };
    checks_answer(
        "readyz",
        &[
            ("ping", Ok(())),
            (api.config.store_kind, store),
            ("shutdown", shutdown),
        ],
        query.as_deref(),
    )
}

/// A health endpoint's answer as kube-apiserver words it: `ok`, or with `?verbose` a
/// line per check (`[+]etcd ok`) and a verdict. A failed check answers 503 and names
/// the check; its reason is logged, and withheld from these public endpoints as
/// Kubernetes withholds it.
fn checks_answer(
    endpoint: &str,
    checks: &[(&str, Result<(), String>)],
    query: Option<&str>,
) -> Response {
    let verbose = query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let passed = checks.iter().all(|(_, r)| r.is_ok());
    for (name, result) in checks {
        if let Err(reason) = result {
            tracing::warn!(check = name, reason, "{endpoint} check failed");
        }
    }
    if passed && !verbose {
        return "ok".into_response();
    }
    let mut body = String::new();
    for (name, result) in checks {
        match result {
            Ok(()) => body.push_str(&format!("[+]{name} ok\n")),
            Err(_) => body.push_str(&format!("[-]{name} failed: reason withheld\n")),
        }
    }
    let verdict = if passed { "passed" } else { "failed" };
    body.push_str(&format!("{endpoint} check {verdict}\n"));
    let code = if passed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body).into_response()
}

async fn core_resource(
    State(api): State<SharedApi>,
    Extension(identity): Extension<Identity>,
    Path((version, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    // A port-forward upgrades the connection, which takes the request's own parts.
    if rest.ends_with("/portforward")
        && let Ok(target) = parse_target("", &version, &rest)
        && target.sub == Some(Subresource::PortForward)
    {
        if !matches!(parts.method, Method::GET | Method::POST) {
            return method_not_allowed(&parts.method, &target, allowed_methods(&target));
        }
        return portforward::serve(api.clone(), &target, parts)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    let query = parts.uri.query().map(str::to_string);
    dispatch(
        api,
        &identity,
        "",
        &version,
        &rest,
        parts.method,
        query,
        parts.headers,
        body,
    )
    .await
}

async fn group_resource(
    State(api): State<SharedApi>,
    Extension(identity): Extension<Identity>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(
        api, &identity, &group, &version, &rest, method, query, headers, body,
    )
    .await
}

#[allow(clippy::too_many_arguments)] // reason: the extracted parts of one request, passed once
async fn dispatch(
    api: SharedApi,
    identity: &Identity,
    group: &str,
    version: &str,
    rest: &str,
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let target = parse_target(group, version, rest)?;
        let query = Query::parse(query.as_deref())?;
        route(&api, identity, target, method, query, headers, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Serves a request the auth layer let through; `identity` is who sent it, for the
/// admission of writes (`crate::auth::admit`).
async fn route(
    api: &SharedApi,
    identity: &Identity,
    target: Target,
    method: Method,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let allowed = allowed_methods(&target);
    if !allowed.contains(&method) {
        return Ok(method_not_allowed(&method, &target, allowed));
    }
    let is_module = target.info.kind == skiff_api::module::KIND;
    match (&method, target.name.is_some(), target.sub) {
        (&Method::GET, false, None) if query.flag("watch") => {
            watch::serve(api, &target, &query, &headers).await
        }
        (&Method::GET, false, None) => crud::list(api, &target, &query, &headers).await,
        (&Method::POST, false, None) if is_module => modules::upload(api, &headers, body).await,
        (&Method::POST, false, None) => {
            crud::create(api, identity, &target, &query, &headers, body).await
        }
        (&Method::DELETE, false, None) => {
            delete::delete_collection(api, &target, &query, body).await
        }
        (&Method::GET, true, None) if query.flag("watch") => {
            watch::serve(api, &target, &query, &headers).await
        }
        (&Method::GET, true, None) if is_module && !request::wants_json(&headers) => {
            modules::download(api, identity, target.name()).await
        }
        (&Method::GET, true, None | Some(Subresource::Status)) => {
            crud::get(api, &target, &query, &headers).await
        }
        (&Method::PUT, true, None) if apps::is_deploy(&target, &headers) => {
            apps::deploy(api, &target, &query, &headers, body).await
        }
        (&Method::PUT, true, None | Some(Subresource::Status)) => {
            crud::update(api, identity, &target, &query, &headers, body).await
        }
        (&Method::PATCH, true, None | Some(Subresource::Status)) => {
            crud::patch(api, identity, &target, &query, &headers, body).await
        }
        (&Method::DELETE, true, None) => {
            let out = delete::delete(api, &target, &query, body).await?;
            if is_module {
                modules::forget_if_deleted(api, target.name()).await;
            }
            Ok(out)
        }
        (&Method::GET, true, Some(Subresource::Scale)) => {
            subresources::get_scale(api, &target).await
        }
        (&Method::PUT, true, Some(Subresource::Scale)) => {
            subresources::put_scale(api, &target, &headers, body).await
        }
        (&Method::PATCH, true, Some(Subresource::Scale)) => {
            subresources::patch_scale(api, &target, &headers, body).await
        }
        (&Method::POST, true, Some(Subresource::Eviction)) => {
            eviction::evict(api, &target, &headers, body).await
        }
        (&Method::POST, true, Some(Subresource::Binding)) => {
            subresources::bind(api, &target, &headers, body).await
        }
        (&Method::GET, true, Some(Subresource::Log)) => logs::proxy(api, &target, &query).await,
        (&Method::POST, true, Some(Subresource::Token)) => {
            crate::auth::request_token(api, identity, &target, &headers, body).await
        }
        // Served before routing, where the connection can still be upgraded.
        (_, true, Some(Subresource::PortForward)) => Err(ApiError::BadRequest(
            "port forwarding upgrades the connection".into(),
        )),
        _ => Ok(method_not_allowed(&method, &target, allowed)),
    }
}

/// The methods a path serves, as the OpenAPI documents declare them. A namespaced
/// kind's collection outside any namespace (`/api/v1/secrets`) only lists and watches,
/// as in Kubernetes: a DELETE there would be a deletecollection across every
/// namespace, which no client means to send.
fn allowed_methods(target: &Target) -> &'static [Method] {
    const READ: &[Method] = &[Method::GET];
    const COLLECTION: &[Method] = &[Method::GET, Method::POST, Method::DELETE];
    const OBJECT: &[Method] = &[Method::GET, Method::PUT, Method::PATCH, Method::DELETE];
    const SUBOBJECT: &[Method] = &[Method::GET, Method::PUT, Method::PATCH];
    const ACTION: &[Method] = &[Method::POST];
    match (target.name.is_some(), target.sub) {
        (false, _) if target.info.namespaced && target.namespace.is_none() => READ,
        (false, _) => COLLECTION,
        (true, None) => OBJECT,
        (true, Some(Subresource::Status | Subresource::Scale)) => SUBOBJECT,
        (true, Some(Subresource::Eviction | Subresource::Binding | Subresource::Token)) => ACTION,
        (true, Some(Subresource::Log)) => READ,
        (true, Some(Subresource::PortForward)) => &[Method::GET, Method::POST],
    }
}

/// 405, with the `Allow` header RFC 9110 requires on it.
fn method_not_allowed(method: &Method, target: &Target, allowed: &[Method]) -> Response {
    let mut response = ApiError::MethodNotAllowed(format!(
        "the server does not allow this method on the requested resource: {method} {}",
        target.info.qualified_plural()
    ))
    .into_response();
    let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    if let Ok(value) = axum::http::HeaderValue::from_str(&allow.join(", ")) {
        response
            .headers_mut()
            .insert(axum::http::header::ALLOW, value);
    }
    response
}
