//! SessionStore cases: records, the message window, patches, versions, TTL, listing.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use chatstate_core::{
    Codec, CounterKey, ErrorKind, Expected, FocusKey, KvCache, NewMessage, PutMode, Role,
    SessionPatch, SessionStoreExt, StoreSettings, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::cases::{Must, ckey, expect_err, skey};
use crate::{Ctx, Outcome};

fn settings(f: impl FnOnce(&mut StoreSettings)) -> StoreSettings {
    let mut s = StoreSettings::default();
    f(&mut s);
    s
}

/// A key that was never written reads as absent everywhere.
pub async fn session_get_missing_is_none(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "nobody");
    assert!(
        fx.sessions.get(&k).await.must("get").is_none(),
        "get of a missing session"
    );
    assert!(
        fx.sessions.load(&k).await.must("load").is_none(),
        "load of a missing session"
    );
    assert_eq!(
        fx.sessions.ttl(&k).await.must("ttl"),
        None,
        "ttl of a missing session"
    );
    assert!(
        !fx.sessions.touch(&k).await.must("touch"),
        "touch of a missing session"
    );
    assert!(
        !fx.sessions.delete(&k).await.must("delete"),
        "delete of a missing session"
    );
    assert!(
        fx.sessions.get(&k).await.must("get").is_none(),
        "touch must not create"
    );
    Outcome::Passed
}

/// A created session reads back with its initial fields, version 1 and a TTL.
pub async fn session_create_then_get(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("acme", "whatsapp", "5511999990000");
    let init = SessionPatch::new()
        .summary("new customer")
        .focus("billing")
        .paused(true)
        .token_estimate(12);
    let created = fx.sessions.create(&k, init).await.must("create");
    assert_eq!(created.key, k);
    assert!(!created.id.is_empty(), "a session has an id");
    assert_eq!(created.version, 1, "a new session is at version 1");
    assert_eq!(created.message_count, 0);
    assert_eq!(created.summary.as_deref(), Some("new customer"));
    assert_eq!(created.focus.as_deref(), Some("billing"));
    assert!(created.paused);
    assert_eq!(created.token_estimate, 12);
    assert_eq!(created.created_at, created.last_activity);
    assert_eq!(created.created_at, created.updated_at);
    let got = fx
        .sessions
        .get(&k)
        .await
        .must("get")
        .expect("created session");
    assert_eq!(got, created, "get returns the record create returned");
    let ttl = fx
        .sessions
        .ttl(&k)
        .await
        .must("ttl")
        .expect("a live session has a TTL");
    assert!(
        ttl <= fx.settings.session_ttl && !ttl.is_zero(),
        "ttl {ttl:?}"
    );
    Outcome::Passed
}

/// Creating a live session again fails with AlreadyExists and changes nothing.
pub async fn session_create_twice_is_already_exists(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let first = fx
        .sessions
        .create(&k, SessionPatch::new().summary("first"))
        .await
        .must("create");
    let r = fx
        .sessions
        .create(&k, SessionPatch::new().summary("second"))
        .await;
    expect_err(r, ErrorKind::AlreadyExists, "second create");
    let got = fx.sessions.get(&k).await.must("get").expect("session");
    assert_eq!(got, first, "a refused create leaves the record alone");
    Outcome::Passed
}

/// get_or_create creates once, then returns the same session unchanged.
pub async fn session_get_or_create_is_idempotent(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let a = fx.sessions.get_or_create(&k).await.must("get_or_create");
    let b = fx
        .sessions
        .get_or_create(&k)
        .await
        .must("get_or_create again");
    assert_eq!(a, b, "the second call returns the existing session");
    assert_eq!(b.version, 1);
    let updated = fx
        .sessions
        .update(&k, SessionPatch::new().summary("s"), Expected::Any)
        .await
        .must("update");
    let c = fx
        .sessions
        .get_or_create(&k)
        .await
        .must("get_or_create third");
    assert_eq!(c, updated, "get_or_create never resets an existing session");
    Outcome::Passed
}

/// load returns the record and the window together, consistent with each other.
pub async fn session_load_returns_record_and_messages(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    for text in ["one", "two", "three"] {
        fx.sessions
            .append_message(&k, NewMessage::user(text))
            .await
            .must("append");
    }
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(loaded.session.message_count, 3);
    let contents: Vec<_> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["one", "two", "three"], "oldest first");
    let seqs: Vec<_> = loaded.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "messages are numbered from 1");
    assert_eq!(
        loaded.window_tokens(),
        1 + 1 + 2,
        "tokens: a quarter of the characters, rounded up"
    );
    Outcome::Passed
}

/// delete removes the record and the messages; a later append starts afresh.
pub async fn session_delete_removes_everything(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    fx.sessions
        .append_messages(&k, vec![NewMessage::user("a"), NewMessage::user("b")])
        .await
        .must("append");
    assert!(
        fx.sessions.delete(&k).await.must("delete"),
        "delete of a live session"
    );
    assert!(fx.sessions.get(&k).await.must("get").is_none());
    assert!(fx.sessions.load(&k).await.must("load").is_none());
    assert_eq!(fx.sessions.ttl(&k).await.must("ttl"), None);
    let r = fx
        .sessions
        .append_message(&k, NewMessage::user("c"))
        .await
        .must("append after delete");
    assert!(r.created, "the append after a delete creates a new session");
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(loaded.messages.len(), 1, "old messages are gone");
    assert_eq!(loaded.messages[0].content, "c");
    assert_eq!(loaded.session.message_count, 1);
    Outcome::Passed
}

/// get_many answers in the order asked, None for missing keys, duplicates allowed.
pub async fn session_get_many_keeps_order_and_missing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let (a, b, c) = (
        skey("t", "c", "a"),
        skey("t", "c", "b"),
        skey("t", "c", "c"),
    );
    let sa = fx
        .sessions
        .create(&a, SessionPatch::new().summary("A"))
        .await
        .must("create a");
    let sc = fx
        .sessions
        .create(&c, SessionPatch::new().summary("C"))
        .await
        .must("create c");
    let got = fx
        .sessions
        .get_many(&[a.clone(), b, c, a])
        .await
        .must("get_many");
    assert_eq!(got, vec![Some(sa.clone()), None, Some(sc), Some(sa)]);
    assert!(
        fx.sessions
            .get_many(&[])
            .await
            .must("empty get_many")
            .is_empty()
    );
    Outcome::Passed
}

/// Appending to a missing session creates it; the receipt says so once.
pub async fn session_append_creates_missing_session(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let r1 = fx
        .sessions
        .append_message(&k, NewMessage::user("hi"))
        .await
        .must("first append");
    assert!(r1.created);
    assert_eq!((r1.message_count, r1.window_len), (1, 1));
    let r2 = fx
        .sessions
        .append_message(&k, NewMessage::assistant("hello"))
        .await
        .must("second append");
    assert!(!r2.created, "the second append finds the session");
    assert_eq!((r2.message_count, r2.window_len), (2, 2));
    let s = fx
        .sessions
        .get(&k)
        .await
        .must("get")
        .expect("created by append");
    assert_eq!(s.message_count, 2);
    let r = fx.sessions.append_messages(&k, vec![]).await;
    expect_err(r, ErrorKind::InvalidInput, "append of no messages");
    Outcome::Passed
}

/// The window keeps the newest N messages, oldest first, numbered by seq.
pub async fn session_window_keeps_newest_in_order(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with(settings(|s| s.window_size = 5)).await;
    let k = skey("t", "c", "u");
    for i in 0..12 {
        let r = fx
            .sessions
            .append_message(&k, NewMessage::user(format!("m{i}")))
            .await
            .must("append");
        assert_eq!(
            r.window_len,
            (i + 1).min(5),
            "window length after {} appends",
            i + 1
        );
    }
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    let contents: Vec<_> = loaded.messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(
        contents,
        ["m7", "m8", "m9", "m10", "m11"],
        "the newest five, in order"
    );
    let seqs: Vec<_> = loaded.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
    assert_eq!(
        loaded.session.message_count, 12,
        "message_count counts every append"
    );
    Outcome::Passed
}

/// A multi-message append keeps its order and is trimmed like single appends.
pub async fn session_append_batch_is_ordered_and_windowed(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with(settings(|s| s.window_size = 4)).await;
    let k = skey("t", "c", "u");
    let batch = |from: usize, n: usize| -> Vec<NewMessage> {
        (from..from + n)
            .map(|i| NewMessage::user(format!("b{i}")))
            .collect()
    };
    let r = fx
        .sessions
        .append_messages(&k, batch(0, 3))
        .await
        .must("append 3");
    assert_eq!((r.message_count, r.window_len), (3, 3));
    let r = fx
        .sessions
        .append_messages(&k, batch(3, 6))
        .await
        .must("append 6");
    assert_eq!((r.message_count, r.window_len), (9, 4));
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    let contents: Vec<_> = loaded.messages.iter().map(|m| m.content.clone()).collect();
    assert_eq!(contents, ["b5", "b6", "b7", "b8"]);
    Outcome::Passed
}

/// Appends move last_activity but not version or updated_at.
pub async fn session_append_sets_activity_not_version(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let created = fx
        .sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create");
    fx.advance(ctx.unit() / 2).await;
    fx.sessions
        .append_message(&k, NewMessage::user("x"))
        .await
        .must("append");
    let s = fx.sessions.get(&k).await.must("get").expect("session");
    assert!(
        s.last_activity > created.last_activity,
        "append moves last_activity ({} -> {})",
        created.last_activity,
        s.last_activity
    );
    assert_eq!(s.version, created.version, "append leaves version alone");
    assert_eq!(
        s.updated_at, created.updated_at,
        "append leaves updated_at alone"
    );
    assert_eq!(s.created_at, created.created_at);
    Outcome::Passed
}

/// Role, content (any UTF-8), metadata and time survive; unstamped messages get the
/// store's time.
pub async fn session_message_fields_roundtrip(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let meta = Bytes::from_static(b"\x00\xffraw meta");
    let content = "linha 1\nlinha 2 \u{0} nul, emoji 🙂, aspas \"x\", tab\t";
    let msgs = vec![
        NewMessage::new(Role::Tool, content)
            .with_metadata(meta.clone())
            .at(Timestamp(1_700_000_000_123)),
        NewMessage::new(Role::System, "sys"),
        NewMessage::new(Role::Assistant, ""),
    ];
    fx.sessions.append_messages(&k, msgs).await.must("append");
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    let m = &loaded.messages;
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].role, Role::Tool);
    assert_eq!(m[0].content, content);
    assert_eq!(m[0].metadata.as_ref(), Some(&meta));
    assert_eq!(
        m[0].at,
        Timestamp(1_700_000_000_123),
        "an explicit time is kept"
    );
    assert_eq!(m[1].role, Role::System);
    assert_eq!(m[1].metadata, None);
    assert_eq!(
        m[1].at, loaded.session.last_activity,
        "unstamped: the append's time"
    );
    assert_eq!((m[2].role, m[2].content.as_str()), (Role::Assistant, ""));
    Outcome::Passed
}

/// An oversize message fails the whole append with InvalidInput and writes nothing.
pub async fn session_oversize_message_rejected_nothing_written(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with(settings(|s| s.max_value_bytes = 100)).await;
    let k = skey("t", "c", "u");
    let r = fx
        .sessions
        .append_messages(
            &k,
            vec![NewMessage::user("ok"), NewMessage::user("x".repeat(101))],
        )
        .await;
    let err = expect_err(
        r,
        ErrorKind::InvalidInput,
        "append with an oversize message",
    );
    assert!(
        err.message().contains("101 bytes"),
        "the error says the size: {err}"
    );
    assert!(
        fx.sessions.load(&k).await.must("load").is_none(),
        "nothing was written"
    );
    fx.sessions
        .append_message(&k, NewMessage::user("x".repeat(100)))
        .await
        .must("a message at the limit");
    let meta = NewMessage::user("m").with_metadata(Bytes::from(vec![1u8; 101]));
    let r = fx.sessions.append_message(&k, meta).await;
    expect_err(r, ErrorKind::InvalidInput, "append with oversize metadata");
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(loaded.messages.len(), 1, "the refused append added nothing");
    let r = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().context_bytes(Bytes::from(vec![0u8; 101])),
            Expected::Any,
        )
        .await;
    expect_err(
        r,
        ErrorKind::InvalidInput,
        "update with an oversize context",
    );
    Outcome::Passed
}

/// The summary is cut to the configured characters, never inside a character.
pub async fn session_summary_truncated_on_char_boundary(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with(settings(|s| s.summary_max_chars = 5)).await;
    let k = skey("t", "c", "u");
    let s = fx
        .sessions
        .create(&k, SessionPatch::new().summary("ação🙂ok!"))
        .await
        .must("create");
    assert_eq!(s.summary.as_deref(), Some("ação🙂"), "cut to 5 characters");
    let s = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("🙂🙂🙂🙂🙂🙂🙂"),
            Expected::Any,
        )
        .await
        .must("update");
    assert_eq!(s.summary.as_deref(), Some("🙂🙂🙂🙂🙂"));
    let stored = fx.sessions.get(&k).await.must("get").expect("session");
    assert_eq!(
        stored.summary.as_deref(),
        Some("🙂🙂🙂🙂🙂"),
        "stored cut, not only returned"
    );
    let s = fx
        .sessions
        .update(&k, SessionPatch::new().summary("abcde"), Expected::Any)
        .await
        .must("update at the limit");
    assert_eq!(
        s.summary.as_deref(),
        Some("abcde"),
        "a summary at the limit is kept"
    );
    Outcome::Passed
}

/// A patch changes only the fields it names, also under concurrent patches.
pub async fn session_patch_leaves_other_fields_alone(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let ctx_bytes = Bytes::from_static(b"CS1J{\"step\":2}");
    fx.sessions
        .create(
            &k,
            SessionPatch::new()
                .focus("billing")
                .context_bytes(ctx_bytes.clone()),
        )
        .await
        .must("create");
    let s = fx
        .sessions
        .update(&k, SessionPatch::new().summary("sum"), Expected::Any)
        .await
        .must("update summary");
    assert_eq!(
        s.focus.as_deref(),
        Some("billing"),
        "focus survives a summary patch"
    );
    assert_eq!(
        s.context.as_ref(),
        Some(&ctx_bytes),
        "context survives a summary patch"
    );
    // Concurrent patches of different fields: all of them land.
    let fields: Vec<SessionPatch> = vec![
        SessionPatch::new().paused(true),
        SessionPatch::new().token_estimate(99),
        SessionPatch::new().stats_bytes(Bytes::from_static(b"stats")),
        SessionPatch::new().metadata_bytes(Bytes::from_static(b"meta")),
        SessionPatch::new().focus("support"),
    ];
    let tasks: Vec<_> = fields
        .into_iter()
        .map(|p| {
            let store = Arc::clone(&fx.sessions);
            let k = k.clone();
            tokio::spawn(async move { store.update(&k, p, Expected::Any).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").must("concurrent update");
    }
    let s = fx.sessions.get(&k).await.must("get").expect("session");
    assert!(s.paused);
    assert_eq!(s.token_estimate, 99);
    assert_eq!(s.stats.as_deref(), Some(&b"stats"[..]));
    assert_eq!(s.metadata.as_deref(), Some(&b"meta"[..]));
    assert_eq!(s.focus.as_deref(), Some("support"));
    assert_eq!(s.summary.as_deref(), Some("sum"));
    assert_eq!(s.context.as_ref(), Some(&ctx_bytes));
    assert_eq!(s.version, 7, "create + 6 updates");
    Outcome::Passed
}

/// Clearing a field makes it None and leaves the rest.
pub async fn session_patch_can_clear_fields(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let full = SessionPatch::new()
        .summary("s")
        .focus("f")
        .metadata_bytes(Bytes::from_static(b"m"))
        .context_bytes(Bytes::from_static(b"c"))
        .stats_bytes(Bytes::from_static(b"st"));
    fx.sessions.create(&k, full).await.must("create");
    let s = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().clear_summary().clear_context(),
            Expected::Any,
        )
        .await
        .must("clear two");
    assert_eq!((s.summary.as_deref(), s.context.as_deref()), (None, None));
    assert_eq!(s.focus.as_deref(), Some("f"));
    let s = fx
        .sessions
        .update(
            &k,
            SessionPatch::new()
                .clear_focus()
                .clear_metadata()
                .clear_stats(),
            Expected::Any,
        )
        .await
        .must("clear the rest");
    let stored = fx.sessions.get(&k).await.must("get").expect("session");
    assert_eq!(stored, s);
    assert_eq!(
        (stored.focus, stored.metadata, stored.stats),
        (None, None, None),
        "cleared fields read back as None"
    );
    Outcome::Passed
}

/// Updating a missing session is NotFound and creates nothing.
pub async fn session_update_missing_is_not_found(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "ghost");
    let r = fx
        .sessions
        .update(&k, SessionPatch::new().summary("x"), Expected::Any)
        .await;
    expect_err(r, ErrorKind::NotFound, "update of a missing session");
    let r = fx
        .sessions
        .update(&k, SessionPatch::new().summary("x"), Expected::Version(1))
        .await;
    expect_err(
        r,
        ErrorKind::NotFound,
        "versioned update of a missing session",
    );
    assert!(
        fx.sessions.get(&k).await.must("get").is_none(),
        "update must not create"
    );
    Outcome::Passed
}

/// An update at the current version succeeds and bumps the version by one.
pub async fn session_update_with_current_version_bumps_it(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let s0 = fx
        .sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create");
    fx.advance(ctx.unit() / 2).await;
    let s1 = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("one"),
            Expected::Version(s0.version),
        )
        .await
        .must("update at the current version");
    assert_eq!(s1.version, s0.version + 1);
    assert!(s1.updated_at > s0.updated_at, "update moves updated_at");
    let s2 = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("two"),
            Expected::Version(s1.version),
        )
        .await
        .must("second update");
    assert_eq!(s2.version, s0.version + 2);
    assert_eq!(s2.summary.as_deref(), Some("two"));
    Outcome::Passed
}

/// An update at a stale version is a Conflict and changes nothing.
pub async fn session_update_with_stale_version_conflicts(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let s0 = fx
        .sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create");
    let s1 = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("winner"),
            Expected::Version(s0.version),
        )
        .await
        .must("first update");
    let r = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("loser"),
            Expected::Version(s0.version),
        )
        .await;
    expect_err(r, ErrorKind::Conflict, "update at a stale version");
    let r = fx
        .sessions
        .update(
            &k,
            SessionPatch::new().summary("future"),
            Expected::Version(s1.version + 5),
        )
        .await;
    expect_err(r, ErrorKind::Conflict, "update at a future version");
    let now = fx.sessions.get(&k).await.must("get").expect("session");
    assert_eq!(now, s1, "a refused update changes nothing");
    Outcome::Passed
}

/// Of many read-modify-write updates at one version, exactly one wins.
pub async fn session_concurrent_versioned_updates_one_wins(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let v = fx
        .sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create")
        .version;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = Arc::clone(&fx.sessions);
            let k = k.clone();
            tokio::spawn(async move {
                store
                    .update(
                        &k,
                        SessionPatch::new().summary(format!("writer {i}")),
                        Expected::Version(v),
                    )
                    .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(s) => winners.push(s),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "losers get Conflict: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    let stored = fx.sessions.get(&k).await.must("get").expect("session");
    assert_eq!(
        stored.summary, winners[0].summary,
        "the winner's write is the one stored"
    );
    assert_eq!(stored.version, v + 1);
    Outcome::Passed
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Flow {
    step: u32,
    items: Vec<String>,
    note: Option<String>,
}

/// The user's own types round-trip through context, metadata and stats, with
/// either codec; the wrong codec is a Decode error.
pub async fn session_typed_context_roundtrip(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = skey("t", "c", "u");
    let flow = Flow {
        step: 3,
        items: vec!["pizza".into(), "açaí 🍧".into()],
        note: None,
    };
    for codec in [Codec::Bincode, Codec::Json] {
        let patch = SessionPatch::new()
            .context(&flow, codec)
            .and_then(|p| p.metadata(&("vip", 1u8), codec))
            .and_then(|p| p.stats(&vec![1u64, 2, 3], codec))
            .must("encode");
        fx.sessions.delete(&k).await.must("delete");
        fx.sessions.create(&k, patch).await.must("create");
        let s = fx.sessions.get(&k).await.must("get").expect("session");
        assert_eq!(
            s.context_as::<Flow>(codec).must("decode context"),
            Some(flow_clone(&flow))
        );
        assert_eq!(
            s.metadata_as::<(String, u8)>(codec).must("decode"),
            Some(("vip".into(), 1))
        );
        assert_eq!(
            s.stats_as::<Vec<u64>>(codec).must("decode"),
            Some(vec![1, 2, 3])
        );
        let other = if codec == Codec::Json {
            Codec::Bincode
        } else {
            Codec::Json
        };
        assert_eq!(
            s.context_as::<Flow>(other)
                .must("decode holding the other codec")
                .map(|f| f.items),
            Some(flow.items.clone()),
            "a value reads with the codec its header names"
        );
    }
    Outcome::Passed
}

fn flow_clone(f: &Flow) -> Flow {
    Flow {
        step: f.step,
        items: f.items.clone(),
        note: f.note.clone(),
    }
}

/// When the TTL runs out, record and messages are gone together, on every read.
pub async fn session_ttl_expires_every_part(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let k = skey("t", "c", "u");
    fx.sessions
        .append_messages(&k, vec![NewMessage::user("a"), NewMessage::user("b")])
        .await
        .must("append");
    fx.advance(u).await;
    assert!(
        fx.sessions.load(&k).await.must("load").is_some(),
        "alive before the TTL"
    );
    fx.advance(u * 3 / 2).await;
    assert!(
        fx.sessions.get(&k).await.must("get").is_none(),
        "record expired"
    );
    assert!(
        fx.sessions.load(&k).await.must("load").is_none(),
        "load after expiry"
    );
    assert_eq!(fx.sessions.ttl(&k).await.must("ttl"), None);
    assert_eq!(
        fx.sessions
            .get_many(std::slice::from_ref(&k))
            .await
            .must("get_many"),
        vec![None]
    );
    let page = fx.sessions.list("t", None, 10).await.must("list");
    assert!(page.items.is_empty(), "an expired session is not listed");
    let r = fx
        .sessions
        .append_message(&k, NewMessage::user("c"))
        .await
        .must("append after expiry");
    assert!(r.created, "after expiry an append creates a new session");
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    let contents: Vec<_> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["c"], "no message outlives its session");
    Outcome::Passed
}

/// Each append sets the TTL back to the full session TTL.
pub async fn session_ttl_slides_on_activity(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let k = skey("t", "c", "u");
    fx.sessions
        .append_message(&k, NewMessage::user("a"))
        .await
        .must("append");
    fx.advance(u * 3 / 2).await;
    fx.sessions
        .append_message(&k, NewMessage::user("b"))
        .await
        .must("append");
    let ttl = fx.sessions.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        ttl > u * 3 / 2,
        "the append refreshed the TTL (left: {ttl:?})"
    );
    fx.advance(u * 3 / 2).await;
    let loaded = fx
        .sessions
        .load(&k)
        .await
        .must("load")
        .expect("alive past the first TTL");
    assert_eq!(loaded.messages.len(), 2, "messages slide with the record");
    fx.advance(u).await;
    assert!(
        fx.sessions.load(&k).await.must("load").is_none(),
        "gone a TTL after the last append"
    );
    Outcome::Passed
}

/// Reads (get, load, get_many, ttl, list) do not refresh the TTL.
pub async fn session_reads_do_not_extend_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let k = skey("t", "c", "u");
    fx.sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create");
    fx.advance(u * 3 / 2).await;
    assert!(fx.sessions.get(&k).await.must("get").is_some());
    assert!(fx.sessions.load(&k).await.must("load").is_some());
    assert!(
        fx.sessions
            .get_many(std::slice::from_ref(&k))
            .await
            .must("get_many")[0]
            .is_some()
    );
    assert!(fx.sessions.ttl(&k).await.must("ttl").is_some());
    assert_eq!(
        fx.sessions
            .list("t", None, 5)
            .await
            .must("list")
            .items
            .len(),
        1
    );
    fx.advance(u).await;
    assert!(
        fx.sessions.get(&k).await.must("get").is_none(),
        "reads did not extend the TTL"
    );
    Outcome::Passed
}

/// A session created again after expiry is new: new id, no old fields or messages.
pub async fn session_recreated_after_expiry_is_fresh(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(1).await;
    let k = skey("t", "c", "u");
    let old = fx
        .sessions
        .create(&k, SessionPatch::new().summary("old").paused(true))
        .await
        .must("create");
    fx.sessions
        .append_message(&k, NewMessage::user("old message"))
        .await
        .must("append");
    fx.advance(ctx.unit() * 3 / 2).await;
    let new = fx
        .sessions
        .get_or_create(&k)
        .await
        .must("get_or_create after expiry");
    assert_ne!(new.id, old.id, "a new session has a new id");
    assert_eq!(
        (new.summary, new.paused, new.message_count, new.version),
        (None, false, 0, 1)
    );
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert!(loaded.messages.is_empty(), "old messages did not come back");
    fx.advance(ctx.unit() * 3 / 2).await;
    fx.sessions
        .create(&k, SessionPatch::new())
        .await
        .must("create after the second expiry");
    Outcome::Passed
}

/// touch moves last_activity and refreshes the TTL of the whole session.
pub async fn session_touch_refreshes_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    let k = skey("t", "c", "u");
    fx.sessions
        .append_message(&k, NewMessage::user("a"))
        .await
        .must("append");
    let before = fx.sessions.get(&k).await.must("get").expect("session");
    fx.advance(u * 3 / 2).await;
    assert!(
        fx.sessions.touch(&k).await.must("touch"),
        "touch of a live session"
    );
    let after = fx.sessions.get(&k).await.must("get").expect("session");
    assert!(
        after.last_activity > before.last_activity,
        "touch moves last_activity"
    );
    assert_eq!(after.version, before.version, "touch leaves version alone");
    fx.advance(u * 3 / 2).await;
    let loaded = fx
        .sessions
        .load(&k)
        .await
        .must("load")
        .expect("alive after touch");
    assert_eq!(
        loaded.messages.len(),
        1,
        "touch kept the messages alive too"
    );
    fx.advance(u).await;
    assert!(
        !fx.sessions.touch(&k).await.must("touch"),
        "touch cannot revive"
    );
    assert!(fx.sessions.get(&k).await.must("get").is_none());
    Outcome::Passed
}

/// Listing pages through a tenant's sessions: each exactly once, no other tenant's.
pub async fn session_list_pages_tenant_exactly_once(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let channel = if i % 2 == 0 { "whatsapp" } else { "web" };
        let k = skey("acme", channel, &format!("user:{i}"));
        fx.sessions.get_or_create(&k).await.must("create");
        want.insert(k);
    }
    for other in ["acme2", "acm", "ACME"] {
        fx.sessions
            .get_or_create(&skey(other, "whatsapp", "user:1"))
            .await
            .must("create other tenant");
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let page = fx.sessions.list("acme", cursor, 5).await.must("list");
        assert!(page.items.len() <= 5, "a page holds at most the limit");
        seen.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert!(cursor.is_none(), "listing must end");
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no session is listed twice");
    assert_eq!(unique, want, "every session of the tenant, and only those");
    let r = fx.sessions.list("acme", None, 0).await;
    expect_err(r, ErrorKind::InvalidInput, "list with limit 0");
    let empty = fx
        .sessions
        .list("nobody", None, 5)
        .await
        .must("list an empty tenant");
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());
    Outcome::Passed
}

/// Expired sessions drop out of the listing.
pub async fn session_list_skips_expired(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let u = ctx.unit();
    for user in ["a", "b", "c"] {
        fx.sessions
            .get_or_create(&skey("t", "c", user))
            .await
            .must("create");
    }
    fx.advance(u * 3 / 2).await;
    assert!(fx.sessions.touch(&skey("t", "c", "b")).await.must("touch"));
    fx.sessions
        .get_or_create(&skey("t", "c", "d"))
        .await
        .must("create d");
    fx.advance(u).await;
    let mut users = Vec::new();
    let mut cursor = None;
    loop {
        let page = fx.sessions.list("t", cursor, 1).await.must("list");
        users.extend(page.items.into_iter().map(|k| k.user().to_string()));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    users.sort();
    assert_eq!(users, ["b", "d"], "only live sessions are listed");
    Outcome::Passed
}

/// 64 tasks appending to one session lose no message and no count.
pub async fn session_concurrent_appends_lose_nothing(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with(settings(|s| s.window_size = 400)).await;
    let k = skey("t", "c", "hot");
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let store = Arc::clone(&fx.sessions);
            let k = k.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    store
                        .append_message(&k, NewMessage::user(format!("{t}/{i}")))
                        .await
                        .must("concurrent append");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("append task");
    }
    let loaded = fx.sessions.load(&k).await.must("load").expect("session");
    assert_eq!(loaded.session.message_count, 320, "every append counted");
    assert_eq!(loaded.messages.len(), 320, "every message kept");
    let seqs: Vec<u64> = loaded.messages.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=320).collect::<Vec<_>>(),
        "seqs are unique and contiguous"
    );
    let contents: BTreeSet<&str> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents.len(), 320, "no message duplicated or lost");
    // Each task's own messages stay in the order it appended them.
    for t in 0..64 {
        let mine: Vec<_> = loaded
            .messages
            .iter()
            .filter(|m| m.content.starts_with(&format!("{t}/")))
            .map(|m| m.content.clone())
            .collect();
        let want: Vec<_> = (0..5).map(|i| format!("{t}/{i}")).collect();
        assert_eq!(mine, want, "task {t}'s messages in its order");
    }
    Outcome::Passed
}

/// Everything written is there after the store is opened again (persistent
/// backends only).
pub async fn session_data_survives_reopen(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    if !fx.capabilities().persistent {
        return Outcome::Skipped("the stores report they are not persistent".into());
    }
    let k = skey("t", "c", "u");
    fx.sessions
        .create(&k, SessionPatch::new().summary("kept"))
        .await
        .must("create");
    fx.sessions
        .append_messages(&k, vec![NewMessage::user("1"), NewMessage::assistant("2")])
        .await
        .must("append");
    let fkey = FocusKey::new("flow", "current").must("focus key");
    fx.focus
        .put(&fkey, Bytes::from_static(b"doc"), PutMode::Create, None)
        .await
        .must("focus put");
    let counter = CounterKey::new("messages").must("counter key");
    fx.counters.add(&counter, 5).await.must("counter add");
    let cache_key = ckey("customers", "42");
    fx.cache
        .set(&cache_key, Bytes::from_static(b"ana"), None)
        .await
        .must("cache set");
    let lease = fx
        .sessions
        .try_lock(&k, "reminder", ctx.unit() * 60)
        .await
        .must("lock")
        .expect("free lock");
    let before = fx.sessions.load(&k).await.must("load").expect("session");

    let again = ctx.reopen(&fx).await;
    let after = again
        .sessions
        .load(&k)
        .await
        .must("load after reopen")
        .expect("session kept");
    assert_eq!(after.session, before.session);
    assert_eq!(after.messages, before.messages);
    let doc = again
        .focus
        .get(&fkey)
        .await
        .must("focus get")
        .expect("focus kept");
    assert_eq!((doc.value.as_ref(), doc.version), (&b"doc"[..], 1));
    assert_eq!(again.counters.get(&counter).await.must("counter get"), 5);
    assert_eq!(
        KvCache::get(again.cache.as_ref(), &cache_key)
            .await
            .must("cache get")
            .as_deref(),
        Some(&b"ana"[..])
    );
    let second = again
        .sessions
        .try_lock(&k, "reminder", ctx.unit())
        .await
        .must("lock after reopen");
    assert!(second.is_none(), "a held lock is still held after reopen");
    assert!(
        again.sessions.release_lock(&lease).await.must("release"),
        "the holder can release"
    );
    Outcome::Passed
}
