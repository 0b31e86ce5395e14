//! # chatstate-layers
//!
//! Generic wrappers over the chatstate traits, written once and working over any
//! backend — the way tower or OpenDAL layers wrap a service.
//!
//! ## Layout
//!
//! - [`tiered`]: [`TieredCache`], a bounded local tier (moka) in front of any
//!   [`chatstate_core::KvCache`], with other instances' local copies dropped through
//!   an [`chatstate_core::InvalidationBus`] (in process: [`chatstate_core::LocalBus`];
//!   across instances: `chatstate_redis::RedisBus`, Redis pub/sub); `get_or_load` with
//!   one loader per key, `get_many_or_load` with batched loads. No read overlapping
//!   this instance's own write keeps what it read; written copies never outlive the
//!   remote TTL where it is known (while the remote answers); local TTLs run on a
//!   [`chatstate_core::Clock`]. It degrades rather than fails when the remote fails
//!   temporarily: stale local copies answer for up to `max_stale` (never one this
//!   instance knows changed), loaders answer otherwise, failed write-backs are
//!   counted, not returned, and a failed delete is read as missing here and
//!   replayed on recovery ([`TierStats`] counts all of it).
//! - [`batched`]: [`BatchedCounters`], local adds flushed every interval as
//!   idempotent batches of at most [`batched::DEFAULT_MAX_BATCH`] counters; a failed
//!   or ambiguous flush is retried with the same batch id, without counting twice;
//!   only a deterministic refusal drops a counter, and [`FlushReport`] names it; an
//!   outage keeps each counter queued at most twice ([`Backlog`]).
//! - [`coalesce`]: [`CoalescingWriter`], a [`chatstate_core::ReplyStream`] that
//!   buffers a run's tiny chunks and writes them every `max_delay` (50 ms) or
//!   `max_bytes` (256 B), in order, flushing on finish: one round trip per flush
//!   instead of one per token.
//! - [`local_sessions`]: [`LocalSessions`], a bounded local tier of loaded sessions
//!   (record and window) in front of any [`chatstate_core::SessionStore`]: a copy
//!   read or written through it is served for up to `max_age` (never past the
//!   session's expiry), a turn committed through it extends its copy with what the
//!   store answered, and a versioned commit on a record another instance changed
//!   is the store's `Conflict`, which drops the copy. A turn whose reads are all held
//!   costs one round trip: the commit.
//! - [`instrument`]: [`Instrumented`] (over any of the five traits), counts, errors, latency percentiles and hit
//!   rates per operation and namespace, through a snapshot, the `metrics` facade and
//!   `tracing` spans.
//!
//! ## What it must never do
//!
//! Know which backend it wraps, or make a reader wait for a remote call: the only
//! locks held across one are the batched counters' flush lock and the coalescing
//! writer's per-run buffer lock, which serialise writes and nothing else.

#![warn(missing_docs)]

pub mod batched;
pub mod coalesce;
pub mod instrument;
mod local_copies;
pub mod local_focus;
pub mod local_sessions;
pub mod tiered;

pub use batched::{
    Backlog, BatchedCounters, BatchedCountersBuilder, Bucketing, CounterHandle, DroppedCounter,
    FlushReport, FlushStats, Read,
};
pub use coalesce::{CoalesceConfig, CoalesceStats, CoalescingWriter};
pub use instrument::{Instrumented, MetricsSnapshot, OpSnapshot};
pub use local_focus::{LocalFocus, LocalFocusStats};
pub use local_sessions::{LocalSessionStats, LocalSessions, LocalSessionsConfig};
pub use tiered::{LocalHit, TierStats, TieredCache, TieredConfig};
