//! The tiered cache's local copies never outlive what the remote keeps, where the
//! remote TTL is known: `set` with a TTL or with the remote's default TTL, and the
//! loaders' write-backs — even when the write's reply was slow, since the remote TTL
//! runs from when the write landed. On a manual clock shared by the remote (memory)
//! and the tiered cache, with a local TTL far longer than the entries'.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{CacheKey, KvCache, LocalBus, ManualClock, Result, StoreSettings};
use chatstate_layers::{LocalHit, TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;

/// A remote whose write replies take `reply_delay` of (manual) time after the write
/// landed.
struct SlowReplies {
    inner: MemoryStore,
    clock: ManualClock,
    reply_delay: Duration,
}

#[async_trait]
impl KvCache for SlowReplies {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        KvCache::set(&self.inner, key, value, ttl).await?;
        self.clock.advance(self.reply_delay);
        Ok(())
    }
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.inner.set_many(entries, ttl).await?;
        self.clock.advance(self.reply_delay);
        Ok(())
    }
    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        self.inner.set_many_with_ttls(entries).await?;
        self.clock.advance(self.reply_delay);
        Ok(())
    }
    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        self.inner.set_with_aliases(key, value, ttl, aliases).await
    }
    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        self.inner.get_by_alias(alias).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        KvCache::delete(&self.inner, key).await
    }
    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        self.inner.delete_many(keys).await
    }
    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        KvCache::ttl(&self.inner, key).await
    }
    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        self.inner.clear_prefix(namespace, key_prefix).await
    }
}

const CACHE_TTL: Duration = Duration::from_secs(20);
const SLOW: Duration = Duration::from_secs(4);

/// A tiered cache (local TTL 1 h) over a memory store whose default cache TTL is
/// 20 s and whose write replies take 4 s, all on one manual clock.
fn setup() -> (TieredCache, ManualClock) {
    let clock = ManualClock::starting_now();
    let store = MemoryStore::builder()
        .settings(StoreSettings {
            cache_ttl: CACHE_TTL,
            ..StoreSettings::default()
        })
        .clock(clock.shared())
        .build();
    let remote = Arc::new(SlowReplies {
        inner: store,
        clock: clock.clone(),
        reply_delay: SLOW,
    });
    let cache = TieredCache::with_clock(
        remote,
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl: Duration::from_secs(3600),
            remote_default_ttl: Some(CACHE_TTL),
            ..TieredConfig::default()
        },
        clock.shared(),
    );
    (cache, clock)
}

fn key(k: &str) -> CacheKey {
    CacheKey::new("customers", k).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Reads `k` (written with remote `ttl`, whose write reply took `SLOW`) 1 s before
/// and 1 s after the remote entry expires: a local hit before, nothing after.
async fn expires_with_the_remote(
    cache: &TieredCache,
    clock: &ManualClock,
    k: &CacheKey,
    ttl: Duration,
    what: &str,
) {
    // The write landed SLOW ago: its reply took that long.
    clock.advance(ttl - SLOW - Duration::from_secs(1));
    let hits = cache.stats().local_hits;
    assert_eq!(
        KvCache::get(cache, k).await.unwrap(),
        Some(b("v")),
        "{what}: alive 1 s before the remote TTL"
    );
    assert_eq!(
        cache.stats().local_hits,
        hits + 1,
        "{what}: served by the local tier"
    );
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        KvCache::get(cache, k).await.unwrap(),
        None,
        "{what}: the local copy does not outlive the remote entry"
    );
}

#[tokio::test]
async fn a_set_with_a_ttl_is_not_served_locally_after_the_remote_expires_it() {
    let (cache, clock) = setup();
    let k = key("explicit");
    let ttl = Duration::from_secs(10);
    cache.set(&k, b("v"), Some(ttl)).await.unwrap();
    expires_with_the_remote(&cache, &clock, &k, ttl, "set with a TTL").await;
}

#[tokio::test]
async fn a_set_without_a_ttl_is_capped_by_the_remote_default_ttl() {
    let (cache, clock) = setup();
    let k = key("default");
    cache.set(&k, b("v"), None).await.unwrap();
    expires_with_the_remote(&cache, &clock, &k, CACHE_TTL, "set without a TTL").await;
    let k = key("many");
    cache
        .set_many(vec![(k.clone(), b("v"))], None)
        .await
        .unwrap();
    expires_with_the_remote(&cache, &clock, &k, CACHE_TTL, "set_many without a TTL").await;
}

#[tokio::test]
async fn a_loaders_write_back_is_not_served_locally_after_the_remote_expires_it() {
    let (cache, clock) = setup();
    let ttl = Duration::from_secs(10);
    let k = key("loaded");
    let v = cache
        .get_or_load_bytes(&k, Some(ttl), || async { Ok(Some(b("v"))) })
        .await
        .unwrap();
    assert_eq!(v, Some(b("v")));
    expires_with_the_remote(&cache, &clock, &k, ttl, "get_or_load").await;

    let k = key("many-loaded");
    let v = cache
        .get_many_or_load_bytes(std::slice::from_ref(&k), Some(ttl), |keys| async move {
            Ok(keys.into_iter().map(|k| (k, b("v"))).collect())
        })
        .await
        .unwrap();
    assert_eq!(v, vec![Some(b("v"))]);
    expires_with_the_remote(&cache, &clock, &k, ttl, "get_many_or_load").await;
}

#[tokio::test]
async fn a_read_copy_is_served_for_at_most_the_local_ttl_on_the_caches_clock() {
    let clock = ManualClock::starting_now();
    let store = MemoryStore::builder().clock(clock.shared()).build();
    let cache = TieredCache::with_clock(
        Arc::new(store.clone()),
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl: Duration::from_secs(30),
            ..TieredConfig::default()
        },
        clock.shared(),
    );
    let k = key("read");
    KvCache::set(&store, &k, b("v1"), None).await.unwrap();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v1")));
    // Another writer, no bus: the copy is stale, and bounded by the local TTL.
    KvCache::set(&store, &k, b("v2"), None).await.unwrap();
    clock.advance(Duration::from_secs(29));
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v1")));
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        KvCache::get(&cache, &k).await.unwrap(),
        Some(b("v2")),
        "the local TTL runs on the cache's clock"
    );
}

/// A manual clock whose coarse reading is `behind` the exact one, and which says
/// its coarse reading may lag by up to 1 s (the system clock's bound).
#[derive(Debug)]
struct CoarseBehind {
    exact: ManualClock,
    behind: Duration,
}

impl chatstate_core::Clock for CoarseBehind {
    fn now(&self) -> chatstate_core::Timestamp {
        self.exact.now()
    }
    fn now_coarse(&self) -> chatstate_core::Timestamp {
        chatstate_core::Timestamp(self.exact.now().as_millis() - self.behind.as_millis() as i64)
    }
    fn coarse_lag(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Issue 13: a hit tells fresh from stale on the coarse clock only when the copy's
/// deadline is more than the coarse lag away; near it, it reads the exact clock. So
/// a copy is served up to the last millisecond before its deadline and not at it,
/// whether the coarse reading lags by nothing or by the whole bound.
#[tokio::test]
async fn a_hit_keeps_the_deadline_to_the_millisecond_whatever_the_coarse_clock_lags() {
    for behind in [
        Duration::ZERO,
        Duration::from_millis(400),
        Duration::from_secs(1),
    ] {
        let exact = ManualClock::starting_now();
        let store = MemoryStore::builder().clock(exact.shared()).build();
        let cache = TieredCache::with_clock(
            Arc::new(store.clone()),
            Arc::new(LocalBus::new()),
            TieredConfig {
                local_ttl: Duration::from_secs(30),
                // Copies kept past their deadline: a hit must tell fresh from stale.
                max_stale: Duration::from_secs(300),
                ..TieredConfig::default()
            },
            Arc::new(CoarseBehind {
                exact: exact.clone(),
                behind,
            }),
        );
        let k = key("coarse");
        KvCache::set(&store, &k, b("v1"), None).await.unwrap();
        assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v1")));
        exact.advance(Duration::from_secs(10));
        assert_eq!(
            cache.get_local(&k).await.map(LocalHit::into_value),
            Some(Some(b("v1"))),
            "{behind:?}: far from the deadline"
        );
        exact.advance(Duration::from_millis(19_999));
        assert_eq!(
            cache.get_local(&k).await.map(LocalHit::into_value),
            Some(Some(b("v1"))),
            "{behind:?}: 1 ms before the deadline"
        );
        exact.advance(Duration::from_millis(1));
        assert_eq!(
            cache.get_local(&k).await.map(LocalHit::into_value),
            None,
            "{behind:?}: at the deadline, stale"
        );
    }
}
