//! One chat turn of the seed bots, on a throwaway `redis-server` this bench starts
//! on a free loopback port (never 6379). Run: `cargo bench --bench turn`.
//!
//! A turn: load the session (record and its window of 20), append the user's
//! message, append the reply, set the summary, add 1 to three counters, read a
//! customer from the cache and a focus document. Four contenders do it:
//! - `naive`: redis-rs, one command per call, as the seeds' code does:
//!   `HGETALL` and `LRANGE` (load); `RPUSH`, `LTRIM`, `EXPIRE` msgs, `HSET`
//!   last_activity, `EXPIRE` ctx (each append); `HSET` summary; three `INCR`;
//!   `GET` customer; `HGETALL` focus document: 18 commands, 18 round trips, no
//!   atomicity, no type checks, no tenant index;
//! - `plain`: chatstate's one-purpose calls: `load`, `append_messages` twice,
//!   `update`, the counters through `BatchedCounters` (flushed once per measured
//!   run, that flush counted in), `KvCache::get`, `FocusStore::get`;
//! - `turn`: the turn API: `Stores::read_batch` (session, document, customer)
//!   and `commit_turn` (both messages and the summary), counters as in `plain`;
//! - `turn_tiered`: `turn` with `Stores::with_tiered_cache`: the customer comes
//!   from the local tier;
//! - `turn_local`: `turn_tiered` with `Stores::with_local_sessions` too: the
//!   session and the focus document come from the local session and focus
//!   tiers, the customer from the tiered cache, so the read costs nothing and
//!   the turn is the commit;
//! - `turn_local_nodoc`: `turn_local` for a bot whose turn reads no focus
//!   document.
//!
//! Besides criterion's time per turn, each contender runs `TURNS` turns alone
//! against the server, with the server's statistics reset first, and the bench
//! prints per turn: round trips (the store's own count; the naive client's is
//! its command count), commands the server executed (`INFO commandstats` calls,
//! commands inside scripts included), and server CPU (`used_cpu_user` +
//! `used_cpu_sys` from `INFO cpu`, all the server's work: parsing, scripts,
//! replies).

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chatstate::{
    BatchReads, BatchedCounters, CacheKey, Config, CounterKey, Expected, FocusKey, FocusStore,
    KvCache, NewMessage, PutMode, SessionKey, SessionPatch, SessionStore, Stores, Turn,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use redis::aio::ConnectionManager;

const TURNS: u64 = 5000;
const USER: &str = "oi, quero a segunda via do boleto de outubro, por favor";
const REPLY: &str = "Claro! Encontrei o boleto de outubro no valor de R$ 89,90 com \
    vencimento no dia 15. Enviei o PDF aqui na conversa; se preferir, posso mandar \
    também o código de barras para pagar pelo app do banco.";
const SUMMARY: &str = "Cliente Ana pediu a segunda via do boleto de outubro; enviado o PDF.";

struct Turner {
    stores: Stores,
    counters: BatchedCounters,
}

fn keys(user: &str) -> (SessionKey, FocusKey, CacheKey, [CounterKey; 3]) {
    (
        SessionKey::new("acme", "whatsapp", user).expect("key"),
        FocusKey::new("acme", format!("flow:{user}")).expect("focus key"),
        CacheKey::new("customers", user).expect("cache key"),
        [
            CounterKey::new("messages").expect("counter"),
            CounterKey::new("ai_responses").expect("counter"),
            CounterKey::new("conversations").expect("counter"),
        ],
    )
}

impl Turner {
    async fn open(config: &Config, tiered: bool, local: bool) -> Turner {
        let mut stores = Stores::open(config).await.expect("stores");
        if tiered {
            stores = stores.with_tiered_cache(config);
        }
        if local {
            stores = stores.with_local_sessions(config);
        }
        let counters = stores.batched_counters(config).expect("batched counters");
        Turner { stores, counters }
    }

    async fn seed(&self, user: &str) {
        let (s, f, c, _) = keys(user);
        let window: Vec<NewMessage> = (0..20)
            .map(|i| NewMessage::user(format!("{USER} {i}")))
            .collect();
        self.stores
            .sessions
            .append_messages(&s, window)
            .await
            .expect("seed");
        self.stores
            .focus
            .put(
                &f,
                Bytes::from_static(b"{\"flow\":\"billing\"}"),
                PutMode::Overwrite,
                None,
            )
            .await
            .expect("seed focus");
        self.stores
            .cache
            .set(
                &c,
                Bytes::from_static(b"{\"name\":\"Ana\",\"plan\":\"pro\"}"),
                None,
            )
            .await
            .expect("seed cache");
    }

    /// One turn through the plain calls.
    async fn plain(&self, user: &str) {
        let (s, f, c, counters) = keys(user);
        let st = &self.stores;
        let loaded = st.sessions.load(&s).await.expect("load").expect("session");
        st.sessions
            .append_messages(&s, vec![NewMessage::user(USER)])
            .await
            .expect("append");
        st.sessions
            .append_messages(&s, vec![NewMessage::assistant(REPLY)])
            .await
            .expect("append");
        st.sessions
            .update(&s, SessionPatch::new().summary(SUMMARY), Expected::Any)
            .await
            .expect("update");
        for k in &counters {
            self.counters.add(k, 1);
        }
        let customer = st.cache.get(&c).await.expect("cache");
        let doc = st.focus.get(&f).await.expect("focus");
        assert!(customer.is_some() && doc.is_some() && !loaded.messages.is_empty());
    }

    /// One turn through the turn API (reading the focus document when `doc`).
    async fn turn(&self, user: &str, doc: bool) {
        let (s, f, c, counters) = keys(user);
        let st = &self.stores;
        let mut reads = BatchReads::new().session(s.clone()).cache(c);
        if doc {
            reads = reads.focus(f);
        }
        let read = st.read_batch(&reads).await.expect("read batch");
        let loaded = read.session.expect("session");
        assert!(read.cache[0].is_some() && read.focus.iter().all(Option::is_some));
        st.sessions
            .commit_turn(
                &s,
                Turn::new()
                    .messages([NewMessage::user(USER), NewMessage::assistant(REPLY)])
                    .patch(SessionPatch::new().summary(SUMMARY))
                    .expect(Expected::Version(loaded.session.version)),
            )
            .await
            .expect("commit");
        for k in &counters {
            self.counters.add(k, 1);
        }
    }
}

/// One turn of the naive client: 18 commands, one round trip each.
async fn naive(con: ConnectionManager, user: &str) {
    let ctx = format!("naive:sess:{{acme:whatsapp:{user}}}:ctx");
    let msgs = format!("naive:sess:{{acme:whatsapp:{user}}}:msgs");
    let ttl = 72 * 3600;
    let q = |c: &mut redis::Cmd| c.clone();
    let run = |cmd: redis::Cmd| {
        let mut con = con.clone();
        async move {
            let _: redis::Value = cmd.query_async(&mut con).await.expect("naive command");
        }
    };
    run(q(redis::cmd("HGETALL").arg(&ctx))).await;
    run(q(redis::cmd("LRANGE").arg(&msgs).arg(0).arg(-1))).await;
    for (role, text) in [("user", USER), ("assistant", REPLY)] {
        let m = format!("{{\"role\":\"{role}\",\"content\":\"{text}\",\"at\":1795323723456}}");
        run(q(redis::cmd("RPUSH").arg(&msgs).arg(m))).await;
        run(q(redis::cmd("LTRIM").arg(&msgs).arg(-20).arg(-1))).await;
        run(q(redis::cmd("EXPIRE").arg(&msgs).arg(ttl))).await;
        run(q(redis::cmd("HSET")
            .arg(&ctx)
            .arg("last_activity")
            .arg(1795323723456u64)))
        .await;
        run(q(redis::cmd("EXPIRE").arg(&ctx).arg(ttl))).await;
    }
    run(q(redis::cmd("HSET").arg(&ctx).arg("summary").arg(SUMMARY))).await;
    for c in ["messages", "ai_responses", "conversations"] {
        run(q(redis::cmd("INCR").arg(format!("naive:counter:{c}")))).await;
    }
    run(q(
        redis::cmd("GET").arg(format!("naive:cache:customers:{user}"))
    ))
    .await;
    run(q(
        redis::cmd("HGETALL").arg(format!("naive:focus:{{acme}}:flow:{user}"))
    ))
    .await;
}

async fn seed_naive(con: &mut ConnectionManager, user: &str) {
    let ctx = format!("naive:sess:{{acme:whatsapp:{user}}}:ctx");
    let msgs = format!("naive:sess:{{acme:whatsapp:{user}}}:msgs");
    let m = format!("{{\"role\":\"user\",\"content\":\"{USER}\",\"at\":1795323723456}}");
    let _: () = redis::pipe()
        .hset_multiple(
            &ctx,
            &[("id", "x"), ("version", "1"), ("message_count", "20")],
        )
        .rpush(&msgs, vec![m; 20])
        .set(
            format!("naive:cache:customers:{user}"),
            "{\"name\":\"Ana\",\"plan\":\"pro\"}",
        )
        .hset_multiple(
            format!("naive:focus:{{acme}}:flow:{user}"),
            &[("value", "{\"flow\":\"billing\"}"), ("version", "1")],
        )
        .query_async(con)
        .await
        .expect("seed naive");
}

/// The server's CPU seconds (user + sys) and commands executed so far.
async fn server_work(con: &mut ConnectionManager) -> (f64, u64) {
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(con)
        .await
        .expect("INFO cpu");
    let field = |name: &str| -> f64 {
        cpu.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .expect("a cpu field")
    };
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .expect("INFO commandstats");
    let calls = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    (field("used_cpu_user") + field("used_cpu_sys"), calls)
}

/// Runs `turn` `TURNS` times and prints round trips, commands and server CPU per
/// turn; `trips` reads the client's round-trip count (`None`: one command per round
/// trip, so the server's command count is it).
async fn per_turn<F, Fut>(
    name: &str,
    admin: &mut ConnectionManager,
    trips: Option<&dyn Fn() -> u64>,
    mut turn: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(admin)
        .await
        .expect("RESETSTAT");
    let (cpu0, calls0) = server_work(admin).await;
    let trips0 = trips.map(|t| t());
    for _ in 0..TURNS {
        turn().await;
    }
    let (cpu1, calls1) = server_work(admin).await;
    // The INFO calls of both readings are not in the counts (filtered out).
    let commands = calls1.saturating_sub(calls0);
    let trips = match (trips, trips0) {
        (Some(t), Some(t0)) => t() - t0,
        _ => commands,
    };
    println!(
        "turn/{name}: {:.2} round trips, {:.1} commands, {:.1} µs server CPU per turn ({TURNS} turns)",
        trips as f64 / TURNS as f64,
        commands as f64 / TURNS as f64,
        (cpu1 - cpu0) * 1e6 / TURNS as f64,
    );
}

fn benches(c: &mut Criterion) {
    let server = common::RedisServer::start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let config = common::config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &server.url()),
        ("CHATSTATE_KEY_PREFIX", "bench"),
    ]);
    let client = redis::Client::open(server.url().as_str()).expect("client");
    let mut raw: ConnectionManager = rt
        .block_on(ConnectionManager::new(client.clone()))
        .expect("raw connection");
    let mut admin: ConnectionManager = rt
        .block_on(ConnectionManager::new(client))
        .expect("admin connection");
    let plain = rt.block_on(Turner::open(&config, false, false));
    let tiered = rt.block_on(Turner::open(&config, true, false));
    let local = rt.block_on(Turner::open(&config, true, true));
    rt.block_on(async {
        seed_naive(&mut raw, "n").await;
        for (t, user) in [
            (&plain, "p"),
            (&plain, "t"),
            (&tiered, "l"),
            (&local, "s"),
            (&local, "d"),
        ] {
            t.seed(user).await;
        }
        // Every script loaded; the local tiers holding the customers and sessions.
        plain.plain("p").await;
        plain.turn("t", true).await;
        for _ in 0..2 {
            tiered.turn("l", true).await;
            local.turn("s", true).await;
            local.turn("d", false).await;
        }
    });

    // Per turn, each contender alone against the server.
    rt.block_on(async {
        per_turn("naive", &mut admin, None, || naive(raw.clone(), "n")).await;
        let trips = |t: &Turner| t.stores.round_trips().expect("redis").round_trips;
        // (name, contender, user, through the turn API, reading the document)
        for (name, t, user, api, doc) in [
            ("plain", &plain, "p", false, true),
            ("turn", &plain, "t", true, true),
            ("turn_tiered", &tiered, "l", true, true),
            ("turn_local", &local, "s", true, true),
            ("turn_local_nodoc", &local, "d", true, false),
        ] {
            per_turn(name, &mut admin, Some(&|| trips(t)), || async move {
                if api {
                    t.turn(user, doc).await
                } else {
                    t.plain(user).await
                }
            })
            .await;
            // The counters' flush of the run: one round trip for all its turns.
            let before = trips(t);
            t.counters.flush().await.expect("flush");
            println!(
                "turn/{name}: + {} round trip(s) of counter flush for the run",
                trips(t) - before
            );
        }
        let held = local.stores.local_sessions().expect("local tier").stats();
        println!("turn/turn_local*: local session tier {held:?}");
        let docs = local.stores.local_focus().expect("local tier").stats();
        println!("turn/turn_local*: local focus tier {docs:?}");
    });

    let mut g = c.benchmark_group("turn");
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function(BenchmarkId::new("one_turn", "naive"), |b| {
        b.to_async(&rt).iter(|| naive(raw.clone(), "n"))
    });
    g.bench_function(BenchmarkId::new("one_turn", "plain"), |b| {
        b.to_async(&rt).iter(|| plain.plain("p"))
    });
    g.bench_function(BenchmarkId::new("one_turn", "turn"), |b| {
        b.to_async(&rt).iter(|| plain.turn("t", true))
    });
    g.bench_function(BenchmarkId::new("one_turn", "turn_tiered"), |b| {
        b.to_async(&rt).iter(|| tiered.turn("l", true))
    });
    g.bench_function(BenchmarkId::new("one_turn", "turn_local"), |b| {
        b.to_async(&rt).iter(|| local.turn("s", true))
    });
    g.bench_function(BenchmarkId::new("one_turn", "turn_local_nodoc"), |b| {
        b.to_async(&rt).iter(|| local.turn("d", false))
    });
    g.finish();
    rt.block_on(async {
        for t in [&plain, &tiered, &local] {
            let _ = t.counters.shutdown().await;
        }
    });
}

criterion_group!(turn_benches, benches);
criterion_main!(turn_benches);
