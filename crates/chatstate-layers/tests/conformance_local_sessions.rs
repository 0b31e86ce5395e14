//! The whole conformance suite with the sessions behind a `LocalSessions` tier and
//! the focus documents behind a `LocalFocus` tier over memory, all on the suite's
//! manual clock: one instance, so every promise of a session and a focus store
//! must hold exactly through the tiers, with copies served for up to an hour (far
//! past any TTL the cases use: the expiry bounds must do the work).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{ManualClock, Result, StoreSettings};
use chatstate_layers::{LocalFocus, LocalSessions, LocalSessionsConfig};
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
        let config = LocalSessionsConfig {
            capacity: 1_000,
            max_age: Duration::from_secs(3600),
            session_ttl: settings.session_ttl,
            focus_ttl: settings.focus_ttl,
        };
        let sessions = Arc::new(LocalSessions::with_clock(
            store.clone(),
            config.clone(),
            clock.shared(),
        ));
        let focus = Arc::new(LocalFocus::with_clock(
            store.clone(),
            config,
            clock.shared(),
        ));
        Ok(Fixture {
            reads: store.clone(),
            sessions,
            focus,
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
