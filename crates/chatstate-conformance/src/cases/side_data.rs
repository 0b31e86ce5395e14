//! Session side data (`SessionStore::set_data` and friends) and append receipts.

use bytes::Bytes;
use chatstate_core::model::{MAX_SESSION_DATA_NAMES, estimate_tokens};
use chatstate_core::{
    Codec, ErrorKind, Expected, NewMessage, SessionPatch, SessionStoreExt, StoreSettings,
};

use crate::cases::{Must, expect_err, skey};
use crate::{Ctx, Outcome};

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// Side values are set, read (one or several, in order), replaced and deleted on
/// a live session; they never create one; the record (version, `updated_at`,
/// `last_activity`, window) does not change, so a versioned update read before
/// them still applies.
pub async fn session_side_data_roundtrip_leaves_the_record_alone(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    let e = expect_err(
        s.set_data(&k, "thread", Bytes::from_static(b"x")).await,
        ErrorKind::NotFound,
        "set_data without a session",
    );
    assert_eq!(e.operation(), Some("set_data"), "{e}");
    assert!(!s.delete_data(&k, "thread").await.must("delete_data"));
    assert!(
        s.get(&k).await.must("get").is_none(),
        "neither set_data nor delete_data creates a session"
    );
    assert_eq!(s.get_data(&k, "thread").await.must("get_data"), None);
    assert_eq!(
        s.get_data_many(&k, &names(&["a", "b"]))
            .await
            .must("get_data_many"),
        [None, None]
    );

    s.append_message(&k, NewMessage::user("oi"))
        .await
        .must("append");
    let before = s.load(&k).await.must("load").expect("session");
    fx.advance(ctx.unit() / 10).await;
    s.set_data(&k, "thread", Bytes::from_static(b"thr_1"))
        .await
        .must("set_data");
    s.set_data(&k, "tool:weather", Bytes::from_static(&[0, 159, 255]))
        .await
        .must("set_data");
    s.set_data(&k, "empty", Bytes::new()).await.must("set_data");
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data"),
        Some(Bytes::from_static(b"thr_1"))
    );
    assert_eq!(
        s.get_data_many(&k, &names(&["tool:weather", "missing", "thread", "empty"]))
            .await
            .must("get_data_many"),
        [
            Some(Bytes::from_static(&[0, 159, 255])),
            None,
            Some(Bytes::from_static(b"thr_1")),
            Some(Bytes::new()),
        ],
        "in the order asked, binary and empty values exact"
    );
    assert!(
        s.get_data_many(&k, &[])
            .await
            .must("get_data_many")
            .is_empty()
    );
    s.set_data(&k, "thread", Bytes::from_static(b"thr_2"))
        .await
        .must("replace");
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data"),
        Some(Bytes::from_static(b"thr_2")),
        "a second set replaces"
    );

    let after = s.load(&k).await.must("load").expect("session");
    assert_eq!(
        after, before,
        "side data is neither in the record nor the window, and changes neither"
    );
    s.update(
        &k,
        SessionPatch::new().summary("s"),
        Expected::Version(before.session.version),
    )
    .await
    .must("a versioned update read before the side writes still applies");

    assert!(s.delete_data(&k, "thread").await.must("delete_data"));
    assert!(
        !s.delete_data(&k, "thread").await.must("delete_data"),
        "a second delete finds nothing"
    );
    assert_eq!(s.get_data(&k, "thread").await.must("get_data"), None);
    assert_eq!(
        s.get_data(&k, "tool:weather").await.must("get_data"),
        Some(Bytes::from_static(&[0, 159, 255])),
        "other names are left alone"
    );

    // Typed, through a codec.
    s.set_data_value(&k, "ctx", &("Ana", 31u8), Codec::Json)
        .await
        .must("set_data_value");
    let typed: Option<(String, u8)> = s
        .get_data_value(&k, "ctx", Codec::Json)
        .await
        .must("get_data_value");
    assert_eq!(typed, Some(("Ana".to_string(), 31)));
    let e = expect_err(
        s.get_data_value::<u64>(&k, "ctx", Codec::Json).await,
        ErrorKind::Decode,
        "a value of another type",
    );
    assert_eq!(e.operation(), Some("get_data_value"), "{e}");
    Outcome::Passed
}

/// Side data shares the session's fate: deleted with it, expired with it, absent
/// from a session created again; `set_data` and `delete_data` refresh the TTL of
/// every part like every other write.
pub async fn session_side_data_lives_and_dies_with_the_session(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(2).await;
    let s = &fx.sessions;
    let u = ctx.unit();
    let k = skey("t", "c", "u");

    s.append_message(&k, NewMessage::user("a"))
        .await
        .must("append");
    s.set_data(&k, "thread", Bytes::from_static(b"1"))
        .await
        .must("set_data");
    assert!(s.delete(&k).await.must("delete"));
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data after delete"),
        None,
        "a deleted session's side data is gone at once"
    );
    s.append_message(&k, NewMessage::user("b"))
        .await
        .must("append");
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data"),
        None,
        "a deleted session's side data is gone, also for the session created next"
    );

    s.set_data(&k, "thread", Bytes::from_static(b"2"))
        .await
        .must("set_data");
    fx.advance(u * 3 / 2).await;
    s.set_data(&k, "tool", Bytes::from_static(b"t"))
        .await
        .must("set_data");
    let ttl = s.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        ttl > u * 3 / 2,
        "set_data refreshed the TTL (left: {ttl:?})"
    );
    fx.advance(u * 3 / 2).await;
    let loaded = s
        .load(&k)
        .await
        .must("load")
        .expect("alive past the first TTL");
    assert_eq!(
        loaded.messages.len(),
        1,
        "the window slid with the side data"
    );
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data"),
        Some(Bytes::from_static(b"2")),
        "an older side value slid with the write of another"
    );
    assert!(s.delete_data(&k, "tool").await.must("delete_data"));
    let ttl = s.ttl(&k).await.must("ttl").expect("alive");
    assert!(
        ttl > u * 3 / 2,
        "delete_data refreshed the TTL (left: {ttl:?})"
    );
    fx.advance(u * 5 / 2).await;
    assert!(s.load(&k).await.must("load").is_none(), "expired");
    assert_eq!(
        s.get_data(&k, "thread").await.must("get_data"),
        None,
        "side data expires with the session"
    );
    s.append_message(&k, NewMessage::user("c"))
        .await
        .must("append");
    assert_eq!(
        s.get_data_many(&k, &names(&["thread", "tool"]))
            .await
            .must("get_data_many"),
        [None, None],
        "a session created after expiry has no side data"
    );
    Outcome::Passed
}

/// Bad names, oversize values and one name too many are `InvalidInput` with
/// nothing written; replacing a value at the limit and a new name after a delete
/// work.
pub async fn session_side_data_limits_are_invalid_input(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            max_value_bytes: 64,
            ..StoreSettings::default()
        })
        .await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    s.append_message(&k, NewMessage::user("a"))
        .await
        .must("append");
    expect_err(
        s.set_data(&k, "", Bytes::from_static(b"x")).await,
        ErrorKind::InvalidInput,
        "an empty name",
    );
    let long = "n".repeat(chatstate_core::key::MAX_ID_BYTES + 1);
    expect_err(
        s.set_data(&k, &long, Bytes::from_static(b"x")).await,
        ErrorKind::InvalidInput,
        "a name over the id limit",
    );
    expect_err(
        s.set_data(&k, "big", Bytes::from(vec![7u8; 65])).await,
        ErrorKind::InvalidInput,
        "a value over max_value_bytes",
    );
    assert_eq!(
        s.get_data(&k, "big").await.must("get_data"),
        None,
        "nothing written"
    );
    s.set_data(&k, "big", Bytes::from(vec![7u8; 64]))
        .await
        .must("a value of exactly max_value_bytes");

    for i in 1..MAX_SESSION_DATA_NAMES {
        s.set_data(&k, &format!("n{i}"), Bytes::from_static(b"v"))
            .await
            .must("set_data within the limit");
    }
    expect_err(
        s.set_data(&k, "one-too-many", Bytes::from_static(b"v"))
            .await,
        ErrorKind::InvalidInput,
        "a new name past the limit",
    );
    assert_eq!(
        s.get_data(&k, "one-too-many").await.must("get_data"),
        None,
        "nothing written"
    );
    s.set_data(&k, "n1", Bytes::from_static(b"w"))
        .await
        .must("replacing a value at the limit");
    assert!(s.delete_data(&k, "n2").await.must("delete_data"));
    s.set_data(&k, "one-too-many", Bytes::from_static(b"v"))
        .await
        .must("a new name once one was deleted");
    Outcome::Passed
}

/// An append's receipt says how many messages the window trimmed and their
/// estimated tokens (characters / 4, rounded up, per message), counting stored
/// messages and, when an append brings more than the window, its own.
pub async fn session_append_receipt_counts_trimmed_tokens(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            window_size: 3,
            ..StoreSettings::default()
        })
        .await;
    let s = &fx.sessions;
    let k = skey("t", "c", "u");
    // Multi-byte characters: the estimate counts characters, not bytes.
    let texts = ["👋👋👋👋👋", "olá", "abcdefghi", "x", "héllo wörld"];
    for (i, text) in texts[..3].iter().enumerate() {
        let r = s
            .append_message(&k, NewMessage::user(*text))
            .await
            .must("append");
        assert_eq!(
            (r.trimmed_messages, r.trimmed_tokens),
            (0, 0),
            "append {i} fits the window"
        );
    }
    let r = s
        .append_message(&k, NewMessage::user(texts[3]))
        .await
        .must("append");
    assert_eq!(r.trimmed_messages, 1, "the oldest message left the window");
    assert_eq!(
        r.trimmed_tokens, 2,
        "5 characters (20 bytes) are 2 estimated tokens"
    );
    assert_eq!(r.trimmed_tokens, estimate_tokens(texts[0]));

    // Five at once into a window of three: the three stored ("olá", "abcdefghi",
    // "x") and the first two of the batch are trimmed.
    let batch: Vec<String> = (0..5).map(|i| format!("{}{i}", texts[4])).collect();
    let r = s
        .append_messages(
            &k,
            batch.iter().map(|t| NewMessage::user(t.clone())).collect(),
        )
        .await
        .must("append batch");
    assert_eq!(r.trimmed_messages, 5);
    let want: u64 = ["olá", "abcdefghi", "x", &batch[0], &batch[1]]
        .iter()
        .map(|t| estimate_tokens(t))
        .sum();
    assert_eq!(want, 1 + 3 + 1 + 3 + 3, "the estimate of the trimmed texts");
    assert_eq!(r.trimmed_tokens, want);
    assert_eq!(r.window_len, 3);
    let loaded = s.load(&k).await.must("load").expect("session");
    let kept: Vec<_> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(kept, [&batch[2], &batch[3], &batch[4]]);
    Outcome::Passed
}
