//! Decides what a binary is: a WASI command this agent runs, or a clear reason why not.

use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, Module};

use super::{LoadError, ProgramKind};

/// The export a WASI preview1 command starts at.
const START_EXPORT: &str = "_start";

/// Prefix of the export a WASI 0.2 command component runs (any 0.2.x patch version; wasmtime
/// matches semver-compatible names when instantiating).
const CLI_RUN_P2_PREFIX: &str = "wasi:cli/run@0.2.";

/// Prefix shared by every version of the run interface, to give a precise reason for 0.3.
const CLI_RUN_PREFIX: &str = "wasi:cli/run@";

/// Prefix of the export of wasi:http proxy components, any version.
const HTTP_HANDLER_PREFIX: &str = "wasi:http/incoming-handler@";

/// The wasi:http 0.2.x handler export this agent serves.
const HTTP_HANDLER_P2_PREFIX: &str = "wasi:http/incoming-handler@0.2.";

/// The first eight bytes of a core module: magic, then version 1, layer 0.
const CORE_MODULE_HEADER: [u8; 8] = *b"\0asm\x01\0\0\0";

/// The first eight bytes of a component: magic, then version 0xd, layer 1.
const COMPONENT_HEADER: [u8; 8] = *b"\0asm\x0d\0\x01\0";

/// How many export names a rejection message lists; the rest is summarised as a count.
const MAX_LISTED_EXPORTS: usize = 8;

/// Which binary format the bytes are in, from their header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    CoreModule,
    Component,
}

/// Reads the 8-byte header. Anything else, including Wasm text, is `NotWasm`: the agent
/// runs only binaries, whose digest is what the pod spec names.
pub fn sniff(bytes: &[u8]) -> Result<Format, LoadError> {
    if bytes.starts_with(&CORE_MODULE_HEADER) {
        Ok(Format::CoreModule)
    } else if bytes.starts_with(&COMPONENT_HEADER) {
        Ok(Format::Component)
    } else if bytes.starts_with(b"\0asm") {
        Err(LoadError::NotWasm(
            "unknown WebAssembly binary version or layer".to_owned(),
        ))
    } else if bytes.is_empty() {
        Err(LoadError::NotWasm("empty input".to_owned()))
    } else {
        Err(LoadError::NotWasm(
            "missing the \\0asm magic number".to_owned(),
        ))
    }
}

/// A core module must export `_start: () -> ()` to be a preview1 command.
pub(crate) fn classify_module(module: &Module) -> Result<ProgramKind, LoadError> {
    match module.get_export(START_EXPORT) {
        None => Err(LoadError::InvalidModule(
            "a reactor/library module: no _start export".to_owned(),
        )),
        Some(ExternType::Func(func)) if func.params().len() == 0 && func.results().len() == 0 => {
            Ok(ProgramKind::CommandModule)
        }
        Some(other) => Err(LoadError::InvalidModule(format!(
            "_start must be a function taking and returning nothing, found {other:?}"
        ))),
    }
}

/// A component must export `wasi:http/incoming-handler@0.2.x` (an HTTP app) or
/// `wasi:cli/run@0.2.x` (a preview2 command).
pub(crate) fn classify_component(
    engine: &Engine,
    component: &Component,
) -> Result<ProgramKind, LoadError> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    // An HTTP handler is served even if it also exports a run function, as `wasmtime
    // serve` would.
    if names.iter().any(|n| n.starts_with(HTTP_HANDLER_P2_PREFIX)) {
        return Ok(ProgramKind::HttpComponent);
    }
    if names.iter().any(|n| n.starts_with(CLI_RUN_P2_PREFIX)) {
        return Ok(ProgramKind::CommandComponent);
    }
    if let Some(run) = names.iter().find(|n| n.starts_with(CLI_RUN_PREFIX)) {
        return Err(LoadError::InvalidModule(format!(
            "exports {run}, but this agent runs only wasi:cli/run@0.2.x commands"
        )));
    }
    if let Some(handler) = names.iter().find(|n| n.starts_with(HTTP_HANDLER_PREFIX)) {
        return Err(LoadError::InvalidModule(format!(
            "exports {handler}, but this agent serves only wasi:http@0.2.x handlers"
        )));
    }
    Err(LoadError::InvalidModule(format!(
        "a component without a wasi:cli/run@0.2 export (it exports {})",
        describe_exports(&names)
    )))
}

fn describe_exports(names: &[&str]) -> String {
    if names.is_empty() {
        return "nothing".to_owned();
    }
    let mut listed = names
        .iter()
        .take(MAX_LISTED_EXPORTS)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_LISTED_EXPORTS {
        listed.push_str(&format!(" and {} more", names.len() - MAX_LISTED_EXPORTS));
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_tells_modules_components_and_garbage_apart() {
        assert_eq!(sniff(b"\0asm\x01\0\0\0").ok(), Some(Format::CoreModule));
        assert_eq!(sniff(b"\0asm\x0d\0\x01\0").ok(), Some(Format::Component));
        assert!(matches!(sniff(b"(module)"), Err(LoadError::NotWasm(_))));
        assert!(matches!(sniff(b""), Err(LoadError::NotWasm(_))));
        assert!(matches!(
            sniff(b"\0asm\x07\0\0\0"),
            Err(LoadError::NotWasm(_))
        ));
    }

    #[test]
    fn long_export_lists_are_bounded() {
        let names: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let text = describe_exports(&refs);
        assert!(text.ends_with("and 12 more"), "{text}");
    }
}
