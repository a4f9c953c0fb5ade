//! Server-side apply and field ownership against the real `skiff` binary, driven by the
//! real kubectl (`apply --server-side`, `--force-conflicts`, `diff`, `--dry-run=server`)
//! and the Python client's `server_side_apply`: objects are created by apply, re-applies
//! change nothing, managers conflict and take fields over, fields a manager stops
//! applying go, client-side apply is taken over, and dry runs store nothing.

mod common;

use std::path::{Path, PathBuf};

use common::ServerProcess;
use serde_json::{Value, json};

/// kubectl's exit code, stdout and stderr, run off the async runtime.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let kc = kubeconfig.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kc)
            .output()
            .expect("kubectl is installed by scripts/test");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (code, out, err) = kubectl(kubeconfig, args).await;
    assert_eq!(code, 0, "kubectl {args:?} failed:\n{out}{err}");
    out
}

/// Writes a manifest next to the kubeconfig and returns its path.
fn manifest(dir: &Path, name: &str, text: &str) -> String {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn configmap(data: &[(&str, &str)]) -> String {
    let mut text =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n"
            .to_string();
    for (k, v) in data {
        text.push_str(&format!("  {k}: \"{v}\"\n"));
    }
    if data.is_empty() {
        text = text.replace("\ndata:\n", "\ndata: {}\n");
    }
    text
}

/// The managedFields entry of `manager`, if any.
fn entry<'a>(obj: &'a Value, manager: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

async fn get(api: &common::Api, path: &str) -> Value {
    let (code, obj) = api.get(path).await;
    assert_eq!(code, 200, "{obj}");
    obj
}

const CM: &str = "/api/v1/namespaces/default/configmaps/ssa";

#[tokio::test]
async fn kubectl_applies_server_side_with_ownership_conflicts_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let kc = server.kubeconfig();
    let api = server.api();
    let d = dir.path();

    // A server-side apply of a missing object creates it, owned by kubectl.
    let m = manifest(d, "cm.yaml", &configmap(&[("a", "1"), ("b", "2")]));
    let out = ok(&kc, &["apply", "--server-side", "-f", &m]).await;
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let cm = get(&api, CM).await;
    assert_eq!(cm["data"], json!({"a": "1", "b": "2"}));
    let owner = entry(&cm, "kubectl").expect("kubectl owns the fields");
    assert_eq!(owner["operation"], "Apply");
    assert_eq!(owner["fieldsType"], "FieldsV1");
    assert_eq!(owner["fieldsV1"], json!({"f:data": {"f:a": {}, "f:b": {}}}));
    assert!(owner["time"].is_string());
    let rv = common::rv(&cm);

    // Re-applying the same configuration changes nothing.
    ok(&kc, &["apply", "--server-side", "-f", &m]).await;
    assert_eq!(
        common::rv(&get(&api, CM).await),
        rv,
        "a re-apply is a no-op"
    );

    // Another manager changing kubectl's field conflicts; kubectl says so and fails.
    let theirs = manifest(d, "theirs.yaml", &configmap(&[("a", "9")]));
    let (code, out, err) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &theirs,
        ],
    )
    .await;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"),
        "{err}"
    );
    assert_eq!(get(&api, CM).await["data"]["a"], "1");

    // --force-conflicts takes the field over.
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "--force-conflicts",
            "-f",
            &theirs,
        ],
    )
    .await;
    let cm = get(&api, CM).await;
    assert_eq!(cm["data"], json!({"a": "9", "b": "2"}));
    assert_eq!(
        entry(&cm, "other").unwrap()["fieldsV1"],
        json!({"f:data": {"f:a": {}}})
    );
    assert_eq!(
        entry(&cm, "kubectl").unwrap()["fieldsV1"],
        json!({"f:data": {"f:b": {}}})
    );

    // A manager that stops applying a field removes it, unless another still owns it.
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "-f",
            &manifest(d, "cm.yaml", &configmap(&[("b", "2"), ("c", "3")])),
        ],
    )
    .await;
    let shared = manifest(d, "theirs.yaml", &configmap(&[("c", "3")]));
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &shared,
        ],
    )
    .await;
    assert_eq!(
        get(&api, CM).await["data"],
        json!({"b": "2", "c": "3"}),
        "a went with other's apply"
    );
    let nothing = manifest(d, "theirs.yaml", &configmap(&[]));
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &nothing,
        ],
    )
    .await;
    let cm = get(&api, CM).await;
    assert_eq!(
        cm["data"],
        json!({"b": "2", "c": "3"}),
        "kubectl still owns c"
    );
    assert!(
        entry(&cm, "other").is_none(),
        "other owns nothing now: {cm}"
    );

    // kubectl diff, server-side and client-side: shows the change, stores nothing, exits 1;
    // with no change it exits 0.
    let rv = common::rv(&cm);
    let changed = manifest(d, "cm.yaml", &configmap(&[("b", "5"), ("c", "3")]));
    for extra in [&["--server-side"][..], &[][..]] {
        let mut args = vec!["diff", "-f", &changed];
        args.extend_from_slice(extra);
        let (code, out, err) = kubectl(&kc, &args).await;
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(
            out.contains("-  b: \"2\"") && out.contains("+  b: \"5\""),
            "{out}"
        );
        let cm = get(&api, CM).await;
        assert_eq!(common::rv(&cm), rv, "diff stores nothing");
        assert_eq!(cm["data"]["b"], "2");
    }
    let same = manifest(d, "cm.yaml", &configmap(&[("b", "2"), ("c", "3")]));
    let (code, out, err) = kubectl(&kc, &["diff", "--server-side", "-f", &same]).await;
    assert_eq!(code, 0, "{out}{err}");
    // A diff of an object that does not exist yet shows it whole.
    let other = manifest(
        d,
        "new.yaml",
        &configmap(&[("x", "1")]).replace("name: ssa", "name: fresh"),
    );
    let (code, out, _) = kubectl(&kc, &["diff", "--server-side", "-f", &other]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("+  x: \"1\""), "{out}");
    let (missing, _) = api.get("/api/v1/namespaces/default/configmaps/fresh").await;
    assert_eq!(missing, 404);
}

#[tokio::test]
async fn server_side_apply_takes_over_from_client_side_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let kc = server.kubeconfig();
    let api = server.api();
    let d = dir.path();

    let m = manifest(d, "cm.yaml", &configmap(&[("a", "1"), ("b", "2")]));
    ok(&kc, &["apply", "-f", &m]).await;
    let cm = get(&api, CM).await;
    let csa = entry(&cm, "kubectl-client-side-apply").expect("client-side apply is tracked");
    assert_eq!(csa["operation"], "Update");
    assert_eq!(csa["fieldsV1"]["f:data"], json!({"f:a": {}, "f:b": {}}));

    // Any other manager changing client-side apply's fields conflicts with it...
    let theirs = manifest(d, "theirs.yaml", &configmap(&[("a", "7")]));
    let (code, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            &theirs,
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("conflict with \"kubectl-client-side-apply\" using v1"),
        "{err}"
    );

    // ... but kubectl's own server-side apply takes them over, and kubectl moves
    // client-side apply's ownership to it.
    let m = manifest(d, "cm.yaml", &configmap(&[("a", "1"), ("b", "3")]));
    ok(&kc, &["apply", "--server-side", "-f", &m]).await;
    let cm = get(&api, CM).await;
    assert_eq!(cm["data"], json!({"a": "1", "b": "3"}));
    let ssa = entry(&cm, "kubectl").expect("kubectl applied");
    assert_eq!(ssa["operation"], "Apply");
    assert_eq!(ssa["fieldsV1"]["f:data"]["f:b"], json!({}));
    assert!(
        entry(&cm, "kubectl-client-side-apply").is_none(),
        "client-side apply's fields moved to kubectl: {cm}"
    );
    let last: Value = serde_json::from_str(
        cm["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["data"]["b"], "3", "the client-side annotation follows");

    // Client-side apply keeps working afterwards.
    let m = manifest(d, "cm.yaml", &configmap(&[("a", "1"), ("b", "4")]));
    ok(&kc, &["apply", "-f", &m]).await;
    assert_eq!(get(&api, CM).await["data"]["b"], "4");
}

#[tokio::test]
async fn apply_over_the_api_creates_conflicts_and_applies_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let api = server.api();
    const APPLY: &str = "application/apply-patch+yaml";
    let svc = "/api/v1/namespaces/default/services/web";
    let config = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  ports:\n  - port: 80\n    targetPort: 8080\n";

    let (code, status) = api.patch(svc, APPLY, config).await;
    assert_eq!(code, 422, "a field manager is required: {status}");
    assert_eq!(status["details"]["causes"][0]["field"], "fieldManager");
    let (code, status) = api
        .patch(&format!("{svc}?fieldManager=a"), APPLY, "spec: [1")
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (400, Some("BadRequest")),
        "{status}"
    );
    let (code, _) = api
        .patch(&format!("{svc}/status?fieldManager=a"), APPLY, "status: {}")
        .await;
    assert_eq!(code, 404, "status of a missing object");

    let (code, created) = api
        .patch(&format!("{svc}?fieldManager=a"), APPLY, config)
        .await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(
        entry(&created, "a").unwrap()["fieldsV1"]["f:spec"]["f:ports"],
        json!({"k:{\"port\":80}": {".": {}, "f:port": {}, "f:targetPort": {}}})
    );

    // A conflict is a 409 Status with a FieldManagerConflict cause per field.
    let (code, status) = api
        .patch(
            &format!("{svc}?fieldManager=b"),
            APPLY,
            "apiVersion: v1\nkind: Service\nspec:\n  ports:\n  - port: 80\n    targetPort: 9090\n",
        )
        .await;
    assert_eq!(code, 409, "{status}");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(
        status["message"],
        "Apply failed with 1 conflict: conflict with \"a\": .spec.ports[port=80].targetPort"
    );
    assert_eq!(
        status["details"]["causes"][0],
        json!({"reason": "FieldManagerConflict", "message": "conflict with \"a\"", "field": ".spec.ports[port=80].targetPort"})
    );

    // Apply on the status subresource owns status only, under its own entry.
    let (code, out) = api
        .patch(
            &format!("{svc}/status?fieldManager=lb"),
            APPLY,
            "apiVersion: v1\nkind: Service\nspec:\n  type: NodePort\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 10.0.0.9\n",
        )
        .await;
    assert_eq!(code, 200, "{out}");
    assert_eq!(
        out["status"]["loadBalancer"]["ingress"][0]["ip"],
        "10.0.0.9"
    );
    assert_ne!(
        out["spec"]["type"], "NodePort",
        "spec is not the status' to change"
    );
    let lb = entry(&out, "lb").unwrap();
    assert_eq!(lb["subresource"], "status");
    assert!(lb["fieldsV1"].get("f:spec").is_none(), "{lb}");
    assert!(lb["fieldsV1"]["f:status"].is_object(), "{lb}");

    // Other writes are tracked as updates by their field manager.
    let (code, out) = api
        .patch(
            &format!("{svc}?fieldManager=labeller"),
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"tier":"front"}}}"#,
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let e = entry(&out, "labeller").unwrap();
    assert_eq!(e["operation"], "Update");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:tier": {}}}})
    );
    let (code, status) = api
        .patch(
            &format!("{svc}?force=true"),
            "application/merge-patch+json",
            "{}",
        )
        .await;
    assert_eq!(code, 422, "force is for apply only: {status}");
    assert_eq!(status["details"]["causes"][0]["field"], "force");
}

#[tokio::test]
async fn dry_run_stores_nothing_on_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let kc = server.kubeconfig();
    let api = server.api();
    let d = dir.path();
    let m = manifest(d, "cm.yaml", &configmap(&[("a", "1")]));

    // Create and server-side apply of a missing object, dry: nothing exists after.
    ok(&kc, &["create", "--dry-run=server", "-f", &m]).await;
    ok(
        &kc,
        &["apply", "--server-side", "--dry-run=server", "-f", &m],
    )
    .await;
    let (code, _) = api.get(CM).await;
    assert_eq!(code, 404);

    ok(&kc, &["create", "-f", &m]).await;
    let before = get(&api, CM).await;
    let changed = manifest(d, "changed.yaml", &configmap(&[("a", "2")]));
    let out = ok(
        &kc,
        &["replace", "--dry-run=server", "-f", &changed, "-o", "json"],
    )
    .await;
    let answered: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answered["data"]["a"], "2", "the dry run answers the result");
    ok(
        &kc,
        &[
            "patch",
            "configmap",
            "ssa",
            "--dry-run=server",
            "-p",
            r#"{"data":{"a":"3"}}"#,
        ],
    )
    .await;
    // kubectl-create owns data.a: a dry-run apply conflicts as a real one would, and
    // takes it over with --force-conflicts.
    let (code, _, err) = kubectl(
        &kc,
        &["apply", "--server-side", "--dry-run=server", "-f", &changed],
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("conflict with \"kubectl-create\" using v1"),
        "{err}"
    );
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            &changed,
        ],
    )
    .await;
    ok(&kc, &["apply", "--dry-run=server", "-f", &changed]).await;
    ok(&kc, &["delete", "configmap", "ssa", "--dry-run=server"]).await;
    let after = get(&api, CM).await;
    assert_eq!(after, before, "nothing was stored");
}

#[tokio::test]
async fn the_python_client_applies_server_side() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let kubeconfig = server.kubeconfig();
    let script = r#"
import sys
from kubernetes import config, dynamic
from kubernetes.client import api_client
from kubernetes.dynamic.exceptions import ConflictError
config.load_kube_config(sys.argv[1])
client = dynamic.DynamicClient(api_client.ApiClient())
cms = client.resources.get(api_version="v1", kind="ConfigMap")
body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py"}, "data": {"k": "v"}}
out = cms.server_side_apply(body=body, namespace="default", field_manager="python")
print("applied:", out.data.k, [e.manager for e in out.metadata.managedFields])
body["data"]["k"] = "w"
try:
    cms.server_side_apply(body=body, namespace="default", field_manager="rival")
except ConflictError as e:
    print("conflict:", e.status)
out = cms.server_side_apply(body=body, namespace="default", field_manager="rival", force_conflicts=True)
print("forced:", out.data.k)
"#;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
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
    for line in ["applied: v ['python']", "conflict: 409", "forced: w"] {
        assert!(
            stdout.contains(line),
            "missing {line:?} in:\n{stdout}\n{stderr}"
        );
    }
}

/// A custom resource merges by its CRD's schema: two managers apply items of a
/// `x-kubernetes-list-type: map` list and both stay, each owning its own; an atomic
/// (unannotated) list is replaced whole, and taking it is a conflict.
#[tokio::test]
async fn custom_resources_merge_by_their_schemas_list_types() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let kc = server.kubeconfig();
    let crd = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: routes.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: routes, singular: route, kind: Route}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              backends:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    weight: {type: integer}
              hosts:
                type: array
                items: {type: string}
"#;
    ok(
        &kc,
        &["apply", "-f", &manifest(dir.path(), "crd.yaml", crd)],
    )
    .await;
    ok(
        &kc,
        &[
            "wait",
            "--for=condition=Established",
            "crd/routes.example.com",
            "--timeout=30s",
        ],
    )
    .await;
    let route = |backend: &str, weight: u32, host: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Route\nmetadata:\n  name: r\n  namespace: default\nspec:\n  backends:\n  - name: {backend}\n    weight: {weight}\n  hosts: [{host}]\n"
        )
    };
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=team-a",
            "-f",
            &manifest(dir.path(), "a.yaml", &route("a", 1, "a.example")),
        ],
    )
    .await;
    // Another manager's item of the map list merges beside the first...
    let b = manifest(dir.path(), "b.yaml", &route("b", 2, "b.example"));
    let (code, _, err) = kubectl(
        &kc,
        &["apply", "--server-side", "--field-manager=team-b", "-f", &b],
    )
    .await;
    // ...but the atomic list of hosts is team-a's whole: a conflict.
    assert_ne!(code, 0);
    assert!(
        err.contains("conflict") && err.contains(".spec.hosts"),
        "{err}"
    );
    ok(
        &kc,
        &[
            "apply",
            "--server-side",
            "--field-manager=team-b",
            "--force-conflicts",
            "-f",
            &b,
        ],
    )
    .await;
    let api = server.api();
    let obj = get(&api, "/apis/example.com/v1/namespaces/default/routes/r").await;
    assert_eq!(
        obj["spec"]["backends"],
        json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]),
        "{obj}"
    );
    assert_eq!(obj["spec"]["hosts"], json!(["b.example"]), "{obj}");
    let a = entry(&obj, "team-a").expect("team-a still owns its backend");
    assert!(
        a["fieldsV1"].to_string().contains(r#"k:{\"name\":\"a\"}"#),
        "{a}"
    );
    // team-a stops applying its backend: it goes, team-b's stays.
    ok(&kc, &["apply", "--server-side", "--field-manager=team-a", "-f", &manifest(dir.path(), "a2.yaml", "apiVersion: example.com/v1\nkind: Route\nmetadata:\n  name: r\n  namespace: default\nspec: {}\n")]).await;
    let obj = get(&api, "/apis/example.com/v1/namespaces/default/routes/r").await;
    assert_eq!(
        obj["spec"]["backends"],
        json!([{"name": "b", "weight": 2}]),
        "{obj}"
    );
}
