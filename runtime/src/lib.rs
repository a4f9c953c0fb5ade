//! The node agent: runs the pods bound to its node as Wasm in wasmtime (next issue).
