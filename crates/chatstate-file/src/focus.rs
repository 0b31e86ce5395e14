//! FocusStore on the file store: one record per document, the value as its payload.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::model::check_put;
use chatstate_core::{ErrorKind, FocusDoc, FocusKey, FocusStore, PutMode, Result, Timestamp};
use serde::{Deserialize, Serialize};

use crate::format::Kind;
use crate::{FileStore, Inner, collision, record_names, remove_record};

/// A focus file's metadata (the payload is the value).
#[derive(Serialize, Deserialize)]
pub(crate) struct FocusMeta {
    pub(crate) key: FocusKey,
    pub(crate) version: u64,
    pub(crate) updated_at: Timestamp,
}

#[async_trait]
impl FocusStore for FileStore {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let settings = &self.inner.settings;
        let ttl = settings.focus_put_ttl(value.len(), ttl).in_op("put")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let existing = match inner.read_live::<FocusMeta>(&path, Kind::Focus, now) {
                Ok(Some((meta, _))) if meta.key != key => return Err(collision(&path)),
                Ok(Some((meta, _))) => Some(meta.version),
                Ok(None) => None,
                // A corrupt document can be overwritten, not compared against.
                Err(e) if e.kind() == ErrorKind::Decode && mode == PutMode::Overwrite => None,
                Err(e) => return Err(e),
            };
            let version = check_put(mode, existing).map_err(|e| e.with_key(&key))?;
            let meta = FocusMeta {
                key: key.clone(),
                version,
                updated_at: now,
            };
            inner.write(&path, Kind::Focus, now.plus(ttl), &meta, &value)?;
            Ok(FocusDoc {
                key,
                value,
                version,
                updated_at: now,
            })
        })
        .await
        .in_op("put")
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            read_focus(inner, &path, inner.now()).and_then(|doc| match doc {
                Some(d) if d.key != key => Err(collision(&path)),
                other => Ok(other),
            })
        })
        .await
        .in_op("get")
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        check_scope("focus scope", scope).in_op("list")?;
        let scope = scope.to_string();
        self.blocking(move |inner| {
            let dir = inner.layout.focus_dir(&scope);
            let now = inner.now();
            let mut docs = Vec::new();
            for name in record_names(&dir)? {
                match read_focus(inner, &dir.join(&name), now) {
                    Ok(Some(doc)) if doc.key.scope() == scope => docs.push(doc),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "chatstate-file list skips an unreadable focus document"),
                }
            }
            docs.sort_by(|a, b| a.key.name().cmp(b.key.name()));
            Ok(docs)
        })
        .await
        .in_op("list")
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        FileStore::capabilities(self)
    }
}

fn read_focus(inner: &Inner, path: &Path, now: Timestamp) -> Result<Option<FocusDoc>> {
    Ok(inner
        .read_live::<FocusMeta>(path, Kind::Focus, now)?
        .map(|(meta, record)| FocusDoc {
            key: meta.key,
            value: Bytes::copy_from_slice(record.payload()),
            version: meta.version,
            updated_at: meta.updated_at,
        }))
}
