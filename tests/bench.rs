//! The benchmark suite runs end to end on the real binary: `skiff bench all` prints one
//! table and writes its JSON and PNG plots, and what it measures holds (no request
//! fails through two rolling updates; every node of `skiff dev` gets Ready). The
//! benchmarks' methods are checked in small runs: the API bench drives etcd over gRPC
//! in alternating order, medians are medians of every run printed, pod start is
//! measured bound directly and through the scheduler. The figures themselves belong to
//! docs/benchmarks.md, measured on a release build.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn skiff(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("running skiff");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap()
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
        "{path:?} is not a drawn PNG ({} bytes)",
        bytes.len()
    );
}

#[test]
fn the_suite_prints_one_table_and_writes_json_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let (ok, text) = skiff(&[
        "bench",
        "all",
        "--quick",
        "--skip",
        "api,pods,scheduler,http,footprint,ha",
        "--out",
        dir,
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("skiff bench all --quick"), "{text}");
    let results = json(&out.path().join("results.json"));
    let row = |metric: &str| -> Value {
        results["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"].as_str().unwrap().contains(metric))
            .cloned()
            .unwrap_or_else(|| panic!("no row {metric}: {results}"))
    };
    let failed = row("requests failed during two rollouts");
    assert_eq!(failed["skiff"], 0.0, "{failed}");
    assert_eq!(failed["goal_met"], true, "{failed}");
    let ready = row("to all nodes Ready");
    assert!(ready["skiff"].as_f64().unwrap() > 0.0, "{ready}");
    assert!(ready["published_peer"].as_str().unwrap().contains("kind"));
    // Benchmarks left out show as having no figure, not as zero.
    assert!(row("durable creates/s")["skiff"].is_null());
    let rolling = &results["results"]["rolling"];
    assert!(rolling["ok"].as_u64().unwrap() > 0, "{rolling}");
    // Every request sent is counted, also those still in flight when the load stopped.
    assert_eq!(
        rolling["sent"].as_u64().unwrap(),
        rolling["ok"].as_u64().unwrap() + rolling["failed"].as_u64().unwrap(),
        "{rolling}"
    );
    let late = &rolling["ended_after_the_last_bucket"];
    assert_eq!(late["failed"], 0, "{rolling}");
    assert_eq!(rolling["updates"].as_array().unwrap().len(), 2);
    assert_png(&out.path().join("rolling-update.png"));

    // The pod start latency plot comes from the pods benchmark: both paths, bound
    // directly and through the scheduler, in alternating order; the density RSS is the
    // median of several samples.
    let png = out.path().join("start.png");
    let pods_json = out.path().join("pods.json");
    let (ok, text) = skiff(&[
        "bench",
        "pods",
        "--pods",
        "40",
        "--runs",
        "2",
        "--density",
        "30",
        "--rss-samples",
        "3",
        "--png",
        png.to_str().unwrap(),
        "--json",
        pods_json.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("bound directly, no scheduler"), "{text}");
    assert!(text.contains("SLO p99 <= 5000"), "{text}");
    let pods = json(&pods_json);
    for path in ["bound", "scheduled"] {
        let p = &pods[path];
        assert_eq!(p["runs"], 2, "{pods}");
        assert_eq!(p["per_run_p99_ms"].as_array().unwrap().len(), 2, "{pods}");
        let cdf = p["cdf_ms"].as_array().unwrap();
        assert!(cdf.len() > 50, "{pods}");
        assert!(cdf.last().unwrap()[1].as_f64().unwrap() > 0.0, "{pods}");
    }
    // Run 1 measures the bound path first, run 2 the scheduled one.
    let runs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("run "))
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        runs,
        [
            "run 1/2, bound directly, no scheduler",
            "run 1/2, scheduled",
            "run 2/2, scheduled",
            "run 2/2, bound directly, no scheduler",
        ],
        "{text}"
    );
    let density = &pods["density"];
    assert_eq!(density["pods"], 30, "{pods}");
    let samples = density["agent_rss_samples_mib"].as_array().unwrap();
    assert_eq!(samples.len(), 3, "{pods}");
    assert!(samples.iter().all(|s| s.as_f64().unwrap() > 0.0), "{pods}");
    assert_png(&png);
}

#[test]
fn the_outside_client_mode_reports_python_client_figures_per_run() {
    // The official Kubernetes Python client (installed by scripts/test, as for
    // tests/python_client.rs) creates the pods and watches for them Running.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("outside.json");
    let (ok, text) = skiff(&[
        "bench",
        "pods",
        "--path",
        "outside",
        "--outside-pods",
        "8",
        "--runs",
        "3",
        "--density",
        "0",
        "--rss-samples",
        "1",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // Every run is printed, with its stages; the figure says what it includes.
    for run in 1..=3 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("run {run}/3, outside client (Python)")))
            .unwrap_or_else(|| panic!("no line for run {run}: {text}"));
        assert!(line.contains("8 pods running"), "{line}");
        assert!(line.contains("to the create call returning"), "{line}");
    }
    for row in [
        "start p50, outside client (Python) (ms)",
        "start p99, outside client (Python) (ms)",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}: {text}"));
        let figure: f64 = line[row.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no figure in {line:?}"));
        assert!(figure > 0.0 && figure.is_finite(), "{line}");
    }
    assert!(
        text.contains("includes the Python client's own overhead, the scheduler and the agent"),
        "{text}"
    );
    let pods = json(&path);
    // Only the path asked for was measured.
    assert!(
        pods["bound"].is_null() && pods["scheduled"].is_null(),
        "{pods}"
    );
    let o = &pods["outside"];
    assert_eq!(o["runs"], 3, "{pods}");
    assert_eq!(o["pods_per_run"], 8, "{pods}");
    for key in ["p50_ms", "p99_ms", "created_p50_ms", "bound_p50_ms"] {
        let runs = o[format!("per_run_{key}")].as_array().unwrap();
        assert_eq!(runs.len(), 3, "{key}: {pods}");
        assert!(
            runs.iter().all(|v| v.as_f64().unwrap() > 0.0),
            "{key}: {pods}"
        );
        assert_median(
            &o[key],
            &o[format!("per_run_{key}")],
            &format!("{key}: {pods}"),
        );
    }
    // The watch shows each pod bound no later than Running, so the p50s come in order.
    assert!(
        o["bound_p50_ms"].as_f64().unwrap() <= o["p50_ms"].as_f64().unwrap(),
        "{pods}"
    );
}

/// Checks that a reported figure is the median of the per-run figures beside it (to a
/// part in a billion: serde_json may parse a float one unit in the last place off).
fn assert_median(reported: &Value, runs: &Value, context: &str) {
    let (reported, median) = (reported.as_f64().unwrap(), median_of(runs));
    assert!(
        (reported - median).abs() <= 1e-9 * median.abs().max(1.0),
        "reported {reported}, median of {runs} is {median}: {context}"
    );
}

/// The median of a JSON array of numbers, as the benchmarks compute it.
fn median_of(values: &Value) -> f64 {
    let mut v: Vec<f64> = values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[test]
fn the_api_bench_drives_etcd_over_grpc_in_alternating_order() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("api.json");
    let (ok, text) = skiff(&[
        "bench",
        "api",
        "--creates",
        "300",
        "--warmup",
        "50",
        "--clients",
        "8",
        "--watchers",
        "10",
        "--watch-events",
        "10",
        "--watch-interval",
        "1ms",
        "--runs",
        "2",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // What each side does per write is said.
    assert!(text.contains("per write:"), "{text}");
    assert!(text.contains("gRPC create transaction"), "{text}");
    let api = json(&path);
    assert_eq!(
        api["order"],
        serde_json::json!(["skiff,etcd", "etcd,skiff"])
    );
    for (system, positions) in [("skiff", [1, 2]), ("etcd", [2, 1])] {
        let s = &api[system];
        let runs = s["per_run"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{api}");
        for (r, position) in runs.iter().zip(positions) {
            assert_eq!(r["position"], position, "{system}: {api}");
            assert!(r["creates_per_sec"].as_f64().unwrap() > 0.0, "{api}");
            // Every watcher got every event.
            assert_eq!(r["deliveries"], 100, "{system}: {api}");
        }
        assert_median(
            &s["creates_per_sec"],
            &s["per_run_creates_per_sec"],
            &api.to_string(),
        );
    }
    assert!(api["etcd"]["puts_per_sec"].as_f64().unwrap() > 0.0, "{api}");
    assert!(api["skiff"]["puts_per_sec"].is_null(), "{api}");
    // etcd is given an object of about the size Skiff stores (like for like).
    let (skiff_bytes, etcd_bytes) = (
        api["skiff"]["object_bytes"].as_f64().unwrap(),
        api["etcd"]["object_bytes"].as_f64().unwrap(),
    );
    assert!((0.8..1.25).contains(&(etcd_bytes / skiff_bytes)), "{api}");
}

#[test]
fn the_scheduler_bench_reports_the_median_of_its_runs() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("scheduler.json");
    let (ok, text) = skiff(&[
        "bench",
        "scheduler",
        "--nodes",
        "10",
        "--pods",
        "100",
        "--clients",
        "8",
        "--runs",
        "3",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    for run in 1..=3 {
        assert!(text.contains(&format!("run {run}/3: backlog")), "{text}");
    }
    let sched = json(&path);
    let runs = sched["per_run"].as_array().unwrap();
    assert_eq!(runs.len(), 3, "{sched}");
    for key in [
        "backlog_pods_bound_per_sec",
        "pods_bound_per_sec",
        "bound_p99_ms",
    ] {
        let per_run: Value = runs.iter().map(|r| r[key].clone()).collect();
        assert_median(&sched[key], &per_run, &format!("{key}: {sched}"));
    }
}

#[test]
fn deploy_to_first_200_is_measured_on_a_fresh_cluster_each_run() {
    // --rounds 0: the deploy runs only, so neither wrk nor `wasmtime serve` is needed.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("http.json");
    let (ok, text) = skiff(&[
        "bench",
        "http",
        "--rounds",
        "0",
        "--deploys",
        "3",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let http = json(&path);
    for key in [
        "per_run_deploy_to_first_200_ms",
        "per_run_deploy_to_first_200_cached_ms",
    ] {
        let runs = http[key].as_array().unwrap();
        assert_eq!(runs.len(), 3, "{http}");
        assert!(runs.iter().all(|v| v.as_f64().unwrap() > 0.0), "{http}");
    }
    assert_median(
        &http["deploy_to_first_200_ms"],
        &http["per_run_deploy_to_first_200_ms"],
        &http.to_string(),
    );
    for run in 1..=3 {
        assert!(text.contains(&format!("deploy run {run}/3")), "{text}");
    }
}

#[test]
fn the_cold_start_bench_times_first_requests_from_zero_and_a_step_of_load() {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cold-start.json");
    let (ok, text) = skiff(&[
        "bench",
        "cold-start",
        "--cold-starts",
        "5",
        "--reactions",
        "1",
        "--clients",
        "16",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    let cold = json(&path);
    assert_eq!(cold["cold_starts"], 5, "{cold}");
    let (p50, p99, hold) = (
        cold["cold_start_p50_ms"].as_f64().unwrap(),
        cold["cold_start_p99_ms"].as_f64().unwrap(),
        cold["hold_p50_ms"].as_f64().unwrap(),
    );
    // Every start was held by the gateway, and the hold is part of the whole.
    assert!(0.0 < hold && hold <= p50 && p50 <= p99, "{cold}");
    assert_eq!(cold["reaction_s"].as_array().unwrap().len(), 1, "{cold}");
    assert!(cold["reaction_median_s"].as_f64().unwrap() > 0.0, "{cold}");
}
