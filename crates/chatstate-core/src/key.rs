//! Keys: who a session belongs to, which focus document, which cache entry, which
//! counter — validated once, here, and escaped wherever they become a storage key.
//!
//! Every id is any non-empty UTF-8 string up to a length limit ([`MAX_ID_BYTES`],
//! [`MAX_CACHE_KEY_BYTES`]). Ids are accepted as given — `:`, `{`, `/`, `..`, NUL and
//! emoji included — and [`escape`] makes them safe in a `:`-separated key: no id can
//! forge a separator, a Redis hash tag or a glob character and so reach another
//! tenant's keys. [`KeyLayout`] is the documented layout backends that use string
//! keys share.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::error::{Error, Result};

/// Longest tenant, channel, user, scope, namespace, focus name, counter name or
/// label, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest cache key (within its namespace), in bytes.
pub const MAX_CACHE_KEY_BYTES: usize = 1024;
/// Most labels on one counter.
pub const MAX_LABELS: usize = 16;
/// Most aliases (secondary keys) on one cache entry
/// ([`KvCache::set_with_aliases`](crate::KvCache::set_with_aliases)).
pub const MAX_ALIASES: usize = 16;

/// The aliases of one [`KvCache::set_with_aliases`](crate::KvCache::set_with_aliases),
/// checked: at most [`MAX_ALIASES`] distinct ones (an alias given twice counts
/// once), sorted. `InvalidInput` naming the entry otherwise.
pub fn check_aliases(entry: &CacheKey, aliases: &[CacheKey]) -> Result<Vec<CacheKey>> {
    let mut set: Vec<CacheKey> = aliases.to_vec();
    set.sort();
    set.dedup();
    if set.len() > MAX_ALIASES {
        return Err(Error::invalid_input(format!(
            "{} aliases, more than the limit of {MAX_ALIASES} per entry",
            set.len()
        ))
        .with_key(entry));
    }
    Ok(set)
}

/// Checks that `value`, the `what` of a key, is non-empty and at most `max` bytes.
fn check_id(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(format!("{what} must not be empty")));
    }
    if value.len() > max {
        return Err(Error::invalid_input(format!(
            "{what} is {} bytes, more than the limit of {max}",
            value.len()
        )));
    }
    Ok(())
}

/// Escapes one key part so that it contains none of the characters a key layout
/// gives meaning to.
///
/// `%` and the reserved characters `:` `{` `}` `/` `\` `*` `?` `[` `]`, space and
/// ASCII control characters (NUL included) become `%XX`; everything else, non-ASCII
/// UTF-8 included, stays as it is so keys remain readable in `redis-cli`. The mapping
/// is injective: two different parts never escape to the same string.
///
/// ```
/// use chatstate_core::key::escape;
/// assert_eq!(escape("acme"), "acme");
/// assert_eq!(escape("a:b{c}"), "a%3Ab%7Bc%7D");
/// assert_eq!(escape("olá 👋"), "olá%20👋");
/// ```
pub fn escape(part: &str) -> Cow<'_, str> {
    if !part.bytes().any(reserved) {
        return Cow::Borrowed(part);
    }
    let mut out = String::with_capacity(part.len() + 8);
    push_escaped(&mut out, part);
    Cow::Owned(out)
}

/// The bytes [`escape`] rewrites: `%`, the reserved characters and ASCII control
/// characters. All are ASCII, and no byte of a multi-byte UTF-8 character is, so
/// a scan of the bytes finds exactly the characters to rewrite (one table lookup
/// per byte, on every key a store builds).
const RESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(
            b as u8,
            b'%' | b':' | b'{' | b'}' | b'/' | b'\\' | b'*' | b'?' | b'[' | b']' | b' '
        ) || (b as u8).is_ascii_control();
        b += 1;
    }
    table
};

/// Whether [`escape`] rewrites byte `b`.
#[inline]
fn reserved(b: u8) -> bool {
    RESERVED[usize::from(b)]
}

/// Appends [`escape`]`(part)` to `out`, without allocating anything else: what key
/// builders on hot paths use.
///
/// ```
/// let mut key = String::from("p:kv:");
/// chatstate_core::key::push_escaped(&mut key, "a:b");
/// assert_eq!(key, "p:kv:a%3Ab");
/// ```
pub fn push_escaped(out: &mut String, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Most parts need no escaping: one scan, one copy.
    let Some(first) = part.bytes().position(reserved) else {
        out.push_str(part);
        return;
    };
    let mut start = 0;
    for (at, &b) in part.as_bytes().iter().enumerate().skip(first) {
        if reserved(b) {
            // `at` is an ASCII byte: a character boundary.
            out.push_str(&part[start..at]);
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
            start = at + 1;
        }
    }
    out.push_str(&part[start..]);
}

/// Reverses [`escape`]. Returns `None` for a malformed `%XX` escape.
pub fn unescape(escaped: &str) -> Option<String> {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hi = chars.next()?.to_digit(16)?;
            let lo = chars.next()?.to_digit(16)?;
            out.push(char::from_u32(hi * 16 + lo)?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// One conversation: a user on a channel of a tenant.
///
/// ```
/// use chatstate_core::SessionKey;
/// let key = SessionKey::new("acme", "whatsapp", "+5511999990000").unwrap();
/// assert_eq!(key.tenant(), "acme");
/// assert!(SessionKey::new("", "whatsapp", "u1").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    tenant: String,
    channel: String,
    user: String,
}

impl SessionKey {
    /// A key for `user` on `channel` of `tenant`. Each part must be non-empty and at
    /// most [`MAX_ID_BYTES`] bytes; any UTF-8 is accepted.
    pub fn new(
        tenant: impl Into<String>,
        channel: impl Into<String>,
        user: impl Into<String>,
    ) -> Result<Self> {
        let key = SessionKey {
            tenant: tenant.into(),
            channel: channel.into(),
            user: user.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks the parts again: for keys that arrived through deserialization.
    pub fn validate(&self) -> Result<()> {
        check_id("tenant", &self.tenant, MAX_ID_BYTES)?;
        check_id("channel", &self.channel, MAX_ID_BYTES)?;
        check_id("user", &self.user, MAX_ID_BYTES)
    }

    /// The tenant (the company, the bot's customer).
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The channel (whatsapp, web, telegram, ...).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The user's id on that channel.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The escaped `tenant:channel:user` form used inside storage keys.
    pub fn escaped(&self) -> String {
        format!(
            "{}:{}:{}",
            escape(&self.tenant),
            escape(&self.channel),
            escape(&self.user)
        )
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.escaped())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({})", self.escaped())
    }
}

/// Checks the name of a session's side value (see [`crate::SessionStore::set_data`]).
pub fn check_data_name(name: &str) -> Result<()> {
    check_id("session data name", name, MAX_ID_BYTES)
}

/// Checks a lock name (see [`crate::SessionStore::try_lock`]).
pub fn check_lock_name(name: &str) -> Result<()> {
    check_id("lock name", name, MAX_ID_BYTES)
}

/// A focus document: `name` within `scope` (a file, a flow, a tenant: the caller
/// decides what a scope is).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FocusKey {
    scope: String,
    name: String,
}

impl FocusKey {
    /// A key for document `name` in `scope`; both non-empty, at most [`MAX_ID_BYTES`].
    pub fn new(scope: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let key = FocusKey {
            scope: scope.into(),
            name: name.into(),
        };
        check_id("focus scope", &key.scope, MAX_ID_BYTES)?;
        check_id("focus name", &key.name, MAX_ID_BYTES)?;
        Ok(key)
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The document's name within its scope.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for FocusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", escape(&self.scope), escape(&self.name))
    }
}

impl fmt::Debug for FocusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FocusKey({self})")
    }
}

/// Checks a scope, namespace or counter name given on its own (to `list`, say).
pub fn check_scope(what: &'static str, value: &str) -> Result<()> {
    check_id(what, value, MAX_ID_BYTES)
}

/// A cache entry: `key` within `namespace` (`customers`, `contacts`, ...).
///
/// Namespaces are separate: clearing `users` never touches `users:archive`.
///
/// Two keys are equal, ordered and hashed by their namespace and key alone.
#[derive(Clone, Serialize, Deserialize)]
pub struct CacheKey {
    namespace: String,
    key: String,
    /// Set by [`CacheKey::new`] when `key` has no byte [`escape`] rewrites: store
    /// keys are then built by copying it, with no scan per call (a many-key call
    /// spent more on that scan than on anything else of its own). Unset (scan
    /// when used) for a deserialized key.
    #[serde(skip)]
    plain: bool,
}

impl CacheKey {
    /// Entry `key` in `namespace`: namespace non-empty and at most [`MAX_ID_BYTES`],
    /// key non-empty and at most [`MAX_CACHE_KEY_BYTES`].
    pub fn new(namespace: impl Into<String>, key: impl Into<String>) -> Result<Self> {
        let mut k = CacheKey {
            namespace: namespace.into(),
            key: key.into(),
            plain: false,
        };
        check_id("cache namespace", &k.namespace, MAX_ID_BYTES)?;
        check_id("cache key", &k.key, MAX_CACHE_KEY_BYTES)?;
        k.plain = !k.key.bytes().any(reserved);
        Ok(k)
    }

    /// Appends [`escape`]`(self.key())` to `out`.
    #[inline]
    fn push_key_escaped(&self, out: &mut String) {
        if self.plain {
            out.push_str(&self.key);
        } else {
            push_escaped(out, &self.key);
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The key within the namespace.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reads back the escaped form `Display` writes (`<namespace>:<key>`, each part
    /// escaped): `None` when it is not one (no separator, a malformed escape, an
    /// empty or oversize part).
    ///
    /// ```
    /// use chatstate_core::CacheKey;
    /// let k = CacheKey::new("phone", "+55 11").unwrap();
    /// assert_eq!(CacheKey::from_escaped(&k.to_string()), Some(k));
    /// assert_eq!(CacheKey::from_escaped("no-separator"), None);
    /// ```
    pub fn from_escaped(text: &str) -> Option<CacheKey> {
        let (ns, key) = text.split_once(':')?;
        CacheKey::new(unescape(ns)?, unescape(key)?).ok()
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        self.namespace == other.namespace && self.key == other.key
    }
}

impl Eq for CacheKey {}

impl PartialOrd for CacheKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CacheKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.namespace, &self.key).cmp(&(&other.namespace, &other.key))
    }
}

impl std::hash::Hash for CacheKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.namespace.hash(state);
        self.key.hash(state);
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", escape(&self.namespace), escape(&self.key))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

/// One streamed reply (a run of [`crate::ReplyStream`]): any non-empty UTF-8 id up
/// to [`MAX_ID_BYTES`] — a request id, a message id, a UUID.
///
/// ```
/// use chatstate_core::RunId;
/// let run = RunId::new("reply-42").unwrap();
/// assert_eq!(run.as_str(), "reply-42");
/// assert!(RunId::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// A run id: non-empty, at most [`MAX_ID_BYTES`] bytes, any UTF-8.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_id("run id", &id, MAX_ID_BYTES)?;
        Ok(RunId(id))
    }

    /// A fresh random run id (a UUID v4).
    pub fn random() -> Self {
        RunId(uuid::Uuid::new_v4().to_string())
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Checks the id again: for ids that arrived through deserialization.
    pub fn validate(&self) -> Result<()> {
        check_id("run id", &self.0, MAX_ID_BYTES)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({self})")
    }
}

/// A counter's labels, kept sorted so `{a=1,b=2}` and `{b=2,a=1}` are one counter.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Labels::default()
    }

    /// Labels from pairs; each name and value non-empty, at most [`MAX_ID_BYTES`],
    /// at most [`MAX_LABELS`] of them.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self> {
        let mut labels = Labels::new();
        for (k, v) in pairs {
            labels = labels.with(k, v)?;
        }
        Ok(labels)
    }

    /// These labels plus `name=value` (replacing an earlier value of `name`).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Result<Self> {
        let (name, value) = (name.into(), value.into());
        check_id("label name", &name, MAX_ID_BYTES)?;
        check_id("label value", &value, MAX_ID_BYTES)?;
        self.0.insert(name, value);
        if self.0.len() > MAX_LABELS {
            return Err(Error::invalid_input(format!(
                "a counter has at most {MAX_LABELS} labels"
            )));
        }
        Ok(self)
    }

    /// The labels, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The escaped `name=value,name=value` form used inside storage keys; empty for
    /// no labels. `=` and `,` are escaped too, so the form is unambiguous.
    pub fn escaped(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&escape(k).replace('=', "%3D").replace(',', "%2C"));
            out.push('=');
            out.push_str(&escape(v).replace('=', "%3D").replace(',', "%2C"));
        }
        out
    }
}

impl Labels {
    /// Parses the [`Labels::escaped`] form back; `None` for a malformed one.
    pub fn parse_escaped(s: &str) -> Option<Labels> {
        let mut labels = Labels::new();
        if s.is_empty() {
            return Some(labels);
        }
        for pair in s.split(',') {
            let (k, v) = pair.split_once('=')?;
            labels = labels.with(unescape(k)?, unescape(v)?).ok()?;
        }
        Some(labels)
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}}}", self.escaped())
    }
}

/// Many store keys in one buffer (see [`KeyLayout::cache_keys`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyList {
    buf: String,
    /// Where each key ends in `buf`.
    ends: Vec<usize>,
}

impl KeyList {
    /// How many keys.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Key `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.buf.get(start..end)
    }

    /// The keys, in order.
    pub fn iter(&self) -> KeyListIter<'_> {
        KeyListIter {
            rest: &self.buf,
            ends: self.ends.iter(),
            start: 0,
        }
    }

    /// The keys as a vector of slices of this list.
    pub fn to_vec(&self) -> Vec<&str> {
        let mut out = Vec::with_capacity(self.ends.len());
        out.extend(self.iter());
        out
    }
}

impl<'a> IntoIterator for &'a KeyList {
    type Item = &'a str;
    type IntoIter = KeyListIter<'a>;

    fn into_iter(self) -> KeyListIter<'a> {
        self.iter()
    }
}

/// The keys of a [`KeyList`], in order: each one cut off the front of what is left
/// of the list's buffer (one character-boundary check per key, no index lookup).
#[derive(Clone, Debug)]
pub struct KeyListIter<'a> {
    /// The keys not yet returned, back to back.
    rest: &'a str,
    ends: std::slice::Iter<'a, usize>,
    /// Where `rest` starts in the list's buffer.
    start: usize,
}

impl<'a> Iterator for KeyListIter<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let end = *self.ends.next()?;
        // Every end is a character boundary at or after the one before (the list is
        // built by appending whole strings): the split always succeeds.
        let (key, rest) = self
            .rest
            .split_at_checked(end.saturating_sub(self.start))
            .unwrap_or((self.rest, ""));
        self.rest = rest;
        self.start = end;
        Some(key)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ends.size_hint()
    }
}

impl ExactSizeIterator for KeyListIter<'_> {}

/// A time bucket of a counter: the UTC day or hour it counts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Bucket {
    /// The UTC day, as whole days since the Unix epoch.
    Day(i64),
    /// The UTC hour, as whole hours since the Unix epoch.
    Hour(i64),
}

impl Bucket {
    /// The UTC day that contains `t`.
    #[inline]
    pub fn day_of(t: Timestamp) -> Bucket {
        Bucket::Day(t.0.div_euclid(86_400_000))
    }

    /// The UTC hour that contains `t`.
    #[inline]
    pub fn hour_of(t: Timestamp) -> Bucket {
        Bucket::Hour(t.0.div_euclid(3_600_000))
    }

    /// The first day a bucket may count: 0001-01-01, as days since the epoch.
    pub const FIRST_DAY: i64 = -719_162;
    /// The last day a bucket may count: 9999-12-31, as days since the epoch.
    pub const LAST_DAY: i64 = 2_932_896;

    /// Checks that the bucket lies in the years 0001 to 9999, where its name (the
    /// UTC date, used in keys) is unique: an [`crate::ErrorKind::InvalidInput`] error
    /// otherwise, so two far-off buckets can never share a stored counter.
    pub fn check(self) -> Result<()> {
        let in_range = match self {
            Bucket::Day(d) => (Self::FIRST_DAY..=Self::LAST_DAY).contains(&d),
            Bucket::Hour(h) => (Self::FIRST_DAY * 24..=Self::LAST_DAY * 24 + 23).contains(&h),
        };
        if in_range {
            Ok(())
        } else {
            Err(Error::invalid_input(
                "counter bucket is outside the years 0001 to 9999",
            ))
        }
    }

    /// When the bucket starts.
    pub fn start(self) -> Timestamp {
        match self {
            Bucket::Day(d) => Timestamp(d.saturating_mul(86_400_000)),
            Bucket::Hour(h) => Timestamp(h.saturating_mul(3_600_000)),
        }
    }
}

impl fmt::Display for Bucket {
    /// `2026-11-22` for a day, `2026-11-22T05` for an hour.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let start = self.start().to_string();
        match self {
            Bucket::Day(_) => f.write_str(&start[..10.min(start.len())]),
            Bucket::Hour(_) => f.write_str(&start[..13.min(start.len())]),
        }
    }
}

impl std::str::FromStr for Bucket {
    type Err = Error;

    /// Parses the [`Display`](fmt::Display) form back: `2026-11-22` is a day,
    /// `2026-11-22T05` an hour, years 0001 to 9999. `InvalidInput` otherwise.
    ///
    /// ```
    /// use chatstate_core::{Bucket, Timestamp};
    /// let t = Timestamp(1_795_323_723_456);
    /// assert_eq!("2026-11-22".parse::<Bucket>().unwrap(), Bucket::day_of(t));
    /// assert_eq!("2026-11-22T05".parse::<Bucket>().unwrap(), Bucket::hour_of(t));
    /// assert!("2026-13-01".parse::<Bucket>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Bucket> {
        let bad = || Error::invalid_input("not a counter bucket (YYYY-MM-DD or YYYY-MM-DDTHH)");
        let (date, hour) = match s.split_once('T') {
            Some((d, h)) => (d, Some(h)),
            None => (s, None),
        };
        let digits = |t: &str, n: usize| -> Result<u32> {
            if t.len() == n && t.bytes().all(|b| b.is_ascii_digit()) {
                t.parse().map_err(|_| bad())
            } else {
                Err(bad())
            }
        };
        let mut parts = date.split('-');
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (y, m, d) = (digits(y, 4)?, digits(m, 2)?, digits(d, 2)?);
        let month =
            time::Month::try_from(u8::try_from(m).map_err(|_| bad())?).map_err(|_| bad())?;
        let year = i32::try_from(y).map_err(|_| bad())?;
        let date = time::Date::from_calendar_date(year, month, u8::try_from(d).map_err(|_| bad())?)
            .map_err(|_| bad())?;
        // Julian day 2_440_588 is 1970-01-01.
        let day = i64::from(date.to_julian_day()) - 2_440_588;
        let bucket = match hour {
            None => Bucket::Day(day),
            Some(h) => {
                let h = digits(h, 2)?;
                if h > 23 {
                    return Err(bad());
                }
                Bucket::Hour(day * 24 + i64::from(h))
            }
        };
        bucket.check().map_err(|_| bad())?;
        Ok(bucket)
    }
}

impl fmt::Debug for Bucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bucket({self})")
    }
}

/// A counter: a name, labels, and an optional time bucket.
///
/// ```
/// use chatstate_core::{Bucket, CounterKey, Labels, Timestamp};
/// let errors = CounterKey::new("errors")
///     .unwrap()
///     .with_labels(Labels::from_pairs([("type", "timeout")]).unwrap())
///     .in_bucket(Bucket::day_of(Timestamp(0)));
/// assert_eq!(errors.to_string(), "errors{type=timeout}@1970-01-01");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CounterKey {
    name: String,
    labels: Labels,
    bucket: Option<Bucket>,
}

impl CounterKey {
    /// A counter called `name` (non-empty, at most [`MAX_ID_BYTES`]), no labels, no
    /// bucket.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_id("counter name", &name, MAX_ID_BYTES)?;
        Ok(CounterKey {
            name,
            labels: Labels::new(),
            bucket: None,
        })
    }

    /// The same counter with these labels.
    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }

    /// The same counter counted in `bucket`.
    pub fn in_bucket(mut self, bucket: Bucket) -> Self {
        self.bucket = Some(bucket);
        self
    }

    /// The counter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counter's labels.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// The counter's bucket, if bucketed.
    pub fn bucket(&self) -> Option<Bucket> {
        self.bucket
    }

    /// Checks what [`CounterKey::in_bucket`] cannot: that the bucket is in range
    /// ([`Bucket::check`]). Every backend calls it before using a counter key; the
    /// error names the counter.
    pub fn check(&self) -> Result<()> {
        self.bucket
            .map_or(Ok(()), Bucket::check)
            .map_err(|e| e.with_key(self))
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.name).replace('@', "%40"))?;
        if !self.labels.is_empty() {
            write!(f, "{{{}}}", self.labels.escaped())?;
        }
        if let Some(b) = self.bucket {
            write!(f, "@{b}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CounterKey({self})")
    }
}

/// The documented layout of string keys, for backends that store under strings
/// (Redis; the file backend derives paths from the same parts).
///
/// | what | key | Redis type |
/// | --- | --- | --- |
/// | session record | `{prefix}:sess:{<tenant>:<channel>:<user>}:ctx` | hash, one field per session field |
/// | message window | `{prefix}:sess:{<tenant>:<channel>:<user>}:msgs` | list of `<seq>:<message JSON>` |
/// | side data | `{prefix}:sess:{<tenant>:<channel>:<user>}:data` | hash: name to value |
/// | lock `name` | `{prefix}:sess:{<tenant>:<channel>:<user>}:lock:<name>` | string: the owner token |
/// | its fencing number | `{prefix}:sess:{<tenant>:<channel>:<user>}:fence:<name>` | integer |
/// | a tenant's sessions | `{prefix}:sessidx:{<tenant>}` | sorted set of `<channel>:<user>` (score 0: member order) |
/// | their expiry times | `{prefix}:sessidx:{<tenant>}:exp` | sorted set of the same members, scored by expiry (Unix ms) |
/// | focus document | `{prefix}:focus:{<scope>}:<name>` | hash: value, version, updated_at |
/// | a scope's documents | `{prefix}:focusidx:{<scope>}` | set of names |
/// | cache entry | `{prefix}:kv:<namespace>:<key>` | string: the value |
/// | an entry's aliases | `{prefix}:aliases:{<entry key>}` (the entry's whole key as hash tag: its slot) | set of `<namespace>:<key>` of each alias |
/// | an alias | `{prefix}:alias:<namespace>:<key>` | string: the entry's key |
/// | counters of a name (and bucket) | `{prefix}:cnt:{counters}:<name>[@<bucket>]` | hash: labels (`a=1,b=2`, empty for none) to value |
/// | an applied counter batch | `{prefix}:cnt:{counters}:batch:<id>` | string, kept for the batch retention |
/// | a streamed reply's state | `{prefix}:reply:{<run>}:meta` | hash: status, bytes, n (chunks), gen (a random id per start) |
/// | its chunks | `{prefix}:reply:{<run>}:chunks` | stream, entry id `0-<offset + 1>`, field `t` |
/// | its wake-up channel | `{prefix}:reply:{<run>}:live` | pub/sub channel (not a key) |
///
/// Every part is [`escape`]d, so a `{...}` hash tag holds exactly the ids it names:
/// every key of one session lands in one Redis Cluster slot, so do a scope's focus
/// documents, and so do all counters (a batch is applied atomically), and so do a
/// streamed reply's keys (one script appends to both).
///
/// **On a Redis Cluster** ([`KeyLayout::clustered`]) a session and the index entry
/// that lists it must share a slot, so that one script writes both. A tenant's
/// sessions are therefore spread over [`CLUSTER_SESSION_SHARDS`] shards, each with
/// its own index, and a session's hash tag names its tenant and shard:
///
/// | what | key (cluster layout) |
/// | --- | --- |
/// | session record, window, locks, fences | `{prefix}:sess:{<tenant>:<shard>}:<channel>:<user>:ctx` (`:msgs`, `:data`, `:lock:<name>`, `:fence:<name>`) |
/// | the sessions of one shard of a tenant | `{prefix}:sessidx:{<tenant>:<shard>}` and `…:exp` |
///
/// `<shard>` is `0`–`15`: the FNV-1a hash of the index member (`<channel>:<user>`,
/// escaped) modulo 16 — fixed, so every instance and version agrees. A tenant thus
/// spreads over 16 slots (and over the cluster's masters), and its listing walks 16
/// indexes. Other keys are the same in both layouts. The two layouts do not read
/// each other's sessions: move data between a standalone server and a cluster with
/// the facade's export/import (`chatstate::migrate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
    clustered: bool,
}

/// FNV-1a (64 bits) of `bytes`: a hash fixed across processes, platforms and
/// versions (unlike std's per-process hasher), for what is stored or compared
/// between processes — the cluster layout's session shard, a topology fingerprint.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How many index shards a tenant's sessions are spread over in the cluster layout
/// ([`KeyLayout::clustered`]). Part of the layout: changing it would lose track of
/// every stored session.
pub const CLUSTER_SESSION_SHARDS: u16 = 16;

impl KeyLayout {
    /// A layout under `prefix`: 1 to 64 characters from `A-Z a-z 0-9 _ - .` (no `:`,
    /// see [`check_prefix`]).
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        check_prefix(&prefix)?;
        Ok(KeyLayout {
            prefix,
            clustered: false,
        })
    }

    /// The layout for a Redis Cluster under `prefix`: a tenant's sessions spread
    /// over [`CLUSTER_SESSION_SHARDS`] index shards (see the type's docs).
    pub fn clustered(prefix: impl Into<String>) -> Result<Self> {
        Ok(KeyLayout {
            clustered: true,
            ..KeyLayout::new(prefix)?
        })
    }

    /// Whether this is the cluster layout.
    pub fn is_clustered(&self) -> bool {
        self.clustered
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many index shards a tenant's sessions are listed in: 1, or
    /// [`CLUSTER_SESSION_SHARDS`] in the cluster layout.
    pub fn session_shards(&self) -> u16 {
        if self.clustered {
            CLUSTER_SESSION_SHARDS
        } else {
            1
        }
    }

    /// The index shard a session is listed in (0 outside the cluster layout).
    pub fn session_shard(&self, key: &SessionKey) -> u16 {
        if !self.clustered {
            return 0;
        }
        let h = fnv1a(Self::session_index_member(key).bytes());
        (h % u64::from(CLUSTER_SESSION_SHARDS)) as u16
    }

    /// The common start of every key of one session, ending in its hash tag.
    pub fn session_base(&self, key: &SessionKey) -> String {
        if self.clustered {
            format!(
                "{}:sess:{{{}:{}}}:{}:{}",
                self.prefix,
                escape(key.tenant()),
                self.session_shard(key),
                escape(key.channel()),
                escape(key.user())
            )
        } else {
            format!("{}:sess:{{{}}}", self.prefix, key.escaped())
        }
    }

    /// The sorted set listing a tenant's sessions: in the cluster layout, those of
    /// shard 0 (see [`KeyLayout::session_index_shard`]).
    pub fn session_index(&self, tenant: &str) -> String {
        self.session_index_shard(tenant, 0)
    }

    /// The sorted set listing the sessions of `tenant` in index shard `shard`
    /// (`0..session_shards()`); outside the cluster layout the one index.
    pub fn session_index_shard(&self, tenant: &str, shard: u16) -> String {
        if self.clustered {
            format!("{}:sessidx:{{{}:{shard}}}", self.prefix, escape(tenant))
        } else {
            format!("{}:sessidx:{{{}}}", self.prefix, escape(tenant))
        }
    }

    /// The index that lists `key`.
    pub fn session_index_of(&self, key: &SessionKey) -> String {
        self.session_index_shard(key.tenant(), self.session_shard(key))
    }

    /// The sorted set of the same members as an index (`index`, from
    /// [`KeyLayout::session_index_shard`]), each scored with its session's expiry
    /// (Unix ms), so expired members can be pruned by score while the index itself
    /// stays in member order for paging.
    pub fn index_deadlines(index: &str) -> String {
        format!("{index}:exp")
    }

    /// [`KeyLayout::index_deadlines`] of [`KeyLayout::session_index`].
    pub fn session_index_deadlines(&self, tenant: &str) -> String {
        Self::index_deadlines(&self.session_index(tenant))
    }

    /// A session's member in its tenant's index: `<channel>:<user>`, escaped.
    pub fn session_index_member(key: &SessionKey) -> String {
        format!("{}:{}", escape(key.channel()), escape(key.user()))
    }

    /// The key of a focus document.
    pub fn focus(&self, key: &FocusKey) -> String {
        format!(
            "{}:focus:{{{}}}:{}",
            self.prefix,
            escape(key.scope()),
            escape(key.name())
        )
    }

    /// The set of a scope's focus document names.
    pub fn focus_index(&self, scope: &str) -> String {
        format!("{}:focusidx:{{{}}}", self.prefix, escape(scope))
    }

    /// The key of a cache entry.
    pub fn cache(&self, key: &CacheKey) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 16 + key.key().len());
        self.push_cache(&mut out, key);
        out
    }

    /// Appends [`KeyLayout::cache`]`(key)` to `out`.
    fn push_cache(&self, out: &mut String, key: &CacheKey) {
        out.push_str(&self.prefix);
        out.push_str(":kv:");
        push_escaped(out, key.namespace());
        out.push(':');
        key.push_key_escaped(out);
    }

    /// [`KeyLayout::cache`] of each of `keys`, built into one buffer: what a call on
    /// many keys sends, without a `String` per key.
    pub fn cache_keys(&self, keys: &[CacheKey]) -> KeyList {
        self.cache_keys_of(keys)
    }

    /// [`KeyLayout::cache_keys`] of any sequence of keys.
    pub fn cache_keys_of<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a CacheKey, IntoIter: ExactSizeIterator>,
    ) -> KeyList {
        let keys = keys.into_iter();
        let mut list = KeyList {
            buf: String::with_capacity(keys.len() * (self.prefix.len() + 24)),
            ends: Vec::with_capacity(keys.len()),
        };
        // `{prefix}:kv:{namespace}:`, escaped once for each run of keys in one
        // namespace (a many-key call usually has one) instead of once per key.
        let mut head = String::new();
        let mut head_of: Option<&str> = None;
        for key in keys {
            if head_of != Some(key.namespace()) {
                head.clear();
                head.push_str(&self.prefix);
                head.push_str(":kv:");
                push_escaped(&mut head, key.namespace());
                head.push(':');
                head_of = Some(key.namespace());
            }
            list.buf.push_str(&head);
            key.push_key_escaped(&mut list.buf);
            list.ends.push(list.buf.len());
        }
        list
    }

    /// The SCAN pattern of a namespace's keys starting with `key_prefix` (escaping
    /// leaves no glob character in the ids).
    pub fn cache_pattern(&self, namespace: &str, key_prefix: &str) -> String {
        format!(
            "{}:kv:{}:{}*",
            self.prefix,
            escape(namespace),
            escape(key_prefix)
        )
    }

    /// The set of an entry's aliases, for the entry's key `entry` (from
    /// [`KeyLayout::cache`]): `{prefix}:aliases:{<entry>}`. A cache key holds no
    /// `{`/`}` (its parts are escaped, the prefix has none), so the Cluster hashes
    /// both on the same text: they share a slot, and one script writes both.
    pub fn cache_alias_set(&self, entry: &str) -> String {
        format!("{}:aliases:{{{entry}}}", self.prefix)
    }

    /// [`KeyLayout::cache_alias_set`] of many entries' keys, in one buffer (what
    /// a many-set sends beside its entries: one allocation, not one per entry).
    pub fn cache_alias_sets<'a>(
        &self,
        entries: impl IntoIterator<Item = &'a str, IntoIter: ExactSizeIterator>,
    ) -> KeyList {
        let entries = entries.into_iter();
        let mut list = KeyList {
            buf: String::with_capacity(entries.len() * (2 * self.prefix.len() + 40)),
            ends: Vec::with_capacity(entries.len()),
        };
        for entry in entries {
            list.buf.push_str(&self.prefix);
            list.buf.push_str(":aliases:{");
            list.buf.push_str(entry);
            list.buf.push('}');
            list.ends.push(list.buf.len());
        }
        list
    }

    /// The key of alias `alias`: `{prefix}:alias:<namespace>:<key>`, holding the
    /// entry's key.
    pub fn cache_alias(&self, alias: &CacheKey) -> String {
        format!("{}:alias:{alias}", self.prefix)
    }

    /// The SCAN patterns of what `clear_prefix(namespace, key_prefix)` removes
    /// beside the entries: the alias sets of those entries, and the aliases named
    /// in `namespace` starting with `key_prefix`.
    pub fn cache_alias_patterns(&self, namespace: &str, key_prefix: &str) -> [String; 2] {
        [
            self.cache_alias_set(&self.cache_pattern(namespace, key_prefix))
                .trim_end_matches('}')
                .to_string(),
            format!(
                "{}:alias:{}:{}*",
                self.prefix,
                escape(namespace),
                escape(key_prefix)
            ),
        ]
    }

    /// The cache key of a stored entry key (what [`KeyLayout::cache`] made), or
    /// `None` when `stored` is not one under this prefix.
    pub fn parse_cache(&self, stored: &str) -> Option<CacheKey> {
        let rest = stored
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":kv:")?;
        CacheKey::from_escaped(rest)
    }

    /// The hash holding the counters of `name` in `bucket`. `@` separates the bucket,
    /// so it is escaped in the name: the name `hits@2026-11-22` is not a bucket.
    pub fn counter_hash(&self, name: &str, bucket: Option<Bucket>) -> String {
        let name = escape(name).replace('@', "%40");
        match bucket {
            Some(b) => format!("{}:cnt:{{counters}}:{name}@{b}", self.prefix),
            None => format!("{}:cnt:{{counters}}:{name}", self.prefix),
        }
    }

    /// The key recording that a counter batch was applied.
    pub fn counter_batch(&self, id: &str) -> String {
        format!("{}:cnt:{{counters}}:batch:{}", self.prefix, escape(id))
    }
    /// The common start of a streamed reply's keys, ending in its hash tag:
    /// `{prefix}:reply:{<run>}` (append `:meta`, `:chunks`, `:live`).
    pub fn reply_base(&self, run: &RunId) -> String {
        format!("{}:reply:{{{}}}", self.prefix, escape(run.as_str()))
    }
}

/// Checks a key prefix: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
///
/// No `:`: the layout separates the prefix from the rest with `:`, so a prefix
/// `app:staging` would make one deployment's clear (`app:*`) match another's keys.
pub fn check_prefix(prefix: &str) -> Result<()> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_input(
            "key prefix must be 1 to 64 characters from A-Z a-z 0-9 _ - . (no `:`, which separates the prefix from the key)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn session_key_rejects_empty_and_oversize_parts() {
        assert!(SessionKey::new("t", "c", "u").is_ok());
        for (t, c, u) in [("", "c", "u"), ("t", "", "u"), ("t", "c", "")] {
            let err = SessionKey::new(t, c, u).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
        }
        let big = "x".repeat(MAX_ID_BYTES + 1);
        let err = SessionKey::new("t", "c", big).unwrap_err();
        assert!(err.message().contains("limit of 512"), "{err}");
        assert!(SessionKey::new("t", "c", "x".repeat(MAX_ID_BYTES)).is_ok());
    }

    #[test]
    fn ids_that_join_the_same_naively_escape_differently() {
        let a = SessionKey::new("a:b", "c", "d").unwrap();
        let b = SessionKey::new("a", "b:c", "d").unwrap();
        assert_ne!(a.escaped(), b.escaped());
        let layout = KeyLayout::new("cs").unwrap();
        assert_eq!(layout.session_base(&a), "cs:sess:{a%3Ab:c:d}");
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // Reference values of 64-bit FNV-1a: the layout depends on them never
        // changing.
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn cluster_layout_puts_a_session_and_its_index_in_one_hash_tag() {
        let layout = KeyLayout::clustered("cs").unwrap();
        let k = SessionKey::new("acme", "wa", "5511:9").unwrap();
        let shard = layout.session_shard(&k);
        assert!(shard < CLUSTER_SESSION_SHARDS);
        let base = layout.session_base(&k);
        assert_eq!(base, format!("cs:sess:{{acme:{shard}}}:wa:5511%3A9"));
        assert_eq!(
            layout.session_index_of(&k),
            format!("cs:sessidx:{{acme:{shard}}}")
        );
        // Fixed across processes and versions: FNV-1a of the member.
        assert_eq!(layout.session_shard(&k), layout.session_shard(&k.clone()));
        let shards: std::collections::HashSet<u16> = (0..200)
            .map(|i| layout.session_shard(&SessionKey::new("t", "c", i.to_string()).unwrap()))
            .collect();
        assert_eq!(shards.len(), usize::from(CLUSTER_SESSION_SHARDS));
        let plain = KeyLayout::new("cs").unwrap();
        assert_eq!(plain.session_shards(), 1);
        assert_eq!(plain.session_index_of(&k), "cs:sessidx:{acme}");
    }

    #[test]
    fn hash_tag_cannot_be_forged() {
        let k = SessionKey::new("}evil{", "c", "u").unwrap();
        let base = KeyLayout::new("cs").unwrap().session_base(&k);
        assert_eq!(base.matches('{').count(), 1);
        assert_eq!(base.matches('}').count(), 1);
    }

    #[test]
    fn a_counter_name_with_at_is_not_a_bucket() {
        let layout = KeyLayout::new("cs").unwrap();
        let day = Bucket::day_of(Timestamp(0));
        assert_ne!(
            layout.counter_hash("hits@1970-01-01", None),
            layout.counter_hash("hits", Some(day))
        );
        let named = CounterKey::new("hits@1970-01-01").unwrap();
        let bucketed = CounterKey::new("hits").unwrap().in_bucket(day);
        assert_ne!(named.to_string(), bucketed.to_string());
    }

    #[test]
    fn prefix_is_validated() {
        assert!(KeyLayout::new("chatstate").is_ok());
        assert!(KeyLayout::new("app.v2").is_ok());
        assert!(
            KeyLayout::new("app:v2").is_err(),
            "`:` would let `app` match `app:v2` keys"
        );
        assert!(KeyLayout::new("").is_err());
        assert!(KeyLayout::new("a{b}").is_err());
        assert!(KeyLayout::new("a*").is_err());
    }

    #[test]
    fn labels_are_order_independent() {
        let a = Labels::from_pairs([("a", "1"), ("b", "2")]).unwrap();
        let b = Labels::from_pairs([("b", "2"), ("a", "1")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.escaped(), "a=1,b=2");
        let tricky = Labels::from_pairs([("k", "v=1,x")]).unwrap();
        assert_eq!(tricky.escaped(), "k=v%3D1%2Cx");
    }

    #[test]
    fn labels_escaped_form_parses_back() {
        for labels in [
            Labels::new(),
            Labels::from_pairs([("type", "timeout")]).unwrap(),
            Labels::from_pairs([("k=1", "v,2"), ("a b", "🙂:%")]).unwrap(),
        ] {
            assert_eq!(Labels::parse_escaped(&labels.escaped()), Some(labels));
        }
        assert_eq!(Labels::parse_escaped("novalue"), None);
    }

    #[test]
    fn too_many_labels_rejected() {
        let pairs: Vec<_> = (0..=MAX_LABELS).map(|i| (format!("l{i}"), "v")).collect();
        assert!(Labels::from_pairs(pairs).is_err());
    }

    #[test]
    fn buckets_out_of_the_years_1_to_9999_are_invalid_input() {
        for ok in [
            Bucket::Day(Bucket::FIRST_DAY),
            Bucket::Day(Bucket::LAST_DAY),
            Bucket::Hour(Bucket::LAST_DAY * 24 + 23),
            Bucket::day_of(Timestamp(0)),
        ] {
            ok.check().unwrap();
        }
        assert_eq!(Bucket::Day(Bucket::FIRST_DAY).to_string(), "0001-01-01");
        assert_eq!(Bucket::Day(Bucket::LAST_DAY).to_string(), "9999-12-31");
        for bad in [
            Bucket::Day(Bucket::LAST_DAY + 1),
            Bucket::Day(i64::MAX),
            Bucket::Day(i64::MIN),
            Bucket::Hour(Bucket::LAST_DAY * 24 + 24),
            Bucket::Hour(Bucket::FIRST_DAY * 24 - 1),
        ] {
            assert_eq!(
                bad.check().unwrap_err().kind(),
                crate::ErrorKind::InvalidInput
            );
            let key = CounterKey::new("hits").unwrap().in_bucket(bad);
            let err = key.check().unwrap_err();
            assert_eq!(err.key(), Some(key.to_string().as_str()));
        }
    }

    #[test]
    fn buckets_parse_back_from_their_display_form() {
        for b in [
            Bucket::Day(Bucket::FIRST_DAY),
            Bucket::Day(Bucket::LAST_DAY),
            Bucket::Day(0),
            Bucket::Day(-1),
            Bucket::Hour(Bucket::FIRST_DAY * 24),
            Bucket::Hour(Bucket::LAST_DAY * 24 + 23),
            Bucket::hour_of(Timestamp(1_795_323_723_456)),
        ] {
            assert_eq!(b.to_string().parse::<Bucket>().unwrap(), b, "{b:?}");
        }
        for bad in [
            "",
            "2026-1-01",
            "2026-02-30",
            "2026-01-01T24",
            "0000-01-01",
            "x",
            "2026-01-01T5",
        ] {
            assert!(bad.parse::<Bucket>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_key_list_holds_exactly_the_keys_cache_makes() {
        let layout = KeyLayout::new("p").unwrap();
        let keys: Vec<CacheKey> = [("ns", "a"), ("n:s", "b{1} c%"), ("ns", "olá*?")]
            .iter()
            .map(|(n, k)| CacheKey::new(*n, *k).unwrap())
            .collect();
        let list = layout.cache_keys(&keys);
        assert_eq!(list.len(), 3);
        let expected: Vec<String> = keys.iter().map(|k| layout.cache(k)).collect();
        assert_eq!(list.to_vec(), expected);
        assert_eq!(expected[1], "p:kv:n%3As:b%7B1%7D%20c%25");
        assert_eq!(list.get(3), None);
        assert!(layout.cache_keys(&[]).is_empty());
        let sets = layout.cache_alias_sets(list.iter());
        let one_by_one: Vec<String> = expected.iter().map(|k| layout.cache_alias_set(k)).collect();
        assert_eq!(sets.to_vec(), one_by_one);
        for part in ["", "plain", "a:b{c}", "olá 👋", "\u{7f}\u{1}%"] {
            let mut out = String::from("x");
            push_escaped(&mut out, part);
            assert_eq!(out, format!("x{}", escape(part)));
        }
    }

    #[test]
    fn buckets_format_as_utc_day_and_hour() {
        let t = Timestamp(1_795_323_723_456); // 2026-11-22T05:02:03.456Z
        assert_eq!(Bucket::day_of(t).to_string(), "2026-11-22");
        assert_eq!(Bucket::hour_of(t).to_string(), "2026-11-22T05");
        assert_eq!(Bucket::day_of(Timestamp(-1)).to_string(), "1969-12-31");
    }

    /// The escaping as first written, character by character: keys already stored
    /// depend on its exact text, so the byte scan must give the same for any input.
    fn escape_by_chars(part: &str) -> String {
        let mut out = String::new();
        for c in part.chars() {
            if matches!(
                c,
                '%' | ':' | '{' | '}' | '/' | '\\' | '*' | '?' | '[' | ']' | ' '
            ) || c.is_ascii_control()
            {
                out.push_str(&format!("%{:02X}", c as u32));
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn escape_of_every_ascii_character_is_unchanged() {
        for b in 0u8..=127 {
            let part = format!("a{}é{}", char::from(b), char::from(b));
            assert_eq!(escape(&part), escape_by_chars(&part), "byte {b:#04x}");
        }
    }

    proptest! {
        #[test]
        fn cache_keys_are_each_keys_own_text(
            parts in proptest::collection::vec((0..3usize, "[a-z:{ %é👋]{1,6}"), 0..12)
        ) {
            // Runs of one namespace, namespaces coming back, reserved characters.
            let layout = KeyLayout::new("p").unwrap();
            let keys: Vec<CacheKey> = parts
                .iter()
                .map(|(ns, k)| CacheKey::new(["a", "b:c", "d"][*ns], k.as_str()).unwrap())
                .collect();
            let one_by_one: Vec<String> = keys.iter().map(|k| layout.cache(k)).collect();
            let list = layout.cache_keys(&keys);
            prop_assert_eq!(&list.to_vec(), &one_by_one);
            prop_assert_eq!(list.iter().len(), keys.len());
            for (i, k) in one_by_one.iter().enumerate() {
                prop_assert_eq!(list.get(i), Some(k.as_str()));
            }
            prop_assert_eq!(list.get(keys.len()), None);
            // Each part escaped by `escape` itself: what `new`'s no-escaping note
            // must agree with.
            let by_escape: Vec<String> = keys
                .iter()
                .map(|k| format!("p:kv:{}:{}", escape(k.namespace()), escape(k.key())))
                .collect();
            prop_assert_eq!(&one_by_one, &by_escape);
            // A deserialized key (no note: scanned when used) is the same key and
            // the same store key.
            let read: Vec<CacheKey> =
                serde_json::from_str(&serde_json::to_string(&keys).unwrap()).unwrap();
            prop_assert_eq!(&read, &keys);
            let read_list = layout.cache_keys(&read);
            prop_assert_eq!(read_list.to_vec(), by_escape);
            let hash = |k: &CacheKey| {
                use std::hash::{BuildHasher, RandomState};
                static STATE: std::sync::LazyLock<RandomState> =
                    std::sync::LazyLock::new(RandomState::new);
                STATE.hash_one(k)
            };
            for (a, b) in read.iter().zip(&keys) {
                prop_assert_eq!(hash(a), hash(b));
                prop_assert_eq!(a.cmp(b), std::cmp::Ordering::Equal);
            }
        }

        #[test]
        fn escape_is_the_same_text_as_by_characters(s in any::<String>()) {
            prop_assert_eq!(escape(&s).into_owned(), escape_by_chars(&s));
        }

        #[test]
        fn escape_roundtrips_and_has_no_reserved_chars(s in any::<String>()) {
            let e = escape(&s);
            let reserved = [':', '{', '}', '/', '\\', '*', '?', '[', ']', ' ', '\0'];
            prop_assert!(!e.contains(reserved), "escaped form {:?} has a reserved char", e);
            prop_assert_eq!(unescape(&e), Some(s));
        }

        #[test]
        fn escape_is_injective(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape(&a), escape(&b));
        }
    }
}
