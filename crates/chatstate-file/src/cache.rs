//! KvCache on the file store: one record per entry, the value as its payload.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::{CacheKey, KvCache, Result, StoreSettings, Timestamp};
use serde::{Deserialize, Serialize};

use crate::format::{self, Kind};
use crate::{FileStore, Inner, collision, meta_json, record_names, remove_record};

/// A cache file's metadata (the payload is the value).
#[derive(Serialize, Deserialize)]
pub(crate) struct CacheMeta {
    pub(crate) key: CacheKey,
}

pub(crate) fn read_cache(
    inner: &Inner,
    key: &CacheKey,
    now: Timestamp,
) -> Result<Option<(Bytes, Timestamp)>> {
    let path = inner.layout.cache(key);
    match inner.read_live::<CacheMeta>(&path, Kind::Cache, now)? {
        Some((meta, _)) if meta.key != *key => Err(collision(&path)),
        Some((_, record)) => Ok(Some((
            Bytes::copy_from_slice(record.payload()),
            record.header.deadline,
        ))),
        None => Ok(None),
    }
}

#[async_trait]
impl KvCache for FileStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let key = key.clone();
        self.blocking(move |inner| Ok(read_cache(inner, &key, inner.now())?.map(|(v, _)| v)))
            .await
            .in_op("get")
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let now = inner.now();
            keys.iter()
                .map(|k| Ok(read_cache(inner, k, now)?.map(|(v, _)| v)))
                .collect()
        })
        .await
        .in_op("get_many")
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
        self.blocking(move |inner| {
            // Every entry must fit the record format before any is written.
            for (key, value, _) in &entries {
                let meta = meta_json(&CacheMeta { key: key.clone() })?;
                format::check_body_len(&inner.layout.cache(key), meta.len(), value.len())?;
            }
            for ((key, value, _), ttl) in entries.into_iter().zip(ttls) {
                let path = inner.layout.cache(&key);
                let _g = inner.stripes.lock(&path)?;
                let deadline = inner.now().plus(ttl);
                inner.write(&path, Kind::Cache, deadline, &CacheMeta { key }, &value)?;
            }
            Ok(())
        })
        .await
        .in_op("set_many_with_ttls")
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.cache(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let mut n = 0;
            for key in keys {
                let path = inner.layout.cache(&key);
                let _g = inner.stripes.lock(&path)?;
                n += u64::from(remove_record(inner, &path)?);
            }
            Ok(n)
        })
        .await
        .in_op("delete_many")
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| Ok(read_cache(inner, &key, inner.now())?.is_some()))
            .await
            .in_op("exists")
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.cache(&key);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((value, _)) = read_cache(inner, &key, now)? else {
                return Ok(false);
            };
            inner.write(
                &path,
                Kind::Cache,
                now.plus(ttl),
                &CacheMeta { key },
                &value,
            )?;
            Ok(true)
        })
        .await
        .in_op("expire")
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            Ok(read_cache(inner, &key, now)?.map(|(_, deadline)| now.until(deadline)))
        })
        .await
        .in_op("ttl")
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let (namespace, key_prefix) = (namespace.to_string(), key_prefix.to_string());
        self.blocking(move |inner| {
            let dir = inner.layout.cache_dir(&namespace);
            let mut removed = 0;
            for name in record_names(&dir)? {
                let path = dir.join(&name);
                let now = inner.now();
                let meta = match inner.read_live::<CacheMeta>(&path, Kind::Cache, now) {
                    Ok(Some((meta, _))) => meta,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "chatstate-file clear_prefix skips an unreadable entry");
                        continue;
                    }
                };
                if meta.key.namespace() == namespace && meta.key.key().starts_with(&key_prefix) {
                    let _g = inner.stripes.lock(&path)?;
                    removed += u64::from(remove_record(inner, &path)?);
                }
            }
            Ok(removed)
        })
        .await
        .in_op("clear_prefix")
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        FileStore::capabilities(self)
    }
}
