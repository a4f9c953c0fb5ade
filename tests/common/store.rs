//! Which store a test's servers keep the cluster in, so that one test body runs against
//! both: `store_tests!(#[tokio::test] async fn NAME, …)` runs each named function twice,
//! as the tests `redb::NAME` and `etcd::NAME`, and every
//! [`ServerProcess`](super::ServerProcess) and [`cluster`] the body starts uses that
//! test's store.
//!
//! - **redb**: the server's own file in its data directory, as `skiff server` defaults to.
//! - **etcd**: the run's shared cluster ([`super::etcd::shared`]) under a prefix of its
//!   own per data directory, so tests never see each other's objects, and a server
//!   restarted on the same directory finds the same objects, as it would on redb.
//!
//! The choice is kept per thread: `#[test]` and `#[tokio::test]` (either flavor) run
//! their body's top-level future on the test's own thread, which is where servers are
//! started. A server started from a spawned thread or runtime worker would not see it,
//! so that panics rather than fall back to redb (see [`current`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::etcd::EtcdCluster;
use super::{Api, Process, ServerProcess, dev_cluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redb,
    Etcd,
}

thread_local! {
    static CURRENT: Cell<Option<Backend>> = const { Cell::new(None) };
    /// A test's private etcd cluster, when it has one (see [`own_etcd`]).
    static OWN_ENDPOINTS: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Chooses `backend` for the servers this thread starts, until the guard is dropped.
pub fn select(backend: Backend) -> Selected {
    Selected {
        previous: CURRENT.replace(Some(backend)),
    }
}

pub struct Selected {
    previous: Option<Backend>,
}

impl Drop for Selected {
    fn drop(&mut self) {
        CURRENT.set(self.previous);
    }
}

/// The store of the test running on this thread: redb outside `store_tests!`, as for
/// the tests that do not use it. A server started from a spawned thread or a runtime
/// worker has no test to ask, and a silent redb there would pass an etcd test on redb,
/// so that panics.
pub fn current() -> Backend {
    if let Some(backend) = CURRENT.get() {
        return backend;
    }
    let thread = std::thread::current();
    match thread.name() {
        Some(name) if !name.starts_with("tokio-") => Backend::Redb,
        other => panic!(
            "a server was started off the test's thread ({other:?}); start servers \
             from the test's own thread so they get its store"
        ),
    }
}

/// Where each data directory's cluster lives in etcd: a restart on the same directory
/// reopens the same objects.
static PREFIXES: Mutex<Option<HashMap<PathBuf, (String, String)>>> = Mutex::new(None);

/// The `skiff server` flags that put the server on this test's store; none for redb.
pub fn server_flags(data_dir: &Path) -> Vec<String> {
    match current() {
        Backend::Redb => Vec::new(),
        Backend::Etcd => {
            let (endpoints, prefix) = etcd_location(data_dir);
            vec![
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                endpoints,
                "--etcd-prefix".into(),
                prefix,
            ]
        }
    }
}

/// The etcd endpoints and key prefix of the cluster whose server keeps `data_dir`.
pub fn etcd_location(data_dir: &Path) -> (String, String) {
    let mut prefixes = PREFIXES.lock().unwrap_or_else(PoisonError::into_inner);
    prefixes
        .get_or_insert_with(HashMap::new)
        .entry(data_dir.to_path_buf())
        .or_insert_with(|| {
            let endpoints = OWN_ENDPOINTS
                .with_borrow(|own| own.clone())
                .unwrap_or_else(super::etcd::shared);
            (endpoints, super::etcd::prefix(&test_name()))
        })
        .clone()
}

/// This test's name as a key segment: the test harness names each test's thread after it.
fn test_name() -> String {
    let name = std::thread::current()
        .name()
        .unwrap_or("test")
        .replace("::", ".");
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A private one-member etcd cluster for the rest of this test, on etcd; nothing on
/// redb. For what acts on a whole etcd cluster rather than one prefix, such as
/// compaction, which would expire other tests' revisions on the shared cluster.
pub fn own_etcd() -> Option<OwnEtcd> {
    (current() == Backend::Etcd).then(|| {
        let cluster = EtcdCluster::start(1);
        OWN_ENDPOINTS.set(Some(cluster.endpoints()));
        OwnEtcd { _cluster: cluster }
    })
}

/// Keeps a test's private cluster running; the test's servers go back to the shared
/// one when it is dropped.
pub struct OwnEtcd {
    _cluster: EtcdCluster,
}

impl Drop for OwnEtcd {
    fn drop(&mut self) {
        OWN_ENDPOINTS.set(None);
    }
}

/// A cluster with `nodes` agents named dev-1..dev-N and the HTTP gateway, on the
/// running test's store (see [`store`]). On redb it is `skiff dev`, as users start one;
/// `skiff dev` always keeps redb, so on etcd it is the same cluster as separate
/// processes: `skiff server` on etcd and N `skiff agent`s joined with its node token.
/// Either way the kubeconfig is `DIR/kubeconfig`.
pub fn cluster(nodes: u32) -> (tempfile::TempDir, Cluster, Api) {
    if current() == Backend::Redb {
        let (dir, process, api) = dev_cluster(nodes, &[]);
        return (dir, Cluster::Dev(process), api);
    }
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&dir.path().join("server"), &["--gateway", "127.0.0.1:0"]);
    std::fs::copy(server.kubeconfig(), dir.path().join("kubeconfig"))
        .expect("copying the kubeconfig");
    let token = server.node_token();
    // Started side by side: each joins over TLS before it prints its line.
    let agents = std::thread::scope(|scope| {
        let starting: Vec<_> = (1..=nodes)
            .map(|i| {
                let name = format!("dev-{i}");
                let data_dir = dir.path().join("nodes").join(&name);
                let (url, token) = (&server.url, &token);
                scope.spawn(move || {
                    let data_dir = data_dir.to_str().expect("a UTF-8 temp path");
                    let args = [
                        "agent",
                        "--server",
                        url,
                        "--token",
                        token,
                        "--name",
                        &name,
                        "--data-dir",
                        data_dir,
                        "--listen",
                        "127.0.0.1:0",
                    ];
                    Process::start(&args, "agent:").0
                })
            })
            .collect();
        starting
            .into_iter()
            .map(|agent| agent.join().expect("an agent started"))
            .collect()
    });
    let api = Api::from_kubeconfig(&dir.path().join("kubeconfig"));
    (dir, Cluster::Separate { agents, server }, api)
}

/// The processes of a [`cluster`]; all of them are killed when it is dropped.
pub enum Cluster {
    Dev(Process),
    /// The agents come first, so they are killed before their server.
    Separate {
        agents: Vec<Process>,
        server: ServerProcess,
    },
}

/// Runs each named test function once per store: `store_tests!(#[tokio::test] async fn
/// a, b);` emits `redb::a` and `etcd::a` (and so on), each a test with the attributes
/// given that chooses its store and calls the file's `a`. The bodies stay ordinary
/// functions of the test file, and one left out of the list is dead code, which the
/// lint gate refuses.
#[allow(unused_macros)] // reason: the binaries that start no server do not use it
macro_rules! store_tests {
    ($(#[$meta:meta])* async fn $($name:ident),+ $(,)?) => {
        $crate::common::store::store_tests!(@mod redb Redb [$(#[$meta])*] async $($name)+);
        $crate::common::store::store_tests!(@mod etcd Etcd [$(#[$meta])*] async $($name)+);
    };
    ($(#[$meta:meta])* fn $($name:ident),+ $(,)?) => {
        $crate::common::store::store_tests!(@mod redb Redb [$(#[$meta])*] sync $($name)+);
        $crate::common::store::store_tests!(@mod etcd Etcd [$(#[$meta])*] sync $($name)+);
    };
    (@mod $module:ident $backend:ident $attrs:tt $kind:ident $($name:ident)+) => {
        mod $module {
            $($crate::common::store::store_tests!(@one $backend $attrs $kind $name);)+
        }
    };
    (@one $backend:ident [$($attrs:tt)*] async $name:ident) => {
        $($attrs)*
        async fn $name() {
            let _store = $crate::common::store::select($crate::common::store::Backend::$backend);
            super::$name().await
        }
    };
    (@one $backend:ident [$($attrs:tt)*] sync $name:ident) => {
        $($attrs)*
        fn $name() {
            let _store = $crate::common::store::select($crate::common::store::Backend::$backend);
            super::$name()
        }
    };
}
#[allow(unused_imports)] // reason: the binaries that start no server do not use it
pub(crate) use store_tests;
