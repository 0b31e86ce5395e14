//! KvCache on Redis: a string per entry, always with a TTL. Reads and writes of many
//! keys are one round trip (MGET; a MULTI/EXEC of `SET … PX`); clearing a prefix
//! walks SCAN (never KEYS) and UNLINKs in batches.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::{CacheKey, Error, KvCache, Result, StoreSettings};
use redis::Value;

use crate::RedisStore;
use crate::conn::reply;

/// Keys asked per SCAN step and unlinked per UNLINK.
const SCAN_BATCH: usize = 1000;

/// A stored value, refused when it is over the value limit (written by something
/// else: chatstate never stores one).
fn value(v: Value, max: usize, key: &str) -> Result<Option<Bytes>> {
    match reply::bytes(v)? {
        Some(b) if b.len() > max => Err(Error::invalid_input(format!(
            "stored value is {} bytes, more than the limit of {max} (CHATSTATE_MAX_VALUE_BYTES)",
            b.len()
        ))
        .with_key(key)),
        other => Ok(other.map(Bytes::from)),
    }
}

#[async_trait]
impl KvCache for RedisStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let k = self.inner.layout.cache(key);
        let v: Value = self
            .inner
            .conn
            .cmd(redis::cmd("GET").arg(&k), "get", Some(&k))
            .await?;
        value(v, self.inner.settings.max_value_bytes, &k)
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = keys.iter().map(|k| self.inner.layout.cache(k)).collect();
        let v: Vec<Value> = self
            .inner
            .conn
            .cmd(
                redis::cmd("MGET").arg(&ks),
                "get_many",
                ks.first().map(String::as_str),
            )
            .await?;
        let max = self.inner.settings.max_value_bytes;
        v.into_iter()
            .zip(&ks)
            .map(|(v, k)| value(v, max, k))
            .collect()
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        let ttl = self
            .inner
            .settings
            .cache_write_ttl([(key, value.len())], ttl)
            .in_op("set")?;
        let k = self.inner.layout.cache(key);
        let _: Value = self
            .inner
            .conn
            .cmd(
                redis::cmd("SET")
                    .arg(&k)
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(ttl.as_millis() as u64),
                "set",
                Some(&k),
            )
            .await?;
        Ok(())
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let ttl = self
            .inner
            .settings
            .cache_write_ttl(entries.iter().map(|(k, v)| (k, v.len())), ttl)
            .in_op("set_many")?;
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let first = self.inner.layout.cache(&entries[0].0);
        for (key, value) in &entries {
            pipe.cmd("SET")
                .arg(self.inner.layout.cache(key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
        }
        let _: Value = self
            .inner
            .conn
            .pipe(&pipe, "set_many", Some(&first))
            .await?;
        Ok(())
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.delete_many(std::slice::from_ref(key)).await? > 0)
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let ks: Vec<String> = keys.iter().map(|k| self.inner.layout.cache(k)).collect();
        let n: u64 = self
            .inner
            .conn
            .cmd(
                redis::cmd("DEL").arg(&ks),
                "delete_many",
                ks.first().map(String::as_str),
            )
            .await?;
        Ok(n)
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let k = self.inner.layout.cache(key);
        let n: i64 = self
            .inner
            .conn
            .cmd(redis::cmd("EXISTS").arg(&k), "exists", Some(&k))
            .await?;
        Ok(n == 1)
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let k = self.inner.layout.cache(key);
        let n: i64 = self
            .inner
            .conn
            .cmd(
                redis::cmd("PEXPIRE").arg(&k).arg(ttl.as_millis() as u64),
                "expire",
                Some(&k),
            )
            .await?;
        Ok(n == 1)
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let k = self.inner.layout.cache(key);
        let pttl: i64 = self
            .inner
            .conn
            .cmd(redis::cmd("PTTL").arg(&k), "ttl", Some(&k))
            .await?;
        Ok(crate::pttl_to_duration(pttl))
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let pattern = self.inner.layout.cache_pattern(namespace, key_prefix);
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, found): (u64, Vec<String>) = self
                .inner
                .conn
                .cmd(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_BATCH)
                        .arg("TYPE")
                        .arg("string"),
                    "clear_prefix",
                    Some(&pattern),
                )
                .await?;
            for chunk in found.chunks(SCAN_BATCH) {
                let n: u64 = self
                    .inner
                    .conn
                    .cmd(
                        redis::cmd("UNLINK").arg(chunk),
                        "clear_prefix",
                        Some(&pattern),
                    )
                    .await?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(removed)
    }
}
