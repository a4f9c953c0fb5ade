//! A `kube::Client` that fails over between the servers of one cluster: requests go to
//! the current server until it cannot be reached, then to the next.
//!
//! Every server of a cluster presents a certificate from the same CA and accepts the
//! same credential, so one TLS configuration and one bearer token serve them all; only
//! each request's scheme and authority change. kube's own stack sets those in its
//! outermost layer (`BaseUri`, from the one `cluster_url`), where a layer added on top
//! cannot change them, so [`client_builder`] assembles the stack from kube's public
//! parts with [`FailoverLayer`] right above the connection pool.
//!
//! A request that failed because its server could not be reached (refused, no answer
//! to the connect, or the connection broke before a response) moves the client to the
//! next server. It is sent again there when that is safe: GET and HEAD always (watches
//! are GETs, so kube's watcher resumes on the next server by itself), other methods
//! only when the failure came before anything was sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tokio::sync::watch;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// How long connecting to one server (TCP and the TLS handshake) may take before the
/// next is tried. kube's own default (30 s) would stall every request that long on a
/// server that vanished, and a server that accepts connections but is hung would stall
/// a handshake for ever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP keepalive on API connections, so a watch held open on a server that vanished
/// without closing it (power cut, partition) fails in about 30 s and moves on, instead
/// of waiting for the watch's own timeout.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("no API server URL given")]
    NoServers,
    #[error("{url:?} is not an API server URL: {reason}")]
    BadUrl { url: String, reason: String },
}

/// What the servers look like at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The servers, in the order they are tried. Never empty.
    pub urls: Vec<Uri>,
    /// The index in `urls` of the server requests go to.
    pub current: usize,
    /// How many times the client has moved on from a server it could not reach.
    pub failovers: u64,
}

impl Snapshot {
    pub fn current(&self) -> &Uri {
        &self.urls[self.current]
    }
}

/// The servers a failover client uses, shared with whoever learns new ones (the agent
/// reads them from the cluster). Cheap to clone; every clone is the same set.
#[derive(Clone)]
pub struct Servers {
    state: Arc<watch::Sender<Snapshot>>,
}

impl std::fmt::Debug for Servers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Servers")
            .field(&*self.state.borrow())
            .finish()
    }
}

impl Servers {
    /// A set of servers, the first current. Duplicates are dropped.
    pub fn new(urls: impl IntoIterator<Item = Uri>) -> Result<Servers, FailoverError> {
        let urls = dedup(urls);
        if urls.is_empty() {
            return Err(FailoverError::NoServers);
        }
        let (state, _) = watch::channel(Snapshot {
            urls,
            current: 0,
            failovers: 0,
        });
        Ok(Servers {
            state: Arc::new(state),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    pub fn urls(&self) -> Vec<Uri> {
        self.state.borrow().urls.clone()
    }

    /// The server requests go to now.
    pub fn current(&self) -> Uri {
        self.state.borrow().current().clone()
    }

    fn len(&self) -> usize {
        self.state.borrow().urls.len()
    }

    /// Replaces the set. The current server stays current if it is still in it. An
    /// empty set is ignored: a client never forgets its last known server. Returns
    /// whether anything changed.
    pub fn set(&self, urls: impl IntoIterator<Item = Uri>) -> bool {
        let urls = dedup(urls);
        if urls.is_empty() {
            return false;
        }
        self.state.send_if_modified(|s| {
            if s.urls == urls {
                return false;
            }
            let current = s.current().clone();
            s.current = urls.iter().position(|u| *u == current).unwrap_or(0);
            s.urls = urls;
            true
        })
    }

    /// Moves on from `failed` to the next server, if `failed` is still the current one
    /// (several requests failing on one server move the client once). Returns whether
    /// it moved.
    pub fn failed(&self, failed: &Uri) -> bool {
        self.state.send_if_modified(|s| {
            if s.current() != failed || s.urls.len() < 2 {
                return false;
            }
            s.current = (s.current + 1) % s.urls.len();
            s.failovers += 1;
            true
        })
    }

    /// A receiver that sees every change: the set, and each failover.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.state.subscribe()
    }
}

fn dedup(urls: impl IntoIterator<Item = Uri>) -> Vec<Uri> {
    let mut out: Vec<Uri> = Vec::new();
    for url in urls {
        if !out.contains(&url) {
            out.push(url);
        }
    }
    out
}

/// One server URL as the client keeps it: scheme and authority required, no trailing
/// slash (kube joins request paths onto a base path the same way).
pub fn parse_server(url: &str) -> Result<Uri, FailoverError> {
    let bad = |reason: &str| FailoverError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = url.trim().trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(bad("it needs a scheme and a host, as in https://HOST:PORT"));
    }
    if uri.query().is_some() {
        return Err(bad("it may not carry a query"));
    }
    Ok(uri)
}

/// A comma-separated list of server URLs (`--server A,B,C`, a kubeconfig's `server:`).
pub fn parse_servers(list: &str) -> Result<Vec<Uri>, FailoverError> {
    let urls = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_server)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(FailoverError::NoServers);
    }
    Ok(urls)
}

/// `uri`'s path and query on `server` (whose own path, if any, is kept as a prefix).
fn on_server(server: &Uri, uri: &Uri) -> Result<Uri, http::Error> {
    let request = uri.path_and_query().map_or("/", |p| p.as_str());
    let base = server.path().trim_end_matches('/');
    let mut builder = Uri::builder().path_and_query(format!("{base}{request}"));
    if let Some(scheme) = server.scheme() {
        builder = builder.scheme(scheme.clone());
    }
    if let Some(authority) = server.authority() {
        builder = builder.authority(authority.clone());
    }
    builder.build()
}

/// How a request failed to reach its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unreached {
    /// No connection was made: nothing was sent.
    NotSent,
    /// The connection broke before a response: the server may have seen the request.
    MaybeSent,
}

/// Whether `error` says the server could not be reached, rather than that the request
/// was bad (which another server would refuse just the same).
fn unreached(error: &BoxError) -> Option<Unreached> {
    let client = error.downcast_ref::<hyper_util::client::legacy::Error>()?;
    if client.is_connect() {
        return Some(Unreached::NotSent);
    }
    let mut source = std::error::Error::source(client);
    while let Some(e) = source {
        if let Some(hyper) = e.downcast_ref::<hyper::Error>()
            && hyper.is_user()
        {
            // Our own request body or headers failed: not the server's doing.
            return None;
        }
        source = std::error::Error::source(e);
    }
    Some(Unreached::MaybeSent)
}

/// Sending twice is harmless for these; a watch is a GET too.
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// Points each request at the current server of a [`Servers`], and moves on when it
/// cannot be reached.
#[derive(Clone)]
pub struct FailoverLayer {
    servers: Servers,
}

impl FailoverLayer {
    pub fn new(servers: Servers) -> FailoverLayer {
        FailoverLayer { servers }
    }
}

impl<S> Layer<S> for FailoverLayer {
    type Service = Failover<S>;
    fn layer(&self, inner: S) -> Failover<S> {
        Failover {
            inner,
            servers: self.servers.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Failover<S> {
    inner: S,
    servers: Servers,
}

impl<S, B> Service<Request<Body>> for Failover<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The service that was polled ready goes with this call; a fresh clone stays.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let servers = self.servers.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let mut body = Some(body);
            let mut attempt = 0;
            loop {
                attempt += 1;
                let server = servers.current();
                let this = body.take().expect("every attempt has a body");
                // A copy for the next server, while one is left to try. A streamed
                // body has none, so it is sent once (later requests still fail over).
                let spare = (attempt < servers.len())
                    .then(|| this.try_clone())
                    .flatten();
                let mut request = Request::new(this);
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = on_server(&server, &parts.uri)?;
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                *request.extensions_mut() = parts.extensions.clone();
                if attempt > 1 {
                    inner.ready().await.map_err(Into::into)?;
                }
                let error = match inner.call(request).await {
                    Ok(response) => return Ok(response),
                    Err(e) => e.into(),
                };
                let Some(how) = unreached(&error) else {
                    return Err(error);
                };
                if servers.failed(&server) {
                    tracing::warn!(%server, next = %servers.current(), error = %error, error.source = ?std::error::Error::source(&*error), "API server unreachable; failing over");
                }
                let again = how == Unreached::NotSent || idempotent(&parts.method);
                match spare {
                    Some(spare) if again => body = Some(spare),
                    _ => return Err(error),
                }
            }
        })
    }
}

/// The service a failover client is built on, in the shape kube's default stack has,
/// so layers written for that (the agent's offline reads) stack on it as well.
pub type ClientService = tower::util::BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// A client builder for the cluster `config` describes (its CA, credential, TLS server
/// name, connect timeout, retries and namespace) whose requests go to `servers` with
/// failover; its `cluster_url` is not used. Add layers with `with_layer`, then
/// `build()`. Unlike kube's default stack it does not go through `proxy_url` and has
/// no read or write timeout (kube's defaults set none for reads either): Skiff's
/// kubeconfigs name no proxy, and TCP keepalive ends connections to vanished servers.
pub fn client_builder(
    config: &kube::Config,
    servers: Servers,
) -> Result<ClientBuilder<ClientService>, kube::Error> {
    let connect_timeout = config
        .connect_timeout
        .map_or(CONNECT_TIMEOUT, |t| t.min(CONNECT_TIMEOUT));
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    // The whole connect, handshake included, is bounded: its timeout is a connect
    // error, which fails over like a refused connection.
    let https = config
        .rustls_https_connector_with_connector(http)?
        .map_future(move |connecting| {
            Box::pin(async move {
                match tokio::time::timeout(connect_timeout, connecting).await {
                    Ok(connected) => connected,
                    Err(elapsed) => Err(BoxError::from(elapsed)),
                }
            })
        });
    let pool = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Body>(https);
    // The same layers, in the same order, as kube's default stack, with the failover in
    // place of its fixed base URI.
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(FailoverLayer::new(servers))
        .service(pool)
        .map_response(|response: Response<hyper::body::Incoming>| {
            response.map(|body| Box::new(body.map_err(BoxError::from)) as Box<DynBody>)
        });
    Ok(ClientBuilder::new(
        tower::util::BoxService::new(service),
        config.default_namespace.clone(),
    ))
}

/// A failover client for `config` over `servers`.
pub fn client(config: &kube::Config, servers: Servers) -> Result<kube::Client, kube::Error> {
    Ok(client_builder(config, servers)?.build())
}

#[cfg(test)]
mod tests;
