//! ReadBatch on Redis: the read before the model is called, as one pipeline.
//!
//! Per slot group (one group on one server or Sentinel: one round trip; on a
//! Cluster one per slot the keys fall in, sent concurrently), the pipeline holds:
//! - the session: `MULTI`, `HGETALL …:ctx`, `LRANGE …:msgs 0 -1`, `EXEC` — the
//!   record and the window read at one instant, as `load` reads them. Chosen over
//!   `load`'s Lua script by measurement (`BENCHMARKS.md`, "A turn"): the same
//!   atomicity at less server time per read, and no script to load;
//! - each focus document: the `HMGET` its own `get` sends;
//! - the cache entries of the group: `MGET` plus `EXISTS` of the same keys, the
//!   fast path of `KvCache::get_many`. When `EXISTS` counts a key `MGET` did not
//!   answer (a key of another type, or a write racing in), the cache part is read
//!   again through `get_many`, which names the key of the wrong type: one more
//!   round trip only then.

use async_trait::async_trait;
use chatstate_core::{
    BatchRead, BatchReads, Error, ErrorKind, KvCache, LoadedSession, ReadBatch, Result, SessionKey,
};
use redis::Value;

use crate::RedisStore;
use crate::conn::reply;
use crate::focus::{DOC_FIELDS, doc_of_hmget};
use crate::session::{Keys, keys, loaded_from};

/// What one part of the batch is.
#[derive(Clone, Copy)]
enum Part {
    Session,
    Focus(usize),
    Cache(usize),
}

/// What a slot group's pipeline answered, per part.
enum Answer {
    Session(Value),
    Focus(usize, Value),
    Cache(usize, Value),
    /// `EXISTS` counted more cache keys than `MGET` answered.
    CacheSuspect,
}

const OP: &str = "read_batch";

#[async_trait]
impl ReadBatch for RedisStore {
    async fn read_batch(&self, reads: &BatchReads) -> Result<BatchRead> {
        let layout = &self.inner.layout;
        let session_keys: Option<Keys> = reads.session.as_ref().map(|k| keys(layout, k));
        let focus_keys: Vec<String> = reads.focus.iter().map(|k| layout.focus(k)).collect();
        let cache_list = layout.cache_keys(&reads.cache);
        let cache_keys = cache_list.to_vec();
        // One routing key per part: the session's record, each document, each entry.
        let mut parts: Vec<(Part, &str)> = Vec::new();
        if let Some(k) = &session_keys {
            parts.push((Part::Session, k.ctx.as_str()));
        }
        parts.extend(
            focus_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Part::Focus(i), k.as_str())),
        );
        parts.extend(
            cache_keys
                .iter()
                .enumerate()
                .map(|(i, k)| (Part::Cache(i), *k)),
        );
        let mut out = BatchRead {
            session: None,
            focus: vec![None; reads.focus.len()],
            cache: vec![None; reads.cache.len()],
        };
        if parts.is_empty() {
            return Ok(out);
        }
        let routing: Vec<&str> = parts.iter().map(|(_, k)| *k).collect();
        let (parts, session_keys) = (&parts, &session_keys);
        let groups = self
            .inner
            .conn
            .per_slot(&routing, |group| async move {
                self.read_group(group.iter().map(|&i| parts[i]), session_keys)
                    .await
            })
            .await?;
        let max = self.inner.settings.max_value_bytes;
        let mut suspect = false;
        for answer in groups.into_iter().flatten() {
            match answer {
                Answer::Session(v) => {
                    if let (Some(key), Some(k)) = (&reads.session, session_keys) {
                        out.session = loaded(key, k, v)?;
                    }
                }
                Answer::Focus(i, v) => {
                    out.focus[i] = doc_of_hmget(&reads.focus[i], &focus_keys[i], reply::array(v)?)?
                }
                Answer::Cache(i, v) => out.cache[i] = crate::cache::value(v, max, cache_keys[i])?,
                Answer::CacheSuspect => suspect = true,
            }
        }
        if suspect {
            out.cache = KvCache::get_many(self, &reads.cache).await?;
        }
        Ok(out)
    }
}

impl RedisStore {
    /// One slot group's pipeline (see the module docs), one round trip.
    async fn read_group(
        &self,
        parts: impl Iterator<Item = (Part, &str)>,
        session_keys: &Option<Keys>,
    ) -> Result<Vec<Answer>> {
        let mut pipe = redis::pipe();
        let mut order: Vec<Part> = Vec::new();
        let mut cache: Vec<(usize, &str)> = Vec::new();
        let mut first_key = None;
        for (part, key) in parts {
            first_key.get_or_insert(key);
            match part {
                Part::Session => {
                    let k = session_keys.as_ref().ok_or_else(|| {
                        Error::new(ErrorKind::Internal, "a session part without its keys")
                    })?;
                    pipe.cmd("MULTI")
                        .cmd("HGETALL")
                        .arg(&k.ctx)
                        .cmd("LRANGE")
                        .arg(&k.msgs)
                        .arg(0)
                        .arg(-1)
                        .cmd("EXEC");
                    order.push(part);
                }
                Part::Focus(_) => {
                    pipe.cmd("HMGET").arg(key).arg(&DOC_FIELDS[..]);
                    order.push(part);
                }
                Part::Cache(i) => cache.push((i, key)),
            }
        }
        if !cache.is_empty() {
            let ks: Vec<&str> = cache.iter().map(|(_, k)| *k).collect();
            pipe.cmd("MGET").arg(&ks).cmd("EXISTS").arg(&ks);
        }
        let keys: Vec<&str> = first_key.into_iter().collect();
        let values: Vec<Value> = self.inner.conn.pipe(&pipe, OP, &keys).await?;
        let mut values = values.into_iter();
        let mut next = || {
            values
                .next()
                .ok_or_else(|| Error::decode("unexpected Redis reply shape: read_batch"))
        };
        let mut answers = Vec::with_capacity(order.len() + cache.len());
        for part in order {
            match part {
                Part::Session => {
                    // MULTI's OK and the two QUEUED, then EXEC's answers.
                    for _ in 0..3 {
                        next()?;
                    }
                    answers.push(Answer::Session(next()?));
                }
                Part::Focus(i) => answers.push(Answer::Focus(i, next()?)),
                Part::Cache(_) => {}
            }
        }
        if !cache.is_empty() {
            let found = reply::array(next()?)?;
            let present = reply::int(&next()?)?;
            if found.len() != cache.len() {
                return Err(Error::decode(
                    "unexpected Redis reply shape: one value per key",
                ));
            }
            let answered = found.iter().filter(|v| !matches!(v, Value::Nil)).count();
            if present > answered as i64 {
                answers.push(Answer::CacheSuspect);
            }
            answers.extend(
                cache
                    .iter()
                    .zip(found)
                    .map(|(&(i, _), v)| Answer::Cache(i, v)),
            );
        }
        Ok(answers)
    }
}

/// The session part: `EXEC`'s `[record hash, messages]`, as `load` answers.
fn loaded(key: &SessionKey, k: &Keys, v: Value) -> Result<Option<LoadedSession>> {
    let mut both = reply::array(v)?.into_iter();
    let hash = both.next().unwrap_or(Value::Nil);
    loaded_from(key, k, hash, both.next().unwrap_or(Value::Nil))
}
