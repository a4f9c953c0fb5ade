//! The HTTP gateway (`skiff server --gateway HOST:PORT`): routes each request by Host and
//! path to the ready endpoints of a Service (every App has one), across nodes.
//!
//! Before its own routes, the gateway routes by the rules of the HTTPRoutes attached
//! to its Gateways (`crate::httproute`), then by the rules of its Ingresses
//! (`crate::ingress`); an Ingress `defaultBackend` comes after all of them.
//!
//! Its own routes, most specific first:
//! 1. the Service's own routes, from its `skiff.dev/routes` annotation (a Host and/or a
//!    path prefix; the App controller writes the App's route there);
//! 2. Host `NAME.NAMESPACE.localhost` (browsers resolve `*.localhost` to loopback with
//!    no DNS set-up);
//! 3. path prefix `/NAMESPACE/NAME/`, which works with no Host header at all.
//!
//! A route with a path prefix (3., and a Service's own routes that have one) gives the
//! app its own paths: the prefix is stripped (`/NS/NAME/x?q` reaches the app as `/x?q`,
//! `/NS/NAME` as `/`) and named in `X-Forwarded-Prefix: /NS/NAME`, as Traefik's
//! StripPrefix does; a Host route passes the path unchanged. `X-Forwarded-Host` and
//! `X-Forwarded-Proto` are added unless a proxy in front set them.
//!
//! A request goes to the next ready endpoint, round-robin, of the Service's
//! EndpointSlice: to the agent of the endpoint's node, with the chosen pod in
//! `x-skiff-pod` (so the agent needs no route of its own to find it). If the connection fails before anything is sent, or the agent answers
//! that it doesn't serve that pod (any more), the next endpoint is tried; so is an
//! idempotent request whose replica failed before answering (its agent died with the
//! request in flight). A request no replica could take waits a while for a tunnel to
//! open (agents reconnect after this server restarts), then gets 502. No endpoint
//! ready: 503 naming the app; no route: 404.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::controllers::endpointslice::slice_name;
use crate::informer::{Cache, Informers, SharedInformers};
use crate::objects;

use skiff_api::gatewayapi::GROUP as GATEWAY_GROUP;
use skiff_api::routes::{POD_HEADER, ROUTES_ANNOTATION, Route, UNSERVED_HEADER};
/// Bodies up to this size are buffered so the request can be retried on another
/// endpoint; larger ones stream through, tried once.
const MAX_BUFFERED_BODY: u64 = 1024 * 1024;
/// How long a request no replica could take waits for a tunnel to open before 502.
const TUNNEL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request to an App scaled to zero is held for a replica to start.
const COLD_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How many requests one App scaled to zero may have held at once; more get 503.
const MAX_HELD: usize = 10_000;
/// While requests are held: how often the App is woken again (a wake lost to a failed
/// write or undone by a scale to zero is made again), and after how long a replica
/// that refused a held request (it was stopping, or not yet served after its agent
/// restarted) is tried again.
const HOLD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// The response header that says a request waited for a replica to start, and how
/// long (milliseconds).
pub const COLD_START_HEADER: &str = "x-skiff-cold-start";

type GatewayBody = http_body_util::combinators::UnsyncBoxBody<Bytes, axum::Error>;

/// One route to a Service, from its routes annotation.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub route: Route,
    pub namespace: String,
    pub service: String,
}

/// What the gateway routes by, built from its caches and rebuilt (by the first
/// request that finds one of them changed) only when they change: so a request
/// routes without formatting store keys, parsing objects or allocating.
#[derive(Default)]
struct Snapshot {
    /// The versions of the services, endpointslices, nodes, ingresses,
    /// ingressclasses, gatewayclasses, gateways and httproutes caches it was built
    /// from; None before the first build.
    versions: Option<[u64; 8]>,
    /// Routes from the Services' routes annotations.
    routes: Vec<RouteEntry>,
    /// Routes of the Ingresses the gateway serves.
    ingress: crate::ingress::IngressRoutes,
    /// Routes of the HTTPRoutes attached to the gateway's Gateways.
    httproutes: crate::httproute::HttpRoutes,
    /// Every Service, by namespace and name.
    services: HashMap<String, HashMap<String, Arc<Backend>>>,
}

impl Snapshot {
    fn backend(&self, namespace: &str, name: &str) -> Option<&Arc<Backend>> {
        self.services.get(namespace)?.get(name)
    }
}

/// A Service and what a request to it needs.
struct Backend {
    /// Its ready endpoints, in the order of its EndpointSlice.
    endpoints: Vec<Endpoint>,
    /// Where its round-robin is; kept across rebuilds.
    next: Arc<AtomicUsize>,
    /// Its request series, resolved on its first request (so an app with no traffic
    /// through the gateway has none) and kept across rebuilds.
    series: Arc<OnceLock<Arc<skiff_api::metrics::AppSeries>>>,
    /// Whether a request that finds no ready replica is held while one starts (an App
    /// that scales to zero: its Service has the scale-from-zero annotation).
    hold: bool,
    /// Requests held now; kept across rebuilds.
    held: Arc<AtomicUsize>,
    /// When a held request last woke the App (ms since the gateway's epoch; 0 never),
    /// so the held requests of an App wake it once per [`HOLD_RETRY`], not each.
    woke: Arc<std::sync::atomic::AtomicU64>,
}

pub struct Gateway {
    services: Arc<Cache>,
    slices: Arc<Cache>,
    nodes: Arc<Cache>,
    ingresses: Arc<Cache>,
    classes: Arc<Cache>,
    gateway_classes: Arc<Cache>,
    gateways: Arc<Cache>,
    httproutes: Arc<Cache>,
    client: Client<HttpConnector, GatewayBody>,
    tunnels: Arc<crate::tunnel::Tunnels>,
    snapshot: RwLock<Arc<Snapshot>>,
    metrics: skiff_api::metrics::AppRequests,
    /// Where a held request wakes its App (scales its Deployment from zero), and where
    /// the hold is measured; None in tests without a server.
    waker: Option<Arc<crate::state::ApiServer>>,
    /// The origin of `Backend::woke`.
    epoch: std::time::Instant,
}

impl Gateway {
    /// Reads the caches the gateway routes from out of `informers`.
    pub fn new(
        informers: &Informers,
        tunnels: Arc<crate::tunnel::Tunnels>,
        metrics: skiff_api::metrics::AppRequests,
        waker: Option<Arc<crate::state::ApiServer>>,
    ) -> Arc<Gateway> {
        let mut connector = HttpConnector::new();
        // Without TCP_NODELAY, small responses wait out delayed ACKs (~40 ms).
        connector.set_nodelay(true);
        Arc::new(Gateway {
            services: informers.cache("", "services"),
            slices: informers.cache("discovery.k8s.io", "endpointslices"),
            nodes: informers.cache("", "nodes"),
            ingresses: informers.cache("networking.k8s.io", "ingresses"),
            classes: informers.cache("networking.k8s.io", "ingressclasses"),
            gateway_classes: informers.cache(GATEWAY_GROUP, "gatewayclasses"),
            gateways: informers.cache(GATEWAY_GROUP, "gateways"),
            httproutes: informers.cache(GATEWAY_GROUP, "httproutes"),
            client: Client::builder(TokioExecutor::new()).build(connector),
            tunnels,
            snapshot: RwLock::default(),
            metrics,
            waker,
            epoch: std::time::Instant::now(),
        })
    }

    /// The routing state as the caches hold it now.
    fn snapshot(&self) -> Arc<Snapshot> {
        // Read before the caches are, so a change made while building is not missed:
        // it bumps a version past these, and the next request builds again.
        let versions = [
            self.services.version(),
            self.slices.version(),
            self.nodes.version(),
            self.ingresses.version(),
            self.classes.version(),
            self.gateway_classes.version(),
            self.gateways.version(),
            self.httproutes.version(),
        ];
        {
            let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            if snapshot.versions == Some(versions) {
                return snapshot.clone();
            }
        }
        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        if snapshot.versions != Some(versions) {
            *snapshot = Arc::new(self.build(versions, &snapshot));
        }
        snapshot.clone()
    }

    /// The routing state from the caches, keeping `old`'s round-robin positions and
    /// request series.
    fn build(&self, versions: [u64; 8], old: &Snapshot) -> Snapshot {
        let slice_kind = crate::kinds::lookup("discovery.k8s.io", "v1", "endpointslices")
            .expect("endpointslices are served");
        let node_kind = crate::kinds::lookup("", "v1", "nodes").expect("nodes are served");
        let mut addresses: HashMap<String, Option<Option<String>>> = HashMap::new();
        let mut routes = Vec::new();
        let mut services: HashMap<String, HashMap<String, Arc<Backend>>> = HashMap::new();
        for svc in self.services.snapshot() {
            let namespace = objects::namespace(&svc).unwrap_or_default();
            let name = objects::name(&svc);
            if let Some(list) = svc
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(ROUTES_ANNOTATION))
                .and_then(Value::as_str)
            {
                for route in Route::parse_list(list) {
                    routes.push(RouteEntry {
                        route,
                        namespace: namespace.to_string(),
                        service: name.to_string(),
                    });
                }
            }
            let slice = self
                .slices
                .get(&slice_kind.key(Some(namespace), &slice_name(name)));
            let endpoints = slice
                .as_ref()
                .and_then(|s| s.get("endpoints"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|e| e.pointer("/conditions/ready") == Some(&Value::Bool(true)))
                .filter_map(|e| {
                    let pod = e.pointer("/targetRef/name")?.as_str()?;
                    let node = e.get("nodeName")?.as_str()?;
                    // A node not (yet) in the cache has no endpoint here.
                    let address = addresses
                        .entry(node.to_string())
                        .or_insert_with(|| {
                            let node = self.nodes.get(&node_kind.key(None, node))?;
                            Some(objects::agent_address(&node))
                        })
                        .clone()?;
                    Some(Endpoint {
                        pod: HeaderValue::from_str(&format!("{namespace}/{pod}")).ok()?,
                        node: node.to_string(),
                        address,
                    })
                })
                .collect();
            let before = old.backend(namespace, name);
            let hold = svc
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(skiff_api::app::SCALE_FROM_ZERO_ANNOTATION))
                .and_then(Value::as_str)
                == Some("true");
            services.entry(namespace.to_string()).or_default().insert(
                name.to_string(),
                Arc::new(Backend {
                    endpoints,
                    next: before.map(|b| b.next.clone()).unwrap_or_default(),
                    series: before.map(|b| b.series.clone()).unwrap_or_default(),
                    hold,
                    held: before.map(|b| b.held.clone()).unwrap_or_default(),
                    woke: before.map(|b| b.woke.clone()).unwrap_or_default(),
                }),
            );
        }
        let service_kind = crate::kinds::lookup("", "v1", "services").expect("services are served");
        let ingress = crate::ingress::IngressRoutes::build(
            &self.ingresses.snapshot(),
            &crate::ingress::our_classes(&self.classes.snapshot()),
            &|namespace, name| self.services.get(&service_kind.key(Some(namespace), name)),
        );
        let httproutes = crate::httproute::HttpRoutes::build(
            &self.gateways.snapshot(),
            &self.httproutes.snapshot(),
            &crate::httproute::our_classes(&self.gateway_classes.snapshot()),
            &|namespace, name| self.services.get(&service_kind.key(Some(namespace), name)),
        );
        Snapshot {
            versions: Some(versions),
            routes,
            services,
            ingress,
            httproutes,
        }
    }
}

impl Gateway {
    /// Holds a request for an App with no replica to take it (scaled to zero, or its
    /// last replicas stopping) until one is ready: held requests wake the App (its
    /// Deployment goes from 0 to 1 replica), again every [`HOLD_RETRY`] while they wait,
    /// and each is sent on as soon as a ready replica other than those in `refused` is
    /// routed, or, after [`HOLD_RETRY`], to those too (a replica that was not served
    /// for a moment). Bounded: at most [`MAX_HELD`] requests wait, each until
    /// `deadline` (its arrival plus [`COLD_START_TIMEOUT`]); past either, 503 says so.
    async fn wake(
        &self,
        (namespace, service, pod): (&str, &str, Option<&str>),
        refused: &[String],
        deadline: tokio::time::Instant,
    ) -> Result<Arc<Backend>, Response> {
        let Some(api) = &self.waker else {
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app {namespace}/{service} has no ready replica"),
            ));
        };
        let usable = |b: &Backend| {
            b.endpoints
                .iter()
                .any(|e| !refused.iter().any(|r| r == e.pod()))
        };
        let mut changed = self.slices.subscribe();
        let backend = |gw: &Gateway| {
            gw.snapshot()
                .backend(namespace, service)
                .cloned()
                .map(|b| narrow(b, namespace, pod))
        };
        let Some(first) = backend(self) else {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("app {namespace}/{service} is gone"),
            ));
        };
        let held = first.held.clone();
        let before = held.fetch_add(1, Ordering::AcqRel);
        let _release = scopeguard_release(held.clone());
        if before >= MAX_HELD {
            return Err(text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "app {namespace}/{service} is starting and {before} requests already wait for it"
                ),
            ));
        }
        let retry_refused = tokio::time::Instant::now() + HOLD_RETRY;
        // The first request held, and one its replicas refused, wake the App at once;
        // while requests wait, it is woken again at most once per HOLD_RETRY.
        if before == 0 || !refused.is_empty() {
            first.woke.store(self.now_ms(), Ordering::Release);
            wake_app(api, namespace, service).await;
        }
        loop {
            changed.borrow_and_update();
            if let Some(b) = backend(self).filter(|b| usable(b)) {
                return Ok(b);
            }
            if tokio::time::Instant::now() >= retry_refused
                && let Some(b) = backend(self).filter(|b| !b.endpoints.is_empty())
            {
                return Ok(b);
            }
            let next_look = (tokio::time::Instant::now() + HOLD_RETRY).min(deadline);
            match tokio::time::timeout_at(next_look, changed.changed()).await {
                Ok(Ok(())) => {}
                Err(_) if tokio::time::Instant::now() < deadline => {
                    self.wake_at_most_every(api, &first.woke, namespace, service)
                        .await;
                }
                Ok(Err(_)) => {
                    return Err(text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the gateway is shutting down".into(),
                    ));
                }
                Err(_) => {
                    return Err(text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "app {namespace}/{service} was scaled to zero and no replica became ready within {}s",
                            COLD_START_TIMEOUT.as_secs()
                        ),
                    ));
                }
            }
        }
    }

    /// Milliseconds since the gateway started (never 0), for `Backend::woke`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Wakes the App unless one of its held requests did within [`HOLD_RETRY`].
    async fn wake_at_most_every(
        &self,
        api: &crate::state::ApiServer,
        woke: &std::sync::atomic::AtomicU64,
        namespace: &str,
        service: &str,
    ) {
        let now = self.now_ms();
        let last = woke.load(Ordering::Acquire);
        let due = last == 0 || now.saturating_sub(last) >= HOLD_RETRY.as_millis() as u64;
        if due
            && woke
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            wake_app(api, namespace, service).await;
        }
    }

    /// Marks a response that waited for a replica to start, and measures the wait.
    fn cold_started(&self, response: &mut Response, waited: std::time::Duration) {
        if let Ok(v) = HeaderValue::from_str(&format!("{:.1}", waited.as_secs_f64() * 1000.0)) {
            response.headers_mut().insert(COLD_START_HEADER, v);
        }
        if let Some(api) = &self.waker {
            api.metrics.cold_start.observe(waited.as_secs_f64());
        }
    }
}

/// Gives back a held request's place when it drops, however the hold ends.
fn scopeguard_release(held: Arc<AtomicUsize>) -> impl Drop {
    struct Release(Arc<AtomicUsize>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Release(held)
}

/// Scales an App's Deployment (the Service's name) from zero to one replica; a
/// Deployment that already has replicas is left alone, so any number of gateways may
/// wake an App at once.
async fn wake_app(api: &crate::state::ApiServer, namespace: &str, name: &str) {
    let Some(deployments) = crate::kinds::lookup("apps", "v1", "deployments") else {
        return;
    };
    // A read first: most calls find the App awake, and need no write.
    match crate::apiserver::internal::get(api, deployments, Some(namespace), name).await {
        Ok(Some(d)) if d.pointer("/spec/replicas").and_then(Value::as_i64) != Some(0) => return,
        Ok(None) => return,
        _ => {}
    }
    let woke = crate::apiserver::internal::update(api, deployments, Some(namespace), name, |cur| {
        let mut next = cur.clone();
        if cur.pointer("/spec/replicas").and_then(Value::as_i64) == Some(0) {
            next["spec"]["replicas"] = serde_json::json!(1);
        }
        Ok(next)
    })
    .await;
    if let Err(e) = woke {
        tracing::warn!(app = %format_args!("{namespace}/{name}"), error = %e, "waking the app failed");
    }
}

impl Backend {
    /// The next ready endpoint in round-robin order: where a request starts.
    fn start(&self) -> usize {
        if self.endpoints.is_empty() {
            return 0;
        }
        (self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1)) % self.endpoints.len()
    }

    /// Its request series.
    fn series(
        &self,
        metrics: &skiff_api::metrics::AppRequests,
        namespace: &str,
        name: &str,
    ) -> &skiff_api::metrics::AppSeries {
        self.series
            .get_or_init(|| Arc::new(metrics.app(namespace, name)))
    }
}

/// Where a request is routed.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    /// The path prefix the route matched (ends with `/`), stripped before the app sees
    /// the request; None for a Host route.
    pub prefix: Option<String>,
    /// One pod of the Service (`POD.SERVICE.NAMESPACE.localhost`, as a headless
    /// Service's per-pod DNS names reach a StatefulSet's pods); None for any.
    pub pod: Option<String>,
}

/// Routes a request, as the gateway does before it forwards one: the Service it is for,
/// by the annotated `routes`, else by the built-in Host and path routes of the Services
/// that `exists(namespace, name)`; and, for a path prefix route, the request made the
/// app's own (the prefix stripped from its path and named in `X-Forwarded-Prefix`).
/// None: no route, a 404. A function of its arguments only, so the fuzz targets reach
/// it without a cluster.
pub fn route_request<B>(
    routes: &[RouteEntry],
    exists: impl Fn(&str, &str) -> bool,
    request: &mut http::Request<B>,
) -> Option<Target> {
    let host = skiff_api::routes::host_of(request);
    let target = route(routes, exists, &host, request.uri().path())?;
    if let Some(prefix) = &target.prefix {
        skiff_api::routes::strip_route_prefix(request, prefix);
    }
    Some(target)
}

/// The Service a request for `host` and `path` is for, and the path prefix to strip.
fn route(
    routes: &[RouteEntry],
    exists: impl Fn(&str, &str) -> bool,
    host: &str,
    path: &str,
) -> Option<Target> {
    let host = skiff_api::routes::request_host(host);
    let best = routes
        .iter()
        .filter_map(|e| Some((e.route.matches(&host, path)?, e)))
        .max_by_key(|(score, _)| *score);
    if let Some((_, e)) = best {
        return Some(Target {
            namespace: e.namespace.clone(),
            service: e.service.clone(),
            prefix: e.route.path_prefix.clone(),
            pod: None,
        });
    }
    if let Some(rest) = host.strip_suffix(".localhost") {
        let labels: Vec<&str> = rest.split('.').collect();
        match labels.as_slice() {
            [name, namespace] if exists(namespace, name) => {
                return Some(Target {
                    namespace: namespace.to_string(),
                    service: name.to_string(),
                    prefix: None,
                    pod: None,
                });
            }
            [pod, name, namespace] if exists(namespace, name) => {
                return Some(Target {
                    namespace: namespace.to_string(),
                    service: name.to_string(),
                    prefix: None,
                    pod: Some(pod.to_string()),
                });
            }
            _ => {}
        }
    }
    // The path as asked, so that the prefix stripped is the one matched: `//NS/NAME/x`
    // is no route (its prefix would not come off, and the app would see it all).
    let mut segments = path.strip_prefix('/')?.splitn(3, '/');
    if let (Some(namespace), Some(name)) = (segments.next(), segments.next())
        && exists(namespace, name)
    {
        return Some(Target {
            prefix: Some(format!("/{namespace}/{name}/")),
            namespace: namespace.to_string(),
            service: name.to_string(),
            pod: None,
        });
    }
    None
}

/// The Service's backend with only `pod` among its endpoints, when a route named one
/// (its round-robin and request series stay the Service's).
fn narrow(backend: Arc<Backend>, namespace: &str, pod: Option<&str>) -> Arc<Backend> {
    let Some(pod) = pod else {
        return backend;
    };
    let wanted = format!("{namespace}/{pod}");
    Arc::new(Backend {
        endpoints: backend
            .endpoints
            .iter()
            .filter(|e| e.pod() == wanted)
            .cloned()
            .collect(),
        next: backend.next.clone(),
        series: backend.series.clone(),
        hold: backend.hold,
        held: backend.held.clone(),
        woke: backend.woke.clone(),
    })
}

/// A ready replica of an app.
#[derive(Clone)]
struct Endpoint {
    /// `namespace/name` of its pod, as the agent is told it.
    pod: HeaderValue,
    node: String,
    /// The agent's listener, when the node advertises one.
    address: Option<String>,
}

impl Endpoint {
    fn pod(&self) -> &str {
        self.pod.to_str().unwrap_or_default()
    }
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// How a request reaches an agent.
enum Via<'a> {
    Tunnel(hyper::client::conn::http2::SendRequest<crate::tunnel::TunnelBody>),
    Listener(&'a str),
}

/// Why a forwarded request failed.
#[derive(Debug, thiserror::Error)]
enum Upstream {
    #[error(transparent)]
    Direct(hyper_util::client::legacy::Error),
    #[error(transparent)]
    Tunnel(crate::tunnel::TunnelError),
}

impl Upstream {
    /// Whether the request never reached the agent, so another replica may take it.
    fn is_connect(&self) -> bool {
        match self {
            Upstream::Direct(e) => e.is_connect(),
            Upstream::Tunnel(crate::tunnel::TunnelError::NotConnected(_)) => true,
            Upstream::Tunnel(crate::tunnel::TunnelError::Failed(e)) => e.is_closed(),
        }
    }
}

/// Headers that belong to one connection, not to the request.
/// Headers of one connection, never forwarded (the port-forward proxy drops them too).
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The request body, buffered (so it can be sent again) when small or absent.
enum Payload {
    Buffered(Bytes),
    Streaming(Option<Body>),
}

async fn handle(State(gw): State<Arc<Gateway>>, mut request: Request) -> Response {
    let id = skiff_api::routes::ensure_request_id(request.headers_mut());
    let host = skiff_api::routes::host_of(&request);
    let snapshot = gw.snapshot();
    let exists = |namespace: &str, name: &str| snapshot.backend(namespace, name).is_some();
    let request_host = skiff_api::routes::request_host(&host);
    // An HTTPRoute rule first, then an Ingress rule, then the App routes, then an
    // Ingress default backend.
    if let Some(hit) = snapshot.httproutes.route(&request_host, &request) {
        hit.apply(&mut request);
        // The Gateway API answers 500 for a rule with no usable backend.
        let (namespace, service) = match hit.action.pick() {
            Some(crate::ingress::Backend::Service { namespace, name }) => (namespace, name),
            Some(crate::ingress::Backend::Broken(why)) => {
                return text(StatusCode::INTERNAL_SERVER_ERROR, why.clone());
            }
            None => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the matching HTTPRoute rule has no backend to send to".into(),
                );
            }
        };
        return send_to(
            &gw,
            &snapshot,
            request,
            (&host, &id),
            (namespace, service, None),
        )
        .await;
    }
    let by_ingress = snapshot.ingress.route(&request_host, request.uri().path());
    let routed = match by_ingress {
        Some(backend) => Some(Ok(backend)),
        None => route_request(&snapshot.routes, exists, &mut request)
            .map(|t| Err((t.namespace, t.service, t.pod)))
            .or_else(|| snapshot.ingress.default_backend().map(Ok)),
    };
    let (namespace, service, pod) = match routed {
        Some(Ok(crate::ingress::Backend::Service { namespace, name })) => {
            (namespace.clone(), name.clone(), None)
        }
        Some(Ok(crate::ingress::Backend::Broken(why))) => {
            return text(StatusCode::SERVICE_UNAVAILABLE, why.clone());
        }
        Some(Err(target)) => target,
        None => {
            // Unrouted, the request is as it came.
            return text(
                StatusCode::NOT_FOUND,
                format!("no app is routed at {host}{}", request.uri().path()),
            );
        }
    };
    send_to(
        &gw,
        &snapshot,
        request,
        (&host, &id),
        (&namespace, &service, pod.as_deref()),
    )
    .await
}

/// Forwards a routed request to the Service `namespace/service` (only to its pod `pod`
/// when a route named one), and counts it.
async fn send_to(
    gw: &Gateway,
    snapshot: &Snapshot,
    request: Request,
    (host, id): (&str, &str),
    (namespace, service, pod): (&str, &str, Option<&str>),
) -> Response {
    // At debug level, as the agent's request span (see there).
    let span =
        tracing::debug_span!("gateway", request_id = %id, namespace = %namespace, app = %service);
    let started = std::time::Instant::now();
    // Routed, so it is in the snapshot: a route names a Service there.
    let backend = snapshot.backend(namespace, service).cloned();
    let only = |b: Arc<Backend>| narrow(b, namespace, pod);
    let response = forward(
        gw,
        request,
        (host, namespace, service, pod),
        backend.clone().map(only),
    )
    .instrument(span)
    .await;
    if let Some(backend) = backend {
        backend
            .series(&gw.metrics, namespace, service)
            .observe(response.status().as_u16(), started.elapsed());
    }
    response
}

/// Sends a routed request to a ready replica, trying the next when one cannot be
/// reached before it took the request, or, for an idempotent method (RFC 9110
/// 9.2.2), when one failed before it answered (its agent died with the request in
/// flight). A request with a small body that no replica took waits up to
/// [`TUNNEL_WAIT`] for a tunnel to open and is tried again: after this server
/// restarts, the agents take a moment to reconnect. `backend` is the Service as the
/// request was routed; a retry reads it again.
async fn forward(
    gw: &Gateway,
    request: Request,
    (host, namespace, service, pod): (&str, &str, &str, Option<&str>),
    mut backend: Option<Arc<Backend>>,
) -> Response {
    let arrived = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + TUNNEL_WAIT;
    // However many times the request is held, for at most this long in all.
    let hold_deadline = tokio::time::Instant::now() + COLD_START_TIMEOUT;
    let mut opened = gw.tunnels.opened();
    let hold = backend.as_ref().is_some_and(|b| b.hold);
    // When the request waited for a replica to start: how long.
    let mut cold: Option<std::time::Duration> = None;
    if backend.as_ref().is_none_or(|b| b.endpoints.is_empty()) {
        if !hold {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("app {namespace}/{service} has no ready replica"),
            );
        }
        match gw.wake((namespace, service, pod), &[], hold_deadline).await {
            Ok(woken) => {
                cold = Some(arrived.elapsed());
                backend = Some(woken);
            }
            Err(response) => return response,
        }
    }
    let (mut parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = parts.headers.contains_key(header::TRANSFER_ENCODING);
    let payload = if body.is_end_stream() {
        // No body (a GET, say): nothing to read.
        Payload::Buffered(Bytes::new())
    } else if !chunked && declared.unwrap_or(0) <= MAX_BUFFERED_BODY {
        match body.collect().await {
            Ok(collected) => Payload::Buffered(collected.to_bytes()),
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body failed: {e}"),
                );
            }
        }
    } else {
        Payload::Streaming(Some(body))
    };
    for name in HOP_BY_HOP {
        parts.headers.remove(*name);
    }
    let mut request = Forwarding {
        namespace,
        service,
        idempotent: parts.method.is_idempotent(),
        parts,
        host,
        payload,
        hold,
        refused: Vec::new(),
        failed: false,
    };
    let mut last_error = String::new();
    loop {
        // Tunnels that open from here on wake the wait below.
        opened.borrow_and_update();
        let (endpoints, start) = match &backend {
            Some(b) => (&b.endpoints[..], b.start()),
            None => (&[][..], 0),
        };
        if let Some(mut response) = request
            .try_endpoints(gw, endpoints, start, &mut last_error)
            .await
        {
            if let Some(waited) = cold {
                gw.cold_started(&mut response, waited);
            }
            return response;
        }
        // Every replica tried in this pass refused it (the App is scaling to zero):
        // hold the request for the replica its arrival wakes. A pass where one failed
        // otherwise (unreachable) goes on as for any app.
        if hold
            && !request.refused.is_empty()
            && !request.failed
            && matches!(request.payload, Payload::Buffered(_))
        {
            match gw
                .wake((namespace, service, pod), &request.refused, hold_deadline)
                .await
            {
                Ok(woken) => {
                    cold = Some(arrived.elapsed());
                    backend = Some(woken);
                    continue;
                }
                Err(response) => return response,
            }
        }
        if !matches!(request.payload, Payload::Buffered(_))
            || !matches!(
                tokio::time::timeout_at(deadline, opened.changed()).await,
                Ok(Ok(()))
            )
        {
            break;
        }
        backend = gw
            .snapshot()
            .backend(namespace, service)
            .cloned()
            .map(|b| narrow(b, namespace, pod));
    }
    text(
        StatusCode::BAD_GATEWAY,
        format!("app {namespace}/{service}: no replica could be reached ({last_error})"),
    )
}

/// A request on its way to a replica: what every attempt sends.
struct Forwarding<'a> {
    /// The app's namespace and name, for messages.
    namespace: &'a str,
    service: &'a str,
    /// Whether a replica that failed before answering may be sent it again.
    idempotent: bool,
    /// The client's request, without its hop-by-hop headers.
    parts: http::request::Parts,
    host: &'a str,
    payload: Payload,
    /// Whether the app scales from zero: a replica that is stopping is passed over,
    /// and the request held for a new one.
    hold: bool,
    /// The replicas that said they no longer serve (stopping), in the last pass.
    refused: Vec<String>,
    /// Whether a replica of the last pass failed otherwise (could not be reached, or
    /// failed before answering).
    failed: bool,
}

impl Forwarding<'_> {
    /// One pass over `endpoints`, from `start` on and round: the response of the first
    /// replica that answers (or of one that failed in a way that must not be retried),
    /// or None if none took the request (`last_error` then says why the last could not).
    async fn try_endpoints(
        &mut self,
        gw: &Gateway,
        endpoints: &[Endpoint],
        start: usize,
        last_error: &mut String,
    ) -> Option<Response> {
        self.refused.clear();
        self.failed = false;
        let (before, after) = endpoints.split_at(start.min(endpoints.len()));
        // Whether a node of this pass had no tunnel: it may yet connect.
        let mut disconnected = false;
        for (i, endpoint) in after.iter().chain(before).enumerate() {
            let last = i + 1 == endpoints.len();
            let pod = endpoint.pod();
            // Through the agent's tunnel when it has one (it then needs no inbound
            // port), else straight to its listener. Decided before the body is taken, so
            // a streamed body is not lost to an endpoint that cannot be reached at all.
            let tunnel = gw.tunnels.get(&endpoint.node);
            disconnected |= tunnel.is_none();
            let via = match (tunnel, &endpoint.address) {
                (Some(sender), _) => Via::Tunnel(sender),
                (None, Some(address)) => Via::Listener(address),
                (None, None) => {
                    self.failed = true;
                    *last_error = format!("{pod}: node {} is not reachable", endpoint.node);
                    continue;
                }
            };
            // Who was asked, for messages.
            let agent = |via_tunnel: bool| match &endpoint.address {
                Some(address) if !via_tunnel => address.clone(),
                _ => format!("tunnel to {}", endpoint.node),
            };
            let via_tunnel = matches!(via, Via::Tunnel(_));
            let body: GatewayBody = match &mut self.payload {
                Payload::Buffered(bytes) => Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
                Payload::Streaming(body) => match body.take() {
                    Some(b) => b.boxed_unsync(),
                    None => break,
                },
            };
            let buffered = matches!(self.payload, Payload::Buffered(_));
            let uri = match &via {
                Via::Tunnel(_) => crate::tunnel::request_uri(self.parts.uri.path_and_query()),
                Via::Listener(address) => {
                    let path = self
                        .parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/");
                    match format!("http://{address}{path}").parse() {
                        Ok(uri) => uri,
                        Err(e) => {
                            *last_error = format!("{pod} on {address}: {e}");
                            continue;
                        }
                    }
                }
            };
            let mut outgoing = http::Request::new(body);
            *outgoing.method_mut() = self.parts.method.clone();
            *outgoing.uri_mut() = uri;
            *outgoing.headers_mut() = forwarded_headers(&self.parts.headers, pod, self.host);
            let sent = match via {
                Via::Tunnel(sender) => crate::tunnel::send(sender, outgoing)
                    .await
                    .map_err(Upstream::Tunnel),
                Via::Listener(_) => gw.client.request(outgoing).await.map_err(Upstream::Direct),
            };
            match sent {
                Ok(response) => {
                    // A replica its node does not serve (not started yet after the
                    // agent restarted, or stopping): the next is tried, and if this
                    // was the last, a node that had no tunnel may still take it.
                    let unserved = response.headers().contains_key(UNSERVED_HEADER);
                    if unserved && buffered && (!last || disconnected || self.hold) {
                        *last_error = format!("{pod} was not served by its node");
                        self.refused.push(pod.to_string());
                        continue;
                    }
                    let (mut parts, body) = response.into_parts();
                    parts.headers.remove(UNSERVED_HEADER);
                    return Some(Response::from_parts(parts, Body::new(body)));
                }
                Err(e) if e.is_connect() => {
                    self.failed = true;
                    let agent = agent(via_tunnel);
                    tracing::debug!(%pod, %agent, error = %e, "gateway: endpoint unreachable; trying the next");
                    *last_error = format!("{pod} on {agent}: {e}");
                }
                // Sent, and failed before an answer (its agent died, say): an
                // idempotent request may be sent again, to another replica.
                Err(e) if self.idempotent && buffered => {
                    self.failed = true;
                    let agent = agent(via_tunnel);
                    tracing::debug!(%pod, %agent, error = %e, "gateway: replica failed before answering; trying the next");
                    *last_error = format!("{pod} on {agent} failed: {e}");
                }
                Err(e) => {
                    return Some(text(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "app {}/{}: the replica {pod} failed: {e}",
                            self.namespace, self.service
                        ),
                    ));
                }
            }
        }
        None
    }
}

/// The headers sent on to the agent: the client's, with the chosen pod, and
/// `X-Forwarded-Host`/`-Proto` unless a proxy in front already set them (as a reverse
/// proxy keeps the outermost values, which are what the client used).
fn forwarded_headers(headers: &HeaderMap, pod: &str, host: &str) -> HeaderMap {
    let mut out = headers.clone();
    if let Ok(v) = HeaderValue::from_str(pod) {
        out.insert(POD_HEADER, v);
    }
    if !host.is_empty()
        && !out.contains_key("x-forwarded-host")
        && let Ok(v) = HeaderValue::from_str(host)
    {
        out.insert("x-forwarded-host", v);
    }
    if !out.contains_key("x-forwarded-proto") {
        out.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    out
}

/// The gateway's listeners: plain HTTP, and HTTPS for the Ingresses' TLS hosts.
pub struct Listeners {
    pub http: tokio::net::TcpListener,
    pub https: Option<tokio::net::TcpListener>,
    /// The address Ingresses show in their status.
    pub address: String,
}

/// Serves the gateway on its listeners until `stop`, routing from caches it holds in
/// `informers` until then; writes the gateway's address into the status of the
/// Ingresses it serves.
pub async fn serve(
    listeners: Listeners,
    informers: Arc<SharedInformers>,
    api: Arc<crate::state::ApiServer>,
    stop: CancellationToken,
) {
    use axum::serve::ListenerExt;
    let scope = informers.scope(stop.clone());
    let gateway = Gateway::new(
        &scope,
        api.tunnels.clone(),
        api.metrics.gateway.clone(),
        Some(api.clone()),
    );
    let secrets = scope.cache("", "secrets");
    // Until the caches hold the routes, connections wait in the listener's backlog:
    // answered from empty caches, they would get 404 for apps that exist.
    if !scope
        .synced(&[
            &gateway.services,
            &gateway.slices,
            &gateway.nodes,
            &gateway.ingresses,
            &gateway.classes,
            &gateway.gateway_classes,
            &gateway.gateways,
            &gateway.httproutes,
            &secrets,
        ])
        .await
    {
        scope.shutdown().await;
        return;
    }
    let certificates = Arc::new(crate::ingress::Certificates::new());
    let follow = follow_ingresses(
        gateway.clone(),
        secrets,
        certificates.clone(),
        api,
        listeners.address.clone(),
        stop.clone(),
    );
    // The caches are let go at `stop`, as requests in flight drain.
    let release = async {
        stop.cancelled().await;
        scope.shutdown().await;
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(gateway.clone());
    let listener = listeners.http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let graceful = stop.clone();
    let served = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { graceful.cancelled().await });
    let secure = async {
        let Some(tcp) = listeners.https else {
            return Ok(());
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(certificates.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tls = crate::auth::pki::TlsListener::new(tcp, Arc::new(config))?;
        // The app learns the request came over HTTPS, unless a proxy in front said.
        let app = axum::Router::new()
            .fallback(handle)
            .layer(axum::middleware::map_request(
                |mut request: Request| async move {
                    if !request.headers().contains_key("x-forwarded-proto") {
                        request
                            .headers_mut()
                            .insert("x-forwarded-proto", HeaderValue::from_static("https"));
                    }
                    request
                },
            ))
            .with_state(gateway);
        let graceful = stop.clone();
        axum::serve(tls, app.into_make_service())
            .with_graceful_shutdown(async move { graceful.cancelled().await })
            .await
    };
    let (served, secure, (), ()) = tokio::join!(async { served.await }, secure, release, follow);
    for result in [served, secure] {
        if let Err(e) = result {
            tracing::error!(error = %e, "the gateway stopped with an error");
        }
    }
}

/// Keeps the HTTPS certificates, the Ingresses' status and the Gateway API statuses
/// (classes, Gateways, HTTPRoutes) in step with the caches.
async fn follow_ingresses(
    gateway: Arc<Gateway>,
    secrets: Arc<Cache>,
    certificates: Arc<crate::ingress::Certificates>,
    api: Arc<crate::state::ApiServer>,
    address: String,
    stop: CancellationToken,
) {
    let ingress_kind =
        crate::kinds::lookup("networking.k8s.io", "v1", "ingresses").expect("ingresses are served");
    let secret_kind = crate::kinds::lookup("", "v1", "secrets").expect("secrets are served");
    let service_kind = crate::kinds::lookup("", "v1", "services").expect("services are served");
    let mut changes = [
        gateway.ingresses.subscribe(),
        gateway.classes.subscribe(),
        secrets.subscribe(),
        gateway.gateway_classes.subscribe(),
        gateway.gateways.subscribe(),
        gateway.httproutes.subscribe(),
        gateway.services.subscribe(),
    ];
    loop {
        let ingresses = gateway.ingresses.snapshot();
        let classes = crate::ingress::our_classes(&gateway.classes.snapshot());
        let listeners = crate::httproute::listener_certificates(
            &gateway.gateways.snapshot(),
            &crate::httproute::our_classes(&gateway.gateway_classes.snapshot()),
        );
        certificates.update(&ingresses, &classes, &listeners, &|namespace, name| {
            secrets
                .get(&secret_kind.key(Some(namespace), name))
                .filter(|s| s["type"] == "kubernetes.io/tls")
        });
        for ingress in ingresses
            .iter()
            .filter(|i| !objects::is_deleting(i) && crate::ingress::is_ours(i, &classes))
        {
            if crate::ingress::status_with(ingress, &address).is_none() {
                continue;
            }
            let result = crate::apiserver::internal::update_status(
                &api,
                ingress_kind,
                objects::namespace(ingress),
                objects::name(ingress),
                |current| {
                    let mut next = current.clone();
                    // Read again: another server's gateway may have added its own.
                    if let Some(status) = crate::ingress::status_with(current, &address) {
                        next["status"] = status;
                    }
                    Ok(next)
                },
            )
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, ingress = %objects::name(ingress), "writing the Ingress status failed; the next change retries");
            }
        }
        crate::httproute::status::write_statuses(
            &api,
            &gateway.gateway_classes.snapshot(),
            &gateway.gateways.snapshot(),
            &gateway.httproutes.snapshot(),
            &|namespace, name| {
                gateway
                    .services
                    .get(&service_kind.key(Some(namespace), name))
            },
            &|namespace, name| {
                secrets
                    .get(&secret_kind.key(Some(namespace), name))
                    .filter(|s| s["type"] == "kubernetes.io/tls")
            },
            &address,
        )
        .await;
        let [a, b, c, d, e, f, g] = &mut changes;
        tokio::select! {
            _ = stop.cancelled() => return,
            r = a.changed() => if r.is_err() { return },
            r = b.changed() => if r.is_err() { return },
            r = c.changed() => if r.is_err() { return },
            r = d.changed() => if r.is_err() { return },
            r = e.changed() => if r.is_err() { return },
            r = f.changed() => if r.is_err() { return },
            r = g.changed() => if r.is_err() { return },
        }
    }
}

/// The address a gateway listener serves, as a URL.
pub fn url_of(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbStore;
    use crate::store::{Store, WriteOp};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An agent on a loopback port: it reads each request, then answers `200 ok`, or,
    /// if `dies`, drops the connection without a word (as an agent killed with the
    /// request in flight). Returns its port and how many requests it read.
    async fn agent(dies: bool) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    if !dies {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    }
                });
            }
        });
        (port, seen)
    }

    /// A gateway whose caches hold app `default/web` with one ready replica on each
    /// of two nodes, reached straight at `ports`.
    async fn gateway_for(
        ports: [u16; 2],
        dir: &tempfile::TempDir,
    ) -> (Arc<Gateway>, Arc<Informers>) {
        let store = RedbStore::open(&dir.path().join("store.redb")).unwrap();
        let info = |group, plural| crate::kinds::lookup(group, "v1", plural).unwrap();
        let mut objects = vec![(
            info("", "services").key(Some("default"), "web"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"}}),
        )];
        let mut endpoints = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let node = format!("n{i}");
            objects.push((
                info("", "nodes").key(None, &node),
                json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                    "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}),
            ));
            endpoints.push(json!({"addresses": ["127.0.0.1"], "nodeName": node,
                "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": format!("web-{i}")}}));
        }
        let slice = slice_name("web");
        objects.push((
            info("discovery.k8s.io", "endpointslices").key(Some("default"), &slice),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": slice, "namespace": "default"}, "endpoints": endpoints}),
        ));
        for (key, object) in objects {
            store
                .write(WriteOp::Create {
                    key,
                    object,
                    guard: None,
                })
                .await
                .unwrap();
        }
        let scope =
            SharedInformers::new(store, CancellationToken::new()).scope(CancellationToken::new());
        let gateway = Gateway::new(
            &scope,
            Arc::default(),
            skiff_api::metrics::AppRequests::register(
                &mut prometheus_client::registry::Registry::default(),
                "test",
                "test",
            ),
            None,
        );
        assert!(
            scope
                .synced(&[&gateway.services, &gateway.slices, &gateway.nodes])
                .await
        );
        (gateway, scope)
    }

    async fn send(gw: &Gateway, method: http::Method) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri("/")
            .body(Body::from("x"))
            .unwrap();
        let backend = gw.snapshot().backend("default", "web").cloned();
        let response = forward(gw, request, ("gw", "default", "web", None), backend).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_replica_that_dies_with_a_request_in_flight_loses_it_only_if_not_idempotent() {
        let (dying, died_with) = agent(true).await;
        let (healthy, _) = agent(false).await;
        let dir = tempfile::tempdir().unwrap();
        let (gw, _scope) = gateway_for([dying, healthy], &dir).await;
        // Round-robin: half of these go to the dying replica first. Each GET is sent
        // again to the other, and answered.
        for _ in 0..4 {
            let (status, body) = send(&gw, http::Method::GET).await;
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
        }
        assert_eq!(
            died_with.load(Ordering::SeqCst),
            2,
            "the dying replica took its turns"
        );
        // A POST may have been applied by the replica that died: it is not sent again.
        let mut codes = Vec::new();
        for _ in 0..4 {
            codes.push(send(&gw, http::Method::POST).await.0);
        }
        codes.sort();
        assert_eq!(
            codes,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::BAD_GATEWAY,
                StatusCode::BAD_GATEWAY
            ]
        );
    }

    /// A tunnel to a node whose agent answers every request `200 tunnel`, or, if
    /// `unserved`, that it does not serve the pod; and how many requests it got.
    async fn tunnel(
        unserved: bool,
    ) -> (
        hyper::client::conn::http2::SendRequest<crate::tunnel::TunnelBody>,
        Arc<AtomicUsize>,
    ) {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (agent, server) = tokio::io::duplex(64 * 1024);
        let seen = Arc::new(AtomicUsize::new(0));
        let count = seen.clone();
        tokio::spawn(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                TokioIo::new(agent),
                hyper::service::service_fn(move |_| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut response = http::Response::builder();
                        if unserved {
                            response = response.status(503).header(UNSERVED_HEADER, "1");
                        }
                        Ok::<_, std::convert::Infallible>(
                            response
                                .body(Full::new(Bytes::from_static(b"tunnel")))
                                .unwrap(),
                        )
                    }
                }),
            ),
        );
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(server))
            .await
            .unwrap();
        tokio::spawn(connection);
        (sender, seen)
    }

    /// A loopback port nothing listens on.
    fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Waits (up to 10 s) until `count` is not zero.
    async fn reached(count: &AtomicUsize, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while count.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_replica_not_served_yet_leaves_the_request_to_a_node_that_reconnects() {
        // n0's agent is back but has not started its replica yet; n1 has no tunnel.
        let dir = tempfile::tempdir().unwrap();
        let (gw, _scope) = gateway_for([closed_port(), closed_port()], &dir).await;
        let (n0, asked) = tunnel(true).await;
        gw.tunnels.insert("n0", n0);
        let request = tokio::spawn({
            let gw = gw.clone();
            async move { send(&gw, http::Method::GET).await }
        });
        reached(&asked, "the request never reached n0").await;
        gw.tunnels.insert("n1", tunnel(false).await.0);
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "tunnel"));
    }

    #[tokio::test]
    async fn a_request_no_replica_can_take_waits_for_a_tunnel_to_open() {
        // Node n0's agent dies with every request; n1's port is closed. Neither has a
        // tunnel yet: so it is just after this server restarted, before the agents
        // (which only dial out) are back.
        let (dying, died_with) = agent(true).await;
        let dir = tempfile::tempdir().unwrap();
        let (gw, _scope) = gateway_for([dying, closed_port()], &dir).await;
        let request = tokio::spawn({
            let gw = gw.clone();
            async move { send(&gw, http::Method::GET).await }
        });
        // Once the request has been to both nodes, n0's agent reconnects: the request
        // goes through its tunnel rather than failing.
        reached(&died_with, "the request never reached n0").await;
        gw.tunnels.insert("n0", tunnel(false).await.0);
        let (status, body) = request.await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "tunnel"));
    }

    use skiff_api::routes::FORWARDED_PREFIX_HEADER as FORWARDED_PREFIX;

    #[test]
    fn the_default_route_takes_the_path_as_asked() {
        let exists = |namespace: &str, name: &str| (namespace, name) == ("default", "hello");
        let request = |uri: &str| {
            http::Request::builder()
                .uri(uri)
                .header(FORWARDED_PREFIX, "/outer/")
                .body(())
                .unwrap()
        };
        // Found by the gateway_route fuzz target: `//default/hello` was routed by the
        // prefix `/default/hello/`, which does not come off it, so the app saw the whole
        // path and was told a prefix that was never stripped.
        let mut doubled = request("//default/hello?x=5");
        assert_eq!(route_request(&[], exists, &mut doubled), None);
        assert_eq!(doubled.uri(), "//default/hello?x=5");

        let mut plain = request("/default/hello?x=5");
        let target = route_request(&[], exists, &mut plain).unwrap();
        assert_eq!(target.prefix.as_deref(), Some("/default/hello/"));
        assert_eq!(plain.uri(), "/?x=5");
        assert_eq!(plain.headers()[FORWARDED_PREFIX], "/outer/default/hello");
    }

    #[test]
    fn a_pods_own_host_routes_to_that_pod_of_the_service() {
        let exists = |namespace: &str, name: &str| (namespace, name) == ("default", "db");
        let target = route(&[], exists, "db-1.db.default.localhost:8080", "/x").unwrap();
        assert_eq!(target.service, "db");
        assert_eq!(target.pod.as_deref(), Some("db-1"));
        let any = route(&[], exists, "db.default.localhost", "/x").unwrap();
        assert_eq!(any.pod, None);
        assert_eq!(
            route(&[], exists, "db-1.other.default.localhost", "/x"),
            None
        );
        let endpoint = |pod: &str| Endpoint {
            pod: HeaderValue::from_str(pod).unwrap(),
            node: "n".into(),
            address: None,
        };
        let backend = Arc::new(Backend {
            endpoints: vec![endpoint("default/db-0"), endpoint("default/db-1")],
            next: Default::default(),
            series: Default::default(),
            hold: false,
            held: Default::default(),
            woke: Default::default(),
        });
        let one = narrow(backend.clone(), "default", Some("db-1"));
        assert_eq!(one.endpoints.len(), 1);
        assert_eq!(one.endpoints[0].pod(), "default/db-1");
        assert_eq!(narrow(backend, "default", None).endpoints.len(), 2);
    }

    #[test]
    fn forwarded_host_and_proto_are_added_unless_a_proxy_set_them() {
        let out = forwarded_headers(&HeaderMap::new(), "default/web-1", "gw:8080");
        assert_eq!(out[POD_HEADER], "default/web-1");
        assert_eq!(out["x-forwarded-host"], "gw:8080");
        assert_eq!(out["x-forwarded-proto"], "http");

        let mut given = HeaderMap::new();
        given.insert("x-forwarded-host", HeaderValue::from_static("example.com"));
        given.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        given.insert(POD_HEADER, HeaderValue::from_static("default/forged"));
        let out = forwarded_headers(&given, "default/web-1", "gw:8080");
        assert_eq!(out["x-forwarded-host"], "example.com");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out[POD_HEADER], "default/web-1");
    }
}
