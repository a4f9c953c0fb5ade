//! The node agent: joins the control plane as a Node and runs the pods bound to it as
//! WebAssembly instances in wasmtime, with no containers and no shim per pod.

pub mod agent;
pub mod apiservers;
pub mod apps;
pub mod config;
pub mod credential;
pub mod events;
pub mod images;
pub mod local;
pub mod logs;
pub mod metrics;
pub mod node;
pub mod oci;
pub mod pod;
pub mod runtime;
pub mod server;
pub mod sync;
pub mod tunnel;
pub mod usage;
pub mod wasm;

pub use agent::{Agent, AgentError};
pub use config::{AgentConfig, TunnelAuth};
