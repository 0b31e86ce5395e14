//! The whole conformance suite with the cache behind a `TieredCache`: over memory (on
//! the suite's manual clock, which the tiered cache reads too) and over a real
//! redis-server this process starts (on real time). Sessions, focus and counters are
//! the backend's own; every cache case goes through the local tier.
//!
//! **The local TTL here is a quarter (memory) or a fifth (Redis) of the suite's time
//! unit, and that is deliberate.** A copy that a read brings back from the remote is
//! kept for the local TTL without knowing the entry's remaining remote TTL (asking
//! would cost a second round trip), so it may be served for up to the local TTL after
//! the remote entry expired: the documented staleness bound. The suite checks
//! expiry to the half unit, so the local TTL must be below that for its TTL cases to
//! hold; within one step of a case (no time passing) every repeated read is still a
//! local hit, so the local tier, its invalidation on writes, deletes, expire and
//! clear_prefix, and the capping of written copies by their remote TTL are all
//! exercised. `tests/tiered_ttl.rs` checks the cap with a local TTL far longer than
//! the entries' TTLs.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;
#[path = "../../chatstate-redis/tests/common/fixture.rs"]
mod fixture;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{LocalBus, ManualClock, Result, SharedClock, StoreSettings};
use chatstate_layers::{TieredCache, TieredConfig};
use chatstate_memory::MemoryStore;

fn tiered(
    remote: Arc<dyn chatstate_core::KvCache>,
    settings: &StoreSettings,
    local_ttl: Duration,
    clock: SharedClock,
) -> Arc<TieredCache> {
    Arc::new(TieredCache::with_clock(
        remote,
        Arc::new(LocalBus::new()),
        TieredConfig {
            local_ttl,
            remote_default_ttl: Some(settings.cache_ttl),
            ..TieredConfig::default()
        },
        clock,
    ))
}

/// Memory behind a tiered cache, both on one manual clock.
struct TieredMemory;

#[async_trait]
impl Backend for TieredMemory {
    fn name(&self) -> &'static str {
        "tiered-memory"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let clock = ManualClock::starting_now();
        let store = Arc::new(
            MemoryStore::builder()
                .settings(settings.clone())
                .clock(clock.shared())
                .build(),
        );
        let local_ttl = self.time_unit() / 4;
        Ok(Fixture {
            reads: store.clone(),
            sessions: store.clone(),
            focus: store.clone(),
            counters: store.clone(),
            replies: store.clone(),
            replies_peer: store.clone(),
            cache: tiered(store, &settings, local_ttl, clock.shared()),
            time: TimeControl::Manual(clock),
            settings,
            guard: None,
        })
    }
}

mod memory {
    use super::TieredMemory;
    chatstate_conformance::conformance_suite!(TieredMemory, model_cases = 32);
}

/// Redis behind a tiered cache, on real time.
struct TieredRedis;

async fn redis_fixture(prefix: String, settings: StoreSettings) -> Result<Fixture> {
    let local_ttl = TieredRedis.time_unit() / 5;
    let cache_settings = settings.clone();
    fixture::open(prefix, settings, move |store| {
        tiered(
            store,
            &cache_settings,
            local_ttl,
            chatstate_core::system_clock(),
        )
    })
    .await
}

#[async_trait]
impl Backend for TieredRedis {
    fn name(&self) -> &'static str {
        "tiered-redis"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        redis_fixture(common::unique_prefix(), settings).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        redis_fixture(fixture::prefix_of(old)?, old.settings.clone()).await
    }
}

mod redis {
    use super::TieredRedis;
    // Real time: the model test sleeps through its Advance steps (as in the Redis
    // crate's own suite, few cases).
    chatstate_conformance::conformance_suite!(TieredRedis, model_cases = 6);
}
