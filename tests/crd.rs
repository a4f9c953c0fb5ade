//! CustomResourceDefinitions with the real kubectl against the real `skiff server` on
//! each store: a CRD with a structural schema, defaults and a CEL rule becomes
//! Established and served; its objects are applied, listed with their printer columns,
//! watched, status-patched, refused with field causes, explained, and deleted with it.
//! And the official Python client running a small controller of a custom resource
//! (tests/python/crd_controller.py).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ServerProcess, eventually};

const WAIT: Duration = Duration::from_secs(30);
const WIDGETS: &str = "/apis/stable.example.com/v1/namespaces/default/widgets";

/// Runs kubectl off the async runtime: (success, stdout, stderr).
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let kc = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kc)
            .output()
            .expect("kubectl is installed by scripts/test");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = kubectl(kubeconfig, args).await;
    assert!(success, "kubectl {args:?} failed:\n{out}{err}");
    out
}

async fn fails(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = kubectl(kubeconfig, args).await;
    assert!(!success, "kubectl {args:?} should fail:\n{out}{err}");
    err
}

fn manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `kubectl get --watch`, its output lines read as they come; killed when dropped.
struct KubectlWatch {
    child: std::process::Child,
    lines: Option<std::sync::mpsc::Receiver<String>>,
}

impl KubectlWatch {
    fn start(kubeconfig: &Path, args: &[&str]) -> KubectlWatch {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        KubectlWatch {
            child,
            lines: Some(lines),
        }
    }

    /// Waits for a line that `matches`; panics with what came after `WAIT`.
    async fn wait_for(&mut self, matches: fn(&str) -> bool) {
        let lines = self.lines.take().unwrap();
        let (lines, seen) = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + WAIT;
            let mut seen = Vec::new();
            while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
                match lines.recv_timeout(left) {
                    Ok(line) if matches(&line) => return (lines, None),
                    Ok(line) => seen.push(line),
                    Err(_) => break,
                }
            }
            (lines, Some(seen))
        })
        .await
        .unwrap();
        self.lines = Some(lines);
        if let Some(seen) = seen {
            panic!("kubectl's watch did not show the line; it showed {seen:#?}");
        }
    }
}

impl Drop for KubectlWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

common::store::store_tests!(#[tokio::test] async fn
    a_crd_is_served_validated_and_deleted_with_kubectl,
    a_python_controller_reconciles_a_custom_resource,
);

async fn a_crd_is_served_validated_and_deleted_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let kc = server.kubeconfig();
    let api = server.api();
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/widgets-crd.yaml");

    let out = ok(&kc, &["apply", "-f", crd.to_str().unwrap()]).await;
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/widgets.stable.example.com created"
        ),
        "{out}"
    );
    ok(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.stable.example.com",
            "--timeout=30s",
        ],
    )
    .await;
    let (_, got) = api
        .get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.stable.example.com")
        .await;
    assert_eq!(got["status"]["acceptedNames"]["kind"], "Widget", "{got}");
    assert_eq!(
        got["status"]["storedVersions"],
        serde_json::json!(["v1"]),
        "{got}"
    );

    // A rule the server cannot evaluate is reported in the CRD's status, and a CRD
    // for a resource the server serves itself is not accepted.
    let gizmos = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gizmos.stable.example.com"},
        "spec": {"group": "stable.example.com", "scope": "Cluster", "names": {"plural": "gizmos", "kind": "Gizmo"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-validations": [{"rule": "quantity(self.size).isLessThan(quantity('1Gi'))"}]}}}]}});
    let ingresses = serde_json::json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "ingresses.networking.k8s.io"},
        "spec": {"group": "networking.k8s.io", "scope": "Namespaced", "names": {"plural": "ingresses", "kind": "Ingress"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}});
    for crd in [&gizmos, &ingresses] {
        let (code, created) = api
            .post(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                crd,
            )
            .await;
        assert_eq!(code, 201, "{created}");
    }
    let condition = |crd: &serde_json::Value, kind: &str| {
        crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .cloned()
    };
    let unsupported = eventually("the unsupported rule to be reported", WAIT, || async {
        let (_, got) = api
            .get(
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gizmos.stable.example.com",
            )
            .await;
        condition(&got, "ValidationRulesSupported")
    })
    .await;
    assert_eq!(unsupported["status"], "False", "{unsupported}");
    assert_eq!(
        unsupported["reason"], "UnsupportedValidationRule",
        "{unsupported}"
    );
    assert!(
        unsupported["message"]
            .as_str()
            .unwrap()
            .contains("quantity(self.size)"),
        "{unsupported}"
    );
    let conflict = eventually("the conflicting CRD's names to be refused", WAIT, || async {
        let (_, got) = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ingresses.networking.k8s.io").await;
        condition(&got, "NamesAccepted")
    })
    .await;
    assert_eq!(
        (conflict["status"].as_str(), conflict["reason"].as_str()),
        (Some("False"), Some("NameConflict")),
        "{conflict}"
    );
    let (code, _) = api
        .get("/apis/networking.k8s.io/v1/namespaces/default/ingresses")
        .await;
    assert_eq!(code, 200, "the built-in kind is still served");
    for name in ["gizmos.stable.example.com", "ingresses.networking.k8s.io"] {
        ok(&kc, &["delete", "crd", name, "--timeout=30s"]).await;
    }

    // Discovery names the resource, its short name and its category.
    let out = ok(&kc, &["api-resources", "--api-group=stable.example.com"]).await;
    let line = out
        .lines()
        .find(|l| l.starts_with("widgets"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        words(line),
        ["widgets", "wd", "stable.example.com/v1", "true", "Widget"],
        "{out}"
    );

    // A watch opened before the create sees it.
    let mut events = api.watch(&format!("{WIDGETS}?watch=true")).await;

    // apply: created with the default, unknown fields pruned (kubectl without
    // validation sends them).
    let widget = manifest(
        dir.path(),
        "w1.yaml",
        "apiVersion: stable.example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: small\n  color: blue\n",
    );
    let out = ok(
        &kc,
        &["apply", "--validate=false", "-f", widget.to_str().unwrap()],
    )
    .await;
    assert!(
        out.contains("widget.stable.example.com/w1 created"),
        "{out}"
    );
    let (_, w1) = api.get(&format!("{WIDGETS}/w1")).await;
    assert_eq!(w1["spec"]["replicas"], 1, "the schema's default: {w1}");
    assert!(w1["spec"].get("color").is_none(), "pruned: {w1}");
    assert_eq!(w1["metadata"]["generation"], 1);
    let added = events.next_change(WAIT).await.expect("a watch event");
    assert_eq!(added["type"], "ADDED", "{added}");
    assert_eq!(added["object"]["spec"]["replicas"], 1, "{added}");

    // kubectl's watch lists w1, then sees it change.
    let mut kubectl_watch =
        KubectlWatch::start(&kc, &["get", "widgets", "--watch", "--output-watch-events"]);
    kubectl_watch
        .wait_for(|l| words(l).starts_with(&["ADDED", "w1"]))
        .await;

    // get: the printer columns, by the plural, the short name and the category.
    let out = ok(&kc, &["get", "widgets"]).await;
    let mut lines = out.lines();
    assert_eq!(
        words(lines.next().unwrap()),
        ["NAME", "SIZE", "REPLICAS", "READY", "AGE"],
        "{out}"
    );
    assert_eq!(
        words(lines.next().unwrap())[..3],
        ["w1", "small", "1"],
        "{out}"
    );
    let out = ok(&kc, &["get", "wd", "-o", "name"]).await;
    assert_eq!(out.trim(), "widget.stable.example.com/w1");
    let out = ok(&kc, &["get", "examples", "-o", "name"]).await;
    assert_eq!(out.trim(), "widget.stable.example.com/w1");

    // The status subresource: a status patch changes only status, and no generation.
    ok(
        &kc,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"count":2,"conditions":[{"type":"Ready","status":"True"}]},"spec":{"replicas":4}}"#,
        ],
    )
    .await;
    kubectl_watch
        .wait_for(|l| words(l).starts_with(&["MODIFIED", "w1"]) && l.contains("True"))
        .await;
    drop(kubectl_watch);
    let (_, w1) = api.get(&format!("{WIDGETS}/w1")).await;
    assert_eq!(w1["status"]["conditions"][0]["status"], "True", "{w1}");
    assert_eq!(
        w1["spec"]["replicas"], 1,
        "a status write leaves spec: {w1}"
    );
    assert_eq!(w1["metadata"]["generation"], 1);
    let out = ok(&kc, &["get", "widget", "w1"]).await;
    assert_eq!(
        words(out.lines().nth(1).unwrap())[..4],
        ["w1", "small", "1", "True"],
        "{out}"
    );
    // A main write ignores status and bumps the generation.
    ok(
        &kc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":3},"status":{"conditions":[]}}"#,
        ],
    )
    .await;
    let (_, w1) = api.get(&format!("{WIDGETS}/w1")).await;
    assert_eq!(
        (
            w1["spec"]["replicas"].as_i64(),
            w1["metadata"]["generation"].as_i64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(w1["status"]["conditions"][0]["status"], "True", "{w1}");

    // The other version shows the same object, with only apiVersion rewritten.
    let out = ok(
        &kc,
        &[
            "get",
            "widgets.v1beta1.stable.example.com",
            "w1",
            "-o",
            "jsonpath={.apiVersion} {.spec.replicas}",
        ],
    )
    .await;
    assert_eq!(out, "stable.example.com/v1beta1 3");

    // The scale subresource: kubectl scale writes spec.replicas; the Scale's status
    // shows the CRD's statusReplicasPath.
    ok(&kc, &["scale", "widget", "w1", "--replicas=4"]).await;
    let (_, scale) = api.get(&format!("{WIDGETS}/w1/scale")).await;
    assert_eq!(
        (
            scale["kind"].as_str(),
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["replicas"].as_i64()
        ),
        (Some("Scale"), Some(4), Some(2)),
        "{scale}"
    );

    // Refusals name the fields, from the schema and from the CEL rule.
    let bad = manifest(
        dir.path(),
        "bad.yaml",
        "apiVersion: stable.example.com/v1\nkind: Widget\nmetadata:\n  name: bad\nspec:\n  size: huge\n  replicas: 20\n",
    );
    let err = fails(&kc, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(err.contains("is invalid"), "{err}");
    assert!(
        err.contains("spec.size: Unsupported value: \"huge\""),
        "{err}"
    );
    assert!(err.contains("spec.replicas: Invalid value: 20: spec.replicas in body should be less than or equal to 10"), "{err}");
    let (code, status) = api
        .post(
            WIDGETS,
            &serde_json::json!({"apiVersion": "stable.example.com/v1", "kind": "Widget",
            "metadata": {"name": "bad"}, "spec": {"size": "small", "replicas": 7}}),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(status["details"]["causes"][0]["field"], "spec", "{status}");
    assert!(
        status["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("small widgets run at most 5 replicas"),
        "{status}"
    );
    let err = fails(
        &kc,
        &[
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":6}}"#,
        ],
    )
    .await;
    assert!(
        err.contains("small widgets run at most 5 replicas"),
        "{err}"
    );

    // Finalizers and owner references work as for built-in kinds: a finalizer holds a
    // deleted widget, and a ConfigMap it owns goes with it.
    let (code, w2) = api
        .post(WIDGETS, &serde_json::json!({"apiVersion": "stable.example.com/v1", "kind": "Widget",
            "metadata": {"name": "w2", "finalizers": ["example.com/hold"]}, "spec": {"size": "large"}}))
        .await;
    assert_eq!(code, 201, "{w2}");
    let owned = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned-by-w2",
        "ownerReferences": [{"apiVersion": "stable.example.com/v1", "kind": "Widget", "name": "w2", "uid": w2["metadata"]["uid"]}]}});
    let (code, _) = api
        .post("/api/v1/namespaces/default/configmaps", &owned)
        .await;
    assert_eq!(code, 201);
    ok(&kc, &["delete", "widget", "w2", "--wait=false"]).await;
    let (_, held) = api.get(&format!("{WIDGETS}/w2")).await;
    assert!(held["metadata"]["deletionTimestamp"].is_string(), "{held}");
    ok(
        &kc,
        &[
            "patch",
            "widget",
            "w2",
            "--type=json",
            "-p",
            r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
        ],
    )
    .await;
    eventually("w2 and what it owns to go", WAIT, || async {
        let (w, _) = api.get(&format!("{WIDGETS}/w2")).await;
        let (c, _) = api
            .get("/api/v1/namespaces/default/configmaps/owned-by-w2")
            .await;
        (w == 404 && c == 404).then_some(())
    })
    .await;
    // And the other way round: a widget owned by a ConfigMap goes with it (the collector
    // follows the kinds served since it started).
    let (code, owner) = api
        .post(
            "/api/v1/namespaces/default/configmaps",
            &serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}),
        )
        .await;
    assert_eq!(code, 201, "{owner}");
    let (code, w3) = api
        .post(
            WIDGETS,
            &serde_json::json!({"apiVersion": "stable.example.com/v1", "kind": "Widget",
            "metadata": {"name": "w3", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": owner["metadata"]["uid"]}]},
            "spec": {"size": "small"}}),
        )
        .await;
    assert_eq!(code, 201, "{w3}");
    ok(&kc, &["delete", "configmap", "owner"]).await;
    eventually("w3 to go with its owner", WAIT, || async {
        let (code, _) = api.get(&format!("{WIDGETS}/w3")).await;
        (code == 404).then_some(())
    })
    .await;

    // explain reads the schema from /openapi/v3.
    let out = ok(&kc, &["explain", "widgets.spec"]).await;
    assert!(out.contains("What the widget should be."), "{out}");
    assert!(
        out.contains("replicas") && out.contains("How many copies run."),
        "{out}"
    );

    // A changed CRD is served as changed: a lower maximum refuses what passed before.
    ok(
        &kc,
        &[
            "patch",
            "crd",
            "widgets.stable.example.com",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/replicas/maximum","value":2}]"#,
        ],
    )
    .await;
    eventually("the new maximum to be enforced", WAIT, || async {
        let (code, _) = api
            .patch(
                &format!("{WIDGETS}/w1"),
                "application/merge-patch+json",
                r#"{"spec":{"replicas":3}}"#,
            )
            .await;
        (code == 422).then_some(())
    })
    .await;

    // Deleting the CRD deletes its objects and stops serving them.
    ok(
        &kc,
        &[
            "delete",
            "crd",
            "widgets.stable.example.com",
            "--timeout=30s",
        ],
    )
    .await;
    let (code, _) = api.get(&format!("{WIDGETS}/w1")).await;
    assert_eq!(code, 404);
    let (success, _, err) = kubectl(&kc, &["get", "widgets"]).await;
    assert!(!success, "widgets are no longer served");
    assert!(
        err.contains("the server doesn't have a resource type \"widgets\"")
            || err.contains("the server could not find the requested resource"),
        "{err}"
    );
    eventually("discovery drops the group", WAIT, || async {
        let (code, _) = api.get("/apis/stable.example.com/v1").await;
        (code == 404).then_some(())
    })
    .await;
    // Defined again, the resource starts empty: the objects went with the CRD.
    ok(&kc, &["apply", "-f", crd.to_str().unwrap()]).await;
    ok(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.stable.example.com",
            "--timeout=30s",
        ],
    )
    .await;
    let (code, list) = api.get(WIDGETS).await;
    assert_eq!(
        (code, list["items"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{list}"
    );
}

async fn a_python_controller_reconciles_a_custom_resource() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &[]);
    let kubeconfig = server.kubeconfig();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/crd_controller.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&kubeconfig)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "established: gadgets.tools.example.com",
        "created: g1 g2",
        "reconciled: g1 1",
        "reconciled: g2 1",
        "reconciled again: g1 2",
        "invalid: 422 spec.speed",
        "deleted collection: 0 left",
        "ok",
    ] {
        assert!(
            stdout.contains(step),
            "missing {step:?} in:\n{stdout}\n{stderr}"
        );
    }
}

/// The CRD kubectl applies above, as JSON (PyYAML, which the Python client the tests
/// install depends on, converts the manifest).
fn widgets_crd() -> serde_json::Value {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/widgets-crd.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the manifest as JSON")
}

/// Several servers on one etcd: a CRD created through one is served by every other, a
/// server started later serves it from its first request, and a deleted CRD stops being
/// served everywhere.
#[tokio::test]
async fn every_server_on_etcd_serves_a_crd() {
    // The servers are given their store explicitly, on one etcd prefix (as tests/ha.rs).
    let dir = tempfile::tempdir().unwrap();
    let endpoints = common::etcd::shared();
    let prefix = common::etcd::prefix("crd-servers");
    let store = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        &prefix,
    ];
    let first = ServerProcess::start(&dir.path().join("s0"), &store);
    let token = std::fs::read_to_string(first.data_dir.join("server-token")).unwrap();
    let mut joining = store.to_vec();
    joining.extend(["--join", &first.url, "--token", token.trim()]);
    let second = ServerProcess::start(&dir.path().join("s1"), &joining);
    let (a, b) = (first.api(), second.api());

    let (code, crd) = a
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            &widgets_crd(),
        )
        .await;
    assert_eq!(code, 201, "{crd}");
    let widget = |name: &str| {
        serde_json::json!({"apiVersion": "stable.example.com/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": "small"}})
    };
    // The second server serves the kind within a second or so of the create.
    eventually("the second server to serve widgets", WAIT, || async {
        let (code, _) = b.post(WIDGETS, &widget("from-b")).await;
        (code == 201).then_some(())
    })
    .await;
    // ...and the first, whose own watch registers it as B's does (the create's answer
    // does not wait for that).
    let got = eventually("the first server to serve widgets", WAIT, || async {
        let (code, got) = a.get(&format!("{WIDGETS}/from-b")).await;
        (code == 200).then_some(got)
    })
    .await;
    assert_eq!(got["spec"]["replicas"].as_i64(), Some(1), "{got}");

    // A server started now serves it before anything else happens.
    let third = ServerProcess::start(&dir.path().join("s2"), &joining);
    let (code, list) = third.api().get(WIDGETS).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["items"][0]["metadata"]["name"], "from-b");

    let (code, _) = b
        .delete(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.stable.example.com",
            None,
        )
        .await;
    assert_eq!(code, 200);
    for api in [&a, &b, &third.api()] {
        eventually("every server to stop serving widgets", WAIT, || async {
            let (code, _) = api.get(WIDGETS).await;
            (code == 404).then_some(())
        })
        .await;
    }
}
