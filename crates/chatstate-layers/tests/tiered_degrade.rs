//! The tiered cache degrades; it never fails a request (issue 9): loaders answer
//! when the remote read fails, failed write-backs are counted, not returned; a stale
//! local copy answers when the remote fails temporarily, only within `max_stale` and
//! never after this instance knows the key changed; a delete the remote failed is
//! remembered, read as missing, and replayed on recovery, so that no instance serves
//! the deleted value afterwards. On a manual clock where time matters; the remote is
//! a memory store behind a switch (`flaky::Flaky`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod flaky;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{CacheKey, ErrorKind, KvCache, LocalBus, ManualClock, StoreSettings};
use chatstate_layers::{TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;
use flaky::{Flaky, FlakyBus};

fn key(k: &str) -> CacheKey {
    CacheKey::new("customers", k).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

const LOCAL_TTL: Duration = Duration::from_secs(10);
const MAX_STALE: Duration = Duration::from_secs(30);

/// No background replay: the tests of the other replay paths must see them alone
/// (the background retry has its own tests, with a short interval).
fn config() -> TieredConfig {
    TieredConfig {
        local_ttl: LOCAL_TTL,
        max_stale: MAX_STALE,
        replay_every: None,
        ..TieredConfig::default()
    }
}

/// A tiered cache on a manual clock over a switchable memory remote.
fn setup() -> (Arc<Flaky>, TieredCache, ManualClock) {
    let clock = ManualClock::starting_now();
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::with_clock(
        remote.clone(),
        Arc::new(LocalBus::new()),
        config(),
        clock.shared(),
    );
    (remote, cache, clock)
}

/// A loader that counts its calls and answers `value`.
fn loader(
    calls: &Arc<AtomicUsize>,
    value: &'static str,
) -> impl FnOnce() -> std::future::Ready<chatstate_core::Result<Option<Bytes>>> + Send + use<> {
    let calls = calls.clone();
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Some(b(value))))
    }
}

/// Polls until `cache` reads `want` for `k`, for at most 2 s.
async fn eventually(cache: &TieredCache, k: &CacheKey, want: Option<Bytes>) -> bool {
    for _ in 0..200 {
        if KvCache::get(cache, k).await.ok() == Some(want.clone()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn get_or_load_answers_the_loader_when_the_remote_read_fails() {
    let (remote, cache, _clock) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    let k = key("1");
    for kind in [ErrorKind::Unavailable, ErrorKind::Timeout] {
        remote.fail_reads(Some(kind));
        let v = cache
            .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
            .await;
        assert_eq!(v.unwrap(), Some(b("loaded")), "{kind}: the loader answers");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "not kept: nothing in the remote"
    );
    let stats = cache.stats();
    assert_eq!(stats.remote_errors, 2);
    assert_eq!(stats.writeback_failures, 0, "no write-back was tried");
    remote.fail_reads(None);
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);

    // get has nothing to answer with but the error.
    remote.fail_reads(Some(ErrorKind::Unavailable));
    let err = KvCache::get(&cache, &key("2")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn a_failed_write_back_is_counted_and_the_value_returned_not_kept() {
    let (remote, cache, _clock) = setup();
    remote.fail_writes(Some(ErrorKind::Timeout));
    let calls = Arc::new(AtomicUsize::new(0));
    let k = key("1");
    for _ in 0..2 {
        let v = cache
            .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
            .await;
        assert_eq!(v.unwrap(), Some(b("loaded")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not kept locally either");
    assert_eq!(cache.stats().writeback_failures, 2);

    let keys = [key("a"), key("b")];
    let v = cache
        .get_many_or_load_bytes(&keys, None, |wanted| async move {
            Ok(wanted.into_iter().map(|k| (k, b("many"))).collect())
        })
        .await
        .unwrap();
    assert_eq!(v, vec![Some(b("many")), Some(b("many"))]);
    assert_eq!(cache.stats().writeback_failures, 3, "one per write-back");
}

#[tokio::test]
async fn remote_errors_that_are_not_temporary_are_returned() {
    let (remote, cache, _clock) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    remote.fail_reads(Some(ErrorKind::WrongType));
    let err = cache
        .get_or_load_bytes(&key("1"), None, loader(&calls, "loaded"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType);
    let err = cache
        .get_many_or_load_bytes(&[key("1")], None, |_| async { Ok(Vec::new()) })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongType);
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the loader was not called");
}

#[tokio::test]
async fn a_stale_copy_is_served_only_while_the_remote_fails_and_only_within_max_stale() {
    let (remote, cache, clock) = setup();
    let k = key("1");
    KvCache::set(&remote.inner, &k, b("v1"), None)
        .await
        .unwrap();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v1")));

    // Past its deadline, the remote answering: the remote's value, not the copy.
    KvCache::set(&remote.inner, &k, b("v2"), None)
        .await
        .unwrap();
    clock.advance(LOCAL_TTL + Duration::from_secs(1));
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v2")));
    assert_eq!(cache.stats().stale_served, 0);

    // v2 was kept at t; past its deadline, the remote failing: the stale copy.
    clock.advance(LOCAL_TTL + Duration::from_secs(1));
    remote.down();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v2")));
    assert!(cache.exists(&k).await.unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
        .await;
    assert_eq!(v.unwrap(), Some(b("v2")), "get_or_load: the stale copy");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "instead of the loader");
    assert_eq!(
        KvCache::get(&cache, &k).await.unwrap(),
        Some(b("v2")),
        "still kept after get_or_load served it"
    );
    assert_eq!(cache.stats().stale_served, 4);

    // Up to max_stale past the deadline, not beyond.
    clock.advance(MAX_STALE - Duration::from_secs(2));
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v2")));
    clock.advance(Duration::from_secs(1));
    let err = KvCache::get(&cache, &k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "past max_stale");
    let v = cache
        .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
        .await;
    assert_eq!(v.unwrap(), Some(b("loaded")), "past max_stale: the loader");
}

#[tokio::test]
async fn get_many_answers_stale_copies_and_fails_only_for_keys_without_one() {
    let (remote, cache, clock) = setup();
    let (k1, k2) = (key("1"), key("2"));
    KvCache::set(&remote.inner, &k1, b("v1"), None)
        .await
        .unwrap();
    assert_eq!(KvCache::get(&cache, &k1).await.unwrap(), Some(b("v1")));
    clock.advance(LOCAL_TTL);
    remote.down();
    assert_eq!(
        cache.get_many(std::slice::from_ref(&k1)).await.unwrap(),
        vec![Some(b("v1"))]
    );
    let err = cache.get_many(&[k1.clone(), k2.clone()]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "k2 has no copy");

    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let v = cache
        .get_many_or_load_bytes(&[k1.clone(), k2.clone()], None, move |wanted| {
            seen.lock().unwrap().extend(wanted.clone());
            async move { Ok(wanted.into_iter().map(|k| (k, b("loaded"))).collect()) }
        })
        .await
        .unwrap();
    assert_eq!(v, vec![Some(b("v1")), Some(b("loaded"))]);
    assert_eq!(
        *asked.lock().unwrap(),
        vec![k2.clone()],
        "only k2 is loaded"
    );
    remote.up();
    assert_eq!(
        KvCache::get(&remote.inner, &k2).await.unwrap(),
        None,
        "no write-back after the failed read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_this_instance_knows_changed_are_never_served_stale() {
    let clock = ManualClock::starting_now();
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(LocalBus::new());
    let a = TieredCache::with_clock(remote.clone(), bus.clone(), config(), clock.shared());
    let other = TieredCache::with_clock(remote.clone(), bus.clone(), config(), clock.shared());
    let names = ["heard", "reset", "deleted", "overwritten", "gone", "failed"];
    for n in names {
        KvCache::set(&remote.inner, &key(n), b("old"), None)
            .await
            .unwrap();
        assert_eq!(KvCache::get(&a, &key(n)).await.unwrap(), Some(b("old")));
    }
    clock.advance(LOCAL_TTL + Duration::from_secs(1)); // every copy is stale now

    other.set(&key("heard"), b("new"), None).await.unwrap(); // a hears it
    // Heard before a's own writes below, so none of them overlaps hearing it (a
    // write that does keeps nothing).
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.delete(&key("deleted")).await.unwrap();
    a.set(&key("overwritten"), b("new"), None).await.unwrap();
    clock.advance(LOCAL_TTL + Duration::from_secs(1)); // "overwritten"'s new copy is stale too
    KvCache::delete(&remote.inner, &key("gone")).await.unwrap(); // no announcement…
    assert_eq!(KvCache::get(&a, &key("gone")).await.unwrap(), None); // …but a read sees it

    remote.down();
    // A delete that fails: returned, and the key reads as missing from then on.
    assert!(a.delete(&key("failed")).await.is_err());
    assert_eq!(KvCache::get(&a, &key("failed")).await.unwrap(), None);
    for n in ["heard", "deleted", "gone"] {
        assert!(
            KvCache::get(&a, &key(n)).await.is_err(),
            "{n}: dropped, so no stale copy to answer"
        );
    }
    assert_eq!(
        KvCache::get(&a, &key("overwritten")).await.unwrap(),
        Some(b("new")),
        "overwritten: the stale copy is this instance's new value, never the old one"
    );
    assert_eq!(
        KvCache::get(&a, &key("reset")).await.unwrap(),
        Some(b("old"))
    );
    bus.reset();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        KvCache::get(&a, &key("reset")).await.is_err(),
        "a bus reset drops stale copies too"
    );
}

/// Two instances on one remote; the bus fails while the remote does (as one Redis
/// serving both does). `a`'s delete fails; `other` keeps its copy meanwhile (the
/// documented window). Returns both, the remote, the bus and the key.
async fn failed_delete() -> (
    TieredCache,
    TieredCache,
    Arc<Flaky>,
    Arc<FlakyBus>,
    CacheKey,
) {
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(FlakyBus::default());
    let a = TieredCache::new(remote.clone(), bus.clone(), config());
    let other = TieredCache::new(remote.clone(), bus.clone(), config());
    let k = key("secret");
    a.set(&k, b("old"), None).await.unwrap();
    // Once other has heard a's set (a read overlapping that is answered, not kept),
    // other keeps the value it reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("old")));
    assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("old")));
    assert_eq!(other.stats().local_hits, 1, "other holds a local copy");

    remote.down();
    bus.down();
    let err = a.delete(&k).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "the caller knows");
    assert_eq!(a.pending_deletes(), 1);
    assert_eq!(
        KvCache::get(&a, &k).await.unwrap(),
        None,
        "a reads the key as missing, with no remote call"
    );
    assert_eq!(
        KvCache::get(&other, &k).await.unwrap(),
        Some(b("old")),
        "other did not hear of it: its local copy is served meanwhile"
    );
    remote.up();
    assert_eq!(
        KvCache::get(&a, &k).await.unwrap(),
        None,
        "the remote is back, the delete not replayed yet: still missing for a"
    );
    assert_eq!(
        KvCache::get(&remote.inner, &k).await.unwrap(),
        Some(b("old")),
        "the remote still has it"
    );
    (a, other, remote, bus, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_is_replayed_by_the_next_call_that_reaches_the_remote() {
    let (a, other, remote, bus, k) = failed_delete().await;
    // The remote is back, the bus not yet: a's first call that reaches the remote
    // replays the delete before it returns.
    assert_eq!(KvCache::get(&a, &key("unrelated")).await.unwrap(), None);
    assert_eq!(a.pending_deletes(), 0);
    assert_eq!(a.stats().deletes_replayed, 1);
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);
    assert_eq!(KvCache::get(&a, &k).await.unwrap(), None);
    // The window that remains: other heard nothing (the bus is still down, the
    // replay's announcement failed) and serves its local copy until the bus's
    // reset, or its local TTL, whichever comes first.
    assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("old")));
    assert!(a.stats().publish_failures >= 2);
    bus.reconnect();
    assert!(
        eventually(&other, &k, None).await,
        "other dropped its copy on the reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delete_is_replayed_when_the_bus_resets_and_no_instance_serves_it() {
    let (a, other, remote, bus, k) = failed_delete().await;
    // No call of a's reaches the remote: the reset (a re-established subscription)
    // replays it.
    bus.reconnect();
    let mut replayed = false;
    for _ in 0..200 {
        if a.pending_deletes() == 0 {
            replayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(replayed, "replayed after the reset");
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);
    assert!(eventually(&other, &k, None).await, "other dropped its copy");
    assert_eq!(KvCache::get(&a, &k).await.unwrap(), None);
    assert_eq!(other.stats().resets, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_again_keeps_the_delete_pending() {
    let (a, _other, remote, _bus, k) = failed_delete().await;
    // A read succeeds, then the delete fails again: still pending, still missing.
    remote.fail_writes(Some(ErrorKind::Timeout));
    assert_eq!(KvCache::get(&a, &key("unrelated")).await.unwrap(), None);
    assert_eq!(a.pending_deletes(), 1);
    assert_eq!(KvCache::get(&a, &k).await.unwrap(), None);
    remote.up();
    assert_eq!(KvCache::get(&a, &key("unrelated")).await.unwrap(), None);
    assert_eq!(a.pending_deletes(), 0);
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);
}

fn phone(p: &str) -> CacheKey {
    CacheKey::new("phone", p).unwrap()
}

#[tokio::test]
async fn a_write_after_a_failed_delete_replays_it_first() {
    let (remote, cache, _clock) = setup();
    let k = key("1");
    remote
        .inner
        .set_with_aliases(&k, b("old"), None, &[phone("+5511")])
        .await
        .unwrap();
    remote.down();
    assert!(cache.delete(&k).await.is_err());
    // While the delete cannot reach the remote, a write of the key is refused and
    // writes nothing (settling the delete locally would keep the deleted entry's
    // aliases on the remote).
    remote.fail_reads(None);
    let err = KvCache::set(&cache, &k, b("new"), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    remote.up();
    assert_eq!(
        KvCache::get(&remote.inner, &k).await.unwrap(),
        Some(b("old")),
        "the refused write wrote nothing"
    );
    assert_eq!(cache.pending_deletes(), 1);
    cache.set(&k, b("new"), None).await.unwrap();
    assert_eq!(cache.pending_deletes(), 0, "replayed, then written");
    assert_eq!(
        cache.get_by_alias(&phone("+5511")).await.unwrap(),
        None,
        "the delete reached the remote before the write: the alias stays gone"
    );
    assert_eq!(
        remote.inner.get_by_alias(&phone("+5511")).await.unwrap(),
        None
    );
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("new")));
    assert_eq!(
        KvCache::get(&remote.inner, &k).await.unwrap(),
        Some(b("new")),
        "the replay did not delete the newer value"
    );

    // get_or_load of a key with a pending delete loads (the remote may still hold
    // the deleted value), and its write-back settles the delete.
    let k = key("2");
    KvCache::set(&remote.inner, &k, b("old"), None)
        .await
        .unwrap();
    remote.down();
    assert!(cache.delete(&k).await.is_err());
    remote.up();
    let calls = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
        .await;
    assert_eq!(v.unwrap(), Some(b("loaded")));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(cache.pending_deletes(), 0);
    assert_eq!(
        KvCache::get(&remote.inner, &k).await.unwrap(),
        Some(b("loaded"))
    );
}

#[tokio::test]
async fn a_failed_clear_prefix_blocks_its_keys_until_replayed() {
    let (remote, cache, _clock) = setup();
    for n in ["a1", "a2", "b1"] {
        KvCache::set(&remote.inner, &key(n), b("old"), None)
            .await
            .unwrap();
    }
    remote.down();
    assert!(cache.clear_prefix("customers", "a").await.is_err());
    remote.up();
    assert_eq!(KvCache::get(&cache, &key("a1")).await.unwrap(), None);
    assert!(!cache.exists(&key("a2")).await.unwrap());
    assert_eq!(
        cache.get_many(&[key("a1"), key("a2")]).await.unwrap(),
        vec![None, None],
        "read as missing without the remote: nothing to replay yet"
    );
    assert_eq!(cache.pending_deletes(), 1);
    assert_eq!(
        KvCache::get(&cache, &key("b1")).await.unwrap(),
        Some(b("old"))
    );
    assert_eq!(cache.pending_deletes(), 0, "replayed by that read");
    for n in ["a1", "a2"] {
        assert_eq!(KvCache::get(&remote.inner, &key(n)).await.unwrap(), None);
    }
    assert_eq!(
        KvCache::get(&remote.inner, &key("b1")).await.unwrap(),
        Some(b("old"))
    );
}

#[tokio::test]
async fn pending_deletes_are_bounded_and_the_oldest_forgotten() {
    let clock = ManualClock::starting_now();
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::with_clock(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig {
            max_pending_deletes: 3,
            ..config()
        },
        clock.shared(),
    );
    remote.down();
    for i in 0..3 {
        assert!(cache.delete(&key(&i.to_string())).await.is_err());
    }
    assert!(cache.delete_many(&[key("3"), key("4")]).await.is_err());
    let stats = cache.stats();
    assert_eq!(stats.pending_deletes, 3, "2, 3 and 4");
    assert_eq!(stats.pending_deletes_dropped, 2, "0 and 1, the oldest");
    assert!(
        KvCache::get(&cache, &key("0")).await.is_err(),
        "a forgotten key goes to the remote again"
    );
    for i in 2..5 {
        assert_eq!(
            KvCache::get(&cache, &key(&i.to_string())).await.unwrap(),
            None
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_system_clock_a_hit_tells_fresh_from_stale() {
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl: Duration::from_millis(100),
            max_stale: Duration::from_secs(60),
            ..TieredConfig::default()
        },
    );
    let k = key("1");
    cache.set(&k, b("v1"), None).await.unwrap();
    KvCache::set(&remote.inner, &k, b("v2"), None)
        .await
        .unwrap(); // no announcement
    assert_eq!(
        KvCache::get(&cache, &k).await.unwrap(),
        Some(b("v1")),
        "fresh"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        KvCache::get(&cache, &k).await.unwrap(),
        Some(b("v2")),
        "past its deadline a copy is not served while the remote answers"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    remote.down();
    assert_eq!(
        KvCache::get(&cache, &k).await.unwrap(),
        Some(b("v2")),
        "stale"
    );
    assert_eq!(cache.stats().stale_served, 1);

    // max_stale zero: today's path, nothing kept past the deadline.
    let cache = TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl: Duration::from_millis(100),
            max_stale: Duration::ZERO,
            ..TieredConfig::default()
        },
    );
    remote.up();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v2")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    remote.down();
    assert!(KvCache::get(&cache, &k).await.is_err());
}

#[tokio::test]
async fn a_delete_that_timed_out_while_reads_work_never_reads_the_old_value() {
    let (remote, cache, _clock) = setup();
    let k = key("1");
    cache.set(&k, b("old"), None).await.unwrap();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("old")));
    // Writes time out (the delete never lands), reads still work.
    remote.fail_writes(Some(ErrorKind::Timeout));
    assert_eq!(
        cache.delete(&k).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(
        KvCache::get(&remote.inner, &k).await.unwrap(),
        Some(b("old")),
        "the remote still holds it"
    );
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), None);
    assert_eq!(
        cache.get_many(std::slice::from_ref(&k)).await.unwrap(),
        vec![None]
    );
    assert!(!cache.exists(&k).await.unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
        .await;
    assert_eq!(
        v.unwrap(),
        Some(b("loaded")),
        "the loader, not the old value"
    );
    assert_eq!(cache.pending_deletes(), 1, "its write-back timed out too");
    // Reads succeeding do not settle it while the replay's delete keeps failing.
    assert_eq!(KvCache::get(&cache, &key("2")).await.unwrap(), None);
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), None);
    remote.fail_writes(None);
    assert_eq!(KvCache::get(&cache, &key("2")).await.unwrap(), None);
    assert_eq!(cache.pending_deletes(), 0);
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);
}

/// A remote whose reads advance the (manual) clock before failing: a call slower
/// than what is left of a copy's stale window.
struct SlowFailure {
    clock: ManualClock,
}

#[async_trait::async_trait]
impl KvCache for SlowFailure {
    async fn get(&self, _: &CacheKey) -> chatstate_core::Result<Option<Bytes>> {
        self.clock.advance(Duration::from_secs(5));
        Err(chatstate_core::Error::new(
            ErrorKind::Timeout,
            "injected: slow, then timed out",
        ))
    }
    async fn get_many(&self, keys: &[CacheKey]) -> chatstate_core::Result<Vec<Option<Bytes>>> {
        self.clock.advance(Duration::from_secs(5));
        let _ = keys;
        Err(chatstate_core::Error::new(
            ErrorKind::Timeout,
            "injected: slow, then timed out",
        ))
    }
    async fn set(&self, _: &CacheKey, _: Bytes, _: Option<Duration>) -> chatstate_core::Result<()> {
        Ok(())
    }
    async fn set_many(
        &self,
        _: Vec<(CacheKey, Bytes)>,
        _: Option<Duration>,
    ) -> chatstate_core::Result<()> {
        Ok(())
    }
    async fn set_many_with_ttls(
        &self,
        _: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> chatstate_core::Result<()> {
        Ok(())
    }
    async fn set_with_aliases(
        &self,
        _: &CacheKey,
        _: Bytes,
        _: Option<Duration>,
        _: &[CacheKey],
    ) -> chatstate_core::Result<()> {
        Ok(())
    }
    async fn get_by_alias(
        &self,
        _: &CacheKey,
    ) -> chatstate_core::Result<Option<(CacheKey, Bytes)>> {
        Ok(None)
    }
    async fn delete(&self, _: &CacheKey) -> chatstate_core::Result<bool> {
        Ok(false)
    }
    async fn delete_many(&self, _: &[CacheKey]) -> chatstate_core::Result<u64> {
        Ok(0)
    }
    async fn exists(&self, _: &CacheKey) -> chatstate_core::Result<bool> {
        Ok(false)
    }
    async fn expire(&self, _: &CacheKey, _: Duration) -> chatstate_core::Result<bool> {
        Ok(false)
    }
    async fn ttl(&self, _: &CacheKey) -> chatstate_core::Result<Option<Duration>> {
        Ok(None)
    }
    async fn clear_prefix(&self, _: &str, _: &str) -> chatstate_core::Result<u64> {
        Ok(0)
    }
}

#[tokio::test]
async fn a_stale_window_that_ends_during_the_failing_call_serves_nothing() {
    let clock = ManualClock::starting_now();
    let cache = TieredCache::with_clock(
        Arc::new(SlowFailure {
            clock: clock.clone(),
        }),
        Arc::new(LocalBus::new()),
        config(),
        clock.shared(),
    );
    let k = key("1");
    cache.set(&k, b("v"), None).await.unwrap();
    // 3 s of stale window left; the failing read takes 5 s.
    clock.advance(LOCAL_TTL + MAX_STALE - Duration::from_secs(3));
    assert!(KvCache::get(&cache, &k).await.is_err());
    cache.set(&k, b("v"), None).await.unwrap();
    clock.advance(LOCAL_TTL + MAX_STALE - Duration::from_secs(3));
    let calls = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_load_bytes(&k, None, loader(&calls, "loaded"))
        .await;
    assert_eq!(
        v.unwrap(),
        Some(b("loaded")),
        "the loader, not a copy past max_stale"
    );
    assert_eq!(cache.stats().stale_served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_bus_is_lost_copies_are_served_only_stale_until_it_resets() {
    let clock = ManualClock::starting_now();
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(LocalBus::new());
    let cache = TieredCache::with_clock(remote.clone(), bus.clone(), config(), clock.shared());
    let (k1, k2) = (key("1"), key("2"));
    KvCache::set(&cache, &k1, b("v1"), None).await.unwrap();
    KvCache::set(&cache, &k2, b("w1"), None).await.unwrap();
    // Changed in the remote behind the cache's back (an announcement this instance
    // will never hear, since its bus is down).
    KvCache::set(&remote.inner, &k1, b("v2"), None)
        .await
        .unwrap();
    assert_eq!(
        KvCache::get(&cache, &k1).await.unwrap(),
        Some(b("v1")),
        "fresh hit"
    );

    bus.lose();
    let mut heard = false;
    for _ in 0..200 {
        if cache.stats().bus_losses == 1 {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(heard, "the cache heard the loss");
    // The remote answers: the copy kept before the loss is not served as current.
    assert_eq!(KvCache::get(&cache, &k1).await.unwrap(), Some(b("v2")));
    // The remote fails: the copy kept before the loss is served stale.
    remote.down();
    assert_eq!(KvCache::get(&cache, &k2).await.unwrap(), Some(b("w1")));
    assert_eq!(cache.stats().stale_served, 1);

    // The bus is back: everything kept before is dropped; with the remote still
    // down there is nothing left to answer with.
    bus.reset();
    let mut dropped = false;
    for _ in 0..200 {
        if KvCache::get(&cache, &k2).await.is_err() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(dropped, "a reset drops the stale copies too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stale_window_a_lost_bus_drops_every_copy() {
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(LocalBus::new());
    let cache = TieredCache::new(
        remote.clone(),
        bus.clone(),
        TieredConfig {
            max_stale: Duration::ZERO,
            ..config()
        },
    );
    let k = key("1");
    KvCache::set(&cache, &k, b("v1"), None).await.unwrap();
    KvCache::set(&remote.inner, &k, b("v2"), None)
        .await
        .unwrap();
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), Some(b("v1")));
    bus.lose();
    assert!(
        eventually(&cache, &k, Some(b("v2"))).await,
        "the copy was dropped"
    );
}

#[tokio::test]
async fn a_write_under_a_failed_clear_prefix_is_never_erased_by_its_replay() {
    let (remote, cache, _clock) = setup();
    for n in ["a1", "a2"] {
        KvCache::set(&remote.inner, &key(n), b("old"), None)
            .await
            .unwrap();
    }
    remote.down();
    assert!(cache.clear_prefix("customers", "a").await.is_err());
    // While the remote is still down, a write under the prefix is refused: the
    // clear must reach the remote first.
    let err = KvCache::set(&cache, &key("a1"), b("new"), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    remote.up();
    // The first write after recovery replays the clear, then writes.
    KvCache::set(&cache, &key("a1"), b("new"), None)
        .await
        .unwrap();
    assert_eq!(cache.pending_deletes(), 0);
    assert_eq!(
        KvCache::get(&remote.inner, &key("a1")).await.unwrap(),
        Some(b("new")),
        "the write survived the replay"
    );
    assert_eq!(KvCache::get(&remote.inner, &key("a2")).await.unwrap(), None);
    assert_eq!(
        KvCache::get(&cache, &key("a1")).await.unwrap(),
        Some(b("new"))
    );
    // A loader's write-back under a pending prefix behaves the same.
    remote.down();
    assert!(cache.clear_prefix("customers", "a").await.is_err());
    remote.up();
    let calls = Arc::new(AtomicUsize::new(0));
    let v = cache
        .get_or_load_bytes(&key("a3"), None, loader(&calls, "loaded"))
        .await
        .unwrap();
    assert_eq!(v, Some(b("loaded")));
    assert_eq!(cache.pending_deletes(), 0);
    assert_eq!(
        KvCache::get(&remote.inner, &key("a3")).await.unwrap(),
        Some(b("loaded")),
        "the write-back survived the replay"
    );
    assert_eq!(KvCache::get(&remote.inner, &key("a1")).await.unwrap(), None);
}

#[tokio::test]
async fn an_aliased_write_under_a_failed_clear_prefix_of_its_aliases_replays_it_first() {
    let (remote, cache, _clock) = setup();
    let (k, other) = (key("1"), key("2"));
    remote
        .inner
        .set_with_aliases(&other, b("other"), None, &[phone("+5599")])
        .await
        .unwrap();
    remote.down();
    assert!(cache.clear_prefix("phone", "+55").await.is_err());
    // The entry's key is not covered, its alias is: refused while the clear is
    // pending and the remote down.
    let err = cache
        .set_with_aliases(&k, b("v"), None, &[phone("+5511")])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    remote.up();
    cache
        .set_with_aliases(&k, b("v"), None, &[phone("+5511")])
        .await
        .unwrap();
    assert_eq!(cache.pending_deletes(), 0);
    // A later call would have replayed the clear after the write, erasing the alias.
    assert_eq!(
        cache.get_by_alias(&phone("+5511")).await.unwrap(),
        Some((k.clone(), b("v"))),
        "the new alias survived the clear's replay"
    );
    assert_eq!(
        remote.inner.get_by_alias(&phone("+5599")).await.unwrap(),
        None,
        "the clear reached the remote"
    );
}

#[tokio::test]
async fn pending_deletes_are_replayed_in_the_background_without_further_calls() {
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig {
            replay_every: Some(Duration::from_millis(100)),
            ..config()
        },
    );
    let k = key("1");
    KvCache::set(&cache, &k, b("old"), None).await.unwrap();
    remote.down();
    assert!(cache.delete(&k).await.is_err());
    remote.up();
    // No call on this cache from now on: the background retry replays it.
    let mut replayed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if cache.pending_deletes() == 0 {
            replayed = true;
            break;
        }
    }
    assert!(replayed, "replayed within 3 s");
    assert_eq!(KvCache::get(&remote.inner, &k).await.unwrap(), None);
    assert_eq!(cache.stats().deletes_replayed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_retries_during_an_outage_announce_nothing_more() {
    let remote = Flaky::new(MemoryStore::new(StoreSettings::default()));
    let bus = Arc::new(LocalBus::new());
    let retrying = TieredConfig {
        replay_every: Some(Duration::from_millis(20)),
        ..config()
    };
    let a = TieredCache::new(remote.clone(), bus.clone(), retrying);
    let other = TieredCache::new(remote.clone(), bus.clone(), config());
    let k = key("1");
    remote.down();
    assert!(a.delete(&k).await.is_err());
    // About ten background retries fail while the remote is down.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(a.pending_deletes(), 1);
    assert!(a.stats().remote_errors >= 5, "{:?}", a.stats());
    assert_eq!(
        other.stats().invalidations,
        1,
        "only the failed delete itself was announced"
    );
    remote.up();
    let mut replayed = false;
    for _ in 0..100 {
        if a.pending_deletes() == 0 {
            replayed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(replayed);
}
