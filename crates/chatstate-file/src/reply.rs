//! ReplyStream on the file store: one append-only file per run,
//! `replies/<run>.r`, of JSON lines:
//!
//! ```text
//! {"run":"reply-42","deadline":1795000000000,"nonce":"…"}   written atomically at start
//! {"b":3,"t":"Olá"}                                          a chunk; b = the run's bytes so far
//! {"b":10,"t":", mundo"}
//! {"end":"done"}                                             the finish
//! ```
//!
//! Offsets are line numbers after the header. Writers (append, finish) hold the
//! run's stripe lock (threads and processes), check the header and the *last*
//! line only — its running byte count and whether it is the finish — so an append
//! costs the same whatever the run's length, then write one line with one `write`
//! (and `fdatasync` with [`crate::Durability::Fsync`]). A line is only read once
//! it ends in `\n`: a reader never sees half a chunk, and a tail torn by a crash is
//! cut off by the next writer.
//!
//! **Followers poll** the file every [`FOLLOW_POLL`], reading only what was
//! appended since their last read (they keep a byte cursor). Polling rather than
//! file notifications: it is portable (inotify is Linux-only; kqueue, FSEvents and
//! network file systems differ or drop events), needs no dependency and no thread,
//! and sees writers in other processes exactly like writers in this one. The cost
//! is up to one poll interval of latency and one small read per follower per
//! interval, for a store meant for one box.
//!
//! The start replaces an expired file atomically (temporary file, fsync,
//! rename); the header's random nonce lets a follower notice the replacement.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::model::random_id;
use chatstate_core::reply::{FollowSource, check_chunk, follow_with, run_finished, run_missing};
use chatstate_core::{
    Chunk, Error, ErrorKind, ReplyEvents, ReplyStream, Result, ResultExt, RunId, RunRead,
    RunStatus, StoreSettings, Timestamp,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::format::{self, Durability, io_error};
use crate::{FileStore, Inner, collision};

/// How often a follower reads the run's file for new lines.
pub const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// The first line of a run's file.
#[derive(Serialize, Deserialize)]
struct Header {
    run: RunId,
    deadline: Timestamp,
    nonce: String,
}

/// A line after the header.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Chunk { b: u64, t: String },
    End { end: RunStatus },
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::decode(format!("file {} is corrupt: {what}", path.display()))
}

/// Reads the header line; `None` when there is no file.
fn read_header(path: &Path) -> Result<Option<(Header, u64)>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "opening", e)),
    };
    header_of(&mut file, path).map(Some)
}

/// The header line of an open run file (read from its start) and its length.
fn header_of(file: &mut File, path: &Path) -> Result<(Header, u64)> {
    let mut line = Vec::new();
    file.seek(SeekFrom::Start(0))
        .map_err(|e| io_error(path, "reading", e))?;
    // A header is at most a few KiB (a 512-byte id escaped as JSON).
    BufReader::new(Read::by_ref(file))
        .take(64 * 1024)
        .read_until(b'\n', &mut line)
        .map_err(|e| io_error(path, "reading", e))?;
    if line.last() != Some(&b'\n') {
        return Err(corrupt(path, "no complete header line"));
    }
    let header: Header =
        serde_json::from_slice(&line).map_err(|_| corrupt(path, "a malformed header"))?;
    Ok((header, line.len() as u64))
}

/// The live header of `run`'s file (`None` when missing or expired).
fn live_header(inner: &Inner, path: &Path, run: &RunId) -> Result<Option<(Header, u64)>> {
    match read_header(path)? {
        Some((h, _)) if &h.run != run => Err(collision(path)),
        Some((h, len)) if h.deadline > inner.now() => Ok(Some((h, len))),
        _ => Ok(None),
    }
}

/// Whether `path` holds an expired run (for the sweeper). A corrupt file is a
/// `Decode` error.
pub(crate) fn expired(inner: &Inner, path: &Path) -> Result<bool> {
    Ok(read_header(path)?.is_some_and(|(h, _)| h.deadline <= inner.now()))
}

/// The last complete line of `file` (of length `len`) and where it ends.
fn last_line(file: &mut File, path: &Path, len: u64) -> Result<(Vec<u8>, u64)> {
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(start))
            .and_then(|_| Read::by_ref(file).take(len - start).read_to_end(&mut buf))
            .map_err(|e| io_error(path, "reading", e))?;
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                return Err(corrupt(path, "no complete line"));
            }
            window *= 2;
            continue;
        };
        match buf[..end].iter().rposition(|b| *b == b'\n') {
            Some(begin) => return Ok((buf[begin + 1..end].to_vec(), start + end as u64 + 1)),
            None if start == 0 => return Ok((buf[..end].to_vec(), end as u64 + 1)),
            None => window *= 2,
        }
    }
}

/// Appends one line to a live, open run under its stripe lock: `line` is built
/// from the run's byte count so far.
fn append_line(inner: &Inner, run: &RunId, build: impl FnOnce(u64) -> Result<Line>) -> Result<()> {
    let path = inner.layout.reply(run);
    let _g = inner.stripes.lock(&path)?;
    let Some((_, header_len)) = live_header(inner, &path, run)? else {
        return Err(run_missing().with_key(run));
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(&path, "opening", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error(&path, "reading", e))?
        .len();
    let (last, end) = last_line(&mut file, &path, len)?;
    let bytes = if end <= header_len {
        0
    } else {
        match serde_json::from_slice::<Line>(&last) {
            Ok(Line::Chunk { b, .. }) => b,
            Ok(Line::End { end }) => return Err(run_finished(end).with_key(run)),
            Err(_) => return Err(corrupt(&path, "a malformed line")),
        }
    };
    let line = build(bytes).map_err(|e| e.with_key(run))?;
    let mut out = serde_json::to_vec(&line)
        .map_err(|e| Error::new(ErrorKind::Internal, "a line does not encode").with_source(e))?;
    out.push(b'\n');
    if end < len {
        // A tail torn by a crash mid-write: never acknowledged, cut off.
        file.set_len(end)
            .map_err(|e| io_error(&path, "truncating", e))?;
    }
    file.seek(SeekFrom::Start(end))
        .and_then(|_| file.write_all(&out))
        .map_err(|e| io_error(&path, "appending to", e))?;
    if inner.durability == Durability::Fsync {
        file.sync_data()
            .map_err(|e| io_error(&path, "syncing", e))?;
    }
    Ok(())
}

/// Where a reader stopped: the offset of the next chunk line and its byte
/// position, in the file of `nonce`.
#[derive(Clone)]
struct Cursor {
    nonce: String,
    next: u64,
    pos: u64,
}

/// Reads `run` from offset `from`, starting at `cursor` when it is for this file
/// and not past `from`; returns the read and the cursor after it.
fn read_run(
    inner: &Inner,
    run: &RunId,
    from: u64,
    cursor: Option<Cursor>,
) -> Result<(RunRead, Cursor)> {
    let path = inner.layout.reply(run);
    // One handle for the header and the chunks: a run replaced (expired and started
    // again) between two opens could otherwise be read with the old run's cursor.
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(run_missing().with_key(run));
        }
        Err(e) => return Err(io_error(&path, "opening", e)),
    };
    let (header, header_len) = header_of(&mut file, &path)?;
    if &header.run != run {
        return Err(collision(&path));
    }
    if header.deadline <= inner.now() {
        return Err(run_missing().with_key(run));
    }
    let cursor = match cursor {
        // Replaced by a new run of the same id since the last read.
        Some(c) if c.nonce != header.nonce => return Err(run_missing().with_key(run)),
        Some(c) if c.next <= from => c,
        _ => Cursor {
            nonce: header.nonce,
            next: 0,
            pos: header_len,
        },
    };
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(cursor.pos))
        .and_then(|_| file.read_to_end(&mut rest))
        .map_err(|e| io_error(&path, "reading", e))?;
    let mut read = RunRead::default();
    let mut next = cursor.next;
    let mut pos = cursor.pos;
    let mut consumed = 0usize;
    // Only complete lines: a line still being written is read next time.
    while let Some(n) = rest[consumed..].iter().position(|b| *b == b'\n') {
        let line = &rest[consumed..consumed + n];
        match serde_json::from_slice::<Line>(line) {
            Ok(Line::Chunk { t, .. }) => {
                if next >= from {
                    read.chunks.push(Chunk {
                        offset: next,
                        text: t,
                    });
                }
                next += 1;
            }
            Ok(Line::End { end }) => {
                read.finished = Some(end);
                break;
            }
            Err(_) => return Err(corrupt(&path, "a malformed line")),
        }
        consumed += n + 1;
        pos += (n + 1) as u64;
    }
    Ok((
        read,
        Cursor {
            nonce: cursor.nonce,
            next,
            pos,
        },
    ))
}

struct FileFollow {
    store: FileStore,
    run: RunId,
    cursor: Option<Cursor>,
}

impl FollowSource for FileFollow {
    fn read(&mut self, from: u64) -> BoxFuture<'_, Result<RunRead>> {
        async move {
            let run = self.run.clone();
            let cursor = self.cursor.clone();
            let (read, cursor) = self
                .store
                .blocking(move |inner| read_run(inner, &run, from, cursor))
                .await?;
            self.cursor = Some(cursor);
            Ok(read)
        }
        .boxed()
    }

    fn wait(&mut self, _next: u64, at_most: Duration) -> BoxFuture<'_, ()> {
        tokio::time::sleep(at_most.min(FOLLOW_POLL)).boxed()
    }
}

#[async_trait]
impl ReplyStream for FileStore {
    async fn start(&self, run: &RunId, ttl: Option<Duration>) -> Result<()> {
        let ttl = StoreSettings::ttl_or(ttl, self.inner.settings.reply_ttl).in_op("start")?;
        let run = run.clone();
        self.blocking(move |inner| {
            let path = inner.layout.reply(&run);
            let _g = inner.stripes.lock(&path)?;
            // A corrupt file is replaced: nothing in it can be served anyway.
            match live_header(inner, &path, &run) {
                Ok(Some(_)) => {
                    return Err(
                        Error::new(ErrorKind::AlreadyExists, "a live run has this id")
                            .with_key(&run),
                    );
                }
                Ok(None) => {}
                Err(e) if e.kind() == ErrorKind::Decode => {}
                Err(e) => return Err(e),
            }
            let header = Header {
                run: run.clone(),
                deadline: inner.now().plus(ttl),
                nonce: random_id(),
            };
            let mut bytes = serde_json::to_vec(&header).map_err(|e| {
                Error::new(ErrorKind::Internal, "a header does not encode").with_source(e)
            })?;
            bytes.push(b'\n');
            format::write_atomic(&path, &bytes, inner.durability)
        })
        .await
        .in_op("start")
    }

    async fn append(&self, run: &RunId, text: &str) -> Result<()> {
        // The value limit before the blocking pool; the run limit needs the file.
        check_chunk(&self.inner.settings, 0, text)
            .map_err(|e| e.with_operation("append").with_key(run))?;
        let (run, text) = (run.clone(), text.to_string());
        self.blocking(move |inner| {
            append_line(inner, &run, |bytes| {
                check_chunk(
                    &inner.settings,
                    usize::try_from(bytes).unwrap_or(usize::MAX),
                    &text,
                )?;
                Ok(Line::Chunk {
                    b: bytes + text.len() as u64,
                    t: text,
                })
            })
        })
        .await
        .in_op("append")
    }

    async fn finish(&self, run: &RunId, status: RunStatus) -> Result<()> {
        let run = run.clone();
        self.blocking(move |inner| append_line(inner, &run, |_| Ok(Line::End { end: status })))
            .await
            .in_op("finish")
    }

    async fn read(&self, run: &RunId, from: u64) -> Result<RunRead> {
        let run = run.clone();
        self.blocking(move |inner| read_run(inner, &run, from, None).map(|(read, _)| read))
            .await
            .in_op("read")
    }

    fn follow(&self, run: &RunId, from: u64, idle_timeout: Duration) -> ReplyEvents {
        let source = FileFollow {
            store: self.clone(),
            run: run.clone(),
            cursor: None,
        };
        follow_with(source, from, idle_timeout)
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        FileStore::capabilities(self)
    }
}
