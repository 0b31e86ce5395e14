//! The circuit breaker in front of every Redis call, and the background probe that
//! closes it.
//!
//! **What trips it.** Failures that say the server cannot be reached or cannot serve
//! anything: a refused or dropped connection, an I/O error, a timeout, and the
//! refusals `LOADING`, `BUSY`, `MASTERDOWN` and `CLUSTERDOWN`. Refusals of writes
//! alone (`OOM`, `MISCONF`, `READONLY`, `NOREPLICAS`, `TRYAGAIN`) do not: the server
//! answers and reads still work, so those stay per-call `Unavailable` errors.
//! `failures` such errors in a row, within `window` of the first of them, open it
//! ([`BreakerConfig`]). Any answer from the server (success, or an error the server
//! itself replied) resets the count.
//!
//! **Open.** Every call fails at once with `Unavailable` ("the circuit breaker is
//! open"), without touching the connection: no call waits for a timeout. A
//! background task (one per store, started when the store opens, holding no strong
//! reference to it) probes with a `PING` after `open_for`, then with a jittered
//! backoff doubling from `open_for` up to `max(open_for, 2 s)`, so a returning server
//! is noticed within about 2 s. While the probe is on its way the state is
//! `HalfOpen` (calls still fail at once); its success closes the breaker, its
//! failure opens it again. Calls already on the wire when the breaker opened finish
//! on their own (within the command timeout).
//!
//! **At start.** A store that could not reach Redis when it opened starts `Open` and
//! the same task connects it in the background (lazy start).
//!
//! Hand-written rather than a crate: the breaker must tell connection-level failures
//! from the server's own refusals (which only this crate can classify), probe with
//! its own connection rather than with a user's call, and report its state as a
//! [`Health`]; the few dozen lines of state machine did not justify a dependency.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use chatstate_core::{
    BackendKind, BreakerConfig, BreakerState, Clock, Error, ErrorKind, Health, SystemClock,
    Timestamp,
};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The longest wait between probes, unless `open_for` is longer: a returning server
/// is noticed within about this long.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(2);

struct State {
    /// When the first of the current run of failures happened.
    run_started: Option<Instant>,
    last_error: Option<ErrorKind>,
    since: Timestamp,
    /// Consecutive probe failures (for the backoff).
    probe_failures: u32,
    /// When a call last went through as the probe (only without a probe task).
    last_call_probe: Option<Instant>,
}

/// The breaker. Cheap on the hot path: a closed breaker with no failure costs one
/// atomic load before a call and one after.
pub(crate) struct Breaker {
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    inner: Mutex<State>,
    /// Wakes the probe task when the breaker opens (or the store is dropped).
    wake: tokio::sync::Notify,
    stopped: std::sync::atomic::AtomicBool,
    /// Whether a probe task is running ([`Breaker::run_probes`]).
    probing: std::sync::atomic::AtomicBool,
}

/// A probe task's presence ([`Breaker::probe_task`]): clears the breaker's
/// `probing` flag when dropped.
pub(crate) struct ProbeTask(std::sync::Arc<Breaker>);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

fn now() -> Timestamp {
    SystemClock.now()
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            inner: Mutex::new(State {
                run_started: None,
                last_error: None,
                since: now(),
                probe_failures: 0,
                last_call_probe: None,
            }),
            wake: tokio::sync::Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            probing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// `Ok` when a call may go to the server; the `Unavailable` error a call fails
    /// with at once otherwise.
    pub fn admit(&self, op: &'static str, key: Option<&str>) -> chatstate_core::Result<()> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(());
        }
        // No probe task (its runtime shut down while the store lives on in another):
        // a call may be the probe itself, once per `open_for`, so the breaker cannot
        // stay open forever.
        if !self.probing.load(Ordering::Acquire) && self.call_may_probe() {
            return Ok(());
        }
        let (since, last) = {
            let s = self.lock();
            (s.since, s.last_error)
        };
        let mut err = Error::new(
            ErrorKind::Unavailable,
            format!(
                "Redis is unreachable: the circuit breaker has been open for {} ms (last \
                 failure: {}); calls fail at once until a probe succeeds",
                now().as_millis().saturating_sub(since.as_millis()).max(0),
                last.map(ErrorKind::as_str).unwrap_or("none"),
            ),
        )
        .with_operation(op);
        if let Some(key) = key {
            err = err.with_key(key);
        }
        Err(err)
    }

    /// Records the outcome of a call that went to the server.
    pub fn record(&self, outcome: std::result::Result<(), &redis::RedisError>) {
        match outcome {
            Err(e) if crate::conn::trips_breaker(e) => {
                let kind = if e.is_timeout() {
                    ErrorKind::Timeout
                } else {
                    ErrorKind::Unavailable
                };
                self.failure(kind);
            }
            _ => self.success(),
        }
    }

    /// The server answered.
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) == 0
            && self.state.load(Ordering::Acquire) == CLOSED
        {
            return;
        }
        let mut s = self.lock();
        self.failures.store(0, Ordering::Relaxed);
        s.run_started = None;
        s.probe_failures = 0;
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            s.since = now();
            drop(s);
            tracing::info!("Redis is reachable again: the circuit breaker is closed");
            metrics::gauge!("chatstate_redis_breaker_open").set(0.0);
        }
    }

    /// A temporary failure of kind `kind`.
    pub fn failure(&self, kind: ErrorKind) {
        let mut s = self.lock();
        s.last_error = Some(kind);
        let at = Instant::now();
        let fresh_run = match s.run_started {
            Some(start) => at.duration_since(start) > self.config.window,
            None => true,
        };
        let n = if fresh_run {
            s.run_started = Some(at);
            1
        } else {
            self.failures.load(Ordering::Relaxed).saturating_add(1)
        };
        self.failures.store(n, Ordering::Relaxed);
        if n >= self.config.failures && self.state.load(Ordering::Acquire) == CLOSED {
            self.state.store(OPEN, Ordering::Release);
            s.since = now();
            s.probe_failures = 0;
            drop(s);
            tracing::warn!(
                failures = n,
                last_error = kind.as_str(),
                "Redis is failing: the circuit breaker is open, calls fail at once until a probe succeeds"
            );
            metrics::gauge!("chatstate_redis_breaker_open").set(1.0);
            metrics::counter!("chatstate_redis_breaker_opened_total").increment(1);
            self.wake.notify_one();
        }
    }

    /// Opens the breaker for a store that could not reach Redis when it opened.
    pub fn open_at_start(&self, kind: ErrorKind) {
        let mut s = self.lock();
        s.last_error = Some(kind);
        s.since = now();
        self.failures.store(1, Ordering::Relaxed);
        self.state.store(OPEN, Ordering::Release);
        drop(s);
        metrics::gauge!("chatstate_redis_breaker_open").set(1.0);
        self.wake.notify_one();
    }

    /// Without a probe task: whether this call may go to the server as the probe
    /// (the first call since the task went away does; after it, one per `open_for`). The call's outcome then closes or keeps it open as usual.
    fn call_may_probe(&self) -> bool {
        let mut s = self.lock();
        let due = s
            .last_call_probe
            .is_none_or(|at| at.elapsed() >= self.config.open_for);
        if due {
            s.last_call_probe = Some(Instant::now());
        }
        due
    }

    /// Before a probe: `HalfOpen`. `false` when the breaker is not open (nothing to
    /// probe).
    fn begin_probe(&self) -> bool {
        self.state
            .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A probe failed: open again, and wait longer before the next.
    fn probe_failed(&self, kind: ErrorKind) {
        let mut s = self.lock();
        s.last_error = Some(kind);
        s.probe_failures = s.probe_failures.saturating_add(1);
        // Back to open; `since` stays when the breaker first opened, so health and
        // errors say how long the outage has lasted, not since the last probe.
        let _ = self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// How long to wait before the next probe: `open_for` doubling per failed probe
    /// up to `max(open_for, 2 s)`, times a random factor in 0.5–1.0 so a fleet of
    /// instances does not probe in step.
    fn probe_delay(&self) -> Duration {
        let failures = self.lock().probe_failures.min(16);
        let cap = self.config.open_for.max(MAX_PROBE_DELAY);
        let base = self
            .config
            .open_for
            .saturating_mul(1u32 << failures)
            .min(cap);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let factor = 0.5 + (random % 1000) as f64 / 2000.0;
        base.mul_f64(factor)
    }

    /// The breaker's view as a [`Health`].
    pub fn health(&self) -> Health {
        let s = self.lock();
        let breaker = self.state();
        Health {
            backend: BackendKind::Redis,
            reachable: breaker == BreakerState::Closed
                && self.failures.load(Ordering::Relaxed) == 0,
            breaker,
            last_error: s.last_error,
            since: s.since,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            fallback_from: None,
        }
    }

    /// Marks a probe task as running from now until the returned guard is dropped:
    /// move the guard into the task before spawning it, so that calls do not take
    /// the probe's place while it waits to be scheduled, and do again if the task
    /// ends — or is dropped unpolled with its runtime.
    pub fn probe_task(self: &std::sync::Arc<Self>) -> ProbeTask {
        self.probing.store(true, Ordering::Release);
        ProbeTask(self.clone())
    }

    /// Stops the probe task (the store is being dropped).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The probe loop: waits until the breaker opens, then probes with `probe` until
    /// one succeeds (its success closes the breaker; a probe may close it itself
    /// first, see `RedisStore::spawn_probes`). Returns when [`Breaker::stop`] is
    /// called.
    pub async fn run_probes<P, F>(&self, mut probe: P)
    where
        P: FnMut() -> F,
        F: std::future::Future<Output = std::result::Result<(), ErrorKind>>,
    {
        loop {
            while self.state.load(Ordering::Acquire) == CLOSED {
                if self.stopped.load(Ordering::Acquire) {
                    return;
                }
                self.wake.notified().await;
            }
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(self.probe_delay()).await;
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            if !self.begin_probe() {
                continue;
            }
            match probe().await {
                Ok(()) => self.success(),
                Err(kind) => self.probe_failed(kind),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(failures: u32, window_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            failures,
            window: Duration::from_millis(window_ms),
            open_for: Duration::from_millis(10),
        })
    }

    #[test]
    fn opens_after_n_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breaker(3, 60_000);
        // As if the probe task ran: calls never probe themselves.
        b.probing.store(true, Ordering::Release);
        b.failure(ErrorKind::Timeout);
        b.failure(ErrorKind::Timeout);
        b.success();
        b.failure(ErrorKind::Timeout);
        b.failure(ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit("get", None).is_ok());
        b.failure(ErrorKind::Unavailable);
        assert_eq!(b.state(), BreakerState::Open);
        let err = b.admit("get", Some("k")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(
            err.message().contains("circuit breaker has been open"),
            "{err}"
        );
        let h = b.health();
        assert_eq!(h.breaker, BreakerState::Open);
        assert!(!h.reachable);
        assert_eq!(h.last_error, Some(ErrorKind::Unavailable));
        assert_eq!(h.consecutive_failures, 3);
    }

    #[test]
    fn failures_spread_wider_than_the_window_do_not_open_it() {
        let b = breaker(2, 20);
        b.failure(ErrorKind::Timeout);
        std::thread::sleep(Duration::from_millis(40));
        b.failure(ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_and_a_successful_one_closes() {
        let b = std::sync::Arc::new(breaker(1, 60_000));
        b.failure(ErrorKind::Unavailable);
        assert_eq!(b.state(), BreakerState::Open);
        let attempts = std::sync::Arc::new(AtomicU32::new(0));
        let task = {
            let (b, attempts) = (b.clone(), attempts.clone());
            tokio::spawn(async move {
                b.run_probes(|| {
                    let n = attempts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 2 {
                            Err(ErrorKind::Unavailable)
                        } else {
                            Ok(())
                        }
                    }
                })
                .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.state() != BreakerState::Closed && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            3,
            "two failed probes, then one that closed it"
        );
        b.stop();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the probe task ends when stopped")
            .expect("no panic");
    }

    #[test]
    fn without_a_probe_task_one_call_per_open_for_goes_through_as_the_probe() {
        let b = breaker(1, 60_000);
        b.failure(ErrorKind::Unavailable);
        assert!(b.admit("get", None).is_ok(), "the first call probes");
        assert!(b.admit("get", None).is_err(), "the next fails at once");
        std::thread::sleep(Duration::from_millis(15));
        assert!(
            b.admit("get", None).is_ok(),
            "after open_for, one more probes"
        );
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_probe_task_dropped_unpolled_with_its_runtime_lets_calls_probe_again() {
        let b = std::sync::Arc::new(breaker(1, 60_000));
        b.failure(ErrorKind::Unavailable);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let task = b.probe_task();
            let b = b.clone();
            tokio::spawn(async move {
                let _task = task;
                b.run_probes(|| async { Err(ErrorKind::Unavailable) }).await
            });
            // Returns without yielding: the task is never polled.
        });
        assert!(
            b.probing.load(Ordering::Acquire),
            "the runtime still holds the task"
        );
        drop(rt);
        assert!(
            !b.probing.load(Ordering::Acquire),
            "dropped with its runtime"
        );
        assert!(b.admit("get", None).is_ok(), "a call probes in its place");
    }

    #[test]
    fn since_is_when_the_breaker_opened_not_the_last_failed_probe() {
        let b = breaker(1, 60_000);
        b.failure(ErrorKind::Unavailable);
        let opened = b.health().since;
        std::thread::sleep(Duration::from_millis(5));
        assert!(b.begin_probe());
        b.probe_failed(ErrorKind::Timeout);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.health().since, opened);
        assert_eq!(b.health().last_error, Some(ErrorKind::Timeout));
    }

    #[test]
    fn the_probe_delay_backs_off_with_jitter_up_to_the_cap() {
        let b = Breaker::new(BreakerConfig {
            failures: 1,
            window: Duration::from_secs(1),
            open_for: Duration::from_millis(500),
        });
        for _ in 0..20 {
            let d = b.probe_delay();
            assert!(
                d >= Duration::from_millis(250) && d <= Duration::from_millis(500),
                "{d:?}"
            );
        }
        b.lock().probe_failures = 10;
        for _ in 0..20 {
            let d = b.probe_delay();
            assert!(d >= Duration::from_secs(1) && d <= MAX_PROBE_DELAY, "{d:?}");
        }
    }
}
