//! What several servers of one cluster share beyond the store: the cluster's secrets
//! ([`bootstrap`]) and the list of live API servers ([`endpoints`]).

pub mod bootstrap;
pub mod endpoints;
