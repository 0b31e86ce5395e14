//! [`FocusStore`](chatstate_core::FocusStore) cases: versions, put modes, listing,
//! TTLs, size limits and compare-and-set under concurrency.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    Clock, Codec, ErrorKind, FocusDoc, FocusStore, FocusStoreExt, PutMode, StoreSettings,
    SystemClock, Timestamp,
};

use crate::cases::{Must, expect_err, fkey};
use crate::{Ctx, Fixture, Outcome, TimeControl};

/// The fixture's current time: its manual clock, or the system clock.
fn fixture_now(fx: &Fixture) -> Timestamp {
    match &fx.time {
        TimeControl::Manual(clock) => clock.now(),
        TimeControl::Real => SystemClock.now(),
    }
}

/// How far a stored timestamp may be from the caller's clock: none on a manual
/// clock, one time unit on real time (a server's clock may differ a little).
fn time_slack(ctx: &Ctx, fx: &Fixture) -> Duration {
    match fx.time {
        TimeControl::Manual(_) => Duration::ZERO,
        TimeControl::Real => ctx.unit(),
    }
}

fn assert_time_between(t: Timestamp, lo: Timestamp, hi: Timestamp, slack: Duration, what: &str) {
    let slack_ms = i64::try_from(slack.as_millis()).unwrap_or(i64::MAX);
    assert!(
        t.0 >= lo.0.saturating_sub(slack_ms) && t.0 <= hi.0.saturating_add(slack_ms),
        "{what}: updated_at {t} is not the time of the put (between {lo} and {hi}, slack {slack:?})"
    );
}

fn names(docs: &[FocusDoc]) -> Vec<&str> {
    docs.iter().map(|d| d.key.name()).collect()
}

/// A put returns the stored document (version 1, its value and put time), get
/// returns the same, and every later put bumps the version and the time.
pub async fn focus_put_get_has_version_and_time(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let slack = time_slack(&ctx, &fx);
    let k = fkey("file:report.pdf", "current-page");

    let before = fixture_now(&fx);
    let first = fx
        .focus
        .put(&k, Bytes::from_static(b"page 1"), PutMode::Overwrite, None)
        .await
        .must("first put");
    let after = fixture_now(&fx);
    assert_eq!(first.key, k, "put returns the document's key");
    assert_eq!(&first.value[..], b"page 1", "put returns the stored value");
    assert_eq!(first.version, 1, "a new document starts at version 1");
    assert_time_between(first.updated_at, before, after, slack, "first put");

    let got = fx.focus.get(&k).await.must("get after first put");
    assert_eq!(
        got.as_ref(),
        Some(&first),
        "get returns the document as put returned it"
    );

    fx.advance(ctx.unit() / 2).await;
    let before = fixture_now(&fx);
    let second = fx
        .focus
        .put(&k, Bytes::from_static(b"page 2"), PutMode::Overwrite, None)
        .await
        .must("second put");
    let after = fixture_now(&fx);
    assert_eq!(second.version, 2, "every put bumps the version by one");
    assert_eq!(
        &second.value[..],
        b"page 2",
        "an overwrite stores the new value"
    );
    assert_time_between(second.updated_at, before, after, slack, "second put");
    assert!(
        second.updated_at > first.updated_at,
        "a later put has a later updated_at ({} then {})",
        first.updated_at,
        second.updated_at
    );

    let got = fx.focus.get(&k).await.must("get after second put");
    assert_eq!(got.as_ref(), Some(&second), "get sees the latest put");

    let third = fx
        .focus
        .put(&k, Bytes::from_static(b"page 3"), PutMode::Overwrite, None)
        .await
        .must("third put");
    assert_eq!(third.version, 3, "versions keep growing by one");
    Outcome::Passed
}

/// Getting a document that was never put is `None`, even when documents with the
/// same scope or the same name exist; deleting it is `false`.
pub async fn focus_get_missing_is_none(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = fkey("flow", "step");
    assert_eq!(
        fx.focus.get(&k).await.must("get missing"),
        None,
        "a document never put is None"
    );

    fx.focus
        .put(
            &fkey("flow", "other"),
            Bytes::from_static(b"x"),
            PutMode::Overwrite,
            None,
        )
        .await
        .must("put same scope, other name");
    fx.focus
        .put(
            &fkey("flow2", "step"),
            Bytes::from_static(b"y"),
            PutMode::Overwrite,
            None,
        )
        .await
        .must("put other scope, same name");
    assert_eq!(
        fx.focus.get(&k).await.must("get missing again"),
        None,
        "documents with the same scope or the same name do not make this one exist"
    );
    assert!(
        !fx.focus.delete(&k).await.must("delete missing"),
        "deleting a document that does not exist returns false"
    );
    Outcome::Passed
}

/// Delete removes the document (true, then false), other documents stay, and a put
/// after the delete creates it afresh at version 1.
pub async fn focus_delete(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = fkey("tenant:acme", "campaign");
    let other = fkey("tenant:acme", "language");
    for _ in 0..2 {
        fx.focus
            .put(
                &k,
                Bytes::from_static(b"black friday"),
                PutMode::Overwrite,
                None,
            )
            .await
            .must("put");
    }
    fx.focus
        .put(
            &other,
            Bytes::from_static(b"pt-BR"),
            PutMode::Overwrite,
            None,
        )
        .await
        .must("put other");

    assert!(
        fx.focus.delete(&k).await.must("delete"),
        "deleting an existing document returns true"
    );
    assert_eq!(
        fx.focus.get(&k).await.must("get after delete"),
        None,
        "a deleted document is gone"
    );
    assert!(
        !fx.focus.delete(&k).await.must("second delete"),
        "deleting it again returns false"
    );
    let listed = fx.focus.list("tenant:acme").await.must("list after delete");
    assert_eq!(
        names(&listed),
        vec!["language"],
        "list no longer shows the deleted document"
    );
    assert!(
        fx.focus.get(&other).await.must("get other").is_some(),
        "deleting one document leaves the others of its scope"
    );

    let again = fx
        .focus
        .put(
            &k,
            Bytes::from_static(b"cyber monday"),
            PutMode::Create,
            None,
        )
        .await
        .must("create after delete");
    assert_eq!(
        again.version, 1,
        "a document put after a delete starts again at version 1"
    );
    Outcome::Passed
}

/// List returns exactly the live documents of one scope, sorted by name; other
/// scopes (even `flow:2` and `flo` next to `flow`) and deleted documents are left out.
pub async fn focus_list_scope_sorted(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let put = |scope: &'static str, name: &'static str| {
        let focus = Arc::clone(&fx.focus);
        async move {
            focus
                .put(
                    &fkey(scope, name),
                    Bytes::from(format!("{scope}/{name}")),
                    PutMode::Overwrite,
                    None,
                )
                .await
                .must("put for list")
        }
    };
    // Put out of order, with neighbours whose stored keys a naive layout would
    // confuse with scope "flow".
    put("flow", "c").await;
    put("flow", "a").await;
    put("flow", "2:x").await;
    put("flow", "b").await;
    put("flow", "gone").await;
    put("flow:2", "x").await;
    put("flow:2", "a").await;
    put("flo", "w:a").await;
    put("flowchart", "a").await;
    put("other", "a").await;
    assert!(fx.focus.delete(&fkey("flow", "gone")).await.must("delete"));

    let listed = fx.focus.list("flow").await.must("list flow");
    assert_eq!(
        names(&listed),
        vec!["2:x", "a", "b", "c"],
        "list returns the scope's live documents sorted by name, and nothing else"
    );
    for doc in &listed {
        assert_eq!(
            doc.key.scope(),
            "flow",
            "every listed document is of the scope"
        );
        assert_eq!(
            doc.value,
            Bytes::from(format!("flow/{}", doc.key.name())),
            "a listed document carries its own value"
        );
        assert_eq!(doc.version, 1, "a listed document carries its version");
    }

    let listed = fx.focus.list("flow:2").await.must("list flow:2");
    assert_eq!(
        names(&listed),
        vec!["a", "x"],
        "scope flow:2 lists only its own documents"
    );
    let listed = fx.focus.list("flo").await.must("list flo");
    assert_eq!(
        names(&listed),
        vec!["w:a"],
        "scope flo lists only its own documents"
    );
    let listed = fx.focus.list("nothing-here").await.must("list empty scope");
    assert!(listed.is_empty(), "a scope with no documents lists nothing");
    Outcome::Passed
}

/// `PutMode::Create` writes a new document but refuses an existing one with
/// `AlreadyExists`, leaving it unchanged.
pub async fn focus_create_mode_refuses_existing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = fkey("flow", "checkout");
    let created = fx
        .focus
        .put(&k, Bytes::from_static(b"v1"), PutMode::Create, None)
        .await
        .must("create");
    assert_eq!(created.version, 1, "a created document is at version 1");

    expect_err(
        fx.focus
            .put(&k, Bytes::from_static(b"v2"), PutMode::Create, None)
            .await,
        ErrorKind::AlreadyExists,
        "create over an existing document",
    );
    let got = fx.focus.get(&k).await.must("get after refused create");
    assert_eq!(
        got,
        Some(created),
        "a refused create leaves the document unchanged"
    );

    let other = fx
        .focus
        .put(
            &fkey("flow", "cart"),
            Bytes::from_static(b"x"),
            PutMode::Create,
            None,
        )
        .await
        .must("create another");
    assert_eq!(
        other.version, 1,
        "create of another name in the scope works"
    );
    Outcome::Passed
}

/// `PutMode::IfVersion` writes only at the current version (returning version + 1);
/// a stale or future version, or a missing document, is a `Conflict` that changes
/// nothing.
pub async fn focus_if_version_rejects_stale(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = fkey("file:a.txt", "cursor");
    fx.focus
        .put(&k, Bytes::from_static(b"one"), PutMode::Overwrite, None)
        .await
        .must("put v1");
    let v2 = fx
        .focus
        .put(&k, Bytes::from_static(b"two"), PutMode::Overwrite, None)
        .await
        .must("put v2");
    assert_eq!(v2.version, 2);

    for stale in [0, 1, 3] {
        expect_err(
            fx.focus
                .put(
                    &k,
                    Bytes::from_static(b"lost"),
                    PutMode::IfVersion(stale),
                    None,
                )
                .await,
            ErrorKind::Conflict,
            &format!("put IfVersion({stale}) on a document at version 2"),
        );
    }
    let got = fx.focus.get(&k).await.must("get after conflicts");
    assert_eq!(
        got,
        Some(v2),
        "a rejected put leaves value and version unchanged"
    );

    let v3 = fx
        .focus
        .put(
            &k,
            Bytes::from_static(b"three"),
            PutMode::IfVersion(2),
            None,
        )
        .await
        .must("put IfVersion(current)");
    assert_eq!(
        v3.version, 3,
        "a put at the current version returns version + 1"
    );
    assert_eq!(&v3.value[..], b"three");
    let got = fx
        .focus
        .get(&k)
        .await
        .must("get v3")
        .expect("document exists");
    assert_eq!(
        (got.version, &got.value[..]),
        (3, &b"three"[..]),
        "the put is stored"
    );

    let missing = fkey("file:a.txt", "missing");
    for v in [0, 1] {
        expect_err(
            fx.focus
                .put(
                    &missing,
                    Bytes::from_static(b"x"),
                    PutMode::IfVersion(v),
                    None,
                )
                .await,
            ErrorKind::Conflict,
            &format!("put IfVersion({v}) on a missing document"),
        );
    }
    assert_eq!(
        fx.focus.get(&missing).await.must("get missing"),
        None,
        "a rejected put does not create the document"
    );
    Outcome::Passed
}

/// Documents put without a TTL expire after the configured focus TTL, and with one
/// after it; a put refreshes the TTL; expired documents are gone from get and list,
/// and can be created again.
pub async fn focus_ttl_expiry(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(3).await;
    let unit = ctx.unit();
    let scope = "flow:ttl";
    let default_ttl = fkey(scope, "a-default");
    let short = fkey(scope, "b-short");
    let refreshed = fkey(scope, "c-refreshed");
    let long = fkey(scope, "d-long");
    let put = |k: &chatstate_core::FocusKey, ttl: Option<Duration>| {
        let focus = Arc::clone(&fx.focus);
        let k = k.clone();
        async move {
            focus
                .put(&k, Bytes::from_static(b"v"), PutMode::Overwrite, ttl)
                .await
                .must("put with ttl")
        }
    };

    // t = 0
    put(&default_ttl, None).await;
    put(&short, Some(unit)).await;
    put(&refreshed, None).await;
    put(&long, Some(unit * 10)).await;

    fx.advance(unit / 2).await; // t = 0.5
    assert!(
        fx.focus.get(&short).await.must("get short").is_some(),
        "a document is alive before its explicit TTL"
    );

    fx.advance(unit).await; // t = 1.5
    assert_eq!(
        fx.focus.get(&short).await.must("get short after ttl"),
        None,
        "a document put with an explicit TTL expires after it"
    );
    assert!(
        fx.focus
            .get(&default_ttl)
            .await
            .must("get default")
            .is_some(),
        "a document put without a TTL outlives a shorter explicit one"
    );

    fx.advance(unit / 2).await; // t = 2
    let again = put(&refreshed, None).await;
    assert_eq!(
        again.version, 2,
        "overwrite of a live document bumps its version"
    );
    let listed = fx.focus.list(scope).await.must("list at t=2");
    assert_eq!(
        names(&listed),
        vec!["a-default", "c-refreshed", "d-long"],
        "list leaves out the expired document"
    );

    fx.advance(unit * 3 / 2).await; // t = 3.5
    assert_eq!(
        fx.focus
            .get(&default_ttl)
            .await
            .must("get default after ttl"),
        None,
        "a document put without a TTL expires after the focus TTL"
    );
    assert!(
        fx.focus
            .get(&refreshed)
            .await
            .must("get refreshed")
            .is_some(),
        "a put refreshes the document's TTL"
    );
    assert!(
        fx.focus.get(&long).await.must("get long").is_some(),
        "an explicit TTL longer than the focus TTL is kept"
    );
    let listed = fx.focus.list(scope).await.must("list at t=3.5");
    assert_eq!(
        names(&listed),
        vec!["c-refreshed", "d-long"],
        "list leaves out documents expired by the focus TTL"
    );
    assert!(
        !fx.focus.delete(&default_ttl).await.must("delete expired"),
        "deleting an expired document returns false"
    );

    let recreated = fx
        .focus
        .put(&short, Bytes::from_static(b"new"), PutMode::Create, None)
        .await
        .must("create over an expired document");
    assert_eq!(
        recreated.version, 1,
        "a document created after expiry starts at version 1"
    );
    Outcome::Passed
}

/// A value over `max_value_bytes` is `InvalidInput` in every mode, and neither
/// changes an existing document nor creates a new one; a value at the limit is fine.
pub async fn focus_oversize_rejected(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            max_value_bytes: 64,
            ..StoreSettings::default()
        })
        .await;
    let k = fkey("flow", "big");
    let at_limit = Bytes::from(vec![b'a'; 64]);
    let over = Bytes::from(vec![b'b'; 65]);
    let stored = fx
        .focus
        .put(&k, at_limit.clone(), PutMode::Overwrite, None)
        .await
        .must("put at the limit");

    expect_err(
        fx.focus
            .put(&k, over.clone(), PutMode::Overwrite, None)
            .await,
        ErrorKind::InvalidInput,
        "overwrite with an oversize value",
    );
    expect_err(
        fx.focus
            .put(&k, over.clone(), PutMode::IfVersion(1), None)
            .await,
        ErrorKind::InvalidInput,
        "IfVersion put with an oversize value",
    );
    let got = fx.focus.get(&k).await.must("get after rejected puts");
    assert_eq!(
        got,
        Some(stored),
        "a rejected oversize put leaves the document unchanged"
    );

    let fresh = fkey("flow", "fresh");
    expect_err(
        fx.focus.put(&fresh, over, PutMode::Create, None).await,
        ErrorKind::InvalidInput,
        "create with an oversize value",
    );
    assert_eq!(
        fx.focus.get(&fresh).await.must("get fresh"),
        None,
        "a rejected oversize put creates nothing"
    );
    Outcome::Passed
}

/// Sixteen tasks incrementing one JSON counter document with get + `IfVersion` put
/// (retrying on `Conflict`) lose no increment: the value ends at 16, version 17.
pub async fn focus_concurrent_cas_loses_nothing(ctx: Ctx) -> Outcome {
    const TASKS: u64 = 16;
    const MAX_ATTEMPTS: usize = 10_000;
    let fx = ctx.open().await;
    let k = fkey("tenant:acme", "cas-counter");
    let v = fx
        .focus
        .put_value(&k, &0u64, PutMode::Create, None, Codec::Json)
        .await
        .must("create the counter document");
    assert_eq!(v, 1);

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let focus: Arc<dyn FocusStore> = Arc::clone(&fx.focus);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            for attempt in 1..=MAX_ATTEMPTS {
                let (n, version) = focus
                    .get_value::<u64>(&k, Codec::Json)
                    .await
                    .must("get the counter document")
                    .expect("the counter document exists");
                match focus
                    .put_value(&k, &(n + 1), PutMode::IfVersion(version), None, Codec::Json)
                    .await
                {
                    Ok(new_version) => {
                        assert_eq!(new_version, version + 1, "a CAS put returns version + 1");
                        return attempt;
                    }
                    Err(e) if e.kind() == ErrorKind::Conflict => tokio::task::yield_now().await,
                    Err(e) => panic!("CAS put failed with something other than Conflict: {e}"),
                }
            }
            panic!("a CAS loop did not succeed in {MAX_ATTEMPTS} attempts");
        }));
    }
    for task in tasks {
        task.await.expect("a CAS task panicked");
    }

    let (n, version) = fx
        .focus
        .get_value::<u64>(&k, Codec::Json)
        .await
        .must("final get")
        .expect("the counter document exists");
    assert_eq!(n, TASKS, "every CAS increment landed exactly once");
    assert_eq!(
        version,
        TASKS + 1,
        "every successful put bumped the version once"
    );
    Outcome::Passed
}
