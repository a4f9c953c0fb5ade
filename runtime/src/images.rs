//! Image pulls. A container's `image` names a module in the control plane's module
//! store (`sha256:<hex>`) or a Wasm artifact in an OCI registry (`HOST/REPO:TAG`, see
//! [`crate::oci`]). Either way the agent fetches the Wasm bytes once per digest,
//! verifies them, keeps them on disk under their sha256, and compiles them once (the
//! compiled artifact is cached on disk too), so replicas share one compiled module, an
//! agent restart does not recompile, and an offline node still starts what it ran.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use skiff_api::image::{ImageRef, OciRef, PullPolicy};

use crate::oci::{Credential, OciError, OciPuller, RegistrySettings, Resolved};
use crate::wasm::{LoadError, LoadSource, Program, WasmEngine};

/// Where a pulled program came from, for the Pulled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullSource {
    /// Compiled earlier: nothing fetched or compiled. `tier` says where it was found:
    /// `memory` (loaded for another pod) or `disk` (the compiled-artifact cache).
    Present { tier: &'static str },
    /// Fetched and/or compiled now.
    Pulled {
        /// From the start of this pull to the program, waiting for another pod's pull
        /// of the same image included.
        took: Duration,
        /// The part of `took` spent waiting for another pull of the same digest.
        waited: Duration,
        /// The download from the registry or the module store, if one ran.
        transfer: Option<Duration>,
        /// How long Cranelift took, if it ran.
        compiled: Option<Duration>,
        /// The size of the Wasm.
        bytes: u64,
    },
}

/// What a pod's container asks of a pull: its `imagePullPolicy` and where its
/// `imagePullSecrets` live.
#[derive(Debug, Clone)]
pub struct PullContext {
    pub policy: PullPolicy,
    pub namespace: String,
    pub pull_secrets: Vec<String>,
}

/// A pulled image.
pub struct Pulled {
    pub program: Arc<Program>,
    pub source: PullSource,
    /// The container's `imageID`: `REGISTRY/REPOSITORY@sha256:<manifest digest>` for an
    /// OCI artifact (as the kubelet reports it), `sha256:<hex>` for a module.
    pub image_id: String,
    /// Things the pod's events should warn about (a pull secret that could not be
    /// read, a registry that could not be reached so the node's record was used).
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image is neither a module digest nor an OCI reference (the message says why).
    #[error("{0}")]
    BadReference(String),
    #[error("module {0} not found in the module store")]
    NotFound(String),
    #[error("digest mismatch: expected sha256:{expected}, the bytes hash to sha256:{actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("fetching module {digest}: {message}")]
    FetchFailed { digest: String, message: String },
    #[error("not WebAssembly: {0}")]
    NotWasm(String),
    #[error("{0}")]
    InvalidModule(String),
    #[error("compiling module: {0}")]
    CompileFailed(String),
    #[error("module cache: {0}")]
    Cache(String),
    #[error("image {image}: not present on this node and imagePullPolicy is Never")]
    NeverPull { image: String },
    #[error(transparent)]
    Oci(#[from] OciError),
}

impl PullError {
    /// The container waiting reason a failure shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            // Bytes that are not Wasm at all are a bad pull (the store served something
            // else); Wasm that is not a runnable command is the module's own problem.
            PullError::InvalidModule(_) | PullError::CompileFailed(_) => "InvalidModule",
            PullError::NeverPull { .. } => "ErrImageNeverPull",
            PullError::Oci(e) => e.reason(),
            _ => "ErrImagePull",
        }
    }

    /// Whether pulling again later might succeed. An image a Never policy found missing
    /// may be pulled by another pod meanwhile, and a tag missing from a registry may be
    /// pushed, so both are retried (with back-off).
    pub fn retryable(&self) -> bool {
        matches!(self.reason(), "ErrImagePull" | "ErrImageNeverPull")
    }
}

impl From<LoadError> for PullError {
    fn from(e: LoadError) -> PullError {
        match e {
            LoadError::NotWasm(m) => PullError::NotWasm(m),
            LoadError::InvalidModule(m) => PullError::InvalidModule(m),
            LoadError::CompileFailed(m) => PullError::CompileFailed(m),
            other => PullError::Cache(other.to_string()),
        }
    }
}

pub struct ImageStore {
    client: kube::Client,
    engine: WasmEngine,
    oci: OciPuller,
    bytes_dir: PathBuf,
    compiled_dir: PathBuf,
    /// One pull at a time per digest, so a thousand replicas fetch and compile once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One resolution at a time per reference and credentials, and its answer kept for
    /// [`RESOLVED_FOR`], so a burst of `Always` pods asks the registry once.
    resolving: Mutex<HashMap<ResolveKey, ResolveSlot>>,
    /// The images pulled and compiled here, as pods name them: what the Node reports
    /// in `status.images`, so the scheduler prefers a node that holds a pod's module.
    present: tokio::sync::watch::Sender<std::collections::BTreeSet<String>>,
}

/// A reference, its policy and the credentials it was resolved with: an answer found
/// with one pod's pull secret is never handed to a pod without it.
type ResolveKey = (String, &'static str, Vec<Credential>);

/// The last answer for a key and when it came; locked while a resolution runs.
type ResolveSlot = Arc<tokio::sync::Mutex<Option<(Instant, Resolved)>>>;

/// How long an `Always` resolution stands for other pods of the same image.
const RESOLVED_FOR: Duration = Duration::from_secs(1);

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", rand::random::<u64>()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

impl ImageStore {
    pub fn new(
        client: kube::Client,
        engine: WasmEngine,
        data_dir: &Path,
        registries: RegistrySettings,
    ) -> Result<ImageStore, String> {
        Ok(ImageStore {
            client,
            engine,
            oci: OciPuller::new(registries, data_dir)?,
            bytes_dir: data_dir.join("modules").join("sha256"),
            compiled_dir: data_dir.join("compiled"),
            inflight: Mutex::new(HashMap::new()),
            resolving: Mutex::new(HashMap::new()),
            present: tokio::sync::watch::Sender::default(),
        })
    }

    /// The images this node holds compiled, and their changes.
    pub fn present(&self) -> tokio::sync::watch::Receiver<std::collections::BTreeSet<String>> {
        self.present.subscribe()
    }

    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// Whether an image's program is loaded in memory, so starting it needs no pull. A
    /// tag pulled with `Always` is asked of the registry every time, as the kubelet does.
    pub fn is_loaded(&self, image: &str, policy: PullPolicy) -> bool {
        match ImageRef::parse(image) {
            Ok(ImageRef::Module { hex }) => self.engine.loaded(&hex).is_some(),
            Ok(ImageRef::Oci(r)) if policy != PullPolicy::Always => self
                .oci
                .recorded_layer(&r)
                .is_some_and(|hex| self.engine.loaded(&hex).is_some()),
            _ => false,
        }
    }

    /// The compiled program for an image, fetching and compiling only what is missing.
    pub async fn pull(&self, image: &str, ctx: &PullContext) -> Result<Pulled, PullError> {
        let pulled = self.pull_uncounted(image, ctx).await;
        if pulled.is_ok() {
            self.present
                .send_if_modified(|present| present.insert(image.to_string()));
        }
        pulled
    }

    async fn pull_uncounted(&self, image: &str, ctx: &PullContext) -> Result<Pulled, PullError> {
        let begun = Instant::now();
        match ImageRef::parse(image).map_err(|e| PullError::BadReference(e.to_string()))? {
            ImageRef::Module { hex } => {
                let (program, source) = self
                    .load_digest(&hex, begun, ctx.policy, image, || async {
                        let fetched = Instant::now();
                        let bytes = self.module_bytes(&hex).await?;
                        Ok((bytes, fetched.elapsed()))
                    })
                    .await?;
                Ok(Pulled {
                    program,
                    source,
                    image_id: image.to_string(),
                    warnings: Vec::new(),
                })
            }
            ImageRef::Oci(reference) => self.pull_oci(&reference, ctx, begun).await,
        }
    }

    async fn pull_oci(
        &self,
        image: &OciRef,
        ctx: &PullContext,
        begun: Instant,
    ) -> Result<Pulled, PullError> {
        let (credentials, mut warnings) = self.credentials(image, ctx).await;
        let resolved = self.resolve(image, ctx.policy, &credentials).await?;
        if resolved.from_cache {
            warnings.push(format!(
                "the registry {} could not be reached: using this node's copy of {image}, {}",
                image.registry(),
                resolved.manifest_digest
            ));
        }
        let hex = resolved
            .layer_hex()
            .ok_or_else(|| OciError::Layout {
                image: image.to_string(),
                detail: format!(
                    "the Wasm layer's digest {} is not a sha256",
                    resolved.layer.digest
                ),
            })?
            .to_string();
        let (program, source) = self
            .load_digest(
                &hex,
                begun,
                PullPolicy::IfNotPresent,
                &image.to_string(),
                || self.layer_bytes(image, &resolved, &credentials, &hex),
            )
            .await?;
        Ok(Pulled {
            program,
            source,
            image_id: format!(
                "{}/{}@{}",
                image.registry(),
                image.repository(),
                resolved.manifest_digest
            ),
            warnings,
        })
    }

    /// Resolves a reference once for every pod that asks at the same time (and, for
    /// `Always`, for the next [`RESOLVED_FOR`] too).
    async fn resolve(
        &self,
        image: &OciRef,
        policy: PullPolicy,
        credentials: &[Credential],
    ) -> Result<Resolved, OciError> {
        let key = (image.to_string(), policy.as_str(), credentials.to_vec());
        let slot = self
            .resolving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        // The map keeps one small slot per image and credentials the node has run.
        let mut memo = slot.lock().await;
        if let Some((at, resolved)) = memo.as_ref()
            && at.elapsed() < RESOLVED_FOR
        {
            return Ok(resolved.clone());
        }
        let resolved = self.oci.resolve(image, policy, credentials).await;
        *memo = resolved.as_ref().ok().map(|r| (Instant::now(), r.clone()));
        resolved
    }

    /// The credentials a pod's `imagePullSecrets` hold for the image's registry, in
    /// the order the pod lists them, and warnings for secrets that could not be used.
    /// A missing secret does not fail the pull, as in the kubelet: the pull goes on
    /// with what there is and anonymously.
    async fn credentials(
        &self,
        image: &OciRef,
        ctx: &PullContext,
    ) -> (Vec<Credential>, Vec<String>) {
        let mut credentials = Vec::new();
        let mut warnings = Vec::new();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &ctx.namespace);
        for name in &ctx.pull_secrets {
            match api.get_opt(name).await {
                Ok(Some(secret)) => match crate::oci::credential_from_secret(&secret, image.registry()) {
                    Ok(Some(c)) => credentials.push(c),
                    Ok(None) => {}
                    Err(e) => warnings.push(format!("image pull secret {name}: {e}")),
                },
                Ok(None) => warnings.push(format!(
                    "Unable to retrieve some image pull secrets ({name}); attempting to pull the image may not succeed."
                )),
                Err(e) => warnings.push(format!(
                    "image pull secret {name}: {}",
                    error_chain(&e)
                )),
            }
        }
        (credentials, warnings)
    }

    /// Downloads the Wasm layer into this node's copy, and how long the download took.
    async fn layer_bytes(
        &self,
        image: &OciRef,
        resolved: &Resolved,
        credentials: &[Credential],
        hex: &str,
    ) -> Result<(Vec<u8>, Duration), PullError> {
        let path = self.bytes_dir.join(hex);
        let started = Instant::now();
        self.oci
            .fetch_layer(image, resolved, credentials, &path)
            .await?;
        let transfer = started.elapsed();
        // oci-client checked the digest as the layer streamed; the file is read back
        // and checked once more, so what is compiled is what the digest names.
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| PullError::Cache(format!("reading {}: {e}", path.display())))?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(PullError::DigestMismatch {
                expected: hex.to_string(),
                actual,
            });
        }
        Ok((bytes, transfer))
    }

    /// The compiled program for a digest: loaded already, compiled on disk, compiled
    /// from this node's verified copy of the bytes, or from what `fetch` downloads (and
    /// how long that took), one pull per digest at a time. `Never` allows only what is
    /// on this node.
    async fn load_digest<F, Fut>(
        &self,
        hex: &str,
        begun: Instant,
        policy: PullPolicy,
        image: &str,
        fetch: F,
    ) -> Result<(Arc<Program>, PullSource), PullError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<u8>, Duration), PullError>>,
    {
        if let Some(program) = self.engine.loaded(hex) {
            return Ok((program, PullSource::Present { tier: "memory" }));
        }
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hex.to_string())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        let waited = begun.elapsed();
        // Whoever held the gate before may have loaded it meanwhile.
        if let Some(program) = self.engine.loaded(hex) {
            return Ok((program, PullSource::Present { tier: "memory" }));
        }

        let engine = self.engine.clone();
        let compiled_dir = self.compiled_dir.clone();
        let h = hex.to_string();
        let cached = tokio::task::spawn_blocking(move || engine.load_cached(&h, &compiled_dir))
            .await
            .map_err(|e| PullError::Cache(e.to_string()))??;
        if let Some(program) = cached {
            return Ok((program, PullSource::Present { tier: "disk" }));
        }
        let (bytes, transfer) = match read_verified(&self.bytes_dir.join(hex), hex).await {
            Some(bytes) => (bytes, None),
            None if policy == PullPolicy::Never => {
                return Err(PullError::NeverPull {
                    image: image.to_string(),
                });
            }
            None => {
                let (bytes, took) = fetch().await?;
                (bytes, Some(took))
            }
        };
        let size = bytes.len() as u64;
        let engine = self.engine.clone();
        let compiled_dir = self.compiled_dir.clone();
        let h = hex.to_string();
        let (program, source) =
            tokio::task::spawn_blocking(move || engine.load(&h, &bytes, &compiled_dir))
                .await
                .map_err(|e| PullError::Cache(e.to_string()))??;
        let compiled = match source {
            LoadSource::Compiled(took) => Some(took),
            LoadSource::Cached => None,
        };
        Ok((
            program,
            PullSource::Pulled {
                took: begun.elapsed(),
                waited,
                transfer,
                compiled,
                bytes: size,
            },
        ))
    }

    /// A module's bytes fetched from the store, verified and kept in this node's copy.
    async fn module_bytes(&self, hex: &str) -> Result<Vec<u8>, PullError> {
        let path = self.bytes_dir.join(hex);
        let digest = format!("sha256:{hex}");
        let bytes = skiff_api::client::download_module(&self.client, &digest)
            .await
            .map_err(|e| match e {
                skiff_api::client::ClientError::RequestFailed(kube::Error::Api(s))
                    if s.code == 404 =>
                {
                    PullError::NotFound(digest.clone())
                }
                other => PullError::FetchFailed {
                    digest: digest.clone(),
                    message: error_chain(&other),
                },
            })?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(PullError::DigestMismatch {
                expected: hex.to_string(),
                actual,
            });
        }
        let write_path = path.clone();
        let copy = bytes.clone();
        tokio::task::spawn_blocking(move || write_atomically(&write_path, &copy))
            .await
            .map_err(|e| PullError::Cache(e.to_string()))?
            .map_err(|e| PullError::Cache(format!("writing {}: {e}", path.display())))?;
        Ok(bytes)
    }
}

/// A cached file's bytes, if they still hash to their name.
async fn read_verified(path: &Path, hex: &str) -> Option<Vec<u8>> {
    let bytes = tokio::fs::read(path).await.ok()?;
    (sha256_hex(&bytes) == hex).then_some(bytes)
}

/// An error and its causes on one line, for status messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
