//! http-hello: a wasi:http component (exports wasi:http/incoming-handler).
//!
//! The answer depends only on the LAST path segment (the host may forward a
//! prefixed path such as `/default/web/spin`):
//!
//! - `.../healthz` → 200 `ok`
//! - `.../spin`    → burns CPU forever (the host must time it out)
//! - `.../trap`    → executes `unreachable` (the instance traps)
//! - `.../stream?n=N&ms=M` → 200, streams `chunk 1\n` .. `chunk N\n`, each
//!   flushed, sleeping M ms between chunks (defaults n=10, ms=100); stops
//!   quietly if the client goes away
//! - `.../env`     → 200, the guest's environment, `K=V` per line, sorted
//! - anything else → 200 `hello from skiff[ pod=P][ node=N][ version=V]\n`

use http_util::wasip2;
use http_util::{finish_body, query_param, respond, split_path, start_response, write_all};
use std::hint::black_box;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

const TEXT: &str = "text/plain";

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let pq = request.path_with_query().unwrap_or_default();
        let (path, query) = split_path(&pq);
        let last = path.rsplit('/').next().unwrap_or("");
        match last {
            "healthz" => respond(out, 200, TEXT, b"ok"),
            "spin" => spin(),
            "trap" => trap(),
            "stream" => stream(out, query),
            "env" => {
                let mut vars: Vec<(String, String)> = std::env::vars().collect();
                vars.sort();
                let mut body = String::new();
                for (k, v) in vars {
                    body.push_str(&k);
                    body.push('=');
                    body.push_str(&v);
                    body.push('\n');
                }
                respond(out, 200, TEXT, body.as_bytes());
            }
            _ => {
                let mut body = String::from("hello from skiff");
                for (label, var) in [
                    ("pod", "POD_NAME"),
                    ("node", "NODE_NAME"),
                    ("version", "VERSION"),
                ] {
                    if let Ok(v) = std::env::var(var) {
                        body.push(' ');
                        body.push_str(label);
                        body.push('=');
                        body.push_str(&v);
                    }
                }
                body.push('\n');
                respond(out, 200, TEXT, body.as_bytes());
            }
        }
    }
}

/// Executes the wasm `unreachable` instruction: the instance traps.
fn trap() -> ! {
    #[cfg(target_arch = "wasm32")]
    core::arch::wasm32::unreachable();
    #[cfg(not(target_arch = "wasm32"))]
    std::process::abort(); // keeps `cargo check --workspace` working on the host
}

/// Endless xorshift arithmetic on a black_box'd state; never calls the host.
fn spin() -> ! {
    let mut x: u64 = black_box(0x9E37_79B9_7F4A_7C15);
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        black_box(x);
    }
}

fn stream(out: ResponseOutparam, query: &str) {
    let n: u64 = query_param(query, "n")
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let ms: u64 = query_param(query, "ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let (body, s) = start_response(out, 200, &[("content-type", TEXT)]);
    for i in 1..=n {
        if i > 1 && ms > 0 {
            wasip2::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000))
                .block();
        }
        if write_all(&s, format!("chunk {i}\n").as_bytes()).is_err() {
            break; // client gone: stop cleanly, never trap
        }
    }
    finish_body(body, s);
}

wasip2::http::proxy::export!(Hello);
