//! Who may do what: bearer-token authentication, and authorization by role.
//!
//! - Anonymous requests get 401, except `/healthz`, `/livez`, `/readyz`, `/version`
//!   and `/cacerts` (the CA an agent checks against its join token).
//! - **admin** may do everything.
//! - **viewer** may read everything except Secrets.
//! - **node** credentials are restricted as Kubernetes' Node authorizer and
//!   NodeRestriction admission restrict kubelets: the node's own Node and Lease; the pods
//!   bound to it and their status; the ConfigMaps, Secrets and Modules those pods
//!   reference; Events; and reading Endpoints (agents learn the API servers from
//!   `default/kubernetes`, as kubelets may read endpoints).
//! - **join** tokens may only trade themselves for a node credential (`POST /skiff/v1/join`).
//!
//! Tokens live in the store (see `skiff_api::token`), so revoking one is deleting its
//! Secret and takes effect on the next request.

pub mod pki;

use std::sync::Arc;
use tracing::Instrument;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use skiff_api::resources::{self, ResourceInfo, Subresource};
use skiff_api::selector::{FieldOp, FieldSelector};
use skiff_api::token::{self, Role, Token};

use crate::apiserver::error::{ApiError, ApiResult};
use crate::apiserver::{ApiServer, Query, SharedApi, Target, internal, parse_target};
use crate::objects;
use crate::store::ListRequest;

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Anonymous,
    Admin { id: String },
    Viewer { id: String },
    Node { id: String, name: String },
    Join { id: String },
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
        }
    }
}

fn secrets() -> &'static ResourceInfo {
    resources::lookup("", "v1", "secrets").expect("secrets are served")
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
    let token = Token::parse(bearer).ok_or(ApiError::Unauthorized)?;
    let key = secrets().key(Some(token::NAMESPACE), &token.secret_name());
    // From the cache, as Kubernetes reads bootstrap tokens from an informer: a token
    // revoked through this server is refused at once, through another server within the
    // cache's watch latency.
    let record = api
        .store
        .get_cached(&key)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .ok_or(ApiError::Unauthorized)?;
    let (role, node) = token.verify(&record.object).ok_or(ApiError::Unauthorized)?;
    let id = token.id;
    Ok(match role {
        Role::Admin => Identity::Admin { id },
        Role::Viewer => Identity::Viewer { id },
        Role::Join => Identity::Join { id },
        Role::Node => Identity::Node {
            id,
            name: node.unwrap_or_default(),
        },
    })
}

/// What a request path is.
enum Kind {
    /// Health, version and the CA: anyone.
    Public,
    /// Discovery and OpenAPI: any authenticated identity.
    Discovery,
    Join,
    /// An agent's reverse tunnel: its own node credential only.
    Tunnel,
    /// The server's own metrics: admin and viewer.
    Metrics,
    /// `nodes/NAME/proxy/...`, to the agent through its tunnel: admin, and viewer reads.
    NodeProxy,
    Resource(Resource),
    Other,
}

/// A request against a served kind, with its verb as RBAC names it.
struct Resource {
    target: Target,
    verb: &'static str,
}

fn classify(method: &Method, path: &str, query: &Query) -> Kind {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["healthz" | "livez" | "readyz" | "version" | "cacerts"] => return Kind::Public,
        ["skiff", "v1", "join"] => return Kind::Join,
        ["skiff", "v1", "tunnel"] => return Kind::Tunnel,
        ["metrics"] => return Kind::Metrics,
        ["api", "v1", "nodes", _, "proxy", ..] => return Kind::NodeProxy,
        ["openapi", ..] | ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
            return Kind::Discovery;
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Kind::Other,
    };
    // The API's own reading of the path, so both agree on what a request touches.
    let Ok(target) = parse_target(group, version, &rest.join("/")) else {
        return Kind::Other;
    };
    let verb = match (method, target.name.is_some()) {
        (&Method::GET, _) if query.flag("watch") => "watch",
        (&Method::GET, true) => "get",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    };
    Kind::Resource(Resource { target, verb })
}

/// `pods` or `pods/status`.
fn resource_name(t: &Target) -> String {
    match t.sub {
        Some(sub) => format!("{}/{}", t.info.plural, sub.name()),
        None => t.info.plural.to_string(),
    }
}

fn forbidden(identity: &Identity, r: &Resource, why: &str) -> ApiError {
    let t = &r.target;
    let scope = match &t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let subject = match &t.name {
        Some(name) => format!("{} \"{name}\"", t.info.qualified_plural()),
        None => t.info.qualified_plural(),
    };
    let mut message = format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{}\" in API group \"{}\" {scope}",
        identity.user(),
        r.verb,
        resource_name(t),
        t.info.group
    );
    if !why.is_empty() {
        message.push_str(": ");
        message.push_str(why);
    }
    ApiError::Forbidden(message)
}

/// The value a request's field selector requires `field` to equal, if any.
fn selected(query: &Query, field: &str) -> Option<String> {
    let selector = FieldSelector::parse(query.get("fieldSelector")?).ok()?;
    selector
        .requirements()
        .find(|(f, op, _)| *f == field && *op == FieldOp::Equals)
        .map(|(_, _, value)| value.to_string())
}

/// The pods bound to `node`.
async fn pods_on(api: &ApiServer, node: &str) -> ApiResult<Vec<Arc<Value>>> {
    let pods = resources::lookup("", "v1", "pods").expect("pods are served");
    let prefix = pods.prefix();
    let filter = |p: &Value| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node);
    let page = api
        .store
        .list(ListRequest::all(&prefix, &filter))
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(page.items.into_iter().map(|s| s.object).collect())
}

/// Whether a pod's spec names a ConfigMap or Secret `name` (volumes, projected volumes,
/// env and envFrom of every container).
fn references(pod: &Value, kind: &str, name: &str) -> bool {
    let spec = &pod["spec"];
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten();
    let is = |v: &Value| v.as_str() == Some(name);
    let (volume_key, volume_name, key_ref, from_ref) = if kind == "secrets" {
        ("secret", "secretName", "secretKeyRef", "secretRef")
    } else {
        ("configMap", "name", "configMapKeyRef", "configMapRef")
    };
    let projected_key = if kind == "secrets" {
        "secret"
    } else {
        "configMap"
    };
    let in_volumes = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|v| {
            is(&v[volume_key][volume_name])
                || v.pointer("/projected/sources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|s| is(&s[projected_key]["name"]))
        });
    in_volumes
        || containers.into_iter().any(|c| {
            c.get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|e| is(&e["valueFrom"][key_ref]["name"]))
                || c.get("envFrom")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|e| is(&e[from_ref]["name"]))
        })
}

fn uses_module(pod: &Value, digest: &str) -> bool {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod["spec"].get(*k).and_then(Value::as_array))
        .flatten()
        .any(|c| c["image"].as_str() == Some(digest))
}

/// What a node credential may do (Kubernetes' Node authorizer, NodeRestriction).
async fn authorize_node(
    api: &ApiServer,
    identity: &Identity,
    node: &str,
    r: &Resource,
    query: &Query,
    body_name: Option<&str>,
) -> ApiResult<()> {
    let deny = |why: &str| Err(forbidden(identity, r, why));
    let own = |name: Option<&str>| name == Some(node);
    let t = &r.target;
    let name = t.name.as_deref();
    match (t.info.plural, r.verb) {
        ("nodes", "get" | "update" | "patch") if own(name) => Ok(()),
        ("nodes", "list" | "watch")
            if selected(query, "metadata.name").as_deref() == Some(node) =>
        {
            Ok(())
        }
        ("nodes", "create") if own(body_name) => Ok(()),
        ("nodes", _) => deny("a node may only read and write its own Node object"),
        ("leases", verb) if t.namespace.as_deref() == Some("kube-node-lease") => match verb {
            "get" | "update" | "patch" if own(name) => Ok(()),
            "create" if own(body_name) => Ok(()),
            _ => deny("a node may only read and write its own Lease"),
        },
        ("pods", "list" | "watch") => {
            if selected(query, "spec.nodeName").as_deref() == Some(node) {
                Ok(())
            } else {
                deny(
                    "a node may only list and watch pods with fieldSelector spec.nodeName=<itself>",
                )
            }
        }
        ("pods", "get" | "update" | "patch" | "delete")
            if matches!(t.sub, None | Some(Subresource::Status)) =>
        {
            let key = t.info.key(t.namespace.as_deref(), name.unwrap_or_default());
            let bound = api
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))?
                .is_some_and(|p| {
                    p.object.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                });
            if bound || (r.verb == "get" && !exists(api, &key).await?) {
                // A pod that is gone reads as NotFound, as it would for the node anyway.
                Ok(())
            } else {
                deny("a node may only reach pods bound to it")
            }
        }
        ("configmaps" | "secrets", "get") => {
            let (ns, name) = (t.namespace.as_deref(), name.unwrap_or_default());
            let referenced = pods_on(api, node)
                .await?
                .iter()
                .any(|p| objects::namespace(p) == ns && references(p, t.info.plural, name));
            if referenced {
                Ok(())
            } else {
                deny("no pod bound to this node references it")
            }
        }
        ("modules", "get") => {
            let digest = name.unwrap_or_default();
            if pods_on(api, node)
                .await?
                .iter()
                .any(|p| uses_module(p, digest))
            {
                Ok(())
            } else {
                deny("no pod bound to this node runs this module")
            }
        }
        ("events", "create" | "update" | "patch") => Ok(()),
        ("endpoints", "get" | "list" | "watch") => Ok(()),
        _ => deny(""),
    }
}

async fn exists(api: &ApiServer, key: &str) -> ApiResult<bool> {
    Ok(api
        .store
        .get(key)
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .is_some())
}

/// Decides whether `identity` may make this request. `body_name` is the
/// `metadata.name` of a create's body, which node credentials are checked against.
async fn authorize(
    api: &ApiServer,
    identity: &Identity,
    (method, path): (&Method, &str),
    kind: &Kind,
    query: &Query,
    body_name: Option<&str>,
) -> ApiResult<()> {
    match (identity, kind) {
        (_, Kind::Public) => Ok(()),
        (Identity::Anonymous, _) => Err(ApiError::Unauthorized),
        (Identity::Admin { .. }, _) => Ok(()),
        (Identity::Join { .. }, Kind::Join) => Ok(()),
        (Identity::Join { .. }, _) => Err(ApiError::Forbidden(format!(
            "User \"{}\" may only join: POST /skiff/v1/join",
            identity.user()
        ))),
        (_, Kind::Join) => Err(ApiError::Forbidden(format!(
            "User \"{}\" cannot join: joining takes a join token",
            identity.user()
        ))),
        (_, Kind::Discovery) if method == Method::GET => Ok(()),
        (Identity::Node { .. }, Kind::Tunnel) => Ok(()),
        (Identity::Viewer { .. }, Kind::Metrics) => Ok(()),
        (Identity::Viewer { .. }, Kind::NodeProxy) if method == Method::GET => Ok(()),
        (_, Kind::Tunnel) => Err(ApiError::Forbidden(format!(
            "User \"{}\" cannot open a tunnel: that takes a node's credential",
            identity.user()
        ))),
        (Identity::Viewer { .. }, Kind::Resource(r)) => {
            let read = matches!(r.verb, "get" | "list" | "watch");
            if !read {
                Err(forbidden(identity, r, "viewers are read-only"))
            } else if r.target.info.plural == "secrets" {
                Err(forbidden(identity, r, "viewers cannot read secrets"))
            } else {
                Ok(())
            }
        }
        (Identity::Node { name, .. }, Kind::Resource(r)) => {
            authorize_node(api, identity, name, r, query, body_name).await
        }
        (_, _) => Err(ApiError::Forbidden(format!(
            "User \"{}\" cannot {method} path \"{path}\"",
            identity.user()
        ))),
    }
}

/// A request's verb and resource as kube-apiserver labels its metrics: `LIST`,
/// `WATCH`, `GET`, `POST`, ... and the resource's plural (with its subresource);
/// non-resource requests have the HTTP method and an empty resource.
fn metric_labels(method: &Method, kind: &Kind) -> (&'static str, String) {
    let http = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    match kind {
        Kind::Resource(r) => {
            let verb = match r.verb {
                "get" => "GET",
                "list" => "LIST",
                "watch" => "WATCH",
                "create" => "POST",
                "update" => "PUT",
                "patch" => "PATCH",
                "delete" => "DELETE",
                "deletecollection" => "DELETECOLLECTION",
                _ => http,
            };
            (verb, resource_name(&r.target))
        }
        Kind::NodeProxy => (http, "nodes/proxy".into()),
        _ => (http, String::new()),
    }
}

/// The middleware in front of the whole API: it reads the request's path once, then
/// authenticates and authorizes it (a node's creates of Nodes and Leases are read
/// first, to check the name), and counts it in the metrics, refused or not.
pub async fn layer(State(api): State<SharedApi>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    // A malformed query is the handler's to refuse; here it reads as empty.
    let query = Query::parse(request.uri().query()).unwrap_or_default();
    let kind = classify(request.method(), request.uri().path(), &query);
    let (verb, resource) = metric_labels(request.method(), &kind);
    // Every request gets an id, answered in `Audit-Id` as kube-apiserver does, and a
    // span that carries it into whatever the handler logs.
    let id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        verb,
        resource = %resource,
        user = tracing::field::Empty,
    );
    let mut response = async {
        match check(&api, request, &kind, &query).await {
            Ok(request) => next.run(request).await,
            Err(e) => e.into_response(),
        }
    }
    .instrument(span)
    .await;
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("audit-id", value);
    }
    api.metrics.observe(verb, resource, started, response)
}

async fn check(
    api: &SharedApi,
    request: Request,
    kind: &Kind,
    query: &Query,
) -> ApiResult<Request> {
    let identity = authenticate(api, request.headers()).await?;
    tracing::Span::current().record("user", identity.user());
    let needs_body = matches!(identity, Identity::Node { .. })
        && request.method() == Method::POST
        && matches!(kind, Kind::Resource(r) if matches!(r.target.info.plural, "nodes" | "leases"));
    let mut request = if needs_body {
        let (parts, body) = request.into_parts();
        let bytes =
            crate::apiserver::read_body(&parts.headers, body, api.config.max_body_bytes).await?;
        let name = crate::apiserver::parse_body(&bytes)
            .ok()
            .map(|obj| objects::name(&obj).to_string());
        let request = Request::from_parts(parts, Body::from(bytes));
        let line = (request.method().clone(), request.uri().path().to_string());
        authorize(
            api,
            &identity,
            (&line.0, &line.1),
            kind,
            query,
            name.as_deref(),
        )
        .await?;
        request
    } else {
        let line = (request.method().clone(), request.uri().path().to_string());
        authorize(api, &identity, (&line.0, &line.1), kind, query, None).await?;
        request
    };
    request.extensions_mut().insert(identity);
    Ok(request)
}

/// `/cacerts` and `/skiff/v1/join`.
pub fn routes(api: SharedApi, ca_pem: String) -> Router {
    Router::new()
        .route(
            "/cacerts",
            get(move || {
                let ca = ca_pem.clone();
                async move { ([(header::CONTENT_TYPE, "application/x-pem-file")], ca) }
            }),
        )
        .route("/skiff/v1/join", post(join))
        .with_state(api)
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
        let prefix = secrets().namespace_prefix(Some(token::NAMESPACE));
        let filter = |s: &Value| {
            s.pointer(&format!("/metadata/labels/{}", token::NODE_LABEL.replace('/', "~1")))
                .and_then(Value::as_str)
                == Some(node.as_str())
        };
        let existing = api
            .store
            .list(ListRequest::all(&prefix, &filter))
            .await
            .map_err(|e| ApiError::Internal(Box::new(e)))?;
        if let Some(s) = existing.items.first() {
            let id = objects::name(&s.object).trim_start_matches("skiff-token-").to_string();
            return Err(ApiError::Forbidden(format!(
                "node {node:?} already has a credential ({id}); revoke it with `skiff token revoke {id}` to join again under this name"
            )));
        }
        let credential = Token::generate();
        let record = credential.secret_object(
            Role::Node,
            Some(&node),
            &format!("credential of node {node}, joined with token {id}"),
        );
        internal::create(&api, secrets(), Some(token::NAMESPACE), record).await?;
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
    let admin = match read_token(&data_dir.join("admin-token"))? {
        Some(t) => {
            let t = Token::parse(&t).ok_or_else(|| {
                std::io::Error::other("admin-token is not a token; delete it to make a new one")
            })?;
            let key = secrets().key(Some(token::NAMESPACE), &t.secret_name());
            if !exists(api, &key).await.map_err(other)? {
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
    match internal::create(
        api,
        secrets(),
        Some(token::NAMESPACE),
        t.secret_object(role, None, description),
    )
    .await
    {
        Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(dir: &tempfile::TempDir) -> ApiServer {
        let store = crate::store::redb::RedbStore::open(&dir.path().join("store.redb")).unwrap();
        ApiServer {
            store,
            modules: crate::apiserver::ModuleBlobs::new(dir.path().join("blobs")),
            config: Default::default(),
            shutdown: Default::default(),
            tunnels: Default::default(),
            metrics: Default::default(),
        }
    }

    /// What a node's credential may do with `method path?query`.
    async fn node_may(api: &ApiServer, method: Method, path_and_query: &str) -> bool {
        let (path, query) = path_and_query
            .split_once('?')
            .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
        let query = Query::parse(query).unwrap();
        let kind = classify(&method, path, &query);
        let node = Identity::Node {
            id: "n1id".into(),
            name: "edge-1".into(),
        };
        authorize(api, &node, (&method, path), &kind, &query, None)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn nodes_read_endpoints_to_learn_the_api_servers_but_never_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        let kubernetes = "/api/v1/namespaces/default/endpoints/kubernetes";
        assert!(node_may(&api, Method::GET, kubernetes).await);
        assert!(node_may(&api, Method::GET, "/api/v1/namespaces/default/endpoints").await);
        assert!(node_may(&api, Method::GET, "/api/v1/endpoints?watch=true").await);
        assert!(!node_may(&api, Method::PUT, kubernetes).await);
        assert!(!node_may(&api, Method::DELETE, kubernetes).await);
        assert!(
            !node_may(&api, Method::GET, "/api/v1/namespaces/default/services").await,
            "endpoints only"
        );
    }

    #[test]
    fn field_selectors_are_read_as_kubernetes_writes_them() {
        let selected =
            |query: &str, field: &str| selected(&Query::parse(Some(query)).unwrap(), field);
        assert_eq!(
            selected(
                "watch=1&fieldSelector=spec.nodeName%3Dedge-1",
                "spec.nodeName"
            )
            .as_deref(),
            Some("edge-1")
        );
        assert_eq!(
            selected("fieldSelector=metadata.name==n1,spec.x=y", "metadata.name").as_deref(),
            Some("n1")
        );
        assert_eq!(
            selected("fieldSelector=spec.nodeName!%3Dx", "spec.nodeName"),
            None
        );
        assert_eq!(selected("limit=5", "spec.nodeName"), None);
    }

    #[test]
    fn pods_reference_configmaps_and_secrets_every_way() {
        let pod = json!({"spec": {
            "volumes": [
                {"name": "a", "configMap": {"name": "cm-vol"}},
                {"name": "b", "secret": {"secretName": "s-vol"}},
                {"name": "c", "projected": {"sources": [{"secret": {"name": "s-proj"}}]}},
            ],
            "containers": [{"name": "c", "image": "sha256:abc",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}}],
                "envFrom": [{"configMapRef": {"name": "cm-from"}}]}],
        }});
        for (kind, name) in [
            ("configmaps", "cm-vol"),
            ("configmaps", "cm-from"),
            ("secrets", "s-vol"),
            ("secrets", "s-proj"),
            ("secrets", "s-env"),
        ] {
            assert!(references(&pod, kind, name), "{kind}/{name}");
        }
        assert!(!references(&pod, "secrets", "cm-vol"));
        assert!(!references(&pod, "configmaps", "other"));
        assert!(uses_module(&pod, "sha256:abc") && !uses_module(&pod, "sha256:def"));
    }
}
