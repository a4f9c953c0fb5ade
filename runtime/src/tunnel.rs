//! The agent's end of the reverse tunnels: it dials an API server, authenticates with
//! its node credential, upgrades the connection (`Upgrade: skiff-tunnel`) and then
//! serves HTTP/2 over it, the same endpoints and app traffic its listener serves. So
//! the control plane reaches it (logs, the gateway) with no inbound connection: a node
//! behind NAT works. A broken tunnel is dialled again with bounded exponential backoff
//! and jitter.
//!
//! A server reaches only the agents that have a tunnel open to it, so, as k3s agents
//! do, the agent keeps one to every server it knows of ([`run_all`]), opening and
//! closing them as the set of servers changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::Rng;
use rustls_pki_types::{CertificateDer, ServerName};
use skiff_api::client::Servers;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::TunnelAuth;
use crate::runtime::Runtime;

/// Where to open one tunnel, and how to authenticate.
#[derive(Clone, Debug)]
pub struct TunnelTarget {
    /// The API server's URL (`https://HOST:PORT`).
    pub url: http::Uri,
    pub auth: TunnelAuth,
}

const PATH: &str = "/skiff/v1/tunnel";
const PROTOCOL: &str = "skiff-tunnel";
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long connecting, the TLS handshake and the upgrade may take: a server that
/// accepts connections but is hung must not hold a tunnel attempt for ever.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// A tunnel that stayed open this long resets the backoff: the server took it, so
/// when it closes (the server restarted, say) the next is dialled at once. One that
/// closed sooner counts as a failed attempt, so a server that takes tunnels and drops
/// them straight away is backed off from like one that refuses them.
const STABLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the server URL {0} has no host")]
    NoHost(String),
    #[error("connecting")]
    Io(#[from] std::io::Error),
    #[error("TLS")]
    Tls(#[from] rustls::Error),
    #[error("the server name {0:?} is not valid for TLS")]
    Name(String),
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    #[error("the server answered {0} instead of switching protocols")]
    Refused(http::StatusCode),
    #[error("no tunnel within {0:?}")]
    DialTimedOut(Duration),
}

/// Keeps a tunnel open to every server in `servers` until `stop`: one is opened for
/// each server that joins the set and closed for each that leaves it.
pub async fn run_all(
    servers: Servers,
    auth: TunnelAuth,
    rt: Arc<Runtime>,
    stop: CancellationToken,
) {
    let service = crate::server::connection_service(crate::server::router(rt.clone()), rt);
    let mut changes = servers.subscribe();
    let mut open: HashMap<http::Uri, CancellationToken> = HashMap::new();
    let mut tunnels = JoinSet::new();
    loop {
        let wanted = changes.borrow_and_update().urls.clone();
        open.retain(|url, tunnel| {
            let keep = wanted.contains(url);
            if !keep {
                tracing::info!(server = %url, "closing the tunnel to a server no longer listed");
                tunnel.cancel();
            }
            keep
        });
        for url in wanted {
            if open.contains_key(&url) {
                continue;
            }
            let tunnel = stop.child_token();
            let target = TunnelTarget {
                url: url.clone(),
                auth: auth.clone(),
            };
            tunnels.spawn(run(target, service.clone(), tunnel.clone()));
            open.insert(url, tunnel);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.cancelled() => break,
            // Reaps the tunnels that were closed.
            Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
        }
    }
    for tunnel in open.values() {
        tunnel.cancel();
    }
    while tunnels.join_next().await.is_some() {}
}

/// Keeps one tunnel open until `stop`.
async fn run<S>(target: TunnelTarget, service: S, stop: CancellationToken)
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut opened = None;
        let result = tokio::select! {
            r = session(&target, service.clone(), &mut opened) => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(()) => tracing::info!(server = %target.url, "tunnel closed; reopening"),
            Err(e) => {
                tracing::warn!(server = %target.url, error = %e, error.source = ?std::error::Error::source(&e), "tunnel failed; retrying")
            }
        }
        backoff = backoff_after(backoff, opened.map(|at: Instant| at.elapsed()));
        // Full jitter in [backoff/2, backoff]: agents cut off together don't return together.
        let wait = backoff.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The backoff (before jitter) to wait after an attempt whose tunnel stayed open
/// for `up` (None: it never opened), given the backoff so far.
fn backoff_after(backoff: Duration, up: Option<Duration>) -> Duration {
    if up.is_some_and(|up| up >= STABLE) {
        BACKOFF_MIN
    } else {
        backoff
    }
}

/// One tunnel, from dialling to its end; `opened` is when it opened, if it did.
async fn session<S>(
    target: &TunnelTarget,
    service: S,
    opened: &mut Option<Instant>,
) -> Result<(), TunnelError>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let upgraded = tokio::time::timeout(DIAL_TIMEOUT, dial(target))
        .await
        .map_err(|_| TunnelError::DialTimedOut(DIAL_TIMEOUT))??;
    *opened = Some(Instant::now());
    tracing::info!(server = %target.url, "tunnel open");
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(1000)
        .serve_connection(upgraded, service)
        .await?;
    Ok(())
}

/// Connects, shakes hands and upgrades: the stream the agent then serves on.
async fn dial(target: &TunnelTarget) -> Result<hyper::upgrade::Upgraded, TunnelError> {
    let host = target
        .url
        .host()
        .ok_or_else(|| TunnelError::NoHost(target.url.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = target.url.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in &target.auth.roots {
        roots.add(CertificateDer::from(der.clone()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(host.clone()).map_err(|_| TunnelError::Name(host.clone()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let authority = target
        .url
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let request = http::Request::get(PATH)
        .header(header::HOST, authority)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", target.auth.token),
        )
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a valid request");
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(TunnelError::Refused(response.status()));
    }
    Ok(hyper::upgrade::on(response).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tunnel_that_worked_resets_the_backoff_and_failed_dials_double_it() {
        // Failed dials (the server is down) back off further each time.
        let mut backoff = BACKOFF_MIN;
        for _ in 0..5 {
            backoff = (backoff_after(backoff, None) * 2).min(BACKOFF_MAX);
        }
        assert_eq!(backoff, BACKOFF_MIN * 32);
        // A tunnel that served for a while and then closed (the server restarted):
        // the next is dialled at once, however many tunnels came and went before.
        assert_eq!(
            backoff_after(backoff, Some(Duration::from_secs(15))),
            BACKOFF_MIN
        );
        // One dropped as soon as it opened counts as a failure.
        assert_eq!(
            backoff_after(backoff, Some(Duration::from_millis(10))),
            backoff
        );
    }
}
