//! The Wasm execution core: compiles and caches guest programs, and runs WASI commands
//! (preview1 core modules and preview2 components) under memory, CPU and stop control,
//! and serves wasi:http components one instance per request (`http.rs`).
//!
//! The pieces, in the order a pod meets them:
//! - [`WasmEngine`] (`loader.rs`) loads programs: it holds the linkers and the in-memory
//!   map of loaded programs, and makes each [`Program`].
//! - `engine.rs` owns the wasmtime engines, their configuration and the epoch ticker
//!   thread; it knows nothing of programs.
//! - `cache.rs` stores compiled artifacts on disk, keyed by engine configuration and digest.
//! - `detect.rs` decides what kind of program a binary is, or why it can't run here.
//! - [`Program`] (`program.rs`) instantiates and runs one replica to an [`Outcome`]; an
//!   HTTP component's requests are served by `http.rs`.
//! - `guest.rs` (the WASI context a run is granted, failure texts), `limits.rs` (memory
//!   and table bounds), `slicing.rs` (time slices, CPU limit, stop) and `stdio.rs` (guest
//!   stdout/stderr into an [`OutputSink`]) are per-run store state.
//!
//! Imports go one way: `loader` → `program` → `http` → `engine`, and all of them onto
//! the store-state modules below.

mod cache;
pub mod clusterapi;
mod detect;
mod engine;
mod guest;
mod host;
mod http;
mod limits;
mod loader;
mod program;
mod slicing;
mod stdio;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use self::detect::{Format, sniff};
pub use self::engine::{Compiler, EngineConfig, EngineError, EngineReport};
pub use self::host::{
    HostResources, HttpAllocation, InstanceAllocation, MemoryPlan, bytes as host_bytes,
    meminfo_total as host_memory_total,
};
pub use self::http::{
    DEFAULT_MAX_REQUEST_BODY, DEFAULT_REQUEST_TIMEOUT, FaultHook, HttpSpec, OutboundHosts,
    host_response,
};
pub use self::limits::{
    DEFAULT_MEMORY_LIMIT, MAX_HOST_RESOURCES, MAX_INSTANCES_PER_STORE, MAX_MEMORIES_PER_STORE,
    MAX_TABLE_ELEMENTS, MAX_TABLES_PER_STORE,
};
pub use self::loader::WasmEngine;
pub use self::program::Program;
pub use tokio_util::sync::CancellationToken;

/// How [`WasmEngine::load`] obtained a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSource {
    /// Cranelift compiled it just now, taking this long.
    Compiled(Duration),
    /// No compile happened: the program was already loaded in memory, or its artifact was
    /// deserialized from the on-disk cache.
    Cached,
}

/// What kind of WASI program a binary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// A core module exporting `_start`: a WASI preview1 command.
    CommandModule,
    /// A component exporting `wasi:cli/run@0.2.x`: a WASI preview2 command.
    CommandComponent,
    /// A component exporting `wasi:http/incoming-handler@0.2.x`: an HTTP app, served
    /// one fresh instance per request rather than run.
    HttpComponent,
}

/// Why a binary could not become a [`Program`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a Wasm binary (wrong magic, or Wasm text).
    #[error("not a WebAssembly binary: {0}")]
    NotWasm(String),
    /// Valid Wasm, but not something this agent can run; the text says why.
    #[error("unsupported WebAssembly program: {0}")]
    InvalidModule(String),
    /// Wasmtime refused to compile it (invalid code, unsupported proposal, ...).
    #[error("compiling the WebAssembly program failed: {0}")]
    CompileFailed(String),
    /// Reading or writing the on-disk compile cache failed.
    #[error("compile cache I/O failed at {path}")]
    CacheIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Serializing a compiled artifact for the cache failed.
    #[error("serializing the compiled program failed: {0}")]
    SerializeFailed(String),
    /// The digest is not 64 lowercase hex characters (it names a cache file, so it's checked).
    #[error("invalid module digest {0:?}: expected 64 lowercase hex characters")]
    InvalidDigest(String),
    /// The bytes don't hash to the digest they were loaded under.
    #[error("module bytes hash to sha256:{actual}, not the requested sha256:{expected}")]
    DigestMismatch { expected: String, actual: String },
}

/// Which guest output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Receives a guest's stdout and stderr. Called synchronously from the guest's task, so it
/// must not block for long; it bounds volume itself (the log writer does).
pub trait OutputSink: Send + Sync {
    fn write(&self, stream: Stream, bytes: &[u8]);
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Everything one run of a program is given. The guest sees nothing else.
#[derive(Clone)]
pub struct RunSpec {
    /// argv including argv[0].
    pub args: Vec<String>,
    /// Exactly these variables; nothing is inherited from the agent.
    pub env: Vec<(String, String)>,
    pub preopens: Vec<Preopen>,
    pub output: Arc<dyn OutputSink>,
    /// Bytes of linear memory plus table storage the store may hold; `None` means
    /// [`DEFAULT_MEMORY_LIMIT`].
    pub memory_limit: Option<u64>,
    /// Share of one core, in thousandths, over a rolling ~1 s window. `None` or 0: unlimited.
    pub cpu_limit_millicores: Option<u32>,
    /// Where the run's CPU time and memory are added up, with those of the container's
    /// other instances (its HTTP requests, its restarts), for `kubectl top`.
    pub usage: Arc<GuestUsage>,
}

/// What one container's guests use, summed over all its instances: CPU time spent
/// running them (polls of their futures, see `slicing::RunMeter`), and the linear memory
/// and table storage that live instances hold (charged by `limits::StoreBudget`).
#[derive(Debug, Default)]
pub struct GuestUsage {
    cpu_nanos: std::sync::atomic::AtomicU64,
    memory_bytes: std::sync::atomic::AtomicU64,
}

impl GuestUsage {
    /// Nanoseconds of running time, since the container first ran.
    pub fn cpu_nanos(&self) -> u64 {
        self.cpu_nanos.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the live instances hold now.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn add_cpu(&self, nanos: u64) {
        self.cpu_nanos
            .fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn add_memory(&self, bytes: u64) {
        self.memory_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn sub_memory(&self, bytes: u64) {
        // Never below zero, whatever order concurrent instances end in.
        let _ = self.memory_bytes.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |m| Some(m.saturating_sub(bytes)),
        );
    }
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunSpec")
            .field("args", &self.args)
            .field("env", &self.env)
            .field("preopens", &self.preopens)
            .field("memory_limit", &self.memory_limit)
            .field("cpu_limit_millicores", &self.cpu_limit_millicores)
            .finish_non_exhaustive()
    }
}

/// How a run ended. Guest faults are outcomes, never agent errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest exited with this code (returning from `_start`/`run` is 0).
    Exited(i32),
    /// The guest trapped; the text has the trap and a bounded wasm backtrace.
    Trapped(String),
    /// A memory or table growth was refused at the limit, and the guest then failed.
    OutOfMemory(String),
    /// The stop token was cancelled.
    Interrupted,
    /// The host could not set the run up (a preopen missing, instance slots exhausted).
    Failed(String),
}
