//! What is particular to Redis: round trips and command counts (checked against the
//! server's INFO commandstats), bad data written by others, auth, a server that goes
//! away and comes back, timeouts. Each test that reads server-wide statistics or
//! stops a server starts its own throwaway server.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    BatchReads, CacheKey, Codec, CounterBatch, CounterKey, CounterSink, ErrorKind, Expected,
    FocusKey, FocusStore, KvCache, KvCacheExt, NewMessage, PutMode, ReadBatch, RedisUrl,
    SessionKey, SessionPatch, SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_redis::RedisStore;
use common::RedisServer;

async fn connect(url: &str) -> RedisStore {
    RedisStore::builder(RedisUrl::parse(url).expect("a valid URL"))
        .prefix(common::unique_prefix())
        .connect()
        .await
        .expect("connects to the test server")
}

fn skey(user: &str) -> SessionKey {
    SessionKey::new("acme", "whatsapp", user).expect("a valid key")
}

/// The store's own count of round trips for one call.
macro_rules! trips {
    ($store:expr, $call:expr) => {{
        let before = $store.round_trips().round_trips;
        $call.await.expect("the operation succeeds");
        $store.round_trips().round_trips - before
    }};
}

#[tokio::test]
async fn every_logical_operation_is_one_round_trip() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let k = skey("u1");
    let ck: Vec<CacheKey> = (0..50)
        .map(|i| CacheKey::new("customers", i.to_string()).unwrap())
        .collect();
    let counters: Vec<CounterKey> = (0..1000)
        .map(|i| {
            CounterKey::new(format!("c{}", i % 7))
                .unwrap()
                .with_labels(chatstate_core::Labels::from_pairs([("n", i.to_string())]).unwrap())
        })
        .collect();
    // Warm-up: the server learns every script once (that first use costs one more).
    s.append_message(&k, NewMessage::user("warm"))
        .await
        .unwrap();
    s.load(&k).await.unwrap();
    s.update(&k, SessionPatch::new().summary("s"), Expected::Any)
        .await
        .unwrap();
    s.touch(&k).await.unwrap();
    let lease = s
        .try_lock(&k, "warm", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    s.extend_lock(&lease, Duration::from_secs(5)).await.unwrap();
    s.release_lock(&lease).await.unwrap();
    s.apply(&CounterBatch::new()).await.unwrap();
    let f = FocusKey::new("flow", "x").unwrap();
    s.put(&f, Bytes::from_static(b"v"), PutMode::Overwrite, None)
        .await
        .unwrap();
    FocusStore::list(&s, "flow").await.unwrap();
    s.create(&skey("warm2"), SessionPatch::new()).await.unwrap();
    SessionStore::delete(&s, &skey("warm2")).await.unwrap();
    KvCache::set(&s, &ck[0], Bytes::from_static(b"w"), None)
        .await
        .unwrap();
    KvCache::get_many(&s, &ck[..1]).await.unwrap();
    let phones: Vec<CacheKey> = (0..3)
        .map(|i| CacheKey::new("phone", format!("+551199999000{i}")).unwrap())
        .collect();
    s.set_with_aliases(&ck[1], Bytes::from_static(b"w"), None, &phones)
        .await
        .unwrap();
    s.get_by_alias(&phones[0]).await.unwrap();
    KvCache::delete(&s, &ck[1]).await.unwrap();

    let messages: Vec<NewMessage> = (0..5).map(|i| NewMessage::user(format!("m{i}"))).collect();
    let entries: Vec<(CacheKey, Bytes)> = ck
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"v")))
        .collect();
    let mut batch = CounterBatch::new();
    for c in &counters {
        batch.add(c, 1);
    }
    let many_sessions: Vec<SessionKey> = (0..20).map(|i| skey(&format!("u{i}"))).collect();
    assert_eq!(
        trips!(s, s.append_messages(&k, messages)),
        1,
        "append (5 messages)"
    );
    assert_eq!(trips!(s, s.load(&k)), 1, "load with messages");
    assert_eq!(
        trips!(s, SessionStore::get_many(&s, &many_sessions)),
        1,
        "get_many of 20 sessions"
    );
    assert_eq!(
        trips!(s, s.create(&skey("new"), SessionPatch::new().focus("f"))),
        1,
        "create"
    );
    assert_eq!(
        trips!(s, s.get_or_create(&skey("new2"))),
        1,
        "get_or_create"
    );
    assert_eq!(
        trips!(
            s,
            s.update(&k, SessionPatch::new().paused(true), Expected::Any)
        ),
        1,
        "update"
    );
    assert_eq!(trips!(s, s.touch(&k)), 1, "touch");
    assert_eq!(
        trips!(s, SessionStore::delete(&s, &skey("new2"))),
        1,
        "delete"
    );
    let before = s.round_trips().round_trips;
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.round_trips().round_trips - before,
        1,
        "lock acquire with fence"
    );
    assert_eq!(
        trips!(s, s.extend_lock(&lease, Duration::from_secs(5))),
        1,
        "lock extend"
    );
    assert_eq!(trips!(s, s.release_lock(&lease)), 1, "lock release");
    assert_eq!(
        trips!(s, s.set_many(entries.clone(), None)),
        1,
        "set_many of 50 with TTL"
    );
    assert_eq!(trips!(s, KvCache::get_many(&s, &ck)), 1, "get_many of 50");
    assert_eq!(trips!(s, s.delete_many(&ck)), 1, "delete_many of 50");
    assert_eq!(
        trips!(
            s,
            s.set_with_aliases(&ck[2], Bytes::from_static(b"c"), None, &phones)
        ),
        1,
        "set_with_aliases (3 aliases)"
    );
    assert_eq!(trips!(s, s.get_by_alias(&phones[1])), 1, "get_by_alias");
    assert_eq!(
        trips!(s, KvCache::set(&s, &ck[2], Bytes::from_static(b"d"), None)),
        1,
        "set of an aliased entry"
    );
    assert_eq!(
        trips!(s, KvCache::delete(&s, &ck[2])),
        1,
        "delete of an aliased entry"
    );
    assert_eq!(trips!(s, s.apply(&batch)), 1, "flush of 1000 counters");
    assert_eq!(trips!(s, s.add(&counters[0], 1)), 1, "counter add");
    assert_eq!(
        trips!(s, CounterSink::get_many(&s, &counters[..100])),
        1,
        "counter get_many"
    );
    assert_eq!(
        trips!(
            s,
            s.put(&f, Bytes::from_static(b"w"), PutMode::IfVersion(1), None)
        ),
        1,
        "focus CAS"
    );
    assert_eq!(trips!(s, FocusStore::list(&s, "flow")), 1, "focus list");
    let page_trips = trips!(s, SessionStore::list(&s, "acme", None, 10));
    assert!(
        page_trips <= 3,
        "a listing page is at most 3 round trips, was {page_trips}"
    );
}

fn reads_processed(server: &RedisServer) -> u64 {
    server
        .cli(&["INFO", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_reads_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_reads_processed")
}

fn commandstats(server: &RedisServer) -> BTreeMap<String, u64> {
    server
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_ascii_uppercase(), calls.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn command_counts_match_the_server_commandstats() {
    let server = RedisServer::start(&[]);
    let s = connect(&server.url()).await;
    let k = skey("u");
    let ck: Vec<CacheKey> = (0..10)
        .map(|i| CacheKey::new("ns", i.to_string()).unwrap())
        .collect();
    // Warm the scripts, then start counting on both sides.
    s.append_message(&k, NewMessage::user("x")).await.unwrap();
    s.load(&k).await.unwrap();
    s.apply(&CounterBatch::new()).await.unwrap();
    s.set_many(vec![(ck[0].clone(), Bytes::from_static(b"w"))], None)
        .await
        .unwrap();
    KvCache::get_many(&s, &ck).await.unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    let ours_before = s.commands_by_name();
    let total_before = s.round_trips();
    let reads_before = reads_processed(&server);

    for i in 0..10 {
        s.append_message(&k, NewMessage::user(format!("m{i}")))
            .await
            .unwrap();
        s.load(&k).await.unwrap();
    }
    for _ in 0..3 {
        s.set_many(
            ck.iter()
                .map(|k| (k.clone(), Bytes::from_static(b"v")))
                .collect(),
            None,
        )
        .await
        .unwrap();
        KvCache::get_many(&s, &ck).await.unwrap();
    }
    for i in 0..4 {
        let mut b = CounterBatch::new();
        b.add(&CounterKey::new(format!("c{i}")).unwrap(), 1);
        s.apply(&b).await.unwrap();
    }
    // The server's own count of requests read, independent of ours: each round trip
    // is one read; redis-cli's INFO between the two readings adds 2 (its close, and
    // the second INFO itself). (Measured before the prefix clear: SCAN + UNLINK show
    // 2 more reads than requests on this server, which their command counts below
    // do not; left unexplained.)
    let reads = reads_processed(&server);
    let trips = s.round_trips().round_trips - total_before.round_trips;
    assert_eq!(
        reads - reads_before - 2,
        trips,
        "the server read as many requests as the store counted round trips"
    );
    s.clear_prefix("ns", "").await.unwrap();

    let ours: BTreeMap<String, u64> = s
        .commands_by_name()
        .into_iter()
        .map(|(name, n)| {
            let before = ours_before.get(&name).copied().unwrap_or(0);
            (name, n - before)
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let server_stats = commandstats(&server);
    // Commands the scripts never call themselves: the server's count is exactly ours.
    for name in ["EVALSHA", "SCAN", "UNLINK"] {
        assert_eq!(
            server_stats.get(name).copied().unwrap_or(0),
            ours.get(name).copied().unwrap_or(0),
            "{name}: server counted {server_stats:?}, we counted {ours:?}"
        );
    }
    // Every command we sent was seen by the server (scripts add their own calls).
    for (name, n) in &ours {
        assert!(server_stats.get(name).copied().unwrap_or(0) >= *n, "{name}");
    }
    let total = s.round_trips();
    assert_eq!(
        total.commands - total_before.commands,
        ours.values().sum::<u64>()
    );
    assert_eq!(
        ours.get("EVALSHA"),
        Some(&(10 + 4 + 3)),
        "appends, flushes and set_many are scripts"
    );
    assert_eq!(
        (
            ours.get("MULTI"),
            ours.get("HGETALL"),
            ours.get("LRANGE"),
            ours.get("EXEC")
        ),
        (Some(&10), Some(&10), Some(&10), Some(&10)),
        "a load is MULTI, HGETALL, LRANGE, EXEC in one pipeline"
    );
    assert_eq!(
        (ours.get("MGET"), ours.get("EXISTS")),
        (Some(&3), Some(&3)),
        "get_many without a key of another type is MGET + EXISTS in one pipeline"
    );
    assert_eq!(
        server_stats.get("SET").copied().unwrap_or(0) - ours.get("SET").copied().unwrap_or(0),
        30 + 4,
        "3 set_many of 10 run 30 SET PX in their scripts (and 4 flushes record their ids)"
    );
}

/// The session read (`load`, and the read batch's session part) is a `MULTI`/`EXEC`
/// pipeline, whose failing command reaches the client as `EXEC`'s error without its
/// key; every part of a read batch still names its own key when it holds another
/// type, and nothing is written.
#[tokio::test]
async fn session_reads_and_read_batches_name_the_exact_key_of_another_type() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let k = skey("window-of-another-type");
    s.append_message(&k, NewMessage::user("hello"))
        .await
        .unwrap();
    let msgs = format!("{}:msgs", s.layout().session_base(&k));
    server.cli(&["DEL", &msgs]);
    server.cli(&["SET", &msgs, "a plain string"]);
    let by_load = s.load(&k).await.map(|_| ()).unwrap_err();
    let by_batch = s
        .read_batch(&BatchReads::new().session(k.clone()))
        .await
        .map(|_| ())
        .unwrap_err();
    for (what, err) in [("load", by_load), ("read_batch", by_batch)] {
        assert_eq!(err.kind(), ErrorKind::WrongType, "{what}: {err}");
        assert_eq!(
            err.key(),
            Some(msgs.as_str()),
            "{what} names the window: {err}"
        );
    }

    // A focus document and a cache entry of another type, behind a fine session.
    let fine = skey("fine-session");
    s.append_message(&fine, NewMessage::user("hi"))
        .await
        .unwrap();
    let doc = FocusKey::new("scope", "doc").unwrap();
    let doc_key = s.layout().focus(&doc);
    server.cli(&["SET", &doc_key, "not a hash"]);
    let entry = CacheKey::new("ns", "a-list").unwrap();
    let entry_key = s.layout().cache(&entry);
    server.cli(&["RPUSH", &entry_key, "x"]);
    for (what, reads, named) in [
        ("the document", BatchReads::new().focus(doc), &doc_key),
        ("the entry", BatchReads::new().cache(entry), &entry_key),
    ] {
        let err = s
            .read_batch(&reads.session(fine.clone()))
            .await
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WrongType, "{what}: {err}");
        assert_eq!(err.key(), Some(named.as_str()), "names {what}: {err}");
    }
    assert_eq!(server.cli(&["GET", &msgs]).trim(), "a plain string");
    assert_eq!(server.cli(&["GET", &doc_key]).trim(), "not a hash");
}

#[tokio::test]
async fn keys_of_the_wrong_type_are_wrong_type_errors_naming_the_key() {
    let server = common::shared();
    let prefix = common::unique_prefix();
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(prefix.clone())
        .connect()
        .await
        .unwrap();
    let k = skey("victim");
    let base = s.layout().session_base(&k);
    server.cli(&["SET", &format!("{base}:ctx"), "a plain string"]);
    for (what, err) in [
        ("load", s.load(&k).await.map(|_| ()).unwrap_err()),
        (
            "append",
            s.append_message(&k, NewMessage::user("x"))
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "update",
            s.update(&k, SessionPatch::new().summary("x"), Expected::Any)
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
        (
            "get",
            SessionStore::get(&s, &k).await.map(|_| ()).unwrap_err(),
        ),
        (
            // A pipeline of one HGETALL per key: the error names the failing
            // command's key, not the first key's.
            "get_many",
            SessionStore::get_many(&s, &[skey("fine"), k.clone()])
                .await
                .map(|_| ())
                .unwrap_err(),
        ),
    ] {
        assert_eq!(err.kind(), ErrorKind::WrongType, "{what}: {err}");
        assert!(
            err.to_string().contains("victim"),
            "{what} names the key: {err}"
        );
    }
    assert_eq!(
        server.cli(&["GET", &format!("{base}:ctx")]).trim(),
        "a plain string",
        "nothing was overwritten"
    );
    let ck = CacheKey::new("ns", "k").unwrap();
    server.cli(&["HSET", &s.layout().cache(&ck), "f", "v"]);
    let err = KvCache::get(&s, &ck).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    // An alias key of another type: the aliased write is refused before it writes
    // anything, and resolving it is a WrongType error naming it.
    let entry = CacheKey::new("ns", "aliased").unwrap();
    let alias = CacheKey::new("phone", "taken").unwrap();
    let alias_key = s.layout().cache_alias(&alias);
    server.cli(&["HSET", &alias_key, "f", "v"]);
    let err = s
        .set_with_aliases(
            &entry,
            Bytes::from_static(b"v"),
            None,
            std::slice::from_ref(&alias),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    assert!(err.to_string().contains(&alias_key), "{err}");
    assert_eq!(
        KvCache::get(&s, &entry).await.unwrap(),
        None,
        "nothing written"
    );
    let err = s.get_by_alias(&alias).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType, "{err}");
    // An alias key holding something that is no entry's key is a Decode error.
    let odd = CacheKey::new("phone", "odd").unwrap();
    server.cli(&["SET", &s.layout().cache_alias(&odd), "not a cache key"]);
    let err = s.get_by_alias(&odd).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let counter = CounterKey::new("hits").unwrap();
    server.cli(&["SET", &s.layout().counter_hash("hits", None), "x"]);
    assert_eq!(
        s.add(&counter, 1).await.unwrap_err().kind(),
        ErrorKind::WrongType
    );
    let mut b = CounterBatch::new();
    b.add(&counter, 1);
    assert_eq!(s.apply(&b).await.unwrap_err().kind(), ErrorKind::WrongType);
    assert_eq!(
        s.apply(&b).await.unwrap_err().kind(),
        ErrorKind::WrongType,
        "the refused batch was not recorded"
    );

    // The tenant index is checked before any write too: a session write would
    // otherwise write the record and fail at the index (a partial write).
    let idx_tenant = "idx-tenant";
    let index = s.layout().session_index(idx_tenant);
    server.cli(&["SET", &index, "not a zset"]);
    let other = SessionKey::new(idx_tenant, "whatsapp", "someone").unwrap();
    let other_ctx = format!("{}:ctx", s.layout().session_base(&other));
    for (what, err) in [
        (
            "append",
            s.append_message(&other, NewMessage::user("x"))
                .await
                .map(|_| ()),
        ),
        ("touch", s.touch(&other).await.map(|_| ())),
        ("delete", SessionStore::delete(&s, &other).await.map(|_| ())),
    ] {
        let err = err.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::WrongType, "{what}: {err}");
        assert!(
            err.to_string().contains(&index),
            "{what} names the index: {err}"
        );
    }
    assert_eq!(
        server.cli(&["EXISTS", &other_ctx]).trim(),
        "0",
        "no session record was written"
    );
}

#[tokio::test]
async fn undecodable_data_is_a_decode_error_not_a_panic() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let k = skey("garbled");
    s.append_message(&k, NewMessage::user("ok")).await.unwrap();
    let base = s.layout().session_base(&k);
    server.cli(&["RPUSH", &format!("{base}:msgs"), "not-a-message"]);
    assert_eq!(s.load(&k).await.unwrap_err().kind(), ErrorKind::Decode);
    server.cli(&["HSET", &format!("{base}:ctx"), "version", "banana"]);
    assert_eq!(
        SessionStore::get(&s, &k).await.unwrap_err().kind(),
        ErrorKind::Decode
    );

    let ck = CacheKey::new("ns", "bytes").unwrap();
    server.cli(&["SET", &s.layout().cache(&ck), "\u{1}\u{2}garbage"]);
    let err = s
        .get_value::<Vec<String>>(&ck, Codec::Bincode)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    let counter = CounterKey::new("weird").unwrap();
    server.cli(&["HSET", &s.layout().counter_hash("weird", None), "", "NaN"]);
    assert_eq!(
        CounterSink::get(&s, &counter).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
}

#[tokio::test]
async fn an_oversize_stored_value_is_refused_on_read() {
    let server = common::shared();
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .settings(StoreSettings {
            max_value_bytes: 1024,
            ..StoreSettings::default()
        })
        .connect()
        .await
        .unwrap();
    let ck = CacheKey::new("ns", "huge").unwrap();
    server.cli(&["SET", &s.layout().cache(&ck), &"x".repeat(4096)]);
    let err = KvCache::get(&s, &ck).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("4096"), "{err}");
    let err = s
        .set(&ck, Bytes::from(vec![0u8; 1025]), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[tokio::test]
async fn acl_user_and_password_work_and_the_password_never_shows() {
    let server = RedisServer::start(&[
        "--requirepass",
        "admin-s3cret",
        "--user",
        "bot",
        "on",
        ">bot-s3cret",
        "~*",
        "&*",
        "+@all",
    ]);
    let good = format!("redis://bot:bot-s3cret@127.0.0.1:{}", server.port);
    let s = connect(&good).await;
    s.append_message(&skey("u"), NewMessage::user("hi"))
        .await
        .unwrap();
    assert_eq!(s.load(&skey("u")).await.unwrap().unwrap().messages.len(), 1);
    let shown = format!("{s:?}");
    assert!(!shown.contains("bot-s3cret"), "{shown}");
    assert!(shown.contains("127.0.0.1"), "{shown}");

    for bad in [
        format!("redis://bot:wrong-pass@127.0.0.1:{}", server.port),
        format!("redis://127.0.0.1:{}", server.port),
    ] {
        let r = RedisStore::builder(RedisUrl::parse(&bad).unwrap())
            .connect()
            .await;
        match r {
            Ok(store) => {
                // Some servers accept the connection and refuse the first command.
                let err = store.load(&skey("u")).await.unwrap_err();
                assert!(!err.to_string().contains("wrong-pass"), "{err}");
                assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            }
            Err(err) => {
                assert_eq!(err.kind(), ErrorKind::Config, "{err}");
                assert!(!err.to_string().contains("wrong-pass"), "{err}");
                assert!(!format!("{err:?}").contains("wrong-pass"), "{err:?}");
            }
        }
    }
}

#[tokio::test]
async fn redis_down_is_unavailable_and_the_store_recovers_after_a_restart() {
    // Nothing listens here: connecting is a clear, temporary error.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err =
        RedisStore::builder(RedisUrl::parse(&format!("redis://:pw-x@127.0.0.1:{port}")).unwrap())
            .connect_timeout(Duration::from_millis(500))
            .fail_fast(true)
            .connect()
            .await
            .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(!err.to_string().contains("pw-x"), "{err}");

    let mut server = RedisServer::start(&[]);
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let k = skey("u");
    s.append_message(&k, NewMessage::user("before"))
        .await
        .unwrap();
    let port = server.port;
    server.stop();
    let err = s
        .append_message(&k, NewMessage::user("during"))
        .await
        .unwrap_err();
    assert!(
        err.is_temporary(),
        "a stopped server is a temporary error: {err}"
    );

    // The same port again: the connection comes back by itself.
    let _restarted = common::Restarted::on(port);
    let mut recovered = false;
    for _ in 0..50 {
        if s.append_message(&k, NewMessage::user("after"))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the store reconnects after a restart");
    // No persistence: the restarted server starts empty, the new append created it.
    assert_eq!(
        s.load(&k)
            .await
            .unwrap()
            .unwrap()
            .messages
            .last()
            .unwrap()
            .content,
        "after"
    );
}

#[tokio::test]
async fn a_slow_server_is_a_timeout() {
    let server = RedisServer::start(&[]);
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .command_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    s.get_or_create(&skey("u")).await.unwrap();
    // Pause every client for 2 s; our command must give up after 200 ms.
    server.cli(&["CLIENT", "PAUSE", "2000", "ALL"]);
    let started = std::time::Instant::now();
    let err = s.load(&skey("u")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.is_temporary());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "it gave up before the pause ended"
    );
}

#[tokio::test]
async fn every_key_has_a_ttl_except_counters_and_the_layout_is_readable() {
    let server = common::shared();
    let prefix = common::unique_prefix();
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).expect("url"))
        .prefix(prefix.clone())
        .connect()
        .await
        .expect("store");
    let k = skey("ttl");
    s.append_message(&k, NewMessage::user("x")).await.unwrap();
    s.update(&k, SessionPatch::new().summary("s"), Expected::Any)
        .await
        .unwrap();
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    s.put(
        &FocusKey::new("flow", "doc").unwrap(),
        Bytes::from_static(b"v"),
        PutMode::Create,
        None,
    )
    .await
    .unwrap();
    KvCache::set_with_aliases(
        &s,
        &CacheKey::new("ns", "k").unwrap(),
        Bytes::from_static(b"v"),
        None,
        &[CacheKey::new("phone", "+5511").unwrap()],
    )
    .await
    .unwrap();
    let mut b = CounterBatch::new();
    b.add(&CounterKey::new("hits").unwrap(), 1);
    s.apply(&b).await.unwrap();
    s.release_lock(&lease).await.unwrap();
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.fence, 2);

    let keys: Vec<String> = server
        .cli(&["--scan", "--pattern", &format!("{prefix}:*")])
        .lines()
        .map(str::to_string)
        .collect();
    let want = [
        format!("{prefix}:sess:{{acme:whatsapp:ttl}}:ctx"),
        format!("{prefix}:sess:{{acme:whatsapp:ttl}}:msgs"),
        format!("{prefix}:sess:{{acme:whatsapp:ttl}}:lock:job"),
        format!("{prefix}:sess:{{acme:whatsapp:ttl}}:fence:job"),
        format!("{prefix}:sessidx:{{acme}}"),
        format!("{prefix}:sessidx:{{acme}}:exp"),
        format!("{prefix}:focus:{{flow}}:doc"),
        format!("{prefix}:focusidx:{{flow}}"),
        format!("{prefix}:kv:ns:k"),
        format!("{prefix}:aliases:{{{prefix}:kv:ns:k}}"),
        format!("{prefix}:alias:phone:+5511"),
        format!("{prefix}:cnt:{{counters}}:hits"),
        format!("{prefix}:cnt:{{counters}}:batch:{}", b.id()),
    ];
    let mut sorted = keys.clone();
    sorted.sort();
    let mut want_sorted = want.to_vec();
    want_sorted.sort();
    assert_eq!(sorted, want_sorted, "the documented layout");
    for key in keys {
        let pttl: i64 = server.cli(&["PTTL", &key]).trim().parse().expect("a PTTL");
        if key.contains(":cnt:{counters}:hits") {
            assert_eq!(pttl, -1, "counters are kept until deleted");
        } else {
            assert!(pttl > 0, "{key} has a TTL (PTTL {pttl})");
        }
    }
    assert_eq!(
        server
            .cli(&[
                "HGET",
                &format!("{prefix}:sess:{{acme:whatsapp:ttl}}:ctx"),
                "summary"
            ])
            .trim(),
        "s",
        "session fields are readable in redis-cli"
    );
    assert_eq!(
        server
            .cli(&["GET", &format!("{prefix}:alias:phone:+5511")])
            .trim(),
        format!("{prefix}:kv:ns:k"),
        "an alias holds its entry's key, readable in redis-cli"
    );
    assert_eq!(
        server
            .cli(&[
                "SMEMBERS",
                &format!("{prefix}:aliases:{{{prefix}:kv:ns:k}}")
            ])
            .trim(),
        "phone:+5511",
        "an entry's alias set lists its aliases"
    );
}

#[tokio::test]
async fn touch_and_update_keep_a_session_listed() {
    let server = common::shared();
    let s = RedisStore::builder(RedisUrl::parse(&server.url()).expect("url"))
        .prefix(common::unique_prefix())
        .settings(StoreSettings {
            session_ttl: Duration::from_secs(2),
            ..StoreSettings::default()
        })
        .connect()
        .await
        .expect("store");
    let (a, bk) = (skey("a"), skey("b"));
    s.create(&a, SessionPatch::new()).await.unwrap();
    s.create(&bk, SessionPatch::new()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(s.touch(&a).await.unwrap());
    s.update(&bk, SessionPatch::new().summary("x"), Expected::Any)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let page = SessionStore::list(&s, "acme", None, 10).await.unwrap();
    assert_eq!(
        page.items.len(),
        2,
        "sessions kept alive by touch/update stay listed: {page:?}"
    );
    let huge = SessionStore::list(&s, "acme", None, usize::MAX)
        .await
        .unwrap();
    assert_eq!(huge.items.len(), 2, "a huge limit is fine");
}

#[tokio::test]
async fn counter_batches_are_exact_and_never_half_applied() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let (a, z) = (CounterKey::new("a").unwrap(), CounterKey::new("z").unwrap());
    let big: i64 = 100_000_000_000_000_001; // not representable as a double
    let mut b = CounterBatch::new();
    b.add(&a, 5);
    b.add(&z, big);
    s.apply(&b).await.unwrap();
    assert_eq!(
        CounterSink::get(&s, &z).await.unwrap(),
        big,
        "exact beyond 2^53"
    );
    let mut over = CounterBatch::new();
    over.add(&a, 1);
    over.add(&z, i64::MAX - 10);
    let err = s.apply(&over).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert_eq!(
        CounterSink::get(&s, &a).await.unwrap(),
        5,
        "nothing of the refused batch was applied"
    );
    let mut retry = CounterBatch::with_id(over.id());
    retry.add(&a, 1);
    assert_eq!(
        s.apply(&retry).await.unwrap(),
        chatstate_core::BatchOutcome::Applied,
        "a refused batch is not recorded as applied"
    );
    // A counter whose name says "overflow" is still a wrong-type error when it is one.
    let named = CounterKey::new("overflow_events").unwrap();
    server.cli(&[
        "SET",
        &s.layout().counter_hash("overflow_events", None),
        "x",
    ]);
    let mut wt = CounterBatch::new();
    wt.add(&named, 1);
    assert_eq!(s.apply(&wt).await.unwrap_err().kind(), ErrorKind::WrongType);
    // "hits@<day>" the name is not the "hits" counter of that day.
    let at = CounterKey::new("hits@1970-01-01").unwrap();
    let bucketed = CounterKey::new("hits")
        .unwrap()
        .in_bucket(chatstate_core::Bucket::Day(0));
    s.add(&at, 5).await.unwrap();
    assert_eq!(CounterSink::get(&s, &bucketed).await.unwrap(), 0);
}

#[tokio::test]
async fn a_flushed_script_cache_costs_one_extra_round_trip() {
    let server = RedisServer::start(&[]);
    let s = connect(&server.url()).await;
    let k = skey("u");
    s.append_message(&k, NewMessage::user("a")).await.unwrap();
    server.cli(&["SCRIPT", "FLUSH"]);
    assert_eq!(
        trips!(s, s.append_message(&k, NewMessage::user("b"))),
        2,
        "EVALSHA, then EVAL once"
    );
    assert_eq!(
        trips!(s, s.append_message(&k, NewMessage::user("c"))),
        1,
        "known again"
    );
    assert_eq!(
        s.load(&k).await.unwrap().unwrap().messages.len(),
        3,
        "nothing lost or doubled"
    );
}

#[tokio::test]
async fn broken_records_and_fences_are_refused_before_any_write() {
    let server = common::shared();
    let s = connect(&server.url()).await;
    let k = skey("broken");
    s.create(&k, SessionPatch::new().summary("old"))
        .await
        .unwrap();
    let base = s.layout().session_base(&k);
    server.cli(&["HDEL", &format!("{base}:ctx"), "version"]);
    assert!(
        s.update(&k, SessionPatch::new().summary("new"), Expected::Any)
            .await
            .is_err()
    );
    assert_eq!(
        server
            .cli(&["HGET", &format!("{base}:ctx"), "summary"])
            .trim(),
        "old",
        "the refused update wrote nothing"
    );
    server.cli(&["SET", &format!("{base}:fence:job"), "not-a-number"]);
    let err = s
        .try_lock(&k, "job", Duration::from_secs(30))
        .await
        .unwrap_err();
    // A string that is not a fencing number is a corrupt value, not another type.
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert_eq!(
        server.cli(&["EXISTS", &format!("{base}:lock:job")]).trim(),
        "0",
        "no orphan lock"
    );
    // Sub-millisecond leases round up to a millisecond instead of failing.
    let lease = s
        .try_lock(&skey("quick"), "job", Duration::from_micros(500))
        .await
        .unwrap();
    assert!(lease.is_some());
}

#[tokio::test]
async fn the_invalidation_bus_notices_a_silent_subscription() {
    use chatstate_core::{BusEvent, InvalidationBus};
    let server = RedisServer::start(&[]);
    let s = connect(&server.url()).await;
    let bus = chatstate_redis::RedisBus::new(&s).expect("bus");
    let mut rx = bus.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        first.expect("subscribed").expect("event"),
        BusEvent::Reset,
        "subscribing resets"
    );
    // The server stops answering (as a half-open connection would look): the ping
    // goes unanswered and the listener says it lost the subscription within ping
    // interval + timeout; once the server answers again, it resubscribes and resets.
    server.cli(&["CLIENT", "PAUSE", "15000", "ALL"]);
    let next = tokio::time::timeout(Duration::from_secs(12), rx.recv()).await;
    assert_eq!(
        next.expect("noticed in time").expect("event"),
        BusEvent::Lost
    );
    server.cli(&["CLIENT", "UNPAUSE"]);
    let back = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(
        back.expect("resubscribed in time").expect("event"),
        BusEvent::Reset
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opened_without_redis_connects_later_and_checks_the_eviction_policy() {
    use chatstate_core::BreakerState;
    let port = RedisServer::start(&[]).port; // started and stopped: nothing listens
    let s = RedisStore::builder(RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap())
        .prefix(common::unique_prefix())
        .connect_timeout(Duration::from_millis(300))
        .breaker(chatstate_core::BreakerConfig {
            open_for: Duration::from_millis(100),
            ..Default::default()
        })
        .connect()
        .await
        .expect("opens without Redis");
    assert_eq!(s.health().breaker, BreakerState::Open);
    assert_eq!(
        s.commands_by_name().get("CONFIG"),
        None,
        "nothing checked yet"
    );

    let _up = common::Restarted::on(port);
    let mut checked = false;
    for _ in 0..150 {
        if s.health().breaker == BreakerState::Closed && s.commands_by_name().contains_key("CONFIG")
        {
            checked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        checked,
        "the probe closed the breaker and the eviction policy was read: {:?} {:?}",
        s.health(),
        s.commands_by_name()
    );
    s.append_message(&skey("u"), NewMessage::user("served"))
        .await
        .unwrap();
}

/// A server demoted to a replica behind the same address (what a managed Redis's
/// failover behind one DNS name looks like to a client): its `READONLY` makes the
/// store open a new connection for the next command, instead of sending every
/// write down the old one until the socket dies.
#[tokio::test]
async fn a_readonly_reply_makes_the_next_command_use_a_new_connection() {
    let a = RedisServer::start(&[]);
    let b = RedisServer::start(&[]);
    let s = connect(&a.url()).await;
    let key = CacheKey::new("ns", "k").unwrap();
    KvCache::set(&s, &key, Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    let connections = |srv: &RedisServer| -> u64 {
        srv.cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_connections_received")
    };
    a.cli(&["REPLICAOF", "127.0.0.1", &b.port.to_string()]);
    let before = connections(&a);
    let err = KvCache::set(&s, &key, Bytes::from_static(b"2"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("READONLY"), "{err}");
    // Promoted back (the DNS name would now point at the new primary).
    a.cli(&["REPLICAOF", "NO", "ONE"]);
    KvCache::set(&s, &key, Bytes::from_static(b"3"), None)
        .await
        .unwrap();
    // One connection by the store, and one per redis-cli call after `before`
    // (the REPLICAOF NO ONE and this INFO).
    let opened = connections(&a) - before - 2;
    assert_eq!(
        opened, 1,
        "the store opened a new connection after READONLY"
    );
    assert_eq!(
        KvCache::get(&s, &key).await.unwrap().as_deref(),
        Some(&b"3"[..])
    );
}
