//! The master found through Redis Sentinel ([`SentinelLink`]): the Sentinels are
//! asked for the master's address, commands go over one self-reconnecting
//! multiplexed connection to it, and the Sentinels are asked again when that
//! master stops serving writes.
//!
//! **When it asks again.** A command that fails at the connection level (refused,
//! dropped, I/O error, timeout), or that the server refuses with `READONLY` (a
//! master demoted to a replica by a failover) or `MASTERDOWN` (a replica that lost
//! its master), starts a resolution in the background: one at a time (single
//! flight), and only for the connection that failed — a generation number tells a
//! failure on a connection already replaced, which asks nothing. When the
//! Sentinels name another address, the next command goes there over a new
//! connection (the old one is dropped once the calls still using it finish). The
//! failed command itself is not retried: it fails with `Unavailable` as on one
//! server, and the circuit breaker counts it; the call that started the
//! resolution waits for it at most [`RESOLVE_WAIT`] first, so that the next
//! command (a caller's retry, the probe's second `PING`) already goes to the new
//! master. While the Sentinels still name a dead
//! master (before they agree it is down), resolutions fail; they are spaced at
//! least [`RESOLVE_SPACING`] apart, and the breaker's probe, which goes through
//! this link too, keeps asking until the new master answers.
//!
//! A `READONLY` reply is the only sign a demoted master gives: it still answers
//! `PING` and reads, so the breaker may stay closed while writes are refused. The
//! first refused write re-resolves, so writes fail only until the Sentinels name
//! the new master (they do before they reconfigure the old one), not until the
//! socket dies.
//!
//! **Lazy start.** Until the Sentinels have named a master once, every call asks
//! them itself (within the connect timeout plus the command timeout), so a store
//! that opened while the Sentinels or the master were unreachable connects on its
//! first successful call or probe.
//!
//! **Errors.** A resolution that fails because no Sentinel answers or none names
//! a master that says it is one is an I/O-level error here (`Unavailable`, and it
//! trips the breaker); refused credentials (the master's or the Sentinels') stay
//! authentication errors (`Config`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chatstate_core::{Error, HostPort, RedisUrl, Result, Secret, TlsConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, FromRedisValue, Pipeline, RedisError, RedisResult};

/// The shortest time between two resolutions that failed commands start (the
/// lazy start and [`SentinelLink::master_client`] ask whenever they are called).
pub(crate) const RESOLVE_SPACING: Duration = Duration::from_millis(100);

/// The longest a failed command waits for the resolution it started before it
/// returns its error (the resolution goes on in the background).
pub(crate) const RESOLVE_WAIT: Duration = Duration::from_secs(1);

/// The master in use: its address and a connection to it.
struct Master {
    /// Bumped each time another master is put in place.
    generation: u64,
    address: String,
    /// For dedicated connections (pub/sub) to the same master.
    client: redis::Client,
    manager: ConnectionManager,
}

/// A link to the master the Sentinels name (see the module docs).
pub(crate) struct SentinelLink {
    name: String,
    sentinels: Vec<HostPort>,
    /// redis-rs's Sentinel client (it caches its connections to the Sentinels);
    /// its lock is also what makes resolutions single-flight.
    client: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<Option<Arc<Master>>>,
    /// Whether a background resolution is under way.
    resolving: AtomicBool,
    /// When the last background resolution started.
    last_resolve: Mutex<Option<Instant>>,
    manager_config: ConnectionManagerConfig,
    /// The longest a resolution may take (connect plus command timeout).
    resolve_timeout: Duration,
}

impl std::fmt::Debug for SentinelLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No credentials here: neither the master's nor the Sentinels' password.
        f.debug_struct("SentinelLink")
            .field("master_name", &self.name)
            .field(
                "sentinels",
                &self
                    .sentinels
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field("master", &self.current().map(|m| m.address.clone()))
            .finish()
    }
}

/// Whether `e` says the master in use may no longer be the master (or be gone).
fn needs_resolve(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

/// Whether `e` is refused credentials (kept as they are: a `Config` error).
fn is_auth(e: &RedisError) -> bool {
    matches!(e.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// A failed resolution as the error a call reports: refused credentials as they
/// are, anything else as "unreachable" (an I/O error: `Unavailable`, trips the
/// breaker).
fn resolution_error(name: &str, e: RedisError) -> RedisError {
    if is_auth(&e) || e.is_io_error() {
        return e;
    }
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        format!("the Sentinels name no reachable master {name:?}: {e}"),
    ))
}

fn address_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => HostPort {
            host: host.clone(),
            port: *port,
        }
        .to_string(),
        other => other.to_string(),
    }
}

/// Clears [`SentinelLink::resolving`] when a background resolution ends (or is
/// dropped with its runtime).
struct Resolving(Arc<SentinelLink>);

impl Drop for Resolving {
    fn drop(&mut self) {
        self.0.resolving.store(false, Ordering::Release);
    }
}

impl SentinelLink {
    /// A link to the master the Sentinels `sentinels` monitor as `name`, with the
    /// credentials, database and TLS scheme of `url` (its host is not used) and
    /// the Sentinels' own `password`. Asks nothing yet.
    pub fn new(
        url: &RedisUrl,
        tls: &TlsConfig,
        sentinels: &[HostPort],
        name: &str,
        password: Option<&Secret>,
        manager_config: ConnectionManagerConfig,
        resolve_timeout: Duration,
    ) -> Result<SentinelLink> {
        let bad = |e: RedisError| {
            Error::config(format!(
                "cannot use the Sentinels for master {name:?}: {}",
                e.category()
            ))
        };
        let mut builder = SentinelClientBuilder::new(
            sentinels
                .iter()
                .map(|s| ConnectionAddr::Tcp(s.host.clone(), s.port)),
            name,
            SentinelServerType::Master,
        )
        .map_err(bad)?;
        if let Some(user) = url.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = url.password() {
            builder = builder.set_client_to_redis_password(password.expose());
        }
        match url.db() {
            Some(db) => builder = builder.set_client_to_redis_db(db),
            None => {
                return Err(Error::config(format!(
                    "REDIS_URL {url} names no valid database number"
                )));
            }
        }
        if let Some(password) = password {
            builder = builder.set_client_to_sentinel_password(password.expose());
        }
        if url.is_tls() {
            builder = builder.set_client_to_redis_tls_mode(if tls.insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            });
            crate::tls::install_crypto_provider();
            if let Some(certs) = crate::tls::certificates(tls)? {
                builder = builder.set_client_to_redis_certificates(certs);
            }
        }
        let client = builder.build().map_err(bad)?;
        Ok(SentinelLink {
            name: name.to_string(),
            sentinels: sentinels.to_vec(),
            client: tokio::sync::Mutex::new(client),
            current: RwLock::new(None),
            resolving: AtomicBool::new(false),
            last_resolve: Mutex::new(None),
            manager_config,
            resolve_timeout,
        })
    }

    fn current(&self) -> Option<Arc<Master>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks the Sentinels for the master, unless the master in use is no longer
    /// `seen` (another resolution replaced it meanwhile: that one is the answer).
    /// `seen` is `None` for "whatever is in use, if anything". One at a time.
    async fn resolve(&self, seen: Option<u64>) -> RedisResult<Arc<Master>> {
        let mut sentinel = self.client.lock().await;
        let previous = self.current();
        if let Some(m) = &previous
            && Some(m.generation) != seen
        {
            return Ok(m.clone());
        }
        let client =
            match tokio::time::timeout(self.resolve_timeout, sentinel.async_get_client()).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(resolution_error(&self.name, e)),
                Err(_) => {
                    return Err(RedisError::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the Sentinels did not name master {:?} in time", self.name),
                    )));
                }
            };
        let address = address_of(&client);
        if let Some(m) = &previous
            && m.address == address
        {
            // Still the same server (a blip, not a failover): its connection
            // reconnects by itself.
            return Ok(m.clone());
        }
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), self.manager_config.clone())?;
        let master = Arc::new(Master {
            generation: previous.as_ref().map_or(1, |m| m.generation + 1),
            address: address.clone(),
            client,
            manager,
        });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(master.clone());
        // Held until the new master is in place: a resolution waiting on the lock
        // then sees it, instead of asking again and building another.
        drop(sentinel);
        match previous {
            None => tracing::info!(
                master_name = %self.name,
                master = %address,
                "Redis master found through Sentinel"
            ),
            Some(old) => {
                tracing::info!(
                    master_name = %self.name,
                    master = %address,
                    previous = %old.address,
                    "Redis master moved (Sentinel failover): commands go to the new master"
                );
                metrics::counter!("chatstate_redis_sentinel_failovers_total").increment(1);
            }
        }
        Ok(master)
    }

    /// The master in use; asks the Sentinels when none was found yet.
    async fn master(&self) -> RedisResult<Arc<Master>> {
        match self.current() {
            Some(m) => Ok(m),
            None => self.resolve(None).await,
        }
    }

    /// After a failed command on the master of `generation`: asks the Sentinels
    /// again in the background when the error says the master may have moved.
    /// Returns the resolution's task when this call started one.
    fn after_error(
        self: &Arc<Self>,
        e: &RedisError,
        generation: u64,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !needs_resolve(e) || self.current().is_some_and(|m| m.generation != generation) {
            return None;
        }
        {
            let mut last = self.last_resolve.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| at.elapsed() < RESOLVE_SPACING) {
                return None;
            }
            if self.resolving.swap(true, Ordering::AcqRel) {
                return None;
            }
            *last = Some(Instant::now());
        }
        tracing::debug!(
            master_name = %self.name,
            error = %e.category(),
            "the Redis master failed: asking the Sentinels where it is"
        );
        let guard = Resolving(self.clone());
        Some(tokio::spawn(async move {
            if let Err(e) = guard.0.resolve(Some(generation)).await {
                tracing::debug!(
                    master_name = %guard.0.name,
                    error = %e,
                    "the Sentinels named no reachable master yet"
                );
            }
            drop(guard);
        }))
    }

    /// After a failed command: starts a resolution when the error calls for one
    /// ([`Self::after_error`]) and waits for it at most [`RESOLVE_WAIT`], so the
    /// next command (the probe's second `PING`, a caller's retry) already goes to
    /// the master the Sentinels name now.
    async fn after_error_wait(self: &Arc<Self>, e: &RedisError, generation: u64) {
        if let Some(task) = self.after_error(e, generation) {
            let _ = tokio::time::timeout(RESOLVE_WAIT, task).await;
        }
    }

    /// Sends one command to the master.
    pub async fn query<T: FromRedisValue>(self: &Arc<Self>, cmd: &Cmd) -> RedisResult<T> {
        let master = self.master().await?;
        let result = cmd.query_async(&mut master.manager.clone()).await;
        if let Err(e) = &result {
            self.after_error_wait(e, master.generation).await;
        }
        result
    }

    /// Sends a pipeline to the master.
    pub async fn query_pipe<T: FromRedisValue>(
        self: &Arc<Self>,
        pipe: &Pipeline,
    ) -> RedisResult<T> {
        let master = self.master().await?;
        let result = pipe.query_async(&mut master.manager.clone()).await;
        if let Err(e) = &result {
            self.after_error_wait(e, master.generation).await;
        }
        result
    }

    /// A client for a dedicated connection (pub/sub) to the current master: asks
    /// the Sentinels each time (and moves the shared connection too when they name
    /// another master).
    pub async fn master_client(&self) -> RedisResult<redis::Client> {
        let seen = self.current().map(|m| m.generation);
        Ok(self.resolve(seen).await?.client.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_resolution_is_unreachable_unless_credentials_were_refused() {
        let not_found = RedisError::from((
            redis::ErrorKind::MasterNameNotFoundBySentinel,
            "Master with given name not found in sentinel",
        ));
        let e = resolution_error("m", not_found);
        assert!(crate::conn::trips_breaker(&e), "{e}");
        let mapped = crate::conn::map_err(e, "connect", None);
        assert_eq!(mapped.kind(), chatstate_core::ErrorKind::Unavailable);

        let auth = RedisError::from((redis::ErrorKind::AuthenticationFailed, "refused"));
        let e = resolution_error("m", auth);
        assert!(!crate::conn::trips_breaker(&e));
        let mapped = crate::conn::map_err(e, "connect", None);
        assert_eq!(mapped.kind(), chatstate_core::ErrorKind::Config);
    }

    #[test]
    fn connection_failures_and_readonly_ask_the_sentinels_again_other_refusals_do_not() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(needs_resolve(&io));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(needs_resolve(&timeout));
        let oom = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
            "x",
        ));
        assert!(!needs_resolve(&oom));
    }
}
