//! The check an uploaded Wasm binary passes before the API server stores it
//! (`skiff_controlplane::fuzzing::inspect_module`: a core module or component that
//! wasmparser validates). It never panics nor allocates out of proportion to the
//! bytes, and what it accepts is Wasm: the `\0asm` magic, and the kind it reports is
//! the kind the header says.
//!
//! The allocation cap is 96 MiB here, not 64: wasmparser's reader sizes a recursion
//! group's vector by the count it declares, up to its limit of a million types (80
//! bytes each, 76 MiB, reserved and never touched), before reading one; the check can't
//! see inside a type section to refuse that without reimplementing the type grammar.
//! Every count a section declares is checked against its size (`counts_fit`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::module::ModuleType;
use skiff_controlplane::fuzzing::inspect_module;

skiff_fuzz::cap_allocations!(96 * 1024 * 1024);

fuzz_target!(|data: &[u8]| {
    if let Ok(kind) = inspect_module(data) {
        assert!(data.starts_with(b"\0asm"));
        // The header's layer field: 0 for a core module, 1 for a component.
        let expected = match data.get(6..8) {
            Some([1, 0]) => ModuleType::Component,
            _ => ModuleType::Module,
        };
        assert_eq!(kind, expected);
    }
});
