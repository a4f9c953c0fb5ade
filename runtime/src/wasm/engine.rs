//! The node's wasmtime engines and what they are configured with: code generation,
//! the pooling allocator, and the epoch ticker thread that drives time slices. The
//! engine for HTTP components is made on first use. Knows nothing of programs: the
//! loader ([`WasmEngine`](super::WasmEngine)) and the programs it makes hold an
//! [`Engine`], not the other way round.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

use super::host::{self, HostResources, HttpAllocation, InstanceAllocation, MemoryPlan};
use super::limits::{MAX_MEMORIES_PER_STORE, MAX_TABLE_ELEMENTS, MAX_TABLES_PER_STORE};

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

/// Settings of a [`WasmEngine`](super::WasmEngine). Everything here changes either the compiled code or how
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
    /// How HTTP instances (one per request) are allocated: `Auto` pools them where the
    /// host has room for a useful pool (see `host::plan`).
    pub http_allocation: InstanceAllocation,
    /// The HTTP pool's size in instances, instead of the one sized from the host.
    pub http_pool_instances: Option<u32>,
    /// The host to size for; `None` reads this one ([`HostResources::detect`]).
    pub host: Option<HostResources>,
    /// What turns guests into code the host runs (`--wasm-compiler`).
    pub compiler: Compiler,
}

/// The code generator guests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compiler {
    /// Cranelift's native code where it has a backend for the host (x86-64, arm64,
    /// riscv64, s390x); wasmtime's Pulley interpreter elsewhere (32-bit ARM).
    #[default]
    Auto,
    /// Native code; refused where Cranelift has no backend for the host.
    Cranelift,
    /// Pulley bytecode, interpreted: slower, but no executable memory is ever mapped.
    Pulley,
}

impl std::str::FromStr for Compiler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Compiler::Auto),
            "cranelift" => Ok(Compiler::Cranelift),
            "pulley" => Ok(Compiler::Pulley),
            other => Err(format!(
                "'{other}' is not a compiler: use auto, cranelift or pulley"
            )),
        }
    }
}

/// Pulley's target for this host's pointer width and byte order.
fn pulley_target() -> &'static str {
    match (usize::BITS, cfg!(target_endian = "big")) {
        (64, false) => "pulley64",
        (64, true) => "pulley64be",
        (_, false) => "pulley32",
        (_, true) => "pulley32be",
    }
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            epoch_tick: Duration::from_millis(1),
            slice_ticks: 10,
            pooling: false,
            http_allocation: InstanceAllocation::Auto,
            http_pool_instances: None,
            host: None,
            compiler: Compiler::Auto,
        }
    }
}

/// What a node runs guests with: the code generator and the memory settings chosen for
/// its host. The agent logs it and puts it on its Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineReport {
    /// `cranelift` (native code) or `pulley` (wasmtime's interpreter, where Cranelift
    /// has no backend for the host, as on 32-bit ARM).
    pub compiler: &'static str,
    /// The target code is made for: the host's triple, or `pulley32`/`pulley64`.
    pub target: String,
    pub memory: MemoryPlan,
}

/// Why a [`WasmEngine`](super::WasmEngine) could not be created.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("wasmtime rejected the engine configuration: {0}")]
    ConfigRejected(String),
    #[error("linking WASI into the engine failed: {0}")]
    LinkerFailed(String),
    #[error("starting the epoch ticker thread failed")]
    TickerSpawnFailed(#[source] std::io::Error),
}

/// The wasmtime engines of a node. Cheap to clone; the ticker thread stops when the last
/// clone is gone (the [`WasmEngine`](super::WasmEngine) and every program hold one).
#[derive(Clone)]
pub(crate) struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: wasmtime::Engine,
    config: EngineConfig,
    report: EngineReport,
    /// The engine HTTP components run on, created with the first one: the same code
    /// generation, with the allocator the host's plan chose (a pool where one fits,
    /// since every request instantiates).
    http: OnceLock<Result<wasmtime::Engine, String>>,
    ticker: Ticker,
}

impl Engine {
    pub(crate) fn new(config: EngineConfig) -> Result<Engine, EngineError> {
        if config.epoch_tick < MIN_EPOCH_TICK || config.slice_ticks == 0 {
            return Err(EngineError::ConfigRejected(format!(
                "epoch_tick must be at least {MIN_EPOCH_TICK:?} and slice_ticks at least 1 \
                 (got {:?} and {})",
                config.epoch_tick, config.slice_ticks
            )));
        }
        let memory = host::plan(
            config.host.unwrap_or_else(HostResources::detect),
            usize::BITS,
            config.http_allocation,
            config.http_pool_instances,
        );
        let engine = wasmtime_config(&config, &memory)
            .and_then(|c| wasmtime::Engine::new(&c))
            .map_err(|e| EngineError::ConfigRejected(format!("{e:#}")))?;
        if config.compiler == Compiler::Cranelift && engine.is_pulley() {
            return Err(EngineError::ConfigRejected(format!(
                "Cranelift has no backend for this host ({}): use --wasm-compiler pulley or auto",
                host_triple()
            )));
        }
        let ticker = Ticker::start(engine.clone(), config.epoch_tick)
            .map_err(EngineError::TickerSpawnFailed)?;
        let (compiler, target) = if engine.is_pulley() {
            ("pulley", pulley_target().to_owned())
        } else {
            ("cranelift", host_triple())
        };
        let report = EngineReport {
            compiler,
            target,
            memory,
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                engine,
                config,
                report,
                http: OnceLock::new(),
                ticker,
            }),
        })
    }

    pub(crate) fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub(crate) fn report(&self) -> &EngineReport {
        &self.inner.report
    }

    /// The engine command programs are compiled for and run on.
    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// The engine of HTTP components, created on first use (and its epoch then ticks
    /// too). The error says why it could not be made.
    pub(crate) fn http(&self) -> Result<&wasmtime::Engine, &str> {
        self.inner
            .http
            .get_or_init(|| {
                let memory = &self.inner.report.memory;
                let mut config =
                    wasmtime_config(&self.inner.config, memory).map_err(|e| format!("{e:#}"))?;
                config.allocation_strategy(match memory.http {
                    HttpAllocation::Pooling { instances, .. } => {
                        InstanceAllocationStrategy::Pooling(http_pooling_config(instances))
                    }
                    HttpAllocation::OnDemand { .. } => InstanceAllocationStrategy::OnDemand,
                });
                let engine = wasmtime::Engine::new(&config).map_err(|e| format!("{e:#}"))?;
                let _ = self.inner.ticker.shared.http.set(engine.clone());
                Ok(engine)
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Keeps the epoch ticking while the returned guard lives (one per running guest).
    pub(crate) fn enter_run(&self) -> ActiveRun {
        self.inner.ticker.enter()
    }
}

/// The target triple this agent was built for, as Rust names it (`aarch64-unknown-linux-gnu`).
fn host_triple() -> String {
    let arch = std::env::consts::ARCH;
    let os = std::env::consts::OS;
    match (arch, cfg!(target_env = "gnu"), cfg!(target_abi = "eabihf")) {
        ("arm", true, true) => format!("armv7-unknown-{os}-gnueabihf"),
        (_, true, _) => format!("{arch}-unknown-{os}-gnu"),
        _ => format!("{arch}-unknown-{os}"),
    }
}

/// The wasmtime configuration behind an [`EngineConfig`] and the host's [`MemoryPlan`].
fn wasmtime_config(
    config: &EngineConfig,
    memory: &MemoryPlan,
) -> wasmtime::Result<wasmtime::Config> {
    let mut wasmtime = wasmtime::Config::new();
    // Cranelift is wasmtime's own choice wherever it has a backend (and `Engine::new`'s
    // caller refuses the engine if it chose Pulley instead); naming the host as target
    // would turn off its detection of the CPU's features.
    if config.compiler == Compiler::Pulley {
        wasmtime.target(pulley_target())?;
    }
    if let Some(reservation) = memory.reservation {
        wasmtime.memory_reservation(reservation);
        wasmtime.memory_reservation_for_growth(host::SMALL_RESERVATION_FOR_GROWTH);
    }
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
    Ok(wasmtime)
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

/// How much of each pooled HTTP instance's memory stays resident between requests
/// (only its pages a request wrote; see [`http_pooling_config`]). A Rust guest's stack,
/// data and first heap pages fit; the host's plan budgets 8 MiB per instance.
const HTTP_KEEP_RESIDENT: usize = 2 << 20;
/// The same for its tables.
const HTTP_TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Pool sizes for `instances` concurrent per-request instances of HTTP components (beyond
/// them, instantiation fails and the request gets 503). A Rust wasi:http component made by
/// wasm32-wasip2 has a handful of core instances and one or two memories; each memory slot
/// holds the largest memory a pod may have (see `host::POOL_SLOT_MEMORY`).
///
/// Where the kernel has PAGEMAP_SCAN (Linux 6.7 and later), a slot whose instance is
/// done is reset by zeroing only the pages the request wrote, up to
/// [`HTTP_KEEP_RESIDENT`] bytes of each memory, and those pages stay mapped for the next
/// request. Elsewhere, wasmtime's default: `madvise` drops every page of the slot, and
/// the next request faults them in again. Per request that was a quarter of the agent's
/// CPU serving a small component (the `madvise` and the page faults; see
/// docs/benchmarks.md, issue 17), which `wasmtime serve` pays too.
fn http_pooling_config(instances: u32) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(HTTP_KEEP_RESIDENT)
            .table_keep_resident(HTTP_TABLE_KEEP_RESIDENT);
    }
    pool.total_component_instances(instances)
        .total_stacks(instances)
        .total_core_instances(instances * 8)
        .total_memories(instances * host::HTTP_MEMORIES_PER_INSTANCE)
        .total_tables(instances * 8)
        .max_memory_size(usize::try_from(host::POOL_SLOT_MEMORY).unwrap_or(usize::MAX))
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
    http: OnceLock<wasmtime::Engine>,
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
    fn start(engine: wasmtime::Engine, tick: Duration) -> std::io::Result<Ticker> {
        let shared = Arc::new(TickerShared {
            http: OnceLock::new(),
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
