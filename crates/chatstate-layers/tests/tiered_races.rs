//! The tiered cache's races, made to happen: a remote call held open by a gate while
//! another change lands or a read runs. Each test fails if a stale copy is kept.

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

/// A remote whose calls can be held at named points, and whose `set` can fail after
/// writing (a lost reply).
struct Gated {
    inner: MemoryStore,
    /// `get` has read its value and not answered yet.
    get_after_read: Gate,
    /// `set` has not written yet.
    set_before_write: Gate,
    /// `set` has written and not answered yet.
    set_after_write: Gate,
    /// `delete` has not deleted yet.
    delete_before: Gate,
    /// `clear_prefix` has not cleared yet.
    clear_before: Gate,
    fail_set_after_write: AtomicBool,
}

impl Gated {
    fn new(inner: MemoryStore) -> Arc<Self> {
        Arc::new(Gated {
            inner,
            get_after_read: Gate::new(),
            set_before_write: Gate::new(),
            set_after_write: Gate::new(),
            delete_before: Gate::new(),
            clear_before: Gate::new(),
            fail_set_after_write: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl KvCache for Gated {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let v = self.inner.get(key).await;
        self.get_after_read.hold().await;
        v
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_before_write.hold().await;
        KvCache::set(&self.inner, key, value, ttl).await?;
        self.set_after_write.hold().await;
        if self.fail_set_after_write.swap(false, Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Timeout, "injected: reply lost"));
        }
        Ok(())
    }
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.inner.set_many(entries, ttl).await
    }
    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        self.inner.set_many_with_ttls(entries).await
    }
    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        self.inner.set_with_aliases(key, value, ttl, aliases).await
    }
    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        self.inner.get_by_alias(alias).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.delete_before.hold().await;
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
        self.clear_before.hold().await;
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

/// A tiered cache alone on a gated memory remote, and the key the races are about.
fn setup() -> (Arc<Gated>, Arc<TieredCache>, CacheKey) {
    let remote = Gated::new(MemoryStore::new(StoreSettings::default()));
    let cache = Arc::new(TieredCache::new(
        remote.clone(),
        Arc::new(LocalBus::new()),
        config(),
    ));
    (remote, cache, key("1"))
}

/// Runs `call` on the cache and the key in a task of its own (so a gate can hold it).
fn spawn<T, F, Fut>(cache: &Arc<TieredCache>, k: &CacheKey, call: F) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce(Arc<TieredCache>, CacheKey) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    tokio::spawn(call(cache.clone(), k.clone()))
}

impl Gated {
    /// Stores `value` in the remote directly, bypassing the tiered cache.
    async fn seed(&self, k: &CacheKey, value: &str) {
        KvCache::set(&self.inner, k, b(value), None).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_does_not_keep_a_value_this_instance_deleted() {
    let (remote, cache, k) = setup();
    remote.seed(&k, "old").await;
    remote.get_after_read.arm();
    let reader = spawn(&cache, &k, |c, kk| async move {
        KvCache::get(c.as_ref(), &kk).await
    });
    remote.get_after_read.entered().await; // the read has "old" in hand
    assert!(cache.delete(&k).await.unwrap());
    remote.get_after_read.release();
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
    remote.set_after_write.arm();
    let writer = {
        let (a, k) = (a.clone(), k.clone());
        tokio::spawn(async move { a.set(&k, b("v2"), None).await })
    };
    remote.set_after_write.entered().await; // v2 is in the remote, the reply not yet back
    other.set(&k, b("v3"), None).await.unwrap(); // newer; a hears of it
    tokio::time::sleep(Duration::from_millis(50)).await;
    remote.set_after_write.release();
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
    // `other` holds v1 locally (a read that overlapped hearing a's write is not
    // kept: read until one is a local hit), else it would read v2 from the remote
    // whether or not the failed write was announced.
    let mut kept = false;
    for _ in 0..200 {
        if other.stats().invalidations == 1 {
            let before = other.stats().local_hits;
            assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("v1")));
            assert_eq!(KvCache::get(&other, &k).await.unwrap(), Some(b("v1")));
            if other.stats().local_hits > before {
                kept = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(kept, "other keeps v1 locally");
    remote.fail_set_after_write.store(true, Ordering::SeqCst);
    assert!(
        a.set(&k, b("v2"), None).await.is_err(),
        "the caller sees the lost reply"
    );
    let mut heard = false;
    for _ in 0..200 {
        if other.stats().invalidations == 2 {
            heard = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(heard, "the failed write was announced");
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
        .get_or_load_bytes(&k, None, || async move {
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
        .get_many_or_load_bytes(&keys, None, move |wanted| {
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

/// Issue 8, item 8: a read that starts after `delete` has begun and is served before
/// the DEL lands answers the old value, but does not keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_this_instances_delete_does_not_keep_the_old_value() {
    let (remote, cache, k) = setup();
    remote.seed(&k, "old").await;
    remote.delete_before.arm();
    let deleting = spawn(&cache, &k, |c, kk| async move { c.delete(&kk).await });
    remote.delete_before.entered().await; // the DEL is on the wire, not landed
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        Some(b("old")),
        "the read is served before the DEL lands"
    );
    remote.delete_before.release();
    assert!(deleting.await.unwrap().unwrap());
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        None,
        "the deleted value is not served from the local tier"
    );
}

/// Issue 8, item 8: a read that fetched the old value while `set` was on the wire,
/// and keeps it after the set has kept the new one, does not win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_this_instances_set_does_not_keep_the_old_value() {
    let (remote, cache, k) = setup();
    remote.seed(&k, "old").await;
    remote.set_before_write.arm();
    let setting = spawn(&cache, &k, |c, kk| async move {
        c.set(&kk, b("new"), None).await
    });
    remote.set_before_write.entered().await; // the SET is on the wire, not landed
    remote.get_after_read.arm();
    let reading = spawn(&cache, &k, |c, kk| async move {
        KvCache::get(c.as_ref(), &kk).await
    });
    remote.get_after_read.entered().await; // the read has "old" in hand
    remote.set_before_write.release();
    setting.await.unwrap().unwrap(); // "new" landed and was kept locally
    remote.get_after_read.release();
    assert_eq!(reading.await.unwrap().unwrap(), Some(b("old")));
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        Some(b("new")),
        "the read that overlapped the set did not stay in the local tier"
    );
}

/// Issue 8, item 8: reads of the namespace while `clear_prefix` runs answer what
/// they find, but do not keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_during_this_instances_clear_prefix_does_not_keep_the_old_value() {
    let (remote, cache, k) = setup();
    let other = CacheKey::new("contacts", "1").unwrap();
    for k in [&k, &other] {
        remote.seed(k, "old").await;
    }
    remote.clear_before.arm();
    let clearing = spawn(&cache, &k, |c, _| async move {
        c.clear_prefix("customers", "").await
    });
    remote.clear_before.entered().await; // the clear is running, nothing deleted yet
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        Some(b("old")),
        "the read is served before the clear reaches the key"
    );
    remote.clear_before.release();
    assert_eq!(clearing.await.unwrap().unwrap(), 1);
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        None,
        "the cleared value is not served from the local tier"
    );
    assert_eq!(
        KvCache::get(cache.as_ref(), &other).await.unwrap(),
        Some(b("old")),
        "another namespace is untouched"
    );
}

/// A `get_or_load` that starts after this instance's `delete` returned must not
/// answer the deleted value by joining an older, still-running load of the same key
/// (moka's `try_get_with` merges concurrent misses into one load). `held` is where
/// the older load A is held while the delete runs; `stored` is the remote's value
/// before A: with one, A is held after reading it (and answers it); without, A misses,
/// loads "loaded-a" and is held after its write-back (and answers that).
async fn get_or_load_after_delete_loads_afresh(held: fn(&Gated) -> &Gate, stored: Option<&str>) {
    let (remote, cache, k) = setup();
    if let Some(v) = stored {
        remote.seed(&k, v).await;
    }
    let a_answers = stored.unwrap_or("loaded-a");
    let load = |loaded: &'static str| {
        spawn(&cache, &k, move |c, kk| async move {
            c.get_or_load_bytes(&kk, None, || async move { Ok(Some(b(loaded))) })
                .await
        })
    };
    held(&remote).arm();
    let a = load("loaded-a");
    held(&remote).entered().await;
    // This instance deletes the key; the delete has returned. Then B starts.
    assert!(cache.delete(&k).await.unwrap());
    let b_task = load("loaded-b");
    // Let B reach the local tier (its miss is counted right before it joins A's
    // load) and join the load, then let A answer.
    let mut b_missed = false;
    for _ in 0..400 {
        if cache.stats().local_misses >= 2 {
            b_missed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(b_missed, "B reached the local tier");
    tokio::time::sleep(Duration::from_millis(50)).await;
    held(&remote).release();
    assert_eq!(
        a.await.unwrap().unwrap(),
        Some(b(a_answers)),
        "A overlapped the delete: answering what it had is fine"
    );
    assert_eq!(
        b_task.await.unwrap().unwrap(),
        Some(b("loaded-b")),
        "B started after `delete` returned: it must load afresh, not answer the deleted value"
    );
    assert_eq!(
        KvCache::get(cache.as_ref(), &k).await.unwrap(),
        Some(b("loaded-b")),
        "the deleted value must not stay in the local tier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_load_started_after_delete_does_not_join_an_older_load() {
    get_or_load_after_delete_loads_afresh(|r| &r.get_after_read, Some("old")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_load_started_after_delete_does_not_join_an_older_write_back() {
    get_or_load_after_delete_loads_afresh(|r| &r.set_after_write, None).await;
}
