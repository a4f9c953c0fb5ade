//! Durability and shutdown with the real binary, on each store: every create
//! acknowledged before a SIGKILL is there after a restart (on redb, in the server's
//! file; on etcd, in the cluster, which the restarted server reads under the same
//! prefix); many concurrent writers all succeed, each with its own revision; SIGTERM
//! stops the server cleanly even with a watch open.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ServerProcess, configmap};
use serde_json::json;

const CMS: &str = "/api/v1/namespaces/default/configmaps";

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    acknowledged_writes_survive_sigkill,
    many_concurrent_writers_all_succeed,
    sigterm_shuts_down_cleanly_with_a_watch_open,
);

async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let api = server.api();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    // 64 concurrent writers, each creating objects until the server dies under them.
    let writers: Vec<_> = (0..64)
        .map(|w| {
            let (api, acked) = (api.clone(), acked.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    let name = format!("w{w}-{i}");
                    let sent = api
                        .http
                        .post(format!("{}{CMS}", api.base))
                        .json(&configmap(&name, json!({})))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().as_u16() == 201 => {
                            acked.lock().unwrap().insert(name);
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    common::eventually(
        "a few hundred acknowledged writes",
        Duration::from_secs(60),
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= 500).then_some(()) }
        },
    )
    .await;
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = ServerProcess::start(dir.path(), &[]);
    let api = server.api();
    let (code, list) = api.get(CMS).await;
    assert_eq!(code, 200);
    let stored: BTreeSet<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost after kill -9, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Revisions keep growing after the restart.
    let (_, created) = api.post(CMS, &configmap("after-restart", json!({}))).await;
    let max_before = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(common::rv(&created) > max_before);
}

async fn many_concurrent_writers_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let api = server.api();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                api.post(CMS, &configmap(&format!("c{i}"), json!({})))
                    .await
                    .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let (_, list) = api.get(CMS).await;
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 200);
    let revisions: BTreeSet<u64> = items.iter().map(common::rv).collect();
    assert_eq!(revisions.len(), 200, "every write got its own revision");
}

async fn sigterm_shuts_down_cleanly_with_a_watch_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &[]);
    let api = server.api();
    let mut watch = api.watch(&format!("{CMS}?watch=1")).await;
    api.post(CMS, &configmap("before", json!({}))).await;
    assert!(watch.next(Duration::from_secs(5)).await.is_some());
    let status = server.terminate(Duration::from_secs(15));
    assert!(status.success(), "server exited with {status}");
    // The watch ended rather than hanging.
    assert!(watch.next(Duration::from_secs(5)).await.is_none());
    // The store reopens with everything in it.
    let server = ServerProcess::start(dir.path(), &[]);
    let (code, _) = server.api().get(&format!("{CMS}/before")).await;
    assert_eq!(code, 200);
    assert!(dir.path().join("kubeconfig").exists());
}
