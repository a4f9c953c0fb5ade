//! End to end: the module store validates uploads with the Wasm parser, stores them
//! content-addressed and idempotently, serves the bytes back, and enforces its limit.

mod common;

use common::ServerProcess;
use reqwest::Method;

const MODULES: &str = "/apis/skiff.dev/v1/modules";

/// The smallest valid core module: magic and version.
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";
/// The smallest valid component: magic and the component layer/version.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

// Each test below runs once per store, as redb::NAME and etcd::NAME.
common::store::store_tests!(#[tokio::test] async fn
    upload_is_validated_content_addressed_and_idempotent,
);

async fn upload_is_validated_content_addressed_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), &["--max-module-bytes", "1024"]);
    let api = server.api();

    let (code, module) = api
        .raw(
            Method::POST,
            MODULES,
            "application/wasm",
            EMPTY_MODULE.to_vec(),
        )
        .await;
    assert_eq!(code, 201, "{module}");
    let digest = format!("sha256:{}", sha256_hex(EMPTY_MODULE));
    assert_eq!(module["digest"], digest.as_str());
    assert_eq!(module["size"], EMPTY_MODULE.len());
    assert_eq!(module["type"], "module");
    assert_eq!(module["metadata"]["name"], digest.as_str());

    // Same bytes again: same object, 200 not 201.
    let (code, again) = api
        .raw(
            Method::POST,
            MODULES,
            "application/wasm",
            EMPTY_MODULE.to_vec(),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(again["metadata"]["uid"], module["metadata"]["uid"]);

    let (code, component) = api
        .raw(
            Method::POST,
            MODULES,
            "application/wasm",
            EMPTY_COMPONENT.to_vec(),
        )
        .await;
    assert_eq!(
        (code, component["type"].as_str()),
        (201, Some("component")),
        "{component}"
    );

    // The bytes come back exactly, and the object is listed.
    let bytes = api
        .http
        .get(format!("{}{MODULES}/{digest}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bytes.headers()["content-type"], "application/wasm");
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), EMPTY_MODULE);
    let json = api
        .http
        .get(format!("{}{MODULES}/{digest}", api.base))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        json.json::<serde_json::Value>().await.unwrap()["digest"],
        digest.as_str()
    );
    let (_, list) = api.get(MODULES).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Garbage is 422 with the parser's message; oversize is 413; JSON is 415.
    let (code, bad) = api
        .raw(
            Method::POST,
            MODULES,
            "application/wasm",
            b"\0asm\x01\0\0\0\x01\x05garbage".to_vec(),
        )
        .await;
    assert_eq!(
        (code, bad["reason"].as_str()),
        (422, Some("Invalid")),
        "{bad}"
    );
    assert!(
        bad["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Invalid value"),
        "{bad}"
    );
    let (code, not_wasm) = api
        .raw(
            Method::POST,
            MODULES,
            "application/wasm",
            b"#!/bin/sh\necho hi\n".to_vec(),
        )
        .await;
    assert_eq!(code, 422, "{not_wasm}");
    assert!(not_wasm["message"].as_str().unwrap().contains("magic"));
    let mut huge = EMPTY_MODULE.to_vec();
    huge.resize(4096, 0);
    let (code, big) = api
        .raw(Method::POST, MODULES, "application/wasm", huge)
        .await;
    assert_eq!(
        (code, big["reason"].as_str()),
        (413, Some("RequestEntityTooLarge"))
    );
    let (code, _) = api
        .raw(Method::POST, MODULES, "application/json", b"{}".to_vec())
        .await;
    assert_eq!(code, 415);
    assert_eq!(
        api.get(MODULES).await.1["items"].as_array().unwrap().len(),
        2,
        "rejected uploads store nothing"
    );

    // Unknown digests are 404; deleting removes object and bytes: the server's file,
    // and on etcd the chunks every server reads.
    let (code, _) = api
        .get(&format!("{MODULES}/sha256:{}", "0".repeat(64)))
        .await;
    assert_eq!(code, 404);
    let file = dir
        .path()
        .join("modules/sha256")
        .join(sha256_hex(EMPTY_MODULE));
    assert!(file.exists());
    let chunks = match server.etcd_location() {
        Some((endpoints, prefix)) => {
            let chunks = format!("{prefix}/blobs/sha256/{}/", sha256_hex(EMPTY_MODULE));
            assert_eq!(common::etcd::count_keys(&endpoints, &chunks).await, 1);
            Some((endpoints, chunks))
        }
        None => None,
    };
    let (code, _) = api.delete(&format!("{MODULES}/{digest}"), None).await;
    assert_eq!(code, 200);
    let (code, _) = api.get(&format!("{MODULES}/{digest}")).await;
    assert_eq!(code, 404);
    assert!(!file.exists());
    if let Some((endpoints, chunks)) = chunks {
        assert_eq!(common::etcd::count_keys(&endpoints, &chunks).await, 0);
    }
}
