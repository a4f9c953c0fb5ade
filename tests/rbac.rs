//! RBAC with the real kubectl (and the Python client): a user token bound to `edit` in
//! one namespace, what `kubectl auth can-i` answers for it, the 403s elsewhere, the
//! escalation checks, aggregated roles, impersonation, and the viewer role expressed
//! as a ClusterRole.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Api, ServerProcess, eventually};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// kubectl's exit status, stdout and stderr, off the async runtime.
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

/// `kubectl auth can-i ARGS` as `kubeconfig`'s user: yes or no.
async fn can_i(kubeconfig: &Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (_, out, err) = kubectl(kubeconfig, &all).await;
    match out.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?} answered {other:?}: {err}"),
    }
}

/// Waits until can-i answers `want` (bindings reach every server's caches through a
/// watch, within milliseconds).
async fn until_can_i(kubeconfig: &Path, args: &[&str], want: bool) {
    eventually(&format!("can-i {args:?} = {want}"), WAIT, || async {
        (can_i(kubeconfig, args).await == want).then_some(())
    })
    .await
}

/// `skiff token create ARGS`: the token printed.
fn token(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["token", "create"])
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The admin's kubeconfig with `token` in place of the admin's, as `name`.
fn kubeconfig_with(kubeconfig: &Path, token: &str, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).unwrap();
    let swapped: String = text
        .lines()
        .map(|l| match l.split_once("token:") {
            Some((indent, _)) => format!("{indent}token: {token}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let path = kubeconfig.with_file_name(format!("{name}-kubeconfig"));
    std::fs::write(&path, swapped).unwrap();
    path
}

#[tokio::test]
async fn a_user_bound_to_edit_in_one_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let admin = server.kubeconfig();
    for ns in ["team", "other", "lead"] {
        ok(&admin, &["create", "namespace", ns]).await;
    }
    // The default roles are there, and kubectl shows them and their bindings.
    let roles = ok(&admin, &["get", "clusterroles"]).await;
    for role in ["cluster-admin", "admin", "edit", "view", "skiff:viewer"] {
        assert!(
            roles.lines().any(|l| l.starts_with(&format!("{role} "))),
            "{role}: {roles}"
        );
    }
    let bindings = ok(&admin, &["get", "clusterrolebindings", "-o", "wide"]).await;
    assert!(
        bindings.lines().any(|l| l.starts_with("cluster-admin ")
            && l.contains("ClusterRole/cluster-admin")
            && l.contains("system:masters")),
        "{bindings}"
    );

    let alice = kubeconfig_with(
        &admin,
        &token(&admin, &["--user", "alice", "--group", "devs"]),
        "alice",
    );
    // Before any binding: only discovery and asking.
    assert!(!can_i(&alice, &["list", "pods", "-n", "team"]).await);
    let denied = fails(&alice, &["get", "pods", "-n", "team"]).await;
    assert!(
        denied.contains("User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"team\""),
        "{denied}"
    );
    let whoami = fails(&alice, &["get", "nodes"]).await;
    assert!(whoami.contains("at the cluster scope"), "{whoami}");

    ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-edit",
            "--clusterrole=edit",
            "--user=alice",
            "-n",
            "team",
        ],
    )
    .await;
    until_can_i(&alice, &["create", "deployments.apps", "-n", "team"], true).await;
    assert!(
        can_i(&alice, &["get", "secrets", "-n", "team"]).await,
        "edit reads secrets"
    );
    assert!(can_i(&alice, &["create", "pods/portforward", "-n", "team"]).await);
    assert!(!can_i(&alice, &["create", "deployments.apps", "-n", "other"]).await);
    assert!(
        !can_i(&alice, &["create", "rolebindings", "-n", "team"]).await,
        "edit does not bind"
    );
    assert!(!can_i(&alice, &["list", "nodes"]).await);
    // It does what it may, and gets 403 elsewhere.
    ok(
        &alice,
        &[
            "create",
            "configmap",
            "c1",
            "-n",
            "team",
            "--from-literal=a=b",
        ],
    )
    .await;
    ok(&alice, &["get", "configmap", "c1", "-n", "team"]).await;
    let err = fails(
        &alice,
        &[
            "create",
            "configmap",
            "c1",
            "-n",
            "other",
            "--from-literal=a=b",
        ],
    )
    .await;
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    // `can-i --list` lists the rules it holds there.
    let list = ok(&alice, &["auth", "can-i", "--list", "-n", "team"]).await;
    assert!(
        list.lines()
            .any(|l| l.starts_with("configmaps ") && l.contains("create")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("selfsubjectaccessreviews.authorization.k8s.io")),
        "{list}"
    );

    // It cannot grant itself more: it may not write bindings in team at all...
    let err = fails(
        &alice,
        &[
            "create",
            "rolebinding",
            "more",
            "--clusterrole=admin",
            "--user=alice",
            "-n",
            "team",
        ],
    )
    .await;
    assert!(
        err.contains("cannot create resource \"rolebindings\""),
        "{err}"
    );
    // ...and where it is admin (admin aggregates edit and view), it may bind what it
    // holds but not what it does not, nor write a role beyond its own rules.
    ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "--clusterrole=admin",
            "--user=alice",
            "-n",
            "lead",
        ],
    )
    .await;
    until_can_i(&alice, &["create", "rolebindings", "-n", "lead"], true).await;
    ok(
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "lead",
        ],
    )
    .await;
    let err = fails(
        &alice,
        &[
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "lead",
        ],
    )
    .await;
    assert!(
        err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    let err = fails(
        &alice,
        &[
            "create",
            "role",
            "everything",
            "--verb=*",
            "--resource=*",
            "-n",
            "lead",
        ],
    )
    .await;
    assert!(
        err.contains("attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    ok(
        &alice,
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "lead",
        ],
    )
    .await;
    let roles = ok(&admin, &["get", "roles", "-n", "lead"]).await;
    assert!(roles.contains("reader"), "{roles}");

    // A role labelled to join view is aggregated into view, edit and admin.
    ok(
        &admin,
        &[
            "create",
            "clusterrole",
            "widgets-view",
            "--verb=get,list",
            "--resource=leases.coordination.k8s.io",
        ],
    )
    .await;
    ok(
        &admin,
        &[
            "label",
            "clusterrole",
            "widgets-view",
            "rbac.authorization.k8s.io/aggregate-to-view=true",
        ],
    )
    .await;
    until_can_i(
        &alice,
        &["list", "leases.coordination.k8s.io", "-n", "team"],
        true,
    )
    .await;
    let view = ok(&admin, &["get", "clusterrole", "view", "-o", "json"]).await;
    let view: Value = serde_json::from_str(&view).unwrap();
    assert!(
        view["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"] == json!(["leases"])),
        "{view}"
    );

    // Impersonation: the admin may act as alice; alice may not act as anyone.
    assert!(can_i(&admin, &["list", "pods", "-n", "team", "--as", "alice"]).await);
    assert!(!can_i(&admin, &["list", "pods", "-n", "other", "--as", "alice"]).await);
    let err = fails(&admin, &["get", "pods", "-n", "other", "--as", "alice"]).await;
    assert!(err.contains("User \"alice\" cannot list"), "{err}");
    assert!(
        !can_i(
            &admin,
            &[
                "list",
                "pods",
                "-n",
                "other",
                "--as",
                "carol",
                "--as-group",
                "devs"
            ]
        )
        .await
    );
    ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "devs-view",
            "--clusterrole=view",
            "--group=devs",
            "-n",
            "other",
        ],
    )
    .await;
    until_can_i(
        &admin,
        &[
            "list",
            "pods",
            "-n",
            "other",
            "--as",
            "carol",
            "--as-group",
            "devs",
        ],
        true,
    )
    .await;
    let err = fails(&alice, &["get", "pods", "-n", "team", "--as", "bob"]).await;
    assert!(
        err.contains("cannot impersonate resource \"users\""),
        "{err}"
    );

    // A SubjectAccessReview asks about someone else (admins may ask).
    let api = server.api();
    let (code, review) = api
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": "alice", "groups": ["devs"],
                    "resourceAttributes": {"namespace": "team", "verb": "delete", "resource": "pods"}}}),
        )
        .await;
    assert_eq!(code, 201, "{review}");
    assert_eq!(review["status"]["allowed"], true, "{review}");
    assert!(
        review["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("RoleBinding \"team/alice-edit\""),
        "{review}"
    );
    let (code, review) = api
        .post(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            &json!({"spec": {"user": "alice"}}),
        )
        .await;
    assert_eq!(code, 422, "{review}");

    // Revoking the binding takes the permission away.
    ok(
        &admin,
        &["delete", "rolebinding", "alice-edit", "-n", "team"],
    )
    .await;
    until_can_i(&alice, &["create", "deployments.apps", "-n", "team"], false).await;

    // The Python client asks the same questions.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/rbac.py");
    let alice_kc = alice.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&alice_kc)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "may list pods in lead: True",
        "may list pods in default: False",
        "rules in lead: True",
        "pods in lead: 0",
        "list in default: 403",
        "ok",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in {stdout}");
    }
}

#[tokio::test]
async fn viewer_tokens_read_everything_but_secrets_through_a_cluster_role() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let admin = server.kubeconfig();
    let viewer = kubeconfig_with(&admin, &token(&admin, &["--role", "viewer"]), "viewer");
    assert!(can_i(&viewer, &["list", "nodes"]).await);
    assert!(can_i(&viewer, &["get", "clusterroles"]).await);
    assert!(!can_i(&viewer, &["get", "secrets", "-n", "default"]).await);
    assert!(!can_i(&viewer, &["create", "configmaps", "-n", "default"]).await);
    assert!(!can_i(&viewer, &["create", "pods/portforward", "-n", "default"]).await);
    // Taking the viewers' binding away takes their reads away: the role is RBAC's.
    ok(&admin, &["delete", "clusterrolebinding", "skiff:viewers"]).await;
    until_can_i(&viewer, &["list", "nodes"], false).await;
    // A user token names no system group: that would pass for a node or an admin.
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "token",
            "create",
            "--user",
            "eve",
            "--group",
            "system:masters",
            "--kubeconfig",
        ])
        .arg(&admin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("system:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unauthenticated requests are still 401, whatever RBAC says.
    let anonymous = Api::anonymous(&server.url);
    assert_eq!(anonymous.get("/api/v1/namespaces").await.0, 401);
}
