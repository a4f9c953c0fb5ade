//! Loading: detection of what a binary is, compile-once, and the on-disk cache.

use std::sync::Arc;

use super::guests::{HELLO, HTTP_COMPONENT, REACTOR, command_component};
use super::*;
use crate::wasm::{LoadError, ProgramKind};

fn load_error(bytes: &[u8]) -> LoadError {
    let cache = tempfile::tempdir().expect("temp dir");
    match engine().load(&digest(bytes), bytes, cache.path()) {
        Ok((program, _)) => panic!("expected a load error, got {program:?}"),
        Err(error) => error,
    }
}

#[test]
fn a_module_exporting_start_is_a_command_module() {
    assert_eq!(program(HELLO).kind(), ProgramKind::CommandModule);
}

#[test]
fn a_component_exporting_cli_run_is_a_command_component() {
    let guest = command_component("i32.const 0");
    assert_eq!(program(&guest).kind(), ProgramKind::CommandComponent);
}

#[test]
fn a_reactor_module_is_rejected_with_the_reason() {
    match load_error(&wasm(REACTOR)) {
        LoadError::InvalidModule(reason) => {
            assert_eq!(reason, "a reactor/library module: no _start export")
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_empty_component_is_rejected() {
    match load_error(&wasm("(component)")) {
        LoadError::InvalidModule(reason) => {
            assert!(
                reason.contains("without a wasi:cli/run@0.2 export"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_component_whose_http_export_lacks_handle_is_rejected() {
    match load_error(&wasm(HTTP_COMPONENT)) {
        LoadError::InvalidModule(reason) => assert!(
            reason.starts_with("its wasi:http/incoming-handler export is unusable"),
            "{reason}"
        ),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn bytes_that_are_not_wasm_are_rejected() {
    assert!(matches!(load_error(b"hello"), LoadError::NotWasm(_)));
    // Wasm text is not a binary either: the agent runs only what a digest pins.
    assert!(matches!(
        load_error(HELLO.as_bytes()),
        LoadError::NotWasm(_)
    ));
}

#[test]
fn invalid_code_fails_to_compile_with_wasmtime_s_message() {
    // A valid header followed by a section id that doesn't exist.
    match load_error(b"\0asm\x01\0\0\0\x7f\x00") {
        LoadError::CompileFailed(message) => assert!(!message.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn modules_with_imports_beyond_wasi_are_rejected() {
    let guest = r#"(module (import "env" "secret" (func)) (func (export "_start")))"#;
    match load_error(&wasm(guest)) {
        LoadError::InvalidModule(reason) => assert!(reason.contains("imports"), "{reason}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn digests_are_checked_before_anything_touches_the_cache() {
    let cache = tempfile::tempdir().expect("temp dir");
    let bytes = wasm(HELLO);
    let engine = engine();
    let wrong = digest(b"something else");
    assert!(matches!(
        engine.load(&wrong, &bytes, cache.path()),
        Err(LoadError::DigestMismatch { .. })
    ));
    assert!(matches!(
        engine.load_cached("../escape", cache.path()),
        Err(LoadError::InvalidDigest(_))
    ));
    assert_eq!(engine.compiles(), 0);
}

#[test]
fn a_program_is_compiled_once_and_shared() -> TestResult {
    let cache = tempfile::tempdir()?;
    let bytes = wasm(HELLO);
    let engine = engine();
    let (first, source) = engine.load(&digest(&bytes), &bytes, cache.path())?;
    assert!(matches!(source, LoadSource::Compiled(_)));
    let (second, source) = engine.load(&digest(&bytes), &bytes, cache.path())?;
    assert_eq!(source, LoadSource::Cached);
    assert!(Arc::ptr_eq(&first, &second), "replicas share one program");
    assert_eq!(engine.compiles(), 1);
    Ok(())
}

#[tokio::test]
async fn a_second_engine_loads_the_cached_artifact_without_recompiling() -> TestResult {
    let cache = tempfile::tempdir()?;
    let bytes = wasm(HELLO);
    let hash = digest(&bytes);
    let first = engine();
    let (compiled, _) = first.load(&hash, &bytes, cache.path())?;
    assert_eq!(first.compiles(), 1);

    // As after an agent restart: a new engine with the same config, and no bytes.
    let second = engine();
    let cached = second
        .load_cached(&hash, cache.path())?
        .expect("the artifact is on disk");
    assert_eq!(second.compiles(), 0);
    assert_eq!(cached.kind(), compiled.kind());
    assert_eq!(cached.digest(), hash);

    let output = Capture::new();
    assert_eq!(
        run_to_end(&cached, spec(output.clone())).await,
        Outcome::Exited(0)
    );
    assert_eq!(output.stdout(), "hello from wasm\n");

    // `load` with the bytes also finds it instead of compiling.
    let (_, source) = second.load(&hash, &bytes, cache.path())?;
    assert_eq!(source, LoadSource::Cached);
    assert_eq!(second.compiles(), 0);
    Ok(())
}

#[test]
fn load_cached_misses_cleanly_and_survives_a_corrupt_artifact() -> TestResult {
    let cache = tempfile::tempdir()?;
    let bytes = wasm(HELLO);
    let hash = digest(&bytes);
    let engine = engine();
    assert!(engine.load_cached(&hash, cache.path())?.is_none());

    drop(engine.load(&hash, &bytes, cache.path())?);
    let artifact = std::fs::read_dir(cache.path())?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join(format!("{hash}.cwasm")))
        .find(|path| path.exists())
        .expect("the artifact was written under the engine directory");
    std::fs::write(&artifact, b"truncated by a crash")?;

    // A fresh engine (nothing in memory) treats the bad file as a miss and recompiles.
    let fresh = super::engine();
    assert!(fresh.load_cached(&hash, cache.path())?.is_none());
    let (_, source) = fresh.load(&hash, &bytes, cache.path())?;
    assert!(matches!(source, LoadSource::Compiled(_)));
    assert!(fresh.load_cached(&hash, cache.path())?.is_some());
    Ok(())
}

#[test]
fn nonsense_engine_configs_are_rejected() {
    for config in [
        EngineConfig {
            epoch_tick: Duration::ZERO,
            ..EngineConfig::default()
        },
        EngineConfig {
            slice_ticks: 0,
            ..EngineConfig::default()
        },
    ] {
        assert!(matches!(
            WasmEngine::new(config),
            Err(crate::wasm::EngineError::ConfigRejected(_))
        ));
    }
}

/// An engine sized for a small host (an arm64 board with 39-bit addresses): its memories
/// reserve 64 MiB, not 4 GiB, so its compiled code differs (bounds checks).
fn small_host_engine() -> WasmEngine {
    WasmEngine::new(EngineConfig {
        host: Some(crate::wasm::HostResources {
            address_space: 512 << 30,
            memory: 1 << 30,
        }),
        ..EngineConfig::default()
    })
    .expect("an engine for a small host")
}

#[tokio::test]
async fn the_cache_is_per_architecture_and_engine_settings() -> TestResult {
    let cache = tempfile::tempdir()?;
    let bytes = wasm(HELLO);
    let hash = digest(&bytes);
    let server = engine();
    drop(server.load(&hash, &bytes, cache.path())?);

    // The directory says whose code it holds.
    let dirs: Vec<String> = std::fs::read_dir(cache.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let prefix = format!("{}-{}-", std::env::consts::ARCH, server.report().compiler);
    assert!(
        dirs.len() == 1 && dirs[0].starts_with(&prefix),
        "{dirs:?} should be one directory named {prefix}<hash>"
    );

    // An engine with other settings does not see that code: it compiles its own, into
    // a directory of its own.
    let small = small_host_engine();
    assert!(small.load_cached(&hash, cache.path())?.is_none());
    let (_, source) = small.load(&hash, &bytes, cache.path())?;
    assert!(matches!(source, LoadSource::Compiled(_)), "{source:?}");
    let artifacts: Vec<std::path::PathBuf> = std::fs::read_dir(cache.path())?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join(format!("{hash}.cwasm")))
        .collect();
    assert_eq!(
        artifacts.len(),
        2,
        "one directory per engine: {artifacts:?}"
    );

    // Code copied by hand into the wrong directory is refused by wasmtime's own check,
    // removed, and compiled again for this engine; the program still runs.
    let (ours, theirs) = if artifacts[0].parent().unwrap().ends_with(&dirs[0]) {
        (&artifacts[1], &artifacts[0])
    } else {
        (&artifacts[0], &artifacts[1])
    };
    std::fs::copy(theirs, ours)?;
    let fresh = small_host_engine();
    assert!(fresh.load_cached(&hash, cache.path())?.is_none());
    assert!(!ours.exists(), "the foreign artifact was removed");
    let (program, source) = fresh.load(&hash, &bytes, cache.path())?;
    assert!(matches!(source, LoadSource::Compiled(_)));
    let output = Capture::new();
    assert_eq!(
        run_to_end(&program, spec(output.clone())).await,
        Outcome::Exited(0)
    );
    assert_eq!(output.stdout(), "hello from wasm\n");
    Ok(())
}

#[test]
fn the_engine_reports_what_it_chose_for_the_host() {
    let small = small_host_engine();
    let report = small.report();
    assert_eq!(report.memory.reservation, Some(64 << 20));
    assert_eq!(report.memory.http.mode(), "on-demand");
    let expected = if cfg!(target_arch = "x86_64") || cfg!(target_arch = "aarch64") {
        "cranelift"
    } else {
        "pulley"
    };
    assert_eq!(report.compiler, expected);
    assert!(engine().report().target.starts_with(std::env::consts::ARCH));
}

#[tokio::test]
async fn pulley_runs_guests_when_asked_and_says_so() -> TestResult {
    let pulley = WasmEngine::new(EngineConfig {
        compiler: crate::wasm::Compiler::Pulley,
        ..EngineConfig::default()
    })?;
    assert_eq!(pulley.report().compiler, "pulley");
    assert_eq!(pulley.report().target, "pulley64");
    let cache = tempfile::tempdir()?;
    let bytes = wasm(HELLO);
    let (program, _) = pulley.load(&digest(&bytes), &bytes, cache.path())?;
    let output = Capture::new();
    assert_eq!(
        run_to_end(&program, spec(output.clone())).await,
        Outcome::Exited(0)
    );
    assert_eq!(output.stdout(), "hello from wasm\n");
    // Its code is cached apart from Cranelift's.
    let dir = std::fs::read_dir(cache.path())?
        .next()
        .expect("one engine directory")?;
    let name = dir.file_name().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("{}-pulley-", std::env::consts::ARCH)),
        "{name}"
    );
    Ok(())
}
