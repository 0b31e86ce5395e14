//! The tiered cache's races, made to happen: a remote call held open by a gate while
//! another change lands. Each test fails if a stale copy is kept.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{CacheKey, Error, ErrorKind, KvCache, LocalBus, Result, StoreSettings};
use chatstate_layers::{TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;
use tokio::sync::Semaphore;

/// A remote that can hold `get` before reading, hold `set` after writing, and fail
/// `set` after writing (a lost reply).
struct Gated {
    inner: MemoryStore,
    hold_get: AtomicBool,
    hold_set: AtomicBool,
    fail_set_after_write: AtomicBool,
    gate: Semaphore,
    entered: Semaphore,
}

impl Gated {
    fn new(inner: MemoryStore) -> Arc<Self> {
        Arc::new(Gated {
            inner,
            hold_get: AtomicBool::new(false),
            hold_set: AtomicBool::new(false),
            fail_set_after_write: AtomicBool::new(false),
            gate: Semaphore::new(0),
            entered: Semaphore::new(0),
        })
    }

    async fn wait_entered(&self) {
        self.entered.acquire().await.unwrap().forget();
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }

    async fn hold(&self, flag: &AtomicBool) {
        if flag.swap(false, Ordering::SeqCst) {
            self.entered.add_permits(1);
            self.gate.acquire().await.unwrap().forget();
        }
    }
}

#[async_trait]
impl KvCache for Gated {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let v = self.inner.get(key).await;
        self.hold(&self.hold_get).await;
        v
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        KvCache::set(&self.inner, key, value, ttl).await?;
        self.hold(&self.hold_set).await;
        if self.fail_set_after_write.swap(false, Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Timeout, "injected: reply lost"));
        }
        Ok(())
    }
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.inner.set_many(entries, ttl).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        KvCache::delete(&self.inner, key).await
    }
    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        self.inner.delete_many(keys).await
    }
    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        KvCache::ttl(&self.inner, key).await
    }
    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        self.inner.clear_prefix(namespace, key_prefix).await
    }
}

fn key(k: &str) -> CacheKey {
    CacheKey::new("customers", k).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn config() -> TieredConfig {
    TieredConfig {
        local_ttl: Duration::from_secs(600),
        ..TieredConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_does_not_keep_a_value_this_instance_deleted() {
    let remote = Gated::new(MemoryStore::new(StoreSettings::default()));
    let cache = Arc::new(TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        config(),
    ));
    let k = key("1");
    KvCache::set(&remote.inner, &k, b("old"), None)
        .await
        .unwrap();
    remote.hold_get.store(true, Ordering::SeqCst);
    let reader = {
        let (cache, k) = (cache.clone(), k.clone());
        tokio::spawn(async move { KvCache::get(cache.as_ref(), &k).await })
    };
    remote.wait_entered().await; // the read has "old" in hand
    assert!(cache.delete(&k).await.unwrap());
    remote.release();
    assert_eq!(
        reader.await.unwrap().unwrap(),
        Some(b("old")),
        "the racing read answers what it read"
    );
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        None,
        "but did not keep it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_does_not_keep_its_value_over_a_newer_one_heard_meanwhile() {
    let store = MemoryStore::new(StoreSettings::default());
    let remote = Gated::new(store.clone());
    let bus = Arc::new(LocalBus::new());
    let a = Arc::new(TieredCache::new(remote.clone(), bus.clone(), config()));
    let other = TieredCache::new(Arc::new(store.clone()), bus.clone(), config());
    let k = key("1");
    remote.hold_set.store(true, Ordering::SeqCst);
    let writer = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move { a.set(&k, b("v2"), None).await })
    };
    remote.wait_entered().await; // v2 is in the remote, the reply not yet back
    other.set(&k, b("v3"), None).await.unwrap(); // newer; a hears of it
    tokio::time::sleep(Duration::from_millis(50)).await;
    remote.release();
    writer.await.unwrap().unwrap();
    assert_eq!(
        KvCache::get(a.as_ref(), &k).await.unwrap(),
        Some(b("v3")),
        "a does not serve its own older v2 after hearing of v3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_that_landed_is_still_announced() {
    let store = MemoryStore::new(StoreSettings::default());
    let remote = Gated::new(store.clone());
    let bus = Arc::new(LocalBus::new());
    let a = TieredCache::new(remote.clone(), bus.clone(), config());
    let other = TieredCache::new(Arc::new(store.clone()), bus.clone(), config());
    let k = key("1");
    a.set(&k, b("v1"), None).await.unwrap();
    assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("v1")));
    remote.fail_set_after_write.store(true, Ordering::SeqCst);
    assert!(
        a.set(&k, b("v2"), None).await.is_err(),
        "the caller sees the lost reply"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        KvCache::get(&other, &k).await.unwrap(),
        Some(b("v2")),
        "other dropped v1"
    );
    assert_eq!(
        KvCache::get(&a, &k).await.unwrap(),
        Some(b("v2")),
        "a dropped v1 too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_miss_seen_by_get_does_not_answer_get_or_load() {
    let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::new(
        remote,
        Arc::new(LocalBus::new()),
        TieredConfig {
            negative_ttl: Some(Duration::from_secs(60)),
            ..config()
        },
    );
    let k = key("new");
    assert_eq!(KvCache::get(&cache, &k).await.unwrap(), None);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let v = cache
        .get_or_load(&k, None, || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Some(b("loaded")))
        })
        .await
        .unwrap();
    assert_eq!(v, Some(b("loaded")));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_keys_are_loaded_once_and_filled_everywhere() {
    let remote = Arc::new(MemoryStore::new(StoreSettings::default()));
    let cache = TieredCache::new(
        remote,
        Arc::new(LocalBus::new()),
        TieredConfig {
            load_batch: 1,
            ..config()
        },
    );
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let keys = vec![key("a"), key("b"), key("a")];
    let v = cache
        .get_many_or_load(&keys, None, move |wanted| {
            seen.lock()
                .unwrap()
                .extend(wanted.iter().map(|k| k.key().to_string()));
            async move { Ok(wanted.into_iter().map(|k| (k, b("x"))).collect()) }
        })
        .await
        .unwrap();
    assert_eq!(v, vec![Some(b("x")), Some(b("x")), Some(b("x"))]);
    assert_eq!(
        *asked.lock().unwrap(),
        vec!["a", "b"],
        "each key loaded once"
    );
}
