//! Ingress (networking.k8s.io/v1) on the gateway, with the real kubectl and curl: the
//! default IngressClass `skiff`, the manifest tests/manifests/ingress.yaml (two hosts
//! and a TLS host) applied unchanged, host and path rules, a TLS host served by SNI with
//! a `kubernetes.io/tls` Secret that curl checks against the test CA, the Ingress status
//! and kubectl's columns.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, kubectl, workload};

const APPS: &str = "/apis/skiff.dev/v1/namespaces/default/apps";
const WAIT: Duration = Duration::from_secs(30);

/// curl to `host` at `url`'s port on loopback (with `--resolve`, as DNS would give it);
/// status and body.
fn curl(url_base: &str, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let (scheme, rest) = url_base.split_once("://").unwrap();
    let port = rest.rsplit_once(':').unwrap().1.trim_end_matches('/');
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(extra)
        .arg(format!("{scheme}://{host}:{port}{path}"))
        .output()
        .expect("curl is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        return (0, String::from_utf8_lossy(&out.stderr).into_owned());
    }
    (code, body.to_string())
}

#[tokio::test]
async fn an_ingress_routes_two_hosts_and_serves_a_tls_host_by_sni() {
    let (dir, process, api) = common::dev_cluster(1, &[]);
    let kubeconfig = dir.path().join("kubeconfig");
    let http = process
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let https = process
        .printed("gateway https:")
        .expect("skiff dev prints its HTTPS gateway");

    // The default class, as k3s ships Traefik's.
    let classes = kubectl(&kubeconfig, &["get", "ingressclass"]);
    let row: Vec<&str> = classes.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..3],
        ["skiff", "skiff.dev/gateway", "<none>"],
        "{classes}"
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
    let ca = common::tls_secret(&kubeconfig, dir.path(), "secure.test", "secure-tls");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/ingress.yaml");
    let applied = kubectl(&kubeconfig, &["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        applied.contains("ingress.networking.k8s.io/web created"),
        "{applied}"
    );

    // The status shows the gateway's address; kubectl's columns show it.
    let table = eventually("the Ingress to show the gateway's address", WAIT, || {
        let kc = kubeconfig.clone();
        async move {
            let out = kubectl(&kc, &["get", "ingress", "web"]);
            out.contains("127.0.0.1").then_some(out)
        }
    })
    .await;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        [
            "web",
            "<none>",
            "alpha.test,beta.test,secure.test",
            "127.0.0.1",
            "80,"
        ],
        "{table}"
    );

    // Hosts and paths, over HTTP. The routes follow the Ingress as soon as it exists.
    let (http_, https_) = (http.clone(), https.clone());
    let pod_of = |body: &str| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix("pod="))
            .map(|p| p.split('-').next().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let answers = tokio::task::spawn_blocking(move || {
        [
            curl(&http_, "alpha.test", "/", &[]),
            curl(&http_, "alpha.test", "/beta/x", &[]),
            curl(&http_, "alpha.test", "/betamax", &[]),
            curl(&http_, "beta.test", "/", &[]),
            curl(&http_, "nobody.test", "/nothing", &[]),
            // TLS by SNI, checked against the test CA.
            curl(
                &https_,
                "secure.test",
                "/",
                &["--cacert", ca.to_str().unwrap()],
            ),
            curl(
                &https_,
                "secure.test",
                "/exact",
                &["--cacert", ca.to_str().unwrap()],
            ),
            // A host with no certificate gets the gateway's self-signed default, which
            // the test CA does not vouch for.
            curl(
                &https_,
                "alpha.test",
                "/",
                &["--cacert", ca.to_str().unwrap()],
            ),
        ]
    })
    .await
    .unwrap();
    let expect = [
        (200, "alpha"),
        (200, "beta"),
        (200, "alpha"),
        (200, "beta"),
        (404, ""),
        (200, "alpha"),
        (200, "beta"),
    ];
    for (i, ((code, body), (want_code, want_pod))) in answers.iter().zip(expect).enumerate() {
        assert_eq!(*code, want_code, "request {i}: {body}");
        if !want_pod.is_empty() {
            assert_eq!(pod_of(body), want_pod, "request {i}: {body}");
        }
    }
    let (code, said) = &answers[7];
    assert_eq!(
        *code, 0,
        "an unknown host must not pass the test CA: {said}"
    );
    assert!(said.contains("certificate"), "{said}");

    // The App routes stay: the path route of alpha answers as before.
    let (code, body) =
        tokio::task::spawn_blocking(move || curl(&http, "127.0.0.1", "/default/alpha/", &[]))
            .await
            .unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(pod_of(&body), "alpha");

    // An Ingress naming a Service port that does not exist answers 503 saying so.
    let (code, _) = api
        .post(
            "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
            &serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "wrong-port"},
                "spec": {"rules": [{"host": "wrong.test", "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "alpha", "port": {"number": 9999}}},
                }]}}]},
            }),
        )
        .await;
    assert_eq!(code, 201);
    let gateway = process.printed("gateway:").unwrap();
    let (code, body) = eventually("the broken rule to be routed", WAIT, || {
        let gateway = gateway.clone();
        async move {
            let answer =
                tokio::task::spawn_blocking(move || curl(&gateway, "wrong.test", "/", &[]))
                    .await
                    .unwrap();
            (answer.0 != 404).then_some(answer)
        }
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("service default/alpha has no port 9999"),
        "{body}"
    );
}
