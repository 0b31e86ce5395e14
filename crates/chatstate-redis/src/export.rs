//! Inventory on Redis: every record found with `SCAN … MATCH <prefix>:… TYPE …`
//! (never `KEYS`), read with one script per record (its fields and its `PTTL`
//! together), restored with one script per record that decides by the core's
//! rules ([`chatstate_core::inventory`], mirrored here in Lua) and writes the exact
//! state with its TTL atomically.
//!
//! | kind | SCAN pattern (type) | read | restore |
//! | --- | --- | --- | --- |
//! | session | `<prefix>:sess:{*}:ctx` (hash) | `READ_SESSION`: HGETALL, LRANGE, PTTL, HGETALL of the side data | `RESTORE_SESSION`: replaces ctx, msgs and data, PEXPIREs all three, writes the tenant index (the session module's `refresh`) |
//! | focus | `<prefix>:focus:{*` (hash) | `READ_FOCUS`: HMGET, PTTL | `RESTORE_FOCUS`: the hash, its TTL, the scope's name set |
//! | counter | `<prefix>:cnt:{counters}:*` (hash; batch ids are strings and not matched) | HGETALL of a name's hash | `RESTORE_COUNTER`: HSET of the exact value |
//! | cache | `<prefix>:kv:*` (string) | `READ_CACHE`: GET, PTTL, SMEMBERS of the alias set; then a GET per alias key (those naming the entry are its aliases) | compared in Rust (`decide_value` of value and aliases), written as `set_with_aliases` (one script; on a Cluster, then the alias keys) |
//!
//! **Cursors.** A page resumes a SCAN. A page ends at a SCAN step's boundary
//! whenever the next step's records do not all fit (the cursor is then `<scan
//! cursor>`, and the next page re-runs that step whole), so SCAN's own promise holds:
//! a record present for the whole walk is returned — twice only if SCAN itself
//! repeats it (a rehash during the walk), which an idempotent restore absorbs. Only
//! a single step holding more records than `limit` (up to 256 keys per step; a
//! counter hash's fields are records of their own) is split: the cursor is then
//! `<scan cursor> <last key>` (counters: `<scan cursor> <hash> <labels>`), the step
//! is re-run with the same `COUNT` and the page starts after that key; if the table
//! shrinks between those two pages, keys the re-run step newly covers that sort
//! before that key can be missed. A page size above the records of one step avoids
//! the split: `chatstate::migrate`'s default of 500 is, for sessions, focus
//! documents and cache entries (one record per key, about 256 keys per step); a
//! step of counter hashes holds every label of every name it covers, so counters
//! with many labels can still be split. A page holds at most `limit` records.
//!
//! **Keys the layout does not explain** (written under the prefix by something
//! else) are reported in [`InventoryPage::unreadable`] by name, and the walk goes
//! on. A key found without a TTL (only something else writes one) is read with the
//! longest TTL a store accepts, ten years.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::config::MAX_TTL;
use chatstate_core::inventory::{check_scan_limit, decide_value};
use chatstate_core::key::check_aliases;
use chatstate_core::key::{escape, unescape};
use chatstate_core::{
    Bucket, CacheKey, CacheRecord, CounterKey, CounterRecord, Error, FocusKey, FocusRecord,
    Inventory, InventoryPage, KeyLayout, Labels, Record, RecordKey, RecordKind, RestoreMode,
    Restored, Result, ResultExt, SessionKey, SessionRecord,
};
use redis::Value;

use crate::RedisStore;
use crate::conn::{ScanPos, Script, lua_int, lua_wrongtype, reply};
use crate::session::{StoredMessage, keys, lua_prelude, message_from, num, session_from};

/// Keys asked per SCAN step. Fixed, never derived from the page size: a resumed
/// step must cover the same buckets as the step its cursor came from.
const SCAN_COUNT: usize = 256;

/// Lua: `cmp_uint(a, b)`, -1/0/1 for two canonical non-negative integer strings
/// (as `check_record` guarantees): exact over the whole u64 range, where Lua's
/// doubles are not.
macro_rules! lua_cmp {
    () => {
        r#"
local function cmp_uint(a, b)
  if #a ~= #b then return #a < #b and -1 or 1 end
  if a == b then return 0 end
  return a < b and -1 or 1
end
local function cmp_num(a, b)
  if a > b then return 1 elseif a < b then return -1 end
  return 0
end
"#
    };
}

/// Reads a session with its window, side data and TTL. KEYS: ctx, msgs, data.
/// Returns nil or {hash, messages, pttl, data hash}.
const READ_SESSION: &str = r#"
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return nil end
return {h, redis.call('LRANGE', KEYS[2], 0, -1), redis.call('PTTL', KEYS[1]),
  redis.call('HGETALL', KEYS[3])}
"#;

/// Restores a session: `chatstate_core::inventory::decide_session` in Lua, then
/// the exact state with its TTL and the tenant index, atomically.
/// KEYS: ctx, msgs, index, deadlines, data. ARGV: write (1) or dry run (0), ttl_ms,
/// version, message_count, last_activity, nfields, (field, value) × nfields,
/// nmsgs, message × nmsgs, ndata, (name, value) × ndata, member.
/// Returns 0 written (dry run: would write), 1 unchanged, 2 skipped: the target is
/// newer. A corrupt `version`/`message_count` in the target is Decode (nothing
/// written), as on every session write.
const RESTORE_SESSION: &str = concat!(
    lua_prelude!(),
    lua_cmp!(),
    r#"
local ctx, msgs = KEYS[1], KEYS[2]
local e = check_keys()
if e then return e end
local nf = tonumber(ARGV[6])
local m0 = 7 + 2 * nf
local nm = tonumber(ARGV[m0])
local d0 = m0 + nm + 1
local nd = tonumber(ARGV[d0])
if redis.call('EXISTS', ctx) == 1 then
  local f
  e, f = check_record(ctx)
  if e then return e end
  local want_id, want_created
  for i = 0, nf - 1 do
    local name = ARGV[7 + 2 * i]
    if name == 'id' then want_id = ARGV[8 + 2 * i]
    elseif name == 'created_at' then want_created = ARGV[8 + 2 * i] end
  end
  -- The target's id and created_at, refused as corrupt as a read refuses them.
  local cur_id = redis.call('HGET', ctx, 'id')
  if not cur_id then return corrupt(ctx, 'lacks field id') end
  local cur_created = redis.call('HGET', ctx, 'created_at')
  if not is_int(cur_created) then
    return corrupt(ctx, 'field created_at is not an integer')
  end
  local c
  if want_id and cur_id ~= want_id then
    -- Another conversation of this key: the one created later is kept, a tie
    -- writes the record (decide_session). -1 here means "write the record".
    local cc = cmp_num(tonumber(cur_created), tonumber(want_created) or 0)
    c = cc > 0 and 1 or -1
  else
    c = cmp_uint(f[1], ARGV[3])
    if c == 0 then c = cmp_uint(f[2], ARGV[4]) end
    if c == 0 then
      local la = redis.call('HGET', ctx, 'last_activity') or redis.call('HGET', ctx, 'created_at')
      c = cmp_num(tonumber(la) or 0, tonumber(ARGV[5]))
    end
  end
  if c > 0 then return 2 end
  if c == 0 then
    -- The record's fields, but for `index_until` (the tenant index's own
    -- bookkeeping, see the session module's docs: not part of the record).
    local h = redis.call('HGETALL', ctx)
    local want = {}
    for i = 0, nf - 1 do want[ARGV[7 + 2 * i]] = ARGV[8 + 2 * i] end
    local same, n = true, 0
    for i = 1, #h, 2 do
      if h[i] ~= 'index_until' then
        n = n + 1
        if want[h[i]] ~= h[i + 1] then same = false; break end
      end
    end
    same = same and n == nf
    if same then
      local cur = redis.call('LRANGE', msgs, 0, -1)
      same = #cur == nm
      if same then
        for i = 1, nm do
          if cur[i] ~= ARGV[m0 + i] then same = false; break end
        end
      end
    end
    if same then
      local d = redis.call('HGETALL', KEYS[5])
      same = #d == 2 * nd
      if same then
        local want = {}
        for i = 0, nd - 1 do want[ARGV[d0 + 1 + 2 * i]] = ARGV[d0 + 2 + 2 * i] end
        for i = 1, #d, 2 do
          if want[d[i]] ~= d[i + 1] then same = false; break end
        end
      end
    end
    if same then return 1 end
  end
end
if ARGV[1] ~= '1' then return 0 end
redis.call('DEL', ctx, msgs, KEYS[5])
for i = 0, nf - 1 do redis.call('HSET', ctx, ARGV[7 + 2 * i], ARGV[8 + 2 * i]) end
for i = 1, nm do redis.call('RPUSH', msgs, ARGV[m0 + i]) end
for i = 0, nd - 1 do redis.call('HSET', KEYS[5], ARGV[d0 + 1 + 2 * i], ARGV[d0 + 2 + 2 * i]) end
refresh(ARGV[2])
return 0
"#
);

/// Reads a focus document and its TTL. KEYS: doc. Returns nil or {value, version,
/// updated_at, pttl}.
const READ_FOCUS: &str = r#"
local d = redis.call('HMGET', KEYS[1], 'value', 'version', 'updated_at')
if not d[2] then return nil end
return {d[1], d[2], d[3], redis.call('PTTL', KEYS[1])}
"#;

/// Restores a focus document: `decide_focus` in Lua, then the hash, its TTL and the
/// scope's name set (as the store's PUT writes them). KEYS: doc, index. ARGV: write
/// (1) or dry run (0), version, updated_at, value, ttl_ms, escaped name.
/// Returns 0 written, 1 unchanged, 2 skipped (newer).
const RESTORE_FOCUS: &str = concat!(
    lua_wrongtype!(),
    lua_int!(),
    lua_cmp!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'set')
if e then return e end
local h = redis.call('HMGET', KEYS[1], 'value', 'version', 'updated_at')
if h[2] then
  if not is_int(h[2]) or string.sub(h[2], 1, 1) == '-' or not is_int(h[3] or '0') then
    return corrupt(KEYS[1], 'the document version or updated_at is not an integer')
  end
  -- Versions compare exactly as strings (doubles lose precision above 2^53).
  local c = cmp_uint(h[2], ARGV[2])
  if c == 0 then c = cmp_num(tonumber(h[3] or '0'), tonumber(ARGV[3])) end
  if c > 0 then return 2 end
  if c == 0 and h[1] == ARGV[4] then return 1 end
end
if ARGV[1] ~= '1' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'value', ARGV[4], 'version', ARGV[2], 'updated_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('SADD', KEYS[2], ARGV[6])
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then redis.call('PEXPIRE', KEYS[2], ARGV[5]) end
return 0
"#
);

/// Sets a counter to an exact value (never an add: a re-run never counts twice).
/// KEYS: the name's hash. ARGV: write (1) or dry run (0), field (labels), value.
/// Returns 0 written, 1 unchanged.
const RESTORE_COUNTER: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash')
if e then return e end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[3] then return 1 end
if ARGV[1] ~= '1' then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 0
"#
);

/// Reads a cache entry, its TTL and its alias set. KEYS: the entry, its alias set.
/// Returns nil or {value, pttl, members of the set}.
const READ_CACHE: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return nil end
return {v, redis.call('PTTL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
"#;

struct InventoryScripts {
    read_session: Script,
    restore_session: Script,
    read_focus: Script,
    restore_focus: Script,
    restore_counter: Script,
    read_cache: Script,
}

/// Hashed once per process (the store's own scripts are hashed per store; these
/// are used rarely, by tools).
static SCRIPTS: LazyLock<InventoryScripts> = LazyLock::new(|| InventoryScripts {
    read_session: Script::new("inventory_read_session", READ_SESSION),
    restore_session: Script::new("inventory_restore_session", RESTORE_SESSION),
    read_focus: Script::new("inventory_read_focus", READ_FOCUS),
    restore_focus: Script::new("inventory_restore_focus", RESTORE_FOCUS),
    restore_counter: Script::new("inventory_restore_counter", RESTORE_COUNTER),
    read_cache: Script::new("inventory_read_cache", READ_CACHE),
});

/// A PTTL reply as a record's TTL: `None` for a key gone meanwhile; a key without a
/// TTL gets the longest a store accepts.
fn record_ttl(pttl: i64) -> Option<Duration> {
    match crate::pttl_to_duration(pttl)? {
        Duration::MAX => Some(MAX_TTL),
        d if d.is_zero() => None,
        d => Some(d),
    }
}

fn foreign(key: &str) -> Error {
    Error::decode("a key under the prefix does not follow chatstate's layout")
        .with_operation("scan")
        .with_key(key)
}

/// The layout's keys parsed back into chatstate keys (the inverse of
/// [`chatstate_core::KeyLayout`]'s builders); `None` for a key the layout does not make.
struct Parse<'a> {
    prefix: &'a str,
    layout: &'a KeyLayout,
}

impl Parse<'_> {
    fn session(&self, key: &str) -> Option<SessionKey> {
        let rest = key.strip_prefix(&format!("{}:sess:{{", self.prefix))?;
        let (tag, after) = rest.split_once('}')?;
        let after = after.strip_suffix(":ctx")?;
        let mut parts = tag.split(':');
        let (t, c, u) = if self.layout.is_clustered() {
            // `{<tenant>:<shard>}:<channel>:<user>:ctx`
            let (t, shard) = (parts.next()?, parts.next()?);
            let (c, u) = after.strip_prefix(':')?.split_once(':')?;
            if u.contains(':') || parts.next().is_some() {
                return None;
            }
            let key = SessionKey::new(unescape(t)?, unescape(c)?, unescape(u)?).ok()?;
            // A session in another shard than its own is not one the layout makes.
            return (self.layout.session_shard(&key).to_string() == shard).then_some(key);
        } else {
            (parts.next()?, parts.next()?, parts.next()?)
        };
        if !after.is_empty() || parts.next().is_some() {
            return None;
        }
        SessionKey::new(unescape(t)?, unescape(c)?, unescape(u)?).ok()
    }

    fn focus(&self, key: &str) -> Option<FocusKey> {
        let rest = key.strip_prefix(&format!("{}:focus:{{", self.prefix))?;
        let (scope, name) = rest.split_once("}:")?;
        FocusKey::new(unescape(scope)?, unescape(name)?).ok()
    }

    fn cache(&self, key: &str) -> Option<CacheKey> {
        self.layout.parse_cache(key)
    }

    /// A counter hash's name and bucket.
    fn counter_hash(&self, key: &str) -> Option<(String, Option<Bucket>)> {
        let rest = key.strip_prefix(&format!("{}:cnt:{{counters}}:", self.prefix))?;
        if rest.contains(':') {
            return None; // `batch:<id>`: escaped names hold no `:`
        }
        let (name, bucket) = match rest.split_once('@') {
            Some((n, b)) => (n, Some(b.parse::<Bucket>().ok()?)),
            None => (rest, None),
        };
        let name = unescape(name)?;
        chatstate_core::key::check_scope("counter name", &name).ok()?;
        Some((name, bucket))
    }
}

/// Where a page resumes: the SCAN step, and the last record taken from it.
struct ScanCursor {
    step: ScanPos,
    after_key: Option<String>,
    after_field: Option<String>,
}

impl ScanCursor {
    /// The cursor's text form: `<step>`, `<step> <key>` or `<step> <key> <field>`
    /// (`<step>` is SCAN's cursor, after `<host>:<port>/` on a Cluster).
    fn to_cursor(&self) -> String {
        let step = self.step.token();
        match (&self.after_key, &self.after_field) {
            (Some(k), Some(f)) => format!("{step} {k} {f}"),
            (Some(k), None) => format!("{step} {k}"),
            _ => step,
        }
    }

    fn parse(cursor: Option<&str>, kind: RecordKind) -> Result<ScanCursor> {
        let Some(c) = cursor else {
            return Ok(ScanCursor {
                step: ScanPos::default(),
                after_key: None,
                after_field: None,
            });
        };
        let bad = chatstate_core::inventory::malformed_cursor;
        let mut parts = c.splitn(3, ' ');
        let step = parts.next().and_then(ScanPos::parse).ok_or_else(bad)?;
        let after_key = parts.next().map(str::to_string);
        let after_field = parts.next().map(str::to_string);
        let fields_ok = match kind {
            RecordKind::Counter => after_key.is_some() == after_field.is_some(),
            _ => after_field.is_none(),
        };
        if !fields_ok || after_key.as_deref().is_some_and(|k| k.contains('\0')) {
            return Err(bad());
        }
        Ok(ScanCursor {
            step,
            after_key,
            after_field,
        })
    }
}

impl RedisStore {
    fn parse(&self) -> Parse<'_> {
        Parse {
            prefix: self.inner.layout.prefix(),
            layout: &self.inner.layout,
        }
    }

    async fn read_session_record(&self, key: &SessionKey) -> Result<Option<SessionRecord>> {
        let k = keys(&self.inner.layout, key);
        let v = self
            .inner
            .conn
            .script(
                &SCRIPTS.read_session,
                &[&k.ctx, &k.msgs, &k.data],
                &[],
                "read",
            )
            .await?;
        if v == Value::Nil {
            return Ok(None);
        }
        let mut parts = reply::array(v)?.into_iter();
        let (Some(hash), Some(msgs), Some(pttl), Some(data)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::decode("unexpected Redis reply shape: a session").with_key(&k.ctx));
        };
        let Some(ttl) = record_ttl(reply::int(&pttl)?) else {
            return Ok(None);
        };
        let session = session_from(key, &k.ctx, reply::pairs(hash)?)?;
        let messages = reply::array(msgs)?
            .into_iter()
            .map(|m| message_from(&reply::bytes(m)?.unwrap_or_default(), &k.msgs))
            .collect::<Result<Vec<_>>>()?;
        let data = reply::pairs(data)?
            .into_iter()
            .map(|(name, value)| (name, Bytes::from(value)))
            .collect();
        Ok(Some(SessionRecord {
            session,
            messages,
            data,
            ttl,
        }))
    }

    async fn read_focus_record(&self, key: &FocusKey) -> Result<Option<FocusRecord>> {
        let doc_key = self.inner.layout.focus(key);
        let v = self
            .inner
            .conn
            .script(&SCRIPTS.read_focus, &[&doc_key], &[], "read")
            .await?;
        let parts = reply::array(v)?;
        if parts.is_empty() {
            return Ok(None);
        }
        let Ok([value, version, updated_at, pttl]) = <[Value; 4]>::try_from(parts) else {
            return Err(
                Error::decode("unexpected Redis reply shape: a focus document").with_key(&doc_key),
            );
        };
        if version == Value::Nil {
            return Ok(None);
        }
        let Some(ttl) = record_ttl(reply::int(&pttl)?) else {
            return Ok(None);
        };
        let doc = crate::focus::doc_from(key.clone(), value, version, updated_at, &doc_key)?;
        Ok(Some(FocusRecord { doc, ttl }))
    }

    async fn read_cache_record(&self, key: &CacheKey) -> Result<Option<CacheRecord>> {
        let layout = &self.inner.layout;
        let k = layout.cache(key);
        let set = layout.cache_alias_set(&k);
        let v = self
            .inner
            .conn
            .script(&SCRIPTS.read_cache, &[&k, &set], &[], "read")
            .await?;
        let mut parts = reply::array(v)?.into_iter();
        let (Some(value), Some(pttl), Some(members)) = (parts.next(), parts.next(), parts.next())
        else {
            return Ok(None);
        };
        let Some(ttl) = record_ttl(reply::int(&pttl)?) else {
            return Ok(None);
        };
        let value = reply::bytes(value)?.unwrap_or_default();
        // The set's members that resolve here: those whose alias key names this
        // entry (an alias taken by another entry since stays in this set).
        let mut listed: Vec<CacheKey> = Vec::new();
        for m in reply::array(members)? {
            let m = reply::bytes(m)?.unwrap_or_default();
            let alias = std::str::from_utf8(&m)
                .ok()
                .and_then(CacheKey::from_escaped)
                .ok_or_else(|| foreign(&set))?;
            listed.push(alias);
        }
        listed.sort();
        // Each alias key's owner, read concurrently: on the multiplexed connection
        // (or each Cluster node's) they share round trips instead of one each.
        let reads = listed.iter().map(|alias| {
            let alias_key = layout.cache_alias(alias);
            let mut get = redis::cmd("GET");
            get.arg(&alias_key);
            async move {
                self.inner
                    .conn
                    .cmd::<Option<Vec<u8>>>(&get, "read", Some(&alias_key))
                    .await
            }
        });
        let owners = futures_util::future::try_join_all(reads).await?;
        let aliases = listed
            .into_iter()
            .zip(owners)
            .filter(|(_, owner)| owner.as_deref() == Some(k.as_bytes()))
            .map(|(alias, _)| alias)
            .collect();
        Ok(Some(CacheRecord {
            key: key.clone(),
            value: Bytes::from(value),
            ttl,
            aliases,
        }))
    }

    /// Every counter of one hash, sorted by field (labels).
    async fn read_counter_hash(
        &self,
        hash: &str,
        name: &str,
        bucket: Option<Bucket>,
    ) -> Result<Vec<(String, Result<CounterRecord>)>> {
        let v: Value = self
            .inner
            .conn
            .cmd(redis::cmd("HGETALL").arg(hash), "read", Some(hash))
            .await?;
        let mut out: Vec<(String, Result<CounterRecord>)> = reply::pairs(v)?
            .into_iter()
            .map(|(field, raw)| {
                let record = (|| {
                    let labels = Labels::parse_escaped(&field).ok_or_else(|| {
                        Error::decode("a counter field is not a label set").with_key(hash)
                    })?;
                    let value = reply::redis_int(&raw)
                        .ok_or_else(|| Error::decode("a counter is not a number").with_key(hash))?;
                    let mut key = CounterKey::new(name)?.with_labels(labels);
                    if let Some(b) = bucket {
                        key = key.in_bucket(b);
                    }
                    Ok(CounterRecord { key, value })
                })();
                (field, record)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// The records of one key found by SCAN (several for a counter hash), each
    /// with the field it came from (counters) and what reading it gave.
    async fn records_of(
        &self,
        kind: RecordKind,
        key: &str,
    ) -> Result<Vec<(Option<String>, Result<Record>)>> {
        let parse = self.parse();
        let unreadable = |k: &str| vec![(None, Err(foreign(k)))];
        Ok(match kind {
            RecordKind::Session => match parse.session(key) {
                None => unreadable(key),
                Some(k) => self
                    .read_session_record(&k)
                    .await
                    .transpose()
                    .map(|r| (None, r.map(Record::Session)))
                    .into_iter()
                    .collect(),
            },
            RecordKind::Focus => match parse.focus(key) {
                None => unreadable(key),
                Some(k) => self
                    .read_focus_record(&k)
                    .await
                    .transpose()
                    .map(|r| (None, r.map(Record::Focus)))
                    .into_iter()
                    .collect(),
            },
            RecordKind::Cache => match parse.cache(key) {
                None => unreadable(key),
                Some(k) => self
                    .read_cache_record(&k)
                    .await
                    .transpose()
                    .map(|r| (None, r.map(Record::Cache)))
                    .into_iter()
                    .collect(),
            },
            RecordKind::Counter => match parse.counter_hash(key) {
                None => unreadable(key),
                Some((name, bucket)) => self
                    .read_counter_hash(key, &name, bucket)
                    .await?
                    .into_iter()
                    .map(|(field, r)| (Some(field), r.map(Record::Counter)))
                    .collect(),
            },
        })
    }

    fn scan_pattern(&self, kind: RecordKind) -> (String, &'static str) {
        let p = self.inner.layout.prefix();
        match kind {
            RecordKind::Session if self.inner.layout.is_clustered() => {
                (format!("{p}:sess:{{*}}:*:ctx"), "hash")
            }
            RecordKind::Session => (format!("{p}:sess:{{*}}:ctx"), "hash"),
            RecordKind::Focus => (format!("{p}:focus:{{*"), "hash"),
            RecordKind::Counter => (format!("{p}:cnt:{{counters}}:*"), "hash"),
            RecordKind::Cache => (format!("{p}:kv:*"), "string"),
        }
    }
}

fn restored(v: &Value) -> Result<Restored> {
    match reply::int(v)? {
        0 => Ok(Restored::Written),
        1 => Ok(Restored::Unchanged),
        2 => Ok(Restored::SkippedNewer),
        _ => Err(Error::decode(
            "unexpected Redis reply shape: a restore outcome",
        )),
    }
}

/// A session's hash fields as the session scripts write them (`session_from` reads
/// them back).
fn session_fields(s: &chatstate_core::Session) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("id", s.id.clone().into_bytes()),
        ("created_at", num(s.created_at.0)),
        ("last_activity", num(s.last_activity.0)),
        ("updated_at", num(s.updated_at.0)),
        (
            "paused",
            if s.paused {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ),
        ("token_estimate", num(s.token_estimate)),
        ("message_count", num(s.message_count)),
        ("version", num(s.version)),
    ];
    if let Some(v) = &s.summary {
        f.push(("summary", v.clone().into_bytes()));
    }
    if let Some(v) = &s.focus {
        f.push(("focus", v.clone().into_bytes()));
    }
    for (name, v) in [
        ("metadata", &s.metadata),
        ("context", &s.context),
        ("stats", &s.stats),
    ] {
        if let Some(v) = v {
            f.push((name, v.to_vec()));
        }
    }
    f
}

#[async_trait]
impl Inventory for RedisStore {
    async fn scan(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<InventoryPage> {
        check_scan_limit(limit).in_op("scan")?;
        let mut at = ScanCursor::parse(cursor.as_deref(), kind)?;
        let (pattern, type_name) = self.scan_pattern(kind);
        let mut page = InventoryPage {
            records: Vec::new(),
            unreadable: Vec::new(),
            next_cursor: None,
        };
        let count = SCAN_COUNT.to_string();
        loop {
            let (mut found, resolved, next) = self
                .inner
                .conn
                .scan(
                    &at.step,
                    &["MATCH", &pattern, "COUNT", &count, "TYPE", type_name],
                    "scan",
                )
                .await
                .map_err(|e| e.with_key(pattern.clone()))?;
            // Cursors made at this step name it resolved (on a Cluster: the master
            // and the slots' fingerprint, even for the walk's first step).
            at.step = resolved;
            found.sort();
            found.dedup();
            found.retain(|key| {
                !(at.after_key.as_ref().is_some_and(|a| key < a)
                    || (at.after_field.is_none() && at.after_key.as_ref() == Some(key)))
            });
            // One record per key outside counters: a step that cannot fit is left
            // for the next page before any of it is read (a key gone meanwhile only
            // ends the page earlier).
            if kind != RecordKind::Counter
                && !page.records.is_empty()
                && page.records.len() + found.len() > limit
            {
                page.next_cursor = Some(at.to_cursor());
                return Ok(page);
            }
            // This step's records after the cursor, read in full before any is taken.
            let mut step: Vec<(String, Option<String>, Result<Record>)> = Vec::new();
            for key in found {
                for (field, record) in self.records_of(kind, &key).await? {
                    if at.after_key.as_ref() == Some(&key)
                        && field
                            .as_ref()
                            .zip(at.after_field.as_ref())
                            .is_some_and(|(f, a)| f <= a)
                    {
                        continue;
                    }
                    // The server going away stops the walk.
                    let record = match record {
                        Err(e) if e.is_temporary() => return Err(e),
                        other => other,
                    };
                    step.push((key.clone(), field, record));
                }
            }
            // A page ends at a step's boundary whenever it can: the next page then
            // re-runs the step whole, and SCAN's own promise (every key present for
            // the whole walk is returned) holds even if the table is resized between
            // pages. Only a step holding more records than a whole page is split.
            let readable = step.iter().filter(|(_, _, r)| r.is_ok()).count();
            if !page.records.is_empty() && page.records.len() + readable > limit {
                page.next_cursor = Some(at.to_cursor());
                return Ok(page);
            }
            // The last record taken from this step, for the cursor.
            let mut taken: Option<(String, Option<String>)> = None;
            for (key, field, record) in step {
                match record {
                    Ok(record) => {
                        if page.records.len() == limit {
                            page.next_cursor = Some(
                                ScanCursor {
                                    step: at.step,
                                    after_key: taken.as_ref().map(|(k, _)| k.clone()),
                                    after_field: taken.and_then(|(_, f)| f),
                                }
                                .to_cursor(),
                            );
                            return Ok(page);
                        }
                        page.records.push(record);
                        taken = Some((key, field));
                    }
                    // A record that does not decode is reported and the walk goes on;
                    // the cursor moves past it, so it is reported once.
                    Err(e) => {
                        page.unreadable.push(e.with_operation("scan"));
                        taken = Some((key, field));
                    }
                }
            }
            let Some(next) = next else {
                return Ok(page);
            };
            at = ScanCursor {
                step: next,
                after_key: None,
                after_field: None,
            };
        }
    }

    async fn read(&self, key: &RecordKey) -> Result<Option<Record>> {
        Ok(match key {
            RecordKey::Session(k) => self.read_session_record(k).await?.map(Record::Session),
            RecordKey::Focus(k) => self.read_focus_record(k).await?.map(Record::Focus),
            RecordKey::Cache(k) => self.read_cache_record(k).await?.map(Record::Cache),
            RecordKey::Counter(k) => {
                k.check().in_op("read")?;
                let hash = self.inner.layout.counter_hash(k.name(), k.bucket());
                let field = k.labels().escaped();
                let v: Value = self
                    .inner
                    .conn
                    .cmd(
                        redis::cmd("HGET").arg(&hash).arg(&field),
                        "read",
                        Some(&hash),
                    )
                    .await?;
                match reply::bytes(v)? {
                    None => None,
                    Some(raw) => Some(Record::Counter(CounterRecord {
                        key: k.clone(),
                        value: reply::redis_int(&raw).ok_or_else(|| {
                            Error::decode("a counter is not a number").with_key(&hash)
                        })?,
                    })),
                }
            }
        })
    }

    async fn restore(&self, record: &Record, mode: RestoreMode) -> Result<Restored> {
        record.check(&self.inner.settings).in_op("restore")?;
        let write: &[u8] = if mode == RestoreMode::Write {
            b"1"
        } else {
            b"0"
        };
        let v = match record {
            Record::Session(r) => {
                let s = &r.session;
                let k = keys(&self.inner.layout, &s.key);
                let fields = session_fields(s);
                let mut args: Vec<Vec<u8>> = vec![
                    write.to_vec(),
                    num(r.ttl.as_millis()),
                    num(s.version),
                    num(s.message_count),
                    num(s.last_activity.0),
                    num(fields.len()),
                ];
                for (f, v) in fields {
                    args.push(f.as_bytes().to_vec());
                    args.push(v);
                }
                args.push(num(r.messages.len()));
                for m in &r.messages {
                    let stored = StoredMessage {
                        role: m.role,
                        content: m.content.clone(),
                        metadata: m.metadata.clone(),
                        at: m.at,
                    };
                    let json = serde_json::to_vec(&stored).map_err(|e| {
                        Error::new(
                            chatstate_core::ErrorKind::Internal,
                            "a message does not encode",
                        )
                        .with_source(e)
                    })?;
                    let mut line = format!("{}:", m.seq).into_bytes();
                    line.extend(json);
                    args.push(line);
                }
                args.push(num(r.data.len()));
                for (name, value) in &r.data {
                    args.push(name.as_bytes().to_vec());
                    args.push(value.to_vec());
                }
                self.session_write(&SCRIPTS.restore_session, &k, args, "restore")
                    .await?
            }
            Record::Focus(r) => {
                let doc_key = self.inner.layout.focus(&r.doc.key);
                let index = self.inner.layout.focus_index(r.doc.key.scope());
                let args: Vec<Vec<u8>> = vec![
                    write.to_vec(),
                    num(r.doc.version),
                    num(r.doc.updated_at.0),
                    r.doc.value.to_vec(),
                    num(r.ttl.as_millis()),
                    escape(r.doc.key.name()).into_owned().into_bytes(),
                ];
                let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                self.inner
                    .conn
                    .script(
                        &SCRIPTS.restore_focus,
                        &[&doc_key, &index],
                        &refs,
                        "restore",
                    )
                    .await?
            }
            Record::Counter(r) => {
                let hash = self.inner.layout.counter_hash(r.key.name(), r.key.bucket());
                let field = r.key.labels().escaped();
                let value = num(r.value);
                self.inner
                    .conn
                    .script(
                        &SCRIPTS.restore_counter,
                        &[&hash],
                        &[write, field.as_bytes(), &value],
                        "restore",
                    )
                    .await?
            }
            Record::Cache(r) => {
                // Value and aliases compared, then written as `set_with_aliases`
                // does (the aliases may live in other Cluster slots, so not in one
                // script with the comparison).
                let existing = self
                    .read_cache_record(&r.key)
                    .await?
                    .map(|e| (e.value, e.aliases));
                // Compared as stored: sorted, each alias once.
                let aliases = check_aliases(&r.key, &r.aliases)?;
                let outcome = decide_value(existing.as_ref(), &(r.value.clone(), aliases.clone()));
                if mode == RestoreMode::Write && outcome == Restored::Written {
                    let ttl = r.ttl.as_millis().to_string();
                    self.write_aliased(&r.key, &r.value, &ttl, &aliases, "restore")
                        .await?;
                }
                return Ok(outcome);
            }
        };
        restored(&v).in_op("restore")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_parse_back() {
        let s = SessionKey::new("a:b}", "wa {x}", "+55 🙂").unwrap();
        for layout in [
            KeyLayout::clustered("cs").unwrap(),
            KeyLayout::new("cs").unwrap(),
        ] {
            let parse = Parse {
                prefix: "cs",
                layout: &layout,
            };
            assert_eq!(
                parse.session(&format!("{}:ctx", layout.session_base(&s))),
                Some(s.clone())
            );
            assert_eq!(
                parse.session(&format!("{}:lock:ctx", layout.session_base(&s))),
                None
            );
        }
        let clustered = KeyLayout::clustered("cs").unwrap();
        let other = (clustered.session_shard(&s) + 1) % 16;
        let moved = format!("cs:sess:{{a%3Ab%7D:{other}}}:wa%20%7Bx%7D:+55%20🙂:ctx");
        let parse = Parse {
            prefix: "cs",
            layout: &clustered,
        };
        assert_eq!(parse.session(&moved), None);
        let layout = KeyLayout::new("cs").unwrap();
        let parse = Parse {
            prefix: "cs",
            layout: &layout,
        };
        let f = FocusKey::new("sc}:ope", "na:me").unwrap();
        assert_eq!(parse.focus(&layout.focus(&f)), Some(f));
        let c = CacheKey::new("ns:x", "k:y*").unwrap();
        assert_eq!(parse.cache(&layout.cache(&c)), Some(c));
        let day = Bucket::Day(20_000);
        assert_eq!(
            parse.counter_hash(&layout.counter_hash("hits@x:y", Some(day))),
            Some(("hits@x:y".to_string(), Some(day)))
        );
        assert_eq!(parse.counter_hash(&layout.counter_batch("b1")), None);
        assert_eq!(parse.cache("other:kv:a:b"), None);
    }

    #[test]
    fn cursors_are_checked() {
        assert!(ScanCursor::parse(Some("x"), RecordKind::Session).is_err());
        assert!(ScanCursor::parse(Some("5 k f"), RecordKind::Session).is_err());
        assert!(ScanCursor::parse(Some("5 k"), RecordKind::Counter).is_err());
        let c = ScanCursor::parse(Some("5 k "), RecordKind::Counter).unwrap();
        assert_eq!((c.step.cursor, c.after_field.as_deref()), (5, Some("")));
        let c = ScanCursor::parse(Some("10.0.0.1:7001/12/ab12 k"), RecordKind::Session).unwrap();
        assert_eq!(c.step.token(), "10.0.0.1:7001/12/ab12");
        assert!(ScanCursor::parse(Some("h:x/12/ab"), RecordKind::Session).is_err());
        assert!(ScanCursor::parse(Some("h:1/12"), RecordKind::Session).is_err());
    }
}
