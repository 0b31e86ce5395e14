//! More than one process on the same folder lose no appends, counter adds or
//! compare-and-set updates, and session locks hold across processes.
//!
//! The test binary re-runs itself as 4 child processes (the test fn
//! `multiprocess_child_entry`, switched on by environment variables: the folder, a
//! role and a worker id). Each opens its own `FileStore` on one shared folder, each
//! spelling the folder differently (relative to its working directory, `<dir>/.`,
//! absolute, and through a symlink: locks must not depend on the spelling), waits
//! until the parent creates the file `go` (so all of them start together), tries to
//! take one session lock, then appends 40 messages to one shared session, adds 1 to
//! a shared counter 40 times and increments a JSON number in a focus document 20
//! times with get + `PutMode::IfVersion` + retry on `Conflict`. The parent checks
//! that nothing was lost: 160 messages (each worker's in its own order), a counter
//! of 160, a document at 80 with version 81, and exactly one lock holder.
//!
//! A second test does the same with 8 `FileStore` instances in one process (each
//! with its own lock files, as 8 processes would have), also under several spellings
//! of the folder.

#![cfg(unix)] // symlinks: the folder is opened through one

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use chatstate_core::{
    Codec, CounterKey, CounterSink, ErrorKind, FocusKey, FocusStoreExt, NewMessage, PutMode,
    SessionKey, SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_file::FileStore;

/// The shared folder; makes `multiprocess_child_entry` a child.
const DIR_VAR: &str = "CHATSTATE_MP_CHILD_DIR";
/// What the child does (only `worker` so far).
const ROLE_VAR: &str = "CHATSTATE_MP_CHILD_ROLE";
/// The worker's id, which its messages carry.
const WORKER_VAR: &str = "CHATSTATE_MP_CHILD_WORKER";

const WORKERS: usize = 4;
const APPENDS: usize = 40;
const ADDS: usize = 40;
const CAS_INCREMENTS: usize = 20;
const LOCK_NAME: &str = "reminder";

fn session_key() -> SessionKey {
    SessionKey::new("mp", "test", "shared").expect("a valid session key")
}

fn counter_key() -> CounterKey {
    CounterKey::new("mp_adds").expect("a valid counter key")
}

fn focus_key() -> FocusKey {
    FocusKey::new("mp", "number").expect("a valid focus key")
}

fn open(dir: &Path) -> FileStore {
    FileStore::builder(dir)
        .settings(StoreSettings {
            // Every message of the test stays in the window.
            window_size: 1000,
            ..StoreSettings::default()
        })
        .sweep_interval(None)
        .open()
        .expect("the store opens")
}

/// The shared folder inside `base`, and a symlink to it (`base/link`).
fn shared_folder(base: &Path) -> PathBuf {
    let data = base.join("data");
    std::fs::create_dir(&data).expect("create the shared folder");
    std::os::unix::fs::symlink(&data, base.join("link")).expect("symlink the shared folder");
    data
}

/// How worker `w` spells the shared folder `base/data`: the working directory it
/// runs in and the path it opens. Every spelling names the same folder.
fn spelling(base: &Path, w: usize) -> (PathBuf, PathBuf) {
    match w % 4 {
        0 => (base.to_path_buf(), PathBuf::from("./data")),
        1 => (base.to_path_buf(), base.join("data").join(".")),
        2 => (base.to_path_buf(), base.join("data")),
        _ => (base.to_path_buf(), base.join("link")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One line to stdout, in one write, flushed.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .expect("stdout takes the line");
}

/// Adds 1 to the focus document's number with compare-and-set; returns how many
/// conflicts it retried.
async fn cas_increment(store: &FileStore) -> u32 {
    let key = focus_key();
    let mut conflicts = 0;
    loop {
        let (value, version): (u64, u64) = FocusStoreExt::get_value(store, &key, Codec::Json)
            .await
            .expect("focus get_value")
            .expect("the parent created the document");
        match store
            .put_value(
                &key,
                &(value + 1),
                PutMode::IfVersion(version),
                None,
                Codec::Json,
            )
            .await
        {
            Ok(_) => return conflicts,
            Err(e) if e.kind() == ErrorKind::Conflict => conflicts += 1,
            Err(e) => panic!("focus put_value: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// The child.

/// Not a test on its own: the child processes' entry point. Run without
/// `CHATSTATE_MP_CHILD_DIR` (as in every normal test run) it returns at once and
/// passes; `processes_sharing_a_folder_lose_nothing` re-runs this binary with
/// `--exact multiprocess_child_entry` and the variables set.
#[test]
fn multiprocess_child_entry() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let role = std::env::var(ROLE_VAR).expect("the role is set");
    let worker: usize = std::env::var(WORKER_VAR)
        .expect("the worker id is set")
        .parse()
        .expect("the worker id is a number");
    match role.as_str() {
        "worker" => runtime().block_on(worker_main(PathBuf::from(dir), worker)),
        other => panic!("unknown child role {other:?}"),
    }
}

async fn worker_main(dir: PathBuf, worker: usize) {
    // Ends libtest's "test multiprocess_child_entry ... " line.
    say("");
    let store = open(&dir);
    say("READY");
    let go = dir.join("go");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.exists() {
        assert!(Instant::now() < deadline, "the parent never said go");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let lease = store
        .try_lock(&session_key(), LOCK_NAME, Duration::from_secs(30))
        .await
        .expect("try_lock");
    match lease {
        Some(l) => say(&format!("LOCK GOT {}", l.fence)),
        None => say("LOCK NOT"),
    }

    let (session, counter) = (session_key(), counter_key());
    let mut conflicts = 0;
    let mut increments = 0;
    for n in 0..APPENDS.max(ADDS) {
        if n < APPENDS {
            store
                .append_message(&session, NewMessage::user(format!("w{worker}-{n}")))
                .await
                .expect("append_message");
        }
        if n < ADDS {
            CounterSink::add(&store, &counter, 1).await.expect("add");
        }
        if n % 2 == 0 && increments < CAS_INCREMENTS {
            conflicts += cas_increment(&store).await;
            increments += 1;
        }
    }
    assert_eq!(increments, CAS_INCREMENTS);
    say(&format!("DONE {conflicts}"));
}

// ---------------------------------------------------------------------------------
// The parent.

fn spawn_worker(base: &Path, worker: usize) -> Child {
    let (cwd, dir) = spelling(base, worker);
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .current_dir(cwd)
        .args([
            "--exact",
            "multiprocess_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(ROLE_VAR, "worker")
        .env(WORKER_VAR, worker.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("a worker starts")
}

/// Each worker's whole (newline-ended) stdout lines, sent as (worker, line).
fn read_lines(worker: usize, child: &mut Child, tx: mpsc::Sender<(usize, String)>) {
    let stdout = child.stdout.take().expect("piped stdout");
    thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx
                        .send((worker, line.trim_end_matches('\n').to_string()))
                        .is_err()
                    {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
}

fn kill_all(children: &mut [Child]) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn processes_sharing_a_folder_lose_nothing() {
    let started = Instant::now();
    let base = tempfile::tempdir().unwrap();
    let dir = shared_folder(base.path());
    let rt = runtime();
    rt.block_on(async {
        let store = open(&dir);
        let v = store
            .put_value(&focus_key(), &0u64, PutMode::Create, None, Codec::Json)
            .await
            .unwrap();
        assert_eq!(v, 1);
    });

    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = (0..WORKERS)
        .map(|w| {
            let mut c = spawn_worker(base.path(), w);
            read_lines(w, &mut c, tx.clone());
            c
        })
        .collect();
    drop(tx);
    let stderrs: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let mut e = c.stderr.take().expect("piped stderr");
            thread::spawn(move || {
                let mut s = String::new();
                let _ = e.read_to_string(&mut s);
                s
            })
        })
        .collect();

    // Every worker has its store open and polls for "go": then they start together.
    let mut lines: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut ready = HashSet::new();
    while ready.len() < WORKERS {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((w, line)) => {
                if line == "READY" {
                    ready.insert(w);
                }
                lines.entry(w).or_default().push(line);
            }
            Err(e) => {
                kill_all(&mut children);
                let errs: Vec<String> = stderrs.into_iter().map(|h| h.join().unwrap()).collect();
                panic!("workers not ready ({e}): {ready:?}; stderr: {errs:#?}");
            }
        }
    }
    std::fs::File::create(dir.join("go")).unwrap();
    let go_at = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut statuses = vec![None; WORKERS];
    while statuses.iter().any(Option::is_none) {
        for (w, c) in children.iter_mut().enumerate() {
            if statuses[w].is_none() {
                statuses[w] = c.try_wait().unwrap();
            }
        }
        if Instant::now() > deadline {
            kill_all(&mut children);
            panic!("workers still running after 60 s: {statuses:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let worked = go_at.elapsed();
    for (w, line) in rx.iter() {
        lines.entry(w).or_default().push(line);
    }
    let errs: Vec<String> = stderrs.into_iter().map(|h| h.join().unwrap()).collect();
    for (w, status) in statuses.iter().enumerate() {
        let status = status.unwrap();
        assert!(
            status.success(),
            "worker {w} failed ({status}); stdout {:?}; stderr:\n{}",
            lines.get(&w),
            errs[w]
        );
    }

    // Exactly one worker got the lock.
    let lock_lines: Vec<(usize, &String)> = lines
        .iter()
        .flat_map(|(w, ls)| ls.iter().map(move |l| (*w, l)))
        .filter(|(_, l)| l.starts_with("LOCK "))
        .collect();
    assert_eq!(lock_lines.len(), WORKERS, "{lock_lines:?}");
    let got: Vec<_> = lock_lines
        .iter()
        .filter(|(_, l)| l.starts_with("LOCK GOT"))
        .collect();
    assert_eq!(
        got.len(),
        1,
        "exactly one process holds the lock: {lock_lines:?}"
    );
    assert_eq!(
        got[0].1, "LOCK GOT 1",
        "the first lease of a lock has fence 1"
    );
    let conflicts: u32 = lines
        .values()
        .flatten()
        .filter_map(|l| l.strip_prefix("DONE "))
        .map(|n| n.parse::<u32>().unwrap())
        .sum();

    rt.block_on(async {
        let store = open(&dir);
        let loaded = store.load(&session_key()).await.unwrap().unwrap();
        let total = (WORKERS * APPENDS) as u64;
        assert_eq!(loaded.session.message_count, total, "appends lost");
        assert_eq!(loaded.messages.len() as u64, total);
        let contents: Vec<&str> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
        let distinct: HashSet<&str> = contents.iter().copied().collect();
        assert_eq!(distinct.len(), contents.len(), "a message is stored twice");
        let seqs: Vec<u64> = loaded.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
        for w in 0..WORKERS {
            let own: Vec<&str> = contents
                .iter()
                .copied()
                .filter(|c| c.starts_with(&format!("w{w}-")))
                .collect();
            let want: Vec<String> = (0..APPENDS).map(|n| format!("w{w}-{n}")).collect();
            assert_eq!(own, want, "worker {w}'s messages, in its order");
        }
        let interleaved = contents
            .windows(2)
            .filter(|p| p[0].split('-').next() != p[1].split('-').next())
            .count();

        assert_eq!(
            CounterSink::get(&store, &counter_key()).await.unwrap(),
            (WORKERS * ADDS) as i64,
            "counter adds lost"
        );

        let (value, version): (u64, u64) =
            FocusStoreExt::get_value(&store, &focus_key(), Codec::Json)
                .await
                .unwrap()
                .unwrap();
        let increments = (WORKERS * CAS_INCREMENTS) as u64;
        assert_eq!(value, increments, "compare-and-set increments lost");
        assert_eq!(version, increments + 1);

        // The lease outlives its (exited) holder.
        let lease = store
            .try_lock(&session_key(), LOCK_NAME, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(lease.is_none(), "the lock is still held by the worker's lease");

        assert!(store.verify().await.unwrap().corrupt.is_empty());
        println!(
            "{WORKERS} processes: work took {:.2} s after go ({} switches between workers in the window, {conflicts} CAS conflicts retried); total {:.2} s",
            worked.as_secs_f64(),
            interleaved,
            started.elapsed().as_secs_f64()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_instances_on_one_folder_lose_nothing() {
    const INSTANCES: usize = 8;
    const EACH: usize = 25;
    let started = Instant::now();
    let base = tempfile::tempdir().unwrap();
    let dir = shared_folder(base.path());
    // The spellings that need no change of working directory.
    let spellings = [
        dir.clone(),
        dir.join("."),
        base.path().join("link"),
        base.path().join("link").join("."),
    ];
    let stores: Vec<FileStore> = (0..INSTANCES)
        .map(|i| open(&spellings[i % spellings.len()]))
        .collect();
    let tasks: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            tokio::spawn(async move {
                let (session, counter) = (session_key(), counter_key());
                for n in 0..EACH {
                    store
                        .append_message(&session, NewMessage::user(format!("i{i}-{n}")))
                        .await
                        .unwrap();
                    CounterSink::add(&store, &counter, 1).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    let store = open(&dir);
    let loaded = store.load(&session_key()).await.unwrap().unwrap();
    let total = (INSTANCES * EACH) as u64;
    assert_eq!(loaded.session.message_count, total, "appends lost");
    let contents: Vec<&str> = loaded.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents.len() as u64, total);
    assert_eq!(
        contents.iter().collect::<HashSet<_>>().len(),
        contents.len()
    );
    for i in 0..INSTANCES {
        let own: Vec<&str> = contents
            .iter()
            .copied()
            .filter(|c| c.starts_with(&format!("i{i}-")))
            .collect();
        let want: Vec<String> = (0..EACH).map(|n| format!("i{i}-{n}")).collect();
        assert_eq!(own, want, "instance {i}'s messages, in its order");
    }
    assert_eq!(
        CounterSink::get(&store, &counter_key()).await.unwrap(),
        total as i64,
        "counter adds lost"
    );
    println!(
        "{INSTANCES} instances: {:.2} s",
        started.elapsed().as_secs_f64()
    );
}
