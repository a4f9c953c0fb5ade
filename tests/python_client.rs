//! The official Kubernetes Python client (PyPI `kubernetes`, installed by scripts/test)
//! lists, creates, patches and watches against a cluster on each store (see
//! `common::cluster`): tests/python/client.py.

mod common;

use common::workload;

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    the_python_client_lists_creates_patches_and_watches,
);

async fn the_python_client_lists_creates_patches_and_watches() {
    let (dir, _process, api) = common::cluster(2);
    let image = api.upload(workload("ticker.wasm")).await;
    let kubeconfig = dir.path().join("kubeconfig");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(&kubeconfig)
            .arg(&image)
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for step in [
        "list namespaces:",
        "nodes ready: 2",
        "created: from-python",
        "patched: {'greeting': 'hello'}",
        "conflict: 409",
        "listed by label: 1",
        "watched running pods: 2",
        "statefulset ready with claim: Bound local-path",
        "budget: 1 1 0",
        "cronjob: @hourly Allow",
        "ingress classes: skiff",
        "ok",
    ] {
        assert!(
            stdout.contains(step),
            "missing {step:?} in:\n{stdout}\n{stderr}"
        );
    }
}
