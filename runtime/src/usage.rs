//! The agent's side of `kubectl top`: the running pods' usage, which the server scrapes
//! from `GET /stats/usage` (see `skiff_api::usage` for the report, and the control
//! plane's `usage` module for how it becomes rates).
//!
//! - A container's CPU is the time spent running its guests: every poll of every
//!   instance's future (the command's, or each HTTP request's) is timed, host-call time
//!   included. A guest waiting on I/O, on a sleep or on its CPU-limit pause is not
//!   running and is not counted. cgroups count the same thing for a process; what
//!   differs is that the agent's own work for the pod (compiling, routing, logging) is
//!   not charged to it, as a container runtime's shim isn't to a container.
//! - A container's memory is the linear memory and table storage its live instances
//!   hold, the figure its memory limit is enforced against. A cgroup's working set also
//!   counts a process's stack, heap and page cache; a guest has none outside its linear
//!   memory, and the compiled code is shared by every instance, so it is not charged.
//! - The node's figures are the agent process's: its CPU time and resident memory, which
//!   take in every pod on it and the agent itself (and, under `skiff dev`, the server).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use skiff_api::usage::{ContainerCounters, NodeCounters, PodCounters, Report};

use crate::wasm::GuestUsage;

/// A pod's HTTP requests: counted when the request gets a slot and is handed to the app.
#[derive(Debug, Default)]
pub struct RequestCounters {
    served: AtomicU64,
    in_flight: AtomicU64,
    errors: AtomicU64,
}

impl RequestCounters {
    /// Counts a request handed to the app; it is in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Counts a request the app was handed that was answered with a server error.
    pub fn failed(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request in flight, until dropped.
pub struct InFlight(Arc<RequestCounters>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One running pod's usage handles.
pub struct PodUsage {
    pub uid: String,
    pub containers: Vec<(String, Arc<GuestUsage>)>,
    pub requests: Arc<RequestCounters>,
}

impl PodUsage {
    pub fn new(uid: &str, containers: impl IntoIterator<Item = String>) -> Arc<PodUsage> {
        Arc::new(PodUsage {
            uid: uid.to_string(),
            containers: containers
                .into_iter()
                .map(|c| (c, Arc::default()))
                .collect(),
            requests: Arc::default(),
        })
    }
}

/// The pods running on this agent, by namespace and name.
#[derive(Default)]
pub struct UsageRegistry {
    pods: RwLock<HashMap<(String, String), Arc<PodUsage>>>,
}

impl UsageRegistry {
    pub fn insert(&self, namespace: &str, name: &str, pod: Arc<PodUsage>) {
        self.pods
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert((namespace.to_string(), name.to_string()), pod);
    }

    /// Forgets the pod, if `pod` is still the one registered under its name.
    pub fn remove(&self, namespace: &str, name: &str, pod: &Arc<PodUsage>) {
        let mut pods = self.pods.write().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if pods.get(&key).is_some_and(|p| Arc::ptr_eq(p, pod)) {
            pods.remove(&key);
        }
    }

    /// The report the server scrapes.
    pub fn report(&self) -> Report {
        let pods = self.pods.read().unwrap_or_else(|p| p.into_inner());
        let mut pods: Vec<PodCounters> = pods
            .iter()
            .map(|((namespace, name), pod)| PodCounters {
                namespace: namespace.clone(),
                name: name.clone(),
                uid: pod.uid.clone(),
                containers: pod
                    .containers
                    .iter()
                    .map(|(name, usage)| ContainerCounters {
                        name: name.clone(),
                        cpu_nanos: usage.cpu_nanos(),
                        memory_bytes: usage.memory_bytes(),
                    })
                    .collect(),
                requests: pod.requests.served.load(Ordering::Relaxed),
                in_flight: pod.requests.in_flight.load(Ordering::Relaxed),
                errors: pod.requests.errors.load(Ordering::Relaxed),
            })
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Report {
            node: process_counters(),
            pods,
        }
    }
}

/// The agent process's CPU time (user + system, all threads) and resident memory, from
/// `getrusage` and `/proc/self/statm`.
fn process_counters() -> NodeCounters {
    // SAFETY: getrusage writes only into the struct it is given.
    let cpu_nanos = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0 {
            let nanos =
                |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
            nanos(usage.ru_utime) + nanos(usage.ru_stime)
        } else {
            0
        }
    };
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let memory_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    NodeCounters {
        cpu_nanos,
        memory_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_lists_running_pods_and_counts_requests_in_flight() {
        let registry = UsageRegistry::default();
        let pod = PodUsage::new("u1", ["app".to_string()]);
        registry.insert("default", "web", pod.clone());
        let first = pod.requests.start();
        let second = pod.requests.start();
        drop(first);
        let report = registry.report();
        assert!(report.node.cpu_nanos > 0 && report.node.memory_bytes > 0);
        assert_eq!(report.pods.len(), 1);
        assert_eq!((report.pods[0].requests, report.pods[0].in_flight), (2, 1));
        assert_eq!(report.pods[0].containers[0].name, "app");
        drop(second);
        // A newer pod of the same name is not removed by the older one's end.
        let newer = PodUsage::new("u2", ["app".to_string()]);
        registry.insert("default", "web", newer);
        registry.remove("default", "web", &pod);
        assert_eq!(registry.report().pods[0].uid, "u2");
    }
}
