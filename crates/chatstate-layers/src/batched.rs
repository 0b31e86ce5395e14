//! Batched counters: count locally in nanoseconds, write every interval in one round
//! trip, never lose or double-count a delta.
//!
//! `add` only touches a local shard (a short mutex on one of 16 maps, chosen by the
//! key's hash, so threads adding to different counters rarely meet). A flush takes
//! every pending delta into one [`CounterBatch`] with a fresh id and applies it with
//! [`CounterSink::apply`] — one round trip on Redis, atomic, idempotent by the id.
//!
//! **Failures.** A failed or timed-out flush keeps its batch, with the same id, and
//! the next flush applies it again before anything newer. If the first attempt had in
//! fact been applied (the reply was lost), the sink recognises the id and answers
//! `Duplicate`: nothing is counted twice. New adds meanwhile wait in the shards for
//! the next batch.
//!
//! **What can be lost.** [`BatchedCounters::shutdown`] flushes before it returns. A
//! process killed abruptly loses what was added since the last successful flush — at
//! most one interval's worth, plus a batch still being retried. That is the price of
//! counting without a round trip; use the sink directly for counts that must never be
//! lost.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chatstate_core::{
    BatchOutcome, CounterBatch, CounterKey, CounterSink, Error, ErrorKind, Result,
};
use serde::Serialize;

const SHARDS: usize = 16;

/// Whether a read includes deltas not yet flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Only what the sink has stored (what other instances see).
    Stored,
    /// The stored value plus this instance's pending deltas.
    IncludingPending,
}

/// Flush statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushStats {
    /// Batches applied (first try or retry).
    pub batches_applied: u64,
    /// Retried batches the sink already had (a lost reply), counted once.
    pub duplicates: u64,
    /// Flush attempts that failed or timed out (their batch is kept).
    pub failures: u64,
}

struct Shared {
    sink: Arc<dyn CounterSink>,
    shards: Vec<Mutex<HashMap<CounterKey, i64>>>,
    hasher: std::collections::hash_map::RandomState,
    /// A batch taken from the shards whose apply is not confirmed yet. The async
    /// mutex also makes flushes one at a time.
    in_flight: tokio::sync::Mutex<Option<CounterBatch>>,
    flush_timeout: Duration,
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
}

/// Counters added locally and flushed to a [`CounterSink`] in batches.
pub struct BatchedCounters {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for BatchedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedCounters")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for BatchedCounters {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BatchedCounters {
    /// Batches over `sink`, flushing every `interval` in the background (when built
    /// inside a tokio runtime; otherwise only on [`BatchedCounters::flush`]). A flush
    /// attempt gives up after `flush_timeout` and is retried.
    pub fn new(sink: Arc<dyn CounterSink>, interval: Duration, flush_timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            sink,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            in_flight: tokio::sync::Mutex::new(None),
            flush_timeout,
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        });
        let task = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let weak = Arc::downgrade(&shared);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(shared) = weak.upgrade() else { return };
                    if let Err(e) = flush(&shared).await {
                        tracing::warn!(error = %e, "chatstate counter flush failed; its batch is kept and retried");
                    }
                }
            })
        });
        BatchedCounters {
            shared,
            task: Mutex::new(task),
        }
    }

    /// Adds `delta` to `key` locally (saturating). No I/O.
    pub fn add(&self, key: &CounterKey, delta: i64) {
        let shard = (self.shared.hasher.hash_one(key) as usize) % SHARDS;
        let mut map = lock(&self.shared.shards[shard]);
        match map.get_mut(key) {
            Some(v) => *v = v.saturating_add(delta),
            None => {
                map.insert(key.clone(), delta);
            }
        }
    }

    /// This instance's deltas for `key` not yet confirmed stored.
    pub async fn pending(&self, key: &CounterKey) -> i64 {
        let in_flight = self
            .shared
            .in_flight
            .lock()
            .await
            .as_ref()
            .map(|b| {
                b.deltas()
                    .filter(|(k, _)| *k == key)
                    .map(|(_, d)| d)
                    .sum::<i64>()
            })
            .unwrap_or(0);
        let mut total = in_flight;
        for shard in &self.shared.shards {
            total = total.saturating_add(lock(shard).get(key).copied().unwrap_or(0));
        }
        total
    }

    /// The counter's value, with or without this instance's pending deltas.
    pub async fn get(&self, key: &CounterKey, read: Read) -> Result<i64> {
        let stored = self.shared.sink.get(key).await?;
        Ok(match read {
            Read::Stored => stored,
            Read::IncludingPending => stored.saturating_add(self.pending(key).await),
        })
    }

    /// Writes every pending delta now, in one `apply` (two when a failed batch is
    /// retried first). On error the deltas are kept for the next flush.
    pub async fn flush(&self) -> Result<()> {
        flush(&self.shared).await
    }

    /// Stops the background flush and flushes what is pending. On error the deltas
    /// are still held: call [`BatchedCounters::flush`] again.
    pub async fn shutdown(&self) -> Result<()> {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        flush(&self.shared).await
    }

    /// Flush statistics so far.
    pub fn stats(&self) -> FlushStats {
        FlushStats {
            batches_applied: self.shared.applied.load(Ordering::Relaxed),
            duplicates: self.shared.duplicates.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }
}

async fn apply_once(shared: &Shared, batch: &CounterBatch) -> Result<()> {
    match tokio::time::timeout(shared.flush_timeout, shared.sink.apply(batch)).await {
        Ok(Ok(BatchOutcome::Applied)) => {
            shared.applied.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Ok(BatchOutcome::Duplicate)) => {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(e)) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Err(e.with_operation("flush"))
        }
        Err(_) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Err(Error::new(
                ErrorKind::Timeout,
                "counter flush timed out; the batch is kept",
            )
            .with_operation("flush"))
        }
    }
}

async fn flush(shared: &Shared) -> Result<()> {
    let mut in_flight = shared.in_flight.lock().await;
    // A batch whose apply was not confirmed goes first, with its own id.
    if let Some(batch) = in_flight.as_ref() {
        apply_once(shared, batch).await?;
        *in_flight = None;
    }
    let mut batch = CounterBatch::new();
    for shard in &shared.shards {
        let taken = std::mem::take(&mut *lock(shard));
        for (key, delta) in taken {
            batch.add(&key, delta);
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    *in_flight = Some(batch);
    if let Some(batch) = in_flight.as_ref() {
        apply_once(shared, batch).await?;
    }
    *in_flight = None;
    Ok(())
}
