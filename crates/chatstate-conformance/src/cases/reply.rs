//! ReplyStream cases: order, resuming without loss or repeat, a reader on another
//! instance, late readers, the finish seen by every follower, expiry, limits,
//! cancel.

use std::sync::Arc;
use std::time::Duration;

use chatstate_core::{
    ErrorKind, ReplyEvent, ReplyEvents, ReplyStream, RunId, RunStatus, StoreSettings,
};
use futures_util::StreamExt;

use super::{Must, expect_err};
use crate::{Ctx, Outcome};

/// How long a follower in these cases waits for a chunk before failing the case.
const IDLE: Duration = Duration::from_secs(10);

fn run(id: &str) -> RunId {
    RunId::new(id).expect("a valid run id")
}

/// Collects a follow stream to its end: the chunks' (offset, text) and the finish.
async fn drain(mut events: ReplyEvents, what: &str) -> (Vec<(u64, String)>, RunStatus) {
    let mut chunks = Vec::new();
    while let Some(event) = events.next().await {
        match event.must(what) {
            ReplyEvent::Chunk(c) => chunks.push((c.offset, c.text)),
            ReplyEvent::Finished(status) => {
                assert!(
                    events.next().await.is_none(),
                    "{what}: the stream must end after the finish"
                );
                return (chunks, status);
            }
        }
    }
    panic!("{what}: the stream ended without a finish");
}

fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i} ")).collect()
}

fn expected(texts: &[String]) -> Vec<(u64, String)> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (i as u64, t.clone()))
        .collect()
}

/// Chunks read back in append order with offsets 0, 1, 2, ...; a read from an
/// offset starts there; the status appears once finished.
pub async fn reply_chunks_in_order_and_read_from_offset(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("order");
    fx.replies.start(&r, None).await.must("start");
    let texts = numbered(50);
    for t in &texts {
        fx.replies.append(&r, t).await.must("append");
    }
    let all = fx.replies.read(&r, 0).await.must("read");
    assert_eq!(all.finished, None, "an open run has no status");
    let got: Vec<(u64, String)> = all.chunks.into_iter().map(|c| (c.offset, c.text)).collect();
    assert_eq!(got, expected(&texts), "chunks in append order");
    let tail = fx.replies.read(&r, 45).await.must("read from 45");
    assert_eq!(tail.chunks.len(), 5);
    assert_eq!(tail.chunks[0].offset, 45);
    assert_eq!(tail.chunks[0].text, "t45 ");
    let past = fx.replies.read(&r, 500).await.must("read past the end");
    assert!(past.chunks.is_empty());
    fx.replies.finish(&r, RunStatus::Done).await.must("finish");
    let done = fx.replies.read(&r, 50).await.must("read after finish");
    assert_eq!(done.finished, Some(RunStatus::Done));
    expect_err(
        fx.replies.start(&r, None).await,
        ErrorKind::AlreadyExists,
        "start of a live run",
    );
    expect_err(
        fx.replies.read(&run("missing"), 0).await,
        ErrorKind::NotFound,
        "read of a missing run",
    );
    expect_err(
        fx.replies.append(&run("missing"), "x").await,
        ErrorKind::NotFound,
        "append to a missing run",
    );
    Outcome::Passed
}

/// A follower that stops after some chunks and follows again from the offset after
/// the last one it saw gets every chunk exactly once, while the producer goes on.
pub async fn reply_follow_resumes_without_loss_or_duplicate(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("resume");
    fx.replies.start(&r, None).await.must("start");
    let texts = numbered(200);
    let producer = {
        let replies = fx.replies.clone();
        let r = r.clone();
        let texts = texts.clone();
        tokio::spawn(async move {
            for (i, t) in texts.iter().enumerate() {
                replies.append(&r, t).await.must("append");
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            replies.finish(&r, RunStatus::Done).await.must("finish");
        })
    };
    let mut seen: Vec<(u64, String)> = Vec::new();
    let mut from = 0;
    // Drop the stream every 37 chunks (a reconnect), then resume.
    'outer: loop {
        let mut events = fx.replies.follow(&r, from, IDLE);
        let mut taken = 0;
        while let Some(event) = events.next().await {
            match event.must("follow") {
                ReplyEvent::Chunk(c) => {
                    from = c.offset + 1;
                    seen.push((c.offset, c.text));
                    taken += 1;
                    if taken == 37 {
                        continue 'outer;
                    }
                }
                ReplyEvent::Finished(status) => {
                    assert_eq!(status, RunStatus::Done);
                    break 'outer;
                }
            }
        }
        panic!("the follow stream ended without a finish");
    }
    producer.await.expect("the producer task");
    assert_eq!(seen, expected(&texts), "no chunk lost or repeated");
    Outcome::Passed
}

/// A reader on another instance (another client of the same data) follows a run
/// while this instance writes it, and sees every chunk in order and the finish.
pub async fn reply_reader_on_another_instance(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("peer");
    fx.replies.start(&r, None).await.must("start");
    let reader = tokio::spawn(drain(fx.replies_peer.follow(&r, 0, IDLE), "peer follow"));
    let texts = numbered(100);
    for t in &texts {
        fx.replies.append(&r, t).await.must("append");
    }
    fx.replies.finish(&r, RunStatus::Done).await.must("finish");
    let (chunks, status) = reader.await.expect("the reader task");
    assert_eq!(chunks, expected(&texts));
    assert_eq!(status, RunStatus::Done);
    let read = fx.replies_peer.read(&r, 99).await.must("peer read");
    assert_eq!(read.chunks.len(), 1);
    assert_eq!(read.finished, Some(RunStatus::Done));
    Outcome::Passed
}

/// A reader that arrives after the run ended follows it from offset 0 and gets the
/// whole reply and the finish at once.
pub async fn reply_late_reader_from_offset_zero(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("late");
    fx.replies.start(&r, None).await.must("start");
    let texts = numbered(30);
    for t in &texts {
        fx.replies.append(&r, t).await.must("append");
    }
    fx.replies
        .finish(&r, RunStatus::Failed)
        .await
        .must("finish");
    let (chunks, status) = drain(fx.replies_peer.follow(&r, 0, IDLE), "late follow").await;
    assert_eq!(chunks, expected(&texts));
    assert_eq!(status, RunStatus::Failed);
    let (tail, _) = drain(fx.replies.follow(&r, 28, IDLE), "late follow from 28").await;
    assert_eq!(tail, expected(&texts)[28..].to_vec());
    Outcome::Passed
}

/// Every follower, whenever it started, sees the finish after the last chunk; a
/// follower of a quiet open run ends with `Timeout`; of a missing run, `NotFound`.
pub async fn reply_every_follower_sees_the_finish(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("finish");
    fx.replies.start(&r, None).await.must("start");
    let mut readers = Vec::new();
    for i in 0..4 {
        let replies: Arc<dyn ReplyStream> = if i % 2 == 0 {
            fx.replies.clone()
        } else {
            fx.replies_peer.clone()
        };
        readers.push(tokio::spawn(drain(replies.follow(&r, 0, IDLE), "follow")));
    }
    fx.replies.append(&r, "only").await.must("append");
    tokio::time::sleep(Duration::from_millis(50)).await;
    fx.replies.finish(&r, RunStatus::Done).await.must("finish");
    for reader in readers {
        let (chunks, status) = reader.await.expect("a reader task");
        assert_eq!(chunks, vec![(0, "only".to_string())]);
        assert_eq!(status, RunStatus::Done);
    }
    let quiet = run("quiet");
    fx.replies.start(&quiet, None).await.must("start quiet");
    let mut events = fx.replies.follow(&quiet, 0, Duration::from_millis(300));
    let first = events.next().await.expect("an event");
    expect_err(first, ErrorKind::Timeout, "follow of a quiet run");
    assert!(
        events.next().await.is_none(),
        "the stream ends after a timeout"
    );
    let mut missing = fx.replies.follow(&run("missing"), 0, IDLE);
    let first = missing.next().await.expect("an event");
    expect_err(first, ErrorKind::NotFound, "follow of a missing run");
    Outcome::Passed
}

/// A run is gone, chunks and status, once its TTL ran out.
pub async fn reply_expires_after_ttl(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let r = run("expiring");
    fx.replies.start(&r, Some(unit * 2)).await.must("start");
    fx.replies.append(&r, "a").await.must("append");
    fx.advance(unit).await;
    fx.replies
        .append(&r, "b")
        .await
        .must("append within the TTL");
    assert_eq!(fx.replies.read(&r, 0).await.must("read").chunks.len(), 2);
    fx.advance(unit + unit / 2).await;
    expect_err(
        fx.replies.read(&r, 0).await,
        ErrorKind::NotFound,
        "read after the TTL",
    );
    expect_err(
        fx.replies.append(&r, "c").await,
        ErrorKind::NotFound,
        "append after the TTL",
    );
    fx.replies
        .start(&r, None)
        .await
        .must("start again after expiry");
    assert!(fx.replies.read(&r, 0).await.must("read").chunks.is_empty());
    Outcome::Passed
}

/// A follower of a run that expires ends with `NotFound`, and never reads a new run
/// started under the same id afterwards.
pub async fn reply_follower_of_an_expired_run_ends(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let unit = ctx.unit();
    let r = run("reused");
    fx.replies.start(&r, Some(unit * 2)).await.must("start");
    fx.replies.append(&r, "old").await.must("append");
    let mut events = fx.replies_peer.follow(&r, 0, IDLE);
    match events.next().await.expect("an event").must("follow") {
        ReplyEvent::Chunk(c) => assert_eq!(c.text, "old"),
        other => panic!("expected the chunk, got {other:?}"),
    }
    fx.advance(unit * 3).await;
    fx.replies
        .start(&r, None)
        .await
        .must("start again after expiry");
    fx.replies
        .append(&r, "new")
        .await
        .must("append to the new run");
    let next = events.next().await.expect("an event");
    expect_err(next, ErrorKind::NotFound, "follow of an expired run");
    assert!(events.next().await.is_none(), "the stream ends");
    Outcome::Passed
}

/// Empty chunks, chunks over the value limit and chunks that would take the run
/// over the run limit are `InvalidInput`, write nothing, and leave the run open.
pub async fn reply_limits_are_invalid_input(ctx: Ctx) -> Outcome {
    let fx = ctx
        .open_with(StoreSettings {
            max_value_bytes: 8,
            max_run_bytes: 20,
            ..StoreSettings::default()
        })
        .await;
    let r = run("limits");
    fx.replies.start(&r, None).await.must("start");
    fx.replies
        .append(&r, "12345678")
        .await
        .must("a chunk at the limit");
    let e = expect_err(
        fx.replies.append(&r, "123456789").await,
        ErrorKind::InvalidInput,
        "a chunk over the value limit",
    );
    assert!(e.message().contains("reply chunk"), "{e}");
    expect_err(
        fx.replies.append(&r, "").await,
        ErrorKind::InvalidInput,
        "an empty chunk",
    );
    fx.replies.append(&r, "12345678").await.must("16 bytes");
    let e = expect_err(
        fx.replies.append(&r, "12345").await,
        ErrorKind::InvalidInput,
        "a chunk over the run limit",
    );
    assert!(
        e.message().contains("CHATSTATE_STREAM_MAX_RUN_BYTES"),
        "{e}"
    );
    fx.replies
        .append(&r, "1234")
        .await
        .must("up to the run limit");
    let read = fx.replies.read(&r, 0).await.must("read");
    let texts: Vec<&str> = read.chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        ["12345678", "12345678", "1234"],
        "refused chunks wrote nothing"
    );
    assert_eq!(read.finished, None);
    Outcome::Passed
}

/// Cancelling (from another instance) ends the run: followers see `Cancelled`, the
/// producer's next append is a `Conflict`, and a second finish is a `Conflict`.
pub async fn reply_cancel_stops_the_producer(ctx: Ctx) -> Outcome {
    let fx = ctx.open().await;
    let r = run("cancel");
    fx.replies.start(&r, None).await.must("start");
    let reader = tokio::spawn(drain(fx.replies.follow(&r, 0, IDLE), "follow"));
    fx.replies.append(&r, "partial").await.must("append");
    fx.replies_peer
        .finish(&r, RunStatus::Cancelled)
        .await
        .must("cancel from another instance");
    let e = expect_err(
        fx.replies.append(&r, "more").await,
        ErrorKind::Conflict,
        "append after cancel",
    );
    assert!(e.message().contains("cancelled"), "{e}");
    expect_err(
        fx.replies.finish(&r, RunStatus::Done).await,
        ErrorKind::Conflict,
        "finish after cancel",
    );
    let (chunks, status) = reader.await.expect("the reader task");
    assert_eq!(chunks, vec![(0, "partial".to_string())]);
    assert_eq!(status, RunStatus::Cancelled);
    Outcome::Passed
}
