//! The conformance suite through Sentinel: the stores reach the master a Sentinel
//! names (passwords on both), each fixture under its own key prefix. A short run
//! (`model_cases = 2`): what differs from `conformance.rs` is only the link. nextest
//! runs each test in a process of its own, so each starts its own small set (a
//! master and one Sentinel, settled at once); failover is `sentinel.rs`'s.

mod common;
#[path = "common/fixture.rs"]
mod fixture;

use std::sync::OnceLock;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture};
use chatstate_core::{Result, StoreSettings};
use common::SentinelSet;

/// One set for every test of this process (tests isolate by key prefix).
fn set() -> &'static SentinelSet {
    static SET: OnceLock<SentinelSet> = OnceLock::new();
    SET.get_or_init(|| SentinelSet::start_small(Some("conf-master-pw"), Some("conf-sentinel-pw")))
}

struct SentinelBackend;

#[async_trait]
impl Backend for SentinelBackend {
    fn name(&self) -> &'static str {
        "redis-sentinel"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        fixture::open_with(set().builder(), common::unique_prefix(), settings, |s| s).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        fixture::open_with(
            set().builder(),
            fixture::prefix_of(old)?,
            old.settings.clone(),
            |s| s,
        )
        .await
    }
}

chatstate_conformance::conformance_suite!(SentinelBackend, model_cases = 2);
