//! Criterion benchmarks of the memory backend: the baseline the file and Redis
//! backends are compared with. Run: `cargo xtask bench` (or `cargo bench --bench memory`).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterBatch, CounterKey, CounterSink, KvCache, Labels, NewMessage, SessionKey,
    SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_memory::MemoryStore;
use criterion::{Criterion, criterion_group, criterion_main};

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(async { MemoryStore::new(StoreSettings::default()) });
    let key = SessionKey::new("acme", "whatsapp", "5511999990000").expect("key");
    let mut g = c.benchmark_group("memory");
    g.measurement_time(Duration::from_secs(3));

    g.bench_function("append_message", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .append_message(&key, NewMessage::user("oi, tudo bem?"))
                .await
                .expect("append")
        })
    });
    g.bench_function("load_session_20_messages", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.load(&key).await.expect("load")) })
    });

    let cache_key = CacheKey::new("customers", "42").expect("key");
    let value = Bytes::from(vec![7u8; 256]);
    g.bench_function("cache_set_256b", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .set(&cache_key, value.clone(), None)
                .await
                .expect("set")
        })
    });
    g.bench_function("cache_get_256b", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(KvCache::get(&store, &cache_key).await.expect("get")) })
    });

    let counters: Vec<CounterKey> = (0..1000)
        .map(|i| {
            CounterKey::new("events")
                .expect("name")
                .with_labels(Labels::from_pairs([("type", format!("t{i}"))]).expect("labels"))
        })
        .collect();
    g.bench_function("counter_add", |b| {
        b.to_async(&rt)
            .iter(|| async { store.add(&counters[0], 1).await.expect("add") })
    });
    g.bench_function("flush_1000_counters", |b| {
        b.to_async(&rt).iter(|| async {
            let mut batch = CounterBatch::new();
            for k in &counters {
                batch.add(k, 1);
            }
            store.apply(&batch).await.expect("apply")
        })
    });
    g.finish();
}

criterion_group!(memory, benches);
criterion_main!(memory);
