//! Loops inside the server that finish what a delete starts: the pod reaper removes pods
//! whose grace period ran out, and the namespace cleaner drains a deleted namespace.

mod namespaces;
mod reaper;

pub use namespaces::run_namespace_cleaner;
pub use reaper::run_pod_reaper;

/// How long a loop waits before retrying after a store error.
const RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
