//! Verified bearer tokens, so that a request whose token this server has already checked
//! costs one map lookup, not a store read, a parse of the record and a hash of the secret.
//!
//! An entry is keyed by the whole token (`<id>.<secret>`), so only the exact token that
//! was verified hits. It goes as soon as its record changes or is deleted, so `skiff
//! token revoke` stays immediate: `tokens.rs` drops it before a revocation through this
//! server is answered, and a watch on the token records ([`follow`]) drops it when any
//! server changes or deletes the record. While that watch is not running (before it
//! starts, between a failure and its restart), nothing is cached and every request reads
//! the record from the store. A miss that read the store before an invalidation does not
//! insert what it read (see [`TokenCache::generation`]).

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use skiff_api::token::RECORD_PREFIX;

use super::authn::Identity;
use crate::state::SharedApi;

/// Most tokens kept. A cluster has a token per node and a few for people; past this the
/// cache starts again empty rather than keeping track of age.
const MAX_ENTRIES: usize = 4096;

/// How long the watch waits before it starts again after failing.
const RETRY: Duration = Duration::from_secs(1);

/// The identities of tokens verified against their records (see the module's header).
#[derive(Default)]
pub struct TokenCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Whole token -> what it was verified as.
    entries: HashMap<String, Verified>,
    /// Bumped by every invalidation: a miss inserts only if none happened since it began.
    generation: u64,
    /// Whether the watch that invalidates entries is running.
    live: bool,
}

struct Verified {
    /// The token's id: its record's name.
    id: String,
    identity: Identity,
}

impl TokenCache {
    /// Who `token` (the whole bearer token) was verified as, if it is cached.
    pub fn get(&self, token: &str) -> Option<Identity> {
        let inner = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        inner.entries.get(token).map(|v| v.identity.clone())
    }

    /// Taken before a miss reads the token's record: [`TokenCache::insert`] refuses what
    /// was read if the record may have changed since.
    pub fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Remembers that `token`, whose id is `id`, is `identity`, as read from its record
    /// after `generation` was taken.
    pub fn insert(&self, token: &str, id: &str, identity: Identity, generation: u64) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        if !inner.live || inner.generation != generation {
            return;
        }
        if inner.entries.len() >= MAX_ENTRIES {
            inner.entries = HashMap::new();
        }
        inner.entries.insert(
            token.to_string(),
            Verified {
                id: id.to_string(),
                identity,
            },
        );
    }

    /// Forgets every token whose id is `id` (its record changed or is gone).
    pub fn invalidate(&self, id: &str) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        inner.entries.retain(|_, v| v.id != id);
    }

    /// Forgets everything, and caches from now on only if `live`.
    fn reset(&self, live: bool) {
        let mut inner = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        inner.generation += 1;
        inner.entries = HashMap::new();
        inner.live = live;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

/// Keeps `api.tokens` in step with the token records: watches them from the newest
/// revision and drops the entry of every record that changes or goes, until `stop`.
/// Caching is on only while the watch runs.
pub async fn follow(api: SharedApi, stop: CancellationToken) {
    let cache = &api.tokens;
    loop {
        let from = api.store.current_revision();
        match api.store.watch(RECORD_PREFIX, from).await {
            Ok(mut stream) => {
                // Whatever changed up to `from` is in the store that misses read; after
                // it, in this stream.
                cache.reset(true);
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => {
                            cache.reset(false);
                            return;
                        }
                        event = stream.next() => event,
                    };
                    match event {
                        Some(Ok(event)) => {
                            if let Some(id) = event.key.strip_prefix(RECORD_PREFIX) {
                                cache.invalidate(id);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "the token records' watch ended; restarting it");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "watching the token records failed; retrying"),
        }
        cache.reset(false);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(id: &str) -> Identity {
        Identity::Admin { id: id.into() }
    }

    #[test]
    fn nothing_is_cached_until_the_watch_runs() {
        let cache = TokenCache::default();
        let g = cache.generation();
        cache.insert("a.s", "a", admin("a"), g);
        assert_eq!(cache.get("a.s"), None);
        cache.reset(true);
        let g = cache.generation();
        cache.insert("a.s", "a", admin("a"), g);
        assert_eq!(cache.get("a.s"), Some(admin("a")));
        assert_eq!(cache.get("a.other"), None, "only the verified secret hits");
        cache.reset(false);
        assert_eq!(cache.get("a.s"), None, "a stopped watch empties the cache");
    }

    #[test]
    fn an_invalidation_drops_the_token_and_refuses_reads_from_before_it() {
        let cache = TokenCache::default();
        cache.reset(true);
        let g = cache.generation();
        cache.insert("a.s", "a", admin("a"), g);
        cache.insert("b.s", "b", admin("b"), g);
        // A miss for `a` begins, then `a`'s record is revoked before it inserts.
        let before = cache.generation();
        cache.invalidate("a");
        assert_eq!(cache.get("a.s"), None);
        assert_eq!(cache.get("b.s"), Some(admin("b")), "other tokens stay");
        cache.insert("a.s", "a", admin("a"), before);
        assert_eq!(cache.get("a.s"), None, "what was read before is not cached");
    }

    /// A record deleted or changed behind this server's back (as another server's
    /// revocation is, or a role changed by a restore) is noticed through the watch: the
    /// cached token stops working without any call to `invalidate` here.
    #[tokio::test]
    async fn the_watch_drops_tokens_whose_records_change_or_go() {
        use crate::store::WriteOp;
        use axum::http::{HeaderMap, HeaderValue, header};
        use skiff_api::token::{Role, Token};
        use std::sync::Arc;
        use std::time::Instant;

        let dir = tempfile::tempdir().unwrap();
        let api = Arc::new(crate::state::ApiServer::on_redb_for_tests(dir.path()));
        let stop = CancellationToken::new();
        let watch = tokio::spawn(follow(api.clone(), stop.clone()));
        let headers = |t: &Token| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
            h
        };
        let authenticate = |t: &Token| {
            let (api, h) = (api.clone(), headers(t));
            async move { super::super::authenticate(&api, &h).await.ok() }
        };
        async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !done() {
                assert!(Instant::now() < deadline, "{what}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        wait_until("the watch starts", || api.tokens.inner.read().unwrap().live).await;

        let (a, b) = (Token::generate(), Token::generate());
        for t in [&a, &b] {
            api.store
                .write(WriteOp::Create {
                    key: t.record_key(),
                    object: t.record(Role::Viewer, None, ""),
                    guard: None,
                })
                .await
                .unwrap();
        }
        let viewer = |t: &Token| Some(Identity::Viewer { id: t.id.clone() });
        for t in [&a, &b] {
            assert_eq!(authenticate(t).await, viewer(t));
            assert!(api.tokens.get(&t.to_string()).is_some(), "cached");
        }

        // `a` is revoked by another server: only the store sees it.
        api.store
            .write(WriteOp::Delete {
                key: a.record_key(),
                expected_rev: None,
            })
            .await
            .unwrap();
        // `b` becomes an admin's token.
        api.store
            .write(WriteOp::Update {
                key: b.record_key(),
                object: b.record(Role::Admin, None, ""),
                expected_rev: None,
            })
            .await
            .unwrap();
        let (ta, tb) = (a.to_string(), b.to_string());
        wait_until("the watch drops both", || {
            api.tokens.get(&ta).is_none() && api.tokens.get(&tb).is_none()
        })
        .await;
        assert_eq!(authenticate(&a).await, None, "revoked");
        assert_eq!(
            authenticate(&b).await,
            Some(Identity::Admin { id: b.id.clone() }),
            "the new record"
        );

        stop.cancel();
        watch.await.unwrap();
        assert!(!api.tokens.inner.read().unwrap().live);
        assert_eq!(api.tokens.len(), 0);
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = TokenCache::default();
        cache.reset(true);
        for i in 0..MAX_ENTRIES + 10 {
            let g = cache.generation();
            cache.insert(&format!("t{i}.s"), &format!("t{i}"), admin("x"), g);
        }
        assert!(cache.len() <= MAX_ENTRIES);
    }
}
