//! Shared fixtures for the end-to-end tests: the real `skiff` binary on a loopback port
//! with its store (a real redb file in a temporary directory, or a real etcd cluster;
//! see [`store`]), and a small JSON client.

#![allow(dead_code)] // reason: each test binary uses a different subset of these helpers

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod etcd;
pub mod netns;
pub mod registry;
pub mod store;

#[allow(unused_imports)] // reason: only the binaries that start clusters use these
pub use store::{Cluster, cluster};

/// The log level of the processes whose logs go to the test's output: `warn`, or
/// `SKIFF_TEST_LOG` when set (for example `SKIFF_TEST_LOG=debug,hyper=trace` to see
/// what a failing test's server did).
fn test_log_level() -> String {
    std::env::var("SKIFF_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

/// A `skiff dev` cluster or `skiff agent` process, read until a marker line.
pub struct Process {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    /// The stdout lines up to and including the marker.
    pub seen: Vec<String>,
}

impl Process {
    /// Spawns `skiff ARGS` and waits for a stdout line starting with `marker`; returns
    /// the rest of that line.
    pub fn start(args: &[&str], marker: &str) -> (Process, String) {
        Self::start_in(None, args, marker)
    }

    /// Like `start`, inside network namespace `ns` (`ip netns exec NS skiff ARGS`).
    pub fn start_in(ns: Option<&str>, args: &[&str], marker: &str) -> (Process, String) {
        let mut command = Self::command_in(ns);
        command
            .args(args)
            .env("RUST_LOG", test_log_level())
            .stderr(Stdio::inherit());
        Self::spawn(command, marker)
    }

    /// Like `start`, with extra environment variables (the tests' hidden knobs).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)], marker: &str) -> (Process, String) {
        let mut command = Self::command_in(None);
        command
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", test_log_level())
            .stderr(Stdio::inherit());
        Self::spawn(command, marker)
    }

    /// `skiff`, or `ip netns exec NS skiff` inside network namespace `ns`.
    fn command_in(ns: Option<&str>) -> Command {
        match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_skiff")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_skiff")),
        }
    }

    /// Like `start`, with the logs (stderr) going to `log` at the level `rust_log`.
    pub fn start_logged(
        args: &[&str],
        marker: &str,
        rust_log: &str,
        log: &Path,
    ) -> (Process, String) {
        Self::start_in_logged(None, args, marker, rust_log, log)
    }

    /// Like `start_in`, with the logs (stderr) going to `log` at the level `rust_log`.
    pub fn start_in_logged(
        ns: Option<&str>,
        args: &[&str],
        marker: &str,
        rust_log: &str,
        log: &Path,
    ) -> (Process, String) {
        let mut command = Self::command_in(ns);
        command
            .args(args)
            .env("RUST_LOG", rust_log)
            .stderr(std::fs::File::create(log).expect("creating the log file"));
        Self::spawn(command, marker)
    }

    fn spawn(command: Command, marker: &str) -> (Process, String) {
        Self::start_command(command, marker, Duration::from_secs(60))
    }

    /// Spawns `command` (some other way to run skiff, such as under an emulator), with
    /// stdout piped, and waits up to `within` for a stdout line starting with `marker`;
    /// returns the rest of that line.
    pub fn start_command(
        mut command: Command,
        marker: &str,
        within: Duration,
    ) -> (Process, String) {
        use std::io::{BufRead, BufReader};
        let args: Vec<_> = command.get_args().map(|a| a.to_owned()).collect();
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning skiff");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Owned from here on, so a panic below still kills and reaps the child.
        let mut process = Process {
            child,
            lines: rx,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = process.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("skiff {args:?} printed no {marker:?} line within {within:?}")
            });
            process.seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(marker) {
                return (process, rest.trim().to_string());
            }
        }
    }

    /// The rest of a line printed before the marker that starts with `prefix`, such as
    /// `gateway:`.
    pub fn printed(&self, prefix: &str) -> Option<String> {
        self.seen
            .iter()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim().to_string())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub fn terminate(mut self, within: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for skiff") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "skiff did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `skiff dev` cluster with `nodes` agents and extra flags, in a temporary directory.
pub fn dev_cluster(nodes: u32, extra: &[&str]) -> (tempfile::TempDir, Process, Api) {
    dev_cluster_with_env(nodes, extra, &[])
}

/// Like `dev_cluster`, with extra environment variables for the cluster's processes.
pub fn dev_cluster_with_env(
    nodes: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Process, Api) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let n = nodes.to_string();
    let mut args = vec![
        "dev",
        "--gateway-https",
        "127.0.0.1:0",
        "--nodes",
        &n,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &d,
        "--gateway",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (process, _url) = Process::start_with_env(&args, env, "api:");
    let api = Api::from_kubeconfig(&dir.path().join("kubeconfig"));
    (dir, process, api)
}

/// A committed guest from workloads/bin.
pub fn workload(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads/bin")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A `skiff server` process; killed when dropped.
pub struct ServerProcess {
    pub url: String,
    pub data_dir: PathBuf,
    /// The store it keeps the cluster in: the running test's (see [`store`]).
    pub store: store::Backend,
    process: Process,
}

impl ServerProcess {
    /// Starts the binary on the running test's store and waits for its `api:` line.
    /// Started again on the same `data_dir`, it finds the same store.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServerProcess {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> ServerProcess {
        let dir = data_dir.to_str().expect("a UTF-8 temp path");
        let backend = store::current();
        let store_flags = store::server_flags(data_dir);
        let mut args = vec!["server", "--listen", listen, "--data-dir", dir];
        args.extend(store_flags.iter().map(String::as_str));
        args.extend_from_slice(extra);
        let (process, url) = Process::start(&args, "api:");
        ServerProcess {
            url,
            data_dir: data_dir.to_path_buf(),
            store: backend,
            process,
        }
    }

    /// The etcd endpoints and key prefix this server keeps its cluster under, on etcd.
    pub fn etcd_location(&self) -> Option<(String, String)> {
        (self.store == store::Backend::Etcd).then(|| store::etcd_location(&self.data_dir))
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The rest of a line the server printed before `api:`, such as `gateway:`.
    pub fn printed(&self, prefix: &str) -> Option<String> {
        self.process.printed(prefix)
    }

    /// An admin client, from the kubeconfig the server wrote.
    pub fn api(&self) -> Api {
        Api::from_kubeconfig(&self.kubeconfig())
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// The join token agents use (`K10<CA hash>::<id>.<secret>`).
    pub fn node_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(self) {
        self.process.kill9();
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub fn terminate(self, within: Duration) -> std::process::ExitStatus {
        self.process.terminate(within)
    }
}

/// Polls `check` until it returns Some, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A thin JSON client over reqwest that returns (status, body) for assertions.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    /// A client with no credentials (it trusts any certificate): for what anonymous
    /// users get.
    pub fn anonymous(base: &str) -> Api {
        Api {
            base: base.to_string(),
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .danger_accept_invalid_certs(true)
                .build()
                .unwrap(),
        }
    }

    /// A client as a kubeconfig describes it: the server, its CA and the bearer token.
    pub fn from_kubeconfig(path: &Path) -> Api {
        let kc = kube::config::Kubeconfig::read_from(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let cluster = kc.clusters[0].cluster.clone().expect("a cluster");
        let token = kc.auth_infos[0]
            .auth_info
            .as_ref()
            .and_then(|a| a.token.clone())
            .expect("a token");
        Self::with_token(
            cluster.server.as_deref().expect("a server URL"),
            cluster.certificate_authority_data.as_deref(),
            secrecy::ExposeSecret::expose_secret(&token),
        )
    }

    /// A client for `base` that trusts the CA (base64 PEM, as in a kubeconfig), or any
    /// certificate without one, and sends `token`.
    pub fn with_token(base: &str, ca_base64: Option<&str>, token: &str) -> Api {
        use base64::Engine;
        let mut builder = reqwest::Client::builder()
            .tcp_nodelay(true)
            .tls_built_in_root_certs(false);
        match ca_base64 {
            Some(ca) => {
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(ca)
                    .unwrap();
                builder =
                    builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
            }
            None => builder = builder.danger_accept_invalid_certs(true),
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Api {
            base: base.to_string(),
            http: builder.default_headers(headers).build().unwrap(),
        }
    }

    async fn finish(resp: reqwest::Response) -> (u16, Value) {
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(
            self.http
                .post(format!("{}{path}", self.base))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(
            self.http
                .put(format!("{}{path}", self.base))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn patch(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        let req = self
            .http
            .patch(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body.to_string());
        Self::finish(req.send().await.unwrap()).await
    }

    pub async fn delete(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.delete(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::finish(req.send().await.unwrap()).await
    }

    /// Uploads a module; returns its `sha256:` digest.
    pub async fn upload(&self, bytes: Vec<u8>) -> String {
        let (code, module) = self
            .raw(
                reqwest::Method::POST,
                "/apis/skiff.dev/v1/modules",
                "application/wasm",
                bytes,
            )
            .await;
        assert!(code == 201 || code == 200, "upload failed: {module}");
        module["digest"].as_str().expect("digest").to_string()
    }

    /// The text of a GET (for logs).
    pub async fn text(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.text().await.unwrap())
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body);
        Self::finish(req.send().await.unwrap()).await
    }

    /// Opens a watch and returns a reader of its events.
    pub async fn watch(&self, path: &str) -> WatchReader {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "watch {path} should open");
        WatchReader {
            resp,
            buf: Vec::new(),
        }
    }
}

pub struct WatchReader {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

impl WatchReader {
    /// The next event, or None when the stream ends or `timeout` passes.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line).expect("watch events are JSON lines"));
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }

    /// The next event that is not a BOOKMARK.
    pub async fn next_change(&mut self, timeout: Duration) -> Option<Value> {
        loop {
            let e = self.next(timeout).await?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

/// A ConfigMap body.
pub fn configmap(name: &str, labels: Value) -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"},
    })
}

/// A Pod body, optionally bound to a node.
pub fn pod(name: &str, node: Option<&str>) -> Value {
    let mut p = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": format!("sha256:{}", "0".repeat(64))}]},
    });
    if let Some(n) = node {
        p["spec"]["nodeName"] = n.into();
    }
    p
}

pub fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .parse()
        .expect("numeric resourceVersion")
}

/// A test CA and a serving certificate it signs for `names`, as PEM: (CA certificate,
/// server certificate, server key).
pub fn certificates(names: &[&str], common_name: &str) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, format!("{common_name}-ca"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.clone().self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().expect("a serving key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("valid names");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, &issuer)
        .expect("the serving certificate");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Runs the real kubectl (installed by scripts/test) against `kubeconfig`; panics with
/// its output if it fails, else returns what it printed.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl is installed by scripts/test");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `kubernetes.io/tls` Secret `secret` for `host`, made with kubectl from a test CA;
/// returns the path of that CA's certificate (for curl's `--cacert`), under `dir/tls`.
pub fn tls_secret(kubeconfig: &Path, dir: &Path, host: &str, secret: &str) -> PathBuf {
    let (ca, cert, key) = certificates(&[host], &format!("skiff-test-{secret}"));
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for (name, pem) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        std::fs::write(tls.join(name), pem).unwrap();
    }
    kubectl(
        kubeconfig,
        &[
            "create",
            "secret",
            "tls",
            secret,
            "--cert",
            tls.join("tls.crt").to_str().unwrap(),
            "--key",
            tls.join("tls.key").to_str().unwrap(),
        ],
    );
    tls.join("ca.crt")
}
