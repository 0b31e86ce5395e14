//! The conformance suite over `rediss://`: the same cases as `conformance.rs`, on
//! one TLS redis-server this test process starts (`--tls-port`, certificates made
//! by the `openssl` CLI, verified with `REDIS_CA_CERT`'s CA; mutual TLS with the
//! client certificate). What differs is only the link, so fewer model cases run.

mod common;
#[path = "common/fixture.rs"]
#[allow(dead_code)] // `open` is the plain server's
mod fixture;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture};
use chatstate_core::{Result, StoreSettings, TlsConfig};

struct RedisTlsBackend;

impl RedisTlsBackend {
    async fn open_as(prefix: String, settings: StoreSettings) -> Result<Fixture> {
        let tls = common::shared_tls();
        let config = TlsConfig {
            ca_cert: Some(tls.files.ca.clone()),
            client_cert: Some(tls.files.client_cert.clone()),
            client_key: Some(tls.files.client_key.clone()),
            insecure: false,
        };
        fixture::open_on(&tls.server.url(), config, prefix, settings, |s| s).await
    }
}

#[async_trait]
impl Backend for RedisTlsBackend {
    fn name(&self) -> &'static str {
        "redis-tls"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        RedisTlsBackend::open_as(common::unique_prefix(), settings).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        RedisTlsBackend::open_as(fixture::prefix_of(old)?, old.settings.clone()).await
    }
}

chatstate_conformance::conformance_suite!(RedisTlsBackend, model_cases = 2);
