//! A conformance fixture on the shared throwaway server (or another, e.g. a TLS one), under a key prefix of its
//! own, that can be reopened by that prefix: the Redis suite uses it as it is, and
//! the layers' suite wraps its cache in a tiered cache. Included with `#[path]` by
//! the conformance tests only (it needs `chatstate-conformance`, which the benches
//! that share `common` do not depend on).

use std::sync::Arc;

use chatstate_conformance::{Fixture, TimeControl};
use chatstate_core::{Error, ErrorKind, KvCache, RedisUrl, Result, StoreSettings, TlsConfig};
use chatstate_redis::RedisStore;

use crate::common;

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
    let url = common::shared().url();
    open_on(&url, TlsConfig::default(), prefix, settings, cache).await
}

/// [`open`] on the server at `url`, with `tls` (for a `rediss://` URL).
pub async fn open_on(
    url: &str,
    tls: TlsConfig,
    prefix: String,
    settings: StoreSettings,
    cache: impl FnOnce(Arc<RedisStore>) -> Arc<dyn KvCache>,
) -> Result<Fixture> {
    let store = Arc::new(
        RedisStore::builder(RedisUrl::parse(url)?)
            .tls(tls)
            .prefix(prefix.clone())
            .settings(settings.clone())
            .connect()
            .await?,
    );
    Ok(Fixture {
        sessions: store.clone(),
        focus: store.clone(),
        counters: store.clone(),
        cache: cache(store),
        time: TimeControl::Real,
        settings,
        guard: Some(Box::new(Guard { prefix })),
    })
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
