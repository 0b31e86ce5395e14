//! The one-server link: a self-reconnecting multiplexed connection that is
//! replaced when the server turns out to be a replica.
//!
//! Why: managed Redis with failover behind one DNS name (ElastiCache's primary
//! endpoint, a Redis Cloud database, a DNS record an operator moves) demotes the
//! old primary to a replica that keeps the connection open and answers every
//! write with `READONLY`. redis-rs's `ConnectionManager` reconnects only when the
//! connection breaks, so writes would fail until the socket dies. A `READONLY`
//! reply here makes the next command go over a new connection, which resolves the
//! name again and reaches the new primary. The refused command itself is not sent
//! again (nothing ran; the caller sees `Unavailable`, a temporary error).

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// At most one new connection per this interval, however many commands see
/// `READONLY` at once.
const RENEW_AT_MOST_EVERY: Duration = Duration::from_millis(100);

/// A connection to one server that can be renewed.
pub(crate) struct DirectLink {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection, and how many times it was renewed.
    current: RwLock<(u64, ConnectionManager)>,
    last_renew: Mutex<Option<Instant>>,
}

impl DirectLink {
    /// A lazy link: nothing is sent until the first call.
    pub fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<DirectLink> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(DirectLink {
            client,
            config,
            current: RwLock::new((0, manager)),
            last_renew: Mutex::new(None),
        })
    }

    /// The connection to send through (a cheap clone) and its generation.
    pub fn connection(&self) -> (u64, ConnectionManager) {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// After `result` of a command sent on generation `generation`: a `READONLY`
    /// reply replaces that connection (once, and at most every 100 ms).
    pub fn after<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        let Err(e) = result else { return };
        if e.code() != Some("READONLY") {
            return;
        }
        let mut last = self.last_renew.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < RENEW_AT_MOST_EVERY) {
            return;
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.0 != generation {
            return; // Already replaced since that command was sent.
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => {
                *current = (generation + 1, fresh);
                *last = Some(Instant::now());
                tracing::warn!(
                    "Redis answered READONLY (the server is now a replica): the next \
                     command goes over a new connection"
                );
            }
            Err(e) => tracing::warn!(error = %e.category(), "cannot open a new Redis connection"),
        }
    }
}
