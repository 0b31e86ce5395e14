//! The conformance suite through Sentinel: the stores reach the master a Sentinel
//! names (passwords on both), each fixture under its own key prefix. A short run
//! (`model_cases = 2`): what differs from `conformance.rs` is only the link. nextest
//! runs each test in a process of its own, so each starts its own small set (a
//! master and one Sentinel, settled at once); failover is `sentinel.rs`'s.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use std::sync::OnceLock;

use chatstate_core::Result;
use common::SentinelSet;

/// One set for every test of this process (tests isolate by key prefix).
fn set() -> &'static SentinelSet {
    static SET: OnceLock<SentinelSet> = OnceLock::new();
    SET.get_or_init(|| SentinelSet::start_small(Some("conf-master-pw"), Some("conf-sentinel-pw")))
}

/// Stores reaching the master through the set's Sentinel.
fn builder() -> Result<chatstate_redis::RedisStoreBuilder> {
    Ok(set().builder())
}

chatstate_conformance::conformance_suite!(
    fixture::BuilderBackend {
        name: "redis-sentinel",
        builder,
    },
    model_cases = 2
);
