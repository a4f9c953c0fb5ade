//! Skiff's control plane: the versioned store, the Kubernetes-compatible API server,
//! and the loops that belong to the server. Later: scheduler, controllers and gateway.

pub mod apiserver;
pub mod lifecycle;
pub mod server;
pub mod store;
