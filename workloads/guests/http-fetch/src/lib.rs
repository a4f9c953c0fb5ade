//! http-fetch: a wasi:http component that calls another app through
//! wasi:http/outgoing-handler.
//!
//! `GET ANY/PATH?url=http://HOST:PORT/PATH` (the `url` value may be
//! percent-encoded) performs an outgoing GET to that URL, then:
//!
//! - upstream answered → 200 `upstream <status>: <upstream body>`
//! - the call failed (denied by the host, connection refused, body read
//!   error, ...) → 502 `outbound call failed: <ErrorCode debug text>`
//! - no `url` parameter → 400 `missing url query parameter`
//! - `url` not `http://` / `https://` or without a host → 400 `invalid url: URL`
//! - `&token=PATH`: the request carries `Authorization: Bearer <contents of PATH>`
//!   (a pod's ServiceAccount token, read at each request since it is rotated);
//!   unreadable → 500 `reading token PATH: ERROR`
//!
//! It never traps on a failed call.

use http_util::wasip2;
use http_util::{query_param, read_body, respond, split_path};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme};

const TEXT: &str = "text/plain";

struct Fetch;

impl Guest for Fetch {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let (_, query) = split_path(&pq);
        let Some(url) = query_param(query, "url") else {
            return respond(out, 400, TEXT, b"missing url query parameter\n");
        };
        let Some((scheme, authority, path)) = parse_url(&url) else {
            return respond(out, 400, TEXT, format!("invalid url: {url}\n").as_bytes());
        };
        let bearer = match query_param(query, "token") {
            None => None,
            Some(file) => match std::fs::read_to_string(&file) {
                Ok(t) => Some(t.trim().to_string()),
                Err(e) => {
                    let text = format!("reading token {file}: {e}\n");
                    return respond(out, 500, TEXT, text.as_bytes());
                }
            },
        };
        match get(scheme, authority, path, bearer.as_deref()) {
            Ok((status, body)) => {
                let mut text = format!("upstream {status}: ").into_bytes();
                text.extend_from_slice(&body);
                respond(out, 200, TEXT, &text);
            }
            Err(e) => respond(
                out,
                502,
                TEXT,
                format!("outbound call failed: {e}").as_bytes(),
            ),
        }
    }
}

/// `scheme://authority[/path][?query]` → (scheme, authority, path-with-query).
fn parse_url(url: &str) -> Option<(Scheme, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return None;
    }
    let path = match path.as_bytes().first() {
        None => "/".to_string(),
        Some(b'?') => format!("/{path}"),
        Some(_) => path.to_string(),
    };
    Some((scheme, authority, path))
}

/// One outgoing GET, with a bearer token if given; returns (status, body) or the
/// error's debug text.
fn get(
    scheme: Scheme,
    authority: &str,
    path: String,
    bearer: Option<&str>,
) -> Result<(u16, Vec<u8>), String> {
    let headers = Fields::new();
    if let Some(token) = bearer {
        headers
            .append("authorization", format!("Bearer {token}").as_bytes())
            .map_err(|e| format!("authorization header: {e:?}"))?;
    }
    let req = OutgoingRequest::new(headers);
    req.set_scheme(Some(&scheme))
        .map_err(|()| "invalid scheme".to_string())?;
    req.set_authority(Some(authority))
        .map_err(|()| format!("invalid authority {authority:?}"))?;
    req.set_path_with_query(Some(&path))
        .map_err(|()| format!("invalid path {path:?}"))?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    // The pollable is a child of `future`: this statement drops it right away.
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => return Err(format!("{e:?}")),
        Some(Err(())) => return Err("response already taken".to_string()),
        None => return Err("response not ready".to_string()),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| "response body already taken".to_string())?;
    let data = read_body(body)?;
    Ok((status, data))
}

wasip2::http::proxy::export!(Fetch);
