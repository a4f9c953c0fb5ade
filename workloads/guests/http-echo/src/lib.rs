//! http-echo: a wasi:http component (exports wasi:http/incoming-handler).
//!
//! Answers every request with 200, `content-type: application/json` and
//!
//! ```json
//! {"method":"POST","path":"/a/b?x=1","headers":{"name":"value",...},"body":"..."}
//! ```
//!
//! `path` includes the query. Header names are as the host gives them
//! (lowercase for wasmtime); repeated headers are joined with `, `. Values and
//! the body (read to its end, streamed) are decoded as UTF-8, lossily.
//! A body read error answers 500 with `request body read failed: ERROR`.

use http_util::wasip2;
use http_util::{method_name, read_body, respond};
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Echo;

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = request.method();
        let path = request.path_with_query().unwrap_or_default();

        // Join repeated headers, keeping the order of first appearance.
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in request.headers().entries() {
            let value = String::from_utf8_lossy(&value);
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push_str(", ");
                    v.push_str(&value);
                }
                None => headers.push((name, value.into_owned())),
            }
        }

        let body = match request.consume() {
            Ok(b) => match read_body(b) {
                Ok(data) => data,
                Err(e) => {
                    let msg = format!("request body read failed: {e}\n");
                    return respond(out, 500, "text/plain", msg.as_bytes());
                }
            },
            Err(()) => Vec::new(),
        };

        let mut json = String::with_capacity(64 + path.len() + body.len());
        json.push_str("{\"method\":");
        push_str(&mut json, method_name(&method));
        json.push_str(",\"path\":");
        push_str(&mut json, &path);
        json.push_str(",\"headers\":{");
        for (i, (name, value)) in headers.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            push_str(&mut json, name);
            json.push(':');
            push_str(&mut json, value);
        }
        json.push_str("},\"body\":");
        push_str(&mut json, &String::from_utf8_lossy(&body));
        json.push('}');
        respond(out, 200, "application/json", json.as_bytes());
    }
}

/// Appends `s` as a JSON string literal.
fn push_str(json: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    json.push('"');
    for c in s.chars() {
        match c {
            '"' => json.push_str("\\\""),
            '\\' => json.push_str("\\\\"),
            '\n' => json.push_str("\\n"),
            '\r' => json.push_str("\\r"),
            '\t' => json.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                json.push_str("\\u00");
                json.push(HEX[(c as usize) >> 4] as char);
                json.push(HEX[(c as usize) & 15] as char);
            }
            c => json.push(c),
        }
    }
    json.push('"');
}

wasip2::http::proxy::export!(Echo);
