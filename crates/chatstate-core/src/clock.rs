//! Time: a [`Timestamp`] type and a [`Clock`] that backends read it from.
//!
//! Backends that keep their own expiry (memory, file) take a [`SharedClock`], so tests
//! move time with a [`ManualClock`] instead of sleeping: a 72 h TTL is tested in
//! microseconds and never flakes. Redis keeps time itself, so its TTL cases use short
//! real TTLs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The instant as milliseconds since the Unix epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// This instant plus `d`, saturating.
    pub fn plus(self, d: Duration) -> Timestamp {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// The time from `self` until `later`, or zero when `later` is not after `self`.
    pub fn until(self, later: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(later.0.saturating_sub(self.0)).unwrap_or(0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            ),
            Err(_) => write!(f, "{}ms", self.0),
        }
    }
}

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// A cheaper reading for hot paths that only need to know which hour or day it
    /// is (a bucketed counter handle reads it on every add): never later than
    /// [`Clock::now`], and behind it by at most [`Clock::coarse_lag`]. By default
    /// the exact time.
    fn now_coarse(&self) -> Timestamp {
        self.now()
    }

    /// An upper bound on how far [`Clock::now_coarse`] may lag behind
    /// [`Clock::now`]: zero by default (the coarse reading is the exact one).
    fn coarse_lag(&self) -> Duration {
        Duration::ZERO
    }
}

/// A clock shared between a store and its background tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(ms)
    }

    /// `CLOCK_REALTIME_COARSE` where the platform has it: the time as of the last
    /// kernel tick, read from the vDSO without a system call and without reading
    /// the clock source (a few nanoseconds where `now` takes tens). Elsewhere `now`.
    /// Read through libc (rustix's `use-libc` backend): rustix's own vDSO parser
    /// crashed under valgrind, which glibc's `clock_gettime` runs under.
    #[inline]
    fn now_coarse(&self) -> Timestamp {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        {
            let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
            // `tv_nsec` is an i64 here but not on every target.
            #[allow(clippy::useless_conversion)]
            let ms = i64::from(t.tv_nsec / 1_000_000);
            Timestamp(t.tv_sec.saturating_mul(1_000) + ms)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        {
            self.now()
        }
    }

    /// One second: the coarse clock moves every kernel tick (1–10 ms, 4 ms on most
    /// kernels), so it normally lags by less than that; the bound leaves room for
    /// a late tick (a virtual machine's stolen time).
    fn coarse_lag(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The default clock: the system's.
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use chatstate_core::{Clock, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Timestamp(3_000));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    /// A clock that reads `start` until advanced.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            now: Arc::new(AtomicI64::new(start.0)),
        }
    }

    /// A clock that starts at the current system time.
    pub fn starting_now() -> Self {
        ManualClock::new(SystemClock.now())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `t`.
    pub fn set(&self, t: Timestamp) {
        self.now.store(t.0, Ordering::SeqCst);
    }

    /// This clock as a [`SharedClock`] for a store.
    pub fn shared(&self) -> SharedClock {
        Arc::new(self.clone())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp(10);
        assert_eq!(t.plus(Duration::from_millis(5)), Timestamp(15));
        assert_eq!(
            Timestamp(i64::MAX).plus(Duration::from_secs(1)),
            Timestamp(i64::MAX)
        );
        assert_eq!(t.until(Timestamp(25)), Duration::from_millis(15));
        assert_eq!(t.until(Timestamp(5)), Duration::ZERO);
    }

    #[test]
    fn timestamp_displays_as_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Timestamp(1_795_323_723_456).to_string(),
            "2026-11-22T05:02:03.456Z"
        );
    }

    #[test]
    fn the_coarse_system_clock_is_never_ahead_and_lags_at_most_its_lag() {
        let clock = SystemClock;
        let lag = clock.coarse_lag();
        for _ in 0..1_000 {
            let before = clock.now();
            let coarse = clock.now_coarse();
            let after = clock.now();
            assert!(coarse <= after, "coarse {coarse:?} ahead of {after:?}");
            let floor = before.0 - i64::try_from(lag.as_millis()).unwrap_or(0);
            assert!(
                coarse.0 >= floor,
                "coarse {coarse:?} behind {before:?} by more than {lag:?}"
            );
        }
    }

    #[test]
    fn a_manual_clock_is_its_own_coarse_clock() {
        let clock = ManualClock::new(Timestamp(3_599_999));
        assert_eq!(clock.now_coarse(), Timestamp(3_599_999));
        clock.advance(Duration::from_millis(1));
        assert_eq!(clock.now_coarse(), Timestamp(3_600_000));
        assert_eq!(clock.coarse_lag(), Duration::ZERO);
    }

    #[test]
    fn manual_clock_clones_share_time() {
        let a = ManualClock::new(Timestamp(0));
        let b = a.clone();
        a.advance(Duration::from_millis(7));
        assert_eq!(b.now(), Timestamp(7));
    }
}
