//! The instrumentation layer must not change behaviour: the whole conformance suite
//! runs through `Instrumented<MemoryStore>` (a wrapper that skipped or altered a
//! call would fail a case).

use std::sync::Arc;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{ManualClock, Result, StoreSettings};
use chatstate_layers::Instrumented;
use chatstate_memory::MemoryStore;

struct InstrumentedMemory;

#[async_trait]
impl Backend for InstrumentedMemory {
    fn name(&self) -> &'static str {
        "instrumented-memory"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let clock = ManualClock::starting_now();
        let store = Arc::new(Instrumented::new(
            MemoryStore::builder()
                .settings(settings.clone())
                .clock(clock.shared())
                .build(),
        ));
        Ok(Fixture {
            reads: store.clone(),
            sessions: store.clone(),
            focus: store.clone(),
            counters: store.clone(),
            replies: store.clone(),
            replies_peer: store.clone(),
            cache: store,
            time: TimeControl::Manual(clock),
            settings,
            guard: None,
        })
    }
}

chatstate_conformance::conformance_suite!(InstrumentedMemory, model_cases = 16);
