//! Conveniences over the four traits, for every store (blanket impls, so
//! `Arc<dyn KvCache>` has them too): typed values through a [`Codec`], one-message
//! appends, get-or-load.
//!
//! ## The cache degrades; it never fails a request
//!
//! [`KvCacheExt::get_or_load`] and [`KvCacheExt::get_many_or_load`] treat the cache as
//! an optimisation in front of the loader (the source of truth):
//!
//! - **A temporary read error** ([`Error::is_temporary`]: `Unavailable`, `Timeout`)
//!   is not returned: the loader is called (for every key asked, in the many-key
//!   form) and its value returned. Nothing is written back then: the cache just
//!   failed, a write-back would most likely fail too and add a second timeout to a
//!   request already waiting on an unreachable cache. Counted in
//!   [`READ_FALLBACKS_METRIC`], logged at `debug` (an outage would otherwise log
//!   once per request).
//! - **A failed write-back** (any error, an encoding error included) is not
//!   returned: the loaded value is. It is logged with `tracing::warn!` (operation,
//!   key, error kind and message — never the value) and counted in
//!   [`WRITEBACK_FAILURES_METRIC`].
//! - **Every other read error** is returned, as is any loader error: `Decode` (the
//!   stored bytes are not a `T` in this codec), `WrongType`, `InvalidInput` and the
//!   rest say something is wrong that calling the loader would hide, not that the
//!   cache is away.
//!
//! The counters go through the [`metrics`] facade (labelled `layer` and
//! `operation`): with no recorder installed they cost nothing; tests can count them
//! with a thread-local recorder. `chatstate_layers::TieredCache` keeps the same
//! rules, counts them in its own stats too, and adds serving its local tier when the
//! remote fails.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::key::{CacheKey, FocusKey, SessionKey};
use crate::model::{AppendReceipt, NewMessage, PutMode};
use crate::traits::{FocusStore, KvCache, SessionStore};

/// Typed access to any [`KvCache`].
///
/// ```
/// # async fn demo(cache: &dyn chatstate_core::KvCache) -> chatstate_core::Result<()> {
/// use chatstate_core::{CacheKey, Codec, KvCacheExt};
/// let key = CacheKey::new("customers", "42")?;
/// cache.set_value(&key, &("Ana", 31u8), None, Codec::Json).await?;
/// let back: Option<(String, u8)> = cache.get_value(&key, Codec::Json).await?;
/// assert_eq!(back, Some(("Ana".to_string(), 31)));
/// # Ok(()) }
/// ```
#[async_trait]
pub trait KvCacheExt: KvCache {
    /// The value decoded as `T`; a `Decode` error for bytes that are not a `T`
    /// written with `codec`.
    async fn get_value<T: DeserializeOwned>(
        &self,
        key: &CacheKey,
        codec: Codec,
    ) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(bytes) => codec
                .decode(&bytes)
                .map(Some)
                .map_err(|e| e.with_operation("get_value").with_key(key)),
            None => Ok(None),
        }
    }

    /// Stores `value` encoded with `codec`.
    async fn set_value<T: Serialize + Sync + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
        ttl: Option<Duration>,
        codec: Codec,
    ) -> Result<()> {
        let bytes = codec.encode(value)?;
        self.set(key, bytes, ttl).await
    }

    /// [`KvCache::set_with_aliases`] of `value` encoded with `codec`.
    async fn set_value_with_aliases<T: Serialize + Sync + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
        codec: Codec,
    ) -> Result<()> {
        let bytes = codec.encode(value)?;
        self.set_with_aliases(key, bytes, ttl, aliases).await
    }

    /// [`KvCache::get_by_alias`], the value decoded as `T`; a `Decode` error for
    /// bytes that are not a `T` written with `codec`.
    async fn get_value_by_alias<T: DeserializeOwned>(
        &self,
        alias: &CacheKey,
        codec: Codec,
    ) -> Result<Option<(CacheKey, T)>> {
        match self.get_by_alias(alias).await? {
            Some((key, bytes)) => match codec.decode(&bytes) {
                Ok(v) => Ok(Some((key, v))),
                Err(e) => Err(e.with_operation("get_value_by_alias").with_key(key)),
            },
            None => Ok(None),
        }
    }

    /// Many values decoded as `T`, in the order of `keys`, in one `get_many`.
    async fn get_many_values<T: DeserializeOwned>(
        &self,
        keys: &[CacheKey],
        codec: Codec,
    ) -> Result<Vec<Option<T>>> {
        let raw = self.get_many(keys).await?;
        raw.into_iter()
            .zip(keys)
            .map(|(bytes, key)| {
                bytes
                    .map(|b| {
                        codec
                            .decode(&b)
                            .map_err(|e| e.with_operation("get_many_values").with_key(key))
                    })
                    .transpose()
            })
            .collect()
    }

    /// Stores many values encoded with `codec`, all for `ttl`, in one
    /// [`KvCache::set_many`]: an encoding error or an oversize value stores none.
    async fn set_many_values<T: Serialize + Sync>(
        &self,
        entries: &[(CacheKey, T)],
        ttl: Option<Duration>,
        codec: Codec,
    ) -> Result<()> {
        let encoded = entries
            .iter()
            .map(|(k, v)| encode_entry(codec, k, v, "set_many_values"))
            .collect::<Result<Vec<_>>>()?;
        self.set_many(encoded, ttl).await
    }

    /// Stores many values encoded with `codec`, each for its own TTL, in one
    /// [`KvCache::set_many_with_ttls`].
    async fn set_many_values_with_ttls<T: Serialize + Sync>(
        &self,
        entries: &[(CacheKey, T, Option<Duration>)],
        codec: Codec,
    ) -> Result<()> {
        let encoded = entries
            .iter()
            .map(|(k, v, ttl)| {
                encode_entry(codec, k, v, "set_many_values_with_ttls").map(|(k, b)| (k, b, *ttl))
            })
            .collect::<Result<Vec<_>>>()?;
        self.set_many_with_ttls(encoded).await
    }

    /// The cached value, or `load()`'s result stored for `ttl` and returned. A
    /// loader error is returned and nothing is cached.
    ///
    /// Degrades instead of failing (see the [module docs](self)): a temporary read
    /// error calls the loader and returns its value (no write-back); a failed
    /// write-back is logged and counted, not returned. Other read errors (`Decode`,
    /// `WrongType`, `InvalidInput`, ...) are returned.
    ///
    /// Goes through [`KvCache::get_or_load_raw`]: on a tiered cache (also behind an
    /// `Arc<dyn KvCache>`) concurrent misses of one key in a process run one loader
    /// and a local copy answers; on a plain store two concurrent misses may both
    /// load. A value a loader found "not found" through the bytes call
    /// (`get_or_load_raw` answering `None`) is a `NotFound` error here; to cache
    /// absence, load an `Option<T>`.
    async fn get_or_load<T, F, Fut>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        codec: Codec,
        load: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        let loader: Loader<'_> = Box::new(move || {
            Box::pin(async move {
                let v = load().await?;
                codec.encode(&v).map(Some)
            })
        });
        match self.get_or_load_raw(key, ttl, loader).await? {
            Some(bytes) => codec
                .decode(&bytes)
                .map_err(|e| e.with_operation("get_or_load").with_key(key)),
            None => Err(Error::not_found(
                "another caller's loader of this key found nothing (get_or_load_raw answered None)",
            )
            .with_operation("get_or_load")
            .with_key(key)),
        }
    }

    /// The values of `keys` (in order), loading the missing ones: `load` gets the
    /// keys the cache did not have (each once, however often it is asked for; not
    /// called when nothing is missing) and returns the values it found, which are
    /// written back with `ttl`. A key the loader does not return stays `None`; keys
    /// it returns that were not asked for are ignored.
    ///
    /// On a plain store: one `get_many`, one `load` call, one `set_many`. On a
    /// tiered cache (also behind an `Arc<dyn KvCache>`): local hits first, and
    /// `load` is called in batches (see [`KvCache::get_many_or_load_raw`]).
    ///
    /// Degrades like [`KvCacheExt::get_or_load`]: a temporary `get_many` error calls
    /// the loader with every key (once each) and writes nothing back; a failed
    /// write-back is logged and counted, not returned; other read errors (a `Decode`
    /// error for any one key included) and loader errors are returned.
    ///
    /// ```
    /// # async fn demo(cache: &dyn chatstate_core::KvCache) -> chatstate_core::Result<()> {
    /// use chatstate_core::{CacheKey, Codec, KvCacheExt};
    /// let keys = [CacheKey::new("customers", "1")?, CacheKey::new("customers", "2")?];
    /// let names: Vec<Option<String>> = cache
    ///     .get_many_or_load(&keys, None, Codec::Json, |missing| async move {
    ///         Ok(missing.into_iter().map(|k| {
    ///             let name = format!("customer {}", k.key());
    ///             (k, name)
    ///         }).collect())
    ///     })
    ///     .await?;
    /// assert_eq!(names[1].as_deref(), Some("customer 2"));
    /// # Ok(()) }
    /// ```
    async fn get_many_or_load<T, F, Fut>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        codec: Codec,
        mut load: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnMut(Vec<CacheKey>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<(CacheKey, T)>>> + Send,
    {
        let loader: ManyLoader<'_> = Box::new(move |missing| {
            let loaded = load(missing);
            Box::pin(async move {
                loaded
                    .await?
                    .into_iter()
                    .map(|(k, v)| codec.encode(&v).map(|b| (k, b)))
                    .collect()
            })
        });
        self.get_many_or_load_raw(keys, ttl, loader)
            .await?
            .into_iter()
            .zip(keys)
            .map(|(bytes, key)| {
                bytes
                    .map(|b| {
                        codec
                            .decode(&b)
                            .map_err(|e| e.with_operation("get_many_or_load").with_key(key))
                    })
                    .transpose()
            })
            .collect()
    }
}

/// `value` encoded with `codec`, beside its key; an encoding error names the key.
fn encode_entry<T: Serialize + ?Sized>(
    codec: Codec,
    key: &CacheKey,
    value: &T,
    operation: &'static str,
) -> Result<(CacheKey, Bytes)> {
    codec
        .encode(value)
        .map(|b| (key.clone(), b))
        .map_err(|e| e.with_operation(operation).with_key(key))
}

/// A boxed future, as the loaders return.
pub type LoadFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The loader of [`KvCache::get_or_load_raw`]: called at most once; `Ok(None)` is
/// "not found". Make one from a closure with [`loader`].
pub type Loader<'a> = Box<dyn FnOnce() -> LoadFuture<'a, Option<Bytes>> + Send + 'a>;

/// The loader of [`KvCache::get_many_or_load_raw`]: called with missing keys (each
/// at most once per call), possibly several times in batches; returns the values it
/// found. Make one from a closure with [`many_loader`].
pub type ManyLoader<'a> =
    Box<dyn FnMut(Vec<CacheKey>) -> LoadFuture<'a, Vec<(CacheKey, Bytes)>> + Send + 'a>;

/// A [`Loader`] from an async closure.
pub fn loader<'a, F, Fut>(load: F) -> Loader<'a>
where
    F: FnOnce() -> Fut + Send + 'a,
    Fut: Future<Output = Result<Option<Bytes>>> + Send + 'a,
{
    Box::new(move || Box::pin(load()))
}

/// A [`ManyLoader`] from an async closure.
pub fn many_loader<'a, F, Fut>(mut load: F) -> ManyLoader<'a>
where
    F: FnMut(Vec<CacheKey>) -> Fut + Send + 'a,
    Fut: Future<Output = Result<Vec<(CacheKey, Bytes)>>> + Send + 'a,
{
    Box::new(move |keys| Box::pin(load(keys)))
}

/// [`KvCache::get_or_load_raw`]'s provided version: read, load on a miss, write
/// back, degrading as the [module docs](self) say.
pub async fn plain_get_or_load<C: KvCache + ?Sized>(
    cache: &C,
    key: &CacheKey,
    ttl: Option<Duration>,
    load: Loader<'_>,
) -> Result<Option<Bytes>> {
    let cache_failed = match cache.get(key).await {
        Ok(Some(v)) => return Ok(Some(v)),
        Ok(None) => false,
        Err(e) if e.is_temporary() => {
            read_fell_back("ext", "get_or_load", key, &e);
            true
        }
        Err(e) => return Err(e),
    };
    let v = load().await?;
    if !cache_failed
        && let Some(bytes) = &v
        && let Err(e) = cache.set(key, bytes.clone(), ttl).await
    {
        write_back_failed("ext", "get_or_load", key, &e);
    }
    Ok(v)
}

/// [`KvCache::get_many_or_load_raw`]'s provided version: one `get_many`, one `load`
/// call with every missing key (once each), one `set_many` of what it returned,
/// degrading as the [module docs](self) say.
pub async fn plain_get_many_or_load<C: KvCache + ?Sized>(
    cache: &C,
    keys: &[CacheKey],
    ttl: Option<Duration>,
    mut load: ManyLoader<'_>,
) -> Result<Vec<Option<Bytes>>> {
    let (mut out, cache_failed) = match cache.get_many(keys).await {
        Ok(values) => (values, false),
        Err(e) if e.is_temporary() => {
            read_fell_back("ext", "get_many_or_load", keys.len(), &e);
            (keys.iter().map(|_| None).collect(), true)
        }
        Err(e) => return Err(e),
    };
    // Sets and maps, not scans: a batch of a thousand keys stays linear.
    let mut asked: HashSet<&CacheKey> = HashSet::new();
    let mut missing: Vec<CacheKey> = Vec::new();
    for (k, v) in keys.iter().zip(&out) {
        if v.is_none() && asked.insert(k) {
            missing.push(k.clone());
        }
    }
    if missing.is_empty() {
        return Ok(out);
    }
    // Only keys that were asked for, once each (the first answer wins), in the
    // loader's order for the write-back.
    let mut loaded: Vec<(CacheKey, Bytes)> = Vec::new();
    let mut index: HashMap<CacheKey, usize> = HashMap::new();
    for (k, v) in load(missing).await? {
        if asked.contains(&k) && !index.contains_key(&k) {
            index.insert(k.clone(), loaded.len());
            loaded.push((k, v));
        }
    }
    for (slot, k) in out.iter_mut().zip(keys) {
        if slot.is_none()
            && let Some(&i) = index.get(k)
        {
            *slot = Some(loaded[i].1.clone());
        }
    }
    if !cache_failed && !loaded.is_empty() {
        let n = loaded.len();
        if let Err(e) = cache.set_many(loaded, ttl).await {
            write_back_failed("ext", "get_many_or_load", n, &e);
        }
    }
    Ok(out)
}

/// The counter of loader calls made because the cache read failed with a temporary
/// error (labels `layer`, `operation`).
pub const READ_FALLBACKS_METRIC: &str = "chatstate_cache_read_fallbacks_total";

/// The counter of failed write-backs of loaded values, not returned to the caller
/// (labels `layer`, `operation`).
pub const WRITEBACK_FAILURES_METRIC: &str = "chatstate_cache_writeback_failures_total";

/// Records that a cache read failed temporarily and the loader answers instead:
/// counted in [`READ_FALLBACKS_METRIC`] and logged at `debug` (once per request in
/// an outage: `warn` would flood). `keys` is the key, or how many keys were read.
/// For layers that keep these rules (the tiered cache).
pub fn read_fell_back(
    layer: &'static str,
    operation: &'static str,
    keys: impl Display,
    error: &Error,
) {
    metrics::counter!(READ_FALLBACKS_METRIC, "layer" => layer, "operation" => operation)
        .increment(1);
    tracing::debug!(
        layer,
        operation,
        keys = %keys,
        kind = error.kind().as_str(),
        error = %error,
        "chatstate cache read failed temporarily; the loader answers"
    );
}

/// Records a failed write-back of a loaded value, which the caller does not see:
/// counted in [`WRITEBACK_FAILURES_METRIC`] and logged with `tracing::warn!`
/// (operation, key or key count, error kind and message — never the value). For
/// layers that keep these rules (the tiered cache).
pub fn write_back_failed(
    layer: &'static str,
    operation: &'static str,
    keys: impl Display,
    error: &Error,
) {
    metrics::counter!(WRITEBACK_FAILURES_METRIC, "layer" => layer, "operation" => operation)
        .increment(1);
    tracing::warn!(
        layer,
        operation,
        keys = %keys,
        kind = error.kind().as_str(),
        error = %error,
        "chatstate could not write a loaded value back to the cache; it is returned, not cached"
    );
}

impl<C: KvCache + ?Sized> KvCacheExt for C {}

/// Conveniences for any [`SessionStore`].
#[async_trait]
pub trait SessionStoreExt: SessionStore {
    /// Appends one message (see [`SessionStore::append_messages`]).
    async fn append_message(&self, key: &SessionKey, message: NewMessage) -> Result<AppendReceipt> {
        self.append_messages(key, vec![message]).await
    }

    /// The live session's side value `name`, or `None` (no such value, or no
    /// session); see [`SessionStore::get_data_many`].
    async fn get_data(&self, key: &SessionKey, name: &str) -> Result<Option<Bytes>> {
        let names = [name.to_string()];
        Ok(self
            .get_data_many(key, &names)
            .await
            .map_err(|e| e.with_operation("get_data"))?
            .pop()
            .flatten())
    }

    /// Sets side value `name` to `value` encoded with `codec` (see
    /// [`SessionStore::set_data`]).
    ///
    /// ```
    /// # async fn demo(store: &dyn chatstate_core::SessionStore) -> chatstate_core::Result<()> {
    /// use chatstate_core::{Codec, NewMessage, SessionKey, SessionStoreExt};
    /// let key = SessionKey::new("acme", "whatsapp", "+5511999990000")?;
    /// store.append_message(&key, NewMessage::user("oi")).await?;
    /// store.set_data_value(&key, "thread_id", &"thr_42", Codec::Json).await?;
    /// let thread: Option<String> = store.get_data_value(&key, "thread_id", Codec::Json).await?;
    /// assert_eq!(thread.as_deref(), Some("thr_42"));
    /// # Ok(()) }
    /// ```
    async fn set_data_value<T: Serialize + Sync + ?Sized>(
        &self,
        key: &SessionKey,
        name: &str,
        value: &T,
        codec: Codec,
    ) -> Result<()> {
        let bytes = codec.encode(value)?;
        self.set_data(key, name, bytes).await
    }

    /// Side value `name` decoded as `T`; a `Decode` error for bytes that are not a
    /// `T` written with `codec`.
    async fn get_data_value<T: DeserializeOwned>(
        &self,
        key: &SessionKey,
        name: &str,
        codec: Codec,
    ) -> Result<Option<T>> {
        self.get_data(key, name)
            .await?
            .map(|b| {
                codec
                    .decode(&b)
                    .map_err(|e| e.with_operation("get_data_value").with_key(key))
            })
            .transpose()
    }
}

impl<S: SessionStore + ?Sized> SessionStoreExt for S {}

/// Typed access to any [`FocusStore`].
#[async_trait]
pub trait FocusStoreExt: FocusStore {
    /// Writes `value` encoded with `codec`; returns the new version.
    async fn put_value<T: Serialize + Sync + ?Sized>(
        &self,
        key: &FocusKey,
        value: &T,
        mode: PutMode,
        ttl: Option<Duration>,
        codec: Codec,
    ) -> Result<u64> {
        let bytes = codec.encode(value)?;
        Ok(self.put(key, bytes, mode, ttl).await?.version)
    }

    /// The document decoded as `T`, with its version.
    async fn get_value<T: DeserializeOwned>(
        &self,
        key: &FocusKey,
        codec: Codec,
    ) -> Result<Option<(T, u64)>> {
        match self.get(key).await? {
            Some(doc) => {
                let v = codec
                    .decode(&doc.value)
                    .map_err(|e| e.with_operation("get_value").with_key(key))?;
                Ok(Some((v, doc.version)))
            }
            None => Ok(None),
        }
    }
}

impl<F: FocusStore + ?Sized> FocusStoreExt for F {}
