//! ReadBatch on Redis: the read before the model is called, as one pipeline.
//!
//! Per slot group (one group on one server or Sentinel: one round trip; on a
//! Cluster one per slot the keys fall in, sent concurrently), the pipeline holds:
//! - the session: what `load` sends (`session::queue_read`: `MULTI`, `HGETALL`,
//!   `LRANGE`, `EXEC`), the record and the window read at one instant;
//! - each focus document: the `HMGET` its own `get` sends;
//! - the cache entries of the group: what `KvCache::get_many` sends
//!   (`cache::queue_get`: `MGET` plus `EXISTS`), read by the same code, so a key
//!   of another type is named the same way (one more round trip only then).

use async_trait::async_trait;
use chatstate_core::{BatchRead, BatchReads, Error, ErrorKind, ReadBatch, Result};
use redis::Value;

use crate::RedisStore;
use crate::cache::queue_get;
use crate::conn::reply;
use crate::focus::{DOC_FIELDS, doc_of_hmget};
use crate::session::{Keys, READ_CMDS, keys, loaded_of_exec, queue_read};

/// What one part of the batch is.
#[derive(Clone, Copy)]
enum Part {
    Session,
    Focus(usize),
    Cache(usize),
}

/// The parts whose answers come in pipeline order (the cache entries come last,
/// as one `MGET` and one `EXISTS`).
enum Ordered {
    Session,
    Focus(usize),
}

/// What a slot group's pipeline answered, per part.
enum Answer {
    Session(Value),
    Focus(usize, Value),
    /// The entries of the group (their indexes in the batch) with their values.
    Cache(Vec<(usize, Option<bytes::Bytes>)>),
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
        for answer in groups.into_iter().flatten() {
            match answer {
                Answer::Session(v) => {
                    if let (Some(key), Some(k)) = (&reads.session, session_keys) {
                        out.session = loaded_of_exec(key, k, v)?;
                    }
                }
                Answer::Focus(i, v) => {
                    out.focus[i] = doc_of_hmget(&reads.focus[i], &focus_keys[i], reply::array(v)?)?
                }
                Answer::Cache(values) => {
                    for (i, v) in values {
                        out.cache[i] = v;
                    }
                }
            }
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
        let mut order: Vec<Ordered> = Vec::new();
        let mut cache: Vec<(usize, &str)> = Vec::new();
        // The key each queued command concerns, so an error names it.
        let mut cmd_keys: Vec<&str> = Vec::new();
        for (part, key) in parts {
            match part {
                Part::Session => {
                    let k = session_keys.as_ref().ok_or_else(|| {
                        Error::new(ErrorKind::Internal, "a session part without its keys")
                    })?;
                    queue_read(&mut pipe, k);
                    cmd_keys.extend(k.read_keys());
                    order.push(Ordered::Session);
                }
                Part::Focus(i) => {
                    pipe.cmd("HMGET").arg(key).arg(&DOC_FIELDS[..]);
                    cmd_keys.push(key);
                    order.push(Ordered::Focus(i));
                }
                Part::Cache(i) => cache.push((i, key)),
            }
        }
        let cache_keys: Vec<&str> = cache.iter().map(|(_, k)| *k).collect();
        if let Some(first) = cache_keys.first() {
            queue_get(&mut pipe, cache_keys.iter().copied());
            cmd_keys.extend([*first, *first]);
        }
        let values: Vec<Value> = match self.inner.conn.pipe(&pipe, OP, &cmd_keys).await {
            Ok(v) => v,
            Err(e) => {
                return Err(match session_keys {
                    Some(k) if order.iter().any(|p| matches!(p, Ordered::Session)) => {
                        self.name_wrong_type(e, k, OP).await
                    }
                    _ => e,
                });
            }
        };
        let mut values = values.into_iter();
        let mut next = || {
            values
                .next()
                .ok_or_else(|| Error::decode("unexpected Redis reply shape: read_batch"))
        };
        let mut answers = Vec::with_capacity(order.len() + 1);
        for part in order {
            match part {
                Ordered::Session => {
                    // MULTI's OK and the two QUEUED, then EXEC's answers.
                    for _ in 1..READ_CMDS {
                        next()?;
                    }
                    answers.push(Answer::Session(next()?));
                }
                Ordered::Focus(i) => answers.push(Answer::Focus(i, next()?)),
            }
        }
        if !cache.is_empty() {
            let (found, present) = (next()?, next()?);
            let values = self
                .answer_get(cache_keys.iter().copied(), found, present, OP)
                .await?;
            answers.push(Answer::Cache(
                cache.iter().map(|(i, _)| *i).zip(values).collect(),
            ));
        }
        Ok(answers)
    }
}
