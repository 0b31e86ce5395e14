//! Streamed replies: the values that cross [`crate::ReplyStream`], the rules every
//! backend applies to an append, and [`follow_with`], the one follow loop every
//! backend runs (each gives it a way to read and a way to wait).
//!
//! A run is a sequence of text chunks numbered from 0 (the chunk's *offset*),
//! then one [`RunStatus`]. Offsets are chunk indexes, not byte positions: a reader
//! that saw chunk `n` resumes exactly with `from = n + 1`, on any instance.

use std::collections::VecDeque;
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::config::StoreSettings;
use crate::error::{Error, ErrorKind, Result};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// The reply is complete.
    Done,
    /// The producer failed (the model errored); the chunks so far are all there is.
    Failed,
    /// Someone stopped the reply (the user pressed stop).
    Cancelled,
}

impl RunStatus {
    /// A short lowercase name, stable across versions: what backends store.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// The status named by [`RunStatus::as_str`], or `None`.
    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "done" => Some(RunStatus::Done),
            "failed" => Some(RunStatus::Failed),
            "cancelled" => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

/// One chunk of a run. `Debug` shows the offset and the length, never the text
/// (a reply is user data).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Its position in the run: 0 for the first chunk, then 1, 2, ...
    pub offset: u64,
    /// The text.
    pub text: String,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("offset", &self.offset)
            .field("bytes", &self.text.len())
            .finish()
    }
}

/// What [`crate::ReplyStream::follow`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyEvent {
    /// The next chunk.
    Chunk(Chunk),
    /// The run ended with this status; the stream ends after it.
    Finished(RunStatus),
}

/// What [`crate::ReplyStream::read`] returns: the chunks from an offset on, and
/// the status when the run has ended. Read together, so when `finished` is set the
/// chunks are the run's last ones.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RunRead {
    /// The chunks at and after the offset asked for, in order.
    pub chunks: Vec<Chunk>,
    /// How the run ended, or `None` while it is open.
    pub finished: Option<RunStatus>,
}

/// The stream [`crate::ReplyStream::follow`] returns: `'static` and `Send`, so it
/// can be moved into a task or a web response.
pub type ReplyEvents = BoxStream<'static, Result<ReplyEvent>>;

/// Checks a chunk before it is appended to a run that holds `run_bytes` bytes:
/// `InvalidInput` for an empty chunk, one over `max_value_bytes`, or one that would
/// take the run over `max_run_bytes`. Every backend calls this (the Redis script
/// mirrors it) before writing anything.
pub fn check_chunk(settings: &StoreSettings, run_bytes: usize, chunk: &str) -> Result<()> {
    if chunk.is_empty() {
        return Err(Error::invalid_input("a reply chunk must not be empty"));
    }
    settings.check_value_len("reply chunk", chunk.len())?;
    if run_bytes.saturating_add(chunk.len()) > settings.max_run_bytes {
        return Err(run_full(settings, run_bytes, chunk.len()));
    }
    Ok(())
}

/// The error of a chunk that would take the run over the run limit.
pub fn run_full(settings: &StoreSettings, run_bytes: usize, chunk_len: usize) -> Error {
    Error::invalid_input(format!(
        "the run holds {run_bytes} bytes; a chunk of {chunk_len} would take it over the limit of {} \
         (CHATSTATE_STREAM_MAX_RUN_BYTES)",
        settings.max_run_bytes
    ))
}

/// The error of an append or finish on a run that has ended.
pub fn run_finished(status: RunStatus) -> Error {
    Error::conflict(format!("the run has ended ({})", status.as_str()))
}

/// The error of an operation on a run that does not exist (never started, or
/// expired).
pub fn run_missing() -> Error {
    Error::not_found("no such run (never started, or expired)")
}

/// What a backend gives [`follow_with`]: a read from an offset, and a wait for
/// news.
pub trait FollowSource: Send + 'static {
    /// Reads the run from `from` (as [`crate::ReplyStream::read`]).
    fn read(&mut self, from: u64) -> BoxFuture<'_, Result<RunRead>>;

    /// Returns when the run may have changed — a chunk at offset `next` or later,
    /// or the finish — or after `at_most` at the latest. Waking early is harmless
    /// (the loop reads again); waking late only adds latency. Whatever the source
    /// listens to must have been set up before the first `read` and must keep
    /// news that arrives during a read (a queue, not a flag), because the loop
    /// waits right after a read that found chunks instead of reading again.
    fn wait(&mut self, next: u64, at_most: Duration) -> BoxFuture<'_, ()>;
}

struct Follow<S> {
    source: S,
    next: u64,
    idle_timeout: Duration,
    pending: VecDeque<ReplyEvent>,
    done: bool,
    /// Read before waiting (the first poll only: afterwards every read follows
    /// a wait, so a chunk costs one read, not a read plus an empty one).
    read_first: bool,
}

/// The follow loop: read from `from`; yield the chunks in order; when the run has
/// ended yield [`ReplyEvent::Finished`] and stop; otherwise wait for news and read
/// again from the next offset (after the first read, every read follows a wait). A read error is yielded and ends the stream; so does
/// `Timeout` when no chunk (and no finish) came for `idle_timeout`. Because every
/// read asks for the offset after the last chunk yielded, a chunk is never
/// repeated or skipped, whatever the wake-ups were.
pub fn follow_with<S: FollowSource>(source: S, from: u64, idle_timeout: Duration) -> ReplyEvents {
    let state = Follow {
        source,
        next: from,
        idle_timeout,
        pending: VecDeque::new(),
        done: false,
        read_first: true,
    };
    Box::pin(futures_util::stream::unfold(state, |mut st| async move {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), st));
        }
        if st.done {
            return None;
        }
        let started = tokio::time::Instant::now();
        loop {
            if !st.read_first {
                let left = st.idle_timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    st.done = true;
                    return Some((Err(idle_error(st.idle_timeout)), st));
                }
                st.source.wait(st.next, left).await;
            }
            st.read_first = false;
            match st.source.read(st.next).await {
                Err(e) => {
                    st.done = true;
                    return Some((Err(e.with_operation("follow")), st));
                }
                Ok(read) => {
                    for chunk in read.chunks {
                        // A source that answered an older offset than asked is
                        // skipped over, never yielded twice.
                        if chunk.offset < st.next {
                            continue;
                        }
                        st.next = chunk.offset + 1;
                        st.pending.push_back(ReplyEvent::Chunk(chunk));
                    }
                    if let Some(status) = read.finished {
                        st.pending.push_back(ReplyEvent::Finished(status));
                        st.done = true;
                    }
                    if let Some(event) = st.pending.pop_front() {
                        return Some((Ok(event), st));
                    }
                }
            }
        }
    }))
}

fn idle_error(idle_timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("no new chunk for {} ms", idle_timeout.as_millis()),
    )
    .with_operation("follow")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_limits() {
        let s = StoreSettings {
            max_value_bytes: 4,
            max_run_bytes: 10,
            ..StoreSettings::default()
        };
        assert!(check_chunk(&s, 0, "abcd").is_ok());
        assert_eq!(
            check_chunk(&s, 0, "").unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let err = check_chunk(&s, 0, "abcde").unwrap_err();
        assert!(err.message().contains("reply chunk is 5 bytes"), "{err}");
        assert!(check_chunk(&s, 6, "abcd").is_ok());
        let err = check_chunk(&s, 7, "abcd").unwrap_err();
        assert!(
            err.message().contains("CHATSTATE_STREAM_MAX_RUN_BYTES"),
            "{err}"
        );
    }

    #[test]
    fn status_names_round_trip_and_chunk_debug_hides_text() {
        for s in [RunStatus::Done, RunStatus::Failed, RunStatus::Cancelled] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("open"), None);
        let c = Chunk {
            offset: 3,
            text: "secret".into(),
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret") && shown.contains('3'), "{shown}");
    }
}
