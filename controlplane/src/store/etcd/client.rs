//! A small etcd v3 client over tonic: one lazily connected gRPC channel per member, each
//! request sent to one member, and failover to the next member when one cannot answer.
//!
//! Why not the `etcd-client` crate: it generates its bindings in a build script that
//! needs `protoc` installed, and building Skiff must need nothing but a Rust toolchain.
//! The bindings here are generated once from `controlplane/proto/etcd.proto` and
//! committed (`scripts/gen-etcd-proto`); what this module adds is what any etcd client
//! adds, retries that know which failures are safe to retry.
//!
//! A read may be retried anywhere. A write is retried on another member only when it
//! cannot have been applied (the member was unreachable, or had no leader). Any other
//! failure of a write is *ambiguous* (it may still commit), and is reported as such so
//! the caller can settle it by reading (see `EtcdStore::write`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::pb;
use super::pb::kv_client::KvClient;
use super::pb::maintenance_client::MaintenanceClient;
use super::pb::watch_client::WatchClient;

/// How long one RPC may take before it is abandoned (and, for a read, retried
/// elsewhere). A linearizable request waits for the Raft leader, so this must cover
/// an election (about a second with etcd's defaults).
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one call keeps retrying across members before it reports the cluster
/// unavailable.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
/// The largest response accepted. etcd's own request limit is 1.5 MiB by default; a
/// page of a range can be bigger than one value, so this leaves room for a page of
/// objects or one module chunk with its framing.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Where etcd is and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// Client URLs of the members, `http://HOST:PORT` or `https://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates (PEM file).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM files), for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoints given")]
    NoEndpoints,
    #[error("etcd endpoint {url:?} is not a valid URL")]
    BadEndpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("reading {path}")]
    TlsFileUnreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up TLS for etcd endpoint {url}")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("etcd refused the request: {0}")]
    Rejected(#[source] tonic::Status),
    /// The revision asked for has been compacted away.
    #[error("etcd revision {requested} has been compacted")]
    Compacted { requested: i64 },
    /// No member could answer in time; nothing was applied.
    #[error("no etcd member answered within {waited:?}; the last error was: {last}")]
    Unavailable { waited: Duration, last: String },
    /// A write failed in a way that leaves unknown whether it was applied.
    #[error("an etcd write may or may not have been applied: {0}")]
    Ambiguous(String),
}

/// What a failure says about retrying.
enum Failure {
    /// The request cannot have been applied: retry it, on another member.
    NotApplied,
    /// It may have been applied: a read may be retried, a write is ambiguous.
    Unknown,
    /// Retrying will not help.
    Final(EtcdError),
}

fn classify(status: tonic::Status) -> Failure {
    use tonic::Code;
    let message = status.message().to_ascii_lowercase();
    match status.code() {
        Code::OutOfRange if message.contains("compacted") => {
            // The request's revision is not in the status; callers fill it in.
            Failure::Final(EtcdError::Compacted { requested: 0 })
        }
        // A member that cannot reach a leader never proposed the request.
        Code::Unavailable if message.contains("no leader") => Failure::NotApplied,
        // The connection was never made: nothing was sent.
        Code::Unavailable
            if message.contains("connect")
                || message.contains("connection refused")
                || message.contains("dns error") =>
        {
            Failure::NotApplied
        }
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Failure::Unknown
        }
        Code::ResourceExhausted if message.contains("too many requests") => Failure::NotApplied,
        _ => Failure::Final(EtcdError::Rejected(status)),
    }
}

/// One etcd member's channel.
struct Member {
    url: String,
    channel: Channel,
}

/// A client for one etcd cluster; cheap to share behind an `Arc`.
pub struct EtcdClient {
    members: Vec<Member>,
    /// The member requests go to until it fails.
    active: AtomicUsize,
}

impl EtcdClient {
    /// Builds channels to every member; nothing connects until the first request.
    pub fn new(config: &EtcdConfig) -> Result<EtcdClient, EtcdError> {
        if config.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EtcdError::TlsFileUnreadable {
                path: path.clone(),
                source,
            })
        };
        let ca = config.ca_file.as_ref().map(read).transpose()?;
        let identity = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
            _ => None,
        };
        let mut members = Vec::new();
        for url in &config.endpoints {
            let url = url.trim().trim_end_matches('/').to_string();
            let url = if url.contains("://") {
                url
            } else {
                format!("http://{url}")
            };
            let bad = |source| EtcdError::BadEndpoint {
                url: url.clone(),
                source,
            };
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(bad)?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                // A member that vanished without closing its connection (a partition)
                // is noticed within seconds, not at the next TCP timeout.
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            if url.starts_with("https://") {
                let mut tls = ClientTlsConfig::new();
                if let Some(ca) = &ca {
                    tls = tls.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some(identity) = &identity {
                    tls = tls.identity(identity.clone());
                }
                endpoint = endpoint.tls_config(tls).map_err(|source| EtcdError::Tls {
                    url: url.clone(),
                    source,
                })?;
            }
            members.push(Member {
                channel: endpoint.connect_lazy(),
                url,
            });
        }
        Ok(EtcdClient {
            members,
            active: AtomicUsize::new(0),
        })
    }

    /// The member URLs, as configured.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url.clone()).collect()
    }

    /// The channel of the member in use, and its index (for [`EtcdClient::failover`]).
    pub fn channel(&self) -> (usize, Channel) {
        let index = self.active.load(Ordering::Relaxed) % self.members.len();
        (index, self.members[index].channel.clone())
    }

    /// Moves off member `from` if it is still the one in use.
    pub fn failover(&self, from: usize) {
        let next = (from + 1) % self.members.len();
        if self
            .active
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
            && self.members.len() > 1
        {
            tracing::debug!(from = %self.members[from].url, to = %self.members[next].url, "etcd: switching member");
        }
    }

    pub fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn watcher(channel: Channel) -> WatchClient<Channel> {
        WatchClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Runs `rpc` against a member, failing over and retrying as its kind allows.
    async fn call<T, F, Fut>(&self, idempotent: bool, rpc: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let (index, channel) = self.channel();
            let failure = match tokio::time::timeout(RPC_TIMEOUT, rpc(channel)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => {
                    let text = status.message().to_string();
                    (classify(status), text)
                }
                Err(_) => (
                    Failure::Unknown,
                    format!("no answer within {RPC_TIMEOUT:?}"),
                ),
            };
            match failure {
                (Failure::Final(e), _) => return Err(e),
                (Failure::Unknown, text) if !idempotent => {
                    self.failover(index);
                    return Err(EtcdError::Ambiguous(text));
                }
                (_, text) => {
                    self.failover(index);
                    if start.elapsed() >= CALL_DEADLINE {
                        return Err(EtcdError::Unavailable {
                            waited: start.elapsed(),
                            last: text,
                        });
                    }
                    tracing::debug!(error = %text, "etcd request failed; retrying");
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    pub async fn range(&self, request: pb::RangeRequest) -> Result<pb::RangeResponse, EtcdError> {
        let revision = request.revision;
        self.call(true, |ch| {
            let request = request.clone();
            async move { Self::kv(ch).range(request).await }
        })
        .await
        .map_err(|e| match e {
            EtcdError::Compacted { .. } => EtcdError::Compacted {
                requested: revision,
            },
            other => other,
        })
    }

    /// The transaction kube-apiserver sends etcd for a create: put `key` only if it has
    /// never been created (its create revision is 0). `succeeded` says whether it was.
    pub fn create_txn(key: Vec<u8>, value: Vec<u8>) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: key.clone(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
                range_end: Vec::new(),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key,
                    value,
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        }
    }

    /// A transaction. Retried only where it cannot have been applied; otherwise an
    /// `Ambiguous` error says the caller must find out by reading.
    pub async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, EtcdError> {
        self.call(false, |ch| {
            let request = request.clone();
            async move { Self::kv(ch).txn(request).await }
        })
        .await
    }

    pub async fn put(&self, request: pb::PutRequest) -> Result<pb::PutResponse, EtcdError> {
        self.put_as(false, request).await
    }

    /// A put whose repetition is harmless (the sync key: any write of it will do), so
    /// it is retried anywhere, like a read, instead of failing as ambiguous.
    pub async fn put_idempotent(
        &self,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, EtcdError> {
        self.put_as(true, request).await
    }

    async fn put_as(
        &self,
        idempotent: bool,
        request: pb::PutRequest,
    ) -> Result<pb::PutResponse, EtcdError> {
        self.call(idempotent, |ch| {
            let request = request.clone();
            async move { Self::kv(ch).put(request).await }
        })
        .await
    }

    /// Compacts etcd's history up to `revision` (idempotent: compacting an already
    /// compacted revision is reported as `Compacted`, which callers treat as done).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.call(true, |ch| async move {
            Self::kv(ch)
                .compact(pb::CompactionRequest {
                    revision,
                    physical: false,
                })
                .await
        })
        .await
        .map(|_| ())
    }

    /// The status of the member in use (its version, leader and revision).
    pub async fn status(&self) -> Result<pb::StatusResponse, EtcdError> {
        self.call(true, |ch| async move {
            MaintenanceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
        })
        .await
    }
}

/// The end of the key range that holds every key starting with `prefix` (etcd's
/// `range_end`): the prefix with its last byte incremented.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_increment_the_last_byte() {
        assert_eq!(prefix_end(b"/skiff/registry/"), b"/skiff/registry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    #[test]
    fn failures_are_sorted_by_what_a_retry_may_do() {
        use tonic::{Code, Status};
        assert!(matches!(
            classify(Status::new(Code::Unavailable, "etcdserver: no leader")),
            Failure::NotApplied
        ));
        assert!(matches!(
            classify(Status::new(Code::Unavailable, "tcp connect error")),
            Failure::NotApplied
        ));
        assert!(matches!(
            classify(Status::new(
                Code::Unavailable,
                "etcdserver: request timed out"
            )),
            Failure::Unknown
        ));
        assert!(matches!(
            classify(Status::new(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted"
            )),
            Failure::Final(EtcdError::Compacted { .. })
        ));
        assert!(matches!(
            classify(Status::new(
                Code::InvalidArgument,
                "etcdserver: request is too large"
            )),
            Failure::Final(EtcdError::Rejected(_))
        ));
    }
}
