//! ReplyStream in memory: a `Vec` of chunks per run, and a tokio `broadcast`
//! channel per run that wakes followers on every append and on the finish. A
//! follower subscribes before its first read, so no append falls between a read
//! and its wait; a lagged or closed channel only means "read again".

use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::reply::{FollowSource, check_chunk, follow_with, run_finished, run_missing};
use chatstate_core::{
    Chunk, Error, ErrorKind, ReplyEvents, ReplyStream, Result, ResultExt, RunId, RunRead,
    RunStatus, StoreSettings,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::broadcast;

use crate::{Inner, MemoryStore, lock};

/// One run's state.
pub(crate) struct Run {
    chunks: Vec<String>,
    bytes: usize,
    status: Option<RunStatus>,
    /// Wakes followers; the payload is meaningless.
    wake: broadcast::Sender<()>,
}

impl MemoryStore {
    fn read_run(&self, run: &RunId, from: u64) -> Result<RunRead> {
        read_run(&self.inner, run, from)
    }
}

fn read_run(inner: &Inner, run: &RunId, from: u64) -> Result<RunRead> {
    let now = inner.now();
    let runs = lock(&inner.replies);
    let r = runs
        .get(&run.as_str().to_string(), now)
        .ok_or_else(|| run_missing().with_key(run))?;
    let start = usize::try_from(from)
        .unwrap_or(usize::MAX)
        .min(r.chunks.len());
    Ok(RunRead {
        chunks: r.chunks[start..]
            .iter()
            .enumerate()
            .map(|(i, text)| Chunk {
                offset: (start + i) as u64,
                text: text.clone(),
            })
            .collect(),
        finished: r.status,
    })
}

struct MemoryFollow {
    store: std::sync::Weak<Inner>,
    run: RunId,
    wake: Option<broadcast::Receiver<()>>,
    /// The followed run's channel closed: the run was dropped (swept, or replaced
    /// by a new run of the same id after it expired), so it is gone for this
    /// follower even if a new run now has the id.
    gone: bool,
}

/// How often a follower whose run had no channel (it did not exist when the
/// follow began) reads again.
const FALLBACK_POLL: Duration = Duration::from_millis(20);

impl FollowSource for MemoryFollow {
    fn read(&mut self, from: u64) -> BoxFuture<'_, Result<RunRead>> {
        let result = match self.store.upgrade() {
            _ if self.gone => Err(run_missing().with_key(&self.run)),
            Some(inner) => read_run(&inner, &self.run, from),
            None => Err(Error::new(ErrorKind::Unavailable, "the store was dropped")),
        };
        async move { result }.boxed()
    }

    fn wait(&mut self, _next: u64, at_most: Duration) -> BoxFuture<'_, ()> {
        async move {
            match self.wake.as_mut() {
                Some(rx) => {
                    if let Ok(Err(broadcast::error::RecvError::Closed)) =
                        tokio::time::timeout(at_most, rx.recv()).await
                    {
                        self.gone = true;
                    }
                }
                // No channel: the run did not exist when the follow began.
                None => tokio::time::sleep(at_most.min(FALLBACK_POLL)).await,
            }
        }
        .boxed()
    }
}

#[async_trait]
impl ReplyStream for MemoryStore {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        let ttl = StoreSettings::ttl_or(ttl, self.inner.settings.reply_ttl).in_op("start")?;
        let now = self.inner.now();
        let mut runs = lock(&self.inner.replies);
        let id = run.as_str().to_string();
        if runs.get(&id, now).is_some() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "a live run has this id")
                    .with_operation("start")
                    .with_key(run),
            );
        }
        let (wake, _) = broadcast::channel(16);
        runs.insert(
            id,
            Run {
                chunks: Vec::new(),
                bytes: 0,
                status: None,
                wake,
            },
            now.plus(ttl),
        );
        Ok(())
    }

    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        let now = self.inner.now();
        let mut runs = lock(&self.inner.replies);
        let fail = |e: Error| e.with_operation("append").with_key(run);
        let r = runs
            .get_mut(&run.as_str().to_string(), now)
            .ok_or_else(|| fail(run_missing()))?;
        if let Some(status) = r.status {
            return Err(fail(run_finished(status)));
        }
        check_chunk(&self.inner.settings, r.bytes, text).map_err(fail)?;
        r.chunks.push(text.to_string());
        r.bytes += text.len();
        let _ = r.wake.send(());
        Ok(())
    }

    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        let now = self.inner.now();
        let mut runs = lock(&self.inner.replies);
        let fail = |e: Error| e.with_operation("finish").with_key(run);
        let r = runs
            .get_mut(&run.as_str().to_string(), now)
            .ok_or_else(|| fail(run_missing()))?;
        if let Some(done) = r.status {
            return Err(fail(run_finished(done)));
        }
        r.status = Some(status);
        let _ = r.wake.send(());
        Ok(())
    }

    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        self.read_run(run, from).in_op("read")
    }

    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        // Subscribed now, before the first read: nothing appended after this call
        // goes unnoticed.
        let now = self.inner.now();
        let wake = lock(&self.inner.replies)
            .get(&run.as_str().to_string(), now)
            .map(|r| r.wake.subscribe());
        let source = MemoryFollow {
            store: std::sync::Arc::downgrade(&self.inner),
            run: run.clone(),
            wake,
            gone: false,
        };
        follow_with(source, from, idle_timeout)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatstate_core::{ManualClock, ReplyEvent};
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_follower_of_a_replaced_run_ends_instead_of_reading_the_new_one() {
        let clock = ManualClock::starting_now();
        let store = MemoryStore::builder().clock(clock.shared()).build();
        let run = RunId::new("reused").unwrap();
        store
            .start(&run, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        store.append(&run, "old").await.unwrap();
        let mut events = store.follow(&run, 0, Duration::from_secs(5));
        let first = events.next().await.unwrap().unwrap();
        assert!(matches!(first, ReplyEvent::Chunk(c) if c.text == "old"));
        clock.advance(Duration::from_secs(2));
        store.start(&run, None).await.unwrap();
        store.append(&run, "new").await.unwrap();
        let err = events.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(events.next().await.is_none());
    }
}
