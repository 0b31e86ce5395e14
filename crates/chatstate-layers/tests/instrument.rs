//! The instrumentation layer over the memory backend and a real Redis: counts,
//! errors by kind, percentiles, hits and misses, reset; and a wrapped store still
//! passes for the store (it implements every trait the store does).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterKey, CounterSink, ErrorKind, KvCache, NewMessage, RedisUrl, SessionKey,
    SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_layers::Instrumented;
use chatstate_memory::MemoryStore;
use chatstate_redis::RedisStore;

async fn exercise<S>(store: &Instrumented<S>, backend: &str)
where
    S: KvCache + SessionStore + CounterSink,
{
    let hit = CacheKey::new("customers", "1").unwrap();
    let miss = CacheKey::new("customers", "2").unwrap();
    KvCache::set(store, &hit, Bytes::from_static(b"ana"), None)
        .await
        .unwrap();
    for _ in 0..3 {
        KvCache::get(store, &hit).await.unwrap();
    }
    KvCache::get(store, &miss).await.unwrap();
    KvCache::get_many(store, &[hit.clone(), miss.clone()])
        .await
        .unwrap();
    let err = KvCache::set(store, &hit, Bytes::from(vec![0u8; 2 * 1024 * 1024]), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    let k = SessionKey::new("t", "c", "u").unwrap();
    store
        .append_message(&k, NewMessage::user("oi"))
        .await
        .unwrap();
    store
        .add(&CounterKey::new("messages").unwrap(), 1)
        .await
        .unwrap();

    let snap = store.snapshot();
    let find = |op: &str, ns: &str| {
        snap.ops
            .iter()
            .find(|o| o.op == op && o.ns == ns && (!ns.is_empty() || o.store == "sessions"))
            .unwrap_or_else(|| panic!("{backend}: no {op}/{ns} in {snap:?}"))
            .clone()
    };
    let get = find("get", "customers");
    assert_eq!((get.count, get.hits, get.misses), (4, 3, 1), "{backend}");
    assert!(
        get.p50_us >= 1 && get.p50_us <= get.p95_us && get.p95_us <= get.p99_us,
        "{backend}: {get:?}"
    );
    let get_many = find("get_many", "customers");
    assert_eq!((get_many.hits, get_many.misses), (1, 1), "{backend}");
    let set = find("set", "customers");
    assert_eq!(set.count, 2, "{backend}");
    assert_eq!(
        set.errors.get("invalid_input"),
        Some(&1),
        "{backend}: errors by kind"
    );
    assert_eq!(find("append_messages", "").count, 1, "{backend}");
    assert!(snap.ops.iter().all(|o| !o.store.is_empty()));
    assert_eq!(
        find("get", "customers").store,
        "cache",
        "{backend}: the store label"
    );
    assert_eq!(find("add", "messages").count, 1, "{backend}");
    assert_eq!((snap.hits, snap.misses), (4, 2), "{backend}");
    assert!((snap.hit_rate - 4.0 / 6.0).abs() < 1e-9, "{backend}");
    let json = format!("{:?}", snap);
    assert!(json.contains("customers"));
    store.reset();
    assert!(
        store.snapshot().ops.is_empty(),
        "{backend}: reset forgets everything"
    );
}

#[tokio::test]
async fn records_per_operation_and_namespace_on_memory() {
    let store = Instrumented::new(MemoryStore::new(StoreSettings::default()));
    exercise(&store, "memory").await;
}

#[tokio::test]
async fn records_per_operation_and_namespace_on_redis() {
    let server = common::shared();
    let redis = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .command_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let store = Instrumented::new(redis);
    exercise(&store, "redis").await;
    assert!(store.inner().round_trips().round_trips > 0);
}

#[tokio::test]
async fn reply_operations_are_counted_with_their_errors() {
    use chatstate_core::{ReplyStream, RunId, RunStatus, StoreSettings};
    let store = Instrumented::new(MemoryStore::new(StoreSettings::default()));
    let run = RunId::new("r").unwrap();
    store.start(&run, None).await.unwrap();
    store.append(&run, "a").await.unwrap();
    store.append(&run, "").await.unwrap_err();
    store.read(&run, 0).await.unwrap();
    store.finish(&run, RunStatus::Done).await.unwrap();
    let snap = store.snapshot();
    let op = |name: &str| {
        snap.ops
            .iter()
            .find(|o| o.store == "replies" && o.op == name)
            .unwrap_or_else(|| panic!("replies {name} is recorded"))
    };
    assert_eq!(op("append").count, 2);
    assert_eq!(op("append").errors.get("invalid_input"), Some(&1));
    for name in ["start", "read", "finish"] {
        assert_eq!(op(name).count, 1, "{name}");
    }
}

/// Append receipts add up in the snapshot (messages and estimated tokens the window
/// trimmed), side data calls are forwarded and measured, and reset starts over.
#[tokio::test]
async fn trimmed_context_and_side_data_are_measured() {
    let store = Instrumented::new(MemoryStore::new(StoreSettings {
        window_size: 2,
        ..StoreSettings::default()
    }));
    let k = SessionKey::new("t", "c", "u").unwrap();
    for text in ["first message", "b", "c", "d"] {
        store
            .append_message(&k, NewMessage::user(text))
            .await
            .unwrap();
    }
    let snap = store.snapshot();
    assert_eq!(snap.trimmed_messages, 2, "\"first message\" and \"b\" left");
    assert_eq!(
        snap.trimmed_tokens,
        chatstate_core::model::estimate_tokens("first message") + 1,
        "4 + 1 estimated tokens"
    );

    store
        .set_data(&k, "thread", Bytes::from_static(b"thr"))
        .await
        .unwrap();
    assert_eq!(
        store.get_data(&k, "thread").await.unwrap(),
        Some(Bytes::from_static(b"thr")),
        "forwarded to the inner store"
    );
    store
        .get_data_many(&k, &["thread".to_string()])
        .await
        .unwrap();
    assert!(store.delete_data(&k, "thread").await.unwrap());
    let missing = SessionKey::new("t", "c", "nobody").unwrap();
    store
        .set_data(&missing, "x", Bytes::new())
        .await
        .unwrap_err();
    let snap = store.snapshot();
    let op = |name: &str| {
        snap.ops
            .iter()
            .find(|o| o.store == "sessions" && o.op == name)
            .unwrap_or_else(|| panic!("sessions {name} is recorded"))
    };
    assert_eq!(op("set_data").count, 2);
    assert_eq!(op("set_data").errors.get("not_found"), Some(&1));
    assert_eq!(
        op("get_data_many").count,
        2,
        "get_data (one name) goes through get_data_many"
    );
    assert_eq!(op("delete_data").count, 1);
    store.reset();
    let snap = store.snapshot();
    assert_eq!((snap.trimmed_messages, snap.trimmed_tokens), (0, 0));
}
