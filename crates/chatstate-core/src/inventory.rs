//! Every record a backend holds, enumerated and restored exactly: what export,
//! import and migrate between backends are built on (`chatstate::migrate`).
//!
//! [`Inventory`] is a trait of its own, beside the four store traits, so neither
//! those traits nor the layers change: a backend implements it once (the memory,
//! file and Redis stores do, in their `export.rs`), and tools take a
//! `&dyn Inventory`.
//!
//! ## What a record is
//!
//! | kind | [`Record`] | holds |
//! | --- | --- | --- |
//! | `session` | [`SessionRecord`] | the whole [`Session`] (id, version, `message_count`, timestamps, every field), the message window, the side data, the remaining TTL |
//! | `focus` | [`FocusRecord`] | the [`FocusDoc`] (value, version, `updated_at`), the remaining TTL |
//! | `counter` | [`CounterRecord`] | the counter's key (name, labels, bucket) and exact value |
//! | `cache` | [`CacheRecord`] | the entry's key, bytes, remaining TTL and aliases |
//!
//! Not records, on purpose: session **locks and their fencing numbers** (a lease is
//! held by a process of the old deployment; copying it would hand the new backend a
//! holder that no longer runs, and a fence restarted at a lower number than a stale
//! holder's is exactly what fencing forbids, so locks are taken afresh on the new
//! backend — fences there start above whatever that backend handed out before);
//! **applied counter batch ids** (they guard a retry against the backend that
//! applied the batch; the counters' values already include those batches, and a
//! batch retried against the new backend after a migration is new there); expired
//! records.
//!
//! ## Enumeration
//!
//! [`Inventory::scan`] pages through one kind with an opaque cursor, like
//! [`crate::SessionStore::list`]: start with `None`, pass each page's `next_cursor`
//! until it is `None`. Every record live for the whole walk appears (a record
//! written or expiring during the walk may or may not); a page holds at most
//! `limit` records (it may hold fewer, even none, before the end). Records the
//! backend cannot read (a corrupt file) are listed in [`InventoryPage::unreadable`]
//! instead of stopping the walk. On Redis the walk is `SCAN … MATCH <prefix>…`,
//! never `KEYS`; SCAN may return a key twice when the keyspace is resized during the
//! walk, which a restore (idempotent) absorbs.
//!
//! ## Restore: exact state, idempotent, a conflict rule
//!
//! [`Inventory::restore`] writes a record's exact state — version,
//! `message_count`, timestamps, messages, TTL (from now); a counter's exact value,
//! never an `add`, so a re-run never counts twice. What it does to an existing
//! target record is decided by one rule per kind, written here as pure functions
//! every backend calls ([`decide_session`], [`decide_focus`], [`decide_value`]; the
//! Redis scripts are the same rules in Lua):
//!
//! - **sessions**: when the target holds another conversation of the key (another
//!   `id`: the session expired or was deleted and a new one began), the one
//!   created later is kept (the target's: `SkippedNewer`; the record's, or on a
//!   tie of `created_at`: `Written`),
//!   since versions of two conversations do not compare. Otherwise the target is
//!   *newer* when `(version, message_count, last_activity)` is greater than the
//!   record's (compared in that order: updates
//!   bump the version, appends the count, touches the activity); then it is left
//!   alone and the outcome is [`Restored::SkippedNewer`]. A target equal to the
//!   record in every stored field, message and side value is [`Restored::Unchanged`] (its TTL
//!   left as it is). Anything else is overwritten: [`Restored::Written`].
//! - **focus documents**: the same with `(version, updated_at)`.
//! - **counters and cache entries** have no version: equal value is `Unchanged`,
//!   anything else is set to the record's value (the source is the truth — run a
//!   migration before traffic reaches the target).
//!
//! A record is checked against the target's limits first ([`Record::check`]); a
//! refused record writes nothing. [`RestoreMode::DryRun`] decides without writing.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::StoreSettings;
use crate::error::{Error, Result};
use crate::key::{CacheKey, CounterKey, FocusKey, SessionKey};
use crate::model::{FocusDoc, Message, Session};
use crate::transition::SessionState;

/// The kinds of record an [`Inventory`] holds, in the order tools walk them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    /// Sessions with their message windows.
    Session,
    /// Focus documents.
    Focus,
    /// Counters.
    Counter,
    /// Cache entries.
    Cache,
}

impl RecordKind {
    /// Every kind, in walking order.
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Session,
        RecordKind::Focus,
        RecordKind::Counter,
        RecordKind::Cache,
    ];

    /// The lowercase name used in export files (`session`, `focus`, `counter`,
    /// `cache`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Session => "session",
            RecordKind::Focus => "focus",
            RecordKind::Counter => "counter",
            RecordKind::Cache => "cache",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RecordKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::invalid_input("unknown record kind"))
    }
}

/// A session as a backend holds it: the record, the window, the time it has left.
#[derive(Clone, PartialEq)]
pub struct SessionRecord {
    /// The whole record (key, id, version, counts, timestamps, fields).
    pub session: Session,
    /// The message window, oldest first.
    pub messages: Vec<Message>,
    /// The side data ([`crate::SessionStore::set_data`]), by name.
    pub data: BTreeMap<String, Bytes>,
    /// The remaining TTL (a restore sets it from the time it writes).
    pub ttl: Duration,
}

/// A focus document and the time it has left.
#[derive(Clone, PartialEq)]
pub struct FocusRecord {
    /// The document (key, value, version, `updated_at`).
    pub doc: FocusDoc,
    /// The remaining TTL.
    pub ttl: Duration,
}

/// A counter and its exact value. Counters never expire.
#[derive(Clone, PartialEq, Eq)]
pub struct CounterRecord {
    /// Name, labels and bucket.
    pub key: CounterKey,
    /// The value.
    pub value: i64,
}

/// A cache entry and the time it has left.
#[derive(Clone, PartialEq)]
pub struct CacheRecord {
    /// Namespace and key.
    pub key: CacheKey,
    /// The bytes as stored.
    pub value: Bytes,
    /// The remaining TTL.
    pub ttl: Duration,
    /// The entry's aliases ([`crate::KvCache::set_with_aliases`]), sorted; a
    /// restore gives them back with the entry, for the entry's TTL.
    pub aliases: Vec<CacheKey>,
}

/// One record of any kind.
// Unboxed on purpose: records travel a page at a time and most pages are sessions,
// so boxing would add an allocation per record to save space on the rare others.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq)]
pub enum Record {
    /// A session with its window.
    Session(SessionRecord),
    /// A focus document.
    Focus(FocusRecord),
    /// A counter.
    Counter(CounterRecord),
    /// A cache entry.
    Cache(CacheRecord),
}

/// Which record: the key of any kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    /// A session.
    Session(SessionKey),
    /// A focus document.
    Focus(FocusKey),
    /// A counter.
    Counter(CounterKey),
    /// A cache entry.
    Cache(CacheKey),
}

impl RecordKey {
    /// Its kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordKey::Session(_) => RecordKind::Session,
            RecordKey::Focus(_) => RecordKind::Focus,
            RecordKey::Counter(_) => RecordKind::Counter,
            RecordKey::Cache(_) => RecordKind::Cache,
        }
    }
}

impl fmt::Display for RecordKey {
    /// `kind key`, the key in its escaped form (ids, never values).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordKey::Session(k) => write!(f, "session {k}"),
            RecordKey::Focus(k) => write!(f, "focus {k}"),
            RecordKey::Counter(k) => write!(f, "counter {k}"),
            RecordKey::Cache(k) => write!(f, "cache {k}"),
        }
    }
}

impl Record {
    /// Its kind.
    pub fn kind(&self) -> RecordKind {
        self.key().kind()
    }

    /// Its key.
    pub fn key(&self) -> RecordKey {
        match self {
            Record::Session(r) => RecordKey::Session(r.session.key.clone()),
            Record::Focus(r) => RecordKey::Focus(r.doc.key.clone()),
            Record::Counter(r) => RecordKey::Counter(r.key.clone()),
            Record::Cache(r) => RecordKey::Cache(r.key.clone()),
        }
    }

    /// The remaining TTL (`None` for a counter, which never expires).
    pub fn ttl(&self) -> Option<Duration> {
        match self {
            Record::Session(r) => Some(r.ttl),
            Record::Focus(r) => Some(r.ttl),
            Record::Counter(_) => None,
            Record::Cache(r) => Some(r.ttl),
        }
    }

    /// The record with its TTL replaced (counters have none).
    pub fn with_ttl(mut self, ttl: Duration) -> Record {
        match &mut self {
            Record::Session(r) => r.ttl = ttl,
            Record::Focus(r) => r.ttl = ttl,
            Record::Counter(_) => {}
            Record::Cache(r) => r.ttl = ttl,
        }
        self
    }

    /// Checks the record against a target's limits before a restore writes it:
    /// values within `max_value_bytes`, a TTL a store accepts (positive, at most ten
    /// years), numbers every backend can hold (a session's and a document's
    /// `version` from 1 to below `i64::MAX`, as Redis's `HINCRBY` must still be able
    /// to add one; `message_count` and `token_estimate` below `i64::MAX`; message
    /// numbers growing and at most `message_count`), a counter's bucket in range.
    /// An `InvalidInput` error naming the record's key otherwise. The window and
    /// the summary are not cut to the target's settings: the record is kept as it
    /// was (the target's next append trims the window).
    pub fn check(&self, settings: &StoreSettings) -> Result<()> {
        self.check_inner(settings)
            .map_err(|e| e.with_key(self.key()))
    }

    fn check_inner(&self, settings: &StoreSettings) -> Result<()> {
        const LIMIT: u64 = i64::MAX as u64;
        let below_max = |what: &str, n: u64| {
            if n < LIMIT {
                Ok(())
            } else {
                Err(Error::invalid_input(format!(
                    "{what} must be below i64::MAX"
                )))
            }
        };
        match self {
            Record::Session(r) => {
                StoreSettings::check_ttl(r.ttl)?;
                let s = &r.session;
                if s.version == 0 {
                    return Err(Error::invalid_input("session version must be at least 1"));
                }
                below_max("session version", s.version)?;
                below_max("message_count", s.message_count)?;
                below_max("token_estimate", s.token_estimate)?;
                let len = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
                settings.check_value_len("summary", s.summary.as_ref().map_or(0, String::len))?;
                settings.check_value_len("focus", s.focus.as_ref().map_or(0, String::len))?;
                settings.check_value_len("metadata", len(&s.metadata))?;
                settings.check_value_len("context", len(&s.context))?;
                settings.check_value_len("stats", len(&s.stats))?;
                let mut last = 0;
                for m in &r.messages {
                    if m.seq <= last || m.seq > s.message_count {
                        return Err(Error::invalid_input(
                            "message numbers must grow and be at most message_count",
                        ));
                    }
                    last = m.seq;
                    settings.check_value_len("message content", m.content.len())?;
                    settings.check_value_len("message metadata", len(&m.metadata))?;
                }
                if r.data.len() > crate::model::MAX_SESSION_DATA_NAMES {
                    return Err(crate::transition::too_many_data_names());
                }
                for (name, value) in &r.data {
                    crate::model::check_set_data(name, value, settings)?;
                }
                Ok(())
            }
            Record::Focus(r) => {
                StoreSettings::check_ttl(r.ttl)?;
                if r.doc.version == 0 {
                    return Err(Error::invalid_input("document version must be at least 1"));
                }
                below_max("document version", r.doc.version)?;
                settings.check_value_len("focus value", r.doc.value.len())
            }
            Record::Counter(r) => r.key.check(),
            Record::Cache(r) => {
                StoreSettings::check_ttl(r.ttl)?;
                crate::key::check_aliases(&r.key, &r.aliases)?;
                settings.check_value_len("cache value", r.value.len())
            }
        }
    }
}

fn redacted_len(b: &Option<Bytes>) -> Option<usize> {
    b.as_ref().map(Bytes::len)
}

impl fmt::Debug for SessionRecord {
    /// Ids, numbers and sizes only: never the summary, the fields or the messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.session;
        f.debug_struct("SessionRecord")
            .field("key", &s.key)
            .field("version", &s.version)
            .field("message_count", &s.message_count)
            .field("window", &self.messages.len())
            .field("data_names", &self.data.len())
            .field("context_bytes", &redacted_len(&s.context))
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for FocusRecord {
    /// Key, version, size and TTL; never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FocusRecord")
            .field("key", &self.doc.key)
            .field("version", &self.doc.version)
            .field("value_bytes", &self.doc.value.len())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl fmt::Debug for CounterRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterRecord")
            .field("key", &self.key)
            .field("value", &self.value)
            .finish()
    }
}

impl fmt::Debug for CacheRecord {
    /// Key, size and TTL; never the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheRecord")
            .field("key", &self.key)
            .field("value_bytes", &self.value.len())
            .field("ttl", &self.ttl)
            .field("aliases", &self.aliases.len())
            .finish()
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Session(r) => r.fmt(f),
            Record::Focus(r) => r.fmt(f),
            Record::Counter(r) => r.fmt(f),
            Record::Cache(r) => r.fmt(f),
        }
    }
}

/// One page of an [`Inventory::scan`].
#[derive(Debug)]
pub struct InventoryPage {
    /// The records of this page (at most the `limit` asked for).
    pub records: Vec<Record>,
    /// Records found but not readable (a corrupt file, a foreign key under the
    /// prefix): one error each, naming the file or key, never a value. The walk
    /// goes on past them.
    pub unreadable: Vec<Error>,
    /// Pass this to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Whether a restore writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreMode {
    /// Decide and write.
    Write,
    /// Decide only: nothing is written, the outcome says what a write would do.
    DryRun,
}

/// What a restore did (or, in a dry run, would do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restored {
    /// The record's state was written.
    Written,
    /// The target already held exactly this state; nothing was written.
    Unchanged,
    /// The target holds a newer state (see the module docs); left alone.
    SkippedNewer,
}

/// Every record of a backend: enumerate, read, restore. Object-safe
/// (`Arc<dyn Inventory>`); see the module docs for the contract.
#[async_trait]
pub trait Inventory: Send + Sync {
    /// A page of at most `limit` (at least 1) live records of `kind`, after
    /// `cursor` (`None`: from the start). `InvalidInput` for a malformed cursor or
    /// a zero limit.
    async fn scan(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<InventoryPage>;

    /// The live record of `key` with its remaining TTL, or `None`. A counter that
    /// does not exist is `None` (not a value of 0).
    async fn read(&self, key: &RecordKey) -> Result<Option<Record>>;

    /// Writes the record's exact state, atomically, under the conflict rule of the
    /// module docs; in [`RestoreMode::DryRun`], only decides. `InvalidInput` (and
    /// nothing written) when [`Record::check`] refuses it.
    async fn restore(&self, record: &Record, mode: RestoreMode) -> Result<Restored>;
}

/// The conflict rule for sessions: what restoring `record` over `existing` (the
/// target's live session, if any) does. See the module docs.
pub fn decide_session(existing: Option<&SessionState>, record: &SessionRecord) -> Restored {
    let Some(existing) = existing else {
        return Restored::Written;
    };
    let (e, r) = (&existing.session, &record.session);
    if e.id != r.id {
        // Two conversations of one key: their versions do not compare; the one
        // created later is the current one.
        return if e.created_at > r.created_at {
            Restored::SkippedNewer
        } else {
            Restored::Written
        };
    }
    let order = (e.version, e.message_count, e.last_activity).cmp(&(
        r.version,
        r.message_count,
        r.last_activity,
    ));
    match order {
        Ordering::Greater => Restored::SkippedNewer,
        Ordering::Equal
            if e == r
                && existing.messages.iter().eq(record.messages.iter())
                && existing.data == record.data =>
        {
            Restored::Unchanged
        }
        _ => Restored::Written,
    }
}

/// The conflict rule for focus documents: `(version, updated_at)` decides; an
/// equal document is unchanged.
pub fn decide_focus(existing: Option<&FocusDoc>, record: &FocusDoc) -> Restored {
    let Some(e) = existing else {
        return Restored::Written;
    };
    match (e.version, e.updated_at).cmp(&(record.version, record.updated_at)) {
        Ordering::Greater => Restored::SkippedNewer,
        Ordering::Equal if e.value == record.value => Restored::Unchanged,
        _ => Restored::Written,
    }
}

/// The rule for counters and cache entries: an equal value is unchanged, anything
/// else (no value included) is written.
pub fn decide_value<T: PartialEq + ?Sized>(existing: Option<&T>, record: &T) -> Restored {
    match existing {
        Some(e) if e == record => Restored::Unchanged,
        _ => Restored::Written,
    }
}

/// A session's state as a record with `ttl` left: the inverse of
/// [`session_state`].
pub fn session_record(state: &SessionState, ttl: Duration) -> SessionRecord {
    SessionRecord {
        session: state.session.clone(),
        messages: state.messages.iter().cloned().collect(),
        data: state.data.clone(),
        ttl,
    }
}

/// The state a session restore writes: the record and its window.
pub fn session_state(record: &SessionRecord) -> SessionState {
    SessionState {
        session: record.session.clone(),
        messages: record.messages.iter().cloned().collect(),
        data: record.data.clone(),
    }
}

/// Checks `limit` for [`Inventory::scan`] (at least 1).
pub fn check_scan_limit(limit: usize) -> Result<()> {
    crate::model::check_list_limit(limit)
}

/// An `InvalidInput` error for a cursor a backend did not make.
pub fn malformed_cursor() -> Error {
    Error::invalid_input("inventory cursor is malformed").with_operation("scan")
}

/// Cursor helpers shared by backends whose cursors are keys: ids joined with `:`,
/// each [`escape`](crate::key::escape)d, so any id round-trips.
pub mod cursor {
    use crate::error::Result;
    use crate::key::{CounterKey, Labels, escape, unescape};

    use super::malformed_cursor;

    /// `parts`, each escaped, joined with `:`.
    pub fn join(parts: &[&str]) -> String {
        parts
            .iter()
            .map(|p| escape(p).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The `n` parts of a [`join`]ed cursor; `InvalidInput` when it is not one.
    pub fn split(cursor: &str, n: usize) -> Result<Vec<String>> {
        let parts: Vec<String> = cursor
            .split(':')
            .map(unescape)
            .collect::<Option<_>>()
            .ok_or_else(malformed_cursor)?;
        if parts.len() == n {
            Ok(parts)
        } else {
            Err(malformed_cursor())
        }
    }

    /// The two parts of a [`join`]ed pair (a group and a name, say).
    pub fn pair(cursor: &str) -> Result<(String, String)> {
        let mut p = split(cursor, 2)?.into_iter();
        Ok((p.next().unwrap_or_default(), p.next().unwrap_or_default()))
    }

    /// A counter key as a cursor: its name, escaped labels and bucket (or empty).
    pub fn counter(key: &CounterKey) -> String {
        let bucket = key.bucket().map(|b| b.to_string()).unwrap_or_default();
        join(&[key.name(), &key.labels().escaped(), &bucket])
    }

    /// The counter key of a [`counter`] cursor.
    pub fn parse_counter(cursor: &str) -> Result<CounterKey> {
        let parts = split(cursor, 3)?;
        let labels = Labels::parse_escaped(&parts[1]).ok_or_else(malformed_cursor)?;
        let mut key = CounterKey::new(parts[0].as_str())
            .map_err(|_| malformed_cursor())?
            .with_labels(labels);
        if !parts[2].is_empty() {
            key = key.in_bucket(parts[2].parse().map_err(|_| malformed_cursor())?);
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::model::{Role, SessionPatch};

    fn record(version: u64, count: u64, activity: i64) -> SessionRecord {
        let key = SessionKey::new("t", "c", "u").unwrap();
        let mut session = Session::new(key, "id".into(), Timestamp(1), &SessionPatch::new());
        session.version = version;
        session.message_count = count;
        session.last_activity = Timestamp(activity);
        let messages = (1..=count)
            .map(|seq| Message {
                seq,
                role: Role::User,
                content: format!("m{seq}"),
                metadata: None,
                at: Timestamp(1),
            })
            .collect();
        SessionRecord {
            session,
            messages,
            data: BTreeMap::from([("thread".to_string(), Bytes::from_static(b"t1"))]),
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_session_rule_orders_version_then_count_then_activity() {
        let r = record(3, 2, 10);
        assert_eq!(decide_session(None, &r), Restored::Written);
        assert_eq!(
            decide_session(Some(&session_state(&r)), &r),
            Restored::Unchanged
        );
        for (newer, why) in [
            (record(4, 0, 0), "higher version"),
            (record(3, 3, 0), "more messages"),
            (record(3, 2, 11), "later activity"),
        ] {
            assert_eq!(
                decide_session(Some(&session_state(&newer)), &r),
                Restored::SkippedNewer,
                "{why}"
            );
            assert_eq!(
                decide_session(Some(&session_state(&r)), &newer),
                Restored::Written,
                "{why}, the other way"
            );
        }
        let mut other = record(3, 2, 10);
        other.session.summary = Some("differs".into());
        assert_eq!(
            decide_session(Some(&session_state(&other)), &r),
            Restored::Written,
            "same position, other content: the record wins"
        );
        let mut other = record(3, 2, 10);
        other.data.insert("tool".into(), Bytes::from_static(b"x"));
        assert_eq!(
            decide_session(Some(&session_state(&other)), &r),
            Restored::Written,
            "same position, other side data: the record wins"
        );
    }

    #[test]
    fn the_focus_and_value_rules() {
        let doc = |version, at, value: &'static [u8]| FocusDoc {
            key: FocusKey::new("s", "n").unwrap(),
            value: Bytes::from_static(value),
            version,
            updated_at: Timestamp(at),
        };
        let r = doc(2, 5, b"x");
        assert_eq!(
            decide_focus(Some(&doc(2, 5, b"x")), &r),
            Restored::Unchanged
        );
        assert_eq!(
            decide_focus(Some(&doc(3, 0, b"x")), &r),
            Restored::SkippedNewer
        );
        assert_eq!(decide_focus(Some(&doc(2, 4, b"x")), &r), Restored::Written);
        assert_eq!(decide_focus(Some(&doc(2, 5, b"y")), &r), Restored::Written);
        assert_eq!(decide_value(Some(&7), &7), Restored::Unchanged);
        assert_eq!(decide_value(None, &0), Restored::Written);
        assert_eq!(decide_value(Some(&b"a"[..]), &b"b"[..]), Restored::Written);
    }

    #[test]
    fn check_refuses_what_a_backend_cannot_hold() {
        let settings = StoreSettings::default();
        let ok = Record::Session(record(1, 2, 0));
        ok.check(&settings).unwrap();
        let mut bad = record(1, 2, 0);
        bad.messages.swap(0, 1);
        let err = Record::Session(bad).check(&settings).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        assert_eq!(err.key(), Some("session t:c:u"));
        let mut bad = record(1, 0, 0);
        bad.session.version = u64::MAX;
        assert!(Record::Session(bad).check(&settings).is_err());
        assert!(
            ok.clone()
                .with_ttl(Duration::ZERO)
                .check(&settings)
                .is_err()
        );
        let mut bad = record(1, 0, 0);
        bad.data.insert(String::new(), Bytes::new());
        assert!(
            Record::Session(bad).check(&settings).is_err(),
            "empty data name"
        );
        let mut bad = record(1, 0, 0);
        for i in 0..=crate::model::MAX_SESSION_DATA_NAMES {
            bad.data.insert(format!("n{i}"), Bytes::new());
        }
        assert!(
            Record::Session(bad).check(&settings).is_err(),
            "too many names"
        );
    }

    #[test]
    fn cursors_round_trip_any_id() {
        let c = cursor::join(&["a:b", "%", "🙂 x"]);
        assert_eq!(cursor::split(&c, 3).unwrap(), ["a:b", "%", "🙂 x"]);
        assert!(cursor::split(&c, 2).is_err());
        assert!(cursor::split("%zz", 1).is_err());
        let key = CounterKey::new("hits@x")
            .unwrap()
            .with_labels(crate::Labels::from_pairs([("k=1", "v,:")]).unwrap())
            .in_bucket(crate::Bucket::Hour(5));
        assert_eq!(cursor::parse_counter(&cursor::counter(&key)).unwrap(), key);
        let plain = CounterKey::new("n").unwrap();
        assert_eq!(
            cursor::parse_counter(&cursor::counter(&plain)).unwrap(),
            plain
        );
    }

    #[test]
    fn debug_shows_no_values() {
        let mut r = record(1, 1, 0);
        r.session.summary = Some("+5511987654321".into());
        r.messages[0].content = "+5511987654321".into();
        let shown = format!("{:?}", Record::Session(r));
        assert!(!shown.contains("5511987654321"), "{shown}");
        assert!(shown.contains("version: 1"), "{shown}");
    }
}
