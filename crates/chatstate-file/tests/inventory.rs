//! Inventory on the file backend: the shared cases of
//! `chatstate_conformance::inventory`, each in its own temporary folder, plus what
//! only files have (an unreadable record is reported, not fatal).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use chatstate_conformance::inventory;
use chatstate_core::{Inventory, RecordKind};
use chatstate_file::FileStore;

fn store(dir: &tempfile::TempDir) -> FileStore {
    FileStore::builder(dir.path())
        .durability(chatstate_file::Durability::None)
        .sweep_interval(None)
        .open()
        .unwrap()
}

#[tokio::test]
async fn paging_returns_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    inventory::paging_returns_every_record_once(&store(&dir)).await;
}

#[tokio::test]
async fn restore_is_exact_idempotent_and_keeps_newer() {
    let dir = tempfile::tempdir().unwrap();
    inventory::restore_is_exact_idempotent_and_keeps_newer(&store(&dir)).await;
}

/// A torn session file is listed as unreadable (naming the file) and the walk
/// returns every other session.
#[tokio::test]
async fn a_corrupt_record_is_reported_and_the_walk_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let keys = inventory::fill(&s).await;
    let tenant_dir = std::fs::read_dir(dir.path().join("sessions"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let victim = std::fs::read_dir(&tenant_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let page = s.scan(RecordKind::Session, None, 1000).await.unwrap();
    assert_eq!(page.records.len(), keys[0].len() - 1);
    assert_eq!(page.unreadable.len(), 1);
    let shown = page.unreadable[0].to_string();
    assert!(
        shown.contains(victim.file_name().unwrap().to_str().unwrap()),
        "{shown}"
    );
    // Paged one record at a time, the bad file is still reported exactly once.
    let (mut records, mut unreadable, mut cursor) = (0, 0, None);
    loop {
        let page = s.scan(RecordKind::Session, cursor, 1).await.unwrap();
        records += page.records.len();
        unreadable += page.unreadable.len();
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(records, keys[0].len() - 1);
    assert_eq!(unreadable, 1, "reported once across pages");
}

#[tokio::test]
async fn a_refused_append_on_a_full_count_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    inventory::a_refused_append_on_a_full_count_loses_nothing(&store(&dir)).await;
}
