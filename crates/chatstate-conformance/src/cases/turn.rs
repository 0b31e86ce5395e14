//! Turn commits (`SessionStore::commit_turn`): messages and a patch in one atomic
//! step, with an optional expected version.

use std::sync::Arc;

use bytes::Bytes;
use chatstate_core::model::estimate_tokens;
use chatstate_core::{
    ErrorKind, Expected, NewMessage, SessionPatch, SessionStoreExt, StoreSettings, Turn,
};

use crate::cases::{Must, expect_err, skey};
use crate::{Ctx, Outcome};

fn contents(loaded: &chatstate_core::LoadedSession) -> Vec<String> {
    loaded.messages.iter().map(|m| m.content.clone()).collect()
}

/// A turn lands its messages and its patch together: on a missing session it
/// creates it with the patch as init (version 1); on a live one it appends, applies
/// the patch and bumps the version once; a turn without a patch leaves `version`
/// and `updated_at` alone; the record comes back only when asked for.
pub async fn turn_commit_lands_messages_and_patch_together(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    let r = s
        .commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("oi"))
                .message(NewMessage::assistant("olá!"))
                .patch(SessionPatch::new().summary("greeted").token_estimate(7)),
        )
        .await
        .must("first turn");
    assert!(r.append.created, "the first turn created the session");
    assert_eq!(r.version, 1, "created with the patch as init");
    assert_eq!((r.append.message_count, r.append.window_len), (2, 2));
    assert_eq!(r.session, None, "no record unless asked");
    let loaded = s.load(&k).await.must("load").expect("session");
    assert_eq!(contents(&loaded), ["oi", "olá!"]);
    assert_eq!(loaded.session.summary.as_deref(), Some("greeted"));
    assert_eq!(loaded.session.token_estimate, 7);
    assert_eq!(loaded.session.version, 1);

    fx.advance(ctx.unit() / 10).await;
    let r = s
        .commit_turn(
            &k,
            Turn::new()
                .messages([NewMessage::user("boleto?"), NewMessage::assistant("segue")])
                .patch(SessionPatch::new().summary("asked for an invoice"))
                .expect(Expected::Version(1))
                .returning_session(),
        )
        .await
        .must("second turn");
    assert!(!r.append.created);
    assert_eq!(r.version, 2, "one bump for the whole turn");
    assert_eq!((r.append.message_count, r.append.window_len), (4, 4));
    let stored = s.get(&k).await.must("get").expect("session");
    assert_eq!(
        r.session.as_ref(),
        Some(&stored),
        "the returned record is the stored one"
    );
    assert_eq!(stored.summary.as_deref(), Some("asked for an invoice"));
    assert_eq!(
        stored.token_estimate, 7,
        "fields the patch does not name stay"
    );
    assert!(stored.updated_at > loaded.session.updated_at);
    assert_eq!(stored.last_activity, stored.updated_at);

    fx.advance(ctx.unit() / 10).await;
    let r = s
        .commit_turn(&k, Turn::new().message(NewMessage::user("obrigado")))
        .await
        .must("a turn without a patch");
    assert_eq!(r.version, 2, "no patch, no version bump");
    let after = s.load(&k).await.must("load").expect("session");
    assert_eq!(after.session.version, 2);
    assert_eq!(after.session.updated_at, stored.updated_at);
    assert!(after.session.last_activity > stored.last_activity);
    assert_eq!(after.messages.len(), 5);
    assert_eq!(
        after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    Outcome::Passed
}

/// A turn expecting a version the record is not at fails with `Conflict` and
/// writes nothing (no message, no field, no version); one expecting a version of a
/// missing session is `NotFound` and creates nothing.
pub async fn turn_commit_conflict_writes_nothing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    let e = expect_err(
        s.commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("oi"))
                .expect(Expected::Version(1)),
        )
        .await,
        ErrorKind::NotFound,
        "a versioned turn on a missing session",
    );
    assert_eq!(e.operation(), Some("commit_turn"), "{e}");
    assert!(s.load(&k).await.must("load").is_none(), "nothing created");

    s.commit_turn(
        &k,
        Turn::new()
            .message(NewMessage::user("oi"))
            .patch(SessionPatch::new().summary("first")),
    )
    .await
    .must("first turn");
    let before = s.load(&k).await.must("load").expect("session");
    let ttl_before = s.ttl(&k).await.must("ttl").expect("alive");
    fx.advance(ctx.unit() / 4).await;
    let e = expect_err(
        s.commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("lost"))
                .patch(SessionPatch::new().summary("lost").paused(true))
                .expect(Expected::Version(before.session.version + 5)),
        )
        .await,
        ErrorKind::Conflict,
        "a turn at a stale version",
    );
    assert!(
        e.message()
            .contains(&format!("session is at version {}", before.session.version)),
        "the conflict names the stored version: {e}"
    );
    let after = s.load(&k).await.must("load").expect("session");
    assert_eq!(after, before, "the refused turn wrote nothing");
    let ttl_after = s.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        ttl_after < ttl_before,
        "nor refreshed the TTL ({ttl_before:?} then {ttl_after:?})"
    );
    Outcome::Passed
}

/// Commits `turn(i)` for 16 writers `i` at once; the ones that landed, with their
/// receipts. Every other one must be a `Conflict`.
async fn race(
    fx: &crate::Fixture,
    k: &chatstate_core::SessionKey,
    turn: impl Fn(usize) -> Turn,
) -> Vec<(usize, chatstate_core::TurnReceipt)> {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (store, k, turn) = (Arc::clone(&fx.sessions), k.clone(), turn(i));
            tokio::spawn(async move { (i, store.commit_turn(&k, turn).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (i, Ok(r)) => winners.push((i, r)),
            (_, Err(e)) => assert_eq!(e.kind(), ErrorKind::Conflict, "losers get Conflict: {e}"),
        }
    }
    winners
}

/// Of many concurrent turns expecting the same version exactly one lands, with its
/// messages and its patch; the others are `Conflict` and leave no message behind.
pub async fn turn_commit_concurrent_versioned_one_wins(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let v = fx
        .sessions
        .commit_turn(&k, Turn::new().message(NewMessage::user("start")))
        .await
        .must("first turn")
        .version;
    let winners = race(&fx, &k, |i| {
        Turn::new()
            .messages([
                NewMessage::user(format!("q{i}")),
                NewMessage::assistant(format!("a{i}")),
            ])
            .patch(SessionPatch::new().summary(format!("writer {i}")))
            .expect(Expected::Version(v))
    })
    .await;
    assert_eq!(winners.len(), 1, "exactly one turn lands");
    let (i, r) = &winners[0];
    assert_eq!(r.version, v + 1);
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(
        contents(&loaded),
        ["start".to_string(), format!("q{i}"), format!("a{i}")],
        "only the winner's messages"
    );
    assert_eq!(loaded.session.summary, Some(format!("writer {i}")));
    assert_eq!(loaded.session.message_count, 3);
    Outcome::Passed
}

/// A missing session is at version 0: of many concurrent first turns expecting
/// version 0 exactly one creates the session, the others are `Conflict` and write
/// nothing; once it exists, `Version(0)` is a `Conflict` too.
pub async fn turn_commit_first_turn_expecting_version_zero_one_wins(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "new");
    let winners = race(&fx, &k, |i| {
        Turn::new()
            .message(NewMessage::user(format!("hello {i}")))
            .patch(SessionPatch::new().summary(format!("writer {i}")))
            .expect(Expected::Version(0))
    })
    .await;
    assert_eq!(winners.len(), 1, "exactly one first turn lands");
    let (i, r) = &winners[0];
    assert!(r.append.created, "the winner created the session");
    assert_eq!((r.version, r.append.message_count), (1, 1));
    let e = expect_err(
        fx.sessions
            .commit_turn(
                &k,
                Turn::new()
                    .message(NewMessage::user("late"))
                    .expect(Expected::Version(0)),
            )
            .await,
        ErrorKind::Conflict,
        "version 0 on a live session",
    );
    assert!(
        e.to_string().contains("version 1"),
        "names the version: {e}"
    );
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(
        contents(&loaded),
        [format!("hello {i}")],
        "only the winner's message"
    );
    assert_eq!(loaded.session.summary, Some(format!("writer {i}")));
    assert_eq!(loaded.session.version, 1);
    Outcome::Passed
}

/// A turn refreshes the TTL of every part, even one with only a patch.
pub async fn turn_commit_refreshes_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    s.commit_turn(&k, Turn::new().message(NewMessage::user("a")))
        .await
        .must("turn");
    fx.advance(u * 3 / 2).await;
    s.commit_turn(
        &k,
        Turn::new().patch(SessionPatch::new().summary("patch only")),
    )
    .await
    .must("turn");
    let ttl = s.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        ttl > u * 3 / 2,
        "the turn refreshed the TTL (left: {ttl:?})"
    );
    fx.advance(u * 3 / 2).await;
    let loaded = s
        .load(&k)
        .await
        .must("load")
        .expect("alive past the first TTL");
    assert_eq!(
        contents(&loaded),
        ["a"],
        "the messages slid with the record"
    );
    fx.advance(u).await;
    assert!(
        s.load(&k).await.must("load").is_none(),
        "gone a TTL after the last turn"
    );
    Outcome::Passed
}

/// A turn trims the window like an append and says what it trimmed.
pub async fn turn_commit_trims_the_window(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            window_size: 3,
            ..StoreSettings::default()
        })
        .await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    s.append_messages(
        &k,
        vec![NewMessage::user("olá"), NewMessage::user("abcdefghi")],
    )
    .await
    .must("append");
    let r = s
        .commit_turn(
            &k,
            Turn::new()
                .messages(["x", "y", "z"].map(NewMessage::user))
                .patch(SessionPatch::new().summary("s")),
        )
        .await
        .must("turn");
    assert_eq!(r.append.trimmed_messages, 2);
    assert_eq!(
        r.append.trimmed_tokens,
        estimate_tokens("olá") + estimate_tokens("abcdefghi")
    );
    assert_eq!((r.append.message_count, r.append.window_len), (5, 3));
    let loaded = s.load(&k).await.must("load").expect("session");
    assert_eq!(contents(&loaded), ["x", "y", "z"]);
    assert_eq!(loaded.session.summary.as_deref(), Some("s"));

    // A turn bringing more messages than the window trims every stored one, then
    // its own oldest: they never reach the window, and their tokens are counted.
    let r = s
        .commit_turn(
            &k,
            Turn::new().messages(["first!", "b", "c", "d", "e"].map(NewMessage::user)),
        )
        .await
        .must("a turn over the window");
    assert_eq!(r.append.trimmed_messages, 3 + 2);
    assert_eq!(
        r.append.trimmed_tokens,
        ["x", "y", "z", "first!", "b"]
            .iter()
            .map(|c| estimate_tokens(c))
            .sum::<u64>()
    );
    assert_eq!((r.append.message_count, r.append.window_len), (10, 3));
    let loaded = s.load(&k).await.must("load").expect("session");
    assert_eq!(contents(&loaded), ["c", "d", "e"]);
    assert_eq!(
        loaded.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [8, 9, 10],
        "numbered in order, trimmed ones included"
    );
    Outcome::Passed
}

/// An oversize message or patch value refuses the whole turn: `InvalidInput`, and
/// neither the messages nor the patch are written.
pub async fn turn_commit_oversize_writes_nothing(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            max_value_bytes: 100,
            ..StoreSettings::default()
        })
        .await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    let e = expect_err(
        s.commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("ok"))
                .patch(SessionPatch::new().context_bytes(Bytes::from(vec![0u8; 101]))),
        )
        .await,
        ErrorKind::InvalidInput,
        "a turn with an oversize context",
    );
    assert_eq!(e.operation(), Some("commit_turn"), "{e}");
    assert!(s.load(&k).await.must("load").is_none(), "nothing created");
    s.append_message(&k, NewMessage::user("kept"))
        .await
        .must("append");
    let before = s.load(&k).await.must("load").expect("session");
    expect_err(
        s.commit_turn(
            &k,
            Turn::new()
                .messages([NewMessage::user("ok"), NewMessage::user("x".repeat(101))])
                .patch(SessionPatch::new().summary("lost")),
        )
        .await,
        ErrorKind::InvalidInput,
        "a turn with an oversize message",
    );
    assert_eq!(
        s.load(&k).await.must("load").expect("session"),
        before,
        "the refused turn wrote nothing"
    );
    Outcome::Passed
}
