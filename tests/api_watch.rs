//! End to end: watches resume from a revision, list-then-watch never misses or repeats
//! an event under concurrent writers, expired revisions answer 410, selectors turn
//! label changes into ADDED/DELETED, and bookmarks and timeouts behave.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Api, ServerProcess, configmap, eventually, rv};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const WAIT: Duration = Duration::from_secs(10);

fn start(extra: &[&str]) -> (tempfile::TempDir, ServerProcess, Api) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), extra);
    let api = server.api();
    (dir, server, api)
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    watch_resumes_from_any_retained_revision,
    list_then_watch_misses_nothing_under_concurrent_writers,
    expired_revisions_answer_410_after_compaction,
    selector_watches_see_objects_enter_and_leave,
    bookmarks_and_timeouts,
);

async fn watch_resumes_from_any_retained_revision() {
    let (_d, _s, api) = start(&[]);
    let (_, a) = api.post(CMS, &configmap("a", json!({}))).await;
    let (_, b) = api.post(CMS, &configmap("b", json!({}))).await;
    api.delete(&format!("{CMS}/a"), None).await;

    // From a's revision: b's create, then a's delete, in order.
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={}", rv(&a)))
        .await;
    let e1 = w.next(WAIT).await.unwrap();
    assert_eq!(
        (
            e1["type"].as_str(),
            e1["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );
    assert_eq!(rv(&e1["object"]), rv(&b));
    let e2 = w.next(WAIT).await.unwrap();
    assert_eq!(
        (
            e2["type"].as_str(),
            e2["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("a"))
    );
    assert!(
        rv(&e2["object"]) > rv(&b),
        "a DELETED event carries the delete's revision"
    );

    // Live events follow.
    api.post(CMS, &configmap("c", json!({}))).await;
    let e3 = w.next(WAIT).await.unwrap();
    assert_eq!(e3["object"]["metadata"]["name"], "c");

    // resourceVersion=0 starts with a synthetic ADDED for each existing object.
    let mut w0 = api.watch(&format!("{CMS}?watch=1&resourceVersion=0")).await;
    let mut names = vec![];
    for _ in 0..2 {
        let e = w0.next(WAIT).await.unwrap();
        assert_eq!(e["type"], "ADDED");
        names.push(
            e["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, ["b", "c"]);
}

async fn list_then_watch_misses_nothing_under_concurrent_writers() {
    let (_d, _s, api) = start(&[]);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let api = api.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    let name = format!("w{w}-{i}");
                    let (code, _) = api.post(CMS, &configmap(&name, json!({}))).await;
                    assert_eq!(code, 201);
                    if i % 3 == 0 {
                        api.patch(
                            &format!("{CMS}/{name}"),
                            "application/merge-patch+json",
                            r#"{"data":{"k":"changed"}}"#,
                        )
                        .await;
                    }
                    if i % 5 == 0 {
                        api.delete(&format!("{CMS}/{name}"), None).await;
                    }
                }
            })
        })
        .collect();
    // List in the middle of the writes, then watch from the list's revision.
    let list = eventually("the writers to be under way", WAIT, || {
        let api = api.clone();
        async move {
            let (_, list) = api.get(CMS).await;
            (list["items"].as_array().unwrap().len() >= 20).then_some(list)
        }
    })
    .await;
    let mut state: BTreeMap<String, Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i.clone(),
            )
        })
        .collect();
    let mut last = rv(&list);
    let mut w = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={last}"))
        .await;
    for h in writers {
        h.await.unwrap();
    }
    // One more write after all the others: the watch must deliver every event up to
    // it. (Not up to the final list's resourceVersion: that is the cluster's revision,
    // which other kinds' writes, such as the server's Lease renewals, can carry past
    // the last ConfigMap event.)
    let (code, last_write) = api.post(CMS, &configmap("last", json!({}))).await;
    assert_eq!(code, 201, "{last_write}");
    let (_, fin) = api.get(CMS).await;
    while last < rv(&last_write) {
        let e = w
            .next(WAIT)
            .await
            .expect("an event for every write up to the last one");
        let obj = &e["object"];
        let r = rv(obj);
        assert!(
            r > last,
            "events arrive in revision order with no repeats ({r} after {last})"
        );
        last = r;
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        match e["type"].as_str().unwrap() {
            "ADDED" => assert!(
                state.insert(name, obj.clone()).is_none(),
                "ADDED for an object already listed"
            ),
            "MODIFIED" => assert!(
                state.insert(name, obj.clone()).is_some(),
                "MODIFIED for an unknown object"
            ),
            "DELETED" => assert!(
                state.remove(&name).is_some(),
                "DELETED for an unknown object"
            ),
            other => panic!("unexpected event {other}"),
        }
    }
    let expected: BTreeMap<String, Value> = fin["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i.clone(),
            )
        })
        .collect();
    assert_eq!(
        state, expected,
        "list + watch replays to exactly the final state"
    );
}

async fn expired_revisions_answer_410_after_compaction() {
    // Compaction on etcd is the whole cluster's: on the shared one it would expire the
    // revisions other tests resume from.
    let _etcd = common::store::own_etcd();
    let (_d, _s, api) = start(&[
        "--retain-revisions",
        "5",
        "--retain-duration",
        "0s",
        "--compact-interval",
        "100ms",
    ]);
    let (_, first) = api.post(CMS, &configmap("first", json!({}))).await;
    for i in 0..20 {
        api.post(CMS, &configmap(&format!("n{i}"), json!({}))).await;
    }
    let old = rv(&first);
    let w = eventually("compaction to pass the first revision", WAIT, || {
        let api = api.clone();
        async move {
            let mut w = api
                .watch(&format!("{CMS}?watch=1&resourceVersion={old}"))
                .await;
            match w.next(WAIT).await {
                Some(e) if e["type"] == "ERROR" => Some(e),
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(w["object"]["kind"], "Status");
    assert_eq!(w["object"]["code"], 410);
    assert_eq!(w["object"]["reason"], "Expired");
    // The paging equivalent: a continue token from before compaction is 410 too.
    let (_, page) = api.get(&format!("{CMS}?limit=2")).await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    for i in 0..10 {
        api.post(CMS, &configmap(&format!("m{i}"), json!({}))).await;
    }
    let (code, status) = eventually("the continue token to expire", WAIT, || {
        let api = api.clone();
        let token = token.clone();
        async move {
            let r = api.get(&format!("{CMS}?limit=2&continue={token}")).await;
            (r.0 == 410).then_some(r)
        }
    })
    .await;
    assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));
    // A recent revision still resumes.
    let (_, now) = api.get(CMS).await;
    let mut fresh = api
        .watch(&format!("{CMS}?watch=1&resourceVersion={}", rv(&now)))
        .await;
    api.post(CMS, &configmap("after", json!({}))).await;
    assert_eq!(fresh.next(WAIT).await.unwrap()["type"], "ADDED");
}

async fn selector_watches_see_objects_enter_and_leave() {
    let (_d, _s, api) = start(&[]);
    let (_, list) = api.get(CMS).await;
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&labelSelector=app%3Dweb&resourceVersion={}",
            rv(&list)
        ))
        .await;
    api.post(CMS, &configmap("x", json!({"app": "db"}))).await;
    api.patch(
        &format!("{CMS}/x"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"app":"web"}}}"#,
    )
    .await;
    api.patch(
        &format!("{CMS}/x"),
        "application/merge-patch+json",
        r#"{"data":{"k":"2"}}"#,
    )
    .await;
    api.patch(
        &format!("{CMS}/x"),
        "application/merge-patch+json",
        r#"{"metadata":{"labels":{"app":"db"}}}"#,
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            w.next(WAIT).await.unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(got, ["ADDED", "MODIFIED", "DELETED"]);

    // A single object watched by name, as kubectl get -w NAME does.
    let mut one = api
        .watch(&format!(
            "{CMS}?watch=1&fieldSelector=metadata.name%3Dx&resourceVersion=0"
        ))
        .await;
    let e = one.next(WAIT).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("x"))
    );
    api.post(CMS, &configmap("y", json!({}))).await;
    api.delete(&format!("{CMS}/x"), None).await;
    assert_eq!(one.next(WAIT).await.unwrap()["type"], "DELETED");
}

async fn bookmarks_and_timeouts() {
    let (_d, _s, api) = start(&["--bookmark-interval", "200ms"]);
    let (_, list) = api.get(CMS).await;
    let start_rv = rv(&list);
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&allowWatchBookmarks=true&resourceVersion={start_rv}&timeoutSeconds=3"
        ))
        .await;
    // Writes elsewhere advance the revision; the bookmark tells this watcher so.
    let (_, other) = api
        .post(
            "/api/v1/namespaces/kube-system/configmaps",
            &configmap("elsewhere", json!({})),
        )
        .await;
    let target = rv(&other);
    let bookmark = loop {
        let e = w
            .next(WAIT)
            .await
            .expect("a bookmark past the unrelated write");
        if e["type"] == "BOOKMARK" && rv(&e["object"]) >= target {
            break e;
        }
    };
    assert_eq!(bookmark["object"]["kind"], "ConfigMap");
    // The stream ends by itself at timeoutSeconds.
    let started = std::time::Instant::now();
    while w.next(Duration::from_secs(10)).await.is_some() {}
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "watch honoured timeoutSeconds"
    );

    // WatchList: current objects, a bookmark that ends them, then changes.
    api.post(CMS, &configmap("before-watchlist", json!({})))
        .await;
    let mut w = api
        .watch(&format!(
            "{CMS}?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        ))
        .await;
    let mut initial = 0;
    let end = loop {
        let e = w
            .next(WAIT)
            .await
            .expect("initial events, then the bookmark");
        match e["type"].as_str() {
            Some("ADDED") => initial += 1,
            Some("BOOKMARK") => break e,
            other => panic!("unexpected {other:?}: {e}"),
        }
    };
    assert!(initial > 0, "the current objects came first");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    api.post(CMS, &configmap("after-watchlist", json!({})))
        .await;
    let next = w
        .next_change(WAIT)
        .await
        .expect("a change after the bookmark");
    assert_eq!(next["type"], "ADDED");
    assert_eq!(next["object"]["metadata"]["name"], "after-watchlist");
    // Without its companions the request is refused, never silently ignored.
    let (code, status) = api
        .get(&format!("{CMS}?watch=1&sendInitialEvents=true"))
        .await;
    assert_eq!((code, status["reason"].as_str()), (422, Some("Invalid")));
}
