//! # chatstate-memory
//!
//! The in-memory backend: all four chatstate traits in process memory. For tests, for
//! embedding, and as the reference the other backends are compared with. Data is lost
//! when the last clone of the store is dropped.
//!
//! ## Layout
//!
//! - [`MemoryStore`] (this file): one store implementing [`SessionStore`](chatstate_core::SessionStore),
//!   [`FocusStore`](chatstate_core::FocusStore), [`CounterSink`](chatstate_core::CounterSink) and [`KvCache`](chatstate_core::KvCache); clones share the data. One
//!   file per trait: `session.rs` (sessions and locks), `focus.rs`, `counters.rs`,
//!   `cache.rs`, `reply.rs` ([`ReplyStream`](chatstate_core::ReplyStream): a `Vec` per
//!   run, followers woken by a tokio `broadcast` channel); `export.rs` is [`chatstate_core::Inventory`] (enumerate and
//!   restore every record, for moves between backends). Session, lock and counter rules are the core's
//!   ([`chatstate_core::transition`]); this crate only holds the state.
//! - `expiring`: the ordered map with deadlines every part is kept in.
//! - The sweeper: a background task, owned by the store, that frees expired entries.
//!
//! ## Guarantees
//!
//! - Expired entries are invisible the instant they expire, before any sweep.
//! - Every method runs under one short critical section per data kind, so each is
//!   atomic: concurrent appends, counter adds and versioned updates lose nothing.
//! - Time comes from a [`chatstate_core::Clock`]; give it a
//!   [`chatstate_core::ManualClock`] to test TTLs without sleeping.
//!
//! ## What it must never do
//!
//! Hold a lock across an `.await` (there is none inside), hold two of its mutexes at
//! once, or re-implement a rule the core owns (summary truncation, put
//! preconditions, value limits, session, lock and counter transitions).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chatstate_core::Result<()> {
//! use chatstate_core::{NewMessage, SessionKey, SessionStore, SessionStoreExt, StoreSettings};
//! use chatstate_memory::MemoryStore;
//!
//! let store = MemoryStore::new(StoreSettings::default());
//! let key = SessionKey::new("acme", "whatsapp", "5511999990000")?;
//! store.append_message(&key, NewMessage::user("oi")).await?;
//! let loaded = store.load(&key).await?.expect("just written");
//! assert_eq!(loaded.messages[0].content, "oi");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod batch;
mod cache;
mod counters;
mod expiring;
mod export;
mod focus;
mod reply;
mod session;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use chatstate_core::transition::{LockState, SessionState};
use chatstate_core::{
    Capabilities, Config, CounterKey, FocusDoc, SessionKey, SharedClock, StoreSettings, Timestamp,
    system_clock,
};
use expiring::Expiring;

/// How often the sweeper frees expired entries, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most entries one sweep frees per data kind, so a sweep never holds a lock long.
const SWEEP_BATCH: usize = 10_000;

type Triple = (String, String, String);

#[derive(Default)]
struct Counters {
    /// Ordered by name, then labels, then bucket: a name's counters are one range.
    values: BTreeMap<CounterKey, i64>,
    applied_batches: Expiring<String, ()>,
}

struct Inner {
    clock: SharedClock,
    settings: StoreSettings,
    // std Mutexes, not tokio's: every critical section is short and never awaits,
    // and a std Mutex is cheaper. One per data kind so a cache scan does not stall
    // appends.
    sessions: Mutex<Expiring<Triple, SessionState>>,
    /// Each lock's holder and fence, kept for the lease plus a session TTL after its
    /// last use (`LockState::keep_until`).
    locks: Mutex<Expiring<(Triple, String), LockState>>,
    focus: Mutex<Expiring<(String, String), FocusDoc>>,
    counters: Mutex<Counters>,
    cache: Mutex<cache::CacheMap>,
    /// Streamed replies by run id.
    replies: Mutex<Expiring<String, reply::Run>>,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.sweeper).take() {
            task.abort();
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (every
/// critical section leaves the data consistent before anything can panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn triple(key: &SessionKey) -> Triple {
    (
        key.tenant().to_string(),
        key.channel().to_string(),
        key.user().to_string(),
    )
}

/// Configures a [`MemoryStore`].
#[derive(Debug)]
pub struct MemoryStoreBuilder {
    settings: StoreSettings,
    clock: SharedClock,
    sweep_interval: Option<Duration>,
}

impl MemoryStoreBuilder {
    /// The TTLs, window and limits.
    pub fn settings(mut self, settings: StoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The clock expiry is read from (the system clock by default).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// How often the background sweeper frees expired entries; `None` runs no
    /// sweeper (call [`MemoryStore::sweep`] yourself).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Builds the store. The sweeper starts when a tokio runtime is running here;
    /// otherwise expired entries are still invisible and freed by
    /// [`MemoryStore::sweep`].
    pub fn build(self) -> MemoryStore {
        let inner = Arc::new(Inner {
            clock: self.clock,
            settings: self.settings,
            sessions: Mutex::default(),
            locks: Mutex::default(),
            focus: Mutex::default(),
            counters: Mutex::default(),
            cache: Mutex::default(),
            replies: Mutex::default(),
            sweeper: Mutex::new(None),
        });
        if let (Some(interval), Ok(rt)) =
            (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            let weak = Arc::downgrade(&inner);
            *lock(&inner.sweeper) = Some(rt.spawn(sweep_loop(weak, interval)));
        }
        MemoryStore { inner }
    }
}

/// The sweeper: one pass per interval while the store lives. It holds only a weak
/// reference, so it never keeps the store alive, and ends when the store is dropped
/// (which also aborts it).
async fn sweep_loop(store: Weak<Inner>, interval: Duration) {
    chatstate_core::background::every(store, interval, |inner: Arc<Inner>| async move {
        let freed = inner.sweep();
        if freed > 0 {
            tracing::trace!(freed, "chatstate-memory swept expired entries");
        }
    })
    .await
}

impl Inner {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// When a session written at `now` expires (the core's rule).
    fn session_deadline(&self, now: Timestamp) -> Timestamp {
        SessionState::deadline(&self.settings, now)
    }

    /// One sweep pass. Each data kind's mutex is taken and released in its own
    /// statement: a single expression summing `lock(a).sweep() + lock(b).sweep()`
    /// would hold every guard until its end, stalling all operations at once.
    fn sweep(&self) -> usize {
        let now = self.now();
        let mut freed = 0;
        freed += lock(&self.sessions).sweep(now, SWEEP_BATCH);
        freed += lock(&self.locks).sweep(now, SWEEP_BATCH);
        freed += lock(&self.focus).sweep(now, SWEEP_BATCH);
        freed += lock(&self.counters).applied_batches.sweep(now, SWEEP_BATCH);
        freed += lock(&self.cache).entries.sweep(now, SWEEP_BATCH);
        freed += lock(&self.cache).aliases.sweep(now, SWEEP_BATCH);
        freed += lock(&self.replies).sweep(now, SWEEP_BATCH);
        freed
    }
}

/// All four chatstate stores in process memory. Cheap to clone; clones share data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("settings", &self.inner.settings)
            .field("stored_entries", &self.stored_entries())
            .finish()
    }
}

impl MemoryStore {
    /// A store with `settings`, the system clock and a sweeper every second (when
    /// built inside a tokio runtime).
    pub fn new(settings: StoreSettings) -> Self {
        MemoryStore::builder().settings(settings).build()
    }

    /// A store configured from [`Config`] (its store settings).
    pub fn from_config(config: &Config) -> Self {
        MemoryStore::new(config.store.clone())
    }

    /// A builder, to set the clock or the sweep interval.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            settings: StoreSettings::default(),
            clock: system_clock(),
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
        }
    }

    /// The store's settings.
    pub fn settings(&self) -> &StoreSettings {
        &self.inner.settings
    }

    /// Frees expired entries now (up to a batch per data kind); returns how many.
    pub fn sweep(&self) -> usize {
        self.inner.sweep()
    }

    /// Entries held across all data kinds, expired-but-unswept ones included (counters
    /// excepted): what the sweeper's work is measured by.
    pub fn stored_entries(&self) -> usize {
        let mut n = lock(&self.inner.sessions).stored();
        n += lock(&self.inner.locks).stored();
        n += lock(&self.inner.focus).stored();
        n += lock(&self.inner.counters).applied_batches.stored();
        n += lock(&self.inner.cache).entries.stored();
        n += lock(&self.inner.cache).aliases.stored();
        n += lock(&self.inner.replies).stored();
        n
    }

    /// What this store can do: nothing outlives it.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chatstate_core::{CacheKey, KvCache, ManualClock, SessionStore};

    fn store(clock: &ManualClock) -> MemoryStore {
        MemoryStore::builder()
            .clock(clock.shared())
            .sweep_interval(Some(Duration::from_millis(100)))
            .build()
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_frees_expired_entries_in_the_background() {
        let clock = ManualClock::new(Timestamp(1_000_000));
        let s = store(&clock);
        for i in 0..1000 {
            let key = CacheKey::new("ns", format!("k{i}")).unwrap();
            KvCache::set(
                &s,
                &key,
                Bytes::from_static(b"v"),
                Some(Duration::from_secs(5)),
            )
            .await
            .unwrap();
        }
        let skey = SessionKey::new("t", "c", "u").unwrap();
        s.get_or_create(&skey).await.unwrap();
        assert_eq!(s.stored_entries(), 1001);
        clock.advance(Duration::from_secs(6));
        // Paused tokio time: this sleep lets the sweeper tick, without wall time.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(s.stored_entries(), 1, "the session (72 h TTL) remains");
        clock.advance(Duration::from_secs(72 * 3600));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(s.stored_entries(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn sweeper_stops_when_the_store_is_dropped() {
        let s = store(&ManualClock::new(Timestamp(0)));
        let weak = Arc::downgrade(&s.inner);
        drop(s);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn works_without_a_runtime_and_sweeps_on_demand() {
        let clock = ManualClock::new(Timestamp(0));
        let s = store(&clock);
        let key = CacheKey::new("ns", "k").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(KvCache::set(
            &s,
            &key,
            Bytes::from_static(b"v"),
            Some(Duration::from_secs(1)),
        ))
        .unwrap();
        clock.advance(Duration::from_secs(1));
        assert_eq!(rt.block_on(KvCache::get(&s, &key)).unwrap(), None);
        assert_eq!(s.sweep(), 1);
        assert_eq!(s.stored_entries(), 0);
    }
}
