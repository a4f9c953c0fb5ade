//! The Kubernetes-compatible API server: `router(state)` builds the axum Router that
//! serves discovery, CRUD, watch, subresources and the module store.

mod apps;
mod crud;
pub(crate) mod defaults;
mod delete;
mod discovery;
pub mod error;
mod events;
pub mod internal;
mod logs;
mod modules;
pub mod objects;
mod openapi;
mod request;
mod subresources;
pub(crate) mod tables;
pub(crate) mod validate;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::{self, ResourceInfo, Subresource};

pub use delete::{DeleteOptions, Deleted, delete_object};
pub use events::record_event;
pub use modules::{BlobError, ModuleBlobs};
pub use request::{parse_json as parse_body, read_body};
pub use subresources::bind_pod;

use crate::store::Store;
use error::{ApiError, ApiResult};
pub(crate) use request::Query;

/// Largest request body accepted by default (Kubernetes' own limit is 3 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Largest module upload accepted by default.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_body_bytes: usize,
    pub max_module_bytes: usize,
    /// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// The address clients reach the API at, for discovery's serverAddressByClientCIDRs.
    pub advertise_address: String,
    /// How long a new pod tolerates its node being not-ready or unreachable before it is
    /// evicted (Kubernetes' DefaultTolerationSeconds admission adds these tolerations).
    pub default_toleration_seconds: i64,
    /// The gateway's URL, when one runs: Apps' `status.url` is on it.
    pub gateway_url: Option<String>,
    /// The server's data directory (its secrets go into backups).
    pub data_dir: std::path::PathBuf,
    /// `redb` or `etcd`, recorded in backups.
    pub store_kind: &'static str,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            bookmark_interval: Duration::from_secs(10),
            advertise_address: String::new(),
            default_toleration_seconds: 300,
            gateway_url: None,
            data_dir: std::path::PathBuf::new(),
            store_kind: "redb",
        }
    }
}

/// Everything a request handler needs.
pub struct ApiServer {
    pub store: Arc<dyn Store>,
    pub modules: ModuleBlobs,
    pub config: ApiConfig,
    /// Cancelled when the server starts shutting down, so long-lived watches end and
    /// graceful shutdown can finish.
    pub shutdown: CancellationToken,
    /// The reverse tunnels agents keep open, by node.
    pub tunnels: Arc<crate::tunnel::Tunnels>,
    /// What `/metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
}

pub type SharedApi = Arc<ApiServer>;

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
        .route("/version", get(discovery::version))
        .route("/openapi/v3", get(openapi::index))
        .route("/openapi/v3/{*path}", get(openapi::document))
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/skiff/v1/backup", get(backup))
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

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(api): State<SharedApi>) -> Response {
    if api.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ok".into_response()
    }
}

/// What a request path names.
#[derive(Debug)]
pub(crate) struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Subresource>,
}

impl Target {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    pub fn key(&self) -> String {
        self.info.key(self.namespace.as_deref(), self.name())
    }
}

pub(crate) fn parse_target(group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let lookup = |plural: &str| resources::lookup(group, version, plural);
    let (namespace, segs) = match segs.as_slice() {
        ["namespaces", ns, plural, ..] if lookup(plural).is_some_and(|i| i.namespaced) => {
            (Some((*ns).to_string()), &segs[2..])
        }
        _ => (None, &segs[..]),
    };
    let (plural, name, sub) = match segs {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::NoRoute),
    };
    let info = lookup(plural).ok_or(ApiError::NoRoute)?;
    // A namespaced object is only reachable through its namespace; the bare collection
    // path lists across all namespaces.
    if info.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::NoRoute);
    }
    let sub = match sub {
        None => None,
        Some(s) => Some(
            info.subresources
                .iter()
                .copied()
                .find(|x| x.name() == s)
                .ok_or(ApiError::NoRoute)?,
        ),
    };
    Ok(Target {
        info,
        namespace,
        name: name.map(str::to_string),
        sub,
    })
}

async fn core_resource(
    State(api): State<SharedApi>,
    Path((version, rest)): Path<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(api, "", &version, &rest, method, query, headers, body).await
}

async fn group_resource(
    State(api): State<SharedApi>,
    Path((group, version, rest)): Path<(String, String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dispatch(api, &group, &version, &rest, method, query, headers, body).await
}

#[allow(clippy::too_many_arguments)] // reason: the extracted parts of one request, passed once
async fn dispatch(
    api: SharedApi,
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
        route(&api, target, method, query, headers, body).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn route(
    api: &SharedApi,
    target: Target,
    method: Method,
    query: Query,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let is_module = target.info.kind == skiff_api::module::KIND;
    match (&method, target.name.is_some(), target.sub) {
        (&Method::GET, false, None) if query.flag("watch") => {
            watch::serve(api, &target, &query, &headers).await
        }
        (&Method::GET, false, None) => crud::list(api, &target, &query, &headers).await,
        (&Method::POST, false, None) if is_module => modules::upload(api, &headers, body).await,
        (&Method::POST, false, None) => crud::create(api, &target, &query, &headers, body).await,
        (&Method::DELETE, false, None) => {
            delete::delete_collection(api, &target, &query, body).await
        }
        (&Method::GET, true, None) if query.flag("watch") => {
            watch::serve(api, &target, &query, &headers).await
        }
        (&Method::GET, true, None) if is_module && !request::wants_json(&headers) => {
            modules::download(api, target.name()).await
        }
        (&Method::GET, true, None | Some(Subresource::Status)) => {
            crud::get(api, &target, &query, &headers).await
        }
        (&Method::PUT, true, None) if apps::is_deploy(&target, &headers) => {
            apps::deploy(api, &target, &query, &headers, body).await
        }
        (&Method::PUT, true, None | Some(Subresource::Status)) => {
            crud::update(api, &target, &query, &headers, body).await
        }
        (&Method::PATCH, true, None | Some(Subresource::Status)) => {
            crud::patch(api, &target, &query, &headers, body).await
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
            subresources::evict(api, &target, &headers, body).await
        }
        (&Method::POST, true, Some(Subresource::Binding)) => {
            subresources::bind(api, &target, &headers, body).await
        }
        (&Method::GET, true, Some(Subresource::Log)) => logs::proxy(api, &target, &query).await,
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {method} {}",
            target.info.qualified_plural()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_targets() {
        let t = parse_target("", "v1", "namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (t.info.plural, t.namespace.as_deref(), t.name(), t.sub),
            ("pods", Some("default"), "web", Some(Subresource::Status))
        );
        let t = parse_target("", "v1", "namespaces/default").unwrap();
        assert_eq!((t.info.plural, t.name()), ("namespaces", "default"));
        let t = parse_target("", "v1", "namespaces/kube-system/status").unwrap();
        assert_eq!(
            (t.info.plural, t.name(), t.sub),
            ("namespaces", "kube-system", Some(Subresource::Status))
        );
        let t = parse_target("", "v1", "pods").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse_target("apps", "v1", "namespaces/x/deployments/d/scale").unwrap();
        assert_eq!(t.sub, Some(Subresource::Scale));
        assert!(parse_target("", "v1", "pods/web").is_err());
        assert!(parse_target("", "v1", "namespaces/x/pods/web/scale").is_err());
        assert!(parse_target("", "v1", "widgets").is_err());
        assert!(parse_target("apps", "v1", "namespaces/x/deployments/d/scale/extra").is_err());
    }
}
