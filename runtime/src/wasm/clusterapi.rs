//! The API server, from inside a pod: what `kubernetes.default.svc` is to a pod in
//! Kubernetes.
//!
//! Every pod is told `KUBERNETES_SERVICE_HOST=kubernetes.default.svc` and
//! `KUBERNETES_SERVICE_PORT=443`, as kubelets tell theirs, and an outgoing wasi:http
//! request to that name (or `kubernetes`, `kubernetes.default`,
//! `kubernetes.default.svc.cluster.local`) goes to the API server the agent talks to,
//! over TLS checked against the cluster CA: the same CA the pod finds in
//! `/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`. The request goes as the
//! guest wrote it, with the guest's own `Authorization` (its ServiceAccount's token), so
//! the API server authenticates and authorizes the pod, never the node. No allowed-host
//! annotation is needed, as no network policy stands between a pod and its API server.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use skiff_api::client::Servers;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// The host pods are told the API server is at.
pub const SERVICE_HOST: &str = "kubernetes.default.svc";
pub const SERVICE_PORT: &str = "443";

/// How long connecting and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster's API servers and the CA they present.
#[derive(Clone)]
pub struct ClusterApi {
    servers: Servers,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterApi")
            .field("servers", &self.servers.urls())
            .finish_non_exhaustive()
    }
}

/// Whether an outgoing request's authority names the API server's in-cluster service.
pub fn is_cluster_api(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((host, "443")) => host,
        Some(_) => return false,
        None => authority,
    };
    matches!(
        host.to_ascii_lowercase().as_str(),
        "kubernetes"
            | "kubernetes.default"
            | "kubernetes.default.svc"
            | "kubernetes.default.svc.cluster.local"
    )
}

impl ClusterApi {
    /// `roots` are the cluster CA's DER certificates.
    pub fn new(servers: Servers, roots: &[Vec<u8>]) -> Result<ClusterApi, rustls::Error> {
        let mut store = rustls::RootCertStore::empty();
        for der in roots {
            store.add(CertificateDer::from(der.clone()))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClusterApi {
            servers,
            tls: Arc::new(config),
        })
    }

    /// Sends a guest's request to the current API server.
    pub async fn send(
        &self,
        mut request: http::Request<WasiBody>,
    ) -> Result<
        (
            http::Response<WasiBody>,
            Box<dyn Future<Output = Result<(), HttpError>> + Send>,
        ),
        HttpError,
    > {
        let url = self.servers.current();
        let host = url
            .host()
            .ok_or(HttpError::DestinationNotFound)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port_u16().unwrap_or(443);
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(HttpError::Connect)?;
            let _ = tcp.set_nodelay(true);
            let name =
                ServerName::try_from(host.clone()).map_err(|_| HttpError::DestinationNotFound)?;
            tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(HttpError::Tls)
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| HttpError::ConnectionTimeout)??;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(HttpError::from)?;
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        *request.uri_mut() = path.parse().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let authority = url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or(host);
        if let Ok(value) = http::HeaderValue::from_str(&authority) {
            request.headers_mut().insert(http::header::HOST, value);
        }
        let driving = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(HttpError::from)?;
        Ok((
            response.map(|body| body.map_err(HttpError::from).boxed_unsync()),
            Box::new(async move {
                match driving.await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(HttpError::from(e)),
                    Err(_) => Err(HttpError::ConnectionTerminated),
                }
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_in_cluster_names_of_the_api_server() {
        for name in [
            "kubernetes",
            "kubernetes.default.svc",
            "kubernetes.default.svc:443",
            "KUBERNETES.default",
            "kubernetes.default.svc.cluster.local",
        ] {
            assert!(is_cluster_api(name), "{name}");
        }
        for name in [
            "kubernetes.default.svc:80",
            "example.com",
            "kubernetes.other.svc",
            "",
        ] {
            assert!(!is_cluster_api(name), "{name}");
        }
    }
}
