//! The dashboard's server side with the real binary: `/ui/` is served to anyone (the
//! files hold no data), the app's own routes get the app, and `skiff dashboard` makes a
//! sign-in link whose short-lived token works until its expiry (moved past with
//! `skiff dev --fake-clock`), read-only for `--role viewer`. What the dashboard does in
//! a browser is tested by ui-tests/ (scripts/test runs them in Chromium).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Api, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// `skiff ARGS --kubeconfig KC`: (success, stdout, stderr).
fn skiff(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The token of the sign-in link `skiff dashboard ARGS` prints, and the link.
fn sign_in_link(kubeconfig: &Path, args: &[&str]) -> (String, String) {
    let mut all = vec!["dashboard", "--no-open"];
    all.extend_from_slice(args);
    let (ok, out, err) = skiff(kubeconfig, &all);
    assert!(ok, "skiff dashboard failed: {out}{err}");
    let link = out
        .lines()
        .find(|l| l.contains("#token="))
        .unwrap_or_else(|| panic!("no sign-in link in: {out}"))
        .trim()
        .to_string();
    let token = link.split_once("#token=").unwrap().1.to_string();
    (token, link)
}

#[tokio::test]
async fn the_dashboard_is_served_and_its_sign_in_link_works_until_it_expires() {
    let (dir, _cluster, admin) = common::dev_cluster(1, &["--fake-clock"]);
    let kubeconfig = dir.path().join("kubeconfig");
    let anonymous = Api::anonymous(&admin.base);

    // The app, to anyone, at its root and at its own routes; no data without a token.
    let (code, page) = anonymous.text("/ui/").await;
    assert_eq!(code, 200);
    assert!(page.contains("<!doctype html>"), "{page}");
    let (code, route) = anonymous.text("/ui/apps").await;
    assert_eq!((code, &route), (200, &page), "a client route is the app");
    assert_eq!(anonymous.text("/ui/no-such.js").await.0, 404);
    assert_eq!(anonymous.get("/api/v1/nodes").await.0, 401);

    // An admin link: the token in the URL's fragment, under the API's address.
    let (token, link) = sign_in_link(&kubeconfig, &["--ttl", "10m"]);
    assert!(
        link.starts_with(&format!("{}/ui/#token=", admin.base.trim_end_matches('/'))),
        "{link}"
    );
    let signed_in = Api::with_token(&admin.base, None, &token);
    let (code, nodes) = signed_in.get("/api/v1/nodes").await;
    assert_eq!(code, 200, "{nodes}");
    let (code, created) = signed_in
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "from-the-dashboard"}}),
        )
        .await;
    assert_eq!(code, 201, "an admin link may write: {created}");

    // A viewer link reads and may not write.
    let (viewer_token, _) = sign_in_link(&kubeconfig, &["--role", "viewer", "--ttl", "10m"]);
    let viewer = Api::with_token(&admin.base, None, &viewer_token);
    assert_eq!(viewer.get("/api/v1/nodes").await.0, 200);
    let (code, refused) = viewer
        .post(
            "/api/v1/namespaces/default/configmaps",
            &json!({"metadata": {"name": "nope"}}),
        )
        .await;
    assert_eq!(code, 403, "{refused}");

    // `skiff token list` shows when they expire.
    let (ok, list, err) = skiff(&kubeconfig, &["token", "list"]);
    assert!(ok, "{err}");
    assert!(list.contains("EXPIRES"), "{list}");
    assert!(
        list.lines()
            .filter(|l| l.contains("dashboard sign-in link"))
            .all(|l| l.contains('m') && !l.contains("never")),
        "{list}"
    );

    // Past the expiry (the fake clock jumps 11 minutes) both stop working at once;
    // tokens without an expiry go on.
    let (code, moved) = admin
        .post("/skiff/v1/clock", &json!({"advanceSeconds": 660}))
        .await;
    assert_eq!(code, 200, "{moved}");
    assert_eq!(signed_in.get("/api/v1/nodes").await.0, 401);
    assert_eq!(viewer.get("/api/v1/nodes").await.0, 401);
    assert_eq!(admin.get("/api/v1/nodes").await.0, 200);

    // The next token made sweeps the expired records away.
    let _ = sign_in_link(&kubeconfig, &["--ttl", "1h"]);
    eventually("expired sign-in tokens swept", WAIT, || async {
        let (_, list, _) = skiff(&kubeconfig, &["token", "list"]);
        (!list.contains("expired")
            && list
                .lines()
                .filter(|l| l.contains("dashboard sign-in link"))
                .count()
                == 1)
            .then_some(())
    })
    .await;

    // A lifetime out of range is refused with the reason.
    let (code, status) = admin
        .post(
            "/skiff/v1/tokens",
            &json!({"role": "admin", "expirationSeconds": 0}),
        )
        .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("expirationSeconds"),
        "{status}"
    );
    let (code, status) = admin
        .post(
            "/skiff/v1/tokens",
            &json!({"role": "join", "expirationSeconds": 60}),
        )
        .await;
    assert_eq!(code, 400, "{status}");
}
