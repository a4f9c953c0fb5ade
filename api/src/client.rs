//! The API client: a `kube::Client` built from a Skiff kubeconfig, plus the calls kube
//! has no typed form for (raw module upload and download).
//!
//! kube-rs is the most used Rust Kubernetes client; building on it gives the agent and the
//! CLI watch streams with resume and 410 handling, retries and TLS for free.

use std::path::{Path, PathBuf};

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::module::Module;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no kubeconfig found: pass --kubeconfig, set KUBECONFIG, or start a server")]
    NoKubeconfig,
    #[error("reading kubeconfig {path}")]
    KubeconfigUnreadable {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig")]
    ConfigInvalid(#[source] kube::config::KubeconfigError),
    #[error("creating the HTTP client")]
    ClientBuildFailed(#[source] kube::Error),
    #[error("request failed")]
    RequestFailed(#[source] kube::Error),
    #[error("building request")]
    RequestInvalid(#[source] kube::core::request::Error),
    #[error("building the HTTP client")]
    HttpClient(#[source] reqwest::Error),
    #[error("the kubeconfig's token is not a valid header value")]
    BadToken,
}

/// The kubeconfig path the client verbs use: the flag, then `$KUBECONFIG`, then
/// `~/.kube/config`.
pub fn kubeconfig_path(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".kube/config"))
}

/// The client configuration a kubeconfig gives (cluster URL, credentials).
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    let path = kubeconfig_path(kubeconfig).ok_or(ClientError::NoKubeconfig)?;
    let kc = Kubeconfig::read_from(&path)
        .map_err(|source| ClientError::KubeconfigUnreadable { path, source })?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(ClientError::ConfigInvalid)
}

/// A client for the cluster a kubeconfig names.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    kube::Client::try_from(config(kubeconfig).await?).map_err(ClientError::ClientBuildFailed)
}

/// A plain HTTP client for the cluster a kubeconfig names, for what kube's client does
/// not do (streamed uploads, benchmarks): it trusts the kubeconfig's CA and sends its
/// bearer token. Returns the server's base URL with it.
pub async fn http_client(
    kubeconfig: Option<&Path>,
) -> Result<(String, reqwest::Client), ClientError> {
    let (url, builder) = http_client_builder(kubeconfig).await?;
    Ok((url, builder.build().map_err(ClientError::HttpClient)?))
}

/// Like `http_client`, for callers that tune the client further (pool sizes).
pub async fn http_client_builder(
    kubeconfig: Option<&Path>,
) -> Result<(String, reqwest::ClientBuilder), ClientError> {
    use secrecy::ExposeSecret;
    let config = config(kubeconfig).await?;
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .tls_built_in_root_certs(false);
    for der in config.root_cert.iter().flatten() {
        let cert = reqwest::Certificate::from_der(der).map_err(ClientError::HttpClient)?;
        builder = builder.add_root_certificate(cert);
    }
    if let Some(token) = &config.auth_info.token {
        let mut headers = http::HeaderMap::new();
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| ClientError::BadToken)?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    Ok((url, builder))
}

/// Uploads a Wasm binary to the module store; returns the stored Module (its digest).
pub async fn upload_module(client: &kube::Client, bytes: Vec<u8>) -> Result<Module, ClientError> {
    let req = http::Request::post("/apis/skiff.dev/v1/modules")
        .header(http::header::CONTENT_TYPE, "application/wasm")
        .header(http::header::ACCEPT, "application/json")
        .body(bytes)
        .map_err(|e| ClientError::RequestInvalid(kube::core::request::Error::BuildRequest(e)))?;
    client
        .request::<Module>(req)
        .await
        .map_err(ClientError::RequestFailed)
}

/// Downloads the bytes of a stored module.
pub async fn download_module(client: &kube::Client, digest: &str) -> Result<Vec<u8>, ClientError> {
    let req = http::Request::get(format!("/apis/skiff.dev/v1/modules/{digest}"))
        .header(http::header::ACCEPT, "application/wasm")
        .body(kube::client::Body::empty())
        .map_err(|e| ClientError::RequestInvalid(kube::core::request::Error::BuildRequest(e)))?;
    let resp = client.send(req).await.map_err(ClientError::RequestFailed)?;
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(ClientError::RequestFailed)?
        .to_bytes();
    if !status.is_success() {
        // Modules are binary, so kube's JSON error handling can't run on this response:
        // decode the Status ourselves.
        let status = serde_json::from_slice::<kube::core::Status>(&body).unwrap_or_else(|_| {
            kube::core::Status::failure(&String::from_utf8_lossy(&body), "")
                .with_code(status.as_u16())
        });
        return Err(ClientError::RequestFailed(kube::Error::Api(status.into())));
    }
    Ok(body.to_vec())
}

/// A kubeconfig for `url`, trusting the CA `ca_pem`, authenticating with `token`.
pub fn kubeconfig_text(url: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {ca}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    \
         user: {user}\n    namespace: default\ncurrent-context: skiff\nusers:\n- name: {user}\n  user:\n    \
         token: {token}\npreferences: {{}}\n"
    )
}

/// Writes a file only its owner can read, atomically.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    write_file(path, text, 0o600)
}

/// Writes a file atomically (a temporary file, fsynced, then renamed over it) with
/// permissions `mode`, making its directory if needed.
pub fn write_file(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&tmp)?;
    // A leftover temporary file keeps its old mode through `open`: set it.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the join token is malformed: {0}")]
    BadToken(String),
    #[error("reaching the server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "refusing to join: the server's CA hashes to {got}, but the join token pins {expected} \
         (is this the right server?)"
    )]
    CaMismatch { expected: String, got: String },
    #[error("the server's CA certificate is unusable")]
    BadCa(#[source] reqwest::Error),
    #[error("the server refused the join: {0}")]
    Refused(String),
}

/// The API server URLs a `kubernetes` Endpoints object lists (`https://IP:PORT`), the
/// way every server publishes the live ones in `default/kubernetes`.
pub fn endpoints_urls(endpoints: &serde_json::Value) -> Vec<String> {
    let mut urls = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            for port in subset["ports"].as_array().into_iter().flatten() {
                if let (Some(ip), Some(port)) = (address["ip"].as_str(), port["port"].as_u64()) {
                    let host = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip.to_string()
                    };
                    urls.push(format!("https://{host}:{port}"));
                }
            }
        }
    }
    urls
}

/// The CA certificate a server presents at `/cacerts`, fetched without verification and
/// then checked against `ca_hash` (what a `K10…` token pins), as k3s agents do.
pub async fn fetch_pinned_ca(server: &str, ca_hash: &str) -> Result<String, JoinError> {
    let server = server.trim_end_matches('/');
    let unreachable = |source| JoinError::Unreachable {
        url: server.to_string(),
        source,
    };
    // Nothing is trusted yet: the CA is checked against the token below.
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(unreachable)?;
    let ca_pem = insecure
        .get(format!("{server}/cacerts"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?
        .text()
        .await
        .map_err(unreachable)?;
    let got = crate::token::ca_hash(&ca_pem);
    if got != ca_hash {
        return Err(JoinError::CaMismatch {
            expected: ca_hash.to_string(),
            got,
        });
    }
    Ok(ca_pem)
}

/// Joins the cluster at `server` as node `node` with a join token: fetches the server's
/// CA, checks it against the hash the token pins, and trades the token for a credential
/// of this node. Returns a kubeconfig for that credential.
pub async fn join(server: &str, join_token: &str, node: &str) -> Result<String, JoinError> {
    let join = crate::token::JoinToken::parse(join_token).map_err(JoinError::BadToken)?;
    let server = server.trim_end_matches('/');
    let unreachable = |source| JoinError::Unreachable {
        url: server.to_string(),
        source,
    };
    let ca_pem = fetch_pinned_ca(server, &join.ca_hash).await?;
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(JoinError::BadCa)?;
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .map_err(unreachable)?;
    let response = pinned
        .post(format!("{server}/skiff/v1/join"))
        .bearer_auth(join.token.to_string())
        .json(&serde_json::json!({ "node": node }))
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        return Err(JoinError::Refused(message));
    }
    let token = body["token"]
        .as_str()
        .ok_or_else(|| JoinError::Refused("the answer carries no token".into()))?;
    Ok(kubeconfig_text(server, &ca_pem, node, token))
}
