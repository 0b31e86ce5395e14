//! The whole conformance suite with the sessions behind a `LocalSessions` tier over
//! memory, both on the suite's manual clock: one instance, so every promise of a
//! session store must hold exactly through the tier, with copies served for up to
//! an hour (far past any TTL the cases use: the expiry bound must do the work).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{ManualClock, Result, StoreSettings};
use chatstate_layers::{LocalSessions, LocalSessionsConfig};
use chatstate_memory::MemoryStore;

struct LocalSessionsMemory;

#[async_trait]
impl Backend for LocalSessionsMemory {
    fn name(&self) -> &'static str {
        "local-sessions-memory"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let clock = ManualClock::starting_now();
        let store = Arc::new(
            MemoryStore::builder()
                .settings(settings.clone())
                .clock(clock.shared())
                .build(),
        );
        let sessions = Arc::new(LocalSessions::with_clock(
            store.clone(),
            LocalSessionsConfig {
                capacity: 1_000,
                max_age: Duration::from_secs(3600),
                session_ttl: settings.session_ttl,
            },
            clock.shared(),
        ));
        Ok(Fixture {
            reads: store.clone(),
            sessions,
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

chatstate_conformance::conformance_suite!(LocalSessionsMemory, model_cases = 16);
