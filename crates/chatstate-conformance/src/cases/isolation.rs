//! Isolation cases: hostile ids never reach another tenant's data, bad ids are
//! refused before they touch anything.

use std::collections::BTreeSet;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterKey, ErrorKind, Expected, FocusKey, KvCache, PutMode, SessionKey, SessionPatch,
};

use crate::cases::{Must, ckey, expect_err, skey};
use crate::{Ctx, Outcome};

/// Ids that break naive key joining, paths, globs or hash tags.
const HOSTILE: &[&str] = &[
    "a",
    "a:b",
    "b:c",
    ":",
    "::",
    "{t}",
    "{",
    "}",
    "/",
    "../x",
    "..",
    "../../etc/passwd",
    "C:\\Windows",
    "\0",
    "a\0b",
    "🙂",
    "*",
    "?",
    "[a]",
    "%3A",
    "%",
    "A",
    " a",
    "a ",
    "con",
    "nul.txt",
    ".",
    "a/b",
];

/// Ids with `:`, `{`, `}`, `/`, `..`, NUL, emoji, globs or case differences never
/// collide, in any store.
pub async fn isolation_special_ids_do_not_collide(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let mut keys: Vec<SessionKey> = Vec::new();
    for id in HOSTILE {
        keys.push(skey(id, "c", "u"));
        keys.push(skey("t", id, "u"));
        keys.push(skey("t", "c", id));
    }
    // Pairs that join to the same string naively.
    keys.push(skey("a:b", "c", "d"));
    keys.push(skey("a", "b:c", "d"));
    keys.push(skey("a", "b", "c:d"));
    let long = "x".repeat(500);
    keys.push(skey(&long, &long, &long));
    let keys: Vec<SessionKey> = keys
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    for (i, k) in keys.iter().enumerate() {
        let tag = format!("session #{i}");
        fx.sessions
            .create(&k.clone(), SessionPatch::new().summary(tag))
            .await
            .must("create");
    }
    for (i, k) in keys.iter().enumerate() {
        let s = fx
            .sessions
            .get(k)
            .await
            .must("get")
            .expect("each session exists");
        assert_eq!(
            s.summary,
            Some(format!("session #{i}")),
            "{k:?} reads its own record"
        );
        assert_eq!(&s.key, k);
    }

    for (i, id) in HOSTILE.iter().enumerate() {
        let value = Bytes::from(format!("value #{i}"));
        let cache = CacheKey::new(*id, *id).must("cache key");
        fx.cache
            .set(&cache, value.clone(), None)
            .await
            .must("cache set");
        let focus = FocusKey::new(*id, *id).must("focus key");
        fx.focus
            .put(&focus, value.clone(), PutMode::Overwrite, None)
            .await
            .must("focus put");
        let counter = CounterKey::new(*id).must("counter key");
        fx.counters
            .add(&counter, i as i64 + 1)
            .await
            .must("counter add");
    }
    for (i, id) in HOSTILE.iter().enumerate() {
        let value = Bytes::from(format!("value #{i}"));
        let cache = CacheKey::new(*id, *id).must("cache key");
        assert_eq!(
            KvCache::get(fx.cache.as_ref(), &cache)
                .await
                .must("cache get"),
            Some(value.clone()),
            "cache entry {id:?} is its own"
        );
        let doc = fx
            .focus
            .get(&FocusKey::new(*id, *id).must("focus key"))
            .await
            .must("focus get")
            .expect("focus doc");
        assert_eq!(
            (doc.value, doc.version),
            (value, 1),
            "focus doc {id:?} is its own"
        );
        let counter = CounterKey::new(*id).must("counter key");
        assert_eq!(
            fx.counters.get(&counter).await.must("counter get"),
            i as i64 + 1
        );
        let listed = fx.focus.list(id).await.must("focus list");
        assert_eq!(listed.len(), 1, "scope {id:?} lists only its own document");
    }
    Outcome::Passed
}

/// A tenant lists only its own sessions, even when tenant names share prefixes or
/// escape characters.
pub async fn isolation_tenants_do_not_list_each_other(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let tenants = [
        "acme", "acme:", "acme%3A", "acm", "acme2", "acme:x", "acme*", "acme{",
    ];
    for t in tenants {
        for user in ["u1", "u2"] {
            fx.sessions
                .get_or_create(&skey(t, "c", user))
                .await
                .must("create");
        }
        // A channel that looks like another tenant's name.
        fx.sessions
            .get_or_create(&skey(t, "x", "u3"))
            .await
            .must("create");
    }
    for t in tenants {
        let page = fx.sessions.list(t, None, 100).await.must("list");
        assert!(page.next_cursor.is_none());
        let listed: BTreeSet<_> = page.items.iter().map(|k| k.tenant().to_string()).collect();
        assert_eq!(
            listed,
            BTreeSet::from([t.to_string()]),
            "tenant {t:?} sees only itself"
        );
        assert_eq!(page.items.len(), 3, "tenant {t:?} sees all of its sessions");
    }
    Outcome::Passed
}

/// Empty and oversize ids (10 KB) are InvalidInput at every entry point, and a
/// refused call changes nothing — an empty namespace never clears everything.
pub async fn isolation_oversize_and_empty_ids_rejected(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let big = "🙂".repeat(2_560); // 10 KB of text
    for r in [
        SessionKey::new(big.as_str(), "c", "u").map(|_| ()),
        SessionKey::new("t", big.as_str(), "u").map(|_| ()),
        SessionKey::new("t", "c", big.as_str()).map(|_| ()),
        SessionKey::new("", "c", "u").map(|_| ()),
        CacheKey::new(big.as_str(), "k").map(|_| ()),
        CacheKey::new("ns", big.as_str()).map(|_| ()),
        CacheKey::new("ns", "").map(|_| ()),
        FocusKey::new("s", big.as_str()).map(|_| ()),
        CounterKey::new(big.as_str()).map(|_| ()),
        CounterKey::new("").map(|_| ()),
    ] {
        expect_err(r, ErrorKind::InvalidInput, "building a key from a bad id");
    }

    let keep = ckey("ns", "keep");
    fx.cache
        .set(&keep, Bytes::from_static(b"v"), None)
        .await
        .must("set");
    let k = skey("t", "c", "u");
    fx.sessions.get_or_create(&k).await.must("create");
    fx.focus
        .put(
            &FocusKey::new("s", "n").must("focus key"),
            Bytes::from_static(b"d"),
            PutMode::Create,
            None,
        )
        .await
        .must("focus put");

    for (what, r) in [
        (
            "clear_prefix with an empty namespace",
            fx.cache.clear_prefix("", "").await.map(|_| ()),
        ),
        (
            "clear_prefix with a 10 KB namespace",
            fx.cache.clear_prefix(&big, "").await.map(|_| ()),
        ),
        (
            "list with an empty tenant",
            fx.sessions.list("", None, 10).await.map(|_| ()),
        ),
        (
            "list with a 10 KB tenant",
            fx.sessions.list(&big, None, 10).await.map(|_| ()),
        ),
        (
            "focus list of an empty scope",
            fx.focus.list("").await.map(|_| ()),
        ),
        (
            "counter list of an empty name",
            fx.counters.list("", None).await.map(|_| ()),
        ),
        (
            "lock with a 10 KB name",
            fx.sessions.try_lock(&k, &big, ctx.unit()).await.map(|_| ()),
        ),
    ] {
        expect_err(r, ErrorKind::InvalidInput, what);
    }
    let r = fx
        .sessions
        .list("t", Some("not a cursor we made \u{0}".into()), 10)
        .await;
    if let Err(e) = &r {
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "a foreign cursor is InvalidInput: {e}"
        );
    }

    assert!(
        fx.cache.exists(&keep).await.must("exists"),
        "the refused clear removed nothing"
    );
    assert!(
        fx.sessions.get(&k).await.must("get").is_some(),
        "the session is untouched"
    );
    fx.sessions
        .update(
            &k,
            SessionPatch::new().summary("still works"),
            Expected::Any,
        )
        .await
        .must("update after refused calls");
    Outcome::Passed
}

/// The same key in different namespaces is different data; namespaces that share a
/// prefix are not cleared together.
pub async fn isolation_cache_namespaces_separate(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let spaces = ["a", "b", "a:b", "ab"];
    for ns in spaces {
        fx.cache
            .set(&ckey(ns, "k"), Bytes::from(ns.to_string()), None)
            .await
            .must("set");
    }
    for ns in spaces {
        let v = KvCache::get(fx.cache.as_ref(), &ckey(ns, "k"))
            .await
            .must("get");
        assert_eq!(
            v,
            Some(Bytes::from(ns.to_string())),
            "namespace {ns:?} holds its own value"
        );
    }
    assert!(
        KvCache::delete(fx.cache.as_ref(), &ckey("a", "k"))
            .await
            .must("delete")
    );
    assert!(
        fx.cache.exists(&ckey("a:b", "k")).await.must("exists"),
        "delete in a leaves a:b"
    );
    assert!(
        fx.cache.exists(&ckey("ab", "k")).await.must("exists"),
        "delete in a leaves ab"
    );
    fx.cache
        .set(&ckey("a", "k"), Bytes::from_static(b"a"), None)
        .await
        .must("set");
    assert_eq!(
        fx.cache.clear_prefix("a", "").await.must("clear"),
        1,
        "only namespace a"
    );
    for ns in ["b", "a:b", "ab"] {
        assert!(
            fx.cache.exists(&ckey(ns, "k")).await.must("exists"),
            "{ns:?} survives clearing a"
        );
    }
    Outcome::Passed
}
