//! hello: prints its args and environment, then exits 0.
//!
//! stdout:
//!   arg[i]=VALUE      for every arg, argv[0] included
//!   env NAME=VALUE    for every env var, sorted by name
//!   hello done
//! stderr:
//!   hello stderr
//!
//! The same file is built as `hello.wasm` (wasm32-wasip1 core module) and as
//! `hello-component.wasm` (wasm32-wasip2 command component).

use std::io::Write;

fn main() {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, arg) in std::env::args_os().enumerate() {
        let _ = writeln!(out, "arg[{i}]={}", arg.to_string_lossy());
    }
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect();
    vars.sort();
    for (name, value) in &vars {
        let _ = writeln!(out, "env {name}={value}");
    }
    let _ = writeln!(out, "hello done");
    let _ = out.flush();
    drop(out);
    let _ = writeln!(std::io::stderr(), "hello stderr");
}
