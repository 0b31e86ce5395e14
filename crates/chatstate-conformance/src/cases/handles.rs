//! Per-entry TTLs in a many-set, typed many calls, and the handles (cache
//! namespace, focus scope, counter family): every call through every backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chatstate_core::{
    Bucket, CacheHandles, Codec, CounterHandles, CounterKey, ErrorKind, FocusHandles, KvCache,
    KvCacheExt, Labels, ManualClock, SharedClock, Versioned,
};
use serde::{Deserialize, Serialize};

use crate::cases::{Must, ckey, expect_err};
use crate::{Ctx, Outcome};

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// `set_many_with_ttls` stores each entry for its own TTL (the default for
/// `None`) in one call; a key given twice keeps its last value and TTL; an
/// oversize value anywhere stores nothing.
pub async fn kv_set_many_with_ttls_each_entry_its_own(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(10).await;
    let unit = ctx.unit();
    let (short, long, default, twice) = (
        ckey("customers", "short"),
        ckey("customers", "long"),
        ckey("customers", "default"),
        ckey("customers", "twice"),
    );
    fx.cache
        .set_many_with_ttls(vec![
            (short.clone(), b("s"), Some(unit * 2)),
            (long.clone(), b("l"), Some(unit * 30)),
            (default.clone(), b("d"), None),
            (twice.clone(), b("first"), Some(unit * 30)),
            (twice.clone(), b("last"), Some(unit * 2)),
        ])
        .await
        .must("set_many_with_ttls");
    assert_eq!(
        fx.cache
            .get_many(&[short.clone(), long.clone(), default.clone(), twice.clone()])
            .await
            .must("get_many"),
        vec![Some(b("s")), Some(b("l")), Some(b("d")), Some(b("last"))],
        "every entry is stored; a key given twice keeps its last value"
    );
    let ttl = |k| {
        let cache = fx.cache.clone();
        async move { cache.ttl(&k).await.must("ttl").expect("a live entry") }
    };
    assert!(ttl(short.clone()).await <= unit * 2, "the short TTL");
    assert!(ttl(long.clone()).await > unit * 10, "the long TTL");
    let d = ttl(default.clone()).await;
    assert!(
        d <= unit * 10 && d > unit * 2,
        "None is the default TTL (10 units), got {d:?}"
    );
    assert!(
        ttl(twice.clone()).await <= unit * 2,
        "a key given twice keeps its last TTL"
    );
    fx.advance(unit * 3).await;
    assert_eq!(
        fx.cache
            .get_many(&[short.clone(), long.clone(), twice.clone()])
            .await
            .must("get_many later"),
        vec![None, Some(b("l")), None],
        "each entry expired at its own time"
    );

    let settings = fx.settings.clone();
    let big = Bytes::from(vec![b'x'; settings.max_value_bytes + 1]);
    let fresh = ckey("customers", "fresh");
    expect_err(
        fx.cache
            .set_many_with_ttls(vec![
                (fresh.clone(), b("ok"), Some(unit * 5)),
                (ckey("customers", "big"), big, None),
            ])
            .await,
        ErrorKind::InvalidInput,
        "an oversize value in set_many_with_ttls",
    );
    assert_eq!(
        fx.cache.get(&fresh).await.must("get fresh"),
        None,
        "an oversize value anywhere stores nothing"
    );
    fx.cache
        .set_many_with_ttls(Vec::new())
        .await
        .must("an empty set_many_with_ttls");
    Outcome::Passed
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u32,
    name: String,
}

fn customer(id: u32) -> Customer {
    Customer {
        id,
        name: format!("customer {id}"),
    }
}

/// Typed many calls: `set_many_values` then `get_many_values` and
/// `get_many_or_load` (the loader gets exactly the missing keys, once each, and
/// what it returns is cached).
pub async fn kv_typed_many_calls(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let keys: Vec<_> = (0..4).map(|i| ckey("customers", &i.to_string())).collect();
    let entries: Vec<_> = keys[..2]
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), customer(i as u32)))
        .collect();
    fx.cache
        .set_many_values(&entries, None, Codec::Json)
        .await
        .must("set_many_values");
    let got: Vec<Option<Customer>> = fx
        .cache
        .get_many_values(&keys, Codec::Json)
        .await
        .must("get_many_values");
    assert_eq!(got, vec![Some(customer(0)), Some(customer(1)), None, None]);

    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let mut wanted = keys.clone();
    wanted.push(keys[3].clone()); // asked twice, loaded once
    let got: Vec<Option<Customer>> = fx
        .cache
        .get_many_or_load(&wanted, None, Codec::Json, move |missing| {
            seen.lock().expect("lock").extend(missing.iter().cloned());
            async move {
                Ok(missing
                    .into_iter()
                    .filter(|k| k.key() != "3")
                    .map(|k| {
                        let id = k.key().parse().expect("a number");
                        (k, customer(id))
                    })
                    .collect())
            }
        })
        .await
        .must("get_many_or_load");
    assert_eq!(
        got,
        vec![
            Some(customer(0)),
            Some(customer(1)),
            Some(customer(2)),
            None,
            None
        ],
        "hits, a loaded value, and a key the loader did not find"
    );
    let mut asked = asked.lock().expect("lock").clone();
    asked.sort_by(|a, b| a.key().cmp(b.key()));
    assert_eq!(
        asked,
        vec![keys[2].clone(), keys[3].clone()],
        "only the misses, once each"
    );
    assert_eq!(
        fx.cache
            .get_value::<Customer>(&keys[2], Codec::Json)
            .await
            .must("get loaded"),
        Some(customer(2)),
        "a loaded value is cached"
    );
    Outcome::Passed
}

/// A cache namespace handle: its TTL and codec apply to every call; calls never
/// touch another namespace; `clear` empties only its namespace.
pub async fn kv_namespace_handle(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(30).await;
    let unit = ctx.unit();
    let customers = fx
        .cache
        .namespace("customers")
        .must("namespace")
        .ttl(unit * 5)
        .codec(Codec::Json);
    let other = fx
        .cache
        .namespace("customers:archive")
        .must("other namespace");
    other.set("1", &customer(99)).await.must("set other");

    customers.set("1", &customer(1)).await.must("set");
    assert_eq!(
        customers.get::<Customer>("1").await.must("get"),
        Some(customer(1))
    );
    let raw = fx.cache.get(&ckey("customers", "1")).await.must("raw get");
    assert_eq!(
        raw.as_deref().map(|r| Codec::of(r).must("header")),
        Some(Codec::Json),
        "the handle's codec"
    );
    let left = customers.ttl_of("1").await.must("ttl_of").expect("live");
    assert!(left <= unit * 5, "the handle's TTL, got {left:?}");
    customers
        .set_for("2", &customer(2), unit * 20)
        .await
        .must("set_for");
    assert!(customers.ttl_of("2").await.must("ttl 2").expect("live") > unit * 5);
    customers
        .set_many(&[("3", customer(3)), ("4", customer(4))])
        .await
        .must("set_many");
    customers
        .set_many_with_ttls(&[("5", customer(5), Some(unit * 2)), ("6", customer(6), None)])
        .await
        .must("set_many_with_ttls");
    assert!(customers.ttl_of("5").await.must("ttl 5").expect("live") <= unit * 2);
    assert!(
        customers.ttl_of("6").await.must("ttl 6").expect("live") <= unit * 5,
        "None in a handle's many-set is the handle's TTL"
    );
    let got: Vec<Option<Customer>> = customers
        .get_many(&["1", "3", "missing"])
        .await
        .must("get_many");
    assert_eq!(got, vec![Some(customer(1)), Some(customer(3)), None]);

    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let c = calls.clone();
        let v: Customer = customers
            .get_or_load("7", || async move {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(customer(7))
            })
            .await
            .must("get_or_load");
        assert_eq!(v, customer(7));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call is a hit");
    let got: Vec<Option<Customer>> = customers
        .get_many_or_load(&["7", "8"], |missing| async move {
            assert_eq!(missing, vec!["8".to_string()], "keys without the namespace");
            Ok(missing.into_iter().map(|k| (k, customer(8))).collect())
        })
        .await
        .must("get_many_or_load");
    assert_eq!(got, vec![Some(customer(7)), Some(customer(8))]);

    assert!(customers.exists("8").await.must("exists"));
    assert!(customers.expire("8", unit * 3).await.must("expire"));
    assert!(customers.delete("8").await.must("delete"));
    assert!(!customers.delete("8").await.must("delete again"));
    assert_eq!(
        customers
            .delete_many(&["1", "2", "nope"])
            .await
            .must("delete_many"),
        2
    );
    assert_eq!(customers.clear_prefix("3").await.must("clear_prefix"), 1);
    assert!(customers.clear().await.must("clear") >= 3);
    assert_eq!(
        customers.get::<Customer>("4").await.must("get after clear"),
        None
    );
    assert_eq!(
        other.get::<Customer>("1").await.must("other after clear"),
        Some(customer(99)),
        "clear never touches another namespace"
    );
    expect_err(
        fx.cache.namespace("").map(drop),
        ErrorKind::InvalidInput,
        "an empty namespace",
    );
    expect_err(customers.key(""), ErrorKind::InvalidInput, "an empty key");
    Outcome::Passed
}

/// A focus scope handle: put / create / put_if_version / get / list / delete with
/// the handle's codec and TTL.
pub async fn focus_scope_handle(ctx: Ctx) -> Outcome {
    let fx = ctx.open_with_ttl(30).await;
    let unit = ctx.unit();
    let flow = fx
        .focus
        .scope("flow:pizza")
        .must("scope")
        .ttl(unit * 5)
        .codec(Codec::Json);
    let v1 = flow.put("order", &vec!["margherita"]).await.must("put");
    assert_eq!(v1, 1);
    let got: Option<Versioned<Vec<String>>> = flow.get("order").await.must("get");
    assert_eq!(
        got,
        Some(Versioned {
            name: "order".into(),
            value: vec!["margherita".to_string()],
            version: 1
        })
    );
    let v2 = flow
        .put_if_version("order", &vec!["margherita", "guaraná"], 1)
        .await
        .must("put_if_version");
    assert_eq!(v2, 2);
    expect_err(
        flow.put_if_version("order", &vec!["stale"], 1).await,
        ErrorKind::Conflict,
        "a stale put_if_version",
    );
    expect_err(
        flow.create("order", &vec!["again"]).await,
        ErrorKind::AlreadyExists,
        "create over an existing document",
    );
    flow.create("address", &vec!["Rua Augusta"])
        .await
        .must("create");
    let all: Vec<Versioned<Vec<String>>> = flow.list().await.must("list");
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["address", "order"], "sorted by name");
    assert_eq!(all[1].version, 2);
    let doc = fx
        .focus
        .get(&flow.key("order").must("key"))
        .await
        .must("raw get")
        .expect("live");
    assert_eq!(Codec::of(&doc.value).must("header"), Codec::Json);
    fx.advance(unit * 6).await;
    assert_eq!(
        flow.get::<Vec<String>>("order").await.must("get after TTL"),
        None,
        "the handle's TTL"
    );
    flow.put("order", &vec!["new"]).await.must("put again");
    assert!(flow.delete("order").await.must("delete"));
    assert!(!flow.delete("order").await.must("delete again"));
    Outcome::Passed
}

/// A counter family: its labels on every add, extra labels per call, the bucket
/// of the clock's hour, `list` keeping only the family's labels.
pub async fn counter_family_handle(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    // The family's own clock decides its buckets (counters never expire, so the
    // store's time plays no part): a manual one, moved across an hour below.
    let manual = ManualClock::starting_now();
    let clock: SharedClock = Arc::new(manual.clone());
    let messages = fx
        .counters
        .family("messages")
        .must("family")
        .label("tenant", "acme")
        .must("label")
        .hourly()
        .with_clock(clock.clone());
    let other_tenant = fx
        .counters
        .family("messages")
        .must("family")
        .label("tenant", "globex")
        .must("label")
        .hourly()
        .with_clock(clock.clone());
    assert_eq!(messages.add(2).await.must("add"), 2);
    assert_eq!(
        messages
            .add_with(&[("channel", "whatsapp")], 5)
            .await
            .must("add_with"),
        5
    );
    other_tenant.add(7).await.must("other add");
    // Read back by hand: the family's key is the plain key with labels and the hour.
    let hour = Bucket::hour_of(clock.now());
    let plain = CounterKey::new("messages")
        .must("key")
        .with_labels(Labels::new().with("tenant", "acme").must("labels"))
        .in_bucket(hour);
    assert_eq!(messages.bucket_now(), Some(hour));
    assert_eq!(
        fx.counters.get(&plain).await.must("raw get"),
        2,
        "the family's counter is the labelled, bucketed key"
    );
    assert_eq!(messages.get().await.must("get"), 2);
    assert_eq!(
        messages
            .get_with(&[("channel", "whatsapp")])
            .await
            .must("get_with"),
        5
    );
    let listed = messages.list(None).await.must("list");
    let mut values: Vec<i64> = listed.iter().map(|(_, v)| *v).collect();
    values.sort();
    assert_eq!(values, vec![2, 5], "only the family's labels: {listed:?}");

    // The next hour counts apart.
    manual.advance(std::time::Duration::from_secs(3600));
    assert_eq!(
        messages.add(1).await.must("add next hour"),
        1,
        "a new bucket"
    );
    assert_eq!(
        fx.counters.get(&plain).await.must("raw get"),
        2,
        "the last hour kept"
    );
    assert_eq!(
        messages.list(Some(hour)).await.must("list last hour").len(),
        2,
        "an explicit bucket lists that hour"
    );
    expect_err(
        fx.counters.family("").map(drop),
        ErrorKind::InvalidInput,
        "an empty counter name",
    );
    expect_err(
        messages.clone().label("", "x").map(drop),
        ErrorKind::InvalidInput,
        "an empty label name",
    );
    Outcome::Passed
}
