//! [`WasmEngine`], the node's loader of programs: it checks and classifies a binary,
//! compiles it once (then finds it in the on-disk cache, then in the in-memory map of
//! loaded programs), and pre-links it against the WASI linkers, so each run only
//! instantiates. It sits above the engine and the programs it makes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use sha2::{Digest, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use super::cache::{self, Artifact};
use super::detect::{self, Format};
use super::engine::{Engine, EngineConfig, EngineError};
use super::http::{self, HttpState};
use super::program::{self, ComponentState, ModuleState, Prepared, Program};
use super::{LoadError, LoadSource, ProgramKind};

/// The node's engine and the programs loaded on it. Cheap to clone; the ticker thread
/// stops when the last clone and the last [`Program`] loaded through it are gone.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<LoaderInner>,
}

struct LoaderInner {
    engine: Engine,
    /// Cache subdirectory for this engine's artifacts (see `cache::engine_dir_name`).
    engine_dir: String,
    module_linker: wasmtime::Linker<ModuleState>,
    component_linker: wasmtime::component::Linker<ComponentState>,
    /// The linker of HTTP components, made with their engine on first use.
    http_linker: OnceLock<Result<wasmtime::component::Linker<HttpState>, String>>,
    /// Loaded programs by digest. Weak: a program lives while some pod holds it, and the
    /// per-digest mutex makes concurrent loads of one digest compile it once.
    programs: Mutex<HashMap<String, Arc<Mutex<Weak<Program>>>>>,
    compiles: AtomicU64,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("config", self.config())
            .field("engine_dir", &self.inner.engine_dir)
            .field("compiles", &self.compiles())
            .finish_non_exhaustive()
    }
}

impl WasmEngine {
    pub fn new(config: EngineConfig) -> Result<WasmEngine, EngineError> {
        let engine = Engine::new(config)?;
        let module_linker = program::module_linker(engine.wasmtime())
            .map_err(|e| EngineError::LinkerFailed(format!("{e:#}")))?;
        let component_linker = program::component_linker(engine.wasmtime())
            .map_err(|e| EngineError::LinkerFailed(format!("{e:#}")))?;
        Ok(WasmEngine {
            inner: Arc::new(LoaderInner {
                engine_dir: cache::engine_dir_name(engine.wasmtime(), engine.report().compiler),
                engine,
                module_linker,
                component_linker,
                http_linker: OnceLock::new(),
                programs: Mutex::new(HashMap::new()),
                compiles: AtomicU64::new(0),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        self.inner.engine.config()
    }

    /// The code generator and memory settings guests run with on this host.
    pub fn report(&self) -> &super::EngineReport {
        self.inner.engine.report()
    }

    /// How many Cranelift compiles this engine did.
    pub fn compiles(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// Returns the program for `digest_hex`: already loaded, or from the on-disk cache
    /// `cache_dir/<engine compatibility hash>/<digest_hex>.cwasm`, or compiled now (and then
    /// cached). Blocks for as long as a compile takes (seconds for big components): call
    /// it from `spawn_blocking`.
    pub fn load(
        &self,
        digest_hex: &str,
        bytes: &[u8],
        cache_dir: &Path,
    ) -> Result<(Arc<Program>, LoadSource), LoadError> {
        cache::validate_digest(digest_hex)?;
        let actual = hex::encode(Sha256::digest(bytes));
        if actual != digest_hex {
            return Err(LoadError::DigestMismatch {
                expected: digest_hex.to_owned(),
                actual,
            });
        }
        let format = detect::sniff(bytes)?;
        let slot = self.slot(digest_hex);
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(program) = loaded.upgrade() {
            return Ok((program, LoadSource::Cached));
        }
        let path = cache::artifact_path(cache_dir, &self.inner.engine_dir, digest_hex);
        if let Some(artifact) = cache::read_artifact(self.inner.engine.wasmtime(), &path)? {
            let program = self.prepare(digest_hex, artifact)?;
            *loaded = Arc::downgrade(&program);
            return Ok((program, LoadSource::Cached));
        }

        let started = Instant::now();
        let compiled = match format {
            Format::CoreModule => {
                Module::from_binary(self.inner.engine.wasmtime(), bytes).map(Artifact::Module)
            }
            Format::Component => {
                Component::from_binary(self.inner.engine.wasmtime(), bytes).map(Artifact::Component)
            }
        };
        self.inner.compiles.fetch_add(1, Ordering::Relaxed);
        let artifact = compiled.map_err(|e| LoadError::CompileFailed(format!("{e:#}")))?;
        let took = started.elapsed();
        let serialized = match &artifact {
            Artifact::Module(module) => module.serialize(),
            Artifact::Component(component) => component.serialize(),
        }
        .map_err(|e| LoadError::SerializeFailed(format!("{e:#}")));
        // Classify and link before caching: only runnable programs are written to disk.
        let program = self.prepare(digest_hex, artifact)?;
        // A failed cache write costs a recompile after a restart, not this pod: warn only.
        if let Err(error) = serialized.and_then(|bytes| cache::write_atomically(&path, &bytes)) {
            tracing::warn!(digest = digest_hex, %error, "could not cache the compiled program");
        }
        *loaded = Arc::downgrade(&program);
        tracing::info!(digest = digest_hex, ?took, kind = ?program.kind(), "compiled program");
        Ok((program, LoadSource::Compiled(took)))
    }

    /// Returns the program for `digest_hex` if it is loaded or in the on-disk cache, without
    /// the module bytes: what an agent uses after a restart.
    pub fn load_cached(
        &self,
        digest_hex: &str,
        cache_dir: &Path,
    ) -> Result<Option<Arc<Program>>, LoadError> {
        cache::validate_digest(digest_hex)?;
        let slot = self.slot(digest_hex);
        let mut loaded = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(program) = loaded.upgrade() {
            return Ok(Some(program));
        }
        let path = cache::artifact_path(cache_dir, &self.inner.engine_dir, digest_hex);
        let Some(artifact) = cache::read_artifact(self.inner.engine.wasmtime(), &path)? else {
            return Ok(None);
        };
        let program = self.prepare(digest_hex, artifact)?;
        *loaded = Arc::downgrade(&program);
        Ok(Some(program))
    }

    /// The program for a digest if it is loaded in memory now: no I/O, so callers can try
    /// it on the async thread before paying for a blocking load.
    pub fn loaded(&self, digest_hex: &str) -> Option<Arc<Program>> {
        let slot = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest_hex)
            .cloned()?;
        slot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade()
    }

    /// The per-digest load lock, created on first use. Drops entries of programs nobody
    /// holds any more, so the map is bounded by the live programs.
    fn slot(&self, digest_hex: &str) -> Arc<Mutex<Weak<Program>>> {
        let mut programs = self
            .inner
            .programs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = programs.get(digest_hex) {
            return Arc::clone(slot);
        }
        programs.retain(|_, slot| {
            // A locked slot is being loaded right now: keep it.
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map_or(true, |program| program.strong_count() > 0)
        });
        let slot = Arc::new(Mutex::new(Weak::new()));
        programs.insert(digest_hex.to_owned(), Arc::clone(&slot));
        slot
    }

    /// The HTTP engine and its linker, created on first use.
    fn http(
        &self,
    ) -> Result<(&wasmtime::Engine, &wasmtime::component::Linker<HttpState>), LoadError> {
        let unavailable =
            |e: &str| LoadError::InvalidModule(format!("the HTTP engine is unavailable: {e}"));
        let engine = self.inner.engine.http().map_err(unavailable)?;
        let linker = self
            .inner
            .http_linker
            .get_or_init(|| http::http_linker(engine).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| unavailable(e))?;
        Ok((engine, linker))
    }

    /// Classifies an artifact and pre-links it against WASI, so each run only instantiates.
    fn prepare(&self, digest_hex: &str, artifact: Artifact) -> Result<Arc<Program>, LoadError> {
        let unlinkable = |e: wasmtime::Error| {
            LoadError::InvalidModule(format!(
                "it needs imports this agent doesn't provide: {e:#}"
            ))
        };
        let prepared = match artifact {
            Artifact::Module(module) => {
                detect::classify_module(&module)?;
                Prepared::Module(
                    self.inner
                        .module_linker
                        .instantiate_pre(&module)
                        .map_err(unlinkable)?,
                )
            }
            Artifact::Component(component)
                if detect::classify_component(self.inner.engine.wasmtime(), &component)?
                    == ProgramKind::HttpComponent =>
            {
                let (http_engine, http_linker) = self.http()?;
                // Move the compiled code to the HTTP engine: same configuration but
                // the allocator, so the artifact is compatible.
                let serialized = component
                    .serialize()
                    .map_err(|e| LoadError::SerializeFailed(format!("{e:#}")))?;
                // SAFETY: the bytes were serialized just now by a compatible engine of
                // this process.
                let component = unsafe { Component::deserialize(http_engine, &serialized) }
                    .map_err(|e| LoadError::CompileFailed(format!("{e:#}")))?;
                let pre = http_linker
                    .instantiate_pre(&component)
                    .map_err(unlinkable)?;
                Prepared::Http(ProxyPre::new(pre).map_err(|e| {
                    LoadError::InvalidModule(format!(
                        "its wasi:http/incoming-handler export is unusable: {e:#}"
                    ))
                })?)
            }
            Artifact::Component(component) => {
                let pre = self
                    .inner
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(unlinkable)?;
                Prepared::Component(CommandPre::new(pre).map_err(|e| {
                    LoadError::InvalidModule(format!("its wasi:cli/run export is unusable: {e:#}"))
                })?)
            }
        };
        Ok(Arc::new(Program::new(
            self.inner.engine.clone(),
            digest_hex.to_owned(),
            prepared,
        )))
    }
}
