//! Configuration from the environment, validated in one place.
//!
//! [`Config::from_env`] reads every variable below; a malformed value is an
//! [`ErrorKind::Config`](crate::ErrorKind::Config) error that names the variable and says what it accepts. An
//! empty value counts as unset (so `USE_REDIS=` in a `.env` file means the default).
//! The Redis password never appears in `Debug` or `Display` output.
//!
//! Durations (every `…_SECONDS` and `…_MS` variable) take a bare number in the unit
//! the name says, or a number with its unit: `300`, `5m`, `72h`, `1h 30m`, `250ms`.
//! The table is also [`env_vars`], for tools (`chatstate status` prints it).
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `USE_REDIS` | `1`/`true`/`yes`/`on` uses Redis, `0`/`false`/`no`/`off` the file store | off |
//! | `CHATSTATE_BACKEND` | `memory`, `file` or `redis`; overrides `USE_REDIS` (they must agree when both are set) | as USE_REDIS says |
//! | `REDIS_URL` | `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS), `redis+unix:///path` | `redis://127.0.0.1:6379` |
//! | `REDIS_TTL_SECONDS` | session TTL, sliding on activity | `259200` (72 h) |
//! | `REDIS_POOL_SIZE` | connections in the pool, 1–1024 | `16` |
//! | `REDIS_CONNECT_TIMEOUT_MS` | connect timeout | `5000` |
//! | `REDIS_COMMAND_TIMEOUT_MS` | timeout of every command | `2000` |
//! | `CHATSTATE_KEY_PREFIX` | prefix of every key, `A-Z a-z 0-9 _ - .` (no `:`), see [`crate::KeyLayout`] | `chatstate` |
//! | `CHATSTATE_FILE_DIR` | the file store's folder | `./chatstate-data` |
//! | `CHATSTATE_WINDOW_SIZE` | recent messages kept per session, 1–10000 | `20` |
//! | `CHATSTATE_SUMMARY_MAX_CHARS` | summary length in characters | `400` |
//! | `CHATSTATE_CACHE_TTL_SECONDS` | default TTL of cache entries | `3600` |
//! | `CHATSTATE_FOCUS_TTL_SECONDS` | default TTL of focus documents | the session TTL |
//! | `CHATSTATE_MAX_VALUE_BYTES` | largest value accepted (message, blob, cache value) | `1048576` (1 MiB) |
//! | `CHATSTATE_STREAM_TTL_SECONDS` | TTL of a streamed reply (a [`crate::ReplyStream`] run) started without one | `3600` (1 h) |
//! | `CHATSTATE_STREAM_MAX_RUN_BYTES` | most bytes one streamed reply may hold (its chunks together); a chunk's own limit is `CHATSTATE_MAX_VALUE_BYTES` | `4194304` (4 MiB) |
//! | `CHATSTATE_CODEC` | `bincode` or `json`, for typed values (the facade's `Stores::codec`) | `json` (values written with either stay readable: a value names its codec) |
//! | `CHATSTATE_COUNTER_FLUSH_SECONDS` | batched counters' flush interval | `60` |
//! | `CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS` | how long an applied batch id is remembered, so a retried flush is not counted twice; at least 10 flush intervals | `86400` |
//! | `CHATSTATE_LOCAL_CACHE_CAPACITY` | entries in the local cache tier | `10000` |
//! | `CHATSTATE_LOCAL_CACHE_TTL_SECONDS` | TTL in the local cache tier | `60` |
//! | `CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS` | how long past its TTL the local tier may still serve an entry while Redis fails (stale-if-error); `0` never | `300` |
//! | `CHATSTATE_LOCAL_SESSION_CAPACITY` | sessions (each with its window) in the local session tier, and focus documents in the local focus tier (`Stores::with_local_sessions`) | `10000` |
//! | `CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS` | how long the local session and focus tiers serve a copy they read or wrote; another instance's write is seen after at most this | `60` |
//! | `CHATSTATE_REDIS_FAIL_FAST` | `1`: opening the stores fails when Redis cannot be reached (otherwise they open and connect in the background) | off |
//! | `CHATSTATE_REDIS_FALLBACK` | `none`, `file` or `memory`: the backend to open instead when Redis cannot be reached at start | `none` |
//! | `CHATSTATE_REDIS_BREAKER_FAILURES` | consecutive temporary failures that open the circuit breaker, 1–1000 | `5` |
//! | `CHATSTATE_REDIS_BREAKER_WINDOW_MS` | the failures must fall within this window | `10000` |
//! | `CHATSTATE_REDIS_BREAKER_OPEN_MS` | how long the breaker stays open before a probe may close it | `1000` |
//! | `CHATSTATE_SESSION_FALLBACK` | only `none`: sessions do not move to another store during an outage (see the facade's docs for why) | `none` |
//! | `REDIS_CA_CERT` | PEM file of the CA(s) that sign the server's certificate (`rediss://` only); otherwise the system's roots | unset |
//! | `REDIS_CLIENT_CERT` | PEM file of the client certificate for mutual TLS (with `REDIS_CLIENT_KEY`) | unset |
//! | `REDIS_CLIENT_KEY` | PEM file of the client certificate's private key (with `REDIS_CLIENT_CERT`) | unset |
//! | `REDIS_TLS_INSECURE` | `1`: do not verify the server's certificate (a warning is logged at every start) | off |
//! | `REDIS_SENTINELS` | `host:port,host:port,…`: connect through these Sentinels (with `REDIS_SENTINEL_MASTER`); `REDIS_URL` then gives only the master's credentials, database and TLS scheme | unset |
//! | `REDIS_SENTINEL_MASTER` | the name the Sentinels monitor the master under | unset |
//! | `REDIS_SENTINEL_PASSWORD` | the Sentinels' own password, when they have one | unset |
//! | `REDIS_CLUSTER_NODES` | `host:port,host:port,…`: seed nodes of a Redis Cluster; `REDIS_URL` then gives only the credentials and the TLS scheme | unset |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::key::{CacheKey, check_prefix};

/// How many flush intervals an applied counter batch id must be remembered at least
/// (see [`StoreSettings::check_flush_interval`]).
pub const BATCH_RETENTION_FACTOR: u32 = 10;

/// The longest TTL or lease accepted: ten years.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// One variable [`Config::from_env`] reads: its name, what it means and its
/// default, as the module docs' table shows them (a test keeps the two equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EnvVar {
    /// The variable.
    pub name: &'static str,
    /// What it sets and what it accepts (Markdown).
    pub meaning: &'static str,
    /// Its default (Markdown).
    pub default: &'static str,
}

/// Every variable [`Config::from_env`] reads, with its meaning and default, in the
/// order of the module docs' table: what `chatstate status`/`--help`, the docs and
/// tools list.
pub fn env_vars() -> &'static [EnvVar] {
    ENV
}

const ENV: &[EnvVar] = &[
    EnvVar {
        name: "USE_REDIS",
        meaning: "`1`/`true`/`yes`/`on` uses Redis, `0`/`false`/`no`/`off` the file store",
        default: "off",
    },
    EnvVar {
        name: "CHATSTATE_BACKEND",
        meaning: "`memory`, `file` or `redis`; overrides `USE_REDIS` (they must agree when both are set)",
        default: "as USE_REDIS says",
    },
    EnvVar {
        name: "REDIS_URL",
        meaning: "`redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS), `redis+unix:///path`",
        default: "`redis://127.0.0.1:6379`",
    },
    EnvVar {
        name: "REDIS_TTL_SECONDS",
        meaning: "session TTL, sliding on activity",
        default: "`259200` (72 h)",
    },
    EnvVar {
        name: "REDIS_POOL_SIZE",
        meaning: "connections in the pool, 1–1024",
        default: "`16`",
    },
    EnvVar {
        name: "REDIS_CONNECT_TIMEOUT_MS",
        meaning: "connect timeout",
        default: "`5000`",
    },
    EnvVar {
        name: "REDIS_COMMAND_TIMEOUT_MS",
        meaning: "timeout of every command",
        default: "`2000`",
    },
    EnvVar {
        name: "CHATSTATE_KEY_PREFIX",
        meaning: "prefix of every key, `A-Z a-z 0-9 _ - .` (no `:`), see [`crate::KeyLayout`]",
        default: "`chatstate`",
    },
    EnvVar {
        name: "CHATSTATE_FILE_DIR",
        meaning: "the file store's folder",
        default: "`./chatstate-data`",
    },
    EnvVar {
        name: "CHATSTATE_WINDOW_SIZE",
        meaning: "recent messages kept per session, 1–10000",
        default: "`20`",
    },
    EnvVar {
        name: "CHATSTATE_SUMMARY_MAX_CHARS",
        meaning: "summary length in characters",
        default: "`400`",
    },
    EnvVar {
        name: "CHATSTATE_CACHE_TTL_SECONDS",
        meaning: "default TTL of cache entries",
        default: "`3600`",
    },
    EnvVar {
        name: "CHATSTATE_FOCUS_TTL_SECONDS",
        meaning: "default TTL of focus documents",
        default: "the session TTL",
    },
    EnvVar {
        name: "CHATSTATE_MAX_VALUE_BYTES",
        meaning: "largest value accepted (message, blob, cache value)",
        default: "`1048576` (1 MiB)",
    },
    EnvVar {
        name: "CHATSTATE_STREAM_TTL_SECONDS",
        meaning: "TTL of a streamed reply (a [`crate::ReplyStream`] run) started without one",
        default: "`3600` (1 h)",
    },
    EnvVar {
        name: "CHATSTATE_STREAM_MAX_RUN_BYTES",
        meaning: "most bytes one streamed reply may hold (its chunks together); a chunk's own limit is `CHATSTATE_MAX_VALUE_BYTES`",
        default: "`4194304` (4 MiB)",
    },
    EnvVar {
        name: "CHATSTATE_CODEC",
        meaning: "`bincode` or `json`, for typed values (the facade's `Stores::codec`)",
        default: "`json` (values written with either stay readable: a value names its codec)",
    },
    EnvVar {
        name: "CHATSTATE_COUNTER_FLUSH_SECONDS",
        meaning: "batched counters' flush interval",
        default: "`60`",
    },
    EnvVar {
        name: "CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS",
        meaning: "how long an applied batch id is remembered, so a retried flush is not counted twice; at least 10 flush intervals",
        default: "`86400`",
    },
    EnvVar {
        name: "CHATSTATE_LOCAL_CACHE_CAPACITY",
        meaning: "entries in the local cache tier",
        default: "`10000`",
    },
    EnvVar {
        name: "CHATSTATE_LOCAL_CACHE_TTL_SECONDS",
        meaning: "TTL in the local cache tier",
        default: "`60`",
    },
    EnvVar {
        name: "CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS",
        meaning: "how long past its TTL the local tier may still serve an entry while Redis fails (stale-if-error); `0` never",
        default: "`300`",
    },
    EnvVar {
        name: "CHATSTATE_LOCAL_SESSION_CAPACITY",
        meaning: "sessions (each with its window) in the local session tier, and focus documents in the local focus tier (`Stores::with_local_sessions`)",
        default: "`10000`",
    },
    EnvVar {
        name: "CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS",
        meaning: "how long the local session and focus tiers serve a copy they read or wrote; another instance's write is seen after at most this",
        default: "`60`",
    },
    EnvVar {
        name: "CHATSTATE_REDIS_FAIL_FAST",
        meaning: "`1`: opening the stores fails when Redis cannot be reached (otherwise they open and connect in the background)",
        default: "off",
    },
    EnvVar {
        name: "CHATSTATE_REDIS_FALLBACK",
        meaning: "`none`, `file` or `memory`: the backend to open instead when Redis cannot be reached at start",
        default: "`none`",
    },
    EnvVar {
        name: "CHATSTATE_REDIS_BREAKER_FAILURES",
        meaning: "consecutive temporary failures that open the circuit breaker, 1–1000",
        default: "`5`",
    },
    EnvVar {
        name: "CHATSTATE_REDIS_BREAKER_WINDOW_MS",
        meaning: "the failures must fall within this window",
        default: "`10000`",
    },
    EnvVar {
        name: "CHATSTATE_REDIS_BREAKER_OPEN_MS",
        meaning: "how long the breaker stays open before a probe may close it",
        default: "`1000`",
    },
    EnvVar {
        name: "CHATSTATE_SESSION_FALLBACK",
        meaning: "only `none`: sessions do not move to another store during an outage (see the facade's docs for why)",
        default: "`none`",
    },
    EnvVar {
        name: "REDIS_CA_CERT",
        meaning: "PEM file of the CA(s) that sign the server's certificate (`rediss://` only); otherwise the system's roots",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_CLIENT_CERT",
        meaning: "PEM file of the client certificate for mutual TLS (with `REDIS_CLIENT_KEY`)",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_CLIENT_KEY",
        meaning: "PEM file of the client certificate's private key (with `REDIS_CLIENT_CERT`)",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_TLS_INSECURE",
        meaning: "`1`: do not verify the server's certificate (a warning is logged at every start)",
        default: "off",
    },
    EnvVar {
        name: "REDIS_SENTINELS",
        meaning: "`host:port,host:port,…`: connect through these Sentinels (with `REDIS_SENTINEL_MASTER`); `REDIS_URL` then gives only the master's credentials, database and TLS scheme",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_SENTINEL_MASTER",
        meaning: "the name the Sentinels monitor the master under",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_SENTINEL_PASSWORD",
        meaning: "the Sentinels' own password, when they have one",
        default: "unset",
    },
    EnvVar {
        name: "REDIS_CLUSTER_NODES",
        meaning: "`host:port,host:port,…`: seed nodes of a Redis Cluster; `REDIS_URL` then gives only the credentials and the TLS scheme",
        default: "unset",
    },
];

/// Which backend stores the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In process memory: lost at exit. For tests and embedding.
    Memory,
    /// Files in a local folder: the embedded default, and the fallback without Redis.
    File,
    /// Redis: one server, a master found through Sentinel, or a Cluster (see
    /// [`RedisTopology`]).
    Redis,
}

impl FromStr for BackendKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "memory" => Ok(BackendKind::Memory),
            "file" => Ok(BackendKind::File),
            "redis" => Ok(BackendKind::Redis),
            _ => Err(Error::config("expected one of: memory, file, redis")),
        }
    }
}

/// The rules every backend applies the same way: TTLs, window, limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// Session TTL, refreshed by every write to the session.
    pub session_ttl: Duration,
    /// Recent messages kept per session.
    pub window_size: usize,
    /// Longest stored summary, in characters.
    pub summary_max_chars: usize,
    /// TTL of a cache entry set without one.
    pub cache_ttl: Duration,
    /// TTL of a focus document put without one.
    pub focus_ttl: Duration,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// How long an applied counter batch id is remembered.
    pub batch_retention: Duration,
    /// TTL of a streamed reply started without one.
    pub reply_ttl: Duration,
    /// Most bytes one streamed reply may hold, its chunks together (each chunk is
    /// also held to `max_value_bytes`).
    pub max_run_bytes: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            session_ttl: Duration::from_secs(259_200),
            window_size: 20,
            summary_max_chars: 400,
            cache_ttl: Duration::from_secs(3600),
            focus_ttl: Duration::from_secs(259_200),
            max_value_bytes: 1024 * 1024,
            batch_retention: Duration::from_secs(86_400),
            reply_ttl: Duration::from_secs(3600),
            max_run_bytes: 4 * 1024 * 1024,
        }
    }
}

impl StoreSettings {
    /// An [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error naming `what` when `len` exceeds
    /// `max_value_bytes`.
    pub fn check_value_len(&self, what: &str, len: usize) -> Result<()> {
        if len > self.max_value_bytes {
            return Err(Error::invalid_input(format!(
                "{what} is {len} bytes, more than the limit of {} (CHATSTATE_MAX_VALUE_BYTES)",
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// The TTL an operation uses: `given`, or `default` when `None`. A zero TTL, or
    /// one over ten years, is an [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) error.
    pub fn ttl_or(given: Option<Duration>, default: Duration) -> Result<Duration> {
        let ttl = given.unwrap_or(default);
        if ttl.is_zero() {
            return Err(Error::invalid_input("a TTL or lease must be positive"));
        }
        if ttl > MAX_TTL {
            return Err(Error::invalid_input(
                "a TTL or lease must be at most ten years",
            ));
        }
        // Backends keep time in whole milliseconds (Redis PX): round up, never to 0.
        let ms = ttl.as_nanos().div_ceil(1_000_000);
        Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }

    /// An explicit TTL or lease, checked as [`StoreSettings::ttl_or`] does.
    pub fn check_ttl(ttl: Duration) -> Result<Duration> {
        StoreSettings::ttl_or(Some(ttl), ttl)
    }

    /// The TTL of a cache write (`ttl`, or the cache TTL), after checking every value
    /// (given as key and length) against the value limit; the error names the key.
    /// Every backend checks a write this way before touching anything.
    pub fn cache_write_ttl<'a>(
        &self,
        values: impl IntoIterator<Item = (&'a CacheKey, usize)>,
        ttl: Option<Duration>,
    ) -> Result<Duration> {
        let ttl = StoreSettings::ttl_or(ttl, self.cache_ttl)?;
        for (key, len) in values {
            self.check_value_len("cache value", len)
                .map_err(|e| e.with_key(key))?;
        }
        Ok(ttl)
    }

    /// The TTL and the checked aliases of a [`crate::KvCache::set_with_aliases`]:
    /// [`StoreSettings::cache_write_ttl`] of the value, then
    /// [`check_aliases`](crate::key::check_aliases); errors name the operation.
    pub fn cache_aliased_write(
        &self,
        key: &CacheKey,
        value_len: usize,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<(Duration, Vec<CacheKey>)> {
        let ttl = self.cache_write_ttl([(key, value_len)], ttl)?;
        let aliases = crate::key::check_aliases(key, aliases)?;
        Ok((ttl, aliases))
    }

    /// The TTL of each entry of a [`crate::KvCache::set_many_with_ttls`] (its own, or
    /// the cache TTL), after checking every value's length: one bad entry fails
    /// them all.
    pub fn cache_write_ttls<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a CacheKey, usize, Option<Duration>)>,
    ) -> Result<Vec<Duration>> {
        entries
            .into_iter()
            .map(|(key, len, ttl)| {
                self.check_value_len("cache value", len)
                    .map_err(|e| e.with_key(key))?;
                StoreSettings::ttl_or(ttl, self.cache_ttl).map_err(|e| e.with_key(key))
            })
            .collect()
    }

    /// The TTL of a focus put (`ttl`, or the focus TTL), after checking the value's
    /// length against the value limit.
    pub fn focus_put_ttl(&self, value_len: usize, ttl: Option<Duration>) -> Result<Duration> {
        self.check_value_len("focus value", value_len)?;
        StoreSettings::ttl_or(ttl, self.focus_ttl)
    }

    /// How long a lock's fencing number is kept after an acquire, extend or release
    /// that leaves `lease_left` on the lease: the lease plus the session TTL. Every
    /// backend keeps a fence at least this long (never shortening an earlier
    /// deadline), so a new holder's fence is larger than a stale holder's even when the
    /// lease is longer than the session TTL.
    pub fn fence_retention(&self, lease_left: Duration) -> Duration {
        lease_left.saturating_add(self.session_ttl)
    }

    /// Checks that applied batch ids are remembered long enough for a batched-counter
    /// layer flushing every `flush_interval`: at least
    /// [`BATCH_RETENTION_FACTOR`] intervals, so a batch retried on the next flushes
    /// after a lost reply is still recognised. A [`crate::ErrorKind::Config`] error
    /// otherwise.
    pub fn check_flush_interval(&self, flush_interval: Duration) -> Result<()> {
        let needed = flush_interval.saturating_mul(BATCH_RETENTION_FACTOR);
        if self.batch_retention < needed {
            return Err(Error::config(format!(
                "counter batch retention ({} s, CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS) must be at least \
                 {BATCH_RETENTION_FACTOR} flush intervals ({} s, CHATSTATE_COUNTER_FLUSH_SECONDS), \
                 or a retried flush could be counted twice",
                self.batch_retention.as_secs_f64(),
                flush_interval.as_secs_f64()
            )));
        }
        Ok(())
    }

    /// Checks the settings for values no store can work with (a zero window or TTL).
    pub fn validate(&self) -> Result<()> {
        let checks = [
            (self.session_ttl.is_zero(), "session TTL must be positive"),
            (self.window_size == 0, "window size must be at least 1"),
            (self.cache_ttl.is_zero(), "cache TTL must be positive"),
            (self.focus_ttl.is_zero(), "focus TTL must be positive"),
            (
                self.max_value_bytes == 0,
                "max value bytes must be positive",
            ),
            (self.reply_ttl.is_zero(), "reply TTL must be positive"),
            (self.max_run_bytes == 0, "max run bytes must be positive"),
        ];
        match checks.iter().find(|(bad, _)| *bad) {
            Some((_, msg)) => Err(Error::config(*msg)),
            None => Ok(()),
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn is_secret_param(name: &str) -> bool {
    name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password")
}

/// A Redis URL whose password never appears in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(url::Url);

impl RedisUrl {
    /// Parses and checks a Redis URL: scheme `redis`, `rediss`, `redis+unix` or
    /// `unix`, and a host for the network schemes. The error never repeats the URL.
    pub fn parse(s: &str) -> Result<Self> {
        let url = url::Url::parse(s.trim())
            .map_err(|e| Error::config(format!("not a valid URL ({e})")))?;
        // redis-rs reads `rediss://…/#insecure` as "do not verify the server's
        // certificate": only REDIS_TLS_INSECURE (which warns) may say that.
        if url.fragment().is_some() {
            return Err(Error::config(
                "a URL fragment (#…) is not accepted: to skip TLS verification set \
                 REDIS_TLS_INSECURE=1",
            ));
        }
        match url.scheme() {
            "redis" | "rediss" => {
                if url.host_str().is_none_or(str::is_empty) {
                    return Err(Error::config("a redis:// URL needs a host"));
                }
            }
            "redis+unix" | "unix" => {}
            other => {
                return Err(Error::config(format!(
                    "scheme {other:?} is not one of redis, rediss, redis+unix, unix"
                )));
            }
        }
        Ok(RedisUrl(url))
    }

    /// The same URL (scheme, credentials, database) for another server: a Cluster
    /// node or a master Sentinel named.
    pub fn with_host_port(&self, host: &str, port: u16) -> Result<RedisUrl> {
        let mut u = self.0.clone();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        u.set_host(Some(&host))
            .map_err(|e| Error::config(format!("{host:?} is not a host name ({e})")))?;
        u.set_port(Some(port))
            .map_err(|()| Error::config("REDIS_URL cannot take a port"))?;
        Ok(RedisUrl(u))
    }

    /// Whether the scheme is `rediss` (TLS).
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }

    /// Whether the URL names a Unix socket (`redis+unix`, `unix`).
    pub fn is_unix(&self) -> bool {
        matches!(self.0.scheme(), "redis+unix" | "unix")
    }

    /// The database number in the path (`/2`), `0` when none.
    pub fn db(&self) -> Option<i64> {
        match self.0.path().trim_matches('/') {
            "" => Some(0),
            db => db.parse().ok(),
        }
    }

    /// The user name, when the URL has one.
    pub fn username(&self) -> Option<String> {
        let user = self.0.username();
        (!user.is_empty()).then(|| percent_decode(user))
    }

    /// The password, when the URL has one (`user:pass@`). Never log it.
    pub fn password(&self) -> Option<Secret> {
        self.0.password().map(|p| Secret::new(percent_decode(p)))
    }

    /// The URL with its password, to hand to a Redis client. Never log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the URL carries a password (`user:pass@`, or a `pass` query).
    pub fn has_password(&self) -> bool {
        self.0.password().is_some() || self.0.query_pairs().any(|(k, _)| is_secret_param(&k))
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = u.set_password(Some("***"));
        }
        // redis-rs reads the password of redis+unix:// and unix:// URLs from the
        // query (`?pass=`): redact it there too.
        if u.query().is_some() {
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let value = if is_secret_param(&k) {
                        "***".to_string()
                    } else {
                        v.into_owned()
                    };
                    (k.into_owned(), value)
                })
                .collect();
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
        u.to_string()
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

/// Redis connection settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where the server is (password redacted in `Debug`).
    pub url: RedisUrl,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of every command.
    pub command_timeout: Duration,
    /// Opening fails when Redis cannot be reached (`CHATSTATE_REDIS_FAIL_FAST`);
    /// otherwise the store opens and connects in the background.
    pub fail_fast: bool,
    /// What to open instead when Redis cannot be reached at start
    /// (`CHATSTATE_REDIS_FALLBACK`).
    pub fallback: RedisFallback,
    /// The circuit breaker in front of every Redis call.
    pub breaker: BreakerConfig,
    /// Certificates for `rediss://` URLs.
    pub tls: TlsConfig,
    /// One server, a master found through Sentinel, or a Cluster.
    pub topology: RedisTopology,
}

/// TLS settings for `rediss://` URLs (`REDIS_CA_CERT`, `REDIS_CLIENT_CERT`,
/// `REDIS_CLIENT_KEY`, `REDIS_TLS_INSECURE`). The server's certificate is verified
/// against the system's roots unless a CA file is given; `insecure` skips the
/// verification (and is logged as a warning at every start).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS); set with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; set with `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Do not verify the server's certificate.
    pub insecure: bool,
}

impl TlsConfig {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.ca_cert.is_some()
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.insecure
    }
}

/// A `host:port` address of a Sentinel or a Cluster seed node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (an IPv6 address without its brackets).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` (`[::1]:26379` for IPv6).
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || Error::config(format!("{s:?} is not host:port"));
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
            return Err(bad());
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?;
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// A comma-separated list of at least one `host:port`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let list = s
            .split(',')
            .map(HostPort::parse)
            .collect::<Result<Vec<_>>>()?;
        if list.is_empty() {
            return Err(Error::config("expected at least one host:port"));
        }
        Ok(list)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A password that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, to hand to a client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where the Redis servers are.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RedisTopology {
    /// The one server `REDIS_URL` names.
    #[default]
    Standalone,
    /// The master the Sentinels monitor under `master` (`REDIS_SENTINELS`,
    /// `REDIS_SENTINEL_MASTER`); `REDIS_URL` gives its credentials, database and
    /// TLS scheme (its host is not used).
    Sentinel {
        /// The Sentinels asked for the master's address.
        sentinels: Vec<HostPort>,
        /// The master's name.
        master: String,
        /// The Sentinels' own password (`REDIS_SENTINEL_PASSWORD`).
        password: Option<Secret>,
    },
    /// A Redis Cluster found through these seed nodes (`REDIS_CLUSTER_NODES`);
    /// `REDIS_URL` gives the credentials and the TLS scheme (its host is not used).
    Cluster {
        /// Seed nodes: any reachable one tells the client the whole cluster.
        nodes: Vec<HostPort>,
    },
}

impl RedisTopology {
    /// `standalone`, `sentinel` or `cluster`.
    pub fn name(&self) -> &'static str {
        match self {
            RedisTopology::Standalone => "standalone",
            RedisTopology::Sentinel { .. } => "sentinel",
            RedisTopology::Cluster { .. } => "cluster",
        }
    }
}

/// What the facade opens when Redis cannot be reached at start
/// (`CHATSTATE_REDIS_FALLBACK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RedisFallback {
    /// Open the Redis store anyway: calls fail fast (`Unavailable`) until it connects
    /// in the background.
    #[default]
    None,
    /// Open the file store (in `CHATSTATE_FILE_DIR`) for the life of the process.
    File,
    /// Open the in-memory store for the life of the process.
    Memory,
}

impl FromStr for RedisFallback {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(RedisFallback::None),
            "file" => Ok(RedisFallback::File),
            "memory" => Ok(RedisFallback::Memory),
            other => Err(Error::config(format!(
                "unknown fallback {other:?}: expected none, file or memory"
            ))),
        }
    }
}

/// The circuit breaker's settings: after `failures` consecutive temporary failures
/// (connection refused or dropped, timeouts, `LOADING`) within `window`, calls fail at
/// once with `Unavailable` for `open_for`; then one probe is let through, and its
/// success closes the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive temporary failures that open the breaker.
    pub failures: u32,
    /// The window those failures must fall within.
    pub window: Duration,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
        }
    }
}

/// The local cache tier's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCacheConfig {
    /// Most entries kept.
    pub capacity: u64,
    /// How long an entry is served locally.
    pub ttl: Duration,
    /// How long past `ttl` (or its remote expiry) an entry may still be served while
    /// the remote fails with a temporary error (stale-if-error); zero never.
    pub max_stale: Duration,
}

/// The local session tier's settings (`Stores::with_local_sessions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSessionConfig {
    /// Most sessions held, each with its window.
    pub capacity: u64,
    /// How long a copy is served after it was read or written.
    pub max_age: Duration,
}

/// Everything configurable, as read from the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Which backend to use.
    pub backend: BackendKind,
    /// Redis settings (read and validated even when another backend is chosen, so a
    /// switch by `USE_REDIS` never meets a bad URL at run time).
    pub redis: RedisConfig,
    /// The prefix of every key.
    pub key_prefix: String,
    /// The file store's folder.
    pub file_dir: PathBuf,
    /// TTLs, window and limits.
    pub store: StoreSettings,
    /// The codec for typed values.
    pub codec: Codec,
    /// Batched counters' flush interval.
    pub counter_flush_interval: Duration,
    /// The local cache tier.
    pub local_cache: LocalCacheConfig,
    /// The local session tier.
    pub local_sessions: LocalSessionConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::File,
            redis: RedisConfig {
                url: RedisUrl(
                    url::Url::parse("redis://127.0.0.1:6379").expect("a valid constant URL"),
                ),
                pool_size: 16,
                connect_timeout: Duration::from_millis(5000),
                command_timeout: Duration::from_millis(2000),
                fail_fast: false,
                fallback: RedisFallback::None,
                breaker: BreakerConfig::default(),
                tls: TlsConfig::default(),
                topology: RedisTopology::Standalone,
            },
            key_prefix: "chatstate".into(),
            file_dir: PathBuf::from("./chatstate-data"),
            store: StoreSettings::default(),
            codec: Codec::Json,
            counter_flush_interval: Duration::from_secs(60),
            local_cache: LocalCacheConfig {
                capacity: 10_000,
                ttl: Duration::from_secs(60),
                max_stale: Duration::from_secs(300),
            },
            local_sessions: LocalSessionConfig {
                capacity: 10_000,
                max_age: Duration::from_secs(60),
            },
        }
    }
}

/// Reads variables for [`Config::from_lookup`].
struct Env<F> {
    lookup: F,
}

impl<F: Fn(&str) -> Option<String>> Env<F> {
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    fn parsed<T>(
        &self,
        name: &'static str,
        accepts: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) => parse(raw.trim())
                .map(Some)
                .ok_or_else(|| Error::config(format!("{name} is malformed: expected {accepts}"))),
        }
    }

    fn int(&self, name: &'static str, min: u64, max: u64) -> Result<Option<u64>> {
        self.parsed(name, &format!("a whole number from {min} to {max}"), |s| {
            s.parse::<u64>().ok().filter(|n| (min..=max).contains(n))
        })
    }

    fn seconds(&self, name: &'static str) -> Result<Option<Duration>> {
        self.duration(
            name,
            Duration::from_secs(1),
            Duration::from_secs(1),
            MAX_TTL,
        )
    }

    fn millis(&self, name: &'static str) -> Result<Option<Duration>> {
        self.duration(
            name,
            Duration::from_millis(1),
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )
    }

    /// A duration: a bare number counts in `unit` (the unit the variable's name
    /// says), or a number with its unit — `300`, `5m`, `72h`, `1h 30m`, `250ms`.
    fn duration(
        &self,
        name: &'static str,
        unit: Duration,
        min: Duration,
        max: Duration,
    ) -> Result<Option<Duration>> {
        let accepts = format!(
            "a duration from {} to {}: a number of {} or a number with its unit \
             (300, 5m, 72h, 1h 30m, 250ms)",
            humantime::format_duration(min),
            humantime::format_duration(max),
            if unit == Duration::from_secs(1) {
                "seconds"
            } else {
                "milliseconds"
            },
        );
        self.parsed(name, &accepts, |s| {
            parse_duration(s, unit).filter(|d| (min..=max).contains(d))
        })
    }

    fn flag(&self, name: &'static str) -> Result<Option<bool>> {
        self.parsed(name, "1, 0, true, false, yes, no, on or off", |s| {
            match s.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            }
        })
    }
}

/// `REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_PASSWORD` and
/// `REDIS_CLUSTER_NODES` as a topology.
fn topology<F: Fn(&str) -> Option<String>>(env: &Env<F>) -> Result<RedisTopology> {
    let sentinels = env.get("REDIS_SENTINELS");
    let master = env.get("REDIS_SENTINEL_MASTER");
    let password = env.get("REDIS_SENTINEL_PASSWORD");
    let cluster = env.get("REDIS_CLUSTER_NODES");
    match (sentinels, master, cluster) {
        (Some(_), _, Some(_)) => Err(Error::config(
            "REDIS_SENTINELS and REDIS_CLUSTER_NODES are both set: Redis is reached through \
             Sentinel or as a Cluster; set one of them",
        )),
        (Some(list), Some(master), None) => Ok(RedisTopology::Sentinel {
            sentinels: HostPort::parse_list(&list).map_err(|e| named("REDIS_SENTINELS", e))?,
            master: master.trim().to_string(),
            password: password.map(Secret::new),
        }),
        (Some(_), None, None) => Err(Error::config(
            "REDIS_SENTINELS is set without REDIS_SENTINEL_MASTER (the name the Sentinels \
             monitor the master under)",
        )),
        (None, Some(_), _) => Err(Error::config(
            "REDIS_SENTINEL_MASTER is set without REDIS_SENTINELS (the Sentinels' host:port list)",
        )),
        (None, None, cluster) => {
            if password.is_some() {
                return Err(Error::config(
                    "REDIS_SENTINEL_PASSWORD is set without REDIS_SENTINELS",
                ));
            }
            match cluster {
                Some(list) => Ok(RedisTopology::Cluster {
                    nodes: HostPort::parse_list(&list)
                        .map_err(|e| named("REDIS_CLUSTER_NODES", e))?,
                }),
                None => Ok(RedisTopology::Standalone),
            }
        }
    }
}

/// The checks across Redis variables: TLS settings need a `rediss://` URL, a
/// client certificate its key, Sentinel and Cluster a network URL, a Cluster
/// database 0.
fn check_redis(redis: &RedisConfig) -> Result<()> {
    let tls = &redis.tls;
    if tls.is_set() && !redis.url.is_tls() {
        let var = if tls.ca_cert.is_some() {
            "REDIS_CA_CERT"
        } else if tls.client_cert.is_some() {
            "REDIS_CLIENT_CERT"
        } else if tls.client_key.is_some() {
            "REDIS_CLIENT_KEY"
        } else {
            "REDIS_TLS_INSECURE"
        };
        return Err(Error::config(format!(
            "{var} is set but REDIS_URL is not a rediss:// URL: TLS settings apply only to \
             rediss://"
        )));
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(_), None) => {
            return Err(Error::config(
                "REDIS_CLIENT_CERT is set without REDIS_CLIENT_KEY (mutual TLS needs both)",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::config(
                "REDIS_CLIENT_KEY is set without REDIS_CLIENT_CERT (mutual TLS needs both)",
            ));
        }
        _ => {}
    }
    if !matches!(redis.topology, RedisTopology::Standalone) && redis.url.is_unix() {
        return Err(Error::config(format!(
            "REDIS_URL is a Unix socket, which {} cannot use: give redis:// or rediss:// \
             (only its credentials and scheme are used)",
            redis.topology.name()
        )));
    }
    if !redis.url.is_unix() && redis.url.db().is_none() {
        return Err(Error::config(
            "REDIS_URL is malformed: the path must be a database number",
        ));
    }
    if matches!(redis.topology, RedisTopology::Cluster { .. }) && redis.url.db() != Some(0) {
        return Err(Error::config(
            "REDIS_URL names a database other than 0, which a Redis Cluster does not have",
        ));
    }
    Ok(())
}

/// `raw` as a duration: a bare whole number counts in `unit`; anything else is read
/// by `humantime` (`5m`, `72h`, `1h 30m`, `250ms`, `2days`). `None` when neither.
pub fn parse_duration(raw: &str, unit: Duration) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<u32>() {
        return unit.checked_mul(n);
    }
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        return None; // a bare number too large for any variable
    }
    humantime::parse_duration(raw).ok()
}

fn named(name: &'static str, e: Error) -> Error {
    Error::config(format!("{name} is malformed: {}", e.message()))
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// A variable whose value is not valid UTF-8 is an error naming it.
    pub fn from_env() -> Result<Self> {
        for name in env_vars().iter().map(|v| v.name) {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(Error::config(format!("{name} is not valid UTF-8")));
            }
        }
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from `lookup` (a variable's value, or `None`), for
    /// tests and for apps that keep settings elsewhere.
    ///
    /// ```
    /// use chatstate_core::config::{BackendKind, Config};
    /// let cfg = Config::from_lookup(|name| match name {
    ///     "USE_REDIS" => Some("1".into()),
    ///     "REDIS_URL" => Some("redis://bot:s3cret@127.0.0.1:6390/0".into()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// assert_eq!(cfg.backend, BackendKind::Redis);
    /// assert!(!format!("{cfg:?}").contains("s3cret"));
    ///
    /// let err = Config::from_lookup(|name| (name == "CHATSTATE_WINDOW_SIZE").then(|| "lots".into()))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("CHATSTATE_WINDOW_SIZE"));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let env = Env { lookup };
        let mut cfg = Config::default();

        let use_redis = env.flag("USE_REDIS")?;
        let backend = match env.get("CHATSTATE_BACKEND") {
            Some(raw) => Some(
                raw.parse::<BackendKind>()
                    .map_err(|e| named("CHATSTATE_BACKEND", e))?,
            ),
            None => None,
        };
        cfg.backend = match (backend, use_redis) {
            (Some(b), Some(true)) if b != BackendKind::Redis => {
                return Err(Error::config(format!(
                    "CHATSTATE_BACKEND={b:?} contradicts USE_REDIS=1; set one of them"
                )));
            }
            (Some(BackendKind::Redis), Some(false)) => {
                return Err(Error::config(
                    "CHATSTATE_BACKEND=redis contradicts USE_REDIS=0; set one of them",
                ));
            }
            (Some(b), _) => b,
            (None, Some(true)) => BackendKind::Redis,
            (None, _) => BackendKind::File,
        };

        if let Some(raw) = env.get("REDIS_URL") {
            cfg.redis.url = RedisUrl::parse(&raw).map_err(|e| named("REDIS_URL", e))?;
        }
        if let Some(n) = env.int("REDIS_POOL_SIZE", 1, 1024)? {
            cfg.redis.pool_size = n as usize;
        }
        if let Some(d) = env.millis("REDIS_CONNECT_TIMEOUT_MS")? {
            cfg.redis.connect_timeout = d;
        }
        if let Some(d) = env.millis("REDIS_COMMAND_TIMEOUT_MS")? {
            cfg.redis.command_timeout = d;
        }
        if let Some(d) = env.seconds("REDIS_TTL_SECONDS")? {
            cfg.store.session_ttl = d;
            cfg.store.focus_ttl = d;
        }
        if let Some(p) = env.get("CHATSTATE_KEY_PREFIX") {
            check_prefix(&p).map_err(|e| named("CHATSTATE_KEY_PREFIX", e))?;
            cfg.key_prefix = p;
        }
        if let Some(dir) = env.get("CHATSTATE_FILE_DIR") {
            cfg.file_dir = PathBuf::from(dir);
        }
        if let Some(n) = env.int("CHATSTATE_WINDOW_SIZE", 1, 10_000)? {
            cfg.store.window_size = n as usize;
        }
        if let Some(n) = env.int("CHATSTATE_SUMMARY_MAX_CHARS", 1, 1_000_000)? {
            cfg.store.summary_max_chars = n as usize;
        }
        if let Some(d) = env.seconds("CHATSTATE_CACHE_TTL_SECONDS")? {
            cfg.store.cache_ttl = d;
        }
        if let Some(d) = env.seconds("CHATSTATE_FOCUS_TTL_SECONDS")? {
            cfg.store.focus_ttl = d;
        }
        if let Some(n) = env.int("CHATSTATE_MAX_VALUE_BYTES", 1, 512 * 1024 * 1024)? {
            cfg.store.max_value_bytes = n as usize;
        }
        if let Some(d) = env.seconds("CHATSTATE_STREAM_TTL_SECONDS")? {
            cfg.store.reply_ttl = d;
        }
        if let Some(n) = env.int("CHATSTATE_STREAM_MAX_RUN_BYTES", 1, 1024 * 1024 * 1024)? {
            cfg.store.max_run_bytes = n as usize;
        }
        if let Some(raw) = env.get("CHATSTATE_CODEC") {
            cfg.codec = raw
                .parse::<Codec>()
                .map_err(|e| named("CHATSTATE_CODEC", e))?;
        }
        if let Some(d) = env.seconds("CHATSTATE_COUNTER_FLUSH_SECONDS")? {
            cfg.counter_flush_interval = d;
        }
        if let Some(d) = env.seconds("CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS")? {
            cfg.store.batch_retention = d;
        }
        if let Some(n) = env.int("CHATSTATE_LOCAL_CACHE_CAPACITY", 1, 1 << 40)? {
            cfg.local_cache.capacity = n;
        }
        if let Some(d) = env.seconds("CHATSTATE_LOCAL_CACHE_TTL_SECONDS")? {
            cfg.local_cache.ttl = d;
        }
        if let Some(d) = env.duration(
            "CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS",
            Duration::from_secs(1),
            Duration::ZERO,
            MAX_TTL,
        )? {
            cfg.local_cache.max_stale = d;
        }
        if let Some(n) = env.int("CHATSTATE_LOCAL_SESSION_CAPACITY", 1, 1 << 40)? {
            cfg.local_sessions.capacity = n;
        }
        if let Some(d) = env.seconds("CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS")? {
            cfg.local_sessions.max_age = d;
        }
        if let Some(on) = env.flag("CHATSTATE_REDIS_FAIL_FAST")? {
            cfg.redis.fail_fast = on;
        }
        if let Some(raw) = env.get("CHATSTATE_REDIS_FALLBACK") {
            cfg.redis.fallback = raw
                .parse::<RedisFallback>()
                .map_err(|e| named("CHATSTATE_REDIS_FALLBACK", e))?;
        }
        if cfg.redis.fail_fast && cfg.redis.fallback != RedisFallback::None {
            return Err(Error::config(
                "CHATSTATE_REDIS_FAIL_FAST=1 contradicts CHATSTATE_REDIS_FALLBACK: \
                 fail when Redis is down, or open the fallback; set one of them",
            ));
        }
        if let Some(n) = env.int("CHATSTATE_REDIS_BREAKER_FAILURES", 1, 1000)? {
            cfg.redis.breaker.failures = n as u32;
        }
        if let Some(d) = env.millis("CHATSTATE_REDIS_BREAKER_WINDOW_MS")? {
            cfg.redis.breaker.window = d;
        }
        if let Some(d) = env.millis("CHATSTATE_REDIS_BREAKER_OPEN_MS")? {
            cfg.redis.breaker.open_for = d;
        }
        if let Some(raw) = env.get("CHATSTATE_SESSION_FALLBACK") {
            match raw.trim().to_ascii_lowercase().as_str() {
                "none" => {}
                "file" => {
                    return Err(Error::config(
                        "CHATSTATE_SESSION_FALLBACK=file is not supported: moving sessions to \
                         a local file store during an outage is unsafe with several instances \
                         (see the chatstate facade's docs, \"Redis outages\"); use \
                         CHATSTATE_REDIS_FALLBACK for a fallback chosen at start",
                    ));
                }
                other => {
                    return Err(Error::config(format!(
                        "CHATSTATE_SESSION_FALLBACK is malformed: unknown value {other:?}, expected none"
                    )));
                }
            }
        }
        cfg.redis.tls = TlsConfig {
            ca_cert: env.get("REDIS_CA_CERT").map(PathBuf::from),
            client_cert: env.get("REDIS_CLIENT_CERT").map(PathBuf::from),
            client_key: env.get("REDIS_CLIENT_KEY").map(PathBuf::from),
            insecure: env.flag("REDIS_TLS_INSECURE")?.unwrap_or(false),
        };
        cfg.redis.topology = topology(&env)?;
        check_redis(&cfg.redis)?;
        cfg.store.validate()?;
        cfg.store.check_flush_interval(cfg.counter_flush_interval)?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::collections::HashMap;

    #[test]
    fn durations_take_a_bare_number_in_the_variables_unit_or_a_unit() {
        for (raw, secs) in [
            ("300", 300),
            ("5m", 300),
            ("72h", 259_200),
            ("1h 30m", 5400),
        ] {
            let c = cfg(&[("REDIS_TTL_SECONDS", raw)]).unwrap();
            assert_eq!(c.store.session_ttl, Duration::from_secs(secs), "{raw}");
        }
        let c = cfg(&[("REDIS_COMMAND_TIMEOUT_MS", "250")]).unwrap();
        assert_eq!(c.redis.command_timeout, Duration::from_millis(250));
        let c = cfg(&[("REDIS_COMMAND_TIMEOUT_MS", "2s")]).unwrap();
        assert_eq!(c.redis.command_timeout, Duration::from_secs(2));
        let c = cfg(&[("CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS", "0")]).unwrap();
        assert_eq!(c.local_cache.max_stale, Duration::ZERO);
        for (name, raw) in [
            ("REDIS_TTL_SECONDS", "5 parsecs"),
            ("REDIS_TTL_SECONDS", "0"),
            ("REDIS_TTL_SECONDS", "-5m"),
            ("REDIS_TTL_SECONDS", "500ms"),
            ("REDIS_TTL_SECONDS", "11years"),
            ("REDIS_TTL_SECONDS", "99999999999999999999"),
            ("REDIS_COMMAND_TIMEOUT_MS", "2h"),
            ("CHATSTATE_COUNTER_FLUSH_SECONDS", "m5"),
        ] {
            let err = cfg(&[(name, raw)]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config, "{name}={raw}");
            assert!(err.to_string().contains(name), "{err}");
            assert!(
                err.to_string().contains("72h"),
                "says what it accepts: {err}"
            );
        }
    }

    /// The module docs' table and [`env_vars`] say the same, row for row.
    #[test]
    fn env_vars_are_the_module_docs_table() {
        let source = include_str!("config.rs");
        let rows: Vec<(String, String, String)> = source
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `"))
            .map(|l| {
                let cells: Vec<&str> = l.trim_end_matches(" |").splitn(3, " | ").collect();
                (
                    cells[0].trim_end_matches('`').to_string(),
                    cells[1].to_string(),
                    cells[2].to_string(),
                )
            })
            .collect();
        let listed: Vec<(String, String, String)> = env_vars()
            .iter()
            .map(|v| (v.name.into(), v.meaning.into(), v.default.into()))
            .collect();
        assert_eq!(rows, listed);
        assert!(listed.len() > 30);
    }

    /// Every default that is a value (the first `code` span of the default column)
    /// is what the configuration holds when the variable is unset: setting the
    /// variable to its listed default changes nothing.
    #[test]
    fn every_listed_default_is_the_default() {
        let unset = Config::default();
        let mut checked = 0;
        for var in env_vars() {
            let Some(value) = var.default.split('`').nth(1) else {
                continue; // "unset", "off", "the session TTL", ...
            };
            let set =
                cfg(&[(var.name, value)]).unwrap_or_else(|e| panic!("{} = {value}: {e}", var.name));
            assert_eq!(set, unset, "{} = {value} is not the default", var.name);
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} defaults checked");
    }

    fn cfg(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.backend, BackendKind::File);
        assert_eq!(c.store.session_ttl, Duration::from_secs(259_200));
        assert_eq!(c.store.window_size, 20);
        assert_eq!(c.store.summary_max_chars, 400);
        assert_eq!(c.counter_flush_interval, Duration::from_secs(60));
        assert_eq!(c.codec, Codec::Json);
        assert_eq!(c.key_prefix, "chatstate");
        assert_eq!(c, Config::default());
    }

    #[test]
    fn tls_settings_need_rediss_and_a_key_with_the_certificate() {
        let c = cfg(&[
            ("REDIS_URL", "rediss://u:pw@h:6380"),
            ("REDIS_CA_CERT", "/etc/ca.pem"),
            ("REDIS_CLIENT_CERT", "/etc/c.pem"),
            ("REDIS_CLIENT_KEY", "/etc/k.pem"),
        ])
        .unwrap();
        assert_eq!(c.redis.tls.ca_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!c.redis.tls.insecure);
        for (var, value) in [
            ("REDIS_CA_CERT", "/etc/ca.pem"),
            ("REDIS_CLIENT_CERT", "/etc/c.pem"),
            ("REDIS_CLIENT_KEY", "/etc/k.pem"),
            ("REDIS_TLS_INSECURE", "1"),
        ] {
            let err = cfg(&[("REDIS_URL", "redis://h:6379"), (var, value)]).unwrap_err();
            assert!(err.message().contains(var), "{err}");
            assert!(err.message().contains("rediss://"), "{err}");
        }
        let err = cfg(&[
            ("REDIS_URL", "rediss://h"),
            ("REDIS_CLIENT_CERT", "/etc/c.pem"),
        ])
        .unwrap_err();
        assert!(err.message().contains("REDIS_CLIENT_KEY"), "{err}");
        let err = cfg(&[("REDIS_URL", "rediss://h:6380/#insecure")]).unwrap_err();
        assert!(err.message().contains("REDIS_TLS_INSECURE"), "{err}");
        assert!(RedisUrl::parse("rediss://h:6380/0#insecure").is_err());
        let err = cfg(&[("REDIS_URL", "rediss://h"), ("REDIS_TLS_INSECURE", "sure")]).unwrap_err();
        assert!(err.message().contains("REDIS_TLS_INSECURE"), "{err}");
        let c = cfg(&[("REDIS_URL", "rediss://h"), ("REDIS_TLS_INSECURE", "1")]).unwrap();
        assert!(c.redis.tls.insecure);
    }

    #[test]
    fn sentinel_and_cluster_topologies() {
        let c = cfg(&[
            ("REDIS_URL", "redis://:pw@ignored:1/3"),
            ("REDIS_SENTINELS", "10.0.0.1:26379, s2:26380,[::1]:26381"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ])
        .unwrap();
        let RedisTopology::Sentinel {
            sentinels,
            master,
            password,
        } = &c.redis.topology
        else {
            panic!("not sentinel: {:?}", c.redis.topology);
        };
        assert_eq!(sentinels.len(), 3);
        assert_eq!(sentinels[2].host, "::1");
        assert_eq!(sentinels[2].to_string(), "[::1]:26381");
        assert_eq!(master, "mymaster");
        assert_eq!(password.as_ref().unwrap().expose(), "sentinel-secret");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("sentinel-secret") && !shown.contains(":pw@"),
            "{shown}"
        );
        assert_eq!(c.redis.url.db(), Some(3));
        assert_eq!(c.redis.url.password().unwrap().expose(), "pw");

        let c = cfg(&[("REDIS_CLUSTER_NODES", "n1:7000,n2:7001")]).unwrap();
        assert_eq!(
            c.redis.topology,
            RedisTopology::Cluster {
                nodes: vec![
                    HostPort::parse("n1:7000").unwrap(),
                    HostPort::parse("n2:7001").unwrap()
                ]
            }
        );
        for (vars, names) in [
            (
                &[("REDIS_SENTINELS", "a:1"), ("REDIS_CLUSTER_NODES", "b:2")][..],
                "REDIS_CLUSTER_NODES",
            ),
            (&[("REDIS_SENTINELS", "a:1")][..], "REDIS_SENTINEL_MASTER"),
            (&[("REDIS_SENTINEL_MASTER", "m")][..], "REDIS_SENTINELS"),
            (&[("REDIS_SENTINEL_PASSWORD", "p")][..], "REDIS_SENTINELS"),
            (
                &[("REDIS_SENTINELS", "a"), ("REDIS_SENTINEL_MASTER", "m")][..],
                "REDIS_SENTINELS",
            ),
            (&[("REDIS_CLUSTER_NODES", "a:0")][..], "REDIS_CLUSTER_NODES"),
            (
                &[("REDIS_CLUSTER_NODES", "a:1,")][..],
                "REDIS_CLUSTER_NODES",
            ),
            (
                &[("REDIS_CLUSTER_NODES", "a:1"), ("REDIS_URL", "redis://h/2")][..],
                "database",
            ),
            (
                &[
                    ("REDIS_CLUSTER_NODES", "a:1"),
                    ("REDIS_URL", "redis+unix:///tmp/r.sock"),
                ][..],
                "Unix",
            ),
        ] {
            let err = cfg(vars).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().contains(names), "{vars:?}: {err}");
        }
    }

    #[test]
    fn use_redis_flag_values() {
        for on in ["1", "true", "YES", "on"] {
            assert_eq!(
                cfg(&[("USE_REDIS", on)]).unwrap().backend,
                BackendKind::Redis
            );
        }
        for off in ["0", "false", "No", "off", ""] {
            assert_eq!(
                cfg(&[("USE_REDIS", off)]).unwrap().backend,
                BackendKind::File
            );
        }
        let err = cfg(&[("USE_REDIS", "maybe")]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.message().contains("USE_REDIS"), "{err}");
        assert!(err.message().contains("true"), "{err}");
    }

    #[test]
    fn backend_override_must_agree_with_use_redis() {
        assert_eq!(
            cfg(&[("CHATSTATE_BACKEND", "memory")]).unwrap().backend,
            BackendKind::Memory
        );
        assert!(cfg(&[("CHATSTATE_BACKEND", "file"), ("USE_REDIS", "1")]).is_err());
        assert!(cfg(&[("CHATSTATE_BACKEND", "redis"), ("USE_REDIS", "0")]).is_err());
        let err = cfg(&[("CHATSTATE_BACKEND", "postgres")]).unwrap_err();
        assert!(err.message().contains("CHATSTATE_BACKEND"), "{err}");
    }

    #[test]
    fn every_numeric_variable_names_itself_when_malformed() {
        for name in [
            "REDIS_TTL_SECONDS",
            "REDIS_POOL_SIZE",
            "REDIS_CONNECT_TIMEOUT_MS",
            "REDIS_COMMAND_TIMEOUT_MS",
            "CHATSTATE_WINDOW_SIZE",
            "CHATSTATE_SUMMARY_MAX_CHARS",
            "CHATSTATE_CACHE_TTL_SECONDS",
            "CHATSTATE_FOCUS_TTL_SECONDS",
            "CHATSTATE_MAX_VALUE_BYTES",
            "CHATSTATE_STREAM_TTL_SECONDS",
            "CHATSTATE_STREAM_MAX_RUN_BYTES",
            "CHATSTATE_COUNTER_FLUSH_SECONDS",
            "CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS",
            "CHATSTATE_LOCAL_CACHE_CAPACITY",
            "CHATSTATE_LOCAL_CACHE_TTL_SECONDS",
            "CHATSTATE_LOCAL_SESSION_CAPACITY",
            "CHATSTATE_LOCAL_SESSION_MAX_AGE_SECONDS",
            "CHATSTATE_REDIS_BREAKER_FAILURES",
            "CHATSTATE_REDIS_BREAKER_WINDOW_MS",
            "CHATSTATE_REDIS_BREAKER_OPEN_MS",
        ] {
            for bad in ["abc", "-1", "0", "1.5", "99999999999999999999"] {
                let err = cfg(&[(name, bad)]).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Config);
                assert!(err.message().starts_with(name), "{name}={bad}: {err}");
            }
        }
    }

    #[test]
    fn outage_settings_are_read_and_checked() {
        let c = cfg(&[]).unwrap();
        assert!(!c.redis.fail_fast);
        assert_eq!(c.redis.fallback, RedisFallback::None);
        assert_eq!(c.redis.breaker, BreakerConfig::default());
        assert_eq!(c.local_cache.max_stale, Duration::from_secs(300));

        let c = cfg(&[
            ("CHATSTATE_REDIS_FALLBACK", "File"),
            ("CHATSTATE_REDIS_BREAKER_FAILURES", "3"),
            ("CHATSTATE_REDIS_BREAKER_WINDOW_MS", "2500"),
            ("CHATSTATE_REDIS_BREAKER_OPEN_MS", "200"),
            ("CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS", "0"),
        ])
        .unwrap();
        assert_eq!(c.redis.fallback, RedisFallback::File);
        assert_eq!(
            c.redis.breaker,
            BreakerConfig {
                failures: 3,
                window: Duration::from_millis(2500),
                open_for: Duration::from_millis(200),
            }
        );
        assert_eq!(c.local_cache.max_stale, Duration::ZERO);
        assert_eq!(
            cfg(&[("CHATSTATE_REDIS_FALLBACK", "memory")])
                .unwrap()
                .redis
                .fallback,
            RedisFallback::Memory
        );
        assert!(
            cfg(&[("CHATSTATE_REDIS_FAIL_FAST", "1")])
                .unwrap()
                .redis
                .fail_fast
        );

        for (vars, names) in [
            (
                vec![("CHATSTATE_REDIS_FALLBACK", "disk")],
                "CHATSTATE_REDIS_FALLBACK",
            ),
            (
                vec![("CHATSTATE_REDIS_FAIL_FAST", "sometimes")],
                "CHATSTATE_REDIS_FAIL_FAST",
            ),
            (
                vec![
                    ("CHATSTATE_REDIS_FAIL_FAST", "1"),
                    ("CHATSTATE_REDIS_FALLBACK", "file"),
                ],
                "CHATSTATE_REDIS_FAIL_FAST",
            ),
            (
                vec![("CHATSTATE_SESSION_FALLBACK", "file")],
                "CHATSTATE_SESSION_FALLBACK",
            ),
            (
                vec![("CHATSTATE_SESSION_FALLBACK", "redis")],
                "CHATSTATE_SESSION_FALLBACK",
            ),
            (
                vec![("CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS", "-1")],
                "CHATSTATE_LOCAL_CACHE_MAX_STALE_SECONDS",
            ),
        ] {
            let err = cfg(&vars).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().starts_with(names), "{vars:?}: {err}");
        }
        assert!(cfg(&[("CHATSTATE_SESSION_FALLBACK", "none")]).is_ok());
    }

    #[test]
    fn ttl_and_window_are_read() {
        let c = cfg(&[
            ("REDIS_TTL_SECONDS", "60"),
            ("CHATSTATE_WINDOW_SIZE", " 5 "),
            ("CHATSTATE_CODEC", "json"),
        ])
        .unwrap();
        assert_eq!(c.store.session_ttl, Duration::from_secs(60));
        assert_eq!(c.store.focus_ttl, Duration::from_secs(60));
        assert_eq!(c.store.window_size, 5);
        assert_eq!(c.codec, Codec::Json);
    }

    #[test]
    fn redis_url_is_validated_and_password_redacted() {
        let c = cfg(&[("REDIS_URL", "redis://app:hunter2@cache.internal:6380/2")]).unwrap();
        assert!(c.redis.url.has_password());
        assert!(c.redis.url.expose().contains("hunter2"));
        for shown in [format!("{c:?}"), c.redis.url.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("cache.internal"), "{shown}");
        }
        assert!(cfg(&[("REDIS_URL", "rediss://h:6379")]).is_ok());
        assert!(cfg(&[("REDIS_URL", "redis+unix:///run/redis.sock")]).is_ok());
        for bad in ["http://h", "not a url", "redis://"] {
            let err = cfg(&[("REDIS_URL", bad)]).unwrap_err();
            assert!(err.message().starts_with("REDIS_URL"), "{bad}: {err}");
        }
        let err = cfg(&[("REDIS_URL", "http://u:hunter2@h")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let unix = cfg(&[(
            "REDIS_URL",
            "redis+unix:///run/redis.sock?db=2&pass=hunter2",
        )])
        .unwrap();
        assert!(unix.redis.url.has_password());
        assert!(unix.redis.url.expose().contains("hunter2"));
        let shown = format!("{:?} {}", unix, unix.redis.url);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db=2"), "{shown}");
    }

    #[test]
    fn batch_retention_must_cover_ten_flush_intervals() {
        let err = cfg(&[
            ("CHATSTATE_COUNTER_FLUSH_SECONDS", "600"),
            ("CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS", "3600"),
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.message()
                .contains("CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS"),
            "{err}"
        );
        cfg(&[
            ("CHATSTATE_COUNTER_FLUSH_SECONDS", "360"),
            ("CHATSTATE_COUNTER_BATCH_RETENTION_SECONDS", "3600"),
        ])
        .unwrap();
    }

    #[test]
    fn fence_retention_is_lease_plus_session_ttl() {
        let s = StoreSettings::default();
        assert_eq!(
            s.fence_retention(Duration::from_secs(10)),
            s.session_ttl + Duration::from_secs(10)
        );
    }

    #[test]
    fn prefix_is_validated() {
        assert_eq!(
            cfg(&[("CHATSTATE_KEY_PREFIX", "bot.v2")])
                .unwrap()
                .key_prefix,
            "bot.v2"
        );
        // `:` would let one deployment's prefix clear match another's keys
        // (`app` vs `app:staging`).
        for bad in ["a{b}", "bot:v2", "app:"] {
            let err = cfg(&[("CHATSTATE_KEY_PREFIX", bad)]).unwrap_err();
            assert!(err.message().starts_with("CHATSTATE_KEY_PREFIX"), "{err}");
        }
    }

    #[test]
    fn ttl_or_rejects_zero_and_huge() {
        let d = Duration::from_secs(5);
        assert_eq!(
            StoreSettings::ttl_or(Some(Duration::from_micros(500)), d).unwrap(),
            Duration::from_millis(1),
            "sub-millisecond TTLs round up, never to zero"
        );
        assert_eq!(
            StoreSettings::ttl_or(Some(Duration::from_micros(1500)), d).unwrap(),
            Duration::from_millis(2)
        );
        assert_eq!(StoreSettings::ttl_or(None, d).unwrap(), d);
        assert_eq!(
            StoreSettings::ttl_or(Some(Duration::from_millis(1)), d).unwrap(),
            Duration::from_millis(1)
        );
        for bad in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
            let err = StoreSettings::ttl_or(Some(bad), d).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn stream_settings_are_read_with_defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.store.reply_ttl, Duration::from_secs(3600));
        assert_eq!(c.store.max_run_bytes, 4 * 1024 * 1024);
        let c = cfg(&[
            ("CHATSTATE_STREAM_TTL_SECONDS", "120"),
            ("CHATSTATE_STREAM_MAX_RUN_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(c.store.reply_ttl, Duration::from_secs(120));
        assert_eq!(c.store.max_run_bytes, 65_536);
        assert!(
            env_vars()
                .iter()
                .any(|v| v.name == "CHATSTATE_STREAM_TTL_SECONDS")
        );
        assert!(
            env_vars()
                .iter()
                .any(|v| v.name == "CHATSTATE_STREAM_MAX_RUN_BYTES")
        );
    }

    #[test]
    fn value_limit_error_names_the_field() {
        let s = StoreSettings {
            max_value_bytes: 4,
            ..StoreSettings::default()
        };
        assert!(s.check_value_len("x", 4).is_ok());
        let err = s.check_value_len("cache value", 5).unwrap_err();
        assert!(err.message().contains("cache value is 5 bytes"), "{err}");
    }
}
