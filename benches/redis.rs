//! Criterion benchmarks of the Redis backend against raw redis-rs doing the same
//! work, on a throwaway `redis-server` this bench starts on a free loopback port.
//! Run: `cargo bench --bench redis` (also part of `cargo xtask bench`).
//!
//! For each operation three contenders:
//! - `chatstate`: the store, through its trait;
//! - `raw_pipelined`: redis-rs sending the same Redis work in one round trip (the
//!   floor: what chatstate's own overhead is measured against);
//! - `raw_naive`: redis-rs sending one command per call, as hand-rolled code often
//!   does (what chatstate's round-trip discipline saves).
//!
//! And the connection question: 64 tasks doing GETs through one shared multiplexed
//! connection, or through a deadpool checkout per call.

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterBatch, CounterKey, CounterSink, KvCache, Labels, NewMessage, RedisUrl,
    SessionKey, SessionStore, SessionStoreExt,
};
use chatstate_redis::RedisStore;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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
    let client = redis::Client::open(url.as_str()).expect("client");
    let raw: ConnectionManager = rt
        .block_on(ConnectionManager::new(client.clone()))
        .expect("raw connection");

    let key = SessionKey::new("acme", "whatsapp", "5511999990000").expect("key");
    let ctx = format!("{}:ctx", store.layout().session_base(&key));
    let msgs = format!("{}:msgs", store.layout().session_base(&key));
    let raw_ctx = "raw:sess:{acme:whatsapp:5511999990000}:ctx";
    let raw_msgs = "raw:sess:{acme:whatsapp:5511999990000}:msgs";
    let message = r#"{"role":"user","content":"oi, tudo bem?","at":1795323723456}"#;
    rt.block_on(async {
        for i in 0..20 {
            store
                .append_message(&key, NewMessage::user(format!("message {i}")))
                .await
                .expect("append");
        }
        let mut con = raw.clone();
        let _: () = redis::pipe()
            .hset(raw_ctx, "id", "x")
            .rpush(raw_msgs, vec![message; 20])
            .query_async(&mut con)
            .await
            .expect("seed raw");
    });
    let _ = (&ctx, &msgs);

    let mut g = c.benchmark_group("redis");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    // Append one message: push, trim to 20, TTL of both keys, last_activity.
    g.bench_function(BenchmarkId::new("append_message", "chatstate"), |b| {
        b.to_async(&rt).iter(|| async {
            store
                .append_message(&key, NewMessage::user("oi, tudo bem?"))
                .await
                .expect("append")
        })
    });
    g.bench_function(BenchmarkId::new("append_message", "raw_pipelined"), |b| {
        b.to_async(&rt).iter(|| async {
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
    g.bench_function(BenchmarkId::new("append_message", "raw_naive"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let _: () = con.rpush(raw_msgs, message).await.expect("rpush");
            let _: () = con.ltrim(raw_msgs, -20, -1).await.expect("ltrim");
            let _: () = con.hset(raw_ctx, "last_activity", 1).await.expect("hset");
            let _: () = con.pexpire(raw_ctx, 259_200_000).await.expect("pexpire");
            let _: () = con.pexpire(raw_msgs, 259_200_000).await.expect("pexpire");
        })
    });

    // Load the record and its 20 messages.
    g.bench_function(BenchmarkId::new("load_session", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { store.load(&key).await.expect("load") })
    });
    g.bench_function(BenchmarkId::new("load_session", "raw_pipelined"), |b| {
        b.to_async(&rt).iter(|| async {
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

    // The cache: one value, and 50 at once.
    let ck = CacheKey::new("customers", "42").expect("key");
    let raw_key = "raw:kv:customers:42";
    let value = Bytes::from(vec![7u8; 256]);
    g.bench_function(BenchmarkId::new("cache_set_256b", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { store.set(&ck, value.clone(), None).await.expect("set") })
    });
    g.bench_function(BenchmarkId::new("cache_set_256b", "raw_pipelined"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let _: () = con
                .pset_ex(raw_key, value.as_ref(), 3_600_000)
                .await
                .expect("psetex");
        })
    });
    g.bench_function(BenchmarkId::new("cache_get_256b", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::get(&store, &ck).await.expect("get") })
    });
    g.bench_function(BenchmarkId::new("cache_get_256b", "raw_pipelined"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let v: Option<Vec<u8>> = con.get(raw_key).await.expect("get");
            v
        })
    });
    // A delete (of an absent key: the same work every iteration).
    let gone = CacheKey::new("customers", "gone").expect("key");
    g.bench_function(BenchmarkId::new("cache_delete", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::delete(&store, &gone).await.expect("delete") })
    });
    g.bench_function(BenchmarkId::new("cache_delete", "raw_pipelined"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let n: u64 = con.del("raw:kv:customers:gone").await.expect("del");
            n
        })
    });
    // Aliases: a contact written with its phone, and found by it. The raw side
    // is what an app without aliases writes: the entry and a phone index entry
    // (two SET PX, one round trip each), and reads back: the index, then the
    // entry (two GETs) — without the atomic write or the check that the index
    // still belongs to the entry.
    let contact = CacheKey::new("contacts", "42").expect("key");
    let phone = CacheKey::new("phone", "+5511999990000").expect("alias");
    let raw_contact = "raw:kv:contacts:42";
    let raw_phone = "raw:kv:phone:+5511999990000";
    g.bench_function(
        BenchmarkId::new("cache_set_aliased_256b", "chatstate"),
        |b| {
            b.to_async(&rt).iter(|| async {
                store
                    .set_with_aliases(&contact, value.clone(), None, std::slice::from_ref(&phone))
                    .await
                    .expect("set_with_aliases")
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("cache_set_aliased_256b", "raw_naive"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut con = raw.clone();
                let _: () = con
                    .pset_ex(raw_contact, value.as_ref(), 3_600_000)
                    .await
                    .expect("psetex");
                let _: () = con
                    .pset_ex(raw_phone, raw_contact, 3_600_000)
                    .await
                    .expect("psetex");
            })
        },
    );
    g.bench_function(BenchmarkId::new("cache_get_by_alias", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { store.get_by_alias(&phone).await.expect("get_by_alias") })
    });
    g.bench_function(BenchmarkId::new("cache_get_by_alias", "raw_naive"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let k: Option<String> = con.get(raw_phone).await.expect("get");
            let v: Option<Vec<u8>> = con.get(k.expect("indexed")).await.expect("get");
            v
        })
    });
    let many: Vec<CacheKey> = (0..50)
        .map(|i| CacheKey::new("customers", i.to_string()).expect("key"))
        .collect();
    let raw_many: Vec<String> = (0..50).map(|i| format!("raw:kv:customers:{i}")).collect();
    rt.block_on(async {
        store
            .set_many(
                many.iter().map(|k| (k.clone(), value.clone())).collect(),
                None,
            )
            .await
            .expect("seed");
        let mut con = raw.clone();
        for k in &raw_many {
            let _: () = con
                .pset_ex(k, value.as_ref(), 3_600_000)
                .await
                .expect("seed raw");
        }
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function(BenchmarkId::new("cache_get_many_50", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::get_many(&store, &many).await.expect("get_many") })
    });
    g.bench_function(
        BenchmarkId::new("cache_get_many_50", "raw_pipelined"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut con = raw.clone();
                let v: Vec<Option<Vec<u8>>> = con.mget(&raw_many).await.expect("mget");
                v
            })
        },
    );
    g.bench_function(BenchmarkId::new("cache_get_many_50", "raw_naive"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            for k in &raw_many {
                let _: Option<Vec<u8>> = con.get(k).await.expect("get");
            }
        })
    });

    // The store's own work per call: 100 keys read and written, and 64 tasks
    // appending at once. The raw side sends, through redis-rs, exactly the commands
    // chatstate sent for the same call (captured once with MONITOR: the same MGET +
    // EXISTS, the same EVALSHA with the same keys and arguments), building them from
    // their arguments on every call as a hand-written client would, so the
    // difference is what chatstate itself adds (key building, checks, accounting,
    // the breaker, decoding).
    let hundred: Vec<CacheKey> = (0..100)
        .map(|i| CacheKey::new("profiles", format!("user-{i}")).expect("key"))
        .collect();
    let hundred_entries: Vec<(CacheKey, Bytes)> =
        hundred.iter().map(|k| (k.clone(), value.clone())).collect();
    let (get_many_cmds, set_many_cmds) = rt.block_on(async {
        store
            .set_many(hundred_entries.clone(), None)
            .await
            .expect("seed 100");
        let set = capture(&client, &raw, async {
            store
                .set_many(hundred_entries.clone(), None)
                .await
                .expect("set_many");
        })
        .await;
        let get = capture(&client, &raw, async {
            KvCache::get_many(&store, &hundred).await.expect("get_many");
        })
        .await;
        (get, set)
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function(BenchmarkId::new("get_many_100", "chatstate"), |b| {
        b.to_async(&rt)
            .iter(|| async { KvCache::get_many(&store, &hundred).await.expect("get_many") })
    });
    g.bench_function(BenchmarkId::new("get_many_100", "raw_same_commands"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let r: (Vec<Option<Vec<u8>>>, u64) = replayable(&get_many_cmds)
                .query_async(&mut con)
                .await
                .expect("raw get_many");
            r
        })
    });
    // The caller's entries (100 keys and values, moved into `set_many`) are built
    // outside the timing, as the raw side's captured arguments are: each side is
    // timed from its input to the answer.
    g.bench_function(BenchmarkId::new("set_many_100", "chatstate"), |b| {
        b.to_async(&rt).iter_batched(
            || hundred_entries.clone(),
            |entries| async { store.set_many(entries, None).await.expect("set_many") },
            BatchSize::SmallInput,
        )
    });
    g.bench_function(BenchmarkId::new("set_many_100", "raw_same_commands"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            let r: (i64,) = replayable(&set_many_cmds)
                .query_async(&mut con)
                .await
                .expect("raw set_many");
            r
        })
    });

    // 64 tasks, each appending 20 messages to its own session.
    let sessions: Vec<SessionKey> = (0..64)
        .map(|i| SessionKey::new("acme", "whatsapp", format!("55119{i:08}")).expect("key"))
        .collect();
    let appends: Vec<Vec<Vec<u8>>> = rt.block_on(async {
        for k in &sessions {
            store
                .append_message(k, NewMessage::user("oi"))
                .await
                .expect("seed");
        }
        let sent = capture(&client, &raw, async {
            for k in &sessions {
                store
                    .append_message(k, NewMessage::user("oi, tudo bem?"))
                    .await
                    .expect("append");
            }
        })
        .await;
        assert_eq!(sent.len(), 64, "one command per append");
        sent
    });
    let sessions = std::sync::Arc::new(sessions);
    let appends = std::sync::Arc::new(appends);
    g.throughput(Throughput::Elements(64 * 20));
    g.sample_size(20);
    g.bench_function(BenchmarkId::new("append_64_tasks", "chatstate"), |b| {
        b.to_async(&rt).iter(|| {
            let (store, sessions) = (store.clone(), sessions.clone());
            in_64_tasks(move |i| {
                let (store, sessions) = (store.clone(), sessions.clone());
                async move {
                    store
                        .append_message(&sessions[i], NewMessage::user("oi, tudo bem?"))
                        .await
                        .expect("append");
                }
            })
        })
    });
    g.bench_function(
        BenchmarkId::new("append_64_tasks", "raw_same_commands"),
        |b| {
            b.to_async(&rt).iter(|| {
                let (raw, appends) = (raw.clone(), appends.clone());
                in_64_tasks(move |i| {
                    let (mut con, appends) = (raw.clone(), appends.clone());
                    async move {
                        let _: redis::Value = command(&appends[i])
                            .query_async(&mut con)
                            .await
                            .expect("append");
                    }
                })
            })
        },
    );
    g.sample_size(100);

    // A flush of 1000 counters.
    let counters: Vec<CounterKey> = (0..1000)
        .map(|i| {
            CounterKey::new(format!("events{}", i % 10))
                .expect("name")
                .with_labels(Labels::from_pairs([("type", format!("t{i}"))]).expect("labels"))
        })
        .collect();
    g.throughput(Throughput::Elements(1000));
    g.bench_function(BenchmarkId::new("flush_1000_counters", "chatstate"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut batch = CounterBatch::new();
            for k in &counters {
                batch.add(k, 1);
            }
            store.apply(&batch).await.expect("apply")
        })
    });
    g.bench_function(
        BenchmarkId::new("flush_1000_counters", "raw_pipelined"),
        |b| {
            b.to_async(&rt).iter(|| async {
                let mut pipe = redis::pipe();
                for i in 0..1000 {
                    pipe.hincr(format!("raw:cnt:events{}", i % 10), format!("type=t{i}"), 1)
                        .ignore();
                }
                let mut con = raw.clone();
                let _: () = pipe.query_async(&mut con).await.expect("raw flush");
            })
        },
    );
    g.bench_function(BenchmarkId::new("flush_1000_counters", "raw_naive"), |b| {
        b.to_async(&rt).iter(|| async {
            let mut con = raw.clone();
            for i in 0..1000 {
                let _: () = con
                    .hincr(format!("raw:cnt:events{}", i % 10), format!("type=t{i}"), 1)
                    .await
                    .expect("hincrby");
            }
        })
    });

    // Connections: 64 tasks × 100 GETs, shared multiplexed vs a pool checkout per call.
    let pool = store.pool().expect("one server: a pool").clone();
    g.throughput(Throughput::Elements(6400));
    g.sample_size(20);
    g.bench_function(
        BenchmarkId::new("get_64_tasks", "multiplexed_shared"),
        |b| {
            b.to_async(&rt).iter(|| {
                let raw = raw.clone();
                async move {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let raw = raw.clone();
                            tokio::spawn(async move {
                                for _ in 0..100 {
                                    let mut con = raw.clone();
                                    let _: Option<Vec<u8>> = con.get(raw_key).await.expect("get");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
            })
        },
    );
    g.bench_function(
        BenchmarkId::new("get_64_tasks", "deadpool_checkout_per_call"),
        |b| {
            b.to_async(&rt).iter(|| {
                let pool = pool.clone();
                async move {
                    let tasks: Vec<_> = (0..64)
                        .map(|_| {
                            let pool = pool.clone();
                            tokio::spawn(async move {
                                for _ in 0..100 {
                                    let mut con = pool.get().await.expect("checkout");
                                    let _: Option<Vec<u8>> = con.get(raw_key).await.expect("get");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
            })
        },
    );
    g.finish();
    let trips = store.round_trips();
    eprintln!("chatstate round trips during the bench: {trips:?}");
}

/// 64 tasks at once, task `i` running `call(i)` 20 times in a row.
async fn in_64_tasks<F, Fut>(call: F)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let call = call.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    call(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
}

/// The commands clients other than `raw` sent while `f` ran, in order, as MONITOR
/// saw them (the commands scripts run inside are left out), each as its arguments.
async fn capture(
    client: &redis::Client,
    raw: &ConnectionManager,
    f: impl std::future::Future<Output = ()>,
) -> Vec<Vec<Vec<u8>>> {
    use futures_util::StreamExt;
    let monitor = client.get_async_monitor().await.expect("monitor");
    let mut lines = Box::pin(monitor.into_on_message::<String>());
    f.await;
    // A marker the raw connection sends: everything before it is the capture.
    let marker = "chatstate-bench-capture-end";
    let mut con = raw.clone();
    let _: String = redis::cmd("ECHO")
        .arg(marker)
        .query_async(&mut con)
        .await
        .expect("echo");
    let mut out = Vec::new();
    while let Some(line) = lines.next().await {
        if line.contains(marker) {
            return out;
        }
        // `<time> [<db> <client>] "ARG" "ARG" ...`; `<client>` is `lua` inside a script.
        let Some((client, args)) = line.split_once("] ") else {
            continue;
        };
        if !client.ends_with(" lua") {
            out.push(monitor_args(args));
        }
    }
    panic!("the MONITOR stream ended before the marker");
}

/// The arguments of a MONITOR line (each quoted, escaped as Redis's `sdscatrepr`).
fn monitor_args(line: &str) -> Vec<Vec<u8>> {
    let mut args = Vec::new();
    let mut bytes = line.bytes();
    while let Some(b) = bytes.next() {
        if b != b'"' {
            continue;
        }
        let mut arg = Vec::new();
        while let Some(b) = bytes.next() {
            match b {
                b'"' => break,
                b'\\' => match bytes.next().expect("escape") {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [bytes.next().expect("hex"), bytes.next().expect("hex")];
                        let hex = std::str::from_utf8(&hex).expect("hex");
                        arg.push(u8::from_str_radix(hex, 16).expect("hex"));
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(arg);
    }
    args
}

/// One captured command, built from its arguments.
fn command(args: &[Vec<u8>]) -> redis::Cmd {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(a.as_slice());
    }
    cmd
}

/// Captured commands as one pipeline (one round trip, as chatstate sent them),
/// built from their arguments.
fn replayable(cmds: &[Vec<Vec<u8>>]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for args in cmds {
        pipe.add_command(command(args));
    }
    pipe
}

criterion_group!(redis_benches, benches);
criterion_main!(redis_benches);
