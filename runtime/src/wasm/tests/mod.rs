//! Tests of the Wasm execution core against tiny WAT guests: shared fixtures and guests.

mod guests;
mod http;
mod limits;
mod load;
mod measure;
mod run;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{
    CancellationToken, EngineConfig, LoadSource, Outcome, OutputSink, Program, RunSpec, Stream,
    WasmEngine,
};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// How long a test waits for a guest to reach a point before failing.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

fn engine() -> WasmEngine {
    WasmEngine::new(EngineConfig::default()).expect("the default engine config is valid")
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn wasm(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("test guests are valid WAT")
}

/// Compiles a WAT guest on `engine`, caching under `cache`.
fn program_in(engine: &WasmEngine, wat: &str, cache: &Path) -> Arc<Program> {
    let bytes = wasm(wat);
    let (program, source) = engine
        .load(&digest(&bytes), &bytes, cache)
        .expect("test guests load");
    assert!(matches!(
        source,
        LoadSource::Compiled(_) | LoadSource::Cached
    ));
    program
}

/// Compiles a WAT guest on a fresh engine with a throwaway cache.
fn program(wat: &str) -> Arc<Program> {
    let cache = tempfile::tempdir().expect("temp dir");
    program_in(&engine(), wat, cache.path())
}

/// Captures guest output and wakes waiters on every write.
#[derive(Default)]
struct Capture {
    stdout: Mutex<Vec<u8>>,
    stderr: Mutex<Vec<u8>>,
    stdout_bytes: AtomicU64,
    written: Notify,
}

impl OutputSink for Capture {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let buffer = match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        };
        buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        if stream == Stream::Stdout {
            self.stdout_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        self.written.notify_waiters();
    }
}

impl Capture {
    fn new() -> Arc<Capture> {
        Arc::new(Capture::default())
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }

    fn stdout_bytes(&self) -> u64 {
        self.stdout_bytes.load(Ordering::Relaxed)
    }

    /// Waits until stdout holds at least `bytes` bytes, or panics after [`WAIT_LIMIT`].
    async fn wait_for_stdout(&self, bytes: u64) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let written = self.written.notified();
            if self.stdout_bytes() >= bytes {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "guest wrote no output within {WAIT_LIMIT:?}"
            );
            // Bounded wait per round: notifications sent before `notified()` was created
            // are covered by re-checking the count.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), written).await;
        }
    }
}

/// A spec granting nothing but `argv = ["guest"]` and output into `output`.
fn spec(output: Arc<dyn OutputSink>) -> RunSpec {
    RunSpec {
        args: vec!["guest".to_owned()],
        env: Vec::new(),
        preopens: Vec::new(),
        output,
        memory_limit: None,
        cpu_limit_millicores: None,
        usage: Default::default(),
    }
}

/// Runs a program to its end with a stop token nobody cancels.
async fn run_to_end(program: &Program, spec: RunSpec) -> Outcome {
    tokio::time::timeout(WAIT_LIMIT, program.run(spec, CancellationToken::new()))
        .await
        .expect("guest finishes in time")
}
