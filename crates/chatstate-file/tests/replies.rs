//! The file store's reply files: a torn tail (a crash mid-append) is never read and
//! is cut by the next writer; the sweeper removes expired runs; the folder holds
//! one plain file per run; a follower in one process sees the chunks another
//! process appends (the test binary re-runs itself as the writer:
//! `reply_writer_child_entry`, switched on by an environment variable).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use chatstate_core::{ManualClock, ReplyEvent, ReplyStream, RunId, RunStatus};
use futures_util::StreamExt;

/// The shared folder; makes `reply_writer_child_entry` the writer.
const CHILD_DIR_VAR: &str = "CHATSTATE_REPLY_CHILD_DIR";
const CHUNKS: usize = 200;
use chatstate_file::FileStore;

fn run_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("replies"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "r"))
        .collect();
    assert_eq!(files.len(), 1, "one file per run");
    files.pop().unwrap()
}

#[tokio::test]
async fn a_torn_tail_is_not_read_and_is_cut_by_the_next_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path()).open().unwrap();
    let run = RunId::new("torn").unwrap();
    store.start(&run, None).await.unwrap();
    store.append(&run, "one").await.unwrap();
    let path = run_file(dir.path());
    // A crash in the middle of writing a line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(br#"{"b":6,"t":"tw"#)
        .unwrap();
    let read = store.read(&run, 0).await.unwrap();
    assert_eq!(read.chunks.len(), 1, "half a line is never a chunk");
    store.append(&run, "two").await.unwrap();
    store.finish(&run, RunStatus::Done).await.unwrap();
    let read = store.read(&run, 0).await.unwrap();
    let texts: Vec<&str> = read.chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["one", "two"]);
    assert_eq!(read.finished, Some(RunStatus::Done));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.lines().count(),
        4,
        "header, two chunks, the end: {text}"
    );
}

#[tokio::test]
async fn the_sweeper_removes_expired_runs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_now();
    let store = FileStore::builder(dir.path())
        .clock(clock.shared())
        .sweep_interval(None)
        .open()
        .unwrap();
    let run = RunId::new("old").unwrap();
    store
        .start(&run, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    store.append(&run, "x").await.unwrap();
    assert_eq!(store.sweep().await.unwrap().removed, 0);
    clock.advance(Duration::from_secs(6));
    assert_eq!(store.sweep().await.unwrap().removed, 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("replies"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn reply_writer_child_entry() {
    let Some(dir) = std::env::var_os(CHILD_DIR_VAR) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = FileStore::builder(std::path::PathBuf::from(dir))
            .open()
            .unwrap();
        let run = RunId::new("across").unwrap();
        for i in 0..CHUNKS {
            store.append(&run, &format!("{i} ")).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        store.finish(&run, RunStatus::Done).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_what_another_process_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path()).open().unwrap();
    let run = RunId::new("across").unwrap();
    store.start(&run, None).await.unwrap();
    let mut events = store.follow(&run, 0, Duration::from_secs(20));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "reply_writer_child_entry", "--test-threads=1"])
        .env(CHILD_DIR_VAR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        match event.unwrap() {
            ReplyEvent::Chunk(c) => {
                assert_eq!(c.offset, seen.len() as u64);
                seen.push(c.text);
            }
            ReplyEvent::Finished(status) => assert_eq!(status, RunStatus::Done),
        }
    }
    assert!(child.wait().unwrap().success(), "the writer process");
    let want: Vec<String> = (0..CHUNKS).map(|i| format!("{i} ")).collect();
    assert_eq!(seen, want);
}
