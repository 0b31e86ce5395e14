//! Inventory on the memory backend: the shared cases of
//! `chatstate_conformance::inventory`, on fresh stores.

use chatstate_conformance::inventory;
use chatstate_core::StoreSettings;
use chatstate_memory::MemoryStore;

#[tokio::test]
async fn paging_returns_every_record_once() {
    inventory::paging_returns_every_record_once(&MemoryStore::new(StoreSettings::default())).await;
}

#[tokio::test]
async fn restore_is_exact_idempotent_and_keeps_newer() {
    inventory::restore_is_exact_idempotent_and_keeps_newer(&MemoryStore::new(
        StoreSettings::default(),
    ))
    .await;
}

#[tokio::test]
async fn a_refused_append_on_a_full_count_loses_nothing() {
    inventory::a_refused_append_on_a_full_count_loses_nothing(&MemoryStore::new(
        StoreSettings::default(),
    ))
    .await;
}
