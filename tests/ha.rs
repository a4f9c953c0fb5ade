//! Several servers on one etcd, with real processes: a SIGKILLed leader loses no
//! acknowledged write and is replaced; a SIGKILLed etcd member costs no client an
//! error a retry does not absorb; a backup taken under load restores every object, and
//! a redb backup restored into etcd brings the cluster up there; every server verifies
//! every server's ServiceAccount tokens.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::{self, EtcdCluster};
use common::{Api, ServerProcess, configmap, eventually};
use serde_json::{Value, json};

const CMS: &str = "/api/v1/namespaces/default/configmaps";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/skiff-controlplane";

/// `n` servers on one etcd prefix: the first, then the others joining it.
struct Servers {
    _dir: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    servers: Vec<Option<ServerProcess>>,
}

impl Servers {
    fn start(n: usize, endpoints: &str, prefix: &str) -> Servers {
        Self::start_with(n, endpoints, prefix, &[])
    }

    fn start_with(n: usize, endpoints: &str, prefix: &str, extra: &[&str]) -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let mut store = vec![
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
            "--etcd-prefix",
            prefix,
        ];
        store.extend_from_slice(extra);
        let mut dirs = Vec::new();
        let mut servers: Vec<Option<ServerProcess>> = Vec::new();
        for i in 0..n {
            let d = dir.path().join(format!("s{i}"));
            let server = match servers.first() {
                None => ServerProcess::start(&d, &store),
                Some(first) => {
                    let first = first.as_ref().unwrap();
                    let token = std::fs::read_to_string(first.data_dir.join("server-token"))
                        .unwrap()
                        .trim()
                        .to_string();
                    let mut flags = store.to_vec();
                    flags.extend(["--join", &first.url, "--token", &token]);
                    ServerProcess::start(&d, &flags)
                }
            };
            dirs.push(d);
            servers.push(Some(server));
        }
        Servers {
            _dir: dir,
            dirs,
            servers,
        }
    }

    fn api(&self, i: usize) -> Api {
        self.servers[i].as_ref().expect("running").api()
    }

    fn identity(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("server-id"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The index of the server holding the leader Lease, as `via` reports it.
    async fn leader(&self, via: &Api) -> Option<usize> {
        let (code, lease) = via.get(LEASE).await;
        if code != 200 {
            return None;
        }
        let holder = lease["spec"]["holderIdentity"].as_str()?.to_string();
        (0..self.dirs.len()).find(|&i| self.identity(i) == holder)
    }

    fn kill(&mut self, i: usize) {
        self.servers[i].take().expect("running").kill9();
    }
}

/// Writers that create ConfigMaps through a set of servers until stopped, moving to
/// the next server when one fails; they record what was acknowledged and which server
/// failed them.
struct Writers {
    acked: Arc<Mutex<BTreeSet<String>>>,
    failures: Arc<Mutex<Vec<(usize, String)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    fn start(apis: Vec<Api>, count: usize) -> Writers {
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let apis = Arc::new(apis);
        let tasks = (0..count)
            .map(|w| {
                let (apis, acked, failures, stop) =
                    (apis.clone(), acked.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut at = w % apis.len();
                    for i in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let name = format!("w{w}-{i}");
                        let api = &apis[at];
                        let sent = api
                            .http
                            .post(format!("{}{CMS}", api.base))
                            .json(&configmap(&name, json!({})))
                            .timeout(Duration::from_secs(10))
                            .send()
                            .await;
                        match sent {
                            Ok(r) if r.status().as_u16() == 201 => {
                                acked.lock().unwrap().insert(name);
                            }
                            other => {
                                let why = match other {
                                    Ok(r) => format!(
                                        "{} {}",
                                        r.status(),
                                        r.text().await.unwrap_or_default()
                                    ),
                                    Err(e) => e.to_string(),
                                };
                                failures.lock().unwrap().push((at, why));
                                at = (at + 1) % apis.len();
                            }
                        }
                    }
                })
            })
            .collect();
        Writers {
            acked,
            failures,
            stop,
            tasks,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn wait_for_more(&self, more: usize) {
        let target = self.acked() + more;
        eventually(
            &format!("{more} more acknowledged creates"),
            Duration::from_secs(30),
            || async { (self.acked() >= target).then_some(()) },
        )
        .await;
    }

    async fn stop(self) -> (BTreeSet<String>, Vec<(usize, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (acked, failures)
    }
}

/// Every ConfigMap name the server lists.
async fn listed(api: &Api) -> BTreeSet<String> {
    let (code, list) = api.get(CMS).await;
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_loses_no_acknowledged_create_and_another_server_leads() {
    let mut servers = Servers::start(3, &etcd::shared(), &etcd::prefix("leader-kill"));
    let apis: Vec<Api> = (0..3).map(|i| servers.api(i)).collect();
    let leader = eventually("a leader", Duration::from_secs(20), || {
        servers.leader(&apis[0])
    })
    .await;

    let writers = Writers::start(apis.clone(), 64);
    writers.wait_for_more(300).await;
    servers.kill(leader);
    let killed = Instant::now();
    // The API keeps answering through the other servers while the lead moves.
    writers.wait_for_more(300).await;
    let survivor = (leader + 1) % 3;
    // The Lease names the killed server until another takes it over.
    let new_leader = eventually("another server to lead", Duration::from_secs(20), || {
        let servers = &servers;
        let api = &apis[survivor];
        async move { servers.leader(api).await.filter(|&l| l != leader) }
    })
    .await;
    let took_over = killed.elapsed();
    assert_ne!(new_leader, leader);
    writers.wait_for_more(100).await;
    let (acked, failures) = writers.stop().await;

    let through_survivors: Vec<_> = failures.iter().filter(|(at, _)| *at != leader).collect();
    assert!(
        through_survivors.is_empty(),
        "requests to the surviving servers failed: {through_survivors:?}"
    );
    for i in (0..3).filter(|&i| i != leader) {
        let present = listed(&apis[i]).await;
        let lost: Vec<_> = acked.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "acknowledged creates missing through server {i}: {lost:?}"
        );
    }
    eprintln!(
        "{} creates acknowledged, {} refused by the killed server; new leader after {took_over:?}",
        acked.len(),
        failures.len()
    );
}

/// ServiceAccount tokens are signed with a key every server shares (the etcd bootstrap
/// data carries it beside the CA), so each server verifies the others' tokens.
#[tokio::test]
async fn every_server_verifies_every_servers_service_account_tokens() {
    let servers = Servers::start(2, &etcd::shared(), &etcd::prefix("sa-tokens"));
    let (first, second) = (servers.api(0), servers.api(1));
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    let token = eventually(
        "a token of default/default from the first server",
        Duration::from_secs(20),
        || {
            let (api, request) = (&first, &request);
            async move {
                let (code, answer) = api
                    .post(
                        "/api/v1/namespaces/default/serviceaccounts/default/token",
                        request,
                    )
                    .await;
                (code == 201).then(|| answer["status"]["token"].as_str().unwrap().to_string())
            }
        },
    )
    .await;
    let as_account = Api::with_token(&second.base, None, &token);
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let (code, answer) = as_account
        .post("/apis/authentication.k8s.io/v1/selfsubjectreviews", &review)
        .await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(
        answer["status"]["userInfo"]["username"],
        "system:serviceaccount:default:default"
    );
    let (_, one) = first.get("/openid/v1/jwks").await;
    let (_, two) = second.get("/openid/v1/jwks").await;
    assert_eq!(one, two, "the servers publish different keys");
}

/// The member of an etcd cluster that leads it (from the member's own status).
async fn etcd_leader(cluster: &EtcdCluster, members: usize) -> usize {
    let http = reqwest::Client::new();
    for i in 0..members {
        let status: Value = match http
            .post(format!(
                "{}/v3/maintenance/status",
                cluster.member_endpoint(i)
            ))
            .body("{}")
            .send()
            .await
        {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => continue,
        };
        if status["leader"].is_string() && status["leader"] == status["header"]["member_id"] {
            return i;
        }
    }
    panic!("no etcd member says it leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_etcd_member_costs_no_client_an_error_a_retry_does_not_absorb() {
    let mut cluster = EtcdCluster::start(3);
    let servers = Servers::start(2, &cluster.endpoints(), "/skiff");
    let apis: Vec<Api> = (0..2).map(|i| servers.api(i)).collect();
    let unabsorbed = Arc::new(Mutex::new(Vec::<String>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let api = apis[c % 2].clone();
            let (unabsorbed, done, stop) = (unabsorbed.clone(), done.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let name = format!("c{c}-{i}");
                    // A client's retry: the same create again after a pause; a create
                    // that landed before its answer was lost reads back as ours.
                    let mut outcome = Err(String::new());
                    for attempt in 0..10 {
                        if attempt > 0 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let (code, body) =
                            api.post(CMS, &configmap(&name, json!({"by": "c"}))).await;
                        outcome = match code {
                            201 => Ok(()),
                            409 if attempt > 0 => {
                                let (code, got) = api.get(&format!("{CMS}/{name}")).await;
                                if code == 200 && got["metadata"]["labels"]["by"] == "c" {
                                    Ok(())
                                } else {
                                    Err(format!("409 then {code} {got}"))
                                }
                            }
                            _ => Err(format!("{code} {body}")),
                        };
                        if outcome.is_ok() {
                            break;
                        }
                    }
                    match outcome {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => unabsorbed.lock().unwrap().push(format!("{name}: {e}")),
                    }
                    let (code, _) = api.get(CMS).await;
                    if code != 200 {
                        // A list is a read: the retry is the next loop's list.
                        let (again, body) = api.get(CMS).await;
                        if again != 200 {
                            unabsorbed
                                .lock()
                                .unwrap()
                                .push(format!("list: {again} {body}"));
                        }
                    }
                }
            })
        })
        .collect();
    let progress = |n: usize| {
        let done = done.clone();
        async move {
            let target = done.load(Ordering::Relaxed) + n;
            eventually("creates to go on", Duration::from_secs(30), || {
                let done = done.clone();
                async move { (done.load(Ordering::Relaxed) >= target).then_some(()) }
            })
            .await
        }
    };
    progress(200).await;
    let victim = etcd_leader(&cluster, 3).await;
    cluster.kill(victim);
    progress(200).await;
    cluster.restart(victim);
    progress(100).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let unabsorbed = unabsorbed.lock().unwrap();
    assert!(
        unabsorbed.is_empty(),
        "errors a retry did not absorb: {unabsorbed:?}"
    );
}

/// Every object a backup file holds, by store key.
fn backup_objects(file: &Path) -> (u64, BTreeMap<String, Value>) {
    use std::io::Read;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(file).unwrap(),
    ));
    let mut objects = BTreeMap::new();
    let mut revision = 0;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "backup.json" {
            let meta: Value = serde_json::from_slice(&bytes).unwrap();
            revision = meta["revision"].as_u64().unwrap();
        } else if name.starts_with("objects/") {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let item: Value = serde_json::from_slice(line).unwrap();
                objects.insert(
                    item["key"].as_str().unwrap().to_string(),
                    item["object"].clone(),
                );
            }
        }
    }
    (revision, objects)
}

fn skiff(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skiff {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks that a restored server serves every ConfigMap of a backup as it was, at a
/// newer resourceVersion.
async fn serves_every_configmap(api: &Api, objects: &BTreeMap<String, Value>, revision: u64) {
    let configmaps: Vec<&Value> = objects
        .iter()
        .filter(|(k, _)| k.starts_with("/core/configmaps/default/"))
        .map(|(_, v)| v)
        .collect();
    assert!(!configmaps.is_empty());
    let (code, list) = api.get(CMS).await;
    assert_eq!(code, 200);
    let served: BTreeMap<String, Value> = list["items"]
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
    for cm in configmaps {
        let name = cm["metadata"]["name"].as_str().unwrap();
        let got = served
            .get(name)
            .unwrap_or_else(|| panic!("{name} was not restored"));
        assert_eq!(got["metadata"]["uid"], cm["metadata"]["uid"], "{name}");
        assert_eq!(
            got["metadata"]["labels"], cm["metadata"]["labels"],
            "{name}"
        );
        assert_eq!(
            got["metadata"]["creationTimestamp"],
            cm["metadata"]["creationTimestamp"]
        );
        let rv: u64 = got["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rv > revision,
            "{name}: resourceVersions only grow across a restore"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_object_and_a_redb_backup_moves_to_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let source = ServerProcess::start(&dir.path().join("source"), &[]);
    let api = source.api();
    let module = common::workload("ticker.wasm");
    let digest = api.upload(module.clone()).await;
    let writers = Writers::start(vec![api.clone()], 16);
    writers.wait_for_more(200).await;
    // Through the running server's API (redb is held by it).
    let file = dir.path().join("backup.tar.gz");
    skiff(&[
        "backup",
        "--data-dir",
        source.data_dir.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ]);
    writers.wait_for_more(100).await;
    let (acked, failures) = writers.stop().await;
    assert!(failures.is_empty(), "{failures:?}");
    let (revision, objects) = backup_objects(&file);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600,
        "a backup holds the CA key"
    );
    // The backup is one revision's snapshot: every object in it is no newer.
    for (key, object) in &objects {
        let rv: u64 = object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            rv <= revision,
            "{key} at {rv} is newer than the backup's {revision}"
        );
    }
    let in_backup = objects
        .keys()
        .filter(|k| k.starts_with("/core/configmaps/default/w"))
        .count();
    assert!(
        in_backup >= 200 && in_backup < acked.len(),
        "{in_backup} of {}",
        acked.len()
    );

    // Into a fresh data directory (redb).
    let restored_dir = dir.path().join("restored");
    skiff(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        restored_dir.to_str().unwrap(),
    ]);
    let restored = ServerProcess::start(&restored_dir, &[]);
    serves_every_configmap(&restored.api(), &objects, revision).await;
    let (code, _) = restored
        .api()
        .get(&format!("/apis/skiff.dev/v1/modules/{digest}"))
        .await;
    assert_eq!(code, 200, "the module came back");
    // The same admin token works: the secrets came back too.
    assert_eq!(
        std::fs::read_to_string(restored_dir.join("admin-token")).unwrap(),
        std::fs::read_to_string(source.data_dir.join("admin-token")).unwrap()
    );
    drop(restored);

    // Into etcd: how a single server moves to several.
    let moved_dir = dir.path().join("moved");
    let prefix = etcd::prefix("moved");
    let endpoints = etcd::shared();
    skiff(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data-dir",
        moved_dir.to_str().unwrap(),
        "--store",
        "etcd",
        "--etcd-endpoints",
        &endpoints,
        "--etcd-prefix",
        &prefix,
    ]);
    let moved = Servers::start_from(&moved_dir, &endpoints, &prefix);
    serves_every_configmap(&moved.api(0), &objects, revision).await;
    serves_every_configmap(&moved.api(1), &objects, revision).await;
    let second = moved.api(1);
    let response = second
        .http
        .get(format!(
            "{}/apis/skiff.dev/v1/modules/{digest}",
            second.base
        ))
        .header("accept", "application/wasm")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.bytes().await.unwrap().to_vec(),
        module,
        "the module is served by a server it was never uploaded to"
    );
}

impl Servers {
    /// A first server on a restored data directory, and one more joining it.
    fn start_from(first_dir: &Path, endpoints: &str, prefix: &str) -> Servers {
        let dir = tempfile::tempdir().unwrap();
        let store = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
            "--etcd-prefix",
            prefix,
        ];
        let first = ServerProcess::start(first_dir, &store);
        let token = std::fs::read_to_string(first_dir.join("server-token"))
            .unwrap()
            .trim()
            .to_string();
        let mut flags = store.to_vec();
        flags.extend(["--join", &first.url, "--token", &token]);
        let second_dir = dir.path().join("s1");
        let second = ServerProcess::start(&second_dir, &flags);
        Servers {
            _dir: dir,
            dirs: vec![first_dir.to_path_buf(), second_dir],
            servers: vec![Some(first), Some(second)],
        }
    }
}

/// `skiff agent` named `name` joining through `servers` (comma-separated).
fn agent(servers: &str, token: &str, name: &str, dir: &Path) -> common::Process {
    let data = dir.join(name);
    common::Process::start(
        &[
            "agent",
            "--server",
            servers,
            "--token",
            token,
            "--name",
            name,
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--lease-interval",
            "500ms",
        ],
        "agent:",
    )
    .0
}

/// GETs `url` back to back until stopped; counts answers and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                match http.get(&url).timeout(Duration::from_secs(10)).send().await {
                    Ok(r) if r.status().as_u16() == 200 => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let code = r.status();
                        let body = r.text().await.unwrap_or_default();
                        f.lock().unwrap().push(format!("{code}: {body}"));
                    }
                    Err(e) => f.lock().unwrap().push(e.to_string()),
                }
            }
        });
        Traffic {
            stop,
            ok,
            failures,
            task,
        }
    }

    async fn more(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        eventually(
            "requests to go on through the gateway",
            Duration::from_secs(30),
            || {
                let ok = self.ok.clone();
                async move { (ok.load(Ordering::Relaxed) >= target).then_some(()) }
            },
        )
        .await;
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

async fn node_renewed(api: &Api, node: &str) -> Option<String> {
    let (code, lease) = api
        .get(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        ))
        .await;
    (code == 200).then(|| lease["spec"]["renewTime"].as_str().map(str::to_string))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_app_rolls_out_with_no_failed_request_while_the_leader_and_the_agents_first_server_die()
{
    let mut servers = Servers::start_with(
        3,
        &etcd::shared(),
        &etcd::prefix("app-under-kills"),
        &["--gateway", "127.0.0.1:0"],
    );
    let apis: Vec<Api> = (0..3).map(|i| servers.api(i)).collect();
    // The first server leads, and is the first URL the agents know.
    let leader = eventually("a leader", Duration::from_secs(20), || {
        servers.leader(&apis[1])
    })
    .await;
    let urls: Vec<String> = std::iter::once(leader)
        .chain((0..3).filter(|&i| i != leader))
        .map(|i| servers.servers[i].as_ref().unwrap().url.clone())
        .collect();
    let (first, rollout_via, gateway_of) = (leader, (leader + 1) % 3, (leader + 2) % 3);
    let token = servers.servers[0].as_ref().unwrap().node_token();
    let dir = tempfile::tempdir().unwrap();
    let _agents = [
        agent(&urls.join(","), &token, "ha-1", dir.path()),
        agent(&urls.join(","), &token, "ha-2", dir.path()),
    ];
    for node in ["ha-1", "ha-2"] {
        eventually(&format!("{node} Ready"), Duration::from_secs(30), || {
            let api = apis[gateway_of].clone();
            async move {
                let (_, n) = api.get(&format!("/api/v1/nodes/{node}")).await;
                n["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    .then_some(())
            }
        })
        .await;
    }
    let (code, app) = apis[rollout_via]
        .raw(
            reqwest::Method::PUT,
            "/apis/skiff.dev/v1/namespaces/default/apps/web?replicas=2&wait=true",
            "application/wasm",
            common::workload("http-hello.wasm"),
        )
        .await;
    assert_eq!(code, 201, "{app}");
    let gateway = servers.servers[gateway_of]
        .as_ref()
        .unwrap()
        .printed("gateway:")
        .expect("the server prints its gateway");
    let traffic = Traffic::start(format!("{gateway}/default/web/"));
    traffic.more(50).await;

    // A new module rolls out, and the leader (the agents' first server) dies under it.
    let (code, started) = apis[rollout_via]
        .raw(
            reqwest::Method::PUT,
            "/apis/skiff.dev/v1/namespaces/default/apps/web",
            "application/wasm",
            common::workload("http-echo.wasm"),
        )
        .await;
    assert_eq!(code, 200, "{started}");
    let new_module = started["spec"]["module"].as_str().unwrap().to_string();
    assert_ne!(started["spec"]["module"], app["spec"]["module"]);
    servers.kill(first);
    let killed = Instant::now();
    traffic.more(50).await;
    eventually(
        "the rollout to finish under the new leader",
        Duration::from_secs(60),
        || {
            let api = apis[gateway_of].clone();
            let new_module = new_module.clone();
            async move {
                let (_, app) = api
                    .get("/apis/skiff.dev/v1/namespaces/default/apps/web")
                    .await;
                let (_, pods) = api
                    .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dweb")
                    .await;
                let running_new = pods["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .all(|p| p["spec"]["containers"][0]["image"] == new_module.as_str());
                let done = app["status"]["readyReplicas"] == 2
                    && app["status"]["updatedReplicas"] == 2
                    && running_new;
                done.then_some(())
            }
        },
    )
    .await;
    traffic.more(50).await;
    let (code, body) = {
        let http = reqwest::Client::new();
        let r = http
            .get(format!("{gateway}/default/web/"))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(code, 200);
    assert!(body.starts_with('{'), "the new module answers: {body}");

    // The agents stay Ready: their Leases keep renewing through the other servers.
    for node in ["ha-1", "ha-2"] {
        let before = node_renewed(&apis[gateway_of], node).await;
        eventually(
            &format!("{node}'s Lease renewed after the kill"),
            Duration::from_secs(20),
            || {
                let api = apis[gateway_of].clone();
                let before = before.clone();
                async move {
                    let now = node_renewed(&api, node).await;
                    (now.is_some() && now != before).then_some(())
                }
            },
        )
        .await;
    }
    // A pod's logs still come through a surviving server (its tunnel to that server).
    let (_, pods) = apis[rollout_via]
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dweb")
        .await;
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = apis[rollout_via]
        .text(&format!("/api/v1/namespaces/default/pods/{pod}/log"))
        .await;
    assert_eq!(code, 200);

    let (ok, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed through the surviving gateway: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    eprintln!(
        "{ok} requests, none failed; rollout finished {:?} after the kill",
        killed.elapsed()
    );
}
