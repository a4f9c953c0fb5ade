//! The API client: a `kube::Client` built from a Skiff kubeconfig, plus the calls kube
//! has no typed form for (raw module upload and download).
//!
//! kube-rs is the most used Rust Kubernetes client; building on it gives the agent and the
//! CLI watch streams with resume and 410 handling, retries and TLS for free. A cluster
//! may have several servers: the kubeconfig lists them (see [`SERVERS_EXTENSION`]) and
//! the client fails over between them ([`failover`]).

pub mod failover;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::module::Module;

pub use failover::{Servers, parse_servers};

/// The kubeconfig cluster extension that lists every server of a cluster
/// (`extension: {servers: [URL, ...]}`); `server:` holds the first, for tools that read
/// only that.
pub const SERVERS_EXTENSION: &str = "skiff.dev/servers";

/// How long the plain HTTP client waits for one server to answer before trying the next.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one join request may take: a server that accepts connections but never
/// answers must not hold the agent's start for ever.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    #[error("the kubeconfig's server list is unusable")]
    ServersInvalid(#[source] failover::FailoverError),
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

/// What a kubeconfig says about reaching its cluster: kube's configuration (CA,
/// credential, namespace; its `cluster_url` is the first server) and every server.
#[derive(Clone)]
pub struct ClientConfig {
    pub kube: kube::Config,
    /// The cluster's servers, in the order they are tried. Never empty.
    pub servers: Vec<http::Uri>,
}

/// The client configuration a kubeconfig gives (cluster URLs, credentials).
pub async fn config(kubeconfig: Option<&Path>) -> Result<ClientConfig, ClientError> {
    let path = kubeconfig_path(kubeconfig).ok_or(ClientError::NoKubeconfig)?;
    let mut kc = Kubeconfig::read_from(&path)
        .map_err(|source| ClientError::KubeconfigUnreadable { path, source })?;
    let listed = cluster_servers(&mut kc)?;
    let kube = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(ClientError::ConfigInvalid)?;
    let mut servers = listed;
    if servers.is_empty() {
        servers.push(kube.cluster_url.clone());
    }
    Ok(ClientConfig { kube, servers })
}

/// The servers the current context's cluster lists: its `server:` (which may be
/// comma-separated), then the [`SERVERS_EXTENSION`] entries. Every comma-separated
/// `server:` is cut to its first URL, which is all kube reads.
fn cluster_servers(kc: &mut Kubeconfig) -> Result<Vec<http::Uri>, ClientError> {
    let current = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let mut servers = Vec::new();
    for named in &mut kc.clusters {
        let Some(cluster) = named.cluster.as_mut() else {
            continue;
        };
        let listed = match cluster.server.as_deref() {
            Some(s) if s.contains(',') => parse_servers(s).map_err(ClientError::ServersInvalid)?,
            _ => Vec::new(),
        };
        if let Some(first) = listed.first() {
            cluster.server = Some(first.to_string().trim_end_matches('/').to_string());
        }
        if Some(&named.name) != cluster_name.as_ref() {
            continue;
        }
        servers = listed;
        if servers.is_empty()
            && let Some(s) = cluster.server.as_deref()
        {
            servers.push(failover::parse_server(s).map_err(ClientError::ServersInvalid)?);
        }
        let extension = cluster
            .extensions
            .iter()
            .flatten()
            .find(|e| e.name == SERVERS_EXTENSION);
        if let Some(extension) = extension {
            let urls: Vec<&str> = match &extension.extension["servers"] {
                serde_json::Value::Array(list) => list.iter().filter_map(|v| v.as_str()).collect(),
                serde_json::Value::String(list) => list.split(',').collect(),
                _ => Vec::new(),
            };
            for url in urls.into_iter().filter(|u| !u.trim().is_empty()) {
                let url = failover::parse_server(url).map_err(ClientError::ServersInvalid)?;
                if !servers.contains(&url) {
                    servers.push(url);
                }
            }
        }
    }
    Ok(servers)
}

/// A client for the cluster a kubeconfig names, failing over between its servers.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = config(kubeconfig).await?;
    let servers = Servers::new(config.servers).map_err(ClientError::ServersInvalid)?;
    failover::client(&config.kube, servers).map_err(ClientError::ClientBuildFailed)
}

/// A plain HTTP client for the cluster a kubeconfig names, for what kube's client does
/// not do (streamed uploads, benchmarks): it trusts the kubeconfig's CA and sends its
/// bearer token. Returns with it the base URL of the first server that answers (or of
/// the first listed, when none does).
pub async fn http_client(
    kubeconfig: Option<&Path>,
) -> Result<(String, reqwest::Client), ClientError> {
    let config = config(kubeconfig).await?;
    let client = http_builder(&config.kube)?
        .build()
        .map_err(ClientError::HttpClient)?;
    let urls: Vec<String> = config.servers.iter().map(base_url).collect();
    for url in &urls {
        // Any answer will do, even a refusal: the server is there. The connection
        // stays in the pool for the request that follows.
        let probe = client
            .get(format!("{url}/healthz"))
            .timeout(PROBE_TIMEOUT)
            .send()
            .await;
        match probe {
            Ok(_) => return Ok((url.clone(), client)),
            Err(e) => {
                tracing::debug!(server = %url, error = %e, "server unreachable; trying the next")
            }
        }
    }
    Ok((urls[0].clone(), client))
}

/// Like `http_client`, for callers that tune the client further (pool sizes); the URL
/// is the first server's.
pub async fn http_client_builder(
    kubeconfig: Option<&Path>,
) -> Result<(String, reqwest::ClientBuilder), ClientError> {
    let config = config(kubeconfig).await?;
    Ok((base_url(&config.servers[0]), http_builder(&config.kube)?))
}

fn base_url(url: &http::Uri) -> String {
    url.to_string().trim_end_matches('/').to_string()
}

fn http_builder(config: &kube::Config) -> Result<reqwest::ClientBuilder, ClientError> {
    use secrecy::ExposeSecret;
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
    Ok(builder)
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
    kubeconfig_for_servers(&[url], ca_pem, user, token)
}

/// A kubeconfig for a cluster of several servers: `server:` is the first (what kubectl
/// uses), and the [`SERVERS_EXTENSION`] lists them all, for Skiff's clients.
pub fn kubeconfig_for_servers<S: AsRef<str>>(
    servers: &[S],
    ca_pem: &str,
    user: &str,
    token: &str,
) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let url = servers.first().map_or("", |s| s.as_ref());
    let extensions = if servers.len() > 1 {
        let list: Vec<String> = servers
            .iter()
            .map(|s| format!("\n        - {}", s.as_ref()))
            .collect();
        format!(
            "\n    extensions:\n    - name: {SERVERS_EXTENSION}\n      extension:\n        servers:{}",
            list.concat()
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {ca}{extensions}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    \
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
    #[error("joining through {url} failed after the request was sent")]
    Failed {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("no server URL to join through")]
    NoServers,
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
        .connect_timeout(failover::CONNECT_TIMEOUT)
        .timeout(JOIN_TIMEOUT)
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

/// Joins the cluster as node `node` with a join token, through the first of `servers`
/// that answers (the token pins the cluster's CA, which every server presents): fetches
/// the server's CA, checks it against the hash the token pins, and trades the token for
/// a credential of this node. Returns a kubeconfig for that credential listing every
/// server, the one that answered first.
pub async fn join<S: AsRef<str>>(
    servers: &[S],
    join_token: &str,
    node: &str,
) -> Result<String, JoinError> {
    let join = crate::token::JoinToken::parse(join_token).map_err(JoinError::BadToken)?;
    let servers: Vec<&str> = servers
        .iter()
        .map(|s| s.as_ref().trim_end_matches('/'))
        .collect();
    let mut last = JoinError::NoServers;
    for (i, server) in servers.iter().enumerate() {
        let (ca_pem, token) = match join_through(server, &join, node).await {
            Ok(answer) => answer,
            Err(e @ JoinError::Unreachable { .. }) => {
                tracing::warn!(%server, error = %e, error.source = ?std::error::Error::source(&e), "server unreachable; trying the next");
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut listed = vec![*server];
        listed.extend(
            servers
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| *s),
        );
        return Ok(kubeconfig_for_servers(&listed, &ca_pem, node, &token));
    }
    Err(last)
}

/// One server's answer to a join: the CA it presented and the node's token. Only
/// failures to reach it at all are `Unreachable`: once the join request may have been
/// sent, trying another server could only be refused (the node would have a credential).
async fn join_through(
    server: &str,
    join: &crate::token::JoinToken,
    node: &str,
) -> Result<(String, String), JoinError> {
    let unreachable = |source| JoinError::Unreachable {
        url: server.to_string(),
        source,
    };
    let ca_pem = fetch_pinned_ca(server, &join.ca_hash).await?;
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(JoinError::BadCa)?;
    let pinned = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .connect_timeout(failover::CONNECT_TIMEOUT)
        .timeout(JOIN_TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let response = pinned
        .post(format!("{server}/skiff/v1/join"))
        .bearer_auth(join.token.to_string())
        .json(&serde_json::json!({ "node": node }))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                unreachable(e)
            } else {
                JoinError::Failed {
                    url: server.to_string(),
                    source: e,
                }
            }
        })?;
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
    Ok((ca_pem, token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Structurally a PEM certificate, which is all reading a kubeconfig checks.
    const CA: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    async fn servers_of(text: &str) -> (Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, text).unwrap();
        let config = config(Some(&path)).await.unwrap();
        let servers = config.servers.iter().map(base_url).collect();
        (servers, base_url(&config.kube.cluster_url))
    }

    #[tokio::test]
    async fn kubeconfigs_list_every_server_and_are_read_back() {
        let (a, b) = ("https://10.0.0.1:6443", "https://10.0.0.2:6443");
        let text = kubeconfig_for_servers(&[a, b], CA, "edge-1", "abc.def");
        let kc = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.server.as_deref(),
            Some(a),
            "kubectl reads the first"
        );
        assert_eq!(
            servers_of(&text).await,
            (vec![a.into(), b.into()], a.into())
        );

        let one = kubeconfig_text(a, CA, "admin", "abc.def");
        assert!(!one.contains(SERVERS_EXTENSION));
        assert_eq!(servers_of(&one).await, (vec![a.into()], a.into()));

        // Written by hand: `server:` comma-separated, and the extension adding one more.
        let by_hand = kubeconfig_for_servers(&[b, "https://10.0.0.3:6443"], CA, "u", "abc.def")
            .replace(&format!("server: {b}"), &format!("server: {b},{a}"));
        assert_eq!(
            servers_of(&by_hand).await,
            (
                vec![b.into(), a.into(), "https://10.0.0.3:6443".into()],
                b.into()
            )
        );
    }
}
