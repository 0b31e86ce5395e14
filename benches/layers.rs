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
use chatstate_layers::{BatchedCounters, Bucketing, TieredCache, TieredConfig};
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
    // Raw moka configured as the tiered cache's local tier is: the same capacity, a
    // per-entry expiry, invalidation closures enabled.
    let moka_cache: moka::future::Cache<CacheKey, Bytes> = moka::future::Cache::builder()
        .max_capacity(TieredConfig::default().local_capacity)
        .expire_after(FixedTtl(Duration::from_secs(60)))
        .support_invalidation_closures()
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
    g.bench_function(BenchmarkId::new("local_hit", "tiered_get_local"), |b| {
        b.to_async(&rt)
            .iter(|| async { tiered.get_local(&key).await.expect("a local hit") })
    });
    // The same hit with `max_stale` 0: no copy is kept past its deadline, so a hit
    // on the system clock reads no clock (moka's expiry alone decides).
    let tiered_no_stale = rt.block_on(async {
        TieredCache::new(
            Arc::new(store.clone()),
            Arc::new(LocalBus::new()),
            TieredConfig {
                max_stale: Duration::ZERO,
                ..TieredConfig::default()
            },
        )
    });
    rt.block_on(async {
        tiered_no_stale
            .set(&key, value.clone(), None)
            .await
            .expect("set")
    });
    g.bench_function(
        BenchmarkId::new("local_hit", "tiered_get_local_max_stale_0"),
        |b| {
            b.to_async(&rt)
                .iter(|| async { tiered_no_stale.get_local(&key).await.expect("a local hit") })
        },
    );
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
    let handle = batched.handle(&counter, Bucketing::None).expect("handle");
    let hourly = batched
        .handle(
            &CounterKey::new("messages_hourly").expect("name"),
            Bucketing::Hourly,
        )
        .expect("handle");
    g.bench_function(BenchmarkId::new("counter_add_1_thread", "handle"), |b| {
        b.iter(|| handle.add(1))
    });
    g.bench_function(
        BenchmarkId::new("counter_add_1_thread", "handle_hourly"),
        |b| b.iter(|| hourly.add(1)),
    );
    g.bench_function(
        BenchmarkId::new("counter_add_1_thread", "raw_atomic"),
        |b| {
            let cell = std::sync::atomic::AtomicI64::new(0);
            b.iter(|| cell.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        },
    );
    // One counter, 2 threads adding at once (one per core): criterion reports the
    // wall time over the adds of one thread, i.e. what one add costs each thread
    // while the other adds too.
    let two_threads = |add: &(dyn Fn() + Sync), iters: u64| {
        let started = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..iters {
                        add();
                    }
                });
            }
        });
        started.elapsed()
    };
    g.bench_function(
        BenchmarkId::new("counter_add_2_threads_one_counter", "handle"),
        |b| b.iter_custom(|iters| two_threads(&|| handle.add(1), iters)),
    );
    g.bench_function(
        BenchmarkId::new("counter_add_2_threads_one_counter", "handle_hourly"),
        |b| b.iter_custom(|iters| two_threads(&|| hourly.add(1), iters)),
    );
    let shared_atomic = std::sync::atomic::AtomicI64::new(0);
    g.bench_function(
        BenchmarkId::new("counter_add_2_threads_one_counter", "raw_atomic"),
        |b| {
            b.iter_custom(|iters| {
                two_threads(
                    &|| {
                        shared_atomic.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    },
                    iters,
                )
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("counter_add_2_threads_one_counter", "batched"),
        |b| b.iter_custom(|iters| two_threads(&|| batched.add(&counter, 1), iters)),
    );
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

/// The same TTL for every entry, through moka's per-entry expiry (as the tiered
/// cache's local tier sets it).
struct FixedTtl(Duration);

impl moka::Expiry<CacheKey, Bytes> for FixedTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        _value: &Bytes,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(self.0)
    }
}

criterion_group!(layers, benches);
criterion_main!(layers);
