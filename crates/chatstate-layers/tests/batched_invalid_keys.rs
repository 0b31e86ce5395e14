//! Batched counters and keys every sink refuses (a bucket out of range): reported as
//! dropped, never silently lost, and queued like any other counter, so an outage
//! keeps the queue bounded. Memory backend only.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use chatstate_core::{Bucket, CounterKey, CounterSink, ErrorKind, StoreSettings};
use chatstate_layers::BatchedCounters;
use chatstate_memory::MemoryStore;

/// A counter key the sink refuses deterministically (a bucket outside the years
/// 0001–9999 is `InvalidInput` on every backend) must be reported as dropped by
/// `flush`, never lost with a silent `Ok` (a queue that dropped it on the way to the
/// sink would report a complete flush).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_counter_key_is_reported_not_silently_lost() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let counters = BatchedCounters::new(
        sink.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(5),
    );
    let bad = CounterKey::new("hits")
        .unwrap()
        .in_bucket(Bucket::Day(Bucket::LAST_DAY + 1));
    let good = CounterKey::new("hits").unwrap();
    counters.add(&bad, 3);
    counters.add(&good, 1);
    assert_eq!(
        counters.pending(&bad).await,
        3,
        "the delta is pending before the flush"
    );
    let report = counters.flush().await.unwrap();
    assert_eq!(
        sink.get(&good).await.unwrap(),
        1,
        "the good counter counted"
    );
    assert_eq!(
        report
            .dropped
            .iter()
            .map(|d| (d.key.clone(), d.delta, d.kind))
            .collect::<Vec<_>>(),
        vec![(bad.clone(), 3, ErrorKind::InvalidInput)],
        "the refused delta is named in the report, not dropped silently: {report:?}"
    );
    assert_eq!(counters.stats().dropped_counters, 1);
}

/// A sink that is down: every `apply` fails with a temporary error.
struct Down(MemoryStore);

#[async_trait::async_trait]
impl CounterSink for Down {
    async fn add(&self, key: &CounterKey, delta: i64) -> chatstate_core::Result<i64> {
        self.0.add(key, delta).await
    }
    async fn apply(
        &self,
        _batch: &chatstate_core::CounterBatch,
    ) -> chatstate_core::Result<chatstate_core::BatchOutcome> {
        Err(chatstate_core::Error::new(
            ErrorKind::Unavailable,
            "injected: down",
        ))
    }
    async fn get(&self, key: &CounterKey) -> chatstate_core::Result<i64> {
        self.0.get(key).await
    }
    async fn get_many(&self, keys: &[CounterKey]) -> chatstate_core::Result<Vec<i64>> {
        self.0.get_many(keys).await
    }
    async fn list(
        &self,
        name: &str,
        bucket: Option<Bucket>,
    ) -> chatstate_core::Result<Vec<(chatstate_core::Labels, i64)>> {
        self.0.list(name, bucket).await
    }
    async fn delete(&self, key: &CounterKey) -> chatstate_core::Result<bool> {
        self.0.delete(key).await
    }
}

/// Item 4: memory is bounded by the number of distinct counters, not the outage's
/// length, even with a counter whose key fails `CounterKey::check` (an out-of-range
/// bucket): it merges into the never-sent batch like any other counter, and the
/// sink's refusal, once it is reachable, drops and reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_an_invalid_counter_key_keeps_the_queue_bounded() {
    let sink: Arc<dyn CounterSink> = Arc::new(Down(MemoryStore::new(StoreSettings::default())));
    let counters = BatchedCounters::new(sink, Duration::from_secs(3600), Duration::from_secs(5));
    let bad = CounterKey::new("hits")
        .unwrap()
        .in_bucket(Bucket::Hour(i64::MAX));
    let good = CounterKey::new("ok").unwrap();
    for _ in 0..50 {
        counters.add(&bad, 1);
        counters.add(&good, 1);
        assert!(counters.flush().await.is_err());
    }
    let backlog = counters.backlog();
    assert!(
        backlog.batches <= 2 && backlog.counters <= 4,
        "50 intervals of an outage with 2 distinct counters must keep the queue bounded, got {backlog:?}"
    );
}
