//! Measurements behind `EngineConfig` defaults (ignored; run them on purpose):
//! `cargo test -p skiff-runtime wasm::tests::measure -- --ignored --nocapture`.
//!
//! Set `SKIFF_MEASURE_GUEST=/path/to/guest.wasm` to measure idle instances of a real
//! command instead of the WAT sleeper; it must print something, then sleep.

use super::guests::{HELLO, SLEEP_60S};
use super::*;

/// Sequential start-to-exit runs timed per configuration.
const RUNS: u32 = 200;

/// Idle instances held at once for the RSS measurement.
const IDLE_INSTANCES: usize = 500;

struct Discard;

impl OutputSink for Discard {
    fn write(&self, _stream: Stream, _bytes: &[u8]) {}
}

/// Resident set size of this process, from /proc (Linux, 4 KiB pages).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: run with --ignored --nocapture"]
async fn measure_compile_instantiate_and_idle_rss() -> TestResult {
    let idle_guest = match std::env::var_os("SKIFF_MEASURE_GUEST").filter(|p| !p.is_empty()) {
        Some(path) => std::fs::read(path)?,
        None => wasm(SLEEP_60S),
    };
    // Each configuration twice, interleaved, so one-time process warm-up doesn't skew one.
    for pooling in [false, true, false, true] {
        let cache = tempfile::tempdir()?;
        let engine = WasmEngine::new(EngineConfig {
            pooling,
            ..EngineConfig::default()
        })?;

        let bytes = wasm(HELLO);
        let (hello, source) = engine.load(&digest(&bytes), &bytes, cache.path())?;

        // Warm up once, then time whole runs: store + WASI context + instantiate + call.
        run_to_end(&hello, spec(Arc::new(Discard))).await;
        let started = Instant::now();
        for _ in 0..RUNS {
            let outcome = run_to_end(&hello, spec(Arc::new(Discard))).await;
            assert_eq!(outcome, Outcome::Exited(0));
        }
        let per_run = started.elapsed() / RUNS;

        let (sleeper, sleeper_source) =
            engine.load(&digest(&idle_guest), &idle_guest, cache.path())?;
        let before = rss_bytes();
        let stop = CancellationToken::new();
        let mut runs = Vec::with_capacity(IDLE_INSTANCES);
        let mut outputs = Vec::with_capacity(IDLE_INSTANCES);
        let started = Instant::now();
        for _ in 0..IDLE_INSTANCES {
            let output = Capture::new();
            let (sleeper, stop, spec) = (sleeper.clone(), stop.clone(), spec(output.clone()));
            runs.push(tokio::spawn(async move { sleeper.run(spec, stop).await }));
            outputs.push(output);
        }
        for output in &outputs {
            output.wait_for_stdout(1).await;
        }
        let all_started = started.elapsed();
        let after = rss_bytes();
        stop.cancel();
        for run in runs {
            assert_eq!(run.await?, Outcome::Interrupted);
        }

        eprintln!(
            "pooling={pooling}: compile hello {source:?}, idle guest {sleeper_source:?}; \
             start-to-exit {per_run:?}/run; \
             {IDLE_INSTANCES} idle instances started in {all_started:?}, \
             RSS +{} KiB = {:.1} KiB/instance",
            after.saturating_sub(before) / 1024,
            after.saturating_sub(before) as f64 / 1024.0 / IDLE_INSTANCES as f64
        );
    }
    Ok(())
}
