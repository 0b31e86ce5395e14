//! What happens on disk: corrupt files are contained, hostile ids stay inside the
//! folder, the sweeper frees expired records without loading them, and a folder
//! written by another format is refused.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    CacheKey, CounterKey, CounterSink, ErrorKind, FocusKey, FocusStore, KvCache, ManualClock,
    NewMessage, PutMode, SessionKey, SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_file::{Durability, FileStore};

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readable folder") {
            let p = e.expect("readable entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn store(dir: &Path, clock: &ManualClock) -> FileStore {
    FileStore::builder(dir)
        .clock(clock.shared())
        .sweep_interval(None)
        .open()
        .expect("the store opens")
}

#[tokio::test]
async fn a_corrupt_session_file_is_a_decode_error_for_that_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let s = store(dir.path(), &clock);
    let (a, b) = (
        SessionKey::new("t", "c", "alice").unwrap(),
        SessionKey::new("t", "c", "bob").unwrap(),
    );
    for k in [&a, &b] {
        s.append_message(k, NewMessage::user("hello"))
            .await
            .unwrap();
    }
    let path = all_files(&dir.path().join("sessions"))
        .into_iter()
        .find(|p| p.file_name().unwrap().to_str().unwrap().contains("alice"))
        .unwrap();
    let original = fs::read(&path).unwrap();

    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", original[..original.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("flipped body byte", {
            let mut b = original.clone();
            let i = b.len() - 5;
            b[i] ^= 0x40;
            b
        }),
        ("flipped header byte", {
            let mut b = original.clone();
            b[9] ^= 1;
            b
        }),
        ("garbage", b"not a chatstate file at all".to_vec()),
    ];
    for (what, bytes) in damages {
        fs::write(&path, &bytes).unwrap();
        let err = s.load(&a).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "{what}: {err}");
        assert!(
            err.to_string().contains("alice"),
            "{what}: the error names the file: {err}"
        );
        let err = s
            .append_message(&a, NewMessage::user("more"))
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Decode,
            "{what}: an append does not clobber it"
        );
        assert_eq!(
            fs::read(&path).unwrap(),
            bytes,
            "{what}: the damaged file is left as it was"
        );
        // The rest of the store is fine.
        assert_eq!(
            s.load(&b).await.unwrap().unwrap().messages.len(),
            1,
            "{what}"
        );
        let page = SessionStore::list(&s, "t", None, 10).await.unwrap();
        assert_eq!(
            page.items,
            vec![b.clone()],
            "{what}: listing skips the bad file"
        );
    }
    let report = s.verify().await.unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert_eq!(report.corrupt[0].0, path);
    assert!(
        SessionStore::delete(&s, &a).await.unwrap(),
        "a corrupt session can be deleted"
    );
    s.append_message(&a, NewMessage::user("fresh"))
        .await
        .unwrap();
    assert!(s.verify().await.unwrap().corrupt.is_empty());
}

#[tokio::test]
async fn corrupt_cache_focus_and_counter_files_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let s = store(dir.path(), &clock);
    let (k1, k2) = (
        CacheKey::new("customers", "1").unwrap(),
        CacheKey::new("customers", "2").unwrap(),
    );
    KvCache::set(&s, &k1, Bytes::from_static(b"ana"), None)
        .await
        .unwrap();
    KvCache::set(&s, &k2, Bytes::from_static(b"bia"), None)
        .await
        .unwrap();
    let f = FocusKey::new("flow", "x").unwrap();
    s.put(&f, Bytes::from_static(b"doc"), PutMode::Create, None)
        .await
        .unwrap();
    let c = CounterKey::new("messages").unwrap();
    s.add(&c, 3).await.unwrap();

    for p in all_files(dir.path()) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let damage = name.ends_with(".f")
            || name.ends_with(".c")
            || (name.ends_with(".k") && name.starts_with("1-"));
        if damage {
            let mut bytes = fs::read(&p).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            fs::write(&p, bytes).unwrap();
        }
    }
    assert_eq!(
        KvCache::get(&s, &k1).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        KvCache::get(&s, &k2).await.unwrap().as_deref(),
        Some(&b"bia"[..])
    );
    let many = KvCache::get_many(&s, std::slice::from_ref(&k2))
        .await
        .unwrap();
    assert_eq!(many, vec![Some(Bytes::from_static(b"bia"))]);
    assert_eq!(
        FocusStore::get(&s, &f).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        s.put(&f, Bytes::from_static(b"v"), PutMode::IfVersion(1), None)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Decode,
        "a compare-and-set cannot compare against a corrupt document"
    );
    let doc = s
        .put(&f, Bytes::from_static(b"new"), PutMode::Overwrite, None)
        .await
        .unwrap();
    assert_eq!(doc.version, 1, "an overwrite replaces a corrupt document");
    assert_eq!(
        CounterSink::get(&s, &c).await.unwrap_err().kind(),
        ErrorKind::Decode
    );
    assert_eq!(
        s.add(&c, 1).await.unwrap_err().kind(),
        ErrorKind::Decode,
        "counters are never reset over a corrupt file"
    );
    assert_eq!(
        s.clear_prefix("customers", "").await.unwrap(),
        1,
        "clear skips the bad entry"
    );
    let report = s.verify().await.unwrap();
    assert_eq!(report.corrupt.len(), 2, "{report:?}");
}

#[tokio::test]
async fn hostile_ids_stay_inside_the_folder_and_apart() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let clock = ManualClock::starting_now();
    let s = store(&dir, &clock);
    let ids = [
        "../escape",
        "/abs/path",
        "..",
        ".",
        "a/../../b",
        "\0",
        "nul\0byte",
        "CON",
        "con",
        "Con",
        "aux.txt",
        "Ana",
        "ana",
        "🙂",
        " ",
        "C:\\Windows\\x",
        &"L".repeat(512),
    ];
    for (i, id) in ids.iter().enumerate() {
        let k = SessionKey::new(*id, *id, *id).unwrap();
        s.append_message(&k, NewMessage::user(format!("{i}")))
            .await
            .unwrap();
        let c = CacheKey::new(*id, *id).unwrap();
        KvCache::set(&s, &c, Bytes::from(format!("{i}")), None)
            .await
            .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let k = SessionKey::new(*id, *id, *id).unwrap();
        let loaded = s.load(&k).await.unwrap().unwrap();
        assert_eq!(loaded.messages.len(), 1, "{id:?} sees only its own message");
        assert_eq!(loaded.messages[0].content, format!("{i}"));
        let c = CacheKey::new(*id, *id).unwrap();
        assert_eq!(
            KvCache::get(&s, &c).await.unwrap(),
            Some(Bytes::from(format!("{i}")))
        );
    }
    // Nothing was written outside the store's folder, and every name is plain.
    let outside: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, vec![std::ffi::OsString::from("store")]);
    for p in all_files(&dir) {
        let rel = p.strip_prefix(&dir).unwrap();
        for part in rel.components() {
            let part = part.as_os_str().to_str().unwrap();
            assert!(part.len() <= 255, "{rel:?}");
            assert!(
                part.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-~.".contains(c)),
                "{rel:?} has an unexpected character"
            );
            assert!(
                !part.starts_with('.') || part.starts_with(".tmp-"),
                "{rel:?}"
            );
        }
    }
}

/// Every folder and file under `dir` (not `dir` itself).
fn all_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readable folder") {
            let p = e.expect("readable entry").path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

#[cfg(unix)]
#[tokio::test]
async fn folders_are_0700_and_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let base = tempfile::tempdir().unwrap();
    // The store makes its folder (and a missing parent) itself.
    let root = base.path().join("parent").join("store");
    let clock = ManualClock::starting_now();
    let s = store(&root, &clock);
    let k = SessionKey::new("t", "c", "u").unwrap();
    s.append_message(&k, NewMessage::user("secret"))
        .await
        .unwrap();
    s.try_lock(&k, "job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let f = FocusKey::new("scope", "doc").unwrap();
    s.put(&f, Bytes::from_static(b"{}"), PutMode::Overwrite, None)
        .await
        .unwrap();
    let c = CacheKey::new("ns", "k").unwrap();
    KvCache::set(&s, &c, Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    CounterSink::add(&s, &CounterKey::new("n").unwrap(), 1)
        .await
        .unwrap();

    let mut seen = (0, 0);
    for dir in [root.parent().unwrap().to_path_buf(), root.clone()] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    for p in all_entries(&root) {
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "folder {}", p.display());
            seen.0 += 1;
        } else {
            assert_eq!(mode(&p), 0o600, "file {}", p.display());
            seen.1 += 1;
        }
    }
    // sessions, session-locks, focus, cache (each with a group folder), counters, locks;
    // FORMAT, the five records and at least one lock stripe.
    assert!(seen.0 >= 10 && seen.1 >= 7, "{seen:?}");
}

/// The format stores lengths as u32: a record of 4 GiB or more cannot be written,
/// and must be refused before anything is (not wrapped into a header that lies).
/// The big value is a zeroed allocation the store never touches, so the test costs
/// no memory or disk.
#[tokio::test]
async fn a_record_over_the_format_limit_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStore::builder(dir.path())
        .settings(StoreSettings {
            // Let the value through the store-wide limit to reach the format's.
            max_value_bytes: u32::MAX as usize + 1024,
            ..StoreSettings::default()
        })
        .durability(Durability::None)
        .sweep_interval(None)
        .open()
        .unwrap();
    let huge = Bytes::from(vec![0u8; u32::MAX as usize + 1]);
    let (k, k2) = (
        CacheKey::new("ns", "k").unwrap(),
        CacheKey::new("ns", "k2").unwrap(),
    );
    KvCache::set(&s, &k, Bytes::from_static(b"old"), None)
        .await
        .unwrap();
    // Every file but the lock stripes, which writers open (and create) as they go.
    let records = || {
        let mut files = all_files(dir.path());
        files.retain(|p| !p.starts_with(dir.path().join("locks")));
        files.sort();
        files
    };
    let before = records();

    let err = KvCache::set(&s, &k, huge.clone(), None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("format's limit"), "{err}");
    assert_eq!(
        KvCache::get(&s, &k).await.unwrap().as_deref(),
        Some(&b"old"[..]),
        "the old value stays"
    );

    // set_many checks every entry before writing any.
    let err = s
        .set_many(
            vec![
                (k2.clone(), Bytes::from_static(b"small")),
                (k, huge.clone()),
            ],
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(
        KvCache::get(&s, &k2).await.unwrap().is_none(),
        "nothing written"
    );

    let f = FocusKey::new("scope", "doc").unwrap();
    let err = s.put(&f, huge, PutMode::Overwrite, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(FocusStore::get(&s, &f).await.unwrap().is_none());

    assert_eq!(records(), before, "no file written, no temp file left");
}

#[tokio::test]
async fn another_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("FORMAT"), "chatstate-file 9\n").unwrap();
    let err = FileStore::builder(dir.path()).open().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("chatstate-file 9"), "{err}");
}

#[tokio::test]
async fn records_expire_at_once_and_the_sweeper_frees_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        session_ttl: Duration::from_secs(60),
        ..StoreSettings::default()
    };
    let s = FileStore::builder(dir.path())
        .settings(settings)
        .clock(clock.shared())
        .sweep_interval(Some(Duration::from_millis(50)))
        .open()
        .unwrap();
    let k = SessionKey::new("t", "c", "u").unwrap();
    s.append_message(&k, NewMessage::user("x")).await.unwrap();
    let c = CacheKey::new("ns", "k").unwrap();
    KvCache::set(
        &s,
        &c,
        Bytes::from_static(b"v"),
        Some(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let lease = s
        .try_lock(&k, "job", Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(lease.fence >= 1);
    // Past the session TTL and past the lock's fence retention (lease + session TTL).
    clock.advance(Duration::from_secs(66));
    assert!(
        s.load(&k).await.unwrap().is_none(),
        "invisible at once, before any sweep"
    );
    // Let the background sweeper run a few times (real time, 50 ms interval).
    let mut left = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = ["sessions", "cache", "session-locks"]
            .iter()
            .map(|d| all_files(&dir.path().join(d)).len())
            .sum();
        if left == 0 {
            break;
        }
    }
    assert_eq!(
        left, 0,
        "the background sweeper removed every expired record"
    );
}

#[tokio::test]
async fn the_sweeper_skips_a_file_it_cannot_read_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let s = store(dir.path(), &clock);
    let keys: Vec<SessionKey> = (0..20)
        .map(|i| SessionKey::new("t", "c", format!("u{i}")).unwrap())
        .collect();
    for k in &keys {
        s.append_message(k, NewMessage::user("x")).await.unwrap();
    }
    let c = CacheKey::new("ns", "k").unwrap();
    KvCache::set(
        &s,
        &c,
        Bytes::from_static(b"v"),
        Some(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let sessions = all_files(&dir.path().join("sessions"));
    assert_eq!(sessions.len(), keys.len());
    let tenant_dir = sessions[0].parent().unwrap().to_path_buf();

    // Among the expired sessions: an entry that cannot be read as a file, whoever
    // runs the test (a folder where a record should be: reading it fails, as a
    // permission error would), and a record nobody may read (unreadable unless the
    // test runs as root, who reads it anyway).
    let not_a_file = tenant_dir.join("zz_in_the_way-0123456789abcdef0123456789abcdef.s");
    fs::create_dir(&not_a_file).unwrap();
    fs::write(not_a_file.join("inside"), b"x").unwrap();
    let no_access = sessions[sessions.len() / 2].clone();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&no_access, fs::Permissions::from_mode(0o000)).unwrap();
    }
    let unreadable = 1 + u64::from(fs::read(&no_access).is_err());

    clock.advance(Duration::from_secs(7 * 24 * 3600));
    let report = s
        .sweep()
        .await
        .expect("the sweep goes on past a file it cannot read");
    assert_eq!(report.skipped, unreadable, "{report:?}");
    assert_eq!(
        report.removed,
        keys.len() as u64 + 1 - (unreadable - 1),
        "every other expired record is removed: {report:?}"
    );
    let left = all_files(&dir.path().join("sessions"));
    assert!(
        left.iter()
            .all(|p| *p == no_access || p.starts_with(&not_a_file)),
        "{left:?}"
    );
    assert!(all_files(&dir.path().join("cache")).is_empty());
    assert!(not_a_file.is_dir(), "an unreadable entry is left in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_100k_expired_sessions_is_swept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    // No fsync here: the sweep is what is measured, not the writes that set it up.
    let s = FileStore::builder(dir.path())
        .clock(clock.shared())
        .durability(Durability::None)
        .sweep_interval(None)
        .open()
        .unwrap();
    const N: usize = 100_000;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in (t..N).step_by(8) {
                    let k = SessionKey::new(
                        format!("tenant{}", i % 10),
                        "whatsapp",
                        format!("user{i}"),
                    )
                    .unwrap();
                    s.get_or_create(&k).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // One live session that must survive the sweep.
    clock.advance(Duration::from_secs(72 * 3600 + 1));
    let live = SessionKey::new("tenant0", "whatsapp", "still-here").unwrap();
    s.get_or_create(&live).await.unwrap();
    let report = s.sweep().await.unwrap();
    assert_eq!(report.removed, N as u64, "{report:?}");
    assert_eq!(report.scanned, N as u64 + 1);
    assert_eq!(report.corrupt, 0);
    assert!(SessionStore::get(&s, &live).await.unwrap().is_some());
    assert_eq!(all_files(&dir.path().join("sessions")).len(), 1);
}

#[tokio::test]
async fn temp_files_left_by_a_crash_are_ignored_then_swept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let s = store(dir.path(), &clock);
    let k = SessionKey::new("t", "c", "u").unwrap();
    s.append_message(&k, NewMessage::user("x")).await.unwrap();
    s.add(&CounterKey::new("n").unwrap(), 1).await.unwrap();
    let tenant_dir = all_files(&dir.path().join("sessions"))[0]
        .parent()
        .unwrap()
        .to_path_buf();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let mut made = Vec::new();
    for (folder, name, old) in [
        (tenant_dir.clone(), ".tmp-stale", true),
        (dir.path().join("counters"), ".tmp-stale", true),
        (tenant_dir.clone(), ".tmp-fresh", false),
    ] {
        let p = folder.join(name);
        let f = fs::File::create(&p).unwrap();
        if old {
            f.set_modified(two_hours_ago).unwrap();
        }
        made.push((p, old));
    }
    // Listings and reads do not see them.
    assert_eq!(
        SessionStore::list(&s, "t", None, 10).await.unwrap().items,
        vec![k.clone()]
    );
    assert!(s.verify().await.unwrap().corrupt.is_empty());
    let report = s.sweep().await.unwrap();
    assert_eq!(report.stale_temp_files, 2, "{report:?}");
    for (p, old) in made {
        assert_eq!(p.exists(), !old, "{p:?}");
    }
    assert_eq!(s.load(&k).await.unwrap().unwrap().messages.len(), 1);
}

/// A folder of the format before lock stripes were named by the canonical path
/// (`chatstate-file 1`: the same records) is upgraded in place, so a process of that
/// older build then refuses it instead of locking different stripes.
#[tokio::test]
async fn a_format_1_folder_is_upgraded_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let k = SessionKey::new("t", "c", "u").unwrap();
    store(dir.path(), &clock)
        .append_message(&k, NewMessage::user("kept"))
        .await
        .unwrap();
    fs::write(dir.path().join("FORMAT"), "chatstate-file 1\n").unwrap();
    let s = store(dir.path(), &clock);
    assert_eq!(
        fs::read_to_string(dir.path().join("FORMAT"))
            .unwrap()
            .trim(),
        "chatstate-file 2"
    );
    let loaded = s.load(&k).await.unwrap().unwrap();
    assert_eq!(loaded.messages[0].content, "kept");
}
