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
