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
//! answer locally for the local TTL. A copy past that deadline is not served while
//! the remote answers: the read goes to the remote, as a miss does (see "When the
//! remote fails" for what it is kept for).
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
//! loses its connection it says [`BusEvent::Lost`]: from then on no copy kept so far
//! is served as current (each read asks the remote; the copies stay only for
//! stale-if-error, below, or are dropped when `max_stale` is zero). When it may have
//! missed messages (a re-established connection, a lagging listener) it says
//! [`BusEvent::Reset`] and the whole local tier is dropped. A copy written
//! with a known remote TTL (`set` with a TTL, or without one when
//! [`TieredConfig::remote_default_ttl`] is set, and the loaders' write-backs) is
//! served at most until the remote entry expires: its local TTL runs from before the
//! remote write and is capped by the remote TTL. A copy brought back by a read (whose
//! remaining remote TTL this layer does not ask for: that would be a second round
//! trip) is served for at most the local TTL after the read started, which is the
//! bound when nothing else is known: it may outlive the remote entry by up to the
//! local TTL. While the remote fails, a copy may be served up to
//! [`TieredConfig::max_stale`] past these deadlines (next section).
//!
//! **When the remote fails** (a temporary error: `Unavailable` or `Timeout`, what
//! the Redis store returns while Redis is unreachable or slow; other errors are
//! always returned). The cache degrades; it does not fail a read it can answer:
//!
//! - *Stale-if-error.* A copy that was served fresh is kept in the local tier up to
//!   [`TieredConfig::max_stale`] (`CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS`, 300 s by
//!   default) past its deadline. It is served only when the remote read fails with
//!   a temporary error: `get` and `exists` answer it instead of the error if it is
//!   still the copy kept when the remote failed; `get_many` answers each key from
//!   its stale copy and returns the error if any key read has none. So a stale
//!   answer is at most `max_stale` older than what the fresh bound above allows
//!   (for a copy brought back by a read: at most the local TTL plus `max_stale`
//!   after the read started). It is never a value this instance knows changed:
//!   every change that drops a fresh copy drops a stale one (a write, delete,
//!   `expire` or `clear_prefix` of this instance's, failed or not; one heard on the
//!   bus; a bus `Reset`; [`TieredCache::clear_local`]), and a remote read that
//!   answers replaces it (a miss drops it). Stale copies take room in the local tier
//!   like fresh ones (the capacity counts both).
//!
//!   `chatstate_redis::RedisBus` sends [`BusEvent::Lost`] when it notices its
//!   subscription is lost (at once when Redis closes the connection, within about
//!   8 s when Redis stops answering): copies kept before are then served only as
//!   stale copies while the remote fails, never as current — during an outage the
//!   local tier keeps answering. It sends `Reset` when the subscription is back,
//!   which drops stale copies with the rest (changes made meanwhile went unheard).
//!   Between the loss and the `Reset`, a copy brought back by a read that reached
//!   the remote is served as current for its local TTL, as any copy is, though an
//!   announcement of its change would go unheard (the `Reset` then drops it).
//! - *Loaders.* When `get_or_load`'s remote read fails temporarily, a stale copy
//!   the call found answers, if nothing changed in this instance since the call
//!   looked (its epoch, as for any copy); otherwise the loader is called and its
//!   value returned. We prefer the stale copy to the loader: during a cache outage
//!   every load would otherwise go to the source of truth at the moment it can
//!   least afford it, and a local-first cache is expected to answer from memory;
//!   set `max_stale` to zero to always ask the loader. The loader's value is not
//!   written back (the remote just failed: a write-back would most likely fail too,
//!   adding a second timeout to the request) and not kept locally (local copies
//!   are copies of the remote). `get_many_or_load` does the same per key: keys with
//!   a stale copy are answered by it, the others loaded.
//! - *Write-backs.* A loader's write-back that fails (any error) is not returned:
//!   the loaded value is, not kept locally; the failure is logged with
//!   `tracing::warn!` (operation, key, error kind; never the value) and counted in
//!   [`TierStats::writeback_failures`] and the
//!   [`chatstate_core::ext::WRITEBACK_FAILURES_METRIC`] counter (`layer="tiered"`).
//!   Loader calls made because the read failed count in
//!   [`chatstate_core::ext::READ_FALLBACKS_METRIC`]; every temporary remote error
//!   in [`TierStats::remote_errors`], every stale answer in
//!   [`TierStats::stale_served`].
//! - *Writes* (`set`, `expire`, ...) return their error, as before: the caller must
//!   know. The local copies are dropped and the change announced all the same (a
//!   write that timed out may have landed).
//!
//! **Failed deletes.** A `delete`, `delete_many` or `clear_prefix` whose remote
//! call fails with a temporary error returns the error, drops the local copies (as
//! any write does) and remembers the keys, or the prefix, as *pending* (at most
//! [`TieredConfig::max_pending_deletes`], 10,000 by default; beyond that the oldest
//! is forgotten, with a warning and a count in
//! [`TierStats::pending_deletes_dropped`]). Until replayed, this instance reads a
//! pending key as missing (`get`, `get_many`, `exists`, `ttl`, `expire`, without
//! asking the remote, which may still hold the value) and keeps no copy of it;
//! `get_or_load` calls the loader for it. A write of a pending key, or of a key
//! under a pending cleared prefix (a `set`, a write-back, a `set_with_aliases`
//! whose entry or aliases are covered) replays the pending deletes first, and
//! fails with `Unavailable`, writing nothing, if the remote cannot take them yet:
//! a replay after the write would delete what it stored, and a delete that never
//! reached the remote would leave there what it dropped (a deleted entry's
//! aliases). A successful delete or `clear_prefix` covering a pending key settles
//! it. The pending deletes are replayed against the
//! remote, oldest first, as any write is (local copies dropped, the change
//! announced on the bus): every second in the background while any are left, by
//! the first operation of this instance whose remote call succeeds, before that
//! operation returns, and when the bus reports
//! [`BusEvent::Reset`] (a re-established subscription: in a task of its own). A
//! replay that fails temporarily keeps them for the next success; one the
//! remote refuses for good is forgotten with a warning.
//!
//! What remains for the *other* instances: the failed delete is announced all the
//! same, so an instance whose bus still works drops its copy at once. While the bus
//! is down too (one Redis), they may serve their local copy of the deleted key —
//! fresh until their bus reports `Lost` (or the copy's local deadline), then stale
//! while their remote reads fail, up to `max_stale` past it — until their own bus
//! reports `Reset` (`RedisBus`: when the subscription is back) and they drop their
//! whole local tier. From the moment this instance's replay lands (its first
//! successful remote call, its background retry or its own `Reset`), and the replay's announcement is
//! heard or the listeners' `Reset` has come, no instance serves the deleted value.
//! Between the remote's recovery and that replay, another
//! instance that reads the key from the remote gets the old value, and may keep it
//! until the replay's announcement reaches it (or its `Reset`, or its local TTL).
//! Pending deletes live in this process: if it stops before replaying them, or
//! forgets them past the bound, the remote keeps the old value until its remote TTL.
//!
//! **Time.** Local TTL decisions read a [`chatstate_core::Clock`] (the system clock
//! unless [`TieredCache::with_clock`] is given another), so tests and the
//! conformance suite move it with a [`chatstate_core::ManualClock`] together with
//! the backend's. On the system clock (`TieredCache::new`) with `max_stale` zero,
//! moka's own per-entry expiry, set a millisecond short of the copy's deadline, is
//! the check, and a hit reads no clock. With `max_stale` above zero moka keeps the
//! copy until the end of its stale window, so a hit must tell fresh from stale:
//! it reads the clock's coarse time ([`chatstate_core::Clock::now_coarse`]:
//! `CLOCK_REALTIME_COARSE` on the system clock, a few nanoseconds), which is never
//! ahead of the exact time and lags it by at most
//! [`chatstate_core::Clock::coarse_lag`] (1 s on the system clock). A copy whose
//! deadline is more than that lag past the coarse time is fresh for certain; only
//! a hit within that last second of its deadline reads the exact clock (a
//! `SystemTime::now`, 50–150 ns on this project's VM), so the deadline is kept to
//! the millisecond either way. With another clock a hit always checks the deadline
//! on it (moka's real-time expiry then only frees the memory).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ext::{read_fell_back, write_back_failed};
use chatstate_core::{
    BusEvent, CacheKey, Error, ErrorKind, Invalidation, InvalidationBus, KvCache, Loader,
    ManyLoader, Result, SharedClock, StoreSettings, Timestamp,
};
use serde::Serialize;
use thread_local::ThreadLocal;

/// The tiered cache's settings.
#[derive(Clone, Debug)]
pub struct TieredConfig {
    /// Most entries in the local tier.
    pub local_capacity: u64,
    /// How long a local copy is served at most while the remote answers (past it,
    /// only while the remote fails, for up to `max_stale`).
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
    /// How long past its deadline a local copy is kept to be served while the remote
    /// fails with a temporary error (stale-if-error); zero: never, and a hit on the
    /// system clock reads no clock. Never served while the remote answers. A stale
    /// copy takes room in the local tier like a fresh one.
    pub max_stale: Duration,
    /// Most deletes (keys, or prefixes of `clear_prefix`) kept to replay when the
    /// remote failed them temporarily; beyond that the oldest is forgotten, with a
    /// warning and a count in [`TierStats::pending_deletes_dropped`].
    pub max_pending_deletes: usize,
    /// How often pending deletes are retried in the background while any are left
    /// (1 s by default); `None`: only by the next successful remote call and the
    /// bus's `Reset`.
    pub replay_every: Option<Duration>,
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
            // `CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS`'s default: one default, not two.
            max_stale: Duration::from_secs(300),
            max_pending_deletes: 10_000,
            replay_every: Some(REPLAY_EVERY),
        }
    }
}

impl TieredConfig {
    /// The local tier's size, TTL and maximum staleness, and the remote's default
    /// cache TTL, from a [`chatstate_core::Config`].
    pub fn from_config(config: &chatstate_core::Config) -> Self {
        TieredConfig {
            local_capacity: config.local_cache.capacity,
            local_ttl: config.local_cache.ttl,
            max_stale: config.local_cache.max_stale,
            remote_default_ttl: Some(config.store.cache_ttl),
            ..TieredConfig::default()
        }
    }
}

/// A local copy: the value (`None`: known missing) and until when it may be served.
/// `loaded` tells a loader's "not found" from a remote miss seen by `get`: only the
/// first answers `get_or_load` without calling the loader.
/// Kept in moka behind an `Arc`: a hit costs one reference count, not a copy of
/// the entry (a clone of the value and of its settled flag), and a lookup moves a
/// pointer around, not the entry.
struct Local {
    value: Option<Bytes>,
    /// When it stops being served while the remote answers, on the cache's clock.
    deadline: Timestamp,
    /// When it stops being kept at all: `deadline` plus `max_stale` (only for a copy
    /// that was ever fresh). Between the two it is served only when the remote fails
    /// with a temporary error.
    stale_until: Timestamp,
    /// Until `stale_until`, as a duration from insertion, for moka's own (real-time)
    /// expiry.
    ttl: Duration,
    /// Re-kept past its deadline by a `get_or_load` whose remote read failed: what
    /// answers it is a stale copy.
    stale: bool,
    loaded: bool,
    /// The epoch as of which `value` is known to be the remote's: when the read that
    /// fetched it started, or when the write that stored it returned (when it started,
    /// if something else changed while it was on the wire). The copy is kept only
    /// while the epoch is still this one.
    current_at: u64,
    /// The bus generation it was kept in ([`Shared::generation`]): a copy kept
    /// before the bus last reported [`BusEvent::Lost`] is never served as current,
    /// only as a stale copy while the remote fails.
    generation: u64,
    /// Set once a check after keeping the copy found the epoch still at
    /// `current_at`: from then on any change of its key drops it, so any read may
    /// answer it. Until then only reads that started at or before `current_at` may.
    settled: AtomicBool,
}

impl Local {
    /// Whether a read that started at `epoch` may answer this copy: not when the copy
    /// may predate a change that returned before the read started.
    fn answers(&self, epoch: u64) -> bool {
        epoch <= self.current_at || self.settled.load(Ordering::SeqCst)
    }
}

/// A local hit of [`TieredCache::get_local`]: the local copy itself, shared (one
/// reference count, as a `Bytes` value would take), not a copy of it. `Debug`
/// shows the value's length only.
#[derive(Clone)]
pub struct LocalHit(Arc<Local>);

impl LocalHit {
    /// The value, or `None` when the local tier knows the key is missing.
    pub fn value(&self) -> Option<&Bytes> {
        self.0.value.as_ref()
    }

    /// The value as an owned `Bytes` (a reference count, no copy).
    pub fn into_value(self) -> Option<Bytes> {
        self.0.value.clone()
    }
}

impl std::fmt::Debug for LocalHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalHit")
            .field("value_len", &self.0.value.as_ref().map(Bytes::len))
            .finish()
    }
}

/// How many times `get_or_load` goes through the shared load before loading on its
/// own, when the loads it joins started before it did.
const SHARED_LOAD_TRIES: usize = 2;

struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<Local>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<Local>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<Local>,
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
    /// Invalidations heard from other instances (counted once their copies are
    /// dropped).
    pub invalidations: u64,
    /// Times the whole local tier was dropped (bus reset).
    pub resets: u64,
    /// Times the bus reported its connection lost ([`BusEvent::Lost`]).
    pub bus_losses: u64,
    /// Announcements that could not be published (other instances may then serve
    /// their copy until their local TTL runs out).
    pub publish_failures: u64,
    /// Remote calls that failed with a temporary error (`Unavailable`, `Timeout`).
    pub remote_errors: u64,
    /// Reads answered by a copy past its deadline because the remote failed
    /// temporarily (stale-if-error).
    pub stale_served: u64,
    /// Loaders' write-backs that failed: the loaded value was returned, not kept.
    pub writeback_failures: u64,
    /// Deletes (keys, or `clear_prefix` prefixes) waiting to be replayed now.
    pub pending_deletes: u64,
    /// Pending deletes replayed against the remote.
    pub deletes_replayed: u64,
    /// Pending deletes forgotten: the oldest beyond
    /// [`TieredConfig::max_pending_deletes`], or one the remote refused for good.
    pub pending_deletes_dropped: u64,
}

/// A count that many threads add to, each to its own slot, with a plain load and
/// store (one writer per slot: exact, and no locked read-modify-write on the hit
/// path); read as the sum of the slots. A thread that exits leaves its slot to the
/// next thread (the `thread_local` crate's reuse), so nothing counted is lost.
#[derive(Default)]
struct PerThreadCount(ThreadLocal<AtomicU64>);

impl PerThreadCount {
    #[inline]
    fn add(&self, n: u64) {
        let slot = self.0.get_or_default();
        slot.store(slot.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|slot| slot.load(Ordering::Relaxed)).sum()
    }
}

#[derive(Default)]
struct Stats {
    /// Per thread: counted on every local hit, `get_local`'s included.
    local_hits: PerThreadCount,
    local_misses: AtomicU64,
    remote_hits: AtomicU64,
    remote_misses: AtomicU64,
    loads: AtomicU64,
    invalidations: AtomicU64,
    resets: AtomicU64,
    bus_losses: AtomicU64,
    publish_failures: AtomicU64,
    remote_errors: AtomicU64,
    stale_served: AtomicU64,
    writeback_failures: AtomicU64,
    deletes_replayed: AtomicU64,
    pending_deletes_dropped: AtomicU64,
}

/// What a local lookup found.
enum Lookup {
    /// A copy within its deadline: served.
    Fresh(Arc<Local>),
    /// A copy past its deadline, within `max_stale`: served only if the remote fails
    /// temporarily (and the copy is still kept then).
    Stale(Arc<Local>),
    Miss,
}

/// [`Shared::judge`]'s verdict: a [`Lookup`], or a copy past `stale_until` that
/// the caller drops from the local tier (a miss).
enum Judged {
    As(Lookup),
    Expired,
}

/// Deletes that failed with a temporary error, to replay: each is a key or a
/// `clear_prefix` prefix ([`Invalidation::Key`] or [`Invalidation::Prefix`]), oldest
/// first. Until replayed, no read of a key they cover answers anything but "missing"
/// (the remote may still hold the value this instance deleted).
#[derive(Default)]
struct PendingDeletes {
    order: VecDeque<Invalidation>,
    /// The keys in `order`, to look up without a scan.
    keys: HashSet<CacheKey>,
    /// How many prefixes `order` holds (no scan for them when none).
    prefixes: usize,
}

impl PendingDeletes {
    /// Remembers `what` (a key or a prefix), forgetting the oldest beyond `max`;
    /// returns how many were forgotten.
    fn push(&mut self, what: Invalidation, max: usize) -> u64 {
        match &what {
            Invalidation::Key(k) => {
                if !self.keys.insert(k.clone()) {
                    return 0;
                }
            }
            Invalidation::Prefix { .. } => {
                if self.order.contains(&what) {
                    return 0;
                }
                self.prefixes += 1;
            }
            Invalidation::Keys(_) => return 0,
        }
        self.order.push_back(what);
        let mut dropped = 0;
        while self.order.len() > max.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.forgot(&old);
                dropped += 1;
            }
        }
        dropped
    }

    fn forgot(&mut self, what: &Invalidation) {
        match what {
            Invalidation::Key(k) => {
                self.keys.remove(k);
            }
            Invalidation::Prefix { .. } => self.prefixes -= 1,
            Invalidation::Keys(_) => {}
        }
    }

    /// Whether `key` is covered by a pending delete.
    fn blocks(&self, key: &CacheKey) -> bool {
        self.keys.contains(key) || self.prefix_covers(key)
    }

    /// Whether a pending cleared prefix covers `key` (a write of the key does not
    /// settle it: replaying it later would delete what the write stored).
    fn prefix_covers(&self, key: &CacheKey) -> bool {
        self.prefixes > 0
            && self
                .order
                .iter()
                .any(|p| matches!(p, Invalidation::Prefix { .. }) && p.covers(key))
    }

    /// Forgets what a remote change that succeeded settled: written or deleted keys
    /// (their old value is gone), and for a cleared prefix every pending key and
    /// narrower prefix it covers.
    fn settled_by(&mut self, what: &Invalidation) {
        let done = |p: &Invalidation| match (p, what) {
            (Invalidation::Key(k), _) => what.covers(k),
            (
                Invalidation::Prefix { namespace, prefix },
                Invalidation::Prefix {
                    namespace: ns,
                    prefix: cleared,
                },
            ) => namespace == ns && prefix.starts_with(cleared.as_str()),
            _ => false,
        };
        if !self.order.iter().any(done) {
            return;
        }
        let (gone, kept): (VecDeque<_>, VecDeque<_>) = self.order.drain(..).partition(done);
        self.order = kept;
        for p in &gone {
            self.forgot(p);
        }
    }

    /// The oldest pending prefix, or up to `max` pending keys, as one remote delete.
    fn next_batch(&self, max: usize) -> Option<Invalidation> {
        let keys: Vec<CacheKey> = self
            .order
            .iter()
            .filter_map(|p| match p {
                Invalidation::Key(k) => Some(k.clone()),
                _ => None,
            })
            .take(max)
            .collect();
        if !keys.is_empty() {
            return Some(Invalidation::Keys(keys));
        }
        self.order.front().cloned()
    }
}

/// Keys per remote `delete_many` when pending deletes are replayed.
const REPLAY_BATCH: usize = 1_000;

struct Shared {
    remote: Arc<dyn KvCache>,
    clock: SharedClock,
    local: moka::future::Cache<CacheKey, Arc<Local>>,
    bus: Arc<dyn InvalidationBus>,
    origin: String,
    config: TieredConfig,
    /// Grows with every change this instance makes (before and after the remote
    /// call) or hears of. A copy read or written while it moved is dropped right
    /// after it is kept, since it may predate the change (keep first, then check: an
    /// invalidation that lands in between still wins); until that check, only reads
    /// that started no later than the copy's epoch answer it.
    epoch: AtomicU64,
    /// Moves when the bus reports [`BusEvent::Lost`]: copies kept before are only
    /// ever served stale.
    generation: AtomicU64,
    stats: Stats,
    /// `clock.coarse_lag()`: a copy whose deadline is further than this past the
    /// clock's coarse time is fresh without an exact reading.
    coarse_lag: Duration,
    /// Whether a hit reads `clock` to check its deadline: for a clock other than the
    /// system clock (which moka's own expiry follows otherwise), and whenever copies
    /// are kept past their deadline (`max_stale` > 0), so a hit must tell fresh
    /// from stale.
    check_deadline: bool,
    /// Deletes to replay once the remote answers again.
    pending: Mutex<PendingDeletes>,
    /// Whether `pending` is not empty: the read paths look at this alone.
    has_pending: AtomicBool,
    /// Set by a remote call that succeeded while deletes were pending: the operation
    /// that made it replays them before it returns.
    replay_due: AtomicBool,
    /// Held by the one replay running (others skip theirs).
    replaying: tokio::sync::Mutex<()>,
}

/// A [`KvCache`] with a local tier in front of a remote one.
pub struct TieredCache {
    shared: Arc<Shared>,
    listener: tokio::task::JoinHandle<()>,
    replayer: tokio::task::JoinHandle<()>,
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.listener.abort();
        self.replayer.abort();
    }
}

/// How often pending deletes are retried in the background while any are left
/// (besides the next successful remote call and the bus's `Reset`).
const REPLAY_EVERY: Duration = Duration::from_secs(1);

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
    /// clock. Must be called inside a tokio runtime (it spawns the bus listener and
    /// the background retry of pending deletes, which stop when this is dropped).
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

    /// How many deletes wait to be replayed (see the module docs, "Failed deletes").
    pub fn pending_deletes(&self) -> usize {
        self.shared.pending().order.len()
    }

    fn build(
        remote: Arc<dyn KvCache>,
        bus: Arc<dyn InvalidationBus>,
        config: TieredConfig,
        clock: SharedClock,
        check_deadline: bool,
    ) -> Self {
        let config_max_stale = config.max_stale;
        let local = moka::future::Cache::builder()
            .max_capacity(config.local_capacity)
            .expire_after(PerEntryTtl)
            .support_invalidation_closures()
            .build();
        let shared = Arc::new(Shared {
            remote,
            coarse_lag: clock.coarse_lag(),
            clock,
            local,
            origin: uuid::Uuid::new_v4().simple().to_string(),
            config,
            epoch: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            stats: Stats::default(),
            bus: bus.clone(),
            check_deadline: check_deadline || !config_max_stale.is_zero(),
            pending: Mutex::new(PendingDeletes::default()),
            has_pending: AtomicBool::new(false),
            replay_due: AtomicBool::new(false),
            replaying: tokio::sync::Mutex::new(()),
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
                let reset = event == BusEvent::Reset;
                shared.hear(event).await;
                // The bus came back (or may have missed messages): a moment the remote
                // may be back too. Replayed in a task of its own, so a remote that is
                // still down does not hold up the invalidations behind it.
                if reset && shared.has_pending.load(Ordering::SeqCst) {
                    tokio::spawn(async move { shared.replay_pending().await });
                }
            }
        });
        // Pending deletes are also retried on a timer, so they reach the remote
        // after an outage even when this instance makes no further call and its bus
        // never noticed (a short stall).
        let weak = Arc::downgrade(&shared);
        let every = shared.config.replay_every;
        let replayer = tokio::spawn(async move {
            let Some(every) = every else { return };
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = weak.upgrade() else { return };
                if shared.has_pending.load(Ordering::SeqCst) {
                    shared.replay_pending().await;
                }
            }
        });
        TieredCache {
            shared,
            listener,
            replayer,
        }
    }

    /// This instance's id on the bus.
    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> TierStats {
        let s = &self.shared.stats;
        TierStats {
            local_hits: s.local_hits.sum(),
            local_misses: s.local_misses.load(Ordering::Relaxed),
            remote_hits: s.remote_hits.load(Ordering::Relaxed),
            remote_misses: s.remote_misses.load(Ordering::Relaxed),
            loads: s.loads.load(Ordering::Relaxed),
            invalidations: s.invalidations.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            bus_losses: s.bus_losses.load(Ordering::Relaxed),
            publish_failures: s.publish_failures.load(Ordering::Relaxed),
            remote_errors: s.remote_errors.load(Ordering::Relaxed),
            stale_served: s.stale_served.load(Ordering::Relaxed),
            writeback_failures: s.writeback_failures.load(Ordering::Relaxed),
            pending_deletes: self.pending_deletes() as u64,
            deletes_replayed: s.deletes_replayed.load(Ordering::Relaxed),
            pending_deletes_dropped: s.pending_deletes_dropped.load(Ordering::Relaxed),
        }
    }

    /// The local tier's answer alone: `Some(value)` (`Some(None)`: known missing)
    /// when [`KvCache::get`] would answer from the local tier without a remote
    /// call, `None` when it would go to the remote (no copy, a stale copy, or a
    /// copy a change since may have outdated). The same checks as `get`'s hit, so
    /// the same promises: nothing older than a change that returned before the call
    /// started, nothing past its deadline. Counted as a local hit when it answers;
    /// nothing is counted otherwise (the `get` that follows counts the miss).
    ///
    /// For hot paths: an inherent `async fn`, so no boxed future as the trait's
    /// `get` needs, and no remote to fall back to. The hit lends the local copy
    /// ([`LocalHit::value`]) instead of taking a reference on its bytes;
    /// [`LocalHit::into_value`] takes one.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use bytes::Bytes;
    /// # use chatstate_core::{CacheKey, KvCache, LocalBus, StoreSettings};
    /// # use chatstate_layers::{TieredCache, TieredConfig};
    /// # use chatstate_memory::MemoryStore;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> chatstate_core::Result<()> {
    /// let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    /// let cache = TieredCache::new(remote, Arc::new(LocalBus::new()), TieredConfig::default());
    /// let key = CacheKey::new("customers", "42")?;
    /// assert!(cache.get_local(&key).await.is_none(), "no copy yet");
    /// cache.set(&key, Bytes::from_static(b"ana"), None).await?;
    /// let hit = cache.get_local(&key).await.expect("kept by the write");
    /// assert_eq!(hit.value().map(|v| &v[..]), Some(&b"ana"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_local(&self, key: &CacheKey) -> Option<LocalHit> {
        let shared = &self.shared;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        // `Shared::lookup` written out: one future (moka's) on this path, not two.
        let hit = shared.local.get(key).await?;
        match shared.judge(hit, epoch) {
            Judged::As(Lookup::Fresh(hit)) => {
                shared.stats.local_hits.add(1);
                Some(LocalHit(hit))
            }
            Judged::As(Lookup::Stale(_) | Lookup::Miss) => None,
            Judged::Expired => {
                shared.local.invalidate(key).await;
                None
            }
        }
    }

    /// [`KvCache::get_many`] with `remote` in place of the remote tier's
    /// `get_many`: the local tier answers what it can, exactly as `get_many`'s
    /// local hits; `remote` gets the other keys (it is not called when there are
    /// none) and must answer one value per key, in order, as the remote's
    /// `get_many` would; its answers are kept locally as `get_many` keeps the
    /// remote's. For reading the missing keys together with other reads in one
    /// round trip (the facade's `Stores::read_batch`).
    pub async fn get_many_via<F, Fut>(
        &self,
        keys: &[CacheKey],
        remote: F,
    ) -> Result<Vec<Option<Bytes>>>
    where
        F: FnOnce(Vec<CacheKey>) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<Option<Bytes>>>> + Send,
    {
        let shared = &self.shared;
        let answer = match shared.read_many_via(keys, remote).await {
            Ok(ManyRead {
                unanswered,
                error: Some(e),
                ..
            }) if !unanswered.is_empty() => Err(e),
            Ok(read) => Ok(read.values),
            Err(e) => Err(e),
        };
        shared.finish(answer).await
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
    ///
    /// Degrades instead of failing (module docs, "When the remote fails"): when the
    /// remote read fails with a temporary error, a stale local copy answers if there
    /// is one, the loader otherwise (its value returned, not written back, not kept);
    /// a failed write-back is counted and logged, and the value returned, not kept.
    /// Other remote errors are returned.
    pub async fn get_or_load_bytes<F, Fut>(
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
        let stale = match shared.lookup(key, epoch).await {
            // A remote miss seen by `get` is not the loader's answer: load.
            Lookup::Fresh(hit) | Lookup::Stale(hit) if hit.value.is_none() && !hit.loaded => {
                shared.local.invalidate(key).await;
                None
            }
            Lookup::Fresh(hit) => {
                shared.stats.local_hits.add(1);
                return Ok(hit.value.clone());
            }
            Lookup::Stale(copy) => {
                // moka answers a kept entry without running the load: take the stale
                // copy out so the shared load below reads the remote; that load keeps
                // it again if the remote fails.
                shared.local.invalidate(key).await;
                Some(copy)
            }
            Lookup::Miss => None,
        };
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        let answer = self
            .load_shared(key, ttl, load, stale.as_ref(), epoch)
            .await;
        shared.finish(answer).await
    }

    async fn load_shared<F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: F,
        stale: Option<&Arc<Local>>,
        epoch: u64,
    ) -> Result<Option<Bytes>>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<Option<Bytes>>> + Send,
    {
        let shared = &self.shared;
        // Taken by whichever of this call's loads runs: only one does, since a load
        // this call runs itself started after the call and is answered.
        let mut load = Some(load);
        for _ in 0..SHARED_LOAD_TRIES {
            let local = shared
                .local
                .try_get_with(
                    key.clone(),
                    shared.load_one(key, ttl, &mut load, stale, epoch),
                )
                .await
                .map_err(unshare)?;
            let answers = local.answers(epoch);
            // Keeps or drops the copy; one this call may not answer is always dropped
            // (its epoch is older than this call's), so the next try does not find it.
            shared.confirm(key, &local).await;
            if answers {
                if local.stale {
                    shared.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(local.value.clone());
            }
        }
        let local = shared.load_one(key, ttl, &mut load, stale, epoch).await?;
        if local.stale {
            shared.stats.stale_served.fetch_add(1, Ordering::Relaxed);
        }
        Ok(local.value.clone())
    }

    /// The values of `keys` (in order), loading the missing ones: local hits first,
    /// then one `get_many` for the rest, then `load` for what is still missing (each
    /// key once, however often it is asked for), in batches of `load_batch` keys, and
    /// one `set_many` writing back what was loaded. The TTL jitter applies per call:
    /// keys loaded by one call share one (jittered) TTL, successive calls are spread.
    ///
    /// Degrades like [`TieredCache::get_or_load_bytes`]: when the `get_many` fails with a
    /// temporary error, the keys with a stale local copy are answered by it and the
    /// others loaded, and nothing is written back or kept; a failed write-back is
    /// counted and logged, and the values returned, not kept. Other remote errors
    /// are returned.
    pub async fn get_many_or_load_bytes<F, Fut>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        load: F,
    ) -> Result<Vec<Option<Bytes>>>
    where
        F: FnMut(Vec<CacheKey>) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<(CacheKey, Bytes)>>> + Send,
    {
        let answer = self.load_many(keys, ttl, load).await;
        self.shared.finish(answer).await
    }

    async fn load_many<F, Fut>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        mut load: F,
    ) -> Result<Vec<Option<Bytes>>>
    where
        F: FnMut(Vec<CacheKey>) -> Fut + Send,
        Fut: std::future::Future<Output = Result<Vec<(CacheKey, Bytes)>>> + Send,
    {
        let shared = &self.shared;
        let read = shared.read_many(keys).await?;
        if let Some(e) = &read.error
            && !read.unanswered.is_empty()
        {
            read_fell_back("tiered", "get_many_or_load", read.unanswered.len(), e);
        }
        let remote_failed = read.error.is_some();
        let mut out = read.values;
        let mut missing: Vec<CacheKey> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if out[i].is_none() && !missing.contains(k) {
                missing.push(k.clone());
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
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
        // After a failed read the remote is most likely down: a write-back would add
        // a second timeout, and what is not in the remote is not kept locally.
        if !loaded.is_empty() && !remote_failed {
            let ttl = shared.jittered(ttl)?;
            let loaded_keys: Vec<CacheKey> = loaded.iter().map(|(k, _)| k.clone()).collect();
            let (written, w) = shared
                .write(
                    Invalidation::Keys(loaded_keys),
                    shared.remote.set_many(loaded.clone(), ttl),
                )
                .await;
            match written {
                Ok(()) => {
                    let each = loaded.into_iter().map(|(k, v)| (k, v, ttl)).collect();
                    shared.keep_written(each, &w).await
                }
                Err(e) => {
                    shared
                        .stats
                        .writeback_failures
                        .fetch_add(1, Ordering::Relaxed);
                    write_back_failed("tiered", "get_many_or_load", loaded.len(), &e);
                }
            }
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

/// What [`Shared::read_many`] found: the answers in order, and, when the remote read
/// failed with a temporary error (`error`), the positions nothing could answer (no
/// stale copy was kept for them).
struct ManyRead {
    values: Vec<Option<Bytes>>,
    unanswered: Vec<usize>,
    error: Option<Error>,
}

impl Shared {
    /// One load of `key` for `get_or_load`: the remote value, or on a remote miss
    /// `load()`'s (taken from `load`), written back. The copy it returns is current as
    /// of the epoch when it started (a write-back: when it returned).
    ///
    /// When the remote read fails with a temporary error: `stale` (the copy past its
    /// deadline the call found at `call_epoch`, and took out of the local tier) kept
    /// again and answered, if nothing changed in this instance since the call found
    /// it; otherwise `load()`'s value, not written back and not kept.
    async fn load_one<F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: &mut Option<F>,
        stale: Option<&Arc<Local>>,
        call_epoch: u64,
    ) -> Result<Arc<Local>>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<Option<Bytes>>> + Send,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let start = self.clock.now();
        // A key with a pending delete reads as missing: the remote may still hold
        // the value this instance deleted.
        let remote_failed = if self.blocks(key) {
            false
        } else {
            match self.call(self.remote.get(key)).await {
                Ok(Some(v)) => {
                    self.stats.remote_hits.fetch_add(1, Ordering::Relaxed);
                    let deadline = start.plus(self.config.local_ttl);
                    return Ok(self.local_copy(Some(v), deadline, false, epoch));
                }
                Ok(None) => {
                    self.stats.remote_misses.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(e) if e.is_temporary() => {
                    if let Some(copy) = stale
                        && self.epoch.load(Ordering::SeqCst) == call_epoch
                        && self.clock.now() < copy.stale_until
                    {
                        return Ok(self.restale(copy, call_epoch));
                    }
                    read_fell_back("tiered", "get_or_load", key, &e);
                    true
                }
                Err(e) => return Err(e),
            }
        };
        let Some(load) = load.take() else {
            return Err(Error::new(
                ErrorKind::Internal,
                "chatstate: get_or_load's loader was already called",
            )
            .with_key(key));
        };
        self.stats.loads.fetch_add(1, Ordering::Relaxed);
        match load().await? {
            // Answered, not kept (its deadline is now): the remote does not have it,
            // and a write-back to a remote that just failed would add a second timeout.
            Some(v) if remote_failed => Ok(self.local_copy(Some(v), start, true, epoch)),
            Some(v) => {
                let ttl = self.jittered(ttl)?;
                let (written, w) = self
                    .write(
                        Invalidation::Key(key.clone()),
                        self.remote.set(key, v.clone(), ttl),
                    )
                    .await;
                if let Err(e) = written {
                    self.stats
                        .writeback_failures
                        .fetch_add(1, Ordering::Relaxed);
                    write_back_failed("tiered", "get_or_load", key, &e);
                    // Answered, not kept.
                    return Ok(self.local_copy(Some(v), w.start, true, w.before));
                }
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
    async fn confirm(&self, key: &CacheKey, copy: &Arc<Local>) {
        // Settled already (by another waiter of the same load, or a `get`): any later
        // change of its key drops it, so a change of another key must not.
        if copy.settled.load(Ordering::SeqCst) {
            return;
        }
        if self.epoch.load(Ordering::SeqCst) == copy.current_at
            && self.clock.now() < copy.stale_until
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

    /// A copy served until `deadline`, and kept `max_stale` longer for stale-if-error
    /// if it is fresh now (one whose deadline has passed is not kept at all).
    fn local_copy(
        &self,
        value: Option<Bytes>,
        deadline: Timestamp,
        loaded: bool,
        current_at: u64,
    ) -> Arc<Local> {
        let now = self.clock.now();
        let stale_until = if now < deadline {
            deadline.plus(self.config.max_stale)
        } else {
            deadline
        };
        Arc::new(Local {
            value,
            deadline,
            stale_until,
            ttl: moka_ttl(now, stale_until),
            stale: false,
            loaded,
            current_at,
            generation: self.generation.load(Ordering::SeqCst),
            settled: AtomicBool::new(false),
        })
    }

    /// `copy` (past its deadline) kept again for the rest of its stale window, current
    /// as of `epoch` (when the call that found it looked): checked like any new copy.
    fn restale(&self, copy: &Local, epoch: u64) -> Arc<Local> {
        Arc::new(Local {
            value: copy.value.clone(),
            deadline: copy.deadline,
            stale_until: copy.stale_until,
            ttl: moka_ttl(self.clock.now(), copy.stale_until),
            stale: true,
            loaded: copy.loaded,
            current_at: epoch,
            generation: copy.generation,
            settled: AtomicBool::new(false),
        })
    }

    /// The local copy of `key` for a read that started at `epoch`, fresh or stale,
    /// unless its stale window has passed on the cache's clock, or it is not checked
    /// yet and may predate a change that returned before the read started (its keeper
    /// drops it: not answered, not dropped here). With `max_stale` zero on the system
    /// clock this reads no clock: moka's expiry is the deadline. Otherwise it reads
    /// the coarse clock, and the exact one only near the copy's deadline.
    async fn lookup(&self, key: &CacheKey, epoch: u64) -> Lookup {
        let Some(hit) = self.local.get(key).await else {
            return Lookup::Miss;
        };
        match self.judge(hit, epoch) {
            Judged::Expired => {
                self.local.invalidate(key).await;
                Lookup::Miss
            }
            Judged::As(lookup) => lookup,
        }
    }

    /// What a copy found in the local tier answers a read that started at `epoch`
    /// (synchronous: `get_local` calls it without another future around moka's).
    #[inline]
    fn judge(&self, hit: Arc<Local>, epoch: u64) -> Judged {
        if !self.check_deadline {
            return Judged::As(if hit.answers(epoch) {
                Lookup::Fresh(hit)
            } else {
                Lookup::Miss
            });
        }
        // The exact time is at most `coarse_lag` past the coarse one: before the
        // deadline (and so before `stale_until`, never earlier) for certain. The
        // same answers as below with `now < hit.deadline`.
        if self.clock.now_coarse().plus(self.coarse_lag) < hit.deadline {
            return Judged::As(if !hit.answers(epoch) {
                Lookup::Miss
            } else if hit.generation == self.generation.load(Ordering::SeqCst) {
                Lookup::Fresh(hit)
            } else {
                Lookup::Stale(hit)
            });
        }
        let now = self.clock.now();
        Judged::As(if now >= hit.stale_until {
            return Judged::Expired;
        } else if !hit.answers(epoch) {
            Lookup::Miss
        } else if now < hit.deadline && hit.generation == self.generation.load(Ordering::SeqCst) {
            Lookup::Fresh(hit)
        } else {
            Lookup::Stale(hit)
        })
    }

    /// Stale-if-error for a read that found `stale` and whose remote call failed with
    /// `error`: the stale copy's value when the error is temporary and the copy is
    /// still the one kept (nothing dropped or replaced it meanwhile), else the error.
    async fn stale_if_error(
        &self,
        key: &CacheKey,
        stale: Option<Arc<Local>>,
        error: Error,
    ) -> Result<Option<Bytes>> {
        if error.is_temporary()
            && let Some(copy) = stale
            && self.still_kept(key, &copy).await
        {
            self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(key = %key, kind = error.kind().as_str(), "chatstate serves a stale local copy: the remote failed");
            return Ok(copy.value.clone());
        }
        Err(error)
    }

    /// Whether `copy` is still the copy of `key` in the local tier, within its stale
    /// window (which may have ended while the remote call was failing).
    async fn still_kept(&self, key: &CacheKey, copy: &Arc<Local>) -> bool {
        self.clock.now() < copy.stale_until
            && self
                .local
                .get(key)
                .await
                .is_some_and(|kept| Arc::ptr_eq(&kept, copy))
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
    /// while it was on the wire, and drops them again if anything has since. A key
    /// still covered by a pending delete (a prefix's) is not kept.
    async fn keep_written(&self, entries: Vec<(CacheKey, Bytes, Option<Duration>)>, w: &Written) {
        if !w.quiet {
            return;
        }
        for (k, v, ttl) in entries {
            if !self.blocks(&k) {
                let deadline = w.start.plus(self.local_ttl_for(ttl));
                self.keep(&k, Some(v), deadline, w.epoch).await;
            }
        }
    }

    /// Runs one remote call: a temporary failure is counted; a success while
    /// deletes are pending makes their replay due (the operation replays them before
    /// it returns, [`Shared::finish`]).
    async fn call<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let result = call.await;
        match &result {
            Ok(_) => {
                if self.has_pending.load(Ordering::SeqCst) {
                    self.replay_due.store(true, Ordering::SeqCst);
                }
            }
            Err(e) if e.is_temporary() => {
                self.stats.remote_errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    /// The end of every operation that reached the remote: replays the pending
    /// deletes if one of its remote calls succeeded while some were pending.
    async fn finish<T>(&self, answer: T) -> T {
        if self.replay_due.load(Ordering::Relaxed) && self.replay_due.swap(false, Ordering::SeqCst)
        {
            self.replay_pending().await;
        }
        answer
    }

    /// Runs a remote change of `what`. Moves the epoch and drops the local copies
    /// before it (so a read already in flight does not keep what it read) and again
    /// after it, failed or not, since a failed write may still have landed (so a read
    /// that started while it was on the wire does not keep what it read either); then
    /// announces the change. A change that succeeded settles the pending deletes of
    /// the keys it wrote or deleted.
    async fn write<T>(
        &self,
        what: Invalidation,
        write: impl std::future::Future<Output = Result<T>>,
    ) -> (Result<T>, Written) {
        self.change(what, write, false).await
    }

    /// [`Shared::write`] for a delete (`delete`, `delete_many`, `clear_prefix`): one
    /// that fails temporarily is remembered as pending before the epoch moves again,
    /// so no read that starts after that (and no read in flight) keeps what the
    /// remote may still hold.
    async fn delete<T>(
        &self,
        what: Invalidation,
        delete: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.change(what, delete, true).await.0
    }

    async fn change<T>(
        &self,
        what: Invalidation,
        write: impl std::future::Future<Output = Result<T>>,
        deleting: bool,
    ) -> (Result<T>, Written) {
        self.change_guarded(what, &[], write, deleting).await
    }

    /// [`Shared::change`], for a write that also stores `aliases` (names that a pending
    /// delete or cleared prefix may cover, like the entry's key).
    ///
    /// A write of a key (or alias) that a pending delete covers replays the pending
    /// deletes first: a replay after the write would erase what it stores (a cleared
    /// prefix), and a delete settled without reaching the remote would leave there
    /// what the delete dropped (a deleted entry's aliases, which a plain write over
    /// an absent entry forgets). If they cannot be replayed now, the write is
    /// refused like the remote refuses it, with `Unavailable`.
    /// The replay lock is held until the write returns: no replay runs while it is
    /// on the wire.
    async fn change_guarded<T>(
        &self,
        what: Invalidation,
        aliases: &[CacheKey],
        write: impl std::future::Future<Output = Result<T>>,
        deleting: bool,
    ) -> (Result<T>, Written) {
        let touches = |shared: &Self| {
            shared.touches_pending(&what) || aliases.iter().any(|a| shared.blocks(a))
        };
        let mut _held = None;
        if !deleting && touches(self) {
            let guard = self.replaying.lock().await;
            self.replay_locked(&guard).await;
            if touches(self) {
                let epoch = self.epoch.load(Ordering::SeqCst);
                let refused = Error::new(
                    ErrorKind::Unavailable,
                    "a delete covering this key is not replayed to the remote yet (it is \
                     unreachable): the write is refused until it is",
                );
                let written = Written {
                    start: self.clock.now(),
                    before: epoch,
                    epoch,
                    quiet: false,
                };
                return (Err(refused), written);
            }
            _held = Some(guard);
        }
        self.change_now(what, write, deleting, false).await
    }

    /// [`Shared::change`] without the pending-delete checks: what the replay of
    /// pending deletes writes with (`replay`: a replay that certainly did not land —
    /// failed, not timed out — announces nothing, since the failed delete it repeats
    /// was announced already; otherwise every retry during an outage would).
    async fn change_now<T>(
        &self,
        what: Invalidation,
        write: impl std::future::Future<Output = Result<T>>,
        deleting: bool,
        replay: bool,
    ) -> (Result<T>, Written) {
        let start = self.clock.now();
        let before = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.drop_local(&what).await;
        let result = self.call(write).await;
        match &result {
            Ok(_) if self.has_pending.load(Ordering::SeqCst) => {
                self.change_pending(|p| p.settled_by(&what));
            }
            Err(e) if deleting => self.delete_failed(&what, e),
            _ => {}
        }
        let after = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.drop_local(&what).await;
        let may_have_landed = match &result {
            Ok(_) => true,
            Err(e) => !replay || e.kind() == ErrorKind::Timeout,
        };
        if may_have_landed {
            self.announce(what).await;
        }
        let written = Written {
            start,
            before,
            epoch: after,
            quiet: after == before + 1,
        };
        (result, written)
    }

    /// A delete of `what` failed with `error`: if temporarily, remembers it to replay.
    fn delete_failed(&self, what: &Invalidation, error: &Error) {
        if !error.is_temporary() {
            return;
        }
        let max = self.config.max_pending_deletes;
        let (dropped, pending) = self.change_pending(|p| {
            let dropped = match what {
                Invalidation::Keys(ks) => ks
                    .iter()
                    .map(|k| p.push(Invalidation::Key(k.clone()), max))
                    .sum(),
                other => p.push(other.clone(), max),
            };
            (dropped, p.order.len())
        });
        tracing::warn!(
            what = %Described(what),
            kind = error.kind().as_str(),
            error = %error,
            pending,
            "chatstate could not delete from the remote cache: replayed once the remote \
             answers again; until then this instance reads the keys as missing"
        );
        if dropped > 0 {
            self.stats
                .pending_deletes_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                max,
                "chatstate forgot its oldest pending cache deletes (too many): their old \
                 values may be served again once the remote is back, until they expire there"
            );
        }
    }

    /// Whether a pending delete covers a key `what` writes.
    fn touches_pending(&self, what: &Invalidation) -> bool {
        match what {
            Invalidation::Key(k) => self.blocks(k),
            Invalidation::Keys(ks) => ks.iter().any(|k| self.blocks(k)),
            Invalidation::Prefix { .. } => false,
        }
    }

    /// Replays the pending deletes, oldest first, until none is left or the remote
    /// fails again (the rest wait for the next success). Each goes through
    /// [`Shared::change_now`]: local copies dropped, the change announced. A delete the
    /// remote refuses for good (not a temporary error) is forgotten with a warning.
    async fn replay_pending(&self) {
        let Ok(guard) = self.replaying.try_lock() else {
            return;
        };
        self.replay_locked(&guard).await;
    }

    /// [`Shared::replay_pending`] for a caller holding the replay lock.
    async fn replay_locked(&self, _held: &tokio::sync::MutexGuard<'_, ()>) {
        loop {
            let next = self.pending().next_batch(REPLAY_BATCH);
            let Some(what) = next else { return };
            let n = match &what {
                Invalidation::Keys(ks) => ks.len() as u64,
                _ => 1,
            };
            let result = match &what {
                Invalidation::Key(k) => self
                    .change_now(what.clone(), self.remote.delete(k), false, true)
                    .await
                    .0
                    .map(drop),
                Invalidation::Keys(ks) => self
                    .change_now(what.clone(), self.remote.delete_many(ks), false, true)
                    .await
                    .0
                    .map(drop),
                Invalidation::Prefix { namespace, prefix } => self
                    .change_now(
                        what.clone(),
                        self.remote.clear_prefix(namespace, prefix),
                        false,
                        true,
                    )
                    .await
                    .0
                    .map(drop),
            };
            match result {
                // `write` settled them.
                Ok(_) => {
                    self.stats.deletes_replayed.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) if e.is_temporary() => {
                    tracing::debug!(error = %e, "chatstate could not replay pending cache deletes yet");
                    return;
                }
                Err(e) => {
                    self.change_pending(|p| p.settled_by(&what));
                    self.stats
                        .pending_deletes_dropped
                        .fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        what = %Described(&what),
                        error = %e,
                        "chatstate dropped pending cache deletes the remote refuses"
                    );
                }
            }
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, PendingDeletes> {
        // Nothing a panic could leave half-done matters here: the set stays usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn change_pending<R>(&self, change: impl FnOnce(&mut PendingDeletes) -> R) -> R {
        let mut pending = self.pending();
        let r = change(&mut pending);
        self.has_pending
            .store(!pending.order.is_empty(), Ordering::SeqCst);
        r
    }

    /// Whether a pending delete covers `key`: one atomic load when none is pending.
    fn blocks(&self, key: &CacheKey) -> bool {
        self.has_pending.load(Ordering::SeqCst) && self.pending().blocks(key)
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
                self.drop_local(&what).await;
                // Counted once handled: a count seen means the copies are gone.
                self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            }
            // Changes may go unheard from now on: no copy kept so far is served as
            // current again; with a stale window they stay for stale-if-error (the
            // remote is likely down too), without one they are dropped.
            BusEvent::Lost if !self.config.max_stale.is_zero() => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.stats.bus_losses.fetch_add(1, Ordering::Relaxed);
            }
            BusEvent::Lost => {
                self.generation.fetch_add(1, Ordering::SeqCst);
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.stats.bus_losses.fetch_add(1, Ordering::Relaxed);
                self.local.invalidate_all();
            }
            // Reset, and any event this version does not know: drop everything.
            _ => {
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
    /// `epoch`. A remote miss not kept drops a stale copy the read found (`had_stale`):
    /// the remote no longer has that value.
    async fn keep_read(
        &self,
        key: &CacheKey,
        value: &Option<Bytes>,
        epoch: u64,
        start: Timestamp,
        had_stale: bool,
    ) {
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
            None => match self.config.negative_ttl {
                Some(ttl) => self.keep(key, None, start.plus(ttl), epoch).await,
                None if had_stale => self.local.invalidate(key).await,
                None => {}
            },
        }
    }

    /// Local hits first, then one remote `get_many` for the rest (keys with a
    /// pending delete read as missing, without the remote). On a temporary remote
    /// error the keys with a stale copy still kept are answered by it.
    async fn read_many(&self, keys: &[CacheKey]) -> Result<ManyRead> {
        self.read_many_via(
            keys,
            |wanted| async move { self.remote.get_many(&wanted).await },
        )
        .await
    }

    /// [`Shared::read_many`] with `remote` reading the keys the local tier does not
    /// answer (called at most once, only when some are left).
    async fn read_many_via<F, Fut>(&self, keys: &[CacheKey], remote: F) -> Result<ManyRead>
    where
        F: FnOnce(Vec<CacheKey>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<Option<Bytes>>>>,
    {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut values = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        let mut stale = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.lookup(k, epoch).await {
                Lookup::Fresh(hit) => {
                    self.stats.local_hits.add(1);
                    values.push(hit.value.clone());
                }
                found => {
                    self.stats.local_misses.fetch_add(1, Ordering::Relaxed);
                    values.push(None);
                    if !self.blocks(k) {
                        misses.push(i);
                        stale.push(match found {
                            Lookup::Stale(copy) => Some(copy),
                            _ => None,
                        });
                    }
                }
            }
        }
        let mut read = ManyRead {
            values,
            unanswered: Vec::new(),
            error: None,
        };
        if misses.is_empty() {
            return Ok(read);
        }
        let start = self.clock.now();
        let wanted: Vec<CacheKey> = misses.iter().map(|&i| keys[i].clone()).collect();
        match self.call(remote(wanted)).await {
            Ok(found) if found.len() != misses.len() => {
                return Err(Error::decode("unexpected remote answer: one value per key"));
            }
            Ok(found) => {
                for ((&i, v), s) in misses.iter().zip(found).zip(&stale) {
                    self.keep_read(&keys[i], &v, epoch, start, s.is_some())
                        .await;
                    read.values[i] = v;
                }
            }
            Err(e) if e.is_temporary() => {
                for (&i, s) in misses.iter().zip(stale) {
                    match s {
                        Some(copy) if self.still_kept(&keys[i], &copy).await => {
                            self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                            read.values[i] = copy.value.clone();
                        }
                        _ => read.unanswered.push(i),
                    }
                }
                read.error = Some(e);
            }
            Err(e) => return Err(e),
        }
        Ok(read)
    }
}

/// moka's expiry for a copy kept until `until`: a millisecond short, since `now` is
/// whole milliseconds (up to one behind), and on the system clock with no
/// `max_stale` moka's expiry alone must never serve a copy past its deadline.
fn moka_ttl(now: Timestamp, until: Timestamp) -> Duration {
    now.until(until).saturating_sub(Duration::from_millis(1))
}

/// An invalidation for a log line: a key, a prefix, or how many keys (never values).
struct Described<'a>(&'a Invalidation);

impl std::fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Invalidation::Key(k) => write!(f, "key {k}"),
            Invalidation::Keys(ks) => write!(f, "{} keys", ks.len()),
            Invalidation::Prefix { namespace, prefix } => {
                write!(f, "prefix {namespace}:{prefix}*")
            }
        }
    }
}

#[async_trait]
impl KvCache for TieredCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let shared = &self.shared;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let stale = match shared.lookup(key, epoch).await {
            Lookup::Fresh(hit) => {
                shared.stats.local_hits.add(1);
                return Ok(hit.value.clone());
            }
            Lookup::Stale(copy) => Some(copy),
            Lookup::Miss => None,
        };
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        if shared.blocks(key) {
            return Ok(None);
        }
        let start = shared.clock.now();
        let answer = match shared.call(shared.remote.get(key)).await {
            Ok(value) => {
                shared
                    .keep_read(key, &value, epoch, start, stale.is_some())
                    .await;
                Ok(value)
            }
            Err(e) => shared.stale_if_error(key, stale, e).await,
        };
        shared.finish(answer).await
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let remote = &self.shared.remote;
        self.get_many_via(keys, |wanted| async move { remote.get_many(&wanted).await })
            .await
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let shared = &self.shared;
        let (written, w) = shared
            .write(
                Invalidation::Key(key.clone()),
                shared.remote.set(key, value.clone(), ttl),
            )
            .await;
        if written.is_ok() {
            shared
                .keep_written(vec![(key.clone(), value, ttl)], &w)
                .await;
        }
        shared.finish(written).await
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
        if written.is_ok() {
            let each = entries.into_iter().map(|(k, v)| (k, v, ttl)).collect();
            shared.keep_written(each, &w).await;
        }
        shared.finish(written).await
    }

    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        let shared = &self.shared;
        let keys: Vec<CacheKey> = entries.iter().map(|(k, _, _)| k.clone()).collect();
        let (written, w) = shared
            .write(
                Invalidation::Keys(keys),
                shared.remote.set_many_with_ttls(entries.clone()),
            )
            .await;
        if written.is_ok() {
            shared.keep_written(entries, &w).await;
        }
        shared.finish(written).await
    }

    /// Written like [`KvCache::set`]: the entry's local copies (here and, through
    /// the bus, on other instances) are dropped, and this instance keeps the new
    /// value.
    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        let shared = &self.shared;
        let (written, w) = shared
            .change_guarded(
                Invalidation::Key(key.clone()),
                aliases,
                shared
                    .remote
                    .set_with_aliases(key, value.clone(), ttl, aliases),
                false,
            )
            .await;
        if written.is_ok() {
            shared
                .keep_written(vec![(key.clone(), value, ttl)], &w)
                .await;
        }
        shared.finish(written).await
    }

    /// Always asked of the remote cache: the local tier keeps no alias
    /// resolution, since a move of an alias elsewhere would leave a local answer
    /// wrong until its local TTL ran out. An entry (or alias) this instance deleted
    /// while the remote was unreachable resolves to nothing, as it reads.
    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        let shared = &self.shared;
        if shared.blocks(alias) {
            return Ok(None);
        }
        let found = shared
            .call(shared.remote.get_by_alias(alias))
            .await
            .map(|found| found.filter(|(key, _)| !shared.blocks(key)));
        shared.finish(found).await
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let shared = &self.shared;
        let deleted = shared
            .delete(Invalidation::Key(key.clone()), shared.remote.delete(key))
            .await;
        shared.finish(deleted).await
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let shared = &self.shared;
        let deleted = shared
            .delete(
                Invalidation::Keys(keys.to_vec()),
                shared.remote.delete_many(keys),
            )
            .await;
        shared.finish(deleted).await
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let shared = &self.shared;
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let stale = match shared.lookup(key, epoch).await {
            Lookup::Fresh(hit) => {
                shared.stats.local_hits.add(1);
                return Ok(hit.value.is_some());
            }
            Lookup::Stale(copy) => Some(copy),
            Lookup::Miss => None,
        };
        shared.stats.local_misses.fetch_add(1, Ordering::Relaxed);
        if shared.blocks(key) {
            return Ok(false);
        }
        let answer = match shared.call(shared.remote.exists(key)).await {
            Ok(exists) => {
                if !exists && stale.is_some() {
                    shared.local.invalidate(key).await;
                }
                Ok(exists)
            }
            Err(e) => shared
                .stale_if_error(key, stale, e)
                .await
                .map(|v| v.is_some()),
        };
        shared.finish(answer).await
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let shared = &self.shared;
        // Deleted, as far as this instance knows: no TTL to set.
        if shared.blocks(key) {
            return Ok(false);
        }
        let (expired, _) = shared
            .write(
                Invalidation::Key(key.clone()),
                shared.remote.expire(key, ttl),
            )
            .await;
        shared.finish(expired).await
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let shared = &self.shared;
        if shared.blocks(key) {
            return Ok(None);
        }
        let ttl = shared.call(shared.remote.ttl(key)).await;
        shared.finish(ttl).await
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        let shared = &self.shared;
        let what = Invalidation::Prefix {
            namespace: namespace.to_string(),
            prefix: key_prefix.to_string(),
        };
        let cleared = shared
            .delete(what, shared.remote.clear_prefix(namespace, key_prefix))
            .await;
        shared.finish(cleared).await
    }

    /// [`TieredCache::get_or_load_bytes`]: one loader per key per process, answers
    /// from the local tier.
    async fn get_or_load_raw<'a>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: Loader<'a>,
    ) -> Result<Option<Bytes>> {
        self.get_or_load_bytes(key, ttl, load).await
    }

    /// [`TieredCache::get_many_or_load_bytes`]: local hits first, loads in batches.
    async fn get_many_or_load_raw<'a>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        load: ManyLoader<'a>,
    ) -> Result<Vec<Option<Bytes>>> {
        self.get_many_or_load_bytes(keys, ttl, load).await
    }

    /// The remote's: the local tier adds no persistence and no sharing of its own.
    fn capabilities(&self) -> chatstate_core::Capabilities {
        self.shared.remote.capabilities()
    }
}
