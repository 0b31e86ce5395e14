//! Conveniences over the four traits, for every store (blanket impls, so
//! `Arc<dyn KvCache>` has them too): typed values through a [`Codec`], one-message
//! appends, get-or-load.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::Codec;
use crate::error::Result;
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

    /// The cached value, or `load()`'s result stored for `ttl` and returned. A
    /// loader error is returned and nothing is cached.
    ///
    /// This plain version does not stop two concurrent misses of one key from both
    /// loading; the tiered cache layer adds one-loader-per-key.
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
        if let Some(v) = self.get_value(key, codec).await? {
            return Ok(v);
        }
        let v = load().await?;
        self.set_value(key, &v, ttl, codec).await?;
        Ok(v)
    }
}

impl<C: KvCache + ?Sized> KvCacheExt for C {}

/// Conveniences for any [`SessionStore`].
#[async_trait]
pub trait SessionStoreExt: SessionStore {
    /// Appends one message (see [`SessionStore::append_messages`]).
    async fn append_message(&self, key: &SessionKey, message: NewMessage) -> Result<AppendReceipt> {
        self.append_messages(key, vec![message]).await
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
