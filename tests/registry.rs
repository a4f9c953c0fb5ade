//! Wasm from OCI registries, against a real registry (Debian's docker-registry, the CNCF
//! distribution registry; see common/registry.rs): the fixture itself, and `skiff push`
//! writing the CNCF Wasm layout that other tools read, to a plain-HTTP registry and to
//! one behind TLS and htpasswd with credentials from a Docker config.

mod common;

use std::process::Command;

use base64::Engine;
use common::registry::{self, Auth, Layout, Registry, push_layout, repo, sha256};
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use std::time::Duration;

/// The fixture's own checks: the plain registry answers anonymously; the secure one
/// over TLS from its CA, 401 without credentials, 200 with them and 401 with a wrong
/// password; each layout pushed comes back as pushed.
#[tokio::test]
async fn the_registries_answer() {
    let plain = registry::shared_plain();
    let secure = registry::shared_secure();
    let status = |r: reqwest::Response| r.status().as_u16();

    let http = reqwest::Client::new();
    let got = http.get(format!("{}/v2/", plain.url())).send().await;
    assert_eq!(got.map(status).expect("the plain registry answers"), 200);

    let tls = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(secure.ca_pem().as_bytes()).expect("a PEM CA"),
        )
        .build()
        .expect("a TLS client");
    let v2 = format!("{}/v2/", secure.url());
    let anonymous = tls
        .get(&v2)
        .send()
        .await
        .expect("the secure registry answers");
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        anonymous.headers()["www-authenticate"],
        "Basic realm=\"skiff-test\""
    );
    let with = tls
        .get(&v2)
        .basic_auth(secure.username(), Some(secure.password()))
        .send()
        .await;
    assert_eq!(with.map(status).expect("an answer"), 200);
    let wrong = tls
        .get(&v2)
        .basic_auth(secure.username(), Some("not-the-password"))
        .send()
        .await;
    assert_eq!(wrong.map(status).expect("an answer"), 401);

    let wasm = common::workload("http-hello.wasm");
    for (reg, layout) in [
        (plain, Layout::Cncf),
        (plain, Layout::Spin),
        (plain, Layout::Runwasi),
        (plain, Layout::Odd),
        (secure, Layout::Cncf),
    ] {
        let name = repo("fixture", "app");
        let tag = format!("{name}:v1");
        let digest = push_layout(reg, &tag, layout, &wasm).await;
        let (manifest, pulled) = reg.pull_manifest(&tag).await;
        assert_eq!(pulled, digest, "{layout:?}: the manifest digest");
        let types: Vec<&str> = manifest
            .layers
            .iter()
            .map(|l| l.media_type.as_str())
            .collect();
        let (config, wasm_layer) = match layout {
            Layout::Cncf => (registry::CNCF_CONFIG, registry::CNCF_LAYER),
            Layout::Spin => (registry::SPIN_CONFIG, registry::SPIN_WASM_LAYER),
            Layout::Runwasi => (registry::OCI_IMAGE_CONFIG, registry::RUNWASI_LAYER),
            Layout::Odd => (registry::OCI_IMAGE_CONFIG, registry::TAR_GZIP_LAYER),
        };
        assert_eq!(manifest.config.media_type, config, "{layout:?}");
        assert_eq!(types[0], wasm_layer, "{layout:?}");
        let expected_layers = if layout == Layout::Spin { 2 } else { 1 };
        assert_eq!(types.len(), expected_layers, "{layout:?}: {types:?}");
        if layout == Layout::Spin {
            assert_eq!(types[1], registry::SPIN_DATA_LAYER);
        }
        if layout != Layout::Odd {
            // Uncompressed: the layer's digest is the Wasm's own.
            assert_eq!(manifest.layers[0].digest, sha256(&wasm), "{layout:?}");
            let blob = reg.pull_blob(&tag, &manifest.layers[0]).await;
            assert!(blob == wasm, "{layout:?}: the layer is the Wasm");
        }
        // The access log counts the GET of the blob just pulled (logged after the
        // response, so possibly a moment later).
        if layout == Layout::Cncf {
            common::eventually(
                "the blob GET in the access log",
                std::time::Duration::from_secs(10),
                || async { (reg.blob_gets(&name) == 1).then_some(()) },
            )
            .await;
        }
    }

    // A wrong password is refused on the first request that needs it (the Basic
    // challenge on /v2/ does not check it: oci-client's auth step passes).
    let wrong = RegistryAuth::Basic(secure.username().into(), "not-the-password".into());
    let tag = format!("{}:v1", repo("fixture", "refused"));
    let refused = registry::push_layout_as(secure, &tag, Layout::Cncf, &wasm, &wrong).await;
    let error = refused.expect_err("a push with a wrong password went through");
    assert!(
        error.to_string().to_lowercase().contains("unauthorized")
            || error.to_string().contains("401"),
        "{error}"
    );
}

/// A registry of its own stops and starts again on the same port with what it held.
#[tokio::test]
async fn a_registry_restarts_with_its_contents() {
    let mut reg = Registry::start(Auth::None);
    let addr = reg.addr();
    let digest = push_layout(&reg, "restart/app:v1", Layout::Cncf, b"\0asm\x01\0\0\0").await;
    reg.stop();
    let http = reqwest::Client::new();
    let down = http.get(format!("{}/v2/", reg.url())).send().await;
    assert!(down.is_err(), "a stopped registry still answers");
    reg.start_again();
    assert_eq!(reg.addr(), addr);
    assert_eq!(reg.pull_manifest("restart/app:v1").await.1, digest);
}

/// Runs `skiff ARGS` with `envs`; returns (success, stdout, stderr). `DOCKER_CONFIG` is
/// an empty directory unless `envs` sets it, so the runner's own Docker login is never
/// read.
fn skiff(args: &[&str], envs: &[(&str, &std::path::Path)]) -> (bool, String, String) {
    let empty = tempfile::tempdir().expect("a temporary directory");
    let mut command = Command::new(env!("CARGO_BIN_EXE_skiff"));
    command.args(args).env("DOCKER_CONFIG", empty.path());
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("running skiff");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The manifest digest `skiff push` printed (`pushed REF@sha256:<hex>`).
fn pushed_digest(stdout: &str, reference: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pushed "))
        .unwrap_or_else(|| panic!("no `pushed` line in {stdout:?}"));
    let (pushed, digest) = line["pushed ".len()..]
        .split_once('@')
        .unwrap_or_else(|| panic!("no digest in {line:?}"));
    assert_eq!(pushed, reference);
    assert!(
        digest.len() == 71 && digest.starts_with("sha256:"),
        "{digest:?} is not a sha256 digest"
    );
    digest.to_string()
}

/// Reads back what `skiff push` wrote, as any OCI client would, and checks the CNCF
/// Wasm layout: the config type, `os: wasip2` for a component, one `application/wasm`
/// layer that is the file itself.
async fn check_cncf_layout(reg: &Registry, repo_tag: &str, digest: &str, file: &[u8]) {
    let (manifest, pulled) = reg.pull_manifest(repo_tag).await;
    assert_eq!(pulled, digest, "the digest skiff push printed");
    assert_eq!(manifest.media_type.as_deref(), Some(registry::OCI_MANIFEST));
    assert_eq!(manifest.artifact_type, None);
    assert_eq!(manifest.config.media_type, registry::CNCF_CONFIG);
    assert_eq!(manifest.layers.len(), 1, "{:?}", manifest.layers);
    let layer = &manifest.layers[0];
    assert_eq!(layer.media_type, registry::CNCF_LAYER);
    assert_eq!(layer.digest, sha256(file));
    assert_eq!(layer.size, file.len() as i64);
    let config: serde_json::Value =
        serde_json::from_slice(&reg.pull_blob(repo_tag, &manifest.config).await)
            .expect("a JSON config");
    assert_eq!(config["os"], "wasip2", "{config}");
    assert_eq!(config["architecture"], "wasm", "{config}");
    assert_eq!(config["layerDigests"][0], sha256(file), "{config}");
    // oci-wasm decodes the component's WIT world into the config.
    assert!(
        config["component"]["exports"]
            .as_array()
            .is_some_and(|e| e.iter().any(|x| x
                .as_str()
                .is_some_and(|x| x.starts_with("wasi:http/incoming-handler@")))),
        "the config names the component's exports: {config}"
    );
    assert!(reg.pull_blob(repo_tag, layer).await == file, "the layer");
}

/// `skiff push` to a plain-HTTP registry writes the CNCF layout; without
/// `--plain-http` it fails and says to pass it.
#[tokio::test]
async fn skiff_push_writes_the_cncf_layout() {
    let reg = registry::shared_plain();
    let path = registry::workload_path("http-hello.wasm");
    let file = std::fs::read(&path).expect("the workload");
    let repo_tag = format!("t-{}/hello:v1", std::process::id());
    let reference = format!("{}/{repo_tag}", reg.addr());
    let file_arg = path.to_str().expect("a UTF-8 path");
    let (ok, stdout, stderr) = skiff(&["push", file_arg, &reference, "--plain-http"], &[]);
    assert!(ok, "skiff push failed: {stderr}");
    // No Docker config is no login, not a warning.
    assert!(!stderr.contains("WARN"), "{stderr}");
    let digest = pushed_digest(&stdout, &reference);
    check_cncf_layout(reg, &repo_tag, &digest, &file).await;

    // Again, with oci:// in front (dropped): the tag moves to the new manifest (its
    // config has a new `created`), and the layer is the same blob.
    let (ok, stdout, stderr) = skiff(
        &[
            "push",
            file_arg,
            &format!("oci://{reference}"),
            "--plain-http",
        ],
        &[],
    );
    assert!(ok, "pushing again with oci:// failed: {stderr}");
    let again = pushed_digest(&stdout, &reference);
    check_cncf_layout(reg, &repo_tag, &again, &file).await;

    let (ok, stdout, stderr) = skiff(&["push", file_arg, &reference], &[]);
    assert!(
        !ok,
        "a push over HTTPS to a plain-HTTP registry worked: {stdout}"
    );
    assert!(
        stderr.contains(&format!("could not reach {}", reg.addr()))
            && stderr.contains("--plain-http"),
        "the error does not point at --plain-http: {stderr}"
    );
}

/// `skiff push` to a registry behind TLS (`--ca`) and htpasswd takes its credentials
/// from `$DOCKER_CONFIG/config.json`, as `docker login` leaves them; without them it is
/// refused with a hint about docker login.
#[tokio::test]
async fn skiff_push_logs_in_from_the_docker_config() {
    let reg = registry::shared_secure();
    let path = registry::workload_path("http-hello.wasm");
    let file = std::fs::read(&path).expect("the workload");
    let file_arg = path.to_str().expect("a UTF-8 path");
    let ca = reg.ca_path();
    let ca_arg = ca.to_str().expect("a UTF-8 path");
    let repo_tag = format!("t-{}/private:v1", std::process::id());
    let reference = format!("{}/{repo_tag}", reg.addr());

    let docker = tempfile::tempdir().expect("a temporary directory");
    let (ok, stdout, stderr) = skiff(
        &["push", file_arg, &reference, "--ca", ca_arg],
        &[("DOCKER_CONFIG", docker.path())],
    );
    assert!(!ok, "an anonymous push went through: {stdout}");
    assert!(
        stderr.contains("unauthorized") && stderr.contains("docker login"),
        "the error does not say what to do: {stderr}"
    );

    let (ok, _, stderr) = skiff(
        &["push", file_arg, &reference],
        &[("DOCKER_CONFIG", docker.path())],
    );
    assert!(!ok, "a push trusting no private CA went through");
    assert!(
        stderr.contains("--ca"),
        "the error does not point at --ca: {stderr}"
    );

    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        reg.username(),
        reg.password()
    ));
    std::fs::write(
        docker.path().join("config.json"),
        serde_json::json!({"auths": {reg.addr(): {"auth": auth}}}).to_string(),
    )
    .expect("writing the Docker config");
    let (ok, stdout, stderr) = skiff(
        &["push", file_arg, &reference, "--ca", ca_arg],
        &[("DOCKER_CONFIG", docker.path())],
    );
    assert!(ok, "skiff push with credentials failed: {stderr}");
    let digest = pushed_digest(&stdout, &reference);
    check_cncf_layout(reg, &repo_tag, &digest, &file).await;
}

/// `skiff push` then `skiff deploy oci://REF`: nothing is uploaded to the cluster, the
/// App names the normalised reference and the pull secrets (a missing one is only a
/// warning), the pods pull the pushed artifact, the App's status and the command show
/// the digest it resolved to, and the app answers through the gateway. A reference whose
/// first part is HOST:PORT needs no `oci://`.
#[tokio::test]
async fn skiff_push_then_skiff_deploy_oci_serves_the_app() {
    let reg = registry::shared_plain();
    let repo_tag = format!("{}:v1", repo("deploy", "hello"));
    let reference = format!("{}/{repo_tag}", reg.addr());
    let file = registry::workload_path("http-hello.wasm");
    let (ok, stdout, stderr) = skiff(
        &["push", file.to_str().unwrap(), &reference, "--plain-http"],
        &[],
    );
    assert!(ok, "skiff push failed: {stderr}");
    let digest = pushed_digest(&stdout, &reference);
    let image_id = format!(
        "{}/{}@{digest}",
        reg.addr(),
        repo_tag.trim_end_matches(":v1")
    );

    let (dir, _server, api) = cluster_for(&[]);
    let kubeconfig = dir.path().join("kubeconfig");
    let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path").to_string();
    let deploy = |source: String, name: &'static str| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            skiff(
                &[
                    "deploy",
                    &source,
                    "--name",
                    name,
                    "--pull-secret",
                    "regcred",
                    "--pull-secret",
                    "other",
                    "--timeout",
                    "60s",
                    "--kubeconfig",
                    &kubeconfig,
                ],
                &[],
            )
        })
    };
    for (source, name) in [
        (format!("oci://{reference}"), "web"),
        (reference.clone(), "bare"),
    ] {
        let (ok, stdout, stderr) = deploy(source, name).await.expect("skiff ran");
        assert!(ok, "skiff deploy {name} failed: {stdout}{stderr}");
        assert!(stdout.contains(&format!("image: {image_id}")), "{stdout}");
        let url = stdout
            .lines()
            .find_map(|l| {
                l.split_once(" is serving at ")
                    .map(|(_, u)| u.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no URL in {stdout:?}"));
        let body = common::eventually("the app answering", WAIT, || async {
            let r = reqwest::get(&url).await.ok()?;
            r.status().is_success().then_some(r.text().await.ok()?)
        })
        .await;
        assert!(!body.is_empty());

        let (code, app) = api
            .get(&format!(
                "/apis/skiff.dev/v1/namespaces/default/apps/{name}"
            ))
            .await;
        assert_eq!(code, 200, "{app}");
        assert_eq!(app["spec"]["module"], reference.as_str(), "{app}");
        assert_eq!(app["status"]["imageID"], image_id.as_str(), "{app}");
        let secrets = serde_json::json!([{"name": "regcred"}, {"name": "other"}]);
        assert_eq!(app["spec"]["imagePullSecrets"], secrets, "{app}");
        let (_, d) = api
            .get(&format!(
                "/apis/apps/v1/namespaces/default/deployments/{name}"
            ))
            .await;
        let template = &d["spec"]["template"]["spec"];
        assert_eq!(
            template["containers"][0]["image"],
            reference.as_str(),
            "{template}"
        );
        assert_eq!(template["imagePullSecrets"], secrets, "{template}");
    }
    // Nothing was uploaded to the cluster's module store.
    let (code, modules) = api.get("/apis/skiff.dev/v1/modules").await;
    assert_eq!(code, 200, "{modules}");
    assert_eq!(modules["items"], serde_json::json!([]), "{modules}");
}

// ---- Pods whose images come from the registry ----------------------------------------

/// A `skiff dev` cluster whose agent trusts the test registries: the plain one over
/// HTTP, the secure one through its CA; quick back-off so retries show within seconds.
fn cluster_for(extra: &[&str]) -> (tempfile::TempDir, common::Process, common::Api) {
    let plain = registry::shared_plain().addr();
    let ca = registry::shared_secure().ca_path();
    let mut args = vec![
        "--insecure-registry".to_string(),
        plain,
        "--registry-ca".to_string(),
        ca.to_str().unwrap().to_string(),
        "--backoff-base".to_string(),
        "200ms".to_string(),
        "--backoff-max".to_string(),
        "1s".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::dev_cluster(1, &args)
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn image_pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}]},
    })
}

async fn create(api: &common::Api, pod: Value) {
    let (code, body) = api.post(PODS, &pod).await;
    assert_eq!(code, 201, "{body}");
}

fn first_container(pod: &Value) -> &Value {
    &pod["status"]["containerStatuses"][0]
}

/// Waits until the pod is Running and returns it; a timeout shows the pod's last
/// container state and events.
async fn running(api: &common::Api, name: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, pod) = api.get(&format!("{PODS}/{name}")).await;
        if pod["status"]["phase"] == "Running" {
            return pod;
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "pod {name} not Running after {WAIT:?}: {}; events {:?}",
                first_container(&pod)["state"],
                events(api, name).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the pod's container waits for `reason`, and returns its message.
async fn waiting(api: &common::Api, name: &str, reason: &str) -> String {
    common::eventually(
        &format!("pod {name} waiting with {reason}"),
        WAIT,
        || async {
            let (_, pod) = api.get(&format!("{PODS}/{name}")).await;
            let w = &first_container(&pod)["state"]["waiting"];
            (w["reason"] == reason).then(|| w["message"].as_str().unwrap_or_default().to_string())
        },
    )
    .await
}

/// The pod's events as (reason, message), oldest first.
async fn events(api: &common::Api, name: &str) -> Vec<(String, String)> {
    let (_, list) = api
        .get(&format!(
            "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
        ))
        .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits for an event of the pod whose message contains `text`.
async fn event_saying(api: &common::Api, name: &str, reason: &str, text: &str) -> String {
    common::eventually(
        &format!("a {reason} event of {name} saying {text:?}"),
        WAIT,
        || async {
            events(api, name)
                .await
                .into_iter()
                .find(|(r, m)| r == reason && m.contains(text))
                .map(|(_, m)| m)
        },
    )
    .await
}

const WAIT: Duration = Duration::from_secs(30);

/// Pushes the wasi:http hello component as `REPO:TAG` in the CNCF layout; returns the
/// manifest's digest.
async fn push_hello(reg: &Registry, repo: &str, tag: &str) -> String {
    push_layout(
        reg,
        &format!("{repo}:{tag}"),
        Layout::Cncf,
        &common::workload("http-hello.wasm"),
    )
    .await
}

#[tokio::test]
async fn pods_pull_by_tag_and_by_digest_in_each_layout() {
    let reg = registry::shared_plain();
    let (_d, _p, api) = cluster_for(&[]);
    let wasm = common::workload("http-hello.wasm");

    let cncf = repo("layouts", "cncf");
    let digest = push_layout(reg, &format!("{cncf}:v1"), Layout::Cncf, &wasm).await;
    let by_tag = format!("{}/{cncf}:v1", reg.addr());
    create(&api, image_pod("by-tag", &by_tag)).await;
    let pod = running(&api, "by-tag").await;
    assert_eq!(
        first_container(&pod)["imageID"],
        format!("{}/{cncf}@{digest}", reg.addr()),
        "{pod}"
    );
    assert_eq!(first_container(&pod)["image"], by_tag.as_str());
    // A tag is IfNotPresent by default, as in Kubernetes.
    assert_eq!(
        pod["spec"]["containers"][0]["imagePullPolicy"],
        "IfNotPresent"
    );
    let pulled = event_saying(&api, "by-tag", "Pulled", "Successfully pulled image").await;
    assert!(
        pulled.contains(&format!("Image size: {} bytes", wasm.len()))
            && pulled.contains("including waiting")
            && pulled.contains("transfer "),
        "{pulled}"
    );
    event_saying(
        &api,
        "by-tag",
        "Pulling",
        &format!("Pulling image \"{by_tag}\""),
    )
    .await;

    let by_digest = format!("{}/{cncf}@{digest}", reg.addr());
    create(&api, image_pod("by-digest", &by_digest)).await;
    let pod = running(&api, "by-digest").await;
    assert_eq!(first_container(&pod)["imageID"], by_digest.as_str());
    event_saying(&api, "by-digest", "Pulled", "already present on machine").await;

    for (name, layout) in [("spin", Layout::Spin), ("runwasi", Layout::Runwasi)] {
        let r = repo("layouts", name);
        let d = push_layout(reg, &format!("{r}:1.0"), layout, &wasm).await;
        create(&api, image_pod(name, &format!("{}/{r}:1.0", reg.addr()))).await;
        let pod = running(&api, name).await;
        assert_eq!(
            first_container(&pod)["imageID"],
            format!("{}/{r}@{d}", reg.addr())
        );
    }

    let odd = repo("layouts", "container");
    push_layout(reg, &format!("{odd}:1"), Layout::Odd, &wasm).await;
    create(&api, image_pod("odd", &format!("{}/{odd}:1", reg.addr()))).await;
    let message = waiting(&api, "odd", "ErrImagePull").await;
    assert!(
        message.contains("application/vnd.oci.image.layer.v1.tar+gzip"),
        "{message}"
    );
}

#[tokio::test]
async fn a_wrong_digest_is_refused_and_nothing_is_cached() {
    let reg = registry::shared_plain();
    let (dir, _p, api) = cluster_for(&[]);
    // Bytes of its own, so no other test's pull could have put them in a cache.
    let mut wasm = common::workload("http-hello.wasm");
    wasm.extend_from_slice(&custom_section(b"wrong-digest"));
    let r = repo("digest", "app");
    let digest = push_layout(reg, &format!("{r}:v1"), Layout::Cncf, &wasm).await;

    // A digest the registry does not have.
    let other = format!("sha256:{}", "1".repeat(64));
    create(
        &api,
        image_pod("unknown", &format!("{}/{r}@{other}", reg.addr())),
    )
    .await;
    let message = waiting(&api, "unknown", "ErrImagePull").await;
    assert!(message.contains("not found"), "{message}");

    // The registry's copy of the layer is changed behind its back: what it serves no
    // longer hashes to the digest the manifest names.
    let layer = sha256(&wasm);
    let data = reg.blob_path(&layer);
    let mut tampered = std::fs::read(&data).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    std::fs::write(&data, &tampered).unwrap();
    create(
        &api,
        image_pod("tampered", &format!("{}/{r}@{digest}", reg.addr())),
    )
    .await;
    let message = waiting(&api, "tampered", "ErrImagePull").await;
    assert!(message.contains("digest"), "{message}");
    let hex = layer.trim_start_matches("sha256:");
    let cached: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(hex))
        .collect();
    assert!(cached.is_empty(), "the refused layer was kept: {cached:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A Wasm custom section, to make bytes of a guest that differ but still run.
fn custom_section(name: &[u8]) -> Vec<u8> {
    let mut section = vec![0u8];
    let body_len = 1 + name.len();
    assert!(body_len < 128 && name.len() < 128);
    section.push(body_len as u8);
    section.push(name.len() as u8);
    section.extend_from_slice(name);
    section
}

#[tokio::test]
async fn a_missing_image_backs_off_then_runs_once_pushed() {
    let reg = registry::shared_plain();
    let (_d, _p, api) = cluster_for(&[]);
    let r = repo("missing", "app");
    let image = format!("{}/{r}:v1", reg.addr());
    create(&api, image_pod("later", &image)).await;
    let message = waiting(&api, "later", "ErrImagePull").await;
    assert!(message.contains("not found"), "{message}");
    let message = waiting(&api, "later", "ImagePullBackOff").await;
    assert!(message.contains("Back-off pulling image"), "{message}");
    push_hello(reg, &r, "v1").await;
    running(&api, "later").await;
}

fn pull_secret(name: &str, registry: &str, user: &str, password: &str) -> Value {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config = json!({"auths": {registry: {"auth": b64(&format!("{user}:{password}"))}}});
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&config.to_string())},
    })
}

#[tokio::test]
async fn a_private_registry_needs_the_pull_secret() {
    let reg = registry::shared_secure();
    let (_d, _p, api) = cluster_for(&[]);
    let r = repo("private", "app");
    push_hello(reg, &r, "v1").await;
    let image = format!("{}/{r}:v1", reg.addr());

    create(&api, image_pod("no-secret", &image)).await;
    let message = waiting(&api, "no-secret", "ErrImagePull").await;
    assert!(message.contains("imagePullSecrets"), "{message}");

    let secrets = "/api/v1/namespaces/default/secrets";
    let (code, body) = api
        .post(
            secrets,
            &pull_secret("wrong", &reg.addr(), registry::USERNAME, "not-the-password"),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let mut pod = image_pod("wrong-secret", &image);
    pod["spec"]["imagePullSecrets"] = json!([{"name": "wrong"}]);
    create(&api, pod).await;
    let message = waiting(&api, "wrong-secret", "ErrImagePull").await;
    assert!(message.contains("imagePullSecrets"), "{message}");

    let (code, body) = api
        .post(
            secrets,
            &pull_secret("right", &reg.addr(), registry::USERNAME, registry::PASSWORD),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let mut pod = image_pod("with-secret", &image);
    // The wrong one first: each is tried in turn, as the kubelet does.
    pod["spec"]["imagePullSecrets"] = json!([{"name": "wrong"}, {"name": "right"}]);
    create(&api, pod).await;
    running(&api, "with-secret").await;

    // A secret that does not exist is a warning, not a failure, as in the kubelet.
    let mut pod = image_pod("missing-secret", &image);
    pod["spec"]["imagePullSecrets"] = json!([{"name": "nowhere"}, {"name": "right"}]);
    create(&api, pod).await;
    running(&api, "missing-secret").await;
    event_saying(
        &api,
        "missing-secret",
        "Failed",
        "Unable to retrieve some image pull secrets (nowhere)",
    )
    .await;
}

#[tokio::test]
async fn a_hundred_pods_of_one_image_download_it_once() {
    let reg = registry::shared_plain();
    let (_d, _p, api) = cluster_for(&[]);
    let r = repo("hundred", "app");
    let mut wasm = common::workload("http-hello.wasm");
    wasm.extend_from_slice(&custom_section(b"hundred"));
    push_layout(reg, &format!("{r}:latest"), Layout::Cncf, &wasm).await;
    let image = format!("{}/{r}", reg.addr());
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hundred"},
        "spec": {
            "replicas": 100,
            "selector": {"matchLabels": {"app": "hundred"}},
            "template": {
                "metadata": {"labels": {"app": "hundred"}},
                // No tag: latest, so Always; every pod asks the registry, but the
                // layer is downloaded once.
                "spec": {"containers": [{"name": "main", "image": image}]},
            },
        },
    });
    let (code, body) = api
        .post("/apis/apps/v1/namespaces/default/deployments", &deployment)
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
        "Always"
    );
    common::eventually("100 pods ready", Duration::from_secs(90), || async {
        let (_, d) = api
            .get("/apis/apps/v1/namespaces/default/deployments/hundred")
            .await;
        (d["status"]["readyReplicas"] == 100).then_some(())
    })
    .await;
    assert_eq!(
        reg.blob_gets(&r),
        1,
        "the layer was downloaded more than once"
    );
}

#[tokio::test]
async fn a_rollout_from_v1_to_v2_changes_the_image() {
    let reg = registry::shared_plain();
    let (_d, _p, api) = cluster_for(&[]);
    let r = repo("rollout", "app");
    let v1 = push_hello(reg, &r, "v1").await;
    let v2 = push_layout(
        reg,
        &format!("{r}:v2"),
        Layout::Cncf,
        &common::workload("http-echo.wasm"),
    )
    .await;
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": format!("{}/{r}:v1", reg.addr())}]},
            },
        },
    });
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let (code, body) = api.post(path, &deployment).await;
    assert_eq!(code, 201, "{body}");
    let image_ids = || async {
        let (_, list) = api.get(&format!("{PODS}?labelSelector=app%3Dweb")).await;
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|p| {
                first_container(p)["imageID"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    let want = |d: &str| format!("{}/{r}@{d}", reg.addr());
    common::eventually("3 pods of v1", WAIT, || async {
        let ids = image_ids().await;
        (ids.len() == 3 && ids.iter().all(|i| *i == want(&v1))).then_some(())
    })
    .await;
    let patch = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": format!("{}/{r}:v2", reg.addr())}
    ]}}}});
    let (code, body) = api
        .patch(
            &format!("{path}/web"),
            "application/strategic-merge-patch+json",
            &patch.to_string(),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    common::eventually("the rollout to v2 complete", WAIT, || async {
        let ids = image_ids().await;
        let (_, d) = api.get(&format!("{path}/web")).await;
        let done = d["status"]["updatedReplicas"] == 3
            && d["status"]["replicas"] == 3
            && d["status"]["availableReplicas"] == 3;
        (done && ids.len() == 3 && ids.iter().all(|i| *i == want(&v2))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_size_limit_and_plain_http_are_refused_clearly() {
    let reg = registry::shared_plain();
    let r = repo("limits", "app");
    push_hello(reg, &r, "v1").await;
    let image = format!("{}/{r}:v1", reg.addr());

    let (_d, _p, api) = cluster_for(&["--max-image-size", "10Ki"]);
    create(&api, image_pod("big", &image)).await;
    let message = waiting(&api, "big", "ErrImagePull").await;
    assert!(
        message.contains("--max-image-size") && message.contains("10240"),
        "{message}"
    );

    // Without --insecure-registry the agent speaks only HTTPS to it.
    let (_d2, _p2, api) = common::dev_cluster(1, &["--backoff-base", "200ms"]);
    create(&api, image_pod("plain", &image)).await;
    let message = waiting(&api, "plain", "ErrImagePull").await;
    assert!(message.contains("--insecure-registry"), "{message}");
}

#[tokio::test]
async fn pods_start_from_the_node_cache_while_the_registry_is_down() {
    let mut reg = Registry::start(Auth::None);
    let wasm = common::workload("http-hello.wasm");
    push_layout(&reg, "edge/app:v1", Layout::Cncf, &wasm).await;
    push_layout(&reg, "edge/app:latest", Layout::Cncf, &wasm).await;

    let dir = tempfile::tempdir().unwrap();
    let server = common::ServerProcess::start(&dir.path().join("server"), &[]);
    let api = server.api();
    let token = server.node_token();
    let agent_dir = dir.path().join("agent");
    let addr = reg.addr();
    let agent_args = [
        "agent",
        "--server",
        &server.url,
        "--token",
        &token,
        "--name",
        "edge-1",
        "--data-dir",
        agent_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--insecure-registry",
        &addr,
        "--backoff-base",
        "200ms",
    ];
    let (agent, _) = common::Process::start(&agent_args, "agent:");
    let tagged = format!("{addr}/edge/app:v1");
    let latest = format!("{addr}/edge/app:latest");
    create(&api, image_pod("tagged", &tagged)).await;
    create(&api, image_pod("latest", &latest)).await;
    running(&api, "tagged").await;
    running(&api, "latest").await;

    reg.stop();
    create(&api, image_pod("tagged-2", &tagged)).await;
    create(&api, image_pod("latest-2", &latest)).await;
    running(&api, "tagged-2").await;
    running(&api, "latest-2").await;
    // Always could not ask the registry: the node's copy, with a warning that says so.
    event_saying(&api, "latest-2", "Failed", "could not be reached").await;

    // An agent restarted while the registry is still down brings its pods back.
    agent.kill9();
    let (_agent, _) = common::Process::start(&agent_args, "agent:");
    for name in ["tagged", "latest", "tagged-2", "latest-2"] {
        common::eventually(&format!("{name} running again"), WAIT, || async {
            let (_, pod) = api.get(&format!("{PODS}/{name}")).await;
            let c = first_container(&pod);
            // The instance died with the agent: one restart, running again.
            (c["state"]["running"].is_object() && c["restartCount"] == 1).then_some(())
        })
        .await;
    }
    create(&api, image_pod("after-restart", &latest)).await;
    running(&api, "after-restart").await;
}
