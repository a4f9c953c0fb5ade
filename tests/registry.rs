//! Wasm from OCI registries, against a real registry (Debian's docker-registry, the CNCF
//! distribution registry; see common/registry.rs): the fixture itself, and `skiff push`
//! writing the CNCF Wasm layout that other tools read, to a plain-HTTP registry and to
//! one behind TLS and htpasswd with credentials from a Docker config.

mod common;

use std::process::Command;

use base64::Engine;
use common::registry::{self, Auth, Layout, Registry, push_layout, repo, sha256};
use oci_client::secrets::RegistryAuth;

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

/// `skiff deploy oci://REF` uploads nothing: the App names the normalised reference and
/// the pull secrets, and its Deployment's pods get both. A reference whose first part
/// is HOST:PORT needs no `oci://`. Whether the pods then pull is the agent's part: the
/// rollout gets a short timeout and its outcome is not asserted here.
#[tokio::test]
async fn skiff_deploy_oci_names_the_reference_in_the_app() {
    let reg = registry::shared_plain();
    let repo_tag = format!("{}:v1", repo("deploy", "hello"));
    let wasm = common::workload("http-hello.wasm");
    push_layout(reg, &repo_tag, Layout::Cncf, &wasm).await;
    let reference = format!("{}/{repo_tag}", reg.addr());
    let (dir, _server, api) = common::dev_cluster(1, &[]);
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
                    "1s",
                    "--kubeconfig",
                    &kubeconfig,
                ],
                &[],
            )
        })
    };
    deploy(format!("oci://{reference}"), "web")
        .await
        .expect("skiff ran");
    deploy(reference.clone(), "bare").await.expect("skiff ran");

    for name in ["web", "bare"] {
        let (code, app) = api
            .get(&format!(
                "/apis/skiff.dev/v1/namespaces/default/apps/{name}"
            ))
            .await;
        assert_eq!(code, 200, "{app}");
        assert_eq!(app["spec"]["module"], reference.as_str(), "{app}");
        let secrets = serde_json::json!([{"name": "regcred"}, {"name": "other"}]);
        assert_eq!(app["spec"]["imagePullSecrets"], secrets, "{app}");
        let template = common::eventually(
            "the App's Deployment",
            std::time::Duration::from_secs(30),
            || async {
                let (code, d) = api
                    .get(&format!(
                        "/apis/apps/v1/namespaces/default/deployments/{name}"
                    ))
                    .await;
                (code == 200).then(|| d["spec"]["template"]["spec"].clone())
            },
        )
        .await;
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
