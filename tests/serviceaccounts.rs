//! ServiceAccounts end to end, with the real kubectl: the `default` account of every
//! namespace (made, and made again when deleted); `kubectl create token` and the claims
//! of what it prints; `kubectl auth whoami --token`; the OIDC discovery documents, whose
//! JWKS verifies the tokens as a relying party would; tokens refused once expired, for
//! another audience, or once their account is gone; and pods getting a pod-bound token,
//! the CA and their namespace as files, renewed before expiry, unless automounting is
//! off.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::{Api, eventually, workload};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// kubectl's exit status, stdout and stderr, run off the async runtime.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let (kc, args): (PathBuf, Vec<String>) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("kubectl")
            .args(&args)
            .env("KUBECONFIG", &kc)
            .output()
            .expect("kubectl is installed by scripts/test");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, out, err) = kubectl(kubeconfig, args).await;
    assert!(success, "kubectl {args:?} failed:\n{out}{err}");
    out
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// A JWT's claims, read without verifying them.
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&b64url().decode(payload).unwrap()).unwrap()
}

/// Verifies a JWT's ES256 signature with the key of the JWKS that its `kid` names.
fn verifies_with(jwks: &Value, token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    let header: Value = serde_json::from_slice(&b64url().decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let Some(key) = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    let mut point = vec![4u8];
    point.extend(b64url().decode(key["x"].as_str().unwrap()).unwrap());
    point.extend(b64url().decode(key["y"].as_str().unwrap()).unwrap());
    let signature = b64url().decode(parts[2]).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .is_ok()
}

/// The status code of `kubectl auth whoami`'s request, sent with `token`.
async fn whoami_code(api: &Api, token: &str) -> u16 {
    let as_token = Api::with_token(&api.base, None, token);
    let (code, _) = as_token
        .post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
        )
        .await;
    code
}

async fn uid_of_default(kubeconfig: &Path, ns: &str) -> Option<String> {
    let (success, out, _) = kubectl(
        kubeconfig,
        &["get", "serviceaccount", "default", "-n", ns, "-o", "json"],
    )
    .await;
    success
        .then(|| serde_json::from_str::<Value>(&out).ok())
        .flatten()
        .and_then(|sa| sa["metadata"]["uid"].as_str().map(str::to_string))
}

#[tokio::test]
async fn service_account_tokens_authenticate_until_their_account_goes() {
    let (dir, _cluster, api) = common::dev_cluster(1, &[]);
    let kc = dir.path().join("kubeconfig");

    // Every new namespace gets its `default` account, and gets it back when deleted.
    ok(&kc, &["create", "namespace", "team"]).await;
    let first = eventually("the default ServiceAccount of team", WAIT, || {
        uid_of_default(&kc, "team")
    })
    .await;
    ok(&kc, &["delete", "serviceaccount", "default", "-n", "team"]).await;
    let uid = eventually("the default ServiceAccount to come back", WAIT, || {
        let (kc, first) = (kc.clone(), first.clone());
        async move { uid_of_default(&kc, "team").await.filter(|u| *u != first) }
    })
    .await;
    let listed = ok(&kc, &["get", "sa", "-n", "team"]).await;
    assert!(listed.contains("default"), "{listed}");

    // `kubectl create token` prints a JWT with Kubernetes' claims.
    let token = ok(&kc, &["create", "token", "default", "-n", "team"]).await;
    let token = token.trim();
    let c = claims(token);
    assert_eq!(c["iss"], "https://kubernetes.default.svc.cluster.local");
    assert_eq!(c["sub"], "system:serviceaccount:team:default");
    assert_eq!(
        c["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        3600
    );
    assert_eq!(c["nbf"], c["iat"]);
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "{c}");
    assert_eq!(c["kubernetes.io"]["namespace"], "team");
    assert_eq!(
        c["kubernetes.io"]["serviceaccount"],
        json!({"name": "default", "uid": uid})
    );

    // `kubectl auth whoami` with that token names the account and its groups.
    let whoami = ok(&kc, &["auth", "whoami", "--token", token, "-o", "json"]).await;
    let review: Value = serde_json::from_str(&whoami).unwrap();
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], "system:serviceaccount:team:default");
    assert_eq!(user["uid"], uid.as_str());
    for group in [
        "system:serviceaccounts",
        "system:serviceaccounts:team",
        "system:authenticated",
    ] {
        assert!(
            user["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g == group),
            "{group} missing: {review}"
        );
    }
    let table = ok(&kc, &["auth", "whoami", "--token", token]).await;
    assert!(
        table.contains("system:serviceaccount:team:default"),
        "{table}"
    );

    // Signed in, but without RBAC it may do nothing else yet: 403, not 401.
    let as_account = Api::with_token(&api.base, None, token);
    let (code, status) = as_account.get("/api/v1/namespaces/team/pods").await;
    assert_eq!(code, 403, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("system:serviceaccount:team:default"),
        "{status}"
    );

    // The issuer's discovery documents: signed-in readers only; their JWKS verifies
    // the token.
    let (code, config) = as_account.get("/.well-known/openid-configuration").await;
    assert_eq!(code, 200, "{config}");
    assert_eq!(config["issuer"], c["iss"]);
    assert!(
        config["jwks_uri"]
            .as_str()
            .unwrap()
            .ends_with("/openid/v1/jwks"),
        "{config}"
    );
    let (code, jwks) = as_account.get("/openid/v1/jwks").await;
    assert_eq!(code, 200, "{jwks}");
    assert!(
        verifies_with(&jwks, token),
        "the JWKS does not verify the token"
    );
    let mut forged = claims(token);
    forged["sub"] = json!("system:serviceaccount:kube-system:default");
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64url().encode(forged.to_string()),
        parts[2]
    );
    assert!(!verifies_with(&jwks, &forged));
    assert_eq!(whoami_code(&api, &forged).await, 401);
    let (code, _) = Api::anonymous(&api.base).get("/openid/v1/jwks").await;
    assert_eq!(code, 401);

    // A token for another audience is not the API's; TokenReview tells it apart.
    let vault = ok(
        &kc,
        &[
            "create",
            "token",
            "default",
            "-n",
            "team",
            "--audience",
            "vault",
            "--duration",
            "20m",
        ],
    )
    .await;
    let vault = vault.trim();
    let v = claims(vault);
    assert_eq!(v["aud"], json!(["vault"]));
    assert_eq!(
        v["exp"].as_i64().unwrap() - v["iat"].as_i64().unwrap(),
        1200
    );
    assert_eq!(whoami_code(&api, vault).await, 401);
    let review = |audiences: Value| {
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": vault, "audiences": audiences},
        })
    };
    let (code, answer) = api
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review(json!(["vault"])),
        )
        .await;
    assert_eq!(code, 201, "{answer}");
    assert_eq!(answer["status"]["authenticated"], true, "{answer}");
    assert_eq!(
        answer["status"]["user"]["username"],
        "system:serviceaccount:team:default"
    );
    let (_, answer) = api
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review(json!([])),
        )
        .await;
    assert_eq!(answer["status"]["authenticated"], false, "{answer}");
    // Only admins review tokens for now.
    let (code, _) = as_account
        .post(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            &review(json!(["vault"])),
        )
        .await;
    assert_eq!(code, 403);

    // Kubernetes' limits: at least ten minutes; a missing account is NotFound.
    let (success, _, err) = kubectl(
        &kc,
        &[
            "create",
            "token",
            "default",
            "-n",
            "team",
            "--duration",
            "5m",
        ],
    )
    .await;
    assert!(!success && err.contains("expirationSeconds"), "{err}");
    let (success, _, err) = kubectl(&kc, &["create", "token", "nobody", "-n", "team"]).await;
    assert!(!success && err.contains("not found"), "{err}");

    // Discovery lists the token subresource and the review resources.
    let resources = ok(
        &kc,
        &["api-resources", "--api-group", "authentication.k8s.io"],
    )
    .await;
    assert!(
        resources.contains("selfsubjectreviews") && resources.contains("tokenreviews"),
        "{resources}"
    );

    // Deleting the account ends its tokens, and its successor does not revive them.
    assert_eq!(whoami_code(&api, token).await, 201);
    ok(&kc, &["delete", "serviceaccount", "default", "-n", "team"]).await;
    eventually("the deleted account's token to be refused", WAIT, || {
        let api = Api::with_token(&api.base, None, token);
        let token = token.to_string();
        async move { (whoami_code(&api, &token).await == 401).then_some(()) }
    })
    .await;
    eventually("a new default account", WAIT, || {
        let (kc, uid) = (kc.clone(), uid.clone());
        async move { uid_of_default(&kc, "team").await.filter(|u| *u != uid) }
    })
    .await;
    assert_eq!(whoami_code(&api, token).await, 401);
}

/// The files of a pod's credentials on the agent's disk (`skiff dev` keeps dev-1's data
/// in DIR/nodes/dev-1).
fn token_file(dir: &Path, pod_uid: &str) -> PathBuf {
    dir.join("nodes/dev-1/pods")
        .join(pod_uid)
        .join("serviceaccount/token")
}

async fn create_pod(api: &Api, pod: Value) -> Value {
    let (code, created) = api.post("/api/v1/namespaces/default/pods", &pod).await;
    assert_eq!(code, 201, "{created}");
    created
}

fn pod(name: &str, image: &str, args: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"nodeName": "dev-1", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": image, "args": args}]},
    })
}

async fn log_once_done(api: &Api, name: &str) -> String {
    let path = format!("/api/v1/namespaces/default/pods/{name}");
    eventually(&format!("{name} to finish"), WAIT, || {
        let (api, path) = (api.clone(), path.clone());
        async move {
            let (_, pod) = api.get(&path).await;
            matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            )
            .then_some(())
        }
    })
    .await;
    api.text(&format!("{path}/log")).await.1
}

#[tokio::test]
async fn pods_get_a_pod_bound_token_that_is_renewed_unless_automount_is_off() {
    // Three-second tokens (renewed after 2.4 s), which the server is told to allow.
    let (dir, _cluster, api) = common::dev_cluster_with_env(
        1,
        &["--backoff-base", "300ms"],
        &[
            ("SKIFF_TEST_MIN_TOKEN_SECONDS", "1"),
            ("SKIFF_TEST_SA_TOKEN_SECONDS", "3"),
        ],
    );
    let kc = dir.path().join("kubeconfig");
    let files = api.upload(workload("files.wasm")).await;
    let token_path = format!("{SA_DIR}/token");
    let ns_path = format!("{SA_DIR}/namespace");
    let ca_path = format!("{SA_DIR}/ca.crt");
    let reads = ["-", token_path.as_str(), ns_path.as_str(), ca_path.as_str()];

    // A pod reads its token, namespace and CA where Kubernetes puts them.
    let reader = create_pod(&api, pod("reader", &files, &reads)).await;
    assert_eq!(reader["spec"]["serviceAccountName"], "default", "{reader}");
    let logs = log_once_done(&api, "reader").await;
    assert!(logs.contains(&format!("read {ns_path}: default")), "{logs}");
    assert!(
        logs.contains(&format!("read {ca_path}: -----BEGIN CERTIFICATE-----")),
        "{logs}"
    );
    let token = logs
        .lines()
        .find_map(|l| l.strip_prefix(&format!("read {token_path}: ")))
        .unwrap_or_else(|| panic!("no token read:\n{logs}"));
    let c = claims(token);
    assert_eq!(c["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        c["kubernetes.io"]["pod"],
        json!({"name": "reader", "uid": reader["metadata"]["uid"]})
    );
    let (_, jwks) = api.get("/openid/v1/jwks").await;
    assert!(verifies_with(&jwks, token));

    // No token when the pod, or its account, says so.
    let mut quiet = pod("quiet-pod", &files, &reads);
    quiet["spec"]["automountServiceAccountToken"] = json!(false);
    create_pod(&api, quiet).await;
    let logs = log_once_done(&api, "quiet-pod").await;
    assert!(
        logs.contains(&format!("error reading {token_path}")),
        "{logs}"
    );
    ok(&kc, &["create", "serviceaccount", "quiet"]).await;
    ok(
        &kc,
        &[
            "patch",
            "serviceaccount",
            "quiet",
            "--type",
            "merge",
            "-p",
            r#"{"automountServiceAccountToken": false}"#,
        ],
    )
    .await;
    let mut quiet = pod("quiet-account", &files, &reads);
    quiet["spec"]["serviceAccountName"] = json!("quiet");
    create_pod(&api, quiet).await;
    let logs = log_once_done(&api, "quiet-account").await;
    assert!(
        logs.contains(&format!("error reading {token_path}")),
        "{logs}"
    );

    // A running pod's token is renewed before it expires, and each one works until
    // then; the old one expires.
    let ticker = api.upload(workload("ticker.wasm")).await;
    let running = create_pod(&api, pod("ticker", &ticker, &["1s"])).await;
    let uid = running["metadata"]["uid"].as_str().unwrap().to_string();
    let file = token_file(dir.path(), &uid);
    let first = eventually("the ticker's token file", WAIT, || {
        let file = file.clone();
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| !t.is_empty())
        }
    })
    .await;
    assert_eq!(claims(&first)["kubernetes.io"]["pod"]["uid"], uid.as_str());
    let renewed = eventually("the token to be renewed", WAIT, || {
        let (file, first) = (file.clone(), first.clone());
        async move {
            std::fs::read_to_string(&file)
                .ok()
                .filter(|t| *t != first && !t.is_empty())
        }
    })
    .await;
    assert!(claims(&renewed)["iat"].as_i64() >= claims(&first)["iat"].as_i64());
    assert!(verifies_with(&jwks, &renewed));
    eventually("the first token to expire", WAIT, || {
        let (api, first) = (api.clone(), first.clone());
        async move { (whoami_code(&api, &first).await == 401).then_some(()) }
    })
    .await;

    // A pod-bound token dies with its pod.
    let current = std::fs::read_to_string(&file).unwrap();
    let pod_deleted_token = {
        // Issued for a minute, so only the pod's deletion can end it.
        let created = ok(
            &kc,
            &[
                "create",
                "token",
                "default",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "ticker",
                "--duration",
                "1m",
            ],
        )
        .await;
        created.trim().to_string()
    };
    assert!(!current.is_empty());
    assert_eq!(
        claims(&pod_deleted_token)["kubernetes.io"]["pod"]["name"],
        "ticker"
    );
    assert_eq!(whoami_code(&api, &pod_deleted_token).await, 201);
    ok(
        &kc,
        &["delete", "pod", "ticker", "--grace-period", "0", "--force"],
    )
    .await;
    eventually("the pod-bound token to be refused", WAIT, || {
        let (api, t) = (api.clone(), pod_deleted_token.clone());
        async move { (whoami_code(&api, &t).await == 401).then_some(()) }
    })
    .await;

    // A node may only ask for tokens of its pods' accounts, bound to its pods.
    ok(&kc, &["create", "serviceaccount", "other"]).await;
    let node = Api::from_kubeconfig(&dir.path().join("nodes/dev-1/credential.kubeconfig"));
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}});
    for account in ["other", "default"] {
        let (code, answer) = node
            .post(
                &format!("/api/v1/namespaces/default/serviceaccounts/{account}/token"),
                &request,
            )
            .await;
        assert_eq!(code, 403, "{account}: {answer}");
    }
}
