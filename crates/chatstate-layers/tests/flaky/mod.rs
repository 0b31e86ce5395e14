//! Test helpers for outages: a remote whose reads and writes fail on demand, and a
//! metrics recorder that counts, set thread-locally (no global recorder to fight
//! over; use it from a current-thread runtime).

#![allow(dead_code)] // each test file uses its own part

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    BusEvent, CacheKey, Error, ErrorKind, Invalidation, InvalidationBus, KvCache, LocalBus, Result,
};
use chatstate_memory::MemoryStore;

/// A memory store behind a switch: while reads (`get`, `get_many`, `exists`, `ttl`)
/// or writes (everything else) are set to fail, they fail with that kind and do
/// nothing. Counts the calls that reached it.
pub struct Flaky {
    pub inner: MemoryStore,
    reads: Mutex<Option<ErrorKind>>,
    writes: Mutex<Option<ErrorKind>>,
    calls: AtomicUsize,
}

impl Flaky {
    pub fn new(inner: MemoryStore) -> Arc<Self> {
        Arc::new(Flaky {
            inner,
            reads: Mutex::new(None),
            writes: Mutex::new(None),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn fail_reads(&self, kind: Option<ErrorKind>) {
        *self.reads.lock().unwrap() = kind;
    }

    pub fn fail_writes(&self, kind: Option<ErrorKind>) {
        *self.writes.lock().unwrap() = kind;
    }

    /// Every call fails with `Unavailable`, as while Redis is unreachable.
    pub fn down(&self) {
        self.fail_reads(Some(ErrorKind::Unavailable));
        self.fail_writes(Some(ErrorKind::Unavailable));
    }

    /// Every call reaches the store again.
    pub fn up(&self) {
        self.fail_reads(None);
        self.fail_writes(None);
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn read(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match *self.reads.lock().unwrap() {
            Some(kind) => Err(Error::new(kind, "injected read failure")),
            None => Ok(()),
        }
    }

    fn write(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match *self.writes.lock().unwrap() {
            Some(kind) => Err(Error::new(kind, "injected write failure")),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl KvCache for Flaky {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        self.read()?;
        self.inner.get(key).await
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        self.read()?;
        self.inner.get_many(keys).await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.write()?;
        KvCache::set(&self.inner, key, value, ttl).await
    }
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        self.write()?;
        self.inner.set_many(entries, ttl).await
    }
    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        self.write()?;
        self.inner.set_many_with_ttls(entries).await
    }
    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        self.write()?;
        self.inner.set_with_aliases(key, value, ttl, aliases).await
    }
    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        self.read()?;
        self.inner.get_by_alias(alias).await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.write()?;
        KvCache::delete(&self.inner, key).await
    }
    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        self.write()?;
        self.inner.delete_many(keys).await
    }
    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.read()?;
        self.inner.exists(key).await
    }
    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        self.write()?;
        self.inner.expire(key, ttl).await
    }
    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        self.read()?;
        KvCache::ttl(&self.inner, key).await
    }
    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        self.write()?;
        self.inner.clear_prefix(namespace, key_prefix).await
    }
}

/// An in-process bus whose publishing can fail, as a Redis bus does while Redis is
/// unreachable: listeners then hear nothing until [`FlakyBus::reconnect`] sends the
/// `Reset` a re-established subscription sends.
#[derive(Default)]
pub struct FlakyBus {
    pub inner: LocalBus,
    down: AtomicBool,
}

impl FlakyBus {
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    /// Publishing works again, and every listener hears `Reset`.
    pub fn reconnect(&self) {
        self.down.store(false, Ordering::SeqCst);
        self.inner.reset();
    }
}

#[async_trait]
impl InvalidationBus for FlakyBus {
    async fn publish(&self, origin: &str, what: &Invalidation) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "injected: bus down"));
        }
        self.inner.publish(origin, what).await
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusEvent> {
        self.inner.subscribe()
    }
}

/// Counts every counter increment by metric name and `operation` label
/// (`"name/operation"`).
#[derive(Default)]
pub struct Counting {
    counts: Arc<Mutex<HashMap<String, Arc<AtomicU64>>>>,
}

impl Counting {
    pub fn count(&self, name: &str, operation: &str) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .get(&format!("{name}/{operation}"))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

struct Handle(Arc<AtomicU64>);

impl metrics::CounterFn for Handle {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

impl metrics::Recorder for Counting {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let operation = key
            .labels()
            .find(|l| l.key() == "operation")
            .map_or(String::new(), |l| l.value().to_string());
        let name = format!("{}/{operation}", key.name());
        let counter = self.counts.lock().unwrap().entry(name).or_default().clone();
        metrics::Counter::from_arc(Arc::new(Handle(counter)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}
