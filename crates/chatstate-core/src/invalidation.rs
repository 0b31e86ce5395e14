//! Cross-instance invalidation: how one instance tells the others that a cache key
//! changed, so their local copies are dropped.
//!
//! The tiered cache layer publishes an [`Invalidation`] after every write and
//! listens for the others'. A bus delivers [`BusEvent::Reset`] whenever it may have
//! missed messages (a lost or re-established connection, a lagging listener): the
//! listener then drops its whole local tier, so it never serves a value it might
//! not have heard about.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::key::CacheKey;

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Invalidation {
    /// One key was written or deleted.
    Key(CacheKey),
    /// Several keys were written or deleted together.
    Keys(Vec<CacheKey>),
    /// Every key of `namespace` starting with `prefix` may have changed.
    Prefix {
        /// The namespace.
        namespace: String,
        /// The key prefix (`""`: the whole namespace).
        prefix: String,
    },
}

impl Invalidation {
    /// Whether `key` is covered.
    pub fn covers(&self, key: &CacheKey) -> bool {
        match self {
            Invalidation::Key(k) => k == key,
            Invalidation::Keys(ks) => ks.contains(key),
            Invalidation::Prefix { namespace, prefix } => {
                key.namespace() == namespace && key.key().starts_with(prefix.as_str())
            }
        }
    }
}

/// What a listener receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BusEvent {
    /// Another (or this) instance changed something.
    Invalidate {
        /// The publishing instance's id (listeners skip their own).
        origin: String,
        /// What changed.
        what: Invalidation,
    },
    /// Messages may have been missed: drop every local copy.
    Reset,
    /// The bus lost its connection: from now on changes may go unheard, until a
    /// [`BusEvent::Reset`] says it is back. A listener that keeps copies must stop
    /// treating them as current; it may still use them where a stale answer is
    /// allowed (the tiered cache serves them only while the remote fails). A
    /// listener with no such use treats it as a `Reset`.
    Lost,
}

/// A channel of invalidations shared by every instance of an app.
#[async_trait]
pub trait InvalidationBus: Send + Sync {
    /// Tells every listener (other instances included) that `what` changed.
    async fn publish(&self, origin: &str, what: &Invalidation) -> Result<()>;

    /// A new listener. A lagging listener must treat the lag as a
    /// [`BusEvent::Reset`].
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusEvent>;
}

/// An in-process bus: every subscriber of this value hears every publish. For one
/// process with several tiered caches, tests, and the memory backend.
#[derive(Clone, Debug)]
pub struct LocalBus {
    tx: tokio::sync::broadcast::Sender<BusEvent>,
}

impl Default for LocalBus {
    fn default() -> Self {
        LocalBus::new()
    }
}

impl LocalBus {
    /// A bus with room for 1024 undelivered events per listener.
    pub fn new() -> Self {
        LocalBus {
            tx: tokio::sync::broadcast::channel(1024).0,
        }
    }

    /// Sends a [`BusEvent::Reset`] to every listener (as a re-established
    /// connection would).
    pub fn reset(&self) {
        let _ = self.tx.send(BusEvent::Reset);
    }

    /// Sends a [`BusEvent::Lost`] to every listener (as a lost connection would).
    pub fn lose(&self) {
        let _ = self.tx.send(BusEvent::Lost);
    }
}

#[async_trait]
impl InvalidationBus for LocalBus {
    async fn publish(&self, origin: &str, what: &Invalidation) -> Result<()> {
        // No listener is not an error: nobody holds a copy.
        let _ = self.tx.send(BusEvent::Invalidate {
            origin: origin.to_string(),
            what: what.clone(),
        });
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusEvent> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_covers_only_its_namespace() {
        let p = Invalidation::Prefix {
            namespace: "users".into(),
            prefix: "a".into(),
        };
        assert!(p.covers(&CacheKey::new("users", "ab").unwrap()));
        assert!(!p.covers(&CacheKey::new("users", "ba").unwrap()));
        assert!(!p.covers(&CacheKey::new("users:archive", "ab").unwrap()));
    }

    #[tokio::test]
    async fn local_bus_delivers_to_every_listener() {
        let bus = LocalBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        let what = Invalidation::Key(CacheKey::new("ns", "k").unwrap());
        bus.publish("one", &what).await.unwrap();
        bus.reset();
        for rx in [&mut a, &mut b] {
            assert_eq!(
                rx.recv().await.unwrap(),
                BusEvent::Invalidate {
                    origin: "one".into(),
                    what: what.clone()
                }
            );
            assert_eq!(rx.recv().await.unwrap(), BusEvent::Reset);
        }
    }
}
