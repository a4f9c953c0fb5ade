//! Scenario tests of the redb store on real files: CRUD and preconditions, revisions,
//! paging and historical lists, compaction, group commit, failed commits and shutdown.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ::redb::backends::InMemoryBackend;
use ::redb::{Builder, StorageBackend};
use futures::FutureExt;
use serde_json::{Value, json};

use super::*;
use crate::store::EventType;

fn open(dir: &tempfile::TempDir) -> Arc<RedbStore> {
    RedbStore::open(&dir.path().join("store.redb")).unwrap()
}

fn pod(name: &str) -> Value {
    json!({"kind": "Pod", "metadata": {"name": name}})
}

fn create(key: &str) -> WriteOp {
    WriteOp::Create {
        key: key.into(),
        object: pod(key),
        guard: None,
    }
}

fn update(key: &str, object: Value, expected_rev: Option<Revision>) -> WriteOp {
    WriteOp::Update {
        key: key.into(),
        object,
        expected_rev,
    }
}

fn delete(key: &str) -> WriteOp {
    WriteOp::Delete {
        key: key.into(),
        expected_rev: None,
    }
}

fn everything(prefix: &str) -> ListRequest<'_> {
    ListRequest {
        prefix,
        start_after: None,
        at_rev: None,
        limit: 0,
        filter: &|_| true,
    }
}

fn keys(page: &ListPage) -> Vec<&str> {
    page.items.iter().map(|s| s.key.as_str()).collect()
}

fn resource_version(object: &Value) -> &str {
    object["metadata"]["resourceVersion"].as_str().unwrap()
}

#[tokio::test]
async fn create_get_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.current_revision(), 0);
    let created = store.write(create("/pods/a")).await.unwrap();
    assert_eq!((created.rev, resource_version(&created.object)), (1, "1"));
    let got = store.get_now("/pods/a").unwrap().unwrap();
    assert_eq!((got.rev, resource_version(&got.object)), (1, "1"));

    let mut changed = pod("/pods/a");
    changed["spec"] = json!({"x": 1});
    let updated = store
        .write(update("/pods/a", changed, Some(1)))
        .await
        .unwrap();
    assert_eq!(updated.rev, 2);
    assert_eq!(
        store.get_now("/pods/a").unwrap().unwrap().object["spec"]["x"],
        json!(1)
    );

    let deleted = store.write(delete("/pods/a")).await.unwrap();
    assert_eq!(deleted.rev, 3);
    // The deleted object is the last state, stamped with the delete's revision.
    assert_eq!(resource_version(&deleted.object), "3");
    assert_eq!(deleted.object["spec"]["x"], json!(1));
    assert!(store.get_now("/pods/a").unwrap().is_none());
    assert_eq!(store.current_revision(), 3);
}

#[tokio::test]
async fn preconditions_fail_without_consuming_a_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.write(create("/ns/default")).await.unwrap();
    store.write(create("/pods/a")).await.unwrap();

    let conflict = store.write(update("/pods/a", pod("a"), Some(1))).await;
    assert!(
        matches!(
            conflict,
            Err(StoreError::Conflict {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{conflict:?}"
    );
    let exists = store.write(create("/pods/a")).await;
    assert!(
        matches!(exists, Err(StoreError::AlreadyExists { .. })),
        "{exists:?}"
    );
    let guarded = WriteOp::Create {
        key: "/pods/b".into(),
        object: pod("b"),
        guard: Some("/ns/missing".into()),
    };
    assert!(
        matches!(store.write(guarded).await, Err(StoreError::GuardMissing { guard }) if guard == "/ns/missing")
    );
    assert!(matches!(
        store.write(update("/pods/zz", pod("zz"), None)).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.write(delete("/pods/zz")).await,
        Err(StoreError::NotFound { .. })
    ));
    let stale_delete = WriteOp::Delete {
        key: "/pods/a".into(),
        expected_rev: Some(1),
    };
    assert!(matches!(
        store.write(stale_delete).await,
        Err(StoreError::Conflict { .. })
    ));
    assert_eq!(store.current_revision(), 2);

    let guarded = WriteOp::Create {
        key: "/pods/b".into(),
        object: pod("b"),
        guard: Some("/ns/default".into()),
    };
    assert_eq!(store.write(guarded).await.unwrap().rev, 3);
}

#[tokio::test]
async fn writes_queued_together_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Both are queued before either is awaited, so they usually share a batch.
    let first = store.write(create("/a"));
    let second = store.write(update("/a", pod("a2"), Some(1)));
    let third = store.write(create("/a"));
    assert_eq!(first.await.unwrap().rev, 1);
    assert_eq!(second.await.unwrap().rev, 2);
    assert!(matches!(third.await, Err(StoreError::AlreadyExists { .. })));
}

#[tokio::test]
async fn revisions_continue_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..5 {
        store.write(create(&format!("/k/{i}"))).await.unwrap();
    }
    store.shutdown();
    assert!(matches!(
        store.write(create("/late")).await,
        Err(StoreError::Closed)
    ));
    drop(store);

    let store = open(&dir);
    assert_eq!(store.current_revision(), 5);
    assert_eq!(store.write(create("/k/5")).await.unwrap().rev, 6);
    assert_eq!(store.list_now(everything("/k/")).unwrap().items.len(), 6);
}

#[tokio::test]
async fn delete_event_carries_the_delete_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.write(create("/a")).await.unwrap();
    store.write(delete("/a")).await.unwrap();
    let mut stream = store.log_watch("/a", 1).unwrap();
    let event = stream.next().await.unwrap().unwrap();
    assert_eq!((event.rev, event.kind), (2, EventType::Deleted));
    assert_eq!(resource_version(&event.object), "2");
    assert_eq!(resource_version(event.prev.as_ref().unwrap()), "1");
}

#[tokio::test]
async fn list_pages_with_start_after_limit_and_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for key in ["/a/1", "/a/2", "/a/3", "/a/4", "/a/5", "/b/1", "/a0"] {
        store.write(create(key)).await.unwrap();
    }
    let first = store
        .list_now(ListRequest {
            limit: 2,
            ..everything("/a/")
        })
        .unwrap();
    assert_eq!(
        (keys(&first), first.more, first.rev),
        (vec!["/a/1", "/a/2"], true, 7)
    );
    let second = store
        .list_now(ListRequest {
            start_after: Some("/a/2"),
            limit: 2,
            ..everything("/a/")
        })
        .unwrap();
    assert_eq!((keys(&second), second.more), (vec!["/a/3", "/a/4"], true));
    let last = store
        .list_now(ListRequest {
            start_after: Some("/a/4"),
            limit: 2,
            ..everything("/a/")
        })
        .unwrap();
    assert_eq!((keys(&last), last.more), (vec!["/a/5"], false));
    let exact = store
        .list_now(ListRequest {
            limit: 5,
            ..everything("/a/")
        })
        .unwrap();
    assert!(!exact.more, "no sixth key under /a/");

    let odd = |v: &Value| {
        v["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.ends_with(['1', '3', '5']))
    };
    let filtered = store
        .list_now(ListRequest {
            limit: 2,
            filter: &odd,
            ..everything("/a/")
        })
        .unwrap();
    assert_eq!(
        (keys(&filtered), filtered.more),
        (vec!["/a/1", "/a/3"], true)
    );
    // A start_after before the prefix starts at the prefix.
    let early = store
        .list_now(ListRequest {
            start_after: Some("/"),
            ..everything("/b/")
        })
        .unwrap();
    assert_eq!(keys(&early), vec!["/b/1"]);
}

#[tokio::test]
async fn list_at_a_revision_shows_the_past() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.write(create("/k/a")).await.unwrap(); // 1
    store.write(create("/k/b")).await.unwrap(); // 2
    store.write(create("/k/c")).await.unwrap(); // 3
    let at = store.current_revision();
    store
        .write(update("/k/a", json!({"v": 2}), None))
        .await
        .unwrap(); // 4
    store.write(delete("/k/b")).await.unwrap(); // 5
    store.write(create("/k/d")).await.unwrap(); // 6
    store.write(delete("/k/c")).await.unwrap(); // 7
    store.write(create("/k/c")).await.unwrap(); // 8: deleted, then recreated

    let past = store
        .list_now(ListRequest {
            at_rev: Some(at),
            ..everything("/k/")
        })
        .unwrap();
    assert_eq!(past.rev, at);
    assert_eq!(keys(&past), vec!["/k/a", "/k/b", "/k/c"]);
    assert_eq!(
        past.items.iter().map(|s| s.rev).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(
        past.items[0].object.get("v").is_none(),
        "the update came later"
    );

    let paged = store
        .list_now(ListRequest {
            at_rev: Some(at),
            start_after: Some("/k/a"),
            limit: 1,
            ..everything("/k/")
        })
        .unwrap();
    assert_eq!((keys(&paged), paged.more), (vec!["/k/b"], true));
    let rest = store
        .list_now(ListRequest {
            at_rev: Some(at),
            start_after: Some("/k/b"),
            limit: 1,
            ..everything("/k/")
        })
        .unwrap();
    assert_eq!((keys(&rest), rest.more), (vec!["/k/c"], false));

    let now = store
        .list_now(ListRequest {
            at_rev: Some(8),
            ..everything("/k/")
        })
        .unwrap();
    assert_eq!(keys(&now), vec!["/k/a", "/k/c", "/k/d"]);
    let middle = store
        .list_now(ListRequest {
            at_rev: Some(6),
            ..everything("/k/")
        })
        .unwrap();
    assert_eq!(keys(&middle), vec!["/k/a", "/k/c", "/k/d"]);
    assert_eq!(
        middle.items.iter().map(|s| s.rev).collect::<Vec<_>>(),
        vec![4, 3, 6]
    );
}

#[tokio::test]
async fn compaction_keeps_whichever_bound_keeps_more() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..10 {
        store.write(create(&format!("/k/{i}"))).await.unwrap();
    }
    // Everything is younger than an hour, so the time bound keeps all of it.
    let kept = store
        .compact(Retention {
            revisions: 2,
            duration: Duration::from_secs(3600),
        })
        .await
        .unwrap();
    assert_eq!((kept, store.compacted_revision()), (0, 0));
    // With no time bound, the count bound keeps the newest 4.
    assert_eq!(
        store
            .compact(Retention {
                revisions: 4,
                duration: Duration::ZERO
            })
            .await
            .unwrap(),
        6
    );
    // Compaction never goes backwards, and never removes objects.
    assert_eq!(
        store
            .compact(Retention {
                revisions: 8,
                duration: Duration::ZERO
            })
            .await
            .unwrap(),
        6
    );
    assert_eq!(store.list_now(everything("/k/")).unwrap().items.len(), 10);
    assert!(store.get_now("/k/0").unwrap().is_some());

    let too_old = store.list_now(ListRequest {
        at_rev: Some(5),
        ..everything("/k/")
    });
    assert!(matches!(
        too_old,
        Err(StoreError::Compacted {
            requested: 5,
            compacted: 6
        })
    ));
    assert_eq!(
        keys(
            &store
                .list_now(ListRequest {
                    at_rev: Some(6),
                    ..everything("/k/")
                })
                .unwrap()
        )
        .len(),
        6
    );

    store.shutdown();
    drop(store);
    let store = open(&dir);
    assert_eq!(store.compacted_revision(), 6);
    assert!(matches!(
        store.log_watch("", 5),
        Err(StoreError::Compacted { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .write(create(&format!("/k/{i:03}")))
                    .await
                    .map(|s| s.rev)
            })
        })
        .collect();
    let mut revs = Vec::new();
    for task in tasks {
        revs.push(task.await.unwrap().unwrap());
    }
    revs.sort_unstable();
    assert_eq!(revs, (1..=200).collect::<Vec<_>>());
    let stats = store.stats();
    assert_eq!(stats.writes, 200);
    assert!(
        stats.commits < stats.writes,
        "no batching happened: {stats:?}"
    );
}

#[tokio::test]
async fn shutdown_releases_the_file_and_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.write(create("/a")).await.unwrap();
    let mut stream = store.log_watch("", 1).unwrap();
    let pending = store.write(create("/b"));
    store.shutdown();
    // A write accepted before shutdown still commits.
    assert_eq!(pending.await.unwrap().rev, 2);
    assert!(matches!(
        store.write(create("/c")).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.get_now("/a"), Err(StoreError::Closed)));
    assert!(stream.next().await.is_none());

    // The old handle is still alive, yet the file reopens.
    let reopened = open(&dir);
    assert_eq!(reopened.current_revision(), 2);
    assert!(reopened.get_now("/b").unwrap().is_some());
}

/// A backend whose fsync can be made to fail, to exercise a failed group commit.
#[derive(Debug, Default)]
struct FlakyBackend {
    inner: InMemoryBackend,
    fail_sync: Arc<AtomicBool>,
}

impl StorageBackend for FlakyBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), io::Error> {
        if self.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.inner.write(offset, data)
    }
}

/// Guards against handing out revisions, or events, for a batch that never committed.
#[tokio::test]
async fn a_failed_commit_fails_the_whole_batch_and_consumes_no_revision() {
    let backend = FlakyBackend::default();
    let fail_sync = backend.fail_sync.clone();
    let db = Builder::new().create_with_backend(backend).unwrap();
    let store = RedbStore::start(db, RedbOptions::default()).unwrap();
    store.write(create("/a")).await.unwrap();
    let mut stream = store.log_watch("", 1).unwrap();

    fail_sync.store(true, Ordering::SeqCst);
    let first = store.write(create("/b"));
    let second = store.write(create("/a"));
    assert!(matches!(first.await, Err(StoreError::Backend(_))));
    // Whether it shared the failed batch or came after it (redb then refuses writes until
    // the file is reopened), even the write that would have been rejected fails as a whole.
    assert!(matches!(second.await, Err(StoreError::Backend(_))));
    assert_eq!(store.current_revision(), 1);
    assert_eq!(store.stats().writes, 1);
    assert!(store.get_now("/b").unwrap().is_none());
    assert_eq!(stream.progress(), 1);
    // Events are published before callers are answered, so one would already be here.
    let nothing = stream.next().now_or_never();
    assert!(
        nothing.is_none(),
        "no event may be published for a failed commit: {nothing:?}"
    );
}
