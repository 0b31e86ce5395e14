//! Aliases of cache entries ([`KvCache::set_with_aliases`](chatstate_core::KvCache::set_with_aliases),
//! [`KvCache::get_by_alias`](chatstate_core::KvCache::get_by_alias)): an alias
//! resolves to its entry exactly while it belongs to it (the trait's docs).

use bytes::Bytes;
use chatstate_core::key::MAX_ALIASES;
use chatstate_core::{CacheHandles, CacheKey, Codec, ErrorKind, KvCache};
use serde::{Deserialize, Serialize};

use crate::cases::{Must, ckey, expect_err};
use crate::{Ctx, Outcome};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// What `alias` resolves to (`None` when nothing).
async fn resolve(cache: &dyn KvCache, alias: &CacheKey) -> Option<(CacheKey, Bytes)> {
    cache.get_by_alias(alias).await.must("get_by_alias")
}

/// An entry written with aliases is found by each of them (key and value); the
/// entry itself stays a plain value; an alias is no entry, and an alias never
/// given, or the same key in another namespace, resolves to nothing.
pub async fn kv_alias_resolves_to_its_entry(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let contact = ckey("contacts", "42");
    let phone = ckey("phone", "+5511999990000");
    let email = ckey("email", "ana@example.com");
    fx.cache
        .set_with_aliases(&contact, b("ana"), None, &[phone.clone(), email.clone()])
        .await
        .must("set_with_aliases");
    for alias in [&phone, &email] {
        assert_eq!(
            resolve(fx.cache.as_ref(), alias).await,
            Some((contact.clone(), b("ana"))),
            "an alias resolves to its entry's key and value"
        );
    }
    assert_eq!(
        fx.cache.get(&contact).await.must("get"),
        Some(b("ana")),
        "the entry reads as a plain value"
    );
    assert_eq!(
        fx.cache
            .get_many(std::slice::from_ref(&contact))
            .await
            .must("get_many"),
        vec![Some(b("ana"))]
    );
    assert_eq!(
        fx.cache.get(&phone).await.must("get alias"),
        None,
        "an alias is not an entry"
    );
    assert!(!fx.cache.exists(&phone).await.must("exists alias"));
    assert_eq!(
        resolve(fx.cache.as_ref(), &ckey("phone", "+5511000000000")).await,
        None,
        "an alias never given resolves to nothing"
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &ckey("phone2", "+5511999990000")).await,
        None,
        "the same alias key in another namespace is another alias"
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &contact).await,
        None,
        "an entry's own key is no alias"
    );
    Outcome::Passed
}

/// Writing an entry with aliases replaces its aliases: the old ones stop resolving,
/// the new ones resolve to the new value; an empty list drops them all.
pub async fn kv_alias_rewrite_replaces_aliases(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let contact = ckey("contacts", "42");
    let (a, b_, c) = (ckey("phone", "1"), ckey("phone", "2"), ckey("phone", "3"));
    fx.cache
        .set_with_aliases(&contact, b("v1"), None, &[a.clone(), b_.clone()])
        .await
        .must("first write");
    fx.cache
        .set_with_aliases(&contact, b("v2"), None, &[b_.clone(), c.clone()])
        .await
        .must("second write");
    assert_eq!(
        resolve(fx.cache.as_ref(), &a).await,
        None,
        "an alias left out of a rewrite stops resolving"
    );
    for alias in [&b_, &c] {
        assert_eq!(
            resolve(fx.cache.as_ref(), alias).await,
            Some((contact.clone(), b("v2"))),
            "a kept or new alias resolves to the new value"
        );
    }
    fx.cache
        .set_with_aliases(&contact, b("v3"), None, &[])
        .await
        .must("write without aliases");
    for alias in [&a, &b_, &c] {
        assert_eq!(
            resolve(fx.cache.as_ref(), alias).await,
            None,
            "an empty alias list drops every alias"
        );
    }
    assert_eq!(fx.cache.get(&contact).await.must("get"), Some(b("v3")));
    Outcome::Passed
}

/// An alias belongs to one entry at a time: given to another entry, it resolves
/// there, and what happens to the first entry afterwards (a rewrite, a delete)
/// does not touch it; deleting its new entry ends it.
pub async fn kv_alias_moves_between_entries(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let (first, second) = (ckey("contacts", "1"), ckey("contacts", "2"));
    let phone = ckey("phone", "+5511999990000");
    let other = ckey("phone", "+5511888880000");
    fx.cache
        .set_with_aliases(&first, b("old owner"), None, std::slice::from_ref(&phone))
        .await
        .must("first owner");
    fx.cache
        .set_with_aliases(&second, b("new owner"), None, std::slice::from_ref(&phone))
        .await
        .must("second owner");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((second.clone(), b("new owner"))),
        "the alias resolves to the entry that took it"
    );
    assert_eq!(
        fx.cache.get(&first).await.must("get first"),
        Some(b("old owner")),
        "the first entry keeps its value"
    );
    fx.cache
        .set_with_aliases(&first, b("old owner 2"), None, std::slice::from_ref(&other))
        .await
        .must("rewrite first");
    fx.cache
        .set(&first, b("old owner 3"), None)
        .await
        .must("plain set first");
    assert!(fx.cache.delete(&first).await.must("delete first"));
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((second.clone(), b("new owner"))),
        "the old owner's rewrites and delete leave a moved alias alone"
    );
    assert_eq!(resolve(fx.cache.as_ref(), &other).await, None);
    assert!(fx.cache.delete(&second).await.must("delete second"));
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        None,
        "deleting the owner ends the alias"
    );
    Outcome::Passed
}

/// Deleting an entry (`delete`, `delete_many`) ends its aliases, and writing the
/// entry again plainly does not bring them back.
pub async fn kv_alias_delete_then_plain_set_does_not_resurrect(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let contact = ckey("contacts", "42");
    let phone = ckey("phone", "+5511999990000");
    fx.cache
        .set_with_aliases(&contact, b("v1"), None, std::slice::from_ref(&phone))
        .await
        .must("set_with_aliases");
    assert!(fx.cache.delete(&contact).await.must("delete"));
    assert_eq!(resolve(fx.cache.as_ref(), &phone).await, None);
    fx.cache
        .set(&contact, b("v2"), None)
        .await
        .must("plain re-set");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        None,
        "a plain set after a delete brings no alias back"
    );

    let neighbour = ckey("contacts", "43");
    fx.cache
        .set_with_aliases(&contact, b("v3"), None, std::slice::from_ref(&phone))
        .await
        .must("set_with_aliases again");
    fx.cache
        .set(&neighbour, b("n"), None)
        .await
        .must("set neighbour");
    assert_eq!(
        fx.cache
            .delete_many(&[contact.clone(), neighbour.clone(), ckey("contacts", "none")])
            .await
            .must("delete_many"),
        2,
        "delete_many counts entries, not aliases"
    );
    assert_eq!(resolve(fx.cache.as_ref(), &phone).await, None);
    fx.cache
        .set_many(vec![(contact.clone(), b("v4"))], None)
        .await
        .must("plain set_many");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        None,
        "a plain set_many after delete_many brings no alias back"
    );
    Outcome::Passed
}

/// A plain `set` (and `set_many`) over an aliased entry keeps its aliases, which
/// resolve to the new value; they keep their own TTL (the aliased write's), not
/// the plain set's.
pub async fn kv_alias_plain_set_keeps_aliases(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let contact = ckey("contacts", "42");
    let phone = ckey("phone", "+5511999990000");
    fx.cache
        .set_with_aliases(
            &contact,
            b("v1"),
            Some(unit * 2),
            std::slice::from_ref(&phone),
        )
        .await
        .must("set_with_aliases");
    fx.cache
        .set(&contact, b("v2"), Some(unit * 20))
        .await
        .must("plain set");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((contact.clone(), b("v2"))),
        "a plain set keeps the aliases, which see the new value"
    );
    fx.cache
        .set_many(vec![(contact.clone(), b("v3"))], Some(unit * 20))
        .await
        .must("plain set_many");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((contact.clone(), b("v3"))),
        "a plain set_many keeps them too"
    );
    fx.advance(unit * 3).await; // t = 3: past the alias's TTL, within the entry's
    assert_eq!(
        fx.cache.get(&contact).await.must("get at t=3"),
        Some(b("v3")),
        "the entry lives for the plain set's TTL"
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        None,
        "the alias ends with its own TTL, which a plain set does not extend"
    );
    Outcome::Passed
}

/// Aliases expire with their entry, and do not come back when the entry is written
/// again plainly after it expired (by its TTL or a shortened one from `expire`).
pub async fn kv_alias_ttl_ends_with_the_entry(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let contact = ckey("contacts", "42");
    let shortened = ckey("contacts", "43");
    let phone = ckey("phone", "+5511999990000");
    let email = ckey("email", "ana@example.com");
    fx.cache
        .set_with_aliases(
            &contact,
            b("v"),
            Some(unit * 2),
            std::slice::from_ref(&phone),
        )
        .await
        .must("set_with_aliases");
    fx.cache
        .set_with_aliases(
            &shortened,
            b("w"),
            Some(unit * 20),
            std::slice::from_ref(&email),
        )
        .await
        .must("set_with_aliases long");
    assert!(
        fx.cache
            .expire(&shortened, unit * 2)
            .await
            .must("expire shortens")
    );
    fx.advance(unit).await; // t = 1
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((contact.clone(), b("v"))),
        "alive within the TTL"
    );
    fx.advance(unit * 2).await; // t = 3
    for alias in [&phone, &email] {
        assert_eq!(
            resolve(fx.cache.as_ref(), alias).await,
            None,
            "an alias ends with its entry"
        );
    }
    fx.cache
        .set(&contact, b("fresh"), None)
        .await
        .must("plain set after expiry");
    fx.cache
        .set(&shortened, b("fresh"), None)
        .await
        .must("plain set after expire");
    for alias in [&phone, &email] {
        assert_eq!(
            resolve(fx.cache.as_ref(), alias).await,
            None,
            "a plain set after expiry brings no alias back"
        );
    }
    Outcome::Passed
}

/// `clear_prefix` ends the aliases of the entries it clears, and clearing an
/// alias namespace ends the aliases named in it (their entries stay).
pub async fn kv_alias_clear_prefix(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let (a1, b1) = (ckey("contacts", "a1"), ckey("contacts", "b1"));
    let (p1, p2) = (ckey("phone", "1"), ckey("phone", "2"));
    let e2 = ckey("email", "2");
    fx.cache
        .set_with_aliases(&a1, b("a1"), None, std::slice::from_ref(&p1))
        .await
        .must("set a1");
    fx.cache
        .set_with_aliases(&b1, b("b1"), None, &[p2.clone(), e2.clone()])
        .await
        .must("set b1");
    assert_eq!(
        fx.cache
            .clear_prefix("contacts", "a")
            .await
            .must("clear contacts a*"),
        1,
        "clear_prefix counts entries"
    );
    assert_eq!(resolve(fx.cache.as_ref(), &p1).await, None);
    assert_eq!(
        resolve(fx.cache.as_ref(), &p2).await,
        Some((b1.clone(), b("b1"))),
        "the aliases of entries outside the prefix stay"
    );
    assert_eq!(
        fx.cache.clear_prefix("phone", "").await.must("clear phone"),
        0,
        "aliases are not counted as entries"
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &p2).await,
        None,
        "clearing an alias namespace ends its aliases"
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &e2).await,
        Some((b1.clone(), b("b1"))),
        "aliases of other namespaces stay"
    );
    assert_eq!(
        fx.cache.get(&b1).await.must("get b1"),
        Some(b("b1")),
        "the entry stays"
    );
    Outcome::Passed
}

/// Bad input is `InvalidInput` and writes nothing: too many aliases, an oversize
/// value, a zero TTL; an alias given twice counts once; a typed handle refuses an
/// alias no key could have.
pub async fn kv_alias_invalid_input_writes_nothing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let contact = ckey("contacts", "42");
    let phone = ckey("phone", "+5511999990000");
    fx.cache
        .set_with_aliases(&contact, b("v1"), None, std::slice::from_ref(&phone))
        .await
        .must("set_with_aliases");

    let many: Vec<CacheKey> = (0..=MAX_ALIASES)
        .map(|i| ckey("phone", &format!("n{i}")))
        .collect();
    expect_err(
        fx.cache
            .set_with_aliases(&contact, b("v2"), None, &many)
            .await,
        ErrorKind::InvalidInput,
        "more aliases than the limit",
    );
    let big = Bytes::from(vec![b'x'; fx.settings.max_value_bytes + 1]);
    expect_err(
        fx.cache
            .set_with_aliases(&contact, big, None, std::slice::from_ref(&many[0]))
            .await,
        ErrorKind::InvalidInput,
        "an oversize value",
    );
    expect_err(
        fx.cache
            .set_with_aliases(
                &contact,
                b("v2"),
                Some(std::time::Duration::ZERO),
                std::slice::from_ref(&many[0]),
            )
            .await,
        ErrorKind::InvalidInput,
        "a zero TTL",
    );
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((contact.clone(), b("v1"))),
        "a refused write leaves the entry and its aliases as they were"
    );
    assert_eq!(resolve(fx.cache.as_ref(), &many[0]).await, None);

    let twice: Vec<CacheKey> = vec![phone.clone(); MAX_ALIASES + 1];
    fx.cache
        .set_with_aliases(&contact, b("v3"), None, &twice)
        .await
        .must("an alias given many times counts once");
    assert_eq!(
        resolve(fx.cache.as_ref(), &phone).await,
        Some((contact.clone(), b("v3")))
    );

    let contacts = fx
        .cache
        .namespace("contacts")
        .must("namespace")
        .codec(Codec::Json);
    expect_err(
        contacts
            .set_with_aliases("42", &"v4", &[("phone", "")])
            .await,
        ErrorKind::InvalidInput,
        "an empty alias key",
    );
    expect_err(
        contacts.get_by_alias::<String>("", "x").await,
        ErrorKind::InvalidInput,
        "an empty alias namespace",
    );
    assert_eq!(
        fx.cache.get(&contact).await.must("get"),
        Some(b("v3")),
        "a refused handle write writes nothing"
    );
    Outcome::Passed
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Contact {
    name: String,
    phone: String,
}

/// The typed calls of a namespace handle: write a contact with its phone as an
/// alias, find it by the phone (key without the namespace, value decoded); a
/// handle of another namespace does not see it.
pub async fn kv_alias_through_namespace_handle(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let contacts = fx
        .cache
        .namespace("contacts")
        .must("namespace")
        .codec(Codec::Json);
    let ana = Contact {
        name: "Ana".into(),
        phone: "+5511999990000".into(),
    };
    contacts
        .set_with_aliases("42", &ana, &[("phone", ana.phone.as_str())])
        .await
        .must("set_with_aliases");
    assert_eq!(
        contacts
            .get_by_alias::<Contact>("phone", &ana.phone)
            .await
            .must("get_by_alias"),
        Some(("42".to_string(), ana)),
        "found by the phone: key within the namespace and the decoded value"
    );
    let orders = fx.cache.namespace("orders").must("namespace");
    assert_eq!(
        orders
            .get_by_alias::<u64>("phone", "+5511999990000")
            .await
            .must("get_by_alias in another namespace"),
        None,
        "an alias of another namespace's entry is not this namespace's"
    );
    Outcome::Passed
}

/// Writers racing to give one alias to different entries: afterwards the alias
/// resolves to exactly one of them, with that entry's value, and every read agrees.
pub async fn kv_alias_concurrent_moves_agree(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let phone = ckey("phone", "+5511999990000");
    let writers = 8;
    for round in 0..3 {
        let tasks: Vec<_> = (0..writers)
            .map(|i| {
                let cache = fx.cache.clone();
                let phone = phone.clone();
                tokio::spawn(async move {
                    let key = ckey("contacts", &format!("c{i}"));
                    cache
                        .set_with_aliases(&key, Bytes::from(format!("{round}:{i}")), None, &[phone])
                        .await
                })
            })
            .collect();
        for t in tasks {
            t.await
                .expect("writer task")
                .must("concurrent set_with_aliases");
        }
        let (owner, value) = resolve(fx.cache.as_ref(), &phone)
            .await
            .expect("the alias resolves to one of the writers' entries");
        let i = owner
            .key()
            .strip_prefix('c')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|i| *i < writers)
            .expect("one of the writers' entries");
        assert_eq!(
            value,
            Bytes::from(format!("{round}:{i}")),
            "with that entry's value"
        );
        for _ in 0..5 {
            assert_eq!(
                resolve(fx.cache.as_ref(), &phone).await,
                Some((owner.clone(), value.clone())),
                "every read agrees"
            );
        }
        // The other entries lost it: deleting them leaves it resolving.
        for j in (0..writers).filter(|j| *j != i) {
            fx.cache
                .delete(&ckey("contacts", &format!("c{j}")))
                .await
                .must("delete a loser");
        }
        assert_eq!(
            resolve(fx.cache.as_ref(), &phone).await,
            Some((owner.clone(), value)),
            "the losers' deletes leave the winner's alias"
        );
        fx.cache.delete(&owner).await.must("delete the winner");
        assert_eq!(resolve(fx.cache.as_ref(), &phone).await, None);
    }
    Outcome::Passed
}
