//! What every guest store starts from, a command run or an HTTP request alike: the WASI
//! context a [`RunSpec`] grants, and a failure told in bounded text for pod status and
//! events.

use std::fmt::Write as _;

use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::stdio::SinkStream;
use super::{RunSpec, Stream};

/// Longest trap or failure text kept in an [`Outcome`](super::Outcome): enough for the trap and a few dozen
/// frames of backtrace, small enough to go into pod status and events.
const MAX_OUTCOME_TEXT: usize = 4096;

/// The guest's whole world: args, env, preopens, stdout/stderr into the sink, an empty
/// stdin, clocks and randomness, and no network at all.
pub(crate) fn wasi_builder(spec: &RunSpec) -> Result<WasiCtxBuilder, String> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(SinkStream::new(spec.output.clone(), Stream::Stdout))
        .stderr(SinkStream::new(spec.output.clone(), Stream::Stderr))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for preopen in &spec.preopens {
        let perms = if preopen.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&preopen.host, &preopen.guest, perms)
            .map_err(|error| {
                format!(
                    "cannot open {} for the guest at {}: {error:#}",
                    preopen.host.display(),
                    preopen.guest
                )
            })?;
    }
    Ok(builder)
}

/// The trap (or fatal host error) first, then the wasm backtrace, bounded in length.
pub(crate) fn describe_failure(error: &wasmtime::Error) -> String {
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| bt.to_string());
    let mut text = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => error
            .chain()
            .map(|cause| cause.to_string())
            .filter(|cause| Some(cause) != backtrace.as_ref())
            .collect::<Vec<_>>()
            .join(": "),
    };
    if let Some(backtrace) = backtrace {
        let _ = write!(text, "\n{backtrace}");
    }
    bounded(text)
}

/// Cuts `text` to [`MAX_OUTCOME_TEXT`] bytes on a character boundary.
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() > MAX_OUTCOME_TEXT {
        let mut end = MAX_OUTCOME_TEXT - "…".len();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let text = bounded("é".repeat(5000));
        assert!(text.len() <= MAX_OUTCOME_TEXT);
        assert!(text.ends_with('…'));
        assert_eq!(bounded("short".to_owned()), "short");
    }
}
