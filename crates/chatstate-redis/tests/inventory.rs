//! Inventory on Redis: the shared cases of `chatstate_conformance::inventory`
//! against a throwaway redis-server (never 6379), each under its own key prefix,
//! plus what only Redis has (SCAN, never KEYS; foreign keys under the prefix).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use chatstate_conformance::inventory;
use chatstate_core::{Inventory, RecordKind, RedisUrl, StoreSettings};
use chatstate_redis::RedisStore;

async fn store() -> RedisStore {
    RedisStore::builder(RedisUrl::parse(&common::shared().url()).unwrap())
        .prefix(common::unique_prefix())
        .settings(StoreSettings::default())
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn paging_returns_every_record_once() {
    let s = store().await;
    inventory::paging_returns_every_record_once(&s).await;
    let sent = s.commands_by_name();
    assert!(sent.contains_key("SCAN"), "{sent:?}");
    assert!(!sent.contains_key("KEYS"), "never KEYS: {sent:?}");
}

#[tokio::test]
async fn restore_is_exact_idempotent_and_keeps_newer() {
    inventory::restore_is_exact_idempotent_and_keeps_newer(&store().await).await;
}

/// A key under the prefix that chatstate's layout does not make is reported as
/// unreadable by name; the walk returns every real record.
#[tokio::test]
async fn a_foreign_key_under_the_prefix_is_reported_and_the_walk_goes_on() {
    let s = store().await;
    let keys = inventory::fill(&s).await;
    let prefix = s.layout().prefix().to_string();
    let foreign = format!("{prefix}:kv:no-separator-here");
    common::shared().cli(&["SET", &foreign, "x"]);
    let page = s.scan(RecordKind::Cache, None, 1000).await.unwrap();
    assert_eq!(page.records.len(), keys[3].len());
    assert_eq!(page.unreadable.len(), 1);
    assert!(page.unreadable[0].to_string().contains(&foreign));
    // Paged one record at a time (every step split), it is still reported once.
    let (mut records, mut unreadable, mut cursor) = (0, 0, None);
    loop {
        let page = s.scan(RecordKind::Cache, cursor, 1).await.unwrap();
        records += page.records.len();
        unreadable += page.unreadable.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(records, keys[3].len());
    assert_eq!(unreadable, 1, "reported once across pages");
}

/// With pages larger than a SCAN step, every page ends at a step's boundary: the
/// cursor is the bare SCAN cursor, pages never overfill, and the walk returns every
/// record exactly once (no repeats: the table does not change here).
#[tokio::test]
async fn pages_larger_than_a_step_end_at_step_boundaries() {
    use chatstate_core::{CacheKey, KvCache, Record};
    let s = store().await;
    for i in 0..700 {
        KvCache::set(
            &s,
            &CacheKey::new("ns", format!("k{i}")).unwrap(),
            bytes::Bytes::from_static(b"v"),
            None,
        )
        .await
        .unwrap();
    }
    let (mut seen, mut pages, mut cursor) = (std::collections::BTreeSet::new(), 0, None);
    loop {
        let page = s.scan(RecordKind::Cache, cursor, 300).await.unwrap();
        pages += 1;
        assert!(page.records.len() <= 300);
        for r in page.records {
            let Record::Cache(c) = r else {
                panic!("a cache record")
            };
            assert!(seen.insert(c.key.key().to_string()), "returned twice");
        }
        match page.next_cursor {
            Some(next) => {
                assert!(
                    next.parse::<u64>().is_ok(),
                    "a page ends at a step boundary: {next:?}"
                );
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 700);
    assert!(pages >= 3, "{pages} pages");
}

#[tokio::test]
async fn a_refused_append_on_a_full_count_loses_nothing() {
    inventory::a_refused_append_on_a_full_count_loses_nothing(&store().await).await;
}
