//! The coalescing writer over memory: order and completeness with a live reader,
//! fewer writes, timed and size-triggered flushes, flush on finish, a cancel from
//! another instance reported on the next append, and temporary failures retried
//! without losing or reordering text.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::{
    Error, ErrorKind, ReplyEvent, ReplyEvents, ReplyStream, Result, RunId, RunRead, RunStatus,
    StoreSettings,
};
use chatstate_layers::{CoalesceConfig, CoalescingWriter};
use chatstate_memory::MemoryStore;
use futures_util::StreamExt;

fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(StoreSettings::default()))
}

fn tokens(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| ["a", "bc", "def", "ghij", "klmno"][i % 5].to_string() + &(i % 10).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_sees_every_token_in_order_in_fewer_chunks() {
    let store = memory();
    let writer = CoalescingWriter::new(store.clone(), CoalesceConfig::default());
    let run = RunId::new("live").unwrap();
    writer.start(&run, None).await.unwrap();
    let mut events = store.follow(&run, 0, Duration::from_secs(10));
    let toks = tokens(300);
    let producer = {
        let (writer, run, toks) = (writer.clone(), run.clone(), toks.clone());
        tokio::spawn(async move {
            for t in &toks {
                writer.append(&run, t).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            writer.finish(&run, RunStatus::Done).await.unwrap();
        })
    };
    let mut text = String::new();
    let mut chunks = 0u64;
    while let Some(e) = events.next().await {
        match e.unwrap() {
            ReplyEvent::Chunk(c) => {
                assert_eq!(c.offset, chunks, "offsets count writes, in order");
                chunks += 1;
                text.push_str(&c.text);
            }
            ReplyEvent::Finished(s) => assert_eq!(s, RunStatus::Done),
        }
    }
    producer.await.unwrap();
    assert_eq!(text, toks.concat(), "every token, in order, once");
    let stats = writer.stats();
    assert_eq!(stats.appends, 300);
    assert_eq!(stats.writes, chunks);
    // Fewer writes than tokens however slow the box (the exact timing is checked
    // on paused time in `flushes_after_max_delay_or_at_max_bytes_and_on_finish`).
    assert!(chunks < 300, "{chunks} writes for 300 tokens");
}

#[tokio::test(start_paused = true)]
async fn flushes_after_max_delay_or_at_max_bytes_and_on_finish() {
    let store = memory();
    let writer = CoalescingWriter::new(
        store.clone(),
        CoalesceConfig {
            max_delay: Duration::from_millis(50),
            max_bytes: 8,
        },
    );
    let run = RunId::new("timing").unwrap();
    writer.start(&run, None).await.unwrap();
    writer.append(&run, "ab").await.unwrap();
    writer.append(&run, "cd").await.unwrap();
    assert!(
        store.read(&run, 0).await.unwrap().chunks.is_empty(),
        "buffered"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let read = store.read(&run, 0).await.unwrap();
    assert_eq!(read.chunks.len(), 1);
    assert_eq!(read.chunks[0].text, "abcd", "written after max_delay");
    writer.append(&run, "12345").await.unwrap();
    writer.append(&run, "6789").await.unwrap(); // 9 > 8: "12345" is written first
    writer.append(&run, "abcd").await.unwrap(); // "6789abcd" reaches 8: written now
    let texts: Vec<String> = store
        .read(&run, 0)
        .await
        .unwrap()
        .chunks
        .into_iter()
        .map(|c| c.text)
        .collect();
    assert_eq!(texts, ["abcd", "12345", "6789abcd"]);
    writer.append(&run, "tail").await.unwrap();
    writer.finish(&run, RunStatus::Done).await.unwrap();
    let read = store.read(&run, 0).await.unwrap();
    assert_eq!(
        read.chunks.last().unwrap().text,
        "tail",
        "flushed on finish"
    );
    assert_eq!(read.finished, Some(RunStatus::Done));
}

#[tokio::test(start_paused = true)]
async fn a_cancel_from_another_instance_is_reported_on_the_next_append() {
    let store = memory();
    let writer = CoalescingWriter::new(store.clone(), CoalesceConfig::default());
    let run = RunId::new("cancel").unwrap();
    writer.start(&run, None).await.unwrap();
    writer.append(&run, "partial").await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    store.finish(&run, RunStatus::Cancelled).await.unwrap();
    writer.append(&run, "more").await.unwrap(); // buffered
    tokio::time::sleep(Duration::from_millis(60)).await; // the timed write is refused
    let err = writer.append(&run, "again").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = writer.finish(&run, RunStatus::Done).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let read = store.read(&run, 0).await.unwrap();
    assert_eq!(read.chunks.len(), 1);
    assert_eq!(read.finished, Some(RunStatus::Cancelled));
}

/// A memory store whose appends fail with `Unavailable` while `down` — or, with
/// `lands_anyway`, write the chunk and then fail with `Timeout` (a reply lost after
/// the store ran the write).
struct Flaky {
    inner: MemoryStore,
    down: AtomicBool,
    lands_anyway: AtomicBool,
}

#[async_trait]
impl ReplyStream for Flaky {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        self.inner.start(run, ttl).await
    }
    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            if self.lands_anyway.load(Ordering::SeqCst) {
                self.inner.append(run, text).await?;
                return Err(Error::new(ErrorKind::Timeout, "the reply was lost"));
            }
            return Err(Error::new(ErrorKind::Unavailable, "down"));
        }
        self.inner.append(run, text).await
    }
    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        self.inner.finish(run, status).await
    }
    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        self.inner.read(run, from).await
    }
    fn follow(&self, run: &RunId, from: u64, idle: Duration) -> ReplyEvents {
        self.inner.follow(run, from, idle)
    }
}

#[tokio::test(start_paused = true)]
async fn a_temporary_failure_keeps_the_text_in_order() {
    let flaky = Arc::new(Flaky {
        inner: MemoryStore::new(StoreSettings::default()),
        down: AtomicBool::new(false),
        lands_anyway: AtomicBool::new(false),
    });
    let writer = CoalescingWriter::new(flaky.clone(), CoalesceConfig::default());
    let run = RunId::new("flaky").unwrap();
    writer.start(&run, None).await.unwrap();
    writer.append(&run, "one ").await.unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let err = writer.append(&run, "two ").await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    writer.append(&run, "two ").await.unwrap(); // the caller retries its chunk
    flaky.down.store(false, Ordering::SeqCst);
    writer.append(&run, "three").await.unwrap();
    writer.finish(&run, RunStatus::Done).await.unwrap();
    let read = flaky.read(&run, 0).await.unwrap();
    let text: String = read.chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(text, "one two three");
}

fn flaky() -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: MemoryStore::new(StoreSettings::default()),
        down: AtomicBool::new(false),
        lands_anyway: AtomicBool::new(false),
    })
}

async fn text_of(store: &Flaky, run: &RunId) -> String {
    let read = store.read(run, 0).await.unwrap();
    read.chunks.iter().map(|c| c.text.as_str()).collect()
}

/// A write that timed out after the store ran it is not written again: the next
/// flush reads whether it landed first.
#[tokio::test(start_paused = true)]
async fn a_write_that_landed_before_its_timeout_is_not_written_twice() {
    let flaky = flaky();
    let writer = CoalescingWriter::new(flaky.clone(), CoalesceConfig::default());
    let run = RunId::new("landed").unwrap();
    writer.start(&run, None).await.unwrap();
    writer.append(&run, "one ").await.unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    flaky.lands_anyway.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await; // the timed flush: lands, times out
    flaky.down.store(false, Ordering::SeqCst);
    let err = writer.append(&run, "two ").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    writer.append(&run, "two ").await.unwrap(); // the caller retries its own chunk
    writer.finish(&run, RunStatus::Done).await.unwrap();
    assert_eq!(text_of(&flaky, &run).await, "one two ");
}

/// A size-triggered write that fails temporarily keeps the text it took: the
/// append succeeds (the text is buffered), the next call reports the failure, and
/// nothing is written twice when the caller goes on.
#[tokio::test(start_paused = true)]
async fn a_full_buffer_that_cannot_be_written_keeps_its_text_once() {
    let flaky = flaky();
    let config = CoalesceConfig {
        max_bytes: 4,
        ..CoalesceConfig::default()
    };
    let writer = CoalescingWriter::new(flaky.clone(), config);
    let run = RunId::new("full").unwrap();
    writer.start(&run, None).await.unwrap();
    flaky.down.store(true, Ordering::SeqCst);
    writer.append(&run, "abcd").await.unwrap(); // taken, though the write failed
    let err = writer.append(&run, "ef").await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    flaky.down.store(false, Ordering::SeqCst);
    writer.append(&run, "ef").await.unwrap();
    writer.finish(&run, RunStatus::Done).await.unwrap();
    assert_eq!(text_of(&flaky, &run).await, "abcdef");
}

/// A refused timed flush (the run was cancelled elsewhere) is reported by
/// `finish`, which still leaves the run ended for its followers.
#[tokio::test(start_paused = true)]
async fn a_finish_after_a_refused_flush_reports_it_and_the_run_stays_ended() {
    let store = memory();
    let writer = CoalescingWriter::new(store.clone(), CoalesceConfig::default());
    let run = RunId::new("refused").unwrap();
    writer.start(&run, None).await.unwrap();
    writer.append(&run, "x").await.unwrap();
    store.finish(&run, RunStatus::Cancelled).await.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    let err = writer.finish(&run, RunStatus::Done).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let read = store.read(&run, 0).await.unwrap();
    assert_eq!(read.finished, Some(RunStatus::Cancelled));
}
