//! The facade's API for apps (issue 14): layers wrap what `Stores` hands out
//! (`Arc<dyn Trait>`, `Box<dyn Trait>`), a tiered cache in `Stores::cache` gives the
//! typed `get_or_load` its single flight, `Stores::instrumented` measures every
//! store in one snapshot, and `round_trips` / `server_summary` report on Redis — on
//! memory and on a throwaway redis-server this test starts (never 6379).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chatstate::{
    BackendKind, CacheHandles, CacheKey, Codec, Config, CounterHandles, CounterSink, FocusHandles,
    Instrumented, KvCacheExt, NewMessage, SessionKey, SessionStore, SessionStoreExt, Stores,
};

use common::config;

fn memory_config() -> Config {
    Config {
        backend: BackendKind::Memory,
        ..Config::default()
    }
}

fn redis_config() -> Config {
    config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &common::shared().url()),
        ("CHATSTATE_KEY_PREFIX", &common::unique_prefix()),
    ])
}

/// A layer wraps the trait objects the facade hands out, and boxes work too.
#[tokio::test]
async fn layers_wrap_the_facades_trait_objects() {
    let stores = Stores::open(&memory_config()).await.unwrap();
    let cache = Instrumented::new(stores.cache.clone());
    let key = CacheKey::new("customers", "42").unwrap();
    cache
        .set_value(&key, &"Ana", None, Codec::Json)
        .await
        .unwrap();
    let ana: Option<String> = cache.get_value(&key, Codec::Json).await.unwrap();
    assert_eq!(ana.as_deref(), Some("Ana"));
    let snap = cache.snapshot();
    assert_eq!(
        (snap.hits, snap.misses),
        (1, 0),
        "the wrapper measured the read"
    );

    let boxed: Box<dyn SessionStore> = Box::new(stores.sessions.clone());
    let who = SessionKey::new("acme", "whatsapp", "+5511999990000").unwrap();
    boxed
        .append_message(&who, NewMessage::user("oi"))
        .await
        .unwrap();
    assert_eq!(
        stores
            .sessions
            .load(&who)
            .await
            .unwrap()
            .unwrap()
            .messages
            .len(),
        1,
        "a Box<Arc<dyn SessionStore>> writes to the same store"
    );
    let counters: Box<dyn CounterSink> = Box::new(stores.counters.clone());
    let family = Arc::new(counters).family("messages").unwrap();
    assert_eq!(family.add(3).await.unwrap(), 3);
}

/// Twenty concurrent typed `get_or_load`s of one missing key through
/// `stores.cache` (an `Arc<dyn KvCache>` over a tiered cache) run the loader once,
/// and later calls answer from the local tier.
async fn single_flight_through_the_typed_call(config: Config) {
    let stores = Stores::open(&config)
        .await
        .unwrap()
        .with_tiered_cache(&config);
    let calls = Arc::new(AtomicUsize::new(0));
    let customers = stores
        .cache
        .namespace("customers")
        .unwrap()
        .codec(Codec::Json);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (customers, calls) = (customers.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            customers
                .get_or_load("42", || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok(("Ana".to_string(), 31u8))
                })
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), ("Ana".to_string(), 31));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one loader for 20 misses");
    let hits_before = stores.tiered().unwrap().stats().local_hits;
    let again: (String, u8) = customers
        .get_or_load("42", || async { panic!("a hit must not load") })
        .await
        .unwrap();
    assert_eq!(again.0, "Ana");
    assert_eq!(
        stores.tiered().unwrap().stats().local_hits,
        hits_before + 1,
        "answered by the local tier"
    );
    // The many form goes through the tiered cache too: local hits first.
    let got: Vec<Option<(String, u8)>> = customers
        .get_many_or_load(&["42", "43"], |missing| async move {
            assert_eq!(missing, vec!["43".to_string()]);
            Ok(vec![("43".to_string(), ("Bruno".to_string(), 40u8))])
        })
        .await
        .unwrap();
    assert_eq!(got[1].as_ref().map(|c| c.1), Some(40));
}

#[tokio::test]
async fn tiered_cache_in_stores_gives_the_typed_call_single_flight_on_memory() {
    single_flight_through_the_typed_call(memory_config()).await;
}

#[tokio::test]
async fn tiered_cache_in_stores_gives_the_typed_call_single_flight_on_redis() {
    single_flight_through_the_typed_call(redis_config()).await;
}

/// One snapshot for every store; the tiered cache inside keeps its single flight.
#[tokio::test]
async fn instrumented_stores_record_every_store_in_one_snapshot() {
    let config = memory_config();
    let stores = Stores::open(&config)
        .await
        .unwrap()
        .with_tiered_cache(&config)
        .instrumented()
        .instrumented(); // twice changes nothing
    let who = SessionKey::new("acme", "whatsapp", "+5511999990000").unwrap();
    stores
        .sessions
        .append_message(&who, NewMessage::user("oi"))
        .await
        .unwrap();
    stores
        .focus
        .scope("flow")
        .unwrap()
        .put("step", &1)
        .await
        .unwrap();
    stores
        .counters
        .family("messages")
        .unwrap()
        .add(1)
        .await
        .unwrap();
    let customers = stores.cache.namespace("customers").unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let loads = loads.clone();
        let _: String = customers
            .get_or_load("1", || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok("Ana".to_string())
            })
            .await
            .unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let m = stores.metrics().unwrap();
    let count = |store: &str, op: &str| {
        m.ops
            .iter()
            .filter(|o| o.store == store && o.op == op)
            .map(|o| o.count)
            .sum::<u64>()
    };
    assert_eq!(count("sessions", "append_messages"), 1);
    assert_eq!(count("focus", "put"), 1);
    assert_eq!(count("counters", "add"), 1);
    assert_eq!(
        count("cache", "get_or_load"),
        2,
        "counted once each, not twice"
    );
    assert_eq!((m.hits, m.misses), (1, 1), "a miss that loaded, then a hit");
    assert_eq!(stores.round_trips(), None, "no Redis");
    assert_eq!(stores.server_summary().await.unwrap(), None);
}

/// On Redis: round trips counted, the server described, and a handle's call costs
/// what the plain call costs (one round trip).
#[tokio::test]
async fn redis_round_trips_and_server_summary_from_stores() {
    let stores = Stores::open(&redis_config()).await.unwrap();
    let summary = stores.server_summary().await.unwrap().unwrap();
    assert!(summary.version.starts_with('7'), "{summary:?}");
    assert_eq!(summary.role, "master");
    assert!(summary.connected_clients >= 1);
    assert!(summary.used_memory_bytes > 0);
    assert!(!summary.maxmemory_policy.is_empty());

    let customers = stores.cache.namespace("customers").unwrap();
    // Once first: a script's first use may cost a NOSCRIPT and a resend.
    customers
        .set_many_with_ttls(&[("0", "warm", None)])
        .await
        .unwrap();
    let before = stores.round_trips().unwrap().round_trips;
    customers
        .set_many_with_ttls(&[
            ("1", "Ana", Some(Duration::from_secs(60))),
            ("2", "Bruno", Some(Duration::from_secs(3600))),
        ])
        .await
        .unwrap();
    assert_eq!(
        stores.round_trips().unwrap().round_trips - before,
        1,
        "a many-set with a TTL per entry is one round trip"
    );
    let short = customers.ttl_of("1").await.unwrap().unwrap();
    let long = customers.ttl_of("2").await.unwrap().unwrap();
    assert!(short <= Duration::from_secs(60) && long > Duration::from_secs(60));
}

/// `read_batch` through the local focus tier answers the documents in the order
/// asked, held ones from the tier and the rest from the store (a missing one as
/// `None`), and keeps what it read: the next batch reads none from the store.
#[tokio::test]
async fn read_batch_mixes_held_and_read_focus_documents_in_order() {
    use bytes::Bytes;
    use chatstate::{BatchReads, FocusKey, FocusStore, PutMode};
    let config = memory_config();
    let stores = Stores::open(&config)
        .await
        .unwrap()
        .with_local_sessions(&config);
    let local = stores.local_focus().unwrap();
    let key = |n: &str| FocusKey::new("acme:+5511", n).unwrap();
    let (a, b, c, gone) = (key("a"), key("b"), key("c"), key("gone"));
    // `a` and `c` through the tier (held); `b` straight into the store below it.
    for k in [&a, &c] {
        stores
            .focus
            .put(
                k,
                Bytes::from(k.name().to_string()),
                PutMode::Overwrite,
                None,
            )
            .await
            .unwrap();
    }
    local
        .inner()
        .put(&b, Bytes::from_static(b"b"), PutMode::Overwrite, None)
        .await
        .unwrap();
    let reads = BatchReads::new()
        .focus(a.clone())
        .focus(b.clone())
        .focus(gone.clone())
        .focus(c.clone());
    let values = |read: &chatstate::BatchRead| -> Vec<Option<Vec<u8>>> {
        read.focus
            .iter()
            .map(|d| d.as_ref().map(|d| d.value.to_vec()))
            .collect()
    };
    let want = vec![
        Some(b"a".to_vec()),
        Some(b"b".to_vec()),
        None,
        Some(b"c".to_vec()),
    ];
    let first = stores.read_batch(&reads).await.unwrap();
    assert_eq!(values(&first), want);
    let before = local.stats();
    assert_eq!((before.hits, before.misses), (2, 2));
    let second = stores.read_batch(&reads).await.unwrap();
    assert_eq!(values(&second), want);
    let after = local.stats();
    assert_eq!(
        (after.hits - before.hits, after.misses - before.misses),
        (3, 1),
        "b was kept by the first batch; only the missing document is read again"
    );
}
