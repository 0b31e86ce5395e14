//! `KvCacheExt::get_or_load` and `get_many_or_load` (chatstate-core's typed
//! extension, over a memory store here) degrade instead of failing: a temporary read
//! error calls the loader, a failed write-back is counted, not returned; other read
//! errors are still returned. The counters are read from a thread-local metrics
//! recorder (current-thread runtime).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod flaky;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chatstate_core::ext::{READ_FALLBACKS_METRIC, WRITEBACK_FAILURES_METRIC};
use chatstate_core::{CacheKey, Codec, Error, ErrorKind, KvCache, KvCacheExt, StoreSettings};
use chatstate_memory::MemoryStore;
use flaky::{Counting, Flaky};

fn key(k: &str) -> CacheKey {
    CacheKey::new("customers", k).unwrap()
}

fn remote() -> Arc<Flaky> {
    Flaky::new(MemoryStore::new(StoreSettings::default()))
}

#[tokio::test]
async fn get_or_load_answers_the_loader_when_the_read_fails_temporarily() {
    let metrics = Counting::default();
    let _local = metrics::set_default_local_recorder(&metrics);
    let cache = remote();
    for kind in [ErrorKind::Unavailable, ErrorKind::Timeout] {
        cache.fail_reads(Some(kind));
        let k = key(kind.as_str());
        let v: String = cache
            .get_or_load(&k, None, Codec::Json, || async { Ok("ana".to_string()) })
            .await
            .unwrap();
        assert_eq!(v, "ana", "{kind}: the loader answers");
        cache.fail_reads(None);
        assert_eq!(
            KvCache::get(&cache.inner, &k).await.unwrap(),
            None,
            "{kind}: no write-back after a failed read"
        );
    }
    assert_eq!(metrics.count(READ_FALLBACKS_METRIC, "get_or_load"), 2);
    assert_eq!(metrics.count(WRITEBACK_FAILURES_METRIC, "get_or_load"), 0);
}

#[tokio::test]
async fn get_or_load_counts_a_failed_write_back_and_returns_the_value() {
    let metrics = Counting::default();
    let _local = metrics::set_default_local_recorder(&metrics);
    let cache = remote();
    cache.fail_writes(Some(ErrorKind::Timeout));
    let k = key("1");
    let v: u32 = cache
        .get_or_load(&k, None, Codec::Bincode, || async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(v, 7, "the loaded value, not the write-back's error");
    assert_eq!(metrics.count(WRITEBACK_FAILURES_METRIC, "get_or_load"), 1);
    assert_eq!(metrics.count(READ_FALLBACKS_METRIC, "get_or_load"), 0);
    // Not a temporary error either: a write-back failure is never returned.
    cache.fail_writes(Some(ErrorKind::InvalidInput));
    let v: u32 = cache
        .get_or_load(&k, None, Codec::Bincode, || async { Ok(8) })
        .await
        .unwrap();
    assert_eq!(v, 8);
    assert_eq!(metrics.count(WRITEBACK_FAILURES_METRIC, "get_or_load"), 2);
}

#[tokio::test]
async fn get_or_load_returns_read_errors_that_are_not_temporary() {
    let cache = remote();
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |calls: Arc<AtomicUsize>| {
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok("loaded".to_string())
        }
    };
    // Bytes that are not a JSON string: the loader would hide a real problem.
    let k = key("corrupt");
    KvCache::set(&cache.inner, &k, Bytes::from_static(b"garbage"), None)
        .await
        .unwrap();
    let err = cache
        .get_or_load::<String, _, _>(&k, None, Codec::Json, loader(calls.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    for kind in [ErrorKind::WrongType, ErrorKind::InvalidInput] {
        cache.fail_reads(Some(kind));
        let err = cache
            .get_or_load::<String, _, _>(&key("x"), None, Codec::Json, loader(calls.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the loader was never called"
    );
    // A loader error is returned as before.
    cache.fail_reads(None);
    let err = cache
        .get_or_load::<String, _, _>(&key("y"), None, Codec::Json, || async {
            Err(Error::new(ErrorKind::Unavailable, "upstream down"))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("upstream down"), "{err}");
}

#[tokio::test]
async fn get_many_or_load_reads_once_loads_the_missing_once_and_writes_back_once() {
    let store = MemoryStore::new(StoreSettings::default());
    let keys = vec![key("1"), key("2"), key("3"), key("2"), key("4")];
    store
        .set_value(&keys[0], &"cached-1".to_string(), None, Codec::Json)
        .await
        .unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let values: Vec<Option<String>> = store
        .get_many_or_load(&keys, None, Codec::Json, move |missing| {
            seen.lock().unwrap().push(missing.clone());
            async move {
                Ok(missing
                    .into_iter()
                    // "4" is not found; "9" was not asked for.
                    .filter(|k| k.key() != "4")
                    .map(|k| {
                        let v = format!("loaded-{}", k.key());
                        (k, v)
                    })
                    .chain([(key("9"), "stray".to_string())])
                    .collect())
            }
        })
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![
            Some("cached-1".to_string()),
            Some("loaded-2".to_string()),
            Some("loaded-3".to_string()),
            Some("loaded-2".to_string()),
            None,
        ]
    );
    assert_eq!(
        *asked.lock().unwrap(),
        vec![vec![key("2"), key("3"), key("4")]],
        "one loader call, each missing key once"
    );
    assert!(
        !store.exists(&key("9")).await.unwrap(),
        "keys not asked for are not written"
    );
    // Written back: the next call finds everything but "4" and loads only that.
    let again: Vec<Option<String>> = store
        .get_many_or_load(&keys[..4], None, Codec::Json, |missing| async move {
            panic!("nothing is missing, yet the loader was called with {missing:?}")
        })
        .await
        .unwrap();
    assert_eq!(again[2].as_deref(), Some("loaded-3"));
}

#[tokio::test]
async fn get_many_or_load_degrades_like_get_or_load() {
    let metrics = Counting::default();
    let _local = metrics::set_default_local_recorder(&metrics);
    let cache = remote();
    let keys = vec![key("1"), key("2"), key("1")];
    cache
        .inner
        .set_value(&keys[0], &1u32, None, Codec::Json)
        .await
        .unwrap();
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = |asked: Arc<std::sync::Mutex<Vec<Vec<CacheKey>>>>| {
        move |missing: Vec<CacheKey>| {
            asked.lock().unwrap().push(missing.clone());
            async move { Ok(missing.into_iter().map(|k| (k, 10u32)).collect()) }
        }
    };

    // The read fails: every key is loaded (once), nothing written back.
    cache.fail_reads(Some(ErrorKind::Timeout));
    let values = cache
        .get_many_or_load(&keys, None, Codec::Json, load(asked.clone()))
        .await
        .unwrap();
    assert_eq!(values, vec![Some(10), Some(10), Some(10)]);
    assert_eq!(asked.lock().unwrap().pop(), Some(vec![key("1"), key("2")]));
    assert_eq!(metrics.count(READ_FALLBACKS_METRIC, "get_many_or_load"), 1);
    cache.fail_reads(None);
    assert!(
        !cache.inner.exists(&key("2")).await.unwrap(),
        "not written back"
    );

    // The write-back fails: the values are returned, the failure counted.
    cache.fail_writes(Some(ErrorKind::Unavailable));
    let values = cache
        .get_many_or_load(&keys, None, Codec::Json, load(asked.clone()))
        .await
        .unwrap();
    assert_eq!(values, vec![Some(1), Some(10), Some(1)]);
    assert_eq!(asked.lock().unwrap().pop(), Some(vec![key("2")]));
    assert_eq!(
        metrics.count(WRITEBACK_FAILURES_METRIC, "get_many_or_load"),
        1
    );

    // A decode error for one key is returned, the loader not called.
    cache.fail_writes(None);
    KvCache::set(
        &cache.inner,
        &key("2"),
        Bytes::from_static(b"garbage"),
        None,
    )
    .await
    .unwrap();
    let err = cache
        .get_many_or_load(&keys, None, Codec::Json, load(asked.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
    assert!(asked.lock().unwrap().is_empty());
}
