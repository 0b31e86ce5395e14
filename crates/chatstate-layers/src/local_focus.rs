//! [`LocalFocus`]: the local session tier's companion for focus documents, so a
//! chat turn that reads one and holds its session and customer locally costs one
//! round trip: the commit. The same settings as [`crate::LocalSessions`]
//! ([`LocalSessionsConfig`]); the facade's `Stores::with_local_sessions` puts both
//! in place.
//!
//! ## What it promises
//!
//! - **Reads may lag other instances, by at most `max_age`.** [`get`] answers a
//!   copy of what the store held at most `max_age` ago (counted from when the read
//!   or put that made it began). A put or delete made through *another* instance
//!   is seen here once the copy is older than that; one made through *this* layer
//!   is seen at once.
//! - **A stale copy is a conflict, never a lost write.** A put expecting the
//!   version of the copy it read ([`PutMode::IfVersion`]) is checked by the store:
//!   if another instance put the document meanwhile it is a `Conflict` that
//!   writes nothing, and the copy is dropped.
//! - **Never a document past its life, as far as this layer can know.** A copy
//!   made by a put through this layer is served until the put's TTL (the store's
//!   focus TTL when `None`) ran out, counted from when the put began. A copy made
//!   by a read is served until its `updated_at` plus the TTL of the put that
//!   wrote it, when that put went through this layer (it remembers the TTL of its
//!   puts), else plus the configured focus TTL (`CHATSTATE_FOCUS_TTL_SECONDS`):
//!   **a document put through another instance with a shorter TTL of its own may
//!   be served here past its expiry, by at most `max_age`** (its TTL is not part
//!   of what the store answers).
//! - **A copy equals what the store answered** when it was taken: a read keeps
//!   the document the store returned, a put the document as stored (what `put`
//!   returns).
//!
//! `list` always goes to the store. Every put and delete takes the copy out
//! before it goes to the store (nothing stale is left if its caller stops
//! waiting), and no answer that overlapped another write through this layer is
//! kept (the session tier's rule, with the same machinery).
//!
//! [`get`]: FocusStore::get

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    Capabilities, FocusDoc, FocusKey, FocusStore, PutMode, Result, SharedClock, Timestamp,
};

use crate::LocalSessionsConfig;
use crate::local_copies::{Copies, Held};

/// What a [`LocalFocus`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalFocusStats {
    /// Reads answered from a local copy.
    pub hits: u64,
    /// Reads that went to the store.
    pub misses: u64,
}

/// A held document and until when it may be served, whatever its age.
struct Copy {
    doc: FocusDoc,
    expires: Timestamp,
}

/// A local tier of focus documents in front of `F` (see the module docs).
pub struct LocalFocus<F> {
    inner: F,
    copies: Copies<FocusKey, Copy>,
    /// The TTL of the last put through this layer of each key, with the
    /// `updated_at` it wrote: a read of that same document expires with it.
    ttls: moka::future::Cache<FocusKey, (Timestamp, Duration)>,
    config: LocalSessionsConfig,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<F> std::fmt::Debug for LocalFocus<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFocus")
            .field("config", &self.config)
            .field("held", &self.copies.len())
            .finish_non_exhaustive()
    }
}

impl<F: FocusStore> LocalFocus<F> {
    /// A local tier over `inner`, on the system clock.
    pub fn new(inner: F, config: LocalSessionsConfig) -> Self {
        Self::with_clock(inner, config, chatstate_core::system_clock())
    }

    /// A local tier over `inner` whose ages and expiries run on `clock` (the
    /// store's own clock, so both agree on when a document expires).
    pub fn with_clock(inner: F, config: LocalSessionsConfig, clock: SharedClock) -> Self {
        LocalFocus {
            inner,
            copies: Copies::new(config.capacity, config.max_age, clock),
            ttls: moka::future::Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(config.focus_ttl.max(Duration::from_millis(1)))
                .build(),
            config,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// What this layer did so far.
    pub fn stats(&self) -> LocalFocusStats {
        LocalFocusStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The copy of `key` this layer may serve now, counted as a hit (or a miss
    /// when there is none): what `get` answers without the store, and what the
    /// facade's read batch uses for its focus part.
    pub async fn held(&self, key: &FocusKey) -> Option<FocusDoc> {
        let now = self.copies.clock.now();
        let copy = self
            .copies
            .get(key)
            .await
            .filter(|h| self.servable(h, now))
            .map(|h| h.value.doc.clone());
        let counter = if copy.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        copy
    }

    /// Reads `keys` from the store through `read` and keeps what `docs_of` finds
    /// in its answer for each (one entry per key, in order; `None`: no document),
    /// unless a write through this layer overlapped the read. What `get` does on a
    /// miss, and what the facade's read batch does with its focus part.
    pub async fn read_through<T, Fut>(
        &self,
        keys: &[FocusKey],
        read: Fut,
        docs_of: impl FnOnce(&T) -> Vec<Option<FocusDoc>>,
    ) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let readings: Vec<_> = keys.iter().map(|k| self.copies.begin_read(k)).collect();
        let answer = read.await?;
        let docs = docs_of(&answer);
        for ((key, reading), doc) in keys.iter().zip(readings).zip(docs) {
            let copy = match doc {
                Some(doc) => {
                    let ttl = match self.ttls.get(key).await {
                        Some((at, ttl)) if at == doc.updated_at => ttl,
                        _ => self.config.focus_ttl,
                    };
                    Some(Copy {
                        expires: doc.updated_at.plus(ttl),
                        doc,
                    })
                }
                None => None,
            };
            self.copies.keep_read(key, reading, copy).await;
        }
        Ok(answer)
    }

    fn servable(&self, h: &Held<Copy>, now: Timestamp) -> bool {
        now < h.taken.plus(self.config.max_age) && now < h.value.expires
    }
}

#[async_trait]
impl<F: FocusStore> FocusStore for LocalFocus<F> {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let w = self.copies.writing(key);
        self.copies.take(key).await;
        let result = self.inner.put(key, value, mode, ttl).await;
        let ttl = ttl.unwrap_or(self.config.focus_ttl);
        if let Ok(doc) = &result {
            self.ttls.insert(key.clone(), (doc.updated_at, ttl)).await;
        }
        let copy = result.as_ref().ok().map(|doc| Copy {
            doc: doc.clone(),
            expires: w.began.plus(ttl),
        });
        self.copies.settle_write(key, &w, copy).await;
        result
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        if let Some(doc) = self.held(key).await {
            return Ok(Some(doc));
        }
        self.read_through(std::slice::from_ref(key), self.inner.get(key), |d| {
            vec![d.clone()]
        })
        .await
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let w = self.copies.writing(key);
        self.copies.take(key).await;
        let result = self.inner.delete(key).await;
        self.copies.settle_write(key, &w, None).await;
        result
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        self.inner.list(scope).await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
