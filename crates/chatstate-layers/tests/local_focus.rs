//! `LocalFocus`: what its module docs promise, over memory on a manual clock —
//! reads answered from the copy, other instances' writes seen within `max_age`,
//! a stale copy dropped by a conflict, never past the document's TTL, and no
//! answer kept that overlapped a put through the tier.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    Capabilities, ErrorKind, FocusDoc, FocusKey, FocusStore, ManualClock, PutMode, Result,
    StoreSettings,
};
use chatstate_layers::{LocalFocus, LocalSessionsConfig};
use chatstate_memory::MemoryStore;
use tokio::sync::Notify;

const MAX_AGE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(100);

/// A memory store that counts `get`s and can hold one until released.
struct Gated {
    inner: Arc<MemoryStore>,
    gets: AtomicUsize,
    hold: AtomicBool,
    entered: Notify,
    release: Notify,
}

#[async_trait]
impl FocusStore for Gated {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        FocusStore::put(self.inner.as_ref(), key, value, mode, ttl).await
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let answer = FocusStore::get(self.inner.as_ref(), key).await;
        if self.hold.swap(false, Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        answer
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        FocusStore::delete(self.inner.as_ref(), key).await
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        FocusStore::list(self.inner.as_ref(), scope).await
    }

    fn capabilities(&self) -> Capabilities {
        FocusStore::capabilities(self.inner.as_ref())
    }
}

fn setup() -> (ManualClock, Arc<Gated>, LocalFocus<Arc<Gated>>) {
    let clock = ManualClock::starting_now();
    let inner = Arc::new(
        MemoryStore::builder()
            .settings(StoreSettings {
                focus_ttl: TTL,
                ..StoreSettings::default()
            })
            .clock(clock.shared())
            .build(),
    );
    let gated = Arc::new(Gated {
        inner,
        gets: AtomicUsize::new(0),
        hold: AtomicBool::new(false),
        entered: Notify::new(),
        release: Notify::new(),
    });
    let local = LocalFocus::with_clock(
        gated.clone(),
        LocalSessionsConfig {
            capacity: 100,
            max_age: MAX_AGE,
            session_ttl: TTL,
            focus_ttl: TTL,
        },
        clock.shared(),
    );
    (clock, gated, local)
}

fn key(name: &str) -> FocusKey {
    FocusKey::new("acme:+5511", name).unwrap()
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn value_of(store: &impl FocusStore, k: &FocusKey) -> Option<Bytes> {
    store.get(k).await.unwrap().map(|d| d.value)
}

#[tokio::test]
async fn a_put_through_the_tier_is_read_back_without_the_store() {
    let (_clock, gated, local) = setup();
    let k = key("order");
    let doc = local
        .put(&k, b("pizza"), PutMode::Create, None)
        .await
        .unwrap();
    assert_eq!(local.get(&k).await.unwrap(), Some(doc.clone()));
    assert_eq!(gated.gets.load(Ordering::SeqCst), 0, "answered locally");
    // A read of the store keeps its answer too.
    let other = key("address");
    FocusStore::put(
        gated.inner.as_ref(),
        &other,
        b("rua"),
        PutMode::Create,
        None,
    )
    .await
    .unwrap();
    assert_eq!(value_of(&local, &other).await, Some(b("rua")));
    assert_eq!(value_of(&local, &other).await, Some(b("rua")));
    assert_eq!(gated.gets.load(Ordering::SeqCst), 1);
    assert_eq!(local.stats().hits, 2);
}

#[tokio::test]
async fn another_instances_writes_are_seen_within_max_age() {
    let (clock, gated, local) = setup();
    let k = key("order");
    local.put(&k, b("v1"), PutMode::Create, None).await.unwrap();
    // Another instance puts, then deletes, straight to the store.
    FocusStore::put(gated.inner.as_ref(), &k, b("v2"), PutMode::Overwrite, None)
        .await
        .unwrap();
    assert_eq!(value_of(&local, &k).await, Some(b("v1")), "within max_age");
    clock.advance(MAX_AGE);
    assert_eq!(value_of(&local, &k).await, Some(b("v2")), "past max_age");
    FocusStore::delete(gated.inner.as_ref(), &k).await.unwrap();
    clock.advance(MAX_AGE);
    assert_eq!(value_of(&local, &k).await, None);
}

#[tokio::test]
async fn a_put_on_a_stale_version_is_a_conflict_that_drops_the_copy() {
    let (_clock, gated, local) = setup();
    let k = key("order");
    let v1 = local.put(&k, b("v1"), PutMode::Create, None).await.unwrap();
    FocusStore::put(gated.inner.as_ref(), &k, b("v2"), PutMode::Overwrite, None)
        .await
        .unwrap();
    let err = local
        .put(&k, b("mine"), PutMode::IfVersion(v1.version), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let fresh = local.get(&k).await.unwrap().unwrap();
    assert_eq!((fresh.value, fresh.version), (b("v2"), 2), "from the store");
    // Deleting through the tier is seen at once.
    assert!(local.delete(&k).await.unwrap());
    assert_eq!(local.get(&k).await.unwrap(), None);
}

#[tokio::test]
async fn a_copy_is_never_served_past_the_documents_ttl() {
    let (clock, gated, local) = setup();
    let k = key("short");
    let ttl = Duration::from_secs(5);
    local
        .put(&k, b("v"), PutMode::Create, Some(ttl))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(4));
    assert_eq!(value_of(&local, &k).await, Some(b("v")));
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        value_of(&local, &k).await,
        None,
        "expired with the put's TTL"
    );
    // A copy made by a read of a document this tier put expires with that put's
    // TTL too (the tier remembers it), not with the longer default.
    local
        .put(&k, b("w"), PutMode::Create, Some(ttl))
        .await
        .unwrap();
    // A refused put drops the copy: the next read goes to the store.
    let err = local
        .put(&k, b("x"), PutMode::Create, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let gets = gated.gets.load(Ordering::SeqCst);
    assert_eq!(value_of(&local, &k).await, Some(b("w")));
    assert_eq!(value_of(&local, &k).await, Some(b("w")));
    assert_eq!(
        gated.gets.load(Ordering::SeqCst),
        gets + 1,
        "read once, then kept"
    );
    clock.advance(ttl);
    assert_eq!(
        value_of(&local, &k).await,
        None,
        "expired with the put's TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_overlapped_a_put_through_the_tier_is_not_kept() {
    let (_clock, gated, local) = setup();
    let local = Arc::new(local);
    let k = key("order");
    FocusStore::put(gated.inner.as_ref(), &k, b("old"), PutMode::Create, None)
        .await
        .unwrap();
    // A read reaches the store and is held there with the old document...
    gated.hold.store(true, Ordering::SeqCst);
    let entered = gated.entered.notified();
    let reader = {
        let (local, k) = (local.clone(), k.clone());
        tokio::spawn(async move { value_of(local.as_ref(), &k).await })
    };
    entered.await;
    // ...while a put through the tier lands and returns.
    local
        .put(&k, b("new"), PutMode::Overwrite, None)
        .await
        .unwrap();
    gated.release.notify_one();
    assert_eq!(
        reader.await.unwrap(),
        Some(b("old")),
        "the read's own answer"
    );
    let gets = gated.gets.load(Ordering::SeqCst);
    assert_eq!(
        value_of(local.as_ref(), &k).await,
        Some(b("new")),
        "the old answer was not kept over the put"
    );
    assert_eq!(
        gated.gets.load(Ordering::SeqCst),
        gets,
        "answered by the put's copy, which the older answer did not replace"
    );
}
