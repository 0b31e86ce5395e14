//! The whole conformance suite against a real redis-server this test process starts
//! on a free port (never 6379), each fixture under its own key prefix. Redis keeps
//! time itself, so TTL cases run on real time with a 1 s unit.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture};
use chatstate_core::{Result, StoreSettings};

struct RedisBackend;

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        fixture::open(common::unique_prefix(), settings, |s| s).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        fixture::open(fixture::prefix_of(old)?, old.settings.clone(), |s| s).await
    }
}

// Real time makes each model case sleep through its Advance steps: fewer cases here
// (the memory and file backends run 64 and 24 on a manual clock).
chatstate_conformance::conformance_suite!(RedisBackend, model_cases = 6);
