//! A real etcd cluster on loopback for the tests that need one: Debian's `etcd-server`
//! (installed by scripts/test), members on free ports, data in a temporary directory.
//!
//! - [`shared`] is one three-member cluster for a whole test run: scripts/test starts
//!   it once and passes its endpoints in `SKIFF_TEST_ETCD_ENDPOINTS`; a test binary run
//!   on its own starts one for itself. Tests keep apart by key prefix ([`prefix`]).
//! - [`EtcdCluster::start`] is a private cluster for a test that kills members.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One member of a cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A cluster of etcd members started by this test process.
pub struct EtcdCluster {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    members: Vec<Member>,
    initial_cluster: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Whether a member answers `/health` with a healthy cluster.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster is healthy.
    pub fn start(n: usize) -> EtcdCluster {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let mut cluster = Self::start_in(temp.path().to_path_buf(), n);
        cluster._temp = Some(temp);
        cluster
    }

    fn start_in(dir: PathBuf, n: usize) -> EtcdCluster {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            dir,
            _temp: None,
            members,
            initial_cluster,
        };
        for i in 0..n {
            cluster.spawn(i, "new");
        }
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::File::create(self.dir.join(format!("{}.log", m.name)))
            .expect("an etcd log file");
        let mut command = Command::new("etcd");
        command
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "skiff-test"])
            // Group commit is etcd's too; a test cluster needs no more than the default.
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .expect("running etcd (Debian's etcd-server, installed by scripts/test)");
        self.members[i].child = Some(child);
    }

    /// Waits until every running member reports a healthy cluster.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            while !healthy(m.client_port) {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy within {within:?}; see its log in {}",
                    m.name,
                    self.dir.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every member's client URL, comma-separated (what `--etcd-endpoints` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn member_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i, "existing");
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Makes a child die with the thread that spawned it: etcd started for a whole test
/// process must not outlive it, whatever way the process ends.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The endpoints of the etcd cluster this test run shares.
pub fn shared() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            if let Ok(endpoints) = std::env::var("SKIFF_TEST_ETCD_ENDPOINTS")
                && !endpoints.is_empty()
            {
                return endpoints;
            }
            // PR_SET_PDEATHSIG fires when the spawning *thread* ends, so the cluster
            // is started from a thread that lives as long as the process.
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let dir =
                    std::env::temp_dir().join(format!("skiff-test-etcd-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("a directory for the shared etcd");
                let cluster = EtcdCluster::start_in(dir.clone(), 3);
                let pids = cluster
                    .members
                    .iter()
                    .filter_map(|m| m.child.as_ref())
                    .filter_map(|c| libc::pid_t::try_from(c.id()).ok())
                    .collect();
                if SHARED_TO_REMOVE.set((pids, dir)).is_ok() {
                    // SAFETY: registers a plain function with no arguments.
                    unsafe { libc::atexit(remove_shared) };
                }
                tx.send(cluster.endpoints()).expect("the test waits");
                // Kept running for the rest of the process.
                let _cluster = cluster;
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("the shared etcd cluster started")
        })
        .clone()
}

/// The members and directory of the cluster [`shared`] started, for [`remove_shared`].
static SHARED_TO_REMOVE: OnceLock<(Vec<libc::pid_t>, PathBuf)> = OnceLock::new();

/// At exit, stops the shared cluster and removes its data (three 64 MiB write-ahead
/// logs and more), which would otherwise stay behind after every test binary run
/// without scripts/test.
extern "C" fn remove_shared() {
    if let Some((pids, dir)) = SHARED_TO_REMOVE.get() {
        for &pid in pids {
            // SAFETY: signals and reaps this process's own children; no memory is shared.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh key prefix, so tests on one etcd never see each other's objects.
pub fn prefix(test: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "/skiff-test/{test}-{}-{n}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// The `skiff server` flags for a store on the shared cluster, under a fresh prefix.
pub fn server_flags(test: &str) -> Vec<String> {
    vec![
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        shared(),
        "--etcd-prefix".into(),
        prefix(test),
    ]
}

/// How many keys start with `prefix`, asked of the cluster at `endpoints` through etcd's
/// JSON gateway (a linearizable read).
pub async fn count_keys(endpoints: &str, prefix: &str) -> u64 {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut end = prefix.as_bytes().to_vec();
    // The range end of a prefix: its last byte plus one (prefixes here are ASCII).
    *end.last_mut().expect("a non-empty prefix") += 1;
    let endpoint = endpoints.split(',').next().expect("an endpoint");
    let response: serde_json::Value = reqwest::Client::new()
        .post(format!("{endpoint}/v3/kv/range"))
        .json(&serde_json::json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&end),
            "count_only": true,
        }))
        .send()
        .await
        .expect("etcd's JSON gateway answers")
        .json()
        .await
        .expect("a JSON range response");
    // proto3 JSON leaves a zero count out, and writes int64 as a string.
    match &response["count"] {
        serde_json::Value::Null => 0,
        serde_json::Value::String(n) => n.parse().expect("a numeric count"),
        other => panic!("unexpected count {other} in {response}"),
    }
}
