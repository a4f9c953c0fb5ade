//! A real OCI registry on loopback for the tests that pull or push Wasm: Debian's
//! `docker-registry` (the CNCF distribution registry, 2.8; installed by scripts/test),
//! on a free port, with its storage and log in a temporary directory.
//!
//! - [`shared_plain`] (plain HTTP, anonymous) and [`shared_secure`] (TLS from a test CA,
//!   htpasswd Basic auth) are one registry each for a whole test binary. Tests keep
//!   apart by repository name ([`repo`]).
//! - [`Registry::start`] is a private registry, for a test that stops and restarts it.
//! - [`push_layout`] pushes a Wasm artifact in one of the layouts seen in the wild.
//!
//! The registry writes an access-log line per request to its log file *after* the
//! response is sent, so a count read right after a pull may lag: wait for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

/// The htpasswd user of the secure registry.
pub const USERNAME: &str = "skiff";
/// Its password.
pub const PASSWORD: &str = "skiff-pw";
/// `skiff:` and the bcrypt hash of [`PASSWORD`] at cost 4 (the registry hashes on every
/// request, and accepts only bcrypt), made with libxcrypt through perl:
/// `perl -e 'print crypt("skiff-pw", q{$2b$04$abcdefghijklmnopqrstuu})'`.
const HTPASSWD: &str = "skiff:$2b$04$abcdefghijklmnopqrstuuxINSsSBS2hpzIljnWaJRezauxG83TtW\n";

/// How the registry lets clients in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Plain HTTP, anyone may pull and push.
    None,
    /// HTTPS with a certificate from a test CA ([`Registry::ca_path`]), and Basic auth
    /// against an htpasswd file ([`USERNAME`], [`PASSWORD`]) for every request.
    HtpasswdTls,
}

/// A registry process started by this test process.
pub struct Registry {
    auth: Auth,
    port: u16,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    ca_pem: Option<String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The registry binary: `$SKIFF_TEST_REGISTRY_BIN`, else Debian's.
fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("SKIFF_TEST_REGISTRY_BIN")
        && !bin.is_empty()
    {
        return PathBuf::from(bin);
    }
    let debian = PathBuf::from("/usr/bin/docker-registry");
    assert!(
        debian.exists(),
        "the OCI registry tests need Debian's docker-registry: `apt-get install \
         docker-registry` (scripts/test installs it), or point SKIFF_TEST_REGISTRY_BIN at \
         a distribution registry binary"
    );
    debian
}

/// A CA and a serving certificate for 127.0.0.1 and localhost it signs, as PEM:
/// (CA certificate, server certificate, server key).
fn certificates() -> (String, String, String) {
    super::certificates(&["127.0.0.1", "localhost"], "skiff-test-registry")
}

impl Registry {
    /// Starts a registry of its own in a temporary directory and waits until it answers.
    /// It dies with the thread that starts it (PR_SET_PDEATHSIG), so call this and
    /// [`Registry::start_again`] from the test's own thread or a runtime worker, not from
    /// `spawn_blocking` (whose threads end when idle).
    pub fn start(auth: Auth) -> Registry {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let mut registry = Self::start_in(temp.path().to_path_buf(), auth);
        registry._temp = Some(temp);
        registry
    }

    fn start_in(dir: PathBuf, auth: Auth) -> Registry {
        let port = free_port();
        let store = dir.join("store");
        let mut config = format!(
            "version: 0.1\n\
             log: {{level: warn, accesslog: {{disabled: false}}}}\n\
             storage:\n  filesystem: {{rootdirectory: {store}}}\n  delete: {{enabled: true}}\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: skiff-test-secret\n",
            store = store.display(),
        );
        let mut ca_pem = None;
        if auth == Auth::HtpasswdTls {
            let (ca, cert, key) = certificates();
            let write = |name: &str, text: &str| {
                std::fs::write(dir.join(name), text)
                    .unwrap_or_else(|e| panic!("writing {name} for the registry: {e}"));
            };
            write("ca.pem", &ca);
            write("server.pem", &cert);
            write("server.key", &key);
            // Written before the start: a missing file is created with a random user.
            write("htpasswd", HTPASSWD);
            config.push_str(&format!(
                "  tls: {{certificate: {dir}/server.pem, key: {dir}/server.key}}\n\
                 auth:\n  htpasswd: {{realm: skiff-test, path: {dir}/htpasswd}}\n",
                dir = dir.display(),
            ));
            ca_pem = Some(ca);
        }
        std::fs::write(dir.join("config.yml"), config).expect("writing the registry config");
        let mut registry = Registry {
            auth,
            port,
            dir,
            _temp: None,
            ca_pem,
            child: None,
        };
        registry.spawn();
        registry
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the registry's log file");
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file, twice"))
            .stderr(log);
        die_with_parent(&mut command);
        self.child = Some(command.spawn().expect("running the registry"));
        self.wait_ready(Duration::from_secs(30));
    }

    /// Polls `GET /v2/` until it answers 200 (plain) or 401 (secure, no credentials).
    fn wait_ready(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let code = self.v2_status();
            if code == "200" || code == "401" {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the registry exited ({status}); its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer /v2/ within {within:?} (last: {code:?}); \
                 see its log in {}",
                self.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status code of `GET /v2/` without credentials, from curl ("000" if none).
    fn v2_status(&self) -> String {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ]);
        if let Some(ca) = self.ca_path_opt() {
            curl.arg("--cacert").arg(ca);
        }
        curl.arg(format!("{}/v2/", self.url()));
        let out = curl
            .output()
            .expect("running curl (scripts/test installs it)");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the registry (SIGKILL), keeping its port, storage and log.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped registry again on the same port and storage.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        self.spawn();
    }

    pub fn auth_kind(&self) -> Auth {
        self.auth
    }

    /// `127.0.0.1:PORT`: the registry part of a reference.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match self.auth {
            Auth::None => format!("http://{}", self.addr()),
            Auth::HtpasswdTls => format!("https://{}", self.addr()),
        }
    }

    fn ca_path_opt(&self) -> Option<PathBuf> {
        self.ca_pem.as_ref().map(|_| self.dir.join("ca.pem"))
    }

    /// The file of the CA that signed the secure registry's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.ca_path_opt()
            .expect("only the secure registry (Auth::HtpasswdTls) has a CA")
    }

    /// The same CA, PEM.
    pub fn ca_pem(&self) -> &str {
        self.ca_pem
            .as_deref()
            .expect("only the secure registry (Auth::HtpasswdTls) has a CA")
    }

    pub fn username(&self) -> &'static str {
        assert_eq!(
            self.auth,
            Auth::HtpasswdTls,
            "the plain registry has no users"
        );
        USERNAME
    }

    pub fn password(&self) -> &'static str {
        assert_eq!(
            self.auth,
            Auth::HtpasswdTls,
            "the plain registry has no users"
        );
        PASSWORD
    }

    /// The file the registry keeps a blob's bytes in (distribution's filesystem
    /// layout), for a test that changes them behind its back.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .join("store/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Where the registry's output goes: its access log (one line per request, written
    /// when the response is done) and its warnings.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("registry.log")
    }

    /// How many blob GETs of `repo` the access log shows, whatever their status, for
    /// example `127.0.0.1 - - [07/Dec/2026:04:46:09 +0000] "GET
    /// /v2/REPO/blobs/sha256:HEX HTTP/1.1" 200 1234 "" "oci-client/0.15.0"`. HEADs do
    /// not count.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/sha256:");
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }

    /// The credentials a client needs here: Basic for the secure registry.
    pub fn registry_auth(&self) -> RegistryAuth {
        match self.auth {
            Auth::None => RegistryAuth::Anonymous,
            Auth::HtpasswdTls => RegistryAuth::Basic(USERNAME.into(), PASSWORD.into()),
        }
    }

    /// An oci-client that reaches this registry: over plain HTTP, or trusting its CA.
    pub fn client(&self) -> Client {
        let mut config = ClientConfig {
            protocol: ClientProtocol::Https,
            ..Default::default()
        };
        match &self.ca_pem {
            None => config.protocol = ClientProtocol::Http,
            Some(pem) => config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            }),
        }
        Client::try_from(config).expect("an OCI client")
    }

    /// `ADDR/REPO_TAG` parsed, for the client.
    pub fn reference(&self, repo_tag: &str) -> Reference {
        format!("{}/{repo_tag}", self.addr())
            .parse()
            .unwrap_or_else(|e| panic!("{repo_tag:?} is not a repository[:tag]: {e}"))
    }

    /// Pulls a manifest (with this registry's credentials) and its digest.
    pub async fn pull_manifest(&self, repo_tag: &str) -> (OciImageManifest, String) {
        let reference = self.reference(repo_tag);
        let (manifest, digest) = self
            .client()
            .pull_manifest(&reference, &self.registry_auth())
            .await
            .unwrap_or_else(|e| panic!("pulling the manifest of {reference}: {e}"));
        match manifest {
            OciManifest::Image(image) => (image, digest),
            OciManifest::ImageIndex(_) => panic!("{reference} is an index, not an image"),
        }
    }

    /// Pulls a blob of `repo_tag`'s repository whole.
    pub async fn pull_blob(&self, repo_tag: &str, descriptor: &OciDescriptor) -> Vec<u8> {
        let reference = self.reference(repo_tag);
        let client = self.client();
        client
            .auth(
                &reference,
                &self.registry_auth(),
                oci_client::RegistryOperation::Pull,
            )
            .await
            .unwrap_or_else(|e| panic!("authenticating to pull from {reference}: {e}"));
        let mut out = Vec::new();
        client
            .pull_blob(&reference, descriptor, &mut out)
            .await
            .unwrap_or_else(|e| panic!("pulling {} of {reference}: {e}", descriptor.digest));
        out
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a child die with the thread that spawned it, so no registry outlives its test.
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

/// The plain-HTTP, anonymous registry this test binary shares.
pub fn shared_plain() -> &'static Registry {
    static PLAIN: OnceLock<Registry> = OnceLock::new();
    PLAIN.get_or_init(|| start_shared(Auth::None, "plain"))
}

/// The TLS and htpasswd registry this test binary shares.
pub fn shared_secure() -> &'static Registry {
    static SECURE: OnceLock<Registry> = OnceLock::new();
    SECURE.get_or_init(|| start_shared(Auth::HtpasswdTls, "secure"))
}

/// Starts a shared registry. PR_SET_PDEATHSIG fires when the spawning *thread* ends, so
/// it is started from a thread that lives as long as the process; the registry itself
/// is handed back (a `Child` may be waited on from any thread).
fn start_shared(auth: Auth, which: &str) -> Registry {
    let dir = std::env::temp_dir().join(format!(
        "skiff-test-registry-{which}-{}",
        std::process::id()
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the shared registry");
        let registry = Registry::start_in(dir.clone(), auth);
        if let Some(pid) = registry
            .child
            .as_ref()
            .and_then(|c| libc::pid_t::try_from(c.id()).ok())
        {
            let mut shared = SHARED_TO_REMOVE.lock().expect("not poisoned");
            if shared.is_empty() {
                // SAFETY: registers a plain function with no arguments.
                unsafe { libc::atexit(remove_shared) };
            }
            shared.push((pid, dir));
        }
        tx.send(registry).expect("the test waits");
        loop {
            std::thread::park();
        }
    });
    rx.recv().expect("the shared registry started")
}

/// The shared registries' processes and directories, for [`remove_shared`].
static SHARED_TO_REMOVE: std::sync::Mutex<Vec<(libc::pid_t, PathBuf)>> =
    std::sync::Mutex::new(Vec::new());

/// At exit, stops the shared registries and removes their storage and logs.
extern "C" fn remove_shared() {
    let Ok(shared) = SHARED_TO_REMOVE.lock() else {
        return;
    };
    for (pid, dir) in shared.iter() {
        // SAFETY: signals and reaps this process's own child; no memory is shared.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh repository name (`TEST-PID-N/NAME`), so tests on one registry never see
/// each other's artifacts.
pub fn repo(test: &str, name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{test}-{}-{n}/{name}", std::process::id())
}

/// The artifact layouts Wasm is pushed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The CNCF Wasm layout (what oci-wasm, wkg and `skiff push` write): config
    /// `application/vnd.wasm.config.v0+json`, one `application/wasm` layer.
    Cncf,
    /// Spin's (`spin registry push`): config
    /// `application/vnd.fermyon.spin.application.v1+config` (the locked app), one
    /// `application/vnd.wasm.content.layer.v1+wasm` layer and one
    /// `application/vnd.wasm.content.layer.v1+data` layer (a static file).
    Spin,
    /// runwasi's (containerd's Wasm shims): an OCI image config and one
    /// `application/vnd.bytecodealliance.wasm.component.layer.v0+wasm` layer.
    Runwasi,
    /// A container image: an OCI image config and one
    /// `application/vnd.oci.image.layer.v1.tar+gzip` layer (holding the Wasm as a file).
    Odd,
}

pub const CNCF_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const CNCF_LAYER: &str = "application/wasm";
pub const SPIN_CONFIG: &str = "application/vnd.fermyon.spin.application.v1+config";
pub const SPIN_WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
pub const SPIN_DATA_LAYER: &str = "application/vnd.wasm.content.layer.v1+data";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const RUNWASI_LAYER: &str = "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm";
pub const TAR_GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.into(),
        digest: sha256(bytes),
        size: bytes.len() as i64,
        ..Default::default()
    }
}

/// The wasm in a gzipped tar as `app.wasm`: a container image's layer.
fn tar_gz(wasm: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app.wasm", wasm)
        .expect("a tar entry");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("a gzipped tar")
}

/// Pushes `wasm` to `reg` as `REPO:TAG` (`repo_tag`, under the registry's address) in
/// `layout`, uncompressed (so the Wasm layer's digest is the sha256 of `wasm`), with the
/// registry's credentials; returns the manifest's digest.
pub async fn push_layout(reg: &Registry, repo_tag: &str, layout: Layout, wasm: &[u8]) -> String {
    push_layout_as(reg, repo_tag, layout, wasm, &reg.registry_auth())
        .await
        .unwrap_or_else(|e| panic!("pushing {repo_tag} ({layout:?}) to {}: {e}", reg.addr()))
}

/// [`push_layout`] with the given credentials (to see a wrong password refused),
/// returning the registry's error.
pub async fn push_layout_as(
    reg: &Registry,
    repo_tag: &str,
    layout: Layout,
    wasm: &[u8],
    auth: &RegistryAuth,
) -> Result<String, OciDistributionError> {
    let reference = reg.reference(repo_tag);
    let os = if wasm.get(4..8) == Some(&[0x0d, 0, 1, 0]) {
        "wasip2"
    } else {
        "wasip1"
    };
    let image_config = serde_json::json!({
        "architecture": "wasm",
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": [sha256(wasm)]},
        "config": {"Entrypoint": ["/app.wasm"]},
    });
    let (config_type, config, layers) = match layout {
        // What oci-wasm's WasmConfig serialises (without the WIT it decodes).
        Layout::Cncf => (
            CNCF_CONFIG,
            serde_json::to_vec(&serde_json::json!({
                "created": "2026-12-07T00:00:00Z",
                "architecture": "wasm",
                "os": os,
                "layerDigests": [sha256(wasm)],
            }))
            .expect("JSON"),
            vec![(CNCF_LAYER, wasm.to_vec())],
        ),
        Layout::Spin => (
            SPIN_CONFIG,
            serde_json::to_vec(&serde_json::json!({
                "spin_lock_version": 1,
                "metadata": {"name": "app", "version": "0.1.0"},
                "triggers": [{"id": "t0", "trigger_type": "http",
                              "trigger_config": {"component": "app", "route": "/..."}}],
                "components": [{"id": "app", "source": {
                    "content_type": "application/wasm",
                    "content": {"digest": sha256(wasm)}}}],
            }))
            .expect("JSON"),
            vec![
                (SPIN_WASM_LAYER, wasm.to_vec()),
                (SPIN_DATA_LAYER, b"static file content\n".to_vec()),
            ],
        ),
        Layout::Runwasi => (
            OCI_IMAGE_CONFIG,
            serde_json::to_vec(&image_config).expect("JSON"),
            vec![(RUNWASI_LAYER, wasm.to_vec())],
        ),
        Layout::Odd => (
            OCI_IMAGE_CONFIG,
            serde_json::to_vec(&image_config).expect("JSON"),
            vec![(TAR_GZIP_LAYER, tar_gz(wasm))],
        ),
    };
    let client = reg.client();
    client
        .auth(&reference, auth, oci_client::RegistryOperation::Push)
        .await?;
    let mut manifest = OciImageManifest {
        media_type: Some(OCI_MANIFEST.into()),
        config: descriptor(config_type, &config),
        ..Default::default()
    };
    for (media_type, bytes) in &layers {
        client.push_blob(&reference, bytes, &sha256(bytes)).await?;
        manifest.layers.push(descriptor(media_type, bytes));
    }
    client
        .push_blob(&reference, &config, &sha256(&config))
        .await?;
    let body = serde_json::to_vec(&manifest).expect("JSON");
    client
        .push_manifest_raw(
            &reference,
            body.clone(),
            OCI_MANIFEST.parse().expect("a header value"),
        )
        .await?;
    Ok(sha256(&body))
}

/// The path of a built workload, for the CLI.
pub fn workload_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads/bin")
        .join(name)
}
