//! The whole conformance suite against a 3-master Redis Cluster this test process
//! starts on free ports, each fixture under its own key prefix: every single-session
//! operation in one slot, multi-key cache calls split by slot, listing and prefix
//! clears across shards and masters.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture};
use chatstate_core::{HostPort, RedisTopology, RedisUrl, Result, StoreSettings};
use chatstate_redis::{RedisStore, RedisStoreBuilder};

struct ClusterBackend;

/// Stores on the shared cluster (the key prefix and settings are the fixture's).
fn builder() -> Result<RedisStoreBuilder> {
    let cluster = common::cluster::shared();
    Ok(RedisStore::builder(RedisUrl::parse("redis://127.0.0.1")?)
        .topology(RedisTopology::Cluster {
            nodes: HostPort::parse_list(&cluster.seeds())?,
        })
        .fail_fast(true))
}

#[async_trait]
impl Backend for ClusterBackend {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        fixture::open_with(builder()?, common::unique_prefix(), settings, |s| s).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        fixture::open_with(
            builder()?,
            fixture::prefix_of(old)?,
            old.settings.clone(),
            |s| s,
        )
        .await
    }
}

chatstate_conformance::conformance_suite!(ClusterBackend, model_cases = 3);
