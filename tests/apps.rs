//! End to end on `skiff dev` with its gateway: HTTP apps deployed in one request, served
//! through the gateway across nodes, updated and scaled without a failed request, and
//! guests that trap, spin, stream to a departed client or call out, none of which
//! harms the pod; apps see their own paths behind a prefix route, and `skiff dev` comes
//! up when its default gateway port is busy.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Api, eventually, workload};
use serde_json::{Value, json};

const APPS: &str = "/apis/skiff.dev/v1/namespaces/default/apps";
const WAIT: Duration = Duration::from_secs(60);

struct Cluster {
    dir: tempfile::TempDir,
    _process: common::Process,
    api: Api,
    gateway: String,
}

fn cluster(nodes: u32, extra: &[&str]) -> Cluster {
    let (dir, process, api) = common::dev_cluster(nodes, extra);
    let gateway = process
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    Cluster {
        dir,
        _process: process,
        api,
        gateway,
    }
}

/// `PUT .../apps/NAME?QUERY` with the raw module.
async fn deploy(api: &Api, name: &str, module: &str, query: &str) -> (u16, Value) {
    api.raw(
        reqwest::Method::PUT,
        &format!("{APPS}/{name}?{query}"),
        "application/wasm",
        workload(module),
    )
    .await
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => {
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

/// Sends requests to `url` back to back until stopped; counts answers and failures.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                let (code, body) = get(&http, &url).await;
                if code == 200 {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.lock().unwrap().push(format!("{code}: {body}"));
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

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
}

#[tokio::test]
async fn deploy_in_one_request_scale_update_and_lose_a_pod_without_failures() {
    let c = cluster(3, &[]);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();

    // One request with curl: module stored, App created, answered once it serves.
    let module =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/bin/http-hello.wasm");
    let put = format!("{}{APPS}/web?replicas=1&wait=true", c.api.base);
    let server = c.dir.path().join("server");
    let ca = server.join("tls/ca.crt");
    let token = std::fs::read_to_string(server.join("admin-token")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "-XPUT",
                "-H",
                "Content-Type: application/wasm",
                "-H",
                &format!("Authorization: Bearer {}", token.trim()),
                "--cacert",
                ca.to_str().unwrap(),
                "--data-binary",
            ])
            .arg(format!("@{}", module.display()))
            .args(["-w", "\n%{http_code}", &put])
            .output()
            .expect("curl is installed by scripts/test")
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').expect("curl printed the status");
    assert_eq!(code, "201", "{text}");
    let app: Value = serde_json::from_str(body).unwrap();
    let url = app["status"]["url"]
        .as_str()
        .expect("status.url")
        .to_string();
    assert_eq!(url, format!("{}/default/web/", c.gateway));
    assert_eq!(app["status"]["readyReplicas"], 1);
    assert!(
        app["status"]["moduleDigest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let (code, body) = get(&http, &url).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from skiff"), "{body}");
    // The same app by Host, with no path prefix.
    let host = reqwest::Url::parse(&c.gateway).unwrap();
    let by_host = http
        .get(format!("{}/anything", c.gateway))
        .header(
            "host",
            format!("web.default.localhost:{}", host.port().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_host.status(), 200);

    // Scale to 3: requests spread over the three nodes.
    let (code, app) = deploy(&c.api, "web", "http-hello.wasm", "replicas=3&wait=true").await;
    assert_eq!(code, 200, "{app}");
    assert_eq!(app["status"]["readyReplicas"], 3);
    let mut nodes = BTreeSet::new();
    let mut pods = BTreeSet::new();
    for _ in 0..30 {
        let (code, body) = get(&http, &url).await;
        assert_eq!(code, 200, "{body}");
        nodes.insert(field(&body, "node").unwrap().to_string());
        pods.insert(field(&body, "pod").unwrap().to_string());
    }
    assert_eq!(nodes.len(), 3, "requests reached {nodes:?}");
    assert_eq!(pods.len(), 3, "requests reached {pods:?}");

    // Invalid Wasm: 422, and the App is unchanged.
    let (code, status) = c
        .api
        .raw(
            reqwest::Method::PUT,
            &format!("{APPS}/web?wait=true"),
            "application/wasm",
            b"not wasm at all".to_vec(),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["kind"], "Status");
    let (_, after) = c.api.get(&format!("{APPS}/web")).await;
    assert_eq!(after["spec"]["module"], app["spec"]["module"]);
    assert_eq!(
        after["metadata"]["generation"],
        app["metadata"]["generation"]
    );

    // A new module rolls out under continuous traffic: no request fails.
    let traffic = Traffic::start(url.clone());
    eventually("traffic flowing", WAIT, || {
        let ok = traffic.ok.clone();
        async move { (ok.load(Ordering::Relaxed) > 20).then_some(()) }
    })
    .await;
    let (code, v2) = deploy(&c.api, "web", "http-echo.wasm", "wait=true").await;
    assert_eq!(code, 200, "{v2}");
    assert_ne!(v2["spec"]["module"], app["spec"]["module"]);
    let (code, body) = get(&http, &url).await;
    assert_eq!(code, 200);
    let echoed: Value = serde_json::from_str(&body).expect("the new module answers JSON");
    // The app sees its own path: the gateway strips the `/default/web` prefix.
    assert_eq!(echoed["path"], "/");

    // A deleted pod is dropped by the gateway, still with no failed request.
    let (_, list) = c
        .api
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dweb")
        .await;
    let victim = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["deletionTimestamp"].is_null())
        .unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let before = traffic.ok.load(Ordering::Relaxed);
    c.api
        .delete(&format!("/api/v1/namespaces/default/pods/{victim}"), None)
        .await;
    eventually("the pod replaced and traffic still flowing", WAIT, || {
        let api = c.api.clone();
        let ok = traffic.ok.clone();
        async move {
            let (_, app) = api.get(&format!("{APPS}/web")).await;
            (app["status"]["readyReplicas"] == 3 && ok.load(Ordering::Relaxed) > before + 50)
                .then_some(())
        }
    })
    .await;
    let (ok, failures) = traffic.finish().await;
    assert!(ok > 100, "only {ok} requests went through");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
}

#[tokio::test]
async fn faults_in_a_guest_answer_5xx_and_the_pod_serves_on() {
    let c = cluster(1, &["--request-timeout", "500ms"]);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();

    // Unknown route: 404; an App with no ready replica: 503 naming it.
    let (code, body) = get(&http, &format!("{}/default/nothing/", c.gateway)).await;
    assert_eq!(code, 404, "{body}");
    let (code, empty) = deploy(&c.api, "idle", "http-hello.wasm", "replicas=0&wait=true").await;
    assert_eq!(code, 201, "{empty}");
    let (code, body) = get(&http, empty["status"]["url"].as_str().unwrap()).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("default/idle"), "{body}");

    // A wait longer than the clock can count (it once panicked the handler).
    let (code, app) = deploy(
        &c.api,
        "web",
        "http-hello.wasm",
        "wait=true&timeoutSeconds=18446744073709551615",
    )
    .await;
    assert_eq!(code, 201, "{app}");
    let url = app["status"]["url"].as_str().unwrap().to_string();

    // A request that spins past its CPU budget: 504, then the pod serves the next one.
    let (code, body) = get(&http, &format!("{url}spin")).await;
    assert_eq!(code, 504, "{body}");
    assert_eq!(get(&http, &url).await.0, 200);
    // A trap: 500, and again the next request is fine.
    let (code, body) = get(&http, &format!("{url}trap")).await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("trapped"), "{body}");
    assert_eq!(get(&http, &url).await.0, 200);

    // A guest still writing after its client went away.
    let mut streaming = http
        .get(format!("{url}stream?n=40&ms=25"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), 200);
    let first = streaming.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chunk 1"));
    drop(streaming);
    for _ in 0..5 {
        assert_eq!(get(&http, &url).await.0, 200);
    }
    // The pod never restarted, and its log says what happened.
    let (_, list) = c
        .api
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dweb")
        .await;
    let pod = &list["items"][0];
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    assert_eq!(pod["status"]["phase"], "Running");
    let name = pod["metadata"]["name"].as_str().unwrap();
    let (_, log) = c
        .api
        .text(&format!("/api/v1/namespaces/default/pods/{name}/log"))
        .await;
    assert!(log.contains("exceeded its CPU time limit"), "{log}");
    assert!(log.contains("trapped"), "{log}");
}

#[tokio::test]
async fn outbound_calls_are_denied_unless_listed() {
    let c = cluster(1, &[]);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let (code, echo) = deploy(&c.api, "echo", "http-echo.wasm", "wait=true").await;
    assert_eq!(code, 201, "{echo}");
    let target = echo["status"]["url"].as_str().unwrap().to_string();
    let (code, caller) = deploy(&c.api, "caller", "http-fetch.wasm", "wait=true").await;
    assert_eq!(code, 201, "{caller}");
    let caller_url = caller["status"]["url"].as_str().unwrap().to_string();
    let call = format!("{caller_url}?url={target}called");

    // Denied by default: a clear error to the guest, which answers 502.
    let (code, body) = get(&http, &call).await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");

    // Listed: the call goes through the gateway to the echo app.
    let gateway_host = reqwest::Url::parse(&c.gateway).unwrap();
    let allowed = format!(
        "{}:{}",
        gateway_host.host_str().unwrap(),
        gateway_host.port().unwrap()
    );
    let (code, out) = c
        .api
        .patch(
            &format!("{APPS}/caller"),
            "application/merge-patch+json",
            &serde_json::json!({"spec": {"allowedOutboundHosts": [allowed]}}).to_string(),
        )
        .await;
    assert_eq!(code, 200, "{out}");
    let body = eventually("the call allowed", WAIT, || {
        let (http, call) = (http.clone(), call.clone());
        async move {
            let (code, body) = get(&http, &call).await;
            (code == 200).then_some(body)
        }
    })
    .await;
    assert!(body.starts_with("upstream 200:"), "{body}");
    assert!(body.contains(r#""path":"/called""#), "{body}");
}

#[tokio::test]
async fn readiness_and_liveness_probes_run_against_the_handler() {
    let c = cluster(1, &["--backoff-base", "200ms"]);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .unwrap();
    let module = c.api.upload(workload("http-hello.wasm")).await;
    let app = |name: &str, probes: Value| {
        let mut spec = serde_json::json!({"module": module, "replicas": 1});
        for (k, v) in probes.as_object().unwrap() {
            spec[k] = v.clone();
        }
        serde_json::json!({"apiVersion": "skiff.dev/v1", "kind": "App", "metadata": {"name": name}, "spec": spec})
    };
    let probe = |path: &str| serde_json::json!({"httpGet": {"path": path, "port": 80}, "periodSeconds": 1, "failureThreshold": 1});

    // A passing readiness probe: Ready, and served.
    let (code, out) = c
        .api
        .post(
            APPS,
            &app(
                "healthy",
                serde_json::json!({"readinessProbe": probe("/healthz")}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let url = eventually("healthy ready", WAIT, || {
        let api = c.api.clone();
        async move {
            let (_, a) = api.get(&format!("{APPS}/healthy")).await;
            (a["status"]["readyReplicas"] == 1)
                .then(|| a["status"]["url"].as_str().unwrap().to_string())
        }
    })
    .await;
    assert_eq!(get(&http, &url).await.0, 200);

    // A failing readiness probe: running but not ready, so out of the endpoints: 503.
    let (code, out) = c
        .api
        .post(
            APPS,
            &app(
                "sick",
                serde_json::json!({"readinessProbe": probe("/trap")}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let slice = eventually("sick listed as not ready", WAIT, || {
        let api = c.api.clone();
        async move {
            let (code, s) = api
                .get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/sick-skiff")
                .await;
            (code == 200 && s["endpoints"].as_array().is_some_and(|e| e.len() == 1)).then_some(s)
        }
    })
    .await;
    assert_eq!(slice["endpoints"][0]["conditions"]["ready"], false);
    let (_, pods) = c
        .api
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Dsick")
        .await;
    assert_eq!(pods["items"][0]["status"]["phase"], "Running");
    let (code, body) = get(&http, &format!("{}/default/sick/", c.gateway)).await;
    assert_eq!(code, 503, "{body}");

    // A failing liveness probe: the container restarts, with the usual back-off.
    let (code, out) = c
        .api
        .post(
            APPS,
            &app(
                "dying",
                serde_json::json!({"livenessProbe": probe("/trap")}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{out}");
    let pod = eventually("dying restarted twice", WAIT, || {
        let api = c.api.clone();
        async move {
            let (_, pods) = api
                .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Ddying")
                .await;
            let pod = pods["items"].get(0)?.clone();
            (pod["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(2))
                .then_some(pod)
        }
    })
    .await;
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .contains("liveness probe failed"),
        "{last}"
    );
    // Events are sent apart from the status, as a kubelet's are: wait for both.
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    eventually("Unhealthy and Killing events for dying", WAIT, || {
        let api = c.api.clone();
        let name = name.clone();
        async move {
            let (_, events) = api
                .get(&format!(
                    "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{name}"
                ))
                .await;
            let reasons: Vec<String> = events["items"]
                .as_array()?
                .iter()
                .filter_map(|e| e["reason"].as_str().map(str::to_string))
                .collect();
            (reasons.iter().any(|r| r == "Unhealthy") && reasons.iter().any(|r| r == "Killing"))
                .then_some(())
        }
    })
    .await;
}

/// Runs a client verb of the real binary; returns (success, stdout, stderr).
async fn skiff(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("running skiff");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_deploy_apps_and_logs_verbs() {
    let c = cluster(2, &[]);
    let kubeconfig = c.dir.path().join("kubeconfig").display().to_string();
    let guest = |name: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workloads/bin")
            .join(name)
            .display()
            .to_string()
    };
    let (ok, out, err) = skiff(vec![
        "deploy".into(),
        guest("http-hello.wasm"),
        "--name".into(),
        "hi".into(),
        "--replicas".into(),
        "2".into(),
        "--env".into(),
        "VERSION=cli".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("hi is serving at "))
        .unwrap_or_else(|| panic!("no URL in {out}"))
        .to_string();
    let http = reqwest::Client::new();
    let (code, body) = get(&http, &url).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("version=cli"), "{body}");

    let (ok, out, err) = skiff(vec![
        "apps".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("hi "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.contains("2/2") && row.contains(&url), "{out}");

    // A trap leaves a line in the pod's log; `skiff logs app/hi` finds it.
    assert_eq!(get(&http, &format!("{url}trap")).await.0, 500);
    let (ok, out, err) = skiff(vec![
        "logs".into(),
        "app/hi".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("trapped"), "{out}");

    // The autoscaling flags become the App's spec.autoscale.
    let (ok, out, err) = skiff(vec![
        "deploy".into(),
        guest("http-hello.wasm"),
        "--name".into(),
        "auto".into(),
        "--max-replicas".into(),
        "3".into(),
        "--min-replicas".into(),
        "1".into(),
        "--target-rps".into(),
        "50".into(),
        "--scale-down-delay".into(),
        "30s".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    let (code, app) = c
        .api
        .get("/apis/skiff.dev/v1/namespaces/default/apps/auto")
        .await;
    assert_eq!(code, 200, "{app}");
    assert_eq!(
        app["spec"]["autoscale"],
        json!({"minReplicas": 1, "maxReplicas": 3, "targetRequestsPerSecond": 50, "scaleDownDelay": "30s"}),
        "{app}"
    );
    // Without a target, the default one: 10 requests in flight per replica.
    let (ok, out, err) = skiff(vec![
        "deploy".into(),
        guest("http-hello.wasm"),
        "--name".into(),
        "auto".into(),
        "--max-replicas".into(),
        "2".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(ok, "{out}{err}");
    let (_, app) = c
        .api
        .get("/apis/skiff.dev/v1/namespaces/default/apps/auto")
        .await;
    assert_eq!(
        app["spec"]["autoscale"],
        json!({"maxReplicas": 2, "targetConcurrency": 10}),
        "{app}"
    );
    // Flags that need --max-replicas, conflicting targets and a bad delay are refused.
    for (args, says) in [
        (vec!["--min-replicas", "0"], "--max-replicas"),
        (
            vec![
                "--max-replicas",
                "2",
                "--target-rps",
                "5",
                "--target-concurrency",
                "3",
            ],
            "cannot be used with",
        ),
        (
            vec!["--max-replicas", "2", "--scale-down-delay", "soon"],
            "scaleDownDelay",
        ),
        (
            vec!["--max-replicas", "1", "--min-replicas", "2"],
            "minReplicas",
        ),
    ] {
        let mut argv: Vec<String> = vec![
            "deploy".into(),
            guest("http-hello.wasm"),
            "--name".into(),
            "refused".into(),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        argv.extend(["--kubeconfig".into(), kubeconfig.clone()]);
        let (ok, _, err) = skiff(argv).await;
        assert!(!ok, "{args:?} should be refused");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // Failures are clear and exit non-zero.
    let (ok, _, err) = skiff(vec![
        "deploy".into(),
        guest("../README.md"),
        "--name".into(),
        "bad".into(),
        "--kubeconfig".into(),
        kubeconfig.clone(),
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("the module was refused"), "{err}");
    let (ok, _, err) = skiff(vec![
        "logs".into(),
        "app/nope".into(),
        "--kubeconfig".into(),
        kubeconfig,
    ])
    .await;
    assert!(!ok);
    assert!(err.contains("app nope has no pods"), "{err}");
}

/// What http-echo saw of a request: its path (with the query) and its headers.
async fn echoed(http: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let mut request = http.get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    let code = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(code, 200, "{url}: {body}");
    let echoed: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
    (
        echoed["path"].as_str().unwrap().to_string(),
        echoed["headers"].clone(),
    )
}

#[tokio::test]
async fn apps_see_their_own_paths_behind_a_prefix_route() {
    let c = cluster(1, &[]);
    let http = reqwest::Client::new();
    let (code, app) = deploy(&c.api, "echo", "http-echo.wasm", "route=%2Fapi&wait=true").await;
    assert_eq!(code, 201, "{app}");
    let gw = &c.gateway;
    let gateway_host = gw.trim_start_matches("http://");

    // The default prefix route: the prefix is stripped, the query kept, and the app
    // told the prefix, the host and the scheme the client used.
    let (path, headers) = echoed(&http, &format!("{gw}/default/echo/x/y?q=1&r=/z"), &[]).await;
    assert_eq!(path, "/x/y?q=1&r=/z");
    assert_eq!(headers["x-forwarded-prefix"], "/default/echo", "{headers}");
    assert_eq!(headers["x-forwarded-host"], gateway_host, "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "http", "{headers}");
    for root in ["/default/echo", "/default/echo/", "/default/echo?a=b"] {
        let (path, _) = echoed(&http, &format!("{gw}{root}"), &[]).await;
        let query = root.split_once('?').map(|(_, q)| format!("?{q}"));
        assert_eq!(path, format!("/{}", query.unwrap_or_default()), "{root}");
    }
    // Paths that are the agent's own on its listener are the app's here.
    for own in ["/healthz", "/metrics"] {
        let (path, _) = echoed(&http, &format!("{gw}/default/echo{own}"), &[]).await;
        assert_eq!(path, own);
    }

    // The App's own route is a prefix route too.
    let (path, headers) = echoed(&http, &format!("{gw}/api/v1/items?page=2"), &[]).await;
    assert_eq!(path, "/v1/items?page=2");
    assert_eq!(headers["x-forwarded-prefix"], "/api", "{headers}");

    // Behind another proxy: its host and scheme are kept, its prefix comes first.
    let (path, headers) = echoed(
        &http,
        &format!("{gw}/default/echo/x"),
        &[
            ("x-forwarded-host", "example.com"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/outer"),
        ],
    )
    .await;
    assert_eq!(path, "/x");
    assert_eq!(headers["x-forwarded-host"], "example.com", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    assert_eq!(
        headers["x-forwarded-prefix"], "/outer/default/echo",
        "{headers}"
    );

    // A Host route passes the path unchanged and names no prefix.
    let (path, headers) = echoed(
        &http,
        &format!("{gw}/default/echo/x?q=1"),
        &[("host", "echo.default.localhost")],
    )
    .await;
    assert_eq!(path, "/default/echo/x?q=1");
    assert!(headers.get("x-forwarded-prefix").is_none(), "{headers}");
    assert_eq!(
        headers["x-forwarded-host"], "echo.default.localhost",
        "{headers}"
    );

    // A client of the agent itself (an edge device's, with no gateway) is routed by the
    // same routes and sees the same paths.
    let (_, node) = c.api.get("/api/v1/nodes/dev-1").await;
    let ip = node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    let port = &node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"];
    let agent = format!("http://{ip}:{port}");
    let (path, headers) = echoed(&http, &format!("{agent}/default/echo/x?q=1"), &[]).await;
    assert_eq!(path, "/x?q=1");
    assert_eq!(headers["x-forwarded-prefix"], "/default/echo", "{headers}");
    let (path, _) = echoed(
        &http,
        &format!("{agent}/x?q=1"),
        &[("host", "echo.default.localhost")],
    )
    .await;
    assert_eq!(path, "/x?q=1");
}

#[test]
fn dev_takes_a_free_gateway_port_when_the_default_is_busy() {
    // Hold the default port; if another program already holds it, it is busy anyway.
    let held = std::net::TcpListener::bind("127.0.0.1:8080");
    if let Err(e) = &held {
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    }
    let dir = tempfile::tempdir().unwrap();
    // No --gateway: the default, which is busy.
    let (process, _) = common::Process::start(
        &[
            "dev",
            "--gateway-https",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "api:",
    );
    let gateway = process
        .printed("gateway:")
        .expect("skiff dev prints its gateway");
    let said = process
        .seen
        .iter()
        .find(|l| l.starts_with("port 8080 is busy"))
        .unwrap_or_else(|| panic!("no word of the busy port in {:?}", process.seen));
    assert!(said.contains("127.0.0.1:8080"), "{said}");
    assert!(
        said.ends_with(&format!("the gateway took a free port: {gateway}")),
        "{said}"
    );
    let port = reqwest::Url::parse(&gateway).unwrap().port().unwrap();
    assert_ne!(port, 8080, "{gateway}");
    // The gateway it took answers (no app is routed there yet).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let code = runtime.block_on(async {
        reqwest::get(format!("{gateway}/default/none/"))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(code, 404);
    drop(held);
}

/// A deleted pod finishes the requests it is serving within its grace period, a
/// streamed body included, as a Kubernetes pod drains after SIGTERM; it takes no new
/// ones meanwhile (the gateway tries another replica).
#[tokio::test]
async fn a_deleted_pod_finishes_the_requests_it_is_serving() {
    let c = cluster(1, &[]);
    let (code, app) = deploy(&c.api, "drain", "http-hello.wasm", "wait=true").await;
    assert_eq!(code, 201, "{app}");
    let url = app["status"]["url"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();
    // Ten chunks, 300 ms apart: the stream outlives the pod's deletion by seconds.
    let mut response = http
        .get(format!("{url}stream?n=10&ms=300"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(body.starts_with("chunk 1\n"), "{body}");

    let (_, pods) = c
        .api
        .get("/api/v1/namespaces/default/pods?labelSelector=app.skiff.dev%2Fname%3Ddrain")
        .await;
    let name = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, deleted) = c
        .api
        .delete(&format!("/api/v1/namespaces/default/pods/{name}"), None)
        .await;
    assert_eq!(code, 200, "{deleted}");
    // The agent has begun the drain: the pod is no longer Ready.
    eventually("the deleted pod is not Ready", WAIT, || {
        let api = c.api.clone();
        let name = name.clone();
        async move {
            let (code, pod) = api
                .get(&format!("/api/v1/namespaces/default/pods/{name}"))
                .await;
            (code == 404
                || pod["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "False"))
            .then_some(())
        }
    })
    .await;
    while let Some(chunk) = response.chunk().await.expect("the stream is not cut") {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let expected: String = (1..=10).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(body, expected);
}

/// A pod reads its projected ServiceAccount token and calls the API at
/// `kubernetes.default.svc` with it: 403 while its account has no role, the pods once a
/// RoleBinding grants `view`, 403 again once the binding goes.
#[tokio::test]
async fn a_pod_lists_pods_with_its_service_account_token_as_rbac_allows() {
    let c = cluster(1, &[]);
    let kubeconfig = c.dir.path().join("kubeconfig");
    let http = reqwest::Client::new();
    let (code, caller) = deploy(&c.api, "caller", "http-fetch.wasm", "wait=true").await;
    assert_eq!(code, 201, "{caller}");
    let url = caller["status"]["url"].as_str().unwrap().to_string();
    let call = format!(
        "{url}?url=https://kubernetes.default.svc/api/v1/namespaces/default/pods\
         &token=/var/run/secrets/kubernetes.io/serviceaccount/token"
    );
    let answer = |want: &'static str| {
        let (http, call) = (http.clone(), call.clone());
        async move {
            eventually(&format!("the pod's call answered {want}"), WAIT, || {
                let (http, call) = (http.clone(), call.clone());
                async move {
                    let (code, body) = get(&http, &call).await;
                    (code == 200 && body.starts_with(want)).then_some(body)
                }
            })
            .await
        }
    };
    // Authenticated as its account (not as the node), which may do nothing yet.
    let body = answer("upstream 403:").await;
    assert!(
        body.contains(
            r#"User \"system:serviceaccount:default:default\" cannot list resource \"pods\""#
        ),
        "{body}"
    );
    common::kubectl(
        &kubeconfig,
        &[
            "create",
            "rolebinding",
            "default-view",
            "--clusterrole=view",
            "--serviceaccount=default:default",
        ],
    );
    let body = answer("upstream 200:").await;
    assert!(
        body.contains(r#""kind":"PodList""#) && body.contains("caller"),
        "{body}"
    );
    common::kubectl(&kubeconfig, &["delete", "rolebinding", "default-view"]);
    answer("upstream 403:").await;
}
