//! Watches on etcd itself: a resuming watch of a key range (it reconnects to another
//! member from the revision after the last event it delivered), and the store-level
//! watch built on it for requests the cache cannot serve (a revision older than it
//! holds, or a prefix that spans kinds).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::client::{EtcdClient, prefix_end};
use super::{Layout, event_of, pb, rev_of};
use crate::store::{Event, EventSource, Revision, StoreError};

/// How long a watch keeps trying to reach some member before it gives up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// An open gRPC watch: the request half is kept so the stream stays open.
struct Open {
    _requests: mpsc::Sender<pb::WatchRequest>,
    responses: tonic::Streaming<pb::WatchResponse>,
    member: usize,
}

/// One batch of events from a watch, in revision order.
pub(super) struct Batch {
    pub events: Vec<pb::Event>,
    /// The store's revision when etcd sent the batch.
    pub header_rev: Revision,
}

/// A watch of `[key, range_end)` from a revision, with prev_kv, that survives the loss
/// of a member: it reconnects from the revision after the last event it handed out.
pub(super) struct ResumingWatch {
    client: Arc<EtcdClient>,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// The next revision to ask for when (re)connecting.
    next_rev: i64,
    /// Whether events carry the previous value.
    prev_kv: bool,
    open: Option<Open>,
    stop: CancellationToken,
}

impl ResumingWatch {
    /// Opens the watch (failing with `Compacted` if `after` is too old).
    pub async fn start(
        client: Arc<EtcdClient>,
        key: Vec<u8>,
        after: Revision,
        prev_kv: bool,
        stop: CancellationToken,
    ) -> Result<ResumingWatch, StoreError> {
        let range_end = prefix_end(&key);
        let mut watch = ResumingWatch {
            client,
            key,
            range_end,
            next_rev: i64::try_from(after).unwrap_or(i64::MAX - 1) + 1,
            prev_kv,
            open: None,
            stop,
        };
        watch.connect().await?;
        Ok(watch)
    }

    async fn connect(&mut self) -> Result<(), StoreError> {
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(20);
        loop {
            let (member, channel) = self.client.channel();
            match self.try_open(member, channel).await {
                Ok(open) => {
                    self.open = Some(open);
                    return Ok(());
                }
                Err(Some(e)) => return Err(e),
                Err(None) => {
                    self.client.failover(member);
                    if started.elapsed() > RECONNECT_DEADLINE {
                        return Err(StoreError::Unavailable(format!(
                            "no etcd member accepted a watch within {RECONNECT_DEADLINE:?}"
                        )));
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(StoreError::Closed),
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// `Err(None)`: this member failed, try another; `Err(Some)`: final.
    async fn try_open(
        &self,
        member: usize,
        channel: tonic::transport::Channel,
    ) -> Result<Open, Option<StoreError>> {
        let (requests, rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: self.key.clone(),
                    range_end: self.range_end.clone(),
                    start_revision: self.next_rev,
                    prev_kv: self.prev_kv,
                    ..Default::default()
                },
            )),
        };
        requests.send(create).await.map_err(|_| None)?;
        let mut client = EtcdClient::watcher(channel);
        let call = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut responses = match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(error = %status, "etcd watch could not open; trying another member");
                return Err(None);
            }
            Err(_) => return Err(None),
        };
        // The first response confirms the watch, or says why it was refused.
        match tokio::time::timeout(Duration::from_secs(3), responses.message()).await {
            Ok(Ok(Some(first))) => {
                if first.compact_revision > 0 || (first.canceled && !first.created) {
                    return Err(Some(compacted(self.next_rev, &first)));
                }
                Ok(Open {
                    _requests: requests,
                    responses,
                    member,
                })
            }
            _ => Err(None),
        }
    }

    /// The next batch of events; reconnects as needed. Cancel-safe: a batch is only
    /// taken from the stream once it is returned.
    pub async fn next(&mut self) -> Result<Batch, StoreError> {
        loop {
            if self.stop.is_cancelled() {
                return Err(StoreError::Closed);
            }
            let Some(open) = self.open.as_mut() else {
                self.connect().await?;
                continue;
            };
            let message = tokio::select! {
                _ = self.stop.cancelled() => return Err(StoreError::Closed),
                m = open.responses.message() => m,
            };
            match message {
                Ok(Some(r)) => {
                    if r.compact_revision > 0 || r.canceled {
                        // etcd cancels a watch whose next revision was compacted away.
                        let member = open.member;
                        self.open = None;
                        if r.compact_revision > 0 {
                            return Err(compacted(self.next_rev, &r));
                        }
                        self.client.failover(member);
                        continue;
                    }
                    if let Some(last) = r.events.last().and_then(|e| e.kv.as_ref()) {
                        self.next_rev = last.mod_revision + 1;
                    }
                    return Ok(Batch {
                        header_rev: rev_of(r.header.map(|h| h.revision).unwrap_or(0)),
                        events: r.events,
                    });
                }
                Ok(None) | Err(_) => {
                    let member = open.member;
                    self.open = None;
                    self.client.failover(member);
                    tracing::debug!(
                        next = self.next_rev,
                        "etcd watch broke; resuming on another member"
                    );
                }
            }
        }
    }
}

fn compacted(next_rev: i64, r: &pb::WatchResponse) -> StoreError {
    StoreError::Compacted {
        requested: rev_of(next_rev - 1),
        compacted: rev_of(r.compact_revision),
    }
}

/// A store watch served by etcd itself.
pub(super) struct DirectWatch {
    watch: ResumingWatch,
    layout: Layout,
    prefix: String,
    buffer: VecDeque<Arc<Event>>,
    progress: Revision,
    known: Arc<AtomicU64>,
    done: bool,
}

impl DirectWatch {
    pub async fn start(
        client: Arc<EtcdClient>,
        layout: Layout,
        prefix: &str,
        after: Revision,
        known: Arc<AtomicU64>,
        stop: CancellationToken,
    ) -> Result<DirectWatch, StoreError> {
        let watch = ResumingWatch::start(client, layout.object(prefix), after, true, stop).await?;
        Ok(DirectWatch {
            watch,
            layout,
            prefix: prefix.to_string(),
            buffer: VecDeque::new(),
            progress: after,
            known,
            done: false,
        })
    }

    async fn next_event(&mut self) -> Option<Result<Arc<Event>, StoreError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.progress = event.rev;
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.watch.next().await {
                Ok(batch) => {
                    self.known.fetch_max(batch.header_rev, Ordering::AcqRel);
                    for e in &batch.events {
                        match event_of(&self.layout, e) {
                            Ok(Some(event)) if event.key.starts_with(&self.prefix) => {
                                self.buffer.push_back(Arc::new(event))
                            }
                            Ok(_) => {}
                            Err(e) => {
                                self.done = true;
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Err(StoreError::Closed) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl EventSource for DirectWatch {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Arc<Event>, StoreError>>> {
        Box::pin(self.next_event())
    }

    fn progress(&self) -> Revision {
        match self.buffer.front() {
            Some(front) => front.rev - 1,
            None => self.progress,
        }
    }
}
