//! # chatstate-redis
//!
//! The Redis backend: all four chatstate traits on Redis (redis-rs 1.x with
//! deadpool-redis 0.23), one round trip per logical operation.
//!
//! ## Layout
//!
//! - [`RedisStore`] (this file): the store and its builder; configuration from
//!   [`chatstate_core::Config`].
//! - `conn`: the shared multiplexed connection (reconnecting, a timeout on every
//!   call), round-trip accounting ([`RoundTrips`]), scripts sent by hash with a
//!   fallback on NOSCRIPT, and Redis errors mapped to chatstate kinds.
//! - `session`, `focus`, `counters`, `cache`: each trait, with its Lua scripts next
//!   to the Rust that calls them.
//! - `breaker`: the circuit breaker every call passes, and the background probe
//!   that closes it (and connects a store that opened without Redis).
//! - `export`: [`chatstate_core::Inventory`] — every record found with `SCAN`
//!   (never `KEYS`), read and restored with one script per record (decision, exact
//!   state, TTL and tenant index in one step), for moves between backends.
//! - `eviction`: [`eviction_risk`], the check of the server's `maxmemory-policy`
//!   run when the store first reaches the server.
//! - `tls`: `rediss://` — the certificate files read, the client built with them,
//!   a refused handshake told from an outage (see [TLS](#tls)).
//! - `reply`: [`ReplyStream`](chatstate_core::ReplyStream) — a Stream per run
//!   appended by one script per chunk (limits, TTL and a pub/sub wake-up
//!   included), followers woken by pub/sub and reading with `XRANGE` (the module
//!   says why not `XREAD BLOCK`).
//! - `bus`: [`RedisBus`], cache invalidation between instances over pub/sub (for the
//!   tiered cache in `chatstate-layers`).
//! - `sentinel`: the link to a master found through Sentinel, following failovers
//!   (see "Sentinel" below).
//!
//! ## Round trips
//!
//! | operation | round trips | how |
//! | --- | --- | --- |
//! | append messages (push, trim, TTL of every part, last_activity) | 1 | script (tenant index included) |
//! | load a session with its messages | 1 | `MULTI`, `HGETALL`, `LRANGE`, `EXEC` pipelined (+1 `TYPE` pair only to name a key of another type) |
//! | create, get_or_create, update, touch, delete | 1 | script (tenant index included) |
//! | get / get_many sessions | 1 | pipelined HGETALL |
//! | lock acquire (with fencing number), extend, release | 1 each | script: `SET NX PX` + `INCR`; token compared in Lua |
//! | cache get_many / set_many with TTL / delete_many | 1 each | MGET + EXISTS pipelined (+1 only to name a key of another type) / script of `SET PX` / DEL |
//! | counter flush (`apply`) of any number of counters | 1 | script, idempotent by batch id |
//! | focus put (compare-and-set) | 1 | script |
//! | focus list | 1 per ~200 documents | script per SSCAN step |
//! | clear a cache prefix | 1 per SCAN step + 1 per UNLINK batch | never KEYS |
//! | reply append (limits, `XADD`, TTL, wake-up) / finish / read from an offset | 1 each | script |
//! | follow a reply | 1 read per wake-up (at least every second), over one subscribed connection per follower | pub/sub + `XRANGE` |
//! | list a tenant's sessions | 2 per batch of up to 1,000 index members (dead members are dropped in the same script; a page takes more batches only when dead members fill one) | sorted-set index |
//!
//! On a Cluster (below) the same, except: multi-key cache calls and session
//! `get_many` take one round trip per slot (sent concurrently); a listing walks up
//! to 16 index shards (2 round trips per non-empty shard batch, 1 per empty shard);
//! a SCAN step costs one more round trip (`CLUSTER NODES`, the topology check).
//!
//! A script the server does not know (first use, restart, SCRIPT FLUSH, each
//! Cluster master) costs one more round trip, once. [`RedisStore::round_trips`]
//! counts what the store sent.
//!
//! ## Keys
//!
//! The layout is [`chatstate_core::KeyLayout`]'s, under a configurable prefix,
//! readable in `redis-cli`. Every key chatstate writes has a TTL, except counters
//! (delete them when done; a day-bucketed counter's hash is one key per name and
//! day). A fencing number is kept at least the lease plus the session TTL after
//! each acquire, extend or release
//! ([`StoreSettings::fence_retention`](chatstate_core::StoreSettings::fence_retention)),
//! never shortened. A tenant's index keeps a deadline per session and is pruned on
//! every session write (see the `session` module).
//!
//! ## Errors
//!
//! Redis refusals that say "not now" — `LOADING`, `BUSY`, `NOREPLICAS`, `MISCONF`,
//! `MASTERDOWN`, `READONLY`, `OOM`, `TRYAGAIN`, `CLUSTERDOWN` — are `Unavailable`
//! (temporary: retry), and each refuses before anything is written. The
//! deterministic refusals are `InvalidInput` (a counter would overflow i64),
//! `WrongType` (a key holds another type) and `Decode` (a stored value is corrupt:
//! a counter `HINCRBY` would not read as an integer, or a fencing number, `version`
//! or `message_count` that is not an integer in `0..i64::MAX`); each names the key
//! and writes nothing, and reads refuse the same values.
//!
//! ## Outages
//!
//! [`RedisStoreBuilder::connect`] sends one `PING` (within the connect timeout).
//! When the server cannot be reached, the store opens anyway with its circuit
//! breaker open and a background task connects it; with
//! [`fail_fast`](RedisStoreBuilder::fail_fast) (`CHATSTATE_REDIS_FAIL_FAST=1`)
//! opening fails instead. Refused credentials, and a refused TLS handshake (see
//! [TLS](#tls)), fail either way.
//!
//! A call waits at most the connect timeout (when it finds the connection being
//! re-established: one attempt, no retries inside the call) plus the command
//! timeout. A call that finds the last reconnect attempt failed fails with
//! `Unavailable` and starts the next one, so after a blip too short to open the
//! breaker the first call once Redis is back may fail once; the next succeeds. Every call passes the breaker ([`chatstate_core::BreakerConfig`]): after
//! `failures` connection-level failures in a row (refused, dropped, I/O error,
//! timeout, `LOADING`, `BUSY`, `MASTERDOWN`, `CLUSTERDOWN`) within `window`, calls
//! fail at once with `Unavailable` ("the circuit breaker has been open for … ms")
//! without touching the connection. A background task probes with `PING` after
//! `open_for` and then with a jittered backoff of at most `max(open_for, 2 s)`
//! (`HalfOpen` while it waits for the answer; calls still fail at once); its success
//! closes the breaker. Refusals of writes alone (`OOM`, `MISCONF`, `READONLY`,
//! `NOREPLICAS`, `TRYAGAIN`) never trip it: the server answers and reads work.
//! A server that answers `READONLY` (demoted to a replica behind the same address,
//! as a managed Redis's failover behind one DNS name does) makes the next command
//! go over a new connection, which resolves the name again (the `direct` module;
//! Sentinel and Cluster follow failovers their own way, below).
//! [`RedisStore::health`] reports the state; the gauge
//! `chatstate_redis_breaker_open` and the counter
//! `chatstate_redis_breaker_opened_total` go to the `metrics` facade. The breaker
//! is hand-written: it has to classify redis-rs errors, which only this crate does,
//! and probe on its own connection; see the `breaker` module.
//!
//! ## Eviction policy
//!
//! Counters (no TTL), fencing numbers and applied counter batch ids (with a TTL)
//! must never be evicted: an evicted fence lets a new lock holder get a smaller
//! number than a stale one, an evicted batch id lets a retried flush count twice.
//! Because fences and batch ids have TTLs, `volatile-*` policies can evict them as
//! well as `allkeys-*`; with a `maxmemory` limit, run Redis with
//! `maxmemory-policy noeviction` (a full server then refuses writes with `OOM`, a
//! temporary error, instead of losing data). When the store first reaches the
//! server it reads the policy (`CONFIG GET`, ignored when refused) and logs a
//! `tracing::warn!` when it could evict them; [`RedisStore::eviction_risk`] and
//! [`eviction_risk`] are the same check for tools and tests.
//!
//! ## TLS
//!
//! A `rediss://` URL connects over TLS with redis-rs's rustls support (the `tls`
//! module; ring is installed as rustls's process-wide crypto provider unless the
//! application installed one). The server's certificate is verified against the
//! system's roots, or against the CA file of [`TlsConfig::ca_cert`]
//! (`REDIS_CA_CERT`); [`TlsConfig::client_cert`] and [`TlsConfig::client_key`]
//! (`REDIS_CLIENT_CERT`, `REDIS_CLIENT_KEY`) add a client certificate for mutual
//! TLS. [`TlsConfig::insecure`] (`REDIS_TLS_INSECURE=1`) skips the verification and
//! logs a `tracing::warn!` at every [`RedisStoreBuilder::connect`]. Set them with
//! [`RedisStoreBuilder::tls`] or through [`RedisStore::from_config`]; the
//! connection pool and [`RedisBus`] use the same settings.
//!
//! A certificate file that is missing, unreadable or not PEM is a `Config` error
//! naming the variable and the path (never the contents). A server certificate
//! that is not trusted (another CA, another host name) or a client certificate the
//! server refuses fails the TLS handshake: a `Config` error that says which ("the
//! server's certificate is not trusted", "the server refused the client
//! certificate"). It does not trip the breaker, and `connect` fails with it even
//! without `fail_fast`: retrying cannot fix a misconfiguration.
//!
//! ## Sentinel
//!
//! `REDIS_SENTINELS` (`host:port,host:port,…`) and `REDIS_SENTINEL_MASTER` (the
//! name the Sentinels monitor the master under) select Sentinel
//! ([`RedisTopology::Sentinel`], or [`RedisStoreBuilder::topology`]). `REDIS_URL`
//! then gives only the master's credentials (`redis://user:pass@…`), database and
//! scheme (`rediss://` for TLS to the master, with the same `REDIS_CA_CERT`,
//! client certificate and `REDIS_TLS_INSECURE` settings as one server; the
//! Sentinels themselves are asked without TLS): its host and port are not used. `REDIS_SENTINEL_PASSWORD` is the Sentinels' own
//! password (`requirepass` in their config), when they have one. Neither password
//! is ever logged or shown in `Debug`.
//!
//! At connect (or on the first call, if the Sentinels cannot be reached then: the
//! same lazy start as above) the store asks the Sentinels for the master's address
//! (redis-rs's `SentinelClient`: the first Sentinel, in the order given, that names
//! a master which says it is one) and logs it (`tracing::info!`, "Redis master
//! found through Sentinel"). Commands go over one multiplexed connection to it,
//! with the same timeouts and no-retry reconnects as on one server.
//!
//! **Failover.** A command that fails at the connection level (refused, dropped,
//! I/O error, timeout), or that the server refuses with `READONLY` (a demoted
//! master) or `MASTERDOWN`, makes the store ask the Sentinels again: one question
//! at a time, and only once per connection that failed (a failure on a connection
//! already replaced asks nothing; failures at most every 100 ms ask). When they
//! name another address, the store logs it ("Redis master moved"), counts it
//! (`chatstate_redis_sentinel_failovers_total`) and sends the next command to the
//! new master. The failed command is not retried: it fails with `Unavailable` (the
//! breaker counts it) after waiting at most 1 s for the question it raised. While
//! the Sentinels still name a dead master, the breaker opens as on one server; its
//! probe goes through the same link, so it keeps asking, and service returns within
//! about 2 s (the longest probe delay) of the Sentinels naming the new master: the
//! test kills the master mid-workload (`down-after-milliseconds` 1000) and measured
//! the Sentinels naming the new master ~2.2 s after the kill and writes succeeding
//! again ~3.6 s after it (it asserts within the Sentinels' time plus 5 s).
//!
//! **`READONLY`.** A master demoted to a replica while clients stay connected
//! (a failover seen late, an operator's `REPLICAOF`, a client that reconnected to
//! the old address) still answers `PING` and reads, so the breaker stays closed;
//! its first `READONLY` reply moves the store, so writes fail for as long as the
//! Sentinels take to name the new master (~0.1 s in the test), not until the socket
//! dies. [`RedisBus`] asks the Sentinels each time its subscription (re)connects,
//! so invalidations flow from the new master after a failover.
//! [`RedisStore::pool`] is `None` through Sentinel.
//!
//! **What a failover can lose.** Redis replication is asynchronous: the master
//! acknowledges a write before any replica has it. A write is lost in a failover
//! when the replica that is promoted had not received it when the master died;
//! with a connected replica the master streams each write to it as it executes it,
//! and the replica reports its offset every second, so the writes at risk are those
//! acknowledged within the replica's lag before the crash: **at most about the last
//! 1 s of writes** for a replica the master saw in sync, usually far less (on
//! loopback the test lost none). The test checks exactly this: every write
//! acknowledged more than 1 s before the `kill -9`, or after the Sentinels named
//! the new master, is on the new master. Two cases lose more, as with any Redis
//! client: a replica already far behind (bound it with the master's
//! `min-replicas-to-write 1` and `min-replicas-max-lag <s>`: the master then
//! refuses writes with `NOREPLICAS`, a temporary error here, once no replica is
//! within that lag), and a master cut off from the Sentinels but not from its
//! clients, which keeps acknowledging writes until it is reconfigured (the same
//! settings bound it). `WAIT` is not sent: it would cost a round trip per write
//! and still not make a write survive every failover.
//!
//! ## Cluster
//!
//! `REDIS_CLUSTER_NODES` (`host:port,…`, seed nodes) selects a Redis Cluster
//! ([`RedisTopology::Cluster`]); `REDIS_URL` gives the credentials and the scheme
//! (TLS as above), database 0 only. The connection is redis-rs's cluster
//! connection with its own retries off (the `cluster` module), so that chatstate
//! decides what is sent again: a refusal that ran nothing (`MOVED`, `ASK` — to the
//! named node after `ASKING` —, `TRYAGAIN`, `READONLY`) is followed at most 5
//! times within ~170 ms, each a counted round trip; a command that may have run (an
//! I/O error, a timeout) is never re-sent, and a pipeline is re-sent only when it
//! only reads.
//!
//! - **Layout**: [`KeyLayout::clustered`]: a session and its index shard share a
//!   hash tag (`{<tenant>:<shard>}`, 16 shards per tenant), so every session script
//!   stays in one slot. Focus documents of a scope share `{<scope>}`, counters
//!   `{counters}` (a flush stays one atomic, idempotent script, on one master: see
//!   the README for why it is not sharded), cache entries have no tag.
//! - **Multi-key calls**: cache `get_many`, `set_many`, `delete_many` and session
//!   `get_many` group their keys by slot (`conn::Conn::by_slot`) and send one round
//!   trip per slot, concurrently; each slot's part keeps its one-server promise
//!   (a `set_many` part is all or nothing), the call as a whole does not.
//! - **Listing** walks the tenant's 16 index shards in order (cursor
//!   `<shard>~<member>`); every command of a shard stays in its slot.
//! - **Walks over the keyspace** (`clear_prefix`, the export's `scan`) visit every
//!   master with `SCAN`, in address order, and check at every step (one `CLUSTER
//!   NODES`) that the slots' owners are those the walk began with: otherwise the
//!   walk could miss or repeat keys, so an export cursor is refused with `Conflict`
//!   ("start the walk again") and `clear_prefix` starts again by itself. While a
//!   slot is not served they are `Unavailable`.
//! - **Failover**: while a master is down and not yet replaced the Cluster refuses
//!   every command and the breaker opens; its probe asks every seed node, each on a
//!   fresh connection, for `CLUSTER INFO`, and when one says `cluster_state:ok` it
//!   replaces the cluster connection (redis-rs's kept the dead master in its maps).
//!   The loss bound is Redis replication's, as with Sentinel; measured figures are
//!   in the README.
//! - [`RedisStore::pool`] is `None`; [`RedisBus`] subscribes on a seed node (a
//!   Cluster delivers every `PUBLISH` to every node), the next seed at each
//!   reconnect.
//!
//! ## Deployment notes
//!
//! One server (and anything speaking its protocol on one endpoint), a master found
//! through Sentinel, or a Redis Cluster; each over TLS or not. The conformance
//! suite runs on all four in this crate's tests.
//!
//! ## What it must never do
//!
//! Send KEYS, FLUSHALL or FLUSHDB; print the password (the URL is shown redacted);
//! panic on what Redis returns.

#![warn(missing_docs)]

mod batch;
mod breaker;
mod bus;
mod cache;
mod cluster;
mod conn;
mod counters;
mod direct;
mod eviction;
mod export;
mod focus;
mod reply;
mod sentinel;
mod server;
mod session;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use chatstate_core::{
    BreakerConfig, Config, Error, Health, KeyLayout, RedisTopology, RedisUrl, Result, SharedClock,
    StoreSettings, TlsConfig, system_clock,
};
use redis::aio::ConnectionManagerConfig;

pub use bus::RedisBus;
pub use conn::RoundTrips;
pub use eviction::{EvictionRisk, eviction_risk};
pub use server::ServerSummary;

struct Scripts {
    session: session::SessionScripts,
    focus: focus::FocusScripts,
    counters: counters::CounterScripts,
    cache: cache::CacheScripts,
    replies: reply::ReplyScripts,
}

struct Inner {
    conn: conn::Conn,
    /// The deadpool pool (one server only: see [`RedisStore::pool`]).
    pool: Option<deadpool_redis::Pool>,
    layout: KeyLayout,
    settings: StoreSettings,
    clock: SharedClock,
    scripts: Scripts,
    url: RedisUrl,
    /// What the store connects to, safe to log: the redacted URL, the Sentinels
    /// and master name, or the Cluster's seed nodes.
    target: String,
    /// The TLS settings of `url` (for the bus's own connection).
    tls: TlsConfig,
    command_timeout: Duration,
    /// Whether the eviction policy was checked (once Redis was first reached).
    eviction_checked: std::sync::atomic::AtomicBool,
}

/// All four chatstate stores on Redis. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.inner.target)
            .field("prefix", &self.inner.layout.prefix())
            .field("round_trips", &self.round_trips())
            .finish()
    }
}

/// Configures a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    url: RedisUrl,
    prefix: String,
    settings: StoreSettings,
    clock: SharedClock,
    pool_size: usize,
    connect_timeout: Duration,
    command_timeout: Duration,
    fail_fast: bool,
    breaker: BreakerConfig,
    tls: TlsConfig,
    topology: RedisTopology,
}

impl RedisStoreBuilder {
    /// Certificates for a `rediss://` URL (default: the system's roots, no client
    /// certificate).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// One server (default), a master found through Sentinel, or a Cluster.
    pub fn topology(mut self, topology: RedisTopology) -> Self {
        self.topology = topology;
        self
    }

    /// Fail [`connect`](Self::connect) when Redis cannot be reached (default: open
    /// anyway, with the breaker open, and connect in the background).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.fail_fast = fail_fast;
        self
    }

    /// The circuit breaker's settings.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// The key prefix (default `chatstate`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The TTLs, window and limits.
    pub fn settings(mut self, settings: StoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The clock session and document timestamps come from (TTLs are Redis's).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Connections in the deadpool pool (for work that holds a connection alone).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The timeout of every command.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The settings of a self-reconnecting connection to one server.
    fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            // One connection attempt per reconnect: retrying (with backoff) is the
            // breaker's probe's job, so a call waiting on a reconnect waits at most
            // the connect timeout, never a chain of attempts and delays.
            .set_number_of_retries(0)
    }

    /// A Cluster connection through the seed `nodes`, with `REDIS_URL`'s
    /// credentials and scheme. Lazy, like the one-server link; redis-rs's own
    /// retries are off (see `conn::Conn::send` for the refusals chatstate follows).
    fn cluster(&self, nodes: &[chatstate_core::HostPort]) -> Result<cluster::Shared> {
        let seeds: Vec<conn::NodeAddr> = nodes
            .iter()
            .map(|n| conn::NodeAddr {
                host: n.host.clone(),
                port: n.port,
            })
            .collect();
        Ok(Arc::new(cluster::ClusterLink::new(
            &seeds,
            &self.url,
            &self.tls,
            self.connect_timeout,
            self.command_timeout,
        )?))
    }

    /// The deadpool pool of connections to the server `client` reaches (with its
    /// TLS settings).
    fn pool(&self, client: &redis::Client) -> Result<deadpool_redis::Pool> {
        let manager =
            deadpool_redis::Manager::new(client.get_connection_info().clone()).map_err(|_| {
                Error::config(format!("cannot build a connection pool for {}", self.url))
            })?;
        deadpool_redis::Pool::builder(manager)
            .max_size(self.pool_size)
            .wait_timeout(Some(self.command_timeout))
            .create_timeout(Some(self.connect_timeout))
            .recycle_timeout(Some(self.command_timeout))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .map_err(|_| Error::config(format!("cannot build a connection pool for {}", self.url)))
    }

    /// Opens the store and checks the server with one `PING` within the connect
    /// timeout. Refused credentials are a `Config` error (never shown with the
    /// password). An unreachable server is an `Unavailable` (or `Timeout`) error
    /// only with [`fail_fast`](Self::fail_fast); otherwise the store opens with its
    /// circuit breaker open, logs a warning, and connects in the background: calls
    /// fail at once with `Unavailable` until a probe reaches the server.
    pub async fn connect(self) -> Result<RedisStore> {
        // Boxed: the connect future is deep (TLS, Sentinel, Cluster, the first
        // PING), and callers that nest it (the facade, conformance fixtures) would
        // otherwise hit rustc's query depth limit computing their futures' layout.
        Box::pin(self.open()).await
    }

    async fn open(self) -> Result<RedisStore> {
        self.settings.validate()?;
        let layout = match self.topology {
            RedisTopology::Cluster { .. } => KeyLayout::clustered(self.prefix.clone())?,
            _ => KeyLayout::new(self.prefix.clone())?,
        };
        tls::insecure_warning(&self.tls);
        let (link, pool) = match &self.topology {
            RedisTopology::Standalone => {
                let client = tls::client(&self.url, &self.tls)?;
                let link = direct::DirectLink::new(client.clone(), self.manager_config()).map_err(
                    |e| {
                        Error::config(format!(
                            "REDIS_URL {} is not usable: {}",
                            self.url,
                            e.category()
                        ))
                    },
                )?;
                (
                    conn::Link::Direct(Arc::new(link)),
                    Some(self.pool(&client)?),
                )
            }
            RedisTopology::Cluster { nodes } => (conn::Link::Cluster(self.cluster(nodes)?), None),
            RedisTopology::Sentinel {
                sentinels,
                master,
                password,
            } => {
                let link = sentinel::SentinelLink::new(
                    &self.url,
                    &self.tls,
                    sentinels,
                    master,
                    password.as_ref(),
                    self.manager_config(),
                    self.connect_timeout + self.command_timeout,
                )?;
                (conn::Link::Sentinel(Arc::new(link)), None)
            }
        };
        let store = RedisStore {
            inner: Arc::new(Inner {
                conn: conn::Conn {
                    link,
                    counters: Arc::default(),
                    breaker: Arc::new(breaker::Breaker::new(self.breaker)),
                },
                eviction_checked: std::sync::atomic::AtomicBool::new(false),
                pool,
                layout,
                settings: self.settings,
                clock: self.clock,
                scripts: Scripts {
                    session: session::SessionScripts::new(),
                    focus: focus::FocusScripts::new(),
                    counters: counters::CounterScripts::new(),
                    cache: cache::CacheScripts::new(),
                    replies: reply::ReplyScripts::new(),
                },
                target: describe(&self.url, &self.topology),
                url: self.url,
                tls: self.tls,
                command_timeout: self.command_timeout,
            }),
        };
        match store.ping(self.connect_timeout).await {
            Ok(()) => store.check_eviction_once().await,
            Err(err) if err.is_temporary() && !self.fail_fast => {
                tracing::warn!(
                    target = %store.inner.target,
                    error = %err,
                    "Redis cannot be reached: the store opens anyway and connects in the \
                     background; calls fail at once (Unavailable) until it does \
                     (CHATSTATE_REDIS_FAIL_FAST=1 makes this an error)"
                );
                store.inner.conn.breaker.open_at_start(err.kind());
            }
            Err(err) => {
                return Err(Error::new(
                    err.kind(),
                    format!(
                        "cannot connect to {}: {}",
                        store.inner.target,
                        err.message()
                    ),
                ));
            }
        }
        store.spawn_probes();
        Ok(store)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.conn.breaker.stop();
    }
}

impl RedisStore {
    /// One `PING` on the shared connection, past the breaker, within `timeout`:
    /// `Ok` when the server answered — with `PONG`, or with a refusal that does not
    /// trip the breaker (`MISCONF` refuses even `PING`, yet the server serves reads).
    /// Refused credentials are a `Config` error.
    async fn ping(&self, timeout: Duration) -> Result<()> {
        match tokio::time::timeout(timeout, self.inner.conn.link.ping()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let trips = conn::trips_breaker(&e);
                let err = conn::map_err(e, "connect", None);
                if trips || err.kind() == chatstate_core::ErrorKind::Config {
                    Err(err)
                } else {
                    Ok(())
                }
            }
            Err(_) => Err(Error::new(
                chatstate_core::ErrorKind::Timeout,
                "Redis did not answer in time",
            )
            .with_operation("connect")),
        }
    }

    /// The eviction-policy check, once per store: at start, or when a store that
    /// started without Redis first reaches it.
    async fn check_eviction_once(&self) {
        if !self
            .inner
            .eviction_checked
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            self.warn_about_eviction().await;
        }
    }

    /// Starts the task that probes Redis while the breaker is open (see the
    /// `breaker` module). It holds the store weakly and ends when the store is
    /// dropped.
    fn spawn_probes(&self) {
        let breaker = self.inner.conn.breaker.clone();
        let weak = Arc::downgrade(&self.inner);
        let timeout = self.inner.command_timeout;
        let task = breaker.probe_task();
        tokio::spawn(async move {
            let _task = task;
            breaker
                .run_probes(|| {
                    let weak = weak.clone();
                    async move {
                        let Some(inner) = weak.upgrade() else {
                            return Err(chatstate_core::ErrorKind::Unavailable);
                        };
                        let store = RedisStore { inner };
                        // A PING that finds the connection broken only starts a new
                        // one (redis-rs reconnects on the next call): ask again at
                        // once, on the new connection.
                        let mut answer = store.ping(timeout).await;
                        // (A timeout leaves the connection as it was: asking again would
                        // only wait as long once more.)
                        if answer.as_ref().is_err_and(|e| {
                            e.is_temporary() && e.kind() != chatstate_core::ErrorKind::Timeout
                        }) {
                            answer = store.ping(timeout).await;
                        }
                        match answer {
                            Ok(()) => {
                                // Close first: the check's own call passes the breaker.
                                store.inner.conn.breaker.success();
                                store.check_eviction_once().await;
                                Ok(())
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "Redis probe failed");
                                Err(e.kind())
                            }
                        }
                    }
                })
                .await
        });
    }

    /// The store's health: whether Redis answered lately, the circuit breaker's
    /// state, the last temporary failure and since when (see [`Health`]).
    pub fn health(&self) -> Health {
        self.inner.conn.breaker.health()
    }
}

impl RedisStore {
    /// A builder for a store at `url`.
    pub fn builder(url: RedisUrl) -> RedisStoreBuilder {
        let defaults = Config::default();
        RedisStoreBuilder {
            url,
            prefix: defaults.key_prefix,
            settings: defaults.store,
            clock: system_clock(),
            pool_size: defaults.redis.pool_size,
            connect_timeout: defaults.redis.connect_timeout,
            command_timeout: defaults.redis.command_timeout,
            fail_fast: defaults.redis.fail_fast,
            breaker: defaults.redis.breaker,
            tls: defaults.redis.tls,
            topology: defaults.redis.topology,
        }
    }

    /// What this store can do: data lives in the server, so it outlives the store
    /// and the process (as far as the server's persistence goes).
    pub fn capabilities(&self) -> chatstate_core::Capabilities {
        chatstate_core::Capabilities::PERSISTENT
    }

    /// Connects as `config` says (`REDIS_URL`, prefix, pool, timeouts, settings,
    /// `CHATSTATE_REDIS_FAIL_FAST`, the breaker).
    pub async fn from_config(config: &Config) -> Result<RedisStore> {
        RedisStore::builder(config.redis.url.clone())
            .prefix(config.key_prefix.clone())
            .settings(config.store.clone())
            .pool_size(config.redis.pool_size)
            .connect_timeout(config.redis.connect_timeout)
            .command_timeout(config.redis.command_timeout)
            .fail_fast(config.redis.fail_fast)
            .breaker(config.redis.breaker)
            .tls(config.redis.tls.clone())
            .topology(config.redis.topology.clone())
            .connect()
            .await
    }

    /// Round trips and commands this store (and its clones) sent so far.
    pub fn round_trips(&self) -> RoundTrips {
        self.inner.conn.counters.snapshot()
    }

    /// Commands sent so far, by name (`EVALSHA`, `MGET`, ...): what
    /// [`RedisStore::round_trips`] counts, itemised.
    pub fn commands_by_name(&self) -> std::collections::BTreeMap<String, u64> {
        self.inner.conn.counters.by_name()
    }

    /// The deadpool pool, for work that must hold a connection alone (WATCH,
    /// blocking reads, pub/sub). Ordinary commands use the shared multiplexed
    /// connection instead: see the crate docs. `None` through Sentinel or on a
    /// Cluster, where a pool of connections to one address would not follow a
    /// failover or a slot's node.
    pub fn pool(&self) -> Option<&deadpool_redis::Pool> {
        self.inner.pool.as_ref()
    }

    /// A client for a connection of its own (pub/sub) to the server commands go
    /// to: through Sentinel, the master the Sentinels name now (asked each time).
    pub(crate) async fn dedicated_client(&self) -> Result<redis::Client> {
        match &self.inner.conn.link {
            conn::Link::Sentinel(link) => link
                .master_client()
                .await
                .map_err(|e| conn::map_err(e, "connect", None)),
            // Any node: a Cluster delivers every PUBLISH to every node. The seeds
            // in turn, so a dead one is not asked again and again.
            conn::Link::Cluster(cluster) => Ok(cluster.next_seed_client()),
            conn::Link::Direct(_) => tls::client(&self.inner.url, &self.inner.tls),
        }
    }

    /// Checks at once what [`RedisStore::dedicated_client`] needs that cannot
    /// change (the URL and TLS files of one server).
    pub(crate) fn check_dedicated_client(&self) -> Result<()> {
        match &self.inner.conn.link {
            conn::Link::Direct(_) => tls::client(&self.inner.url, &self.inner.tls).map(drop),
            _ => Ok(()),
        }
    }

    /// The key layout (prefix) in use.
    pub fn layout(&self) -> &KeyLayout {
        &self.inner.layout
    }
}

/// What a store connects to, for logs, errors and `Debug` (never a password).
fn describe(url: &RedisUrl, topology: &RedisTopology) -> String {
    let list = |nodes: &[chatstate_core::HostPort]| {
        nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    match topology {
        RedisTopology::Standalone => url.to_string(),
        RedisTopology::Sentinel {
            sentinels, master, ..
        } => format!(
            "master {master:?} through Sentinels {} ({})",
            list(sentinels),
            if url.is_tls() { "TLS" } else { "no TLS" }
        ),
        RedisTopology::Cluster { nodes } => format!(
            "Redis Cluster through {} ({})",
            list(nodes),
            if url.is_tls() { "TLS" } else { "no TLS" }
        ),
    }
}

/// A PTTL reply as a remaining TTL: `None` for a missing key; a key with no
/// expiry (written outside chatstate) reads as `Duration::MAX`.
fn pttl_to_duration(pttl: i64) -> Option<Duration> {
    match pttl {
        -2 => None,
        -1 => Some(Duration::MAX),
        ms => Some(Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    }
}
