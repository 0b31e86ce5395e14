//! # chatstate-core
//!
//! The short-term memory of a conversational app, as four store traits (and a
//! fifth, [`ReplyStream`], for streamed replies) and the rules every backend shares. Depend on this crate plus one backend
//! (`chatstate-memory`, `chatstate-file`, `chatstate-redis`), or on the facade that
//! picks one from the environment.
//!
//! ## Layout
//!
//! - [`traits`]: [`SessionStore`], [`FocusStore`], [`CounterSink`], [`KvCache`] — the
//!   contract, method by method.
//! - [`reply`]: streamed replies ([`ReplyStream`]'s chunks, statuses and events),
//!   the append limits, and the follow loop every backend runs.
//! - [`ext`]: conveniences over the traits (typed values, one-message append,
//!   get-or-load), for every store through blanket impls.
//! - [`handles`]: a cache namespace, a focus scope or a counter family named once
//!   with its TTL, codec or labels (`cache.namespace("customers")?.ttl(..)`), for
//!   calls that read naturally.
//! - The traits are implemented for `Arc<T>` and `Box<T>` of any store (`dyn`
//!   included), so layers wrap what the facade hands out.
//! - [`model`]: sessions, messages, patches, leases, focus documents, counter
//!   batches, and the shared rules (summary truncation, put preconditions).
//! - [`transition`]: session, lock and counter transitions as pure functions, which
//!   the memory and file backends call and the Redis scripts mirror.
//! - [`key`]: validated keys and their escaping; [`KeyLayout`], the documented
//!   string-key layout.
//! - [`codec`]: bincode/JSON with a versioned header on every typed value.
//! - [`inventory`]: [`Inventory`], every record of a backend enumerated (paged,
//!   with a cursor), read with its TTL and version, and restored exactly — what
//!   export, import and migrate between backends use.
//! - [`invalidation`]: the bus tiered caches use to drop other instances' local
//!   copies ([`InvalidationBus`], [`LocalBus`]).
//! - [`config`]: [`Config`] from the environment (`USE_REDIS`, `REDIS_URL`, ...).
//! - [`background`]: the periodic loop stores run their sweepers and flushes in.
//! - [`clock`]: [`Timestamp`], [`Clock`], [`ManualClock`] for tests that move time.
//! - [`error`]: [`Error`] with an [`ErrorKind`] to branch on.
//! - [`health`]: [`Health`] and [`BreakerState`], what a store reports about its
//!   backend's reachability.
//! - `mock` (feature `mock`): mockall mocks of the four traits.
//!
//! ## What this crate must never do
//!
//! Talk to a backend, spawn tasks (it builds loops, callers spawn them), or read the environment anywhere but
//! [`Config::from_env`]. Backends store bytes and structure; this crate owns meaning
//! (encoding, validation, truncation, preconditions) so it is written once.
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use chatstate_core::{CounterKey, CounterSink, KvCache, SessionStore};
//!
//! // Code written against the traits runs on any backend.
//! async fn on_message(
//!     sessions: &dyn SessionStore,
//!     counters: &dyn CounterSink,
//!     key: &chatstate_core::SessionKey,
//!     text: &str,
//! ) -> chatstate_core::Result<()> {
//!     use chatstate_core::{NewMessage, SessionStoreExt};
//!     sessions.append_message(key, NewMessage::user(text)).await?;
//!     counters.add(&CounterKey::new("messages")?, 1).await?;
//!     Ok(())
//! }
//! ```

#![warn(missing_docs)]

pub mod background;
pub mod clock;
pub mod codec;
pub mod config;
pub mod error;
pub mod ext;
mod forward;
pub mod handles;
pub mod health;
pub mod invalidation;
pub mod inventory;
pub mod key;
pub mod model;
pub mod reply;
pub mod traits;
pub mod transition;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Timestamp, system_clock};
pub use codec::Codec;
pub use config::{
    BackendKind, BreakerConfig, Config, HostPort, LocalCacheConfig, LocalSessionConfig,
    RedisConfig, RedisFallback, RedisTopology, RedisUrl, Secret, StoreSettings, TlsConfig,
};
pub use error::{Error, ErrorKind, Result, ResultExt};
pub use ext::{
    FocusStoreExt, KvCacheExt, LoadFuture, Loader, ManyLoader, SessionStoreExt, loader, many_loader,
};
pub use handles::{
    Bucketing, CacheHandles, CacheNamespace, CounterFamily, CounterHandles, FocusHandles,
    FocusScope, Versioned,
};
pub use health::{BreakerState, Fallback, Health};
pub use invalidation::{BusEvent, Invalidation, InvalidationBus, LocalBus};
pub use inventory::{
    CacheRecord, CounterRecord, FocusRecord, Inventory, InventoryPage, Record, RecordKey,
    RecordKind, RestoreMode, Restored, SessionRecord,
};
pub use key::{
    Bucket, CacheKey, CounterKey, FocusKey, KeyLayout, KeyList, KeyListIter, Labels, RunId,
    SessionKey,
};
pub use model::{
    AppendReceipt, BatchOutcome, BatchRead, BatchReads, Change, CounterBatch, Expected, FocusDoc,
    Lease, LoadedSession, Message, NewMessage, Page, PutMode, Role, Session, SessionPatch, Turn,
    TurnReceipt,
};
pub use reply::{Chunk, ReplyEvent, ReplyEvents, RunRead, RunStatus};
pub use traits::{
    Capabilities, CounterSink, FocusStore, KvCache, ReadBatch, ReplyStream, SessionStore,
    read_batch_by_calls,
};

/// mockall mocks of the four traits, for unit tests of code that uses chatstate.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use chatstate_core::{CounterKey, CounterSink, mock::MockCounterSink};
/// let mut counters = MockCounterSink::new();
/// counters.expect_add().times(1).returning(|_, delta| Ok(delta));
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let value = rt.block_on(counters.add(&CounterKey::new("messages").unwrap(), 2)).unwrap();
/// assert_eq!(value, 2);
/// # }
/// ```
#[cfg(feature = "mock")]
pub mod mock {
    pub use crate::traits::{
        MockCounterSink, MockFocusStore, MockKvCache, MockReadBatch, MockSessionStore,
    };
}
