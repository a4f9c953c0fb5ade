//! The cluster's certificates: a CA made on first start, and a serving certificate it
//! signs for the API server's addresses. Kept in `DIR/tls/` (keys mode 0600); the
//! serving certificate is re-issued when the names it must cover change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("reading or writing {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a usable PEM file")]
    BadPem { path: PathBuf },
    #[error("building the TLS configuration")]
    Tls(#[from] rustls::Error),
}

/// The loaded certificates.
pub struct Pki {
    /// The CA certificate, PEM, as clients should trust it.
    pub ca_pem: String,
    /// The serving configuration for the API listener.
    pub server_config: Arc<rustls::ServerConfig>,
    /// The names the serving certificate covers.
    pub sans: Vec<String>,
    /// The key ServiceAccount tokens are signed with (`sa.key`, PKCS#8 PEM): made with
    /// the CA and shared as the CA is (the etcd bootstrap data, backups), so every
    /// server of a cluster verifies every server's tokens.
    pub sa_key_pem: String,
}

impl Pki {
    /// `sha256` of the CA certificate file, hex: what a join token pins (`K10<hash>::…`).
    pub fn ca_hash(&self) -> String {
        skiff_api::token::ca_hash(&self.ca_pem)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "skiff-ca");
    dn.push(DnType::OrganizationName, "skiff");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2125, 1, 1);
    params
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes a file atomically with the given mode.
fn write_private(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    skiff_api::client::write_file(path, text, mode).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads the CA and serving certificate from `dir`, making what is missing. `sans` are
/// the DNS names and IP addresses the serving certificate must cover.
pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let (ca_pem, ca_key_pair) = match (read(&ca_crt)?, read(&ca_key)?) {
        (Some(cert), Some(key)) => {
            let key = KeyPair::from_pem(&key).map_err(|_| PkiError::BadPem {
                path: ca_key.clone(),
            })?;
            (cert, key)
        }
        _ => {
            let key = KeyPair::generate()?;
            let cert = ca_params().self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem(), 0o600)?;
            write_private(&ca_crt, &cert.pem(), 0o644)?;
            tracing::info!(path = %ca_crt.display(), "created the cluster CA");
            (cert.pem(), key)
        }
    };

    let sa_key = dir.join("sa.key");
    let sa_key_pem = match read(&sa_key)? {
        Some(pem) if !pem.trim().is_empty() => pem,
        _ => {
            let pem = KeyPair::generate()?.serialize_pem();
            write_private(&sa_key, &pem, 0o600)?;
            tracing::info!(path = %sa_key.display(), "created the service-account signing key");
            pem
        }
    };

    let mut sans: Vec<String> = sans.to_vec();
    sans.sort();
    sans.dedup();
    let (crt, key_path, names) = (
        dir.join("serving.crt"),
        dir.join("serving.key"),
        dir.join("serving.names"),
    );
    let current = (read(&crt)?, read(&key_path)?, read(&names)?);
    let (cert_pem, key_pem) = match current {
        (Some(c), Some(k), Some(n))
            if n.lines().map(str::to_string).collect::<Vec<_>>() == sans =>
        {
            (c, k)
        }
        _ => {
            let issuer = Issuer::new(ca_params(), &ca_key_pair);
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(sans.clone())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "skiff-apiserver");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.not_before = rcgen::date_time_ymd(2025, 1, 1);
            params.not_after = rcgen::date_time_ymd(2125, 1, 1);
            let cert = params.signed_by(&key, &issuer)?;
            write_private(&key_path, &key.serialize_pem(), 0o600)?;
            write_private(&crt, &cert.pem(), 0o644)?;
            write_private(&names, &sans.join("\n"), 0o644)?;
            tracing::info!(names = ?sans, "issued the API serving certificate");
            (cert.pem(), key.serialize_pem())
        }
    };

    let bad = |path: &Path| PkiError::BadPem {
        path: path.to_path_buf(),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&crt))?;
    let private = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| bad(&key_path))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, private)?;
    // HTTP/2 as kube-apiserver offers it: kubectl and client-go then multiplex their
    // requests and watches on one connection, and a browser (the dashboard) is not held
    // to its six HTTP/1.1 connections per host, each long watch taking one. Upgrades
    // (SPDY, WebSocket) are HTTP/1.1, which those clients ask for by ALPN themselves.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Pki {
        ca_pem,
        server_config: Arc::new(config),
        sans,
        sa_key_pem,
    })
}

/// The names a serving certificate for `listen` should cover: loopback, the listen
/// address unless it is a wildcard, this host's name, and the extra `--tls-san` values.
pub fn default_sans(listen: std::net::SocketAddr, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            sans.push(host.to_string());
        }
    }
    sans.extend(extra.iter().cloned());
    sans
}

/// A listener that completes TLS handshakes off the accept path (so one slow client
/// never holds up the others) and hands axum finished TLS streams.
pub struct TlsListener {
    incoming: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl TlsListener {
    pub fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, incoming) = tokio::sync::mpsc::channel(256);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Without TCP_NODELAY, small responses wait out delayed ACKs (~40 ms).
                let _ = stream.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { incoming, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_the_serving_cert_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let serving = std::fs::read_to_string(dir.path().join("serving.crt")).unwrap();
        let b = load_or_create(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.ca_hash(), b.ca_hash());
        assert_eq!(
            serving,
            std::fs::read_to_string(dir.path().join("serving.crt")).unwrap(),
            "same names, same certificate"
        );
        let c = load_or_create(dir.path(), &["10.1.2.3".into(), "localhost".into()]).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem, "the CA survives a new name");
        assert_ne!(
            serving,
            std::fs::read_to_string(dir.path().join("serving.crt")).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "serving.key"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
}
