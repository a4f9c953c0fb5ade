//! The real wasi:http guests from `workloads/`, served one request at a time: answers,
//! traps, CPU deadlines, environment, body limits and the outbound allow-list.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::*;
use crate::wasm::{HttpSpec, OutboundHosts, ProgramKind};

fn http_program(name: &str) -> Arc<Program> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../workloads/bin/{name}"));
    let bytes = std::fs::read(&path).expect("the committed guest");
    let cache = tempfile::tempdir().expect("temp dir");
    let (program, _) = engine()
        .load(&digest(&bytes), &bytes, cache.path())
        .expect("the guest loads");
    program
}

fn http_spec(output: Arc<Capture>) -> HttpSpec {
    HttpSpec {
        run: spec(output),
        timeout: Duration::from_millis(300),
        outbound: OutboundHosts::default(),
        cluster_api: None,
        max_body_bytes: 1024,
        faults: Default::default(),
    }
}

async fn call(
    program: &Program,
    spec: &HttpSpec,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = program.serve(spec, request, CancellationToken::new()).await;
    let code = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_else(|e| format!("body error: {e:?}"));
    (code, body)
}

#[tokio::test]
async fn an_http_component_answers_traps_times_out_and_serves_on() {
    let program = http_program("http-hello.wasm");
    assert_eq!(program.kind(), ProgramKind::HttpComponent);
    let output = Capture::new();
    let mut spec = http_spec(output.clone());
    spec.run.env = vec![("VERSION".to_owned(), "7".to_owned())];
    let faults = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = faults.clone();
    spec.faults = crate::wasm::FaultHook::new(move |kind| seen.lock().unwrap().push(kind));
    assert_eq!(
        call(&program, &spec, "GET", "/default/web/", "").await,
        (200, "hello from skiff version=7\n".to_owned())
    );
    let (code, body) = call(&program, &spec, "GET", "/default/web/trap", "").await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("trapped"), "{body}");
    let started = std::time::Instant::now();
    let (code, body) = call(&program, &spec, "GET", "/spin", "").await;
    assert_eq!(code, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped at the deadline"
    );
    // Each request is a fresh instance: the faults left nothing behind.
    assert_eq!(call(&program, &spec, "GET", "/", "").await.0, 200);
    assert_eq!(*faults.lock().unwrap(), ["trap", "timeout"]);
    let log = output.stderr();
    assert!(log.contains("the app trapped"), "{log}");
    assert!(
        log.contains("exceeded its CPU time limit of 300 ms"),
        "{log}"
    );
}

#[tokio::test]
async fn request_bodies_are_capped() {
    let program = http_program("http-echo.wasm");
    let spec = http_spec(Capture::new());
    let (code, body) = call(&program, &spec, "POST", "/", "small").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"body\":\"small\""), "{body}");
    // Streamed without a length: cut at the limit.
    let (code, body) = call(&program, &spec, "POST", "/", &"x".repeat(4096)).await;
    assert_eq!(code, 413, "{body}");
    // Declared too long: refused before the guest runs.
    let request = hyper::Request::post("/")
        .header("content-length", "4096")
        .header("host", "test.local")
        .body(Full::new(Bytes::from("x".repeat(4096))))
        .unwrap();
    let response = program
        .serve(&spec, request, CancellationToken::new())
        .await;
    assert_eq!(response.status().as_u16(), 413);
}

#[tokio::test]
async fn outgoing_calls_need_an_allowed_host() {
    let program = http_program("http-fetch.wasm");
    let mut spec = http_spec(Capture::new());
    // Nothing listens on port 9 of loopback: allowed calls are refused by the network,
    // denied ones never leave the host.
    let (code, body) = call(&program, &spec, "GET", "/?url=http://127.0.0.1:9/", "").await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    spec.outbound = OutboundHosts::new(vec!["127.0.0.1:9".to_owned()]);
    let (code, body) = call(&program, &spec, "GET", "/?url=http://127.0.0.1:9/", "").await;
    assert_eq!(code, 502, "{body}");
    assert!(!body.contains("HttpRequestDenied"), "{body}");
    assert!(body.contains("ConnectionRefused"), "{body}");
}
