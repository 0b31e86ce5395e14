//! The conformance suite over `rediss://`: the same cases as `conformance.rs`, on
//! one TLS redis-server this test process starts (`--tls-port`, certificates made
//! by the `openssl` CLI, verified with `REDIS_CA_CERT`'s CA; mutual TLS with the
//! client certificate). What differs is only the link, so fewer model cases run.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use chatstate_core::{RedisUrl, Result, TlsConfig};
use chatstate_redis::{RedisStore, RedisStoreBuilder};

/// Stores on the shared TLS server, verified with its CA, with the client
/// certificate (the key prefix and settings are the fixture's).
fn builder() -> Result<RedisStoreBuilder> {
    let tls = common::shared_tls();
    Ok(
        RedisStore::builder(RedisUrl::parse(&tls.server.url())?).tls(TlsConfig {
            ca_cert: Some(tls.files.ca.clone()),
            client_cert: Some(tls.files.client_cert.clone()),
            client_key: Some(tls.files.client_key.clone()),
            insecure: false,
        }),
    )
}

chatstate_conformance::conformance_suite!(
    fixture::BuilderBackend {
        name: "redis-tls",
        builder,
    },
    model_cases = 2
);
