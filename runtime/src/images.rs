//! Image pulls: a container's `image: sha256:<hex>` names a module in the control
//! plane's module store. The agent fetches it once, verifies the digest, keeps the bytes
//! on disk, and compiles it once (the compiled artifact is cached on disk too), so
//! replicas share one compiled module and an agent restart does not recompile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::wasm::{LoadError, LoadSource, Program, WasmEngine};

/// Where a pulled program came from, for the Pulled event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullSource {
    /// Compiled earlier: nothing fetched or compiled. `tier` says where it was found:
    /// `memory` (loaded for another pod) or `disk` (the compiled-artifact cache).
    Present { tier: &'static str },
    /// Fetched and/or compiled now; `compiled` is how long Cranelift took, if it ran.
    Pulled {
        took: Duration,
        compiled: Option<Duration>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "image {0:?} is not a module reference: use image: sha256:<64 lowercase hex> of an uploaded module"
    )]
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
}

impl PullError {
    /// The container waiting reason a failure shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            // Bytes that are not Wasm at all are a bad pull (the store served something
            // else); Wasm that is not a runnable command is the module's own problem.
            PullError::InvalidModule(_) | PullError::CompileFailed(_) => "InvalidModule",
            _ => "ErrImagePull",
        }
    }

    /// Whether pulling again later might succeed.
    pub fn retryable(&self) -> bool {
        self.reason() == "ErrImagePull"
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
    bytes_dir: PathBuf,
    compiled_dir: PathBuf,
    /// One pull at a time per digest, so a thousand replicas fetch and compile once.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

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
    pub fn new(client: kube::Client, engine: WasmEngine, data_dir: &Path) -> ImageStore {
        ImageStore {
            client,
            engine,
            bytes_dir: data_dir.join("modules").join("sha256"),
            compiled_dir: data_dir.join("compiled"),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    pub fn engine(&self) -> &WasmEngine {
        &self.engine
    }

    /// Whether an image's program is loaded in memory (no pull needed).
    pub fn is_loaded(&self, image: &str) -> bool {
        skiff_api::module::parse_digest(image).is_some_and(|hex| self.engine.loaded(hex).is_some())
    }

    /// The compiled program for an image, fetching and compiling only what is missing.
    pub async fn pull(&self, image: &str) -> Result<(Arc<Program>, PullSource), PullError> {
        let hex = skiff_api::module::parse_digest(image)
            .ok_or_else(|| PullError::BadReference(image.to_string()))?
            .to_string();
        if let Some(program) = self.engine.loaded(&hex) {
            return Ok((program, PullSource::Present { tier: "memory" }));
        }
        let gate = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hex.clone())
            .or_default()
            .clone();
        let _one_at_a_time = gate.lock().await;
        // Whoever held the gate before may have loaded it meanwhile.
        if let Some(program) = self.engine.loaded(&hex) {
            return Ok((program, PullSource::Present { tier: "memory" }));
        }

        let engine = self.engine.clone();
        let compiled_dir = self.compiled_dir.clone();
        let h = hex.clone();
        let cached = tokio::task::spawn_blocking(move || engine.load_cached(&h, &compiled_dir))
            .await
            .map_err(|e| PullError::Cache(e.to_string()))??;
        if let Some(program) = cached {
            return Ok((program, PullSource::Present { tier: "disk" }));
        }

        let started = Instant::now();
        let bytes = self.module_bytes(&hex).await?;
        let engine = self.engine.clone();
        let compiled_dir = self.compiled_dir.clone();
        let h = hex.clone();
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
                took: started.elapsed(),
                compiled,
            },
        ))
    }

    /// The verified bytes of a module: from the local cache, or fetched from the store.
    async fn module_bytes(&self, hex: &str) -> Result<Vec<u8>, PullError> {
        let path = self.bytes_dir.join(hex);
        if let Ok(bytes) = tokio::fs::read(&path).await
            && sha256_hex(&bytes) == hex
        {
            return Ok(bytes);
        }
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
