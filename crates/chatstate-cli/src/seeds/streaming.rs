//! An LLM streaming app (seed 004): a reply streamed token by token, stored so that
//! a reader on any instance can read it from an offset. The seed paid a round trip
//! per 1–5 character chunk; the coalescing writer writes every 50 ms or 256 bytes.
//!
//! Written as an app would use `chatstate`, and shared as it is by
//! `chatstate demo --scenario streaming`.

use chatstate::{CoalesceConfig, CoalescingWriter, ReplyStream, Result, RunId, RunStatus, Stores};
use std::sync::Arc;

/// Streams replies and reads them back.
#[derive(Clone)]
pub struct Streamer {
    writer: Arc<CoalescingWriter>,
    replies: Arc<dyn ReplyStream>,
}

impl Streamer {
    /// The streamer over the configured stores, coalescing with the defaults.
    pub fn new(stores: &Stores) -> Streamer {
        Streamer {
            writer: Arc::new(stores.coalesced_replies(CoalesceConfig::default())),
            replies: stores.replies.clone(),
        }
    }

    /// Writes a reply token by token and finishes it.
    pub async fn stream(&self, run: &RunId, tokens: &[&str]) -> Result<()> {
        self.writer.start(run, None).await?;
        for token in tokens {
            self.writer.append(run, token).await?;
        }
        self.writer.finish(run, RunStatus::Done).await
    }

    /// The whole reply, as a reader on another instance reads it.
    pub async fn read(&self, run: &RunId) -> Result<String> {
        let read = self.replies.read(run, 0).await?;
        Ok(read.chunks.into_iter().map(|c| c.text).collect())
    }

    /// Chunks written to the store so far (each one write).
    pub fn writes(&self) -> u64 {
        self.writer.stats().writes
    }
}
