//! KvCache on Redis: a string per entry, always with a TTL. Reads and writes of many
//! keys are one round trip each (MGET + EXISTS in one pipeline; a script of
//! `SET … PX`) — on a Cluster one per slot, sent concurrently, each slot's part
//! keeping the promises below; clearing a prefix walks SCAN (never KEYS; every
//! master on a Cluster) and UNLINKs in batches.
//!
//! A key of another type (a hash another program wrote under the prefix) is a
//! `WrongType` error naming it for every call that reads or writes a value, and
//! nothing is overwritten: `get` is a plain GET (which refuses it itself);
//! `get_many` sends EXISTS of the same keys beside its MGET (which reads another
//! type as a miss), and only when EXISTS counts a present key MGET could not read
//! does a second round trip (a script) find and name it; `set` and `set_many` check
//! every key's type in their script before the first SET (a plain SET would
//! overwrite any type). The MGET and the EXISTS are not atomic: a string of the same
//! call deleted between them can hide a key of another type from that one call (it
//! answers `None` for it; the next call reports it). `delete`, `delete_many`,
//! `exists`, `expire` and `ttl` act on the key whatever it holds.
//!
//! What the guard costs, measured: `set` about 4–8 µs of server time per call and no
//! round trip (`redis-benchmark -c 4 -P 16` on the shared 2-core machine: 79–161k
//! guarded calls/s against 226–444k plain `SET … PX`); `get_many` one EXISTS beside
//! the MGET (a script around MGET, tried first, cost about 2x a raw MGET of 50
//! values: `BENCHMARKS.md`).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::{CacheKey, Error, KvCache, Result, StoreSettings};
use redis::Value;

use crate::RedisStore;
use crate::conn::{ScanPos, Script, lua_int, lua_wrongtype, reply};

/// Keys asked per SCAN step and unlinked per UNLINK.
const SCAN_BATCH: usize = 1000;

/// Lua: `check_strings()`, a WRONGTYPE reply naming the first of KEYS that holds
/// another type than a string (nil when none does); `check_strings_from(first,
/// last)` the same for `KEYS[first..=last]` (to the end without `last`).
macro_rules! lua_check_strings {
    () => {
        r#"
local function check_strings_from(first, last)
  for i = first, last or #KEYS do
    local e = wrongtype(KEYS[i], 'string')
    if e then return e end
  end
  return nil
end
local function check_strings()
  return check_strings_from(1)
end
"#
    };
}

/// `get_many`'s slow path, taken when its MGET + EXISTS saw a present key MGET could
/// not read: KEYS are the keys MGET answered nil for. WRONGTYPE naming the first one
/// of another type; 0 when none is (a write raced between MGET and EXISTS).
const CHECK_STRINGS: &str = concat!(
    lua_wrongtype!(),
    lua_check_strings!(),
    r#"
return check_strings() or 0
"#
);

/// Writes many entries, all or none. KEYS: per entry, the entry and its alias set.
/// ARGV: per entry, its ttl_ms and its value. Every entry's type is checked before
/// the first SET, so a key of another type is refused (WRONGTYPE naming it) and
/// nothing is written. A plain set keeps a live entry's aliases; over an absent
/// entry it drops any alias set left behind (the entry was evicted, or expired
/// before its aliases), so no alias comes back with a new entry.
const SET_MANY: &str = concat!(
    lua_wrongtype!(),
    r#"
for i = 1, #KEYS, 2 do
  local e = wrongtype(KEYS[i], 'string')
  if e then return e end
end
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('DEL', KEYS[i + 1]) end
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[i])
end
return #KEYS / 2
"#
);

/// Writes an entry with its aliases. KEYS: the entry, its alias set, then the
/// alias keys (none on a Cluster, where they live in other slots and are written
/// next, by `SET_ALIAS_KEYS`). ARGV: ttl_ms, the value, then the aliases as members
/// (`<namespace>:<key>`, escaped). Types are checked first: all or nothing.
const SET_ALIASED: &str = concat!(
    lua_wrongtype!(),
    lua_check_strings!(),
    r#"
local e = wrongtype(KEYS[1], 'string') or wrongtype(KEYS[2], 'set') or check_strings_from(3)
if e then return e end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
redis.call('DEL', KEYS[2])
if #ARGV > 2 then
  redis.call('SADD', KEYS[2], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], KEYS[1], 'PX', ARGV[1])
end
return 1
"#
);

/// The alias keys of one Cluster slot. KEYS: the alias keys. ARGV: ttl_ms, the
/// entry's key. Types are checked first.
const SET_ALIAS_KEYS: &str = concat!(
    lua_wrongtype!(),
    lua_check_strings!(),
    r#"
local e = check_strings()
if e then return e end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[1])
end
return #KEYS
"#
);

/// Resolves an alias on one server (or through Sentinel). KEYS: the alias key.
/// ARGV: the alias as a member, the alias sets' key prefix (`<prefix>:aliases:`),
/// the entries' key prefix (`<prefix>:kv:`). Returns nil, or {entry key, value}
/// when the entry's alias set holds the alias; an alias key holding no entry's key
/// (written by something else) is a `CHATSTATE_CORRUPT` error naming it. The entry
/// and its set are found through the alias key, so they are not in KEYS: this
/// script never runs on a Cluster (see `ALIAS_ENTRY`).
const RESOLVE_ALIAS: &str = concat!(
    lua_int!(),
    r#"
local k = redis.call('GET', KEYS[1])
if not k then return nil end
if string.sub(k, 1, #ARGV[3]) ~= ARGV[3] then return corrupt(KEYS[1], 'holds no cache entry key') end
if redis.call('SISMEMBER', ARGV[2] .. '{' .. k .. '}', ARGV[1]) == 0 then return nil end
local v = redis.call('GET', k)
if not v then return nil end
return {k, v}
"#
);

/// A Cluster's second step of resolving an alias, in the entry's slot. KEYS: the
/// entry, its alias set. ARGV: the alias as a member. The value when the set holds
/// the alias, else nil.
const ALIAS_ENTRY: &str = r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return nil end
return redis.call('GET', KEYS[1])
"#;

/// The cache scripts, hashed once per store.
pub(crate) struct CacheScripts {
    check_strings: Script,
    set_many: Script,
    set_aliased: Script,
    set_alias_keys: Script,
    resolve_alias: Script,
    alias_entry: Script,
}

impl CacheScripts {
    pub fn new() -> Self {
        CacheScripts {
            check_strings: Script::new("cache_check_strings", CHECK_STRINGS),
            set_many: Script::new("cache_set_many", SET_MANY),
            set_aliased: Script::new("cache_set_aliased", SET_ALIASED),
            set_alias_keys: Script::new("cache_set_alias_keys", SET_ALIAS_KEYS),
            resolve_alias: Script::new("cache_resolve_alias", RESOLVE_ALIAS),
            alias_entry: Script::new("cache_alias_entry", ALIAS_ENTRY),
        }
    }
}

impl RedisStore {
    /// Writes `entries` (already checked: key, value, TTL in ms as text): one
    /// script, all or none — on a Cluster one script per slot, sent concurrently,
    /// each all or none.
    async fn write_entries(
        &self,
        entries: &[(&CacheKey, &[u8], &[u8])],
        op: &'static str,
    ) -> Result<()> {
        let list = self
            .inner
            .layout
            .cache_keys_of(entries.iter().map(|(k, _, _)| *k));
        let keys = list.to_vec();
        let keys = &keys;
        let sets = &self.inner.layout.cache_alias_sets(keys.iter().copied());
        self.inner
            .conn
            .per_slot(keys, |group| async move {
                let mut key_refs: Vec<&str> = Vec::with_capacity(2 * group.len());
                let mut args: Vec<&[u8]> = Vec::with_capacity(2 * group.len());
                for &i in &group {
                    key_refs.push(keys[i]);
                    key_refs.push(sets.get(i).unwrap_or_default());
                    args.push(entries[i].2);
                    args.push(entries[i].1);
                }
                self.inner
                    .conn
                    .script(&self.inner.scripts.cache.set_many, &key_refs, &args, op)
                    .await
            })
            .await?;
        Ok(())
    }

    /// `get_many` of the keys of one slot (all of them outside a Cluster), in
    /// order: MGET plus EXISTS in one round trip, and the type check when they
    /// disagree.
    async fn get_slot<'k>(&self, ks: impl SlotKeys<'k>) -> Result<Vec<Option<Bytes>>> {
        let mut pipe = redis::pipe();
        queue_get(&mut pipe, ks.clone());
        let first = ks.clone().next().unwrap_or_default();
        let (v, present): (Value, Value) = self
            .inner
            .conn
            .pipe(&pipe, "get_many", &[first, first])
            .await?;
        self.answer_get(ks, v, present, "get_many").await
    }

    /// The values of `ks` from the two answers of [`queue_get`]: MGET answers nil
    /// for a missing key and for a key of another type alike; EXISTS counts both
    /// kinds of present key. When it counts more than MGET found, some nil is a key
    /// of another type (or a write raced in between): a script then checks the type
    /// of each key MGET answered nil for (one more round trip, on that path only),
    /// and answers WrongType naming one; otherwise MGET's answer stands. A script
    /// for every call cost about 2x a raw MGET of 50 values (BENCHMARKS.md); this
    /// costs one cheap EXISTS.
    pub(crate) async fn answer_get<'k>(
        &self,
        ks: impl SlotKeys<'k>,
        found: Value,
        present: Value,
        op: &'static str,
    ) -> Result<Vec<Option<Bytes>>> {
        let found = reply::array(found)?;
        if found.len() != ks.len() {
            return Err(
                Error::decode("unexpected Redis reply shape: one value per key").with_operation(op),
            );
        }
        let nils = found.iter().filter(|v| matches!(v, Value::Nil)).count();
        if reply::int(&present)? > (ks.len() - nils) as i64 {
            let misses: Vec<&str> = found
                .iter()
                .zip(ks.clone())
                .filter(|(v, _)| matches!(v, Value::Nil))
                .map(|(_, k)| k)
                .collect();
            self.inner
                .conn
                .script(&self.inner.scripts.cache.check_strings, &misses, &[], op)
                .await?;
        }
        let max = self.inner.settings.max_value_bytes;
        // A plain loop: a `Result` collect over `value` cost about twice as many
        // instructions per key (callgrind, BENCHMARKS.md).
        // The key is looked up only to name it in an error.
        let mut out = Vec::with_capacity(found.len());
        for (i, v) in found.into_iter().enumerate() {
            out.push(match v {
                Value::Nil => None,
                Value::BulkString(b) if b.len() <= max => Some(Bytes::from(b)),
                other => value(other, max, ks.clone().nth(i).unwrap_or_default())?,
            });
        }
        Ok(out)
    }
}

impl RedisStore {
    /// `set_with_aliases` after its checks: `aliases` sorted and distinct, `ttl_ms`
    /// the TTL in ms as text. One script on one server; on a Cluster the entry and
    /// its alias set first, then the alias keys, one script per slot, concurrently.
    pub(crate) async fn write_aliased(
        &self,
        key: &CacheKey,
        value: &[u8],
        ttl_ms: &str,
        aliases: &[CacheKey],
        op: &'static str,
    ) -> Result<()> {
        let layout = &self.inner.layout;
        let conn = &self.inner.conn;
        let entry = layout.cache(key);
        let set = layout.cache_alias_set(&entry);
        let members: Vec<String> = aliases.iter().map(ToString::to_string).collect();
        let alias_keys: Vec<String> = aliases.iter().map(|a| layout.cache_alias(a)).collect();
        let mut args: Vec<&[u8]> = vec![ttl_ms.as_bytes(), value];
        args.extend(members.iter().map(|m| m.as_bytes()));
        let mut keys: Vec<&str> = vec![&entry, &set];
        if !conn.is_cluster() {
            keys.extend(alias_keys.iter().map(String::as_str));
        }
        conn.script(&self.inner.scripts.cache.set_aliased, &keys, &args, op)
            .await?;
        if conn.is_cluster() && !alias_keys.is_empty() {
            let (alias_keys, entry) = (&alias_keys, &entry);
            conn.per_slot(alias_keys, |group| async move {
                let ks: Vec<&str> = group.iter().map(|&i| alias_keys[i].as_str()).collect();
                conn.script(
                    &self.inner.scripts.cache.set_alias_keys,
                    &ks,
                    &[ttl_ms.as_bytes(), entry.as_bytes()],
                    op,
                )
                .await
            })
            .await?;
        }
        Ok(())
    }

    /// The entry an alias key names, from its stored text.
    fn aliased_entry(&self, stored: Value, alias_key: &str) -> Result<Option<(CacheKey, String)>> {
        let Some(stored) = reply::bytes(stored)? else {
            return Ok(None);
        };
        let text = String::from_utf8(stored).ok();
        match text
            .as_deref()
            .and_then(|t| self.inner.layout.parse_cache(t))
        {
            Some(key) => Ok(Some((key, text.unwrap_or_default()))),
            None => Err(Error::decode("an alias key holds no cache entry's key")
                .with_operation("get_by_alias")
                .with_key(alias_key)),
        }
    }
}

/// Queues the read of `ks` (keys of one slot): `MGET` plus `EXISTS` of the same
/// keys, one round trip and no script; [`RedisStore::answer_get`] reads the two
/// answers. What `get_many` and the read batch send.
pub(crate) fn queue_get<'k>(pipe: &mut redis::Pipeline, ks: impl SlotKeys<'k>) {
    for name in ["MGET", "EXISTS"] {
        let mut cmd = redis::cmd(name);
        for k in ks.clone() {
            cmd.arg(k);
        }
        pipe.add_command(cmd);
    }
}

/// The keys of one slot, in order, as `get_many` and the read batch hold them: a
/// [`chatstate_core::KeyList`]'s own iterator (no vector of slices built outside a
/// Cluster) or a slice's.
pub(crate) trait SlotKeys<'k>: ExactSizeIterator<Item = &'k str> + Clone {}

impl<'k, I: ExactSizeIterator<Item = &'k str> + Clone> SlotKeys<'k> for I {}

/// A stored value, refused when it is over the value limit (written by something
/// else: chatstate never stores one).
pub(crate) fn value(v: Value, max: usize, key: &str) -> Result<Option<Bytes>> {
    match reply::bytes(v)? {
        Some(b) if b.len() > max => Err(Error::invalid_input(format!(
            "stored value is {} bytes, more than the limit of {max} (CHATSTATE_MAX_VALUE_BYTES)",
            b.len()
        ))
        .with_key(key)),
        other => Ok(other.map(Bytes::from)),
    }
}

impl RedisStore {
    /// Unlinks every key matching the `SCAN` pattern (of type `only_type` when
    /// given), on every master of a Cluster; how many were removed. A walk whose
    /// Cluster slots moved starts again (removing is idempotent), a few times at
    /// most. What `clear_prefix` runs; for tools, [`RedisStore::unlink_matching`].
    async fn unlink_scanned(
        &self,
        pattern: &str,
        only_type: Option<&str>,
        op: &'static str,
    ) -> Result<u64> {
        let batch = SCAN_BATCH.to_string();
        let mut args = vec!["MATCH", pattern, "COUNT", &batch];
        if let Some(t) = only_type {
            args.extend(["TYPE", t]);
        }
        let mut pos = Some(ScanPos::default());
        let mut removed = 0;
        let mut restarts = 0;
        while let Some(at) = pos {
            let step = self.inner.conn.scan(&at, &args, op).await;
            let (found, _, next) = match step {
                // The Cluster's slots moved meanwhile: clearing is idempotent, so the
                // walk starts again (a few times at most).
                Err(e) if e.kind() == chatstate_core::ErrorKind::Conflict && restarts < 3 => {
                    restarts += 1;
                    pos = Some(ScanPos::default());
                    continue;
                }
                other => other.map_err(|e| e.with_key(pattern))?,
            };
            // UNLINK in batches, each batch one round trip per slot (sent
            // concurrently on a Cluster).
            for chunk in found.chunks(SCAN_BATCH) {
                let counts = self
                    .inner
                    .conn
                    .per_slot(chunk, |group| async move {
                        let keys: Vec<&str> = group.iter().map(|&i| chunk[i].as_str()).collect();
                        self.inner
                            .conn
                            .cmd::<u64>(redis::cmd("UNLINK").arg(&keys), op, Some(pattern))
                            .await
                    })
                    .await?;
                removed += counts.into_iter().sum::<u64>();
            }
            pos = next;
        }
        Ok(removed)
    }

    /// Unlinks every key matching the `SCAN` pattern (`MATCH` syntax), whatever its
    /// type, on one server, through Sentinel or on every master of a Cluster; how
    /// many were removed. For tools that own a key prefix outright (the CLI's
    /// conformance and bench runs, under a prefix of their own); apps clear cache
    /// namespaces with `clear_prefix`.
    pub async fn unlink_matching(&self, pattern: &str) -> Result<u64> {
        self.unlink_scanned(pattern, None, "unlink_matching").await
    }
}

#[async_trait]
impl KvCache for RedisStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let k = self.inner.layout.cache(key);
        let v: Value = self
            .inner
            .conn
            .cmd(redis::cmd("GET").arg(&k), "get", Some(&k))
            .await?;
        value(v, self.inner.settings.max_value_bytes, &k)
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let list = self.inner.layout.cache_keys(keys);
        if !self.inner.conn.is_cluster() {
            // One server: every key, in order, straight from the list.
            return self.get_slot(list.iter()).await;
        }
        let ks = &list.to_vec();
        let mut parts = self
            .inner
            .conn
            .per_slot(ks, |group| async move {
                if group.len() == ks.len() {
                    // All in one slot: the keys as they are, in order.
                    return Ok((Vec::new(), self.get_slot(ks.iter().copied()).await?));
                }
                let slot_keys: Vec<&str> = group.iter().map(|&i| ks[i]).collect();
                let values = self.get_slot(slot_keys.iter().copied()).await?;
                Ok((group, values))
            })
            .await?;
        if let [(group, _)] = parts.as_slice()
            && group.is_empty()
        {
            return Ok(parts.pop().map(|(_, values)| values).unwrap_or_default());
        }
        let mut out: Vec<Option<Bytes>> = vec![None; ks.len()];
        for (group, values) in parts {
            for (i, v) in group.into_iter().zip(values) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let ttl = self
            .inner
            .settings
            .cache_write_ttl([(key, value.len())], ttl)
            .in_op("set")?;
        let ttl_ms = ttl.as_millis().to_string();
        self.write_entries(&[(key, value.as_ref(), ttl_ms.as_bytes())], "set")
            .await
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let ttl = self
            .inner
            .settings
            .cache_write_ttl(entries.iter().map(|(k, v)| (k, v.len())), ttl)
            .in_op("set_many")?;
        if entries.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl.as_millis().to_string();
        let refs: Vec<(&CacheKey, &[u8], &[u8])> = entries
            .iter()
            .map(|(k, v)| (k, v.as_ref(), ttl_ms.as_bytes()))
            .collect();
        self.write_entries(&refs, "set_many").await
    }

    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        let ttls: Vec<String> = self
            .inner
            .settings
            .cache_write_ttls(entries.iter().map(|(k, v, t)| (k, v.len(), *t)))
            .in_op("set_many_with_ttls")?
            .into_iter()
            .map(|ttl| ttl.as_millis().to_string())
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let refs: Vec<(&CacheKey, &[u8], &[u8])> = entries
            .iter()
            .zip(&ttls)
            .map(|((k, v, _), t)| (k, v.as_ref(), t.as_bytes()))
            .collect();
        self.write_entries(&refs, "set_many_with_ttls").await
    }

    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        let (ttl, aliases) = self
            .inner
            .settings
            .cache_aliased_write(key, value.len(), ttl, aliases)
            .in_op("set_with_aliases")?;
        let ttl_ms = ttl.as_millis().to_string();
        self.write_aliased(key, &value, &ttl_ms, &aliases, "set_with_aliases")
            .await
    }

    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        const OP: &str = "get_by_alias";
        let layout = &self.inner.layout;
        let conn = &self.inner.conn;
        let alias_key = layout.cache_alias(alias);
        let member = alias.to_string();
        let max = self.inner.settings.max_value_bytes;
        if !conn.is_cluster() {
            let sets = format!("{}:aliases:", layout.prefix());
            let entries = format!("{}:kv:", layout.prefix());
            let v = conn
                .script(
                    &self.inner.scripts.cache.resolve_alias,
                    &[&alias_key],
                    &[member.as_bytes(), sets.as_bytes(), entries.as_bytes()],
                    OP,
                )
                .await?;
            let mut parts = reply::array(v)?.into_iter();
            let (Some(stored), Some(v)) = (parts.next(), parts.next()) else {
                return Ok(None);
            };
            let Some((key, entry)) = self.aliased_entry(stored, &alias_key)? else {
                return Ok(None);
            };
            return Ok(value(v, max, &entry)?.map(|v| (key, v)));
        }
        // A Cluster: the alias's slot, then the entry's (the entry and its alias set
        // read together, so the set's answer is about that value).
        let stored: Value = conn
            .cmd(redis::cmd("GET").arg(&alias_key), OP, Some(&alias_key))
            .await?;
        let Some((key, entry)) = self.aliased_entry(stored, &alias_key)? else {
            return Ok(None);
        };
        let set = layout.cache_alias_set(&entry);
        let v = conn
            .script(
                &self.inner.scripts.cache.alias_entry,
                &[&entry, &set],
                &[member.as_bytes()],
                OP,
            )
            .await?;
        Ok(value(v, max, &entry)?.map(|v| (key, v)))
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.delete_many(std::slice::from_ref(key)).await? > 0)
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        // A bare DEL of the entries: an entry's alias set is left to its TTL.
        // That is safe, not just cheap: resolving an alias reads the entry too
        // (none: no answer), and a plain set over an absent entry drops a
        // leftover set (`SET_MANY`), so no alias comes back with a new entry. A
        // script dropping the set as well cost 2.5–4 µs more server time per
        // delete than the bare DEL (BENCHMARKS.md, "Cache aliases").
        let list = self.inner.layout.cache_keys(keys);
        let ks = &list.to_vec();
        let counts = self
            .inner
            .conn
            .per_slot(ks, |group| async move {
                let slot_keys: Vec<&str> = group.iter().map(|&i| ks[i]).collect();
                self.inner
                    .conn
                    .cmd::<u64>(
                        redis::cmd("DEL").arg(&slot_keys),
                        "delete_many",
                        slot_keys.first().copied(),
                    )
                    .await
            })
            .await?;
        Ok(counts.into_iter().sum())
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let k = self.inner.layout.cache(key);
        let n: i64 = self
            .inner
            .conn
            .cmd(redis::cmd("EXISTS").arg(&k), "exists", Some(&k))
            .await?;
        Ok(n == 1)
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let k = self.inner.layout.cache(key);
        let n: i64 = self
            .inner
            .conn
            .cmd(
                redis::cmd("PEXPIRE").arg(&k).arg(ttl.as_millis() as u64),
                "expire",
                Some(&k),
            )
            .await?;
        Ok(n == 1)
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let k = self.inner.layout.cache(key);
        let pttl: i64 = self
            .inner
            .conn
            .cmd(redis::cmd("PTTL").arg(&k), "ttl", Some(&k))
            .await?;
        Ok(crate::pttl_to_duration(pttl))
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let layout = &self.inner.layout;
        let pattern = layout.cache_pattern(namespace, key_prefix);
        let cleared = self
            .unlink_scanned(&pattern, Some("string"), "clear_prefix")
            .await?;
        // Then what made aliases of them resolve, and the aliases named in the
        // namespace (not counted: they are not entries).
        let [sets, aliases] = layout.cache_alias_patterns(namespace, key_prefix);
        self.unlink_scanned(&sets, Some("set"), "clear_prefix")
            .await?;
        self.unlink_scanned(&aliases, Some("string"), "clear_prefix")
            .await?;
        Ok(cleared)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}
