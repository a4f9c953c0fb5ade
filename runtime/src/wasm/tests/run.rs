//! Running: exit codes, traps, output, what the guest can see, and stopping.

use std::path::PathBuf;

use super::guests::{
    ARGS_AND_ENV, CREATE_FILE, EXIT_3, HELLO, SLEEP_60S, SPIN, TRAP, command_component,
};
use super::*;
use crate::wasm::{Preopen, ProgramKind};

/// How quickly a stopped guest must end: a few slices plus scheduling slack on a busy CI box.
const STOP_LIMIT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn returning_from_start_is_exit_0_and_output_reaches_the_sink() {
    let output = Capture::new();
    let outcome = run_to_end(&program(HELLO), spec(output.clone())).await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(output.stdout(), "hello from wasm\n");
    assert_eq!(output.stderr(), "oops\n");
}

#[tokio::test]
async fn proc_exit_gives_its_code() {
    let outcome = run_to_end(&program(EXIT_3), spec(Capture::new())).await;
    assert_eq!(outcome, Outcome::Exited(3));
}

#[tokio::test]
async fn a_trap_is_reported_with_its_text_and_backtrace() {
    let outcome = run_to_end(&program(TRAP), spec(Capture::new())).await;
    let Outcome::Trapped(text) = outcome else {
        panic!("expected a trap, got {outcome:?}");
    };
    assert!(
        text.starts_with("wasm trap: wasm `unreachable` instruction executed"),
        "{text}"
    );
    assert!(
        text.contains("crash"),
        "backtrace names the function: {text}"
    );
}

#[tokio::test]
async fn the_guest_sees_exactly_its_args_and_env() {
    let output = Capture::new();
    let mut spec = spec(output.clone());
    spec.args = vec!["guest".to_owned(), "--flag".to_owned()];
    spec.env = vec![("GREETING".to_owned(), "hi".to_owned())];
    assert_eq!(
        run_to_end(&program(ARGS_AND_ENV), spec).await,
        Outcome::Exited(0)
    );
    // Nothing from the agent's own environment (PATH, HOME, ...) leaks in.
    assert_eq!(output.stdout(), "guest\0--flag\0GREETING=hi\0");
}

fn with_preopen(dir: PathBuf, read_only: bool) -> RunSpec {
    let mut spec = spec(Capture::new());
    spec.preopens = vec![Preopen {
        host: dir,
        guest: "/data".to_owned(),
        read_only,
    }];
    spec
}

#[tokio::test]
async fn a_writable_preopen_accepts_new_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let outcome = run_to_end(
        &program(CREATE_FILE),
        with_preopen(dir.path().to_owned(), false),
    )
    .await;
    assert_eq!(outcome, Outcome::Exited(0));
    assert_eq!(std::fs::read(dir.path().join("out.txt"))?, b"data");
    Ok(())
}

#[tokio::test]
async fn a_read_only_preopen_refuses_writes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let outcome = run_to_end(
        &program(CREATE_FILE),
        with_preopen(dir.path().to_owned(), true),
    )
    .await;
    assert!(
        matches!(outcome, Outcome::Exited(errno) if errno != 0),
        "path_open must fail with an errno, got {outcome:?}"
    );
    assert!(!dir.path().join("out.txt").exists());
    Ok(())
}

#[tokio::test]
async fn a_missing_preopen_fails_the_run_on_the_host_side() {
    let spec = with_preopen(PathBuf::from("/nonexistent/skiff-test-dir"), true);
    let outcome = run_to_end(&program(HELLO), spec).await;
    let Outcome::Failed(reason) = outcome else {
        panic!("expected a host-side failure, got {outcome:?}");
    };
    assert!(reason.contains("/nonexistent/skiff-test-dir"), "{reason}");
}

/// Starts `wat`, waits until it printed something, stops it and returns how it ended and
/// how long stopping took.
async fn stop_after_start(wat: &str) -> (Outcome, Duration) {
    let program = program(wat);
    let output = Capture::new();
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let (spec, stop) = (spec(output.clone()), stop.clone());
        async move { program.run(spec, stop).await }
    });
    output.wait_for_stdout(1).await;
    let asked = Instant::now();
    stop.cancel();
    let outcome = tokio::time::timeout(WAIT_LIMIT, run)
        .await
        .expect("a stopped guest ends")
        .expect("the run task doesn't panic");
    (outcome, asked.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_interrupts_a_guest_spinning_in_wasm() {
    let (outcome, took) = stop_after_start(SPIN).await;
    assert_eq!(outcome, Outcome::Interrupted);
    assert!(took < STOP_LIMIT, "took {took:?}");
}

#[tokio::test]
async fn stop_interrupts_a_spinning_guest_on_a_single_thread_runtime() {
    // With one worker thread, the test itself only runs because the guest yields.
    let (outcome, took) = stop_after_start(SPIN).await;
    assert_eq!(outcome, Outcome::Interrupted);
    assert!(took < STOP_LIMIT, "took {took:?}");
}

#[tokio::test]
async fn stop_interrupts_a_guest_blocked_in_a_host_call() {
    let (outcome, took) = stop_after_start(SLEEP_60S).await;
    assert_eq!(outcome, Outcome::Interrupted);
    assert!(took < STOP_LIMIT, "took {took:?}");
}

#[tokio::test]
async fn a_run_stopped_before_it_starts_is_interrupted() {
    let stop = CancellationToken::new();
    stop.cancel();
    let outcome = program(HELLO).run(spec(Capture::new()), stop).await;
    assert_eq!(outcome, Outcome::Interrupted);
}

#[tokio::test]
async fn a_command_component_exits_0_or_1_from_run() {
    let ok = program(&command_component("i32.const 0"));
    assert_eq!(
        run_to_end(&ok, spec(Capture::new())).await,
        Outcome::Exited(0)
    );
    let err = program(&command_component("i32.const 1"));
    assert_eq!(
        run_to_end(&err, spec(Capture::new())).await,
        Outcome::Exited(1)
    );
}

#[tokio::test]
async fn a_command_component_can_trap_and_be_stopped() {
    let trapping = program(&command_component("unreachable"));
    let outcome = run_to_end(&trapping, spec(Capture::new())).await;
    assert!(
        matches!(&outcome, Outcome::Trapped(text) if text.contains("unreachable")),
        "{outcome:?}"
    );

    let spinning = program(&command_component("(loop $l (br $l)) i32.const 0"));
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { spinning.run(spec(Capture::new()), stop).await }
    });
    // This guest can't print (no WASI imports), so give it a moment to be spinning; the
    // outcome is the same if it hadn't started, only less interesting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let outcome = tokio::time::timeout(WAIT_LIMIT, run)
        .await
        .expect("a stopped component ends")
        .expect("no panic");
    assert_eq!(outcome, Outcome::Interrupted);
}

/// The real wasm32-wasip2 hello component from `workloads/`, run through WASI 0.2 with
/// its output captured. Its expected output is documented in workloads/README.md.
#[tokio::test]
async fn the_hello_component_from_workloads_prints_args_and_env() -> TestResult {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../workloads/bin/hello-component.wasm");
    let bytes = std::fs::read(&path)?;
    let cache = tempfile::tempdir()?;
    let (program, _) = engine().load(&digest(&bytes), &bytes, cache.path())?;
    assert_eq!(program.kind(), ProgramKind::CommandComponent);
    let output = Capture::new();
    let mut spec = spec(output.clone());
    spec.args = vec!["hello-component".to_owned(), "x y".to_owned()];
    spec.env = vec![("GREETING".to_owned(), "hi".to_owned())];
    assert_eq!(run_to_end(&program, spec).await, Outcome::Exited(0));
    assert_eq!(
        output.stdout(),
        "arg[0]=hello-component\narg[1]=x y\nenv GREETING=hi\nhello done\n"
    );
    assert_eq!(output.stderr(), "hello stderr\n");
    Ok(())
}
