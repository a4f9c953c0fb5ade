//! Shared helpers for the Skiff wasi:http guests (`http-hello`, `http-echo`,
//! `http-fetch`). Re-exports the `wasip2` bindings (wasi 0.2.12) and adds
//! blocking helpers on top of the raw streams. Nothing here traps on I/O
//! errors: failures come back as `Err` so a guest can give up cleanly (e.g.
//! when the client has gone away).

pub use wasip2;

use wasip2::http::types::{
    Fields, IncomingBody, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// Text of a stream error, for messages.
pub fn stream_error_text(e: &StreamError) -> String {
    match e {
        StreamError::Closed => "stream closed".to_string(),
        StreamError::LastOperationFailed(err) => err.to_debug_string(),
    }
}

/// Writes all of `bytes` to `out` and flushes, waiting (pollable `block`) for
/// room and for the flush. Returns the error if the stream fails or closes.
pub fn write_all(out: &OutputStream, mut bytes: &[u8]) -> Result<(), StreamError> {
    while !bytes.is_empty() {
        let room = out.check_write()?;
        if room == 0 {
            out.subscribe().block();
            continue;
        }
        let n = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        out.write(&bytes[..n])?;
        bytes = &bytes[n..];
    }
    out.blocking_flush()
}

/// Reads `input` to its end (`StreamError::Closed`), blocking as needed.
pub fn read_all(input: &InputStream) -> Result<Vec<u8>, StreamError> {
    let mut data = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(data),
            Err(e) => return Err(e),
        }
    }
}

/// Reads a whole incoming body (request or response) and finishes it.
pub fn read_body(body: IncomingBody) -> Result<Vec<u8>, String> {
    let stream = body
        .stream()
        .map_err(|()| "body stream already taken".to_string())?;
    let data = read_all(&stream).map_err(|e| stream_error_text(&e));
    // The stream is a child of the body: drop it before finishing the body.
    drop(stream);
    drop(IncomingBody::finish(body));
    data
}

/// Builds headers from `(name, value)` pairs, skipping any the host rejects.
pub fn headers(pairs: &[(&str, &str)]) -> Fields {
    let fields = Fields::new();
    for (name, value) in pairs {
        let _ = fields.append(name, value.as_bytes());
    }
    fields
}

/// Starts a streaming response: sends status and headers now and returns the
/// body and its output stream. Write with [`write_all`], then call
/// [`finish_body`].
pub fn start_response(
    out: ResponseOutparam,
    status: u16,
    pairs: &[(&str, &str)],
) -> (OutgoingBody, OutputStream) {
    let response = OutgoingResponse::new(headers(pairs));
    let _ = response.set_status_code(status);
    let body = response
        .body()
        .expect("first call to outgoing-response.body");
    let stream = body.write().expect("first call to outgoing-body.write");
    ResponseOutparam::set(out, Ok(response));
    (body, stream)
}

/// Ends a body started by [`start_response`]; errors (client gone) are ignored.
pub fn finish_body(body: OutgoingBody, stream: OutputStream) {
    // The stream is a child of the body: it must be dropped before `finish`.
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

/// Sends a complete response with a `content-length`. Write errors (the
/// client went away) are ignored.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let len = body.len().to_string();
    let (b, s) = start_response(
        out,
        status,
        &[("content-type", content_type), ("content-length", &len)],
    );
    let _ = write_all(&s, body);
    finish_body(b, s);
}

/// Method as its HTTP name.
pub fn method_name(m: &Method) -> &str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(s) => s,
    }
}

/// Splits `path?query` into its two parts (query without `?`, `""` if none).
pub fn split_path(path_with_query: &str) -> (&str, &str) {
    match path_with_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_with_query, ""),
    }
}

/// The first value of query parameter `key`, percent-decoded (`+` = space).
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() && hex(b[i + 1]).is_some() && hex(b[i + 2]).is_some() => {
                out.push(hex(b[i + 1]).unwrap() * 16 + hex(b[i + 2]).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
