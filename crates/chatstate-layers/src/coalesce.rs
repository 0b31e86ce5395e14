//! The coalescing writer: a [`ReplyStream`] that buffers a run's chunks and writes
//! them to the store it wraps as one chunk every [`CoalesceConfig::max_delay`] or
//! every [`CoalesceConfig::max_bytes`], whichever comes first — so an LLM's stream
//! of 1–5 character tokens costs one round trip per flush, not one per token.
//!
//! **Order.** Each run has one buffer behind an async mutex; a flush takes the
//! whole buffer and writes it while holding that mutex, so flushes of a run never
//! overlap and chunks reach the store in append order, concatenated. Readers see
//! the coalesced chunks (offsets count flushes, not tokens), and see them at most
//! `max_delay` later than a direct write would show them.
//!
//! **Flush on finish.** [`ReplyStream::finish`] writes what is buffered, then the
//! finish. A chunk that would take the buffer over `max_bytes` first flushes the
//! buffer, so a written chunk is at most `max(max_bytes, the largest single
//! append)` bytes and the store's chunk limit holds whenever each append is within
//! it.
//!
//! **Errors.** `append` only buffers (it writes itself only when the buffer is
//! full), so a refusal of a timed flush — the run was cancelled by another instance
//! (`Conflict`), it expired (`NotFound`), a limit (`InvalidInput`) — is returned by
//! the run's next `append` or `finish`. An `append` that returns an error did not
//! take its text. A temporary failure (`Unavailable`, `Timeout`) keeps the text
//! buffered, ahead of newer text, and the timer tries again (backing off); since
//! such a failure may come after the store wrote the chunk, the next flush first
//! reads whether it landed, so it is never written twice (this assumes the writer
//! is the run's only producer, as a streamed reply has). Any other refusal drops
//! the buffered text, which the store refused anyway, and a `finish` still ends the
//! run so followers see the end.
//!
//! **Defaults.** 50 ms and 256 bytes: at 50 tokens/s a flush carries 2–3 tokens
//! and a reader sees a token at most ~50 ms late — below what a reader of a chat
//! notices — while the writes fall from one per token to about one per 2.5 tokens;
//! at faster streams the byte bound keeps chunks small. See `BENCHMARKS.md` for
//! the measured round trips and latencies.
//!
//! Reads (`read`, `follow`) go straight to the wrapped store.
//!
//! **Memory.** A run's buffer lives from its first append to its `finish` (or a
//! refusal that ends it); finish every run you start through the writer, or its
//! (empty) buffer stays until the writer is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::{
    Capabilities, Error, ReplyEvents, ReplyStream, Result, RunId, RunRead, RunStatus,
};
use serde::Serialize;

/// The default longest time text waits in the buffer.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_millis(50);
/// The default buffer size that triggers a write at once.
pub const DEFAULT_MAX_BYTES: usize = 256;

/// When the coalescing writer writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoalesceConfig {
    /// The longest time text waits in the buffer before it is written.
    pub max_delay: Duration,
    /// A buffer of at least this many bytes is written at once.
    pub max_bytes: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        CoalesceConfig {
            max_delay: DEFAULT_MAX_DELAY,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What the writer did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CoalesceStats {
    /// Chunks handed to `append`.
    pub appends: u64,
    /// Chunks written to the wrapped store (each one write).
    pub writes: u64,
    /// Writes that failed.
    pub failed_writes: u64,
}

#[derive(Default)]
struct Buffer {
    pending: String,
    /// A flush is scheduled (a timer task is sleeping).
    timer: bool,
    /// The refusal of a timed flush, for the next append or finish.
    error: Option<Error>,
    /// Chunks this writer wrote since it started the run (`None` when it did not
    /// start it): where a write it is unsure of would be.
    written: Option<u64>,
    /// The text of a write that failed temporarily and may have run anyway (a
    /// timeout, a dropped connection): checked before it is sent again.
    uncertain: Option<String>,
    /// The run was started again: a timer of the old run writes nothing.
    closed: bool,
}

type RunBuffer = Arc<tokio::sync::Mutex<Buffer>>;

struct Shared {
    inner: Arc<dyn ReplyStream>,
    config: CoalesceConfig,
    runs: Mutex<HashMap<RunId, RunBuffer>>,
    appends: AtomicU64,
    writes: AtomicU64,
    failed_writes: AtomicU64,
}

/// A [`ReplyStream`] that coalesces a run's appends into fewer, larger writes to
/// the store it wraps (see the module docs). Cheap to clone; clones share buffers.
///
/// ```
/// # async fn demo(store: std::sync::Arc<dyn chatstate_core::ReplyStream>) -> chatstate_core::Result<()> {
/// use chatstate_core::{ReplyStream, RunId, RunStatus};
/// use chatstate_layers::{CoalesceConfig, CoalescingWriter};
/// let replies = CoalescingWriter::new(store, CoalesceConfig::default());
/// let run = RunId::random();
/// replies.start(&run, None).await?;
/// for token in ["Ol", "á", ",", " mun", "do"] {
///     replies.append(&run, token).await?; // buffered: no round trip
/// }
/// replies.finish(&run, RunStatus::Done).await?; // one write of "Olá, mundo", then the finish
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CoalescingWriter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CoalescingWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescingWriter")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn buffer(&self, run: &RunId) -> RunBuffer {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.entry(run.clone()).or_default().clone()
    }

    fn forget(&self, run: &RunId) {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run);
    }

    /// Writes the buffer (held by the caller) as one chunk. A temporary failure
    /// keeps the text for the next flush; another refusal drops it.
    ///
    /// A temporary failure may come after the store ran the write (a timeout, a
    /// connection dropped before the reply): before the text is sent again, the run
    /// is read at the offset the write would have taken (the last chunk when this
    /// writer did not start the run), and a chunk there with exactly that text means
    /// it landed — so a retry never writes it twice.
    async fn flush(&self, run: &RunId, buf: &mut Buffer) -> Result<()> {
        if buf.closed || buf.pending.is_empty() {
            return Ok(());
        }
        if let Some(sent) = buf.uncertain.take() {
            let from = buf.written.unwrap_or(0);
            let read = self.inner.read(run, from).await;
            let landed = match &read {
                Ok(r) => match buf.written {
                    Some(_) => r.chunks.first().is_some_and(|c| c.text == sent),
                    None => r.chunks.last().is_some_and(|c| c.text == sent),
                },
                Err(_) => false,
            };
            if let Err(e) = read
                && e.is_temporary()
            {
                buf.uncertain = Some(sent);
                return Err(e);
            }
            if landed && buf.pending.starts_with(&sent) {
                buf.pending.drain(..sent.len());
                buf.written = buf.written.map(|n| n + 1);
                if buf.pending.is_empty() {
                    return Ok(());
                }
            }
        }
        let text = std::mem::take(&mut buf.pending);
        self.writes.fetch_add(1, Ordering::Relaxed);
        match self.inner.append(run, &text).await {
            Ok(()) => {
                buf.written = buf.written.map(|n| n + 1);
                Ok(())
            }
            Err(e) => {
                self.failed_writes.fetch_add(1, Ordering::Relaxed);
                if e.is_temporary() {
                    // Ahead of anything appended since: order is kept.
                    buf.pending.insert_str(0, &text);
                    buf.uncertain = Some(text);
                }
                Err(e)
            }
        }
    }
}

/// The timer of one run: waits `max_delay` (longer after failed timed flushes),
/// then flushes what is buffered. A temporary failure schedules another try (at
/// most 10 in a row, backing off to ~25 s), so text does not wait for the
/// producer's next call; the error is also kept for that call.
fn timed_flush(
    shared: Arc<Shared>,
    run: RunId,
    buffer: RunBuffer,
    attempt: u32,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    // Boxed: the task schedules its own retry.
    Box::pin(async move {
        tokio::time::sleep(shared.config.max_delay * 2u32.pow(attempt.min(9))).await;
        let mut buf = buffer.lock().await;
        buf.timer = false;
        match shared.flush(&run, &mut buf).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(error = %e, "coalesced reply flush failed; the next append reports it");
                if e.is_temporary() && attempt < 10 && !buf.closed {
                    buf.timer = true;
                    tokio::spawn(timed_flush(
                        shared.clone(),
                        run.clone(),
                        buffer.clone(),
                        attempt + 1,
                    ));
                }
                buf.error = Some(e);
            }
        }
    })
}

impl CoalescingWriter {
    /// Wraps `inner`, writing as `config` says. Appends must be made inside a tokio
    /// runtime (a timed flush is a task).
    pub fn new(inner: Arc<dyn ReplyStream>, config: CoalesceConfig) -> Self {
        CoalescingWriter {
            shared: Arc::new(Shared {
                inner,
                config: CoalesceConfig {
                    max_bytes: config.max_bytes.max(1),
                    ..config
                },
                runs: Mutex::default(),
                appends: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                failed_writes: AtomicU64::new(0),
            }),
        }
    }

    /// What the writer did so far.
    pub fn stats(&self) -> CoalesceStats {
        CoalesceStats {
            appends: self.shared.appends.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            failed_writes: self.shared.failed_writes.load(Ordering::Relaxed),
        }
    }

    /// Writes what is buffered for `run` now.
    pub async fn flush(&self, run: &RunId) -> Result<()> {
        let buffer = self.shared.buffer(run);
        let mut buf = buffer.lock().await;
        if let Some(e) = buf.error.take() {
            return Err(e);
        }
        self.shared.flush(run, &mut buf).await
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ReplyStream> {
        &self.shared.inner
    }
}

#[async_trait]
impl ReplyStream for CoalescingWriter {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        self.shared.inner.start(run, ttl).await?;
        // A fresh run: nothing left over from an earlier one of the same id (an old
        // timer still holding the old buffer writes nothing).
        let old = self
            .shared
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run);
        if let Some(old) = old {
            let mut old = old.lock().await;
            old.closed = true;
            old.pending.clear();
        }
        let buffer = self.shared.buffer(run);
        buffer.lock().await.written = Some(0);
        Ok(())
    }

    /// Buffers `text`. `Err` means this text was not taken (retry it or give
    /// up); text taken by earlier calls stays buffered through a temporary failure
    /// and is written by the next flush, never twice.
    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        if text.is_empty() {
            return Err(Error::invalid_input("a reply chunk must not be empty")
                .with_operation("append")
                .with_key(run));
        }
        self.shared.appends.fetch_add(1, Ordering::Relaxed);
        let buffer = self.shared.buffer(run);
        let mut buf = buffer.lock().await;
        if let Some(e) = buf.error.take() {
            if !e.is_temporary() {
                drop(buf);
                self.shared.forget(run);
            }
            return Err(e);
        }
        let max = self.shared.config.max_bytes;
        if !buf.pending.is_empty()
            && buf.pending.len() + text.len() > max
            && let Err(e) = self.shared.flush(run, &mut buf).await
        {
            if !e.is_temporary() {
                drop(buf);
                self.shared.forget(run);
            }
            return Err(e);
        }
        buf.pending.push_str(text);
        if buf.pending.len() >= max {
            match self.shared.flush(run, &mut buf).await {
                Ok(()) => return Ok(()),
                // The text is taken (buffered): the timer writes it later, and the
                // next call reports the failure.
                Err(e) if e.is_temporary() => buf.error = Some(e),
                Err(e) => {
                    drop(buf);
                    self.shared.forget(run);
                    return Err(e);
                }
            }
        }
        if !buf.timer {
            buf.timer = true;
            tokio::spawn(timed_flush(
                self.shared.clone(),
                run.clone(),
                buffer.clone(),
                0,
            ));
        }
        Ok(())
    }

    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        let buffer = self.shared.buffer(run);
        let mut buf = buffer.lock().await;
        // A stored refusal, or this flush's: text the store refused is not written,
        // which the caller learns; the run is still ended (unless the failure is
        // temporary: then nothing is lost and `finish` can be called again).
        let flushed = match buf.error.take() {
            Some(e) if e.is_temporary() => match self.shared.flush(run, &mut buf).await {
                Ok(()) => Ok(()),
                Err(e) => Err(e),
            },
            Some(e) => Err(e),
            None => self.shared.flush(run, &mut buf).await,
        };
        match flushed {
            Err(e) if e.is_temporary() => return Err(e),
            Err(e) => {
                // Followers still see the finish (a cancelled or expired run refuses
                // it, which changes nothing).
                let _ = self.shared.inner.finish(run, status).await;
                drop(buf);
                self.shared.forget(run);
                return Err(e);
            }
            Ok(()) => {}
        }
        let result = self.shared.inner.finish(run, status).await;
        if result.as_ref().map_or_else(|e| !e.is_temporary(), |_| true) {
            drop(buf);
            self.shared.forget(run);
        }
        result
    }

    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        self.shared.inner.read(run, from).await
    }

    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        self.shared.inner.follow(run, from, idle_timeout)
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.inner.capabilities()
    }
}
