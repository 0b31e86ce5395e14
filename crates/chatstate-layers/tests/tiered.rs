//! The tiered cache: local hits cost no round trip, one loader per key, errors not
//! cached, batched loads, and two instances that drop each other's stale copies —
//! in process (memory + LocalBus) and across real Redis clients (pub/sub), including
//! a Redis restart between writes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, Error, ErrorKind, InvalidationBus, KvCache, LocalBus, RedisUrl, StoreSettings,
};
use chatstate_layers::{LocalHit, TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;
use chatstate_redis::{RedisBus, RedisStore};

fn key(k: &str) -> CacheKey {
    CacheKey::new("customers", k).expect("key")
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Polls `cache` until `key` reads `want`, for at most 3 s (errors, as while a
/// connection comes back, count as "not yet").
async fn eventually(cache: &TieredCache, k: &CacheKey, want: Option<Bytes>) -> bool {
    for _ in 0..300 {
        if KvCache::get(cache, k).await.ok() == Some(want.clone()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_hit_costs_no_round_trip() {
    let server = common::shared();
    let remote = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .connect()
        .await
        .unwrap();
    let bus = Arc::new(RedisBus::new(&remote).unwrap());
    let cache = TieredCache::new(Arc::new(remote.clone()), bus, TieredConfig::default());
    // The bus resets local tiers once subscribed (it may have missed messages before).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let k = key("42");
    cache.set(&k, b("ana"), None).await.unwrap();
    let before = remote.round_trips().round_trips;
    for _ in 0..100 {
        assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("ana")));
    }
    assert_eq!(
        remote.round_trips().round_trips,
        before,
        "100 local hits, no round trip"
    );
    assert_eq!(cache.stats().local_hits, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_run_one_loader_and_errors_are_not_cached() {
    let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    let cache = Arc::new(TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig::default(),
    ));
    let calls = Arc::new(AtomicUsize::new(0));
    let k = key("slow");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, calls, k) = (cache.clone(), calls.clone(), k.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load_bytes(&k, Some(Duration::from_secs(60)), || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(Some(b("loaded")))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Some(b("loaded")));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one loader for 50 concurrent misses"
    );
    assert_eq!(
        KvCache::get(remote.as_ref(), &k).await.unwrap(),
        Some(b("loaded")),
        "written back"
    );

    let bad = key("bad");
    let err = cache
        .get_or_load_bytes(&bad, None, || async {
            Err(Error::new(ErrorKind::Unavailable, "upstream API down"))
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("upstream API down"), "{err}");
    let v = cache
        .get_or_load_bytes(&bad, None, || async { Ok(Some(b("second try"))) })
        .await
        .unwrap();
    assert_eq!(v, Some(b("second try")), "the error was not cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_results_are_cached_only_when_asked() {
    let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    let calls = Arc::new(AtomicUsize::new(0));
    for (negative_ttl, want_calls) in [(None, 3), (Some(Duration::from_secs(30)), 1)] {
        calls.store(0, Ordering::SeqCst);
        let cache = TieredCache::new(
            remote.clone(),
            Arc::new(LocalBus::new()),
            TieredConfig {
                negative_ttl,
                ..TieredConfig::default()
            },
        );
        for _ in 0..3 {
            let calls = calls.clone();
            let v = cache
                .get_or_load_bytes(&key("ghost"), None, || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Ok(None)
                })
                .await
                .unwrap();
            assert_eq!(v, None);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            want_calls,
            "negative ttl {negative_ttl:?}"
        );
        assert!(
            !remote.exists(&key("ghost")).await.unwrap(),
            "not found is never written remotely"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_many_or_load_reads_once_loads_in_batches_and_writes_back_once() {
    let server = common::shared();
    let remote = RedisStore::builder(RedisUrl::parse(&server.url()).unwrap())
        .prefix(common::unique_prefix())
        .connect()
        .await
        .unwrap();
    let cache = TieredCache::new(
        Arc::new(remote.clone()),
        Arc::new(LocalBus::new()),
        TieredConfig {
            load_batch: 100,
            ttl_jitter: 0.1,
            ..TieredConfig::default()
        },
    );
    let keys: Vec<CacheKey> = (0..250).map(|i| key(&i.to_string())).collect();
    // 50 already cached remotely.
    remote
        .set_many(
            keys[..50]
                .iter()
                .map(|k| (k.clone(), b("cached")))
                .collect(),
            None,
        )
        .await
        .unwrap();
    let batches = Arc::new(std::sync::Mutex::new(Vec::new()));
    let before = remote.round_trips().round_trips;
    let seen = batches.clone();
    let values = cache
        .get_many_or_load_bytes(&keys, Some(Duration::from_secs(300)), move |wanted| {
            seen.lock().unwrap().push(wanted.len());
            async move {
                Ok(wanted
                    .into_iter()
                    .filter(|k| k.key() != "249")
                    .map(|k| (k, b("loaded")))
                    .collect())
            }
        })
        .await
        .unwrap();
    let trips = remote.round_trips().round_trips - before;
    assert_eq!(
        *batches.lock().unwrap(),
        vec![100, 100],
        "the 200 missing keys in batches of 100"
    );
    assert_eq!(
        trips, 2,
        "one MGET, one write-back (the in-process bus sends nothing)"
    );
    assert_eq!(values[0], Some(b("cached")));
    assert_eq!(values[100], Some(b("loaded")));
    assert_eq!(
        values[249], None,
        "a key the loader did not find stays missing"
    );
    let ttl = remote.ttl(&keys[100]).await.unwrap().unwrap();
    assert!(
        ttl > Duration::from_secs(260) && ttl <= Duration::from_secs(330),
        "jittered TTL {ttl:?}"
    );
    let before = remote.round_trips().round_trips;
    let again = cache.get_many(&keys[..249]).await.unwrap();
    assert!(again.iter().all(Option::is_some));
    assert_eq!(
        remote.round_trips().round_trips,
        before,
        "all local hits now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_process_drop_each_others_copies() {
    let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(LocalBus::new());
    let a = TieredCache::new(remote.clone(), bus.clone(), TieredConfig::default());
    let bb = TieredCache::new(remote.clone(), bus.clone(), TieredConfig::default());
    let k = key("42");
    a.set(&k, b("v1"), None).await.unwrap();
    assert_eq!(KvCache::get(&bb, &k).await.unwrap(), Some(b("v1")));
    a.set(&k, b("v2"), None).await.unwrap();
    assert!(
        eventually(&bb, &k, Some(b("v2"))).await,
        "b drops its v1 copy"
    );
    a.delete(&k).await.unwrap();
    assert!(eventually(&bb, &k, None).await, "b sees the delete");
    a.set(&key("a1"), b("x"), None).await.unwrap();
    assert_eq!(KvCache::get(&bb, &key("a1")).await.unwrap(), Some(b("x")));
    a.clear_prefix("customers", "a").await.unwrap();
    assert!(
        eventually(&bb, &key("a1"), None).await,
        "b sees the prefix clear"
    );
    bb.set(&k, b("v3"), None).await.unwrap();
    bus.reset();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        bb.stats().resets >= 1 && a.stats().resets >= 1,
        "a reset drops every local tier"
    );
}

async fn redis_instance(url: &str, prefix: &str) -> (RedisStore, TieredCache) {
    let remote = RedisStore::builder(RedisUrl::parse(url).unwrap())
        .prefix(prefix.to_string())
        .command_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let bus: Arc<dyn InvalidationBus> = Arc::new(RedisBus::new(&remote).unwrap());
    let cache = TieredCache::new(Arc::new(remote.clone()), bus, TieredConfig::default());
    (remote, cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_clients_invalidate_each_other_even_across_a_restart() {
    let mut server = common::RedisServer::start(&[]);
    let prefix = common::unique_prefix();
    let (_ra, a) = redis_instance(&server.url(), &prefix).await;
    let (_rb, bb) = redis_instance(&server.url(), &prefix).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // both subscribed
    let k = key("42");
    a.set(&k, b("v1"), None).await.unwrap();
    assert_eq!(
        KvCache::get(&bb, &k).await.unwrap(),
        Some(b("v1")),
        "b reads and keeps v1 locally"
    );
    a.set(&k, b("v2"), None).await.unwrap();
    assert!(
        eventually(&bb, &k, Some(b("v2"))).await,
        "b hears a's write over pub/sub"
    );
    assert!(bb.stats().invalidations >= 1);

    // Redis restarts (empty, no persistence) between writes.
    let port = server.port;
    let resets_before = bb.stats().resets;
    let losses_before = bb.stats().bus_losses;
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _restarted = common::Restarted::on(port);
    let mut written = false;
    for _ in 0..100 {
        if a.set(&k, b("v3"), None).await.is_ok() {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(written, "a writes again once Redis is back");
    assert!(
        eventually(&bb, &k, Some(b("v3"))).await,
        "b does not serve v2 after the restart"
    );
    assert!(
        bb.stats().bus_losses > losses_before,
        "b stopped serving its copies as current when the subscription was lost"
    );
    let mut reset = false;
    for _ in 0..100 {
        if bb.stats().resets > resets_before {
            reset = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reset,
        "b dropped its local tier when the subscription came back"
    );
}

/// Issue 13: `get_local` answers exactly what `get` would answer from the local
/// tier, and nothing when `get` would go to the remote: no copy, a copy a change
/// dropped (in this instance at once, in another through the bus), a copy past its
/// local TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_local_answers_only_what_a_local_hit_of_get_would() {
    let clock = chatstate_core::ManualClock::starting_now();
    let remote = Arc::new(
        MemoryStore::builder()
            .settings(StoreSettings::default())
            .clock(clock.shared())
            .build(),
    );
    let bus = Arc::new(LocalBus::new());
    let config = TieredConfig {
        local_ttl: Duration::from_secs(60),
        ..TieredConfig::default()
    };
    let a = TieredCache::with_clock(remote.clone(), bus.clone(), config.clone(), clock.shared());
    let bb = TieredCache::with_clock(remote.clone(), bus.clone(), config, clock.shared());
    let k = key("local");
    assert_eq!(
        a.get_local(&k).await.map(LocalHit::into_value),
        None,
        "no copy: get would ask the remote"
    );
    assert_eq!(KvCache::get(&a, &k).await.unwrap(), None);
    assert_eq!(
        a.get_local(&k).await.map(LocalHit::into_value),
        None,
        "a remote miss is not kept (no negative_ttl): get would ask again"
    );

    let heard = bb.stats().invalidations;
    a.set(&k, b("v1"), None).await.unwrap();
    assert_eq!(
        a.get_local(&k).await.map(LocalHit::into_value),
        Some(Some(b("v1")))
    );
    assert_eq!(
        bb.get_local(&k).await.map(LocalHit::into_value),
        None,
        "bb has no copy yet"
    );
    // bb handles a's announcement of v1 first: handled after bb's read below, it
    // would drop the copy that read kept (under load it did, 1 run in ~10). The
    // count grows once an announcement's copies are dropped.
    let mut announced = false;
    for _ in 0..300 {
        if bb.stats().invalidations > heard {
            announced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(announced, "bb heard a's write");
    assert_eq!(KvCache::get(&bb, &k).await.unwrap(), Some(b("v1")));
    assert_eq!(
        bb.get_local(&k).await.map(LocalHit::into_value),
        Some(Some(b("v1")))
    );

    // A change in this instance: once it returned, never the old copy.
    let hits = a.stats().local_hits;
    a.set(&k, b("v2"), None).await.unwrap();
    assert_ne!(
        a.get_local(&k).await.map(LocalHit::into_value),
        Some(Some(b("v1")))
    );
    // In the other instance, the bus drops the old copy.
    let mut dropped = false;
    for _ in 0..300 {
        if bb.get_local(&k).await.map(LocalHit::into_value).is_none() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(dropped, "bb's v1 copy is dropped by the invalidation");
    assert_eq!(KvCache::get(&bb, &k).await.unwrap(), Some(b("v2")));
    assert_eq!(
        bb.get_local(&k).await.map(LocalHit::into_value),
        Some(Some(b("v2")))
    );

    // Past its local TTL a copy is not a local answer (get would ask the remote).
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        bb.get_local(&k).await.map(LocalHit::into_value),
        None,
        "past the local TTL"
    );
    assert!(
        a.stats().local_hits > hits,
        "answers of get_local count as local hits"
    );
}
