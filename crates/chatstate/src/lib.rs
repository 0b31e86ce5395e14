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
//! - [`Stores`]: the four stores of the configured backend, as trait objects, plus
//!   the invalidation bus a [`TieredCache`] should use with them.
//! - [`migrate`](mod@migrate): lossless moves between backends — [`export`] to
//!   JSON lines, [`import`], [`migrate()`] from one backend to another
//!   (idempotent, resumable, dry run, count [`Report`], progress), over
//!   [`Stores::inventory`].
//! - Re-exports: everything of `chatstate_core` (traits, model, config, errors) and
//!   the layers ([`TieredCache`], [`BatchedCounters`], [`Instrumented`]).
//!
//! Switching backends with `USE_REDIS` alone moves nothing: each backend keeps its
//! own data where it was, so the app starts on the other backend's data as that
//! backend last had it (empty, or old), and switching back finds the first
//! backend's data again. To take the data along, run [`migrate()`] first.

#![warn(missing_docs)]

pub mod migrate;

use std::sync::Arc;

pub use chatstate_core::*;
pub use chatstate_layers::{
    BatchedCounters, Instrumented, MetricsSnapshot, Read, TierStats, TieredCache, TieredConfig,
};

pub use migrate::{
    ExportOptions, ImportOptions, KindReport, MigrateOptions, Progress, Report, Resume, export,
    import, migrate,
};

use chatstate_file::FileStore;
use chatstate_memory::MemoryStore;
use chatstate_redis::{RedisBus, RedisStore};

/// The README's examples, compiled (and the runnable one run) as doc tests so they
/// stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// The four stores of one backend, chosen by [`Config::backend`].
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
    /// The bus a [`TieredCache`] over [`Stores::cache`] should listen on: Redis
    /// pub/sub for Redis, an in-process bus otherwise.
    pub bus: Arc<dyn InvalidationBus>,
    /// The codec for typed values, from `CHATSTATE_CODEC` (bincode by default): pass
    /// it to the typed calls (`set_value`, `get_value`, `SessionPatch::context`, ...)
    /// so one setting decides how every typed value is stored.
    pub codec: Codec,
    /// Every record of this backend, to enumerate, read and restore exactly: what
    /// [`export`], [`import`] and [`migrate()`] take.
    pub inventory: Arc<dyn Inventory>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("backend", &self.backend)
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Stores {
    /// Reads [`Config::from_env`] and opens its backend.
    pub async fn from_env() -> Result<Stores> {
        Stores::open(&Config::from_env()?).await
    }

    /// Opens the backend `config` selects. Must be called inside a tokio runtime.
    pub async fn open(config: &Config) -> Result<Stores> {
        let codec = config.codec;
        let local_bus = || -> Arc<dyn InvalidationBus> { Arc::new(LocalBus::new()) };
        Ok(match config.backend {
            BackendKind::Memory => Stores::of(
                BackendKind::Memory,
                MemoryStore::from_config(config),
                local_bus(),
                codec,
            ),
            BackendKind::File => Stores::of(
                BackendKind::File,
                FileStore::from_config(config)?,
                local_bus(),
                codec,
            ),
            BackendKind::Redis => {
                let store = RedisStore::from_config(config).await?;
                let bus: Arc<dyn InvalidationBus> = Arc::new(RedisBus::new(&store)?);
                Stores::of(BackendKind::Redis, store, bus, codec)
            }
        })
    }

    fn of<S>(backend: BackendKind, s: S, bus: Arc<dyn InvalidationBus>, codec: Codec) -> Stores
    where
        S: SessionStore + FocusStore + CounterSink + KvCache + Inventory + 'static,
    {
        let s = Arc::new(s);
        Stores {
            backend,
            sessions: s.clone(),
            focus: s.clone(),
            counters: s.clone(),
            cache: s.clone(),
            inventory: s,
            bus,
            codec,
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

    /// A [`TieredCache`] over this backend's cache, sized by `config`.
    pub fn tiered_cache(&self, config: &Config) -> TieredCache {
        TieredCache::new(
            self.cache.clone(),
            self.bus.clone(),
            TieredConfig::from_config(config),
        )
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
