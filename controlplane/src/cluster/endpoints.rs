//! Which servers serve the API, published as Kubernetes publishes its API servers: each
//! server renews a Lease of its own in `kube-system` (an identity lease, labelled
//! `skiff.dev/apiserver`), and every server reconciles the `default/kubernetes`
//! Endpoints to the servers whose lease is live. Agents and client verbs read those
//! Endpoints to learn the other servers, so one URL is enough to find them all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use crate::apiserver::internal;
use crate::error::ApiError;
use crate::objects;
use crate::state::ApiServer;
use crate::store::ListRequest;

/// Labels the identity leases of API servers.
pub const APISERVER_LABEL: &str = "skiff.dev/apiserver";
/// The server's URL, on its identity lease.
pub const URL_ANNOTATION: &str = "skiff.dev/advertise-url";
/// The Endpoints (in `default`) that list the API servers.
pub const ENDPOINTS_NAME: &str = "kubernetes";
/// How often a server renews its lease and reconciles the Endpoints.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// A server whose lease is older than this is left out of the Endpoints.
const LEASE_SECONDS: i64 = 15;

fn leases() -> &'static ResourceInfo {
    crate::kinds::lookup("coordination.k8s.io", "v1", "leases").expect("leases are served")
}

fn endpoints() -> &'static ResourceInfo {
    crate::kinds::lookup("", "v1", "endpoints").expect("endpoints are served")
}

/// The identity lease's name for a server identity (any string).
pub fn lease_name(identity: &str) -> String {
    let hash = hex::encode(Sha256::digest(identity.as_bytes()));
    format!("skiff-apiserver-{}", &hash[..16])
}

/// Keeps this server's lease and the Endpoints current until `stop`; then removes this
/// server from both, so clients stop trying it at once.
pub async fn run(
    api: Arc<ApiServer>,
    identity: String,
    advertise: SocketAddr,
    stop: CancellationToken,
) {
    let url = format!("https://{advertise}");
    let name = lease_name(&identity);
    loop {
        if let Err(e) = renew(&api, &name, &identity, &url).await {
            tracing::debug!(error = %e, "renewing the API server's identity lease");
        }
        if let Err(e) = reconcile(&api).await {
            tracing::debug!(error = %e, "reconciling the kubernetes Endpoints");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    let gone = internal::delete(
        &api,
        leases(),
        Some("kube-system"),
        &name,
        &Default::default(),
    )
    .await;
    if gone.is_ok()
        && let Err(e) = reconcile(&api).await
    {
        tracing::debug!(error = %e, "removing this server from the kubernetes Endpoints");
    }
}

async fn renew(api: &ApiServer, name: &str, identity: &str, url: &str) -> Result<(), ApiError> {
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": "kube-system",
            "labels": {APISERVER_LABEL: "true"},
            "annotations": {URL_ANNOTATION: url},
        },
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now},
    });
    match internal::update(api, leases(), Some("kube-system"), name, |current| {
        let mut next = current.clone();
        next["spec"] = lease["spec"].clone();
        next["metadata"]["annotations"] = lease["metadata"]["annotations"].clone();
        next["metadata"]["labels"] = lease["metadata"]["labels"].clone();
        Ok(next)
    })
    .await
    {
        Ok(_) => Ok(()),
        Err(ApiError::NotFound(_)) => internal::create(api, leases(), Some("kube-system"), lease)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    }
}

/// The live API servers' addresses, from their identity leases.
async fn live_servers(api: &ApiServer) -> Result<Vec<SocketAddr>, ApiError> {
    let prefix = leases().namespace_prefix(Some("kube-system"));
    let mine = |l: &Value| {
        l.pointer("/metadata/labels")
            .and_then(|labels| labels.get(APISERVER_LABEL))
            .is_some()
    };
    let page = api.store.list(ListRequest::all(&prefix, &mine)).await?;
    let now = jiff::Timestamp::now();
    let mut servers: Vec<SocketAddr> = page
        .items
        .iter()
        .filter(|l| {
            let renewed = l
                .object
                .pointer("/spec/renewTime")
                .and_then(Value::as_str)
                .and_then(objects::parse_time);
            let secs = l
                .object
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(LEASE_SECONDS);
            renewed.is_some_and(|t| now.duration_since(t).as_secs() < secs)
        })
        .filter_map(|l| {
            let url = l
                .object
                .pointer(&format!(
                    "/metadata/annotations/{}",
                    URL_ANNOTATION.replace('/', "~1")
                ))?
                .as_str()?;
            url.strip_prefix("https://")?.parse().ok()
        })
        .collect();
    servers.sort();
    servers.dedup();
    Ok(servers)
}

/// The Endpoints subsets for a set of servers: one subset per port, as Kubernetes
/// groups them.
fn subsets(servers: &[SocketAddr]) -> Value {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for s in servers {
        by_port
            .entry(s.port())
            .or_default()
            .push(s.ip().to_string());
    }
    Value::Array(
        by_port
            .into_iter()
            .map(|(port, ips)| {
                json!({
                    "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
                })
            })
            .collect(),
    )
}

/// Writes `default/kubernetes` to list exactly the live servers (no write if it does).
pub async fn reconcile(api: &ApiServer) -> Result<(), ApiError> {
    let servers = live_servers(api).await?;
    let want = subsets(&servers);
    let object = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": ENDPOINTS_NAME,
            "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"},
        },
        "subsets": want,
    });
    match internal::get(api, endpoints(), Some("default"), ENDPOINTS_NAME).await? {
        Some(current) if current.get("subsets").unwrap_or(&json!([])) == &want => Ok(()),
        Some(_) => internal::update(api, endpoints(), Some("default"), ENDPOINTS_NAME, |cur| {
            let mut next = cur.clone();
            next["subsets"] = want.clone();
            Ok(next)
        })
        .await
        .map(|_| ()),
        None => match internal::create(api, endpoints(), Some("default"), object).await {
            Ok(_) | Err(ApiError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_grouped_by_port_and_read_back_as_urls() {
        let servers: Vec<SocketAddr> = ["10.0.0.1:6443", "10.0.0.2:6443", "127.0.0.1:7000"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ep = json!({"subsets": subsets(&servers)});
        assert_eq!(ep["subsets"].as_array().unwrap().len(), 2);
        assert_eq!(
            skiff_api::client::endpoints_urls(&ep),
            [
                "https://10.0.0.1:6443",
                "https://10.0.0.2:6443",
                "https://127.0.0.1:7000"
            ]
        );
        assert_ne!(lease_name("a"), lease_name("b"));
        assert!(lease_name("host_0f3c").len() <= 63);
    }
}
