//! The web dashboard's files, served at `/ui/` on the API's address (docs/dashboard.md).
//!
//! The dashboard is a single-page app and nothing but another client of the API: the
//! browser signs in with a bearer token and lists and watches as kubectl does. So these
//! routes hand out only static files, to anyone (they hold no data), and every byte of
//! cluster state goes through the authorized API.
//!
//! - `/ui` redirects to `/ui/`.
//! - `/ui/PATH` serves the file `controlplane/ui/PATH`, embedded in the binary, gzipped
//!   once on first use when the browser accepts it, with an ETag for revalidation.
//! - Any other path under `/ui/` without a file extension (`/ui/apps`,
//!   `/ui/pods/default/web-1`) is one of the app's own routes: it gets `index.html`,
//!   and the app reads the path. A missing file with an extension is a 404.
//! - `SKIFF_UI_DIR=DIR` serves the files from `DIR` instead, read on every request,
//!   for working on the dashboard without rebuilding.
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles and
//! connections only from this origin, so injected markup cannot run or phone out.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

#[derive(rust_embed::Embed)]
#[folder = "ui/"]
struct Assets;

/// The policy every dashboard answer carries. Inline styles are allowed (the app sets
/// element positions for its virtualised lists); inline scripts are not.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The dashboard's routes. They need no state: the files are in the binary.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("", &headers) }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

/// One file, as served: its bytes, gzipped bytes (if smaller), type and ETag.
#[derive(Clone)]
struct File {
    /// `Bytes`, so that an answer shares the file rather than copying it.
    body: Bytes,
    gzip: Option<Bytes>,
    mime: &'static str,
    etag: String,
}

impl File {
    fn new(path: &str, body: Bytes) -> File {
        let mime = mime_of(path);
        let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..32]);
        let gzip = compressible(mime)
            .then(|| gzip(&body))
            .flatten()
            .map(Bytes::from);
        File {
            body,
            gzip,
            mime,
            etag,
        }
    }
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).ok()?;
    let out = encoder.finish().ok()?;
    (out.len() < bytes.len()).then_some(out)
}

/// The embedded files, prepared once.
fn embedded() -> &'static HashMap<String, File> {
    static FILES: OnceLock<HashMap<String, File>> = OnceLock::new();
    FILES.get_or_init(|| {
        Assets::iter()
            .filter_map(|path| {
                let file = Assets::get(&path)?;
                let body = match file.data {
                    Cow::Borrowed(data) => Bytes::from_static(data),
                    Cow::Owned(data) => Bytes::from(data),
                };
                Some((path.to_string(), File::new(&path, body)))
            })
            .collect()
    })
}

/// A file from `SKIFF_UI_DIR`, read now. Paths with `..` or absolute parts are refused.
fn from_dir(dir: &str, path: &str) -> Option<File> {
    let relative = std::path::Path::new(path);
    if relative
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    let bytes = std::fs::read(std::path::Path::new(dir).join(relative)).ok()?;
    Some(File::new(path, Bytes::from(bytes)))
}

fn lookup(path: &str) -> Option<Cow<'static, File>> {
    match std::env::var("SKIFF_UI_DIR") {
        Ok(dir) if !dir.is_empty() => from_dir(&dir, path).map(Cow::Owned),
        _ => embedded().get(path).map(Cow::Borrowed),
    }
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let path = path.trim_start_matches('/');
    let file = match lookup(path) {
        Some(file) if !path.is_empty() => file,
        // The app's own routes (no extension) are the app.
        _ if !has_extension(path) => match lookup("index.html") {
            Some(index) => index,
            None => return not_found(),
        },
        _ => return not_found(),
    };
    let mut response = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == file.etag.as_bytes())
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let accepts_gzip = headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
        match (&file.gzip, accepts_gzip) {
            (Some(gz), true) => (
                [(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"))],
                gz.clone(),
            )
                .into_response(),
            _ => file.body.clone().into_response(),
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(file.mime));
    if let Ok(etag) = HeaderValue::from_str(&file.etag) {
        h.insert(header::ETAG, etag);
    }
    // Always revalidated (a 304 costs one round trip on loopback), so a new binary's
    // files are picked up at once without versioned names.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "no such file in the dashboard\n",
    )
        .into_response()
}

fn has_extension(path: &str) -> bool {
    path.rsplit('/')
        .next()
        .is_some_and(|last| last.contains('.'))
}

fn mime_of(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn compressible(mime: &str) -> bool {
    mime.starts_with("text/") || mime == "image/svg+xml" || mime == "application/json"
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::get(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        routes::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn body(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn the_app_is_served_at_its_routes_with_a_policy_and_missing_files_are_404() {
        let index = get("/ui/", &[]).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert!(
            index.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            index.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let page = body(index).await;
        assert!(String::from_utf8_lossy(&page).contains("<!doctype html>"));

        // A client-side route is the app itself.
        let apps = get("/ui/apps", &[]).await;
        assert_eq!(apps.status(), StatusCode::OK);
        assert_eq!(body(apps).await, page);
        let pod = get("/ui/pods/default/web-1", &[]).await;
        assert_eq!(body(pod).await, page);

        assert_eq!(
            get("/ui/nothing.js", &[]).await.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(get("/ui", &[]).await.headers()[header::LOCATION], "/ui/");
    }

    #[tokio::test]
    async fn files_are_gzipped_for_browsers_that_accept_it_and_revalidated_by_etag() {
        let plain = get("/ui/index.html", &[]).await;
        let etag = plain.headers()[header::ETAG].to_str().unwrap().to_string();
        let plain = body(plain).await;

        let zipped = get("/ui/index.html", &[("accept-encoding", "gzip, br")]).await;
        if zipped.headers().get(header::CONTENT_ENCODING).is_some() {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&body(zipped).await[..]),
                &mut out,
            )
            .unwrap();
            assert_eq!(out, plain);
        }

        let again = get("/ui/index.html", &[("if-none-match", &etag)]).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn a_ui_dir_never_serves_outside_itself() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.js"), "x").unwrap();
        let d = dir.path().to_str().unwrap();
        assert!(from_dir(d, "a.js").is_some());
        assert!(from_dir(d, "../a.js").is_none());
        assert!(from_dir(d, "/etc/passwd").is_none());
    }
}
