//! [`CounterSink`](chatstate_core::CounterSink) cases: adds, labels, buckets,
//! idempotent batches, listing and concurrency.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chatstate_core::{
    BatchOutcome, Bucket, CounterBatch, CounterSink, ErrorKind, Labels, Timestamp,
};

use crate::cases::{Must, counter, expect_err};
use crate::{Ctx, Outcome};

fn labels<const N: usize>(pairs: [(&str, &str); N]) -> Labels {
    Labels::from_pairs(pairs).expect("valid labels")
}

/// 2026-11-22T05:02:03.456Z: a fixed instant to build buckets from.
const T: Timestamp = Timestamp(1_795_323_723_456);

/// A missing counter reads 0; `add` returns the new value and `get` sees it; other
/// counters are untouched.
pub async fn counter_add_get_and_missing_is_zero(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let messages = counter("messages");
    let other = counter("messages_other");
    assert_eq!(
        c.get(&messages).await.must("get missing"),
        0,
        "a missing counter reads 0"
    );
    assert_eq!(
        c.add(&messages, 5).await.must("add 5"),
        5,
        "add returns the new value"
    );
    assert_eq!(
        c.add(&messages, 3).await.must("add 3"),
        8,
        "adds accumulate"
    );
    assert_eq!(
        c.add(&messages, 0).await.must("add 0"),
        8,
        "adding 0 changes nothing"
    );
    assert_eq!(c.get(&messages).await.must("get"), 8, "get sees the adds");
    assert_eq!(
        c.get(&other).await.must("get other"),
        0,
        "other counters are untouched"
    );
    assert_eq!(
        c.add(&other, 1).await.must("add other"),
        1,
        "another counter starts at 0"
    );
    assert_eq!(
        c.get(&messages).await.must("get again"),
        8,
        "counters are independent"
    );
    Outcome::Passed
}

/// Negative deltas subtract (below zero too); an add that would overflow an i64
/// either way is `InvalidInput` and leaves the value unchanged.
pub async fn counter_negative_and_overflow(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let k = counter("balance");
    assert_eq!(
        c.add(&k, -3).await.must("add -3"),
        -3,
        "a missing counter goes negative"
    );
    assert_eq!(c.add(&k, 10).await.must("add 10"), 7);
    assert_eq!(c.add(&k, -7).await.must("add -7"), 0);
    assert_eq!(c.get(&k).await.must("get"), 0, "negative deltas subtract");

    let hi = counter("high");
    assert_eq!(c.add(&hi, i64::MAX).await.must("add MAX"), i64::MAX);
    expect_err(
        c.add(&hi, 1).await,
        ErrorKind::InvalidInput,
        "add 1 to i64::MAX",
    );
    expect_err(
        c.add(&hi, i64::MAX).await,
        ErrorKind::InvalidInput,
        "add MAX to i64::MAX",
    );
    assert_eq!(
        c.get(&hi).await.must("get high"),
        i64::MAX,
        "an overflowing add changes nothing"
    );
    assert_eq!(
        c.add(&hi, -1).await.must("add -1 to MAX"),
        i64::MAX - 1,
        "the counter still works"
    );

    let lo = counter("low");
    assert_eq!(c.add(&lo, -i64::MAX).await.must("add -MAX"), -i64::MAX);
    assert_eq!(
        c.add(&lo, -1).await.must("reach MIN"),
        i64::MIN,
        "i64::MIN is a valid value"
    );
    expect_err(
        c.add(&lo, -1).await,
        ErrorKind::InvalidInput,
        "subtract 1 from i64::MIN",
    );
    assert_eq!(
        c.get(&lo).await.must("get low"),
        i64::MIN,
        "an underflowing add changes nothing"
    );
    Outcome::Passed
}

/// Labels given in any order address one counter; different label values, label
/// sets, and no labels are distinct counters, even when a naive join would collide.
pub async fn counter_labels_order_independent_and_distinct(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let name = || counter("errors");
    let ab = name().with_labels(labels([("type", "timeout"), ("region", "eu")]));
    let ba = name().with_labels(labels([("region", "eu"), ("type", "timeout")]));
    let built = name().with_labels(
        Labels::new()
            .with("type", "timeout")
            .and_then(|l| l.with("region", "eu"))
            .expect("valid labels"),
    );
    c.add(&ab, 2).await.must("add ab");
    c.add(&ba, 3).await.must("add ba");
    assert_eq!(
        c.add(&built, 4).await.must("add built"),
        9,
        "label order does not matter"
    );
    assert_eq!(c.get(&ab).await.must("get ab"), 9);
    assert_eq!(c.get(&ba).await.must("get ba"), 9);

    let other_value = name().with_labels(labels([("type", "auth"), ("region", "eu")]));
    let fewer = name().with_labels(labels([("type", "timeout")]));
    let plain = name();
    assert_eq!(
        c.get(&other_value).await.must("get other value"),
        0,
        "another label value is another counter"
    );
    assert_eq!(
        c.get(&fewer).await.must("get fewer"),
        0,
        "a subset of the labels is another counter"
    );
    assert_eq!(
        c.get(&plain).await.must("get plain"),
        0,
        "the unlabelled counter is another counter"
    );
    c.add(&other_value, 1).await.must("add other value");
    c.add(&fewer, 10).await.must("add fewer");
    c.add(&plain, 100).await.must("add plain");
    assert_eq!(
        c.get_many(&[ab.clone(), other_value, fewer, plain])
            .await
            .must("get_many"),
        vec![9, 1, 10, 100],
        "each label set counts on its own"
    );

    // `{a="1,b=2"}` and `{a="1", b="2"}` would be one key if labels were joined raw.
    let tricky = name().with_labels(labels([("a", "1,b=2")]));
    let split = name().with_labels(labels([("a", "1"), ("b", "2")]));
    c.add(&tricky, 7).await.must("add tricky");
    assert_eq!(
        c.get(&split).await.must("get split"),
        0,
        "label values with , and = do not collide"
    );
    assert_eq!(c.get(&tricky).await.must("get tricky"), 7);
    assert_eq!(c.get(&ab).await.must("get ab at end"), 9);
    Outcome::Passed
}

/// A counter in a day bucket, an hour bucket, another day and unbucketed are four
/// counters; two instants of one bucket address the same counter.
pub async fn counter_buckets_are_separate(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let name = || counter("messages");
    let hour = Duration::from_secs(3600);
    let day = name().in_bucket(Bucket::day_of(T));
    let same_day = name().in_bucket(Bucket::day_of(T.plus(hour * 3)));
    let hour_b = name().in_bucket(Bucket::hour_of(T));
    let next_hour = name().in_bucket(Bucket::hour_of(T.plus(hour)));
    let next_day = name().in_bucket(Bucket::day_of(T.plus(hour * 24)));
    let unbucketed = name();
    assert_eq!(day, same_day, "T and T+3h are in one UTC day");

    c.add(&unbucketed, 1).await.must("add unbucketed");
    c.add(&day, 10).await.must("add day");
    c.add(&same_day, 10).await.must("add same day");
    c.add(&hour_b, 100).await.must("add hour");
    c.add(&next_hour, 1_000).await.must("add next hour");
    c.add(&next_day, 10_000).await.must("add next day");

    // Day n and hour n share the number but not the granularity.
    let n = 20_000;
    c.add(&name().in_bucket(Bucket::Day(n)), 5)
        .await
        .must("add Day(n)");
    c.add(&name().in_bucket(Bucket::Hour(n)), 6)
        .await
        .must("add Hour(n)");

    let got = c
        .get_many(&[
            unbucketed,
            day,
            hour_b,
            next_hour,
            next_day,
            name().in_bucket(Bucket::Day(n)),
            name().in_bucket(Bucket::Hour(n)),
            counter("messages_by_bucket").in_bucket(Bucket::day_of(T)),
        ])
        .await
        .must("get_many buckets");
    assert_eq!(
        got,
        vec![1, 20, 100, 1_000, 10_000, 5, 6, 0],
        "every bucket and granularity counts on its own, and unbucketed apart"
    );
    Outcome::Passed
}

/// Applying a batch adds every (merged) delta, labelled and bucketed ones included,
/// to existing and new counters, and reports `Applied`.
pub async fn counter_apply_batch(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let existing = counter("messages");
    let labelled = counter("errors").with_labels(labels([("type", "timeout")]));
    let bucketed = counter("messages").in_bucket(Bucket::day_of(T));
    let both = counter("tokens")
        .with_labels(labels([("model", "small")]))
        .in_bucket(Bucket::hour_of(T));
    let merged = counter("replies");
    c.add(&existing, 10).await.must("seed existing");

    let mut batch = CounterBatch::new();
    batch.add(&existing, 1);
    batch.add(&labelled, 5);
    batch.add(&bucketed, -3);
    batch.add(&both, 250);
    batch.add(&merged, 1);
    batch.add(&merged, 1);
    assert_eq!(
        c.apply(&batch).await.must("apply"),
        BatchOutcome::Applied,
        "a new batch is applied"
    );
    let got = c
        .get_many(&[
            existing,
            labelled,
            bucketed,
            both,
            merged,
            counter("untouched"),
        ])
        .await
        .must("get_many after apply");
    assert_eq!(
        got,
        vec![11, 5, -3, 250, 2, 0],
        "every delta of the batch was added once, and nothing else"
    );
    Outcome::Passed
}

/// Applying a batch id a second time (same batch, or another batch with that id) is
/// `Duplicate` and adds nothing; a batch with a new id applies.
pub async fn counter_apply_same_batch_twice_counts_once(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let a = counter("messages");
    let b = counter("errors").with_labels(labels([("type", "auth")]));
    let other = counter("other");

    let mut batch = CounterBatch::new();
    batch.add(&a, 3);
    batch.add(&b, 1);
    assert_eq!(
        c.apply(&batch).await.must("first apply"),
        BatchOutcome::Applied
    );
    assert_eq!(
        c.get_many(&[a.clone(), b.clone()]).await.must("get"),
        vec![3, 1]
    );

    assert_eq!(
        c.apply(&batch).await.must("second apply"),
        BatchOutcome::Duplicate,
        "re-applying a batch is a duplicate"
    );
    assert_eq!(
        c.get_many(&[a.clone(), b.clone()])
            .await
            .must("get after duplicate"),
        vec![3, 1],
        "a duplicate batch adds nothing"
    );

    let mut same_id = CounterBatch::with_id(batch.id());
    same_id.add(&a, 100);
    same_id.add(&other, 100);
    assert_eq!(
        c.apply(&same_id).await.must("apply same id, other deltas"),
        BatchOutcome::Duplicate,
        "the batch id, not its contents, makes a duplicate"
    );
    assert_eq!(
        c.get_many(&[a.clone(), b.clone(), other.clone()])
            .await
            .must("get after same id"),
        vec![3, 1, 0],
        "a duplicate id adds none of its deltas"
    );

    let mut fresh = CounterBatch::new();
    assert_ne!(fresh.id(), batch.id(), "new batches get new ids");
    fresh.add(&a, 3);
    fresh.add(&other, 1);
    assert_eq!(
        c.apply(&fresh).await.must("apply a new batch"),
        BatchOutcome::Applied,
        "a batch with a new id applies"
    );
    assert_eq!(
        c.get_many(&[a, b, other]).await.must("get after new batch"),
        vec![6, 1, 1],
        "the new batch's deltas were added"
    );
    Outcome::Passed
}

/// List returns every counter of exactly that name and bucket (unbucketed ones for
/// `None`), with labels and values, sorted by labels.
pub async fn counter_list_by_name_and_bucket(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let day = Bucket::day_of(T);
    let next_day = Bucket::day_of(T.plus(Duration::from_secs(86_400)));
    let hour = Bucket::hour_of(T);
    let errors = |l: Labels| counter("errors").with_labels(l);

    let mut unbucketed = vec![
        (labels([("type", "timeout")]), 3),
        (labels([("type", "auth")]), 2),
        (Labels::new(), 7),
        (labels([("type", "timeout"), ("region", "eu")]), 1),
        (labels([("type", "deleted")]), 4),
    ];
    for (l, v) in &unbucketed {
        c.add(&errors(l.clone()), *v).await.must("add unbucketed");
    }
    c.add(&errors(labels([("type", "timeout")])).in_bucket(day), 40)
        .await
        .must("add day");
    c.add(&errors(labels([("type", "x")])).in_bucket(hour), 9)
        .await
        .must("add hour");
    c.add(&errors(Labels::new()).in_bucket(next_day), 11)
        .await
        .must("add next day");
    c.add(
        &counter("errors_total").with_labels(labels([("type", "timeout")])),
        100,
    )
    .await
    .must("add errors_total");
    c.add(&counter("error"), 50).await.must("add error");
    c.add(&counter("errors:eu"), 60).await.must("add errors:eu");
    assert!(
        c.delete(&errors(labels([("type", "deleted")])))
            .await
            .must("delete one"),
    );
    unbucketed.retain(|(l, _)| l != &labels([("type", "deleted")]));
    unbucketed.sort_by(|x, y| x.0.cmp(&y.0));

    assert_eq!(
        c.list("errors", None).await.must("list unbucketed"),
        unbucketed,
        "list(name, None) returns the name's unbucketed counters sorted by labels, \
         without other names, buckets or deleted counters"
    );
    assert_eq!(
        c.list("errors", Some(day)).await.must("list day"),
        vec![(labels([("type", "timeout")]), 40)],
        "list(name, day) returns only that day's counters"
    );
    assert_eq!(
        c.list("errors", Some(hour)).await.must("list hour"),
        vec![(labels([("type", "x")]), 9)],
        "list(name, hour) returns only that hour's counters"
    );
    assert_eq!(
        c.list("errors", Some(next_day)).await.must("list next day"),
        vec![(Labels::new(), 11)],
        "another day is another bucket"
    );
    assert_eq!(
        c.list(
            "errors",
            Some(Bucket::hour_of(T.plus(Duration::from_secs(3600))))
        )
        .await
        .must("list empty bucket"),
        vec![],
        "a bucket with no counters lists nothing"
    );
    assert_eq!(
        c.list("errors_total", None).await.must("list errors_total"),
        vec![(labels([("type", "timeout")]), 100)],
        "a name sharing a prefix lists only its own counters"
    );
    assert_eq!(
        c.list("nothing", None).await.must("list missing name"),
        vec![],
        "a name with no counters lists nothing"
    );
    Outcome::Passed
}

/// `get_many` answers in the order asked, missing counters as 0; `delete` is true
/// then false, and a deleted counter reads 0 and starts again from 0.
pub async fn counter_get_many_and_delete(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let a = counter("a");
    let b = counter("b").with_labels(labels([("k", "v")]));
    let missing = counter("missing");
    c.add(&a, 1).await.must("add a");
    c.add(&b, 2).await.must("add b");

    assert_eq!(
        c.get_many(&[b.clone(), missing.clone(), a.clone(), b.clone()])
            .await
            .must("get_many"),
        vec![2, 0, 1, 2],
        "get_many keeps the order of the keys, 0 for missing ones"
    );
    assert_eq!(
        c.get_many(&[]).await.must("get_many empty"),
        Vec::<i64>::new(),
        "get_many of no keys is empty"
    );

    assert!(
        c.delete(&a).await.must("delete a"),
        "deleting an existing counter returns true"
    );
    assert!(
        !c.delete(&a).await.must("delete a again"),
        "deleting it again returns false"
    );
    assert!(
        !c.delete(&missing).await.must("delete missing"),
        "deleting a counter that never existed returns false"
    );
    assert_eq!(
        c.get(&a).await.must("get deleted"),
        0,
        "a deleted counter reads 0"
    );
    assert_eq!(
        c.get_many(&[a.clone(), b.clone()])
            .await
            .must("get_many after delete"),
        vec![0, 2],
        "deleting one counter leaves the others"
    );
    assert_eq!(
        c.add(&a, 5).await.must("add after delete"),
        5,
        "a deleted counter restarts at 0"
    );
    Outcome::Passed
}

/// 64 tasks × 50 concurrent adds of 1 lose nothing and each add returns a distinct
/// new value; 8 batches applied concurrently with them all land once.
pub async fn counter_concurrent_adds_lose_nothing(ctx: Ctx) -> Outcome {
    const TASKS: i64 = 64;
    const ADDS: i64 = 50;
    const BATCHES: i64 = 8;
    const BATCH_DELTA: i64 = 10;
    let fx = ctx.open().await;
    let hits = counter("hits");
    let applied = counter("batches_applied");

    let mut adders = Vec::new();
    for _ in 0..TASKS {
        let sink: Arc<dyn CounterSink> = Arc::clone(&fx.counters);
        let hits = hits.clone();
        adders.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(ADDS as usize);
            for _ in 0..ADDS {
                seen.push(sink.add(&hits, 1).await.must("concurrent add"));
            }
            seen
        }));
    }
    let mut appliers = Vec::new();
    for i in 0..BATCHES {
        let sink: Arc<dyn CounterSink> = Arc::clone(&fx.counters);
        let mut batch = CounterBatch::new();
        batch.add(&hits, BATCH_DELTA);
        batch.add(&applied, 1);
        batch.add(
            &counter("batch").with_labels(labels([("n", &*i.to_string())])),
            i + 1,
        );
        appliers.push(tokio::spawn(async move {
            sink.apply(&batch).await.must("concurrent apply")
        }));
    }

    let mut returned = HashSet::new();
    for task in adders {
        for v in task.await.expect("an adding task panicked") {
            assert!(
                returned.insert(v),
                "two concurrent adds returned the same value {v}"
            );
        }
    }
    for task in appliers {
        assert_eq!(
            task.await.expect("an applying task panicked"),
            BatchOutcome::Applied,
            "distinct batches all apply"
        );
    }

    assert_eq!(
        fx.counters.get(&hits).await.must("get hits"),
        TASKS * ADDS + BATCHES * BATCH_DELTA,
        "no concurrent add or batch delta was lost"
    );
    assert_eq!(fx.counters.get(&applied).await.must("get applied"), BATCHES);
    for i in 0..BATCHES {
        let k = counter("batch").with_labels(labels([("n", &*i.to_string())]));
        assert_eq!(fx.counters.get(&k).await.must("get batch counter"), i + 1);
    }
    Outcome::Passed
}

/// One counter range on every backend: all of i64. Values and deltas around ±2^62
/// (where floating-point arithmetic starts to round) are exact; `i64::MAX - 1` then
/// `+1` reaches `i64::MAX`; one more overflows (`InvalidInput`, nothing changed). The
/// same through `add` and through `apply`.
pub async fn counter_range_edges_on_add_and_apply(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let p62 = 1_i64 << 62;
    for via_apply in [false, true] {
        let tag = if via_apply { "apply" } else { "add" };
        let add = |name: String, delta: i64| {
            let c = c.clone();
            async move {
                let key = counter(&name);
                if via_apply {
                    let mut batch = CounterBatch::new();
                    batch.add(&key, delta);
                    c.apply(&batch).await?;
                    c.get(&key).await
                } else {
                    c.add(&key, delta).await
                }
            }
        };
        let up = format!("up_{tag}");
        assert_eq!(
            add(up.clone(), p62).await.must("add 2^62"),
            p62,
            "{tag}: 2^62"
        );
        assert_eq!(
            add(up.clone(), p62 - 1).await.must("add 2^62 - 1"),
            i64::MAX,
            "{tag}: 2^62 + (2^62 - 1) is exactly i64::MAX"
        );
        let edge = format!("edge_{tag}");
        assert_eq!(
            add(edge.clone(), i64::MAX - 1).await.must("MAX-1"),
            i64::MAX - 1
        );
        assert_eq!(
            add(edge.clone(), 1).await.must("+1"),
            i64::MAX,
            "{tag}: i64::MAX - 1 then +1"
        );
        expect_err(
            add(edge.clone(), 1).await,
            ErrorKind::InvalidInput,
            &format!("{tag}: i64::MAX + 1"),
        );
        assert_eq!(
            c.get(&counter(&edge)).await.must("get edge"),
            i64::MAX,
            "{tag}: an overflow by one changes nothing"
        );
        let down = format!("down_{tag}");
        assert_eq!(add(down.clone(), -p62).await.must("-2^62"), -p62);
        assert_eq!(
            add(down.clone(), -p62).await.must("-2^62 again"),
            i64::MIN,
            "{tag}: -2^62 - 2^62 is exactly i64::MIN"
        );
        expect_err(
            add(down.clone(), -1).await,
            ErrorKind::InvalidInput,
            &format!("{tag}: i64::MIN - 1"),
        );
        assert_eq!(c.get(&counter(&down)).await.must("get down"), i64::MIN);
        let near = format!("near_{tag}");
        assert_eq!(
            add(near.clone(), p62 + 1).await.must("2^62 + 1"),
            p62 + 1,
            "{tag}: 2^62 + 1 is not rounded"
        );
        assert_eq!(
            add(near.clone(), -(p62 - 3)).await.must("back down"),
            4,
            "{tag}: exact arithmetic near 2^62"
        );
    }
    Outcome::Passed
}

/// A batch refused for one counter's overflow writes nothing: no other counter of the
/// batch changes and the batch id is not recorded, so the same id applies later once
/// the cause is gone.
pub async fn counter_refused_batch_writes_and_records_nothing(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    let (a, full, z) = (counter("a_first"), counter("m_full"), counter("z_last"));
    c.add(&full, i64::MAX).await.must("fill");
    let mut batch = CounterBatch::new();
    batch.add(&a, 5);
    batch.add(&full, 1);
    batch.add(&z, 7);
    expect_err(
        c.apply(&batch).await,
        ErrorKind::InvalidInput,
        "apply an overflowing batch",
    );
    assert_eq!(
        c.get_many(&[a.clone(), full.clone(), z.clone()])
            .await
            .must("get after refusal"),
        vec![0, i64::MAX, 0],
        "a refused batch changes no counter, before or after the refused one"
    );
    assert!(
        c.list("a_first", None).await.must("list").is_empty(),
        "a refused batch creates no counter"
    );
    c.add(&full, -10).await.must("make room");
    assert_eq!(
        c.apply(&batch).await.must("apply the same batch again"),
        BatchOutcome::Applied,
        "a refused batch's id was not recorded"
    );
    assert_eq!(
        c.get_many(&[a, full, z]).await.must("get after apply"),
        vec![5, i64::MAX - 9, 7]
    );
    Outcome::Passed
}

/// A bucket outside the years 0001–9999 (whose name in keys would not be unique) is
/// `InvalidInput` on every counter call, and nothing is written.
pub async fn counter_out_of_range_bucket_is_invalid_input(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let c = &fx.counters;
    for bucket in [
        Bucket::Day(i64::MAX),
        Bucket::Day(Bucket::LAST_DAY + 1),
        Bucket::Hour(i64::MIN),
    ] {
        let key = counter("hits").in_bucket(bucket);
        expect_err(c.add(&key, 1).await, ErrorKind::InvalidInput, "add");
        expect_err(c.get(&key).await, ErrorKind::InvalidInput, "get");
        expect_err(
            c.get_many(&[counter("hits"), key.clone()]).await,
            ErrorKind::InvalidInput,
            "get_many",
        );
        expect_err(c.delete(&key).await, ErrorKind::InvalidInput, "delete");
        expect_err(
            c.list("hits", Some(bucket)).await,
            ErrorKind::InvalidInput,
            "list",
        );
        let mut batch = CounterBatch::new();
        batch.add(&counter("hits"), 1);
        batch.add(&key, 1);
        expect_err(c.apply(&batch).await, ErrorKind::InvalidInput, "apply");
    }
    assert_eq!(
        c.get(&counter("hits")).await.must("get unbucketed"),
        0,
        "the refused batch wrote nothing"
    );
    let last = counter("hits").in_bucket(Bucket::Day(Bucket::LAST_DAY));
    assert_eq!(c.add(&last, 1).await.must("add on the last day"), 1);
    Outcome::Passed
}
