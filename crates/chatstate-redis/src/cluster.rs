//! The Redis Cluster link: redis-rs's cluster connection behind a lock, so that
//! the breaker's probe can replace it with a fresh one.
//!
//! Why replace it: while a master is dead and being failed over, redis-rs's
//! cluster connection keeps the dead node in its slot map and connection map, and
//! its slot refreshes ask the dead node first; in our tests it kept failing for
//! longer than the failover took. So the probe does not ask through it: it asks
//! every seed node directly (`CLUSTER INFO`, one fresh connection each, all at
//! once), and when one says `cluster_state:ok` it swaps in a new cluster
//! connection, which discovers the topology from the seeds anew.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chatstate_core::{Error, ErrorKind, RedisUrl, Result, TlsConfig};
use redis::Value;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use crate::conn::NodeAddr;

/// A cluster connection that can be renewed, and what renewing it needs.
pub(crate) struct ClusterLink {
    current: RwLock<ClusterConnection>,
    client: ClusterClient,
    /// The seed nodes, each with `REDIS_URL`'s credentials and scheme.
    seeds: Vec<(NodeAddr, redis::Client)>,
    connect_timeout: Duration,
    command_timeout: Duration,
    next_seed: std::sync::atomic::AtomicUsize,
}

impl ClusterLink {
    /// A lazy link: nothing is sent until the first call.
    pub fn new(
        client: ClusterClient,
        seeds: &[NodeAddr],
        url: &RedisUrl,
        tls: &TlsConfig,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<ClusterLink> {
        let seeds = seeds
            .iter()
            .map(|node| {
                let url = url.with_host_port(&node.host, node.port)?;
                Ok((node.clone(), crate::tls::client(&url, tls)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClusterLink {
            current: RwLock::new(
                client.get_pending_async_connection_with_config(ClusterConfig::new()),
            ),
            client,
            seeds,
            connect_timeout,
            command_timeout,
            next_seed: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The connection to send through (a cheap clone).
    pub fn connection(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next seed's client in turn, for a connection of its own (pub/sub
    /// reaches the whole cluster from any node).
    pub fn next_seed_client(&self) -> redis::Client {
        let i = self
            .next_seed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.seeds[i % self.seeds.len()].1.clone()
    }

    /// Whether the cluster serves: some seed node says `cluster_state:ok` (asked
    /// all at once, each on a fresh connection). On success the cluster
    /// connection is replaced by a fresh one.
    pub async fn probe(&self) -> redis::RedisResult<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let asks = self.seeds.iter().map(|(_, client)| {
            let config = config.clone();
            Box::pin(async move {
                let mut con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let info: Value = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut con)
                    .await?;
                let text = match info {
                    Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                    Value::VerbatimString { text, .. } => text,
                    Value::SimpleString(s) => s,
                    _ => String::new(),
                };
                if text.lines().any(|l| l.trim() == "cluster_state:ok") {
                    Ok(())
                } else {
                    Err(redis::make_extension_error(
                        "CLUSTERDOWN".into(),
                        Some("the cluster does not serve every slot yet".into()),
                    ))
                }
            })
        });
        futures_util::future::select_ok(asks).await?;
        let fresh = self
            .client
            .get_pending_async_connection_with_config(ClusterConfig::new());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// The error for a Cluster configured without a seed node.
pub(crate) fn no_seeds() -> Error {
    Error::new(ErrorKind::Config, "REDIS_CLUSTER_NODES lists no node")
}

pub(crate) type Shared = Arc<ClusterLink>;
