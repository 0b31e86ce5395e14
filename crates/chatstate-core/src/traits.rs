//! The four store traits, and [`ReplyStream`] for streamed replies. Each is object-safe (`Arc<dyn SessionStore>` works),
//! `Send + Sync`, and small: conveniences live in [`crate::ext`].
//!
//! The doc of each method is the contract every backend keeps; the conformance suite
//! (`chatstate-conformance`) checks it case by case.
//!
//! Several traits share method names (`get`, `delete`, `list`, `ttl`). On a type that
//! implements more than one (like `chatstate_memory::MemoryStore`) call them through
//! the trait — `KvCache::get(&store, &key)` — or hold each store as its own
//! `Arc<dyn Trait>`, which is what apps usually do anyway.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::ext::{Loader, ManyLoader};
use crate::key::{Bucket, CacheKey, CounterKey, FocusKey, Labels, RunId, SessionKey};
use crate::model::{
    AppendReceipt, BatchOutcome, CounterBatch, Expected, FocusDoc, Lease, LoadedSession,
    NewMessage, Page, PutMode, Session, SessionPatch, Turn, TurnReceipt,
};
use crate::model::{BatchRead, BatchReads};
use crate::reply::{ReplyEvents, RunRead, RunStatus};

/// What a store can do, where backends differ, reported by the store itself at run
/// time (every trait has a `capabilities()` method), so the conformance suite and
/// tools ask the store rather than keep a list. Wrappers (layers) report their inner
/// store's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data outlives the store object: a store opened again on the same place (a
    /// restarted process) sees what was written.
    pub persistent: bool,
}

impl Capabilities {
    /// Nothing claimed: the trait methods' default, for a store that does not say.
    pub const NONE: Capabilities = Capabilities { persistent: false };

    /// Data outlives the store object (and the process).
    pub const PERSISTENT: Capabilities = Capabilities { persistent: true };

    /// What four stores used together can do: what each of them reports.
    pub fn of_all(
        sessions: &dyn SessionStore,
        focus: &dyn FocusStore,
        counters: &dyn CounterSink,
        cache: &dyn KvCache,
    ) -> Capabilities {
        sessions
            .capabilities()
            .and(focus.capabilities())
            .and(counters.capabilities())
            .and(cache.capabilities())
    }

    /// What both `self` and `other` can do (for a set of stores used together).
    pub fn and(self, other: Capabilities) -> Capabilities {
        Capabilities {
            persistent: self.persistent && other.persistent,
        }
    }
}

/// Conversations: a record plus a sliding window of recent messages per
/// [`SessionKey`], with a sliding TTL, and per-session locks.
///
/// **TTL.** Every write to a session (create, append, update, touch) sets the TTL of
/// all its parts back to the configured session TTL; reads do not. When it runs out
/// the whole session — record and messages — is gone at once, on every backend.
/// Locks have their own leases and are not part of the session's data.
///
/// **Side data.** A session also holds up to [`MAX_SESSION_DATA_NAMES`](crate::model::MAX_SESSION_DATA_NAMES) named byte
/// values beside its record ([`set_data`](SessionStore::set_data)): a thread id,
/// tool results, anything that belongs to the conversation and should live and die
/// with it. Each is read and written on its own, in one round trip, without a
/// read-modify-write of the record; [`get`](SessionStore::get) and
/// [`load`](SessionStore::load) neither return nor read them.
///
/// **Concurrency.** Every method is atomic. Appends from many tasks or processes lose
/// nothing; [`SessionPatch`] updates change only the fields they name; an update with
/// [`Expected::Version`] fails with `Conflict` instead of overwriting a concurrent
/// change.
///
/// ```
/// # async fn demo(store: &dyn chatstate_core::SessionStore) -> chatstate_core::Result<()> {
/// use chatstate_core::{Expected, NewMessage, SessionKey, SessionPatch};
/// let key = SessionKey::new("acme", "whatsapp", "+5511999990000")?;
/// store.append_messages(&key, vec![NewMessage::user("oi"), NewMessage::assistant("olá!")]).await?;
/// let loaded = store.load(&key).await?.expect("just written");
/// store
///     .update(&key, SessionPatch::new().summary("greeted"), Expected::Version(loaded.session.version))
///     .await?;
/// # Ok(()) }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates a session with `init` applied. `AlreadyExists` if a live session has
    /// this key.
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session>;

    /// The live session, or a new empty one created now. Counts as a write (refreshes
    /// the TTL) only when it creates.
    async fn get_or_create(&self, key: &SessionKey) -> Result<Session>;

    /// The live session's record, or `None`.
    async fn get(&self, key: &SessionKey) -> Result<Option<Session>>;

    /// The records of many sessions, in the order of `keys` (`None` for missing ones).
    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>>;

    /// The record and the window of recent messages (oldest first), read together.
    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>>;

    /// Appends messages in order, atomically: keeps only the newest `window_size`,
    /// adds to `message_count`, sets `last_activity`, refreshes the TTL. Creates the
    /// session when there is none. `InvalidInput` (and nothing written) when a
    /// message exceeds the value limit. The receipt says how many messages the
    /// window trimmed and their estimated tokens
    /// ([`AppendReceipt::trimmed_tokens`]), in the same step.
    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt>;

    /// Changes the fields `patch` names (the summary cut to the configured length),
    /// bumps `version`, refreshes the TTL, and returns the new record. `NotFound`
    /// when there is no session; `Conflict` when `expected` is a version the record
    /// is not at.
    ///
    /// A caller that needs only the new version commits
    /// `Turn::new().patch(patch).expect(Expected::Version(v))` instead
    /// ([`commit_turn`](SessionStore::commit_turn)) with `v` at least 1: the same
    /// check and patch in one step, a receipt with the version and no record to
    /// ship back (it also sets `last_activity`, as every turn does). Unlike
    /// `update`, a turn with [`Expected::Any`] or `Version(0)` creates a missing
    /// session instead of answering `NotFound`.
    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session>;

    /// Commits a conversation turn in one atomic step (one round trip on Redis):
    /// applies `turn.patch` when it names a field (bumping `version`, as
    /// [`update`](SessionStore::update) does), appends `turn.messages` (as
    /// [`append_messages`](SessionStore::append_messages) does: numbered, the window
    /// trimmed, `last_activity` set) and refreshes the TTL, all or nothing.
    ///
    /// With [`Expected::Any`] a missing session is created, with the patch as its
    /// init. A missing session counts as version 0: with `Expected::Version(0)` it
    /// is created likewise, and a session that exists (at version 1 or more) is a
    /// `Conflict` — so of two instances racing to take the first turn of a
    /// conversation exactly one lands. With any other [`Expected::Version`],
    /// `NotFound` when there is no session and `Conflict` when the record is at
    /// another version; either way nothing is written. `InvalidInput`, with nothing written, for a message or patch value
    /// over `max_value_bytes`. The receipt has the new version and the append's
    /// counts; the record only when [`Turn::return_session`] asks for it.
    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt>;

    /// Sets side value `name` of the live session to `value` (replacing any value of
    /// that name) and refreshes the TTL of every part, as every write does. The
    /// value lives and dies with the session: it expires with it, is deleted with
    /// it, and a session created again after either starts with no side data.
    /// Leaves `version`, `updated_at` and `last_activity` alone, so an update with
    /// [`Expected::Version`] never conflicts with it.
    ///
    /// `NotFound` when there is no live session (side data never creates one:
    /// [`append_messages`](SessionStore::append_messages) or
    /// [`get_or_create`](SessionStore::get_or_create) do). `InvalidInput`, with
    /// nothing written, for an empty name or one over [`crate::key::MAX_ID_BYTES`]
    /// bytes, a value over `max_value_bytes`, or a new name when the session holds
    /// [`MAX_SESSION_DATA_NAMES`](crate::model::MAX_SESSION_DATA_NAMES) already.
    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()>;

    /// The live session's side values `names`, read together, in the order of
    /// `names` (`None` for a missing one; all `None` when there is no session).
    /// Does not refresh the TTL. One name: [`crate::SessionStoreExt::get_data`].
    async fn get_data_many(&self, key: &SessionKey, names: &[String])
    -> Result<Vec<Option<Bytes>>>;

    /// Deletes side value `name`; `true` when it existed. Refreshes the TTL of every
    /// part when the session exists; `false` and nothing written when it does not.
    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool>;

    /// Sets `last_activity` and refreshes the TTL. `false` when there is no session.
    async fn touch(&self, key: &SessionKey) -> Result<bool>;

    /// Deletes the record, the messages and the side data. `false` when there was no
    /// session.
    async fn delete(&self, key: &SessionKey) -> Result<bool>;

    /// The time the session has left, or `None` when there is no session.
    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>>;

    /// A page of at most `limit` (at least 1) live sessions of `tenant`. Start with
    /// `cursor: None`, then pass the page's `next_cursor` until it is `None`. Every
    /// session live for the whole listing appears exactly once; the order is the
    /// backend's.
    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>>;

    /// Takes the lock `name` on the session for `lease`, or `None` when someone holds
    /// it. The lease's fencing number is larger than that of every earlier lease of
    /// the same lock: the store remembers a lock's fence for at least the lease plus
    /// the session TTL after every acquire, extend and release
    /// ([`crate::StoreSettings::fence_retention`]), so this holds even for a lease
    /// longer than the session TTL. The session need not exist.
    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>>;

    /// Sets the lock's remaining lease to `lease`, if `held` still holds it. `false`
    /// when the lease expired or someone else holds the lock.
    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool>;

    /// Releases the lock if `held` still holds it. `false` when the lease expired or
    /// someone else holds the lock (which is then left alone).
    async fn release_lock(&self, held: &Lease) -> Result<bool>;

    /// What this store can do ([`Capabilities::NONE`] unless the store says).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// Small named documents with a TTL and a version: what the bot is focused on per
/// file, flow or tenant.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait FocusStore: Send + Sync {
    /// Writes the document under `mode` with `ttl` (the configured focus TTL when
    /// `None`, reset on every put) and returns it as stored. Versions start at 1 and
    /// grow by one per put; a document put again after a delete or expiry starts at
    /// 1 again. `AlreadyExists` / `Conflict` when the mode's
    /// precondition fails (see [`PutMode`]); `InvalidInput` for an oversize value.
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc>;

    /// The live document, or `None`.
    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>>;

    /// Deletes the document. `false` when there was none.
    async fn delete(&self, key: &FocusKey) -> Result<bool>;

    /// The live documents of `scope`, sorted by name.
    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>>;

    /// What this store can do ([`Capabilities::NONE`] unless the store says).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// Named counters with labels and optional day/hour buckets.
///
/// Counters never expire; delete them when they are no longer wanted. For many
/// cheap increments, wrap a sink in the batched layer, which calls [`apply`] once
/// per interval.
///
/// [`apply`]: CounterSink::apply
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CounterSink: Send + Sync {
    /// Adds `delta` (negative to subtract) and returns the new value. A counter that
    /// does not exist starts at 0. Every backend holds all of i64, exactly:
    /// `InvalidInput` (and nothing changed) when the result would leave it, or when
    /// the key's bucket is out of range ([`crate::Bucket::check`]).
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64>;

    /// Adds every delta of `batch` atomically, once: a batch whose id was applied
    /// within the configured retention is a `Duplicate` and adds nothing. A refused
    /// batch — a delta that would leave the i64 range (`InvalidInput`), a stored
    /// value that is not an integer (`Decode`) or not a counter (`WrongType`) — adds
    /// nothing and records nothing: the same id applies later once the cause is gone.
    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome>;

    /// The counter's value (0 when it does not exist).
    async fn get(&self, key: &CounterKey) -> Result<i64>;

    /// The values of many counters, in the order of `keys`.
    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>>;

    /// Every counter called `name` in `bucket` (unbucketed ones for `None`), with its
    /// labels and value, sorted by labels. A counter stays listed once added to,
    /// even at 0, until deleted.
    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>>;

    /// Deletes the counter. `false` when it did not exist.
    async fn delete(&self, key: &CounterKey) -> Result<bool>;

    /// What this store can do ([`Capabilities::NONE`] unless the store says).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// A byte cache of namespaced keys with TTLs: the customers, contacts and slow
/// lookups worth keeping. Typed access goes through [`crate::ext::KvCacheExt`].
///
/// Every entry has a TTL: the configured cache TTL when none is given.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait KvCache: Send + Sync {
    /// The live value, or `None`.
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>>;

    /// The live values of many keys, in the order of `keys`.
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>>;

    /// Stores `value` for `ttl` (the configured cache TTL when `None`).
    /// `InvalidInput` for an oversize value.
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()>;

    /// Stores many values, all with the same `ttl`: an oversize value fails the whole
    /// call and stores nothing. A key given twice keeps its last value. An empty
    /// value is a value (read back as `Some` of empty bytes).
    ///
    /// Provided as [`KvCache::set_many_with_ttls`] with `ttl` for every entry; a
    /// backend overrides it only where one TTL for all is cheaper to send.
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.set_many_with_ttls(entries.into_iter().map(|(k, v)| (k, v, ttl)).collect())
            .await
            .map_err(|e| e.with_operation("set_many"))
    }

    /// Stores many values, each for its own TTL (the configured cache TTL for
    /// `None`), in one step — one round trip on Redis, as [`KvCache::set_many`],
    /// with the same rules: an oversize value or a TTL out of range fails the whole
    /// call and stores nothing; a key given twice keeps its last value and TTL.
    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()>;

    /// Deletes the entry. `false` when there was none.
    async fn delete(&self, key: &CacheKey) -> Result<bool>;

    /// Deletes many entries; returns how many existed (a key given twice counts
    /// once, like Redis `DEL`).
    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64>;

    /// Whether a live entry exists.
    async fn exists(&self, key: &CacheKey) -> Result<bool>;

    /// Sets the entry's TTL to `ttl`. `false` when there is no entry.
    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool>;

    /// The entry's remaining TTL, or `None` when there is no entry.
    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>>;

    /// Deletes every entry of `namespace` whose key starts with `key_prefix` (all of
    /// the namespace for `""`); returns how many. Other namespaces are never touched,
    /// even ones whose name starts with `namespace` (`users` vs `users:archive`).
    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64>;

    /// The value of `key`, or what `load` returns, stored for `ttl` and returned:
    /// the bytes under the typed [`KvCacheExt::get_or_load`](crate::KvCacheExt::get_or_load),
    /// which is what apps call. `Ok(None)` from the loader is "not found": returned,
    /// never stored. A loader error is returned and nothing is stored.
    ///
    /// The provided version reads, loads on a miss and writes back, degrading as the
    /// [`ext`](crate::ext) module docs say. A cache with a local tier overrides it
    /// (`chatstate_layers::TieredCache`: one loader per key per process for
    /// concurrent misses, answers from the local tier), and every wrapper forwards
    /// it, so the typed call gets that through an `Arc<dyn KvCache>` too.
    async fn get_or_load_raw<'a>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: Loader<'a>,
    ) -> Result<Option<Bytes>> {
        crate::ext::plain_get_or_load(self, key, ttl, load).await
    }

    /// The values of `keys` (in order), loading the missing ones: the bytes under
    /// the typed [`KvCacheExt::get_many_or_load`](crate::KvCacheExt::get_many_or_load).
    /// `load` gets the missing keys (each once), possibly in several batches, and
    /// returns the values it found; what it does not return stays `None`.
    ///
    /// The provided version is one `get_many`, one `load` call with every missing
    /// key, one `set_many` (degrading as the [`ext`](crate::ext) module docs say);
    /// a cache with a local tier overrides it, and every wrapper forwards it.
    async fn get_many_or_load_raw<'a>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        load: ManyLoader<'a>,
    ) -> Result<Vec<Option<Bytes>>> {
        crate::ext::plain_get_many_or_load(self, keys, ttl, load).await
    }

    /// What this store can do ([`Capabilities::NONE`] unless the store says).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// Streamed replies across instances: one instance appends a model's reply chunk by
/// chunk (a *run*), any instance reads it from an offset or follows it live.
///
/// The promises below are what the conformance suite's `reply_*` cases check.
///
/// - **Offsets** are chunk indexes: the first chunk of a run is 0, the next 1, in
///   the order the appends were acknowledged. A chunk is never changed once written.
/// - **TTL.** A run lives for the TTL given to [`start`](ReplyStream::start) (the
///   configured reply TTL, `CHATSTATE_STREAM_TTL_SECONDS`, default 1 h, when
///   `None`), counted from the start; then the whole run — chunks and status — is
///   gone at once, and every operation on it is `NotFound`.
/// - **Limits.** A chunk is non-empty and at most `max_value_bytes`; a run holds at
///   most `max_run_bytes` (`CHATSTATE_STREAM_MAX_RUN_BYTES`) in total. An append
///   over a limit is `InvalidInput` and writes nothing; the run stays open.
/// - **Finish.** A run ends once, with a [`RunStatus`]; appends and finishes after
///   that are `Conflict` (a producer whose run was cancelled learns it on its next
///   append). Every follower sees the finish after the last chunk.
/// - **Follow** yields every chunk from the offset on, in order, exactly once,
///   waiting for new ones, then [`ReplyEvent::Finished`](crate::ReplyEvent::Finished), and ends. It ends with a
///   `Timeout` error when nothing new came for `idle_timeout`, and with `NotFound`
///   when the run does not exist (or expired). After a dropped connection or a
///   restarted reader, following again from the offset after the last chunk seen
///   neither loses nor repeats a chunk.
///
/// For many tiny chunks (1–5 characters per token), wrap the store in the
/// coalescing writer of `chatstate-layers`, which costs one write per flush instead
/// of one per token.
///
/// ```
/// # async fn demo(replies: &dyn chatstate_core::ReplyStream) -> chatstate_core::Result<()> {
/// use std::time::Duration;
/// use chatstate_core::{ReplyEvent, RunId, RunStatus};
/// use futures_util::StreamExt;
/// let run = RunId::new("reply-42")?;
/// replies.start(&run, None).await?;
/// replies.append(&run, "Olá").await?;
/// replies.append(&run, ", mundo").await?;
/// replies.finish(&run, RunStatus::Done).await?;
/// // Any instance, any time within the TTL:
/// let mut events = replies.follow(&run, 0, Duration::from_secs(30));
/// let mut text = String::new();
/// while let Some(event) = events.next().await {
///     match event? {
///         ReplyEvent::Chunk(chunk) => text.push_str(&chunk.text),
///         ReplyEvent::Finished(status) => assert_eq!(status, RunStatus::Done),
///     }
/// }
/// assert_eq!(text, "Olá, mundo");
/// # Ok(()) }
/// ```
#[async_trait]
pub trait ReplyStream: Send + Sync {
    /// Starts run `run`, open and empty, for `ttl` (the configured reply TTL when
    /// `None`). `AlreadyExists` when a live run has this id.
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()>;

    /// Appends `text` as the run's next chunk. `NotFound` when there is no live
    /// run, `Conflict` when it has ended, `InvalidInput` for an empty chunk or one
    /// over a limit (see the trait's docs); nothing is written then.
    async fn append(&self, run: &RunId, text: &str) -> Result<()>;

    /// Ends the run with `status`. `NotFound` when there is no live run,
    /// `Conflict` when it has already ended.
    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()>;

    /// The run's chunks from offset `from` on (none when `from` is past the end)
    /// and its status, read together. `NotFound` when there is no live run.
    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead>;

    /// The run's events from offset `from` on, live: every chunk once and in
    /// order, then the finish (see the trait's docs). Lazy: nothing is read
    /// before the stream is polled.
    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents;

    /// What this store can do ([`Capabilities::NONE`] unless the store says).
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
}

/// The read before the model is called, in one step: a session with its window,
/// some focus documents and some cache entries ([`BatchReads`]).
///
/// On Redis one round trip on one server or Sentinel (one pipeline: the session's
/// `HGETALL` and `LRANGE` in a `MULTI`/`EXEC`, so the record and the window are
/// read together, then the focus documents and the cache entries); on a Cluster
/// one round trip per slot the keys fall in, sent concurrently. Each part answers
/// exactly as its own call would (`load`, `FocusStore::get`, `KvCache::get_many`),
/// errors included; reads refresh no TTL. The parts are not read at one instant
/// (only the session's record and window are).
///
/// ```
/// # async fn demo(stores: &dyn chatstate_core::ReadBatch) -> chatstate_core::Result<()> {
/// use chatstate_core::{BatchReads, CacheKey, SessionKey};
/// let read = stores
///     .read_batch(&BatchReads::new()
///         .session(SessionKey::new("acme", "whatsapp", "+5511999990000")?)
///         .cache(CacheKey::new("customers", "42")?))
///     .await?;
/// let history = read.session.map(|s| s.messages).unwrap_or_default();
/// # let _ = history; Ok(()) }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ReadBatch: Send + Sync {
    /// Reads `reads` together (see the trait's docs).
    async fn read_batch(&self, reads: &BatchReads) -> Result<BatchRead>;
}

/// A [`ReadBatch`] made of one call per part, for stores whose calls cost no round
/// trip (memory, file): `load`, then each `FocusStore::get`, then one `get_many`.
pub async fn read_batch_by_calls<S>(store: &S, reads: &BatchReads) -> Result<BatchRead>
where
    S: SessionStore + FocusStore + KvCache + ?Sized,
{
    let session = match &reads.session {
        Some(key) => SessionStore::load(store, key).await?,
        None => None,
    };
    let mut focus = Vec::with_capacity(reads.focus.len());
    for key in &reads.focus {
        focus.push(FocusStore::get(store, key).await?);
    }
    let cache = if reads.cache.is_empty() {
        Vec::new()
    } else {
        KvCache::get_many(store, &reads.cache).await?
    };
    Ok(BatchRead {
        session,
        focus,
        cache,
    })
}
