//! [`KvCache`](chatstate_core::KvCache) cases: values, many-key calls, TTLs, prefix
//! clearing, size limits, and the typed conveniences of
//! [`KvCacheExt`](chatstate_core::KvCacheExt).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chatstate_core::{CacheKey, Codec, Error, ErrorKind, KvCacheExt, StoreSettings};
use serde::{Deserialize, Serialize};

use crate::cases::{Must, ckey, expect_err};
use crate::{Ctx, Outcome};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A value set is read back; a second set replaces it; neighbours (same namespace,
/// same key in another namespace) are untouched.
pub async fn kv_set_get_overwrite(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = ckey("customers", "42");
    let sibling = ckey("customers", "43");
    let other_ns = ckey("contacts", "42");
    fx.cache
        .set(&sibling, b("sibling"), None)
        .await
        .must("set sibling");
    fx.cache
        .set(&other_ns, b("contact"), None)
        .await
        .must("set other namespace");

    fx.cache.set(&k, b("v1"), None).await.must("set v1");
    assert_eq!(
        fx.cache.get(&k).await.must("get v1"),
        Some(b("v1")),
        "get returns the value set"
    );
    fx.cache.set(&k, b("v2"), None).await.must("set v2");
    assert_eq!(
        fx.cache.get(&k).await.must("get v2"),
        Some(b("v2")),
        "a second set replaces the value"
    );

    assert_eq!(
        fx.cache.get(&sibling).await.must("get sibling"),
        Some(b("sibling")),
        "another key of the namespace is untouched"
    );
    assert_eq!(
        fx.cache.get(&other_ns).await.must("get other namespace"),
        Some(b("contact")),
        "the same key in another namespace is untouched"
    );
    Outcome::Passed
}

/// A key never set reads `None`, does not exist and has no TTL, even when its
/// neighbours are set.
pub async fn kv_get_missing_is_none(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = ckey("customers", "missing");
    assert_eq!(
        fx.cache.get(&k).await.must("get missing"),
        None,
        "a key never set reads None"
    );
    fx.cache
        .set(&ckey("customers", "missing2"), b("x"), None)
        .await
        .must("set neighbour");
    fx.cache
        .set(&ckey("customers2", "missing"), b("y"), None)
        .await
        .must("set other ns");
    assert_eq!(
        fx.cache.get(&k).await.must("get missing again"),
        None,
        "neighbours do not make it exist"
    );
    assert!(
        !fx.cache.exists(&k).await.must("exists missing"),
        "a key never set does not exist"
    );
    assert_eq!(
        fx.cache.ttl(&k).await.must("ttl missing"),
        None,
        "a key never set has no TTL"
    );
    Outcome::Passed
}

/// `exists` follows set and delete; delete is true for an entry, then false.
pub async fn kv_delete_and_exists(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let k = ckey("contacts", "ana");
    let keep = ckey("contacts", "bia");
    fx.cache.set(&k, b("ana"), None).await.must("set");
    fx.cache.set(&keep, b("bia"), None).await.must("set keep");
    assert!(
        fx.cache.exists(&k).await.must("exists after set"),
        "a set key exists"
    );
    assert!(
        fx.cache.delete(&k).await.must("delete"),
        "deleting an entry returns true"
    );
    assert!(
        !fx.cache.exists(&k).await.must("exists after delete"),
        "a deleted key does not exist"
    );
    assert_eq!(
        fx.cache.get(&k).await.must("get after delete"),
        None,
        "a deleted key reads None"
    );
    assert!(
        !fx.cache.delete(&k).await.must("delete again"),
        "deleting it again returns false"
    );
    assert!(
        fx.cache.exists(&keep).await.must("exists keep"),
        "delete leaves other keys"
    );
    fx.cache
        .set(&k, b("ana again"), None)
        .await
        .must("set after delete");
    assert_eq!(
        fx.cache.get(&k).await.must("get after re-set"),
        Some(b("ana again")),
        "a deleted key can be set again"
    );
    Outcome::Passed
}

/// `get_many` answers in the order of the keys, repeated keys included, `None` for
/// missing ones.
pub async fn kv_get_many_keeps_order_and_missing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let a = ckey("customers", "a");
    let bk = ckey("customers", "b");
    let same_name_other_ns = ckey("contacts", "a");
    let missing = ckey("customers", "missing");
    fx.cache.set(&a, b("A"), None).await.must("set a");
    fx.cache.set(&bk, b("B"), None).await.must("set b");
    fx.cache
        .set(&same_name_other_ns, b("contact A"), None)
        .await
        .must("set contacts a");

    let got = fx
        .cache
        .get_many(&[
            bk.clone(),
            missing.clone(),
            a.clone(),
            same_name_other_ns,
            bk,
        ])
        .await
        .must("get_many");
    assert_eq!(
        got,
        vec![
            Some(b("B")),
            None,
            Some(b("A")),
            Some(b("contact A")),
            Some(b("B"))
        ],
        "get_many keeps the order of the keys and gives None for missing ones"
    );
    assert_eq!(
        fx.cache.get_many(&[]).await.must("get_many empty"),
        Vec::<Option<Bytes>>::new(),
        "get_many of no keys is empty"
    );
    assert_eq!(
        fx.cache.get_many(&[missing]).await.must("get_many missing"),
        vec![None],
        "get_many of one missing key is [None]"
    );
    Outcome::Passed
}

/// `set_many` stores every entry (new and overwritten) with the given TTL; an empty
/// `set_many` is fine.
pub async fn kv_set_many_then_get_many(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let keys: Vec<CacheKey> = ["a", "b", "c"]
        .iter()
        .map(|k| ckey("customers", k))
        .collect();
    fx.cache
        .set_many(
            vec![
                (keys[0].clone(), b("1")),
                (keys[1].clone(), b("2")),
                (keys[2].clone(), b("3")),
            ],
            None,
        )
        .await
        .must("set_many");
    assert_eq!(
        fx.cache.get_many(&keys).await.must("get_many"),
        vec![Some(b("1")), Some(b("2")), Some(b("3"))],
        "set_many stores every entry"
    );

    let d = ckey("contacts", "d");
    let ttl = ctx.unit() * 10;
    fx.cache
        .set_many(
            vec![(keys[1].clone(), b("2b")), (d.clone(), b("4"))],
            Some(ttl),
        )
        .await
        .must("set_many overwrite");
    assert_eq!(
        fx.cache
            .get_many(&[keys[0].clone(), keys[1].clone(), d.clone()])
            .await
            .must("get_many 2"),
        vec![Some(b("1")), Some(b("2b")), Some(b("4"))],
        "set_many overwrites existing entries and leaves the others"
    );
    for k in [&keys[1], &d] {
        let left = fx
            .cache
            .ttl(k)
            .await
            .must("ttl after set_many")
            .expect("a TTL");
        assert!(
            left <= ttl && left > ctx.unit() * 9,
            "set_many gives every entry the TTL it was given (10 units), {k:?} has {left:?}"
        );
    }
    fx.cache
        .set_many(Vec::new(), None)
        .await
        .must("empty set_many");
    assert_eq!(
        fx.cache.get_many(&keys).await.must("get_many 3"),
        vec![Some(b("1")), Some(b("2b")), Some(b("3"))],
        "an empty set_many changes nothing"
    );
    Outcome::Passed
}

/// `delete_many` deletes the entries and returns how many existed.
///
/// A key given twice is counted once, when it existed (what Redis `DEL k k` does):
/// the count is the number of distinct entries the call removed.
pub async fn kv_delete_many_counts_existing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let a = ckey("customers", "a");
    let bk = ckey("customers", "b");
    let c = ckey("customers", "c");
    let d = ckey("contacts", "a");
    let missing = ckey("customers", "missing");
    for k in [&a, &bk, &c, &d] {
        fx.cache.set(k, b("v"), None).await.must("set");
    }

    assert_eq!(
        fx.cache
            .delete_many(&[a.clone(), missing.clone(), bk.clone()])
            .await
            .must("delete_many"),
        2,
        "delete_many counts only the entries that existed"
    );
    assert_eq!(
        fx.cache
            .get_many(&[a.clone(), bk.clone(), c.clone(), d.clone()])
            .await
            .must("get_many"),
        vec![None, None, Some(b("v")), Some(b("v"))],
        "delete_many deletes exactly the entries named"
    );
    assert_eq!(
        fx.cache
            .delete_many(&[c.clone(), c.clone(), a.clone()])
            .await
            .must("delete_many dup"),
        1,
        "a key given twice is one entry deleted (as Redis DEL counts it)"
    );
    assert!(
        !fx.cache.exists(&c).await.must("exists c"),
        "the duplicated key is gone"
    );
    assert_eq!(
        fx.cache.delete_many(&[]).await.must("delete_many empty"),
        0,
        "delete_many of no keys deletes nothing"
    );
    assert_eq!(
        fx.cache
            .delete_many(&[a, missing])
            .await
            .must("delete_many none existing"),
        0,
        "delete_many of missing keys returns 0"
    );
    assert!(
        fx.cache.exists(&d).await.must("exists d"),
        "other namespaces are untouched"
    );
    Outcome::Passed
}

/// An entry set with a TTL of 2 units is alive after 1 and gone after 3 (get,
/// get_many, exists and ttl agree); one with the default TTL (1 h) stays.
pub async fn kv_ttl_expiry(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let short = ckey("sessions", "short");
    let long = ckey("sessions", "long");
    fx.cache
        .set(&short, b("s"), Some(unit * 2))
        .await
        .must("set short");
    fx.cache.set(&long, b("l"), None).await.must("set long");

    fx.advance(unit).await; // t = 1
    assert_eq!(
        fx.cache.get(&short).await.must("get at t=1"),
        Some(b("s")),
        "alive before its TTL"
    );
    assert!(fx.cache.exists(&short).await.must("exists at t=1"));
    let left = fx.cache.ttl(&short).await.must("ttl at t=1");
    assert!(
        left.is_some_and(|d| d <= unit * 3 / 2),
        "the TTL counts down (about 1 unit left at t=1, got {left:?})"
    );

    fx.advance(unit * 2).await; // t = 3
    assert_eq!(
        fx.cache.get(&short).await.must("get at t=3"),
        None,
        "gone after its TTL"
    );
    assert!(
        !fx.cache.exists(&short).await.must("exists at t=3"),
        "an expired entry does not exist"
    );
    assert_eq!(
        fx.cache
            .get_many(&[short.clone(), long.clone()])
            .await
            .must("get_many at t=3"),
        vec![None, Some(b("l"))],
        "get_many sees the expiry too"
    );
    assert_eq!(
        fx.cache.ttl(&short).await.must("ttl at t=3"),
        None,
        "an expired entry has no TTL"
    );
    assert!(
        !fx.cache.delete(&short).await.must("delete expired"),
        "deleting an expired entry returns false"
    );
    Outcome::Passed
}

/// An entry set without a TTL gets the configured cache TTL and expires after it.
pub async fn kv_default_ttl_applies(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(3).await;
    let unit = ctx.unit();
    let k = ckey("customers", "default-ttl");
    fx.cache.set(&k, b("v"), None).await.must("set without ttl");
    let left = fx
        .cache
        .ttl(&k)
        .await
        .must("ttl")
        .expect("an entry set without a TTL has one");
    assert!(
        left <= fx.settings.cache_ttl && left >= unit * 2 && !left.is_zero(),
        "the TTL of an entry set without one is the cache TTL ({:?}), got {left:?}",
        fx.settings.cache_ttl
    );

    fx.advance(unit * 2).await; // t = 2
    assert!(
        fx.cache.exists(&k).await.must("exists at t=2"),
        "alive before the cache TTL"
    );
    fx.advance(unit * 3 / 2).await; // t = 3.5
    assert_eq!(
        fx.cache.get(&k).await.must("get at t=3.5"),
        None,
        "gone after the cache TTL"
    );
    Outcome::Passed
}

/// `expire` on a missing key is false (and creates nothing); on an entry it sets the
/// TTL, shorter or longer; `ttl` follows it and is `None` for missing keys.
pub async fn kv_expire_and_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let missing = ckey("customers", "missing");
    assert!(
        !fx.cache.expire(&missing, unit).await.must("expire missing"),
        "expire on a missing key returns false"
    );
    assert!(
        !fx.cache.exists(&missing).await.must("exists missing"),
        "expire creates nothing"
    );
    assert_eq!(
        fx.cache.ttl(&missing).await.must("ttl missing"),
        None,
        "a missing key has no TTL"
    );

    let shortened = ckey("customers", "shortened");
    let lengthened = ckey("customers", "lengthened");
    fx.cache
        .set(&shortened, b("s"), Some(unit * 10))
        .await
        .must("set shortened");
    fx.cache
        .set(&lengthened, b("l"), Some(unit))
        .await
        .must("set lengthened");
    let left = fx
        .cache
        .ttl(&shortened)
        .await
        .must("ttl 10")
        .expect("a TTL");
    assert!(
        left <= unit * 10 && left > unit * 9,
        "ttl reports the TTL set (10 units), got {left:?}"
    );

    assert!(
        fx.cache
            .expire(&shortened, unit * 2)
            .await
            .must("expire shorter"),
        "expire on an entry returns true"
    );
    assert!(
        fx.cache
            .expire(&lengthened, unit * 10)
            .await
            .must("expire longer")
    );
    let left = fx.cache.ttl(&shortened).await.must("ttl 2").expect("a TTL");
    assert!(
        left <= unit * 2 && left > unit,
        "expire shortens the TTL to 2 units, got {left:?}"
    );
    let left = fx
        .cache
        .ttl(&lengthened)
        .await
        .must("ttl 10b")
        .expect("a TTL");
    assert!(
        left > unit * 9,
        "expire lengthens the TTL to 10 units, got {left:?}"
    );
    assert_eq!(
        fx.cache.get(&shortened).await.must("get"),
        Some(b("s")),
        "expire keeps the value"
    );

    fx.advance(unit).await; // t = 1
    assert!(
        fx.cache.exists(&shortened).await.must("exists at t=1"),
        "alive before the new TTL"
    );
    fx.advance(unit * 3 / 2).await; // t = 2.5
    assert_eq!(
        fx.cache.get(&shortened).await.must("get at t=2.5"),
        None,
        "gone after the shortened TTL"
    );
    assert_eq!(
        fx.cache.ttl(&shortened).await.must("ttl at t=2.5"),
        None,
        "an expired entry has no TTL"
    );
    assert!(
        !fx.cache
            .expire(&shortened, unit * 5)
            .await
            .must("expire expired"),
        "expire on an expired entry returns false"
    );
    assert!(
        !fx.cache
            .exists(&shortened)
            .await
            .must("exists after expire of expired"),
        "and does not revive it"
    );
    assert_eq!(
        fx.cache
            .get(&lengthened)
            .await
            .must("get lengthened at t=2.5"),
        Some(b("l")),
        "an entry whose TTL was lengthened outlives its first TTL"
    );
    Outcome::Passed
}

/// `clear_prefix` deletes exactly the namespace's keys starting with the prefix
/// (all of it for `""`) and returns how many; other namespaces — `users:archive`,
/// `usersX`, `user` next to `users` — stay, and glob characters are literal.
pub async fn kv_clear_prefix_leaves_other_prefixes(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let set_all = |entries: &[(&str, &str)]| {
        let cache = Arc::clone(&fx.cache);
        let keys: Vec<CacheKey> = entries.iter().map(|(ns, k)| ckey(ns, k)).collect();
        async move {
            for k in keys {
                cache
                    .set(&k, b("v"), None)
                    .await
                    .must("set for clear_prefix");
            }
        }
    };
    let alive = |entries: &[(&str, &str)]| {
        let cache = Arc::clone(&fx.cache);
        let keys: Vec<CacheKey> = entries.iter().map(|(ns, k)| ckey(ns, k)).collect();
        async move {
            let got = cache
                .get_many(&keys)
                .await
                .must("get_many for clear_prefix");
            keys.into_iter()
                .zip(got)
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        }
    };

    let users = [
        ("users", "alice"),
        ("users", "anna"),
        ("users", "a*"),
        ("users", "bob"),
        ("users", "[a]"),
    ];
    let others = [
        ("users:archive", "alice"),
        ("users:archive", "bob"),
        ("usersX", "alice"),
        ("user", "alice"),
        ("user", "salice"),
    ];
    set_all(&users).await;
    set_all(&others).await;

    assert_eq!(
        fx.cache
            .clear_prefix("users", "a")
            .await
            .must("clear users/a"),
        3,
        "clear_prefix counts the keys it deleted"
    );
    assert_eq!(
        alive(&users).await,
        vec![ckey("users", "bob"), ckey("users", "[a]")],
        "clear_prefix(ns, \"a\") deletes only the namespace's keys starting with a"
    );
    assert_eq!(
        alive(&others).await.len(),
        others.len(),
        "other namespaces are untouched by a key prefix"
    );

    assert_eq!(
        fx.cache.clear_prefix("users", "").await.must("clear users"),
        2,
        "clear_prefix(ns, \"\") deletes the rest of the namespace"
    );
    assert!(
        alive(&users).await.is_empty(),
        "the whole namespace is gone"
    );
    assert_eq!(
        alive(&others).await.len(),
        others.len(),
        "namespaces whose name starts with (or is a prefix of) the cleared one are untouched"
    );
    assert_eq!(
        fx.cache
            .clear_prefix("users", "")
            .await
            .must("clear users again"),
        0,
        "nothing left to clear"
    );
    assert_eq!(
        fx.cache
            .clear_prefix("nothing", "")
            .await
            .must("clear empty ns"),
        0,
        "an empty namespace clears 0"
    );

    // Glob characters in the prefix (and keys) are plain characters.
    let globby = [
        ("ns", "ab"),
        ("ns", "a*"),
        ("ns", "a*c"),
        ("ns", "a?"),
        ("ns", "a[b]"),
        ("ns", "a\\b"),
        ("ns", "a"),
    ];
    set_all(&globby).await;
    assert_eq!(
        fx.cache.clear_prefix("ns", "a*").await.must("clear a*"),
        2,
        "\"a*\" matches only keys starting with a*"
    );
    assert_eq!(
        fx.cache.clear_prefix("ns", "a?").await.must("clear a?"),
        1,
        "\"a?\" matches only a?"
    );
    assert_eq!(
        fx.cache.clear_prefix("ns", "a[").await.must("clear a["),
        1,
        "\"a[\" matches only a[b]"
    );
    assert_eq!(
        fx.cache.clear_prefix("ns", "a\\").await.must("clear a\\"),
        1,
        "a backslash is literal"
    );
    assert_eq!(
        alive(&globby).await,
        vec![ckey("ns", "ab"), ckey("ns", "a")],
        "glob characters in a prefix are matched literally"
    );
    assert_eq!(
        alive(&others).await.len(),
        others.len(),
        "other namespaces are still untouched"
    );
    Outcome::Passed
}

/// With a small `max_value_bytes`, an oversize `set` is `InvalidInput` and keeps the
/// old value, and a `set_many` with one oversize value stores none of its entries.
pub async fn kv_oversize_value_rejected_set_many_atomic(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            max_value_bytes: 64,
            ..StoreSettings::default()
        })
        .await;
    let k = ckey("customers", "big");
    let at_limit = Bytes::from(vec![b'a'; 64]);
    let over = Bytes::from(vec![b'b'; 65]);
    fx.cache
        .set(&k, at_limit.clone(), None)
        .await
        .must("set at the limit");
    expect_err(
        fx.cache.set(&k, over.clone(), None).await,
        ErrorKind::InvalidInput,
        "set oversize",
    );
    assert_eq!(
        fx.cache.get(&k).await.must("get after oversize set"),
        Some(at_limit.clone()),
        "a rejected set keeps the old value"
    );
    let fresh = ckey("customers", "fresh");
    expect_err(
        fx.cache.set(&fresh, over.clone(), None).await,
        ErrorKind::InvalidInput,
        "set oversize new key",
    );
    assert!(
        !fx.cache.exists(&fresh).await.must("exists fresh"),
        "a rejected set creates nothing"
    );

    let new_a = ckey("customers", "new-a");
    let new_b = ckey("contacts", "new-b");
    expect_err(
        fx.cache
            .set_many(
                vec![
                    (new_a.clone(), b("small")),
                    (k.clone(), b("overwrite")),
                    (new_b.clone(), over),
                ],
                None,
            )
            .await,
        ErrorKind::InvalidInput,
        "set_many with one oversize value",
    );
    assert_eq!(
        fx.cache
            .get_many(&[new_a, k, new_b])
            .await
            .must("get_many after failed set_many"),
        vec![None, Some(at_limit), None],
        "a set_many with an oversize value stores none of its entries"
    );
    Outcome::Passed
}

/// Values are bytes, kept exactly: every byte value, the empty value (which is not
/// missing), and a 64 KiB value.
pub async fn kv_binary_values_roundtrip(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let every_byte = Bytes::from((0..=255u8).collect::<Vec<u8>>());
    let empty = Bytes::new();
    let big = Bytes::from(
        (0..64 * 1024)
            .map(|i| ((i * 31) % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let cases = [
        (ckey("bin", "every-byte"), every_byte),
        (ckey("bin", "empty"), empty),
        (ckey("bin", "big"), big),
        (
            ckey("bin", "header-like"),
            Bytes::from_static(b"CS1J\0\xff\r\n"),
        ),
    ];
    for (k, v) in &cases {
        fx.cache.set(k, v.clone(), None).await.must("set binary");
    }
    for (k, v) in &cases {
        assert_eq!(
            fx.cache.get(k).await.must("get binary").as_ref(),
            Some(v),
            "value {k:?} ({} bytes) reads back byte for byte",
            v.len()
        );
    }
    assert!(
        fx.cache
            .exists(&ckey("bin", "empty"))
            .await
            .must("exists empty"),
        "an empty value exists"
    );
    let keys: Vec<CacheKey> = cases.iter().map(|(k, _)| k.clone()).collect();
    let want: Vec<Option<Bytes>> = cases.iter().map(|(_, v)| Some(v.clone())).collect();
    assert_eq!(
        fx.cache.get_many(&keys).await.must("get_many binary"),
        want,
        "get_many returns the same bytes"
    );
    Outcome::Passed
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u64,
    name: String,
    tags: Vec<String>,
    vip: Option<bool>,
}

fn ana() -> Customer {
    Customer {
        id: 42,
        name: "Ana 👋".into(),
        tags: vec!["vip".into(), "sp".into()],
        vip: Some(true),
    }
}

/// Typed values round-trip with either codec, and read with the codec their header
/// names whatever codec the reader holds; foreign bytes or a truncated value are a
/// `Decode` error, never a panic or a wrong value.
pub async fn kv_typed_values_and_decode_errors(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let cache = &fx.cache;
    let bin = ckey("customers", "bincode");
    let json = ckey("customers", "json");
    cache
        .set_value(&bin, &ana(), None, Codec::Bincode)
        .await
        .must("set_value bincode");
    cache
        .set_value(&json, &ana(), None, Codec::Json)
        .await
        .must("set_value json");
    assert_eq!(
        cache
            .get_value::<Customer>(&bin, Codec::Bincode)
            .await
            .must("get_value bincode"),
        Some(ana()),
        "a bincode value round-trips"
    );
    assert_eq!(
        cache
            .get_value::<Customer>(&json, Codec::Json)
            .await
            .must("get_value json"),
        Some(ana()),
        "a JSON value round-trips"
    );
    assert_eq!(
        cache
            .get_value::<Customer>(&ckey("customers", "missing"), Codec::Json)
            .await
            .must("get_value missing"),
        None,
        "a missing typed value is None"
    );
    assert_eq!(
        cache
            .get_many_values::<Customer>(&[json.clone(), ckey("customers", "missing")], Codec::Json)
            .await
            .must("get_many_values"),
        vec![Some(ana()), None],
        "get_many_values decodes in order"
    );

    // A value decodes with the codec its header names, whichever the reader holds:
    // changing the configured codec leaves stored values readable.
    assert_eq!(
        cache
            .get_value::<Customer>(&json, Codec::Bincode)
            .await
            .must("read a JSON value holding bincode"),
        Some(ana()),
        "a JSON value reads whatever codec the reader holds"
    );
    assert_eq!(
        cache
            .get_value::<Customer>(&bin, Codec::Json)
            .await
            .must("read a bincode value holding JSON"),
        Some(ana()),
        "a bincode value reads whatever codec the reader holds"
    );

    let garbage = ckey("customers", "garbage");
    cache
        .set(
            &garbage,
            Bytes::from_static(b"\x00\xffnot chatstate at all"),
            None,
        )
        .await
        .must("set garbage");
    for codec in [Codec::Bincode, Codec::Json] {
        expect_err(
            cache.get_value::<Customer>(&garbage, codec).await,
            ErrorKind::Decode,
            &format!("reading foreign bytes with {codec}"),
        );
    }

    let encoded = Codec::Bincode.encode(&ana()).must("encode");
    let truncated = ckey("customers", "truncated");
    cache
        .set(&truncated, encoded.slice(..encoded.len() - 3), None)
        .await
        .must("set truncated");
    expect_err(
        cache
            .get_value::<Customer>(&truncated, Codec::Bincode)
            .await,
        ErrorKind::Decode,
        "reading a truncated bincode value",
    );
    expect_err(
        cache.get_value::<Vec<u64>>(&json, Codec::Json).await,
        ErrorKind::Decode,
        "reading a JSON value as the wrong type",
    );
    Outcome::Passed
}

/// `get_or_load` runs the loader on a miss and caches its value (a second call does
/// not load); a loader error is returned, nothing is cached, and the next call loads.
pub async fn kv_get_or_load_caches_and_does_not_cache_errors(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let cache = &fx.cache;
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = |result: Result<Customer, Error>| {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            result
        }
    };

    let k = ckey("customers", "lazy");
    let first = cache
        .get_or_load(&k, None, Codec::Json, loader(Ok(ana())))
        .await
        .must("first get_or_load");
    assert_eq!(first, ana(), "a miss returns the loader's value");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a miss runs the loader");
    let mut other = ana();
    other.name = "not loaded".into();
    let second = cache
        .get_or_load(&k, None, Codec::Json, loader(Ok(other)))
        .await
        .must("second get_or_load");
    assert_eq!(second, ana(), "a hit returns the cached value");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a hit does not run the loader"
    );
    assert!(
        cache.exists(&k).await.must("exists loaded"),
        "the loaded value is cached"
    );

    let failing = ckey("customers", "failing");
    let err = cache
        .get_or_load(
            &failing,
            None,
            Codec::Json,
            loader(Err(Error::new(ErrorKind::Unavailable, "upstream is down"))),
        )
        .await;
    expect_err(
        err,
        ErrorKind::Unavailable,
        "get_or_load with a failing loader",
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the failing loader ran");
    assert!(
        !cache.exists(&failing).await.must("exists after error"),
        "a loader error caches nothing"
    );

    let loaded = cache
        .get_or_load(&failing, None, Codec::Json, loader(Ok(ana())))
        .await
        .must("get_or_load after error");
    assert_eq!(loaded, ana());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "after an error the next call loads again"
    );
    cache
        .get_or_load(&failing, None, Codec::Json, loader(Ok(other_customer())))
        .await
        .must("get_or_load hit after recovery");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "and then the value is cached"
    );
    Outcome::Passed
}

fn other_customer() -> Customer {
    Customer {
        id: 7,
        name: "Bia".into(),
        tags: Vec::new(),
        vip: None,
    }
}
