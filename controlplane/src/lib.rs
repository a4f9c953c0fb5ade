//! Skiff's control plane: the versioned store, the Kubernetes-compatible API server,
//! and what else runs in the server: the scheduler, the controllers, leader election
//! and the HTTP gateway.

pub mod apiserver;
pub mod auth;
pub mod backup;
pub mod blobs;
pub mod clock;
pub mod cluster;
pub mod controllers;
pub mod crd;
pub mod cron;
pub mod dashboard;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod httproute;
pub mod informer;
pub mod ingress;
pub mod kinds;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod objects;
pub mod scheduler;
pub mod server;
pub mod spdy;
pub mod state;
pub mod store;
pub mod tunnel;
pub mod usage;
