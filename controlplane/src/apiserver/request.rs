//! Request plumbing shared by the handlers: what a path names, query parameters,
//! bounded body reads, content negotiation, and JSON responses.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::Value;
use skiff_api::protobuf;

use skiff_api::resources::{ResourceInfo, Subresource};

use crate::error::{ApiError, ApiResult};

/// What a request path names.
#[derive(Debug)]
pub(crate) struct Target {
    pub info: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Subresource>,
}

impl Target {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    pub fn key(&self) -> String {
        self.info.key(self.namespace.as_deref(), self.name())
    }
}

pub(crate) fn parse_target(group: &str, version: &str, rest: &str) -> ApiResult<Target> {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let lookup = |plural: &str| crate::kinds::lookup(group, version, plural);
    let (namespace, segs) = match segs.as_slice() {
        ["namespaces", ns, plural, ..] if lookup(plural).is_some_and(|i| i.namespaced) => {
            (Some((*ns).to_string()), &segs[2..])
        }
        _ => (None, &segs[..]),
    };
    let (plural, name, sub) = match segs {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(ApiError::NoRoute),
    };
    let info = lookup(plural).ok_or(ApiError::NoRoute)?;
    // A namespaced object is only reachable through its namespace; the bare collection
    // path lists across all namespaces.
    if info.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::NoRoute);
    }
    let sub = match sub {
        None => None,
        Some(s) => Some(
            info.subresources
                .iter()
                .copied()
                .find(|x| x.name() == s)
                .ok_or(ApiError::NoRoute)?,
        ),
    };
    Ok(Target {
        info,
        namespace,
        name: name.map(str::to_string),
        sub,
    })
}

/// A request's query parameters (the last value wins, as in Kubernetes).
#[derive(Debug, Default, Clone)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(raw: Option<&str>) -> ApiResult<Query> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or_default())
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))?;
        Ok(Query(pairs.into_iter().collect()))
    }

    /// A copy with one parameter replaced.
    pub fn with(&self, key: &str, value: String) -> Query {
        let mut q = self.clone();
        q.0.insert(key.to_string(), value);
        q
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean parameter: `1` and `true` are true.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("1" | "true" | "True"))
    }

    pub fn number<T: std::str::FromStr>(&self, key: &str) -> ApiResult<Option<T>> {
        self.get(key)
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::BadRequest(format!("invalid value for {key}: {v:?}")))
            })
            .transpose()
    }

    /// `dryRun=All` means validate and answer, but store nothing.
    pub fn dry_run(&self) -> ApiResult<bool> {
        match self.get("dryRun") {
            None => Ok(false),
            Some("All") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "unsupported dryRun value {other:?}: only \"All\" is supported"
            ))),
        }
    }
}

/// Reads a whole body, refusing more than `limit` bytes without buffering them.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::body_too_large(limit))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "reading the request body failed: {e}"
        ))),
    }
}

/// The media type of the body, without parameters.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|v| !v.is_empty())
}

/// Create and update take JSON or Kubernetes protobuf; a missing content type is read
/// as JSON.
pub fn require_json(headers: &HeaderMap) -> ApiResult<()> {
    match content_type(headers).as_deref() {
        None | Some("application/json") | Some(protobuf::CONTENT_TYPE) => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: \
             application/json, {} (got {other})",
            protobuf::CONTENT_TYPE
        ))),
    }
}

/// Whether the client asked for JSON rather than raw bytes (used by module downloads).
pub fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    accept.contains("application/json") && !accept.contains("application/wasm")
}

/// Parses an object body: JSON, or Kubernetes protobuf (recognised by its magic
/// prefix, which no JSON document starts with), read as the JSON it stands for.
pub fn parse_json(body: &[u8]) -> ApiResult<Value> {
    if body.starts_with(protobuf::MAGIC) {
        return protobuf::decode(body, crate::kinds::all)
            .map_err(|e| ApiError::BadRequest(e.to_string()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    Ok(value)
}

pub fn json_response(code: StatusCode, value: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// The most `Warning` headers one response carries: HTTP clients refuse a response
/// with more than about 100 headers (Python's and hyper's limit is 100).
const MAX_WARNINGS: usize = 32;
/// The most text they carry in all, and in one, as Kubernetes limits them (4096 and 256
/// characters).
const MAX_WARNING_CHARS: usize = 4096;
const MAX_WARNING_ITEM_CHARS: usize = 256;

/// Adds one `Warning` header per distinct message, in the RFC 7234 form Kubernetes uses
/// (`299 - "text"`), which kubectl prints as `Warning: text`. A body with hundreds of
/// unknown fields gets the first of them and a last warning counting the rest, so the
/// response stays one that clients accept.
pub fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    let mut seen = std::collections::HashSet::new();
    let distinct: Vec<&String> = warnings.iter().filter(|w| seen.insert(*w)).collect();
    let mut chars = 0;
    let mut sent = 0;
    for w in &distinct {
        let text: String = w.chars().take(MAX_WARNING_ITEM_CHARS).collect();
        let len = text.chars().count();
        if sent == MAX_WARNINGS - 1 || chars + len > MAX_WARNING_CHARS {
            break;
        }
        if append_warning(&mut response, &text) {
            chars += len;
            sent += 1;
        }
    }
    let dropped = distinct.len() - sent;
    if dropped > 0 {
        append_warning(
            &mut response,
            &format!("{dropped} more warnings were left out"),
        );
    }
    response
}

fn append_warning(response: &mut Response, text: &str) -> bool {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"");
    match axum::http::HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
        Ok(value) => {
            response
                .headers_mut()
                .append(axum::http::header::WARNING, value);
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_targets() {
        let t = parse_target("", "v1", "namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (t.info.plural, t.namespace.as_deref(), t.name(), t.sub),
            ("pods", Some("default"), "web", Some(Subresource::Status))
        );
        let t = parse_target("", "v1", "namespaces/default").unwrap();
        assert_eq!((t.info.plural, t.name()), ("namespaces", "default"));
        let t = parse_target("", "v1", "namespaces/kube-system/status").unwrap();
        assert_eq!(
            (t.info.plural, t.name(), t.sub),
            ("namespaces", "kube-system", Some(Subresource::Status))
        );
        let t = parse_target("", "v1", "pods").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse_target("apps", "v1", "namespaces/x/deployments/d/scale").unwrap();
        assert_eq!(t.sub, Some(Subresource::Scale));
        assert!(parse_target("", "v1", "pods/web").is_err());
        assert!(parse_target("", "v1", "namespaces/x/pods/web/scale").is_err());
        assert!(parse_target("", "v1", "widgets").is_err());
        assert!(parse_target("apps", "v1", "namespaces/x/deployments/d/scale/extra").is_err());
    }
}
