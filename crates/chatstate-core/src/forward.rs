//! The store traits for `Arc<T>` and `Box<T>` (`T` may be `dyn Trait`), so a layer
//! wraps what the facade hands out: `Instrumented::new(stores.cache.clone())` is a
//! [`KvCache`], and so is a `Box<dyn KvCache>`.
//!
//! Each impl forwards to `T`'s method and returns `T`'s future as it is. The
//! signatures are written out the way `async_trait` expands the traits' methods
//! (why this is hand-written rather than `#[async_trait]` on the impls: that would
//! wrap `T`'s boxed future in a second box — one more allocation on every call
//! through an `Arc<dyn KvCache>`, which is how apps call the stores).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::Result;
use crate::ext::{Loader, ManyLoader};
use crate::key::{Bucket, CacheKey, CounterKey, FocusKey, Labels, RunId, SessionKey};
use crate::model::{
    AppendReceipt, BatchOutcome, CounterBatch, Expected, FocusDoc, Lease, LoadedSession,
    NewMessage, Page, PutMode, Session, SessionPatch, Turn, TurnReceipt,
};
use crate::model::{BatchRead, BatchReads};
use crate::reply::{ReplyEvents, RunRead, RunStatus};
use crate::traits::{
    Capabilities, CounterSink, FocusStore, KvCache, ReadBatch, ReplyStream, SessionStore,
};

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One forwarding method, in `async_trait`'s expanded shape: `'life0` for `self`,
/// the reference arguments' lifetimes as given, all outliving `'async_trait`.
macro_rules! forward {
    ($m:ident <$($lt:lifetime),*> ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        forward!($m [] <$($lt),*> ($($arg : $ty),*) -> $ret);
    };
    // `[...]`: the method's own lifetime parameters, which come first.
    ($m:ident [$($own:lifetime),*] <$($lt:lifetime),*> ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        fn $m<$($own,)* 'life0, $($lt,)* 'async_trait>(
            &'life0 self,
            $($arg: $ty),*
        ) -> Fut<'async_trait, $ret>
        where
            $($own: 'async_trait,)*
            'life0: 'async_trait,
            $($lt: 'async_trait,)*
            Self: 'async_trait,
        {
            (**self).$m($($arg),*)
        }
    };
}

/// The impls of one trait for `Arc<T>` and `Box<T>`.
macro_rules! for_pointers {
    ($tr:ident { $($body:tt)* }) => {
        impl<T: $tr + ?Sized> $tr for Arc<T> {
            $($body)*
        }
        impl<T: $tr + ?Sized> $tr for Box<T> {
            $($body)*
        }
    };
}

for_pointers!(SessionStore {
    forward!(create<'life1>(key: &'life1 SessionKey, init: SessionPatch) -> Result<Session>);
    forward!(get_or_create<'life1>(key: &'life1 SessionKey) -> Result<Session>);
    forward!(get<'life1>(key: &'life1 SessionKey) -> Result<Option<Session>>);
    forward!(get_many<'life1>(keys: &'life1 [SessionKey]) -> Result<Vec<Option<Session>>>);
    forward!(load<'life1>(key: &'life1 SessionKey) -> Result<Option<LoadedSession>>);
    forward!(append_messages<'life1>(key: &'life1 SessionKey, messages: Vec<NewMessage>)
        -> Result<AppendReceipt>);
    forward!(update<'life1>(key: &'life1 SessionKey, patch: SessionPatch, expected: Expected)
        -> Result<Session>);
    forward!(commit_turn<'life1>(key: &'life1 SessionKey, turn: Turn) -> Result<TurnReceipt>);
    forward!(set_data<'life1, 'life2>(key: &'life1 SessionKey, name: &'life2 str, value: Bytes)
        -> Result<()>);
    forward!(get_data_many<'life1, 'life2>(key: &'life1 SessionKey, names: &'life2 [String])
        -> Result<Vec<Option<Bytes>>>);
    forward!(delete_data<'life1, 'life2>(key: &'life1 SessionKey, name: &'life2 str)
        -> Result<bool>);
    forward!(touch<'life1>(key: &'life1 SessionKey) -> Result<bool>);
    forward!(delete<'life1>(key: &'life1 SessionKey) -> Result<bool>);
    forward!(ttl<'life1>(key: &'life1 SessionKey) -> Result<Option<Duration>>);
    forward!(list<'life1>(tenant: &'life1 str, cursor: Option<String>, limit: usize)
        -> Result<Page<SessionKey>>);
    forward!(try_lock<'life1, 'life2>(key: &'life1 SessionKey, name: &'life2 str, lease: Duration)
        -> Result<Option<Lease>>);
    forward!(extend_lock<'life1>(held: &'life1 Lease, lease: Duration) -> Result<bool>);
    forward!(release_lock<'life1>(held: &'life1 Lease) -> Result<bool>);
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
});

for_pointers!(FocusStore {
    forward!(put<'life1>(key: &'life1 FocusKey, value: Bytes, mode: PutMode, ttl: Option<Duration>)
        -> Result<FocusDoc>);
    forward!(get<'life1>(key: &'life1 FocusKey) -> Result<Option<FocusDoc>>);
    forward!(delete<'life1>(key: &'life1 FocusKey) -> Result<bool>);
    forward!(list<'life1>(scope: &'life1 str) -> Result<Vec<FocusDoc>>);
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
});

for_pointers!(CounterSink {
    forward!(add<'life1>(key: &'life1 CounterKey, delta: i64) -> Result<i64>);
    forward!(apply<'life1>(batch: &'life1 CounterBatch) -> Result<BatchOutcome>);
    forward!(get<'life1>(key: &'life1 CounterKey) -> Result<i64>);
    forward!(get_many<'life1>(keys: &'life1 [CounterKey]) -> Result<Vec<i64>>);
    forward!(list<'life1>(name: &'life1 str, bucket: Option<Bucket>)
        -> Result<Vec<(Labels, i64)>>);
    forward!(delete<'life1>(key: &'life1 CounterKey) -> Result<bool>);
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
});

for_pointers!(KvCache {
    forward!(get<'life1>(key: &'life1 CacheKey) -> Result<Option<Bytes>>);
    forward!(get_many<'life1>(keys: &'life1 [CacheKey]) -> Result<Vec<Option<Bytes>>>);
    forward!(set<'life1>(key: &'life1 CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()>);
    forward!(set_many<>(entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()>);
    forward!(set_many_with_ttls<>(entries: Vec<(CacheKey, Bytes, Option<Duration>)>)
        -> Result<()>);
    forward!(set_with_aliases<'life1, 'life2>(key: &'life1 CacheKey, value: Bytes,
        ttl: Option<Duration>, aliases: &'life2 [CacheKey]) -> Result<()>);
    forward!(get_by_alias<'life1>(alias: &'life1 CacheKey)
        -> Result<Option<(CacheKey, Bytes)>>);
    forward!(delete<'life1>(key: &'life1 CacheKey) -> Result<bool>);
    forward!(delete_many<'life1>(keys: &'life1 [CacheKey]) -> Result<u64>);
    forward!(exists<'life1>(key: &'life1 CacheKey) -> Result<bool>);
    forward!(expire<'life1>(key: &'life1 CacheKey, ttl: Duration) -> Result<bool>);
    forward!(ttl<'life1>(key: &'life1 CacheKey) -> Result<Option<Duration>>);
    forward!(clear_prefix<'life1, 'life2>(namespace: &'life1 str, key_prefix: &'life2 str)
        -> Result<u64>);
    forward!(get_or_load_raw['a]<'life1>(key: &'life1 CacheKey, ttl: Option<Duration>,
        load: Loader<'a>) -> Result<Option<Bytes>>);
    forward!(get_many_or_load_raw['a]<'life1>(keys: &'life1 [CacheKey],
        ttl: Option<Duration>, load: ManyLoader<'a>) -> Result<Vec<Option<Bytes>>>);
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
});

for_pointers!(ReplyStream {
    forward!(start<'life1>(run: &'life1 RunId, ttl: Option<Duration>) -> Result<()>);
    forward!(append<'life1, 'life2>(run: &'life1 RunId, text: &'life2 str) -> Result<()>);
    forward!(finish<'life1>(run: &'life1 RunId, status: RunStatus) -> Result<()>);
    forward!(read<'life1>(run: &'life1 RunId, from: u64) -> Result<RunRead>);
    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        (**self).follow(run, from, idle_timeout)
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
});

for_pointers!(ReadBatch {
    forward!(read_batch<'life1>(reads: &'life1 BatchReads) -> Result<BatchRead>);
});
