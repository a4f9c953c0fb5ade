//! Which API servers the agent talks to: the ones it was given, and the ones the
//! cluster lists in the `default/kubernetes` Endpoints, read at start, every
//! [`REFRESH`] and after each failover. Its API client and its tunnels follow the set.
//!
//! A server the cluster stops listing is dropped, except a server the agent was given
//! (`--server`, its credential) that still answers: that may be a load balancer or a
//! name the Endpoints, which list addresses, never show. The set never becomes empty.
//! A loopback address in the Endpoints (a server listening on 127.0.0.1) is used only
//! by an agent that was itself given one: from any other host it is the wrong machine.

use std::collections::HashSet;
use std::time::Duration;

use http::Uri;
use k8s_openapi::api::core::v1::Endpoints;
use kube::api::Api;
use skiff_api::client::Servers;
use skiff_api::client::failover::parse_server;
use tokio_util::sync::CancellationToken;

/// How often the Endpoints are read when nothing fails.
pub const REFRESH: Duration = Duration::from_secs(30);
/// The least time between two reads: a failover wakes the loop, and while every server
/// is down each read fails over again.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// How long a given server that the cluster no longer lists has to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("reading the default/kubernetes Endpoints")]
    EndpointsUnreadable(#[source] kube::Error),
}

/// The servers the cluster lists now (empty when it lists none).
async fn listed(client: &kube::Client) -> Result<Vec<Uri>, DiscoveryError> {
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), "default");
    let Some(object) = endpoints
        .get_opt("kubernetes")
        .await
        .map_err(DiscoveryError::EndpointsUnreadable)?
    else {
        return Ok(Vec::new());
    };
    let value = serde_json::to_value(&object).unwrap_or_default();
    Ok(skiff_api::client::endpoints_urls(&value)
        .iter()
        .filter_map(|url| parse_server(url).ok())
        .collect())
}

fn is_loopback(url: &Uri) -> bool {
    let host = url.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The listed servers this agent could reach: loopback ones only if it was given one.
fn usable(given: &[Uri], cluster: Vec<Uri>) -> Vec<Uri> {
    let local = given.iter().any(is_loopback);
    cluster
        .into_iter()
        .filter(|u| local || !is_loopback(u))
        .collect()
}

/// Whether `url`'s host accepts a TCP connection.
async fn answers(url: &Uri) -> bool {
    let Some(host) = url.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url
        .port_u16()
        .unwrap_or(if url.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await,
        Ok(Ok(_))
    )
}

/// The servers to use: the given ones that the cluster lists or that answer (in the
/// order given), then the rest the cluster lists. Empty only if `cluster` is.
fn merge(given: &[Uri], cluster: &[Uri], answering: &HashSet<Uri>) -> Vec<Uri> {
    let kept = given
        .iter()
        .filter(|u| cluster.contains(u) || answering.contains(u));
    let learned = cluster.iter().filter(|u| !given.contains(u));
    kept.chain(learned).cloned().collect()
}

/// Reads the cluster's servers once and updates `servers`.
async fn refresh(client: &kube::Client, servers: &Servers, given: &[Uri]) {
    let cluster = match listed(client).await.map(|c| usable(given, c)) {
        Ok(cluster) if !cluster.is_empty() => cluster,
        Ok(_) => {
            tracing::debug!("the cluster lists no API servers; keeping the ones known");
            return;
        }
        Err(e) => {
            tracing::debug!(error = %e, error.source = ?std::error::Error::source(&e), "learning the API servers failed; keeping the ones known");
            return;
        }
    };
    let mut answering = HashSet::new();
    for url in given.iter().filter(|u| !cluster.contains(u)) {
        if answers(url).await {
            answering.insert(url.clone());
        }
    }
    let next = merge(given, &cluster, &answering);
    if servers.set(next) {
        let urls: Vec<String> = servers.urls().iter().map(Uri::to_string).collect();
        tracing::info!(servers = ?urls, "the API servers changed");
    }
}

/// Keeps `servers` current until `stop`. `given` are the servers the agent was started
/// with.
pub async fn discover(
    client: kube::Client,
    servers: Servers,
    given: Vec<Uri>,
    stop: CancellationToken,
) {
    let mut changes = servers.subscribe();
    loop {
        tokio::select! {
            _ = refresh(&client, &servers, &given) => {}
            _ = stop.cancelled() => return,
        }
        // The failovers of the read itself are not news.
        let mut failovers = changes.borrow_and_update().failovers;
        let earliest = tokio::time::Instant::now() + MIN_REFRESH;
        let next = tokio::time::sleep(REFRESH);
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = stop.cancelled() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let now = changes.borrow_and_update().failovers;
                    if now != failovers {
                        failovers = now;
                        // Read soon: the server that failed may have left the cluster.
                        next.as_mut().reset(earliest.max(tokio::time::Instant::now()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(list: &[&str]) -> Vec<Uri> {
        list.iter().map(|u| parse_server(u).unwrap()).collect()
    }

    #[test]
    fn given_servers_stay_while_listed_or_answering_and_learned_ones_follow() {
        let given = uris(&["https://lb:6443", "https://10.0.0.1:6443"]);
        let cluster = uris(&["https://10.0.0.1:6443", "https://10.0.0.2:6443"]);
        let none = HashSet::new();
        assert_eq!(
            merge(&given, &cluster, &none),
            uris(&["https://10.0.0.1:6443", "https://10.0.0.2:6443"]),
            "an unlisted given server that does not answer is dropped"
        );
        let lb: HashSet<Uri> = uris(&["https://lb:6443"]).into_iter().collect();
        assert_eq!(
            merge(&given, &cluster, &lb),
            uris(&[
                "https://lb:6443",
                "https://10.0.0.1:6443",
                "https://10.0.0.2:6443"
            ]),
            "one that answers stays, first"
        );
    }

    #[test]
    fn loopback_servers_are_for_agents_on_the_same_host() {
        let cluster = uris(&["https://127.0.0.1:6443", "https://10.0.0.2:6443"]);
        assert_eq!(
            usable(&uris(&["https://10.0.0.1:6443"]), cluster.clone()),
            uris(&["https://10.0.0.2:6443"])
        );
        assert_eq!(
            usable(&uris(&["https://localhost:6443"]), cluster.clone()),
            cluster
        );
        assert!(is_loopback(&parse_server("https://[::1]:6443").unwrap()));
    }

    #[tokio::test]
    async fn a_server_answers_when_its_port_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = parse_server(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
        assert!(answers(&url).await);
        drop(listener);
        assert!(!answers(&url).await);
    }
}
