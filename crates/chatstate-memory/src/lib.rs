//! # chatstate-memory
//!
//! The in-memory backend: all four chatstate traits in process memory. For tests, for
//! embedding, and as the reference the other backends are compared with. Data is lost
//! when the last clone of the store is dropped.
//!
//! ## Layout
//!
//! - [`MemoryStore`] (this file): one store implementing [`SessionStore`],
//!   [`FocusStore`], [`CounterSink`] and [`KvCache`]; clones share the data.
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
//! Hold a lock across an `.await` (there is none inside), or re-implement a rule the
//! core owns (summary truncation, put preconditions, value limits).
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

mod expiring;

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::{check_lock_name, check_scope, escape, unescape};
use chatstate_core::model::{check_put, checked_counter_add, random_id};
use chatstate_core::{
    AppendReceipt, BatchOutcome, Bucket, CacheKey, Config, CounterBatch, CounterKey, CounterSink,
    Error, ErrorKind, Expected, FocusDoc, FocusKey, FocusStore, KvCache, Labels, Lease,
    LoadedSession, Message, NewMessage, Page, PutMode, Result, Session, SessionKey, SessionPatch,
    SessionStore, SharedClock, StoreSettings, Timestamp, system_clock,
};
use expiring::Expiring;

/// How often the sweeper frees expired entries, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most entries one sweep frees per data kind, so a sweep never holds a lock long.
const SWEEP_BATCH: usize = 10_000;

type Triple = (String, String, String);

/// A session's record and message window, which expire together.
struct SessionEntry {
    session: Session,
    messages: VecDeque<Message>,
}

/// One lock's holder and fencing number. Kept (for the fence) until a session TTL
/// after its last use.
struct LockEntry {
    holder: Option<(String, Timestamp)>,
    fence: u64,
}

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
    sessions: Mutex<Expiring<Triple, SessionEntry>>,
    locks: Mutex<Expiring<(Triple, String), LockEntry>>,
    focus: Mutex<Expiring<(String, String), FocusDoc>>,
    counters: Mutex<Counters>,
    cache: Mutex<Expiring<(String, String), Bytes>>,
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

/// The sweeper: holds only a weak reference, so it never keeps the store alive, and
/// ends when the store is dropped (which also aborts it).
/// The sweeper: one pass per interval while the store lives.
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

    fn session_deadline(&self, now: Timestamp) -> Timestamp {
        now.plus(self.settings.session_ttl)
    }

    fn sweep(&self) -> usize {
        let now = self.now();
        lock(&self.sessions).sweep(now, SWEEP_BATCH)
            + lock(&self.locks).sweep(now, SWEEP_BATCH)
            + lock(&self.focus).sweep(now, SWEEP_BATCH)
            + lock(&self.counters).applied_batches.sweep(now, SWEEP_BATCH)
            + lock(&self.cache).sweep(now, SWEEP_BATCH)
    }

    fn new_session(&self, key: &SessionKey, init: &SessionPatch, now: Timestamp) -> SessionEntry {
        SessionEntry {
            session: Session::new(key.clone(), random_id(), now, init),
            messages: VecDeque::new(),
        }
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
        lock(&self.inner.sessions).stored()
            + lock(&self.inner.locks).stored()
            + lock(&self.inner.focus).stored()
            + lock(&self.inner.counters).applied_batches.stored()
            + lock(&self.inner.cache).stored()
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        let init = init.normalize(&self.inner.settings).in_op("create")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        if sessions.get(&k, now).is_some() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "a live session has this key")
                    .with_operation("create")
                    .with_key(key),
            );
        }
        let entry = self.inner.new_session(key, &init, now);
        let session = entry.session.clone();
        sessions.insert(k, entry, self.inner.session_deadline(now));
        Ok(session)
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        if let Some(e) = sessions.get(&k, now) {
            return Ok(e.session.clone());
        }
        let entry = self.inner.new_session(key, &SessionPatch::new(), now);
        let session = entry.session.clone();
        sessions.insert(k, entry, self.inner.session_deadline(now));
        Ok(session)
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .get(&triple(key), now)
            .map(|e| e.session.clone()))
    }

    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        let now = self.inner.now();
        let sessions = lock(&self.inner.sessions);
        Ok(keys
            .iter()
            .map(|k| sessions.get(&triple(k), now).map(|e| e.session.clone()))
            .collect())
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .get(&triple(key), now)
            .map(|e| LoadedSession {
                session: e.session.clone(),
                messages: e.messages.iter().cloned().collect(),
            }))
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        chatstate_core::model::check_append(&messages, &self.inner.settings)
            .in_op("append_messages")?;
        let now = self.inner.now();
        let window = self.inner.settings.window_size;
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        let (mut entry, created) = match sessions.remove(&k, now) {
            Some(e) => (e, false),
            None => (self.inner.new_session(key, &SessionPatch::new(), now), true),
        };
        for m in messages {
            entry.session.message_count += 1;
            entry
                .messages
                .push_back(m.into_message(entry.session.message_count, now));
        }
        while entry.messages.len() > window {
            entry.messages.pop_front();
        }
        entry.session.last_activity = now;
        let receipt = AppendReceipt {
            message_count: entry.session.message_count,
            window_len: entry.messages.len(),
            created,
        };
        sessions.insert(k, entry, self.inner.session_deadline(now));
        Ok(receipt)
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let patch = patch.normalize(&self.inner.settings).in_op("update")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        let entry = sessions.get_mut(&k, now).ok_or_else(|| {
            Error::not_found("no live session has this key")
                .with_operation("update")
                .with_key(key)
        })?;
        if let Expected::Version(want) = expected
            && entry.session.version != want
        {
            return Err(Error::conflict(format!(
                "expected version {want}, the session is at version {}",
                entry.session.version
            ))
            .with_operation("update")
            .with_key(key));
        }
        entry.session.apply(&patch, now);
        let session = entry.session.clone();
        sessions.set_deadline(&k, self.inner.session_deadline(now), now);
        Ok(session)
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        match sessions.get_mut(&k, now) {
            Some(e) => {
                e.session.last_activity = now;
                sessions.set_deadline(&k, self.inner.session_deadline(now), now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .remove(&triple(key), now)
            .is_some())
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .deadline(&triple(key), now)
            .map(|d| now.until(d)))
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        check_scope("tenant", tenant).in_op("list")?;
        chatstate_core::model::check_list_limit(limit).in_op("list")?;
        let start: Triple = match &cursor {
            None => (tenant.to_string(), String::new(), String::new()),
            Some(c) => {
                let (channel, user) = decode_cursor(c).ok_or_else(|| {
                    Error::invalid_input("list cursor is malformed").with_operation("list")
                })?;
                (tenant.to_string(), channel, user)
            }
        };
        let bound = if cursor.is_some() {
            Bound::Excluded(&start)
        } else {
            Bound::Included(&start)
        };
        let now = self.inner.now();
        let sessions = lock(&self.inner.sessions);
        let mut items: Vec<SessionKey> = sessions
            .range_from(bound, now)
            .take_while(|((t, _, _), _)| t == tenant)
            .take(limit.saturating_add(1))
            .map(|(_, e)| e.session.key.clone())
            .collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|k| encode_cursor(k.channel(), k.user()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        check_lock_name(name).in_op("try_lock")?;
        let lease = StoreSettings::check_ttl(lease).in_op("try_lock")?;
        let now = self.inner.now();
        let mut locks = lock(&self.inner.locks);
        let k = (triple(key), name.to_string());
        let mut entry = locks.remove(&k, now).unwrap_or(LockEntry {
            holder: None,
            fence: 0,
        });
        let free = entry.holder.as_ref().is_none_or(|(_, until)| *until <= now);
        let result = if free {
            entry.fence += 1;
            let token = random_id();
            entry.holder = Some((token.clone(), now.plus(lease)));
            Some(Lease {
                key: key.clone(),
                name: name.to_string(),
                token,
                fence: entry.fence,
            })
        } else {
            None
        };
        let keep_until = self.inner.session_deadline(now).max(now.plus(lease));
        locks.insert(k, entry, keep_until);
        Ok(result)
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        let now = self.inner.now();
        let mut locks = lock(&self.inner.locks);
        let k = (triple(&held.key), held.name.clone());
        let Some(entry) = locks.get_mut(&k, now) else {
            return Ok(false);
        };
        match &mut entry.holder {
            Some((token, until)) if *token == held.token && *until > now => {
                *until = now.plus(lease);
                let keep_until = self.inner.session_deadline(now).max(now.plus(lease));
                locks.set_deadline(&k, keep_until, now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        let now = self.inner.now();
        let mut locks = lock(&self.inner.locks);
        let k = (triple(&held.key), held.name.clone());
        let Some(entry) = locks.get_mut(&k, now) else {
            return Ok(false);
        };
        match &entry.holder {
            Some((token, until)) if *token == held.token && *until > now => {
                entry.holder = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// A list cursor: the last key's escaped channel and user.
fn encode_cursor(channel: &str, user: &str) -> String {
    format!("{}:{}", escape(channel), escape(user))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let (c, u) = cursor.split_once(':')?;
    Some((unescape(c)?, unescape(u)?))
}

fn focus_key(key: &FocusKey) -> (String, String) {
    (key.scope().to_string(), key.name().to_string())
}

#[async_trait]
impl FocusStore for MemoryStore {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let settings = &self.inner.settings;
        let ttl = settings.focus_put_ttl(value.len(), ttl).in_op("put")?;
        let now = self.inner.now();
        let mut focus = lock(&self.inner.focus);
        let k = focus_key(key);
        let existing = focus.get(&k, now).map(|d| d.version);
        let version =
            check_put(mode, existing).map_err(|e| e.with_operation("put").with_key(key))?;
        let doc = FocusDoc {
            key: key.clone(),
            value,
            version,
            updated_at: now,
        };
        focus.insert(k, doc.clone(), now.plus(ttl));
        Ok(doc)
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.focus).get(&focus_key(key), now).cloned())
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.focus)
            .remove(&focus_key(key), now)
            .is_some())
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        check_scope("focus scope", scope).in_op("list")?;
        let now = self.inner.now();
        let start = (scope.to_string(), String::new());
        Ok(lock(&self.inner.focus)
            .range_from(Bound::Included(&start), now)
            .take_while(|((s, _), _)| s == scope)
            .map(|(_, d)| d.clone())
            .collect())
    }
}

/// Sets a counter, cloning its key only the first time.
fn set_counter(values: &mut BTreeMap<CounterKey, i64>, key: &CounterKey, value: i64) {
    match values.get_mut(key) {
        Some(v) => *v = value,
        None => {
            values.insert(key.clone(), value);
        }
    }
}

#[async_trait]
impl CounterSink for MemoryStore {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        let mut counters = lock(&self.inner.counters);
        let current = counters.values.get(key).copied().unwrap_or(0);
        let value = checked_counter_add(key, current, delta).in_op("add")?;
        set_counter(&mut counters.values, key, value);
        Ok(value)
    }

    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        let now = self.inner.now();
        let mut counters = lock(&self.inner.counters);
        if counters
            .applied_batches
            .get(&batch.id().to_string(), now)
            .is_some()
        {
            return Ok(BatchOutcome::Duplicate);
        }
        // Compute every new value first, so an overflow applies nothing.
        let mut updates = Vec::with_capacity(batch.len());
        for (key, delta) in batch.deltas() {
            let current = counters.values.get(key).copied().unwrap_or(0);
            updates.push((
                key,
                checked_counter_add(key, current, delta).in_op("apply")?,
            ));
        }
        for (key, value) in updates {
            set_counter(&mut counters.values, key, value);
        }
        let retention = now.plus(self.inner.settings.batch_retention);
        counters
            .applied_batches
            .insert(batch.id().to_string(), (), retention);
        Ok(BatchOutcome::Applied)
    }

    async fn get(&self, key: &CounterKey) -> Result<i64> {
        Ok(lock(&self.inner.counters)
            .values
            .get(key)
            .copied()
            .unwrap_or(0))
    }

    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        let counters = lock(&self.inner.counters);
        Ok(keys
            .iter()
            .map(|k| counters.values.get(k).copied().unwrap_or(0))
            .collect())
    }

    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        // CounterKey::new(name) checks the name and is the smallest key of that name.
        let start = CounterKey::new(name).in_op("list")?;
        Ok(lock(&self.inner.counters)
            .values
            .range(start..)
            .take_while(|(k, _)| k.name() == name)
            .filter(|(k, _)| k.bucket() == bucket)
            .map(|(k, v)| (k.labels().clone(), *v))
            .collect())
    }

    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        Ok(lock(&self.inner.counters).values.remove(key).is_some())
    }
}

fn cache_key(key: &CacheKey) -> (String, String) {
    (key.namespace().to_string(), key.key().to_string())
}

#[async_trait]
impl KvCache for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).get(&cache_key(key), now).cloned())
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let now = self.inner.now();
        let cache = lock(&self.inner.cache);
        Ok(keys
            .iter()
            .map(|k| cache.get(&cache_key(k), now).cloned())
            .collect())
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_many(vec![(key.clone(), value)], ttl)
            .await
            .in_op("set")
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let settings = &self.inner.settings;
        let ttl = settings
            .cache_write_ttl(entries.iter().map(|(k, v)| (k, v.len())), ttl)
            .in_op("set_many")?;
        let now = self.inner.now();
        let deadline = now.plus(ttl);
        let mut cache = lock(&self.inner.cache);
        for (key, value) in entries {
            cache.insert(cache_key(&key), value, deadline);
        }
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .remove(&cache_key(key), now)
            .is_some())
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        Ok(keys
            .iter()
            .filter(|k| cache.remove(&cache_key(k), now).is_some())
            .count() as u64)
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).get(&cache_key(key), now).is_some())
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).set_deadline(&cache_key(key), now.plus(ttl), now))
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .deadline(&cache_key(key), now)
            .map(|d| now.until(d)))
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        let start = (namespace.to_string(), key_prefix.to_string());
        let doomed: Vec<(String, String)> = cache
            .range_from(Bound::Included(&start), now)
            .take_while(|((ns, k), _)| ns == namespace && k.starts_with(key_prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            cache.remove(k, now);
        }
        Ok(doomed.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatstate_core::ManualClock;

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

    #[test]
    fn cursor_roundtrips_ids_with_separators() {
        let c = encode_cursor("a:b", "c%d");
        assert_eq!(decode_cursor(&c), Some(("a:b".into(), "c%d".into())));
        assert_eq!(decode_cursor("no-separator"), None);
    }
}
