//! Issue 8, item 8: a `get_or_load` that starts after this instance's `delete`
//! returned must not answer the deleted value by joining an older, still-running load
//! of the same key (moka's `try_get_with` merges concurrent misses into one load).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{CacheKey, KvCache, LocalBus, Result, StoreSettings};
use chatstate_layers::{TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;
use tokio::sync::Semaphore;

/// One place a remote call can be held: armed, the next call that reaches it says
/// so and waits until the test releases it.
struct Gate {
    armed: AtomicBool,
    entered: Semaphore,
    pass: Semaphore,
}

impl Gate {
    fn new() -> Self {
        Gate {
            armed: AtomicBool::new(false),
            entered: Semaphore::new(0),
            pass: Semaphore::new(0),
        }
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Waits until a call is held here.
    async fn entered(&self) {
        self.entered.acquire().await.unwrap().forget();
    }

    fn release(&self) {
        self.pass.add_permits(1);
    }

    async fn hold(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.add_permits(1);
            self.pass.acquire().await.unwrap().forget();
        }
    }
}

/// A memory remote whose `get` can be held after reading its value, and whose `set`
/// after writing it.
struct Held {
    inner: MemoryStore,
    get_after_read: Gate,
    set_after_write: Gate,
}

#[async_trait]
impl KvCache for Held {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let v = self.inner.get(key).await;
        self.get_after_read.hold().await;
        v
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        KvCache::set(&self.inner, key, value, ttl).await?;
        self.set_after_write.hold().await;
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

fn setup() -> (Arc<Held>, Arc<TieredCache>, CacheKey) {
    let remote = Arc::new(Held {
        inner: MemoryStore::new(StoreSettings::default()),
        get_after_read: Gate::new(),
        set_after_write: Gate::new(),
    });
    let cache = Arc::new(TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl: Duration::from_secs(600),
            ..TieredConfig::default()
        },
    ));
    (remote, cache, CacheKey::new("customers", "1").unwrap())
}

fn spawn_get_or_load(
    cache: &Arc<TieredCache>,
    k: &CacheKey,
    loaded: &'static [u8],
) -> tokio::task::JoinHandle<Result<Option<Bytes>>> {
    let (cache, k) = (cache.clone(), k.clone());
    tokio::spawn(async move {
        cache
            .get_or_load(
                &k,
                None,
                || async move { Ok(Some(Bytes::from_static(loaded))) },
            )
            .await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_load_started_after_delete_does_not_join_an_older_load() {
    let (remote, cache, k) = setup();
    KvCache::set(&remote.inner, &k, Bytes::from_static(b"old"), None)
        .await
        .unwrap();

    // A: a get_or_load whose remote read has "old" in hand, not answered yet.
    remote.get_after_read.arm();
    let a = spawn_get_or_load(&cache, &k, b"loaded-a");
    remote.get_after_read.entered().await;

    // This instance deletes the key; the delete has returned.
    assert!(cache.delete(&k).await.unwrap());

    // B starts after the delete returned.
    let b = spawn_get_or_load(&cache, &k, b"loaded-b");
    // Let B reach the local tier and join A's load, then let A's read answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    remote.get_after_read.release();

    assert_eq!(
        a.await.unwrap().unwrap().as_deref(),
        Some(&b"old"[..]),
        "A overlapped the delete: answering what it read is fine"
    );
    let got_b = b.await.unwrap().unwrap();
    assert_eq!(
        got_b.as_deref(),
        Some(&b"loaded-b"[..]),
        "B started after `delete` returned: it must load afresh, not answer the deleted value"
    );
    assert_eq!(
        cache.get(&k).await.unwrap().as_deref(),
        Some(&b"loaded-b"[..]),
        "the deleted value must not stay in the local tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_load_started_after_delete_does_not_join_an_older_write_back() {
    let (remote, cache, k) = setup();

    // A: a get_or_load that missed, loaded, and whose write-back has landed remotely
    // but not answered yet.
    remote.set_after_write.arm();
    let a = spawn_get_or_load(&cache, &k, b"loaded-a");
    remote.set_after_write.entered().await;

    // This instance deletes the key (A's written value); the delete has returned.
    assert!(cache.delete(&k).await.unwrap());

    // B starts after the delete returned.
    let b = spawn_get_or_load(&cache, &k, b"loaded-b");
    // Let B reach the local tier and join A's load, then let A's write-back answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    remote.set_after_write.release();

    assert_eq!(
        a.await.unwrap().unwrap().as_deref(),
        Some(&b"loaded-a"[..]),
        "A overlapped the delete: answering what it loaded is fine"
    );
    let got_b = b.await.unwrap().unwrap();
    assert_eq!(
        got_b.as_deref(),
        Some(&b"loaded-b"[..]),
        "B started after `delete` returned: it must load afresh, not answer the deleted value"
    );
    assert_eq!(
        cache.get(&k).await.unwrap().as_deref(),
        Some(&b"loaded-b"[..]),
        "the deleted value must not stay in the local tier"
    );
}
