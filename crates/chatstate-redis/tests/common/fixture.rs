//! A conformance fixture on the shared throwaway server (or another: TLS, Sentinel,
//! Cluster), under a key prefix of its own, that can be reopened by that prefix: the Redis suite uses it as it is, and
//! the layers' suite wraps its cache in a tiered cache. Included with `#[path]` by
//! the conformance tests only (it needs `chatstate-conformance`, which the benches
//! that share `common` do not depend on).

#![allow(dead_code)]

use std::sync::Arc;

use chatstate_conformance::{Fixture, TimeControl};
use chatstate_core::{Error, ErrorKind, KvCache, RedisUrl, Result, StoreSettings};
use chatstate_redis::{RedisStore, RedisStoreBuilder};

use crate::common;

/// A conformance backend whose stores `builder` makes (a TLS server, a master
/// found through Sentinel, a Cluster), each fixture under a prefix of its own.
pub struct BuilderBackend {
    /// The backend's name in the suite's output.
    pub name: &'static str,
    /// Makes a builder for the deployment (prefix and settings are set here).
    pub builder: fn() -> Result<RedisStoreBuilder>,
}

#[async_trait::async_trait]
impl chatstate_conformance::Backend for BuilderBackend {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        open_with((self.builder)()?, common::unique_prefix(), settings, |s| s).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        open_with(
            (self.builder)()?,
            prefix_of(old)?,
            old.settings.clone(),
            |s| s,
        )
        .await
    }
}

/// What a fixture keeps: its prefix, for reopen.
struct Guard {
    prefix: String,
}

/// Stores under `prefix` (a fresh one: [`common::unique_prefix`]) on the shared
/// server; `cache` may wrap the store's cache (a layer under test).
pub async fn open(
    prefix: String,
    settings: StoreSettings,
    cache: impl FnOnce(Arc<RedisStore>) -> Arc<dyn KvCache>,
) -> Result<Fixture> {
    let builder = RedisStore::builder(RedisUrl::parse(&common::shared().url())?);
    open_with(builder, prefix, settings, cache).await
}

/// As [`open`], with stores `builder` makes (another server, or a master found
/// through Sentinel, a Cluster); the prefix and settings are set on it here, and a
/// second client of the same data is the "other instance" of the reply cases.
pub async fn open_with(
    builder: RedisStoreBuilder,
    prefix: String,
    settings: StoreSettings,
    cache: impl FnOnce(Arc<RedisStore>) -> Arc<dyn KvCache>,
) -> Result<Fixture> {
    let builder = builder.prefix(prefix.clone()).settings(settings.clone());
    let store = builder.clone().connect().await?;
    let peer = builder.connect().await?;
    Ok(fixture(Arc::new(store), peer, prefix, settings, cache))
}

fn fixture(
    store: Arc<RedisStore>,
    peer: RedisStore,
    prefix: String,
    settings: StoreSettings,
    cache: impl FnOnce(Arc<RedisStore>) -> Arc<dyn KvCache>,
) -> Fixture {
    Fixture {
        reads: store.clone(),
        sessions: store.clone(),
        focus: store.clone(),
        counters: store.clone(),
        replies: store.clone(),
        replies_peer: Arc::new(peer),
        cache: cache(store),
        time: TimeControl::Real,
        settings,
        guard: Some(Box::new(Guard { prefix })),
    }
}

/// The prefix a fixture made by [`open`] lives under (to reopen the same data).
pub fn prefix_of(fixture: &Fixture) -> Result<String> {
    fixture
        .guard
        .as_ref()
        .and_then(|g| g.downcast_ref::<Guard>())
        .map(|g| g.prefix.clone())
        .ok_or_else(|| Error::new(ErrorKind::Internal, "not a Redis conformance fixture"))
}
