//! The eviction policy chatstate needs, and the check run at connect.
//!
//! Some of what chatstate keeps must never be evicted: counters (no TTL), fencing
//! numbers and applied counter batch ids (both with a TTL: their retention). Evicting
//! a fence lets a new lock holder get a number below a stale holder's; evicting a
//! batch id lets a retried flush count twice; evicting a counter loses its count.
//! Because fences and batch ids have TTLs, a `volatile-*` policy may evict them too,
//! so the only safe setting under a `maxmemory` limit is `noeviction` (writes then
//! fail with OOM, a temporary error, instead of losing data). Without a `maxmemory`
//! limit nothing is evicted whatever the policy says.

use chatstate_core::Result;
use redis::Value;

use crate::RedisStore;
use crate::conn::reply;

/// What a server's `maxmemory-policy` may evict of what chatstate keeps.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionRisk {
    /// Nothing: `noeviction`, or no `maxmemory` limit.
    None,
    /// Keys with a TTL (`volatile-*`): fencing numbers and applied batch ids among
    /// them, so fences can go back and a retried flush can count twice.
    KeysWithTtl,
    /// Any key (`allkeys-*`): counters too.
    AllKeys,
    /// A policy this version does not know: assume the worst.
    Unknown,
}

/// The risk of `policy` (`CONFIG GET maxmemory-policy`) with `maxmemory` bytes
/// (`CONFIG GET maxmemory`, 0 for no limit).
///
/// ```
/// use chatstate_redis::{EvictionRisk, eviction_risk};
/// assert_eq!(eviction_risk("noeviction", 1 << 30), EvictionRisk::None);
/// assert_eq!(eviction_risk("volatile-lru", 1 << 30), EvictionRisk::KeysWithTtl);
/// assert_eq!(eviction_risk("allkeys-lru", 0), EvictionRisk::None);
/// ```
pub fn eviction_risk(policy: &str, maxmemory: u64) -> EvictionRisk {
    if maxmemory == 0 {
        return EvictionRisk::None;
    }
    match policy {
        "noeviction" => EvictionRisk::None,
        p if p.starts_with("volatile-") => EvictionRisk::KeysWithTtl,
        p if p.starts_with("allkeys-") => EvictionRisk::AllKeys,
        _ => EvictionRisk::Unknown,
    }
}

/// The value of `name` in a `CONFIG GET name` reply (a flat array or a RESP3 map).
fn config_value(v: Value, name: &str) -> Result<Option<String>> {
    Ok(reply::pairs(v)?
        .into_iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| String::from_utf8(v).ok()))
}

impl RedisStore {
    /// Asks the server for its `maxmemory` and `maxmemory-policy` (one round trip)
    /// and says what they may evict. `None` when the server does not answer `CONFIG
    /// GET` (renamed away or refused by ACL, as managed services often do): then
    /// nothing is known, and checking the policy is up to the operator.
    pub async fn eviction_risk(&self) -> Result<Option<EvictionRisk>> {
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG").arg("GET").arg("maxmemory");
        pipe.cmd("CONFIG").arg("GET").arg("maxmemory-policy");
        let replies: Vec<Value> = match self.inner.conn.pipe(&pipe, "eviction_risk", &[]).await {
            Ok(r) => r,
            Err(e) if e.is_temporary() => return Err(e),
            Err(e) => {
                tracing::debug!(error = %e, "CONFIG GET refused: the eviction policy is not checked");
                return Ok(None);
            }
        };
        let mut it = replies.into_iter();
        let (Some(max), Some(policy)) = (it.next(), it.next()) else {
            return Ok(None);
        };
        let max = config_value(max, "maxmemory")?.and_then(|m| m.parse::<u64>().ok());
        let policy = config_value(policy, "maxmemory-policy")?;
        Ok(match (max, policy) {
            (Some(max), Some(policy)) => Some(eviction_risk(&policy, max)),
            _ => None,
        })
    }

    /// At connect: a warning when the server's policy may evict what must not be.
    pub(crate) async fn warn_about_eviction(&self) {
        match self.eviction_risk().await {
            Ok(Some(EvictionRisk::None)) | Ok(None) => {}
            Ok(Some(risk)) => tracing::warn!(
                ?risk,
                "the Redis maxmemory-policy may evict chatstate's counters, fencing numbers \
                 or counter batch ids (fences could go back, flushes count twice): \
                 set maxmemory-policy noeviction (see the chatstate-redis docs)"
            ),
            Err(e) => {
                tracing::debug!(error = %e, "could not check the Redis eviction policy")
            }
        }
    }
}
