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
//! **Writes** (`set`, `delete`, `expire`, `clear_prefix`, the many-key forms and the
//! loaders' write-backs) go to the remote tier first, then update or drop the local
//! copy, then publish an [`Invalidation`] on the [`InvalidationBus`]; every other
//! instance drops its local copy when it hears it.
//!
//! **No stale copy from a race.** A change this instance makes or hears of moves an
//! epoch; a copy a read brings back is kept, then dropped again if the epoch moved
//! since the read started (an invalidation landing in between still wins). A write
//! moves the epoch *before* its remote call and again *after* it, dropping the local
//! copies of what it changes both times: a read that overlapped the remote call in
//! any way (started before, during, or kept its copy before the write returned) does
//! not keep what it read. A write keeps its own value locally only when nothing else
//! moved the epoch while it was on the wire. The epoch is one per instance and moves
//! with every write of any key, made here or heard on the bus: under a steady stream
//! of writes anywhere in the fleet, reads that overlap one still answer, they are
//! just not kept (the hit rate falls with the write rate; per-key epochs would
//! narrow that).
//!
//! **No old answer after a change returned.** Every copy records the epoch as of
//! which it is known to be the remote's value (for a read, the epoch when the read
//! started; for a write, when it returned). Between being kept and being checked, a
//! copy is served only to reads that started at or before that epoch: a read that
//! starts after a change returned never answers a copy fetched before it, even in the
//! instant before that copy is dropped again. The same holds for `get_or_load`'s
//! shared loads: a call that finds a load of its key already running (moka merges
//! them) answers that load's value only if the load started no earlier than the call
//! did, or its copy has since been checked; otherwise it drops the copy and loads
//! again (once more through the shared load, then on its own, keeping nothing).
//!
//! What no layer can prevent: a loader whose write-back reaches the remote *after* a
//! delete (the loader started before it) leaves that value in the remote — the
//! classic cache-aside race, which needs a compare-and-set on the remote to close.
//! Keep loads short, or delete again after the source of truth changes.
//!
//! **Staleness bound.** While the bus is connected, another instance's write reaches
//! this instance within the bus latency (milliseconds on Redis pub/sub). When the bus
//! may have missed messages (a lost or re-established connection, a lagging listener)
//! it says [`BusEvent::Reset`] and the whole local tier is dropped. A copy written
//! with a known remote TTL (`set` with a TTL, or without one when
//! [`TieredConfig::remote_default_ttl`] is set, and the loaders' write-backs) is
//! served at most until the remote entry expires: its local TTL runs from before the
//! remote write and is capped by the remote TTL. A copy brought back by a read (whose
//! remaining remote TTL this layer does not ask for: that would be a second round
//! trip) is served for at most the local TTL after the read started, which is the
//! bound when nothing else is known: it may outlive the remote entry by up to the
//! local TTL.
//!
//! **Time.** Local TTL decisions read a [`chatstate_core::Clock`] (the system clock
//! unless [`TieredCache::with_clock`] is given another), so tests and the
//! conformance suite move it with a [`chatstate_core::ManualClock`] together with
//! the backend's. On the system clock (`TieredCache::new`) moka's own per-entry
//! expiry, set a millisecond short of the copy's deadline, is the check, and a hit
//! reads no clock; with another clock a hit also checks the deadline on it (moka's
//! real-time expiry then only frees the memory).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    BusEvent, CacheKey, Error, ErrorKind, Invalidation, InvalidationBus, KvCache, Result,
    SharedClock, StoreSettings, Timestamp,
};
use serde::Serialize;

/// The tiered cache's settings.
#[derive(Clone, Debug)]
pub struct TieredConfig {
    /// Most entries in the local tier.
    pub local_capacity: u64,
    /// How long a local copy is served at most.
    pub local_ttl: Duration,
    /// The TTL the remote tier gives an entry written without one (its
    /// `CHATSTATE_CACHE_TTL_SECONDS`), when known: caps the local copy of such a
    /// write, as an explicit TTL does. `None`: only the local TTL applies.
    pub remote_default_ttl: Option<Duration>,
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
            remote_default_ttl: None,
            negative_ttl: None,
            ttl_jitter: 0.0,
            load_batch: 100,
        }
    }
}

impl TieredConfig {
    /// The local tier's size and TTL, and the remote's default cache TTL, from a
    /// [`chatstate_core::Config`].
    pub fn from_config(config: &chatstate_core::Config) -> Self {
        TieredConfig {
            local_capacity: config.local_cache.capacity,
            local_ttl: config.local_cache.ttl,
            remote_default_ttl: Some(config.store.cache_ttl),
            ..TieredConfig::default()
        }
    }
}

/// A local copy: the value (`None`: known missing) and until when it may be served.
/// `loaded` tells a loader's "not found" from a remote miss seen by `get`: only the
/// first answers `get_or_load` without calling the loader.
#[derive(Clone, Debug)]
struct Local {
    value: Option<Bytes>,
    /// When it stops being served, on the cache's clock.
    deadline: Timestamp,
    /// The same as a duration from insertion, for moka's own (real-time) expiry.
    ttl: Duration,
    loaded: bool,
    /// The epoch as of which `value` is known to be the remote's: when the read that
    /// fetched it started, or when the write that stored it returned (when it started,
    /// if something else changed while it was on the wire). The copy is kept only
    /// while the epoch is still this one.
    current_at: u64,
    /// Set (in every clone) once a check after keeping the copy found the epoch still
    /// at `current_at`: from then on any change of its key drops it, so any read may
    /// answer it. Until then only reads that started at or before `current_at` may.
    settled: Arc<AtomicBool>,
}

impl Local {
    /// Whether a read that started at `epoch` may answer this copy: not when the copy
    /// may predate a change that returned before the read started.
    fn answers(&self, epoch: u64) -> bool {
        epoch <= self.current_at || self.settled.load(Ordering::SeqCst)
    }
}

/// How many times `get_or_load` goes through the shared load before loading on its
/// own, when the loads it joins started before it did.
const SHARED_LOAD_TRIES: usize = 2;

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
    clock: SharedClock,
    local: moka::future::Cache<CacheKey, Local>,
    bus: Arc<dyn InvalidationBus>,
    origin: String,
    config: TieredConfig,
    /// Grows with every change this instance makes (before and after the remote
    /// call) or hears of. A copy read or written while it moved is dropped right
    /// after it is kept, since it may predate the change (keep first, then check: an
    /// invalidation that lands in between still wins); until that check, only reads
    /// that started no later than the copy's epoch answer it.
    epoch: AtomicU64,
    stats: Stats,
    /// Whether a hit checks its deadline on `clock`: only for a clock other than
    /// the system clock, which moka's own expiry already follows.
    check_deadline: bool,
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
    /// A tiered cache over `remote`, listening on `bus`, its local TTLs on the system
    /// clock. Must be called inside a tokio runtime (it spawns the listener, which
    /// stops when this is dropped).
    pub fn new(
        remote: Arc<dyn KvCache>,
        bus: Arc<dyn InvalidationBus>,
        config: TieredConfig,
    ) -> Self {
        TieredCache::build(remote, bus, config, chatstate_core::system_clock(), false)
    }

    /// Like [`TieredCache::new`], with the local TTLs read from `clock` (a
    /// [`chatstate_core::ManualClock`] shared with the remote store, in tests).
    pub fn with_clock(
        remote: Arc<dyn KvCache>,
        bus: Arc<dyn InvalidationBus>,
        config: TieredConfig,
        clock: SharedClock,
    ) -> Self {
        TieredCache::build(remote, bus, config, clock, true)
    }

    fn build(
        remote: Arc<dyn KvCache>,
        bus: Arc<dyn InvalidationBus>,
        config: TieredConfig,
        clock: SharedClock,
        check_deadline: bool,
    ) -> Self {
        let local = moka::future::Cache::builder()
            .max_capacity(config.local_capacity)
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .build();
        let shared = Arc::new(Shared {
            remote,
            clock,
            local,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            config,
            epoch: AtomicU64::new(0),
            stats: Stats::default(),
            bus: bus.clone(),
            check_deadline,
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
    /// written to the remote tier with `ttl` (jittered) and announced on the bus; its
    /// local copy is served at most until that TTL runs out.
    ///
    /// A call answers a shared load's result only if that load started no earlier
    /// than the call (or its copy has been checked since): a call that starts after
    /// a change returned never answers what a load that overlapped the change read or
    /// loaded. It drops that copy and joins or starts a newer load; if that one is
    /// older than the call too, it reads (and loads, on a remote miss) on its own,
    /// keeping nothing locally.
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
        let epoch = shared.epoch.load(Ordering::SeqCst);
        match shared.local_get(key, epoch).await {
            // A remote miss seen by `get` is not the loader's answer: load.
            Some(hit) if hit.value.is_none() && !hit.loaded => shared.local.invalidate(key).await,
            Some(hit) => {
                shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(hit.value);
            }
            None => {}
        }
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        // Taken by whichever of this call's loads runs: only one does, since a load
        // this call runs itself started after the call and is answered.
        let mut load = Some(load);
        for _ in 0..SHARED_LOAD_TRIES {
            let local = shared
                .local
                .try_get_with(key.clone(), shared.load_one(key, ttl, &mut load))
                .await
                .map_err(unshare)?;
            let answers = local.answers(epoch);
            // Keeps or drops the copy; one this call may not answer is always dropped
            // (its epoch is older than this call's), so the next try does not find it.
            shared.confirm(key, &local).await;
            if answers {
                return Ok(local.value);
            }
        }
        Ok(shared.load_one(key, ttl, &mut load).await?.value)
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
            let (written, w) = shared
                .write(
                    Invalidation::Keys(loaded_keys),
                    shared.remote.set_many(loaded.clone(), ttl),
                )
                .await;
            written?;
            shared.keep_written(loaded, ttl, &w).await;
        }
        Ok(out)
    }
}

/// What a remote write left behind: when it started, the epoch before and after it,
/// and whether nothing else moved the epoch while it was on the wire.
struct Written {
    start: Timestamp,
    before: u64,
    epoch: u64,
    quiet: bool,
}

impl Shared {
    /// One load of `key` for `get_or_load`: the remote value, or on a remote miss
    /// `load()`'s (taken from `load`), written back. The copy it returns is current as
    /// of the epoch when it started (a write-back: when it returned).
    async fn load_one<F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: &mut Option<F>,
    ) -> Result<Local>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<Option<Bytes>>> + Send,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let start = self.clock.now();
        if let Some(v) = self.remote.get(key).await? {
            self.stats.remote_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(self.local_copy(Some(v), start.plus(self.config.local_ttl), false, epoch));
        }
        self.stats.remote_misses.fetch_add(1, Ordering::Relaxed);
        let Some(load) = load.take() else {
            return Err(Error::new(
                ErrorKind::Internal,
                "chatstate: get_or_load's loader was already called",
            )
            .with_key(key));
        };
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        match load().await? {
            Some(v) => {
                let ttl = self.jittered(ttl)?;
                let (written, w) = self
                    .write(
                        Invalidation::Key(key.clone()),
                        self.remote.set(key, v.clone(), ttl),
                    )
                    .await;
                written?;
                // Not kept when anything else changed while it was on the wire; then
                // it is the remote's value only as of when the write started.
                let (deadline, current_at) = if w.quiet {
                    (w.start.plus(self.local_ttl_for(ttl)), w.epoch)
                } else {
                    (w.start, w.before)
                };
                Ok(self.local_copy(Some(v), deadline, true, current_at))
            }
            None => Ok(self.local_copy(
                None,
                start.plus(self.config.negative_ttl.unwrap_or(Duration::ZERO)),
                true,
                epoch,
            )),
        }
    }

    /// Keep first, then check: settles a copy just kept if the epoch is still the one
    /// it is current at (from then on a change of its key drops it), drops it if not
    /// (an invalidation that landed in between still wins) or if it has expired.
    async fn confirm(&self, key: &CacheKey, copy: &Local) {
        // Settled already (by another waiter of the same load, or a `get`): any later
        // change of its key drops it, so a change of another key must not.
        if copy.settled.load(Ordering::SeqCst) {
            return;
        }
        if self.epoch.load(Ordering::SeqCst) == copy.current_at && self.clock.now() < copy.deadline
        {
            copy.settled.store(true, Ordering::SeqCst);
        } else {
            self.local.invalidate(key).await;
        }
    }

    /// `ttl` spread by the configured jitter; `None` (the remote's default TTL)
    /// stays `None`.
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

    /// How long a copy written with remote `ttl` may be served locally: the local TTL,
    /// capped by the remote TTL where it is known.
    fn local_ttl_for(&self, ttl: Option<Duration>) -> Duration {
        ttl.or(self.config.remote_default_ttl)
            .map_or(self.config.local_ttl, |t| t.min(self.config.local_ttl))
    }

    fn local_copy(
        &self,
        value: Option<Bytes>,
        deadline: Timestamp,
        loaded: bool,
        current_at: u64,
    ) -> Local {
        Local {
            value,
            deadline,
            // A millisecond short: `now` is whole milliseconds (up to one behind),
            // and on the system clock moka's expiry alone must never serve a copy
            // past its deadline.
            ttl: self
                .clock
                .now()
                .until(deadline)
                .saturating_sub(std::time::Duration::from_millis(1)),
            loaded,
            current_at,
            settled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The local copy of `key` for a read that started at `epoch`, unless it has
    /// expired on the cache's clock, or is not checked yet and may predate a change
    /// that returned before the read started (its keeper drops it: not answered, not
    /// dropped here).
    async fn local_get(&self, key: &CacheKey, epoch: u64) -> Option<Local> {
        let hit = self.local.get(key).await?;
        if self.check_deadline && self.clock.now() >= hit.deadline {
            self.local.invalidate(key).await;
            None
        } else if hit.answers(epoch) {
            Some(hit)
        } else {
            None
        }
    }

    /// Keeps a copy current at `epoch` until `deadline` (nothing when that has
    /// passed), then checks it.
    async fn keep(&self, key: &CacheKey, value: Option<Bytes>, deadline: Timestamp, epoch: u64) {
        let copy = self.local_copy(value, deadline, false, epoch);
        if !copy.ttl.is_zero() {
            self.local.insert(key.clone(), copy.clone()).await;
            self.confirm(key, &copy).await;
        }
    }

    /// Keeps the values a write stored with remote `ttl`, if nothing else changed
    /// while it was on the wire, and drops them again if anything has since.
    async fn keep_written(
        &self,
        entries: Vec<(CacheKey, Bytes)>,
        ttl: Option<Duration>,
        w: &Written,
    ) {
        if !w.quiet {
            return;
        }
        let deadline = w.start.plus(self.local_ttl_for(ttl));
        for (k, v) in entries {
            self.keep(&k, Some(v), deadline, w.epoch).await;
        }
    }

    /// Runs a remote change of `what`. Moves the epoch and drops the local copies
    /// before it (so a read already in flight does not keep what it read) and again
    /// after it, failed or not, since a failed write may still have landed (so a read
    /// that started while it was on the wire does not keep what it read either); then
    /// announces the change.
    async fn write<T>(
        &self,
        what: Invalidation,
        write: impl std::future::Future<Output = Result<T>>,
    ) -> (Result<T>, Written) {
        let start = self.clock.now();
        let before = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.drop_local(&what).await;
        let result = write.await;
        let after = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.drop_local(&what).await;
        self.announce(what).await;
        let written = Written {
            start,
            before,
            epoch: after,
            quiet: after == before + 1,
        };
        (result, written)
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

    /// Keeps what a remote read that started at `start` returned (a value, or a
    /// remote miss when negative caching is on), unless something changed since
    /// `epoch`.
    async fn keep_read(&self, key: &CacheKey, value: &Option<Bytes>, epoch: u64, start: Timestamp) {
        let counter = if value.is_some() {
            &self.stats.remote_hits
        } else {
            &self.stats.remote_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match value {
            Some(v) => {
                let deadline = start.plus(self.config.local_ttl);
                self.keep(key, Some(v.clone()), deadline, epoch).await;
            }
            None => {
                if let Some(ttl) = self.config.negative_ttl {
                    self.keep(key, None, start.plus(ttl), epoch).await;
                }
            }
        }
    }
}

#[async_trait]
impl KvCache for TieredCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let shared = &self.shared;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        if let Some(hit) = shared.local_get(key, epoch).await {
            shared.stats.local_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit.value);
        }
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        let start = shared.clock.now();
        let value = shared.remote.get(key).await?;
        shared.keep_read(key, &value, epoch, start).await;
        Ok(value)
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let shared = &self.shared;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let mut out = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match shared.local_get(k, epoch).await {
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
        let start = shared.clock.now();
        let wanted: Vec<CacheKey> = misses.iter().map(|&i| keys[i].clone()).collect();
        let values = shared.remote.get_many(&wanted).await?;
        for (&i, v) in misses.iter().zip(values) {
            shared.keep_read(&keys[i], &v, epoch, start).await;
            out[i] = v;
        }
        Ok(out)
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let shared = &self.shared;
        let (written, w) = shared
            .write(
                Invalidation::Key(key.clone()),
                shared.remote.set(key, value.clone(), ttl),
            )
            .await;
        written?;
        shared
            .keep_written(vec![(key.clone(), value)], ttl, &w)
            .await;
        Ok(())
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let shared = &self.shared;
        let keys: Vec<CacheKey> = entries.iter().map(|(k, _)| k.clone()).collect();
        let (written, w) = shared
            .write(
                Invalidation::Keys(keys),
                shared.remote.set_many(entries.clone(), ttl),
            )
            .await;
        written?;
        shared.keep_written(entries, ttl, &w).await;
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let shared = &self.shared;
        shared
            .write(Invalidation::Key(key.clone()), shared.remote.delete(key))
            .await
            .0
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let shared = &self.shared;
        shared
            .write(
                Invalidation::Keys(keys.to_vec()),
                shared.remote.delete_many(keys),
            )
            .await
            .0
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        if let Some(hit) = self.shared.local_get(key, epoch).await {
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
            .write(
                Invalidation::Key(key.clone()),
                shared.remote.expire(key, ttl),
            )
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
        shared
            .write(what, shared.remote.clear_prefix(namespace, key_prefix))
            .await
            .0
    }

    /// The remote's: the local tier adds no persistence and no sharing of its own.
    fn capabilities(&self) -> chatstate_core::Capabilities {
        self.shared.remote.capabilities()
    }
}
