//! The whole conformance suite against the memory backend, on a manual clock.

use std::sync::Arc;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{ManualClock, Result, StoreSettings};
use chatstate_memory::MemoryStore;

/// Fresh memory stores on a manual clock. Memory does not outlive the store, so the
/// stores report they are not persistent and the reopen case is reported skipped.
#[derive(Default)]
struct MemoryBackend;

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let clock = ManualClock::starting_now();
        let store = Arc::new(
            MemoryStore::builder()
                .settings(settings.clone())
                .clock(clock.shared())
                .build(),
        );
        Ok(Fixture {
            reads: store.clone(),
            sessions: store.clone(),
            focus: store.clone(),
            counters: store.clone(),
            cache: store.clone(),
            replies: store.clone(),
            replies_peer: store,
            time: TimeControl::Manual(clock),
            settings,
            guard: None,
        })
    }
}

chatstate_conformance::conformance_suite!(MemoryBackend);
