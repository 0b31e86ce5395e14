//! Criterion benchmarks of the layers, beside what they replace: the tiered cache's
//! local hit against raw moka, its miss against a raw redis-rs GET; a batched counter
//! add (one thread and four) against a raw redis-rs HINCRBY per add; a flush of 1000
//! counters against raw redis-rs pipelining 1000 HINCRBYs. A throwaway
//! `redis-server` on a free loopback port. Run: `cargo bench --bench layers`.

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate_core::{CacheKey, CounterKey, KvCache, Labels, LocalBus, RedisUrl};
use chatstate_layers::{BatchedCounters, TieredCache, TieredConfig};
use chatstate_redis::RedisStore;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

fn benches(c: &mut Criterion) {
    let server = common::RedisServer::start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.url();
    let store = rt.block_on(async {
        RedisStore::builder(RedisUrl::parse(&url).expect("url"))
            .prefix("bench")
            .connect()
            .await
            .expect("store")
    });
    let raw: ConnectionManager = rt
        .block_on(ConnectionManager::new(
            redis::Client::open(url.as_str()).expect("client"),
        ))
        .expect("raw");
    let tiered = rt.block_on(async {
        TieredCache::new(
            Arc::new(store.clone()),
            Arc::new(LocalBus::new()),
            TieredConfig::default(),
        )
    });
    let moka_cache: moka::future::Cache<CacheKey, Bytes> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(Duration::from_secs(60))
        .build();
    let key = CacheKey::new("customers", "42").expect("key");
    let absent = CacheKey::new("customers", "absent").expect("key");
    let value = Bytes::from(vec![7u8; 256]);
    rt.block_on(async {
        tiered.set(&key, value.clone(), None).await.expect("set");
        moka_cache.insert(key.clone(), value.clone()).await;
    });

    let mut g = c.benchmark_group("layers");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function(BenchmarkId::new("local_hit", "tiered"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::get(&tiered, &key).await.expect("get") })
    });
    g.bench_function(BenchmarkId::new("local_hit", "raw_moka"), |b| {
        b.to_async(&rt)
            .iter(|| async { moka_cache.get(&key).await })
    });
    g.bench_function(BenchmarkId::new("miss_to_redis", "tiered"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::get(&tiered, &absent).await.expect("get") })
    });
    g.bench_function(BenchmarkId::new("miss_to_redis", "raw_redis_get"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let v: Option<Vec<u8>> = con.get("bench:kv:customers:absent").await.expect("get");
            v
        })
    });

    // Counters.
    let batched = Arc::new(rt.block_on(async {
        BatchedCounters::new(
            Arc::new(store.clone()),
            Duration::from_secs(3600),
            Duration::from_secs(5),
        )
    }));
    let counter = CounterKey::new("messages").expect("name");
    g.bench_function(BenchmarkId::new("counter_add_1_thread", "batched"), |b| {
        b.iter(|| batched.add(&counter, 1))
    });
    let keys: Vec<CounterKey> = (0..8)
        .map(|i| CounterKey::new(format!("messages{i}")).expect("name"))
        .collect();
    g.bench_function(BenchmarkId::new("counter_add_4_threads", "batched"), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(4);
            let started = Instant::now();
            std::thread::scope(|s| {
                for t in 0..4 {
                    let (batched, keys) = (&batched, &keys);
                    s.spawn(move || {
                        for i in 0..per_thread {
                            batched.add(&keys[(t + i as usize) % keys.len()], 1);
                        }
                    });
                }
            });
            // Wall time for `iters` adds made by 4 threads at once: criterion reports
            // it per add, i.e. the aggregate cost (throughput) under contention.
            started.elapsed()
        })
    });
    g.bench_function(
        BenchmarkId::new("counter_add_1_thread", "raw_redis_hincrby"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut con = raw.clone();
                let _: i64 = con.hincr("raw:cnt:messages", "", 1).await.expect("hincrby");
            })
        },
    );
    let thousand: Vec<CounterKey> = (0..1000)
        .map(|i| {
            CounterKey::new(format!("events{}", i % 10))
                .expect("name")
                .with_labels(Labels::from_pairs([("type", format!("t{i}"))]).expect("labels"))
        })
        .collect();
    g.bench_function(BenchmarkId::new("flush_1000_counters", "batched"), |b| {
        b.to_async(&rt).iter(|| async {
            for k in &thousand {
                batched.add(k, 1);
            }
            batched.flush().await.expect("flush")
        })
    });
    g.bench_function(
        BenchmarkId::new("flush_1000_counters", "raw_redis_pipeline"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut pipe = redis::pipe();
                for i in 0..1000 {
                    pipe.hincr(format!("raw:cnt:events{}", i % 10), format!("type=t{i}"), 1)
                        .ignore();
                }
                let mut con = raw.clone();
                let _: () = pipe.query_async(&mut con).await.expect("pipeline");
            })
        },
    );
    g.finish();
    eprintln!(
        "tier stats: {:?}; flush stats: {:?}",
        tiered.stats(),
        batched.stats()
    );
}

criterion_group!(layers, benches);
criterion_main!(layers);
