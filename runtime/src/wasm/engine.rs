//! The node's wasmtime engine: configuration, the epoch ticker thread, WASI linkers, and
//! loading programs (compile once, then the on-disk cache, then the in-memory map).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, InstanceAllocationStrategy, Module, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;

use super::cache::{self, Artifact};
use super::detect::{self, Format};
use super::http::HttpState;
use super::limits::{MAX_MEMORIES_PER_STORE, MAX_TABLE_ELEMENTS, MAX_TABLES_PER_STORE};
use super::program::{self, ComponentState, ModuleState, Prepared, Program};
use super::{LoadError, LoadSource, ProgramKind};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Pods the pooling allocator has slots for. Command pods hold their slots for their whole
/// life, so this is the node's pod capacity when pooling is on.
const POOL_PODS: u32 = 2048;

/// Core instances per pod the pool provisions on average: a preview1 command needs one, a
/// command component made by wit-component about five.
const POOL_CORE_INSTANCES_PER_POD: u32 = 4;

/// Linear memories per pod in the pool: program plus adapter for a typical component.
const POOL_MEMORIES_PER_POD: u32 = 2;

/// Table elements per pooled table. Pool slots are reserved at this size (8 bytes each,
/// virtual), so it's far below [`MAX_TABLE_ELEMENTS`]: large enough for real programs (a
/// debug C# build was seen with 10k+), small enough to reserve thousands of.
const POOL_TABLE_ELEMENTS: usize = 64 * 1024;

/// Shortest accepted epoch tick: below this the ticker thread would cost more than the
/// precision it buys (and 0 would make it spin).
const MIN_EPOCH_TICK: Duration = Duration::from_micros(100);

/// Settings of a [`WasmEngine`]. Everything here changes either the compiled code or how
/// guests are scheduled; compiled artifacts are cached per resulting configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Length of one epoch tick: a background thread bumps the engine epoch this often
    /// while any guest runs (and sleeps otherwise). 1 ms gives slices and CPU accounting
    /// millisecond precision for ~1000 wakeups/s, a negligible cost next to the guests.
    pub epoch_tick: Duration,
    /// Ticks a guest runs before it must yield to the async executor (its time slice).
    /// 10 × 1 ms = 10 ms, the order of an OS scheduler quantum: short enough that a
    /// spinning guest delays neighbours on the same worker by at most that, and that stop
    /// and CPU limits act within ~10 ms, long enough that yielding costs nothing measurable.
    pub slice_ticks: u64,
    /// Preallocate instances, memories, tables and stacks in pools (see `pooling_config`).
    /// Off by default. Measured on a 2-core dev box, release build (`tests/measure.rs`):
    /// a trivial command runs start-to-exit in ~23 µs on demand vs ~11 µs pooled, and an
    /// idle Rust command costs ~30-50 KiB RSS either way; but the pool caps the node at
    /// `POOL_PODS` pods, reserves ~16 TiB of address space and ~15 MB RSS up front.
    /// Command pods start once and live long, so 12 µs per start doesn't pay for that.
    pub pooling: bool,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            epoch_tick: Duration::from_millis(1),
            slice_ticks: 10,
            pooling: false,
        }
    }
}

/// Why a [`WasmEngine`] could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("wasmtime rejected the engine configuration: {0}")]
    ConfigRejected(String),
    #[error("linking WASI into the engine failed: {0}")]
    LinkerFailed(String),
    #[error("starting the epoch ticker thread failed")]
    TickerSpawnFailed(#[source] std::io::Error),
}

/// The node's engine. Cheap to clone; the ticker thread stops when the last clone and the
/// last [`Program`] loaded through it are gone.
#[derive(Clone)]
pub struct WasmEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    config: EngineConfig,
    /// Cache subdirectory for this engine's artifacts (see `cache::engine_dir_name`).
    engine_dir: String,
    module_linker: wasmtime::Linker<ModuleState>,
    component_linker: wasmtime::component::Linker<ComponentState>,
    /// The engine HTTP components run on, created with the first one: the same code
    /// generation, with the pooling allocator, since every request instantiates.
    http: std::sync::OnceLock<Result<HttpEngine, String>>,
    /// Loaded programs by digest. Weak: a program lives while some pod holds it, and the
    /// per-digest mutex makes concurrent loads of one digest compile it once.
    programs: Mutex<HashMap<String, Arc<Mutex<Weak<Program>>>>>,
    compiles: AtomicU64,
    ticker: Ticker,
}

impl std::fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmEngine")
            .field("config", &self.inner.config)
            .field("engine_dir", &self.inner.engine_dir)
            .field("compiles", &self.compiles())
            .finish_non_exhaustive()
    }
}

impl WasmEngine {
    pub fn new(config: EngineConfig) -> Result<WasmEngine, EngineError> {
        if config.epoch_tick < MIN_EPOCH_TICK || config.slice_ticks == 0 {
            return Err(EngineError::ConfigRejected(format!(
                "epoch_tick must be at least {MIN_EPOCH_TICK:?} and slice_ticks at least 1 \
                 (got {:?} and {})",
                config.epoch_tick, config.slice_ticks
            )));
        }
        let engine = Engine::new(&wasmtime_config(&config))
            .map_err(|e| EngineError::ConfigRejected(format!("{e:#}")))?;
        let module_linker = program::module_linker(&engine)
            .map_err(|e| EngineError::LinkerFailed(format!("{e:#}")))?;
        let component_linker = program::component_linker(&engine)
            .map_err(|e| EngineError::LinkerFailed(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)
            .map_err(EngineError::TickerSpawnFailed)?;
        Ok(WasmEngine {
            inner: Arc::new(EngineInner {
                engine_dir: cache::engine_dir_name(&engine),
                engine,
                config,
                module_linker,
                component_linker,
                http: std::sync::OnceLock::new(),
                programs: Mutex::new(HashMap::new()),
                compiles: AtomicU64::new(0),
                ticker,
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
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
        if let Some(artifact) = cache::read_artifact(&self.inner.engine, &path)? {
            let program = self.prepare(digest_hex, artifact)?;
            *loaded = Arc::downgrade(&program);
            return Ok((program, LoadSource::Cached));
        }

        let started = Instant::now();
        let compiled = match format {
            Format::CoreModule => {
                Module::from_binary(&self.inner.engine, bytes).map(Artifact::Module)
            }
            Format::Component => {
                Component::from_binary(&self.inner.engine, bytes).map(Artifact::Component)
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
        let Some(artifact) = cache::read_artifact(&self.inner.engine, &path)? else {
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

    pub(crate) fn wasmtime(&self) -> &Engine {
        &self.inner.engine
    }

    /// Keeps the epoch ticking while the returned guard lives (one per running guest).
    pub(crate) fn enter_run(&self) -> ActiveRun {
        self.inner.ticker.enter()
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

    /// The HTTP engine, created on first use (and its epoch then ticks too).
    fn http_engine(&self) -> Result<&HttpEngine, LoadError> {
        self.inner
            .http
            .get_or_init(|| {
                let mut config = wasmtime_config(&self.inner.config);
                config.allocation_strategy(InstanceAllocationStrategy::Pooling(
                    http_pooling_config(),
                ));
                let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
                let linker = super::http::http_linker(&engine).map_err(|e| format!("{e:#}"))?;
                let _ = self.inner.ticker.shared.http.set(engine.clone());
                Ok(HttpEngine { engine, linker })
            })
            .as_ref()
            .map_err(|e| LoadError::InvalidModule(format!("the HTTP engine is unavailable: {e}")))
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
                if detect::classify_component(&self.inner.engine, &component)?
                    == ProgramKind::HttpComponent =>
            {
                let http = self.http_engine()?;
                // Move the compiled code to the HTTP engine: same configuration but
                // the allocator, so the artifact is compatible.
                let serialized = component
                    .serialize()
                    .map_err(|e| LoadError::SerializeFailed(format!("{e:#}")))?;
                // SAFETY: the bytes were serialized just now by a compatible engine of
                // this process.
                let component = unsafe { Component::deserialize(&http.engine, &serialized) }
                    .map_err(|e| LoadError::CompileFailed(format!("{e:#}")))?;
                let pre = http
                    .linker
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
            self.clone(),
            digest_hex.to_owned(),
            prepared,
        )))
    }
}

/// The wasmtime configuration behind an [`EngineConfig`].
fn wasmtime_config(config: &EngineConfig) -> wasmtime::Config {
    let mut wasmtime = wasmtime::Config::new();
    // Preemption and stop both hang off epochs (see `slicing.rs`).
    wasmtime.epoch_interruption(true);
    // Shared memories (threads proposal) bypass the `ResourceLimiter`, and no WASI we
    // provide can start threads, so the proposal only adds an unbounded allocation path.
    wasmtime.wasm_threads(false);
    // Function names from the name section are enough for outcome backtraces; DWARF-based
    // details are slow and, by default, switched by an environment variable.
    wasmtime.wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable);
    if config.pooling {
        wasmtime.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config()));
    }
    wasmtime
}

/// Pool sizes for [`POOL_PODS`] command pods.
///
/// Limits to know: every slot is reserved up front (virtual memory: each linear-memory slot
/// reserves the default 4 GiB plus guard, so ~16 TiB of address space for 4096 memories,
/// none of it resident until touched); a pod holds its slots (and its async stack) until it
/// ends, so once a total runs out (at `POOL_PODS` pods, or sooner if components use more
/// core instances or memories than the provisioned average) new runs fail to instantiate
/// with `Outcome::Failed`.
fn pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_PODS)
        .total_stacks(POOL_PODS)
        .total_core_instances(POOL_PODS * POOL_CORE_INSTANCES_PER_POD)
        .total_memories(POOL_PODS * POOL_MEMORIES_PER_POD)
        .total_tables(POOL_PODS * POOL_CORE_INSTANCES_PER_POD)
        .table_elements(POOL_TABLE_ELEMENTS.min(MAX_TABLE_ELEMENTS))
        .max_memories_per_module(MAX_MEMORIES_PER_STORE as u32)
        .max_tables_per_module(MAX_TABLES_PER_STORE as u32);
    pool
}

/// The engine and linker of HTTP components.
struct HttpEngine {
    engine: Engine,
    linker: wasmtime::component::Linker<HttpState>,
}

/// Concurrent HTTP requests (instances) the pool holds across all apps of the node;
/// beyond it, instantiation fails and the request gets 503.
const HTTP_POOL_INSTANCES: u32 = 1000;

/// Pool sizes for per-request instances of HTTP components. A Rust wasi:http component
/// made by wasm32-wasip2 has a handful of core instances and one or two memories.
fn http_pooling_config() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(HTTP_POOL_INSTANCES)
        .total_stacks(HTTP_POOL_INSTANCES)
        .total_core_instances(HTTP_POOL_INSTANCES * 8)
        .total_memories(HTTP_POOL_INSTANCES * 2)
        .total_tables(HTTP_POOL_INSTANCES * 8)
        .table_elements(POOL_TABLE_ELEMENTS.min(MAX_TABLE_ELEMENTS))
        .max_memories_per_module(MAX_MEMORIES_PER_STORE as u32)
        .max_tables_per_module(MAX_TABLES_PER_STORE as u32);
    pool
}

/// The background thread that advances the engine epoch every tick while guests run.
struct Ticker {
    shared: Arc<TickerShared>,
    thread: Option<JoinHandle<()>>,
}

struct TickerShared {
    /// The HTTP engine, once one exists: its epoch advances with the main one.
    http: std::sync::OnceLock<Engine>,
    stop: AtomicBool,
    /// Guests running now; with none, the thread parks instead of waking every tick.
    active: AtomicUsize,
}

/// Counts one running guest for the ticker; dropping it uncounts it.
pub(crate) struct ActiveRun {
    shared: Arc<TickerShared>,
}

impl Drop for ActiveRun {
    fn drop(&mut self) {
        self.shared.active.fetch_sub(1, Ordering::Release);
    }
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Ticker> {
        let shared = Arc::new(TickerShared {
            http: std::sync::OnceLock::new(),
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                while !thread_shared.stop.load(Ordering::Acquire) {
                    if thread_shared.active.load(Ordering::Acquire) == 0 {
                        // `enter` and `drop` unpark; a stale unpark token only costs a loop.
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                    if let Some(http) = thread_shared.http.get() {
                        http.increment_epoch();
                    }
                }
            })?;
        Ok(Ticker {
            shared,
            thread: Some(thread),
        })
    }

    fn enter(&self) -> ActiveRun {
        self.shared.active.fetch_add(1, Ordering::AcqRel);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
        ActiveRun {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            // The thread exits within one tick; a panic in it has nothing left to clean up.
            let _ = thread.join();
        }
    }
}
