//! The connection: one multiplexed, self-reconnecting connection for every ordinary
//! command, round-trip accounting, scripts sent once, and Redis errors mapped to
//! chatstate's.
//!
//! Why a multiplexed connection and not a pool checkout per call: on the project's
//! 2-core machine one shared multiplexed connection carried ~270–290k GET/s from 64
//! tasks, a deadpool checkout per call ~50k/s (each checkout of a reused connection
//! sends its own health check). The deadpool pool is kept for work that must hold a
//! connection alone (WATCH, blocking reads, pub/sub); see `BENCHMARKS.md`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chatstate_core::{Error, ErrorKind, Result};

use crate::breaker::Breaker;
use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{Cmd, FromRedisValue, Pipeline, Value};
use serde::Serialize;

/// Round trips and commands this store sent, counted by the store itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RoundTrips {
    /// Requests sent and answered (a pipeline or a script is one).
    pub round_trips: u64,
    /// Redis commands inside them (a pipeline of 3 counts 3; a script counts 1).
    pub commands: u64,
}

/// The commands chatstate sends, sorted: each has its own counter, so counting a
/// command is one atomic add, with no allocation and no lock. A name outside this
/// list is still counted, in a map under a lock (slower, never wrong).
const KNOWN: [&str; 30] = [
    "ASKING",
    "CLUSTER",
    "CONFIG",
    "DEL",
    "EVAL",
    "EVALSHA",
    "EXISTS",
    "EXPIRE",
    "GET",
    "HDEL",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HMGET",
    "HSET",
    "INFO",
    "LRANGE",
    "MGET",
    "PEXPIRE",
    "PING",
    "PTTL",
    "PUBLISH",
    "SCAN",
    "SET",
    "TYPE",
    "UNLINK",
    "XADD",
    "XRANGE",
    "ZRANGE",
    "ZRANGEBYSCORE",
];

pub(crate) struct Counters {
    round_trips: AtomicU64,
    commands: AtomicU64,
    /// Commands sent, by their position in [`KNOWN`].
    known: [AtomicU64; KNOWN.len()],
    /// Commands outside [`KNOWN`], by name.
    other: Mutex<BTreeMap<String, u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            round_trips: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            known: std::array::from_fn(|_| AtomicU64::new(0)),
            other: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The position in [`KNOWN`] of a command name, in any case, without allocating.
fn known_index(name: &[u8]) -> Option<usize> {
    let mut upper = [0u8; 16];
    let upper = upper.get_mut(..name.len())?;
    upper.copy_from_slice(name);
    upper.make_ascii_uppercase();
    KNOWN.binary_search_by(|k| k.as_bytes().cmp(upper)).ok()
}

impl Counters {
    pub fn snapshot(&self) -> RoundTrips {
        RoundTrips {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            commands: self.commands.load(Ordering::Relaxed),
        }
    }

    pub fn by_name(&self) -> BTreeMap<String, u64> {
        let mut out = self.other.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, n) in KNOWN.iter().zip(&self.known) {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                out.insert((*name).to_string(), n);
            }
        }
        out
    }

    /// Counts one round trip carrying `cmds`.
    fn count<'a>(&self, cmds: impl IntoIterator<Item = &'a Cmd>) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut n = 0;
        for cmd in cmds {
            n += 1;
            let name = match cmd.args_iter().next() {
                Some(redis::Arg::Simple(name)) => name,
                _ => b"?".as_slice(),
            };
            match known_index(name) {
                Some(i) => {
                    self.known[i].fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
                    *self
                        .other
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(name)
                        .or_insert(0) += 1;
                }
            }
        }
        self.commands.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_are_sorted_and_counted_without_the_fallback_map() {
        assert!(
            KNOWN.windows(2).all(|w| w[0] < w[1]),
            "KNOWN must stay sorted"
        );
        let c = Counters::default();
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg("a")
            .cmd("exists")
            .arg("a")
            .cmd("XCLAIM")
            .arg("s");
        c.count(pipe.cmd_iter());
        c.count([&*redis::cmd("EVALSHA").arg("x")]);
        let by_name = c.by_name();
        assert_eq!(by_name.get("MGET"), Some(&1));
        assert_eq!(by_name.get("EXISTS"), Some(&1));
        assert_eq!(by_name.get("EVALSHA"), Some(&1));
        assert_eq!(by_name.get("XCLAIM"), Some(&1));
        assert_eq!(by_name.len(), 4);
        assert_eq!(
            c.snapshot(),
            RoundTrips {
                round_trips: 2,
                commands: 4
            }
        );
        assert!(
            c.other
                .lock()
                .map(|m| m.contains_key("XCLAIM"))
                .unwrap_or(false)
        );
        assert!(c.other.lock().map(|m| m.len() == 1).unwrap_or(false));
    }
}

/// Lua shared by the scripts: `wrongtype(key, want)` is a WRONGTYPE error reply when
/// `key` exists with another type than `want`, else `nil`. Scripts call it for every
/// key before their first write, so a refused script has written nothing.
macro_rules! lua_wrongtype {
    () => {
        r#"
local function wrongtype(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', expected a ' .. want)
  end
  return nil
end
"#
    };
}
pub(crate) use lua_wrongtype;

/// Lua shared by the scripts that read integers others may have written (counters,
/// fencing numbers, a session's `version` and `message_count`):
///
/// - `is_int(s)`: whether `s` is an integer exactly as Redis's own `string2ll`
///   accepts it (what `HINCRBY` and `INCR` take): an optional `-`, no `+`, no
///   leading zero, no space, no `.`/`e`/`0x`, no `-0`, within i64. Lua's `tonumber`
///   accepts far more (`" 7"`, `"1.5"`, `"0x10"`, `"1e3"`, `"nan"`), which is why it
///   is never used on stored values.
/// - `fits_sum(a, b)`: whether the sum of two such integers stays within i64,
///   exactly: Lua numbers are doubles, so each value is split into two limbs
///   (`hi * 10^9 + lo`, `0 <= lo < 10^9`, both exact in a double), added with carry
///   and compared with i64::MAX / i64::MIN. This is the Redis side of
///   `chatstate_core::transition::counter_add` (i64 `checked_add`). Fast path: two
///   integers of at most 15 characters are below 10^15 in size, so their sum fits
///   (the common case skips the limb arithmetic).
/// - `nonneg_below_max(s)`: an integer in `0..i64::MAX` (one more still fits).
/// - `corrupt(key, what)`: the `CHATSTATE_CORRUPT` error reply that
///   [`map_err`] turns into `ErrorKind::Decode` naming `key`.
macro_rules! lua_int {
    () => {
        r#"
local function is_int(s)
  if type(s) ~= 'string' then return false end
  if s == '0' then return true end
  local neg = string.sub(s, 1, 1) == '-'
  local digits = neg and string.sub(s, 2) or s
  if not string.match(digits, '^[1-9][0-9]*$') then return false end
  if #digits ~= 19 then return #digits < 19 end
  if neg then return digits <= '9223372036854775808' end
  return digits <= '9223372036854775807'
end
local function limbs(s)
  local neg = string.sub(s, 1, 1) == '-'
  local d = neg and string.sub(s, 2) or s
  local n = #d
  local lo = tonumber(string.sub(d, math.max(1, n - 8)))
  local hi = 0
  if n > 9 then hi = tonumber(string.sub(d, 1, n - 9)) end
  if not neg then return hi, lo end
  if lo == 0 then return -hi, 0 end
  return -hi - 1, 1000000000 - lo
end
local function fits_sum(a, b)
  if #a < 16 and #b < 16 then return true end
  local ah, al = limbs(a)
  local bh, bl = limbs(b)
  local h, l = ah + bh, al + bl
  if l >= 1000000000 then h = h + 1; l = l - 1000000000 end
  if h > 9223372036 or (h == 9223372036 and l > 854775807) then return false end
  if h < -9223372037 or (h == -9223372037 and l < 145224192) then return false end
  return true
end
local function nonneg_below_max(s)
  return is_int(s) and string.sub(s, 1, 1) ~= '-' and fits_sum(s, '1')
end
local function corrupt(key, what)
  return redis.error_reply('CHATSTATE_CORRUPT ' .. key .. ' ' .. what)
end
"#
    };
}
pub(crate) use lua_int;

/// A Lua script, sent by hash (EVALSHA) and by source (EVAL) only when the server
/// does not know it yet (NOSCRIPT: a restart, a SCRIPT FLUSH, a new server).
pub(crate) struct Script {
    pub name: &'static str,
    pub source: &'static str,
    pub sha: String,
}

impl Script {
    pub fn new(name: &'static str, source: &'static str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_string();
        Script { name, source, sha }
    }

    /// `EVALSHA` of this script (or `EVAL` of its source, `by_source`) on `keys`
    /// and `args`.
    pub fn command<A: AsRef<[u8]>>(&self, by_source: bool, keys: &[&str], args: &[A]) -> Cmd {
        let mut cmd = if by_source {
            let mut c = redis::cmd("EVAL");
            c.arg(self.source);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.sha);
            c
        };
        cmd.arg(keys.len()).arg(keys);
        for a in args {
            cmd.arg(a.as_ref());
        }
        cmd
    }
}

/// The error codes (`WRONGTYPE`, `NOREPLICAS`, ...) of a Redis error with their
/// details: one for a plain error, every failed command's for a pipeline.
fn server_errors(e: &redis::RedisError) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = e
        .clone()
        .into_server_errors()
        .map(|errs| {
            errs.iter()
                .map(|(_, se)| {
                    (
                        se.code().to_string(),
                        se.details().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(code) = e.code()
        && !out.iter().any(|(c, _)| c == code)
    {
        out.push((code.to_string(), e.detail().unwrap_or_default().to_string()));
    }
    out
}

/// Refusals that say "not now", never "not this": the same call can succeed later,
/// so they are temporary (`Unavailable`) and a caller (the batched-counter layer)
/// retries them instead of dropping data. Each was checked to refuse before writing.
fn is_transient(code: &str) -> bool {
    match code {
        // The server is loading its dataset after a restart.
        "LOADING" => true,
        // A script or function runs past busy-reply-threshold; it ends or is killed.
        "BUSY" => true,
        // min-replicas-to-write is not met: replicas lag or reconnect.
        "NOREPLICAS" => true,
        // Snapshots fail (full or lost disk) with stop-writes-on-bgsave-error: writes
        // resume once a save succeeds.
        "MISCONF" => true,
        // A replica lost its master (replica-serve-stale-data no).
        "MASTERDOWN" => true,
        // The server became a replica (failover): writes go to the new master once
        // the client reconnects there.
        "READONLY" => true,
        // maxmemory reached under noeviction: keys expire and memory frees.
        "OOM" => true,
        // Cluster: a slot migrates, or the cluster is not serving all slots yet.
        "TRYAGAIN" | "CLUSTERDOWN" => true,
        // Cluster: the slot is served elsewhere, still after the redirects a call
        // follows (a failover in progress names a dead master until it ends).
        "MOVED" | "ASK" => true,
        _ => false,
    }
}

/// Whether `e` says the server cannot be reached or cannot serve anything now:
/// what trips the circuit breaker (see the `breaker` module). The connection-level
/// failures, and those [`is_transient`] codes that refuse reads too; the codes that
/// refuse only writes (`OOM`, `MISCONF`, `READONLY`, `NOREPLICAS`, `TRYAGAIN`) do
/// not, since the server still answers reads.
pub(crate) fn trips_breaker(e: &redis::RedisError) -> bool {
    // A refused TLS handshake is a misconfiguration, not an outage.
    if crate::tls::handshake_failure(e).is_some() {
        return false;
    }
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.code(),
            Some("LOADING" | "BUSY" | "MASTERDOWN" | "CLUSTERDOWN")
        )
}

/// The key a chatstate script names at the start of its error detail
/// (`CHATSTATE_CORRUPT <key> …`, `WRONGTYPE <key> holds a …`).
fn key_in_detail<'a>(code: &str, detail: &'a str) -> Option<&'a str> {
    let (first, rest) = detail.split_once(' ')?;
    let ours = code.starts_with("CHATSTATE_") || rest.starts_with("holds a ");
    ours.then_some(first)
}

/// Maps a Redis error to a chatstate error; `key` names the key concerned, unless a
/// chatstate script named a more precise one.
pub(crate) fn map_err(e: redis::RedisError, op: &'static str, key: Option<&str>) -> Error {
    let errors = server_errors(&e);
    let (code, detail) = errors
        .first()
        .map(|(c, d)| (c.as_str(), d.as_str()))
        .unwrap_or(("", ""));
    let mut key = key.map(str::to_string);
    if let Some(named) = key_in_detail(code, detail) {
        key = Some(named.to_string());
    }
    let (kind, message): (ErrorKind, String) = if let Some(tls) = crate::tls::handshake_failure(&e)
    {
        (ErrorKind::Config, tls)
    } else if e.kind() == redis::ErrorKind::ClusterConnectionNotFound {
        (
            ErrorKind::Unavailable,
            "no connection to the Redis Cluster node the slot is on (its topology is changing)"
                .into(),
        )
    } else if e.is_timeout() {
        (ErrorKind::Timeout, "Redis did not answer in time".into())
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        (ErrorKind::Unavailable, "Redis is unreachable".into())
    } else if is_transient(code) {
        (
            ErrorKind::Unavailable,
            format!("Redis cannot serve the request now ({code})"),
        )
    } else {
        match code {
            "WRONGTYPE" => (
                ErrorKind::WrongType,
                "a key chatstate uses holds another Redis type (written by something else?)".into(),
            ),
            "NOAUTH" | "WRONGPASS" | "NOPERM" => (
                ErrorKind::Config,
                format!("Redis refused the credentials or permissions ({code})"),
            ),
            "CHATSTATE_OVERFLOW" => (
                ErrorKind::InvalidInput,
                "counter increment would overflow an i64".into(),
            ),
            // Redis's own refusals of INCR/HINCRBY (`add`): exact i64 arithmetic.
            "ERR" if detail.contains("increment or decrement would overflow") => (
                ErrorKind::InvalidInput,
                "counter increment would overflow an i64".into(),
            ),
            "CHATSTATE_CORRUPT" => (
                ErrorKind::Decode,
                format!(
                    "a stored value is corrupt: {}",
                    detail.split_once(' ').map(|(_, what)| what).unwrap_or("")
                ),
            ),
            "ERR"
                if detail.contains("hash value is not an integer")
                    || detail.contains("value is not an integer or out of range") =>
            {
                (ErrorKind::Decode, "a stored value is not an integer".into())
            }
            _ if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed) => {
                (ErrorKind::Config, "Redis refused the credentials".into())
            }
            _ => (ErrorKind::Internal, "Redis returned an error".into()),
        }
    };
    let mut err = Error::new(kind, message).with_operation(op).with_source(e);
    if let Some(key) = key {
        err = err.with_key(key);
    }
    err
}

/// Where commands go: the one abstraction over how Redis is deployed, so the
/// stores do not care (as OpenDAL's Redis service does with its connection enum).
/// Every variant reconnects by itself; none re-sends a command that may have run
/// (the breaker and the callers decide that): a Cluster link re-sends only after a
/// refusal that ran nothing (see [`Conn`]'s redirects).
#[derive(Clone)]
pub(crate) enum Link {
    /// One server (`redis://`, `rediss://`, a Unix socket): a multiplexed,
    /// self-reconnecting connection, renewed after a `READONLY` (see the `direct`
    /// module).
    Direct(std::sync::Arc<crate::direct::DirectLink>),
    /// A Redis Cluster: redis-rs's cluster connection (slot map, a connection per
    /// node), built with no retries of its own, and the seed nodes (which the
    /// breaker's probe asks).
    Cluster(crate::cluster::Shared),
    /// The master a set of Sentinels names, followed across failovers.
    Sentinel(std::sync::Arc<crate::sentinel::SentinelLink>),
}

impl Link {
    /// Sends one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            Link::Direct(link) => {
                let (generation, mut manager) = link.connection();
                let result = cmd.query_async(&mut manager).await;
                link.after(generation, &result);
                result
            }
            Link::Cluster(cluster) => cmd.query_async(&mut cluster.connection()).await,
            Link::Sentinel(link) => link.query(cmd).await,
        }
    }

    /// Sends a pipeline (every command in one slot on a Cluster).
    pub async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> redis::RedisResult<T> {
        match self {
            Link::Direct(link) => {
                let (generation, mut manager) = link.connection();
                let result = pipe.query_async(&mut manager).await;
                link.after(generation, &result);
                result
            }
            Link::Cluster(cluster) => pipe.query_async(&mut cluster.connection()).await,
            Link::Sentinel(link) => link.query_pipe(pipe).await,
        }
    }

    /// Whether the server answers: `PING` on one server; on a Cluster, a seed node
    /// says `cluster_state:ok` (see the `cluster` module: a Cluster refuses every
    /// command while a master is down and not yet replaced, and a success renews
    /// the cluster connection).
    pub async fn ping(&self) -> redis::RedisResult<()> {
        match self {
            Link::Cluster(cluster) => cluster.probe().await,
            _ => self.query::<Value>(&redis::cmd("PING")).await.map(drop),
        }
    }

    /// Sends `cmds` to the node at `host:port` (a Cluster's), preceded by `ASKING`
    /// when `asking` (the answer to an ASK redirect): the replies of `cmds`.
    async fn query_at(
        &self,
        cmds: &[&Cmd],
        node: &NodeAddr,
        asking: bool,
    ) -> redis::RedisResult<Vec<Value>> {
        let Link::Cluster(cluster) = self else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "a node address outside a Cluster",
            )));
        };
        let mut pipe = redis::pipe();
        if asking {
            pipe.cmd("ASKING");
        }
        for cmd in cmds {
            pipe.add_command((*cmd).clone());
        }
        let offset = usize::from(asking);
        cluster
            .connection()
            .route_pipeline(
                pipe,
                offset,
                cmds.len(),
                SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                },
            )
            .await
    }
}

/// Where a SCAN walk is: the node (a Cluster master; `None` on one server, or
/// at the start), SCAN's cursor there, and on a Cluster the fingerprint of the
/// slots' owners when the walk began (see [`Conn::scan`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ScanPos {
    pub node: Option<NodeAddr>,
    pub cursor: u64,
    pub fingerprint: Option<u64>,
}

impl ScanPos {
    /// The text form, without spaces: `<cursor>`, or on a Cluster
    /// `<host>:<port>/<cursor>/<fingerprint, hex>`.
    pub fn token(&self) -> String {
        match (&self.node, self.fingerprint) {
            (Some(node), Some(fp)) => format!("{node}/{}/{fp:x}", self.cursor),
            _ => self.cursor.to_string(),
        }
    }

    /// Parses [`ScanPos::token`]'s form.
    pub fn parse(token: &str) -> Option<ScanPos> {
        let mut parts = token.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(node), Some(cursor), Some(fp), None) => Some(ScanPos {
                node: Some(NodeAddr::parse(node)?),
                cursor: cursor.parse().ok()?,
                fingerprint: Some(u64::from_str_radix(fp, 16).ok()?),
            }),
            (Some(cursor), None, None, None) => Some(ScanPos {
                node: None,
                cursor: cursor.parse().ok()?,
                fingerprint: None,
            }),
            _ => None,
        }
    }
}

/// One line of `CLUSTER NODES`: the node's address (`None` when it has none), its
/// flags, and the slot ranges it serves (`0-5460`, `5461`; the `[…]` entries of a
/// slot being imported or migrated, still served by its owner, left out).
pub(crate) struct ClusterNode<'a> {
    pub addr: Option<NodeAddr>,
    pub flags: Vec<&'a str>,
    pub ranges: Vec<String>,
}

/// The lines of a `CLUSTER NODES` reply.
pub(crate) fn cluster_nodes(text: &str) -> impl Iterator<Item = ClusterNode<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let addr = fields.get(1)?.split('@').next()?;
        Some(ClusterNode {
            addr: NodeAddr::parse(addr).filter(|n| !n.host.is_empty()),
            flags: fields.get(2)?.split(',').collect(),
            ranges: fields
                .iter()
                .skip(8)
                .filter(|r| !r.starts_with('['))
                .map(|r| r.to_string())
                .collect(),
        })
    })
}

/// The masters of a Cluster serving slots, and a fingerprint of which serves which.
pub(crate) struct Topology {
    pub masters: Vec<NodeAddr>,
    pub fingerprint: u64,
}

/// A Cluster node's address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct NodeAddr {
    pub host: String,
    pub port: u16,
}

impl NodeAddr {
    /// `host:port` (the last `:` separates the port, for IPv6 hosts).
    pub fn parse(s: &str) -> Option<NodeAddr> {
        let (host, port) = s.rsplit_once(':')?;
        Some(NodeAddr {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: port.parse().ok()?,
        })
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the part
/// between the first `{` and the next `}`, when not empty) or of the whole key,
/// modulo 16384 — the cluster specification's `HASH_SLOT`. Hand-written because
/// redis-rs keeps its own private.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % 16384
}

/// How many times a Cluster call is re-sent after a refusal that ran nothing
/// (`MOVED`, `ASK`, `TRYAGAIN`, `READONLY`), and the waits before each.
const REDIRECT_WAITS_MS: [u64; 5] = [0, 0, 20, 50, 100];

/// Whether `cmd` only reads (what a pipeline must hold to be sent again after a
/// redirect). `MULTI` and `EXEC` write nothing themselves: a transaction of reads
/// (the session read of `load`) is a read.
fn is_read(cmd: &Cmd) -> bool {
    matches!(
        cmd.args_iter().next(),
        Some(redis::Arg::Simple(name)) if [
            &b"GET"[..], b"MGET", b"EXISTS", b"HGETALL", b"HGET", b"HMGET", b"LRANGE", b"PTTL",
            b"TYPE", b"ZRANGE", b"SSCAN", b"SCAN", b"MULTI", b"EXEC",
        ]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
    )
}

/// What a Cluster refusal asks for: follow it (nothing ran, so re-sending cannot
/// apply a write twice), or return it.
enum Refusal {
    /// The slot moved (`MOVED`; the client refreshes its slot map), is being
    /// migrated (`TRYAGAIN`), or its node is now a replica (`READONLY`): send
    /// again, after a short wait.
    Resend,
    /// The key is being migrated to this node: send it there, after `ASKING`.
    Ask(NodeAddr),
}

fn refusal(e: &redis::RedisError) -> Option<Refusal> {
    match e.code()? {
        "MOVED" | "TRYAGAIN" | "READONLY" => Some(Refusal::Resend),
        "ASK" => e
            .redirect_node()
            .and_then(|(node, _)| NodeAddr::parse(node))
            .map(Refusal::Ask),
        _ => None,
    }
}

/// What [`Conn::send`] sends: one command, or a pipeline.
#[derive(Clone, Copy)]
enum Request<'a> {
    One(&'a Cmd),
    Pipe(&'a Pipeline),
}

impl<'a> Request<'a> {
    fn cmds(self) -> impl Iterator<Item = &'a Cmd> {
        let (one, pipe) = match self {
            Request::One(cmd) => (Some(cmd), None),
            Request::Pipe(pipe) => (None, Some(pipe)),
        };
        one.into_iter()
            .chain(pipe.into_iter().flat_map(Pipeline::cmd_iter))
    }
}

/// The shared connection, with accounting and the circuit breaker.
#[derive(Clone)]
pub(crate) struct Conn {
    pub link: Link,
    pub counters: std::sync::Arc<Counters>,
    pub breaker: std::sync::Arc<Breaker>,
}

impl Conn {
    /// Sends one command: one round trip.
    pub async fn cmd<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        op: &'static str,
        key: Option<&str>,
    ) -> Result<T> {
        self.breaker.admit(op, key)?;
        let result = self
            .send(Request::One(cmd))
            .await
            .and_then(|v| T::from_redis_value(v).map_err(redis::RedisError::from));
        self.breaker.record(result.as_ref().map(|_| ()));
        result.map_err(|e| map_err(e, op, key))
    }

    /// Sends `request` in one round trip and answers its reply (a pipeline's: an
    /// array). On a Cluster, follows refusals that ran nothing — `MOVED`, `ASK` (to
    /// the named node, after `ASKING`), `TRYAGAIN`, `READONLY` — at most 5 times
    /// within ~170 ms, each a counted round trip. An I/O error or a timeout is never
    /// re-sent: the command may have run. The request is sent as it is (no copy),
    /// except after an `ASK`.
    async fn send(&self, request: Request<'_>) -> redis::RedisResult<Value> {
        let mut ask: Option<NodeAddr> = None;
        let mut attempt = 0;
        loop {
            self.counters.count(request.cmds());
            let result = match (&ask, request) {
                (Some(node), _) => {
                    let cmds: Vec<&Cmd> = request.cmds().collect();
                    let replies = self.link.query_at(&cmds, node, true).await;
                    match request {
                        Request::One(_) => replies.map(|mut v| v.pop().unwrap_or(Value::Nil)),
                        Request::Pipe(_) => replies.map(Value::Array),
                    }
                }
                (None, Request::One(cmd)) => self.link.query::<Value>(cmd).await,
                (None, Request::Pipe(pipe)) => self.link.query_pipe::<Value>(pipe).await,
            };
            let Err(e) = result else { return result };
            // A pipeline's error names its first failed command: the others may have
            // run, so only a pipeline of reads is sent again.
            let may_resend = match request {
                Request::One(_) => true,
                Request::Pipe(pipe) => pipe.cmd_iter().all(is_read),
            };
            let follow = match &self.link {
                Link::Cluster(..) if may_resend => refusal(&e),
                _ => None,
            };
            let (Some(follow), Some(wait)) = (follow, REDIRECT_WAITS_MS.get(attempt)) else {
                return Err(e);
            };
            attempt += 1;
            match follow {
                Refusal::Ask(node) => ask = Some(node),
                Refusal::Resend => {
                    ask = None;
                    if *wait > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(*wait)).await;
                    }
                }
            }
        }
    }

    /// Whether this is a Cluster link.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(..))
    }

    /// The positions of `keys` grouped by Cluster slot, groups in the order of
    /// their first key: what a multi-key call sends one round trip per group for.
    /// One group of every key outside a Cluster.
    fn by_slot<K: AsRef<str>>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return vec![(0..keys.len()).collect()];
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut index: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
        for (i, key) in keys.iter().enumerate() {
            let s = slot(key.as_ref().as_bytes());
            let g = *index.entry(s).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }

    /// Runs `f` once per slot of `keys` (once for all of them outside a Cluster)
    /// with the positions in `keys` of that slot's keys, the slots concurrently;
    /// the results in slot order. What every multi-key call sends through: one
    /// round trip per slot.
    pub async fn per_slot<K, T, F, Fut>(&self, keys: &[K], f: F) -> Result<Vec<T>>
    where
        K: AsRef<str>,
        F: Fn(Vec<usize>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut groups = self.by_slot(keys);
        if groups.len() == 1 {
            let group = groups.pop().unwrap_or_default();
            return Ok(vec![f(group).await?]);
        }
        futures_util::future::try_join_all(groups.into_iter().map(f)).await
    }

    /// The Cluster's masters serving slots, in address order, and a fingerprint of
    /// which master serves which slots (from `CLUSTER NODES`, one round trip).
    /// `Unavailable` while a slot is not served (a master down and not yet
    /// replaced): a walk over the masters would silently miss its keys.
    pub async fn topology(&self, op: &'static str) -> Result<Topology> {
        let text: String = self
            .cmd(redis::cmd("CLUSTER").arg("NODES"), op, None)
            .await?;
        let mut masters: Vec<(NodeAddr, Vec<String>)> = Vec::new();
        let mut covered: u32 = 0;
        for ClusterNode {
            addr,
            flags,
            ranges,
        } in cluster_nodes(&text)
        {
            if !flags.contains(&"master") || ranges.is_empty() {
                continue;
            }
            if flags.contains(&"fail") || flags.contains(&"noaddr") {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "a Cluster master is down and not yet replaced: its slots are not served",
                )
                .with_operation(op));
            }
            for r in &ranges {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    covered += b.saturating_sub(a) + 1;
                }
            }
            if let Some(node) = addr {
                masters.push((node, ranges));
            }
        }
        if covered < 16384 || masters.is_empty() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the Cluster does not serve every slot now",
            )
            .with_operation(op));
        }
        masters.sort();
        // Fixed across processes: a cursor made by one is checked by another.
        let fingerprint = chatstate_core::key::fnv1a(masters.iter().flat_map(|(node, ranges)| {
            std::iter::once(node.to_string())
                .chain(ranges.iter().cloned())
                .flat_map(|part| part.into_bytes().into_iter().chain([b' ']))
        }));
        Ok(Topology {
            masters: masters.into_iter().map(|(n, _)| n).collect(),
            fingerprint,
        })
    }

    /// One SCAN step at `pos` with `args` after the cursor (`MATCH …`, `COUNT …`,
    /// `TYPE …`): the keys found, `pos` resolved (on a Cluster the start names the
    /// first master and the slots' fingerprint: a cursor made at this step must
    /// carry them), and where the walk goes on (`None` at its end).
    ///
    /// On a Cluster the walk visits every master in address order, and each step
    /// first checks that the slots are still where they were when the walk began
    /// (one `CLUSTER NODES` per step): a failover or a slot migration during the
    /// walk could make it miss keys or return them twice, so it is a `Conflict`
    /// ("start the walk again"). `Unavailable` while a slot is not served.
    pub async fn scan(
        &self,
        pos: &ScanPos,
        args: &[&str],
        op: &'static str,
    ) -> Result<(Vec<String>, ScanPos, Option<ScanPos>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(pos.cursor).arg(args);
        if !self.is_cluster() {
            let (next, keys): (u64, Vec<String>) = self.cmd(&cmd, op, None).await?;
            let next = (next != 0).then_some(ScanPos {
                node: None,
                cursor: next,
                fingerprint: None,
            });
            return Ok((keys, pos.clone(), next));
        }
        let topology = self.topology(op).await?;
        let node = match &pos.node {
            Some(node) => {
                if pos.fingerprint != Some(topology.fingerprint) || !topology.masters.contains(node)
                {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "the Cluster's slots moved during this walk (a failover or a \
                         resharding): start the walk again",
                    )
                    .with_operation(op));
                }
                node.clone()
            }
            None => topology.masters[0].clone(),
        };
        self.breaker.admit(op, None)?;
        self.counters.count([&cmd]);
        let result = self.link.query_at(&[&cmd], &node, false).await;
        self.breaker.record(result.as_ref().map(|_| ()));
        let mut reply = result.map_err(|e| map_err(e, op, None))?;
        let (next, keys): (u64, Vec<String>) =
            FromRedisValue::from_redis_value(reply.pop().unwrap_or(Value::Nil))
                .map_err(|e| map_err(redis::RedisError::from(e), op, None))?;
        let at = ScanPos {
            node: Some(node.clone()),
            cursor: pos.cursor,
            fingerprint: Some(topology.fingerprint),
        };
        let next = if next != 0 {
            Some(ScanPos {
                node: Some(node),
                cursor: next,
                fingerprint: Some(topology.fingerprint),
            })
        } else {
            // This master is done: the next one in address order, if any.
            topology
                .masters
                .into_iter()
                .find(|m| *m > node)
                .map(|m| ScanPos {
                    node: Some(m),
                    cursor: 0,
                    fingerprint: Some(topology.fingerprint),
                })
        };
        Ok((keys, at, next))
    }

    /// Sends a (non-transactional) pipeline: one round trip. `keys[i]` is the key
    /// command `i` concerns: an error names the key of the command that failed (the
    /// first key when that is unknown).
    pub async fn pipe<T: FromRedisValue>(
        &self,
        pipe: &Pipeline,
        op: &'static str,
        keys: &[&str],
    ) -> Result<T> {
        self.breaker.admit(op, keys.first().copied())?;
        let result = self
            .send(Request::Pipe(pipe))
            .await
            .and_then(|v| T::from_redis_value(v).map_err(redis::RedisError::from));
        self.breaker.record(result.as_ref().map(|_| ()));
        result.map_err(|e| {
            let failed = e
                .clone()
                .into_server_errors()
                .and_then(|errs| errs.first().map(|(i, _)| *i));
            let key = failed.and_then(|i| keys.get(i)).or(keys.first()).copied();
            map_err(e, op, key)
        })
    }

    /// Runs a script by its source (EVAL): when the server is known not to have it.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
        op: &'static str,
    ) -> Result<Value> {
        self.cmd(&script.command(true, keys, args), op, keys.first().copied())
            .await
    }

    /// Runs a script: one round trip (two the first time a server sees it).
    pub async fn script(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[&[u8]],
        op: &'static str,
    ) -> Result<Value> {
        let key = keys.first().copied();
        self.breaker.admit(op, key)?;
        let evalsha = script.command(false, keys, args);
        let result = self.send(Request::One(&evalsha)).await;
        self.breaker.record(result.as_ref().map(|_| ()));
        match result {
            Err(e) if e.code() == Some("NOSCRIPT") => {
                tracing::debug!(script = script.name, "loading script");
                self.eval(script, keys, args, op).await
            }
            other => other.map_err(|e| map_err(e, op, key)),
        }
    }
}

/// Decode helpers for script replies.
pub(crate) mod reply {
    use chatstate_core::{Error, Result};
    use redis::Value;

    fn bad(what: &str) -> Error {
        Error::decode(format!("unexpected Redis reply shape: {what}"))
    }

    /// An integer exactly as Redis's `string2ll` reads it (what HINCRBY and INCR
    /// take, and what the scripts' `is_int` accepts): Rust's `parse` alone would also
    /// take `"+5"` and `"007"`, which every write refuses, so reads refuse them too.
    pub fn redis_int(b: &[u8]) -> Option<i64> {
        let s = std::str::from_utf8(b).ok()?;
        s.parse::<i64>().ok().filter(|v| v.to_string() == s)
    }

    pub fn int(v: &Value) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::BulkString(b) => redis_int(b).ok_or_else(|| bad("a number")),
            _ => Err(bad("a number")),
        }
    }

    pub fn array(v: Value) -> Result<Vec<Value>> {
        match v {
            Value::Array(a) | Value::Set(a) => Ok(a),
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("an array")),
        }
    }

    pub fn bytes(v: Value) -> Result<Option<Vec<u8>>> {
        match v {
            Value::Nil => Ok(None),
            Value::BulkString(b) => Ok(Some(b)),
            Value::SimpleString(s) => Ok(Some(s.into_bytes())),
            Value::Int(i) => Ok(Some(i.to_string().into_bytes())),
            _ => Err(bad("a string")),
        }
    }

    /// A flat `[field, value, field, value, ...]` array (or a RESP3 map) as pairs.
    pub fn pairs(v: Value) -> Result<Vec<(String, Vec<u8>)>> {
        let items: Vec<(Value, Value)> = match v {
            Value::Map(m) => m,
            other => {
                let flat = array(other)?;
                if flat.len() % 2 != 0 {
                    return Err(bad("an even-length array"));
                }
                let mut it = flat.into_iter();
                let mut out = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    out.push((k, v));
                }
                out
            }
        };
        items
            .into_iter()
            .map(|(k, v)| {
                let k = bytes(k)?.ok_or_else(|| bad("a field name"))?;
                let k = String::from_utf8(k).map_err(|_| bad("a UTF-8 field name"))?;
                Ok((k, bytes(v)?.unwrap_or_default()))
            })
            .collect()
    }
}
