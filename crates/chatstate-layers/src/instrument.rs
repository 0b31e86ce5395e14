//! Instrumentation: a layer that wraps any store and records, per operation and
//! namespace, the count, errors (by kind), a latency histogram and, for cache reads,
//! hits and misses.
//!
//! Three outputs, from the same measurements:
//! - [`Instrumented::snapshot`]: a serializable [`MetricsSnapshot`] with p50/p95/p99
//!   (hdrhistogram, microseconds) and the hit rate — for a `/metrics` JSON endpoint or
//!   a test; [`Instrumented::reset`] starts over.
//! - the [`metrics`] facade: `chatstate_operations_total`, `chatstate_errors_total`,
//!   `chatstate_operation_seconds`, `chatstate_cache_reads_total{result=hit|miss}`, all
//!   labelled `op` and `ns` — plug in Prometheus or whatever recorder the app runs.
//! - trimmed context: every append's receipt
//!   ([`AppendReceipt::trimmed_messages`]/[`trimmed_tokens`](AppendReceipt::trimmed_tokens))
//!   adds to `chatstate_messages_trimmed_total` and `chatstate_tokens_trimmed_total`
//!   (labelled `store="sessions"`) and to the snapshot's `trimmed_messages` and
//!   `trimmed_tokens`: the messages and estimated tokens the window kept out of
//!   prompts.
//! - [`tracing`]: every call runs in a `chatstate` debug span with `op` and `ns`.
//!
//! Labels: `store` (`cache`, `sessions`, `focus`, `counters`, `replies`), `op`, and
//! `ns` — the cache namespace (for a many-key call, its first key's), or the counter
//! name; empty for sessions, focus documents and replies, whose tenants, scopes and
//! runs are unbounded and would make a label per tenant. A reply `follow` is passed
//! through unmeasured: it returns a stream at once, and its reads are the backend's.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    AppendReceipt, BatchOutcome, BatchRead, BatchReads, Bucket, CacheKey, CounterBatch, CounterKey,
    CounterSink, Expected, FocusDoc, FocusKey, FocusStore, KvCache, Labels, Lease, LoadedSession,
    Loader, ManyLoader, NewMessage, Page, PutMode, ReadBatch, ReplyEvents, ReplyStream, Result,
    RunId, RunRead, RunStatus, Session, SessionKey, SessionPatch, SessionStore, Turn, TurnReceipt,
};
use hdrhistogram::Histogram;
use serde::Serialize;
use tracing::Instrument as _;

struct OpStats {
    count: u64,
    errors: BTreeMap<&'static str, u64>,
    latency_us: Histogram<u64>,
    hits: u64,
    misses: u64,
}

impl OpStats {
    fn new() -> Self {
        OpStats {
            count: 0,
            errors: BTreeMap::new(),
            // 1 µs to 1 hour, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant, valid histogram bounds"),
            hits: 0,
            misses: 0,
        }
    }
}

/// One operation's figures in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpSnapshot {
    /// The store (`cache`, `sessions`, `focus`, `counters`).
    pub store: &'static str,
    /// The operation (`get`, `append_messages`, ...).
    pub op: &'static str,
    /// The namespace label.
    pub ns: String,
    /// Calls.
    pub count: u64,
    /// Failed calls, by error kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 95th percentile, microseconds.
    pub p95_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Cache reads that found a value.
    pub hits: u64,
    /// Cache reads that found none.
    pub misses: u64,
}

/// Everything recorded since the last reset.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// Per operation and namespace, sorted.
    pub ops: Vec<OpSnapshot>,
    /// Cache reads that found a value, all namespaces.
    pub hits: u64,
    /// Cache reads that found none.
    pub misses: u64,
    /// hits / (hits + misses), or 0 with no reads.
    pub hit_rate: f64,
    /// Messages the appends' windows trimmed (from their receipts).
    pub trimmed_messages: u64,
    /// Their estimated tokens: context kept out of prompts.
    pub trimmed_tokens: u64,
}

#[derive(Default)]
struct Recorder {
    ops: Mutex<BTreeMap<(&'static str, &'static str, String), OpStats>>,
    /// Messages and estimated tokens trimmed by appends, from their receipts.
    trimmed: Mutex<(u64, u64)>,
}

impl Recorder {
    fn record_trimmed(&self, receipt: &AppendReceipt) {
        if receipt.trimmed_messages == 0 {
            return;
        }
        metrics::counter!("chatstate_messages_trimmed_total", "store" => "sessions")
            .increment(receipt.trimmed_messages);
        metrics::counter!("chatstate_tokens_trimmed_total", "store" => "sessions")
            .increment(receipt.trimmed_tokens);
        let mut t = self.trimmed.lock().unwrap_or_else(PoisonError::into_inner);
        t.0 = t.0.saturating_add(receipt.trimmed_messages);
        t.1 = t.1.saturating_add(receipt.trimmed_tokens);
    }

    fn record(
        &self,
        (store, op): (&'static str, &'static str),
        ns: &str,
        elapsed: Duration,
        error: Option<&'static str>,
        reads: (u64, u64),
    ) {
        let labels = [
            ("store", store.to_string()),
            ("op", op.to_string()),
            ("ns", ns.to_string()),
        ];
        metrics::counter!("chatstate_operations_total", &labels).increment(1);
        metrics::histogram!("chatstate_operation_seconds", &labels).record(elapsed.as_secs_f64());
        if let Some(kind) = error {
            let l = [
                ("store", store.to_string()),
                ("op", op.to_string()),
                ("ns", ns.to_string()),
                ("kind", kind.to_string()),
            ];
            metrics::counter!("chatstate_errors_total", &l).increment(1);
        }
        let (hits, misses) = reads;
        if hits > 0 {
            let l = [
                ("store", store.to_string()),
                ("op", op.to_string()),
                ("ns", ns.to_string()),
                ("result", "hit".to_string()),
            ];
            metrics::counter!("chatstate_cache_reads_total", &l).increment(hits);
        }
        if misses > 0 {
            let l = [
                ("store", store.to_string()),
                ("op", op.to_string()),
                ("ns", ns.to_string()),
                ("result", "miss".to_string()),
            ];
            metrics::counter!("chatstate_cache_reads_total", &l).increment(misses);
        }
        let mut ops = self.ops.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = ops
            .entry((store, op, ns.to_string()))
            .or_insert_with(OpStats::new);
        stats.count += 1;
        if let Some(kind) = error {
            *stats.errors.entry(kind).or_insert(0) += 1;
        }
        stats.hits += hits;
        stats.misses += misses;
        let us = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        stats.latency_us.saturating_record(us);
    }
}

/// Any store, measured. Implements every trait the wrapped store implements.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> chatstate_core::Result<()> {
/// use std::sync::Arc;
/// use chatstate_core::{CacheKey, KvCache, StoreSettings};
/// use chatstate_layers::Instrumented;
/// use chatstate_memory::MemoryStore;
///
/// let cache = Instrumented::new(MemoryStore::new(StoreSettings::default()));
/// let key = CacheKey::new("customers", "42")?;
/// cache.get(&key).await?; // a miss
/// let snap = cache.snapshot();
/// assert_eq!((snap.hits, snap.misses), (0, 1));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Instrumented<S> {
    inner: S,
    recorder: Arc<Recorder>,
}

impl<S> std::fmt::Debug for Instrumented<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instrumented").finish_non_exhaustive()
    }
}

impl<S> Instrumented<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Instrumented {
            inner,
            recorder: Arc::default(),
        }
    }

    /// Wraps `inner`, recording into the same figures as `self`: one snapshot for
    /// several stores (what `chatstate::Stores::instrumented` does).
    pub fn sharing<T>(&self, inner: T) -> Instrumented<T> {
        Instrumented {
            inner,
            recorder: self.recorder.clone(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Everything recorded since the last reset.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let ops = self
            .recorder
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut snap = MetricsSnapshot::default();
        for ((store, op, ns), s) in ops.iter() {
            snap.hits += s.hits;
            snap.misses += s.misses;
            snap.ops.push(OpSnapshot {
                store,
                op,
                ns: ns.clone(),
                count: s.count,
                errors: s.errors.clone(),
                p50_us: s.latency_us.value_at_quantile(0.50),
                p95_us: s.latency_us.value_at_quantile(0.95),
                p99_us: s.latency_us.value_at_quantile(0.99),
                hits: s.hits,
                misses: s.misses,
            });
        }
        let reads = snap.hits + snap.misses;
        snap.hit_rate = if reads == 0 {
            0.0
        } else {
            snap.hits as f64 / reads as f64
        };
        drop(ops);
        (snap.trimmed_messages, snap.trimmed_tokens) = *self
            .recorder
            .trimmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snap
    }

    /// Forgets everything recorded (the `metrics` facade's counters are the
    /// recorder's to reset).
    pub fn reset(&self) {
        self.recorder
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        *self
            .recorder
            .trimmed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (0, 0);
    }

    async fn measure<T, F>(
        &self,
        (store, op): (&'static str, &'static str),
        ns: &str,
        reads: impl FnOnce(&T) -> (u64, u64),
        call: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let span = tracing::debug_span!("chatstate", store, op, ns);
        let started = Instant::now();
        let result = call.instrument(span).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(v) => self
                .recorder
                .record((store, op), ns, elapsed, None, reads(v)),
            Err(e) => {
                let kind = Some(e.kind().as_str());
                self.recorder.record((store, op), ns, elapsed, kind, (0, 0))
            }
        }
        result
    }
}

fn none<T>(_: &T) -> (u64, u64) {
    (0, 0)
}

fn one(v: &Option<Bytes>) -> (u64, u64) {
    if v.is_some() { (1, 0) } else { (0, 1) }
}

#[allow(clippy::ptr_arg)] // called as `reads(&Vec<_>)` by `measure`
fn many(v: &Vec<Option<Bytes>>) -> (u64, u64) {
    let hits = v.iter().filter(|x| x.is_some()).count() as u64;
    (hits, v.len() as u64 - hits)
}

/// The `ns` label of stores whose keys are unbounded (tenants, scopes).
const NO_NS: &str = "";

#[async_trait]
impl<S: KvCache> KvCache for Instrumented<S> {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        self.measure(("cache", "get"), key.namespace(), one, self.inner.get(key))
            .await
    }
    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let ns = keys.first().map_or("", |k| k.namespace());
        self.measure(("cache", "get_many"), ns, many, self.inner.get_many(keys))
            .await
    }
    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.measure(
            ("cache", "set"),
            key.namespace(),
            none,
            self.inner.set(key, value, ttl),
        )
        .await
    }
    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let ns = entries
            .first()
            .map_or(String::new(), |(k, _)| k.namespace().to_string());
        self.measure(
            ("cache", "set_many"),
            &ns,
            none,
            self.inner.set_many(entries, ttl),
        )
        .await
    }
    async fn set_many_with_ttls(
        &self,
        entries: Vec<(CacheKey, Bytes, Option<Duration>)>,
    ) -> Result<()> {
        let ns = entries
            .first()
            .map_or(String::new(), |(k, _, _)| k.namespace().to_string());
        self.measure(
            ("cache", "set_many_with_ttls"),
            &ns,
            none,
            self.inner.set_many_with_ttls(entries),
        )
        .await
    }
    async fn set_with_aliases(
        &self,
        key: &CacheKey,
        value: Bytes,
        ttl: Option<Duration>,
        aliases: &[CacheKey],
    ) -> Result<()> {
        self.measure(
            ("cache", "set_with_aliases"),
            key.namespace(),
            none,
            self.inner.set_with_aliases(key, value, ttl, aliases),
        )
        .await
    }
    /// Labelled with the alias's namespace; a hit when the alias resolved.
    async fn get_by_alias(&self, alias: &CacheKey) -> Result<Option<(CacheKey, Bytes)>> {
        self.measure(
            ("cache", "get_by_alias"),
            alias.namespace(),
            |v: &Option<(CacheKey, Bytes)>| if v.is_some() { (1, 0) } else { (0, 1) },
            self.inner.get_by_alias(alias),
        )
        .await
    }
    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.measure(
            ("cache", "delete"),
            key.namespace(),
            none,
            self.inner.delete(key),
        )
        .await
    }
    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let ns = keys.first().map_or("", |k| k.namespace());
        self.measure(
            ("cache", "delete_many"),
            ns,
            none,
            self.inner.delete_many(keys),
        )
        .await
    }
    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.measure(
            ("cache", "exists"),
            key.namespace(),
            none,
            self.inner.exists(key),
        )
        .await
    }
    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        self.measure(
            ("cache", "expire"),
            key.namespace(),
            none,
            self.inner.expire(key, ttl),
        )
        .await
    }
    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        self.measure(("cache", "ttl"), key.namespace(), none, self.inner.ttl(key))
            .await
    }
    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        self.measure(
            ("cache", "clear_prefix"),
            namespace,
            none,
            self.inner.clear_prefix(namespace, key_prefix),
        )
        .await
    }

    /// Measured as `get_or_load`: a hit when the value came without the loader, a
    /// miss when the loader ran. Forwarded as it is, so a tiered cache inside keeps
    /// its single flight.
    async fn get_or_load_raw<'a>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        load: Loader<'a>,
    ) -> Result<Option<Bytes>> {
        let ran = AtomicBool::new(false);
        let watched: Loader<'_> = Box::new(|| {
            ran.store(true, Ordering::Relaxed);
            load()
        });
        self.measure(
            ("cache", "get_or_load"),
            key.namespace(),
            |_| {
                if ran.load(Ordering::Relaxed) {
                    (0, 1)
                } else {
                    (1, 0)
                }
            },
            self.inner.get_or_load_raw(key, ttl, watched),
        )
        .await
    }

    /// Measured as `get_many_or_load`: keys handed to the loader are misses, the
    /// others hits.
    async fn get_many_or_load_raw<'a>(
        &self,
        keys: &[CacheKey],
        ttl: Option<Duration>,
        mut load: ManyLoader<'a>,
    ) -> Result<Vec<Option<Bytes>>> {
        let asked = AtomicU64::new(0);
        let watched: ManyLoader<'_> = Box::new(|missing: Vec<CacheKey>| {
            asked.fetch_add(missing.len() as u64, Ordering::Relaxed);
            load(missing)
        });
        let ns = keys.first().map_or("", |k| k.namespace());
        self.measure(
            ("cache", "get_many_or_load"),
            ns,
            |v: &Vec<Option<Bytes>>| {
                let misses = asked.load(Ordering::Relaxed).min(v.len() as u64);
                (v.len() as u64 - misses, misses)
            },
            self.inner.get_many_or_load_raw(keys, ttl, watched),
        )
        .await
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        KvCache::capabilities(&self.inner)
    }
}

#[async_trait]
impl<S: ReadBatch> ReadBatch for Instrumented<S> {
    async fn read_batch(&self, reads: &BatchReads) -> Result<BatchRead> {
        self.measure(
            ("reads", "read_batch"),
            NO_NS,
            none,
            self.inner.read_batch(reads),
        )
        .await
    }
}

#[async_trait]
impl<S: SessionStore> SessionStore for Instrumented<S> {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        self.measure(
            ("sessions", "create"),
            NO_NS,
            none,
            self.inner.create(key, init),
        )
        .await
    }
    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        self.measure(
            ("sessions", "get_or_create"),
            NO_NS,
            none,
            self.inner.get_or_create(key),
        )
        .await
    }
    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        self.measure(("sessions", "get"), NO_NS, none, self.inner.get(key))
            .await
    }
    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        self.measure(
            ("sessions", "get_many"),
            NO_NS,
            none,
            self.inner.get_many(keys),
        )
        .await
    }
    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        self.measure(("sessions", "load"), NO_NS, none, self.inner.load(key))
            .await
    }
    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        let receipt = self
            .measure(
                ("sessions", "append_messages"),
                NO_NS,
                none,
                self.inner.append_messages(key, messages),
            )
            .await?;
        self.recorder.record_trimmed(&receipt);
        Ok(receipt)
    }
    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt> {
        let receipt = self
            .measure(
                ("sessions", "commit_turn"),
                NO_NS,
                none,
                self.inner.commit_turn(key, turn),
            )
            .await?;
        self.recorder.record_trimmed(&receipt.append);
        Ok(receipt)
    }
    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        self.measure(
            ("sessions", "set_data"),
            NO_NS,
            none,
            self.inner.set_data(key, name, value),
        )
        .await
    }
    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        self.measure(
            ("sessions", "get_data_many"),
            NO_NS,
            none,
            self.inner.get_data_many(key, names),
        )
        .await
    }
    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        self.measure(
            ("sessions", "delete_data"),
            NO_NS,
            none,
            self.inner.delete_data(key, name),
        )
        .await
    }
    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        self.measure(
            ("sessions", "update"),
            NO_NS,
            none,
            self.inner.update(key, patch, expected),
        )
        .await
    }
    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        self.measure(("sessions", "touch"), NO_NS, none, self.inner.touch(key))
            .await
    }
    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        self.measure(("sessions", "delete"), NO_NS, none, self.inner.delete(key))
            .await
    }
    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        self.measure(("sessions", "ttl"), NO_NS, none, self.inner.ttl(key))
            .await
    }
    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        self.measure(
            ("sessions", "list"),
            NO_NS,
            none,
            self.inner.list(tenant, cursor, limit),
        )
        .await
    }
    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        self.measure(
            ("sessions", "try_lock"),
            NO_NS,
            none,
            self.inner.try_lock(key, name, lease),
        )
        .await
    }
    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        self.measure(
            ("sessions", "extend_lock"),
            NO_NS,
            none,
            self.inner.extend_lock(held, lease),
        )
        .await
    }
    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        self.measure(
            ("sessions", "release_lock"),
            NO_NS,
            none,
            self.inner.release_lock(held),
        )
        .await
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        SessionStore::capabilities(&self.inner)
    }
}

#[async_trait]
impl<S: FocusStore> FocusStore for Instrumented<S> {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        self.measure(
            ("focus", "put"),
            NO_NS,
            none,
            self.inner.put(key, value, mode, ttl),
        )
        .await
    }
    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        self.measure(("focus", "get"), NO_NS, none, self.inner.get(key))
            .await
    }
    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        self.measure(("focus", "delete"), NO_NS, none, self.inner.delete(key))
            .await
    }
    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        self.measure(("focus", "list"), NO_NS, none, self.inner.list(scope))
            .await
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        FocusStore::capabilities(&self.inner)
    }
}

#[async_trait]
impl<S: CounterSink> CounterSink for Instrumented<S> {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        self.measure(
            ("counters", "add"),
            key.name(),
            none,
            self.inner.add(key, delta),
        )
        .await
    }
    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        self.measure(
            ("counters", "apply"),
            "batch",
            none,
            self.inner.apply(batch),
        )
        .await
    }
    async fn get(&self, key: &CounterKey) -> Result<i64> {
        self.measure(("counters", "get"), key.name(), none, self.inner.get(key))
            .await
    }
    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        let ns = keys.first().map_or("", |k| k.name());
        self.measure(
            ("counters", "get_many"),
            ns,
            none,
            self.inner.get_many(keys),
        )
        .await
    }
    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        self.measure(
            ("counters", "list"),
            name,
            none,
            self.inner.list(name, bucket),
        )
        .await
    }
    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        self.measure(
            ("counters", "delete"),
            key.name(),
            none,
            self.inner.delete(key),
        )
        .await
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        CounterSink::capabilities(&self.inner)
    }
}

#[async_trait]
impl<S: ReplyStream> ReplyStream for Instrumented<S> {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        self.measure(
            ("replies", "start"),
            NO_NS,
            none,
            self.inner.start(run, ttl),
        )
        .await
    }
    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        self.measure(
            ("replies", "append"),
            NO_NS,
            none,
            self.inner.append(run, text),
        )
        .await
    }
    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        self.measure(
            ("replies", "finish"),
            NO_NS,
            none,
            self.inner.finish(run, status),
        )
        .await
    }
    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        self.measure(("replies", "read"), NO_NS, none, self.inner.read(run, from))
            .await
    }
    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        self.inner.follow(run, from, idle_timeout)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        ReplyStream::capabilities(&self.inner)
    }
}
