//! Skiff's API vocabulary: the served resource kinds, selectors, patch logic, name
//! validation and the client. No server, no wasmtime: agents, controllers and the CLI
//! all build on this crate.

pub mod app;
pub mod apply;
pub mod client;
pub mod fields;
pub mod gatewayapi;
pub mod image;
pub mod metrics;
pub mod module;
pub mod patch;
pub mod protobuf;
pub mod quantity;
pub mod resources;
pub mod routes;
pub mod selector;
pub mod strategic;
pub mod time;
pub mod token;
pub mod usage;
pub mod validation;
