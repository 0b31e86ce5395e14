//! # chatstate
//!
//! The facade: depend on this crate alone, and the environment picks the backend.
//!
//! ```no_run
//! # async fn demo() -> chatstate::Result<()> {
//! use chatstate::{NewMessage, SessionKey, SessionStoreExt, Stores};
//!
//! // USE_REDIS=1 (with REDIS_URL) uses Redis; unset, the file store in
//! // CHATSTATE_FILE_DIR; CHATSTATE_BACKEND=memory, process memory.
//! let stores = Stores::from_env().await?;
//! let key = SessionKey::new("acme", "whatsapp", "+5511999990000")?;
//! stores.sessions.append_message(&key, NewMessage::user("oi")).await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! - [`Stores`]: the four stores of the configured backend and its
//!   [`ReplyStream`] for streamed replies, as trait objects, plus
//!   the invalidation bus a [`TieredCache`] should use with them.
//! - [`migrate`](mod@migrate): lossless moves between backends — [`export`] to
//!   JSON lines, [`import`], [`migrate()`] from one backend to another
//!   (idempotent, resumable, dry run, count [`Report`], progress), over
//!   [`Stores::inventory`].
//! - Re-exports: everything of `chatstate_core` (traits, model, config, errors) and
//!   the layers ([`TieredCache`], [`BatchedCounters`], [`CoalescingWriter`],
//!   [`Instrumented`]).
//!
//! Switching backends with `USE_REDIS` alone moves nothing: each backend keeps its
//! own data where it was, so the app starts on the other backend's data as that
//! backend last had it (empty, or old), and switching back finds the first
//! backend's data again. To take the data along, run [`migrate()`] first.
//!
//! ## Redis outages
//!
//! - **At start.** [`Stores::open`] with Redis unreachable opens anyway (the
//!   circuit breaker open, a background probe connecting), unless
//!   `CHATSTATE_REDIS_FAIL_FAST=1` (an `Unavailable` error) or
//!   `CHATSTATE_REDIS_FALLBACK=file|memory` (that store serves for the life of the
//!   [`Stores`]; [`Stores::backend`] and [`Stores::health`] say so). The fallback is
//!   chosen once, at start: the stores do not move back to Redis when it returns
//!   (restart the process), and what was written to the fallback stays there.
//! - **While running.** Every Redis call passes a circuit breaker (see
//!   `chatstate_redis`'s docs): after `CHATSTATE_REDIS_BREAKER_FAILURES` temporary
//!   failures in a row within `CHATSTATE_REDIS_BREAKER_WINDOW_MS`, calls fail at once
//!   with `Unavailable` until a background probe reaches Redis.
//!   [`Stores::health`] shows the state.
//! - **Sessions and focus documents** fail fast with `Unavailable` during an
//!   outage. They are deliberately *not* moved to a local store while Redis is away
//!   (`CHATSTATE_SESSION_FALLBACK=file` is refused), because with several instances
//!   that is unsafe:
//!   1. Instances do not see an outage at the same moment or for as long (a network
//!      partition, one breaker open and another closed), so one conversation would be
//!      written to Redis by one instance and to a local folder by another. Each
//!      store numbers versions on its own: two different records would both be
//!      "version 7", and `Expected::Version` — the guard against lost updates — could
//!      no longer see the conflict.
//!   2. Locks would be granted by each instance's local store independently: the
//!      lock that keeps a reminder from being scheduled twice would let every
//!      instance schedule it, and fencing numbers from a local store would go back
//!      against Redis's.
//!   3. Writing back after the outage cannot be made right: messages held in one
//!      instance's folder were never seen by the instances (and the model) that went
//!      on answering the conversation elsewhere; appending them later reorders what
//!      users already saw, and the window trim can drop messages the others relied
//!      on. No merge rule fixes a conversation that continued in two places.
//!   4. A local folder on an instance that is replaced (a container, an autoscaled
//!      VM) takes its writes with it.
//!
//!   A single instance that wants to keep serving can use the file backend itself,
//!   or the start-up fallback.
//! - **The cache degrades** instead of failing (see [`TieredCache`] and
//!   [`KvCacheExt::get_or_load`]).
//! - **Counters**: [`BatchedCounters`] keeps every delta through an outage and
//!   flushes after it, each batch counted once.

#![warn(missing_docs)]

pub mod migrate;

use std::sync::Arc;

pub use chatstate_core::*;
pub use chatstate_layers::{
    BatchedCounters, CoalesceConfig, CoalesceStats, CoalescingWriter, CounterHandle, Instrumented,
    LocalFocus, LocalFocusStats, LocalHit, LocalSessionStats, LocalSessions, LocalSessionsConfig,
    MetricsSnapshot, Read, TierStats, TieredCache, TieredConfig,
};

pub use migrate::{
    ExportOptions, ImportOptions, KindReport, MigrateOptions, Progress, Report, Resume, export,
    import, migrate,
};

use chatstate_file::FileStore;
use chatstate_memory::MemoryStore;
use chatstate_redis::RedisBus;
pub use chatstate_redis::{RedisStore, RoundTrips, ServerSummary};

/// The README's examples, compiled (and the runnable one run) as doc tests so they
/// stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The stores of one backend, chosen by [`Config::backend`].
#[derive(Clone)]
pub struct Stores {
    /// Which backend these are.
    pub backend: BackendKind,
    /// Sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Focus documents.
    pub focus: Arc<dyn FocusStore>,
    /// Counters.
    pub counters: Arc<dyn CounterSink>,
    /// The cache.
    pub cache: Arc<dyn KvCache>,
    /// Read batches of the backend itself (a session, focus documents and cache
    /// entries in one round trip on Redis). [`Stores::read_batch`] puts the
    /// tiered cache's local tier in front of it.
    pub reads: Arc<dyn ReadBatch>,
    /// Streamed replies (a run per model reply, read or followed from any
    /// instance). Wrap it with [`Stores::coalesced_replies`] for token streams.
    pub replies: Arc<dyn ReplyStream>,
    /// The bus a [`TieredCache`] over [`Stores::cache`] should listen on: Redis
    /// pub/sub for Redis, an in-process bus otherwise.
    pub bus: Arc<dyn InvalidationBus>,
    /// The codec for typed values, from `CHATSTATE_CODEC` (JSON by default): pass
    /// it to the typed calls (`set_value`, `get_value`, `SessionPatch::context`, ...)
    /// or take handles from [`Stores::namespace`] / [`Stores::scope`], which use it,
    /// so one setting decides how every typed value is stored (handles made straight
    /// from a trait object default to JSON).
    pub codec: Codec,
    /// Every record of this backend, to enumerate, read and restore exactly: what
    /// [`export`], [`import`] and [`migrate()`] take.
    pub inventory: Arc<dyn Inventory>,
    /// Where [`Stores::health`] comes from.
    source: HealthSource,
    /// Set when a fallback serves instead of the configured backend.
    fallback_from: Option<Fallback>,
    /// The tiered cache [`Stores::cache`] is, after [`Stores::with_tiered_cache`].
    tiered: Option<Arc<TieredCache>>,
    /// The local session tier in [`Stores::sessions`], after
    /// [`Stores::with_local_sessions`].
    local_sessions: Option<Arc<LocalSessions<Arc<dyn SessionStore>>>>,
    /// The local focus tier in [`Stores::focus`], put in place with the session
    /// tier.
    local_focus: Option<Arc<LocalFocus<Arc<dyn FocusStore>>>>,
    /// Where the figures of [`Stores::instrumented`] go.
    metrics: Option<Instrumented<()>>,
}

#[derive(Clone)]
enum HealthSource {
    /// Memory or file: always reachable; opened at this time.
    Local(Timestamp),
    /// Redis: its breaker.
    Redis(RedisStore),
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend)
            .field("codec", &self.codec)
            .field("fallback_from", &self.fallback_from)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Reads [`Config::from_env`] and opens its backend.
    pub async fn from_env() -> Result<Stores> {
        Stores::open(&Config::from_env()?).await
    }

    /// Opens the backend `config` selects. Must be called inside a tokio runtime.
    ///
    /// With Redis (see the crate docs, "Redis outages"): when Redis cannot be
    /// reached, `CHATSTATE_REDIS_FAIL_FAST=1` makes this an `Unavailable` error;
    /// `CHATSTATE_REDIS_FALLBACK=file|memory` opens that backend instead, for the
    /// life of these stores ([`Stores::backend`] and [`Stores::health`] say so, and
    /// a warning is logged); otherwise (the default) the Redis stores open anyway
    /// and connect in the background, failing calls at once until they do. Refused
    /// credentials and other configuration errors always fail.
    pub async fn open(config: &Config) -> Result<Stores> {
        match config.backend {
            BackendKind::Memory | BackendKind::File => Stores::open_local(config, config.backend),
            BackendKind::Redis => {
                let fallback = match config.redis.fallback {
                    RedisFallback::None => None,
                    RedisFallback::File => Some(BackendKind::File),
                    RedisFallback::Memory => Some(BackendKind::Memory),
                };
                // With a fallback, opening must fail fast to know whether to take it.
                let mut redis_config = config.clone();
                redis_config.redis.fail_fast |= fallback.is_some();
                let store = match (RedisStore::from_config(&redis_config).await, fallback) {
                    (Ok(store), _) => store,
                    (Err(err), Some(instead)) if err.is_temporary() => {
                        tracing::warn!(
                            fallback = ?instead,
                            error = %err,
                            "Redis cannot be reached at start: serving from the fallback \
                             (CHATSTATE_REDIS_FALLBACK) for the life of this process; what is \
                             written there stays there (see chatstate::migrate)"
                        );
                        let mut stores = Stores::open_local(config, instead)?;
                        stores.fallback_from = Some(Fallback {
                            configured: BackendKind::Redis,
                            reason: err.to_string(),
                        });
                        return Ok(stores);
                    }
                    (Err(err), _) => return Err(err),
                };
                let bus: Arc<dyn InvalidationBus> = Arc::new(RedisBus::new(&store)?);
                Ok(Stores::of(
                    BackendKind::Redis,
                    store.clone(),
                    bus,
                    config.codec,
                    HealthSource::Redis(store),
                ))
            }
        }
    }

    /// Opens the memory or file store `backend`.
    fn open_local(config: &Config, backend: BackendKind) -> Result<Stores> {
        let bus: Arc<dyn InvalidationBus> = Arc::new(LocalBus::new());
        let source = HealthSource::Local(SystemClock.now());
        Ok(match backend {
            BackendKind::Memory => Stores::of(
                backend,
                MemoryStore::from_config(config),
                bus,
                config.codec,
                source,
            ),
            _ => Stores::of(
                BackendKind::File,
                FileStore::from_config(config)?,
                bus,
                config.codec,
                source,
            ),
        })
    }

    fn of<S>(
        backend: BackendKind,
        s: S,
        bus: Arc<dyn InvalidationBus>,
        codec: Codec,
        source: HealthSource,
    ) -> Stores
    where
        S: SessionStore
            + FocusStore
            + CounterSink
            + KvCache
            + ReplyStream
            + ReadBatch
            + Inventory
            + 'static,
    {
        let s = Arc::new(s);
        Stores {
            backend,
            sessions: s.clone(),
            focus: s.clone(),
            counters: s.clone(),
            cache: s.clone(),
            reads: s.clone(),
            replies: s.clone(),
            inventory: s,
            bus,
            codec,
            source,
            fallback_from: None,
            tiered: None,
            local_sessions: None,
            local_focus: None,
            metrics: None,
        }
    }

    /// Which backend serves, whether it is reachable, the circuit breaker's state
    /// (Redis), the last temporary failure and since when, and whether a fallback
    /// serves instead of the configured backend. Cheap: reads state, sends nothing.
    pub fn health(&self) -> Health {
        let mut health = match &self.source {
            HealthSource::Local(since) => Health::local(self.backend, *since),
            HealthSource::Redis(store) => store.health(),
        };
        health.fallback_from = self.fallback_from.clone();
        health
    }

    /// The Redis store behind these stores, when Redis serves (not a fallback): for
    /// what only Redis has, such as [`RedisStore::round_trips`].
    pub fn redis_store(&self) -> Option<&RedisStore> {
        match &self.source {
            HealthSource::Redis(store) => Some(store),
            HealthSource::Local(_) => None,
        }
    }

    /// What the stores can do, as they report it ([`Capabilities`]): whether data
    /// outlives the process.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::of_all(
            self.sessions.as_ref(),
            self.focus.as_ref(),
            self.counters.as_ref(),
            self.cache.as_ref(),
        )
    }

    /// These stores with [`Stores::cache`] replaced by a [`TieredCache`] over it
    /// (sized by `config`, listening on [`Stores::bus`]): every typed call on
    /// `stores.cache` then answers from the local tier, and `get_or_load` /
    /// `get_many_or_load` run one loader per key per process for concurrent
    /// misses. [`Stores::tiered`] gives its statistics. Call it before
    /// [`Stores::instrumented`] so the instrumentation measures the tiered calls.
    ///
    /// ```
    /// # async fn demo() -> chatstate::Result<()> {
    /// use chatstate::{BackendKind, CacheHandles, Config, Stores};
    /// let config = Config { backend: BackendKind::Memory, ..Config::default() };
    /// let stores = Stores::open(&config).await?.with_tiered_cache(&config).instrumented();
    /// let customers = stores.cache.namespace("customers")?;
    /// let ana: String = customers.get_or_load("42", || async { Ok("Ana".to_string()) }).await?;
    /// let again: String = customers.get_or_load("42", || async { unreachable!() }).await?;
    /// assert_eq!((ana.as_str(), again.as_str()), ("Ana", "Ana"));
    /// assert_eq!(stores.tiered().map(|t| t.stats().local_hits), Some(1));
    /// let metrics = stores.metrics().expect("instrumented");
    /// assert_eq!((metrics.hits, metrics.misses), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn with_tiered_cache(mut self, config: &Config) -> Stores {
        if self.tiered.is_none() {
            let tiered = Arc::new(self.tiered_cache(config));
            self.cache = match &self.metrics {
                // Already instrumented: the tiered calls are measured too (the
                // cache below it stays measured as well).
                Some(root) => Arc::new(root.sharing(tiered.clone() as Arc<dyn KvCache>)),
                None => tiered.clone(),
            };
            self.tiered = Some(tiered);
        }
        self
    }

    /// These stores with a [`LocalSessions`] tier in [`Stores::sessions`] (sized
    /// by `config`: `CHATSTATE_LOCAL_SESSION_CAPACITY`,
    /// `CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS`): a session this instance read or
    /// wrote is answered locally for up to that age (never past its expiry), by
    /// `load` and by [`Stores::read_batch`], and a turn committed through
    /// `stores.sessions` keeps its result. Focus documents get the same tier in
    /// [`Stores::focus`] ([`LocalFocus`], same settings): a document read or put
    /// here is answered locally for up to the max age, by `get` and by
    /// [`Stores::read_batch`]. With the tiered cache holding the turn's entries,
    /// a turn is then one round trip: the commit. Another instance's write is
    /// seen here only once the copy is older than the max age; a commit (or a
    /// put) expecting the version it read is still checked by the store (a
    /// `Conflict` drops the copy). The [`local_sessions`](chatstate_layers::local_sessions)
    /// and [`local_focus`](chatstate_layers::local_focus) module docs say exactly
    /// what holds. Call it before [`Stores::instrumented`].
    ///
    /// ```
    /// # async fn demo() -> chatstate::Result<()> {
    /// use chatstate::{BackendKind, BatchReads, Config, NewMessage, SessionKey, Stores, Turn};
    /// let config = Config { backend: BackendKind::Memory, ..Config::default() };
    /// let stores = Stores::open(&config).await?.with_local_sessions(&config);
    /// let key = SessionKey::new("acme", "whatsapp", "+5511999990000")?;
    /// stores.sessions.commit_turn(&key, Turn::new().message(NewMessage::user("oi"))).await?;
    /// let read = stores.read_batch(&BatchReads::new().session(key)).await?;
    /// assert_eq!(read.session.map(|s| s.messages.len()), Some(1));
    /// assert_eq!(stores.local_sessions().map(|l| l.stats().hits), Some(1));
    /// # Ok(()) }
    /// ```
    pub fn with_local_sessions(mut self, config: &Config) -> Stores {
        if self.local_sessions.is_none() {
            let local = Arc::new(LocalSessions::new(
                self.sessions.clone(),
                LocalSessionsConfig::from_config(config),
            ));
            self.sessions = match &self.metrics {
                Some(root) => Arc::new(root.sharing(local.clone() as Arc<dyn SessionStore>)),
                None => local.clone(),
            };
            self.local_sessions = Some(local);
        }
        if self.local_focus.is_none() {
            let local = Arc::new(LocalFocus::new(
                self.focus.clone(),
                LocalSessionsConfig::from_config(config),
            ));
            self.focus = match &self.metrics {
                Some(root) => Arc::new(root.sharing(local.clone() as Arc<dyn FocusStore>)),
                None => local.clone(),
            };
            self.local_focus = Some(local);
        }
        self
    }

    /// The local focus tier in [`Stores::focus`], after
    /// [`Stores::with_local_sessions`].
    pub fn local_focus(&self) -> Option<&LocalFocus<Arc<dyn FocusStore>>> {
        self.local_focus.as_deref()
    }

    /// The local session tier in [`Stores::sessions`], after
    /// [`Stores::with_local_sessions`].
    pub fn local_sessions(&self) -> Option<&LocalSessions<Arc<dyn SessionStore>>> {
        self.local_sessions.as_deref()
    }

    /// A handle on the cache namespace `name` in [`Stores::cache`], writing with
    /// [`Stores::codec`] (`CHATSTATE_CODEC`); set its TTL with `.ttl(..)`.
    pub fn namespace(&self, name: &str) -> Result<CacheNamespace> {
        Ok(self.cache.namespace(name)?.codec(self.codec))
    }

    /// A handle on the focus scope `scope` in [`Stores::focus`], writing with
    /// [`Stores::codec`].
    pub fn scope(&self, scope: &str) -> Result<FocusScope> {
        Ok(self.focus.scope(scope)?.codec(self.codec))
    }

    /// The counters called `name` in [`Stores::counters`] (add labels and
    /// bucketing on the handle).
    pub fn family(&self, name: &str) -> Result<CounterFamily> {
        self.counters.family(name)
    }

    /// The tiered cache [`Stores::cache`] is, after [`Stores::with_tiered_cache`].
    pub fn tiered(&self) -> Option<&TieredCache> {
        self.tiered.as_deref()
    }

    /// These stores with every one — sessions, focus, counters, cache, replies —
    /// wrapped in [`Instrumented`], all recording into one [`MetricsSnapshot`]
    /// ([`Stores::metrics`]) and the `metrics` facade. Calling it again changes
    /// nothing (nothing is counted twice).
    pub fn instrumented(mut self) -> Stores {
        if self.metrics.is_some() {
            return self;
        }
        let root = Instrumented::new(());
        self.sessions = Arc::new(root.sharing(self.sessions));
        self.focus = Arc::new(root.sharing(self.focus));
        self.counters = Arc::new(root.sharing(self.counters));
        self.cache = Arc::new(root.sharing(self.cache));
        self.reads = Arc::new(root.sharing(self.reads));
        self.replies = Arc::new(root.sharing(self.replies));
        self.metrics = Some(root);
        self
    }

    /// The read before the model is called, in one step: the session with its
    /// window, focus documents and cache entries ([`ReadBatch`]: one round trip on
    /// Redis). After [`Stores::with_tiered_cache`] the local tier answers the cache
    /// entries it holds first, exactly as `stores.cache.get_many` would; the others
    /// are read in the same round trip as the session and kept locally, so a turn
    /// whose entries are all local reads only the session and the documents. After
    /// [`Stores::with_local_sessions`] a session held locally is answered from
    /// there too (and one read from the store is kept): a batch whose every part
    /// is held costs no round trip.
    ///
    /// ```
    /// # async fn demo() -> chatstate::Result<()> {
    /// use chatstate::{BackendKind, BatchReads, CacheKey, Config, SessionKey, Stores};
    /// let config = Config { backend: BackendKind::Memory, ..Config::default() };
    /// let stores = Stores::open(&config).await?.with_tiered_cache(&config);
    /// let key = SessionKey::new("acme", "whatsapp", "+5511999990000")?;
    /// let read = stores
    ///     .read_batch(&BatchReads::new().session(key).cache(CacheKey::new("customers", "42")?))
    ///     .await?;
    /// assert_eq!((read.session, read.cache), (None, vec![None]));
    /// # Ok(()) }
    /// ```
    pub async fn read_batch(&self, reads: &BatchReads) -> Result<BatchRead> {
        let Some(local) = &self.local_focus else {
            return self.read_sessions(reads).await;
        };
        if reads.focus.is_empty() {
            return self.read_sessions(reads).await;
        }
        // The documents held locally answer here; the others ride along.
        let mut held = Vec::with_capacity(reads.focus.len());
        for key in &reads.focus {
            held.push(local.held(key).await);
        }
        let missing: Vec<FocusKey> = reads
            .focus
            .iter()
            .zip(&held)
            .filter(|(_, h)| h.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let rest = BatchReads {
            session: reads.session.clone(),
            focus: missing.clone(),
            cache: reads.cache.clone(),
        };
        let mut read = if missing.is_empty() {
            self.read_sessions(&rest).await?
        } else {
            local
                .read_through(&missing, self.read_sessions(&rest), |r| r.focus.clone())
                .await?
        };
        let mut fetched = std::mem::take(&mut read.focus).into_iter();
        read.focus = held
            .into_iter()
            .map(|h| match h {
                Some(doc) => Some(doc),
                None => fetched.next().flatten(),
            })
            .collect();
        Ok(read)
    }

    /// [`Stores::read_batch`] below the local focus tier: the session from the
    /// local session tier when it holds it, the rest from below.
    async fn read_sessions(&self, reads: &BatchReads) -> Result<BatchRead> {
        let (Some(local), Some(key)) = (&self.local_sessions, &reads.session) else {
            return self.read_remote(reads).await;
        };
        if let Some(held) = local.held(key).await {
            let rest = BatchReads {
                session: None,
                focus: reads.focus.clone(),
                cache: reads.cache.clone(),
            };
            let mut read = self.read_remote(&rest).await?;
            read.session = Some(held);
            return Ok(read);
        }
        local
            .read_through(key, self.read_remote(reads), |r| r.session.as_ref())
            .await
    }

    /// [`Stores::read_batch`] below the local session tier: the tiered cache's
    /// local tier first, the rest from the store.
    async fn read_remote(&self, reads: &BatchReads) -> Result<BatchRead> {
        let Some(tiered) = &self.tiered else {
            return self.reads.read_batch(reads).await;
        };
        if reads.cache.is_empty() {
            return self.reads.read_batch(reads).await;
        }
        // The rest of the batch rides along with the keys the local tier misses;
        // when it answers them all, the rest is read on its own.
        let mut rest: Option<Result<BatchRead>> = None;
        let cache = tiered
            .get_many_via(&reads.cache, |missing| {
                let batch = BatchReads {
                    session: reads.session.clone(),
                    focus: reads.focus.clone(),
                    cache: missing,
                };
                let rest = &mut rest;
                async move {
                    let read = self.reads.read_batch(&batch).await;
                    // The tiered cache gets the cache part (or a copy of the error,
                    // to serve stale copies as `get_many` would); the rest is kept.
                    let answer = match &read {
                        Ok(r) => Ok(r.cache.clone()),
                        Err(e) => {
                            let copy = Error::new(e.kind(), e.message().to_string());
                            Err(match e.operation() {
                                Some(op) => copy.with_operation(op),
                                None => copy,
                            })
                        }
                    };
                    *rest = Some(read);
                    answer
                }
            })
            .await;
        let only_cache = reads.session.is_none() && reads.focus.is_empty();
        let mut read = match rest {
            // The tiered cache answered from stale copies what the store could not.
            Some(Err(_)) if only_cache && cache.is_ok() => BatchRead::default(),
            // The store's own error, with its key and source (not the copy).
            Some(Err(e)) => return Err(e),
            Some(Ok(read)) => read,
            None if only_cache => BatchRead::default(),
            None => {
                let batch = BatchReads {
                    session: reads.session.clone(),
                    focus: reads.focus.clone(),
                    cache: Vec::new(),
                };
                self.reads.read_batch(&batch).await?
            }
        };
        read.cache = cache?;
        Ok(read)
    }

    /// What [`Stores::instrumented`] recorded so far: count, errors, latency
    /// percentiles per operation, cache hits and misses. `None` when the stores are
    /// not instrumented.
    pub fn metrics(&self) -> Option<MetricsSnapshot> {
        self.metrics.as_ref().map(Instrumented::snapshot)
    }

    /// Round trips and commands sent to Redis so far by these stores (every clone
    /// of them); `None` on the memory and file backends (and a fallback).
    pub fn round_trips(&self) -> Option<RoundTrips> {
        match &self.source {
            HealthSource::Redis(store) => Some(store.round_trips()),
            HealthSource::Local(_) => None,
        }
    }

    /// The Redis server's version, role, memory, `maxmemory-policy` and clients
    /// (one `INFO`); `Ok(None)` on the memory and file backends (and a fallback).
    pub async fn server_summary(&self) -> Result<Option<ServerSummary>> {
        match &self.source {
            HealthSource::Redis(store) => store.server_summary().await.map(Some),
            HealthSource::Local(_) => Ok(None),
        }
    }

    /// A [`TieredCache`] over this backend's cache, sized by `config`.
    pub fn tiered_cache(&self, config: &Config) -> TieredCache {
        TieredCache::new(
            self.cache.clone(),
            self.bus.clone(),
            TieredConfig::from_config(config),
        )
    }

    /// A [`CoalescingWriter`] over [`Stores::replies`]: appends of a token stream
    /// are written every `config.max_delay` or `config.max_bytes` instead of one
    /// round trip each ([`CoalesceConfig::default`]: 50 ms, 256 B). Reads and
    /// follows go to the store as they are.
    pub fn coalesced_replies(&self, config: CoalesceConfig) -> CoalescingWriter {
        CoalescingWriter::new(self.replies.clone(), config)
    }

    /// [`BatchedCounters`] over this backend's counters, flushed every
    /// `CHATSTATE_COUNTER_FLUSH_SECONDS`. A `Config` error when the batch retention
    /// does not cover ten flush intervals (a retried flush could count twice).
    pub fn batched_counters(&self, config: &Config) -> Result<BatchedCounters> {
        BatchedCounters::builder(self.counters.clone())
            .config(config)
            .build()
    }
}
