//! LIA CORTEX, an AI assistant (seed 000): assistant configurations in a cache with
//! a local tier in front of the shared one (Redis), a thread and its metadata
//! written in one call, many threads read at once, and usage counters added in
//! memory and flushed in one batch every minute (`CHATSTATE_COUNTER_FLUSH_SECONDS`).
//!
//! Written as an app would use `chatstate`, and shared as it is by the `lia`
//! example and `chatstate demo --scenario lia`.

use chatstate::{
    BatchedCounters, Bucket, CacheHandles, CacheKey, CacheNamespace, Clock, Codec, Config,
    CounterKey, KvCache, KvCacheExt, Labels, Result, Stores, SystemClock, TierStats, TieredCache,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How long threads stay cached.
pub const THREAD_TTL: Duration = Duration::from_secs(30 * 60);

/// An assistant's configuration (what the app reads before every model call).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Assistant {
    /// Its id.
    pub id: u32,
    /// Its kind (`"support"`, `"sales"`, ...), the usage counter's label.
    pub kind: String,
    /// The system prompt.
    pub prompt: String,
}

/// A conversation thread.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Thread {
    /// The thread's id.
    pub id: String,
    /// The assistant it talks to.
    pub assistant: u32,
    /// The last messages.
    pub last: Vec<String>,
}

/// A thread's metadata, kept beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ThreadMeta {
    /// Messages in the thread.
    pub messages: u64,
    /// The model's tokens used so far.
    pub tokens: u64,
}

/// One LIA instance's memory.
pub struct Lia {
    assistants: CacheNamespace<TieredCache>,
    tiered: Arc<TieredCache>,
    cache: Arc<dyn KvCache>,
    counters: BatchedCounters,
    codec: Codec,
}

impl Lia {
    /// The instance over the configured stores; the local tier and the flush
    /// interval come from `config`.
    pub fn new(stores: &Stores, config: &Config) -> Result<Lia> {
        let tiered = Arc::new(stores.tiered_cache(config));
        Ok(Lia {
            assistants: tiered
                .namespace("assistants")?
                .ttl(Duration::from_secs(600))
                .codec(stores.codec),
            tiered,
            cache: stores.cache.clone(),
            counters: stores.batched_counters(config)?,
            codec: stores.codec,
        })
    }

    /// The assistant `id`: from the local tier, the shared cache, or the database
    /// (loaded once per key at a time, kept 10 minutes).
    pub async fn assistant(&self, id: u32) -> Result<Assistant> {
        self.assistants
            .get_or_load(&id.to_string(), || async move { Ok(load_assistant(id)) })
            .await
    }

    /// Writes a thread and its metadata together (one `set_many`).
    pub async fn save_thread(&self, thread: &Thread, meta: &ThreadMeta) -> Result<()> {
        let entries = vec![
            (
                CacheKey::new("threads", &thread.id)?,
                self.codec.encode(thread)?,
            ),
            (
                CacheKey::new("thread-meta", &thread.id)?,
                self.codec.encode(meta)?,
            ),
        ];
        self.cache.set_many(entries, Some(THREAD_TTL)).await
    }

    /// Reads many threads at once (one `get_many`), in order.
    pub async fn threads(&self, ids: &[String]) -> Result<Vec<Option<Thread>>> {
        let keys = ids
            .iter()
            .map(|id| CacheKey::new("threads", id))
            .collect::<Result<Vec<_>>>()?;
        self.cache.get_many_values(&keys, self.codec).await
    }

    /// Counts a message and an AI response by assistant kind, today: in memory,
    /// written by the next flush.
    pub fn count_usage(&self, assistant: &Assistant) -> Result<()> {
        let today = Bucket::day_of(SystemClock.now());
        let by_kind = Labels::new().with("type", assistant.kind.as_str())?;
        self.counters
            .add(&CounterKey::new("messages")?.in_bucket(today), 1);
        self.counters.add(
            &CounterKey::new("ai_responses")?
                .with_labels(by_kind)
                .in_bucket(today),
            1,
        );
        Ok(())
    }

    /// Flushes the counters now (one batch), as the minute timer and shutdown do.
    pub async fn flush_counters(&self) -> Result<()> {
        self.counters.flush().await?.into_result().map(drop)
    }

    /// Hits and misses of the assistants cache, per tier.
    pub fn cache_stats(&self) -> TierStats {
        self.tiered.stats()
    }

    /// Counter batches written so far.
    pub fn batches_flushed(&self) -> u64 {
        self.counters.stats().batches_applied
    }
}

/// The assistants table (simulated).
fn load_assistant(id: u32) -> Assistant {
    const KINDS: [&str; 3] = ["support", "sales", "scheduling"];
    Assistant {
        id,
        kind: KINDS[id as usize % KINDS.len()].to_string(),
        prompt: format!("Você é o assistente {id}. Responda em português, com cordialidade."),
    }
}
