//! The whole conformance suite against a real redis-server this test process starts
//! on a free port (never 6379), each fixture under its own key prefix. Redis keeps
//! time itself, so TTL cases run on real time with a 1 s unit.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{RedisUrl, Result, StoreSettings};
use chatstate_redis::RedisStore;

struct RedisBackend;

/// What a fixture keeps: its prefix, for reopen.
struct Guard {
    prefix: String,
}

async fn fixture(prefix: String, settings: StoreSettings) -> Result<Fixture> {
    let server = common::shared();
    let store = Arc::new(
        RedisStore::builder(RedisUrl::parse(&server.url())?)
            .prefix(prefix.clone())
            .settings(settings.clone())
            .connect()
            .await?,
    );
    Ok(Fixture {
        sessions: store.clone(),
        focus: store.clone(),
        counters: store.clone(),
        cache: store,
        time: TimeControl::Real,
        settings,
        guard: Some(Box::new(Guard { prefix })),
    })
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        fixture(common::unique_prefix(), settings).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        let prefix = old
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .map(|g| g.prefix.clone())
            .ok_or_else(|| {
                chatstate_core::Error::new(
                    chatstate_core::ErrorKind::Internal,
                    "not a redis fixture",
                )
            })?;
        fixture(prefix, old.settings.clone()).await
    }
}

// Real time makes each model case sleep through its Advance steps: fewer cases here
// (the memory and file backends run 64 and 24 on a manual clock).
chatstate_conformance::conformance_suite!(RedisBackend, model_cases = 6);
