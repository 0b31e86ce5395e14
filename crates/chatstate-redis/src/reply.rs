//! ReplyStream on Redis: a run is a hash (`:meta`: status, bytes, chunk count) and
//! a Stream (`:chunks`, entry id `0-<offset + 1>`, field `t`), both under the run's
//! hash tag (one Cluster slot), both with the run's TTL. Each append is one script —
//! check the run is open and within the run limit, `XADD`, count, `PEXPIRE` the
//! stream to the run's remaining TTL, `PUBLISH` a wake-up on `:live` — so one round
//! trip per chunk, whatever the chunk.
//!
//! **Why a Stream read by id and woken by pub/sub, not `XREAD BLOCK`.** The
//! explicit ids make "from offset n" one `XRANGE` from `0-<n + 1>`, exact across
//! reconnects. A blocking `XREAD` would need a connection per follower (a `BLOCK`
//! holds the reply queue of a multiplexed connection, stalling every other command
//! on it), and on a Cluster a connection to the node of the run's slot, which the
//! store's dedicated client (any seed) is not. Pub/sub instead reaches every
//! subscriber from any node, so a follower holds one subscribed connection (opened
//! lazily on its first poll) and reads with `XRANGE` on the shared connection only
//! when woken: the catch-up read and the live reads are the same code. A
//! wake-up lost while its subscription reconnects costs latency, not data: a
//! follower reads again at least every [`SAFETY_POLL`] (every [`FALLBACK_POLL`]
//! while it has no subscription). `MAXLEN` is not used: trimming would drop chunks
//! a late reader needs; the run limit (`CHATSTATE_STREAM_MAX_RUN_BYTES`) bounds a
//! run instead. See `BENCHMARKS.md` for the measured round trips and latencies.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::reply::{FollowSource, follow_with, run_finished, run_full, run_missing};
use chatstate_core::{
    Chunk, Error, ErrorKind, ReplyEvents, ReplyStream, Result, ResultExt, RunId, RunRead,
    RunStatus, StoreSettings,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use redis::Value;

use crate::RedisStore;
use crate::conn::{Script, lua_wrongtype, reply};

/// Starts a run. KEYS: meta, chunks. ARGV: ttl_ms, a random generation id (tells
/// a follower that its run was replaced by a new one of the same id).
/// Returns -1 when a live run has the id, 1 when started.
const START: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'stream')
if e then return e end
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'status', 'open', 'bytes', 0, 'n', 0, 'gen', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#
);

/// Appends a chunk. KEYS: meta, chunks. ARGV: text, max run bytes, channel.
/// Returns {-1} no run, {-2, status} ended, {-3, bytes} over the run limit,
/// {offset} appended. (Empty and oversize chunks are refused before the call.)
const APPEND: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'stream')
if e then return e end
local st = redis.call('HMGET', KEYS[1], 'status', 'bytes', 'n')
if not st[1] then return {-1} end
if st[1] ~= 'open' then return {-2, st[1]} end
local bytes = tonumber(st[2]) or 0
local n = tonumber(st[3]) or 0
local len = string.len(ARGV[1])
if bytes + len > tonumber(ARGV[2]) then return {-3, bytes} end
redis.call('XADD', KEYS[2], '0-' .. (n + 1), 't', ARGV[1])
redis.call('HSET', KEYS[1], 'bytes', bytes + len, 'n', n + 1)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('PUBLISH', ARGV[3], n)
return {n}
"#
);

/// Ends a run. KEYS: meta. ARGV: status, channel.
/// Returns {-1} no run, {-2, status} already ended, {0} ended now.
const FINISH: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash')
if e then return e end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {-1} end
if st ~= 'open' then return {-2, st} end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
redis.call('PUBLISH', ARGV[2], 'end')
return {0}
"#
);

/// Reads a run from an offset. KEYS: meta, chunks. ARGV: first stream id.
/// Returns {-1} no run, or {status, generation, {{id, {field, text}}, ...}}. The
/// status is read in the same script as the chunks: when it is not `open`, the
/// chunks are all.
const READ: &str = concat!(
    lua_wrongtype!(),
    r#"
local e = wrongtype(KEYS[1], 'hash') or wrongtype(KEYS[2], 'stream')
if e then return e end
local st = redis.call('HMGET', KEYS[1], 'status', 'gen')
if not st[1] then return {-1} end
return {st[1], st[2] or '', redis.call('XRANGE', KEYS[2], ARGV[1], '+')}
"#
);

pub(crate) struct ReplyScripts {
    start: Script,
    append: Script,
    finish: Script,
    read: Script,
}

impl ReplyScripts {
    pub fn new() -> Self {
        ReplyScripts {
            start: Script::new("reply_start", START),
            append: Script::new("reply_append", APPEND),
            finish: Script::new("reply_finish", FINISH),
            read: Script::new("reply_read", READ),
        }
    }
}

/// How long a subscribed follower waits before reading again anyway: the bound on
/// the latency a lost wake-up (a subscription reconnecting) can add.
pub const SAFETY_POLL: Duration = Duration::from_secs(1);
/// How often a follower without a subscription (Redis pub/sub unreachable) reads.
pub const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// A run's keys: meta hash, chunk stream, wake-up channel.
struct Keys {
    meta: String,
    chunks: String,
    live: String,
}

impl RedisStore {
    fn reply_keys(&self, run: &RunId) -> Keys {
        let base = self.inner.layout.reply_base(run);
        Keys {
            meta: format!("{base}:meta"),
            chunks: format!("{base}:chunks"),
            live: format!("{base}:live"),
        }
    }

    /// Reads `run` from `from`, with the run's generation id.
    async fn read_run(&self, run: &RunId, from: u64) -> Result<(RunRead, Vec<u8>)> {
        let keys = self.reply_keys(run);
        let first = format!("0-{}", from.saturating_add(1));
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.replies.read,
                &[&keys.meta, &keys.chunks],
                &[first.as_bytes()],
                "read",
            )
            .await?;
        let mut parts = reply::array(v)?.into_iter();
        let status = parts.next().unwrap_or(Value::Nil);
        if matches!(status, Value::Int(-1)) {
            return Err(run_missing().with_key(&keys.meta));
        }
        let bad = |what: &str| {
            Error::decode(format!("a reply run is malformed: {what}")).with_key(&keys.meta)
        };
        let status = reply::bytes(status)?.ok_or_else(|| bad("no status"))?;
        let generation = reply::bytes(parts.next().unwrap_or(Value::Nil))?.unwrap_or_default();
        let finished = match status.as_slice() {
            b"open" => None,
            s => Some(
                std::str::from_utf8(s)
                    .ok()
                    .and_then(RunStatus::parse)
                    .ok_or_else(|| bad("an unknown status"))?,
            ),
        };
        let mut chunks = Vec::new();
        for entry in reply::array(parts.next().unwrap_or(Value::Nil))? {
            let mut entry = reply::array(entry)?.into_iter();
            let id = reply::bytes(entry.next().unwrap_or(Value::Nil))?
                .ok_or_else(|| bad("an entry without id"))?;
            let seq = std::str::from_utf8(&id)
                .ok()
                .and_then(|id| id.strip_prefix("0-"))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad("an entry id not of the form 0-<n>"))?;
            let fields = reply::pairs(entry.next().unwrap_or(Value::Nil))?;
            let text = fields
                .into_iter()
                .find(|(k, _)| k == "t")
                .map(|(_, v)| v)
                .ok_or_else(|| bad("an entry without text"))?;
            let text = String::from_utf8(text).map_err(|_| bad("a chunk that is not UTF-8"))?;
            chunks.push(Chunk {
                offset: seq - 1,
                text,
            });
        }
        Ok((RunRead { chunks, finished }, generation))
    }
}

/// Maps a script's `{-1}` / `{-2, status}` / `{-3, bytes}` refusals.
fn refusal(
    store: &RedisStore,
    parts: &[Value],
    chunk_len: usize,
    key: &str,
    op: &'static str,
) -> Result<()> {
    let code = parts.first().map(reply::int).transpose()?.unwrap_or(0);
    let fail = |e: Error| Err(e.with_operation(op).with_key(key));
    match code {
        -1 => fail(run_missing()),
        -2 => {
            let status = parts
                .get(1)
                .cloned()
                .map(reply::bytes)
                .transpose()?
                .flatten()
                .and_then(|s| String::from_utf8(s).ok())
                .and_then(|s| RunStatus::parse(&s))
                .ok_or_else(|| Error::decode("a reply run has an unknown status").with_key(key))?;
            fail(run_finished(status))
        }
        -3 => {
            let bytes = parts.get(1).map(reply::int).transpose()?.unwrap_or(0);
            fail(run_full(
                &store.inner.settings,
                usize::try_from(bytes).unwrap_or(usize::MAX),
                chunk_len,
            ))
        }
        _ => Ok(()),
    }
}

type Wakeups = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

struct RedisFollow {
    store: RedisStore,
    run: RunId,
    channel: String,
    wakeups: Option<Wakeups>,
    /// The generation of the run this follower follows (set by its first read).
    generation: Option<Vec<u8>>,
    /// When the last subscription attempt failed: the next waits a second.
    failed_at: Option<tokio::time::Instant>,
}

impl RedisFollow {
    /// Subscribes to the run's channel (when not yet, and not just failed).
    async fn subscribe(&mut self) {
        if self.wakeups.is_some()
            || self
                .failed_at
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let timeout = self.store.inner.command_timeout;
        let attempt = async {
            let client = self.store.dedicated_client().await.ok()?;
            let mut pubsub = client.get_async_pubsub().await.ok()?;
            pubsub.subscribe(&self.channel).await.ok()?;
            Some(pubsub.into_on_message())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Some(messages)) => {
                self.wakeups = Some(Box::pin(messages));
                self.failed_at = None;
            }
            _ => {
                tracing::debug!("reply follower has no subscription: polling instead");
                self.failed_at = Some(tokio::time::Instant::now());
            }
        }
    }
}

impl FollowSource for RedisFollow {
    fn read(&mut self, from: u64) -> BoxFuture<'_, Result<RunRead>> {
        async move {
            // Subscribed before reading, so an append after this read wakes us.
            self.subscribe().await;
            let (read, generation) = self.store.read_run(&self.run, from).await?;
            match &self.generation {
                // The run expired and another of the same id started since.
                Some(g) if *g != generation => Err(run_missing().with_key(&self.run)),
                Some(_) => Ok(read),
                None => {
                    self.generation = Some(generation);
                    Ok(read)
                }
            }
        }
        .boxed()
    }

    fn wait(&mut self, next: u64, at_most: Duration) -> BoxFuture<'_, ()> {
        async move {
            let Some(messages) = self.wakeups.as_mut() else {
                return tokio::time::sleep(at_most.min(FALLBACK_POLL)).await;
            };
            let deadline = tokio::time::Instant::now() + at_most.min(SAFETY_POLL);
            loop {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Err(_) => return,
                    // The subscription is gone: poll until it is back.
                    Ok(None) => {
                        self.wakeups = None;
                        return;
                    }
                    Ok(Some(msg)) => {
                        // An append publishes its offset: one already read is stale
                        // news (it was published before the last read finished).
                        let stale = reply::redis_int(msg.get_payload_bytes())
                            .and_then(|n| u64::try_from(n).ok())
                            .is_some_and(|n| n < next);
                        if !stale {
                            return;
                        }
                    }
                }
            }
        }
        .boxed()
    }
}

#[async_trait]
impl ReplyStream for RedisStore {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        let ttl = StoreSettings::ttl_or(ttl, self.inner.settings.reply_ttl).in_op("start")?;
        let keys = self.reply_keys(run);
        let ttl_ms = ttl.as_millis().to_string();
        let generation = chatstate_core::model::random_id();
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.replies.start,
                &[&keys.meta, &keys.chunks],
                &[ttl_ms.as_bytes(), generation.as_bytes()],
                "start",
            )
            .await?;
        if reply::int(&v)? == -1 {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "a live run has this id")
                    .with_operation("start")
                    .with_key(&keys.meta),
            );
        }
        Ok(())
    }

    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        let keys = self.reply_keys(run);
        // The run limit needs the stored size: the script checks it.
        chatstate_core::reply::check_chunk(&self.inner.settings, 0, text)
            .map_err(|e| e.with_operation("append").with_key(&keys.meta))?;
        let max_run = self.inner.settings.max_run_bytes.to_string();
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.replies.append,
                &[&keys.meta, &keys.chunks],
                &[text.as_bytes(), max_run.as_bytes(), keys.live.as_bytes()],
                "append",
            )
            .await?;
        refusal(self, &reply::array(v)?, text.len(), &keys.meta, "append")
    }

    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        let keys = self.reply_keys(run);
        let v = self
            .inner
            .conn
            .script(
                &self.inner.scripts.replies.finish,
                &[&keys.meta],
                &[status.as_str().as_bytes(), keys.live.as_bytes()],
                "finish",
            )
            .await?;
        refusal(self, &reply::array(v)?, 0, &keys.meta, "finish")
    }

    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        self.read_run(run, from)
            .await
            .map(|(read, _)| read)
            .in_op("read")
    }

    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        let source = RedisFollow {
            store: self.clone(),
            run: run.clone(),
            channel: self.reply_keys(run).live,
            wakeups: None,
            generation: None,
            failed_at: None,
        };
        follow_with(source, from, idle_timeout)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        RedisStore::capabilities(self)
    }
}
