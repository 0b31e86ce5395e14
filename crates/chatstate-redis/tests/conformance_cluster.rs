//! The whole conformance suite against a 3-master Redis Cluster this test process
//! starts on free ports, each fixture under its own key prefix: every single-session
//! operation in one slot, multi-key cache calls split by slot, listing and prefix
//! clears across shards and masters.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{Error, ErrorKind, HostPort, RedisTopology, RedisUrl, Result, StoreSettings};
use chatstate_redis::RedisStore;

struct ClusterBackend;

struct Guard {
    prefix: String,
}

async fn open(prefix: String, settings: StoreSettings) -> Result<Fixture> {
    let cluster = common::cluster::shared();
    let store = Arc::new(
        RedisStore::builder(RedisUrl::parse("redis://127.0.0.1")?)
            .topology(RedisTopology::Cluster {
                nodes: HostPort::parse_list(&cluster.seeds())?,
            })
            .prefix(prefix.clone())
            .settings(settings.clone())
            .fail_fast(true)
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
impl Backend for ClusterBackend {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        open(common::unique_prefix(), settings).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        let prefix = old
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .map(|g| g.prefix.clone())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "not a cluster fixture"))?;
        open(prefix, old.settings.clone()).await
    }
}

chatstate_conformance::conformance_suite!(ClusterBackend, model_cases = 3);
