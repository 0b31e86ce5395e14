//! KvCache on the file store: one record per entry, the value as its payload and
//! the entry's aliases in its metadata; one record per alias naming its entry.
//!
//! An alias resolves while both agree: its record names the entry, and the live
//! entry lists it. An aliased write writes the entry first, then the alias records
//! (each under its own stripe lock, never nested); a reader between the two finds a
//! new alias not resolving yet, never a wrong entry. Records of dropped aliases that
//! still name the entry are removed; any left behind (a crash between the writes)
//! name an entry that no longer lists them, so they resolve to nothing and the
//! sweeper removes them at their deadline.

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
    /// The aliases the entry was given, sorted (absent in files of older versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) aliases: Vec<CacheKey>,
}

/// An alias file's metadata (no payload).
#[derive(Serialize, Deserialize)]
struct AliasMeta {
    alias: CacheKey,
    entry: CacheKey,
}

/// A live entry: value, deadline, the aliases it lists.
pub(crate) type Entry = (Bytes, Timestamp, Vec<CacheKey>);

pub(crate) fn read_entry(inner: &Inner, key: &CacheKey, now: Timestamp) -> Result<Option<Entry>> {
    let path = inner.layout.cache(key);
    match inner.read_live::<CacheMeta>(&path, Kind::Cache, now)? {
        Some((meta, _)) if meta.key != *key => Err(collision(&path)),
        Some((meta, record)) => Ok(Some((
            Bytes::copy_from_slice(record.payload()),
            record.header.deadline,
            meta.aliases,
        ))),
        None => Ok(None),
    }
}

/// The aliases of `key`'s live entry (`None`: no live entry), without copying
/// its value: what a plain set keeps and a delete drops.
fn entry_aliases(inner: &Inner, key: &CacheKey, now: Timestamp) -> Result<Option<Vec<CacheKey>>> {
    let path = inner.layout.cache(key);
    match inner.read_live::<CacheMeta>(&path, Kind::Cache, now)? {
        Some((meta, _)) if meta.key != *key => Err(collision(&path)),
        Some((meta, _)) => Ok(Some(meta.aliases)),
        None => Ok(None),
    }
}

pub(crate) fn read_cache(
    inner: &Inner,
    key: &CacheKey,
    now: Timestamp,
) -> Result<Option<(Bytes, Timestamp)>> {
    Ok(read_entry(inner, key, now)?.map(|(v, d, _)| (v, d)))
}

/// The entry alias `alias`'s live record names.
fn read_alias(inner: &Inner, alias: &CacheKey, now: Timestamp) -> Result<Option<CacheKey>> {
    let path = inner.layout.cache_alias(alias);
    match inner.read_live::<AliasMeta>(&path, Kind::CacheAlias, now)? {
        Some((meta, _)) if meta.alias != *alias => Err(collision(&path)),
        Some((meta, _)) => Ok(Some(meta.entry)),
        None => Ok(None),
    }
}

/// Of `listed` (an entry's aliases), those whose record names `key`: the aliases
/// that resolve to it.
pub(crate) fn live_aliases(
    inner: &Inner,
    key: &CacheKey,
    listed: Vec<CacheKey>,
    now: Timestamp,
) -> Result<Vec<CacheKey>> {
    let mut out = Vec::with_capacity(listed.len());
    for alias in listed {
        if read_alias(inner, &alias, now)?.as_ref() == Some(key) {
            out.push(alias);
        }
    }
    Ok(out)
}

/// Removes the records of `aliases` that still name `key`.
fn drop_alias_records(inner: &Inner, key: &CacheKey, aliases: &[CacheKey]) -> Result<()> {
    for alias in aliases {
        let path = inner.layout.cache_alias(alias);
        let _g = inner.stripes.lock(&path)?;
        if read_alias(inner, alias, inner.now())?.as_ref() == Some(key) {
            remove_record(inner, &path)?;
        }
    }
    Ok(())
}

/// Writes `value` under `key` until `deadline` with exactly `aliases` (checked),
/// then their records (see the module docs).
pub(crate) fn write_aliased(
    inner: &Inner,
    key: &CacheKey,
    value: &[u8],
    aliases: Vec<CacheKey>,
    deadline: Timestamp,
) -> Result<()> {
    let path = inner.layout.cache(key);
    let meta = CacheMeta {
        key: key.clone(),
        aliases,
    };
    format::check_body_len(&path, meta_json(&meta)?.len(), value.len())?;
    let old = {
        let _g = inner.stripes.lock(&path)?;
        let old = read_entry(inner, key, inner.now())?.map(|(_, _, a)| a);
        inner.write(&path, Kind::Cache, deadline, &meta, value)?;
        old.unwrap_or_default()
    };
    for alias in &meta.aliases {
        let path = inner.layout.cache_alias(alias);
        let _g = inner.stripes.lock(&path)?;
        let record = AliasMeta {
            alias: alias.clone(),
            entry: key.clone(),
        };
        inner.write(&path, Kind::CacheAlias, deadline, &record, &[])?;
    }
    let dropped: Vec<CacheKey> = old
        .into_iter()
        .filter(|a| !meta.aliases.contains(a))
        .collect();
    drop_alias_records(inner, key, &dropped)
}

/// Removes the entry `key` (and the records of its aliases); whether it was live.
fn remove_entry(inner: &Inner, key: &CacheKey) -> Result<bool> {
    let path = inner.layout.cache(key);
    let (live, aliases) = {
        let _g = inner.stripes.lock(&path)?;
        // An unreadable entry is removed all the same (as `remove_record` does).
        let aliases = entry_aliases(inner, key, inner.now())
            .ok()
            .flatten()
            .unwrap_or_default();
        (remove_record(inner, &path)?, aliases)
    };
    drop_alias_records(inner, key, &aliases)?;
    Ok(live)
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
            // Every entry must fit the record format before any is written (the
            // aliases a live entry keeps are checked with it, under its lock).
            for (key, value, _) in &entries {
                let meta = meta_json(&CacheMeta {
                    key: key.clone(),
                    aliases: Vec::new(),
                })?;
                format::check_body_len(&inner.layout.cache(key), meta.len(), value.len())?;
            }
            for ((key, value, _), ttl) in entries.into_iter().zip(ttls) {
                let path = inner.layout.cache(&key);
                let _g = inner.stripes.lock(&path)?;
                let now = inner.now();
                // A plain set keeps a live entry's aliases (their records keep
                // their own deadlines).
                let aliases = entry_aliases(inner, &key, now)?.unwrap_or_default();
                let meta = CacheMeta { key, aliases };
                format::check_body_len(&path, meta_json(&meta)?.len(), value.len())?;
                inner.write(&path, Kind::Cache, now.plus(ttl), &meta, &value)?;
            }
            Ok(())
        })
        .await
        .in_op("set_many_with_ttls")
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
        let key = key.clone();
        self.blocking(move |inner| {
            let deadline = inner.now().plus(ttl);
            write_aliased(inner, &key, &value, aliases, deadline)
        })
        .await
        .in_op("set_with_aliases")
    }

    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        let alias = alias.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            let Some(key) = read_alias(inner, &alias, now)? else {
                return Ok(None);
            };
            Ok(read_entry(inner, &key, now)?
                .filter(|(_, _, listed)| listed.contains(&alias))
                .map(|(value, _, _)| (key, value)))
        })
        .await
        .in_op("get_by_alias")
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| remove_entry(inner, &key))
            .await
            .in_op("delete")
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let mut n = 0;
            for key in keys {
                n += u64::from(remove_entry(inner, &key)?);
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
            let Some((value, _, aliases)) = read_entry(inner, &key, now)? else {
                return Ok(false);
            };
            let meta = CacheMeta { key, aliases };
            inner.write(&path, Kind::Cache, now.plus(ttl), &meta, &value)?;
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
                    removed += u64::from(remove_entry(inner, &meta.key)?);
                }
            }
            // The aliases named in the namespace.
            let dir = inner.layout.cache_alias_dir(&namespace);
            for name in record_names(&dir)? {
                let path = dir.join(&name);
                let now = inner.now();
                match inner.read_live::<AliasMeta>(&path, Kind::CacheAlias, now) {
                    Ok(Some((meta, _))) if meta.alias.key().starts_with(&key_prefix) => {
                        let _g = inner.stripes.lock(&path)?;
                        remove_record(inner, &path)?;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "chatstate-file clear_prefix skips an unreadable alias");
                    }
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
