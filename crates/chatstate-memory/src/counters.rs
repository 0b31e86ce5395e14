//! CounterSink in memory: values and applied batch ids under one mutex, so a batch
//! and its id are applied together.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chatstate_core::transition::{apply_batch, counter_add};
use chatstate_core::{
    BatchOutcome, Bucket, CounterBatch, CounterKey, CounterSink, Labels, Result, ResultExt,
};

use crate::{MemoryStore, lock};

/// Sets a counter, cloning its key only the first time.
fn set_counter(values: &mut BTreeMap<CounterKey, i64>, key: &CounterKey, value: i64) {
    match values.get_mut(key) {
        Some(v) => *v = value,
        None => {
            values.insert(key.clone(), value);
        }
    }
}

#[async_trait]
impl CounterSink for MemoryStore {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        key.check().in_op("add")?;
        let mut counters = lock(&self.inner.counters);
        let current = counters.values.get(key).copied().unwrap_or(0);
        let value = counter_add(key, current, delta).in_op("add")?;
        set_counter(&mut counters.values, key, value);
        Ok(value)
    }

    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        let now = self.inner.now();
        let mut counters = lock(&self.inner.counters);
        if counters
            .applied_batches
            .get(&batch.id().to_string(), now)
            .is_some()
        {
            return Ok(BatchOutcome::Duplicate);
        }
        let values = &counters.values;
        let updates =
            apply_batch(batch, |key| Ok(values.get(key).copied().unwrap_or(0))).in_op("apply")?;
        for (key, value) in updates {
            set_counter(&mut counters.values, key, value);
        }
        let retention = now.plus(self.inner.settings.batch_retention);
        counters
            .applied_batches
            .insert(batch.id().to_string(), (), retention);
        Ok(BatchOutcome::Applied)
    }

    async fn get(&self, key: &CounterKey) -> Result<i64> {
        key.check().in_op("get")?;
        Ok(lock(&self.inner.counters)
            .values
            .get(key)
            .copied()
            .unwrap_or(0))
    }

    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        keys.iter()
            .try_for_each(CounterKey::check)
            .in_op("get_many")?;
        let counters = lock(&self.inner.counters);
        Ok(keys
            .iter()
            .map(|k| counters.values.get(k).copied().unwrap_or(0))
            .collect())
    }

    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        // CounterKey::new(name) checks the name and is the smallest key of that name.
        let start = CounterKey::new(name).in_op("list")?;
        bucket.map_or(Ok(()), Bucket::check).in_op("list")?;
        Ok(lock(&self.inner.counters)
            .values
            .range(start..)
            .take_while(|(k, _)| k.name() == name)
            .filter(|(k, _)| k.bucket() == bucket)
            .map(|(k, v)| (k.labels().clone(), *v))
            .collect())
    }

    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        key.check().in_op("delete")?;
        Ok(lock(&self.inner.counters).values.remove(key).is_some())
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}
