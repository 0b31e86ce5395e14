//! [`LocalSessions`]: a bounded local tier of loaded sessions (record and window)
//! in front of any [`SessionStore`], so a chat turn whose reads this instance
//! already holds costs one round trip: the commit.
//!
//! ## What it promises
//!
//! - **Reads may lag other instances, by at most `max_age`.** [`load`] and
//!   [`get`] answer a copy of what the store held at most `max_age` ago (counted
//!   from when the read or write that made it began)
//!   (`CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS`, measured on the layer's clock).
//!   A write made through *another* instance is seen here once the copy is older
//!   than that; a write made through *this* layer is seen at once. Nothing tells
//!   this instance about other instances' writes sooner (no pub/sub): route a
//!   conversation to one instance, or keep `max_age` short, when that matters.
//! - **A stale record is a conflict, never a lost write.** A [`commit_turn`]
//!   expecting the version of the copy it read ([`Expected::Version`], as the
//!   README's turn does) is checked by the store itself: if another instance
//!   changed the record meanwhile (a patch bumps `version`), it is a `Conflict`
//!   that writes nothing, and the copy is dropped, so the caller's next read goes
//!   to the store. A stale *window* is not a conflict: messages appended by
//!   another instance do not change `version`, so a turn built on a copy that
//!   lacks them still lands, after them (nothing is lost in the store); this
//!   layer sees the store's `message_count` is not the copy's plus the turn's and
//!   drops its copy instead of keeping a window that lacks them.
//! - **Never a session past its life.** A copy is never served past the
//!   session's own expiry as the copy shows it (its latest `last_activity` or
//!   `updated_at` plus the session TTL; a write that slides the TTL without
//!   changing either only makes that bound conservative), nor after this layer
//!   deleted the session.
//! - **A copy equals what the store would answer** at the moment it was taken:
//!   a read keeps what the store returned; a turn keeps the record the store
//!   returned after it (the turn asks for it) and the window extended by the
//!   turn's messages, numbered and trimmed as the store did (message times are
//!   set by this layer's clock before the commit, so both sides hold the same).
//!
//! Every other call goes to the store. Every write that may change the record or
//! the window takes the copy out before it goes to the store, so nothing is
//! served while it runs and nothing stale is left if its caller stops waiting;
//! only a turn or an update whose answer shows exactly what the session became
//! puts a copy back. An answer (of a read or a write) that overlapped another
//! write through this layer is never kept. Side data (`set_data`) is never held.
//!
//! [`load`]: SessionStore::load
//! [`get`]: SessionStore::get
//! [`commit_turn`]: SessionStore::commit_turn

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    AppendReceipt, Capabilities, Expected, Lease, LoadedSession, NewMessage, Page, Result, Session,
    SessionKey, SessionPatch, SessionStore, SharedClock, Timestamp, Turn, TurnReceipt,
};

use crate::local_copies::{Copies, Held};

/// How a [`LocalSessions`] is sized and how long a copy is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSessionsConfig {
    /// Most sessions held (each with its window); as many focus documents in a
    /// [`crate::LocalFocus`].
    pub capacity: u64,
    /// How long a copy is served after it was read or written (see the module
    /// docs for what that means across instances).
    pub max_age: Duration,
    /// The store's session TTL: a copy is never served past the session's expiry.
    pub session_ttl: Duration,
    /// The store's default focus TTL ([`crate::LocalFocus`]: a document read is
    /// never served past its `updated_at` plus this).
    pub focus_ttl: Duration,
}

impl LocalSessionsConfig {
    /// The settings of `config` (`CHATSTATE_LOCAL_SESSION_*`, and the session and
    /// focus TTLs).
    pub fn from_config(config: &chatstate_core::Config) -> Self {
        LocalSessionsConfig {
            capacity: config.local_sessions.capacity,
            max_age: config.local_sessions.max_age,
            session_ttl: config.store.session_ttl,
            focus_ttl: config.store.focus_ttl,
        }
    }
}

/// What a [`LocalSessions`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalSessionStats {
    /// Reads answered from a local copy.
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
    /// Turns whose result was kept as the new copy.
    pub kept_turns: u64,
    /// Copies a turn or an update could not renew: the store's answer showed
    /// they were stale (a conflict, messages appended elsewhere), the write
    /// failed, or another write overlapped it.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    kept_turns: AtomicU64,
    dropped: AtomicU64,
}

/// A local tier of loaded sessions in front of `S` (see the module docs).
pub struct LocalSessions<S> {
    inner: S,
    copies: Copies<SessionKey, LoadedSession>,
    config: LocalSessionsConfig,
    stats: Counters,
}

impl<S> std::fmt::Debug for LocalSessions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSessions")
            .field("config", &self.config)
            .field("held", &self.copies.len())
            .finish_non_exhaustive()
    }
}

impl<S: SessionStore> LocalSessions<S> {
    /// A local tier over `inner`, on the system clock.
    pub fn new(inner: S, config: LocalSessionsConfig) -> Self {
        Self::with_clock(inner, config, chatstate_core::system_clock())
    }

    /// A local tier over `inner` whose ages and expiries run on `clock` (the
    /// store's own clock, so both agree on when a session expires).
    pub fn with_clock(inner: S, config: LocalSessionsConfig, clock: SharedClock) -> Self {
        LocalSessions {
            inner,
            copies: Copies::new(config.capacity, config.max_age, clock),
            config,
            stats: Counters::default(),
        }
    }

    /// What this layer did so far.
    pub fn stats(&self) -> LocalSessionStats {
        LocalSessionStats {
            hits: self.stats.hits.load(Ordering::Relaxed),
            misses: self.stats.misses.load(Ordering::Relaxed),
            kept_turns: self.stats.kept_turns.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The copy of `key` this layer may serve now, counted as a hit (or a miss
    /// when there is none): what `load` answers without the store, and what the
    /// facade's read batch uses for its session part.
    pub async fn held(&self, key: &SessionKey) -> Option<LoadedSession> {
        let copy = self.servable_copy(key).await;
        let counter = if copy.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        copy
    }

    /// Reads `key` from the store through `read` and keeps the session part
    /// of its answer (`session_of`; `None`: no session), unless a write through
    /// this layer overlapped the read (its answer could then lack that write:
    /// the module docs say what is kept). What `load` does on a miss, and what the facade's read batch
    /// does with its session part.
    pub async fn read_through<T, Fut>(
        &self,
        key: &SessionKey,
        read: Fut,
        session_of: impl FnOnce(&T) -> Option<&LoadedSession>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        self.copies
            .read_through(key, read, |answer| session_of(answer).cloned())
            .await
    }

    /// The copy of `key` that may be served now, uncounted.
    async fn servable_copy(&self, key: &SessionKey) -> Option<LoadedSession> {
        self.if_servable(self.copies.get(key).await)
    }

    /// Takes `key`'s copy out for a write that may change the session: nothing
    /// is served while the write runs, so a write whose caller stops waiting for
    /// it (a timeout, a dropped request) leaves no copy that may predate it.
    async fn take_copy(&self, key: &SessionKey) -> Option<LoadedSession> {
        self.if_servable(self.copies.take(key).await)
    }

    /// The session of `held` when it may be served now.
    fn if_servable(&self, held: Option<Arc<Held<LoadedSession>>>) -> Option<LoadedSession> {
        let now = self.copies.clock.now();
        held.filter(|h| self.servable(h, now))
            .map(|h| h.value.clone())
    }

    fn servable(&self, h: &Held<LoadedSession>, now: Timestamp) -> bool {
        let s = &h.value.session;
        let alive_until = s
            .last_activity
            .max(s.updated_at)
            .plus(self.config.session_ttl);
        now < h.taken.plus(self.config.max_age) && now < alive_until
    }

    /// A write the layer cannot follow: the copy is dropped before it and again
    /// after it (a read racing it may have kept one meanwhile).
    async fn blind<T>(&self, key: &SessionKey, write: impl Future<Output = T>) -> T {
        let w = self.copies.writing(key);
        self.copies.drop_copy(key).await;
        let out = write.await;
        self.copies.settle_write(key, &w, None).await;
        out
    }

    /// The copy after a turn the store committed: the record it returned and
    /// the window extended by `messages`, when the receipt shows nothing else
    /// changed the window since `base` was taken (or the turn created the session).
    fn after_turn(
        base: Option<LoadedSession>,
        messages: Vec<NewMessage>,
        receipt: &TurnReceipt,
    ) -> Option<LoadedSession> {
        let record = receipt.session.clone()?;
        let n = messages.len() as u64;
        let a = &receipt.append;
        let mut window = match base {
            _ if a.created => Vec::new(),
            Some(b) if b.session.message_count.checked_add(n) == Some(a.message_count) => {
                b.messages
            }
            _ => return None,
        };
        let first = a.message_count.checked_sub(n)?.checked_add(1)?;
        // Every `at` was set before the commit (see `commit_turn`).
        window.extend(
            messages
                .into_iter()
                .zip(first..)
                .map(|(m, seq)| m.into_message(seq, record.last_activity)),
        );
        let drop = window.len().checked_sub(a.window_len)?;
        window.drain(..drop);
        Some(LoadedSession {
            session: record,
            messages: window,
        })
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for LocalSessions<S> {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        self.blind(key, self.inner.create(key, init)).await
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        self.blind(key, self.inner.get_or_create(key)).await
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        match self.held(key).await {
            Some(l) => Ok(Some(l.session)),
            None => self.inner.get(key).await,
        }
    }

    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        self.inner.get_many(keys).await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        if let Some(l) = self.held(key).await {
            return Ok(Some(l));
        }
        self.read_through(key, self.inner.load(key), Option::as_ref)
            .await
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        self.blind(key, self.inner.append_messages(key, messages))
            .await
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let w = self.copies.writing(key);
        let base = self.take_copy(key).await;
        let result = self.inner.update(key, patch, expected).await;
        // An update changes the record only: the window still holds when no
        // message was appended since the copy was taken.
        let had_base = base.is_some();
        let copy = match (&result, base) {
            (Ok(session), Some(b)) if b.session.message_count == session.message_count => {
                Some(LoadedSession {
                    session: session.clone(),
                    messages: b.messages,
                })
            }
            _ => None,
        };
        if !self.copies.settle_write(key, &w, copy).await && had_base {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn commit_turn(&self, key: &SessionKey, mut turn: Turn) -> Result<TurnReceipt> {
        let w = self.copies.writing(key);
        let base = self.take_copy(key).await;
        // Only a turn that can leave a copy asks the store for the record: one on
        // a held session, or one that may create the session.
        let may_create = matches!(turn.expected, Expected::Any | Expected::Version(0));
        let want_record = turn.return_session;
        let keepable = base.is_some() || may_create;
        let messages = if keepable {
            let now = self.copies.clock.now();
            for m in &mut turn.messages {
                m.at.get_or_insert(now);
            }
            turn.return_session = true;
            turn.messages.clone()
        } else {
            Vec::new()
        };
        let result = self.inner.commit_turn(key, turn).await;
        let had_base = base.is_some();
        let copy = match &result {
            Ok(receipt) if keepable => Self::after_turn(base, messages, receipt),
            _ => None,
        };
        if self.copies.settle_write(key, &w, copy).await {
            self.stats.kept_turns.fetch_add(1, Ordering::Relaxed);
        } else if had_base {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let mut receipt = result?;
        if !want_record {
            receipt.session = None;
        }
        Ok(receipt)
    }

    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        self.inner.set_data(key, name, value).await
    }

    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_data_many(key, names).await
    }

    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        self.inner.delete_data(key, name).await
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        self.blind(key, self.inner.touch(key)).await
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        self.blind(key, self.inner.delete(key)).await
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        self.inner.ttl(key).await
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        self.inner.list(tenant, cursor, limit).await
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        self.inner.try_lock(key, name, lease).await
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        self.inner.extend_lock(held, lease).await
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        self.inner.release_lock(held).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
