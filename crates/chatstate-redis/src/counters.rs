//! CounterSink on Redis: a hash per counter name (and bucket), one field per label
//! set, all under the `{counters}` hash tag so a batch of any number of counters is
//! one script — one round trip, atomic, and idempotent by its batch id.
//!
//! Counters have no TTL (delete them when no longer wanted); a batch id key lives
//! for the configured batch retention. The range is the full i64, as on every
//! backend; a stored value that `HINCRBY` would not read as an integer is a
//! `Decode` error naming the hash, an overflow `InvalidInput`, and either refuses
//! the whole call before anything is written.

use async_trait::async_trait;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::{
    BatchOutcome, Bucket, CounterBatch, CounterKey, CounterSink, Error, Labels, Result,
};
use redis::Value;

use crate::RedisStore;
use crate::conn::{Script, lua_int, lua_wrongtype, reply};

/// Applies a batch once. KEYS: batch id key, then each counter hash once.
/// ARGV: retention_ms, then per hash: n, (field, delta) × n.
/// Returns 1 applied, 0 duplicate.
///
/// A batch id seen before is a duplicate at once. Then every hash's type, every
/// stored value and every sum are checked before anything is written, so a refused
/// batch writes nothing and records nothing:
/// - a stored value must be an integer as `HINCRBY` itself reads one (`is_int`,
///   Redis's `string2ll`), else `CHATSTATE_CORRUPT` (Decode, naming the hash);
/// - value + delta must stay within i64, checked exactly (`fits_sum`, the Redis
///   side of `chatstate_core::transition::counter_add`), else
///   `CHATSTATE_OVERFLOW` (InvalidInput).
///
/// `HINCRBY` then cannot fail; the deltas stay the client's exact integer strings.
const APPLY: &str = concat!(
    lua_wrongtype!(),
    lua_int!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local a, plan = 2, {}
for k = 2, #KEYS do
  local key = KEYS[k]
  local e = wrongtype(key, 'hash')
  if e then return e end
  local n = tonumber(ARGV[a]); a = a + 1
  local fields, deltas = {}, {}
  for i = 1, n do
    -- Deltas are written by this crate from i64 values (`to_string`): always
    -- integers Redis reads, so only the stored values are checked.
    fields[i] = ARGV[a]; deltas[i] = ARGV[a + 1]; a = a + 2
  end
  for from = 1, n, 500 do
    local chunk = {}
    for i = from, math.min(n, from + 499) do chunk[#chunk + 1] = fields[i] end
    local cur = redis.call('HMGET', key, unpack(chunk))
    for j = 1, #chunk do
      local now = cur[j] or '0'
      if not is_int(now) then
        return corrupt(key, 'a counter is not an integer')
      end
      if not fits_sum(now, deltas[from + j - 1]) then
        return redis.error_reply('CHATSTATE_OVERFLOW ' .. key .. ' counter increment would overflow an i64')
      end
    end
  end
  plan[#plan + 1] = {key, fields, deltas}
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
for _, p in ipairs(plan) do
  for i = 1, #p[2] do redis.call('HINCRBY', p[1], p[2][i], p[3][i]) end
end
return 1
"#
);

pub(crate) struct CounterScripts {
    apply: Script,
}

impl CounterScripts {
    pub fn new() -> Self {
        CounterScripts {
            apply: Script::new("counter_apply", APPLY),
        }
    }
}

impl RedisStore {
    fn counter_location(&self, key: &CounterKey) -> (String, String) {
        (
            self.inner.layout.counter_hash(key.name(), key.bucket()),
            key.labels().escaped(),
        )
    }
}

fn value_of(v: Value, key: &str) -> Result<i64> {
    match v {
        Value::Nil => Ok(0),
        other => {
            reply::int(&other).map_err(|_| Error::decode("a counter is not a number").with_key(key))
        }
    }
}

#[async_trait]
impl CounterSink for RedisStore {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        // HINCRBY is itself the rule APPLY's Lua mirrors: exact i64 arithmetic (an
        // overflow is refused, InvalidInput) on a stored value read with `string2ll`
        // (anything else is refused, Decode), nothing written when refused.
        key.check().in_op("add")?;
        let (hash, field) = self.counter_location(key);
        self.inner
            .conn
            .cmd(
                redis::cmd("HINCRBY").arg(&hash).arg(&field).arg(delta),
                "add",
                Some(&hash),
            )
            .await
    }

    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        // An empty batch still records its id, so a replay is a Duplicate.
        // Group the deltas by hash: each hash is one key of the script.
        let mut by_hash: std::collections::BTreeMap<String, Vec<(String, i64)>> =
            std::collections::BTreeMap::new();
        for (key, delta) in batch.deltas() {
            key.check().in_op("apply")?;
            let (hash, field) = self.counter_location(key);
            by_hash.entry(hash).or_default().push((field, delta));
        }
        let mut keys = vec![self.inner.layout.counter_batch(batch.id())];
        let mut args: Vec<Vec<u8>> = vec![
            self.inner
                .settings
                .batch_retention
                .as_millis()
                .to_string()
                .into_bytes(),
        ];
        for (hash, fields) in by_hash {
            keys.push(hash);
            args.push(fields.len().to_string().into_bytes());
            for (field, delta) in fields {
                args.push(field.into_bytes());
                args.push(delta.to_string().into_bytes());
            }
        }
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.counters.apply,
                &key_refs,
                &arg_refs,
                "apply",
            )
            .await?;
        Ok(if reply::int(&v)? == 1 {
            BatchOutcome::Applied
        } else {
            BatchOutcome::Duplicate
        })
    }

    async fn get(&self, key: &CounterKey) -> Result<i64> {
        key.check().in_op("get")?;
        let (hash, field) = self.counter_location(key);
        let v: Value = self
            .inner
            .conn
            .cmd(
                redis::cmd("HGET").arg(&hash).arg(&field),
                "get",
                Some(&hash),
            )
            .await?;
        value_of(v, &hash)
    }

    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        keys.iter()
            .try_for_each(CounterKey::check)
            .in_op("get_many")?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let locations: Vec<(String, String)> =
            keys.iter().map(|k| self.counter_location(k)).collect();
        for (hash, field) in &locations {
            pipe.cmd("HGET").arg(hash).arg(field);
        }
        let replies: Vec<Value> = self
            .inner
            .conn
            .pipe(
                &pipe,
                "get_many",
                &locations
                    .iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>(),
            )
            .await?;
        replies
            .into_iter()
            .zip(&locations)
            .map(|(v, (hash, _))| value_of(v, hash))
            .collect()
    }

    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        check_scope("counter name", name).in_op("list")?;
        bucket.map_or(Ok(()), Bucket::check).in_op("list")?;
        let hash = self.inner.layout.counter_hash(name, bucket);
        let v: Value = self
            .inner
            .conn
            .cmd(redis::cmd("HGETALL").arg(&hash), "list", Some(&hash))
            .await?;
        let mut out = Vec::new();
        for (field, raw) in reply::pairs(v)? {
            let labels = Labels::parse_escaped(&field).ok_or_else(|| {
                Error::decode("a counter field is not a label set").with_key(&hash)
            })?;
            let value = reply::redis_int(&raw)
                .ok_or_else(|| Error::decode("a counter is not a number").with_key(&hash))?;
            out.push((labels, value));
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        key.check().in_op("delete")?;
        let (hash, field) = self.counter_location(key);
        let n: i64 = self
            .inner
            .conn
            .cmd(
                redis::cmd("HDEL").arg(&hash).arg(&field),
                "delete",
                Some(&hash),
            )
            .await?;
        Ok(n > 0)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}
