//! Resource usage of pods and nodes, as metrics-server keeps it: the server scrapes each
//! node's agent for cumulative counters (CPU time spent in each pod's guests, requests
//! served) and current figures (memory the guests hold, requests in flight), and turns the
//! last two scrapes into rates. `metrics.k8s.io` (`kubectl top`), `custom.metrics.k8s.io`
//! and the HorizontalPodAutoscaler read what is kept here.
//!
//! The agent's report is `skiff_api::usage::Report` (`GET /stats/usage` on the agent).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

pub use skiff_api::usage::{ContainerCounters, NodeCounters, PodCounters, Report};

/// One container's usage over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// One pod's usage between the last two scrapes of its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// When the later scrape was taken: the end of the window.
    pub timestamp: SystemTime,
    pub window: Duration,
    pub containers: Vec<ContainerUsage>,
    /// Requests served per second over the window.
    pub requests_per_second: f64,
    /// Requests in flight at the later scrape.
    pub in_flight: u64,
    /// Requests answered with a 5xx per second over the window.
    pub errors_per_second: f64,
}

impl PodUsage {
    pub fn cpu_nanocores(&self) -> u64 {
        self.containers.iter().map(|c| c.cpu_nanocores).sum()
    }

    pub fn cpu_millicores(&self) -> u64 {
        self.cpu_nanocores() / 1_000_000
    }

    pub fn memory_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_bytes).sum()
    }
}

/// One node's usage between its last two scrapes.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeUsage {
    pub name: String,
    pub timestamp: SystemTime,
    pub window: Duration,
    pub cpu_nanocores: u64,
    pub memory_bytes: u64,
}

/// A scrape kept to be the start of the next window.
#[derive(Debug, Clone)]
struct Scrape {
    at: SystemTime,
    report: Report,
}

#[derive(Default)]
struct Inner {
    /// The last scrape of each node.
    last: HashMap<String, Scrape>,
    pods: HashMap<(String, String), PodUsage>,
    nodes: HashMap<String, NodeUsage>,
}

/// The usage the server knows, from the last two scrapes of each node.
#[derive(Default)]
pub struct Usage {
    inner: RwLock<Inner>,
}

/// Per second, from a counter's growth over a window; a counter that went back (the pod
/// or agent restarted) counts from zero.
fn rate(before: u64, after: u64, window: Duration) -> f64 {
    let grew = if after >= before {
        after - before
    } else {
        after
    };
    grew as f64 / window.as_secs_f64().max(1e-9)
}

impl Usage {
    /// Takes a scrape of `node` made at `at`. The first scrape of a node only starts its
    /// window; each later one replaces the node's and its pods' usage with the rates since
    /// the one before. Pods gone from the report are forgotten.
    pub fn record(&self, node: &str, at: SystemTime, report: Report) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let previous = inner.last.insert(
            node.to_string(),
            Scrape {
                at,
                report: report.clone(),
            },
        );
        inner.pods.retain(|_, p| p.node != node);
        let Some(previous) = previous else {
            inner.nodes.remove(node);
            return;
        };
        let Ok(window) = at.duration_since(previous.at) else {
            return;
        };
        if window.is_zero() {
            return;
        }
        inner.nodes.insert(
            node.to_string(),
            NodeUsage {
                name: node.to_string(),
                timestamp: at,
                window,
                // Nanoseconds of CPU per second are nanocores.
                cpu_nanocores: rate(
                    previous.report.node.cpu_nanos,
                    report.node.cpu_nanos,
                    window,
                ) as u64,
                memory_bytes: report.node.memory_bytes,
            },
        );
        for pod in &report.pods {
            // Only a pod seen at both ends of the window (the same incarnation) has a rate.
            let Some(before) = previous
                .report
                .pods
                .iter()
                .find(|p| p.uid == pod.uid && p.name == pod.name)
            else {
                continue;
            };
            let containers = pod
                .containers
                .iter()
                .map(|c| {
                    let was = before
                        .containers
                        .iter()
                        .find(|b| b.name == c.name)
                        .map_or(0, |b| b.cpu_nanos);
                    ContainerUsage {
                        name: c.name.clone(),
                        cpu_nanocores: rate(was, c.cpu_nanos, window) as u64,
                        memory_bytes: c.memory_bytes,
                    }
                })
                .collect();
            inner.pods.insert(
                (pod.namespace.clone(), pod.name.clone()),
                PodUsage {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    uid: pod.uid.clone(),
                    node: node.to_string(),
                    timestamp: at,
                    window,
                    containers,
                    requests_per_second: rate(before.requests, pod.requests, window),
                    in_flight: pod.in_flight,
                    errors_per_second: rate(before.errors, pod.errors, window),
                },
            );
        }
    }

    /// Forgets a node (deleted, or no longer answering).
    pub fn forget_node(&self, node: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.last.remove(node);
        inner.nodes.remove(node);
        inner.pods.retain(|_, p| p.node != node);
    }

    /// Forgets every node not in `nodes` (deleted since).
    pub fn retain_nodes(&self, nodes: &[String]) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.last.retain(|n, _| nodes.contains(n));
        inner.nodes.retain(|n, _| nodes.contains(n));
        inner.pods.retain(|_, p| nodes.contains(&p.node));
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<PodUsage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The usage of a stored pod: only if it was measured for this incarnation (a pod
    /// deleted and created again under its name, as a StatefulSet's are, starts anew).
    pub fn of_pod(&self, pod: &serde_json::Value) -> Option<PodUsage> {
        let namespace = crate::objects::namespace(pod).unwrap_or("default");
        self.pod(namespace, crate::objects::name(pod))
            .filter(|u| crate::objects::meta_str(pod, "uid") == Some(u.uid.as_str()))
    }

    /// Every pod's usage, or those of one namespace, sorted by namespace and name.
    pub fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut pods: Vec<PodUsage> = inner
            .pods
            .values()
            .filter(|p| namespace.is_none_or(|ns| p.namespace == ns))
            .cloned()
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    pub fn node(&self, name: &str) -> Option<NodeUsage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.nodes.get(name).cloned()
    }

    pub fn nodes(&self) -> Vec<NodeUsage> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut nodes: Vec<NodeUsage> = inner.nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes
    }
}

/// How long one node's scrape may take before it counts as failed.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Scrapes every node's agent every `every`, as metrics-server does (its
/// `--metric-resolution`, 15 s by default): through the agent's tunnel to this server
/// when it has one, else at the node's address. A node that cannot be reached is
/// forgotten until it answers again, so stale figures never feed the autoscaler.
pub async fn scrape_agents(
    api: std::sync::Arc<crate::state::ApiServer>,
    nodes: std::sync::Arc<crate::informer::Cache>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let client = reqwest::Client::builder()
        .timeout(SCRAPE_TIMEOUT)
        .build()
        .unwrap_or_default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let snapshot = nodes.snapshot();
        let known: Vec<String> = snapshot
            .iter()
            .map(|n| crate::objects::name(n).to_string())
            .collect();
        let scrapes = snapshot.iter().map(|node| {
            let (api, client) = (api.clone(), client.clone());
            async move {
                let name = crate::objects::name(node).to_string();
                let at = SystemTime::now();
                match scrape_one(&api, &client, &name, node).await {
                    Ok(report) => api.usage.record(&name, at, report),
                    Err(e) => {
                        tracing::debug!(node = %name, error = %e, "scraping the agent's usage failed");
                        api.usage.forget_node(&name);
                    }
                }
            }
        });
        futures::future::join_all(scrapes).await;
        api.usage.retain_nodes(&known);
    }
}

async fn scrape_one(
    api: &crate::state::ApiServer,
    client: &reqwest::Client,
    name: &str,
    node: &serde_json::Value,
) -> Result<Report, String> {
    let path = skiff_api::usage::PATH;
    if let Some(tunnel) = api.tunnels.get(name) {
        let request = http::Request::get(crate::tunnel::uri(path))
            .body(crate::tunnel::TunnelBody::default())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(SCRAPE_TIMEOUT, async {
            let response = crate::tunnel::send(tunnel, request)
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("the agent answered {}", response.status()));
            }
            http_body_util::BodyExt::collect(response.into_body())
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|_| "timed out".to_string())??;
        return serde_json::from_slice(&response).map_err(|e| e.to_string());
    }
    let address = crate::objects::agent_address(node).ok_or("no address and no tunnel")?;
    client
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())
        .and_then(|body| serde_json::from_slice(&body).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(cpu: u64, requests: u64, uid: &str) -> Report {
        Report {
            node: NodeCounters {
                cpu_nanos: cpu * 2,
                memory_bytes: 100 << 20,
            },
            pods: vec![PodCounters {
                namespace: "default".into(),
                name: "web".into(),
                uid: uid.into(),
                containers: vec![ContainerCounters {
                    name: "app".into(),
                    cpu_nanos: cpu,
                    memory_bytes: 2 << 20,
                }],
                requests,
                in_flight: 3,
                errors: requests / 10,
            }],
        }
    }

    #[test]
    fn two_scrapes_make_a_rate_and_a_restart_starts_a_new_window() {
        let usage = Usage::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        usage.record("n1", t0, report(0, 0, "u1"));
        assert!(
            usage.pod("default", "web").is_none(),
            "one scrape is no window"
        );
        // Half a core for 10 s; 50 requests in 10 s.
        usage.record(
            "n1",
            t0 + Duration::from_secs(10),
            report(5_000_000_000, 50, "u1"),
        );
        let pod = usage.pod("default", "web").expect("a window");
        assert_eq!(pod.cpu_millicores(), 500);
        assert_eq!(pod.memory_bytes(), 2 << 20);
        assert!((pod.requests_per_second - 5.0).abs() < 1e-9);
        assert_eq!(pod.in_flight, 3);
        assert!((pod.errors_per_second - 0.5).abs() < 1e-9);
        assert_eq!(pod.window, Duration::from_secs(10));
        assert_eq!(usage.node("n1").expect("node").cpu_nanocores, 1_000_000_000);
        // The pod came back as a new incarnation: no rate until it is seen twice.
        usage.record("n1", t0 + Duration::from_secs(20), report(1, 1, "u2"));
        assert!(usage.pod("default", "web").is_none());
        usage.forget_node("n1");
        assert!(usage.nodes().is_empty());
    }
}
