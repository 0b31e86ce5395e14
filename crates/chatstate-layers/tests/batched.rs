//! Batched counters against the memory backend and a real Redis, with injected
//! failures: a flush that fails before applying, one whose reply is lost after
//! applying, one that hangs past its timeout. Nothing is lost, nothing counts twice.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::{
    BatchOutcome, Bucket, Clock, CounterBatch, CounterKey, CounterSink, Error, ErrorKind, Labels,
    ManualClock, RedisUrl, Result, StoreSettings,
};
use chatstate_layers::{Backlog, BatchedCounters, Bucketing, DroppedCounter, Read};
use chatstate_memory::MemoryStore;
use chatstate_redis::RedisStore;

/// What the next `apply` does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Fails with this kind without applying (the server never saw it).
    Fail(ErrorKind),
    /// Applies, then reports a failure of this kind (the reply was lost).
    LoseReply(ErrorKind),
    /// Applies after sleeping this long (past the flush timeout).
    Hang(Duration),
    /// Applies, then sleeps this long before answering (past the flush timeout): the
    /// batch landed, the flush timed out.
    LandThenHang(Duration),
}

/// A sink that injects the queued faults into `apply`, refuses every batch holding
/// the poisoned counter, and records the batches it was sent.
struct Flaky {
    inner: Arc<dyn CounterSink>,
    faults: Mutex<VecDeque<Fault>>,
    poison: Mutex<Option<(CounterKey, ErrorKind)>>,
    applies: Mutex<Vec<(String, usize)>>,
}

impl Flaky {
    fn new(inner: Arc<dyn CounterSink>) -> Arc<Self> {
        Arc::new(Flaky {
            inner,
            faults: Mutex::new(VecDeque::new()),
            poison: Mutex::new(None),
            applies: Mutex::new(Vec::new()),
        })
    }

    fn inject(&self, f: Fault) {
        self.faults.lock().expect("lock").push_back(f);
    }

    /// Refuses, with `kind` and without applying, every batch that holds `key`.
    fn poison(&self, key: &CounterKey, kind: ErrorKind) {
        *self.poison.lock().expect("lock") = Some((key.clone(), kind));
    }

    fn applied_ids(&self) -> Vec<String> {
        self.applies
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn applied_sizes(&self) -> Vec<usize> {
        self.applies
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, n)| *n)
            .collect()
    }
}

#[async_trait]
impl CounterSink for Flaky {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        self.inner.add(key, delta).await
    }
    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        self.applies
            .lock()
            .expect("lock")
            .push((batch.id().to_string(), batch.len()));
        let poison = self.poison.lock().expect("lock").clone();
        if let Some((key, kind)) = poison
            && batch.get(&key).is_some()
        {
            return Err(Error::new(kind, "injected: refused"));
        }
        let fault = self.faults.lock().expect("lock").pop_front();
        match fault {
            Some(Fault::Fail(kind)) => Err(Error::new(kind, "injected: failed")),
            Some(Fault::LoseReply(kind)) => {
                self.inner.apply(batch).await?;
                Err(Error::new(kind, "injected: reply lost"))
            }
            Some(Fault::Hang(d)) => {
                tokio::time::sleep(d).await;
                self.inner.apply(batch).await
            }
            Some(Fault::LandThenHang(d)) => {
                let outcome = self.inner.apply(batch).await;
                tokio::time::sleep(d).await;
                outcome
            }
            None => self.inner.apply(batch).await,
        }
    }
    async fn get(&self, key: &CounterKey) -> Result<i64> {
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        self.inner.get_many(keys).await
    }
    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        self.inner.list(name, bucket).await
    }
    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        self.inner.delete(key).await
    }
}

async fn sinks() -> Vec<(&'static str, Arc<dyn CounterSink>)> {
    let server = common::shared();
    let redis = RedisStore::builder(RedisUrl::parse(&server.url()).expect("url"))
        .prefix(common::unique_prefix())
        .connect()
        .await
        .expect("redis");
    vec![
        (
            "memory",
            Arc::new(MemoryStore::new(StoreSettings::default())),
        ),
        ("redis", Arc::new(redis)),
    ]
}

/// Batched counters over `sink` that flush when the test says so (the background
/// flush is an hour away), with a 5 s flush timeout.
fn by_hand(sink: Arc<dyn CounterSink>) -> BatchedCounters {
    BatchedCounters::new(sink, Duration::from_secs(3600), Duration::from_secs(5))
}

fn key(name: &str) -> CounterKey {
    CounterKey::new(name).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_are_local_until_a_flush_writes_them_in_one_batch() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink);
        let counters = by_hand(flaky.clone());
        let (a, b) = (
            key("messages"),
            key("errors").with_labels(Labels::from_pairs([("type", "timeout")]).unwrap()),
        );
        for _ in 0..1000 {
            counters.add(&a, 1);
        }
        counters.add(&b, 3);
        assert_eq!(
            counters.get(&a, Read::Stored).await.unwrap(),
            0,
            "{backend}: nothing stored before a flush"
        );
        assert_eq!(
            counters.get(&a, Read::IncludingPending).await.unwrap(),
            1000,
            "{backend}"
        );
        counters.flush().await.unwrap();
        assert_eq!(
            flaky.applied_ids().len(),
            1,
            "{backend}: one apply for every counter"
        );
        assert_eq!(
            counters.get(&a, Read::Stored).await.unwrap(),
            1000,
            "{backend}"
        );
        assert_eq!(
            counters.get(&b, Read::Stored).await.unwrap(),
            3,
            "{backend}"
        );
        assert_eq!(counters.pending(&a).await, 0);
        counters.flush().await.unwrap();
        assert_eq!(
            flaky.applied_ids().len(),
            1,
            "{backend}: an empty flush sends nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flush_keeps_its_deltas_and_retries_them_once() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink);
        let counters = by_hand(flaky.clone());
        let k = key("messages");
        counters.add(&k, 5);
        flaky.inject(Fault::Fail(ErrorKind::Unavailable));
        assert!(
            counters.flush().await.unwrap_err().is_temporary(),
            "{backend}"
        );
        assert_eq!(
            counters.get(&k, Read::Stored).await.unwrap(),
            0,
            "{backend}"
        );
        assert_eq!(
            counters.pending(&k).await,
            5,
            "{backend}: the failed batch is kept"
        );
        counters.add(&k, 2);
        counters.flush().await.unwrap();
        assert_eq!(
            counters.get(&k, Read::Stored).await.unwrap(),
            7,
            "{backend}: retried, and the newer add too"
        );
        let ids = flaky.applied_ids();
        assert_eq!(ids[0], ids[1], "{backend}: the retry reuses the batch id");
        assert_eq!(counters.stats().failures, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_does_not_count_twice() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink);
        let counters = by_hand(flaky.clone());
        let k = key("messages");
        counters.add(&k, 10);
        flaky.inject(Fault::LoseReply(ErrorKind::Unavailable));
        assert!(
            counters.flush().await.is_err(),
            "{backend}: the caller sees the lost reply"
        );
        assert_eq!(
            counters.get(&k, Read::Stored).await.unwrap(),
            10,
            "{backend}: the server did apply it"
        );
        assert_eq!(
            counters.get(&k, Read::IncludingPending).await.unwrap(),
            20,
            "{backend}: still pending locally (ambiguous)"
        );
        counters.flush().await.unwrap();
        assert_eq!(
            counters.get(&k, Read::Stored).await.unwrap(),
            10,
            "{backend}: the retry was a duplicate"
        );
        assert_eq!(counters.stats().duplicates, 1, "{backend}");
        assert_eq!(counters.pending(&k).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_flush_is_retried_without_double_counting() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink);
        let counters = BatchedCounters::new(
            flaky.clone(),
            Duration::from_secs(3600),
            Duration::from_millis(100),
        );
        let k = key("messages");
        counters.add(&k, 4);
        flaky.inject(Fault::Hang(Duration::from_millis(300)));
        let err = counters.flush().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{backend}: {err}");
        // The abandoned attempt was cancelled with its future; the retry applies it.
        counters.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            counters.get(&k, Read::Stored).await.unwrap(),
            4,
            "{backend}"
        );

        // A timed-out flush whose batch did land: the retry, with the same batch
        // id, is recognised and counts nothing twice.
        let landed = key("landed");
        counters.add(&landed, 3);
        flaky.inject(Fault::LandThenHang(Duration::from_millis(300)));
        let err = counters.flush().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{backend}: {err}");
        assert_eq!(
            flaky.inner.get(&landed).await.unwrap(),
            3,
            "{backend}: it landed"
        );
        let duplicates = counters.stats().duplicates;
        counters.flush().await.unwrap();
        assert_eq!(
            counters.stats().duplicates,
            duplicates + 1,
            "{backend}: the retry was recognised as applied"
        );
        assert_eq!(
            counters.get(&landed, Read::Stored).await.unwrap(),
            3,
            "{backend}: counted once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_flush_runs_and_shutdown_flushes_the_rest() {
    for (backend, sink) in sinks().await {
        let counters = BatchedCounters::new(
            sink.clone(),
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        let k = key("ticks");
        // Through a handle (issue 13): drained by the background flush and at
        // shutdown like keyed adds.
        let h = counters.handle(&k, Bucketing::None).unwrap();
        h.add(1);
        let mut stored = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stored = sink.get(&k).await.unwrap();
            if stored == 1 {
                break;
            }
        }
        assert_eq!(stored, 1, "{backend}: the interval flush wrote it");
        counters.add(&k, 40);
        h.add(1);
        counters.shutdown().await.unwrap();
        assert_eq!(
            sink.get(&k).await.unwrap(),
            42,
            "{backend}: shutdown flushed"
        );
    }
}

/// A multi-threaded runtime for tests that add from plain threads, and a memory sink
/// made inside it.
fn runtime_and_memory_sink() -> (tokio::runtime::Runtime, Arc<dyn CounterSink>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink: Arc<dyn CounterSink> =
        rt.block_on(async { Arc::new(MemoryStore::new(StoreSettings::default())) });
    (rt, sink)
}

#[test]
fn many_threads_adding_lose_nothing() {
    let (rt, sink) = runtime_and_memory_sink();
    let counters = Arc::new(rt.block_on(async {
        BatchedCounters::new(
            sink.clone(),
            Duration::from_millis(5),
            Duration::from_secs(5),
        )
    }));
    let keys: Vec<CounterKey> = (0..4).map(|i| key(&format!("c{i}"))).collect();
    std::thread::scope(|s| {
        for t in 0..8 {
            let counters = counters.clone();
            let keys = keys.clone();
            s.spawn(move || {
                for i in 0..20_000 {
                    counters.add(&keys[(t + i) % 4], 1);
                }
            });
        }
    });
    rt.block_on(counters.shutdown()).unwrap();
    let total: i64 = rt.block_on(sink.get_many(&keys)).unwrap().iter().sum();
    assert_eq!(
        total,
        8 * 20_000,
        "adds racing the background flushes are all counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanently_refused_counter_does_not_block_the_others() {
    for (backend, sink) in sinks().await {
        let x = key("near_max");
        sink.add(&x, i64::MAX - 1).await.unwrap();
        let counters = by_hand(sink.clone());
        let y = key("ordinary");
        counters.add(&x, i64::MAX / 2); // would overflow: refused permanently
        counters.add(&y, 1);
        counters.flush().await.unwrap();
        assert_eq!(
            sink.get(&y).await.unwrap(),
            1,
            "{backend}: the other counter was flushed"
        );
        assert_eq!(
            sink.get(&x).await.unwrap(),
            i64::MAX - 1,
            "{backend}: the refused delta changed nothing"
        );
        assert_eq!(counters.stats().dropped_counters, 1, "{backend}");
        counters.add(&y, 1);
        counters.flush().await.unwrap();
        assert_eq!(
            sink.get(&y).await.unwrap(),
            2,
            "{backend}: later flushes carry on"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_pending_deltas_do_not_wait_for_a_flush() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let flaky = Flaky::new(sink);
    let counters = Arc::new(by_hand(flaky.clone()));
    let k = key("messages");
    counters.add(&k, 5);
    flaky.inject(Fault::Hang(Duration::from_millis(500)));
    let flushing = {
        let counters = counters.clone();
        tokio::spawn(async move { counters.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await; // the flush is on the wire
    counters.add(&k, 2);
    let pending = tokio::time::timeout(Duration::from_millis(200), counters.pending(&k))
        .await
        .expect("pending() does not wait for the flush's round trip");
    assert_eq!(
        pending, 7,
        "the in-flight batch and the new add both count as pending"
    );
    flushing.await.unwrap().unwrap();
    assert_eq!(counters.get(&k, Read::IncludingPending).await.unwrap(), 7);
    assert_eq!(counters.get(&k, Read::Stored).await.unwrap(), 5);
}

/// Issue 8, item 1: a refusal that is not deterministic (Redis NOREPLICAS or MISCONF
/// arrive as `Internal` on older mappings, a sink may say `Conflict`) keeps the
/// counts, retries the same batch id, and counts them exactly once — also when an
/// attempt landed and only its reply was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_are_not_deterministic_keep_the_counts_and_count_them_once() {
    for (backend, sink) in sinks().await {
        for kind in [
            ErrorKind::Internal,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
        ] {
            let flaky = Flaky::new(sink.clone());
            let counters = by_hand(flaky.clone());
            let (a, b) = (key(&format!("a-{kind}")), key(&format!("b-{kind}")));
            counters.add(&a, 3);
            counters.add(&b, 4);
            // The refusal lasts three flushes, and the third attempt lands but its
            // reply is lost.
            flaky.inject(Fault::Fail(kind));
            flaky.inject(Fault::Fail(kind));
            flaky.inject(Fault::LoseReply(kind));
            for attempt in 0..3 {
                let err = counters.flush().await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    kind,
                    "{backend}/{kind}: attempt {attempt}: {err}"
                );
            }
            assert_eq!(
                counters.pending(&a).await,
                3,
                "{backend}/{kind}: still pending"
            );
            counters.add(&a, 10);
            let report = counters.flush().await.unwrap();
            assert!(report.is_complete(), "{backend}/{kind}: nothing dropped");
            assert_eq!(
                (report.duplicates, report.batches_applied),
                (1, 1),
                "{backend}/{kind}: the landed batch is a duplicate, the newer one applied"
            );
            assert_eq!(
                sink.get_many(&[a.clone(), b.clone()]).await.unwrap(),
                vec![13, 4],
                "{backend}/{kind}: every count exactly once"
            );
            let ids = flaky.applied_ids();
            assert_eq!(ids.len(), 5, "{backend}/{kind}: {ids:?}");
            assert!(
                ids[..4].iter().all(|id| *id == ids[0]),
                "{backend}/{kind}: every retry reuses the batch id: {ids:?}"
            );
            assert_eq!(counters.stats().dropped_counters, 0, "{backend}/{kind}");
            assert_eq!(counters.backlog().batches, 0, "{backend}/{kind}");
        }
    }
}

/// Issue 8, item 1: a deterministic refusal of one counter drops only that counter,
/// and the flush says so; a refusal met by the background flush is reported by the
/// next explicit flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deterministic_refusal_drops_only_that_counter_and_is_reported() {
    for (backend, sink) in sinks().await {
        for kind in [
            ErrorKind::InvalidInput,
            ErrorKind::WrongType,
            ErrorKind::Decode,
        ] {
            let flaky = Flaky::new(sink.clone());
            let counters = by_hand(flaky.clone());
            let bad = key(&format!("bad-{kind}"));
            let good: Vec<CounterKey> = (0..9).map(|i| key(&format!("good{i}-{kind}"))).collect();
            flaky.poison(&bad, kind);
            for k in &good {
                counters.add(k, 2);
            }
            counters.add(&bad, 7);
            let report = counters.flush().await.unwrap();
            assert_eq!(
                report.dropped,
                vec![DroppedCounter {
                    key: bad.clone(),
                    delta: 7,
                    kind
                }],
                "{backend}/{kind}: the refused counter is named"
            );
            let err = report.clone().into_result().unwrap_err();
            assert_eq!(err.kind(), kind, "{backend}/{kind}");
            assert!(
                err.to_string().contains(&bad.to_string()),
                "{backend}/{kind}: {err}"
            );
            assert_eq!(
                sink.get_many(&good).await.unwrap(),
                vec![2; 9],
                "{backend}/{kind}: every other counter counted"
            );
            assert_eq!(sink.get(&bad).await.unwrap(), 0, "{backend}/{kind}");
            assert_eq!(counters.stats().dropped_counters, 1, "{backend}/{kind}");
            assert!(
                flaky.applied_ids().len() <= 9,
                "{backend}/{kind}: found by halving, not one round trip per counter: {:?}",
                flaky.applied_ids()
            );
            let report = counters.flush().await.unwrap();
            assert!(
                report.is_complete(),
                "{backend}/{kind}: a drop is reported once"
            );
        }
    }
    // The background flush drops; the next explicit flush reports it.
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let flaky = Flaky::new(sink.clone());
    let counters = BatchedCounters::new(
        flaky.clone(),
        Duration::from_millis(20),
        Duration::from_secs(5),
    );
    let bad = key("bad");
    flaky.poison(&bad, ErrorKind::WrongType);
    counters.add(&bad, 1);
    for _ in 0..250 {
        if counters.stats().dropped_counters == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counters.stats().dropped_counters,
        1,
        "the background flush ran"
    );
    let report = counters.flush().await.unwrap();
    assert_eq!(
        report.dropped,
        vec![DroppedCounter {
            key: bad,
            delta: 1,
            kind: ErrorKind::WrongType
        }],
        "the background flush's drop is reported by the next flush"
    );
}

/// Issue 8, item 4: an outage of many flush intervals keeps at most two batches —
/// the attempted one (it may have landed: same id, same contents) and one that new
/// deltas are merged into — and then applies everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_at_most_two_batches_and_loses_nothing() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink.clone());
        let counters = by_hand(flaky.clone());
        let keys: Vec<CounterKey> = (0..3).map(|i| key(&format!("outage{i}"))).collect();
        let intervals = 200;
        for i in 0..intervals {
            for k in &keys {
                counters.add(k, 1);
            }
            flaky.inject(Fault::Fail(ErrorKind::Unavailable));
            assert!(counters.flush().await.is_err(), "{backend}: interval {i}");
            let backlog = counters.backlog();
            assert!(
                backlog.batches <= 2 && backlog.counters <= 2 * keys.len(),
                "{backend}: interval {i}: the queue stays bounded, got {backlog:?}"
            );
        }
        let first_id = flaky.applied_ids()[0].clone();
        assert_eq!(
            counters.pending(&keys[0]).await,
            intervals,
            "{backend}: nothing lost while down"
        );
        let report = counters.flush().await.unwrap();
        assert_eq!(report.batches_applied, 2, "{backend}: attempted + merged");
        assert_eq!(report.backlog, Backlog::default(), "{backend}");
        assert_eq!(
            sink.get_many(&keys).await.unwrap(),
            vec![intervals; 3],
            "{backend}: every count once"
        );
        let ids = flaky.applied_ids();
        assert_eq!(
            ids[ids.len() - 2],
            first_id,
            "{backend}: the attempted batch kept its id through the outage"
        );
    }
}

/// Issue 8, item 4: one batch holds at most `max_batch` counters; more make more
/// batches, each with its own id, and merging during an outage respects the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_chunked_to_max_batch_counters() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink.clone());
        let counters = BatchedCounters::builder(flaky.clone())
            .flush_interval(Duration::from_secs(3600))
            .max_batch(10)
            .build()
            .unwrap();
        let keys: Vec<CounterKey> = (0..25).map(|i| key(&format!("chunk{i}"))).collect();
        for k in &keys {
            counters.add(k, 1);
        }
        flaky.inject(Fault::Fail(ErrorKind::Unavailable));
        assert!(counters.flush().await.is_err());
        assert_eq!(
            counters.backlog(),
            Backlog {
                batches: 3,
                counters: 25,
                unbatched: 0
            },
            "{backend}"
        );
        // More counters during the outage: existing ones merge, new ones fill the
        // last never-sent batch up to the cap, then a new one.
        for k in keys.iter().chain(&[key("chunk25"), key("chunk26")]) {
            counters.add(k, 1);
        }
        flaky.inject(Fault::Fail(ErrorKind::Unavailable));
        assert!(counters.flush().await.is_err());
        // The attempted batch (10, sealed) takes nothing; its 10 counters and the 2
        // new ones fill the last never-sent batch (5 → 10), then a new one (7).
        assert_eq!(
            counters.backlog(),
            Backlog {
                batches: 4,
                counters: 37,
                unbatched: 0
            },
            "{backend}"
        );
        let report = counters.flush().await.unwrap();
        assert!(report.is_complete());
        let sizes = flaky.applied_sizes();
        assert!(
            sizes.iter().all(|&n| n <= 10),
            "{backend}: no batch over 10 counters: {sizes:?}"
        );
        let ids = flaky.applied_ids();
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert!(
            distinct.len() >= 4,
            "{backend}: chunks have their own ids: {ids:?}"
        );
        let mut all = keys.clone();
        all.extend([key("chunk25"), key("chunk26")]);
        let stored = sink.get_many(&all).await.unwrap();
        assert_eq!(&stored[..25], &[2; 25], "{backend}");
        assert_eq!(&stored[25..], &[1, 1], "{backend}");
    }
}

/// Issue 8, item 3: a pending delta that would pass the i64 range is not saturated:
/// the sink gets all of it (in two batches), and refuses only what it cannot store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_past_the_i64_range_is_not_saturated() {
    // Memory only: it accepts the whole i64 range today (Redis is being aligned).
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let counters = by_hand(sink.clone());
    let k = key("big");
    sink.add(&k, -10).await.unwrap();
    counters.add(&k, i64::MAX);
    counters.add(&k, 5);
    assert_eq!(
        counters.backlog().unbatched,
        2,
        "the second delta started anew"
    );
    assert_eq!(
        counters.get(&k, Read::IncludingPending).await.unwrap(),
        i64::MAX - 5,
        "the read sums exactly"
    );
    let report = counters.flush().await.unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        sink.get(&k).await.unwrap(),
        i64::MAX - 5,
        "nothing saturated"
    );

    // What the sink cannot store is refused there and reported, not clipped here.
    let full = key("full");
    counters.add(&full, i64::MAX);
    counters.add(&full, 1);
    let report = counters.flush().await.unwrap();
    assert_eq!(sink.get(&full).await.unwrap(), i64::MAX);
    assert_eq!(
        report.dropped,
        vec![DroppedCounter {
            key: full,
            delta: 1,
            kind: ErrorKind::InvalidInput
        }]
    );
}

/// Issue 8, item 4: the builder refuses a batch retention shorter than ten flush
/// intervals (a retried batch could be counted twice), and a zero batch size.
#[tokio::test]
async fn the_builder_refuses_a_retention_too_short_for_the_interval() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let settings = StoreSettings {
        batch_retention: Duration::from_secs(60),
        ..StoreSettings::default()
    };
    let err = BatchedCounters::builder(sink.clone())
        .settings(&settings)
        .flush_interval(Duration::from_secs(7))
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    BatchedCounters::builder(sink.clone())
        .settings(&settings)
        .flush_interval(Duration::from_secs(6))
        .build()
        .unwrap();
    let err = BatchedCounters::builder(sink)
        .max_batch(0)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

/// Issue 13: a resolved handle's deltas go the same way as keyed ones: merged with
/// the same counter's keyed deltas into the same batch, seen by reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_and_keyed_adds_of_one_counter_flush_in_one_batch() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink.clone());
        let counters = by_hand(flaky.clone());
        let k = key("handled");
        let h = counters.handle(&k, Bucketing::None).unwrap();
        assert_eq!(h.key(), k);
        h.add(3);
        counters.add(&k, 4);
        h.clone().add(5);
        counters.handle(&k, Bucketing::None).unwrap().add(1);
        assert_eq!(counters.pending(&k).await, 13, "{backend}");
        assert_eq!(
            counters.get(&k, Read::IncludingPending).await.unwrap(),
            13,
            "{backend}"
        );
        let report = counters.flush().await.unwrap();
        assert_eq!(report.batches_applied, 1, "{backend}");
        assert_eq!(
            flaky.applied_sizes(),
            vec![1],
            "{backend}: one counter, merged"
        );
        assert_eq!(sink.get(&k).await.unwrap(), 13, "{backend}");
        assert_eq!(counters.pending(&k).await, 0, "{backend}");
        assert_eq!(counters.backlog(), Backlog::default(), "{backend}");
    }
}

/// Issue 13: through an outage, a handle's deltas stay in the bounded queue (the
/// attempted batch keeps its id and contents), and each is counted once after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_deltas_keep_batch_ids_and_a_bounded_queue_through_an_outage() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink.clone());
        let counters = by_hand(flaky.clone());
        let handles: Vec<_> = (0..3)
            .map(|i| {
                counters
                    .handle(&key(&format!("h_outage{i}")), Bucketing::None)
                    .unwrap()
            })
            .collect();
        let intervals = 100;
        for i in 0..intervals {
            for h in &handles {
                h.add(1);
            }
            flaky.inject(Fault::Fail(ErrorKind::Unavailable));
            assert!(counters.flush().await.is_err(), "{backend}: interval {i}");
            let backlog = counters.backlog();
            assert!(
                backlog.batches <= 2 && backlog.counters <= 2 * handles.len(),
                "{backend}: interval {i}: bounded, got {backlog:?}"
            );
        }
        let first_id = flaky.applied_ids()[0].clone();
        // A lost reply on the way back: the retry is a duplicate, not a second count.
        flaky.inject(Fault::LoseReply(ErrorKind::Unavailable));
        assert!(counters.flush().await.is_err(), "{backend}");
        counters.flush().await.unwrap();
        let ids = flaky.applied_ids();
        assert_eq!(ids[intervals], first_id, "{backend}: same id on the retry");
        assert_eq!(
            ids[intervals + 1],
            first_id,
            "{backend}: and after the lost reply"
        );
        let keys: Vec<CounterKey> = handles.iter().map(|h| h.key()).collect();
        assert_eq!(
            sink.get_many(&keys).await.unwrap(),
            vec![intervals as i64; 3],
            "{backend}: every add counted once"
        );
    }
}

/// Issue 13: an hourly (daily) handle counts each add in the hour (day) of that add
/// on the counters' clock, across a boundary, and one keyed add into the same bucket
/// lands in the same stored counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucketed_handles_count_each_add_in_its_own_hour_and_day() {
    for (backend, sink) in sinks().await {
        // 2026-11-22T23:59:59.999Z: one millisecond before a new hour and a new day.
        let before = chatstate_core::Timestamp(1_795_391_999_999);
        let clock = ManualClock::new(before);
        let counters = BatchedCounters::builder(sink.clone())
            .flush_interval(Duration::from_secs(3600))
            .clock(clock.shared())
            .build()
            .unwrap();
        let base = key("by_time");
        let hourly = counters.handle(&base, Bucketing::Hourly).unwrap();
        let daily = counters.handle(&base, Bucketing::Daily).unwrap();
        hourly.add(5);
        daily.add(50);
        clock.advance(Duration::from_millis(1));
        let after = clock.now();
        hourly.add(7);
        daily.add(70);
        counters.add(&base.clone().in_bucket(Bucket::hour_of(after)), 100);
        let (h0, h1) = (Bucket::hour_of(before), Bucket::hour_of(after));
        let (d0, d1) = (Bucket::day_of(before), Bucket::day_of(after));
        assert_ne!(h0, h1);
        assert_ne!(d0, d1);
        assert_eq!(hourly.key(), base.clone().in_bucket(h1));
        let in_bucket = |b: Bucket| base.clone().in_bucket(b);
        assert_eq!(counters.pending(&in_bucket(h0)).await, 5, "{backend}");
        assert_eq!(counters.pending(&in_bucket(h1)).await, 107, "{backend}");
        assert_eq!(counters.pending(&in_bucket(d0)).await, 50, "{backend}");
        assert_eq!(counters.pending(&in_bucket(d1)).await, 70, "{backend}");
        counters.flush().await.unwrap();
        let stored = sink
            .get_many(&[in_bucket(h0), in_bucket(h1), in_bucket(d0), in_bucket(d1)])
            .await
            .unwrap();
        assert_eq!(stored, vec![5, 107, 50, 70], "{backend}");
    }
}

/// A clock whose coarse reading lags its exact one by a fixed 4 ms (one kernel
/// tick at 250 Hz), as the system clock's `CLOCK_REALTIME_COARSE` may.
#[derive(Debug)]
struct LaggingCoarse(ManualClock);

const TICK: Duration = Duration::from_millis(4);

impl chatstate_core::Clock for LaggingCoarse {
    fn now(&self) -> chatstate_core::Timestamp {
        self.0.now()
    }
    fn now_coarse(&self) -> chatstate_core::Timestamp {
        chatstate_core::Timestamp(self.0.now().as_millis() - 4)
    }
    fn coarse_lag(&self) -> Duration {
        TICK
    }
}

/// Issue 13: a bucketed handle reads the coarse clock, so it rolls at most the
/// coarse lag late and never early: adds 1 ms before the hour land in the old
/// hour, adds within the lag after it may still land there, adds after the lag
/// land in the new hour.
#[tokio::test]
async fn a_bucketed_handle_rolls_at_most_the_coarse_lag_late_and_never_early() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    // 2026-11-22T23:59:59.999Z: one millisecond before a new hour.
    let before = chatstate_core::Timestamp(1_795_391_999_999);
    let clock = ManualClock::new(before);
    let counters = BatchedCounters::builder(sink.clone())
        .flush_interval(Duration::from_secs(3600))
        .clock(Arc::new(LaggingCoarse(clock.clone())))
        .build()
        .unwrap();
    let base = key("lagging");
    let hourly = counters.handle(&base, Bucketing::Hourly).unwrap();
    let (h0, h1) = (
        base.clone().in_bucket(Bucket::hour_of(before)),
        base.clone().in_bucket(Bucket::hour_of(before.plus(TICK))),
    );
    assert_ne!(h0, h1);
    hourly.add(1); // before the boundary
    clock.advance(Duration::from_millis(3)); // 2 ms into the new hour, within the lag
    hourly.add(10);
    clock.advance(TICK); // past the boundary by more than the lag
    hourly.add(100);
    assert_eq!(hourly.key(), h1);
    counters.flush().await.unwrap();
    assert_eq!(
        sink.get_many(&[h0, h1]).await.unwrap(),
        vec![11, 100],
        "the add within the lag counted in the old hour, the one after it in the new"
    );
}

/// Issue 13: a handle's pending delta past the i64 range is not saturated either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_add_past_the_i64_range_is_not_saturated() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let counters = by_hand(sink.clone());
    let h = counters.handle(&key("h_big"), Bucketing::None).unwrap();
    sink.add(&h.key(), -10).await.unwrap();
    h.add(i64::MAX);
    h.add(5);
    assert_eq!(
        counters.backlog().unbatched,
        2,
        "the second delta started anew"
    );
    assert_eq!(
        counters
            .get(&h.key(), Read::IncludingPending)
            .await
            .unwrap(),
        i64::MAX - 5
    );
    assert!(counters.flush().await.unwrap().is_complete());
    assert_eq!(sink.get(&h.key()).await.unwrap(), i64::MAX - 5);
}

#[test]
fn many_threads_adding_through_handles_and_keys_lose_nothing() {
    let (rt, sink) = runtime_and_memory_sink();
    let counters = Arc::new(rt.block_on(async {
        BatchedCounters::new(
            sink.clone(),
            Duration::from_millis(5),
            Duration::from_secs(5),
        )
    }));
    let k = key("shared_hot");
    std::thread::scope(|s| {
        for t in 0..8 {
            let (counters, k) = (counters.clone(), k.clone());
            s.spawn(move || {
                let h = counters.handle(&k, Bucketing::None).unwrap();
                for i in 0..20_000 {
                    if (t + i) % 3 == 0 {
                        counters.add(&k, 1);
                    } else {
                        h.add(1);
                    }
                }
            });
        }
    });
    rt.block_on(counters.shutdown()).unwrap();
    assert_eq!(
        rt.block_on(sink.get(&k)).unwrap(),
        8 * 20_000,
        "adds racing the background flushes are all counted once"
    );
}

/// Issue 13: threads adding through one hourly handle while the clock crosses hour
/// boundaries and background flushes drain the slots lose and double nothing:
/// the hours' stored counts add up to every add made.
#[test]
fn threads_adding_through_an_hourly_handle_across_hours_lose_nothing() {
    let (rt, sink) = runtime_and_memory_sink();
    let start = chatstate_core::Timestamp(1_795_391_999_000);
    let clock = ManualClock::new(start);
    let counters = Arc::new(rt.block_on(async {
        BatchedCounters::builder(sink.clone())
            .flush_interval(Duration::from_millis(2))
            .clock(clock.shared())
            .build()
            .unwrap()
    }));
    let base = key("hourly_hot");
    let hourly = counters.handle(&base, Bucketing::Hourly).unwrap();
    // Each thread moves the clock a minute every 500 of its adds: the hour rolls
    // while the others add.
    std::thread::scope(|s| {
        for _ in 0..6 {
            let (hourly, clock) = (hourly.clone(), clock.clone());
            s.spawn(move || {
                for i in 0..30_000 {
                    if i % 500 == 0 {
                        clock.advance(Duration::from_secs(60));
                    }
                    hourly.add(1);
                }
            });
        }
    });
    rt.block_on(counters.shutdown()).unwrap();
    let hour = |t| match Bucket::hour_of(t) {
        Bucket::Hour(h) | Bucket::Day(h) => h,
    };
    let hours: Vec<CounterKey> = (hour(start)..=hour(clock.now()))
        .map(|h| base.clone().in_bucket(Bucket::Hour(h)))
        .collect();
    assert!(
        hours.len() > 2,
        "the clock crossed hours while the threads added"
    );
    let stored: i64 = rt.block_on(sink.get_many(&hours)).unwrap().iter().sum();
    assert_eq!(stored, 6 * 30_000);
}

#[test]
fn a_bucketed_handle_refuses_a_key_that_has_a_bucket() {
    let sink: Arc<dyn CounterSink> = Arc::new(MemoryStore::new(StoreSettings::default()));
    let counters = by_hand(sink);
    let k = key("x").in_bucket(Bucket::Day(20_000));
    let err = counters.handle(&k, Bucketing::Hourly).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(counters.handle(&k, Bucketing::None).unwrap().key(), k);
}
