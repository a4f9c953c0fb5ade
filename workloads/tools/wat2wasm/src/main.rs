//! wat2wasm IN.wat OUT.wasm
//!
//! Converts WebAssembly text (core module or component) to binary with the
//! `wat` crate and validates the result with `wasmparser` (all features).
//! Used by build.sh when `wasm-tools` is not installed.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm IN.wat OUT.wasm");
        return ExitCode::from(2);
    };
    let bytes = match wat::parse_file(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("wat2wasm: {input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
    if let Err(e) = validator.validate_all(&bytes) {
        eprintln!("wat2wasm: {input}: invalid wasm: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = std::fs::write(output, &bytes) {
        eprintln!("wat2wasm: {output}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
