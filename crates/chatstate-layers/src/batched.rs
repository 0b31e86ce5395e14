//! Batched counters: count locally in nanoseconds, write every interval in one round
//! trip, never lose or double-count a delta.
//!
//! `add` only touches the calling thread's stripe (a short mutex on one of a few
//! maps, one per thread up to twice the core count, so two threads meet only when
//! they share a stripe, whatever counters they add to). A hot counter can be
//! resolved once into a [`CounterHandle`] (key, labels and day/hour bucketing):
//! its `add` is one compare-and-swap on the handle's own slot for the thread's
//! stripe, no hashing and no lock (the stripe's lock is taken only when the bucket
//! rolls or the delta would leave the i64 range). A handle's deltas travel exactly
//! like keyed ones from there on. A flush moves
//! every pending delta into the queue of [`CounterBatch`]es and applies them, oldest
//! first, with [`CounterSink::apply`] — one round trip on Redis per batch, atomic,
//! idempotent by the batch id.
//!
//! **Retries.** A batch that fails for any reason other than a deterministic refusal
//! (a temporary error, a timeout, `Internal`, `Conflict`, an error kind added later)
//! keeps its id and its contents, and the next flush applies it again before anything
//! newer. If an earlier attempt had in fact been applied (the reply was lost), the
//! sink recognises the id and answers `Duplicate`: nothing is counted twice — as long
//! as the retry comes within the sink's batch retention, which the
//! [builder](BatchedCountersBuilder::build) checks covers at least
//! [`chatstate_core::config::BATCH_RETENTION_FACTOR`] flush intervals. (An outage longer than
//! the retention can still double-count the one batch whose reply was lost.)
//!
//! **Refusals.** A deterministic refusal — [`ErrorKind::InvalidInput`] (an overflow),
//! [`ErrorKind::WrongType`] or [`ErrorKind::Decode`] — is the only reason a delta is
//! dropped. The sink applies a batch atomically, so a refused batch wrote nothing: it
//! is split in two halves (new ids, derived from the refused one) until the refused
//! counters stand alone, so one bad counter does not block the others and costs about
//! 2·log2(batch size) round trips. A counter refused on its own is dropped, logged,
//! counted in [`FlushStats::dropped_counters`] and listed in the next
//! [`FlushReport::dropped`] returned by [`BatchedCounters::flush`] or
//! [`BatchedCounters::shutdown`] (drops made by the background flush included).
//!
//! **Bounded memory.** A batch that was sent at least once may have landed, so its id
//! and contents never change again; new deltas are merged into the batches never
//! sent. During an outage the queue is therefore one attempted batch plus one set of
//! never-sent batches holding each counter once: memory grows with the number of
//! distinct counters, not with the outage's length. A batch holds at most
//! [`BatchedCountersBuilder::max_batch`] counters (default
//! [`DEFAULT_MAX_BATCH`]); more make more batches, each with its own id, so one flush
//! never sends one huge script. [`BatchedCounters::backlog`] says how long the queue
//! is.
//!
//! **Overflow.** Nothing saturates. An `add` that would take a counter's pending
//! delta past the i64 range moves the delta so far aside and starts a new one; the
//! two reach the sink in different batches of the same flush. If the stored value
//! cannot take them, the sink refuses (`InvalidInput`) and the flush reports the
//! counter dropped.
//!
//! **What can be lost.** [`BatchedCounters::shutdown`] flushes before it returns. A
//! process killed abruptly loses what was added since the last successful flush: one
//! interval's worth while the sink is reachable, everything counted during an outage
//! while it is not. That is the price of counting without a round trip; use the sink
//! directly for counts that must never be lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chatstate_core::{
    BatchOutcome, Bucket, Clock, Config, CounterBatch, CounterKey, CounterSink, Error, ErrorKind,
    Result, SharedClock, StoreSettings, Timestamp,
};
use serde::Serialize;

/// The stripe of the calling thread: threads are numbered in the order they first
/// add, so the threads of a runtime (started together) get different stripes.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

/// Stripes: twice the cores, a power of two, 4 to 64 (a thread's stripe is its
/// number modulo this; threads beyond it share stripes, which costs waiting, never
/// a count).
fn stripe_count() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get() * 2)
        .next_power_of_two()
        .clamp(4, 64)
}

/// Counters per batch by default (see [`BatchedCountersBuilder::max_batch`]).
pub const DEFAULT_MAX_BATCH: usize = 1_000;

/// The default flush interval (`CHATSTATE_COUNTER_FLUSH_SECONDS`'s default).
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// How long one flush attempt may take by default before it is abandoned and retried.
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a read includes deltas not yet flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Only what the sink has stored (what other instances see).
    Stored,
    /// The stored value plus this instance's pending deltas.
    IncludingPending,
}

/// Flush statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlushStats {
    /// Batches applied (first try or retry).
    pub batches_applied: u64,
    /// Retried batches the sink already had (a lost reply), counted once.
    pub duplicates: u64,
    /// Flush attempts that failed or timed out (their batch is kept).
    pub failures: u64,
    /// Counter deltas refused deterministically (wrong type, overflow, undecodable
    /// stored value) and dropped.
    pub dropped_counters: u64,
}

/// A counter delta the sink refused deterministically, and that was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedCounter {
    /// The counter.
    pub key: CounterKey,
    /// The delta that was not counted (deltas refused with the same kind since the
    /// last report are summed, as long as the sum fits an i64).
    pub delta: i64,
    /// Why: [`ErrorKind::InvalidInput`], [`ErrorKind::WrongType`] or
    /// [`ErrorKind::Decode`].
    pub kind: ErrorKind,
}

/// The queue of batches not confirmed applied yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Backlog {
    /// Batches waiting (an attempted one first, if any).
    pub batches: usize,
    /// Counter deltas in those batches.
    pub counters: usize,
    /// Counters added since the last flush, not in a batch yet.
    pub unbatched: usize,
}

/// What a [`BatchedCounters::flush`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Batches the sink applied.
    pub batches_applied: u64,
    /// Batches the sink already had (an earlier attempt landed, its reply was lost).
    pub duplicates: u64,
    /// Counters dropped since the last report (by this flush or a background one),
    /// because the sink refused them deterministically. Empty when every delta was
    /// counted.
    pub dropped: Vec<DroppedCounter>,
    /// What is still queued after the flush (new adds that came in meanwhile).
    pub backlog: Backlog,
}

impl FlushReport {
    /// Whether nothing was dropped.
    pub fn is_complete(&self) -> bool {
        self.dropped.is_empty()
    }

    /// The report, or, when a counter was dropped, an error of the first drop's kind
    /// naming the dropped counters: for callers that want `?` to stop on lost counts
    /// (`counters.flush().await?.into_result()?`).
    pub fn into_result(self) -> Result<FlushReport> {
        let Some(first) = self.dropped.first() else {
            return Ok(self);
        };
        let names: Vec<String> = self.dropped.iter().map(|d| d.key.to_string()).collect();
        Err(Error::new(
            first.kind,
            format!(
                "the sink refused {} counter(s), whose deltas were dropped: {}",
                self.dropped.len(),
                names.join(", ")
            ),
        )
        .with_operation("flush"))
    }
}

/// Whether an `apply` error is a deterministic refusal: the same batch would be
/// refused again, so retrying it cannot help. Everything else is retried.
fn is_refusal(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidInput | ErrorKind::WrongType | ErrorKind::Decode
    )
}

/// One thread's (or a few threads') pending deltas. Aligned to its own cache lines
/// so that two threads' stripes never share one.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    /// Keyed adds. foldhash, not std's SipHash: the key is hashed once per add, and
    /// this is most of an add's cost.
    deltas: HashMap<CounterKey, i64, foldhash::fast::RandomState>,
    /// Deltas moved aside because the next add would have taken them past the i64
    /// range, or counted in a bucket a handle has since left; they go into the queue
    /// before `deltas`.
    spilled: Vec<(CounterKey, i64)>,
}

/// A handle's pending delta in one stripe, and the bucket it counts in. Outside the
/// stripe's mutex, so an add in the same bucket is one compare-and-swap (a lock
/// and an unlock cost two atomic operations, most of an add). Aligned to its own
/// cache lines, so threads of different stripes never share one.
#[repr(align(128))]
struct Slot {
    /// The pending delta: added to by compare-and-swap (never past the i64 range),
    /// taken out by a swap (drains, rolls, overflows).
    delta: AtomicI64,
    /// The bucket `delta` counts in ([`HandleSpec::bucket_index`]), or
    /// [`NO_BUCKET_YET`]. Changed only under the stripe's mutex, which drains
    /// hold too, so a drain pairs each delta with its bucket.
    bucket: AtomicI64,
}

/// A bucketed slot's bucket before its first add (no bucket index is this low).
const NO_BUCKET_YET: i64 = i64::MIN;

/// How a [`CounterHandle`] buckets its counts: `None` counts in the key as given
/// (with the bucket it carries, if any); `Daily`/`Hourly` in the UTC day or hour of
/// each add, on the counters' clock. The core's enum, which counter families
/// (`chatstate_core::CounterFamily`) use too.
pub use chatstate_core::Bucketing;

/// What a handle counts: its key (without a bucket when bucketed) and bucketing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HandleSpec {
    key: CounterKey,
    bucketing: Bucketing,
}

impl HandleSpec {
    /// The counter a cell counting in `bucket` adds to.
    fn key_in(&self, bucket: Option<Bucket>) -> CounterKey {
        match bucket {
            None => self.key.clone(),
            Some(b) => self.key.clone().in_bucket(b),
        }
    }

    /// The bucket an add at `now` counts in, as a slot stores it: the day or hour
    /// number, 0 when not bucketed.
    #[inline]
    fn bucket_index(&self, now: impl FnOnce() -> Timestamp) -> i64 {
        match self.bucket_at(now) {
            None => 0,
            Some(Bucket::Day(n) | Bucket::Hour(n)) => n,
        }
    }

    /// The counter a slot counting in bucket `index` adds to.
    fn key_at(&self, index: i64) -> CounterKey {
        match self.bucketing {
            Bucketing::None => self.key.clone(),
            Bucketing::Daily => self.key.clone().in_bucket(Bucket::Day(index)),
            Bucketing::Hourly => self.key.clone().in_bucket(Bucket::Hour(index)),
        }
    }

    /// The bucket an add at `now` counts in.
    #[inline]
    fn bucket_at(&self, now: impl FnOnce() -> Timestamp) -> Option<Bucket> {
        match self.bucketing {
            Bucketing::None => None,
            Bucketing::Daily => Some(Bucket::day_of(now())),
            Bucketing::Hourly => Some(Bucket::hour_of(now())),
        }
    }
}

/// A resolved handle: what it counts, and its pending delta in each stripe.
struct HandleState {
    spec: HandleSpec,
    /// One per stripe, indexed like [`Shared::stripes`].
    slots: Box<[Slot]>,
}

/// The handles resolved so far: one state per distinct (key, bucketing).
#[derive(Default)]
struct Registry {
    states: Vec<Arc<HandleState>>,
    ids: HashMap<HandleSpec, usize>,
}

struct Queued {
    batch: CounterBatch,
    /// Sent at least once (it may have landed), or split from a refused batch: its id
    /// and contents never change again. Only unsealed batches take new deltas.
    sealed: bool,
}

struct Shared {
    sink: Arc<dyn CounterSink>,
    /// Pending deltas, a stripe per thread (see [`thread_number`]).
    stripes: Box<[Mutex<Stripe>]>,
    /// The handles resolved so far (locked after `queue`, before any stripe).
    registry: Mutex<Registry>,
    /// What bucketed handles read the time from: `None` for the system clock,
    /// called directly (no dynamic call on the hot path).
    clock: Option<SharedClock>,
    /// Batches whose apply is not confirmed yet, oldest (and sealed) first. A sync
    /// mutex, never held across an await: readers see pending deltas without waiting
    /// for a flush's round trip. Stripes are drained into it under its lock, so a
    /// delta is always in exactly one of the two.
    queue: Mutex<VecDeque<Queued>>,
    /// Drops not yet returned in a [`FlushReport`].
    unreported: Mutex<Vec<DroppedCounter>>,
    /// Makes flushes one at a time (held across the sink call, by design).
    flushing: tokio::sync::Mutex<()>,
    /// Grows each time a batch leaves the queue; reads retry around it.
    generation: AtomicU64,
    flush_timeout: Duration,
    max_batch: usize,
    applied: AtomicU64,
    duplicates: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
}

/// Counters added locally and flushed to a [`CounterSink`] in batches.
pub struct BatchedCounters {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for BatchedCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedCounters")
            .field("stats", &self.stats())
            .field("backlog", &self.backlog())
            .finish()
    }
}

impl Drop for BatchedCounters {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Settings of a [`BatchedCounters`]; see [`BatchedCounters::builder`].
pub struct BatchedCountersBuilder {
    sink: Arc<dyn CounterSink>,
    flush_interval: Duration,
    flush_timeout: Duration,
    max_batch: usize,
    settings: StoreSettings,
    /// `None`: the system clock.
    clock: Option<SharedClock>,
}

impl std::fmt::Debug for BatchedCountersBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedCountersBuilder")
            .field("flush_interval", &self.flush_interval)
            .field("flush_timeout", &self.flush_timeout)
            .field("max_batch", &self.max_batch)
            .field("batch_retention", &self.settings.batch_retention)
            .finish()
    }
}

impl BatchedCountersBuilder {
    /// How often the background flush runs (default 60 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// How long one `apply` may take before it is abandoned and retried (default 5 s).
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Most counters in one batch (default [`DEFAULT_MAX_BATCH`]); more pending
    /// counters make more batches, each applied with its own id.
    pub fn max_batch(mut self, counters: usize) -> Self {
        self.max_batch = counters;
        self
    }

    /// The sink's settings: its batch retention must cover
    /// [`chatstate_core::config::BATCH_RETENTION_FACTOR`] flush intervals (default: the
    /// default settings, 24 h). The layer cannot ask the sink for its retention: pass
    /// the settings the sink was opened with (or use [`Self::config`] with the same
    /// [`Config`]), or a sink opened with a shorter retention goes unchecked.
    pub fn settings(mut self, settings: &StoreSettings) -> Self {
        self.settings = settings.clone();
        self
    }

    /// The clock bucketed [`CounterHandle`]s read the day or hour from (default:
    /// the system clock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Interval and store settings from a [`Config`], and a flush timeout of the
    /// Redis command timeout (at least 5 s).
    pub fn config(self, config: &Config) -> Self {
        self.flush_interval(config.counter_flush_interval)
            .flush_timeout(config.redis.command_timeout.max(DEFAULT_FLUSH_TIMEOUT))
            .settings(&config.store)
    }

    /// The batched counters, flushing in the background when built inside a tokio
    /// runtime (otherwise only on [`BatchedCounters::flush`]).
    ///
    /// A [`ErrorKind::Config`] error when the sink's batch retention is shorter than
    /// [`chatstate_core::config::BATCH_RETENTION_FACTOR`] flush intervals (a retried batch
    /// could then be counted twice), or the interval, timeout or batch size is zero.
    pub fn build(self) -> Result<BatchedCounters> {
        if self.flush_interval.is_zero() || self.flush_timeout.is_zero() {
            return Err(Error::config(
                "the counter flush interval and flush timeout must be positive",
            ));
        }
        if self.max_batch == 0 {
            return Err(Error::config(
                "a counter batch must hold at least 1 counter",
            ));
        }
        self.settings.check_flush_interval(self.flush_interval)?;
        Ok(self.build_unchecked())
    }

    fn build_unchecked(self) -> BatchedCounters {
        let shared = Arc::new(Shared {
            sink: self.sink,
            stripes: (0..stripe_count())
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            registry: Mutex::new(Registry::default()),
            clock: self.clock,
            queue: Mutex::new(VecDeque::new()),
            unreported: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            flush_timeout: self.flush_timeout,
            max_batch: self.max_batch,
            applied: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let task = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let weak = Arc::downgrade(&shared);
            rt.spawn(chatstate_core::background::every(weak, self.flush_interval, |shared: Arc<Shared>| async move {
                if let Err(e) = flush_queue(&shared).await {
                    tracing::warn!(error = %e, "chatstate counter flush failed; its batch is kept and retried");
                }
            }))
        });
        BatchedCounters {
            shared,
            task: Mutex::new(task),
        }
    }
}

impl BatchedCounters {
    /// A builder over `sink` with the defaults: flush every 60 s, 5 s per attempt,
    /// [`DEFAULT_MAX_BATCH`] counters per batch, the default batch retention.
    pub fn builder(sink: Arc<dyn CounterSink>) -> BatchedCountersBuilder {
        BatchedCountersBuilder {
            sink,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            max_batch: DEFAULT_MAX_BATCH,
            settings: StoreSettings::default(),
            clock: None,
        }
    }

    /// Batches over `sink`, flushing every `interval` in the background (when built
    /// inside a tokio runtime; otherwise only on [`BatchedCounters::flush`]). A flush
    /// attempt gives up after `flush_timeout` and is retried.
    ///
    /// Unlike [`BatchedCounters::builder`] this does not check `interval` against the
    /// sink's batch retention (a [`Config`] from the environment is checked when it is
    /// read); prefer the builder.
    pub fn new(sink: Arc<dyn CounterSink>, interval: Duration, flush_timeout: Duration) -> Self {
        BatchedCounters::builder(sink)
            .flush_interval(interval)
            .flush_timeout(flush_timeout)
            .build_unchecked()
    }

    /// Adds `delta` to `key` locally. No I/O, never fails, never saturates: a pending
    /// delta that would leave the i64 range is moved aside and a new one started (see
    /// the module docs). For a counter added to on every message, resolve a
    /// [`CounterHandle`] once instead ([`BatchedCounters::handle`]).
    pub fn add(&self, key: &CounterKey, delta: i64) {
        let mut guard = lock(self.shared.stripe());
        let stripe = &mut *guard;
        match stripe.deltas.get_mut(key) {
            Some(pending) => match pending.checked_add(delta) {
                Some(sum) => *pending = sum,
                None => {
                    let full = std::mem::replace(pending, delta);
                    stripe.spilled.push((key.clone(), full));
                }
            },
            None => {
                stripe.deltas.insert(key.clone(), delta);
            }
        }
    }

    /// A handle on `key` for hot paths, counting in the bucket `bucketing` says: its
    /// [`CounterHandle::add`] costs a few nanoseconds (no hashing, no allocation)
    /// and its deltas are flushed exactly like [`BatchedCounters::add`]'s. Handles
    /// of the same key and bucketing share their pending deltas; resolving one again
    /// is cheap but takes a lock, so keep the handle. Each distinct key and
    /// bucketing keeps a slot for as long as the counters live: resolve handles for
    /// a fixed set of hot counters, not per request with ever-new labels (use
    /// [`BatchedCounters::add`] for those).
    ///
    /// An [`ErrorKind::InvalidInput`] error when `key` carries a bucket of its own
    /// and `bucketing` asks for another.
    pub fn handle(&self, key: &CounterKey, bucketing: Bucketing) -> Result<CounterHandle> {
        if bucketing != Bucketing::None && key.bucket().is_some() {
            return Err(Error::invalid_input(
                "a counter handle bucketed by day or hour takes a key without a bucket",
            )
            .with_operation("handle"));
        }
        let spec = HandleSpec {
            key: key.clone(),
            bucketing,
        };
        let mut registry = lock(&self.shared.registry);
        let id = match registry.ids.get(&spec) {
            Some(id) => *id,
            None => {
                let id = registry.states.len();
                let first = match bucketing {
                    Bucketing::None => 0,
                    Bucketing::Daily | Bucketing::Hourly => NO_BUCKET_YET,
                };
                let slots = (0..self.shared.stripes.len())
                    .map(|_| Slot {
                        delta: AtomicI64::new(0),
                        bucket: AtomicI64::new(first),
                    })
                    .collect();
                registry.states.push(Arc::new(HandleState {
                    spec: spec.clone(),
                    slots,
                }));
                registry.ids.insert(spec, id);
                id
            }
        };
        Ok(CounterHandle {
            shared: self.shared.clone(),
            state: registry.states[id].clone(),
        })
    }

    /// This instance's deltas for `key` not yet confirmed stored (in the stripes or
    /// in a queued batch), clamped to the i64 range. Never waits for a flush.
    pub async fn pending(&self, key: &CounterKey) -> i64 {
        clamp(self.pending_exact(key))
    }

    fn pending_exact(&self, key: &CounterKey) -> i128 {
        let queue = lock(&self.shared.queue);
        let mut total: i128 = queue
            .iter()
            .filter_map(|q| q.batch.get(key))
            .map(i128::from)
            .sum();
        // Still under the queue lock: a flush cannot move deltas between the two.
        let registry = lock(&self.shared.registry);
        for (i, stripe) in self.shared.stripes.iter().enumerate() {
            // One hold of the stripe's lock for its spilled deltas and its handles'
            // slots: no roll moves a delta from one to the other meanwhile.
            let stripe = lock(stripe);
            total += stripe.deltas.get(key).copied().map_or(0, i128::from);
            total += stripe
                .spilled
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, d)| i128::from(*d))
                .sum::<i128>();
            for state in &registry.states {
                let slot = &state.slots[i];
                let delta = slot.delta.load(Ordering::SeqCst);
                if delta != 0 && state.spec.key_at(slot.bucket.load(Ordering::SeqCst)) == *key {
                    total += i128::from(delta);
                }
            }
        }
        total
    }

    /// The counter's value, with or without this instance's pending deltas (the sum
    /// clamped to the i64 range).
    ///
    /// With [`Read::IncludingPending`] the read is retried if a flush completed
    /// while it ran; it can still count a batch twice for the instant between the
    /// sink applying it and the flush hearing so.
    pub async fn get(&self, key: &CounterKey, read: Read) -> Result<i64> {
        if read == Read::Stored {
            return self.shared.sink.get(key).await;
        }
        let mut tries = 0;
        loop {
            let generation = self.shared.generation.load(Ordering::SeqCst);
            let stored = self.shared.sink.get(key).await?;
            let pending = self.pending_exact(key);
            tries += 1;
            if self.shared.generation.load(Ordering::SeqCst) == generation || tries == 3 {
                return Ok(clamp(i128::from(stored) + pending));
            }
        }
    }

    /// Writes every pending delta now, batch by batch, oldest first.
    ///
    /// `Ok` when the queue is empty (every delta counted or dropped); the report lists
    /// what was dropped since the last report. An error (the sink unreachable, a
    /// timeout, ...) leaves the failed batch and everything newer queued for the next
    /// flush; drops already made are reported by the next successful flush.
    pub async fn flush(&self) -> Result<FlushReport> {
        let counts = flush_queue(&self.shared).await?;
        let dropped = std::mem::take(&mut *lock(&self.shared.unreported));
        Ok(FlushReport {
            batches_applied: counts.applied,
            duplicates: counts.duplicates,
            dropped,
            backlog: self.backlog(),
        })
    }

    /// Stops the background flush and flushes what is pending. On error the deltas
    /// are still held: call [`BatchedCounters::flush`] again.
    pub async fn shutdown(&self) -> Result<FlushReport> {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        self.flush().await
    }

    /// Flush statistics so far.
    pub fn stats(&self) -> FlushStats {
        FlushStats {
            batches_applied: self.shared.applied.load(Ordering::Relaxed),
            duplicates: self.shared.duplicates.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
            dropped_counters: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// How much is waiting to be flushed.
    pub fn backlog(&self) -> Backlog {
        let queue = lock(&self.shared.queue);
        let keyed: usize = self
            .shared
            .stripes
            .iter()
            .map(|s| {
                let s = lock(s);
                s.deltas.len() + s.spilled.len()
            })
            .sum();
        let handles: usize = lock(&self.shared.registry)
            .states
            .iter()
            .flat_map(|state| state.slots.iter())
            .filter(|slot| slot.delta.load(Ordering::SeqCst) != 0)
            .count();
        let unbatched = keyed + handles;
        Backlog {
            batches: queue.len(),
            counters: queue.iter().map(|q| q.batch.len()).sum(),
            unbatched,
        }
    }
}

impl Shared {
    /// The coarse time bucketed handles count in (see [`CounterHandle`]).
    #[inline]
    fn now_coarse(&self) -> Timestamp {
        match &self.clock {
            None => chatstate_core::SystemClock.now_coarse(),
            Some(clock) => clock.now_coarse(),
        }
    }

    /// The calling thread's stripe.
    fn stripe(&self) -> &Mutex<Stripe> {
        &self.stripes[self.stripe_index()]
    }

    /// The calling thread's stripe's index.
    #[inline]
    fn stripe_index(&self) -> usize {
        // `stripes.len()` is a power of two.
        thread_number() & (self.stripes.len() - 1)
    }
}

/// A counter resolved once for hot paths (see [`BatchedCounters::handle`]): an add
/// is a compare-and-swap on the handle's slot for the calling thread's stripe, with
/// no hashing, no lock and no allocation (plus, when bucketed by day or hour, a
/// read of the clock's coarse time, [`chatstate_core::Clock::now_coarse`]). Each
/// handle takes one 128-byte slot per stripe.
///
/// Its deltas are flushed like keyed ones: drained into the same batches (same ids,
/// same retries, same bounded queue during an outage), flushed at shutdown, seen by
/// [`BatchedCounters::get`] and [`BatchedCounters::pending`] under the key they
/// count in. A bucketed handle counts each add in the day or hour of that add: an
/// add after the boundary starts a new delta, and the old bucket's is kept aside
/// for the next flush.
///
/// **How late a bucket rolls.** The bucket comes from the clock's coarse time
/// (`CLOCK_REALTIME_COARSE` on the system clock: the time of the last kernel tick,
/// read without touching the clock source), so adds made in the first moments of
/// a new hour or day may still count in the old one: for as long as the coarse
/// clock lags, one kernel tick (1–10 ms, 4 ms on most kernels), never more than
/// [`chatstate_core::Clock::coarse_lag`] (1 s, room for a late tick). Never
/// early: an add before the boundary always counts in the old bucket. On a
/// [`chatstate_core::ManualClock`] the roll is exact.
#[derive(Clone)]
pub struct CounterHandle {
    shared: Arc<Shared>,
    state: Arc<HandleState>,
}

impl std::fmt::Debug for CounterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterHandle")
            .field("key", &self.state.spec.key)
            .field("bucketing", &self.state.spec.bucketing)
            .finish()
    }
}

impl CounterHandle {
    /// Adds `delta` locally, like [`BatchedCounters::add`] on the handle's key (in
    /// the bucket of now, when bucketed). No I/O, never fails, never saturates.
    pub fn add(&self, delta: i64) {
        let spec = &self.state.spec;
        let bucket = spec.bucket_index(|| self.shared.now_coarse());
        let i = self.shared.stripe_index();
        let slot = &self.state.slots[i];
        if slot.bucket.load(Ordering::Relaxed) != bucket {
            self.roll(i, bucket);
        }
        // Another thread of this stripe may roll the slot between the bucket check
        // and the add: the add then counts in the bucket it rolled to, as if made a
        // moment later (the two were concurrent at the boundary).
        let mut pending = slot.delta.load(Ordering::Relaxed);
        loop {
            let Some(sum) = pending.checked_add(delta) else {
                self.overflow(i, delta);
                return;
            };
            match slot.delta.compare_exchange_weak(
                pending,
                sum,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => pending = now,
            }
        }
    }

    /// Moves the slot of stripe `i` to `bucket`: its old bucket's delta waits for
    /// the flush among the stripe's spilled deltas.
    #[cold]
    fn roll(&self, i: usize, bucket: i64) {
        let mut stripe = lock(&self.shared.stripes[i]);
        let slot = &self.state.slots[i];
        let old = slot.bucket.load(Ordering::Relaxed);
        if old == bucket {
            return;
        }
        let delta = slot.delta.swap(0, Ordering::SeqCst);
        if delta != 0 {
            stripe.spilled.push((self.state.spec.key_at(old), delta));
        }
        slot.bucket.store(bucket, Ordering::Relaxed);
    }

    /// An add of `delta` that would take the slot of stripe `i` past the i64 range:
    /// the delta so far waits for the flush among the spilled ones, and `delta`
    /// starts a new one.
    #[cold]
    fn overflow(&self, i: usize, delta: i64) {
        let mut stripe = lock(&self.shared.stripes[i]);
        let slot = &self.state.slots[i];
        let full = slot.delta.swap(delta, Ordering::SeqCst);
        let key = self.state.spec.key_at(slot.bucket.load(Ordering::Relaxed));
        stripe.spilled.push((key, full));
    }

    /// The counter this handle adds to now (in the current bucket, when bucketed).
    pub fn key(&self) -> CounterKey {
        let spec = &self.state.spec;
        spec.key_in(spec.bucket_at(|| self.shared.now_coarse()))
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX })
}

async fn apply_once(shared: &Shared, batch: &CounterBatch) -> Result<BatchOutcome> {
    match tokio::time::timeout(shared.flush_timeout, shared.sink.apply(batch)).await {
        Ok(Ok(outcome)) => {
            let counter = match outcome {
                BatchOutcome::Applied => &shared.applied,
                BatchOutcome::Duplicate => &shared.duplicates,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(outcome)
        }
        Ok(Err(e)) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Err(e.with_operation("flush"))
        }
        Err(_) => {
            shared.failures.fetch_add(1, Ordering::Relaxed);
            Err(Error::new(
                ErrorKind::Timeout,
                "counter flush timed out; the batch is kept",
            )
            .with_operation("flush"))
        }
    }
}

/// Adds one delta to the never-sent batches: into the one that already has the
/// counter (so a counter takes one entry however long an outage lasts), else into
/// the last one with room, else into a new batch.
fn merge(queue: &mut VecDeque<Queued>, key: &CounterKey, delta: i64, max_batch: usize) {
    let mut open = queue.iter_mut().filter(|q| !q.sealed);
    if open.any(|q| q.batch.get(key).is_some() && q.batch.try_add(key, delta).is_ok()) {
        return;
    }
    // Not there, or there but full to the i64 range (then in another batch).
    if let Some(q) = queue
        .iter_mut()
        .rev()
        .filter(|q| !q.sealed)
        .find(|q| q.batch.len() < max_batch && q.batch.get(key).is_none())
        && q.batch.try_add(key, delta).is_ok()
    {
        return;
    }
    let mut batch = CounterBatch::new();
    // An empty batch takes any delta.
    let _ = batch.try_add(key, delta);
    queue.push_back(Queued {
        batch,
        sealed: false,
    });
}

/// Moves every stripe's deltas into the queue's never-sent batches.
fn drain_stripes(shared: &Shared) {
    let mut queue = lock(&shared.queue);
    let registry = lock(&shared.registry);
    for (i, stripe) in shared.stripes.iter().enumerate() {
        let (spilled, deltas, cells) = {
            let mut stripe = lock(stripe);
            // Under the stripe's lock, so no roll separates a delta from its bucket.
            let cells: Vec<(CounterKey, i64)> = registry
                .states
                .iter()
                .filter_map(|state| {
                    let slot = &state.slots[i];
                    let delta = slot.delta.swap(0, Ordering::SeqCst);
                    (delta != 0).then(|| {
                        (
                            state.spec.key_at(slot.bucket.load(Ordering::Relaxed)),
                            delta,
                        )
                    })
                })
                .collect();
            (
                std::mem::take(&mut stripe.spilled),
                std::mem::take(&mut stripe.deltas),
                cells,
            )
        };
        for (key, delta) in spilled.into_iter().chain(deltas).chain(cells) {
            merge(&mut queue, &key, delta, shared.max_batch);
        }
    }
}

/// Keeps a refused delta for the next report, merged with earlier drops of the same
/// counter and kind.
fn record_drop(shared: &Shared, key: &CounterKey, delta: i64, kind: ErrorKind) {
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    let mut unreported = lock(&shared.unreported);
    if let Some(d) = unreported
        .iter_mut()
        .find(|d| d.key == *key && d.kind == kind)
        && let Some(sum) = d.delta.checked_add(delta)
    {
        d.delta = sum;
        return;
    }
    unreported.push(DroppedCounter {
        key: key.clone(),
        delta,
        kind,
    });
}

#[derive(Default)]
struct Counts {
    applied: u64,
    duplicates: u64,
}

/// Drains the stripes, then applies the queue front to back until it is empty or a
/// batch fails with an error that is not a deterministic refusal.
async fn flush_queue(shared: &Shared) -> Result<Counts> {
    let _one_at_a_time = shared.flushing.lock().await;
    drain_stripes(shared);
    let mut counts = Counts::default();
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            let Some(front) = queue.front_mut() else {
                return Ok(counts);
            };
            // From now on it may land: its id and contents are fixed.
            front.sealed = true;
            front.batch.clone()
        };
        match apply_once(shared, &batch).await {
            Ok(BatchOutcome::Applied) => counts.applied += 1,
            Ok(BatchOutcome::Duplicate) => counts.duplicates += 1,
            Err(e) if is_refusal(e.kind()) && batch.len() > 1 => {
                // Nothing was applied (apply is atomic): find the refused counters by
                // halving, so the others are not held back.
                tracing::warn!(error = %e, counters = batch.len(), "chatstate counter batch refused; splitting it to find the refused counters");
                let (first, second) = halves(&batch);
                let mut queue = lock(&shared.queue);
                queue.pop_front();
                for half in [second, first] {
                    queue.push_front(Queued {
                        batch: half,
                        sealed: true,
                    });
                }
                continue;
            }
            Err(e) if is_refusal(e.kind()) => {
                for (key, delta) in batch.deltas() {
                    tracing::error!(error = %e, counter = %key, "chatstate counter delta refused by the sink and dropped");
                    record_drop(shared, key, delta, e.kind());
                }
            }
            Err(e) => return Err(e),
        }
        lock(&shared.queue).pop_front();
        shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// Splits a batch into two with ids derived from its own.
fn halves(batch: &CounterBatch) -> (CounterBatch, CounterBatch) {
    let mid = batch.len() / 2;
    let mut first = CounterBatch::with_id(format!("{}/0", batch.id()));
    let mut second = CounterBatch::with_id(format!("{}/1", batch.id()));
    for (i, (key, delta)) in batch.deltas().enumerate() {
        let half = if i < mid { &mut first } else { &mut second };
        // Distinct keys from one batch: never an overflow.
        let _ = half.try_add(key, delta);
    }
    (first, second)
}
