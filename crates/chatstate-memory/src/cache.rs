//! KvCache in memory.

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::key::check_scope;
use chatstate_core::{CacheKey, KvCache, Result, ResultExt, StoreSettings};

use crate::{MemoryStore, lock};

fn cache_key(key: &CacheKey) -> (String, String) {
    (key.namespace().to_string(), key.key().to_string())
}

#[async_trait]
impl KvCache for MemoryStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).get(&cache_key(key), now).cloned())
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let now = self.inner.now();
        let cache = lock(&self.inner.cache);
        Ok(keys
            .iter()
            .map(|k| cache.get(&cache_key(k), now).cloned())
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
            cache.insert(cache_key(&key), value, now.plus(ttl));
        }
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .remove(&cache_key(key), now)
            .is_some())
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        Ok(keys
            .iter()
            .filter(|k| cache.remove(&cache_key(k), now).is_some())
            .count() as u64)
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).get(&cache_key(key), now).is_some())
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let now = self.inner.now();
        Ok(lock(&self.inner.cache).set_deadline(&cache_key(key), now.plus(ttl), now))
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.cache)
            .deadline(&cache_key(key), now)
            .map(|d| now.until(d)))
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let now = self.inner.now();
        let mut cache = lock(&self.inner.cache);
        let start = (namespace.to_string(), key_prefix.to_string());
        let doomed: Vec<(String, String)> = cache
            .range_from(Bound::Included(&start), now)
            .take_while(|((ns, k), _)| ns == namespace && k.starts_with(key_prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &doomed {
            cache.remove(k, now);
        }
        Ok(doomed.len() as u64)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}
