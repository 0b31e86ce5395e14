//! Lossless moves between backends (issue 9): memory → file → Redis → file, every
//! record compared after each hop (versions and counters exact, TTLs within a
//! second); re-runs idempotent, dry runs write nothing, a resumed migration picks
//! up where it stopped, malformed import lines are errors naming their line.
//!
//! Redis runs on a throwaway redis-server this test starts (never 6379).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chatstate::migrate::{
    ExportOptions, ImportOptions, MigrateOptions, Resume, export, import, migrate,
};
use chatstate::{
    BackendKind, Bucket, CacheKey, Codec, CounterKey, ErrorKind, Expected, FocusKey, Inventory,
    Labels, NewMessage, PutMode, Record, RecordKey, RecordKind, SessionKey, SessionPatch,
    SessionStoreExt, Stores, Timestamp,
};

use common::config;

async fn memory() -> Stores {
    Stores::open(&config(&[("CHATSTATE_BACKEND", "memory")]))
        .await
        .unwrap()
}

async fn file(dir: &tempfile::TempDir) -> Stores {
    let dir = dir.path().to_str().unwrap();
    Stores::open(&config(&[("USE_REDIS", "0"), ("CHATSTATE_FILE_DIR", dir)]))
        .await
        .unwrap()
}

async fn redis() -> Stores {
    let url = common::shared().url();
    let prefix = common::unique_prefix();
    Stores::open(&config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_KEY_PREFIX", &prefix),
    ]))
    .await
    .unwrap()
}

/// How many records of each kind [`fill`] writes.
const SESSIONS: u64 = 7;
const FOCUS: u64 = 4;
const COUNTERS: u64 = 7;
const CACHE: u64 = 3;

/// Sessions of three tenants (one past its window, several patched so versions
/// are above 1), focus documents put several times, counters over the whole i64
/// range with labels and day/hour buckets (one at 0), cache entries with TTLs.
async fn fill(s: &Stores) {
    for i in 0..SESSIONS {
        let key = SessionKey::new(
            format!("tenant-{}", i % 3),
            "whatsapp",
            format!("+55119{i}"),
        )
        .unwrap();
        let n = if i == 0 { 25 } else { i + 1 };
        for m in 0..n {
            let msg = if m % 2 == 0 {
                NewMessage::user(format!("mensagem {m} 🙂"))
            } else {
                NewMessage::assistant(format!("resposta {m}"))
                    .with_metadata(Codec::Json.encode(&m).unwrap())
            };
            s.sessions.append_message(&key, msg).await.unwrap();
        }
        if i % 2 == 0 {
            let patch = SessionPatch::new()
                .summary(format!("summary {i}"))
                .context(&vec!["pizza", "margherita"], Codec::Bincode)
                .unwrap()
                .paused(i == 4)
                .token_estimate(i * 10);
            s.sessions.update(&key, patch, Expected::Any).await.unwrap();
            s.sessions
                .update(&key, SessionPatch::new().focus("order"), Expected::Any)
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            s.sessions
                .set_data(&key, "thread_id", Bytes::from(format!("thr_{i}")))
                .await
                .unwrap();
            s.sessions
                .set_data(&key, "tool:ocr 🙂", Bytes::from(vec![0, 255, i as u8]))
                .await
                .unwrap();
        }
    }
    for i in 0..FOCUS {
        let key = FocusKey::new(format!("file-{}", i % 2), format!("doc {i}")).unwrap();
        for v in 0..=i {
            let value = Bytes::from(format!("{{\"v\":{v}}}"));
            let ttl = Some(Duration::from_secs(600 + i * 60));
            s.focus
                .put(&key, value, PutMode::Overwrite, ttl)
                .await
                .unwrap();
        }
    }
    let day = Bucket::day_of(Timestamp(1_795_323_723_456));
    let hour = Bucket::hour_of(Timestamp(1_795_323_723_456));
    let labels = Labels::from_pairs([("type", "text"), ("channel", "whatsapp")]).unwrap();
    let counters: [(CounterKey, i64); COUNTERS as usize] = [
        (CounterKey::new("messages").unwrap(), 12_345),
        (
            CounterKey::new("messages").unwrap().in_bucket(day),
            i64::MAX,
        ),
        (
            CounterKey::new("messages").unwrap().in_bucket(hour),
            i64::MIN,
        ),
        (
            CounterKey::new("messages")
                .unwrap()
                .with_labels(labels.clone()),
            -42,
        ),
        (
            CounterKey::new("errors")
                .unwrap()
                .with_labels(labels)
                .in_bucket(day),
            7,
        ),
        (CounterKey::new("hits@odd:name").unwrap(), 1),
        (CounterKey::new("zeroed").unwrap(), 0),
    ];
    for (key, value) in counters {
        if value == 0 {
            s.counters.add(&key, 5).await.unwrap();
            s.counters.add(&key, -5).await.unwrap();
        } else {
            s.counters.add(&key, value).await.unwrap();
        }
    }
    for (i, ttl) in [120u64, 3_600, 86_400].into_iter().enumerate() {
        let key = CacheKey::new("customers", format!("id:{i}")).unwrap();
        let value = Bytes::from(vec![0, 255, i as u8, b'x']);
        // One entry has aliases: they move with it.
        let aliases: Vec<CacheKey> = if i == 1 {
            ["+5511999990000", "+5511888880000"]
                .map(|p| CacheKey::new("phone", p).unwrap())
                .to_vec()
        } else {
            Vec::new()
        };
        s.cache
            .set_with_aliases(&key, value, Some(Duration::from_secs(ttl)), &aliases)
            .await
            .unwrap();
    }
}

/// Every record of a backend, by key.
async fn snapshot(inv: &dyn Inventory) -> BTreeMap<RecordKey, Record> {
    let mut out = BTreeMap::new();
    for kind in RecordKind::ALL {
        let mut cursor = None;
        loop {
            let page = inv.scan(kind, cursor, 3).await.unwrap();
            assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
            for r in page.records {
                assert!(out.insert(r.key(), r).is_none(), "no record twice");
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out
}

/// Every record of `want` is in `got`, exactly, TTLs within a second.
fn assert_same(hop: &str, want: &BTreeMap<RecordKey, Record>, got: &BTreeMap<RecordKey, Record>) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "{hop}: the same records"
    );
    for (key, w) in want {
        let g = &got[key];
        let (wt, gt) = (w.ttl(), g.ttl());
        match (wt, gt) {
            (Some(a), Some(b)) => assert!(
                a.abs_diff(b) <= Duration::from_secs(1),
                "{hop}: {key} TTL {a:?} vs {b:?}"
            ),
            (None, None) => {}
            _ => panic!("{hop}: {key} TTL kind differs"),
        }
        let strip = |r: &Record| r.clone().with_ttl(Duration::from_secs(1));
        assert!(strip(w) == strip(g), "{hop}: {key} differs: {w:?} vs {g:?}");
    }
}

fn counts(r: &chatstate::Report) -> [(u64, u64, u64, u64); 4] {
    RecordKind::ALL.map(|k| {
        let c = r.kind(k);
        (c.read, c.written, c.unchanged, c.failed)
    })
}

#[tokio::test]
async fn memory_to_file_to_redis_to_file_keeps_every_record() {
    let source = memory().await;
    fill(&source).await;
    let original = snapshot(source.inventory.as_ref()).await;
    assert_eq!(original.len() as u64, SESSIONS + FOCUS + COUNTERS + CACHE);
    let sample = SessionKey::new("tenant-0", "whatsapp", "+551190").unwrap();
    match &original[&RecordKey::Session(sample)] {
        Record::Session(s) => {
            assert_eq!((s.session.version, s.session.message_count), (3, 25));
            assert_eq!(s.messages.len(), 20, "the window");
            assert_eq!(s.data.len(), 2, "the side data");
        }
        other => panic!("{other:?}"),
    }

    // Hop 1: memory → file, by migrate, cache included.
    let dir1 = tempfile::tempdir().unwrap();
    let file1 = file(&dir1).await;
    let all = MigrateOptions {
        include_cache: true,
        page_size: 2,
        ..Default::default()
    };
    let report = migrate(
        source.inventory.as_ref(),
        file1.inventory.as_ref(),
        all.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        counts(&report),
        [
            (SESSIONS, SESSIONS, 0, 0),
            (FOCUS, FOCUS, 0, 0),
            (COUNTERS, COUNTERS, 0, 0),
            (CACHE, CACHE, 0, 0)
        ],
        "{report}"
    );
    assert_same(
        "memory → file",
        &original,
        &snapshot(file1.inventory.as_ref()).await,
    );

    // Hop 2: file → Redis, through an export file (JSON lines) and an import.
    let mut lines = Vec::new();
    let exported = export(
        file1.inventory.as_ref(),
        &mut lines,
        ExportOptions {
            include_cache: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(exported.total().written, original.len() as u64);
    let text = String::from_utf8(lines.clone()).unwrap();
    assert_eq!(
        text.lines().count(),
        original.len() + 1,
        "a header and a line per record"
    );
    assert!(
        text.contains(&format!("\"value\":\"{}\"", i64::MIN)),
        "i64 as a string"
    );
    let target = redis().await;
    let imported = import(
        target.inventory.as_ref(),
        &mut lines.as_slice(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        imported.total().written,
        original.len() as u64,
        "{imported}"
    );
    assert_same(
        "file → Redis",
        &original,
        &snapshot(target.inventory.as_ref()).await,
    );
    // The restored sessions work as sessions on Redis: listed, appendable.
    let listed = target.sessions.list("tenant-0", None, 10).await.unwrap();
    assert_eq!(listed.items.len(), 3);
    let sample = SessionKey::new("tenant-0", "whatsapp", "+551190").unwrap();
    let receipt = target
        .sessions
        .append_message(&sample, NewMessage::user("depois"))
        .await
        .unwrap();
    assert_eq!(receipt.message_count, 26);
    assert_eq!(receipt.window_len, 20);
    let touched = snapshot(target.inventory.as_ref()).await;

    // Hop 3: Redis → file, by migrate, into a fresh folder.
    let dir2 = tempfile::tempdir().unwrap();
    let file2 = file(&dir2).await;
    migrate(
        target.inventory.as_ref(),
        file2.inventory.as_ref(),
        all.clone(),
    )
    .await
    .unwrap();
    assert_same(
        "Redis → file",
        &touched,
        &snapshot(file2.inventory.as_ref()).await,
    );

    // A re-run is idempotent: everything unchanged, nothing written.
    let again = migrate(
        target.inventory.as_ref(),
        file2.inventory.as_ref(),
        all.clone(),
    )
    .await
    .unwrap();
    assert_eq!(again.total().written, 0, "{again}");
    assert_eq!(again.total().unchanged, original.len() as u64, "{again}");
    // So is importing the same file twice.
    let twice = import(
        target.inventory.as_ref(),
        &mut text.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        twice.sessions.skipped_newer, 1,
        "the appended session is newer: {twice}"
    );
    assert_eq!(twice.total().written, 0, "{twice}");
}

#[tokio::test]
async fn a_dry_run_writes_nothing_and_says_what_it_would_do() {
    let source = memory().await;
    fill(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let target = file(&dir).await;
    let dry = migrate(
        source.inventory.as_ref(),
        target.inventory.as_ref(),
        MigrateOptions {
            dry_run: true,
            include_cache: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(dry.dry_run);
    assert_eq!(
        dry.total().written,
        SESSIONS + FOCUS + COUNTERS + CACHE,
        "{dry}"
    );
    assert!(dry.to_string().contains("would write"), "{dry}");
    assert!(
        snapshot(target.inventory.as_ref()).await.is_empty(),
        "nothing written"
    );

    let mut lines = Vec::new();
    export(
        source.inventory.as_ref(),
        &mut lines,
        ExportOptions::default(),
    )
    .await
    .unwrap();
    let dry = import(
        target.inventory.as_ref(),
        &mut lines.as_slice(),
        ImportOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        dry.total().written,
        SESSIONS + FOCUS + COUNTERS,
        "no cache by default: {dry}"
    );
    assert!(
        snapshot(target.inventory.as_ref()).await.is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn a_migration_resumes_from_a_reported_point() {
    let source = memory().await;
    fill(&source).await;
    let points: Arc<Mutex<Vec<Resume>>> = Arc::default();
    let seen = points.clone();
    let target = memory().await;
    let options = MigrateOptions {
        page_size: 2,
        progress: Arc::new(move |p| {
            if let Some(r) = p.resume {
                seen.lock().unwrap().push(r.clone());
            }
        }),
        ..Default::default()
    };
    migrate(
        source.inventory.as_ref(),
        target.inventory.as_ref(),
        options.clone(),
    )
    .await
    .unwrap();
    let points = points.lock().unwrap().clone();
    // After the second page of sessions: 4 sessions done.
    let resume = points[1].clone();
    assert_eq!(resume.kind, RecordKind::Session);
    let text = resume.to_string();
    let fresh = memory().await;
    let resumed = migrate(
        source.inventory.as_ref(),
        fresh.inventory.as_ref(),
        MigrateOptions {
            resume: Some(text.parse().unwrap()),
            ..options
        },
    )
    .await
    .unwrap();
    assert_eq!(resumed.sessions.written, SESSIONS - 4, "{resumed}");
    assert_eq!(resumed.focus.written, FOCUS);
    assert_eq!(resumed.counters.written, COUNTERS);
    assert_eq!(resumed.cache.read, 0, "no cache unless asked");
    let got = snapshot(fresh.inventory.as_ref()).await;
    assert_eq!(got.len() as u64, SESSIONS - 4 + FOCUS + COUNTERS);
}

#[tokio::test]
async fn malformed_import_lines_are_errors_naming_the_line() {
    let source = memory().await;
    fill(&source).await;
    let mut lines = Vec::new();
    export(
        source.inventory.as_ref(),
        &mut lines,
        ExportOptions::default(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(lines).unwrap();
    let good: Vec<&str> = text.lines().collect();
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{}\n{}\n{{\"kind\":\"lock\"}}\n{}",
                good[0], good[1], good[2]
            ),
            "line 3: unknown kind",
        ),
        (
            format!("{}\nnot json at all", good[0]),
            "line 2: the line is not valid JSON",
        ),
        (
            format!(
                "{}\n{{\"kind\":\"counter\",\"name\":\"x\",\"labels\":{{}},\"bucket\":null,\"value\":\"+5511987654321\"}}",
                good[0]
            ),
            "line 2: counter record: value is not an i64",
        ),
        (
            format!(
                "{}\n{}",
                good[0],
                good[1].replace("\"version\":", "\"versão\":")
            ),
            "line 2: session record: unknown field",
        ),
        (
            format!(
                "{}\n{{\"kind\":\"cache\",\"namespace\":\"n\",\"key\":\"k\",\"value_b64\":\"%%%\",\"ttl_ms\":5}}",
                good[0]
            ),
            "line 2: field value_b64 is not base64",
        ),
        (good[1].to_string(), "line 1: not a chatstate export"),
        (
            good[0].replace("\"version\":1", "\"version\":2"),
            "line 1: export format version 2",
        ),
        (String::new(), "no header"),
    ];
    for (input, want) in cases {
        let target = memory().await;
        let err = import(
            target.inventory.as_ref(),
            &mut input.as_bytes(),
            ImportOptions::default(),
        )
        .await
        .expect_err(want);
        assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
        assert!(err.to_string().contains(want), "{err} should say {want:?}");
        assert!(
            !err.to_string().contains("5511987654321"),
            "no values in errors: {err}"
        );
    }
    // Lines before a bad one were written whole; nothing after it.
    let target = memory().await;
    let input = format!(
        "{}\n{}\n{{\"kind\":\"lock\"}}\n{}\n",
        good[0], good[1], good[2]
    );
    import(
        target.inventory.as_ref(),
        &mut input.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(snapshot(target.inventory.as_ref()).await.len(), 1);
    // A file with CRLF line ends and blank lines reads the same.
    let crlf = text.replace('\n', "\r\n\r\n");
    let target = memory().await;
    let report = import(
        target.inventory.as_ref(),
        &mut crlf.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.total().written, SESSIONS + FOCUS + COUNTERS);
}

#[tokio::test]
async fn stores_reach_their_backends_inventory() {
    let s = memory().await;
    assert_eq!(s.backend, BackendKind::Memory);
    let key = SessionKey::new("t", "c", "u").unwrap();
    s.sessions
        .append_message(&key, NewMessage::user("oi"))
        .await
        .unwrap();
    let page = s
        .inventory
        .scan(RecordKind::Session, None, 10)
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].key(), RecordKey::Session(key));
}

/// From one Redis server to a Redis Cluster and back, through the facade
/// (`USE_REDIS=1` + `REDIS_CLUSTER_NODES`): the layouts differ (a Cluster shards a
/// tenant's sessions), `migrate` moves every record exactly, and the sessions work
/// as sessions on the Cluster (listed, appendable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_to_a_cluster_and_back_keeps_every_record() {
    // Started first: TTLs are compared within a second.
    let cluster = common::cluster::Cluster::start(3, 0);
    let source = redis().await;
    fill(&source).await;
    let original = snapshot(source.inventory.as_ref()).await;
    let prefix = common::unique_prefix();
    let target = Stores::open(&config(&[
        ("USE_REDIS", "1"),
        ("REDIS_CLUSTER_NODES", &cluster.seeds()),
        ("REDIS_URL", "redis://unused.invalid"),
        ("CHATSTATE_KEY_PREFIX", &prefix),
    ]))
    .await
    .unwrap();
    let all = MigrateOptions {
        include_cache: true,
        page_size: 3,
        ..Default::default()
    };
    let report = migrate(
        source.inventory.as_ref(),
        target.inventory.as_ref(),
        all.clone(),
    )
    .await
    .unwrap();
    assert_eq!(report.total().written, original.len() as u64, "{report}");
    assert_same(
        "one server → Cluster",
        &original,
        &snapshot(target.inventory.as_ref()).await,
    );
    let listed = target.sessions.list("tenant-0", None, 10).await.unwrap();
    assert_eq!(listed.items.len(), 3);
    let sample = SessionKey::new("tenant-0", "whatsapp", "+551190").unwrap();
    let receipt = target
        .sessions
        .append_message(&sample, NewMessage::user("no cluster"))
        .await
        .unwrap();
    assert_eq!(receipt.message_count, 26);
    let touched = snapshot(target.inventory.as_ref()).await;
    let back = redis().await;
    migrate(target.inventory.as_ref(), back.inventory.as_ref(), all)
        .await
        .unwrap();
    assert_same(
        "Cluster → one server",
        &touched,
        &snapshot(back.inventory.as_ref()).await,
    );
}

/// Side data travels in `data_b64` (name → base64); a session line without it (an
/// export made before side data existed) imports as a session without side data;
/// a value that is not base64 is an error naming the line.
#[tokio::test]
async fn session_side_data_moves_and_lines_without_it_still_import() {
    let source = memory().await;
    let key = SessionKey::new("acme", "wa", "+5511").unwrap();
    source
        .sessions
        .append_message(&key, NewMessage::user("oi"))
        .await
        .unwrap();
    source
        .sessions
        .set_data(&key, "thread", Bytes::from_static(b"thr_1"))
        .await
        .unwrap();
    let mut lines = Vec::new();
    export(
        source.inventory.as_ref(),
        &mut lines,
        ExportOptions::default(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(lines).unwrap();
    let field = r#","data_b64":{"thread":"dGhyXzE="}"#;
    assert!(text.contains(field), "{text}");

    let target = memory().await;
    import(
        target.inventory.as_ref(),
        &mut text.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        target.sessions.get_data(&key, "thread").await.unwrap(),
        Some(Bytes::from_static(b"thr_1"))
    );

    let old = text.replace(field, "");
    let target = memory().await;
    let report = import(
        target.inventory.as_ref(),
        &mut old.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.total().written, 1);
    let loaded = target.sessions.load(&key).await.unwrap().expect("imported");
    assert_eq!(loaded.messages.len(), 1);
    assert_eq!(
        target.sessions.get_data(&key, "thread").await.unwrap(),
        None
    );

    let bad = text.replace("dGhyXzE=", "%%%");
    let err = import(
        memory().await.inventory.as_ref(),
        &mut bad.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(
        err.to_string()
            .contains("line 2: field data_b64 is not base64"),
        "{err}"
    );
}

#[tokio::test]
async fn cache_aliases_move_and_lines_without_them_still_import() {
    let source = memory().await;
    let contact = CacheKey::new("contacts", "7").unwrap();
    let phone = CacheKey::new("phone", "+5511999990000").unwrap();
    source
        .cache
        .set_with_aliases(
            &contact,
            Bytes::from_static(b"ana"),
            None,
            std::slice::from_ref(&phone),
        )
        .await
        .unwrap();
    let mut lines = Vec::new();
    let options = ExportOptions {
        include_cache: true,
        ..ExportOptions::default()
    };
    export(source.inventory.as_ref(), &mut lines, options)
        .await
        .unwrap();
    let text = String::from_utf8(lines).unwrap();
    let field = r#","aliases":[{"namespace":"phone","key":"+5511999990000"}]"#;
    assert!(text.contains(field), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let target = file(&dir).await;
    import(
        target.inventory.as_ref(),
        &mut text.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        target.cache.get_by_alias(&phone).await.unwrap(),
        Some((contact.clone(), Bytes::from_static(b"ana"))),
        "the alias resolves on the target"
    );

    // A line of an older export (no aliases) imports as an entry without any.
    let old = text.replace(field, "");
    let target = memory().await;
    let report = import(
        target.inventory.as_ref(),
        &mut old.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.total().written, 1);
    assert_eq!(
        target.cache.get(&contact).await.unwrap(),
        Some(Bytes::from_static(b"ana"))
    );
    assert_eq!(target.cache.get_by_alias(&phone).await.unwrap(), None);

    let bad = text.replace(r#""namespace":"phone""#, r#""namespace":"""#);
    let err = import(
        memory().await.inventory.as_ref(),
        &mut bad.as_bytes(),
        ImportOptions::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    assert!(
        err.to_string()
            .contains("line 2: cache record: cache namespace must not be empty"),
        "{err}"
    );
}
