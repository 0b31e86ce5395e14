//! KvCache in memory: entries and aliases in one map pair under one lock, so every
//! call — aliased writes included — is atomic.

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::key::check_scope;
use chatstate_core::{CacheKey, KvCache, Result, ResultExt, StoreSettings, Timestamp};

use crate::expiring::Expiring;
use crate::{MemoryStore, lock};

/// A namespace and key, as the maps order them.
type Pair = (String, String);

fn cache_key(key: &CacheKey) -> Pair {
    (key.namespace().to_string(), key.key().to_string())
}

/// One entry: its value and the aliases it was given, sorted.
pub(crate) struct Entry {
    pub(crate) value: Bytes,
    pub(crate) aliases: Vec<CacheKey>,
}

/// The cache: entries, and each alias's entry (with the alias's own deadline). An
/// alias resolves while both agree: its mapping names the entry, and the live entry
/// lists it. Every change here keeps them in agreement; the check on reads keeps
/// an expired side from resolving.
#[derive(Default)]
pub(crate) struct CacheMap {
    pub(crate) entries: Expiring<Pair, Entry>,
    pub(crate) aliases: Expiring<Pair, CacheKey>,
}

impl CacheMap {
    /// The live value of `key`.
    pub(crate) fn value(&self, key: &Pair, now: Timestamp) -> Option<&Bytes> {
        self.entries.get(key, now).map(|e| &e.value)
    }

    /// The aliases of a live entry that resolve to it.
    pub(crate) fn live_aliases(&self, key: &CacheKey, now: Timestamp) -> Vec<CacheKey> {
        let Some(entry) = self.entries.get(&cache_key(key), now) else {
            return Vec::new();
        };
        entry
            .aliases
            .iter()
            .filter(|a| self.aliases.get(&cache_key(a), now) == Some(key))
            .cloned()
            .collect()
    }

    /// Writes `value` under `key` until `deadline`, keeping a live entry's aliases.
    pub(crate) fn set(
        &mut self,
        key: &CacheKey,
        value: Bytes,
        deadline: Timestamp,
        now: Timestamp,
    ) {
        let k = cache_key(key);
        if let Some(entry) = self.entries.get_mut(&k, now) {
            entry.value = value;
            self.entries.set_deadline(&k, deadline, now);
        } else {
            // No live entry: a new one with no aliases. A mapping left by an
            // expired entry resolves to nothing (`resolve` asks the entry).
            self.entries.insert(
                k,
                Entry {
                    value,
                    aliases: Vec::new(),
                },
                deadline,
            );
        }
    }

    /// Writes `value` under `key` with exactly `aliases` (checked), all until
    /// `deadline`: the entry's other aliases are dropped, and each of `aliases` is
    /// taken from the entry it belonged to.
    pub(crate) fn set_with_aliases(
        &mut self,
        key: &CacheKey,
        value: Bytes,
        aliases: Vec<CacheKey>,
        deadline: Timestamp,
        now: Timestamp,
    ) {
        self.drop_aliases(key, now);
        for alias in &aliases {
            self.unbind(alias, now);
            self.aliases.insert(cache_key(alias), key.clone(), deadline);
        }
        self.entries
            .insert(cache_key(key), Entry { value, aliases }, deadline);
    }

    /// Removes the entry and the aliases that resolve to it; whether it was live.
    pub(crate) fn remove(&mut self, key: &CacheKey, now: Timestamp) -> bool {
        self.drop_aliases(key, now);
        self.entries.remove(&cache_key(key), now).is_some()
    }

    /// Takes `alias` from the entry it belongs to (the mapping and the entry's
    /// list); whether there was a mapping.
    fn unbind(&mut self, alias: &CacheKey, now: Timestamp) -> bool {
        let Some(owner) = self.aliases.remove(&cache_key(alias), now) else {
            return false;
        };
        if let Some(e) = self.entries.get_mut(&cache_key(&owner), now) {
            e.aliases.retain(|x| x != alias);
        }
        true
    }

    /// Removes the alias mappings that name `key` (its entry keeps its value).
    fn drop_aliases(&mut self, key: &CacheKey, now: Timestamp) {
        let Some(entry) = self.entries.get_mut(&cache_key(key), now) else {
            return;
        };
        for alias in std::mem::take(&mut entry.aliases) {
            let a = cache_key(&alias);
            if self.aliases.get(&a, now) == Some(key) {
                self.aliases.remove(&a, now);
            }
        }
    }

    /// The entry `alias` resolves to, with its value.
    fn resolve(&self, alias: &CacheKey, now: Timestamp) -> Option<(CacheKey, Bytes)> {
        let key = self.aliases.get(&cache_key(alias), now)?;
        let entry = self.entries.get(&cache_key(key), now)?;
        entry
            .aliases
            .contains(alias)
            .then(|| (key.clone(), entry.value.clone()))
    }

    /// The live keys of `map` in `namespace` starting with `key_prefix`.
    fn matching<V>(
        map: &Expiring<Pair, V>,
        namespace: &str,
        key_prefix: &str,
        now: Timestamp,
    ) -> Vec<Pair> {
        let start = (namespace.to_string(), key_prefix.to_string());
        map.range_from(Bound::Included(&start), now)
            .take_while(|((ns, k), _)| ns == namespace && k.starts_with(key_prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[async_trait]
impl KvCache for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).value(&cache_key(key), now).cloned())
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let now = self.inner.now();
        let cache = lock(&self.inner.cache);
        Ok(keys
            .iter()
            .map(|k| cache.value(&cache_key(k), now).cloned())
            .collect())
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_many_with_ttls(vec![(key.clone(), value, ttl)])
            .await
            .in_op("set")
    }

    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        let ttls = self
            .inner
            .settings
            .cache_write_ttls(entries.iter().map(|(k, v, t)| (k, v.len(), *t)))
            .in_op("set_many_with_ttls")?;
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        for ((key, value, _), ttl) in entries.into_iter().zip(ttls) {
            cache.set(&key, value, now.plus(ttl), now);
        }
        Ok(())
    }

    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        let (ttl, aliases) = self
            .inner
            .settings
            .cache_aliased_write(key, value.len(), ttl, aliases)
            .in_op("set_with_aliases")?;
        let now = self.inner.now();
        lock(&self.inner.cache).set_with_aliases(key, value, aliases, now.plus(ttl), now);
        Ok(())
    }

    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).resolve(alias, now))
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).remove(key, now))
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        Ok(keys.iter().filter(|k| cache.remove(k, now)).count() as u64)
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .value(&cache_key(key), now)
            .is_some())
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .entries
            .set_deadline(&cache_key(key), now.plus(ttl), now))
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .entries
            .deadline(&cache_key(key), now)
            .map(|d| now.until(d)))
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        let doomed = CacheMap::matching(&cache.entries, namespace, key_prefix, now);
        for (ns, k) in &doomed {
            if let Ok(key) = CacheKey::new(ns.as_str(), k.as_str()) {
                cache.remove(&key, now);
            }
        }
        for (ns, k) in CacheMap::matching(&cache.aliases, namespace, key_prefix, now) {
            if let Ok(alias) = CacheKey::new(ns.as_str(), k.as_str()) {
                cache.unbind(&alias, now);
            }
        }
        Ok(doomed.len() as u64)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}
