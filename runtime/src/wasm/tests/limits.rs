//! Limits: memory and tables against the pod's memory limit, and the CPU limit.

use super::guests::{
    BIG_INITIAL_MEMORY, COUNTING_SPIN, EXIT_3, GROW_THEN_EXIT, GROW_UNTIL_REFUSED, HUGE_TABLE,
};
use super::*;

const LIMIT_16_MIB: u64 = 16 << 20;

fn limited(memory_limit: u64) -> RunSpec {
    let mut spec = spec(Capture::new());
    spec.memory_limit = Some(memory_limit);
    spec
}

fn assert_out_of_memory(outcome: Outcome) {
    let Outcome::OutOfMemory(message) = outcome else {
        panic!("expected OutOfMemory, got {outcome:?}");
    };
    assert!(
        message.starts_with("memory limit 16777216 bytes exceeded (wanted "),
        "{message}"
    );
}

#[tokio::test]
async fn growing_past_the_limit_then_trapping_is_out_of_memory() {
    let outcome = run_to_end(&program(GROW_UNTIL_REFUSED), limited(LIMIT_16_MIB)).await;
    assert_out_of_memory(outcome);
}

#[tokio::test]
async fn growing_past_the_limit_then_exiting_non_zero_is_out_of_memory() {
    let outcome = run_to_end(&program(GROW_THEN_EXIT), limited(LIMIT_16_MIB)).await;
    assert_out_of_memory(outcome);
}

#[tokio::test]
async fn an_initial_memory_above_the_limit_fails_instantiation_as_out_of_memory() {
    let outcome = run_to_end(&program(BIG_INITIAL_MEMORY), limited(LIMIT_16_MIB)).await;
    assert_out_of_memory(outcome);
}

#[tokio::test]
async fn a_table_beyond_the_hard_cap_is_refused_even_without_a_limit() {
    let outcome = run_to_end(&program(HUGE_TABLE), spec(Capture::new())).await;
    assert!(
        matches!(outcome, Outcome::OutOfMemory(_)),
        "expected OutOfMemory, got {outcome:?}"
    );
}

#[tokio::test]
async fn a_limit_that_was_never_hit_leaves_exit_codes_alone() {
    let outcome = run_to_end(&program(EXIT_3), limited(LIMIT_16_MIB)).await;
    assert_eq!(outcome, Outcome::Exited(3));
}

/// Measures a CPU-limited spinner against an unlimited one running at the same time, by the
/// progress each reports (a "." per 2^20 loop iterations). Both are the same code, so the
/// ratio of their progress is the ratio of the CPU they got. On two workers the unlimited
/// one gets about a core, the limited one ~10% of a core; bounds are loose because other
/// tests share this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100m_spinner_gets_about_a_tenth_of_a_core_while_its_neighbour_runs() {
    const WINDOW: Duration = Duration::from_secs(2);
    let program = program(COUNTING_SPIN);
    let stop = CancellationToken::new();
    let (throttled, free) = (Capture::new(), Capture::new());
    let mut throttled_spec = spec(throttled.clone());
    throttled_spec.cpu_limit_millicores = Some(100);
    let runs = [
        tokio::spawn({
            let (program, stop) = (program.clone(), stop.clone());
            async move { program.run(throttled_spec, stop).await }
        }),
        tokio::spawn({
            let (program, stop, spec) = (program.clone(), stop.clone(), spec(free.clone()));
            async move { program.run(spec, stop).await }
        }),
    ];
    throttled.wait_for_stdout(1).await;
    free.wait_for_stdout(1).await;

    let (throttled_start, free_start) = (throttled.stdout_bytes(), free.stdout_bytes());
    tokio::time::sleep(WINDOW).await;
    let throttled_progress = throttled.stdout_bytes() - throttled_start;
    let free_progress = free.stdout_bytes() - free_start;
    stop.cancel();
    for run in runs {
        let outcome = run.await.expect("no panic");
        assert_eq!(outcome, Outcome::Interrupted);
    }

    let share = throttled_progress as f64 / free_progress.max(1) as f64;
    eprintln!(
        "cpu limit: throttled {throttled_progress} vs free {free_progress} dots in {WINDOW:?} \
         (share {share:.3})"
    );
    assert!(free_progress > 100, "the unlimited neighbour kept running");
    assert!(
        throttled_progress > 0,
        "the limited guest still makes progress"
    );
    assert!(
        share < 0.2,
        "a 100m guest got {share:.3} of its neighbour's CPU"
    );
}

#[tokio::test]
async fn a_guest_paused_by_its_cpu_limit_still_stops_promptly() {
    let program = program(COUNTING_SPIN);
    let output = Capture::new();
    let mut spec = spec(output.clone());
    // 1 millicore: after its first slice the guest owes seconds of pause.
    spec.cpu_limit_millicores = Some(1);
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { program.run(spec, stop).await }
    });
    output.wait_for_stdout(1).await;
    let asked = Instant::now();
    stop.cancel();
    let outcome = tokio::time::timeout(WAIT_LIMIT, run)
        .await
        .expect("a paused guest ends")
        .expect("no panic");
    assert_eq!(outcome, Outcome::Interrupted);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "took {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_guest_that_cannot_be_instantiated_is_never_reported_started() {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let started = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let stop = CancellationToken::new();
    let outcome = program(BIG_INITIAL_MEMORY)
        .run_reporting(limited(LIMIT_16_MIB), stop.clone(), started)
        .await;
    assert_out_of_memory(outcome);
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    let outcome = program(EXIT_3)
        .run_reporting(limited(LIMIT_16_MIB), stop, started)
        .await;
    assert_eq!(outcome, Outcome::Exited(3));
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "once it instantiated"
    );
}

/// A container's usage: a running spinner accrues CPU time and holds its linear memory;
/// once its instance is gone the memory is no longer counted, and the CPU time stays.
#[tokio::test]
async fn a_containers_usage_counts_cpu_time_and_live_memory() {
    let program = program(COUNTING_SPIN);
    let output = Capture::new();
    let spec = spec(output.clone());
    let usage = spec.usage.clone();
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { program.run(spec, stop).await }
    });
    output.wait_for_stdout(3).await;
    assert!(
        usage.memory_bytes() >= 64 << 10,
        "a page of linear memory at least"
    );
    let spun = usage.cpu_nanos();
    assert!(spun > 0, "time spent running is counted");
    stop.cancel();
    let outcome = tokio::time::timeout(WAIT_LIMIT, run)
        .await
        .expect("ends")
        .expect("no panic");
    assert_eq!(outcome, Outcome::Interrupted);
    assert_eq!(usage.memory_bytes(), 0, "a dropped store holds nothing");
    assert!(usage.cpu_nanos() >= spun, "CPU time is cumulative");
}
