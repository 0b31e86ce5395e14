//! [`RedisBus`]: cross-instance cache invalidation over Redis pub/sub.
//!
//! Publishing is one `PUBLISH` on the shared connection. Listening needs a connection
//! of its own (a subscribed connection can do nothing else), held by a background
//! task: it subscribes to `{prefix}:invalidate`, forwards every message to this
//! process's listeners. When its connection is lost it sends [`BusEvent::Lost`]
//! (tiered caches stop serving their copies as current, keeping them only for
//! stale-if-error while Redis itself fails), and whenever it is (re-)established
//! [`BusEvent::Reset`], so every tiered cache drops its local tier instead of
//! serving a value it may not have heard about. A subscriber only receives, so a
//! silently dead connection would never be noticed: the task pings it every 5 s and
//! treats no answer within 3 s as lost. It reconnects with a backoff of 100 ms
//! doubling to 2 s, and stops when the bus is dropped.

use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::{BusEvent, Error, ErrorKind, Invalidation, InvalidationBus, Result};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::RedisStore;

#[derive(Serialize, Deserialize)]
struct Wire {
    origin: String,
    what: Invalidation,
}

/// Cache invalidations between instances over Redis pub/sub.
pub struct RedisBus {
    store: RedisStore,
    channel: String,
    tx: broadcast::Sender<BusEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RedisBus {
    /// A bus on the channel `{prefix}:invalidate` of `store`'s server. Must be called
    /// inside a tokio runtime (it spawns the listening task).
    pub fn new(store: &RedisStore) -> Result<RedisBus> {
        let channel = format!("{}:invalidate", store.layout().prefix());
        // Checked here so a bad URL or TLS file fails now; the listener asks the store
        // for its client at every (re)connect (through Sentinel: the master of the
        // moment).
        store.check_dedicated_client()?;
        let (tx, _) = broadcast::channel(1024);
        let task = tokio::spawn(listen(store.clone(), channel.clone(), tx.clone()));
        Ok(RedisBus {
            store: store.clone(),
            channel,
            tx,
            task,
        })
    }
}

/// How often the listener pings its subscription, and how long it waits for the
/// answer: a half-open connection (a NAT that forgot it, a failover that moved the
/// address) is noticed within about `PING_EVERY + PING_TIMEOUT`.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

async fn listen(store: RedisStore, channel: String, tx: broadcast::Sender<BusEvent>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match store.dedicated_client().await {
            Ok(client) => client.get_async_pubsub().await,
            Err(e) => {
                tracing::debug!(error = %e, "chatstate invalidation subscription finds no server");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        match pubsub {
            Ok(mut pubsub) => {
                if pubsub.subscribe(&channel).await.is_ok() {
                    backoff = Duration::from_millis(100);
                    // Whatever was published before this moment may have been missed.
                    let _ = tx.send(BusEvent::Reset);
                    let (mut sink, mut messages) = pubsub.split();
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.tick().await;
                    loop {
                        tokio::select! {
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let event = match serde_json::from_slice::<Wire>(msg.get_payload_bytes()) {
                                    Ok(w) => BusEvent::Invalidate {
                                        origin: w.origin,
                                        what: w.what,
                                    },
                                    // Not ours to read: drop everything rather than guess.
                                    Err(_) => BusEvent::Reset,
                                };
                                let _ = tx.send(event);
                            }
                            _ = ping.tick() => {
                                let alive = tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await;
                                if !matches!(alive, Ok(Ok(_))) {
                                    break;
                                }
                            }
                        }
                    }
                }
                tracing::warn!(
                    "chatstate invalidation subscription lost: local copies are no longer \
                     served as current, and are dropped when it is back"
                );
                let _ = tx.send(BusEvent::Lost);
            }
            Err(e) => {
                tracing::debug!(error = %e.category(), "chatstate invalidation subscription cannot connect")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[async_trait]
impl InvalidationBus for RedisBus {
    async fn publish(&self, origin: &str, what: &Invalidation) -> Result<()> {
        let payload = serde_json::to_vec(&Wire {
            origin: origin.to_string(),
            what: what.clone(),
        })
        .map_err(|e| {
            Error::new(ErrorKind::Internal, "an invalidation does not encode").with_source(e)
        })?;
        let _: i64 = self
            .store
            .inner
            .conn
            .cmd(
                redis::cmd("PUBLISH").arg(&self.channel).arg(payload),
                "publish",
                Some(&self.channel),
            )
            .await?;
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        self.tx.subscribe()
    }
}
