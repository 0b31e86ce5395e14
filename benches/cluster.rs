//! Criterion benchmarks of the Redis backend on one server and on a 3-master
//! Redis Cluster, in one run, each beside raw redis-rs doing the same Redis work on
//! the same deployment (a `ConnectionManager` on one server, redis-rs's
//! `ClusterConnection` on the cluster). The servers are throwaway `redis-server`s
//! this bench starts on free loopback ports (never 6379). Run:
//! `cargo bench --bench cluster` (also part of `cargo xtask bench`).
//!
//! What each side does:
//! - `append_message`: chatstate's append script (type checks, window trim, TTL of
//!   both keys, last_activity, tenant index) against a raw pipeline of RPUSH,
//!   LTRIM, HSET, PEXPIRE ×2 in the session's slot;
//! - `load_session`: chatstate's load script against a raw HGETALL + LRANGE
//!   pipeline;
//! - `cache_get_256b`, `cache_set_256b`: GET, and chatstate's type-checked SET
//!   script against a raw `SET … PX`;
//! - `cache_get_many_50`: chatstate's MGET + EXISTS, one pipeline per slot sent
//!   concurrently, against a raw MGET (which redis-rs splits by slot itself on the
//!   cluster);
//! - `cache_set_many_50`: chatstate's SET script, one per slot concurrently,
//!   against raw `SET … PX` commands sent concurrently.

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, HostPort, KvCache, NewMessage, RedisTopology, RedisUrl, SessionKey, SessionStore,
    SessionStoreExt,
};
use chatstate_redis::RedisStore;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use redis::AsyncCommands;
use redis::aio::ConnectionLike;

/// The same work for one deployment: `label` is `standalone` or `cluster`.
fn bench_on<C>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    label: &str,
    store: &RedisStore,
    raw: C,
) where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let key = SessionKey::new("acme", "whatsapp", "5511999990000").expect("key");
    let raw_ctx = "raw:sess:{acme:whatsapp:5511999990000}:ctx";
    let raw_msgs = "raw:sess:{acme:whatsapp:5511999990000}:msgs";
    let message = r#"{"role":"user","content":"oi, tudo bem?","at":1795323723456}"#;
    let ck = CacheKey::new("customers", "42").expect("key");
    let raw_key = "raw:kv:customers:42";
    let value = Bytes::from(vec![7u8; 256]);
    let many: Vec<CacheKey> = (0..50)
        .map(|i| CacheKey::new("customers", i.to_string()).expect("key"))
        .collect();
    let raw_many: Vec<String> = (0..50).map(|i| format!("raw:kv:customers:{i}")).collect();
    rt.block_on(async {
        for i in 0..20 {
            store
                .append_message(&key, NewMessage::user(format!("message {i}")))
                .await
                .expect("append");
        }
        store
            .set_many(
                many.iter().map(|k| (k.clone(), value.clone())).collect(),
                None,
            )
            .await
            .expect("seed");
        let mut con = raw.clone();
        let _: () = redis::pipe()
            .hset(raw_ctx, "id", "x")
            .rpush(raw_msgs, vec![message; 20])
            .query_async(&mut con)
            .await
            .expect("seed raw");
        for k in &raw_many {
            let _: () = con
                .pset_ex(k, value.as_ref(), 3_600_000)
                .await
                .expect("seed raw");
        }
    });
    let id = |op: &str, who: &str| BenchmarkId::new(op, format!("{label}/{who}"));

    g.throughput(Throughput::Elements(1));
    g.bench_function(id("append_message", "chatstate"), |b| {
        b.to_async(rt).iter(|| async {
            store
                .append_message(&key, NewMessage::user("oi, tudo bem?"))
                .await
                .expect("append")
        })
    });
    g.bench_function(id("append_message", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            let mut con = raw.clone();
            let _: () = redis::pipe()
                .rpush(raw_msgs, message)
                .ltrim(raw_msgs, -20, -1)
                .hset(raw_ctx, "last_activity", 1)
                .pexpire(raw_ctx, 259_200_000)
                .pexpire(raw_msgs, 259_200_000)
                .ignore()
                .query_async(&mut con)
                .await
                .expect("raw pipeline");
        })
    });
    g.bench_function(id("load_session", "chatstate"), |b| {
        b.to_async(rt)
            .iter(|| async { store.load(&key).await.expect("load") })
    });
    g.bench_function(id("load_session", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            let mut con = raw.clone();
            let r: (std::collections::HashMap<String, Vec<u8>>, Vec<Vec<u8>>) = redis::pipe()
                .hgetall(raw_ctx)
                .lrange(raw_msgs, 0, -1)
                .query_async(&mut con)
                .await
                .expect("raw load");
            r
        })
    });
    g.bench_function(id("cache_get_256b", "chatstate"), |b| {
        b.to_async(rt)
            .iter(|| async { KvCache::get(store, &ck).await.expect("get") })
    });
    g.bench_function(id("cache_get_256b", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            let mut con = raw.clone();
            let v: Option<Vec<u8>> = con.get(raw_key).await.expect("get");
            v
        })
    });
    g.bench_function(id("cache_set_256b", "chatstate"), |b| {
        b.to_async(rt)
            .iter(|| async { store.set(&ck, value.clone(), None).await.expect("set") })
    });
    g.bench_function(id("cache_set_256b", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            let mut con = raw.clone();
            let _: () = con
                .pset_ex(raw_key, value.as_ref(), 3_600_000)
                .await
                .expect("psetex");
        })
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function(id("cache_get_many_50", "chatstate"), |b| {
        b.to_async(rt)
            .iter(|| async { KvCache::get_many(store, &many).await.expect("get_many") })
    });
    g.bench_function(id("cache_get_many_50", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            let mut con = raw.clone();
            let v: Vec<Option<Vec<u8>>> = con.mget(&raw_many).await.expect("mget");
            v
        })
    });
    g.bench_function(id("cache_set_many_50", "chatstate"), |b| {
        b.to_async(rt).iter(|| async {
            store
                .set_many(
                    many.iter().map(|k| (k.clone(), value.clone())).collect(),
                    None,
                )
                .await
                .expect("set_many")
        })
    });
    g.bench_function(id("cache_set_many_50", "raw"), |b| {
        b.to_async(rt).iter(|| async {
            futures_util::future::join_all(raw_many.iter().map(|k| {
                let mut con = raw.clone();
                let value = value.clone();
                async move {
                    let _: () = con
                        .pset_ex(k, value.as_ref(), 3_600_000)
                        .await
                        .expect("psetex");
                }
            }))
            .await
        })
    });
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("topology");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    let server = common::RedisServer::start(&[]);
    let url = server.url();
    let store = rt.block_on(async {
        RedisStore::builder(RedisUrl::parse(&url).expect("url"))
            .prefix("bench")
            .connect()
            .await
            .expect("store")
    });
    let raw = rt
        .block_on(redis::aio::ConnectionManager::new(
            redis::Client::open(url.as_str()).expect("client"),
        ))
        .expect("raw connection");
    bench_on(&mut g, &rt, "standalone", &store, raw);

    let cluster = common::cluster::Cluster::start(3, 0);
    let seeds = cluster.seeds();
    let store = rt.block_on(async {
        RedisStore::builder(RedisUrl::parse("redis://127.0.0.1").expect("url"))
            .topology(RedisTopology::Cluster {
                nodes: HostPort::parse_list(&seeds).expect("seeds"),
            })
            .prefix("bench")
            .fail_fast(true)
            .connect()
            .await
            .expect("cluster store")
    });
    let raw = rt
        .block_on(
            redis::cluster::ClusterClient::new(
                seeds
                    .split(',')
                    .map(|s| format!("redis://{s}"))
                    .collect::<Vec<_>>(),
            )
            .expect("cluster client")
            .get_async_connection(),
        )
        .expect("raw cluster connection");
    bench_on(&mut g, &rt, "cluster", &store, raw);
    g.finish();
    drop(cluster);
}

criterion_group!(topology_benches, benches);
criterion_main!(topology_benches);
