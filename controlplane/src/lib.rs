//! Skiff's control plane: the versioned store, the Kubernetes-compatible API server,
//! and the loops that belong to the server: the scheduler now; later the controllers and
//! the gateway.

pub mod apiserver;
pub mod controllers;
pub mod informer;
pub mod leader;
pub mod lifecycle;
pub mod scheduler;
pub mod server;
pub mod store;
