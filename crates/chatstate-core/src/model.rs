//! The model: sessions, messages, patches, leases, focus documents and counter
//! batches — the values that cross the four traits.
//!
//! Rules that must be the same on every backend live here as functions backends call
//! ([`SessionPatch::normalize`], [`Session::apply`], [`NewMessage::check`],
//! [`truncate_chars`]), never re-written per backend.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::codec::Codec;
use crate::config::StoreSettings;
use crate::error::{Error, Result};
use crate::key::{CacheKey, CounterKey, FocusKey, SessionKey};

/// Cuts `s` to at most `max_chars` characters (Unicode scalar values), never inside
/// a character.
///
/// ```
/// use chatstate_core::model::truncate_chars;
/// assert_eq!(truncate_chars("olá mundo", 3), "olá");
/// assert_eq!(truncate_chars("👋👋👋", 2), "👋👋");
/// assert_eq!(truncate_chars("hi", 400), "hi");
/// ```
pub fn truncate_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((byte_index, _)) => &s[..byte_index],
        None => s,
    }
}

/// A rough token count for `text`: one token per four characters, rounded up.
/// Good enough for budgeting a prompt; use your model's tokenizer for billing.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// One conversation's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Whose conversation this is.
    pub key: SessionKey,
    /// A random id, new each time the session is created (again, after expiry).
    pub id: String,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When a message was last appended or the session last touched.
    pub last_activity: Timestamp,
    /// When a field of the record last changed (create, update).
    pub updated_at: Timestamp,
    /// The user's metadata, encoded with a [`Codec`].
    pub metadata: Option<Bytes>,
    /// The user's conversation context, encoded with a [`Codec`].
    pub context: Option<Bytes>,
    /// The user's stats, encoded with a [`Codec`].
    pub stats: Option<Bytes>,
    /// A summary of the conversation so far, cut to the configured length.
    pub summary: Option<String>,
    /// What the bot is focused on in this conversation.
    pub focus: Option<String>,
    /// Whether the bot is paused (a human took over, say).
    pub paused: bool,
    /// The caller's token estimate of the conversation's context.
    pub token_estimate: u64,
    /// How many messages were ever appended (the window keeps only the newest).
    pub message_count: u64,
    /// Grows by one on every create or update of the record; appends and touches
    /// leave it alone. Used by [`Expected::Version`].
    pub version: u64,
}

impl Session {
    /// A new session record at `now`, with `init` applied.
    pub fn new(key: SessionKey, id: String, now: Timestamp, init: &SessionPatch) -> Session {
        let mut s = Session {
            key,
            id,
            created_at: now,
            last_activity: now,
            updated_at: now,
            metadata: None,
            context: None,
            stats: None,
            summary: None,
            focus: None,
            paused: false,
            token_estimate: 0,
            message_count: 0,
            version: 0,
        };
        s.apply(init, now);
        s
    }

    /// Applies a (normalized) patch at `now`: changes the fields it names, sets
    /// `updated_at` and bumps `version`.
    pub fn apply(&mut self, patch: &SessionPatch, now: Timestamp) {
        patch.summary.apply_to(&mut self.summary);
        patch.focus.apply_to(&mut self.focus);
        patch.metadata.apply_to(&mut self.metadata);
        patch.context.apply_to(&mut self.context);
        patch.stats.apply_to(&mut self.stats);
        if let Some(p) = patch.paused {
            self.paused = p;
        }
        if let Some(t) = patch.token_estimate {
            self.token_estimate = t;
        }
        self.updated_at = now;
        // Saturating: `SessionState::update` refuses a record at u64::MAX first.
        self.version = self.version.saturating_add(1);
    }

    /// Decodes the context as the user's type `T`.
    pub fn context_as<T: DeserializeOwned>(&self, codec: Codec) -> Result<Option<T>> {
        self.context.as_deref().map(|b| codec.decode(b)).transpose()
    }

    /// Decodes the metadata as the user's type `T`.
    pub fn metadata_as<T: DeserializeOwned>(&self, codec: Codec) -> Result<Option<T>> {
        self.metadata
            .as_deref()
            .map(|b| codec.decode(b))
            .transpose()
    }

    /// Decodes the stats as the user's type `T`.
    pub fn stats_as<T: DeserializeOwned>(&self, codec: Codec) -> Result<Option<T>> {
        self.stats.as_deref().map(|b| codec.decode(b)).transpose()
    }
}

/// What to do with one field in a [`SessionPatch`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Change<T> {
    /// Leave the field as it is.
    #[default]
    Keep,
    /// Set the field.
    Set(T),
    /// Clear the field.
    Clear,
}

impl<T: Clone> Change<T> {
    fn apply_to(&self, field: &mut Option<T>) {
        match self {
            Change::Keep => {}
            Change::Set(v) => *field = Some(v.clone()),
            Change::Clear => *field = None,
        }
    }

    /// Whether this leaves the field alone.
    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }
}

/// A partial update of a session: only the fields it names change, so two callers
/// updating different fields never clobber each other.
///
/// ```
/// use chatstate_core::SessionPatch;
/// let patch = SessionPatch::new().summary("talked about invoices").paused(true);
/// assert!(patch.focus.is_keep());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionPatch {
    /// The summary.
    pub summary: Change<String>,
    /// The focus.
    pub focus: Change<String>,
    /// The paused flag.
    pub paused: Option<bool>,
    /// The token estimate.
    pub token_estimate: Option<u64>,
    /// The encoded metadata.
    pub metadata: Change<Bytes>,
    /// The encoded context.
    pub context: Change<Bytes>,
    /// The encoded stats.
    pub stats: Change<Bytes>,
}

impl SessionPatch {
    /// A patch that changes nothing.
    pub fn new() -> Self {
        SessionPatch::default()
    }

    /// Sets the summary (cut to the configured length when stored).
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Change::Set(summary.into());
        self
    }

    /// Clears the summary.
    pub fn clear_summary(mut self) -> Self {
        self.summary = Change::Clear;
        self
    }

    /// Sets the focus.
    pub fn focus(mut self, focus: impl Into<String>) -> Self {
        self.focus = Change::Set(focus.into());
        self
    }

    /// Clears the focus.
    pub fn clear_focus(mut self) -> Self {
        self.focus = Change::Clear;
        self
    }

    /// Sets the paused flag.
    pub fn paused(mut self, paused: bool) -> Self {
        self.paused = Some(paused);
        self
    }

    /// Sets the token estimate.
    pub fn token_estimate(mut self, tokens: u64) -> Self {
        self.token_estimate = Some(tokens);
        self
    }

    /// Sets the metadata from already-encoded bytes.
    pub fn metadata_bytes(mut self, bytes: Bytes) -> Self {
        self.metadata = Change::Set(bytes);
        self
    }

    /// Sets the context from already-encoded bytes.
    pub fn context_bytes(mut self, bytes: Bytes) -> Self {
        self.context = Change::Set(bytes);
        self
    }

    /// Sets the stats from already-encoded bytes.
    pub fn stats_bytes(mut self, bytes: Bytes) -> Self {
        self.stats = Change::Set(bytes);
        self
    }

    /// Sets the metadata to `value` encoded with `codec`.
    pub fn metadata<T: Serialize + ?Sized>(self, value: &T, codec: Codec) -> Result<Self> {
        Ok(self.metadata_bytes(codec.encode(value)?))
    }

    /// Sets the context to `value` encoded with `codec`.
    pub fn context<T: Serialize + ?Sized>(self, value: &T, codec: Codec) -> Result<Self> {
        Ok(self.context_bytes(codec.encode(value)?))
    }

    /// Sets the stats to `value` encoded with `codec`.
    pub fn stats<T: Serialize + ?Sized>(self, value: &T, codec: Codec) -> Result<Self> {
        Ok(self.stats_bytes(codec.encode(value)?))
    }

    /// Clears the metadata.
    pub fn clear_metadata(mut self) -> Self {
        self.metadata = Change::Clear;
        self
    }

    /// Clears the context.
    pub fn clear_context(mut self) -> Self {
        self.context = Change::Clear;
        self
    }

    /// Clears the stats.
    pub fn clear_stats(mut self) -> Self {
        self.stats = Change::Clear;
        self
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == SessionPatch::default()
    }

    /// The patch as every backend stores it: the summary cut to
    /// `settings.summary_max_chars` on a character boundary, and every value checked
    /// against `settings.max_value_bytes` (an [`crate::ErrorKind::InvalidInput`]
    /// error names the field).
    pub fn normalize(mut self, settings: &StoreSettings) -> Result<Self> {
        if let Change::Set(s) = &mut self.summary {
            let cut = truncate_chars(s, settings.summary_max_chars).len();
            s.truncate(cut);
        }
        let sizes = [
            ("summary", change_len(&self.summary, String::len)),
            ("focus", change_len(&self.focus, String::len)),
            ("metadata", change_len(&self.metadata, Bytes::len)),
            ("context", change_len(&self.context, Bytes::len)),
            ("stats", change_len(&self.stats, Bytes::len)),
        ];
        for (field, len) in sizes {
            settings.check_value_len(field, len)?;
        }
        Ok(self)
    }
}

fn change_len<T>(c: &Change<T>, len: impl Fn(&T) -> usize) -> usize {
    match c {
        Change::Set(v) => len(v),
        _ => 0,
    }
}

/// Who said a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The person talking to the bot.
    User,
    /// The bot or AI assistant.
    Assistant,
    /// A system or operator instruction.
    System,
    /// A tool or function result.
    Tool,
}

/// A message to append.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// Optional metadata, encoded with a [`Codec`].
    pub metadata: Option<Bytes>,
    /// When it was said; the store's clock when `None`.
    pub at: Option<Timestamp>,
}

impl NewMessage {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        NewMessage {
            role,
            content: content.into(),
            metadata: None,
            at: None,
        }
    }

    /// A message from the user.
    pub fn user(content: impl Into<String>) -> Self {
        NewMessage::new(Role::User, content)
    }

    /// A message from the assistant.
    pub fn assistant(content: impl Into<String>) -> Self {
        NewMessage::new(Role::Assistant, content)
    }

    /// The same message with encoded metadata.
    pub fn with_metadata(mut self, metadata: Bytes) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// The same message said at `at`.
    pub fn at(mut self, at: Timestamp) -> Self {
        self.at = Some(at);
        self
    }

    /// Checks the content and metadata against `settings.max_value_bytes`.
    pub fn check(&self, settings: &StoreSettings) -> Result<()> {
        settings.check_value_len("message content", self.content.len())?;
        settings.check_value_len(
            "message metadata",
            self.metadata.as_ref().map_or(0, Bytes::len),
        )
    }

    /// The stored message: stamped with `now` when it has no time, numbered `seq`.
    pub fn into_message(self, seq: u64, now: Timestamp) -> Message {
        Message {
            seq,
            role: self.role,
            content: self.content,
            metadata: self.metadata,
            at: self.at.unwrap_or(now),
        }
    }
}

/// Checks an append before any backend writes it: at least one message, each within
/// the value limit. The rule every backend applies, written once.
pub fn check_append(messages: &[NewMessage], settings: &StoreSettings) -> Result<()> {
    if messages.is_empty() {
        return Err(Error::invalid_input(
            "append_messages needs at least one message",
        ));
    }
    messages.iter().try_for_each(|m| m.check(settings))
}

/// A turn as every backend commits it: each message checked
/// ([`NewMessage::check`]; a turn may bring none) and its patch normalized
/// ([`SessionPatch::normalize`]), before anything is written.
pub fn check_turn(mut turn: Turn, settings: &StoreSettings) -> Result<Turn> {
    turn.messages.iter().try_for_each(|m| m.check(settings))?;
    turn.patch = turn.patch.normalize(settings)?;
    Ok(turn)
}

/// Most named side values ([`crate::SessionStore::set_data`]) one session holds.
pub const MAX_SESSION_DATA_NAMES: usize = 64;

/// Checks a side value write before any backend does it: the name
/// ([`crate::key::check_data_name`]) and the value within `max_value_bytes`. The rule every
/// backend applies, written once.
pub fn check_set_data(name: &str, value: &[u8], settings: &StoreSettings) -> Result<()> {
    crate::key::check_data_name(name)?;
    settings.check_value_len("session data value", value.len())
}

/// Checks a listing's page size (at least 1).
pub fn check_list_limit(limit: usize) -> Result<()> {
    if limit == 0 {
        return Err(Error::invalid_input("list limit must be at least 1"));
    }
    Ok(())
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its number in the session, from 1: the session's `message_count` once it was
    /// appended.
    pub seq: u64,
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: String,
    /// Optional metadata, encoded with a [`Codec`].
    pub metadata: Option<Bytes>,
    /// When it was said.
    pub at: Timestamp,
}

/// A session with its recent messages, read together.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadedSession {
    /// The record.
    pub session: Session,
    /// The window of recent messages, oldest first.
    pub messages: Vec<Message>,
}

impl LoadedSession {
    /// The estimated tokens of the window's messages (see [`estimate_tokens`]).
    pub fn window_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| estimate_tokens(&m.content))
            .sum()
    }
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendReceipt {
    /// The session's `message_count` after the append.
    pub message_count: u64,
    /// How many messages the window holds now.
    pub window_len: usize,
    /// Whether the append created the session.
    pub created: bool,
    /// How many messages this append pushed out of the window: the oldest ones, or
    /// some of its own when it brought more than the window holds.
    pub trimmed_messages: u64,
    /// The estimated tokens of those messages ([`estimate_tokens`] of each one's
    /// content, summed: the estimate [`LoadedSession::window_tokens`] uses), the
    /// context this append kept out of the prompts that follow.
    pub trimmed_tokens: u64,
}

/// One conversation turn's writes, committed together by
/// [`crate::SessionStore::commit_turn`]: the messages to append, the patch to apply,
/// and the version the record must be at.
///
/// ```
/// use chatstate_core::{Expected, NewMessage, SessionPatch, Turn};
/// let turn = Turn::new()
///     .message(NewMessage::user("quero a segunda via"))
///     .message(NewMessage::assistant("claro! segue o boleto"))
///     .patch(SessionPatch::new().summary("asked for a duplicate invoice"))
///     .expect(Expected::Version(3));
/// assert_eq!(turn.messages.len(), 2);
/// ```
///
/// Its `Debug` shows counts and the precondition, never the messages or the
/// patch's values.
#[derive(Clone, PartialEq)]
pub struct Turn {
    /// Appended in order, as [`crate::SessionStore::append_messages`] does.
    pub messages: Vec<NewMessage>,
    /// Applied as [`crate::SessionStore::update`] does, when it names a field; an
    /// empty patch leaves `version` and `updated_at` alone.
    pub patch: SessionPatch,
    /// The version the record must be at ([`Expected::Any`]: any, and the turn
    /// creates the session when there is none).
    pub expected: Expected,
    /// Whether the receipt carries the whole record after the turn
    /// ([`TurnReceipt::session`]); off by default, so the turn ships only counts.
    pub return_session: bool,
}

impl Default for Turn {
    fn default() -> Self {
        Turn {
            messages: Vec::new(),
            patch: SessionPatch::new(),
            expected: Expected::Any,
            return_session: false,
        }
    }
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("messages", &self.messages.len())
            .field("patch_is_empty", &self.patch.is_empty())
            .field("expected", &self.expected)
            .field("return_session", &self.return_session)
            .finish()
    }
}

impl Turn {
    /// A turn that writes nothing yet: no messages, an empty patch, any version.
    pub fn new() -> Self {
        Turn::default()
    }

    /// Adds a message to append.
    pub fn message(mut self, message: NewMessage) -> Self {
        self.messages.push(message);
        self
    }

    /// Adds messages to append, in order.
    pub fn messages(mut self, messages: impl IntoIterator<Item = NewMessage>) -> Self {
        self.messages.extend(messages);
        self
    }

    /// The patch to apply.
    pub fn patch(mut self, patch: SessionPatch) -> Self {
        self.patch = patch;
        self
    }

    /// Commits only if the record is at this version.
    pub fn expect(mut self, expected: Expected) -> Self {
        self.expected = expected;
        self
    }

    /// Asks for the whole record in the receipt.
    pub fn returning_session(mut self) -> Self {
        self.return_session = true;
        self
    }
}

/// What a turn commit did.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnReceipt {
    /// The record's `version` after the turn (the next turn's [`Expected::Version`]).
    pub version: u64,
    /// What the append did (all zero but `message_count` and `window_len` when the
    /// turn brought no messages); `created` says whether the turn created the
    /// session.
    pub append: AppendReceipt,
    /// The record after the turn, when [`Turn::return_session`] asked for it.
    pub session: Option<Session>,
}

/// What one [`crate::ReadBatch::read_batch`] reads: a session with its window,
/// some focus documents and some cache entries, in one round trip on Redis (the
/// read before the model is called).
///
/// ```
/// use chatstate_core::{BatchReads, CacheKey, FocusKey, SessionKey};
/// # fn main() -> chatstate_core::Result<()> {
/// let reads = BatchReads::new()
///     .session(SessionKey::new("acme", "whatsapp", "+5511999990000")?)
///     .focus(FocusKey::new("acme", "flow:billing")?)
///     .cache(CacheKey::new("customers", "42")?);
/// assert_eq!((reads.focus.len(), reads.cache.len()), (1, 1));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchReads {
    /// The session to load (record and window), if any.
    pub session: Option<SessionKey>,
    /// The focus documents to read.
    pub focus: Vec<FocusKey>,
    /// The cache entries to read.
    pub cache: Vec<CacheKey>,
}

impl BatchReads {
    /// Reads nothing yet.
    pub fn new() -> Self {
        BatchReads::default()
    }

    /// Loads this session (record and window).
    pub fn session(mut self, key: SessionKey) -> Self {
        self.session = Some(key);
        self
    }

    /// Adds a focus document to read.
    pub fn focus(mut self, key: FocusKey) -> Self {
        self.focus.push(key);
        self
    }

    /// Adds a cache entry to read.
    pub fn cache(mut self, key: CacheKey) -> Self {
        self.cache.push(key);
        self
    }
}

/// The answers of a [`BatchReads`], each as its own call would answer it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchRead {
    /// [`crate::SessionStore::load`] of the session (`None` when none was asked
    /// for or there is none).
    pub session: Option<LoadedSession>,
    /// [`crate::FocusStore::get`] of each focus key, in order.
    pub focus: Vec<Option<FocusDoc>>,
    /// [`crate::KvCache::get_many`] of the cache keys, in order.
    pub cache: Vec<Option<Bytes>>,
}

/// The precondition of a session update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Update whatever the version.
    Any,
    /// Update only if the record is at this version; otherwise
    /// [`crate::ErrorKind::Conflict`]. A session is created at version 1; for a
    /// turn ([`crate::SessionStore::commit_turn`]) a missing session is at version
    /// 0, so `Version(0)` commits a first turn only while there is still none.
    Version(u64),
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// This page's items.
    pub items: Vec<T>,
    /// Pass this to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A held lock on a session: proof of ownership for extend and release.
#[derive(Clone, PartialEq, Eq)]
pub struct Lease {
    /// The session the lock is on.
    pub key: SessionKey,
    /// The lock's name.
    pub name: String,
    /// The random owner token; only its holder can extend or release the lock.
    pub token: String,
    /// The fencing number: larger than that of every earlier lease of this lock.
    /// Pass it to the resource the lock guards so it can refuse a stale holder.
    pub fence: u64,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("fence", &self.fence)
            .finish()
    }
}

/// A new random id (a UUID v4 as 32 hex digits): session ids, lock tokens, batch ids.
pub fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A stored focus document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FocusDoc {
    /// Which document.
    pub key: FocusKey,
    /// The document, encoded with a [`Codec`] or raw.
    pub value: Bytes,
    /// 1 when created; grows by one on every put.
    pub version: u64,
    /// When it was last put.
    pub updated_at: Timestamp,
}

/// How a put treats an existing document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Write whatever is there.
    Overwrite,
    /// Write only if nothing is there; otherwise [`crate::ErrorKind::AlreadyExists`].
    Create,
    /// Write only if the document is at this version; otherwise (a different version,
    /// or no document) [`crate::ErrorKind::Conflict`].
    IfVersion(u64),
}

/// Checks a put against the existing document's version (`None`: no document).
/// Returns the version the put will write.
pub fn check_put(mode: PutMode, existing: Option<u64>) -> Result<u64> {
    match (mode, existing) {
        (PutMode::Create, Some(_)) => Err(Error::new(
            crate::ErrorKind::AlreadyExists,
            "the document already exists",
        )),
        (PutMode::IfVersion(want), Some(have)) if want != have => Err(Error::conflict(format!(
            "expected version {want}, the document is at version {have}"
        ))),
        (PutMode::IfVersion(want), None) => Err(Error::conflict(format!(
            "expected version {want}, there is no document"
        ))),
        (_, existing) => existing.unwrap_or(0).checked_add(1).ok_or_else(|| {
            Error::decode("stored document version is at its maximum (a corrupt record)")
        }),
    }
}

/// Counter deltas applied together, once.
///
/// The batch id makes [`crate::CounterSink::apply`] idempotent: applying the same
/// batch again (a retry after a lost reply) is recognised and counts nothing.
/// Deltas to the same counter are merged.
///
/// ```
/// use chatstate_core::{CounterBatch, CounterKey};
/// let mut batch = CounterBatch::new();
/// let messages = CounterKey::new("messages").unwrap();
/// batch.add(&messages, 2);
/// batch.add(&messages, 3);
/// assert_eq!(batch.deltas().collect::<Vec<_>>(), vec![(&messages, 5)]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterBatch {
    id: String,
    deltas: BTreeMap<CounterKey, i64>,
}

impl Default for CounterBatch {
    fn default() -> Self {
        CounterBatch::new()
    }
}

impl CounterBatch {
    /// An empty batch with a new random id.
    pub fn new() -> Self {
        CounterBatch::with_id(random_id())
    }

    /// An empty batch with a given id (to replay a batch exactly).
    pub fn with_id(id: impl Into<String>) -> Self {
        CounterBatch {
            id: id.into(),
            deltas: BTreeMap::new(),
        }
    }

    /// The batch id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds `delta` to `key`'s pending delta, saturating at the ends of i64. Use
    /// [`CounterBatch::try_add`] to refuse an overflow instead (the batched counter
    /// layer does; a saturated delta would count less than was added).
    pub fn add(&mut self, key: &CounterKey, delta: i64) {
        let d = self.deltas.entry(key.clone()).or_insert(0);
        *d = d.saturating_add(delta);
    }

    /// Adds `delta` to `key`'s pending delta, or an [`crate::ErrorKind::InvalidInput`]
    /// error, with the batch unchanged, when the sum would overflow an i64 (the
    /// caller then keeps the delta elsewhere, e.g. in another batch).
    pub fn try_add(&mut self, key: &CounterKey, delta: i64) -> Result<()> {
        match self.deltas.get_mut(key) {
            Some(d) => *d = crate::transition::counter_add(key, *d, delta)?,
            None => {
                self.deltas.insert(key.clone(), delta);
            }
        }
        Ok(())
    }

    /// `key`'s pending delta in this batch, if the batch touches it.
    pub fn get(&self, key: &CounterKey) -> Option<i64> {
        self.deltas.get(key).copied()
    }

    /// The merged deltas, by counter.
    pub fn deltas(&self) -> impl Iterator<Item = (&CounterKey, i64)> {
        self.deltas.iter().map(|(k, d)| (k, *d))
    }

    /// How many counters the batch touches.
    pub fn len(&self) -> usize {
        self.deltas.len()
    }

    /// Whether the batch touches no counter.
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
    }
}

/// What applying a [`CounterBatch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The deltas were added.
    Applied,
    /// A batch with this id was applied before; nothing was added.
    Duplicate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_try_add_refuses_overflow_and_leaves_the_batch_unchanged() {
        let (a, b) = (CounterKey::new("a").unwrap(), CounterKey::new("b").unwrap());
        let mut batch = CounterBatch::new();
        batch.try_add(&a, i64::MAX - 1).unwrap();
        batch.try_add(&a, 1).unwrap();
        let err = batch.try_add(&a, 1).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert_eq!(
            batch.get(&a),
            Some(i64::MAX),
            "unchanged by the refused add"
        );
        batch.try_add(&b, i64::MIN).unwrap();
        assert!(batch.try_add(&b, -1).is_err());
        assert_eq!((batch.get(&b), batch.len()), (Some(i64::MIN), 2));
        assert_eq!(batch.get(&CounterKey::new("c").unwrap()), None);
    }

    #[test]
    fn truncate_never_splits_a_char() {
        let s = "a😀b";
        assert_eq!(truncate_chars(s, 0), "");
        assert_eq!(truncate_chars(s, 1), "a");
        assert_eq!(truncate_chars(s, 2), "a😀");
        assert_eq!(truncate_chars(s, 3), s);
    }

    #[test]
    fn normalize_cuts_summary_and_checks_sizes() {
        let settings = StoreSettings {
            summary_max_chars: 3,
            max_value_bytes: 8,
            ..StoreSettings::default()
        };
        let p = SessionPatch::new()
            .summary("ãããã")
            .normalize(&settings)
            .unwrap();
        assert_eq!(p.summary, Change::Set("ããã".to_string()));
        let err = SessionPatch::new()
            .context_bytes(Bytes::from(vec![0; 9]))
            .normalize(&settings)
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert!(err.message().contains("context"), "{err}");
    }

    #[test]
    fn apply_changes_only_named_fields_and_bumps_version() {
        let key = SessionKey::new("t", "c", "u").unwrap();
        let mut s = Session::new(
            key,
            "id".into(),
            Timestamp(1),
            &SessionPatch::new().focus("x"),
        );
        assert_eq!(s.version, 1);
        s.apply(&SessionPatch::new().summary("sum"), Timestamp(2));
        assert_eq!(s.focus.as_deref(), Some("x"));
        assert_eq!(s.summary.as_deref(), Some("sum"));
        assert_eq!((s.version, s.updated_at), (2, Timestamp(2)));
        s.apply(&SessionPatch::new().clear_focus(), Timestamp(3));
        assert_eq!(s.focus, None);
    }

    #[test]
    fn put_modes() {
        assert_eq!(check_put(PutMode::Overwrite, None).unwrap(), 1);
        assert_eq!(check_put(PutMode::Overwrite, Some(4)).unwrap(), 5);
        assert_eq!(check_put(PutMode::Create, None).unwrap(), 1);
        assert_eq!(
            check_put(PutMode::Create, Some(1)).unwrap_err().kind(),
            crate::ErrorKind::AlreadyExists
        );
        assert_eq!(check_put(PutMode::IfVersion(2), Some(2)).unwrap(), 3);
        assert_eq!(
            check_put(PutMode::IfVersion(1), Some(2))
                .unwrap_err()
                .kind(),
            crate::ErrorKind::Conflict
        );
        assert_eq!(
            check_put(PutMode::IfVersion(1), None).unwrap_err().kind(),
            crate::ErrorKind::Conflict
        );
    }

    #[test]
    fn lease_debug_hides_token() {
        let lease = Lease {
            key: SessionKey::new("t", "c", "u").unwrap(),
            name: "reminder".into(),
            token: "s3cret-token".into(),
            fence: 7,
        };
        let dbg = format!("{lease:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("fence: 7"));
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
