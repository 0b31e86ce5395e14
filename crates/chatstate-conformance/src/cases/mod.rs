//! The conformance cases, one `pub async fn(Ctx) -> Outcome` per behaviour, grouped
//! by trait. Every case opens its own fixture, so cases share nothing and run in
//! parallel.

mod alias;
mod counter;
mod focus;
mod handles;
mod isolation;
mod kv;
mod lock;
mod read_batch;
mod reply;
mod session;
mod side_data;
mod turn;

pub use alias::*;
pub use counter::*;
pub use focus::*;
pub use handles::*;
pub use isolation::*;
pub use kv::*;
pub use lock::*;
pub use read_batch::*;
pub use reply::*;
pub use session::*;
pub use side_data::*;
pub use turn::*;

use chatstate_core::{CacheKey, CounterKey, FocusKey, SessionKey};

/// A session key; panics on invalid parts (cases pass valid literals).
pub(crate) fn skey(tenant: &str, channel: &str, user: &str) -> SessionKey {
    SessionKey::new(tenant, channel, user).expect("a valid session key")
}

/// A cache key; panics on invalid parts.
pub(crate) fn ckey(namespace: &str, key: &str) -> CacheKey {
    CacheKey::new(namespace, key).expect("a valid cache key")
}

/// A focus key; panics on invalid parts.
pub(crate) fn fkey(scope: &str, name: &str) -> FocusKey {
    FocusKey::new(scope, name).expect("a valid focus key")
}

/// An unlabelled, unbucketed counter key; panics on an invalid name.
pub(crate) fn counter(name: &str) -> CounterKey {
    CounterKey::new(name).expect("a valid counter name")
}

/// Unwraps a store call, failing the case with the call's description and error.
pub(crate) trait Must<T> {
    /// The value, or a panic naming `what` and the error.
    fn must(self, what: &str) -> T;
}

impl<T> Must<T> for chatstate_core::Result<T> {
    fn must(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e}"),
        }
    }
}

/// Asserts that a store call failed with `kind`, naming `what`.
pub(crate) fn expect_err<T: std::fmt::Debug>(
    r: chatstate_core::Result<T>,
    kind: chatstate_core::ErrorKind,
    what: &str,
) -> chatstate_core::Error {
    match r {
        Ok(v) => panic!("{what}: expected a {kind} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: expected a {kind} error, got {e}");
            e
        }
    }
}
