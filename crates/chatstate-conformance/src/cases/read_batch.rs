//! Read batches (`ReadBatch::read_batch`): a session with its window, focus
//! documents and cache entries, each answered as its own call answers it.

use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    BatchRead, BatchReads, KvCache, NewMessage, PutMode, SessionPatch, SessionStoreExt, Turn,
};

use crate::cases::{Must, ckey, fkey, skey};
use crate::{Ctx, Outcome};

/// Every part answers what its own call answers: the session as `load` (record and
/// window), each focus key as `FocusStore::get` (missing ones `None`), the cache
/// keys as `get_many` (in order, repeats and missing ones included); an empty
/// batch reads nothing, and a missing session is `None`.
pub async fn read_batch_answers_as_each_call(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    assert_eq!(
        fx.reads
            .read_batch(&BatchReads::new())
            .await
            .must("empty batch"),
        BatchRead::default()
    );
    fx.sessions
        .commit_turn(
            &k,
            Turn::new()
                .messages([NewMessage::user("oi"), NewMessage::assistant("olá 👋")])
                .patch(SessionPatch::new().summary("greeted")),
        )
        .await
        .must("turn");
    fx.focus
        .put(
            &fkey("t", "flow"),
            Bytes::from_static(b"billing"),
            PutMode::Overwrite,
            None,
        )
        .await
        .must("focus put");
    fx.cache
        .set(
            &ckey("customers", "42"),
            Bytes::from_static(&[0, 159, 255]),
            None,
        )
        .await
        .must("cache set");
    fx.cache
        .set(&ckey("orders", "7"), Bytes::from_static(b"paid"), None)
        .await
        .must("cache set");
    let reads = BatchReads::new()
        .session(k.clone())
        .focus(fkey("t", "flow"))
        .focus(fkey("t", "missing"))
        .cache(ckey("customers", "42"))
        .cache(ckey("customers", "missing"))
        .cache(ckey("orders", "7"))
        .cache(ckey("customers", "42"));
    let read = fx.reads.read_batch(&reads).await.must("read_batch");
    let loaded = fx.sessions.load(&k).await.must("load");
    assert!(loaded.is_some());
    assert_eq!(read.session, loaded, "the session as load reads it");
    let mut focus = Vec::new();
    for key in &reads.focus {
        focus.push(fx.focus.get(key).await.must("focus get"));
    }
    assert!(focus[0].is_some() && focus[1].is_none());
    assert_eq!(read.focus, focus, "each focus document as get reads it");
    let cache = KvCache::get_many(fx.cache.as_ref(), &reads.cache)
        .await
        .must("get_many");
    assert_eq!(
        cache,
        [
            Some(Bytes::from_static(&[0, 159, 255])),
            None,
            Some(Bytes::from_static(b"paid")),
            Some(Bytes::from_static(&[0, 159, 255])),
        ]
    );
    assert_eq!(
        read.cache, cache,
        "the cache entries as get_many reads them"
    );

    let other = fx
        .reads
        .read_batch(
            &BatchReads::new()
                .session(skey("t", "c", "nobody"))
                .cache(ckey("orders", "7")),
        )
        .await
        .must("read_batch of a missing session");
    assert_eq!(other.session, None);
    assert_eq!(other.cache, [Some(Bytes::from_static(b"paid"))]);
    assert!(other.focus.is_empty());
    Outcome::Passed
}

/// A read batch is a read: it refreshes no session TTL, and sees an expired
/// session, document or entry as gone.
pub async fn read_batch_is_a_read_and_honours_expiry(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let k = skey("t", "c", "u");
    fx.sessions
        .append_message(&k, NewMessage::user("a"))
        .await
        .must("append");
    fx.cache
        .set(&ckey("ns", "short"), Bytes::from_static(b"v"), Some(u))
        .await
        .must("cache set");
    let reads = BatchReads::new()
        .session(k.clone())
        .cache(ckey("ns", "short"));
    fx.advance(u * 3 / 2).await;
    let read = fx.reads.read_batch(&reads).await.must("read_batch");
    assert!(read.session.is_some(), "alive within its TTL");
    assert_eq!(read.cache, [None], "the entry expired after one unit");
    let left = fx.sessions.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        left <= u / 2 + Duration::from_millis(50),
        "the read did not refresh the TTL (left: {left:?})"
    );
    fx.advance(u).await;
    let read = fx.reads.read_batch(&reads).await.must("read_batch");
    assert_eq!(read.session, None, "gone a TTL after the last write");
    Outcome::Passed
}
