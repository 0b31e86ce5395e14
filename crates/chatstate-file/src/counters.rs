//! CounterSink on the file store: every counter and the recently applied batch ids
//! in one file, so a batch is applied atomically with its id.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chatstate_core::ResultExt;
use chatstate_core::key::check_scope;
use chatstate_core::transition::{apply_batch, counter_add};
use chatstate_core::{
    BatchOutcome, Bucket, Capabilities, CounterBatch, CounterKey, CounterSink, Labels, Result,
    Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::format::{Kind, NEVER};
use crate::{FileStore, Inner};

/// The counters file: every counter and the recently applied batch ids.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct CountersFile {
    pub(crate) values: Vec<(CounterKey, i64)>,
    applied: Vec<(String, Timestamp)>,
}

impl Inner {
    pub(crate) fn read_counters(&self) -> Result<CountersFile> {
        let path = self.layout.counters();
        Ok(self
            .read_live::<CountersFile>(&path, Kind::Counters, Timestamp(i64::MIN))?
            .map(|(f, _)| f)
            .unwrap_or_default())
    }

    /// Runs `change` on the counters under their lock and writes the result.
    pub(crate) fn change_counters<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<CounterKey, i64>, &mut CountersFile) -> Result<(T, bool)>,
    ) -> Result<T> {
        let path = self.layout.counters();
        let _g = self.stripes.lock(&path)?;
        let mut file = self.read_counters()?;
        let mut values: BTreeMap<CounterKey, i64> =
            std::mem::take(&mut file.values).into_iter().collect();
        let (out, changed) = change(&mut values, &mut file)?;
        if changed {
            let now = self.now();
            file.applied.retain(|(_, until)| *until > now);
            file.values = values.into_iter().collect();
            self.write(&path, Kind::Counters, NEVER, &file, &[])?;
        }
        Ok(out)
    }
}

#[async_trait]
impl CounterSink for FileStore {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        key.check().in_op("add")?;
        let key = key.clone();
        self.blocking(move |inner| {
            inner.change_counters(|values, _| {
                let v = values.entry(key.clone()).or_insert(0);
                *v = counter_add(&key, *v, delta)?;
                Ok((*v, true))
            })
        })
        .await
        .in_op("add")
    }

    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        let batch = batch.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            inner.change_counters(|values, file| {
                if file
                    .applied
                    .iter()
                    .any(|(id, until)| id == batch.id() && *until > now)
                {
                    return Ok((BatchOutcome::Duplicate, false));
                }
                let updates = apply_batch(&batch, |k| Ok(values.get(k).copied().unwrap_or(0)))?;
                let updates: Vec<_> = updates.into_iter().map(|(k, v)| (k.clone(), v)).collect();
                values.extend(updates);
                let retention = now.plus(inner.settings.batch_retention);
                file.applied.push((batch.id().to_string(), retention));
                Ok((BatchOutcome::Applied, true))
            })
        })
        .await
        .in_op("apply")
    }

    async fn get(&self, key: &CounterKey) -> Result<i64> {
        key.check().in_op("get")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let file = inner.read_counters()?;
            Ok(file
                .values
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, v)| *v))
        })
        .await
        .in_op("get")
    }

    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        keys.iter()
            .try_for_each(CounterKey::check)
            .in_op("get_many")?;
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let values: BTreeMap<CounterKey, i64> =
                inner.read_counters()?.values.into_iter().collect();
            Ok(keys
                .iter()
                .map(|k| values.get(k).copied().unwrap_or(0))
                .collect())
        })
        .await
        .in_op("get_many")
    }

    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        check_scope("counter name", name).in_op("list")?;
        bucket.map_or(Ok(()), Bucket::check).in_op("list")?;
        let name = name.to_string();
        self.blocking(move |inner| {
            let mut out: Vec<(Labels, i64)> = inner
                .read_counters()?
                .values
                .into_iter()
                .filter(|(k, _)| k.name() == name && k.bucket() == bucket)
                .map(|(k, v)| (k.labels().clone(), v))
                .collect();
            out.sort();
            Ok(out)
        })
        .await
        .in_op("list")
    }

    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        key.check().in_op("delete")?;
        let key = key.clone();
        self.blocking(move |inner| {
            inner.change_counters(|values, _| {
                let existed = values.remove(&key).is_some();
                Ok((existed, existed))
            })
        })
        .await
        .in_op("delete")
    }

    fn capabilities(&self) -> Capabilities {
        FileStore::capabilities(self)
    }
}
