//! Entry points for the fuzz targets (`fuzz/`, run by `scripts/fuzz`) into checks that
//! are otherwise private to the API server. Not an API: each only calls the real code.

use skiff_api::module::ModuleType;

/// The check every uploaded Wasm binary passes before it is stored (`POST
/// /apis/skiff.dev/v1/modules`, and an App given as raw Wasm): a core module or a
/// component that wasmparser validates. The error is the 422's message.
pub fn inspect_module(bytes: &[u8]) -> Result<ModuleType, String> {
    crate::apiserver::inspect_module(bytes)
}
