//! `pods/NAME/portforward`: what `kubectl port-forward` opens. kubectl (1.31 and later)
//! asks for a WebSocket with the subprotocol `SPDY/3.1+portforward.k8s.io` and speaks
//! SPDY inside its binary messages; older clients (and kubectl when the WebSocket is
//! refused) upgrade the connection to `SPDY/3.1` directly with a POST. Both are served.
//!
//! Inside the SPDY session each forwarded connection is a pair of streams the client
//! opens, `streamType: error` and `streamType: data`, with the same `requestID` and the
//! `port`. A Wasm pod has no sockets: its one listener is its HTTP handler. So the bytes
//! of a data stream are read as HTTP/1.1 here, and each request goes to the pod's handler
//! the way the gateway sends one, through the node's reverse tunnel (or to the agent's
//! listener when the node has no tunnel) with the pod named in `x-skiff-pod`. The
//! responses go back on the data stream. Whatever fails is written on the error stream,
//! which kubectl prints, as the kubelet does.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Target;
use crate::error::{ApiError, ApiResult};
use crate::objects;
use crate::spdy::{self, Codec, Frame};
use crate::state::ApiServer;
use crate::tunnel::TunnelBody;
use skiff_api::routes::POD_HEADER;

/// The port-forward protocol, as the SPDY stream protocol and inside the WebSocket's.
const PROTOCOL: &str = "portforward.k8s.io";
const WEBSOCKET_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// The largest DATA frame sent: what kubectl itself writes at a time.
const CHUNK: usize = 32 * 1024;
/// Frames waiting to go out before senders wait.
const OUTGOING: usize = 64;

/// Serves an upgrade request for port forwarding to the pod `target` names.
pub(crate) async fn serve(
    api: Arc<ApiServer>,
    target: &Target,
    mut parts: http::request::Parts,
) -> ApiResult<Response> {
    let name = target.name();
    let pod = super::internal::get(api.as_ref(), target.info, target.namespace.as_deref(), name)
        .await?
        .ok_or_else(|| ApiError::not_found(target.info, name))?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest(format!("pod {name} does not have a host assigned")))?
        .to_string();
    if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(ApiError::BadRequest(format!(
            "unable to forward port because pod is not running. Current status={}",
            pod.pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Unknown")
        )));
    }
    let backend = Arc::new(PodBackend {
        api: api.clone(),
        node,
        pod: format!("{}/{name}", objects::namespace(&pod).unwrap_or("default")),
        ports: declared_ports(&pod),
        client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
    });
    let upgrade = parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade == "websocket" {
        let offered = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == WEBSOCKET_PROTOCOL);
        if !offered {
            return Err(ApiError::BadRequest(format!(
                "unable to upgrade connection: the WebSocket protocol {WEBSOCKET_PROTOCOL} is the one served"
            )));
        }
        let ws = WebSocketUpgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|e| ApiError::BadRequest(format!("unable to upgrade connection: {e}")))?;
        return Ok(ws
            .protocols([WEBSOCKET_PROTOCOL])
            .on_upgrade(move |socket| over_websocket(socket, backend)));
    }
    if upgrade.starts_with("spdy/3.1") {
        let offered = parts
            .headers
            .get_all("x-stream-protocol-version")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|p| p.trim() == PROTOCOL);
        if !offered {
            return Err(ApiError::Forbidden(format!(
                "unable to upgrade: the stream protocol {PROTOCOL} is the one served"
            )));
        }
        let on_upgrade = hyper::upgrade::on(http::Request::from_parts(parts, ()));
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => over_stream(TokioIo::new(upgraded), backend).await,
                Err(e) => tracing::debug!(error = %e, "port-forward upgrade failed"),
            }
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "SPDY/3.1")
            .header("X-Stream-Protocol-Version", PROTOCOL)
            .body(Body::empty())
            .map_err(ApiError::internal);
    }
    Err(ApiError::BadRequest(
        "unable to upgrade connection: port forwarding takes a WebSocket (SPDY/3.1+portforward.k8s.io) or an SPDY/3.1 upgrade".into(),
    ))
}

/// The container ports a pod declares, if any.
fn declared_ports(pod: &Value) -> Vec<u16> {
    pod.pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["containerPort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect()
}

/// A SPDY session inside a WebSocket's binary messages.
async fn over_websocket(socket: WebSocket, backend: Arc<PodBackend>) {
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTGOING);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(Message::Binary(frame)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(OUTGOING);
    let reader = async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(bytes) if in_tx.send(bytes.clone()).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::join!(reader, session(in_rx, out_tx, backend));
    let _ = writer.await;
}

/// A SPDY session on an upgraded connection.
async fn over_stream<S>(io: S, backend: Arc<PodBackend>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut read, mut write) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTGOING);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if write.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = write.shutdown().await;
    });
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(OUTGOING);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if in_tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    tokio::join!(reader, session(in_rx, out_tx, backend));
    let _ = writer.await;
}

/// One forwarded connection: its streams as they open.
#[derive(Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
}

/// Reads frames until the client goes, opening a forward for each data stream.
async fn session(
    mut incoming: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<Bytes>,
    backend: Arc<PodBackend>,
) {
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // What the client sends on each data stream, to its forward; None is its FIN.
    let mut inputs: HashMap<u32, mpsc::Sender<Option<Bytes>>> = HashMap::new();
    // Error streams by data stream, once both are known.
    let errors: Arc<std::sync::Mutex<HashMap<u32, u32>>> = Arc::default();
    let mut last_stream = 0;
    while let Some(chunk) = incoming.recv().await {
        buf.extend_from_slice(&chunk);
        loop {
            let frame = match codec.parse(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "port-forward: bad SPDY from the client");
                    let _ = out.send(spdy::goaway(last_stream)).await;
                    return;
                }
            };
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    last_stream = last_stream.max(stream);
                    let get = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.as_str())
                    };
                    let (Some(kind), Some(port), request) =
                        (get("streamtype"), get("port"), get("requestid"))
                    else {
                        let _ = out
                            .send(spdy::rst_stream(stream, spdy::RST_PROTOCOL_ERROR))
                            .await;
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        let _ = out
                            .send(spdy::rst_stream(stream, spdy::RST_PROTOCOL_ERROR))
                            .await;
                        continue;
                    };
                    // Clients before requestID pair streams by port.
                    let request = request.map_or_else(|| port.to_string(), str::to_string);
                    if out.send(codec.syn_reply(stream)).await.is_err() {
                        return;
                    }
                    let pair = pairs.entry(request.clone()).or_default();
                    match kind {
                        "error" => pair.error = Some(stream),
                        "data" => {
                            pair.data = Some(stream);
                            let (tx, rx) = mpsc::channel(OUTGOING);
                            inputs.insert(stream, tx);
                            tokio::spawn(forward(
                                backend.clone(),
                                port,
                                stream,
                                errors.clone(),
                                rx,
                                out.clone(),
                            ));
                        }
                        _ => {
                            let _ = out
                                .send(spdy::rst_stream(stream, spdy::RST_INVALID_STREAM))
                                .await;
                        }
                    }
                    if let Pair {
                        error: Some(e),
                        data: Some(d),
                    } = pair
                    {
                        errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(*d, *e);
                        pairs.remove(&request);
                    }
                }
                Frame::Data { stream, fin, data } => {
                    let Some(input) = inputs.get(&stream) else {
                        // Error streams carry nothing from the client.
                        continue;
                    };
                    if !data.is_empty() && input.send(Some(data)).await.is_err() {
                        inputs.remove(&stream);
                        continue;
                    }
                    if fin {
                        let _ = input.send(None).await;
                        inputs.remove(&stream);
                    }
                }
                Frame::RstStream { stream, .. } => {
                    inputs.remove(&stream);
                }
                Frame::Ping(id) => {
                    if out.send(spdy::ping(id)).await.is_err() {
                        return;
                    }
                }
                Frame::GoAway => return,
                Frame::Ignored => {}
            }
        }
    }
}

/// Forwards one data stream: its bytes are served as HTTP/1.1 by requests to the pod.
async fn forward(
    backend: Arc<PodBackend>,
    port: u16,
    stream: u32,
    errors: Arc<std::sync::Mutex<HashMap<u32, u32>>>,
    mut input: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Bytes>,
) {
    let error_stream = || {
        errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&stream)
    };
    if !backend.ports.is_empty() && !backend.ports.contains(&port) {
        let message = format!(
            "error forwarding port {port} to pod {}: the pod declares no port {port} (its ports: {})",
            backend.pod,
            backend
                .ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        fail(&out, stream, error_stream(), &message).await;
        return;
    }
    let (local, remote) = tokio::io::duplex(CHUNK * 2);
    let server_backend = backend.clone();
    let server = tokio::spawn(async move {
        let service = hyper::service::service_fn(move |request| {
            let backend = server_backend.clone();
            async move { Ok::<_, std::convert::Infallible>(backend.send(request).await) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(remote), service)
            .await
    });
    let (mut from_pod, mut to_pod) = tokio::io::split(local);
    let mut buf = vec![0u8; CHUNK];
    let mut client_done = false;
    loop {
        tokio::select! {
            chunk = input.recv(), if !client_done => match chunk {
                Some(Some(bytes)) => {
                    if to_pod.write_all(&bytes).await.is_err() {
                        client_done = true;
                    }
                }
                Some(None) | None => {
                    client_done = true;
                    let _ = to_pod.shutdown().await;
                }
            },
            read = from_pod.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.send(spdy::data(stream, false, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            },
        }
    }
    if let Ok(Err(e)) = server.await
        && !e.is_incomplete_message()
    {
        tracing::debug!(error = %e, pod = %backend.pod, "port-forward: the connection failed");
    }
    let _ = out.send(spdy::data(stream, true, &[])).await;
    if let Some(error) = error_stream() {
        let _ = out.send(spdy::data(error, true, &[])).await;
    }
}

/// Reports a failure on the error stream and ends both.
async fn fail(out: &mpsc::Sender<Bytes>, data: u32, error: Option<u32>, message: &str) {
    if let Some(error) = error {
        let _ = out.send(spdy::data(error, true, message.as_bytes())).await;
    } else {
        tracing::debug!(%message, "port-forward failed before its error stream opened");
    }
    let _ = out.send(spdy::data(data, true, &[])).await;
}

/// Where a forwarded connection's requests go: the pod's handler, on its node.
struct PodBackend {
    api: Arc<ApiServer>,
    node: String,
    /// `namespace/name`, as the agent's `x-skiff-pod` names it.
    pod: String,
    /// The ports the pod declares; any port reaches its handler when it declares none.
    ports: Vec<u16>,
    client: Client<HttpConnector, TunnelBody>,
}

impl PodBackend {
    /// Sends one request to the pod; an answer the pod could not give is a 502 that
    /// says why, as the gateway answers.
    async fn send(&self, request: http::Request<hyper::body::Incoming>) -> Response {
        let (mut parts, body) = request.into_parts();
        for name in crate::gateway::HOP_BY_HOP {
            parts.headers.remove(*name);
        }
        if let Ok(pod) = HeaderValue::from_str(&self.pod) {
            parts.headers.insert(POD_HEADER, pod);
        }
        let body: TunnelBody = body.map_err(axum::Error::new).boxed_unsync();
        let sent = if let Some(tunnel) = self.api.tunnels.get(&self.node) {
            parts.uri = crate::tunnel::request_uri(parts.uri.path_and_query());
            crate::tunnel::send(tunnel, http::Request::from_parts(parts, body))
                .await
                .map_err(|e| e.to_string())
        } else {
            match self.agent_uri(parts.uri.path_and_query()).await {
                Ok(uri) => {
                    parts.uri = uri;
                    self.client
                        .request(http::Request::from_parts(parts, body))
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(e) => Err(e),
            }
        };
        match sent {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                parts.headers.remove(skiff_api::routes::UNSERVED_HEADER);
                Response::from_parts(parts, Body::new(body))
            }
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                format!(
                    "port-forward to pod {} on node {}: {e}\n",
                    self.pod, self.node
                ),
            )
                .into_response(),
        }
    }

    /// The URI of a request to the agent's own listener, for a node with no tunnel.
    async fn agent_uri(&self, path: Option<&http::uri::PathAndQuery>) -> Result<http::Uri, String> {
        let nodes = crate::kinds::lookup("", "v1", "nodes").expect("nodes are served");
        let node = super::internal::get(self.api.as_ref(), nodes, None, &self.node)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("node {} is gone", self.node))?;
        let address = objects::agent_address(&node)
            .ok_or_else(|| format!("node {} is not reachable", self.node))?;
        let path = path.map_or("/", |p| p.as_str());
        format!("http://{address}{path}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| e.to_string())
    }
}
