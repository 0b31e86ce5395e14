//! FocusStore in memory.

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::key::check_scope;
use chatstate_core::model::check_put;
use chatstate_core::{FocusDoc, FocusKey, FocusStore, PutMode, Result, ResultExt};

use crate::{MemoryStore, lock};

fn focus_key(key: &FocusKey) -> (String, String) {
    (key.scope().to_string(), key.name().to_string())
}

#[async_trait]
impl FocusStore for MemoryStore {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let settings = &self.inner.settings;
        let ttl = settings.focus_put_ttl(value.len(), ttl).in_op("put")?;
        let now = self.inner.now();
        let mut focus = lock(&self.inner.focus);
        let k = focus_key(key);
        let existing = focus.get(&k, now).map(|d| d.version);
        let version =
            check_put(mode, existing).map_err(|e| e.with_operation("put").with_key(key))?;
        let doc = FocusDoc {
            key: key.clone(),
            value,
            version,
            updated_at: now,
        };
        focus.insert(k, doc.clone(), now.plus(ttl));
        Ok(doc)
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.focus).get(&focus_key(key), now).cloned())
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.focus)
            .remove(&focus_key(key), now)
            .is_some())
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        check_scope("focus scope", scope).in_op("list")?;
        let now = self.inner.now();
        let start = (scope.to_string(), String::new());
        Ok(lock(&self.inner.focus)
            .range_from(Bound::Included(&start), now)
            .take_while(|((s, _), _)| s == scope)
            .map(|(_, d)| d.clone())
            .collect())
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}
