//! The whole conformance suite against a 3-master Redis Cluster this test process
//! starts on free ports, each fixture under its own key prefix: every single-session
//! operation in one slot, multi-key cache calls split by slot, listing and prefix
//! clears across shards and masters.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use chatstate_core::{HostPort, RedisTopology, RedisUrl, Result};
use chatstate_redis::{RedisStore, RedisStoreBuilder};

/// Stores on the shared cluster (the key prefix and settings are the fixture's).
fn builder() -> Result<RedisStoreBuilder> {
    let cluster = common::cluster::shared();
    Ok(RedisStore::builder(RedisUrl::parse("redis://127.0.0.1")?)
        .topology(RedisTopology::Cluster {
            nodes: HostPort::parse_list(&cluster.seeds())?,
        })
        .fail_fast(true))
}

chatstate_conformance::conformance_suite!(
    fixture::BuilderBackend {
        name: "redis-cluster",
        builder,
    },
    model_cases = 3
);
