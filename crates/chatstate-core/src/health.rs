//! [`Health`]: which backend serves, whether it is reachable, and the state of the
//! circuit breaker in front of it — what `Stores::health()` and
//! `chatstate_redis::RedisStore::health` report.

use serde::Serialize;

use crate::clock::Timestamp;
use crate::config::BackendKind;
use crate::error::ErrorKind;

/// The circuit breaker's state.
///
/// - `Closed`: calls go to the backend.
/// - `Open`: enough consecutive temporary failures were seen (or the backend was
///   unreachable at start); calls fail at once with `Unavailable` until a probe
///   succeeds.
/// - `HalfOpen`: a probe is on its way; calls still fail at once until it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// A probe is on its way; calls fail at once.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`: for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A snapshot of a store's health. Safe to log: it holds no secret and no value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    /// The backend that serves (after any fallback at start).
    pub backend: BackendKind,
    /// Whether the last exchange with the backend succeeded (always true for the
    /// memory and file stores).
    pub reachable: bool,
    /// The circuit breaker's state (always `Closed` for memory and file).
    pub breaker: BreakerState,
    /// The kind of the last temporary failure seen, if any since start.
    pub last_error: Option<ErrorKind>,
    /// When the breaker last opened or closed (when the store opened, if it never
    /// did): while it is open, when the outage began; failed probes do not move it.
    pub since: Timestamp,
    /// Temporary failures in a row since the last success.
    pub consecutive_failures: u32,
    /// When another backend serves because the configured one could not be reached
    /// at start (`CHATSTATE_REDIS_FALLBACK`): the configured backend and why.
    pub fallback_from: Option<Fallback>,
}

/// Why a fallback backend serves instead of the configured one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Fallback {
    /// The backend the configuration asked for.
    pub configured: BackendKind,
    /// Why it is not serving (an error's `Display`, which holds no secret).
    pub reason: String,
}

impl Health {
    /// A local store's health: reachable, breaker closed, since `since`.
    pub fn local(backend: BackendKind, since: Timestamp) -> Health {
        Health {
            backend,
            reachable: true,
            breaker: BreakerState::Closed,
            last_error: None,
            since,
            consecutive_failures: 0,
            fallback_from: None,
        }
    }
}
