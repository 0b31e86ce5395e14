//! Handles: a cache namespace, a focus scope or a counter family, named once with
//! its TTL and codec, so the everyday calls read naturally and never need the
//! fully qualified syntax the traits' shared method names (`get`, `delete`, `list`)
//! otherwise ask for on a store that implements several.
//!
//! ```
//! # async fn demo(stores_cache: std::sync::Arc<dyn chatstate_core::KvCache>) -> chatstate_core::Result<()> {
//! use std::time::Duration;
//! use chatstate_core::{CacheHandles, Codec};
//!
//! let customers = stores_cache
//!     .namespace("customers")?
//!     .ttl(Duration::from_secs(300))
//!     .codec(Codec::Json);
//! customers.set("42", &("Ana", "+5511999990000")).await?;
//! let ana: Option<(String, String)> = customers.get("42").await?;
//! assert_eq!(ana.map(|c| c.0).as_deref(), Some("Ana"));
//! # Ok(()) }
//! ```
//!
//! A handle is cheap to clone (an `Arc` and a few strings) and holds no connection
//! of its own: every call is the store's call, with the store's promises.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{SharedClock, system_clock};
use crate::codec::Codec;
use crate::error::Result;
use crate::ext::{FocusStoreExt, KvCacheExt};
use crate::key::{Bucket, CacheKey, CounterKey, FocusKey, Labels, check_scope};
use crate::model::PutMode;
use crate::traits::{CounterSink, FocusStore, KvCache};

/// Typed calls on one namespace of a [`KvCache`], with its TTL and codec set once.
/// Made by [`CacheHandles::namespace`].
pub struct CacheNamespace<C: ?Sized = dyn KvCache> {
    cache: Arc<C>,
    namespace: String,
    ttl: Option<Duration>,
    codec: Codec,
}

impl<C: ?Sized> Clone for CacheNamespace<C> {
    fn clone(&self) -> Self {
        CacheNamespace {
            cache: self.cache.clone(),
            namespace: self.namespace.clone(),
            ttl: self.ttl,
            codec: self.codec,
        }
    }
}

impl<C: ?Sized> std::fmt::Debug for CacheNamespace<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheNamespace")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("codec", &self.codec)
            .finish()
    }
}

/// `namespace(...)` on an `Arc` of any [`KvCache`] (`Arc<dyn KvCache>` included).
pub trait CacheHandles<C: ?Sized> {
    /// A handle on `namespace` with the store's default TTL and the default codec
    /// ([`Codec::default`], JSON; `chatstate::Stores::namespace` uses the
    /// configured `CHATSTATE_CODEC` instead); `InvalidInput` for a namespace no key
    /// could have.
    fn namespace(&self, namespace: &str) -> Result<CacheNamespace<C>>;
}

impl<C: KvCache + ?Sized> CacheHandles<C> for Arc<C> {
    fn namespace(&self, namespace: &str) -> Result<CacheNamespace<C>> {
        // A key in it must be valid: checks the namespace the way every key does.
        CacheKey::new(namespace, "k")?;
        Ok(CacheNamespace {
            cache: self.clone(),
            namespace: namespace.to_string(),
            ttl: None,
            codec: Codec::default(),
        })
    }
}

impl<C: KvCache + ?Sized> CacheNamespace<C> {
    /// The TTL of every write through this handle (the store's cache TTL when not
    /// set).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The codec of every value through this handle.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The namespace.
    pub fn name(&self) -> &str {
        &self.namespace
    }

    /// The full key of `key` in this namespace.
    pub fn key(&self, key: &str) -> Result<CacheKey> {
        CacheKey::new(self.namespace.as_str(), key)
    }

    fn keys<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<CacheKey>> {
        keys.iter().map(|k| self.key(k.as_ref())).collect()
    }

    /// The value of `key`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.cache.get_value(&self.key(key)?, self.codec).await
    }

    /// Many values, in the order of `keys`, in one `get_many`.
    pub async fn get_many<T: DeserializeOwned, K: AsRef<str>>(
        &self,
        keys: &[K],
    ) -> Result<Vec<Option<T>>> {
        self.cache
            .get_many_values(&self.keys(keys)?, self.codec)
            .await
    }

    /// Stores `value` under `key` for the handle's TTL.
    pub async fn set<T: Serialize + Sync + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.cache
            .set_value(&self.key(key)?, value, self.ttl, self.codec)
            .await
    }

    /// Stores `value` under `key` for `ttl`.
    pub async fn set_for<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<()> {
        self.cache
            .set_value(&self.key(key)?, value, Some(ttl), self.codec)
            .await
    }

    /// Stores many values for the handle's TTL, in one `set_many`.
    pub async fn set_many<T: Serialize + Sync, K: AsRef<str>>(
        &self,
        entries: &[(K, T)],
    ) -> Result<()> {
        let keyed = entries
            .iter()
            .map(|(k, v)| Ok((self.key(k.as_ref())?, v)))
            .collect::<Result<Vec<_>>>()?;
        self.cache
            .set_many_values(&keyed, self.ttl, self.codec)
            .await
    }

    /// Stores many values, each for its own TTL (the handle's for `None`), in one
    /// [`KvCache::set_many_with_ttls`].
    pub async fn set_many_with_ttls<T: Serialize + Sync, K: AsRef<str>>(
        &self,
        entries: &[(K, T, Option<Duration>)],
    ) -> Result<()> {
        let keyed = entries
            .iter()
            .map(|(k, v, ttl)| Ok((self.key(k.as_ref())?, v, ttl.or(self.ttl))))
            .collect::<Result<Vec<_>>>()?;
        self.cache
            .set_many_values_with_ttls(&keyed, self.codec)
            .await
    }

    /// The value of `key`, or `load()`'s, stored for the handle's TTL
    /// ([`KvCacheExt::get_or_load`]: single flight on a tiered cache).
    pub async fn get_or_load<T, F, Fut>(&self, key: &str, load: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
    {
        self.cache
            .get_or_load(&self.key(key)?, self.ttl, self.codec, load)
            .await
    }

    /// The values of `keys`, loading the missing ones
    /// ([`KvCacheExt::get_many_or_load`]): `load` gets the missing keys (without
    /// the namespace) and returns `(key, value)` pairs for those it found.
    pub async fn get_many_or_load<T, K, F, Fut>(
        &self,
        keys: &[K],
        mut load: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: Serialize + DeserializeOwned + Send + Sync,
        K: AsRef<str>,
        F: FnMut(Vec<String>) -> Fut + Send,
        Fut: Future<Output = Result<Vec<(String, T)>>> + Send,
    {
        let full = self.keys(keys)?;
        let namespace = self.namespace.as_str();
        self.cache
            .get_many_or_load(
                &full,
                self.ttl,
                self.codec,
                move |missing: Vec<CacheKey>| {
                    let names = missing.into_iter().map(|k| k.key().to_string()).collect();
                    let loaded = load(names);
                    async move {
                        loaded
                            .await?
                            .into_iter()
                            .map(|(k, v)| Ok((CacheKey::new(namespace, k)?, v)))
                            .collect()
                    }
                },
            )
            .await
    }

    /// Stores `value` under `key` for the handle's TTL with `aliases`, each a
    /// `(namespace, key)` pair (`("phone", "+5511999990000")`), replacing the
    /// entry's previous aliases ([`KvCache::set_with_aliases`]). `InvalidInput`
    /// for an alias no key could have (an empty part), and nothing is written.
    pub async fn set_with_aliases<T: Serialize + Sync + ?Sized>(
        &self,
        key: &str,
        value: &T,
        aliases: &[(&str, &str)],
    ) -> Result<()> {
        let aliases = aliases
            .iter()
            .map(|(ns, k)| CacheKey::new(*ns, *k))
            .collect::<Result<Vec<_>>>()?;
        self.cache
            .set_value_with_aliases(&self.key(key)?, value, self.ttl, &aliases, self.codec)
            .await
    }

    /// The entry of this namespace that alias `(alias_namespace, alias)` belongs
    /// to: its key (without the namespace) and value, decoded
    /// ([`KvCache::get_by_alias`]). `None` when the alias belongs to no live entry,
    /// or to one of another namespace.
    pub async fn get_by_alias<T: DeserializeOwned>(
        &self,
        alias_namespace: &str,
        alias: &str,
    ) -> Result<Option<(String, T)>> {
        let alias = CacheKey::new(alias_namespace, alias)?;
        // The namespace is checked before decoding: another namespace's entry may
        // hold another type.
        match self.cache.get_by_alias(&alias).await? {
            Some((key, bytes)) if key.namespace() == self.namespace => {
                let value = self
                    .codec
                    .decode(&bytes)
                    .map_err(|e| e.with_operation("get_by_alias").with_key(&key))?;
                Ok(Some((key.key().to_string(), value)))
            }
            _ => Ok(None),
        }
    }

    /// Deletes `key`; `false` when there was no entry.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        self.cache.delete(&self.key(key)?).await
    }

    /// Deletes many keys; how many existed.
    pub async fn delete_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<u64> {
        self.cache.delete_many(&self.keys(keys)?).await
    }

    /// Whether `key` has a live entry.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        self.cache.exists(&self.key(key)?).await
    }

    /// Sets `key`'s TTL; `false` when there is no entry.
    pub async fn expire(&self, key: &str, ttl: Duration) -> Result<bool> {
        self.cache.expire(&self.key(key)?, ttl).await
    }

    /// `key`'s remaining TTL, or `None` when there is no entry.
    pub async fn ttl_of(&self, key: &str) -> Result<Option<Duration>> {
        self.cache.ttl(&self.key(key)?).await
    }

    /// Deletes every entry of this namespace whose key starts with `prefix`.
    pub async fn clear_prefix(&self, prefix: &str) -> Result<u64> {
        self.cache.clear_prefix(&self.namespace, prefix).await
    }

    /// Deletes every entry of this namespace (no other namespace).
    pub async fn clear(&self) -> Result<u64> {
        self.clear_prefix("").await
    }
}

/// Typed documents of one focus scope, with TTL and codec set once. Made by
/// [`FocusHandles::scope`].
pub struct FocusScope<F: ?Sized = dyn FocusStore> {
    store: Arc<F>,
    scope: String,
    ttl: Option<Duration>,
    codec: Codec,
}

impl<F: ?Sized> Clone for FocusScope<F> {
    fn clone(&self) -> Self {
        FocusScope {
            store: self.store.clone(),
            scope: self.scope.clone(),
            ttl: self.ttl,
            codec: self.codec,
        }
    }
}

impl<F: ?Sized> std::fmt::Debug for FocusScope<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FocusScope")
            .field("scope", &self.scope)
            .field("ttl", &self.ttl)
            .field("codec", &self.codec)
            .finish()
    }
}

/// `scope(...)` on an `Arc` of any [`FocusStore`].
pub trait FocusHandles<F: ?Sized> {
    /// A handle on the documents of `scope`, with the store's focus TTL and the
    /// default codec (JSON; `chatstate::Stores::scope` uses the configured one);
    /// `InvalidInput` for an invalid scope.
    fn scope(&self, scope: &str) -> Result<FocusScope<F>>;
}

impl<F: FocusStore + ?Sized> FocusHandles<F> for Arc<F> {
    fn scope(&self, scope: &str) -> Result<FocusScope<F>> {
        check_scope("focus scope", scope)?;
        Ok(FocusScope {
            store: self.clone(),
            scope: scope.to_string(),
            ttl: None,
            codec: Codec::default(),
        })
    }
}

/// A focus document decoded, with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The document's name in its scope.
    pub name: String,
    /// The value.
    pub value: T,
    /// Its version (see [`FocusStore::put`]).
    pub version: u64,
}

impl<F: FocusStore + ?Sized> FocusScope<F> {
    /// The TTL of every put through this handle (reset at each put).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The codec of every document through this handle.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The scope.
    pub fn name(&self) -> &str {
        &self.scope
    }

    /// The full key of document `name`.
    pub fn key(&self, name: &str) -> Result<FocusKey> {
        FocusKey::new(self.scope.as_str(), name)
    }

    async fn put_mode<T: Serialize + Sync + ?Sized>(
        &self,
        name: &str,
        value: &T,
        mode: PutMode,
    ) -> Result<u64> {
        self.store
            .put_value(&self.key(name)?, value, mode, self.ttl, self.codec)
            .await
    }

    /// The document `name`, decoded, with its version.
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<Versioned<T>>> {
        Ok(self
            .store
            .get_value(&self.key(name)?, self.codec)
            .await?
            .map(|(value, version)| Versioned {
                name: name.to_string(),
                value,
                version,
            }))
    }

    /// Writes `value` whatever is there; returns the new version.
    pub async fn put<T: Serialize + Sync + ?Sized>(&self, name: &str, value: &T) -> Result<u64> {
        self.put_mode(name, value, PutMode::Overwrite).await
    }

    /// Writes `value` only if there is no document (`AlreadyExists` otherwise).
    pub async fn create<T: Serialize + Sync + ?Sized>(&self, name: &str, value: &T) -> Result<u64> {
        self.put_mode(name, value, PutMode::Create).await
    }

    /// Writes `value` only if the document is at `version` (`Conflict` otherwise).
    pub async fn put_if_version<T: Serialize + Sync + ?Sized>(
        &self,
        name: &str,
        value: &T,
        version: u64,
    ) -> Result<u64> {
        self.put_mode(name, value, PutMode::IfVersion(version))
            .await
    }

    /// Deletes document `name`; `false` when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool> {
        self.store.delete(&self.key(name)?).await
    }

    /// Every live document of the scope, decoded, sorted by name. A `Decode`
    /// error names the first document that is not a `T` in this codec.
    pub async fn list<T: DeserializeOwned>(&self) -> Result<Vec<Versioned<T>>> {
        self.store
            .list(&self.scope)
            .await?
            .into_iter()
            .map(|doc| {
                let value = self
                    .codec
                    .decode(&doc.value)
                    .map_err(|e| e.with_operation("list").with_key(&doc.key))?;
                Ok(Versioned {
                    name: doc.key.name().to_string(),
                    value,
                    version: doc.version,
                })
            })
            .collect()
    }
}

/// How a [`CounterFamily`] (or a batched counter handle) buckets what it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucketing {
    /// No bucket: one running total.
    None,
    /// The UTC day of the add.
    Daily,
    /// The UTC hour of the add.
    Hourly,
}

/// Counters of one name, with labels and a bucketing set once. Made by
/// [`CounterHandles::family`].
///
/// ```
/// # async fn demo(counters: std::sync::Arc<dyn chatstate_core::CounterSink>) -> chatstate_core::Result<()> {
/// use chatstate_core::CounterHandles;
/// let messages = counters.family("messages")?.label("tenant", "acme")?.hourly();
/// messages.add(1).await?;                                   // messages{tenant=acme} this hour
/// messages.add_with(&[("channel", "whatsapp")], 1).await?;  // + channel=whatsapp
/// # Ok(()) }
/// ```
pub struct CounterFamily<S: ?Sized = dyn CounterSink> {
    sink: Arc<S>,
    name: String,
    labels: Labels,
    bucketing: Bucketing,
    clock: SharedClock,
}

impl<S: ?Sized> Clone for CounterFamily<S> {
    fn clone(&self) -> Self {
        CounterFamily {
            sink: self.sink.clone(),
            name: self.name.clone(),
            labels: self.labels.clone(),
            bucketing: self.bucketing,
            clock: self.clock.clone(),
        }
    }
}

impl<S: ?Sized> std::fmt::Debug for CounterFamily<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterFamily")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("bucketing", &self.bucketing)
            .finish()
    }
}

/// `family(...)` on an `Arc` of any [`CounterSink`].
pub trait CounterHandles<S: ?Sized> {
    /// The counters called `name`, with no labels and no bucket yet;
    /// `InvalidInput` for an invalid name.
    fn family(&self, name: &str) -> Result<CounterFamily<S>>;
}

impl<S: CounterSink + ?Sized> CounterHandles<S> for Arc<S> {
    fn family(&self, name: &str) -> Result<CounterFamily<S>> {
        CounterKey::new(name)?;
        Ok(CounterFamily {
            sink: self.clone(),
            name: name.to_string(),
            labels: Labels::new(),
            bucketing: Bucketing::None,
            clock: system_clock(),
        })
    }
}

impl<S: CounterSink + ?Sized> CounterFamily<S> {
    /// Adds a label every counter of this handle carries.
    pub fn label(mut self, name: &str, value: &str) -> Result<Self> {
        self.labels = self.labels.with(name, value)?;
        Ok(self)
    }

    /// Counts per UTC day.
    pub fn daily(mut self) -> Self {
        self.bucketing = Bucketing::Daily;
        self
    }

    /// Counts per UTC hour.
    pub fn hourly(mut self) -> Self {
        self.bucketing = Bucketing::Hourly;
        self
    }

    /// Reads the time for buckets from `clock` (tests move a `ManualClock`).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The counter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bucket an add made now lands in.
    pub fn bucket_now(&self) -> Option<Bucket> {
        let now = self.clock.now();
        match self.bucketing {
            Bucketing::None => None,
            Bucketing::Daily => Some(Bucket::day_of(now)),
            Bucketing::Hourly => Some(Bucket::hour_of(now)),
        }
    }

    /// The key of this family's counter with `extra` labels added, in the bucket of
    /// now: what [`CounterFamily::add_with`] adds to.
    pub fn key(&self, extra: &[(&str, &str)]) -> Result<CounterKey> {
        let mut labels = self.labels.clone();
        for (k, v) in extra {
            labels = labels.with(*k, *v)?;
        }
        let key = CounterKey::new(self.name.as_str())?.with_labels(labels);
        Ok(match self.bucket_now() {
            Some(b) => key.in_bucket(b),
            None => key,
        })
    }

    /// Adds `delta` to this family's counter (its labels, the bucket of now);
    /// returns the new value.
    pub async fn add(&self, delta: i64) -> Result<i64> {
        self.sink.add(&self.key(&[])?, delta).await
    }

    /// Adds `delta` to the counter with `extra` labels besides the family's.
    pub async fn add_with(&self, extra: &[(&str, &str)], delta: i64) -> Result<i64> {
        self.sink.add(&self.key(extra)?, delta).await
    }

    /// The value of this family's counter in the bucket of now.
    pub async fn get(&self) -> Result<i64> {
        self.sink.get(&self.key(&[])?).await
    }

    /// The value of the counter with `extra` labels, in the bucket of now.
    pub async fn get_with(&self, extra: &[(&str, &str)]) -> Result<i64> {
        self.sink.get(&self.key(extra)?).await
    }

    /// Every counter of this name in `bucket` (the bucket of now when `None` and
    /// the family is bucketed), with its labels and value, keeping those that carry
    /// all of the family's labels.
    pub async fn list(&self, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        let bucket = bucket.or_else(|| self.bucket_now());
        let all = self.sink.list(&self.name, bucket).await?;
        Ok(all
            .into_iter()
            .filter(|(labels, _)| {
                self.labels
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect())
    }
}
