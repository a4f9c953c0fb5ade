//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! leaderelection package does it, so that of several servers sharing a cluster only one
//! runs the scheduler and the controllers at a time.
//!
//! - A candidate takes the Lease when it is free, released, or has not changed for
//!   `lease_duration` *as this candidate observed it*: expiry is measured on the local
//!   clock from when the record was last seen to change, so clock skew between servers
//!   cannot make two leaders.
//! - The leader renews every `retry_period`; if it cannot renew for `renew_deadline`
//!   (shorter than the lease), it stops leading before anyone else may start.
//! - Every write is compare-and-swap on the Lease's resourceVersion.
//! - On shutdown the leader empties `holderIdentity`, so a successor need not wait out
//!   the lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use skiff_api::resources::ResourceInfo;

use crate::apiserver::internal;
use crate::error::{ApiError, Subject};
use crate::objects;
use crate::state::ApiServer;

/// The Lease that holds the scheduler's and controllers' leadership.
pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "skiff-controlplane";

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// This candidate's name in `holderIdentity`.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retries.
    pub fn new(identity: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// For servers that share an etcd store and must fail over fast: a 1 s lease (the
    /// shortest a Lease can say), renewed every 200 ms, given up after 700 ms without
    /// renewal. A SIGKILLed leader is replaced within about 1.2 s; the price is that an
    /// etcd stall longer than the renew deadline makes the leader step down (and its
    /// loops restart on whichever server wins next), which costs a re-list, not a fault.
    pub fn for_failover(identity: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(1),
            renew_deadline: Duration::from_millis(700),
            retry_period: Duration::from_millis(200),
        }
    }
}

fn leases() -> &'static ResourceInfo {
    crate::kinds::lookup("coordination.k8s.io", "v1", "leases").expect("leases are served")
}

fn micro_time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What a candidate last saw of the Lease, and when it changed.
struct Observed {
    resource_version: String,
    holder: String,
    duration: Duration,
    changed_at: Instant,
}

struct Elector {
    api: Arc<ApiServer>,
    config: LeaderConfig,
    observed: Option<Observed>,
}

impl Elector {
    /// One attempt to take or renew the Lease; true if this candidate holds it now.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, ApiError> {
        let now = micro_time(jiff::Timestamp::now());
        let me = self.config.identity.clone();
        let secs = self.config.lease_duration.as_secs().max(1);
        let current = internal::get(&self.api, leases(), Some(LEASE_NAMESPACE), LEASE_NAME).await?;
        let Some(current) = current else {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": secs, "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
            });
            return match internal::create(&self.api, leases(), Some(LEASE_NAMESPACE), lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(ApiError::AlreadyExists(_)) => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(&current);
        let observed = self.observed.as_ref().expect("just observed");
        let holder = observed.holder.clone();
        let free = holder.is_empty() || observed.changed_at.elapsed() >= observed.duration;
        if holder != me && !free {
            return Ok(false);
        }
        let seen_rv = observed.resource_version.clone();
        let taking_over = holder != me;
        let result = internal::update(
            &self.api,
            leases(),
            Some(LEASE_NAMESPACE),
            LEASE_NAME,
            |cur| {
                // Compare-and-swap: only the record this decision was based on.
                if objects::resource_version(cur) != Some(seen_rv.as_str()) {
                    return Err(ApiError::Conflict(
                        Subject::new(leases(), LEASE_NAME),
                        "the lease changed meanwhile".into(),
                    ));
                }
                let mut next = cur.clone();
                let spec = &mut next["spec"];
                if !spec.is_object() {
                    *spec = json!({});
                }
                spec["holderIdentity"] = json!(me);
                spec["leaseDurationSeconds"] = json!(secs);
                spec["renewTime"] = json!(now);
                if taking_over {
                    spec["acquireTime"] = json!(now);
                    let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
                    spec["leaseTransitions"] = json!(transitions + 1);
                }
                Ok(next)
            },
        )
        .await;
        match result {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(ApiError::Conflict(..) | ApiError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn observe(&mut self, lease: &Value) {
        let rv = objects::resource_version(lease)
            .unwrap_or_default()
            .to_string();
        if self
            .observed
            .as_ref()
            .is_some_and(|o| o.resource_version == rv)
        {
            return;
        }
        let secs = lease
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(self.config.lease_duration.as_secs());
        self.observed = Some(Observed {
            resource_version: rv,
            holder: lease
                .pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            duration: Duration::from_secs(secs),
            changed_at: Instant::now(),
        });
    }

    /// Empties holderIdentity if this candidate still holds the Lease.
    async fn release(&mut self) {
        let me = self.config.identity.clone();
        let _ = internal::update(
            &self.api,
            leases(),
            Some(LEASE_NAMESPACE),
            LEASE_NAME,
            |cur| {
                if cur.pointer("/spec/holderIdentity").and_then(Value::as_str) != Some(&me) {
                    return Err(ApiError::Conflict(
                        Subject::new(leases(), LEASE_NAME),
                        "held by another".into(),
                    ));
                }
                let mut next = cur.clone();
                next["spec"]["holderIdentity"] = Value::Null;
                next["spec"]["leaseDurationSeconds"] = json!(1);
                Ok(next)
            },
        )
        .await;
    }
}

/// Runs `lead` whenever this candidate holds the Lease, until `stop`. `lead` gets a
/// token that is cancelled when leadership is lost (or at `stop`) and must return soon
/// after; a new term starts `lead` afresh.
pub async fn run<F, Fut>(
    api: Arc<ApiServer>,
    config: LeaderConfig,
    stop: CancellationToken,
    lead: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let retry = config.retry_period;
    let renew_deadline = config.renew_deadline;
    let mut elector = Elector {
        api,
        config,
        observed: None,
    };
    loop {
        // Candidate: try until the Lease is ours.
        loop {
            match elector.try_acquire_or_renew().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: acquiring the lease failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!(identity = %elector.config.identity, lease = %format!("{LEASE_NAMESPACE}/{LEASE_NAME}"), "became leader");
        let term = stop.child_token();
        let mut leading = tokio::spawn(lead(term.clone()));
        // Leader: renew, and step down if renewal keeps failing past the deadline.
        let mut last_renewed = Instant::now();
        let mut lead_ended = false;
        let lost = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break false,
                // The loops ended on their own: keep holding (and renewing) the lease.
                _ = &mut leading, if !lead_ended => {
                    lead_ended = true;
                    continue;
                }
                _ = tokio::time::sleep(retry) => {}
            }
            match elector.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => break true,
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: renewing the lease failed");
                    if last_renewed.elapsed() >= renew_deadline {
                        break true;
                    }
                }
            }
        };
        term.cancel();
        if !lead_ended {
            let _ = leading.await;
        }
        if !lost {
            elector.release().await;
            return;
        }
        tracing::warn!(identity = %elector.config.identity, "lost leadership; loops stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn api(dir: &tempfile::TempDir) -> Arc<ApiServer> {
        Arc::new(ApiServer::on_redb_for_tests(dir.path()))
    }

    fn fast(identity: &str) -> LeaderConfig {
        LeaderConfig {
            identity: identity.into(),
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(100),
        }
    }

    /// A candidate whose loops count how many terms are running at once.
    fn candidate(
        api: &Arc<ApiServer>,
        identity: &str,
        leaders: &Arc<AtomicUsize>,
        max_leaders: &Arc<AtomicUsize>,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (leaders, max_leaders) = (leaders.clone(), max_leaders.clone());
        tokio::spawn(run(
            api.clone(),
            fast(identity),
            stop.clone(),
            move |term| {
                let (leaders, max_leaders) = (leaders.clone(), max_leaders.clone());
                async move {
                    let now = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                    max_leaders.fetch_max(now, Ordering::SeqCst);
                    term.cancelled().await;
                    leaders.fetch_sub(1, Ordering::SeqCst);
                }
            },
        ))
    }

    async fn holder(api: &ApiServer) -> Option<String> {
        let key = leases().key(Some(LEASE_NAMESPACE), LEASE_NAME);
        let lease = api.store.get(&key).await.unwrap()?;
        lease
            .object
            .pointer("/spec/holderIdentity")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    async fn wait_for_holder(api: &ApiServer, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while holder(api).await.as_deref() != Some(want) {
            assert!(Instant::now() < deadline, "{want} never took the lease");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_successor_after_release_or_loss() {
        let dir = tempfile::tempdir().unwrap();
        let api = api(&dir);
        let leaders = Arc::new(AtomicUsize::new(0));
        let max_leaders = Arc::new(AtomicUsize::new(0));
        let (stop_a, stop_b) = (CancellationToken::new(), CancellationToken::new());
        let a = candidate(&api, "a", &leaders, &max_leaders, &stop_a);
        wait_for_holder(&api, "a").await;
        let b = candidate(&api, "b", &leaders, &max_leaders, &stop_b);
        // b keeps trying for several lease renewals without taking over.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(holder(&api).await.as_deref(), Some("a"));

        // a shuts down cleanly: it releases the lease, and b takes it without waiting
        // the lease out.
        let released = Instant::now();
        stop_a.cancel();
        a.await.unwrap();
        wait_for_holder(&api, "b").await;
        assert!(released.elapsed() < Duration::from_millis(1900));
        assert_eq!(leaders.load(Ordering::SeqCst), 1);

        // b is lost without releasing (its task is aborted, as a crash would): a new
        // candidate waits for the lease to expire, then takes it.
        b.abort();
        stop_b.cancel(); // ends b's loops, as the crash would have
        let lost = Instant::now();
        let stop_c = CancellationToken::new();
        let c = candidate(&api, "c", &leaders, &max_leaders, &stop_c);
        wait_for_holder(&api, "c").await;
        assert!(
            lost.elapsed() >= Duration::from_millis(1900),
            "took over after {:?}, before the lease expired",
            lost.elapsed()
        );
        let key = leases().key(Some(LEASE_NAMESPACE), LEASE_NAME);
        let lease = api.store.get(&key).await.unwrap().unwrap();
        assert_eq!(lease.object["spec"]["leaseTransitions"], 2);
        stop_c.cancel();
        c.await.unwrap();
        assert_eq!(max_leaders.load(Ordering::SeqCst), 1, "never two leaders");
    }
}
