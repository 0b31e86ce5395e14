//! Criterion benchmarks of the same operations on every embedded backend: memory,
//! file with fsync (the default) and file without fsync (to show what the fsync
//! costs). Run: `cargo xtask bench` (or `cargo bench --bench stores`).
//!
//! Counter batch ids are kept for 1 s here (24 h by default) so thousands of bench
//! flushes do not grow the file store's counters file beyond what a day of 60 s
//! flushes would.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterBatch, CounterKey, CounterSink, KvCache, Labels, NewMessage, SessionKey,
    SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_file::{Durability, FileStore};
use chatstate_memory::MemoryStore;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// One backend under test, as the traits an app holds.
struct Backend {
    name: &'static str,
    sessions: Arc<dyn SessionStore>,
    counters: Arc<dyn CounterSink>,
    cache: Arc<dyn KvCache>,
    _dir: Option<tempfile::TempDir>,
}

fn backends(rt: &tokio::runtime::Runtime) -> Vec<Backend> {
    let settings = StoreSettings {
        batch_retention: Duration::from_secs(1),
        ..StoreSettings::default()
    };
    let mut out = Vec::new();
    let memory = Arc::new(rt.block_on(async { MemoryStore::new(settings.clone()) }));
    out.push(Backend {
        name: "memory",
        sessions: memory.clone(),
        counters: memory.clone(),
        cache: memory,
        _dir: None,
    });
    for (name, durability) in [
        ("file_fsync", Durability::Fsync),
        ("file_no_fsync", Durability::None),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = rt.block_on(async {
            Arc::new(
                FileStore::builder(dir.path())
                    .settings(settings.clone())
                    .durability(durability)
                    .open()
                    .expect("file store"),
            )
        });
        out.push(Backend {
            name,
            sessions: file.clone(),
            counters: file.clone(),
            cache: file,
            _dir: Some(dir),
        });
    }
    out
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let key = SessionKey::new("acme", "whatsapp", "5511999990000").expect("key");
    let cache_key = CacheKey::new("customers", "42").expect("key");
    let value = Bytes::from(vec![7u8; 256]);
    let counters: Vec<CounterKey> = (0..1000)
        .map(|i| {
            CounterKey::new("events")
                .expect("name")
                .with_labels(Labels::from_pairs([("type", format!("t{i}"))]).expect("labels"))
        })
        .collect();
    let backends = backends(&rt);
    // A full window (20 messages) and a cached value before the read benches.
    for b in &backends {
        rt.block_on(async {
            for i in 0..20 {
                b.sessions
                    .append_message(
                        &key,
                        NewMessage::user(format!("message {i}: oi, tudo bem?")),
                    )
                    .await
                    .expect("append");
            }
            b.cache
                .set(&cache_key, value.clone(), None)
                .await
                .expect("set");
        });
    }

    let mut g = c.benchmark_group("stores");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    // The floor of an append without fsync: as many bytes as the session's record
    // written to a new temp file beside it and renamed over a file, on tokio's
    // blocking pool as the store works: what any atomic whole-file write costs.
    // The store adds its stripe lock, reading the current record, the window and
    // checks, and encoding.
    let no_fsync_dir = backends
        .iter()
        .find(|b| b.name == "file_no_fsync")
        .and_then(|b| b._dir.as_ref())
        .expect("the no-fsync store's folder")
        .path()
        .to_path_buf();
    let (record_dir, record_len) = largest_file(&no_fsync_dir);
    let record_bytes = Arc::new(vec![b'x'; record_len]);
    let floor_target = Arc::new(record_dir.join("floor-record"));
    g.bench_function(
        BenchmarkId::new("append_message", "bare_floor_no_fsync"),
        |bench| {
            bench.to_async(&rt).iter(|| {
                let (bytes, target) = (record_bytes.clone(), floor_target.clone());
                async move {
                    tokio::task::spawn_blocking(move || {
                        use std::io::Write;
                        let tmp = target.with_file_name(".tmp-floor");
                        let mut f = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&tmp)
                            .expect("temp file");
                        f.write_all(&bytes).expect("write");
                        drop(f);
                        std::fs::rename(&tmp, &*target).expect("rename");
                    })
                    .await
                    .expect("blocking task")
                }
            })
        },
    );
    for b in &backends {
        g.bench_function(BenchmarkId::new("append_message", b.name), |bench| {
            bench.to_async(&rt).iter(|| async {
                b.sessions
                    .append_message(&key, NewMessage::user("oi, tudo bem?"))
                    .await
                    .expect("append")
            })
        });
        g.bench_function(
            BenchmarkId::new("load_session_20_messages", b.name),
            |bench| {
                bench
                    .to_async(&rt)
                    .iter(|| async { black_box(b.sessions.load(&key).await.expect("load")) })
            },
        );
        g.bench_function(BenchmarkId::new("cache_set_256b", b.name), |bench| {
            bench.to_async(&rt).iter(|| async {
                b.cache
                    .set(&cache_key, value.clone(), None)
                    .await
                    .expect("set")
            })
        });
        g.bench_function(BenchmarkId::new("cache_get_256b", b.name), |bench| {
            bench
                .to_async(&rt)
                .iter(|| async { black_box(b.cache.get(&cache_key).await.expect("get")) })
        });
        g.bench_function(BenchmarkId::new("counter_add", b.name), |bench| {
            bench
                .to_async(&rt)
                .iter(|| async { b.counters.add(&counters[0], 1).await.expect("add") })
        });
        g.bench_function(BenchmarkId::new("flush_1000_counters", b.name), |bench| {
            bench.to_async(&rt).iter(|| async {
                let mut batch = CounterBatch::new();
                for k in &counters {
                    batch.add(k, 1);
                }
                b.counters.apply(&batch).await.expect("apply")
            })
        });
    }
    g.finish();
}

/// The folder and size of the largest file under `dir` (after the setup: the
/// session's record, with its 20 messages).
fn largest_file(dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    let mut best = (dir.to_path_buf(), 0);
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let entry = entry.expect("entry");
        let meta = entry.metadata().expect("metadata");
        let found = if meta.is_dir() {
            largest_file(&entry.path())
        } else {
            (dir.to_path_buf(), meta.len() as usize)
        };
        if found.1 > best.1 {
            best = found;
        }
    }
    best
}

criterion_group!(stores, benches);
criterion_main!(stores);
