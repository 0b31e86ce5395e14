//! Batched counters: count locally in nanoseconds, write every interval in one round
//! trip, never lose or double-count a delta.
//!
//! `add` only touches a local shard (a short mutex on one of 16 maps, chosen by the
//! key's hash, so threads adding to different counters rarely meet). A flush takes
//! every pending delta into one [`CounterBatch`] with a fresh id and applies it with
//! [`CounterSink::apply`] — one round trip on Redis, atomic, idempotent by the id.
//!
//! **Failures.** A flush that fails with a temporary error (or times out) keeps its
//! batch, with the same id, and the next flush applies it again before anything
//! newer. If the first attempt had in fact been applied (the reply was lost), the sink
//! recognises the id and answers `Duplicate`: nothing is counted twice — as long as
//! the retry comes within the sink's batch retention (24 h by default). A permanent
//! error (a counter of the wrong type, an overflow) does not block the others: the
//! batch is split into one batch per counter, and only a counter that still fails is
//! dropped (logged, and counted in [`FlushStats::dropped_counters`]). New adds wait in
//! the shards for the next batch.
//!
//! **What can be lost.** [`BatchedCounters::shutdown`] flushes before it returns. A
//! process killed abruptly loses what was added since the last successful flush: one
//! interval's worth while the sink is reachable, everything counted during an outage
//! while it is not. That is the price of counting without a round trip; use the sink
//! directly for counts that must never be lost.

use std::collections::{HashMap, VecDeque};
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
    /// Counters whose delta was refused permanently (wrong type, overflow) and
    /// dropped.
    pub dropped_counters: u64,
}

struct Shared {
    sink: Arc<dyn CounterSink>,
    shards: Vec<Mutex<HashMap<CounterKey, i64>>>,
    hasher: std::collections::hash_map::RandomState,
    /// Batches taken from the shards whose apply is not confirmed yet, oldest first.
    /// A sync mutex, never held across an await: readers see pending deltas without
    /// waiting for a flush's round trip. Shards are drained into it under its lock,
    /// so a delta is always in exactly one of the two.
    queue: Mutex<VecDeque<CounterBatch>>,
    /// Makes flushes one at a time (held across the sink call, by design).
    flushing: tokio::sync::Mutex<()>,
    /// Grows each time a batch is confirmed applied; reads retry around it.
    generation: AtomicU64,
    flush_timeout: Duration,
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
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
            queue: Mutex::new(VecDeque::new()),
            flushing: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            flush_timeout,
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let weak = Arc::downgrade(&shared);
            rt.spawn(chatstate_core::background::every(weak, interval, |shared: Arc<Shared>| async move {
                if let Err(e) = flush(&shared).await {
                    tracing::warn!(error = %e, "chatstate counter flush failed; its batch is kept and retried");
                }
            }))
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

    /// This instance's deltas for `key` not yet confirmed stored (in the shards or
    /// in a batch being flushed). Never waits for a flush.
    pub async fn pending(&self, key: &CounterKey) -> i64 {
        let queue = lock(&self.shared.queue);
        let mut total: i64 = queue
            .iter()
            .flat_map(|b| b.deltas())
            .filter(|(k, _)| *k == key)
            .map(|(_, d)| d)
            .fold(0, i64::saturating_add);
        // Still under the queue lock: a flush cannot move deltas between the two.
        for shard in &self.shared.shards {
            total = total.saturating_add(lock(shard).get(key).copied().unwrap_or(0));
        }
        total
    }

    /// The counter's value, with or without this instance's pending deltas.
    ///
    /// With [`Read::IncludingPending`] the read is retried if a flush completed
    /// while it ran; it can still count a batch twice for the instant between the
    /// sink applying it and the flush hearing so.
    pub async fn get(&self, key: &CounterKey, read: Read) -> Result<i64> {
        if read == Read::Stored {
            return self.shared.sink.get(key).await;
        }
        let mut tries = 0;
        loop {
            let generation = self.shared.generation.load(Ordering::SeqCst);
            let stored = self.shared.sink.get(key).await?;
            let pending = self.pending(key).await;
            tries += 1;
            if self.shared.generation.load(Ordering::SeqCst) == generation || tries == 3 {
                return Ok(stored.saturating_add(pending));
            }
        }
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
            dropped_counters: self.shared.dropped.load(Ordering::Relaxed),
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

/// Moves every shard's deltas into a new batch at the back of the queue.
fn drain_shards(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    let mut batch = CounterBatch::new();
    for shard in &shared.shards {
        let taken = std::mem::take(&mut *lock(shard));
        for (key, delta) in taken {
            batch.add(&key, delta);
        }
    }
    if !batch.is_empty() {
        queue.push_back(batch);
    }
}

async fn flush(shared: &Shared) -> Result<()> {
    let _one_at_a_time = shared.flushing.lock().await;
    drain_shards(shared);
    loop {
        let Some(batch) = lock(&shared.queue).front().cloned() else {
            return Ok(());
        };
        match apply_once(shared, &batch).await {
            Ok(()) => {}
            Err(e) if e.is_temporary() => return Err(e),
            Err(e) if batch.len() > 1 => {
                // One counter's permanent error must not block the others: retry
                // each counter alone (nothing was applied: apply is atomic).
                tracing::warn!(error = %e, counters = batch.len(), "chatstate counter batch refused; retrying counter by counter");
                let singles: Vec<CounterBatch> = batch
                    .deltas()
                    .enumerate()
                    .map(|(i, (key, delta))| {
                        let mut one = CounterBatch::with_id(format!("{}/{i}", batch.id()));
                        one.add(key, delta);
                        one
                    })
                    .collect();
                let mut queue = lock(&shared.queue);
                queue.pop_front();
                for one in singles.into_iter().rev() {
                    queue.push_front(one);
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "chatstate counter delta refused permanently and dropped");
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        lock(&shared.queue).pop_front();
        shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}
