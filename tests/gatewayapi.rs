//! Gateway API (gateway.networking.k8s.io/v1) on the gateway, with the real kubectl:
//! the GatewayClass `skiff` the server creates, the manifest
//! tests/manifests/httproute.yaml (a Gateway and an HTTPRoute) applied unchanged, a
//! 90/10 weighted split measured over 1000 requests, a header match, a URL rewrite, an
//! HTTPS listener's certificate served by SNI, the statuses a Gateway API controller
//! writes and kubectl's columns.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, kubectl, workload};

const APPS: &str = "/apis/skiff.dev/v1/namespaces/default/apps";
const ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes";
const WAIT: Duration = Duration::from_secs(30);
/// Requests sent to measure the weighted split.
const SPLIT_REQUESTS: usize = 1000;

/// The first row of a `kubectl get` table, split on whitespace, after checking the header.
fn row(table: &str, header: &[&str]) -> Vec<String> {
    let mut lines = table.lines();
    let got: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(got, header, "{table}");
    lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// curl over HTTPS to `host` at `url_base`'s port on loopback, trusting `ca`: status
/// and body, or 0 and curl's complaint.
fn curl_https(url_base: &str, host: &str, path: &str, ca: &Path) -> (u16, String) {
    let port = url_base.rsplit(':').next().unwrap().trim_end_matches('/');
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["--cacert", ca.to_str().unwrap()])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    match code.trim().parse().unwrap_or(0) {
        0 => (0, String::from_utf8_lossy(&out.stderr).into_owned()),
        code => (code, body.to_string()),
    }
}

/// The App a `hello from skiff pod=NAME-...` body came from.
fn app_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pod="))
        .and_then(|p| p.split('-').next())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn an_httproute_splits_by_weight_matches_headers_and_rewrites_paths() {
    let (dir, process, api) = common::dev_cluster(1, &[]);
    let kubeconfig = dir.path().join("kubeconfig");
    let gateway = process
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let port: u16 = gateway
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();

    // The server's class, accepted by the gateway.
    let class = eventually("the GatewayClass skiff to be accepted", WAIT, || {
        let kc = kubeconfig.clone();
        async move {
            let out = kubectl(&kc, &["get", "gatewayclass"]);
            out.contains("True").then_some(out)
        }
    })
    .await;
    assert_eq!(
        row(&class, &["NAME", "CONTROLLER", "ACCEPTED", "AGE"])[..3],
        ["skiff", "skiff.dev/gateway", "True"]
    );

    for app in ["alpha", "beta"] {
        let (code, body) = api
            .raw(
                reqwest::Method::PUT,
                &format!("{APPS}/{app}?wait=true"),
                "application/wasm",
                workload("http-hello.wasm"),
            )
            .await;
        assert!(code == 200 || code == 201, "{code}: {body}");
    }
    let ca = common::tls_secret(&kubeconfig, dir.path(), "canary.test", "canary-tls");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/httproute.yaml");
    let applied = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        applied.contains("gateway.gateway.networking.k8s.io/web created")
            && applied.contains("httproute.gateway.networking.k8s.io/canary created"),
        "{applied}"
    );

    // The Gateway is programmed at the gateway's address.
    let table = eventually("the Gateway to be programmed", WAIT, || {
        let kc = kubeconfig.clone();
        async move {
            let out = kubectl(&kc, &["get", "gateway", "web"]);
            out.contains("True").then_some(out)
        }
    })
    .await;
    assert_eq!(
        row(&table, &["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"])[..4],
        ["web", "skiff", "127.0.0.1", "True"]
    );
    let listener = kubectl(
        &kubeconfig,
        &[
            "get",
            "gateway",
            "web",
            "-o",
            "jsonpath={.status.listeners[0].attachedRoutes} {.status.listeners[0].supportedKinds[0].kind} {.status.listeners[0].conditions[?(@.type==\"Programmed\")].status}",
        ],
    );
    assert_eq!(listener, "1 HTTPRoute True");
    let https = kubectl(
        &kubeconfig,
        &[
            "get",
            "gateway",
            "web",
            "-o",
            "jsonpath={.status.listeners[1].attachedRoutes} {.status.listeners[1].conditions[?(@.type==\"ResolvedRefs\")].status}",
        ],
    );
    assert_eq!(https, "1 True");
    let routes = kubectl(&kubeconfig, &["get", "httproute"]);
    assert_eq!(
        row(&routes, &["NAME", "HOSTNAMES", "AGE"])[..2],
        ["canary", "[\"canary.test\"]"]
    );
    let parent = kubectl(
        &kubeconfig,
        &[
            "get",
            "httproute",
            "canary",
            "-o",
            "jsonpath={.status.parents[0].controllerName} {.status.parents[0].parentRef.name} {.status.parents[0].conditions[?(@.type==\"Accepted\")].status} {.status.parents[0].conditions[?(@.type==\"ResolvedRefs\")].status}",
        ],
    );
    assert_eq!(parent, "skiff.dev/gateway web True True");

    // Requests to canary.test, on loopback as DNS would resolve it.
    let client = reqwest::Client::builder()
        .resolve("canary.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let get = |path: &str, header: Option<(&str, &str)>| {
        let mut request = client.get(format!("http://canary.test:{port}{path}"));
        if let Some((k, v)) = header {
            request = request.header(k, v);
        }
        async move {
            let response = request.send().await.expect("the gateway answers");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };

    // The header match sends every opted-in request to the canary.
    for _ in 0..20 {
        let (code, body) = get("/", Some(("x-canary", "always"))).await;
        assert_eq!((code, app_of(&body).as_str()), (200, "beta"), "{body}");
    }
    // /check is rewritten to /healthz, which http-hello answers `ok`.
    let (code, body) = get("/check", None).await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (code, body) = get("/check/env", None).await;
    assert_eq!(code, 200);
    assert!(body.contains("POD_NAME=alpha-"), "{body}");

    // The HTTPS listener's certificate, by SNI, checked against the test CA.
    let secure = process
        .printed("gateway https:")
        .expect("skiff dev prints its HTTPS gateway");
    let (code, body) = eventually("the listener's certificate to be served", WAIT, || {
        let (secure, ca) = (secure.clone(), ca.clone());
        async move {
            let answer = tokio::task::spawn_blocking(move || {
                curl_https(&secure, "canary.test", "/check", &ca)
            })
            .await
            .unwrap();
            (answer.0 != 0).then_some(answer)
        }
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));

    // The split: 90/10 within a few percent over 1000 requests.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..SPLIT_REQUESTS {
        let (code, body) = get("/", None).await;
        assert_eq!(code, 200, "{body}");
        *counts.entry(app_of(&body)).or_default() += 1;
    }
    let alpha = counts.get("alpha").copied().unwrap_or_default();
    let beta = counts.get("beta").copied().unwrap_or_default();
    assert_eq!(alpha + beta, SPLIT_REQUESTS, "{counts:?}");
    assert!(
        (850..=950).contains(&alpha),
        "a 90/10 split gave {counts:?}"
    );

    // A backend Service that does not exist: ResolvedRefs=False, BackendNotFound, and 500.
    let (code, body) = api
        .post(
            ROUTES,
            &serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "missing"},
                "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["missing.test"],
                    "rules": [{"backendRefs": [{"name": "nowhere", "port": 80}]}]},
            }),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let reason = eventually("the missing backend to be reported", WAIT, || {
        let api = api.clone();
        async move {
            let (_, route) = api.get(&format!("{ROUTES}/missing")).await;
            route
                .pointer("/status/parents/0/conditions")
                .and_then(|c| c.as_array())
                .and_then(|c| c.iter().find(|c| c["type"] == "ResolvedRefs").cloned())
        }
    })
    .await;
    assert_eq!(reason["status"], "False");
    assert_eq!(reason["reason"], "BackendNotFound");
    let client = reqwest::Client::builder()
        .resolve("missing.test", ([127, 0, 0, 1], port).into())
        .build()
        .unwrap();
    let response = client
        .get(format!("http://missing.test:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);

    // A route the API refuses: a weight over the CRD's maximum.
    let (code, body) = api
        .post(
            ROUTES,
            &serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "heavy"},
                "spec": {"parentRefs": [{"name": "web"}],
                    "rules": [{"backendRefs": [{"name": "alpha", "port": 80, "weight": 1000001}]}]},
            }),
        )
        .await;
    assert_eq!(code, 422, "{body}");
}
