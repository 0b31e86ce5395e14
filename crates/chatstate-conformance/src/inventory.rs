//! Cases for [`Inventory`], as free functions each backend's `tests/inventory.rs`
//! calls on a fresh store: enumeration paging (more records than a page, a cursor
//! resumes exactly, nothing repeated or missed) and the restore rules (exact state,
//! idempotent, the conflict rule, dry run, refusals write nothing).
//!
//! A failed assertion panics with a message naming the behaviour.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    Bucket, CacheKey, CounterKey, CounterRecord, CounterSink, ErrorKind, Expected, FocusKey,
    FocusStore, Inventory, KvCache, Labels, NewMessage, PutMode, Record, RecordKey, RecordKind,
    RestoreMode, Restored, SessionKey, SessionPatch, SessionStore, SessionStoreExt,
};

/// What a store under test must be.
pub trait AllStores: Inventory + SessionStore + FocusStore + CounterSink + KvCache {}
impl<T: Inventory + SessionStore + FocusStore + CounterSink + KvCache> AllStores for T {}

const PAGE: usize = 4;

/// Every key of `kind` by walking pages of `limit`; also the cursor after each page.
async fn walk<S: AllStores>(
    store: &S,
    kind: RecordKind,
    limit: usize,
    start: Option<String>,
) -> (Vec<RecordKey>, Vec<Option<String>>) {
    let mut keys = Vec::new();
    let mut cursors = Vec::new();
    let mut cursor = start;
    loop {
        let page = store
            .scan(kind, cursor, limit)
            .await
            .unwrap_or_else(|e| panic!("scan {kind}: {e}"));
        assert!(
            page.records.len() <= limit,
            "a {kind} page holds at most the limit ({} > {limit})",
            page.records.len()
        );
        assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
        keys.extend(page.records.iter().map(Record::key));
        cursors.push(page.next_cursor.clone());
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return (keys, cursors),
        }
    }
}

/// How many records the first `pages` pages of a walk hold, and their last cursor.
async fn walk_pages<S: AllStores>(
    store: &S,
    kind: RecordKind,
    limit: usize,
    pages: usize,
) -> (usize, Option<String>) {
    let mut held = 0;
    let mut cursor = None;
    for _ in 0..pages {
        let page = store
            .scan(kind, cursor, limit)
            .await
            .unwrap_or_else(|e| panic!("scan {kind}: {e}"));
        held += page.records.len();
        cursor = page.next_cursor;
    }
    (held, cursor)
}

/// Fills the store with more records of every kind than one page holds: 3 tenants'
/// sessions, 2 scopes' documents, labelled and bucketed counters, cache entries.
/// Returns the keys written, by kind.
pub async fn fill<S: AllStores>(store: &S) -> [BTreeSet<RecordKey>; 4] {
    let mut out: [BTreeSet<RecordKey>; 4] = Default::default();
    for i in 0..11 {
        let key = SessionKey::new(format!("tenant{}", i % 3), "wa", format!("+55 {i}:x"))
            .expect("session key");
        store
            .append_message(&key, NewMessage::user(format!("m{i}")))
            .await
            .expect("append");
        out[0].insert(RecordKey::Session(key));
    }
    for i in 0..9 {
        let key = FocusKey::new(format!("scope{}", i % 2), format!("doc {i}")).expect("focus key");
        store
            .put(
                &key,
                Bytes::from(vec![i as u8; 3]),
                PutMode::Overwrite,
                None,
            )
            .await
            .expect("put");
        out[1].insert(RecordKey::Focus(key));
    }
    for i in 0..10i64 {
        let mut key = CounterKey::new(format!("c{}", i % 3))
            .expect("counter key")
            .with_labels(Labels::from_pairs([("n", i.to_string())]).expect("labels"));
        if i % 2 == 0 {
            key = key.in_bucket(Bucket::Day(20_000 + i));
        }
        store.add(&key, i - 5).await.expect("add");
        out[2].insert(RecordKey::Counter(key));
    }
    for i in 0..9 {
        let key = CacheKey::new(format!("ns{}", i % 2), format!("k:{i}")).expect("cache key");
        // A third carry an alias: aliases are part of their entry's record, never
        // records (or unreadable keys) of their own.
        let aliases: Vec<CacheKey> = (i % 3 == 0)
            .then(|| CacheKey::new("ns0", format!("alias:{i}")).expect("alias"))
            .into_iter()
            .collect();
        KvCache::set_with_aliases(store, &key, Bytes::from(vec![i as u8]), None, &aliases)
            .await
            .expect("set");
        out[3].insert(RecordKey::Cache(key));
    }
    out
}

/// Paging: every record of every kind exactly once over pages of 4, a cursor
/// resumes exactly where its page ended, and bad arguments are `InvalidInput`.
pub async fn paging_returns_every_record_once<S: AllStores>(store: &S) {
    let expected = fill(store).await;
    for (kind, expected) in RecordKind::ALL.into_iter().zip(expected) {
        let (keys, cursors) = walk(store, kind, PAGE, None).await;
        let unique: BTreeSet<RecordKey> = keys.iter().cloned().collect();
        assert_eq!(unique.len(), keys.len(), "no {kind} repeated: {keys:?}");
        assert_eq!(unique, expected, "every {kind} found, nothing else");
        assert!(cursors.len() >= 3, "{kind}: several pages were walked");
        // Resume from the cursor after the second page: exactly the rest. (A page
        // may hold fewer than the limit: Redis ends pages at SCAN step boundaries.)
        let (first_two, cursor) = walk_pages(store, kind, PAGE, 2).await;
        assert_eq!(
            cursor, cursors[1],
            "{kind}: the same pages give the same cursor"
        );
        assert!(first_two > 0, "{kind}: the first two pages hold records");
        let (rest, _) = walk(store, kind, PAGE, cursors[1].clone()).await;
        assert_eq!(
            rest,
            keys[first_two..].to_vec(),
            "a {kind} cursor resumes exactly after its page"
        );
        // One big page agrees, up to the largest limit there is.
        for limit in [1000, usize::MAX] {
            let (all, _) = walk(store, kind, limit, None).await;
            assert_eq!(
                all.into_iter().collect::<BTreeSet<_>>(),
                unique,
                "{kind}: page size {limit} does not change what is found"
            );
        }
        let err = store
            .scan(kind, None, 0)
            .await
            .expect_err("limit 0 is refused");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
    }
    let err = store
        .scan(RecordKind::Counter, Some("%zz not a cursor".into()), 4)
        .await
        .expect_err("a malformed cursor is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_secs(1)
}

/// Restore: exact state, idempotent, the conflict rule, dry run, refusals.
pub async fn restore_is_exact_idempotent_and_keeps_newer<S: AllStores>(store: &S) {
    // A session with a patched summary (version 2) and a window.
    let key = SessionKey::new("acme", "wa", "+5511999990000").expect("key");
    store
        .append_messages(
            &key,
            vec![NewMessage::user("oi"), NewMessage::assistant("olá")],
        )
        .await
        .expect("append");
    store
        .update(&key, SessionPatch::new().summary("greeted"), Expected::Any)
        .await
        .expect("update");
    for (name, value) in [("thread", &b"thr_1"[..]), ("tool:42", &[0, 255, 7][..])] {
        store
            .set_data(&key, name, Bytes::copy_from_slice(value))
            .await
            .expect("set_data");
    }
    let rk = RecordKey::Session(key.clone());
    let Some(Record::Session(original)) = store.read(&rk).await.expect("read") else {
        panic!("the session reads back as a session record");
    };
    assert_eq!(original.session.version, 2);
    assert_eq!(original.messages.len(), 2);
    assert_eq!(
        original.data.keys().collect::<Vec<_>>(),
        ["thread", "tool:42"],
        "the record holds the side data"
    );
    assert_eq!(original.data["tool:42"], Bytes::from_static(&[0, 255, 7]));
    let as_record = Record::Session(original.clone());
    assert_eq!(
        store
            .restore(&as_record, RestoreMode::Write)
            .await
            .expect("restore"),
        Restored::Unchanged,
        "restoring what is there is unchanged"
    );
    let mut other_data = original.clone();
    other_data
        .data
        .insert("extra".into(), Bytes::from_static(b"x"));
    assert_eq!(
        store
            .restore(&Record::Session(other_data), RestoreMode::DryRun)
            .await
            .expect("dry run"),
        Restored::Written,
        "same record, other side data: not unchanged"
    );

    // The target is newer (a later update): left alone.
    store
        .update(&key, SessionPatch::new().summary("newer"), Expected::Any)
        .await
        .expect("update");
    assert_eq!(
        store
            .restore(&as_record, RestoreMode::Write)
            .await
            .expect("restore"),
        Restored::SkippedNewer,
        "a newer target session is left alone"
    );
    let now = SessionStore::get(store, &key)
        .await
        .expect("get")
        .expect("live");
    assert_eq!(now.summary.as_deref(), Some("newer"));

    // The target holds another conversation of this key (another id: the session
    // expired or was deleted, and a new one began). Versions of two conversations
    // do not compare: the one created later is kept.
    let mut older = original.clone();
    older.session.id = "an-earlier-conversation".into();
    older.session.created_at =
        chatstate_core::Timestamp(original.session.created_at.as_millis() - 86_400_000);
    older.session.version = 99;
    assert_eq!(
        store
            .restore(&Record::Session(older), RestoreMode::Write)
            .await
            .expect("restore"),
        Restored::SkippedNewer,
        "an earlier conversation does not replace a later one, whatever its version"
    );
    let mut later = original.clone();
    later.session.id = "a-later-conversation".into();
    later.session.created_at = now.created_at.plus(Duration::from_secs(86_400));
    later.session.version = 1;
    assert_eq!(
        store
            .restore(&Record::Session(later), RestoreMode::Write)
            .await
            .expect("restore"),
        Restored::Written,
        "a later conversation replaces an earlier one, whatever its version"
    );
    let replaced = SessionStore::get(store, &key)
        .await
        .expect("get")
        .expect("live");
    assert_eq!(replaced.id, "a-later-conversation");

    // Deleted: the restore brings back the exact state, and the tenant lists it.
    assert!(SessionStore::delete(store, &key).await.expect("delete"));
    let dry = store
        .restore(&as_record, RestoreMode::DryRun)
        .await
        .expect("dry run");
    assert_eq!(dry, Restored::Written, "a dry run says it would write");
    assert!(
        SessionStore::get(store, &key).await.expect("get").is_none(),
        "a dry run writes nothing"
    );
    assert_eq!(
        store
            .restore(&as_record, RestoreMode::Write)
            .await
            .expect("restore"),
        Restored::Written
    );
    let Some(Record::Session(back)) = store.read(&rk).await.expect("read") else {
        panic!("restored session reads back");
    };
    assert_eq!(back.session, original.session, "every field exact");
    assert_eq!(back.messages, original.messages, "the window exact");
    assert_eq!(back.data, original.data, "the side data exact");
    assert_eq!(
        store.get_data(&key, "thread").await.expect("get_data"),
        Some(Bytes::from_static(b"thr_1")),
        "restored side data reads back through the store"
    );
    assert!(
        close(back.ttl, original.ttl),
        "{:?} vs {:?}",
        back.ttl,
        original.ttl
    );
    let listed = SessionStore::list(store, "acme", None, 10)
        .await
        .expect("list");
    assert_eq!(
        listed.items,
        vec![key.clone()],
        "the tenant lists the restored session"
    );
    assert_eq!(
        store
            .restore(&as_record, RestoreMode::Write)
            .await
            .expect("again"),
        Restored::Unchanged,
        "a second restore is unchanged"
    );
    // The session keeps working: the next append numbers on.
    let receipt = store
        .append_message(&key, NewMessage::user("again"))
        .await
        .expect("append after restore");
    assert_eq!(receipt.message_count, 3);

    // A restore with a short TTL sets it.
    let mut short = original.clone();
    short.session.version = 10;
    short.ttl = Duration::from_secs(30);
    store
        .restore(&Record::Session(short), RestoreMode::Write)
        .await
        .expect("restore");
    let ttl = SessionStore::ttl(store, &key)
        .await
        .expect("ttl")
        .expect("live");
    assert!(close(ttl, Duration::from_secs(30)), "{ttl:?}");

    // Counters: exact values, set not added, re-runs unchanged.
    let ckey = CounterKey::new("msgs")
        .expect("key")
        .in_bucket(Bucket::Day(20_500));
    for value in [i64::MIN, i64::MAX, -7] {
        let record = Record::Counter(CounterRecord {
            key: ckey.clone(),
            value,
        });
        assert_eq!(
            store
                .restore(&record, RestoreMode::Write)
                .await
                .expect("restore"),
            Restored::Written
        );
        assert_eq!(
            store
                .restore(&record, RestoreMode::Write)
                .await
                .expect("restore"),
            Restored::Unchanged,
            "a counter restored twice is not counted twice"
        );
        assert_eq!(CounterSink::get(store, &ckey).await.expect("get"), value);
    }
    let dry = Record::Counter(CounterRecord {
        key: ckey.clone(),
        value: 1,
    });
    assert_eq!(
        store.restore(&dry, RestoreMode::DryRun).await.expect("dry"),
        Restored::Written
    );
    assert_eq!(CounterSink::get(store, &ckey).await.expect("get"), -7);

    // Focus: newer kept, older overwritten, equal unchanged.
    let fkey = FocusKey::new("flow", "step").expect("key");
    store
        .put(&fkey, Bytes::from_static(b"v1"), PutMode::Overwrite, None)
        .await
        .expect("put");
    let Some(Record::Focus(doc)) = store
        .read(&RecordKey::Focus(fkey.clone()))
        .await
        .expect("read")
    else {
        panic!("focus reads back");
    };
    let r = Record::Focus(doc.clone());
    assert_eq!(
        store.restore(&r, RestoreMode::Write).await.expect("r"),
        Restored::Unchanged
    );
    store
        .put(&fkey, Bytes::from_static(b"v2"), PutMode::Overwrite, None)
        .await
        .expect("put");
    assert_eq!(
        store.restore(&r, RestoreMode::Write).await.expect("r"),
        Restored::SkippedNewer
    );
    let mut ahead = doc.clone();
    ahead.doc.version = 5;
    ahead.doc.value = Bytes::from_static(b"v5");
    assert_eq!(
        store
            .restore(&Record::Focus(ahead), RestoreMode::Write)
            .await
            .expect("r"),
        Restored::Written
    );
    let got = FocusStore::get(store, &fkey)
        .await
        .expect("get")
        .expect("live");
    assert_eq!((got.version, &got.value[..]), (5, &b"v5"[..]));
    assert_eq!(
        FocusStore::list(store, "flow").await.expect("list").len(),
        1
    );

    // Cache: bytes, TTL and aliases.
    let kkey = CacheKey::new("customers", "42").expect("key");
    let phone = CacheKey::new("phone", "+5511999990000").expect("alias");
    let record = Record::Cache(chatstate_core::CacheRecord {
        key: kkey.clone(),
        value: Bytes::from_static(b"\x00\xffbytes"),
        ttl: Duration::from_secs(90),
        aliases: vec![phone.clone()],
    });
    assert_eq!(
        store.restore(&record, RestoreMode::Write).await.expect("r"),
        Restored::Written
    );
    assert_eq!(
        store.restore(&record, RestoreMode::Write).await.expect("r"),
        Restored::Unchanged
    );
    assert_eq!(
        KvCache::get(store, &kkey).await.expect("get").as_deref(),
        Some(&b"\x00\xffbytes"[..])
    );
    let ttl = KvCache::ttl(store, &kkey)
        .await
        .expect("ttl")
        .expect("live");
    assert!(close(ttl, Duration::from_secs(90)), "{ttl:?}");
    let (owner, _) = KvCache::get_by_alias(store, &phone)
        .await
        .expect("get_by_alias")
        .expect("a restored alias resolves");
    assert_eq!(owner, kkey);
    let Some(Record::Cache(back)) = store
        .read(&RecordKey::Cache(kkey.clone()))
        .await
        .expect("read")
    else {
        panic!("the restored entry reads back");
    };
    assert_eq!(
        (&back.value[..], &back.aliases),
        (&b"\x00\xffbytes"[..], &vec![phone.clone()]),
        "an entry reads back with its aliases"
    );
    // Other aliases are a change: written, and the old one stops resolving.
    let email = CacheKey::new("email", "ana@example.com").expect("alias");
    let moved = Record::Cache(chatstate_core::CacheRecord {
        key: kkey.clone(),
        value: Bytes::from_static(b"\x00\xffbytes"),
        ttl: Duration::from_secs(90),
        aliases: vec![email.clone()],
    });
    assert_eq!(
        store.restore(&moved, RestoreMode::Write).await.expect("r"),
        Restored::Written
    );
    assert!(
        KvCache::get_by_alias(store, &phone)
            .await
            .expect("get_by_alias")
            .is_none()
    );
    assert!(
        KvCache::get_by_alias(store, &email)
            .await
            .expect("get_by_alias")
            .is_some()
    );
    // A hand-written line may list its aliases out of order or twice: compared as
    // stored (sorted, once each), so restoring it again changes nothing.
    let unordered = Record::Cache(chatstate_core::CacheRecord {
        key: kkey.clone(),
        value: Bytes::from_static(b"\x00\xffbytes"),
        ttl: Duration::from_secs(90),
        aliases: vec![phone.clone(), email.clone(), phone.clone()],
    });
    assert_eq!(
        store
            .restore(&unordered, RestoreMode::Write)
            .await
            .expect("r"),
        Restored::Written
    );
    for mode in [RestoreMode::DryRun, RestoreMode::Write] {
        assert_eq!(
            store.restore(&unordered, mode).await.expect("r"),
            Restored::Unchanged,
            "{mode:?}: the same aliases in another order are no change"
        );
    }

    // Refused records write nothing.
    let gone = CacheKey::new("customers", "refused").expect("key");
    let bad = Record::Cache(chatstate_core::CacheRecord {
        key: gone.clone(),
        value: Bytes::from_static(b"x"),
        ttl: Duration::ZERO,
        aliases: Vec::new(),
    });
    let err = store
        .restore(&bad, RestoreMode::Write)
        .await
        .expect_err("a zero TTL is refused");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(!KvCache::exists(store, &gone).await.expect("exists"));
}

/// A session restored with its `message_count` one below the maximum every
/// backend keeps (`i64::MAX`, as Redis counts; a corrupt or hand-made export line):
/// an append or a turn of two messages is a `Decode` error that writes nothing —
/// the restored record and its window stay exactly as they were.
pub async fn a_refused_append_on_a_full_count_loses_nothing<S: AllStores>(store: &S) {
    let key = SessionKey::new("acme", "whatsapp", "full-count").expect("key");
    store
        .append_messages(&key, vec![NewMessage::user("kept")])
        .await
        .expect("append");
    let rk = RecordKey::Session(key.clone());
    let Some(Record::Session(mut rec)) = store.read(&rk).await.expect("read") else {
        panic!("the session reads back as a session record");
    };
    let top = i64::MAX as u64 - 1;
    rec.session.message_count = top;
    if let Some(m) = rec.messages.last_mut() {
        m.seq = top;
    }
    store
        .restore(&Record::Session(rec), RestoreMode::Write)
        .await
        .expect("restore");
    let before = store.load(&key).await.expect("load").expect("restored");
    let appended = store
        .append_messages(&key, vec![NewMessage::user("1"), NewMessage::user("2")])
        .await;
    let turned = store
        .commit_turn(
            &key,
            chatstate_core::Turn::new()
                .messages([NewMessage::user("1"), NewMessage::user("2")])
                .patch(SessionPatch::new().summary("not written")),
        )
        .await;
    for (what, r) in [
        ("append", appended.map(|_| ())),
        ("turn", turned.map(|_| ())),
    ] {
        let err = r.expect_err(what);
        assert_eq!(err.kind(), ErrorKind::Decode, "{what}: {err}");
    }
    let after = store.load(&key).await.expect("load");
    assert_eq!(
        after.as_ref(),
        Some(&before),
        "nothing lost, nothing written"
    );
}
