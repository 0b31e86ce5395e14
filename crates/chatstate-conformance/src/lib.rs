//! # chatstate-conformance
//!
//! One suite of named behaviours that every chatstate backend must pass, so that
//! switching backends (`USE_REDIS=0/1`) never changes what an app sees.
//!
//! ## Layout
//!
//! - [`Backend`]: what a backend crate implements to be tested: open a fresh,
//!   isolated set of stores with given [`StoreSettings`]. What the stores can do
//!   ([`Capabilities`]) is asked of the stores themselves at run time
//!   ([`Fixture::capabilities`]), never listed in a test crate.
//! - [`cases`]: the cases, one `async fn` each, grouped by trait. Each takes a
//!   [`Ctx`] and returns an [`Outcome`]; a failed assertion panics with a message
//!   that names the behaviour.
//! - [`inventory`]: cases of [`chatstate_core::Inventory`] (paging, restore rules),
//!   free functions each backend's `tests/inventory.rs` calls on a fresh store.
//! - [`model`]: the proptest model test — random operation sequences run against the
//!   backend and a simple reference model must agree.
//! - [`runner`]: the same cases as a list ([`runner::all_cases`]) and a runner that
//!   reports each case passed, skipped or failed, for a binary (`chatstate
//!   conformance`) that checks a deployment outside `cargo test`.
//! - [`conformance_suite!`]: turns the whole suite into one `#[test]` per case for
//!   a backend, so a failure names the behaviour and the backend.
//!
//! ## Use
//!
//! In a backend crate's `tests/conformance.rs` (or in your app, against your own
//! setup):
//!
//! ```ignore
//! chatstate_conformance::conformance_suite!(chatstate_memory::MemoryBackend::default());
//! ```
//!
//! ## Skips are never silent
//!
//! A case that needs a capability the stores report they lack returns
//! [`Outcome::Skipped`]; the test passes, prints `SKIPPED` with the reason, and
//! appends a line to `$CHATSTATE_SKIP_LOG_DIR/skipped.log` (when that variable is
//! set, as `cargo xtask test` does), which `cargo xtask test` prints at the end of
//! the run. A backend cannot skip a case by
//! failing it quietly: only a capability the stores report lacking skips.
//!
//! ## Time
//!
//! A backend that keeps its own expiry hands the suite a
//! [`chatstate_core::ManualClock`]; TTL cases then move it and take no wall time.
//! A backend whose server keeps time (Redis) runs the same cases on real time, with
//! TTLs of a few [`Backend::time_unit`]s.

#![warn(missing_docs)]

use std::any::Any;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use chatstate_core::Capabilities;
use chatstate_core::{
    CounterSink, FocusStore, KvCache, ManualClock, ReadBatch, ReplyStream, Result, SessionStore,
    StoreSettings,
};

pub mod cases;
pub mod inventory;
pub mod model;
pub mod runner;

/// How a fixture's time moves.
#[derive(Clone, Debug)]
pub enum TimeControl {
    /// The stores read this clock; the suite advances it.
    Manual(ManualClock),
    /// The stores (or their server) read real time; the suite sleeps.
    Real,
}

/// A fresh, isolated set of the stores of one backend.
pub struct Fixture {
    /// Sessions.
    pub sessions: Arc<dyn SessionStore>,
    /// Focus documents.
    pub focus: Arc<dyn FocusStore>,
    /// Counters.
    pub counters: Arc<dyn CounterSink>,
    /// The cache.
    pub cache: Arc<dyn KvCache>,
    /// Streamed replies.
    pub replies: Arc<dyn ReplyStream>,
    /// Read batches over the same data as the other stores.
    pub reads: Arc<dyn ReadBatch>,
    /// Streamed replies through another instance over the same data (a second
    /// client of the same server, the same folder opened again; in one process's
    /// memory, the same store): what a reader on another instance uses.
    pub replies_peer: Arc<dyn ReplyStream>,
    /// How time moves for these stores.
    pub time: TimeControl,
    /// The settings the stores were opened with.
    pub settings: StoreSettings,
    /// Whatever must live as long as the stores (a temp dir, a server guard).
    pub guard: Option<Box<dyn Any + Send + Sync>>,
}

impl Fixture {
    /// A fixture whose stores are all `store` (a backend type that implements every
    /// trait), with `peer` as the other instance of the reply cases.
    pub fn of_one<S>(
        store: Arc<S>,
        peer: Arc<dyn ReplyStream>,
        time: TimeControl,
        settings: StoreSettings,
        guard: Option<Box<dyn Any + Send + Sync>>,
    ) -> Fixture
    where
        S: SessionStore + FocusStore + CounterSink + KvCache + ReplyStream + ReadBatch + 'static,
    {
        Fixture {
            reads: store.clone(),
            sessions: store.clone(),
            focus: store.clone(),
            counters: store.clone(),
            cache: store.clone(),
            replies: store,
            replies_peer: peer,
            time,
            settings,
            guard,
        }
    }

    /// What the four stores can do together, as they report it themselves.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities::of_all(
            self.sessions.as_ref(),
            self.focus.as_ref(),
            self.counters.as_ref(),
            self.cache.as_ref(),
        )
    }

    /// Lets `d` pass for the stores: moves the manual clock, or sleeps.
    pub async fn advance(&self, d: Duration) {
        match &self.time {
            TimeControl::Manual(clock) => clock.advance(d),
            TimeControl::Real => tokio::time::sleep(d).await,
        }
    }
}

/// A backend under test.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's name, for reports.
    fn name(&self) -> &'static str;

    /// The unit TTL cases build their times from: TTLs of a few units, waits of a
    /// fraction of one. 1 s by default; a backend on real time may want more margin.
    fn time_unit(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// Opens a fresh set of stores that shares no data with any other fixture.
    async fn open(&self, settings: StoreSettings) -> Result<Fixture>;

    /// Opens the same data again, as a restarted process would (only called when
    /// the stores report [`Capabilities::persistent`]).
    async fn reopen(&self, fixture: &Fixture) -> Result<Fixture> {
        let _ = fixture;
        Err(chatstate_core::Error::new(
            chatstate_core::ErrorKind::Unsupported,
            "this backend does not persist data",
        ))
    }
}

/// A case's result when it did not panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The behaviour holds.
    Passed,
    /// The stores report they lack what the case needs.
    Skipped(String),
}

/// What a case gets: the backend, to open fixtures from.
#[derive(Clone)]
pub struct Ctx {
    backend: Arc<dyn Backend>,
}

impl Ctx {
    /// A context for `backend`.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Ctx { backend }
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's time unit.
    pub fn unit(&self) -> Duration {
        self.backend.time_unit()
    }

    /// Opens a fixture with `settings`. Panics (failing the case) when the backend
    /// cannot open one.
    pub async fn open_with(&self, settings: StoreSettings) -> Fixture {
        match self.backend.open(settings).await {
            Ok(f) => f,
            Err(e) => panic!(
                "backend {} failed to open a fixture: {e}",
                self.backend.name()
            ),
        }
    }

    /// Opens a fixture with the default settings (72 h TTL, window 20, ...).
    pub async fn open(&self) -> Fixture {
        self.open_with(StoreSettings::default()).await
    }

    /// Opens a fixture whose session, focus and cache TTLs are `units` time units.
    pub async fn open_with_ttl(&self, units: u32) -> Fixture {
        let ttl = self.unit() * units;
        self.open_with(StoreSettings {
            session_ttl: ttl,
            cache_ttl: ttl,
            focus_ttl: ttl,
            ..StoreSettings::default()
        })
        .await
    }

    /// Reopens a fixture's data (see [`Backend::reopen`]).
    pub async fn reopen(&self, fixture: &Fixture) -> Fixture {
        match self.backend.reopen(fixture).await {
            Ok(f) => f,
            Err(e) => panic!("backend {} failed to reopen: {e}", self.backend.name()),
        }
    }
}

/// Runs one case on a fresh multi-threaded runtime, reporting a skip. Called by
/// [`conformance_suite!`]; panics when the case fails.
pub fn run_case<B, F, Fut>(case: &'static str, backend: B, body: F)
where
    B: Backend,
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the conformance case");
    let ctx = Ctx::new(Arc::new(backend));
    let name = ctx.backend_name();
    match rt.block_on(body(ctx)) {
        Outcome::Passed => {}
        Outcome::Skipped(reason) => report_skip(name, case, &reason),
    }
}

/// Prints a skip and records it in `skipped.log` for `cargo xtask test` to show.
fn report_skip(backend: &str, case: &str, reason: &str) {
    let line = format!("SKIPPED conformance case {case} on backend {backend}: {reason}");
    eprintln!("{line}");
    if let Some(dir) = std::env::var_os("CHATSTATE_SKIP_LOG_DIR") {
        let path = std::path::Path::new(&dir).join("skipped.log");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Expands to one `#[test]` per conformance case, plus the model test, for the
/// backend built by `$backend` (an expression evaluated afresh for every test).
///
/// ```ignore
/// chatstate_conformance::conformance_suite!(chatstate_memory::MemoryBackend::default());
/// ```
///
/// An optional second argument sets the model test's number of proptest cases
/// (default 64): `conformance_suite!(backend, model_cases = 16)`.
#[macro_export]
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance_suite!($backend, model_cases = 64);
    };
    ($backend:expr, model_cases = $n:expr) => {
        $crate::__with_case_names! { __cases { $backend } }

        #[test]
        fn model_matches_reference() {
            $crate::model::run($backend, $n);
        }
    };
}

/// The names of every case, written once: expands to
/// `$crate::$callback! { <args> ; case, case, ... }`, for [`conformance_suite!`]
/// (one `#[test]` each) and [`runner::all_cases`] (the list a binary runs).
#[doc(hidden)]
#[macro_export]
macro_rules! __with_case_names {
    ($callback:ident { $($args:tt)* }) => {
        $crate::$callback! { $($args)*;
            // sessions
            session_get_missing_is_none,
            session_create_then_get,
            session_create_twice_is_already_exists,
            session_get_or_create_is_idempotent,
            session_load_returns_record_and_messages,
            session_delete_removes_everything,
            session_get_many_keeps_order_and_missing,
            session_append_creates_missing_session,
            session_window_keeps_newest_in_order,
            session_append_batch_is_ordered_and_windowed,
            session_append_sets_activity_not_version,
            session_message_fields_roundtrip,
            session_oversize_message_rejected_nothing_written,
            session_summary_truncated_on_char_boundary,
            session_patch_leaves_other_fields_alone,
            session_patch_can_clear_fields,
            session_update_missing_is_not_found,
            session_update_with_current_version_bumps_it,
            session_update_with_stale_version_conflicts,
            session_concurrent_versioned_updates_one_wins,
            session_typed_context_roundtrip,
            session_ttl_expires_every_part,
            session_ttl_slides_on_activity,
            session_reads_do_not_extend_ttl,
            session_recreated_after_expiry_is_fresh,
            session_touch_refreshes_ttl,
            session_list_pages_tenant_exactly_once,
            session_list_skips_expired,
            session_concurrent_appends_lose_nothing,
            session_data_survives_reopen,
            // session side data and append receipts
            session_side_data_roundtrip_leaves_the_record_alone,
            session_side_data_lives_and_dies_with_the_session,
            session_side_data_limits_are_invalid_input,
            session_append_receipt_counts_trimmed_tokens,
            // turn commits
            turn_commit_lands_messages_and_patch_together,
            turn_commit_conflict_writes_nothing,
            turn_commit_concurrent_versioned_one_wins,
            turn_commit_first_turn_expecting_version_zero_one_wins,
            turn_commit_refreshes_ttl,
            turn_commit_trims_the_window,
            turn_commit_oversize_writes_nothing,
            // read batches
            read_batch_answers_as_each_call,
            read_batch_is_a_read_and_honours_expiry,
            // locks
            lock_excludes_second_holder,
            lock_release_only_by_owner,
            lock_expires_after_lease,
            lock_extend_by_owner_only,
            lock_fence_only_grows,
            lock_fence_outlives_a_lease_longer_than_the_ttl,
            lock_concurrent_acquire_has_one_winner,
            lock_names_are_independent,
            // isolation and input validation
            isolation_special_ids_do_not_collide,
            isolation_tenants_do_not_list_each_other,
            isolation_oversize_and_empty_ids_rejected,
            isolation_cache_namespaces_separate,
            // focus
            focus_put_get_has_version_and_time,
            focus_get_missing_is_none,
            focus_delete,
            focus_list_scope_sorted,
            focus_create_mode_refuses_existing,
            focus_if_version_rejects_stale,
            focus_ttl_expiry,
            focus_oversize_rejected,
            focus_concurrent_cas_loses_nothing,
            // counters
            counter_add_get_and_missing_is_zero,
            counter_negative_and_overflow,
            counter_labels_order_independent_and_distinct,
            counter_buckets_are_separate,
            counter_apply_batch,
            counter_apply_same_batch_twice_counts_once,
            counter_list_by_name_and_bucket,
            counter_get_many_and_delete,
            counter_concurrent_adds_lose_nothing,
            counter_range_edges_on_add_and_apply,
            counter_refused_batch_writes_and_records_nothing,
            counter_out_of_range_bucket_is_invalid_input,
            // cache
            kv_set_get_overwrite,
            kv_get_missing_is_none,
            kv_delete_and_exists,
            kv_get_many_keeps_order_and_missing,
            kv_set_many_then_get_many,
            kv_delete_many_counts_existing,
            kv_ttl_expiry,
            kv_default_ttl_applies,
            kv_expire_and_ttl,
            kv_clear_prefix_leaves_other_prefixes,
            kv_oversize_value_rejected_set_many_atomic,
            kv_binary_values_roundtrip,
            kv_typed_values_and_decode_errors,
            kv_get_or_load_caches_and_does_not_cache_errors,
            kv_set_many_with_ttls_each_entry_its_own,
            kv_typed_many_calls,
            // handles
            kv_namespace_handle,
            focus_scope_handle,
            counter_family_handle,
            // streamed replies
            reply_chunks_in_order_and_read_from_offset,
            reply_follow_resumes_without_loss_or_duplicate,
            reply_reader_on_another_instance,
            reply_late_reader_from_offset_zero,
            reply_every_follower_sees_the_finish,
            reply_expires_after_ttl,
            reply_follower_of_an_expired_run_ends,
            reply_limits_are_invalid_input,
            reply_cancel_stops_the_producer,
        }
    };
}

/// Implementation detail of [`conformance_suite!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __cases {
    ($backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run_case(stringify!($case), $backend, |ctx| $crate::cases::$case(ctx));
            }
        )*
    };
}
