//! The tiered cache: a bounded local tier (moka) in front of any [`KvCache`], with
//! other instances' local copies dropped when a key changes.
//!
//! **Why moka.** A concurrent, bounded (TinyLFU) cache with per-entry expiry and
//! `try_get_with`, which runs one loader per key when many tasks miss at once and
//! never caches a loader's error: exactly the local tier's job, better than anything
//! worth hand-writing.
//!
//! **Reads.** A local hit costs no round trip. A miss reads the remote tier (one
//! round trip; `get_many` reads every local miss with one `get_many`) and keeps the
//! answer locally for the local TTL.
//!
//! **Writes** go to the remote tier first, then update or drop the local copy, then
//! publish an [`Invalidation`] on the [`InvalidationBus`]; every other instance drops
//! its local copy when it hears it.
//!
//! **Staleness bound.** While the bus is connected, another instance's write reaches
//! this instance within the bus latency (milliseconds on Redis pub/sub). When the bus
//! may have missed messages (a lost or re-established connection, a lagging listener)
//! it says [`BusEvent::Reset`] and the whole local tier is dropped. In every case a
//! local copy is served for at most the local TTL after it was read: that is the
//! bound when nothing else is known. A read that raced an invalidation is not kept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    BusEvent, CacheKey, Error, Invalidation, InvalidationBus, KvCache, Result, StoreSettings,
};
use serde::Serialize;

/// The tiered cache's settings.
#[derive(Clone, Debug)]
pub struct TieredConfig {
    /// Most entries in the local tier.
    pub local_capacity: u64,
    /// How long a local copy is served at most.
    pub local_ttl: Duration,
    /// Keep "not found" locally for this long (no remote write); `None` to not.
    pub negative_ttl: Option<Duration>,
    /// Spread remote TTLs of loaded values by up to this fraction (0.1: ±10%), so
    /// entries loaded together do not all expire together.
    pub ttl_jitter: f64,
    /// Keys per loader call in `get_many_or_load`.
    pub load_batch: usize,
}

impl Default for TieredConfig {
    fn default() -> Self {
        TieredConfig {
            local_capacity: 10_000,
            local_ttl: Duration::from_secs(60),
            negative_ttl: None,
            ttl_jitter: 0.0,
            load_batch: 100,
        }
    }
}

impl TieredConfig {
    /// The local tier's size and TTL from a [`chatstate_core::Config`].
    pub fn from_config(config: &chatstate_core::Config) -> Self {
        TieredConfig {
            local_capacity: config.local_cache.capacity,
            local_ttl: config.local_cache.ttl,
            ..TieredConfig::default()
        }
    }
}

/// A local copy: the value (`None`: known missing) and how long it may be served.
/// `loaded` tells a loader's "not found" from a remote miss seen by `get`: only the
/// first answers `get_or_load` without calling the loader.
#[derive(Clone, Debug)]
struct Local {
    value: Option<Bytes>,
    ttl: Duration,
    loaded: bool,
}

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Local> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Local,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Local,
        _now: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Hit and miss counts per tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TierStats {
    /// Reads answered by the local tier.
    pub local_hits: u64,
    /// Reads the local tier could not answer.
    pub local_misses: u64,
    /// Local misses the remote tier answered.
    pub remote_hits: u64,
    /// Local misses the remote tier did not have either.
    pub remote_misses: u64,
    /// Loader calls (`get_or_load`, `get_many_or_load`).
    pub loads: u64,
    /// Invalidations heard from other instances.
    pub invalidations: u64,
    /// Times the whole local tier was dropped (bus reset).
    pub resets: u64,
    /// Announcements that could not be published (other instances may then serve
    /// their copy until their local TTL runs out).
    pub publish_failures: u64,
}

#[derive(Default)]
struct Stats {
    local_hits: AtomicU64,
    local_misses: AtomicU64,
    remote_hits: AtomicU64,
    remote_misses: AtomicU64,
    loads: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
    publish_failures: AtomicU64,
}

struct Shared {
    remote: Arc<dyn KvCache>,
    local: moka::future::Cache<CacheKey, Local>,
    bus: Arc<dyn InvalidationBus>,
    origin: String,
    config: TieredConfig,
    /// Grows with every change this instance makes or hears of. A copy read or
    /// written while it moved is dropped right after it is kept, since it may
    /// predate the change (keep first, then check: an invalidation that lands in
    /// between still wins).
    epoch: AtomicU64,
    stats: Stats,
}

/// A [`KvCache`] with a local tier in front of a remote one.
pub struct TieredCache {
    shared: Arc<Shared>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("origin", &self.shared.origin)
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// An error shared by every task that waited on one loader.
#[derive(Debug)]
struct SharedLoadError(Arc<Error>);

impl std::fmt::Display for SharedLoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedLoadError {}

fn unshare(e: Arc<Error>) -> Error {
    Error::new(e.kind(), e.message().to_string()).with_source(SharedLoadError(e))
}

impl TieredCache {
    /// A tiered cache over `remote`, listening on `bus`. Must be called inside a
    /// tokio runtime (it spawns the listener, which stops when this is dropped).
    pub fn new(
        remote: Arc<dyn KvCache>,
        bus: Arc<dyn InvalidationBus>,
        config: TieredConfig,
    ) -> Self {
        let local = moka::future::Cache::builder()
            .max_capacity(config.local_capacity)
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .build();
        let shared = Arc::new(Shared {
            remote,
            local,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            config,
            epoch: AtomicU64::new(0),
            stats: Stats::default(),
            bus: bus.clone(),
        });
        let mut rx = bus.subscribe();
        let weak = Arc::downgrade(&shared);
        let listener = tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = match rx.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => BusEvent::Reset,
                    Err(RecvError::Closed) => return,
                };
                let Some(shared) = weak.upgrade() else { return };
                shared.hear(event).await;
            }
        });
        TieredCache { shared, listener }
    }

    /// This instance's id on the bus.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> TierStats {
        let s = &self.shared.stats;
        TierStats {
            local_hits: s.local_hits.load(Ordering::Relaxed),
            local_misses: s.local_misses.load(Ordering::Relaxed),
            remote_hits: s.remote_hits.load(Ordering::Relaxed),
            remote_misses: s.remote_misses.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            publish_failures: s.publish_failures.load(Ordering::Relaxed),
        }
    }

    /// Drops every local copy (not the remote values).
    pub fn clear_local(&self) {
        self.shared.local.invalidate_all();
    }

    /// The value, or `load()`'s: concurrent misses of one key in this process run
    /// `load` once and share its result. `Ok(None)` from the loader is "not found":
    /// kept locally for `negative_ttl` when configured, never written remotely. A
    /// loader error is returned to every waiter and not cached. A loaded value is
    /// written to the remote tier with `ttl` (jittered) and announced on the bus.
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: F,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<Option<Bytes>>> + Send,
    {
        let shared = &self.shared;
        match shared.local.get(key).await {
            // A remote miss seen by `get` is not the loader's answer: load.
            Some(hit) if hit.value.is_none() && !hit.loaded => shared.local.invalidate(key).await,
            Some(hit) => {
                shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.value);
            }
            None => {}
        }
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let init = async {
            if let Some(v) = shared.remote.get(key).await? {
                shared.stats.remote_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Local {
                    value: Some(v),
                    ttl: shared.config.local_ttl,
                    loaded: false,
                });
            }
            shared.stats.remote_misses.fetch_add(1, Ordering::Relaxed);
            shared.stats.loads.fetch_add(1, Ordering::Relaxed);
            match load().await? {
                Some(v) => {
                    let ttl = shared.jittered(ttl)?;
                    shared.remote.set(key, v.clone(), ttl).await?;
                    shared.announce(Invalidation::Key(key.clone())).await;
                    Ok(Local {
                        value: Some(v),
                        ttl: shared.local_ttl_for(ttl),
                        loaded: true,
                    })
                }
                None => Ok(Local {
                    value: None,
                    ttl: shared.config.negative_ttl.unwrap_or(Duration::ZERO),
                    loaded: true,
                }),
            }
        };
        let local = shared
            .local
            .try_get_with(key.clone(), init)
            .await
            .map_err(unshare)?;
        if local.ttl.is_zero() || shared.epoch.load(Ordering::SeqCst) != epoch {
            shared.local.invalidate(key).await;
        }
        Ok(local.value)
    }

    /// The values of `keys` (in order), loading the missing ones: local hits first,
    /// then one `get_many` for the rest, then `load` for what is still missing (each
    /// key once, however often it is asked for), in batches of `load_batch` keys, and
    /// one `set_many` writing back what was loaded. The TTL jitter applies per call:
    /// keys loaded by one call share one (jittered) TTL, successive calls are spread.
    pub async fn get_many_or_load<F, Fut>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        mut load: F,
    ) -> Result<Vec<Option<Bytes>>>
    where
        F: FnMut(Vec<CacheKey>) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<(CacheKey, Bytes)>>> + Send,
    {
        let mut out = self.get_many(keys).await?;
        let mut missing: Vec<CacheKey> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if out[i].is_none() && !missing.contains(k) {
                missing.push(k.clone());
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let shared = &self.shared;
        let mut loaded: Vec<(CacheKey, Bytes)> = Vec::new();
        for chunk in missing.chunks(shared.config.load_batch.max(1)) {
            shared.stats.loads.fetch_add(1, Ordering::Relaxed);
            for (k, v) in load(chunk.to_vec()).await? {
                // Only keys that were asked for, once each.
                if chunk.contains(&k) && !loaded.iter().any(|(l, _)| *l == k) {
                    loaded.push((k, v));
                }
            }
        }
        for (i, k) in keys.iter().enumerate() {
            if out[i].is_none()
                && let Some((_, v)) = loaded.iter().find(|(l, _)| l == k)
            {
                out[i] = Some(v.clone());
            }
        }
        if !loaded.is_empty() {
            let ttl = shared.jittered(ttl)?;
            let loaded_keys: Vec<CacheKey> = loaded.iter().map(|(k, _)| k.clone()).collect();
            let (written, epoch) = shared
                .write(&loaded_keys, shared.remote.set_many(loaded.clone(), ttl))
                .await;
            written?;
            for (k, v) in &loaded {
                shared
                    .keep(k, Some(v.clone()), shared.local_ttl_for(ttl))
                    .await;
            }
            shared.drop_if_moved(&loaded_keys, epoch).await;
        }
        Ok(out)
    }
}

impl Shared {
    /// `ttl` spread by the configured jitter; `None` (the remote's default TTL,
    /// which this layer does not know) stays `None`.
    fn jittered(&self, ttl: Option<Duration>) -> Result<Option<Duration>> {
        let Some(ttl) = ttl else { return Ok(None) };
        let j = self.config.ttl_jitter.clamp(0.0, 0.5);
        let spread = if j == 0.0 {
            ttl
        } else {
            let factor = 1.0 + j * (fastrand::f64() * 2.0 - 1.0);
            ttl.mul_f64(factor).max(Duration::from_millis(1))
        };
        StoreSettings::check_ttl(spread).map(Some)
    }

    /// How long a copy written with remote `ttl` may be served locally.
    fn local_ttl_for(&self, ttl: Option<Duration>) -> Duration {
        ttl.map_or(self.config.local_ttl, |t| t.min(self.config.local_ttl))
    }

    async fn keep(&self, key: &CacheKey, value: Option<Bytes>, ttl: Duration) {
        if !ttl.is_zero() {
            let loaded = false;
            self.local
                .insert(key.clone(), Local { value, ttl, loaded })
                .await;
        }
    }

    /// Drops the local copies of `keys` if anything changed since `epoch` was read.
    async fn drop_if_moved(&self, keys: &[CacheKey], epoch: u64) {
        if self.epoch.load(Ordering::SeqCst) != epoch {
            for k in keys {
                self.local.invalidate(k).await;
            }
        }
    }

    /// Runs a remote write of `keys`. Before it, moves the epoch (so a read in flight
    /// does not keep what it read) and drops the local copies; after it — failed or
    /// not, since a failed write may still have landed — announces the change.
    /// Returns the result and the epoch as it stood right before the write: a copy
    /// kept afterwards is dropped again if anything moved it since (another
    /// instance's newer write heard while ours was on the wire).
    async fn write<T>(
        &self,
        keys: &[CacheKey],
        write: impl std::future::Future<Output = Result<T>>,
    ) -> (Result<T>, u64) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for k in keys {
            self.local.invalidate(k).await;
        }
        let result = write.await;
        let what = match keys {
            [one] => Invalidation::Key(one.clone()),
            many => Invalidation::Keys(many.to_vec()),
        };
        self.announce(what).await;
        (result, epoch)
    }

    async fn announce(&self, what: Invalidation) {
        if let Err(e) = self.bus.publish(&self.origin, &what).await {
            // The write itself succeeded; other instances may serve their copy for up
            // to their local TTL.
            self.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "chatstate could not announce a cache change");
        }
    }

    async fn hear(&self, event: BusEvent) {
        match event {
            BusEvent::Invalidate { origin, .. } if origin == self.origin => {}
            BusEvent::Invalidate { what, .. } => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
                self.drop_local(&what).await;
            }
            BusEvent::Reset => {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.stats.resets.fetch_add(1, Ordering::Relaxed);
                self.local.invalidate_all();
            }
        }
    }

    async fn drop_local(&self, what: &Invalidation) {
        match what {
            Invalidation::Key(k) => self.local.invalidate(k).await,
            Invalidation::Keys(ks) => {
                for k in ks {
                    self.local.invalidate(k).await;
                }
            }
            prefix @ Invalidation::Prefix { .. } => {
                let prefix = prefix.clone();
                // Only fails if closures were not enabled at build time; they are.
                let _ = self
                    .local
                    .invalidate_entries_if(move |k, _| prefix.covers(k));
            }
        }
    }

    /// Keeps what a remote read returned (a value, or a remote miss when negative
    /// caching is on), unless something changed since `epoch`.
    async fn keep_read(&self, key: &CacheKey, value: &Option<Bytes>, epoch: u64) {
        let counter = if value.is_some() {
            &self.stats.remote_hits
        } else {
            &self.stats.remote_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match value {
            Some(v) => self.keep(key, Some(v.clone()), self.config.local_ttl).await,
            None => match self.config.negative_ttl {
                Some(ttl) => self.keep(key, None, ttl).await,
                None => return,
            },
        }
        self.drop_if_moved(std::slice::from_ref(key), epoch).await;
    }
}

#[async_trait]
impl KvCache for TieredCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let shared = &self.shared;
        if let Some(hit) = shared.local.get(key).await {
            shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.value);
        }
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let value = shared.remote.get(key).await?;
        shared.keep_read(key, &value, epoch).await;
        Ok(value)
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let shared = &self.shared;
        let mut out = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match shared.local.get(k).await {
                Some(hit) => {
                    shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
                    out.push(hit.value);
                }
                None => {
                    shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
                    out.push(None);
                    misses.push(i);
                }
            }
        }
        if misses.is_empty() {
            return Ok(out);
        }
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let wanted: Vec<CacheKey> = misses.iter().map(|&i| keys[i].clone()).collect();
        let values = shared.remote.get_many(&wanted).await?;
        for (&i, v) in misses.iter().zip(values) {
            shared.keep_read(&keys[i], &v, epoch).await;
            out[i] = v;
        }
        Ok(out)
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let shared = &self.shared;
        let keys = std::slice::from_ref(key);
        let (written, epoch) = shared
            .write(keys, shared.remote.set(key, value.clone(), ttl))
            .await;
        written?;
        shared
            .keep(key, Some(value), shared.local_ttl_for(ttl))
            .await;
        shared.drop_if_moved(keys, epoch).await;
        Ok(())
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let shared = &self.shared;
        let keys: Vec<CacheKey> = entries.iter().map(|(k, _)| k.clone()).collect();
        let (written, epoch) = shared
            .write(&keys, shared.remote.set_many(entries.clone(), ttl))
            .await;
        written?;
        let local_ttl = shared.local_ttl_for(ttl);
        for (k, v) in entries {
            shared.keep(&k, Some(v), local_ttl).await;
        }
        shared.drop_if_moved(&keys, epoch).await;
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let shared = &self.shared;
        shared
            .write(std::slice::from_ref(key), shared.remote.delete(key))
            .await
            .0
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let shared = &self.shared;
        shared.write(keys, shared.remote.delete_many(keys)).await.0
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        if let Some(hit) = self.shared.local.get(key).await {
            self.shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.value.is_some());
        }
        self.shared
            .stats
            .local_misses
            .fetch_add(1, Ordering::Relaxed);
        self.shared.remote.exists(key).await
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let shared = &self.shared;
        shared
            .write(std::slice::from_ref(key), shared.remote.expire(key, ttl))
            .await
            .0
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        self.shared.remote.ttl(key).await
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        let shared = &self.shared;
        let what = Invalidation::Prefix {
            namespace: namespace.to_string(),
            prefix: key_prefix.to_string(),
        };
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        shared.drop_local(&what).await;
        let result = shared.remote.clear_prefix(namespace, key_prefix).await;
        shared.announce(what).await;
        result
    }
}
