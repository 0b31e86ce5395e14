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
    BatchOutcome, Bucket, CounterBatch, CounterKey, CounterSink, Error, ErrorKind, Labels,
    RedisUrl, Result, StoreSettings,
};
use chatstate_layers::{BatchedCounters, Read};
use chatstate_memory::MemoryStore;
use chatstate_redis::RedisStore;

/// What the next `apply` does.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Fails without applying (the server never saw it).
    FailBefore,
    /// Applies, then reports a failure (the reply was lost).
    LoseReply,
    /// Applies after sleeping this long (past the flush timeout).
    Hang(Duration),
}

/// A sink that injects the queued faults into `apply`, and counts calls.
struct Flaky {
    inner: Arc<dyn CounterSink>,
    faults: Mutex<VecDeque<Fault>>,
    applies: Mutex<Vec<String>>,
}

impl Flaky {
    fn new(inner: Arc<dyn CounterSink>) -> Arc<Self> {
        Arc::new(Flaky {
            inner,
            faults: Mutex::new(VecDeque::new()),
            applies: Mutex::new(Vec::new()),
        })
    }

    fn inject(&self, f: Fault) {
        self.faults.lock().expect("lock").push_back(f);
    }

    fn applied_ids(&self) -> Vec<String> {
        self.applies.lock().expect("lock").clone()
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
            .push(batch.id().to_string());
        let fault = self.faults.lock().expect("lock").pop_front();
        match fault {
            Some(Fault::FailBefore) => Err(Error::new(ErrorKind::Unavailable, "injected: down")),
            Some(Fault::LoseReply) => {
                self.inner.apply(batch).await?;
                Err(Error::new(ErrorKind::Unavailable, "injected: reply lost"))
            }
            Some(Fault::Hang(d)) => {
                tokio::time::sleep(d).await;
                self.inner.apply(batch).await
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

fn key(name: &str) -> CounterKey {
    CounterKey::new(name).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_are_local_until_a_flush_writes_them_in_one_batch() {
    for (backend, sink) in sinks().await {
        let flaky = Flaky::new(sink);
        let counters = BatchedCounters::new(
            flaky.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
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
        let counters = BatchedCounters::new(
            flaky.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
        let k = key("messages");
        counters.add(&k, 5);
        flaky.inject(Fault::FailBefore);
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
        let counters = BatchedCounters::new(
            flaky.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
        let k = key("messages");
        counters.add(&k, 10);
        flaky.inject(Fault::LoseReply);
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
        counters.add(&k, 1);
        let mut stored = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stored = sink.get(&k).await.unwrap();
            if stored == 1 {
                break;
            }
        }
        assert_eq!(stored, 1, "{backend}: the interval flush wrote it");
        counters.add(&k, 41);
        counters.shutdown().await.unwrap();
        assert_eq!(
            sink.get(&k).await.unwrap(),
            42,
            "{backend}: shutdown flushed"
        );
    }
}

#[test]
fn many_threads_adding_lose_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sink: Arc<dyn CounterSink> =
        rt.block_on(async { Arc::new(MemoryStore::new(StoreSettings::default())) });
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
        let counters = BatchedCounters::new(
            sink.clone(),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        );
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
    let counters = Arc::new(BatchedCounters::new(
        flaky.clone(),
        Duration::from_secs(3600),
        Duration::from_secs(5),
    ));
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
