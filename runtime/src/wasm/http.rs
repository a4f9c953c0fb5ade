//! wasi:http components: the same `wasi:http/incoming-handler` apps `wasmtime serve` and
//! Spin run. Each request gets a fresh instance of the pre-instantiated component, in
//! its own store, with the pod's environment and limits:
//!
//! - memory: the container's limit, per request;
//! - CPU: a budget of running time per request (10 s by default); past it the instance
//!   is interrupted, the client gets 504 and the pod's log a line, and the pod serves on;
//! - request bodies: capped in size (413 beyond);
//! - outgoing HTTP: denied unless the authority is in the pod's allowed hosts; a denied
//!   call is `HttpRequestDenied` to the guest, not a trap.
//!
//! The response streams: headers go out as soon as the guest sets them, and the instance
//! keeps running in its own task while it writes the body. If the client goes away, the
//! guest's writes fail and it ends; nothing else is affected.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::clusterapi::{ClusterApi, is_cluster_api};
use super::engine::Engine;
use super::guest::{describe_failure, wasi_builder};
use super::limits::{MAX_HOST_RESOURCES, StoreBudget};
use super::slicing::{Metered, RunMeter, Slicer};
use super::{RunSpec, Stream};

/// CPU time one request may use unless the pod says otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request body unless the pod says otherwise.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 16 * 1024 * 1024;

/// Store data of one request to an HTTP component.
pub(crate) struct HttpState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    budget: StoreBudget,
    slicer: Slicer,
    outbound: OutboundPolicy,
}

impl WasiView for HttpState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HttpState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// The whole WASI 0.2 set plus wasi:http: components built with Rust std or
/// componentize-py import wasi:cli and friends, not only the proxy world.
pub(crate) fn http_linker(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<wasmtime::component::Linker<HttpState>> {
    let mut linker = wasmtime::component::Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    Ok(linker)
}

/// The hosts a pod's guest may call: `host`, `host:port`, `*.domain` (any subdomain) or
/// `*` (anything). Empty: no outgoing HTTP at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundHosts(Arc<Vec<String>>);

impl OutboundHosts {
    pub fn new(patterns: impl IntoIterator<Item = String>) -> OutboundHosts {
        OutboundHosts(Arc::new(
            patterns
                .into_iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        ))
    }

    /// Whether a request to `authority` (host, with or without a port) is allowed.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = match authority.rsplit_once(':') {
            // Not an IPv6 literal's colons: those are bracketed.
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority.as_str(),
        };
        self.0.iter().any(|pattern| {
            pattern == "*"
                || *pattern == authority
                || *pattern == host
                || pattern
                    .strip_prefix("*.")
                    .is_some_and(|domain| host.ends_with(&format!(".{domain}")))
        })
    }
}

/// Outgoing requests go through the pod's allow-list, then the default client.
struct OutboundPolicy {
    allowed: OutboundHosts,
    cluster_api: Option<ClusterApi>,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if let Some(api) = self.cluster_api.clone()
            && is_cluster_api(&authority)
        {
            return Box::new(async move { api.send(request).await });
        }
        if !self.allowed.allows(&authority) {
            tracing::debug!(%authority, "outgoing request denied: not in the pod's allowed hosts");
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// What every request to one pod's HTTP component is given.
#[derive(Clone, Debug)]
pub struct HttpSpec {
    /// Environment, preopens, log sink and memory limit (args are ignored).
    pub run: RunSpec,
    /// CPU time one request may use.
    pub timeout: Duration,
    pub outbound: OutboundHosts,
    /// Where `kubernetes.default.svc` goes (`clusterapi.rs`); None: nowhere.
    pub cluster_api: Option<ClusterApi>,
    pub max_body_bytes: u64,
    /// Told of each request whose instance failed.
    pub faults: FaultHook,
}

/// Who is told when a request's instance fails, with the kind of failure: `trap`,
/// `memory` (its limit refused a growth and it trapped) or `timeout` (its CPU time ran
/// out). A pod stopping under a request is not a fault of the app.
#[derive(Clone, Default)]
pub struct FaultHook(Option<Arc<dyn Fn(&'static str) + Send + Sync>>);

impl FaultHook {
    pub fn new(f: impl Fn(&'static str) + Send + Sync + 'static) -> FaultHook {
        FaultHook(Some(Arc::new(f)))
    }

    fn report(&self, fault: &Fault) {
        let kind = match fault {
            Fault::TimedOut => "timeout",
            Fault::Memory(_) => "memory",
            Fault::Trapped(_) => "trap",
            Fault::Stopped => return,
        };
        if let Some(f) = &self.0 {
            f(kind);
        }
    }
}

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "FaultHook(set)"
        } else {
            "FaultHook(none)"
        })
    }
}

/// A response from the host itself (an error, or a limit), not from the guest.
pub fn host_response(status: u16, text: impl Into<String>) -> hyper::Response<HyperOutgoingBody> {
    let mut text = text.into();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a static response is valid")
}

/// Serves one request with a fresh instance. Never fails: whatever the guest does ends
/// as a response (5xx for faults), and the pod's log says what happened.
pub(crate) async fn handle<B>(
    engine: &Engine,
    pre: &ProxyPre<HttpState>,
    spec: &HttpSpec,
    request: hyper::Request<B>,
    stop: CancellationToken,
) -> hyper::Response<HyperOutgoingBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<HttpError>,
{
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > spec.max_body_bytes) {
        return host_response(
            413,
            format!(
                "request body larger than the limit of {} bytes",
                spec.max_body_bytes
            ),
        );
    }
    let limit = spec.max_body_bytes;
    // A body without a declared length is cut at the limit as it streams; the client
    // then gets 413 whatever the guest made of the error.
    let exceeded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exceeded.clone();
    let request = request.map(move |body| {
        Limited::new(
            body.map_err(Into::into),
            usize::try_from(limit).unwrap_or(usize::MAX),
        )
        .map_err(move |e| match e.downcast::<HttpError>() {
            Ok(e) => *e,
            Err(_) => {
                flag.store(true, std::sync::atomic::Ordering::Release);
                HttpError::HttpRequestBodySize(Some(limit))
            }
        })
    });
    let too_large = || {
        host_response(
            413,
            format!("request body larger than the limit of {limit} bytes"),
        )
    };
    let mut builder = match wasi_builder(&spec.run) {
        Ok(b) => b,
        Err(reason) => return host_response(500, format!("the app cannot start: {reason}")),
    };
    let meter = RunMeter::adding_to(Some(spec.run.usage.clone()));
    let slicer = Slicer::new(
        engine.config().slice_ticks,
        stop,
        meter.clone(),
        spec.run.cpu_limit_millicores,
    )
    .with_cpu_deadline(spec.timeout);
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_HOST_RESOURCES);
    let state = HttpState {
        wasi: builder.build(),
        http: WasiHttpCtx::new(),
        table,
        budget: StoreBudget::new(spec.run.memory_limit).adding_to(spec.run.usage.clone()),
        slicer,
        outbound: OutboundPolicy {
            allowed: spec.outbound.clone(),
            cluster_api: spec.cluster_api.clone(),
        },
    };
    let mut store = Store::new(pre.engine(), state);
    store.limiter(|state| &mut state.budget);
    Slicer::install(&mut store, |state| &mut state.slicer);
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .and_then(|req| {
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        });
    let (req, out) = match prepared {
        Ok(pair) => pair,
        Err(e) => return host_response(400, format!("bad request: {e:#}")),
    };
    let pre = pre.clone();
    let ticking = engine.enter_run();
    // The instance runs in its own task so it can keep writing the body after the
    // response head has gone out.
    // Who reports a fault that happens after the response head went out: the instance
    // task if the head was out when it ended, else this function once it sees the head.
    let late = Arc::new(std::sync::Mutex::new(LateFault::default()));
    let late_in_task = late.clone();
    let output = spec.run.output.clone();
    let timeout = spec.timeout;
    let late_path = path.clone();
    let faults = spec.faults.clone();
    let task = tokio::spawn(Metered::new(
        async move {
            let _ticking = ticking;
            let result = match pre.instantiate_async(&mut store).await {
                Ok(proxy) => {
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                }
                Err(e) => Err(e),
            };
            let state = store.data();
            let fault = result.err().map(|e| {
                if state.slicer.timed_out() {
                    Fault::TimedOut
                } else if state.slicer.interrupted() {
                    Fault::Stopped
                } else if let Some(refusal) = state.budget.refusal() {
                    Fault::Memory(refusal.message())
                } else {
                    Fault::Trapped(describe_failure(&e))
                }
            });
            if let Some(f) = &fault {
                faults.report(f);
                tracing::debug!(path = %late_path, fault = %f.describe(timeout), "request failed");
            }
            let mut late = late_in_task.lock().unwrap_or_else(|p| p.into_inner());
            late.done = true;
            if late.head_sent {
                if let Some(f) = &fault {
                    log_late(&*output, &late_path, f, timeout);
                }
            } else {
                late.fault = fault.clone();
            }
            fault
        }
        .in_current_span(),
        meter,
    ));
    let log = |line: String| {
        spec.run
            .output
            .write(Stream::Stderr, format!("skiff: {line}\n").as_bytes());
    };
    let exceeded = || exceeded.load(std::sync::atomic::Ordering::Acquire);
    match receiver.await {
        Ok(Ok(_)) if exceeded() => too_large(),
        Ok(Ok(response)) => {
            // The head is out; a fault while streaming the body is logged, by the task
            // if it is still running.
            let mut late = late.lock().unwrap_or_else(|p| p.into_inner());
            late.head_sent = true;
            if late.done
                && let Some(f) = late.fault.take()
            {
                log_late(&*spec.run.output, &path, &f, spec.timeout);
            }
            response
        }
        Ok(Err(_)) if exceeded() => too_large(),
        Ok(Err(code)) => {
            log(format!("request {path} answered with an error: {code:?}"));
            host_response(
                error_code_status(&code),
                format!("the app failed the request: {code:?}"),
            )
        }
        Err(_) if exceeded() => too_large(),
        Err(_) => {
            let fault = task.await.ok().flatten();
            let (status, text) = match &fault {
                None => (
                    500,
                    "the app returned without setting a response".to_string(),
                ),
                Some(f) => (f.status(), f.describe(spec.timeout)),
            };
            log(format!("request {path}: {text}"));
            host_response(status, text)
        }
    }
}

/// What the instance task and the response path share about a fault after the head.
#[derive(Default)]
struct LateFault {
    head_sent: bool,
    done: bool,
    fault: Option<Fault>,
}

fn log_late(output: &dyn super::OutputSink, path: &str, fault: &Fault, timeout: Duration) {
    output.write(
        Stream::Stderr,
        format!(
            "skiff: request {path} failed while streaming its body: {}\n",
            fault.describe(timeout)
        )
        .as_bytes(),
    );
}

/// How a request's instance failed.
#[derive(Clone)]
enum Fault {
    TimedOut,
    Stopped,
    Memory(String),
    Trapped(String),
}

impl Fault {
    fn status(&self) -> u16 {
        match self {
            Fault::TimedOut => 504,
            Fault::Stopped => 503,
            Fault::Memory(_) | Fault::Trapped(_) => 500,
        }
    }

    fn describe(&self, timeout: Duration) -> String {
        match self {
            Fault::TimedOut => format!(
                "the request exceeded its CPU time limit of {} ms and was stopped",
                timeout.as_millis()
            ),
            Fault::Stopped => "the pod is stopping".to_string(),
            Fault::Memory(m) => format!("the app ran out of memory: {m}"),
            Fault::Trapped(t) => format!("the app trapped: {t}"),
        }
    }
}

/// The status for an error the guest answered with: too large a body is the client's
/// fault; anything else is the app's.
fn error_code_status(code: &ErrorCode) -> u16 {
    match code {
        ErrorCode::HttpRequestBodySize(_) => 413,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_hosts_match_host_port_and_wildcards() {
        let hosts = OutboundHosts::new(vec![
            "api.example.com".into(),
            "127.0.0.1:8080".into(),
            "*.svc.local".into(),
        ]);
        assert!(hosts.allows("api.example.com"));
        assert!(hosts.allows("API.example.com:443"));
        assert!(hosts.allows("127.0.0.1:8080"));
        assert!(!hosts.allows("127.0.0.1:8081"));
        assert!(hosts.allows("web.default.svc.local:80"));
        assert!(!hosts.allows("svc.local"));
        assert!(!hosts.allows("evil.com"));
        assert!(!OutboundHosts::default().allows("api.example.com"));
        assert!(OutboundHosts::new(vec!["*".into()]).allows("anything:1"));
    }
}
