//! The `kube` crate, the most used Rust Kubernetes client, works unchanged against
//! `skiff server`: typed create, list, patch and delete, and kube-runtime's watcher
//! (list, then watch with bookmarks, resuming) seeing every change.

mod common;

use std::time::Duration;

use common::ServerProcess;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

async fn client(server: &ServerProcess) -> kube::Client {
    skiff_api::client::connect(Some(&server.data_dir.join("kubeconfig")))
        .await
        .expect("client from the server's kubeconfig")
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    kube_api_create_list_patch_delete,
    kube_runtime_watcher_sees_every_change,
);

async fn kube_api_create_list_patch_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "via-kube", "labels": {"app": "x"}}, "data": {"a": "1"}}),
    )
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let err = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let list = cms
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.resource_version.is_some());

    let patched = cms
        .patch(
            "via-kube",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.data.unwrap().get("b").map(String::as_str),
        Some("2")
    );
    let jp: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/a", "value": "9"}]))
            .unwrap();
    let patched = cms
        .patch("via-kube", &PatchParams::default(), &Patch::<()>::Json(jp))
        .await
        .unwrap();
    assert_eq!(
        patched.data.unwrap().get("a").map(String::as_str),
        Some("9")
    );

    let pods: Api<Pod> = Api::namespaced(client, "default");
    let missing = pods.get("nope").await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );
    cms.delete("via-kube", &DeleteParams::default())
        .await
        .unwrap();
    assert!(cms.get_opt("via-kube").await.unwrap().is_none());
}

async fn kube_runtime_watcher_sees_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--bookmark-interval", "200ms"]);
    let client = client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let existing: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "existing"}})).unwrap();
    cms.create(&PostParams::default(), &existing).await.unwrap();

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    // The initial list arrives as Init, InitApply for each object, InitDone.
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Init => {}
            watcher::Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap()),
            watcher::Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, ["existing"]);

    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("live-{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    cms.delete("existing", &DeleteParams::default())
        .await
        .unwrap();
    let mut applied = Vec::new();
    let mut deleted = Vec::new();
    while applied.len() < 5 || deleted.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::Apply(cm) => applied.push(cm.metadata.name.unwrap()),
            watcher::Event::Delete(cm) => deleted.push(cm.metadata.name.unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        applied,
        (0..5).map(|i| format!("live-{i}")).collect::<Vec<_>>()
    );
    assert_eq!(deleted, ["existing"]);
}
