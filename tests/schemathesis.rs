//! API fuzzing: schemathesis (PyPI, pinned and installed by scripts/test) generates
//! requests from every document `/openapi/v3` serves and sends them, as the admin, to a
//! real `skiff server` with a few objects of every kind in it. The server must never
//! answer 5xx, must answer what its documents declare (status codes, content types,
//! response schemas), must end every request in time (a watch at its timeoutSeconds),
//! and must still be ready and serving the admin afterwards.
//!
//! tests/python/schemathesis_hooks.py steers the generated requests (watches get a short
//! timeoutSeconds, most requests name the seeded objects) and adds the checks for time
//! and for watch streams. A failure prints schemathesis's report, with a curl command
//! per failing request; its findings so far are regression tests in tests/api_crud.rs.
//!
//! Bounded: the fuzzing phase only (the coverage phase would send tens of thousands of
//! requests for the kinds that embed a PodSpec), `SKIFF_FUZZ_EXAMPLES` cases per
//! operation (6 unless set) from a fixed seed (`SKIFF_FUZZ_SEED`, 1 unless set), one run
//! per kind of each document, as many at once as there are cores, and a hard deadline
//! for the whole run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, ServerProcess, workload};
use serde_json::json;

/// The whole run, all documents together, as a hang detector: it takes 2-4 minutes on
/// CI's machine.
const DEADLINE: Duration = Duration::from_secs(600);
/// No request may take longer (a watch: longer than its timeoutSeconds plus this).
const REQUEST_SECONDS: u64 = 10;
/// The namespace and name most requests are steered to, and the namespace that
/// deletecollections are steered to instead.
const NAMESPACE: &str = "default";
const SCRATCH: &str = "fuzz";
const NAME: &str = "fuzz";

#[tokio::test]
async fn schemathesis_finds_no_server_error_hang_or_schema_lie() {
    let version = Command::new("schemathesis").arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        other => panic!(
            "schemathesis is not installed ({other:?}): scripts/test installs the pinned \
             version (python3 -m pip install schemathesis==VERSION)"
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let api = server.api();
    let module = seed(&api).await;
    let seeds = json!({"namespace": NAMESPACE, "scratch": SCRATCH, "name": NAME, "module": module});

    let (token, ca) = credentials(&server.kubeconfig());
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca).unwrap();
    let (code, index) = api.get("/openapi/v3").await;
    assert_eq!(code, 200, "{index}");
    let documents: Vec<String> = index["paths"]
        .as_object()
        .expect("the index lists documents")
        .values()
        .map(|d| d["serverRelativeURL"].as_str().unwrap().to_string())
        .collect();
    assert!(documents.len() >= 6, "{index}");
    // One run per kind of each document, so that the runs are of a size and the two
    // cores stay busy: the kinds with a PodSpec take far longer to generate than others.
    // SKIFF_FUZZ_ONLY=pods,secrets fuzzes those kinds alone (to chase one finding).
    let only: Option<Vec<String>> = std::env::var("SKIFF_FUZZ_ONLY")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let mut jobs = Vec::new();
    for document in &documents {
        let (code, doc) = api.get(document).await;
        assert_eq!(code, 200, "{doc}");
        let mut plurals: Vec<String> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(|path| plural_of(path))
            .collect();
        plurals.sort();
        plurals.dedup();
        assert!(!plurals.is_empty(), "{document} has no paths");
        jobs.extend(
            plurals
                .into_iter()
                .filter(|p| only.as_ref().is_none_or(|only| only.contains(p)))
                .map(|p| (document.clone(), p)),
        );
    }

    let examples = std::env::var("SKIFF_FUZZ_EXAMPLES").unwrap_or_else(|_| "6".into());
    let seed = std::env::var("SKIFF_FUZZ_SEED").unwrap_or_else(|_| "1".into());
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    let mut waiting = jobs.into_iter().enumerate().rev().collect::<Vec<_>>();
    let mut runs: Vec<Run> = Vec::new();
    // Every run ends by itself, or the test fails at the deadline with what it printed.
    while !waiting.is_empty() || runs.iter().any(|r| r.status.is_none()) {
        for run in runs.iter_mut().filter(|r| r.status.is_none()) {
            run.status = run.child.try_wait().expect("waiting for schemathesis");
        }
        while runs.iter().filter(|r| r.status.is_none()).count() < parallel
            && let Some((i, (document, plural))) = waiting.pop()
        {
            let work = dir.path().join(format!("run-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let child = Command::new("schemathesis")
                .arg("run")
                .arg(format!("{}{document}", server.url))
                .args(["--include-path-regex", &kind_paths(&plural)])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                // A fresh connection per request: a case that takes long to generate
                // must not find its kept-alive connection closed by the server's idle
                // timeout, which is the client's race, not a server fault.
                .args(["--header", "Connection: close"])
                .arg("--tls-verify")
                .arg(&ca_file)
                .args(["--phases", "fuzzing"])
                .args(["--max-examples", &examples, "--seed", &seed])
                .args(["--workers", "1"])
                .args(["--request-timeout", &REQUEST_SECONDS.to_string()])
                // Kubernetes reads parameters leniently (an unknown value of a boolean
                // is false), and no schema can say which names and selectors parse:
                // these two checks judge the requests, not the server's answers.
                .args([
                    "--exclude-checks",
                    "negative_data_rejection,positive_data_acceptance",
                ])
                .args(["--suppress-health-check", "all"])
                .args(["--generation-database", "none"])
                .arg("--no-color")
                .current_dir(&work)
                .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
                .env("PYTHONPATH", hooks_dir())
                .env("SKIFF_FUZZ_SEEDS", seeds.to_string())
                .env("SKIFF_FUZZ_REQUEST_SECONDS", REQUEST_SECONDS.to_string())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(work.join("output.txt")).unwrap())
                .stderr(Stdio::from(
                    std::fs::File::create(work.join("stderr.txt")).unwrap(),
                ))
                .spawn()
                .expect("starting schemathesis");
            runs.push(Run {
                what: format!("{plural} in {document}"),
                child,
                work,
                status: None,
            });
        }
        if started.elapsed() > DEADLINE {
            let late: Vec<String> = runs
                .iter_mut()
                .filter(|r| r.status.is_none())
                .map(|r| {
                    let _ = r.child.kill();
                    let _ = r.child.wait();
                    format!("==== {}\n{}", r.what, r.report())
                })
                .collect();
            panic!(
                "schemathesis did not finish within {DEADLINE:?} (a request that never \
                 ends?), with {} runs not started; what the unfinished ones printed:\n{}",
                waiting.len(),
                late.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "{version}: {} documents in {} runs, {examples} examples per operation, seed {seed}, \
         in {:?}",
        documents.len(),
        runs.len(),
        started.elapsed()
    );

    let failed: Vec<String> = runs
        .iter()
        .filter(|r| !r.status.is_some_and(|s| s.success()))
        .map(|r| format!("==== {} ({:?})\n{}", r.what, r.status, r.report()))
        .collect();
    assert!(
        failed.is_empty(),
        "schemathesis found problems:\n{}",
        failed.join("\n")
    );

    // And the server is still healthy, and still the admin's.
    let (code, ready) = api.get("/readyz").await;
    assert_eq!((code, ready), (200, json!("ok")));
    let (code, namespaces) = api.get("/api/v1/namespaces").await;
    assert_eq!(code, 200, "{namespaces}");
    let (code, secrets) = api.get("/api/v1/namespaces/kube-system/secrets").await;
    assert_eq!(code, 200, "{secrets}");
}

struct Run {
    /// Which kind of which document.
    what: String,
    child: Child,
    work: PathBuf,
    status: Option<std::process::ExitStatus>,
}

impl Run {
    /// What schemathesis printed: its report, then anything on stderr.
    fn report(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.work.join(name)).unwrap_or_default();
        format!("{}{}", read("output.txt"), read("stderr.txt"))
    }
}

/// The kind a path of a document is about: `pods` for
/// `/api/v1/namespaces/{namespace}/pods/{name}/log`, `namespaces` for `/api/v1/namespaces`.
fn plural_of(path: &str) -> String {
    // `/api/v1/...` or `/apis/GROUP/VERSION/...`: the resource follows the version.
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let after_version = if segments.first() == Some(&"api") {
        2
    } else {
        3
    };
    let rest = &segments[after_version.min(segments.len())..];
    let rest = match rest {
        ["namespaces", "{namespace}", more @ ..] if !more.is_empty() => more,
        other => other,
    };
    rest.first().copied().unwrap_or_default().to_string()
}

/// The paths of one kind, at any version, as a regular expression for
/// `--include-path-regex`.
fn kind_paths(plural: &str) -> String {
    format!(
        r"^/apis?(/[^/]+)?/v[0-9]+[a-z0-9]*/(namespaces/\{{namespace\}}/)?{plural}(/\{{name\}}(/[a-z]+)?)?$"
    )
}

fn hooks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python")
}

/// The admin's bearer token and the cluster CA (PEM), from the server's kubeconfig.
fn credentials(kubeconfig: &Path) -> (String, Vec<u8>) {
    use base64::Engine;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let token = kc.auth_infos[0]
        .auth_info
        .as_ref()
        .and_then(|a| a.token.clone())
        .expect("the admin's token");
    let ca = kc.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.certificate_authority_data.clone())
        .expect("the cluster CA");
    (
        secrecy::ExposeSecret::expose_secret(&token).to_string(),
        base64::engine::general_purpose::STANDARD
            .decode(ca)
            .unwrap(),
    )
}

/// One object of every kind, named `fuzz`, mostly in `default`, so that requests reach
/// more than 404; returns the digest of the module they run.
async fn seed(api: &Api) -> String {
    let module = api.upload(workload("ticker.wasm")).await;
    let template = |app: &str| {
        json!({
            "metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "main", "image": module}]},
        })
    };
    let selector = |app: &str| json!({"matchLabels": {"app": app}});
    let ns = format!("/api/v1/namespaces/{NAMESPACE}");
    let apis = |group: &str| format!("/apis/{group}/v1/namespaces/{NAMESPACE}");
    let objects = [
        ("/api/v1/namespaces".to_string(), json!({})),
        ("/api/v1/nodes".to_string(), json!({})),
        (format!("{ns}/configmaps"), json!({"data": {"k": "v"}})),
        (format!("{ns}/secrets"), json!({"stringData": {"k": "v"}})),
        (
            format!("{ns}/services"),
            json!({"spec": {"selector": {"app": "fuzz"}, "ports": [{"port": 80}]}}),
        ),
        (
            format!("{ns}/endpoints"),
            json!({"subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 80}]}]}),
        ),
        (
            format!("{ns}/events"),
            json!({"involvedObject": {"kind": "Pod", "name": NAME, "namespace": NAMESPACE},
                   "reason": "Seeded", "message": "for the fuzzer"}),
        ),
        (format!("{ns}/pods"), template("fuzz")),
        (
            format!("{}/deployments", apis("apps")),
            json!({"spec": {"replicas": 1, "selector": selector("fuzz-d"), "template": template("fuzz-d")}}),
        ),
        (
            format!("{}/replicasets", apis("apps")),
            json!({"spec": {"replicas": 1, "selector": selector("fuzz-r"), "template": template("fuzz-r")}}),
        ),
        (
            format!("{}/daemonsets", apis("apps")),
            json!({"spec": {"selector": selector("fuzz-ds"), "template": template("fuzz-ds")}}),
        ),
        (
            format!("{}/jobs", apis("batch")),
            json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
                   "containers": [{"name": "main", "image": module}]}}}}),
        ),
        (
            format!("{}/cronjobs", apis("batch")),
            json!({"spec": {"schedule": "@yearly", "suspend": true, "jobTemplate": {"spec": {
                   "template": {"spec": {"restartPolicy": "Never",
                   "containers": [{"name": "main", "image": module}]}}}}}}),
        ),
        (
            format!("{}/leases", apis("coordination.k8s.io")),
            json!({"spec": {"holderIdentity": "fuzz"}}),
        ),
        (
            format!("{}/endpointslices", apis("discovery.k8s.io")),
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.1"]}],
                   "ports": [{"port": 80}]}),
        ),
        (
            format!("{}/apps", apis("skiff.dev")),
            json!({"spec": {"module": module}}),
        ),
        (
            format!("/apis/autoscaling/v2/namespaces/{NAMESPACE}/horizontalpodautoscalers"),
            json!({"spec": {"maxReplicas": 3, "scaleTargetRef":
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}}}),
        ),
    ];
    for (path, mut body) in objects {
        body["metadata"]["name"] = json!(NAME);
        let (code, created) = api.post(&path, &body).await;
        assert_eq!(code, 201, "seeding {path}: {created}");
    }
    module
}
