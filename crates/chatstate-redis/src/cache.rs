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
use crate::conn::{ScanPos, Script, lua_wrongtype, reply};

/// Keys asked per SCAN step and unlinked per UNLINK.
const SCAN_BATCH: usize = 1000;

/// Lua: `check_strings()`, a WRONGTYPE reply naming the first of KEYS that holds
/// another type than a string (nil when none does).
macro_rules! lua_check_strings {
    () => {
        r#"
local function check_strings()
  for i = 1, #KEYS do
    local e = wrongtype(KEYS[i], 'string')
    if e then return e end
  end
  return nil
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

/// Writes many entries, all or none. KEYS: the entries. ARGV: per key, its ttl_ms
/// and its value. Every key's type is checked before the first SET, so a key of
/// another type is refused (WRONGTYPE naming it) and nothing is written.
const SET_MANY: &str = concat!(
    lua_wrongtype!(),
    lua_check_strings!(),
    r#"
local e = check_strings()
if e then return e end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[2 * i], 'PX', ARGV[2 * i - 1])
end
return #KEYS
"#
);

/// The cache scripts, hashed once per store.
pub(crate) struct CacheScripts {
    check_strings: Script,
    set_many: Script,
}

impl CacheScripts {
    pub fn new() -> Self {
        CacheScripts {
            check_strings: Script::new("cache_check_strings", CHECK_STRINGS),
            set_many: Script::new("cache_set_many", SET_MANY),
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
        self.inner
            .conn
            .per_slot(keys, |group| async move {
                let key_refs: Vec<&str> = group.iter().map(|&i| keys[i]).collect();
                let mut args: Vec<&[u8]> = Vec::with_capacity(2 * group.len());
                for &i in &group {
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

    /// `get_many` of the keys of one slot (all of them outside a Cluster): MGET
    /// plus EXISTS in one round trip, and the type check when they disagree.
    async fn get_slot(&self, ks: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let mut pipe = redis::pipe();
        queue_get(&mut pipe, ks);
        let (v, present): (Value, Value) = self
            .inner
            .conn
            .pipe(&pipe, "get_many", &[ks[0], ks[0]])
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
    pub(crate) async fn answer_get(
        &self,
        ks: &[&str],
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
        let misses: Vec<&str> = found
            .iter()
            .zip(ks)
            .filter(|(v, _)| matches!(v, Value::Nil))
            .map(|(_, k)| *k)
            .collect();
        if reply::int(&present)? > (ks.len() - misses.len()) as i64 {
            self.inner
                .conn
                .script(&self.inner.scripts.cache.check_strings, &misses, &[], op)
                .await?;
        }
        let max = self.inner.settings.max_value_bytes;
        found
            .into_iter()
            .zip(ks)
            .map(|(v, k)| value(v, max, k))
            .collect()
    }
}

/// Queues the read of `ks` (keys of one slot): `MGET` plus `EXISTS` of the same
/// keys, one round trip and no script; [`RedisStore::answer_get`] reads the two
/// answers. What `get_many` and the read batch send.
pub(crate) fn queue_get(pipe: &mut redis::Pipeline, ks: &[&str]) {
    pipe.cmd("MGET").arg(ks).cmd("EXISTS").arg(ks);
}

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
        let ks = &list.to_vec();
        let parts = self
            .inner
            .conn
            .per_slot(ks, |group| async move {
                if group.len() == ks.len() {
                    // One slot (always, outside a Cluster): the keys as they are.
                    return Ok(group.into_iter().zip(self.get_slot(ks).await?));
                }
                let slot_keys: Vec<&str> = group.iter().map(|&i| ks[i]).collect();
                let values = self.get_slot(&slot_keys).await?;
                Ok(group.into_iter().zip(values))
            })
            .await?;
        let mut out: Vec<Option<Bytes>> = vec![None; ks.len()];
        for (i, v) in parts.into_iter().flatten() {
            out[i] = v;
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

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.delete_many(std::slice::from_ref(key)).await? > 0)
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
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
        let pattern = self.inner.layout.cache_pattern(namespace, key_prefix);
        self.unlink_scanned(&pattern, Some("string"), "clear_prefix")
            .await
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}
