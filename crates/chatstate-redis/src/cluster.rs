//! The Redis Cluster link: redis-rs's cluster connection behind a lock, so that
//! the breaker's probe can replace it with a fresh one.
//!
//! Why replace it: while a master is dead and being failed over, redis-rs's
//! cluster connection keeps the dead node in its slot map and connection map, and
//! its slot refreshes ask the dead node first; in our tests it kept failing for
//! longer than the failover took. So the probe does not ask through it: it asks
//! every seed node, and every node the last successful probe heard of (`CLUSTER
//! NODES`), directly (`CLUSTER INFO`, one fresh connection each, all at once);
//! when one says `cluster_state:ok` it swaps in a new cluster connection, which
//! discovers the topology from that node. Seeds that die or are replaced over time
//! thus do not keep the store from the cluster, as long as one known node lives.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chatstate_core::{Error, ErrorKind, RedisUrl, Result, TlsConfig};
use redis::Value;
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;

use crate::conn::NodeAddr;

/// A cluster connection that can be renewed, and what renewing it needs.
pub(crate) struct ClusterLink {
    current: RwLock<ClusterConnection>,
    /// The seed nodes, each with `REDIS_URL`'s credentials and scheme.
    seeds: Vec<(NodeAddr, redis::Client)>,
    /// The nodes the last successful probe heard of (`CLUSTER NODES`), asked
    /// beside the seeds: seeds replaced over time do not keep the breaker open.
    learned: RwLock<Vec<(NodeAddr, redis::Client)>>,
    url: RedisUrl,
    tls: TlsConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
    next_seed: std::sync::atomic::AtomicUsize,
}

impl ClusterLink {
    /// A lazy link through the seed `nodes`, with `url`'s credentials and scheme
    /// and `tls`'s certificates: nothing is sent until the first call.
    pub fn new(
        nodes: &[NodeAddr],
        url: &RedisUrl,
        tls: &TlsConfig,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<ClusterLink> {
        if nodes.is_empty() {
            return Err(no_seeds());
        }
        let seeds = nodes
            .iter()
            .map(|node| {
                let url = url.with_host_port(&node.host, node.port)?;
                Ok((node.clone(), crate::tls::client(&url, tls)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let first = connect(url, tls, connect_timeout, command_timeout, nodes)?;
        Ok(ClusterLink {
            current: RwLock::new(first),
            seeds,
            learned: RwLock::new(Vec::new()),
            url: url.clone(),
            tls: tls.clone(),
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

    /// The next node's client in turn — the seeds, then the nodes the last probe
    /// heard of —, for a connection of its own (pub/sub reaches the whole cluster
    /// from any node).
    pub fn next_seed_client(&self) -> redis::Client {
        let learned = self.learned.read().unwrap_or_else(|p| p.into_inner());
        let total = self.seeds.len() + learned.len();
        let i = self
            .next_seed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % total;
        match self.seeds.get(i) {
            Some((_, client)) => client.clone(),
            None => learned[i - self.seeds.len()].1.clone(),
        }
    }

    /// Whether the cluster serves: some node — a seed, or one the last successful
    /// probe heard of — says `cluster_state:ok` (asked all at once, each on a fresh
    /// connection). On success the cluster connection is replaced by a fresh one,
    /// and the nodes the answering one knows are remembered for the next probe.
    pub async fn probe(&self) -> redis::RedisResult<()> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut ask: Vec<(NodeAddr, redis::Client)> = self.seeds.clone();
        for (node, client) in self
            .learned
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if !ask.iter().any(|(n, _)| n == node) {
                ask.push((node.clone(), client.clone()));
            }
        }
        let asks = ask.iter().map(|(node, client)| {
            let config = config.clone();
            Box::pin(async move {
                let mut con = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let info: Value = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut con)
                    .await?;
                if text_of(info)
                    .lines()
                    .any(|l| l.trim() == "cluster_state:ok")
                {
                    Ok((node.clone(), con))
                } else {
                    Err(redis::make_extension_error(
                        "CLUSTERDOWN".into(),
                        Some("the cluster does not serve every slot yet".into()),
                    ))
                }
            })
        });
        let ((winner, mut con), _) = futures_util::future::select_ok(asks).await?;
        // A fresh connection, discovering the topology from the node that answered
        // first, then every other known one.
        let mut nodes = vec![winner.clone()];
        nodes.extend(ask.iter().map(|(n, _)| n.clone()).filter(|n| *n != winner));
        match connect(
            &self.url,
            &self.tls,
            self.connect_timeout,
            self.command_timeout,
            &nodes,
        ) {
            Ok(fresh) => *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => tracing::warn!(error = %e, "the Redis Cluster connection cannot be renewed"),
        }
        // Remember the nodes it knows (best effort: the probe has succeeded).
        if let Ok(nodes) = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<Value>(&mut con)
            .await
        {
            let text = text_of(nodes);
            let learned: Vec<(NodeAddr, redis::Client)> = crate::conn::cluster_nodes(&text)
                .filter_map(|n| {
                    let node = n.addr?;
                    let url = self.url.with_host_port(&node.host, node.port).ok()?;
                    let client = crate::tls::client(&url, &self.tls).ok()?;
                    Some((node, client))
                })
                .collect();
            *self.learned.write().unwrap_or_else(|p| p.into_inner()) = learned;
        }
        Ok(())
    }
}

/// A new (lazy) cluster connection discovering the topology from `nodes`, with
/// `url`'s credentials and scheme and `tls`'s certificates. redis-rs's own retries
/// are off: see `conn::Conn::send` for what chatstate sends again.
fn connect(
    url: &RedisUrl,
    tls: &TlsConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
    nodes: &[NodeAddr],
) -> Result<ClusterConnection> {
    let scheme = if url.is_tls() { "rediss" } else { "redis" };
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| {
            if n.host.contains(':') {
                format!("{scheme}://[{}]:{}", n.host, n.port)
            } else {
                format!("{scheme}://{n}")
            }
        })
        .collect();
    let mut builder = ClusterClientBuilder::new(urls)
        .connection_timeout(connect_timeout)
        .response_timeout(command_timeout)
        .retries(0);
    if let Some(user) = url.username() {
        builder = builder.username(user);
    }
    if let Some(password) = url.password() {
        builder = builder.password(password.expose());
    }
    if url.is_tls() {
        crate::tls::install_crypto_provider();
        builder = builder.tls(if tls.insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(certs) = crate::tls::certificates(tls)? {
            builder = builder.certs(certs);
        }
    }
    let client: ClusterClient = builder.build().map_err(|e| {
        Error::config(format!(
            "REDIS_CLUSTER_NODES cannot be used: {}",
            e.category()
        ))
    })?;
    Ok(client.get_pending_async_connection_with_config(ClusterConfig::new()))
}

/// A reply's text (`CLUSTER INFO`, `CLUSTER NODES`), empty when it is not text.
fn text_of(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        Value::VerbatimString { text, .. } => text,
        Value::SimpleString(s) => s,
        _ => String::new(),
    }
}

/// The error for a Cluster configured without a seed node.
pub(crate) fn no_seeds() -> Error {
    Error::new(ErrorKind::Config, "REDIS_CLUSTER_NODES lists no node")
}

pub(crate) type Shared = Arc<ClusterLink>;
