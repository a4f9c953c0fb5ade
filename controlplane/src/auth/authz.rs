//! Authorization: what each identity may do with a request (see the rules in
//! `auth/mod.rs`), and the middleware in front of the whole API that authenticates,
//! authorizes and counts every request.

use std::sync::Arc;
use tracing::Instrument;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use skiff_api::resources::Subresource;
use skiff_api::selector::{FieldOp, FieldSelector};

use super::authn::{Identity, authenticate, exists};
use super::rbac::Attributes;
use crate::apiserver::{Query, Target, parse_target};
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::state::{ApiServer, SharedApi};
use crate::store::ListRequest;

/// What a request path is.
enum Kind {
    /// Health, version and the CA: anyone.
    Public,
    /// Discovery, OpenAPI and the service-account issuer's OIDC documents: plain paths,
    /// which RBAC's default roles let every authenticated identity read.
    Discovery,
    Join,
    /// An agent's reverse tunnel: its own node credential only.
    Tunnel,
    /// The server's own metrics: admin and viewer.
    Metrics,
    /// `nodes/NAME/proxy/...`, to the agent through its tunnel: admin, and viewer reads.
    NodeProxy,
    /// A path under `/api/v1` or `/apis/GROUP/VERSION` that is not a served kind: the
    /// resource and custom metrics APIs, the review APIs (`selfsubjectaccessreviews`),
    /// or nothing (authorized all the same, then answered 404, as kube-apiserver does).
    Virtual(Attributes),
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
        // The dashboard's static files: it signs in to the API like any other client.
        ["ui", ..] => return Kind::Public,
        ["skiff", "v1", "join"] => return Kind::Join,
        ["skiff", "v1", "tunnel"] => return Kind::Tunnel,
        ["metrics"] => return Kind::Metrics,
        ["api", "v1", "nodes", _, "proxy", ..] => return Kind::NodeProxy,
        // The token issuer's documents: plain paths, for RBAC's
        // system:service-account-issuer-discovery.
        [".well-known", "openid-configuration"] | ["openid", "v1", "jwks"] => {
            return Kind::Discovery;
        }
        ["openapi", ..] | ["api"] | ["apis"] | ["api", _] | ["apis", _] | ["apis", _, _] => {
            return Kind::Discovery;
        }
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Kind::Other,
    };
    // The API's own reading of the path, so both agree on what a request touches.
    let Ok(target) = parse_target(group, version, &rest.join("/")) else {
        return Kind::Virtual(virtual_attributes(method, query, group, rest));
    };
    let verb = resource_verb(method, query, target.name.is_some());
    Kind::Resource(Resource { target, verb })
}

/// The verb RBAC names a request on a resource by.
fn resource_verb(method: &Method, query: &Query, named: bool) -> &'static str {
    match (method, named) {
        (&Method::GET | &Method::HEAD, _) if query.flag("watch") => "watch",
        (&Method::GET | &Method::HEAD, true) => "get",
        (&Method::GET | &Method::HEAD, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

/// A resource path that names no served kind, read as Kubernetes' request-info
/// resolver reads every path: `[namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]`.
fn virtual_attributes(method: &Method, query: &Query, group: &str, rest: &[&str]) -> Attributes {
    let (namespace, rest) = match rest {
        ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(ns.to_string()), more),
        _ => (None, rest),
    };
    let part = |i: usize| rest.get(i).map(|s| s.to_string());
    let name = part(1);
    Attributes::Resource {
        verb: resource_verb(method, query, name.is_some()).into(),
        namespace,
        group: group.into(),
        resource: part(0).unwrap_or_default(),
        subresource: part(2),
        name,
    }
}

/// The verb RBAC names a request for a plain path by: the method, lower-cased.
fn path_verb(method: &Method) -> String {
    method.as_str().to_ascii_lowercase()
}

impl Resource {
    fn attributes(&self) -> Attributes {
        let t = &self.target;
        Attributes::Resource {
            verb: self.verb.into(),
            namespace: t.namespace.clone(),
            group: t.info.group.into(),
            resource: t.info.plural.into(),
            subresource: t.sub.map(|s| s.name().to_string()),
            name: t.name.clone(),
        }
    }
}

/// What a request is, as RBAC reads it.
fn attributes(method: &Method, path: &str, kind: &Kind) -> Attributes {
    match kind {
        Kind::Resource(r) => r.attributes(),
        Kind::Virtual(attrs) => attrs.clone(),
        Kind::NodeProxy => {
            let name = path.split('/').nth(4).map(str::to_string);
            Attributes::Resource {
                verb: resource_verb(method, &Query::default(), true).into(),
                namespace: None,
                group: String::new(),
                resource: "nodes".into(),
                subresource: Some("proxy".into()),
                name,
            }
        }
        _ => Attributes::NonResource {
            verb: path_verb(method),
            path: path.to_string(),
        },
    }
}

/// Kubernetes' words for an RBAC refusal.
fn refusal(user: &str, attrs: &Attributes) -> String {
    match attrs {
        Attributes::NonResource { verb, path } => {
            format!("forbidden: User \"{user}\" cannot {verb} path \"{path}\"")
        }
        Attributes::Resource {
            verb,
            namespace,
            group,
            resource,
            subresource,
            name,
        } => {
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let subject = match name {
                Some(n) => format!("{qualified} \"{n}\""),
                None => qualified,
            };
            let full = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".into(),
            };
            format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{full}\" in API group \"{group}\" {scope}"
            )
        }
    }
}

/// Whether RBAC allows `identity` what `attrs` asks; the refusal in Kubernetes' words.
pub(super) fn rbac_check(
    api: &ApiServer,
    identity: &Identity,
    attrs: &Attributes,
) -> ApiResult<()> {
    match api.rbac.authorize(&identity.subject(), attrs) {
        Some(_) => Ok(()),
        None => Err(ApiError::Forbidden(refusal(&identity.user(), attrs))),
    }
}

/// `pods` or `pods/status`.
fn resource_name(t: &Target) -> String {
    match t.sub {
        Some(sub) => format!("{}/{}", t.info.plural, sub.name()),
        None => t.info.plural.to_string(),
    }
}

/// The Node authorizer's refusal: RBAC's words, and why.
fn forbidden(identity: &Identity, r: &Resource, why: &str) -> ApiError {
    let mut message = refusal(&identity.user(), &r.attributes());
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

/// The pods the Node authorizer reads, from a cache of every pod that each server keeps,
/// as kube-apiserver's node authorizer keeps its graph from informers. Without it, each
/// such check read and parsed every pod in the store: a pod's start asks for its
/// ServiceAccount, so starting N pods cost O(N²), and 1,000 pods started at a tenth
/// of the rate the agent could.
#[derive(Default)]
pub struct NodePods {
    pods: std::sync::OnceLock<Arc<crate::informer::Cache>>,
}

impl NodePods {
    /// Follows the pods from `informers` (for as long as they run).
    pub fn follow(&self, informers: &crate::informer::Informers) {
        let _ = self.pods.set(informers.cache("", "pods"));
    }
}

/// Whether a pod bound to `node` satisfies `wanted`. The cache answers yes at once; a
/// no is checked against the store, which the cache may lag by a moment (a pod just
/// bound is never refused for that), and which answers alone until the cache is listed.
async fn any_pod_on(
    api: &ApiServer,
    node: &str,
    wanted: impl Fn(&Value) -> bool + Sync,
) -> ApiResult<bool> {
    let bound_here = |p: &Value| p["spec"]["nodeName"].as_str() == Some(node);
    if let Some(cache) = api.node_pods.pods.get()
        && cache.is_synced()
        && cache.any(|p| bound_here(p) && wanted(p))
    {
        return Ok(true);
    }
    let pods = crate::kinds::lookup("", "v1", "pods").expect("pods are served");
    let prefix = pods.prefix();
    let filter = |p: &Value| bound_here(p) && wanted(p);
    let page = api
        .store
        .list(ListRequest {
            limit: 1,
            ..ListRequest::all(&prefix, &filter)
        })
        .await
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    Ok(!page.items.is_empty())
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
    // A pull secret is the node's to read, as Kubernetes' node authorizer allows: the
    // agent authenticates to the registry with it.
    let pull_secret = kind == "secrets"
        && spec
            .get("imagePullSecrets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|s| is(&s["name"]));
    in_volumes
        || pull_secret
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
            let referenced = any_pod_on(api, node, |p| {
                objects::namespace(p) == ns && references(p, t.info.plural, name)
            })
            .await?;
            if referenced {
                Ok(())
            } else {
                deny("no pod bound to this node references it")
            }
        }
        // The claims of its pods, and their volumes, as Kubernetes' node authorizer
        // allows: the agent mounts them.
        ("persistentvolumeclaims", "get") => {
            let (ns, name) = (t.namespace.as_deref(), name.unwrap_or_default());
            let referenced = any_pod_on(api, node, |p| {
                objects::namespace(p) == ns
                    && crate::controllers::volume::claim_names(p)
                        .iter()
                        .any(|c| c == name)
            })
            .await?;
            if referenced {
                Ok(())
            } else {
                deny("no pod bound to this node uses this claim")
            }
        }
        ("persistentvolumes", "get") => {
            let key = t.info.key(None, name.unwrap_or_default());
            let Some(pv) = api
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::Internal(Box::new(e)))?
            else {
                // A volume that is gone reads as NotFound: the agent then removes its
                // directory.
                return Ok(());
            };
            let pinned_here = pv
                .object
                .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|t| {
                    t["matchExpressions"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .any(|e| {
                    e["key"] == "kubernetes.io/hostname"
                        && e["values"]
                            .as_array()
                            .is_some_and(|v| v.iter().any(|v| v == node))
                });
            let claim = pv.object.pointer("/spec/claimRef");
            let claimed_here = match claim {
                Some(c) => {
                    let (ns, claim) = (
                        c["namespace"].as_str(),
                        c["name"].as_str().unwrap_or_default(),
                    );
                    any_pod_on(api, node, |p| {
                        objects::namespace(p) == ns
                            && crate::controllers::volume::claim_names(p)
                                .iter()
                                .any(|c| c == claim)
                    })
                    .await?
                }
                None => false,
            };
            if pinned_here || claimed_here {
                Ok(())
            } else {
                deny("no pod bound to this node uses this volume")
            }
        }
        ("modules", "get") => {
            let digest = name.unwrap_or_default();
            if any_pod_on(api, node, |p| uses_module(p, digest)).await? {
                Ok(())
            } else {
                deny("no pod bound to this node runs this module")
            }
        }
        // Tokens of the ServiceAccounts its pods run as, as Kubernetes' node authorizer
        // allows. The TokenRequest handler (`tokenrequest.rs`) refuses a node any token
        // that is not bound to a pod bound to it and running as that account, as
        // NodeRestriction does, which implies this check; it is made there, on the one
        // pod named, rather than here on every pod of the node, as pods start often.
        ("serviceaccounts", "create") if t.sub == Some(Subresource::Token) => Ok(()),
        // The ServiceAccounts its pods run as (whether to mount their tokens).
        ("serviceaccounts", "get") if t.sub.is_none() => {
            let (ns, name) = (t.namespace.as_deref(), name.unwrap_or_default());
            let runs_here = any_pod_on(api, node, |p| {
                objects::namespace(p) == ns
                    && p.pointer("/spec/serviceAccountName")
                        .and_then(Value::as_str)
                        .unwrap_or(crate::kinds::serviceaccount::DEFAULT)
                        == name
            })
            .await?;
            if runs_here {
                Ok(())
            } else {
                deny("no pod bound to this node runs as this service account")
            }
        }
        ("events", "create" | "update" | "patch") => Ok(()),
        ("endpoints", "get" | "list" | "watch") => Ok(()),
        _ => deny(""),
    }
}

/// Decides whether `identity` may make this request, as kube-apiserver with
/// `--authorization-mode=Node,RBAC`: a node's credential is decided by the Node
/// authorizer, everyone else by RBAC (`rbac.rs`; admin tokens are `system:masters`).
/// `body_name` is the `metadata.name` of a create's body, which node credentials are
/// checked against.
async fn authorize(
    api: &ApiServer,
    identity: &Identity,
    (method, path): (&Method, &str),
    kind: &Kind,
    query: &Query,
    body_name: Option<&str>,
) -> ApiResult<()> {
    match (identity, kind) {
        (_, Kind::Public) => return Ok(()),
        (Identity::Anonymous, _) => return Err(ApiError::Unauthorized),
        (Identity::Join { .. }, Kind::Join) => return Ok(()),
        (Identity::Join { .. }, _) => {
            return Err(ApiError::Forbidden(format!(
                "User \"{}\" may only join: POST /skiff/v1/join",
                identity.user()
            )));
        }
        (_, Kind::Join) => {
            return Err(ApiError::Forbidden(format!(
                "User \"{}\" cannot join: joining takes a join token",
                identity.user()
            )));
        }
        (Identity::Node { .. }, Kind::Tunnel) => return Ok(()),
        (_, Kind::Tunnel) => {
            return Err(ApiError::Forbidden(format!(
                "User \"{}\" cannot open a tunnel: that takes a node's credential",
                identity.user()
            )));
        }
        (Identity::Node { name, .. }, Kind::Resource(r)) => {
            return authorize_node(api, identity, name, r, query, body_name).await;
        }
        _ => {}
    }
    let attrs = attributes(method, path, kind);
    // As Kubernetes' view role: reaching into pods is not reading, whatever a rule says
    // of `pods/portforward` with `get` (port-forward upgrades a GET).
    let attrs = match (&attrs, kind) {
        (Attributes::Resource { .. }, Kind::Resource(r))
            if r.target.sub == Some(Subresource::PortForward) =>
        {
            let mut a = attrs.clone();
            if let Attributes::Resource { verb, .. } = &mut a {
                *verb = "create".into();
            }
            a
        }
        _ => attrs,
    };
    rbac_check(api, identity, &attrs)
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
    let identity = impersonate(api, identity, request.headers())?;
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

/// Whether `identity` may also create what a PATCH names: a server-side apply creates
/// a missing object, and Kubernetes then checks `create` as well as `patch`. A node's
/// patches reach only what the Node authorizer let it patch, which is its own.
pub(crate) fn may_create(
    api: &ApiServer,
    identity: &Identity,
    target: &crate::apiserver::Target,
) -> ApiResult<()> {
    if matches!(identity, Identity::Node { .. }) {
        return Ok(());
    }
    let attrs = Attributes::Resource {
        verb: "create".into(),
        namespace: target.namespace.clone(),
        group: target.info.group.into(),
        resource: target.info.plural.into(),
        subresource: None,
        name: None,
    };
    rbac_check(api, identity, &attrs)
}

/// The identity a request acts as: the authenticated one, or, with `Impersonate-User`
/// (and `Impersonate-Group`, `Impersonate-Uid`, `Impersonate-Extra-*`) headers, the one
/// they name, if RBAC grants the authenticated identity the `impersonate` verb on each
/// (`users`, `groups`, `serviceaccounts`, `uids` and `userextras/KEY` of
/// authentication.k8s.io), as kube-apiserver's impersonation filter does. A node's name
/// and groups impersonate the node (the Node authorizer decides for it).
fn impersonate(
    api: &ApiServer,
    identity: Identity,
    headers: &http::HeaderMap,
) -> ApiResult<Identity> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let users = values("impersonate-user");
    let groups = values("impersonate-group");
    let uids = values("impersonate-uid");
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    if users.is_empty() {
        if groups.is_empty() && uids.is_empty() && extras.is_empty() {
            return Ok(identity);
        }
        return Err(ApiError::BadRequest(
            "impersonating groups, a uid or extra fields needs Impersonate-User too".into(),
        ));
    }
    if users.len() > 1 || uids.len() > 1 {
        return Err(ApiError::BadRequest(
            "only one Impersonate-User and one Impersonate-Uid may be given".into(),
        ));
    }
    let user = users[0].clone();
    let check = |attrs: Attributes| rbac_check(api, &identity, &attrs);
    let impersonation =
        |group: &str, resource: &str, sub: Option<&str>, namespace: Option<&str>, name: &str| {
            Attributes::Resource {
                verb: "impersonate".into(),
                namespace: namespace.map(str::to_string),
                group: group.into(),
                resource: resource.into(),
                subresource: sub.map(str::to_string),
                name: Some(name.into()),
            }
        };
    let service_account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    match service_account {
        Some((ns, name)) => check(impersonation("", "serviceaccounts", None, Some(ns), name))?,
        None => check(impersonation("", "users", None, None, &user))?,
    }
    for group in &groups {
        check(impersonation("", "groups", None, None, group))?;
    }
    for uid in &uids {
        check(impersonation(
            "authentication.k8s.io",
            "uids",
            None,
            None,
            uid,
        ))?;
    }
    for (key, value) in &extras {
        check(impersonation(
            "authentication.k8s.io",
            "userextras",
            Some(key),
            None,
            value,
        ))?;
    }
    let mut groups = groups;
    if let Some((ns, _)) = service_account {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    tracing::debug!(by = %identity.user(), as_user = %user, ?groups, "impersonating");
    let node = user
        .strip_prefix("system:node:")
        .filter(|_| groups.iter().any(|g| g == "system:nodes"));
    Ok(match node {
        Some(name) => Identity::Node {
            id: format!("impersonated-by:{}", identity.user()),
            name: name.to_string(),
        },
        None => Identity::User {
            id: format!("impersonated-by:{}", identity.user()),
            name: user,
            groups,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(dir: &tempfile::TempDir) -> ApiServer {
        ApiServer::on_redb_for_tests(dir.path())
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

    #[tokio::test]
    async fn service_accounts_are_granted_only_what_rbac_grants_them() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        // RBAC reads the default roles (which the test server wrote) from its caches.
        let stop = tokio_util::sync::CancellationToken::new();
        let informers = crate::informer::SharedInformers::new(api.store.clone(), stop.clone());
        let scope = informers.scope(stop.clone());
        assert!(api.rbac.follow(&scope).await);
        let account = Identity::ServiceAccount {
            namespace: "team".into(),
            name: "default".into(),
            uid: "u1".into(),
            pod: None,
        };
        let may = |identity: Identity, method: Method, path: &'static str| {
            let api = &api;
            async move {
                let query = Query::default();
                let kind = classify(&method, path, &query);
                authorize(api, &identity, (&method, path), &kind, &query, None).await
            }
        };
        for (method, path, allowed) in [
            (Method::GET, "/.well-known/openid-configuration", true),
            (Method::GET, "/openid/v1/jwks", true),
            (Method::GET, "/apis", true),
            (
                Method::POST,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                true,
            ),
            (
                Method::POST,
                "/apis/authentication.k8s.io/v1/tokenreviews",
                false,
            ),
            (Method::GET, "/api/v1/namespaces/team/pods", false),
            (
                Method::POST,
                "/api/v1/namespaces/team/serviceaccounts/default/token",
                false,
            ),
        ] {
            let result = may(account.clone(), method.clone(), path).await;
            assert_eq!(result.is_ok(), allowed, "{method} {path}: {result:?}");
            if !allowed {
                assert!(matches!(result, Err(ApiError::Forbidden(_))), "{path}");
            }
        }
        assert!(matches!(
            may(Identity::Anonymous, Method::GET, "/openid/v1/jwks").await,
            Err(ApiError::Unauthorized)
        ));
        let viewer = Identity::Viewer { id: "v".into() };
        assert!(
            may(
                viewer,
                Method::POST,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews"
            )
            .await
            .is_ok()
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn a_node_reaches_what_its_pods_use_whether_or_not_the_pod_cache_caught_up() {
        use crate::store::WriteOp;
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        let stop = tokio_util::sync::CancellationToken::new();
        let informers = crate::informer::SharedInformers::new(api.store.clone(), stop.clone());
        let scope = informers.scope(stop.clone());
        api.node_pods.follow(&scope);
        let cache = api.node_pods.pods.get().unwrap().clone();
        assert!(scope.synced(&[&cache]).await);
        let pods = crate::kinds::lookup("", "v1", "pods").unwrap();
        let pod = |name: &str, node: &str, account: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "default"},
                   "spec": {"nodeName": node, "serviceAccountName": account,
                            "containers": [{"name": "c", "image": "m.wasm"}]}})
        };
        let write = |name: &str, object: Value| WriteOp::Create {
            key: pods.key(Some("default"), name),
            object,
            guard: None,
        };
        api.store
            .write(write("mine", pod("mine", "edge-1", "robot")))
            .await
            .unwrap();
        api.store
            .write(write("theirs", pod("theirs", "edge-2", "other")))
            .await
            .unwrap();
        let account = |name: &str| format!("/api/v1/namespaces/default/serviceaccounts/{name}");
        // Whether or not the cache has the pods yet, the store answers for them.
        assert!(node_may(&api, Method::GET, &account("robot")).await);
        assert!(!node_may(&api, Method::GET, &account("other")).await);
        // Once it has them, the cache answers (the pod on edge-2 still gives nothing).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cache.get(&pods.key(Some("default"), "theirs")).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never saw the pods"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(node_may(&api, Method::GET, &account("robot")).await);
        assert!(!node_may(&api, Method::GET, &account("other")).await);
        assert!(!node_may(&api, Method::GET, &account("nobody")).await);
        // A pod that is gone grants nothing, once the cache has seen it go.
        api.store
            .write(WriteOp::Delete {
                key: pods.key(Some("default"), "mine"),
                expected_rev: None,
            })
            .await
            .unwrap();
        while cache.get(&pods.key(Some("default"), "mine")).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never saw it go"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!node_may(&api, Method::GET, &account("robot")).await);
        stop.cancel();
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
            "imagePullSecrets": [{"name": "s-pull"}],
        }});
        for (kind, name) in [
            ("configmaps", "cm-vol"),
            ("configmaps", "cm-from"),
            ("secrets", "s-vol"),
            ("secrets", "s-proj"),
            ("secrets", "s-env"),
            ("secrets", "s-pull"),
        ] {
            assert!(references(&pod, kind, name), "{kind}/{name}");
        }
        assert!(!references(&pod, "secrets", "cm-vol"));
        assert!(!references(&pod, "configmaps", "other"));
        // A pull secret is a Secret's name only.
        assert!(!references(&pod, "configmaps", "s-pull"));
        assert!(uses_module(&pod, "sha256:abc") && !uses_module(&pod, "sha256:def"));
    }
}
