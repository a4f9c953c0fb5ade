//! Pulling Wasm from OCI registries (issue 18).
//!
//! A pull resolves a reference to a manifest digest (the tag through the registry, or
//! the node's record of it when the policy allows and the registry cannot be reached),
//! reads the manifest, picks the one Wasm layer of one of the layouts found in the wild,
//! and downloads that layer into a file, refusing it past the size limit and checking
//! its digest. The layer's digest is the sha256 of the Wasm bytes, so the layer lands in
//! the same content-addressed cache as modules from the control plane's store, and the
//! compile cache and one-pull-per-digest apply unchanged.
//!
//! oci-client (the ORAS project's Rust client, used by wasmCloud, wkg and Krustlet)
//! speaks the distribution protocol: the `WWW-Authenticate` Basic and Bearer flows and
//! the digest checks of manifests and blobs. It is pinned to its last release on
//! reqwest 0.12, the HTTP stack the rest of the workspace uses.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use oci_client::Client;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};
use skiff_api::image::{OciRef, PullPolicy};
use tokio::io::AsyncWrite;

/// The CNCF Wasm OCI artifact (what `wkg` and `oci-wasm` write): this config type and
/// one `application/wasm` layer.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";
/// Spin's layout: one such layer per component.
pub const SPIN_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// runwasi's layout.
pub const RUNWASI_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";

/// The largest artifact an agent pulls unless told otherwise.
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 128 << 20;

/// How an agent reaches registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// `HOST:PORT`s reached over plain HTTP (only these).
    pub insecure: Vec<String>,
    /// Files of extra CA certificates (PEM) trusted for registries, besides the
    /// bundled Mozilla roots.
    pub ca_files: Vec<PathBuf>,
    /// The largest layer pulled.
    pub max_image_bytes: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            insecure: Vec::new(),
            ca_files: Vec::new(),
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
        }
    }
}

/// Credentials for one registry, from a pull secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Credential {
    Anonymous,
    Basic { username: String, password: String },
}

impl Credential {
    fn auth(&self) -> RegistryAuth {
        match self {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// The credential a `kubernetes.io/dockerconfigjson` (or legacy `kubernetes.io/dockercfg`)
/// Secret holds for a registry, `None` when it holds none for it.
///
/// docker_credential does the matching (`https://HOST/v1/` keys, Docker Hub's aliases)
/// and decoding, as it does for `docker login`'s file. Only `auths` is read: a Secret's
/// `credsStore` or `credHelpers` would have the agent run a `docker-credential-*`
/// program named by whoever wrote the Secret, which the kubelet never does either.
pub fn credential_from_secret(
    secret: &k8s_openapi::api::core::v1::Secret,
    registry: &str,
) -> Result<Option<Credential>, String> {
    let kind = secret.type_.as_deref().unwrap_or("Opaque");
    let data = secret.data.as_ref();
    let auths = match kind {
        "kubernetes.io/dockerconfigjson" => {
            let raw = data
                .and_then(|d| d.get(".dockerconfigjson"))
                .ok_or("a kubernetes.io/dockerconfigjson Secret needs the key .dockerconfigjson")?;
            let config: serde_json::Value = serde_json::from_slice(&raw.0)
                .map_err(|e| format!(".dockerconfigjson is not JSON: {e}"))?;
            config.get("auths").cloned().unwrap_or_default()
        }
        "kubernetes.io/dockercfg" => {
            let raw = data
                .and_then(|d| d.get(".dockercfg"))
                .ok_or("a kubernetes.io/dockercfg Secret needs the key .dockercfg")?;
            serde_json::from_slice(&raw.0).map_err(|e| format!(".dockercfg is not JSON: {e}"))?
        }
        other => {
            return Err(format!(
                "type {other} is not an image pull secret (kubernetes.io/dockerconfigjson)"
            ));
        }
    };
    let only_auths = serde_json::json!({ "auths": auths }).to_string();
    match docker_credential::get_credential_from_reader(only_auths.as_bytes(), registry) {
        Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(docker_credential::DockerCredential::IdentityToken(_)) => Err(format!(
            "the entry for {registry} is an identity token, which this agent does not exchange; use a username and password (or a registry token as the password)"
        )),
        Err(docker_credential::CredentialRetrievalError::NoCredentialConfigured) => Ok(None),
        Err(e) => Err(format!("reading the entry for {registry}: {e}")),
    }
}

/// Why a pull from a registry failed; each is shown as the container's waiting message.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "pulling {image}: the registry refused the credentials (check imagePullSecrets): {detail}"
    )]
    Unauthorized { image: String, detail: String },
    #[error("pulling {image}: not found in the registry")]
    NotFound { image: String },
    #[error("pulling {image}: cannot reach the registry: {detail}")]
    Unreachable { image: String, detail: String },
    #[error(
        "pulling {image}: no Wasm layer this agent runs (config {config}; layers {layers}): \
         expected a {WASM_CONFIG} artifact with one {WASM_LAYER} layer, or one {SPIN_LAYER} \
         or {RUNWASI_LAYER} layer"
    )]
    UnsupportedLayout {
        image: String,
        config: String,
        layers: String,
    },
    #[error("pulling {image}: {detail}")]
    Layout { image: String, detail: String },
    #[error(
        "pulling {image}: the Wasm layer is {size} bytes, over this agent's limit of {limit} bytes (--max-image-size)"
    )]
    TooLarge {
        image: String,
        size: u64,
        limit: u64,
    },
    #[error("pulling {image}: digest mismatch: {detail}")]
    DigestMismatch { image: String, detail: String },
    #[error("pulling {image}: image not present on this node and imagePullPolicy is Never")]
    NeverPull { image: String },
    #[error("pulling {image}: {detail}")]
    Registry { image: String, detail: String },
    #[error("image cache: {0}")]
    Cache(String),
}

impl OciError {
    /// The container waiting reason, as the kubelet words it.
    pub fn reason(&self) -> &'static str {
        match self {
            OciError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }
}

/// Picks the Wasm layer of a manifest, from the layouts in the wild.
pub fn select_wasm_layer(manifest: &OciImageManifest) -> Result<&OciDescriptor, LayoutError> {
    for (kind, t) in [
        ("CNCF Wasm artifact", WASM_LAYER),
        ("Spin app", SPIN_LAYER),
        ("runwasi image", RUNWASI_LAYER),
    ] {
        let mut of_type = manifest.layers.iter().filter(|l| l.media_type == t);
        match (of_type.next(), of_type.count()) {
            (None, _) => continue,
            (Some(one), 0) => return Ok(one),
            (Some(_), others) => {
                return Err(LayoutError::Several {
                    kind,
                    media_type: t,
                    count: others + 1,
                });
            }
        }
    }
    Err(LayoutError::Unsupported {
        config: manifest.config.media_type.clone(),
        layers: if manifest.layers.is_empty() {
            "none".to_string()
        } else {
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    })
}

/// Why a manifest has no one Wasm layer to run.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// No layer of a layout this agent knows: the config and layer media types found.
    #[error("config {config}; layers {layers}")]
    Unsupported { config: String, layers: String },
    /// A known layout with several Wasm layers (a Spin app of several components).
    #[error("a {kind} with {count} {media_type} layers; a container runs one Wasm component")]
    Several {
        kind: &'static str,
        media_type: &'static str,
        count: usize,
    },
}

/// What a reference resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The manifest's digest; `REGISTRY/REPOSITORY@` it is the container's `imageID`.
    pub manifest_digest: String,
    /// The Wasm layer.
    pub layer: OciDescriptor,
    /// Whether the tag was resolved from the node's record because the registry could
    /// not be reached.
    pub from_cache: bool,
    /// The credential the registry took for the manifest, tried first for the layer.
    pub credential: Option<Credential>,
}

impl Resolved {
    /// The lowercase hex of the layer's sha256: the key of the module caches.
    pub fn layer_hex(&self) -> Option<&str> {
        self.layer
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64)
    }
}

/// The agent's registry client: one oci-client per registry and credential (oci-client
/// keeps one credential per registry, the first it was given), plus the node's records
/// of tags and manifests under `DIR/oci/`.
pub struct OciPuller {
    settings: RegistrySettings,
    ca_pem: Vec<Vec<u8>>,
    clients: Mutex<HashMap<(String, Credential), Client>>,
    refs_dir: PathBuf,
    manifests_dir: PathBuf,
}

impl OciPuller {
    /// A puller; the CA files are read, and checked by building a client with them, so
    /// a bad `--registry-ca` stops the agent at start rather than failing every pull.
    pub fn new(settings: RegistrySettings, data_dir: &Path) -> Result<OciPuller, String> {
        let mut ca_pem = Vec::new();
        for file in &settings.ca_files {
            let pem = std::fs::read(file)
                .map_err(|e| format!("reading the registry CA {}: {e}", file.display()))?;
            ca_pem.push(pem);
        }
        let dir = data_dir.join("oci");
        let puller = OciPuller {
            settings,
            ca_pem,
            clients: Mutex::new(HashMap::new()),
            refs_dir: dir.join("refs"),
            manifests_dir: dir.join("manifests").join("sha256"),
        };
        puller
            .client("", &Credential::Anonymous)
            .map_err(|e| format!("the registry CA: {e}"))?;
        Ok(puller)
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    fn client(&self, registry: &str, credential: &Credential) -> Result<Client, OciError> {
        let key = (registry.to_string(), credential.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.settings.insecure.clone()),
            extra_root_certificates: self
                .ca_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| OciError::Cache(format!("registry client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn ref_record(&self, image: &OciRef) -> PathBuf {
        self.refs_dir
            .join(hex::encode(Sha256::digest(image.to_string().as_bytes())))
    }

    /// The manifest digest the node last resolved this reference to.
    fn recorded_digest(&self, image: &OciRef) -> Option<String> {
        let text = std::fs::read_to_string(self.ref_record(image)).ok()?;
        let digest = text.trim();
        self.manifest_file(digest)?;
        Some(digest.to_string())
    }

    /// The lowercase hex of the Wasm layer the node last resolved this reference to.
    pub fn recorded_layer(&self, image: &OciRef) -> Option<String> {
        let digest = match image.digest() {
            Some(d) => d.to_string(),
            None => self.recorded_digest(image)?,
        };
        let manifest = self.recorded(&digest)?;
        let layer = select_wasm_layer(&manifest).ok()?;
        layer.digest.strip_prefix("sha256:").map(str::to_string)
    }

    /// The file that keeps a manifest the node has pulled (as oci-client parsed it,
    /// after it checked the bytes against the digest), written atomically.
    fn manifest_file(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.manifests_dir.join(format!("{hex}.json")))
    }

    fn record(
        &self,
        image: &OciRef,
        digest: &str,
        manifest: &OciImageManifest,
    ) -> Result<(), OciError> {
        let cache = |e: std::io::Error| OciError::Cache(e.to_string());
        if let Some(path) = self.manifest_file(digest) {
            let bytes = serde_json::to_vec(manifest).map_err(|e| OciError::Cache(e.to_string()))?;
            crate::images::write_atomically(&path, &bytes).map_err(cache)?;
        }
        crate::images::write_atomically(&self.ref_record(image), digest.as_bytes()).map_err(cache)
    }

    fn recorded(&self, digest: &str) -> Option<OciImageManifest> {
        serde_json::from_slice(&std::fs::read(self.manifest_file(digest)?).ok()?).ok()
    }

    /// Resolves a reference to its manifest digest and Wasm layer.
    ///
    /// `IfNotPresent` and `Never` use the node's record of the reference when there is
    /// one; `Always` asks the registry, and falls back to the record (with
    /// `from_cache`) only when the registry cannot be reached at all, so a node that is
    /// offline keeps starting the pods it ran before.
    pub async fn resolve(
        &self,
        image: &OciRef,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Resolved, OciError> {
        let name = image.to_string();
        let pinned = image.digest().map(str::to_string);
        let known = pinned.clone().or_else(|| self.recorded_digest(image));
        if policy != PullPolicy::Always
            && let Some(digest) = &known
            && let Some(manifest) = self.recorded(digest)
        {
            return Ok(Resolved {
                layer: self.layer_of(&name, &manifest)?.clone(),
                manifest_digest: digest.clone(),
                from_cache: false,
                credential: None,
            });
        }
        if policy == PullPolicy::Never {
            return Err(OciError::NeverPull { image: name });
        }
        match self.fetch_manifest(image, credentials).await {
            Ok((manifest, digest, credential)) => {
                if let Some(p) = &pinned
                    && *p != digest
                {
                    return Err(OciError::DigestMismatch {
                        image: name,
                        detail: format!("the reference pins {p}, the registry served {digest}"),
                    });
                }
                let layer = self.layer_of(&name, &manifest)?.clone();
                self.record(image, &digest, &manifest)?;
                Ok(Resolved {
                    manifest_digest: digest,
                    layer,
                    from_cache: false,
                    credential: Some(credential),
                })
            }
            Err(OciError::Unreachable { .. })
                if known.as_ref().and_then(|d| self.recorded(d)).is_some() =>
            {
                let digest = known.expect("checked");
                let manifest = self.recorded(&digest).expect("checked");
                Ok(Resolved {
                    layer: self.layer_of(&name, &manifest)?.clone(),
                    manifest_digest: digest,
                    from_cache: true,
                    credential: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn layer_of<'m>(
        &self,
        name: &str,
        manifest: &'m OciImageManifest,
    ) -> Result<&'m OciDescriptor, OciError> {
        select_wasm_layer(manifest).map_err(|e| match e {
            LayoutError::Unsupported { config, layers } => OciError::UnsupportedLayout {
                image: name.to_string(),
                config,
                layers,
            },
            several => OciError::Layout {
                image: name.to_string(),
                detail: several.to_string(),
            },
        })
    }

    /// Reads the manifest from the registry, trying each credential, then none.
    async fn fetch_manifest(
        &self,
        image: &OciRef,
        credentials: &[Credential],
    ) -> Result<(OciImageManifest, String, Credential), OciError> {
        let name = &image.to_string();
        self.each_credential(image, None, credentials, |client, credential| async move {
            match client
                .pull_manifest(image.reference(), &credential.auth())
                .await
            {
                Ok((OciManifest::Image(m), digest)) => Ok((m, digest, credential)),
                Ok((OciManifest::ImageIndex(index), _)) => {
                    // A Wasm artifact is one manifest; an index is a multi-platform
                    // container image, which no agent runs.
                    let platforms: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref())
                        .map(|p| format!("{}/{}", p.os, p.architecture))
                        .collect();
                    Err(OciError::UnsupportedLayout {
                        image: name.to_string(),
                        config: "an image index".into(),
                        layers: format!("platforms {}", platforms.join(", ")),
                    })
                }
                Err(e) => Err(self.with_hint(image, classify(name, e))),
            }
        })
        .await
    }

    /// Runs `attempt` with `first` (if any), then each of the pod's credentials in
    /// order, then none, as the kubelet does: the first answer that is not a refusal
    /// of the credential is the outcome.
    async fn each_credential<T, F, Fut>(
        &self,
        image: &OciRef,
        first: Option<&Credential>,
        credentials: &[Credential],
        mut attempt: F,
    ) -> Result<T, OciError>
    where
        F: FnMut(Client, Credential) -> Fut,
        Fut: std::future::Future<Output = Result<T, OciError>>,
    {
        let mut last = None;
        for credential in first
            .into_iter()
            .chain(credentials)
            .chain(std::iter::once(&Credential::Anonymous))
        {
            let client = self.client(image.api_host(), credential)?;
            match attempt(client, credential.clone()).await {
                Err(e @ OciError::Unauthorized { .. }) => last = Some(e),
                outcome => return outcome,
            }
        }
        Err(last.unwrap_or(OciError::Unauthorized {
            image: image.to_string(),
            detail: "no credential was accepted".into(),
        }))
    }

    /// A registry that fails over HTTPS may be one that speaks only plain HTTP: say
    /// which flag reaches it, as the failure itself (a TLS error) does not.
    fn with_hint(&self, image: &OciRef, e: OciError) -> OciError {
        let host = image.api_host();
        if self.settings.insecure.iter().any(|h| h == host) {
            return e;
        }
        let hint = format!(
            " (this agent reaches {host} over HTTPS only; for a registry that serves plain HTTP, start it with --insecure-registry {host}, or for a private CA with --registry-ca)"
        );
        match e {
            OciError::Unreachable { image, detail } => OciError::Unreachable {
                image,
                detail: detail + &hint,
            },
            OciError::Registry { image, detail } => OciError::Registry {
                image,
                detail: detail + &hint,
            },
            other => other,
        }
    }

    /// Downloads the resolved Wasm layer into `dest` (through a temporary file beside
    /// it), refusing it past the size limit; the digest is checked as it streams.
    pub async fn fetch_layer(
        &self,
        image: &OciRef,
        resolved: &Resolved,
        credentials: &[Credential],
        dest: &Path,
    ) -> Result<u64, OciError> {
        let name = image.to_string();
        let limit = self.settings.max_image_bytes;
        let declared = u64::try_from(resolved.layer.size).unwrap_or(0);
        if declared > limit {
            return Err(OciError::TooLarge {
                image: name,
                size: declared,
                limit,
            });
        }
        let dir = dest.parent().expect("cache paths have a parent");
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| OciError::Cache(e.to_string()))?;
        let tmp = dir.join(format!(".{}.pull", rand::random::<u64>()));
        // The one the manifest was read with first, then the pod's in order, then none.
        let first = resolved.credential.as_ref();
        let (name, tmp) = (&name, &tmp);
        self.each_credential(image, first, credentials, |client, credential| async move {
            // Blob pulls authenticate as manifest pulls do; a fresh client needs it.
            let _ = client
                .auth(
                    image.reference(),
                    &credential.auth(),
                    oci_client::RegistryOperation::Pull,
                )
                .await;
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| OciError::Cache(e.to_string()))?;
            let mut out = Capped {
                inner: file,
                written: 0,
                limit,
            };
            let pulled = client
                .pull_blob(image.reference(), &resolved.layer, &mut out)
                .await;
            match pulled {
                Ok(()) => {
                    use tokio::io::AsyncWriteExt;
                    out.inner
                        .sync_all()
                        .await
                        .map_err(|e| OciError::Cache(e.to_string()))?;
                    out.inner
                        .shutdown()
                        .await
                        .map_err(|e| OciError::Cache(e.to_string()))?;
                    tokio::fs::rename(&tmp, dest)
                        .await
                        .map_err(|e| OciError::Cache(e.to_string()))?;
                    Ok(out.written)
                }
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    if out.written > limit {
                        return Err(OciError::TooLarge {
                            image: name.to_string(),
                            size: out.written,
                            limit,
                        });
                    }
                    Err(self.with_hint(image, classify(name, e)))
                }
            }
        })
        .await
    }
}

/// What an oci-client error means for a pod.
fn classify(image: &str, e: OciDistributionError) -> OciError {
    let image = image.to_string();
    match e {
        OciDistributionError::UnauthorizedError { url } => OciError::Unauthorized {
            image,
            detail: format!("401 from {url}"),
        },
        OciDistributionError::AuthenticationFailure(detail) => {
            OciError::Unauthorized { image, detail }
        }
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => OciError::Unauthorized {
            image,
            detail: format!("{url}: {message}"),
        },
        OciDistributionError::ImageManifestNotFoundError(_)
        | OciDistributionError::ServerError { code: 404, .. } => OciError::NotFound { image },
        OciDistributionError::RegistryError { envelope, url }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            let _ = url;
            OciError::NotFound { image }
        }
        OciDistributionError::RegistryError { envelope, url }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            OciError::Unauthorized {
                image,
                detail: format!("{url}: {envelope}"),
            }
        }
        OciDistributionError::DigestError(d) => OciError::DigestMismatch {
            image,
            detail: d.to_string(),
        },
        OciDistributionError::RequestError(r)
            if matches!(r.status().map(|s| s.as_u16()), Some(401 | 403)) =>
        {
            OciError::Unauthorized {
                image,
                detail: crate::images::error_chain(&r),
            }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            OciError::Unreachable {
                image,
                detail: crate::images::error_chain(&r),
            }
        }
        other => OciError::Registry {
            image,
            detail: crate::images::error_chain(&other),
        },
    }
}

/// A writer that refuses to write past a limit (a descriptor's size may lie).
struct Capped<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Capped<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.written + buf.len() as u64 > self.limit {
            self.written += buf.len() as u64;
            return Poll::Ready(Err(std::io::Error::other(
                "the layer is over the size limit",
            )));
        }
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.written += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(media_type: &str) -> OciDescriptor {
        OciDescriptor {
            media_type: media_type.to_string(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 10,
            ..Default::default()
        }
    }

    fn manifest(config: &str, layers: &[&str]) -> OciImageManifest {
        OciImageManifest {
            config: layer(config),
            layers: layers.iter().map(|t| layer(t)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_three_layouts_in_the_wild_are_read() {
        let cncf = manifest(WASM_CONFIG, &[WASM_LAYER]);
        assert_eq!(select_wasm_layer(&cncf).unwrap().media_type, WASM_LAYER);
        let spin = manifest(
            "application/vnd.fermyon.spin.application.v1+config",
            &[SPIN_LAYER, "application/vnd.wasm.content.layer.v1+data"],
        );
        assert_eq!(select_wasm_layer(&spin).unwrap().media_type, SPIN_LAYER);
        let runwasi = manifest("application/vnd.oci.image.config.v1+json", &[RUNWASI_LAYER]);
        assert_eq!(
            select_wasm_layer(&runwasi).unwrap().media_type,
            RUNWASI_LAYER
        );
    }

    #[test]
    fn anything_else_names_the_media_types_found() {
        let container = manifest(
            "application/vnd.oci.image.config.v1+json",
            &["application/vnd.oci.image.layer.v1.tar+gzip"],
        );
        let e = select_wasm_layer(&container).unwrap_err().to_string();
        assert!(
            e.contains("application/vnd.oci.image.config.v1+json")
                && e.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
            "{e}"
        );
        let two = manifest("x", &[SPIN_LAYER, SPIN_LAYER]);
        assert!(
            select_wasm_layer(&two)
                .unwrap_err()
                .to_string()
                .contains("2 "),
            "two components"
        );
        assert!(
            select_wasm_layer(&manifest("x", &[]))
                .unwrap_err()
                .to_string()
                .contains("layers none")
        );
    }

    fn secret(kind: &str, key: &str, json: &str) -> k8s_openapi::api::core::v1::Secret {
        k8s_openapi::api::core::v1::Secret {
            type_: Some(kind.into()),
            data: Some(
                [(
                    key.to_string(),
                    k8s_openapi::ByteString(json.as_bytes().to_vec()),
                )]
                .into(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn pull_secrets_give_the_credential_for_the_registry() {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let json = format!(
            r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{auth}"}},"https://index.docker.io/v1/":{{"username":"bob","password":"pw"}}}}}}"#
        );
        let s = secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", &json);
        let basic = |u: &str, p: &str| {
            Some(Credential::Basic {
                username: u.into(),
                password: p.into(),
            })
        };
        assert_eq!(
            credential_from_secret(&s, "127.0.0.1:5000").unwrap(),
            basic("alice", "s3cret")
        );
        // Docker Hub's names all match the v1 URL key, as `docker login` writes it.
        assert_eq!(
            credential_from_secret(&s, "docker.io").unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(credential_from_secret(&s, "ghcr.io").unwrap(), None);
        // The legacy format is the auths map itself.
        let legacy = secret(
            "kubernetes.io/dockercfg",
            ".dockercfg",
            &format!(r#"{{"127.0.0.1:5000":{{"auth":"{auth}"}}}}"#),
        );
        assert_eq!(
            credential_from_secret(&legacy, "127.0.0.1:5000").unwrap(),
            basic("alice", "s3cret")
        );
        // A credential helper named in a Secret is never run.
        let helper = secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            r#"{"auths":{},"credsStore":"evil","credHelpers":{"127.0.0.1:5000":"evil"}}"#,
        );
        assert_eq!(
            credential_from_secret(&helper, "127.0.0.1:5000").unwrap(),
            None
        );
        let opaque = secret("Opaque", ".dockerconfigjson", &json);
        assert!(
            credential_from_secret(&opaque, "127.0.0.1:5000")
                .unwrap_err()
                .contains("kubernetes.io/dockerconfigjson")
        );
        let broken = secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", "{");
        assert!(
            credential_from_secret(&broken, "127.0.0.1:5000")
                .unwrap_err()
                .contains("not JSON")
        );
    }

    /// A registry that speaks only the Bearer flow, as Docker Hub, GHCR and Harbor
    /// do: `/v2/` challenges with a token realm, the realm trades Basic credentials
    /// for a token scoped to the repository, and only the token opens the manifest and
    /// the blobs. `acme/bad`'s blob is not the bytes its manifest's digest names.
    async fn bearer_registry(wasm: Vec<u8>) -> String {
        use axum::extract::{Path as UrlPath, Query, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};
        use axum::routing::get;

        #[derive(Clone)]
        struct Fake {
            addr: String,
            wasm: Vec<u8>,
            manifest: Vec<u8>,
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sha = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
        let config = b"{}".to_vec();
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            config: OciDescriptor {
                media_type: WASM_CONFIG.into(),
                digest: sha(&config),
                size: config.len() as i64,
                ..Default::default()
            },
            layers: vec![OciDescriptor {
                media_type: WASM_LAYER.into(),
                digest: sha(&wasm),
                size: wasm.len() as i64,
                ..Default::default()
            }],
            ..Default::default()
        };
        let fake = Fake {
            addr: addr.clone(),
            wasm,
            manifest: serde_json::to_vec(&manifest).unwrap(),
        };
        fn challenge(fake: &Fake) -> Response {
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    format!(
                        r#"Bearer realm="http://{}/token",service="fake-registry""#,
                        fake.addr
                    ),
                )],
            )
                .into_response()
        }
        fn bearer(headers: &HeaderMap, repo: &str) -> bool {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer token-for-{repo}"))
        }
        let app = axum::Router::new()
            .route(
                "/v2/",
                get(|State(f): State<Fake>| async move { challenge(&f) }),
            )
            .route(
                "/token",
                get(
                    |Query(q): Query<HashMap<String, String>>, headers: HeaderMap| async move {
                        use base64::Engine;
                        let basic = format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
                        );
                        let scope = q.get("scope").cloned().unwrap_or_default();
                        let repo = scope
                            .strip_prefix("repository:")
                            .and_then(|s| s.strip_suffix(":pull"))
                            .unwrap_or_default()
                            .to_string();
                        if q.get("service").map(String::as_str) != Some("fake-registry")
                            || headers
                                .get(header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok())
                                != Some(basic.as_str())
                        {
                            return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
                        }
                        axum::Json(serde_json::json!({"token": format!("token-for-{repo}")}))
                            .into_response()
                    },
                ),
            )
            .route(
                "/v2/{ns}/{name}/manifests/{tag}",
                get(
                    |State(f): State<Fake>,
                     UrlPath((ns, name, _tag)): UrlPath<(String, String, String)>,
                     headers: HeaderMap| async move {
                        if !bearer(&headers, &format!("{ns}/{name}")) {
                            return challenge(&f);
                        }
                        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&f.manifest)));
                        (
                            [
                                (
                                    header::CONTENT_TYPE,
                                    "application/vnd.oci.image.manifest.v1+json".to_string(),
                                ),
                                (
                                    header::HeaderName::from_static("docker-content-digest"),
                                    digest,
                                ),
                            ],
                            f.manifest.clone(),
                        )
                            .into_response()
                    },
                ),
            )
            .route(
                "/v2/{ns}/{name}/blobs/{digest}",
                get(
                    |State(f): State<Fake>,
                     UrlPath((ns, name, _digest)): UrlPath<(String, String, String)>,
                     headers: HeaderMap| async move {
                        if !bearer(&headers, &format!("{ns}/{name}")) {
                            return challenge(&f);
                        }
                        let mut body = f.wasm.clone();
                        if name == "bad" {
                            body[0] ^= 0xff;
                        }
                        body.into_response()
                    },
                ),
            )
            .with_state(fake);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn the_bearer_flow_trades_the_pull_secret_for_a_token() {
        let wasm = b"\0asm\x01\0\0\0 the bytes of a module".to_vec();
        let addr = bearer_registry(wasm.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let puller = OciPuller::new(
            RegistrySettings {
                insecure: vec![addr.clone()],
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap();
        let alice = Credential::Basic {
            username: "alice".into(),
            password: "s3cret".into(),
        };
        let image = OciRef::parse(&format!("{addr}/acme/app:v1")).unwrap();

        // Anonymous and a wrong password get no token: unauthorized.
        for creds in [
            vec![],
            vec![Credential::Basic {
                username: "alice".into(),
                password: "wrong".into(),
            }],
        ] {
            let e = puller
                .resolve(&image, PullPolicy::IfNotPresent, &creds)
                .await
                .unwrap_err();
            assert!(matches!(e, OciError::Unauthorized { .. }), "{e}");
        }

        let resolved = puller
            .resolve(
                &image,
                PullPolicy::IfNotPresent,
                std::slice::from_ref(&alice),
            )
            .await
            .unwrap();
        assert_eq!(
            resolved.layer_hex(),
            Some(hex::encode(Sha256::digest(&wasm)).as_str())
        );
        let dest = dir.path().join("layer");
        let size = puller
            .fetch_layer(&image, &resolved, std::slice::from_ref(&alice), &dest)
            .await
            .unwrap();
        assert_eq!(size, wasm.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), wasm);

        // Bytes that do not hash to the layer's digest are refused and not kept.
        let bad = OciRef::parse(&format!("{addr}/acme/bad:v1")).unwrap();
        let resolved = puller
            .resolve(&bad, PullPolicy::IfNotPresent, std::slice::from_ref(&alice))
            .await
            .unwrap();
        let dest = dir.path().join("bad-layer");
        let e = puller
            .fetch_layer(&bad, &resolved, std::slice::from_ref(&alice), &dest)
            .await
            .unwrap_err();
        assert!(matches!(e, OciError::DigestMismatch { .. }), "{e}");
        assert!(!dest.exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".pull"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn a_layer_past_the_limit_is_refused_while_it_streams() {
        use tokio::io::AsyncWriteExt;
        let mut out = Capped {
            inner: Vec::new(),
            written: 0,
            limit: 8,
        };
        out.write_all(b"12345678").await.unwrap();
        assert!(out.write_all(b"9").await.is_err());
        assert_eq!(out.inner, b"12345678");
    }
}
