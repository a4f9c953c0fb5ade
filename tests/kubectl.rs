//! kubectl, unchanged (the pinned 1.37.1 that scripts/test installs), step by step
//! against a cluster on each store (see `common::cluster`) with the manifest set in
//! tests/manifests: apply, get in its output formats, describe, scale, rollout, logs,
//! watch, delete --wait and errors.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{eventually, workload};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// kubectl's exit status, stdout and stderr.
fn run(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is installed by scripts/test");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl off the async runtime; panics with its output if it fails.
async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = attempt(kubeconfig, args).await;
    assert!(success, "kubectl {args:?} failed:\n{out}{err}");
    out
}

/// Runs kubectl expecting it to fail; returns what it printed on stderr.
async fn fails(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = attempt(kubeconfig, args).await;
    assert!(!success, "kubectl {args:?} should fail:\n{out}{err}");
    err
}

/// Runs kubectl off the async runtime; returns (success, stdout, stderr).
async fn attempt(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let (kc, args): (PathBuf, Vec<String>) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&kc, &refs)
    })
    .await
    .unwrap()
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    kubectl_step_by_step,
    kubectl_validates_applies_and_explains_from_openapi,
);

async fn kubectl_step_by_step() {
    let (dir, _process, api) = common::cluster(2);
    let kc = dir.path().join("kubeconfig");
    let ticker = api.upload(workload("ticker.wasm")).await;
    let manifests = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/web.yaml"),
    )
    .unwrap()
    .replace("${TICKER}", &ticker);
    let manifest_file = dir.path().join("web.yaml");
    std::fs::write(&manifest_file, manifests).unwrap();
    let manifest = manifest_file.to_str().unwrap();

    // apply: created, then unchanged (no OpenAPI yet, so no client-side validation).
    let out = ok(&kc, &["apply", "-f", manifest]).await;
    for created in [
        "configmap/web-config created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(created), "{out}");
    }
    let out = ok(&kc, &["apply", "-f", manifest]).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    ok(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;

    // get: tables, -o wide, -o yaml, -o json, -o name.
    let out = ok(&kc, &["get", "deployments"]).await;
    let mut lines = out.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert_eq!(words(lines.next().unwrap())[..4], ["web", "2/2", "2", "2"]);
    let out = ok(&kc, &["get", "pods", "-o", "wide"]).await;
    assert_eq!(
        words(out.lines().next().unwrap())[..7],
        ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("1/1") && l.contains("Running"))
            .count(),
        2,
        "{out}"
    );
    let out = ok(&kc, &["get", "deployment", "web", "-o", "yaml"]).await;
    assert!(
        out.contains("kind: Deployment") && out.contains("readyReplicas: 2"),
        "{out}"
    );
    let out = ok(&kc, &["get", "configmap", "web-config", "-o", "json"]).await;
    let cm: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cm["data"]["greeting"], "hello");
    let out = ok(&kc, &["get", "services,endpointslices", "-o", "name"]).await;
    assert!(out.contains("service/web"), "{out}");
    assert!(
        out.contains("endpointslice.discovery.k8s.io/web-skiff"),
        "{out}"
    );
    let out = ok(&kc, &["get", "nodes"]).await;
    assert_eq!(
        out.lines().filter(|l| l.contains(" Ready ")).count(),
        2,
        "{out}"
    );

    // describe, with events.
    let out = ok(&kc, &["describe", "deployment", "web"]).await;
    assert!(
        out.contains("Replicas:") && out.contains("ScalingReplicaSet"),
        "{out}"
    );
    let pod = ok(
        &kc,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    )
    .await;
    let out = ok(&kc, &["describe", "pod", &pod]).await;
    assert!(
        out.contains("Scheduled") && out.contains("Started"),
        "{out}"
    );
    let out = ok(&kc, &["describe", "node", "dev-1"]).await;
    assert!(out.contains("Allocated resources"), "{out}");

    // scale, then set env: a rolling update with a second revision.
    ok(&kc, &["scale", "deployment/web", "--replicas=3"]).await;
    ok(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;
    ok(&kc, &["set", "env", "deployment/web", "VERSION=2"]).await;
    let out = ok(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = ok(&kc, &["rollout", "history", "deployment/web"]).await;
    assert!(out.contains("first version"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with('1') || l.starts_with('2'))
            .count(),
        2,
        "{out}"
    );
    ok(&kc, &["rollout", "undo", "deployment/web"]).await;
    ok(
        &kc,
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    )
    .await;
    let out = ok(
        &kc,
        &[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env}",
        ],
    )
    .await;
    assert!(
        !out.contains("VERSION"),
        "undo took the env change back: {out}"
    );

    // logs: of a deployment, and followed. kubectl picks the pod that has been ready
    // longest, which may be one the undo is still stopping (its stream would end with
    // it), so first the old pods are waited out, as they would be on Kubernetes.
    eventually("only the undone rollout's 3 pods", WAIT, || {
        let kc = kc.clone();
        async move {
            let out = ok(
                &kc,
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=web",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
                ],
            )
            .await;
            let pods: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
            (pods.len() == 3 && pods.iter().all(|l| l.split_whitespace().count() == 1))
                .then_some(())
        }
    })
    .await;
    let out = eventually("ticks in the log", WAIT, || {
        let kc = kc.clone();
        async move {
            let out = ok(&kc, &["logs", "deployment/web"]).await;
            out.contains("tick").then_some(out)
        }
    })
    .await;
    assert!(out.contains("tick"), "{out}");
    // logs -f streams: three new ticks arrive while it follows (ended once they have, or
    // at the deadline).
    let followed = tokio::task::spawn_blocking({
        let kc = kc.clone();
        move || {
            use std::io::BufRead;
            let mut child = std::process::Command::new("kubectl")
                .args(["logs", "-f", "--tail=1", "deployment/web"])
                .env("KUBECONFIG", &kc)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let deadline = std::time::Instant::now() + WAIT;
            let mut lines = Vec::new();
            while lines
                .iter()
                .filter(|l: &&String| l.contains("tick"))
                .count()
                < 3
            {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            lines
        }
    })
    .await
    .unwrap();
    assert!(
        followed.iter().filter(|l| l.contains("tick")).count() >= 3,
        "follow streamed: {followed:?}"
    );

    // get -w: a change shows up as a new row.
    let watcher = std::process::Command::new("kubectl")
        .args(["get", "configmaps", "-w", "--request-timeout=20s"])
        .env("KUBECONFIG", &kc)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let watched = dir.path().join("watched.json");
    std::fs::write(
        &watched,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"}, "data": {"a": "b"}}"#,
    )
    .unwrap();
    let watched = watched.to_str().unwrap().to_string();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}}"#,
    )
    .unwrap();
    let bad = bad.to_str().unwrap().to_string();
    // Imperative create: kubectl's typed client sends protobuf.
    ok(
        &kc,
        &["create", "configmap", "watched", "--from-literal=a=b"],
    )
    .await;
    let watcher_out = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        let mut child = watcher;
        let reader = BufReader::new(child.stdout.take().unwrap());
        let mut seen = Vec::new();
        for line in reader.lines().map_while(Result::ok) {
            let done = line.starts_with("watched");
            seen.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        seen
    })
    .await
    .unwrap();
    assert!(
        watcher_out.iter().any(|l| l.starts_with("watched")),
        "{watcher_out:?}"
    );

    // Errors print cleanly.
    let err = fails(&kc, &["get", "pod", "nope"]).await;
    assert!(
        err.contains(r#"Error from server (NotFound): pods "nope" not found"#),
        "{err}"
    );
    let err = fails(&kc, &["create", "-f", &watched]).await;
    assert!(
        err.contains("(AlreadyExists)") && err.contains("already exists"),
        "{err}"
    );
    let err = fails(&kc, &["create", "-f", &bad]).await;
    assert!(
        err.contains(r#"The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value"#),
        "{err}"
    );
    let stale = dir.path().join("stale.json");
    let mut cm: Value =
        serde_json::from_str(&ok(&kc, &["get", "configmap", "watched", "-o", "json"]).await)
            .unwrap();
    ok(&kc, &["label", "configmap", "watched", "touched=yes"]).await;
    cm["data"]["a"] = "c".into();
    std::fs::write(&stale, cm.to_string()).unwrap();
    let err = fails(&kc, &["replace", "-f", stale.to_str().unwrap()]).await;
    assert!(
        err.contains("(Conflict)") && err.contains("Operation cannot be fulfilled"),
        "{err}"
    );

    // delete --wait returns once the objects are gone.
    ok(&kc, &["delete", "-f", manifest, "--wait", "--timeout=60s"]).await;
    let (_, list) = api
        .get("/apis/apps/v1/namespaces/default/deployments")
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0);
}

/// kubectl's default (strict) validation through /openapi/v3 and the server's
/// fieldValidation; `apply` computing its patches from the served schemas; `explain`.
async fn kubectl_validates_applies_and_explains_from_openapi() {
    let (dir, _process, api) = common::cluster(1);
    let kc = dir.path().join("kubeconfig");
    let file = |name: &str, body: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        path.to_str().unwrap().to_string()
    };
    let typo = file(
        "typo.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndata: {a: b}\ndat: {c: d}\n",
    );

    // Strict, kubectl's default: refused with the field named, nothing stored.
    let err = fails(&kc, &["apply", "-f", &typo]).await;
    assert!(
        err.contains("BadRequest") && err.contains(r#"strict decoding error: unknown field "dat""#),
        "{err}"
    );
    assert_eq!(
        api.get("/api/v1/namespaces/default/configmaps/typo")
            .await
            .0,
        404
    );
    // Warn: created, with kubectl printing the server's warning.
    let (success, out, err) = attempt(&kc, &["apply", "--validate=warn", "-f", &typo]).await;
    assert!(success, "{out}{err}");
    assert!(err.contains(r#"Warning: unknown field "dat""#), "{err}");
    // Ignore: no word about it.
    let (success, out, err) = attempt(
        &kc,
        &[
            "create",
            "--validate=false",
            "-f",
            &typo,
            "--dry-run=server",
        ],
    )
    .await;
    assert!(!success || !err.contains("Warning"), "{out}{err}");

    // apply computes its patch from the served schemas: removing an env var and a
    // container port from the manifest removes them from the object.
    let ticker = api.upload(workload("ticker.wasm")).await;
    let deployment = |env: &str, ports: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: tidy}}\nspec:\n  replicas: 1\n  \
             selector: {{matchLabels: {{app: tidy}}}}\n  template:\n    metadata: {{labels: {{app: tidy}}}}\n    \
             spec:\n      containers:\n      - name: main\n        image: {ticker}\n        env: [{env}]\n        \
             ports: [{ports}]\n"
        )
    };
    let v1 = file(
        "v1.yaml",
        &deployment(
            "{name: A, value: '1'}, {name: B, value: '2'}",
            "{containerPort: 80}, {containerPort: 81}",
        ),
    );
    let v2 = file(
        "v2.yaml",
        &deployment("{name: B, value: '3'}", "{containerPort: 81}"),
    );
    ok(&kc, &["apply", "-f", &v1]).await;
    let (success, out, err) = attempt(&kc, &["apply", "-f", &v2]).await;
    assert!(success && out.contains("configured"), "{out}{err}");
    assert!(
        !err.contains("warning"),
        "apply used the served schemas: {err}"
    );
    let (_, got) = api
        .get("/apis/apps/v1/namespaces/default/deployments/tidy")
        .await;
    let container = &got["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["env"],
        serde_json::json!([{"name": "B", "value": "3"}])
    );
    assert_eq!(
        container["ports"],
        serde_json::json!([{"containerPort": 81, "protocol": "TCP"}])
    );

    // Imperative creates go through client-go's typed clients, as protobuf.
    ok(&kc, &["create", "namespace", "imperative"]).await;
    let ns = ["--namespace", "imperative"];
    for args in [
        &["create", "configmap", "cm", "--from-literal=k=v"][..],
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cret",
        ],
        &[
            "create",
            "deployment",
            "dep",
            "--image",
            &ticker,
            "--replicas=0",
        ],
        &["create", "service", "clusterip", "svc", "--tcp=80:8080"],
        &["create", "job", "once", "--image", &ticker],
    ] {
        ok(&kc, &[args, &ns[..]].concat()).await;
    }
    let (_, cm) = api.get("/api/v1/namespaces/imperative/configmaps/cm").await;
    assert_eq!(cm["data"], serde_json::json!({"k": "v"}));
    let (_, secret) = api.get("/api/v1/namespaces/imperative/secrets/creds").await;
    assert_eq!(secret["data"]["token"], "czNjcmV0");
    let (_, svc) = api.get("/api/v1/namespaces/imperative/services/svc").await;
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let (_, dep) = api
        .get("/apis/apps/v1/namespaces/imperative/deployments/dep")
        .await;
    assert_eq!(dep["spec"]["replicas"], 0, "an explicit zero survives");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        ticker.as_str()
    );
    let (code, _) = api
        .get("/apis/batch/v1/namespaces/imperative/jobs/once")
        .await;
    assert_eq!(code, 200);

    // Skiff's App kind through kubectl: apply, wait, get, re-apply, describe.
    let hello = api.upload(workload("http-hello.wasm")).await;
    let app = |replicas: u32| {
        format!(
            "apiVersion: skiff.dev/v1\nkind: App\nmetadata: {{name: hello}}\nspec:\n  \
             module: {hello}\n  replicas: {replicas}\n  env: [{{name: GREETING, value: hi}}]\n"
        )
    };
    let app1 = file("app1.yaml", &app(1));
    let app2 = file("app2.yaml", &app(2));
    ok(&kc, &["apply", "-f", &app1]).await;
    ok(
        &kc,
        &[
            "wait",
            "--for=condition=Ready",
            "app/hello",
            "--timeout=60s",
        ],
    )
    .await;
    let out = ok(&kc, &["get", "apps"]).await;
    assert_eq!(
        words(out.lines().next().unwrap()),
        ["NAME", "READY", "URL", "MODULE", "AGE"]
    );
    assert!(
        words(out.lines().nth(1).unwrap())[..2] == ["hello", "1/1"],
        "{out}"
    );
    let (success, out, err) = attempt(&kc, &["apply", "-f", &app2]).await;
    assert!(
        success && out.contains("app.skiff.dev/hello configured"),
        "{out}{err}"
    );
    assert!(!err.contains("warning"), "{err}");
    ok(
        &kc,
        &[
            "wait",
            "--for=jsonpath={.status.readyReplicas}=2",
            "app/hello",
            "--timeout=60s",
        ],
    )
    .await;
    let out = ok(&kc, &["describe", "app", "hello"]).await;
    for expected in [
        "Kind:         App",
        "Module:",
        "URL:",
        "Events:",
        "Created",
        "Scaled",
        "Ready",
    ] {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }

    // explain renders the schemas, Skiff's own kinds included.
    let out = ok(&kc, &["explain", "deployment.spec.replicas"]).await;
    assert!(
        out.contains("FIELD: replicas <integer>") && out.contains("Number of desired pods"),
        "{out}"
    );
    let out = ok(&kc, &["explain", "apps.spec", "--api-version=skiff.dev/v1"]).await;
    assert!(out.contains("module") && out.contains("replicas"), "{out}");
}
