//! An acknowledged write survives a process crash — tested for real.
//!
//! The test binary re-runs itself as a child process (the test fn
//! `crash_child_entry`, switched on by an environment variable) that writes
//! sessions, messages, counter adds, counter batches, cache entries and a focus
//! document in a loop with [`Durability::Fsync`](chatstate_file::Durability) (the
//! default), printing `TRY …` before each operation and `ACK …` once it returned
//! `Ok`. The parent kills it with SIGKILL at a random moment, 25 times over on one
//! folder, then opens the folder and checks:
//!
//! - every record file decodes (`FileStore::verify` lists no corrupt file; leftover
//!   `.tmp-` files are counted, not a failure, and once they are an hour old a
//!   sweep removes every one of them);
//! - every acknowledged message is in its session's window exactly once, in order,
//!   and nothing is in a window that was never tried;
//! - the counter holds at least the acknowledged adds and at most the tried ones;
//! - every acknowledged counter batch is remembered (re-applying it is a
//!   `Duplicate`) and the batched counter holds exactly the batches remembered;
//! - each cache entry and the focus document hold their last acknowledged value or
//!   a later tried one, and the focus version agrees.
//!
//! The random kill delays come from a xorshift generator whose seed is printed; set
//! `CHATSTATE_CRASH_SEED=<seed>` to replay a run's delays, and
//! `CHATSTATE_CRASH_ROUNDS=<n>` for n kills instead of 25: `cargo xtask soak [--kills N]`
//! runs this test with 1,000 (or N) and prints the result.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chatstate_core::{
    BatchOutcome, CacheKey, CounterBatch, CounterKey, CounterSink, FocusKey, FocusStore, KvCache,
    NewMessage, PutMode, SessionKey, SessionStore, SessionStoreExt, StoreSettings,
};
use chatstate_file::FileStore;

/// Makes `crash_child_entry` the writer, on this folder.
const DIR_VAR: &str = "CHATSTATE_CRASH_CHILD_DIR";
/// The child's run id (the round number), which makes its values unique.
const RUN_VAR: &str = "CHATSTATE_CRASH_CHILD_RUN";
/// Replays a run's kill delays.
const SEED_VAR: &str = "CHATSTATE_CRASH_SEED";
/// Runs more (or fewer) rounds than the default, for a longer soak.
const ROUNDS_VAR: &str = "CHATSTATE_CRASH_ROUNDS";

const DEFAULT_ROUNDS: u64 = 25;
const SESSIONS: usize = 3;
const CACHE_KEYS: usize = 4;
const BATCH_DELTA: i64 = 2;

fn session_key(i: usize) -> SessionKey {
    SessionKey::new("crash", "test", format!("user{i}")).expect("a valid session key")
}

fn adds_key() -> CounterKey {
    CounterKey::new("adds").expect("a valid counter key")
}

fn batched_key() -> CounterKey {
    CounterKey::new("batched").expect("a valid counter key")
}

fn cache_key(j: usize) -> CacheKey {
    CacheKey::new("crash", format!("k{j}")).expect("a valid cache key")
}

fn focus_key() -> FocusKey {
    FocusKey::new("crash", "doc").expect("a valid focus key")
}

fn settings() -> StoreSettings {
    StoreSettings {
        // No acknowledged message is ever trimmed from a window.
        window_size: 100_000,
        ..StoreSettings::default()
    }
}

fn open(dir: &Path) -> FileStore {
    FileStore::builder(dir)
        .settings(settings())
        .sweep_interval(None)
        .open()
        .expect("the store opens")
}

/// One line to stdout, in one write, flushed: a pipe write this small is atomic,
/// so a kill never leaves half a line.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .expect("stdout takes the line");
}

// ---------------------------------------------------------------------------------
// The child.

/// Not a test on its own: the child process's entry point. Run without
/// `CHATSTATE_CRASH_CHILD_DIR` (as in every normal test run) it returns at once and
/// passes; `a_killed_writer_loses_no_acknowledged_write` re-runs this binary with
/// `--exact crash_child_entry` and the variable set, and then it writes until it is
/// killed.
#[test]
fn crash_child_entry() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let run: u64 = std::env::var(RUN_VAR)
        .expect("the run id is set")
        .parse()
        .expect("the run id is a number");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(write_until_killed(PathBuf::from(dir), run));
}

async fn write_until_killed(dir: PathBuf, run: u64) {
    // Ends libtest's "test crash_child_entry ... " line so every line we print is
    // a line of its own.
    say("");
    let store = open(&dir);
    say(&format!("READY {run}"));
    let (adds, batched, focus) = (adds_key(), batched_key(), focus_key());
    for n in 0usize.. {
        let tag = format!("{run}-{n}");

        let s = n % SESSIONS;
        say(&format!("TRY msg {s} {tag}"));
        store
            .append_message(&session_key(s), NewMessage::user(tag.clone()))
            .await
            .expect("append_message");
        say(&format!("ACK msg {s} {tag}"));

        say(&format!("TRY add {tag}"));
        CounterSink::add(&store, &adds, 1).await.expect("add");
        say(&format!("ACK add {tag}"));

        let id = format!("batch-{tag}");
        let mut batch = CounterBatch::with_id(id.clone());
        batch.add(&batched, BATCH_DELTA);
        say(&format!("TRY batch {id}"));
        let outcome = store.apply(&batch).await.expect("apply");
        assert_eq!(outcome, BatchOutcome::Applied, "a new batch id is applied");
        say(&format!("ACK batch {id}"));

        let j = n % CACHE_KEYS;
        say(&format!("TRY cache {j} {tag}"));
        KvCache::set(&store, &cache_key(j), Bytes::from(tag.clone()), None)
            .await
            .expect("cache set");
        say(&format!("ACK cache {j} {tag}"));

        say(&format!("TRY focus {tag}"));
        let doc = store
            .put(&focus, Bytes::from(tag.clone()), PutMode::Overwrite, None)
            .await
            .expect("focus put");
        say(&format!("ACK focus {tag} {}", doc.version));
    }
}

// ---------------------------------------------------------------------------------
// The parent.

/// Everything the children printed, by what it was about (in the order written:
/// rounds run one after another, and each child writes one operation at a time).
#[derive(Default)]
struct Log {
    msgs_tried: BTreeMap<usize, Vec<String>>,
    msgs_acked: BTreeMap<usize, Vec<String>>,
    adds_tried: u64,
    adds_acked: u64,
    batches_tried: Vec<String>,
    batches_acked: HashSet<String>,
    cache_tried: BTreeMap<usize, Vec<String>>,
    cache_acked: BTreeMap<usize, Vec<String>>,
    focus_tried: Vec<String>,
    focus_acked: Vec<(String, u64)>,
}

impl Log {
    /// Records one child's lines; returns how many of its operations were tried but
    /// not acknowledged (at most one: the one the kill interrupted).
    fn record(&mut self, lines: &[String]) -> usize {
        // The TRY still waiting for its ACK: what it said after "TRY".
        let mut open_try: Option<&[&str]> = None;
        let mut split: Vec<Vec<&str>> = Vec::new();
        for line in lines {
            split.push(line.split(' ').collect());
        }
        for (line, parts) in lines.iter().zip(&split) {
            let (phase, rest) = match parts.split_first() {
                Some((&"TRY", rest)) => ("TRY", rest),
                Some((&"ACK", rest)) => ("ACK", rest),
                _ => continue, // libtest's chatter, READY
            };
            if phase == "TRY" {
                assert!(open_try.is_none(), "two TRYs without an ACK: {line}");
                open_try = Some(rest);
            } else {
                // A focus ACK adds the version; every other ACK repeats its TRY.
                let acked = if rest.first() == Some(&"focus") {
                    &rest[..2]
                } else {
                    rest
                };
                assert_eq!(
                    open_try.take(),
                    Some(acked),
                    "an ACK without its TRY: {line}"
                );
            }
            match (phase, rest) {
                ("TRY", ["msg", s, tag]) => self
                    .msgs_tried
                    .entry(num(s))
                    .or_default()
                    .push(tag.to_string()),
                ("ACK", ["msg", s, tag]) => self
                    .msgs_acked
                    .entry(num(s))
                    .or_default()
                    .push(tag.to_string()),
                ("TRY", ["add", _]) => self.adds_tried += 1,
                ("ACK", ["add", _]) => self.adds_acked += 1,
                ("TRY", ["batch", id]) => self.batches_tried.push(id.to_string()),
                ("ACK", ["batch", id]) => {
                    self.batches_acked.insert(id.to_string());
                }
                ("TRY", ["cache", j, v]) => self
                    .cache_tried
                    .entry(num(j))
                    .or_default()
                    .push(v.to_string()),
                ("ACK", ["cache", j, v]) => self
                    .cache_acked
                    .entry(num(j))
                    .or_default()
                    .push(v.to_string()),
                ("TRY", ["focus", v]) => self.focus_tried.push(v.to_string()),
                ("ACK", ["focus", v, version]) => {
                    self.focus_acked.push((v.to_string(), num(version) as u64))
                }
                _ => panic!("a line the child never prints: {line:?}"),
            }
        }
        usize::from(open_try.is_some())
    }
}

fn num(s: &str) -> usize {
    s.parse().expect("a number in a child's line")
}

/// xorshift64: enough randomness for kill delays, no crate needed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// What one round saw.
struct Round {
    lines: Vec<String>,
    delay: Duration,
    from_spawn: bool,
}

fn spawn_child(dir: &Path, run: u64) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .env(RUN_VAR, run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the child starts")
}

/// Runs one child and kills it `delay` after it opened the store (or after it was
/// spawned, when `from_spawn`: the kill may then land while it opens the folder).
fn run_round(dir: &Path, run: u64, delay: Duration, from_spawn: bool) -> Round {
    let mut child = spawn_child(dir, run);
    let spawned = Instant::now();
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                // Only whole lines count.
                Ok(n) if n > 0 && line.ends_with('\n') => {
                    if tx.send(line.trim_end_matches('\n').to_string()).is_err() {
                        break;
                    }
                }
                _ => break,
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut lines = Vec::new();
    let start = if from_spawn {
        spawned
    } else {
        loop {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => {
                    let ready = line.starts_with("READY");
                    lines.push(line);
                    if ready {
                        break Instant::now();
                    }
                }
                // The child died before READY, or is hung: its stderr says why.
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "round {run}: the child never got ready; stderr:\n{}",
                        err_reader.join().unwrap_or_default()
                    );
                }
            }
        }
    };
    thread::sleep((start + delay).saturating_duration_since(Instant::now()));
    child.kill().expect("kill the child");
    let status = child.wait().expect("reap the child");
    reader.join().expect("the stdout reader");
    lines.extend(rx.try_iter());
    let stderr = err_reader.join().unwrap_or_default();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "round {run}: the child must die of our SIGKILL, not on its own ({status}); stderr:\n{stderr}"
        );
    }
    #[cfg(not(unix))]
    assert!(
        !status.success(),
        "round {run}: the child exited on its own; stderr:\n{stderr}"
    );
    Round {
        lines,
        delay,
        from_spawn,
    }
}

/// The `.tmp-` files under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list a folder") {
            let e = e.expect("a folder entry");
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p);
            }
        }
    }
    out
}

/// How many of `files` are in each folder (relative to `dir`).
fn by_folder(dir: &Path, files: &[PathBuf]) -> BTreeMap<PathBuf, usize> {
    let mut out = BTreeMap::new();
    for f in files {
        let folder = f.parent().unwrap_or(dir);
        let rel = folder.strip_prefix(dir).unwrap_or(folder).to_path_buf();
        *out.entry(rel).or_insert(0) += 1;
    }
    out
}

/// Whether `small` appears in `big` in the same order (not necessarily adjacent).
fn is_subsequence(small: &[String], big: &[String]) -> bool {
    let mut it = big.iter();
    small.iter().all(|s| it.any(|b| b == s))
}

#[test]
fn a_killed_writer_loses_no_acknowledged_write() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    println!("crash test seed {seed} (replay: {SEED_VAR}={seed})");
    let mut rng = XorShift(seed);
    let rounds = std::env::var(ROUNDS_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);

    let mut log = Log::default();
    let mut unacked_total = 0;
    for run in 0..rounds {
        let mut delay = Duration::from_millis(5 + rng.next() % 146);
        // Every sixth round counts a short delay from the spawn, so some kills land
        // while the child is still starting or opening the folder.
        let from_spawn = run % 6 == 5;
        if from_spawn {
            delay /= 6;
        }
        let round = run_round(dir.path(), run, delay, from_spawn);
        let unacked = log.record(&round.lines);
        assert!(unacked <= 1, "round {run}: {unacked} operations in flight");
        unacked_total += unacked;
        let acks = round.lines.iter().filter(|l| l.starts_with("ACK")).count();
        println!(
            "round {run:2}: killed {:3} ms after {}, {acks:3} writes acknowledged{}",
            round.delay.as_millis(),
            if round.from_spawn { "spawn" } else { "READY" },
            if unacked == 1 { ", 1 in flight" } else { "" }
        );
    }
    let rounds_took = started.elapsed();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = open(dir.path());

        // Every file decodes; temp files left by kills are ignored.
        let report = store.verify().await.unwrap();
        assert!(report.corrupt.is_empty(), "corrupt files after crashes: {:?}", report.corrupt);
        assert!(report.files > 0, "the children wrote nothing: {report:?}");
        let temps = temp_files(dir.path());
        println!(
            "verify: {} files, none corrupt; {} leftover temp files {:?}",
            report.files,
            temps.len(),
            by_folder(dir.path(), &temps)
        );

        // Messages: every acknowledged one exactly once, in order; nothing untried.
        let mut total_acked_msgs = 0;
        for s in 0..SESSIONS {
            let tried = log.msgs_tried.get(&s).cloned().unwrap_or_default();
            let acked = log.msgs_acked.get(&s).cloned().unwrap_or_default();
            total_acked_msgs += acked.len();
            let Some(loaded) = store.load(&session_key(s)).await.unwrap() else {
                assert!(acked.is_empty(), "session {s} lost with {} acknowledged messages", acked.len());
                continue;
            };
            let window: Vec<String> = loaded.messages.iter().map(|m| m.content.clone()).collect();
            let distinct: HashSet<&String> = window.iter().collect();
            assert_eq!(distinct.len(), window.len(), "session {s}: a message is stored twice");
            assert!(is_subsequence(&window, &tried), "session {s}: the window holds a message never tried, or out of order");
            let acked_set: HashSet<&String> = acked.iter().collect();
            let acked_in_window: Vec<String> =
                window.iter().filter(|m| acked_set.contains(m)).cloned().collect();
            assert_eq!(acked_in_window, acked, "session {s}: an acknowledged message is missing or out of order");
            assert_eq!(loaded.session.message_count, window.len() as u64, "session {s}: message_count");
            let seqs: Vec<u64> = loaded.messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=window.len() as u64).collect::<Vec<_>>(), "session {s}: seq numbers");
        }

        // Counter adds: at least the acknowledged ones, at most the tried ones.
        let adds = CounterSink::get(&store, &adds_key()).await.unwrap();
        assert!(
            log.adds_acked as i64 <= adds && adds <= log.adds_tried as i64,
            "adds counter {adds}, acknowledged {}, tried {}",
            log.adds_acked,
            log.adds_tried
        );
        assert!(log.adds_tried <= log.adds_acked + rounds);

        // Batches: every acknowledged one is remembered, and the batched counter holds
        // exactly the batches remembered (a batch and its id are one write).
        let batched = CounterSink::get(&store, &batched_key()).await.unwrap();
        let mut remembered = 0;
        for id in &log.batches_tried {
            let mut batch = CounterBatch::with_id(id.clone());
            batch.add(&batched_key(), BATCH_DELTA);
            let outcome = store.apply(&batch).await.unwrap();
            if log.batches_acked.contains(id) {
                assert_eq!(outcome, BatchOutcome::Duplicate, "acknowledged batch {id} was forgotten");
            }
            if outcome == BatchOutcome::Duplicate {
                remembered += 1;
            }
        }
        assert_eq!(batched, remembered * BATCH_DELTA, "batched counter vs the batch ids remembered");
        assert_eq!(
            CounterSink::get(&store, &batched_key()).await.unwrap(),
            log.batches_tried.len() as i64 * BATCH_DELTA,
            "after replaying every tried batch once"
        );

        // Cache: the last acknowledged value, or a later tried one.
        for j in 0..CACHE_KEYS {
            let tried = log.cache_tried.get(&j).cloned().unwrap_or_default();
            let acked = log.cache_acked.get(&j).cloned().unwrap_or_default();
            let value = KvCache::get(&store, &cache_key(j)).await.unwrap();
            let Some(value) = value else {
                assert!(acked.is_empty(), "cache k{j} lost; last acknowledged {:?}", acked.last());
                continue;
            };
            let value = String::from_utf8(value.to_vec()).expect("a value we wrote");
            let at = tried.iter().position(|v| *v == value).unwrap_or_else(|| panic!("cache k{j} holds {value:?}, never tried"));
            if let Some(last) = acked.last() {
                let last_at = tried.iter().position(|v| v == last).unwrap();
                assert!(at >= last_at, "cache k{j} holds {value:?}, older than acknowledged {last:?}");
            }
        }

        // Focus: the last acknowledged value or a later tried one, versions agreeing.
        let versions: Vec<u64> = log.focus_acked.iter().map(|(_, v)| *v).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "focus versions go up: {versions:?}");
        match FocusStore::get(&store, &focus_key()).await.unwrap() {
            None => assert!(log.focus_acked.is_empty(), "the focus document was lost"),
            Some(doc) => {
                let value = String::from_utf8(doc.value.to_vec()).expect("a value we wrote");
                let at = log.focus_tried.iter().position(|v| *v == value).expect("a tried focus value");
                assert!(doc.version as usize <= at + 1, "focus version {} after {} tries", doc.version, at + 1);
                if let Some((last, last_version)) = log.focus_acked.last() {
                    let last_at = log.focus_tried.iter().position(|v| v == last).unwrap();
                    assert!(at >= last_at, "focus holds {value:?}, older than acknowledged {last:?}");
                    assert!(doc.version >= *last_version);
                    if value == *last {
                        assert_eq!(doc.version, *last_version, "focus version of the acknowledged value");
                    }
                }
            }
        }

        // The folder is still fully usable.
        store.append_message(&session_key(0), NewMessage::user("after")).await.unwrap();
        CounterSink::add(&store, &adds_key(), 1).await.unwrap();
        assert!(store.verify().await.unwrap().corrupt.is_empty());

        // Once the kills' temp files are over an hour old, a sweep removes every
        // one of them, wherever the killed write was (counters/ included).
        let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
        for t in &temps {
            std::fs::File::options()
                .write(true)
                .open(t)
                .and_then(|f| f.set_modified(two_hours_ago))
                .unwrap();
        }
        let swept = store.sweep().await.unwrap();
        let left = temp_files(dir.path());
        assert!(left.is_empty(), "stale temp files the sweep left: {:?}", by_folder(dir.path(), &left));
        assert_eq!(swept.stale_temp_files, temps.len() as u64, "{swept:?}");
        assert_eq!(swept.removed, 0, "nothing had expired: {swept:?}");
        assert!(store.verify().await.unwrap().corrupt.is_empty());

        println!(
            "{rounds} rounds in {:.1} s: {} acknowledged messages, {} adds, {} batches, {} operations in flight at a kill; total {:.1} s",
            rounds_took.as_secs_f64(),
            total_acked_msgs,
            log.adds_acked,
            log.batches_acked.len(),
            unacked_total,
            started.elapsed().as_secs_f64()
        );
    });
}
