//! Issue 8 on Redis: transient refusals, stored values with integer semantics, the
//! full i64 counter range, fence retention, the tenant index (deadlines, pruning,
//! the delete/append race), wrong types and corrupt records, the eviction policy
//! check and paged focus listing. Each test plants what another program (or an
//! unlucky server) could leave, with `redis-cli`, and checks what the store says and
//! that a refused call wrote nothing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    BatchOutcome, CacheKey, CounterBatch, CounterKey, CounterSink, ErrorKind, Expected, FocusKey,
    FocusStore, KvCache, NewMessage, PutMode, RedisUrl, SessionKey, SessionPatch, SessionStore,
    SessionStoreExt, StoreSettings,
};
use chatstate_redis::{EvictionRisk, RedisStore};
use common::RedisServer;

async fn connect_with(url: &str, prefix: &str, settings: StoreSettings) -> RedisStore {
    RedisStore::builder(RedisUrl::parse(url).expect("a valid URL"))
        .prefix(prefix)
        .settings(settings)
        .connect()
        .await
        .expect("connects to the test server")
}

async fn connect(url: &str) -> RedisStore {
    connect_with(url, &common::unique_prefix(), StoreSettings::default()).await
}

fn skey(user: &str) -> SessionKey {
    SessionKey::new("acme", "whatsapp", user).expect("a valid key")
}

fn ckey(name: &str) -> CounterKey {
    CounterKey::new(name).expect("a valid counter name")
}

fn exists(server: &RedisServer, key: &str) -> bool {
    server.cli(&["EXISTS", key]).trim() == "1"
}

// ---------------------------------------------------------------- item 1

/// A server whose last snapshot failed with `stop-writes-on-bgsave-error yes`: it
/// answers every write with MISCONF (the folder it saves into is gone, as a full or
/// lost disk would look).
fn misconf_server() -> RedisServer {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chatstate-misconf-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let server = RedisServer::start(&[
        "--dir",
        dir.to_str().expect("a UTF-8 temp path"),
        "--save",
        "3600 1",
        "--stop-writes-on-bgsave-error",
        "yes",
    ]);
    std::fs::remove_dir_all(&dir).expect("the snapshot folder goes away");
    server.cli(&["BGSAVE"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !server
        .cli(&["INFO", "persistence"])
        .contains("rdb_last_bgsave_status:err")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the forced BGSAVE did not fail"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

#[tokio::test]
async fn noreplicas_and_misconf_refusals_are_temporary_and_write_nothing() {
    let noreplicas = RedisServer::start(&["--min-replicas-to-write", "1"]);
    let misconf = misconf_server();
    for (what, server) in [("NOREPLICAS", &noreplicas), ("MISCONF", &misconf)] {
        let s = connect(&server.url()).await;
        let counter = ckey("hits");
        let mut batch = CounterBatch::new();
        batch.add(&counter, 1);
        batch.add(&ckey("other"), 2);
        let ck = CacheKey::new("ns", "k").unwrap();
        let errors = [
            ("add", s.add(&counter, 1).await.map(|_| ()).unwrap_err()),
            ("apply", s.apply(&batch).await.map(|_| ()).unwrap_err()),
            (
                "append",
                s.append_message(&skey("u"), NewMessage::user("hi"))
                    .await
                    .map(|_| ())
                    .unwrap_err(),
            ),
            (
                "try_lock",
                s.try_lock(&skey("u"), "job", Duration::from_secs(5))
                    .await
                    .map(|_| ())
                    .unwrap_err(),
            ),
            (
                "set",
                KvCache::set(&s, &ck, Bytes::from_static(b"v"), None)
                    .await
                    .unwrap_err(),
            ),
            (
                "set_many",
                s.set_many(vec![(ck.clone(), Bytes::from_static(b"v"))], None)
                    .await
                    .unwrap_err(),
            ),
        ];
        for (op, err) in errors {
            assert!(
                err.is_temporary(),
                "{what}: {op} must be temporary, was {:?}: {err}",
                err.kind()
            );
            assert_eq!(err.kind(), ErrorKind::Unavailable, "{what}: {op}: {err}");
        }
        assert_eq!(
            server.cli(&["DBSIZE"]).trim(),
            "0",
            "{what}: the refused calls wrote nothing"
        );
        // Reads still work: the server refuses writes only, so six refusals in a row
        // do not open the circuit breaker (they are not an outage).
        assert_eq!(
            s.health().breaker,
            chatstate_core::BreakerState::Closed,
            "{what}: write refusals opened the breaker"
        );
        assert_eq!(CounterSink::get(&s, &counter).await.unwrap(), 0);
    }
}

// ---------------------------------------------------------------- item 2 and 12

/// Stored values another program could leave in a counter or a fence, valid or not.
const PLANTED: &[&str] = &[
    "1.5",
    " 7",
    "7 ",
    "0x10",
    "1e3",
    "nan",
    "inf",
    "+5",
    "007",
    "-0",
    "",
    "-",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999",
    "12",
    "-5",
    "0",
    "9223372036854775807",
    "-9223372036854775808",
];

#[tokio::test]
async fn apply_accepts_exactly_the_stored_values_hincrby_accepts_and_a_refusal_writes_nothing() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let prefix = s.layout().prefix().to_string();
    let mut refused = 0;
    for (i, planted) in PLANTED.iter().enumerate() {
        // What Redis itself says of this value.
        let probe = format!("{prefix}:probe{i}");
        server.cli(&["HSET", &probe, "f", planted]);
        let hincrby_ok = !server.cli(&["HINCRBY", &probe, "f", "0"]).contains("ERR");

        let (a, z) = (ckey(&format!("a{i}")), ckey(&format!("z{i}")));
        let zhash = s.layout().counter_hash(&format!("z{i}"), None);
        server.cli(&["HSET", &zhash, "", planted]);
        let mut batch = CounterBatch::new();
        batch.add(&a, 1);
        batch.add(&z, 0);
        let applied = s.apply(&batch).await;
        let added = s.add(&z, 0).await;
        if hincrby_ok {
            assert_eq!(applied.unwrap(), BatchOutcome::Applied, "{planted:?}");
            assert!(added.is_ok(), "{planted:?}: {added:?}");
            assert_eq!(CounterSink::get(&s, &a).await.unwrap(), 1);
        } else {
            refused += 1;
            // Reads refuse what writes refuse: no "+5" read as 5 by get, list or
            // get_many while add and apply call it corrupt.
            let read = CounterSink::get(&s, &z).await.map(|_| ());
            let many = CounterSink::get_many(&s, std::slice::from_ref(&z))
                .await
                .map(|_| ());
            let listed = CounterSink::list(&s, &format!("z{i}"), None)
                .await
                .map(|_| ());
            for (op, err) in [
                ("apply", applied.map(|_| ())),
                ("add", added.map(|_| ())),
                ("get", read),
                ("get_many", many),
                ("list", listed),
            ] {
                let err = err.expect_err(planted);
                assert_eq!(err.kind(), ErrorKind::Decode, "{op} of {planted:?}: {err}");
                assert!(
                    err.to_string().contains(&zhash),
                    "{op} names the key: {err}"
                );
            }
            assert_eq!(
                CounterSink::get(&s, &a).await.unwrap(),
                0,
                "{planted:?}: no increment of the refused batch landed"
            );
            assert!(
                !exists(server, &s.layout().counter_batch(batch.id())),
                "{planted:?}: the refused batch id was not recorded"
            );
            assert_eq!(
                server.cli(&["HGET", &zhash, ""]).trim_end_matches('\n'),
                *planted,
                "the stored value is left as it was"
            );
        }
    }
    assert!(refused >= 13, "most planted values are refused ({refused})");
}

#[tokio::test]
async fn a_corrupt_fence_refuses_the_lock_and_leaves_no_orphan() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    for (i, planted) in [
        "1.5",
        " 1",
        "0x10",
        "1e3",
        "nan",
        "007",
        "-3",
        "+5",
        "",
        "9223372036854775807",
    ]
    .iter()
    .enumerate()
    {
        let k = skey(&format!("locked{i}"));
        let base = s.layout().session_base(&k);
        let (lock, fence) = (format!("{base}:lock:job"), format!("{base}:fence:job"));
        server.cli(&["SET", &fence, planted]);
        let err = s
            .try_lock(&k, "job", Duration::from_secs(30))
            .await
            .expect_err(planted);
        assert_eq!(err.kind(), ErrorKind::Decode, "{planted:?}: {err}");
        assert!(err.to_string().contains(&fence), "names the key: {err}");
        assert!(!exists(server, &lock), "{planted:?}: no orphan lock");
        assert_eq!(
            server.cli(&["GET", &fence]).trim_end_matches('\n'),
            *planted
        );
    }
    let k = skey("fine");
    let base = s.layout().session_base(&k);
    server.cli(&["SET", &format!("{base}:fence:job"), "5"]);
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(30))
        .await
        .unwrap()
        .expect("free");
    assert_eq!(lease.fence, 6);
}

#[tokio::test]
async fn writes_to_a_corrupt_session_are_decode_errors_that_write_nothing() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    for field in ["version", "message_count"] {
        for (i, bad) in ["banana", "1.5", "", "-2", "1e3"].iter().enumerate() {
            let k = skey(&format!("corrupt-{field}-{i}"));
            s.append_message(&k, NewMessage::user("one")).await.unwrap();
            s.update(&k, SessionPatch::new().summary("old"), Expected::Any)
                .await
                .unwrap();
            let ctx = format!("{}:ctx", s.layout().session_base(&k));
            let msgs = format!("{}:msgs", s.layout().session_base(&k));
            server.cli(&["HSET", &ctx, field, bad]);
            let before = server.cli(&["HGETALL", &ctx]);
            let errors = [
                (
                    "update",
                    s.update(&k, SessionPatch::new().summary("new"), Expected::Any)
                        .await
                        .map(|_| ()),
                ),
                (
                    "update at a version",
                    s.update(&k, SessionPatch::new().summary("new"), Expected::Version(1))
                        .await
                        .map(|_| ()),
                ),
                (
                    "append",
                    s.append_message(&k, NewMessage::user("two"))
                        .await
                        .map(|_| ()),
                ),
                ("touch", s.touch(&k).await.map(|_| ())),
            ];
            for (op, r) in errors {
                let err = r.expect_err(op);
                assert_eq!(
                    err.kind(),
                    ErrorKind::Decode,
                    "{op}, {field}={bad:?}: {err}"
                );
                assert!(err.to_string().contains(&ctx), "{op} names the key: {err}");
            }
            assert_eq!(server.cli(&["HGETALL", &ctx]), before, "nothing written");
            assert_eq!(server.cli(&["LLEN", &msgs]).trim(), "1", "no message added");
        }
    }
}

#[tokio::test]
async fn cache_calls_on_a_key_of_another_type_are_wrong_type_and_overwrite_nothing() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let (fine, other) = (
        CacheKey::new("ns", "fine").unwrap(),
        CacheKey::new("ns", "a-hash").unwrap(),
    );
    let other_key = s.layout().cache(&other);
    server.cli(&["HSET", &other_key, "f", "v"]);
    KvCache::set(&s, &fine, Bytes::from_static(b"old"), None)
        .await
        .unwrap();
    let fresh = CacheKey::new("ns", "fresh").unwrap();
    let errors = [
        (
            "get_many",
            KvCache::get_many(&s, &[fine.clone(), other.clone()])
                .await
                .map(|_| ()),
        ),
        (
            "set",
            KvCache::set(&s, &other, Bytes::from_static(b"new"), None).await,
        ),
        (
            "set_many",
            s.set_many(
                vec![
                    (fresh.clone(), Bytes::from_static(b"new")),
                    (other.clone(), Bytes::from_static(b"new")),
                ],
                None,
            )
            .await,
        ),
    ];
    for (op, r) in errors {
        let err = r.expect_err(op);
        assert_eq!(err.kind(), ErrorKind::WrongType, "{op}: {err}");
        assert!(
            err.to_string().contains(&other_key),
            "{op} names the key: {err}"
        );
    }
    assert_eq!(server.cli(&["TYPE", &other_key]).trim(), "hash");
    assert_eq!(server.cli(&["HGET", &other_key, "f"]).trim(), "v");
    assert!(
        !exists(server, &s.layout().cache(&fresh)),
        "set_many wrote nothing"
    );
    // Misses are still misses.
    let got = KvCache::get_many(&s, &[fine.clone(), fresh.clone()])
        .await
        .unwrap();
    assert_eq!(got, vec![Some(Bytes::from_static(b"old")), None]);
}

// ---------------------------------------------------------------- item 3

const P62: i64 = 1 << 62;

#[tokio::test]
async fn add_and_apply_use_the_full_i64_range_and_refuse_overflow_by_one() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    // (start, delta, expected result or None for an overflow)
    let cases: &[(i64, i64, Option<i64>)] = &[
        (P62, P62 - 1, Some(i64::MAX)),
        (P62, P62, None),
        (-P62, -P62, Some(i64::MIN)),
        (-P62, -P62 - 1, None),
        (i64::MAX - 1, 1, Some(i64::MAX)),
        (i64::MAX, 1, None),
        (i64::MIN + 1, -1, Some(i64::MIN)),
        (i64::MIN, -1, None),
        (i64::MAX, i64::MIN, Some(-1)),
        (i64::MIN, i64::MAX, Some(-1)),
        (0, i64::MIN, Some(i64::MIN)),
        (-1, i64::MIN, None),
        (1, i64::MAX, None),
        // The low nine digits carry into the high ones.
        (999_999_999, i64::MAX - 999_999_999, Some(i64::MAX)),
        (1_000_000_000, i64::MAX - 999_999_999, None),
        (-999_999_999, i64::MIN + 999_999_999, Some(i64::MIN)),
        (-1_000_000_000, i64::MIN + 999_999_999, None),
        (-1, -999_999_999, Some(-1_000_000_000)),
        (123_456_789_012, -987_654_321_098, Some(-864_197_532_086)),
    ];
    for (i, &(start, delta, want)) in cases.iter().enumerate() {
        // add
        let k = ckey(&format!("add{i}"));
        assert_eq!(s.add(&k, start).await.unwrap(), start);
        match want {
            Some(v) => assert_eq!(s.add(&k, delta).await.unwrap(), v, "{start} + {delta}"),
            None => {
                let err = s.add(&k, delta).await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    ErrorKind::InvalidInput,
                    "{start} + {delta}: {err}"
                );
                assert_eq!(CounterSink::get(&s, &k).await.unwrap(), start);
            }
        }
        // apply, with a harmless counter alongside
        let (k, side) = (ckey(&format!("apply{i}")), ckey(&format!("side{i}")));
        let mut first = CounterBatch::new();
        first.add(&k, start);
        assert_eq!(s.apply(&first).await.unwrap(), BatchOutcome::Applied);
        let mut b = CounterBatch::new();
        b.add(&k, delta);
        b.add(&side, 7);
        match want {
            Some(v) => {
                assert_eq!(
                    s.apply(&b).await.unwrap(),
                    BatchOutcome::Applied,
                    "{start} + {delta}"
                );
                assert_eq!(CounterSink::get(&s, &k).await.unwrap(), v);
            }
            None => {
                let err = s.apply(&b).await.unwrap_err();
                assert_eq!(
                    err.kind(),
                    ErrorKind::InvalidInput,
                    "{start} + {delta}: {err}"
                );
                assert_eq!(CounterSink::get(&s, &k).await.unwrap(), start);
                assert_eq!(
                    CounterSink::get(&s, &side).await.unwrap(),
                    0,
                    "nothing written"
                );
                assert!(!exists(server, &s.layout().counter_batch(b.id())));
            }
        }
    }
}

// ---------------------------------------------------------------- item 5

fn short_ttl(ms: u64) -> StoreSettings {
    StoreSettings {
        session_ttl: Duration::from_millis(ms),
        ..StoreSettings::default()
    }
}

#[tokio::test]
async fn a_fence_outlives_a_lease_longer_than_the_session_ttl() {
    let server = common::shared();
    let s = connect_with(&server.url(), &common::unique_prefix(), short_ttl(1000)).await;
    let k = skey("long-lease");
    let first = s
        .try_lock(&k, "job", Duration::from_millis(2000))
        .await
        .unwrap()
        .expect("free");
    // The lease (2 s) ran out, and so did the session TTL (1 s) since the acquire; the
    // fence must be kept until lease + TTL = 3 s.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let next = s
        .try_lock(&k, "job", Duration::from_millis(2000))
        .await
        .unwrap()
        .expect("the stale lease expired");
    assert!(
        next.fence > first.fence,
        "fence went back: {} after {}",
        next.fence,
        first.fence
    );
}

#[tokio::test]
async fn extend_and_release_keep_the_fence_for_the_new_lease_plus_the_session_ttl() {
    let server = common::shared();
    let prefix = common::unique_prefix();
    let s = connect_with(&server.url(), &prefix, short_ttl(1000)).await;
    let k = skey("extended");
    let fence_key = format!("{}:fence:job", s.layout().session_base(&k));
    let first = s
        .try_lock(&k, "job", Duration::from_millis(500))
        .await
        .unwrap()
        .expect("free");
    assert!(
        s.extend_lock(&first, Duration::from_millis(1500))
            .await
            .unwrap()
    );
    // The lease now ends 1.5 s from here, the fence must last 2.5 s from here.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let second = s
        .try_lock(&k, "job", Duration::from_millis(100))
        .await
        .unwrap()
        .expect("the extended lease expired");
    assert!(second.fence > first.fence, "extend kept the fence");

    // Release through a store with a longer session TTL: the fence is kept for that
    // TTL from the release, beyond what the acquire set.
    let long = connect_with(&server.url(), &prefix, short_ttl(5000)).await;
    assert!(long.release_lock(&second).await.unwrap());
    let pttl: i64 = server.cli(&["PTTL", &fence_key]).trim().parse().unwrap();
    assert!(
        pttl > 3000,
        "release refreshed the fence retention ({pttl} ms)"
    );

    // Never shortened: a long lease, then a short extend and a release.
    let third = s
        .try_lock(&k, "job", Duration::from_secs(5))
        .await
        .unwrap()
        .expect("free");
    assert!(
        s.extend_lock(&third, Duration::from_millis(50))
            .await
            .unwrap()
    );
    assert!(s.release_lock(&third).await.unwrap());
    let pttl: i64 = server.cli(&["PTTL", &fence_key]).trim().parse().unwrap();
    assert!(pttl > 5000, "the fence retention never shrinks ({pttl} ms)");
    assert!(pttl <= 6000, "lease + session TTL ({pttl} ms)");
}

// ---------------------------------------------------------------- item 6

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_index_keeps_about_its_live_sessions_without_list_calls() {
    let server = RedisServer::start(&[]);
    let s = connect_with(&server.url(), &common::unique_prefix(), short_ttl(2000)).await;
    let index = s.layout().session_index("acme");
    let deadlines = s.layout().session_index_deadlines("acme");
    const N: usize = 3000;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50 {
        let s = s.clone();
        tasks.spawn(async move {
            for i in (t..N).step_by(50) {
                s.append_message(&skey(&format!("short{i}")), NewMessage::user("hi"))
                    .await
                    .expect("append");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    // One session keeps writing while the others expire (so the tenant's index is
    // never idle long enough to expire as a whole); no one lists.
    let keeper = skey("keeper");
    // Members are pruned once their index deadline passes: 1.5 session TTLs after
    // the write that indexed them (the index is written about once per half TTL).
    let until = tokio::time::Instant::now() + Duration::from_millis(3300);
    while tokio::time::Instant::now() < until {
        s.append_message(&keeper, NewMessage::user("still here"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..100 {
        s.append_message(&keeper, NewMessage::user("still here"))
            .await
            .unwrap();
    }
    for key in [&index, &deadlines] {
        let zcard: usize = server.cli(&["ZCARD", key]).trim().parse().unwrap();
        assert!(zcard <= 5, "{key} holds {zcard} members for 1 live session");
        let pttl: i64 = server.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(
            pttl > 0 && pttl <= 3000,
            "{key}: TTL = the latest deadline, at most 1.5 session TTLs ({pttl} ms)"
        );
    }
    let member = chatstate_core::KeyLayout::session_index_member(&keeper);
    let score: f64 = server
        .cli(&["ZSCORE", &deadlines, &member])
        .trim()
        .parse()
        .expect("the keeper has a deadline");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    // The index deadline is set 1.5 TTLs ahead and refreshed only when it would
    // end before the session: never before the session's expiry.
    let left: f64 = server
        .cli(&["PTTL", &format!("{}:ctx", s.layout().session_base(&keeper))])
        .trim()
        .parse()
        .unwrap();
    assert!(
        score >= now_ms + left - 50.0 && score <= now_ms + 3100.0,
        "score ({score}) covers the session's expiry (now {now_ms} + {left} ms)"
    );

    // update/touch of a missing session add no member.
    let ghost = skey("ghost");
    assert!(!s.touch(&ghost).await.unwrap());
    assert_eq!(
        s.update(&ghost, SessionPatch::new().summary("x"), Expected::Any)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let ghost_member = chatstate_core::KeyLayout::session_index_member(&ghost);
    for key in [&index, &deadlines] {
        assert_eq!(server.cli(&["ZSCORE", key, &ghost_member]).trim(), "");
    }
}

// ---------------------------------------------------------------- item 7

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_racing_append_never_hides_a_live_session_from_list() {
    let server = RedisServer::start(&[]);
    let prefix = common::unique_prefix();
    let settings = StoreSettings::default();
    // Two stores: two connections, as two processes would have.
    let appender = connect_with(&server.url(), &prefix, settings.clone()).await;
    let deleter = connect_with(&server.url(), &prefix, settings).await;
    // Long ids make each call a few KB, so the server reads a busy connection's
    // stream in pieces that can end between two commands of one call: where a call
    // that is not one atomic step lets another client's call in.
    let keys: Vec<SessionKey> = (0..3000)
        .map(|i| {
            SessionKey::new(
                "acme",
                "c".repeat(500),
                format!("racer{i}-{}", "u".repeat(480)),
            )
            .unwrap()
        })
        .collect();
    // Each session: one append and one delete at the same time, many sessions at once.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64 {
        let (appender, deleter, keys) = (appender.clone(), deleter.clone(), keys.clone());
        tasks.spawn(async move {
            for k in keys.iter().skip(t).step_by(64) {
                let (a, d) = tokio::join!(
                    appender.append_message(k, NewMessage::user("x")),
                    SessionStore::delete(&deleter, k)
                );
                a.expect("append");
                d.expect("delete");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    let mut listed = std::collections::HashSet::new();
    let mut cursor = None;
    loop {
        let page = SessionStore::list(&appender, "acme", cursor, 500)
            .await
            .unwrap();
        listed.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    let (mut live, mut missing) = (0, Vec::new());
    for chunk in keys.chunks(500) {
        let got = SessionStore::get_many(&appender, chunk).await.unwrap();
        for (k, s) in chunk.iter().zip(got) {
            if s.is_some() {
                live += 1;
                if !listed.contains(k) {
                    missing.push(k.user().split('-').next().unwrap_or("?").to_string());
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {live} live sessions are not listed: {missing:?}",
        missing.len()
    );
    assert!(live > 0, "some appends won their race");
    assert_eq!(listed.len(), live, "only live sessions are listed");
}

// ---------------------------------------------------------------- item 13

#[test]
fn the_eviction_risk_of_each_policy() {
    use chatstate_redis::eviction_risk;
    assert_eq!(eviction_risk("noeviction", 1 << 30), EvictionRisk::None);
    for p in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
        assert_eq!(eviction_risk(p, 1 << 30), EvictionRisk::AllKeys, "{p}");
        assert_eq!(
            eviction_risk(p, 0),
            EvictionRisk::None,
            "{p} without maxmemory"
        );
    }
    for p in [
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ] {
        assert_eq!(eviction_risk(p, 1 << 30), EvictionRisk::KeysWithTtl, "{p}");
    }
    assert_eq!(eviction_risk("something-new", 1), EvictionRisk::Unknown);
}

#[tokio::test]
async fn the_eviction_policy_is_checked_on_the_server() {
    let evicting =
        RedisServer::start(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let s = connect(&evicting.url()).await;
    assert_eq!(
        s.eviction_risk().await.unwrap(),
        Some(EvictionRisk::AllKeys)
    );
    let volatile =
        RedisServer::start(&["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"]);
    let s = connect(&volatile.url()).await;
    assert_eq!(
        s.eviction_risk().await.unwrap(),
        Some(EvictionRisk::KeysWithTtl)
    );
    let s = connect(&common::shared().url()).await;
    assert_eq!(s.eviction_risk().await.unwrap(), Some(EvictionRisk::None));
    // A server that refuses CONFIG (renamed away, as managed services do): unknown,
    // not an error, and connecting still works.
    let locked = RedisServer::start(&["--rename-command", "CONFIG", ""]);
    let s = connect(&locked.url()).await;
    assert_eq!(s.eviction_risk().await.unwrap(), None);
}

#[tokio::test]
async fn focus_list_reads_a_large_scope_in_bounded_pages() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    const N: usize = 1500;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..10 {
        let s = s.clone();
        tasks.spawn(async move {
            for i in (t..N).step_by(10) {
                let k = FocusKey::new("big", format!("doc{i:05}")).unwrap();
                s.put(&k, Bytes::from(format!("v{i}")), PutMode::Overwrite, None)
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task");
    }
    // A dead index entry is dropped on the way.
    FocusStore::delete(&s, &FocusKey::new("big", "doc00007").unwrap())
        .await
        .unwrap();
    server.cli(&["SADD", &s.layout().focus_index("big"), "ghost"]);
    let before = s.round_trips().round_trips;
    let docs = FocusStore::list(&s, "big").await.unwrap();
    let trips = s.round_trips().round_trips - before;
    assert_eq!(docs.len(), N - 1);
    assert!(
        docs.windows(2).all(|w| w[0].key.name() < w[1].key.name()),
        "sorted, no duplicates"
    );
    assert_eq!(docs[0].value, Bytes::from_static(b"v0"));
    assert!(
        trips >= 3,
        "{N} documents are read in several pages, not one script ({trips})"
    );
    assert_eq!(
        server
            .cli(&["SISMEMBER", &s.layout().focus_index("big"), "ghost"])
            .trim(),
        "0"
    );
}

// ---------------------------------------------------------------- item 11

/// A stored message whose JSON holds a user's text where another type belongs: the
/// load is a `Decode` error naming the key, and no error path shows the text (serde's
/// own message would quote it).
#[tokio::test]
async fn a_malformed_stored_message_is_a_decode_error_that_never_shows_it() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let k = skey("leak");
    s.append_message(&k, NewMessage::user("one")).await.unwrap();
    let msgs = format!("{}:msgs", s.layout().session_base(&k));
    server.cli(&[
        "RPUSH",
        &msgs,
        r#"2:{"role":"+5511987654321","content":"+5511987654321"}"#,
    ]);
    let err = s
        .load(&k)
        .await
        .expect_err("a malformed message fails the load");
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let shown = format!(
        "{err} {err:?} {:?}",
        std::error::Error::source(&err).map(|e| e.to_string())
    );
    assert!(
        !shown.contains("5511987654321"),
        "the stored text leaked: {shown}"
    );
    assert!(shown.contains("msgs"), "the error names the key: {shown}");
}
