//! # chatstate-file
//!
//! The file backend: all four chatstate traits on a local folder. What a bot runs on
//! with `USE_REDIS=0`, or with no Redis at all — built to be trusted with users'
//! conversations on a single box.
//!
//! ## Layout
//!
//! - [`FileStore`] (this file): the store, its builder, the four trait impls. Every
//!   operation runs on tokio's blocking pool.
//! - `paths`: where each record lives; ids become names that cannot escape the folder
//!   or collide. The folder layout is documented there and below.
//! - `format`: the record format (header with deadline and two CRC-32s, JSON
//!   metadata, raw payload) and the atomic write (temp file, fsync, rename, fsync of
//!   the folder).
//! - `stripes`: writer exclusion across threads and processes (256 `flock`ed lock
//!   files).
//! - `sweep`: the sweeper (expired records, stale temp files) and [`FileStore::verify`].
//!
//! ## Folder layout (for operators)
//!
//! ```text
//! <dir>/FORMAT                                          "chatstate-file 1"
//! <dir>/sessions/<tenant>/<channel>~<user>.s            session record + message window
//! <dir>/session-locks/<tenant>/<channel>~<user>~<name>.l   a session lock: holder, lease, fence
//! <dir>/focus/<scope>/<name>.f                          focus document (payload = the value)
//! <dir>/cache/<namespace>/<key>.k                       cache entry (payload = the value)
//! <dir>/counters/counters.c                             all counters + recently applied batch ids
//! <dir>/locks/00.lock … ff.lock                         writer lock stripes
//! ```
//!
//! A name component is `<up to 24 readable chars>-<32 hex digits of SHA-256(id)>`, so
//! `ls sessions/` shows `acme-5d41…`. Each record file starts with a 32-byte header
//! (`CSF1`, kind, deadline, lengths, CRC-32 of body and of header), then JSON
//! metadata (the full ids, versions, timestamps; a session's messages), then the raw
//! payload. `tail -c +33 FILE` shows the JSON.
//!
//! ## Guarantees
//!
//! - **Durable:** with [`Durability::Fsync`] (the default) an acknowledged write has
//!   been fsynced and renamed into place and its folder fsynced; a crash of the
//!   process or the machine leaves the old record or the new one, never a torn one.
//! - **Corruption is contained:** a truncated or garbled file is a `Decode` error for
//!   that key, naming the file; every other key still works, listings skip it (with a
//!   warning), and `delete` removes it.
//! - **Concurrency:** writers of a record hold its stripe lock (in-process mutex +
//!   `flock`), so appends, counter adds, compare-and-set updates and session locks
//!   hold across threads and across processes sharing the folder.
//! - **TTL:** an expired record is invisible at once (its deadline is in its
//!   header); the sweeper deletes it later, reading headers only, one folder entry
//!   at a time, so a folder of 100k expired sessions is swept without loading them.
//! - **Counters** live in one file so a batch is applied atomically with its batch id
//!   (a retried flush never counts twice). Each `add` rewrites that file: use the
//!   batched counter layer for per-message counts.
//! - `set_many` checks every value before writing any, then writes each entry on its
//!   own: a crash in the middle can leave some entries written.
//!
//! ## What it must never do
//!
//! Write a record in place, follow an id out of its folder, or panic on a file's
//! contents.

#![warn(missing_docs)]

mod format;
mod paths;
mod stripes;
mod sweep;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::check_lock_name;
use chatstate_core::key::check_scope;
use chatstate_core::model::{check_put, checked_counter_add, random_id};
use chatstate_core::{
    AppendReceipt, BatchOutcome, Bucket, CacheKey, Config, CounterBatch, CounterKey, CounterSink,
    Error, ErrorKind, Expected, FocusDoc, FocusKey, FocusStore, KvCache, Labels, Lease,
    LoadedSession, Message, NewMessage, Page, PutMode, Result, Session, SessionKey, SessionPatch,
    SessionStore, SharedClock, StoreSettings, Timestamp, system_clock,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use format::Durability;
pub use sweep::{SweepReport, VerifyReport};

use format::{Kind, NEVER, Record, TMP_PREFIX};
use paths::Layout;
use stripes::Stripes;

/// The content of the `FORMAT` file this build writes and accepts.
const FORMAT_LINE: &str = "chatstate-file 1";
/// How often the sweeper runs, by default.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

struct Inner {
    layout: Layout,
    settings: StoreSettings,
    clock: SharedClock,
    durability: Durability,
    stripes: Stripes,
    sweeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = self
            .sweeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Configures a [`FileStore`].
#[derive(Debug)]
pub struct FileStoreBuilder {
    dir: PathBuf,
    settings: StoreSettings,
    clock: SharedClock,
    durability: Durability,
    sweep_interval: Option<Duration>,
}

impl FileStoreBuilder {
    /// The TTLs, window and limits.
    pub fn settings(mut self, settings: StoreSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The clock deadlines are read from (the system clock by default).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Whether writes are fsynced ([`Durability::Fsync`], the default).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// How often the background sweeper runs; `None` for no sweeper (call
    /// [`FileStore::sweep`] yourself).
    pub fn sweep_interval(mut self, interval: Option<Duration>) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Opens the store, creating the folder if needed. A folder written by another
    /// format version is a `Config` error.
    pub fn open(self) -> Result<FileStore> {
        self.settings.validate()?;
        let layout = Layout::new(self.dir);
        format::ensure_dir(&layout.root().join("locks"), self.durability)?;
        check_format_file(layout.root(), self.durability)?;
        let stripes = Stripes::new(&layout);
        let inner = Arc::new(Inner {
            layout,
            settings: self.settings,
            clock: self.clock,
            durability: self.durability,
            stripes,
            sweeper: Mutex::new(None),
        });
        if let (Some(interval), Ok(rt)) =
            (self.sweep_interval, tokio::runtime::Handle::try_current())
        {
            let task = rt.spawn(sweep_loop(Arc::downgrade(&inner), interval));
            *inner.sweeper.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        Ok(FileStore { inner })
    }
}

fn check_format_file(root: &Path, durability: Durability) -> Result<()> {
    let path = root.join("FORMAT");
    match fs::read_to_string(&path) {
        Ok(s) if s.trim() == FORMAT_LINE => Ok(()),
        Ok(s) => Err(Error::config(format!(
            "{} says {:?}; this build reads {FORMAT_LINE:?}",
            path.display(),
            s.trim().chars().take(64).collect::<String>()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => format::write_atomic(
            &path,
            format!("{FORMAT_LINE}\n").as_bytes(),
            durability,
            &random_id(),
        ),
        Err(e) => Err(format::io_error(&path, "reading", e)),
    }
}

/// The sweeper: one pass per interval (on the blocking pool) while the store lives.
async fn sweep_loop(store: Weak<Inner>, interval: Duration) {
    chatstate_core::background::every(store, interval, |inner: Arc<Inner>| async move {
        match tokio::task::spawn_blocking(move || sweep::sweep(&inner)).await {
            Ok(Ok(report)) if report.removed > 0 || report.corrupt > 0 => {
                tracing::debug!(?report, "chatstate-file sweep")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "chatstate-file sweep failed"),
            Err(e) => tracing::warn!(error = %e, "chatstate-file sweep task failed"),
        }
    })
    .await
}

/// All four chatstate stores on a local folder. Cheap to clone; clones share state.
/// Several processes may open the same folder.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("dir", &self.inner.layout.root())
            .field("durability", &self.inner.durability)
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl FileStore {
    /// A builder for a store in `dir`.
    pub fn builder(dir: impl Into<PathBuf>) -> FileStoreBuilder {
        FileStoreBuilder {
            dir: dir.into(),
            settings: StoreSettings::default(),
            clock: system_clock(),
            durability: Durability::Fsync,
            sweep_interval: Some(DEFAULT_SWEEP_INTERVAL),
        }
    }

    /// Opens the store in `config.file_dir` with `config.store` settings.
    pub fn from_config(config: &Config) -> Result<Self> {
        FileStore::builder(&config.file_dir)
            .settings(config.store.clone())
            .open()
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        self.inner.layout.root()
    }

    /// Deletes expired records and stale temporary files now; reads headers only.
    pub async fn sweep(&self) -> Result<SweepReport> {
        self.blocking(sweep::sweep).await
    }

    /// Reads and checks every record file in full; lists the ones that do not decode.
    pub async fn verify(&self) -> Result<VerifyReport> {
        self.blocking(sweep::verify).await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "a file store task failed").with_source(e)
            })?
    }
}

fn meta_error(path: &Path, e: serde_json::Error) -> Error {
    Error::new(
        ErrorKind::Decode,
        format!(
            "file {} is corrupt: metadata does not decode",
            path.display()
        ),
    )
    .with_source(e)
}

fn collision(path: &Path) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!(
            "file {} holds another key with the same name hash; refusing to use it",
            path.display()
        ),
    )
}

impl Inner {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Reads a live record of `kind` and decodes its metadata as `M`.
    fn read_live<M: DeserializeOwned>(
        &self,
        path: &Path,
        kind: Kind,
        now: Timestamp,
    ) -> Result<Option<(M, Record)>> {
        let Some(record) = format::read(path, kind)? else {
            return Ok(None);
        };
        if record.header.deadline <= now {
            return Ok(None);
        }
        let meta = serde_json::from_slice(record.meta()).map_err(|e| meta_error(path, e))?;
        Ok(Some((meta, record)))
    }

    fn write<M: Serialize>(
        &self,
        path: &Path,
        kind: Kind,
        deadline: Timestamp,
        meta: &M,
        payload: &[u8],
    ) -> Result<()> {
        let meta = serde_json::to_vec(meta).map_err(|e| {
            Error::new(ErrorKind::Internal, "metadata does not encode").with_source(e)
        })?;
        let bytes = format::encode(kind, deadline, &meta, payload);
        format::write_atomic(path, &bytes, self.durability, &random_id())
    }

    fn session_deadline(&self, now: Timestamp) -> Timestamp {
        now.plus(self.settings.session_ttl)
    }

    fn read_session(&self, key: &SessionKey, now: Timestamp) -> Result<Option<SessionFile>> {
        let path = self.layout.session(key);
        match self.read_live::<SessionFile>(&path, Kind::Session, now)? {
            Some((file, _)) if file.session.key == *key => Ok(Some(file)),
            Some(_) => Err(collision(&path)),
            None => Ok(None),
        }
    }

    fn write_session(&self, file: &SessionFile, now: Timestamp) -> Result<()> {
        let path = self.layout.session(&file.session.key);
        self.write(&path, Kind::Session, self.session_deadline(now), file, &[])
    }

    fn new_session(&self, key: &SessionKey, init: &SessionPatch, now: Timestamp) -> SessionFile {
        SessionFile {
            session: Session::new(key.clone(), random_id(), now, init),
            messages: Vec::new(),
        }
    }
}

/// A session file's metadata: the record and its message window.
#[derive(Serialize, Deserialize)]
struct SessionFile {
    session: Session,
    messages: Vec<Message>,
}

/// A session lock file's metadata.
#[derive(Serialize, Deserialize)]
struct LockFile {
    key: SessionKey,
    name: String,
    holder: Option<(String, Timestamp)>,
    fence: u64,
}

/// A focus file's metadata (the payload is the value).
#[derive(Serialize, Deserialize)]
struct FocusMeta {
    key: FocusKey,
    version: u64,
    updated_at: Timestamp,
}

/// A cache file's metadata (the payload is the value).
#[derive(Serialize, Deserialize)]
struct CacheMeta {
    key: CacheKey,
}

/// The counters file: every counter and the recently applied batch ids.
#[derive(Serialize, Deserialize, Default)]
struct CountersFile {
    values: Vec<(CounterKey, i64)>,
    applied: Vec<(String, Timestamp)>,
}

#[async_trait]
impl SessionStore for FileStore {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        let init = init.normalize(&self.inner.settings).in_op("create")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            if inner.read_session(&key, now)?.is_some() {
                return Err(
                    Error::new(ErrorKind::AlreadyExists, "a live session has this key")
                        .with_key(&key),
                );
            }
            let file = inner.new_session(&key, &init, now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("create")
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        let key = key.clone();
        self.blocking(move |inner| {
            if let Some(file) = inner.read_session(&key, inner.now())? {
                return Ok(file.session);
            }
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            if let Some(file) = inner.read_session(&key, now)? {
                return Ok(file.session);
            }
            let file = inner.new_session(&key, &SessionPatch::new(), now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("get_or_create")
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        let key = key.clone();
        self.blocking(move |inner| Ok(inner.read_session(&key, inner.now())?.map(|f| f.session)))
            .await
            .in_op("get")
    }

    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let now = inner.now();
            keys.iter()
                .map(|k| Ok(inner.read_session(k, now)?.map(|f| f.session)))
                .collect()
        })
        .await
        .in_op("get_many")
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        let key = key.clone();
        self.blocking(move |inner| {
            Ok(inner
                .read_session(&key, inner.now())?
                .map(|f| LoadedSession {
                    session: f.session,
                    messages: f.messages,
                }))
        })
        .await
        .in_op("load")
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        chatstate_core::model::check_append(&messages, &self.inner.settings)
            .in_op("append_messages")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let (mut file, created) = match inner.read_session(&key, now)? {
                Some(f) => (f, false),
                None => (inner.new_session(&key, &SessionPatch::new(), now), true),
            };
            for m in messages {
                file.session.message_count += 1;
                file.messages
                    .push(m.into_message(file.session.message_count, now));
            }
            let window = inner.settings.window_size;
            if file.messages.len() > window {
                let excess = file.messages.len() - window;
                file.messages.drain(..excess);
            }
            file.session.last_activity = now;
            inner.write_session(&file, now)?;
            Ok(AppendReceipt {
                message_count: file.session.message_count,
                window_len: file.messages.len(),
                created,
            })
        })
        .await
        .in_op("append_messages")
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let patch = patch.normalize(&self.inner.settings).in_op("update")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let mut file = inner
                .read_session(&key, now)?
                .ok_or_else(|| Error::not_found("no live session has this key").with_key(&key))?;
            if let Expected::Version(want) = expected
                && file.session.version != want
            {
                return Err(Error::conflict(format!(
                    "expected version {want}, the session is at version {}",
                    file.session.version
                ))
                .with_key(&key));
            }
            file.session.apply(&patch, now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("update")
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let Some(mut file) = inner.read_session(&key, now)? else {
                return Ok(false);
            };
            file.session.last_activity = now;
            inner.write_session(&file, now)?;
            Ok(true)
        })
        .await
        .in_op("touch")
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            let path = inner.layout.session(&key);
            match inner.read_live::<SessionFile>(&path, Kind::Session, now)? {
                Some((file, _)) if file.session.key != key => Err(collision(&path)),
                Some((_, record)) => Ok(Some(now.until(record.header.deadline))),
                None => Ok(None),
            }
        })
        .await
        .in_op("ttl")
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        check_scope("tenant", tenant).in_op("list")?;
        chatstate_core::model::check_list_limit(limit).in_op("list")?;
        if let Some(c) = &cursor
            && !is_record_name(c)
        {
            return Err(Error::invalid_input("list cursor is malformed").with_operation("list"));
        }
        let tenant = tenant.to_string();
        self.blocking(move |inner| {
            let dir = inner.layout.tenant_dir(&tenant);
            let names = record_names(&dir)?;
            let start = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Unbounded,
            };
            let now = inner.now();
            let mut items = Vec::new();
            let mut last_name = None;
            let mut more = false;
            for name in names.range((start, Bound::Unbounded)) {
                let path = dir.join(name);
                let file = match inner.read_live::<SessionFile>(&path, Kind::Session, now) {
                    Ok(Some((file, _))) => file,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "chatstate-file list skips an unreadable session");
                        continue;
                    }
                };
                if file.session.key.tenant() != tenant {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(file.session.key);
                last_name = Some(name.clone());
            }
            Ok(Page {
                items,
                next_cursor: if more { last_name } else { None },
            })
        })
        .await
        .in_op("list")
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        check_lock_name(name).in_op("try_lock")?;
        let lease = StoreSettings::check_ttl(lease).in_op("try_lock")?;
        let (key, name) = (key.clone(), name.to_string());
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&key, &name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let mut file = match inner.read_live::<LockFile>(&path, Kind::SessionLock, now)? {
                Some((f, _)) if f.key != key || f.name != name => return Err(collision(&path)),
                Some((f, _)) => f,
                None => LockFile {
                    key: key.clone(),
                    name: name.clone(),
                    holder: None,
                    fence: 0,
                },
            };
            if file.holder.as_ref().is_some_and(|(_, until)| *until > now) {
                return Ok(None);
            }
            file.fence += 1;
            let token = random_id();
            file.holder = Some((token.clone(), now.plus(lease)));
            let keep_until = inner.session_deadline(now).max(now.plus(lease));
            inner.write(&path, Kind::SessionLock, keep_until, &file, &[])?;
            Ok(Some(Lease {
                key,
                name,
                token,
                fence: file.fence,
            }))
        })
        .await
        .in_op("try_lock")
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        let held = held.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&held.key, &held.name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((mut file, _)) = inner.read_live::<LockFile>(&path, Kind::SessionLock, now)?
            else {
                return Ok(false);
            };
            match &file.holder {
                Some((token, until))
                    if *token == held.token && *until > now && file.key == held.key =>
                {
                    file.holder = Some((token.clone(), now.plus(lease)));
                    let keep_until = inner.session_deadline(now).max(now.plus(lease));
                    inner.write(&path, Kind::SessionLock, keep_until, &file, &[])?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
        .in_op("extend_lock")
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        let held = held.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&held.key, &held.name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((mut file, record)) =
                inner.read_live::<LockFile>(&path, Kind::SessionLock, now)?
            else {
                return Ok(false);
            };
            match &file.holder {
                Some((token, until))
                    if *token == held.token && *until > now && file.key == held.key =>
                {
                    // Keep the file (and its fence) until its retention runs out.
                    file.holder = None;
                    inner.write(&path, Kind::SessionLock, record.header.deadline, &file, &[])?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
        .in_op("release_lock")
    }
}

/// Removes a record under its (held) stripe lock: `true` if it was live or
/// unreadable (a corrupt file is still removed), `false` if missing or expired.
fn remove_record(inner: &Inner, path: &Path) -> Result<bool> {
    let live = match format::read_header(path) {
        Ok(Some(h)) => h.deadline > inner.now(),
        Ok(None) => return Ok(false),
        Err(e) if e.kind() == ErrorKind::Decode => true,
        Err(e) => return Err(e),
    };
    format::remove(path, inner.durability)?;
    Ok(live)
}

/// Whether `name` looks like a record file name this store makes.
fn is_record_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '~' | '.')
        })
}

/// The record file names in `dir` (none when it does not exist), without temp files.
fn record_names(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(format::io_error(dir, "listing", e)),
    };
    let mut names = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| format::io_error(dir, "listing", e))?;
        if let Some(name) = entry.file_name().to_str()
            && !name.starts_with(TMP_PREFIX)
            && is_record_name(name)
        {
            names.insert(name.to_string());
        }
    }
    Ok(names)
}

#[async_trait]
impl FocusStore for FileStore {
    async fn put(
        &self,
        key: &FocusKey,
        value: Bytes,
        mode: PutMode,
        ttl: Option<Duration>,
    ) -> Result<FocusDoc> {
        let settings = &self.inner.settings;
        let ttl = settings.focus_put_ttl(value.len(), ttl).in_op("put")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let existing = match inner.read_live::<FocusMeta>(&path, Kind::Focus, now) {
                Ok(Some((meta, _))) if meta.key != key => return Err(collision(&path)),
                Ok(Some((meta, _))) => Some(meta.version),
                Ok(None) => None,
                // A corrupt document can be overwritten, not compared against.
                Err(e) if e.kind() == ErrorKind::Decode && mode == PutMode::Overwrite => None,
                Err(e) => return Err(e),
            };
            let version = check_put(mode, existing).map_err(|e| e.with_key(&key))?;
            let meta = FocusMeta {
                key: key.clone(),
                version,
                updated_at: now,
            };
            inner.write(&path, Kind::Focus, now.plus(ttl), &meta, &value)?;
            Ok(FocusDoc {
                key,
                value,
                version,
                updated_at: now,
            })
        })
        .await
        .in_op("put")
    }

    async fn get(&self, key: &FocusKey) -> Result<Option<FocusDoc>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            read_focus(inner, &path, inner.now()).and_then(|doc| match doc {
                Some(d) if d.key != key => Err(collision(&path)),
                other => Ok(other),
            })
        })
        .await
        .in_op("get")
    }

    async fn delete(&self, key: &FocusKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.focus(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn list(&self, scope: &str) -> Result<Vec<FocusDoc>> {
        check_scope("focus scope", scope).in_op("list")?;
        let scope = scope.to_string();
        self.blocking(move |inner| {
            let dir = inner.layout.focus_dir(&scope);
            let now = inner.now();
            let mut docs = Vec::new();
            for name in record_names(&dir)? {
                match read_focus(inner, &dir.join(&name), now) {
                    Ok(Some(doc)) if doc.key.scope() == scope => docs.push(doc),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "chatstate-file list skips an unreadable focus document"),
                }
            }
            docs.sort_by(|a, b| a.key.name().cmp(b.key.name()));
            Ok(docs)
        })
        .await
        .in_op("list")
    }
}

fn read_focus(inner: &Inner, path: &Path, now: Timestamp) -> Result<Option<FocusDoc>> {
    Ok(inner
        .read_live::<FocusMeta>(path, Kind::Focus, now)?
        .map(|(meta, record)| FocusDoc {
            key: meta.key,
            value: Bytes::copy_from_slice(record.payload()),
            version: meta.version,
            updated_at: meta.updated_at,
        }))
}

impl Inner {
    fn read_counters(&self) -> Result<CountersFile> {
        let path = self.layout.counters();
        Ok(self
            .read_live::<CountersFile>(&path, Kind::Counters, Timestamp(i64::MIN))?
            .map(|(f, _)| f)
            .unwrap_or_default())
    }

    /// Runs `change` on the counters under their lock and writes the result.
    fn change_counters<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<CounterKey, i64>, &mut CountersFile) -> Result<(T, bool)>,
    ) -> Result<T> {
        let path = self.layout.counters();
        let _g = self.stripes.lock(&path)?;
        let mut file = self.read_counters()?;
        let mut values: BTreeMap<CounterKey, i64> =
            std::mem::take(&mut file.values).into_iter().collect();
        let (out, changed) = change(&mut values, &mut file)?;
        if changed {
            let now = self.now();
            file.applied.retain(|(_, until)| *until > now);
            file.values = values.into_iter().collect();
            self.write(&path, Kind::Counters, NEVER, &file, &[])?;
        }
        Ok(out)
    }
}

#[async_trait]
impl CounterSink for FileStore {
    async fn add(&self, key: &CounterKey, delta: i64) -> Result<i64> {
        let key = key.clone();
        self.blocking(move |inner| {
            inner.change_counters(|values, _| {
                let v = values.entry(key.clone()).or_insert(0);
                *v = checked_counter_add(&key, *v, delta)?;
                Ok((*v, true))
            })
        })
        .await
        .in_op("add")
    }

    async fn apply(&self, batch: &CounterBatch) -> Result<BatchOutcome> {
        let batch = batch.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            inner.change_counters(|values, file| {
                if file
                    .applied
                    .iter()
                    .any(|(id, until)| id == batch.id() && *until > now)
                {
                    return Ok((BatchOutcome::Duplicate, false));
                }
                let mut updates = Vec::with_capacity(batch.len());
                for (key, delta) in batch.deltas() {
                    let current = values.get(key).copied().unwrap_or(0);
                    updates.push((key.clone(), checked_counter_add(key, current, delta)?));
                }
                values.extend(updates);
                let retention = now.plus(inner.settings.batch_retention);
                file.applied.push((batch.id().to_string(), retention));
                Ok((BatchOutcome::Applied, true))
            })
        })
        .await
        .in_op("apply")
    }

    async fn get(&self, key: &CounterKey) -> Result<i64> {
        let key = key.clone();
        self.blocking(move |inner| {
            let file = inner.read_counters()?;
            Ok(file
                .values
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, v)| *v))
        })
        .await
        .in_op("get")
    }

    async fn get_many(&self, keys: &[CounterKey]) -> Result<Vec<i64>> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let values: BTreeMap<CounterKey, i64> =
                inner.read_counters()?.values.into_iter().collect();
            Ok(keys
                .iter()
                .map(|k| values.get(k).copied().unwrap_or(0))
                .collect())
        })
        .await
        .in_op("get_many")
    }

    async fn list(&self, name: &str, bucket: Option<Bucket>) -> Result<Vec<(Labels, i64)>> {
        check_scope("counter name", name).in_op("list")?;
        let name = name.to_string();
        self.blocking(move |inner| {
            let mut out: Vec<(Labels, i64)> = inner
                .read_counters()?
                .values
                .into_iter()
                .filter(|(k, _)| k.name() == name && k.bucket() == bucket)
                .map(|(k, v)| (k.labels().clone(), v))
                .collect();
            out.sort();
            Ok(out)
        })
        .await
        .in_op("list")
    }

    async fn delete(&self, key: &CounterKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            inner.change_counters(|values, _| {
                let existed = values.remove(&key).is_some();
                Ok((existed, existed))
            })
        })
        .await
        .in_op("delete")
    }
}

fn read_cache(inner: &Inner, key: &CacheKey, now: Timestamp) -> Result<Option<(Bytes, Timestamp)>> {
    let path = inner.layout.cache(key);
    match inner.read_live::<CacheMeta>(&path, Kind::Cache, now)? {
        Some((meta, _)) if meta.key != *key => Err(collision(&path)),
        Some((_, record)) => Ok(Some((
            Bytes::copy_from_slice(record.payload()),
            record.header.deadline,
        ))),
        None => Ok(None),
    }
}

#[async_trait]
impl KvCache for FileStore {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        let key = key.clone();
        self.blocking(move |inner| Ok(read_cache(inner, &key, inner.now())?.map(|(v, _)| v)))
            .await
            .in_op("get")
    }

    async fn get_many(&self, keys: &[CacheKey]) -> Result<Vec<Option<Bytes>>> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let now = inner.now();
            keys.iter()
                .map(|k| Ok(read_cache(inner, k, now)?.map(|(v, _)| v)))
                .collect()
        })
        .await
        .in_op("get_many")
    }

    async fn set(&self, key: &CacheKey, value: Bytes, ttl: Option<Duration>) -> Result<()> {
        self.set_many(vec![(key.clone(), value)], ttl)
            .await
            .in_op("set")
    }

    async fn set_many(&self, entries: Vec<(CacheKey, Bytes)>, ttl: Option<Duration>) -> Result<()> {
        let settings = &self.inner.settings;
        let ttl = settings
            .cache_write_ttl(entries.iter().map(|(k, v)| (k, v.len())), ttl)
            .in_op("set_many")?;
        self.blocking(move |inner| {
            for (key, value) in entries {
                let path = inner.layout.cache(&key);
                let _g = inner.stripes.lock(&path)?;
                let deadline = inner.now().plus(ttl);
                inner.write(&path, Kind::Cache, deadline, &CacheMeta { key }, &value)?;
            }
            Ok(())
        })
        .await
        .in_op("set_many")
    }

    async fn delete(&self, key: &CacheKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.cache(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let mut n = 0;
            for key in keys {
                let path = inner.layout.cache(&key);
                let _g = inner.stripes.lock(&path)?;
                n += u64::from(remove_record(inner, &path)?);
            }
            Ok(n)
        })
        .await
        .in_op("delete_many")
    }

    async fn exists(&self, key: &CacheKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| Ok(read_cache(inner, &key, inner.now())?.is_some()))
            .await
            .in_op("exists")
    }

    async fn expire(&self, key: &CacheKey, ttl: Duration) -> Result<bool> {
        let ttl = StoreSettings::check_ttl(ttl).in_op("expire")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.cache(&key);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((value, _)) = read_cache(inner, &key, now)? else {
                return Ok(false);
            };
            inner.write(
                &path,
                Kind::Cache,
                now.plus(ttl),
                &CacheMeta { key },
                &value,
            )?;
            Ok(true)
        })
        .await
        .in_op("expire")
    }

    async fn ttl(&self, key: &CacheKey) -> Result<Option<Duration>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            Ok(read_cache(inner, &key, now)?.map(|(_, deadline)| now.until(deadline)))
        })
        .await
        .in_op("ttl")
    }

    async fn clear_prefix(&self, namespace: &str, key_prefix: &str) -> Result<u64> {
        check_scope("cache namespace", namespace).in_op("clear_prefix")?;
        let (namespace, key_prefix) = (namespace.to_string(), key_prefix.to_string());
        self.blocking(move |inner| {
            let dir = inner.layout.cache_dir(&namespace);
            let mut removed = 0;
            for name in record_names(&dir)? {
                let path = dir.join(&name);
                let now = inner.now();
                let meta = match inner.read_live::<CacheMeta>(&path, Kind::Cache, now) {
                    Ok(Some((meta, _))) => meta,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "chatstate-file clear_prefix skips an unreadable entry");
                        continue;
                    }
                };
                if meta.key.namespace() == namespace && meta.key.key().starts_with(&key_prefix) {
                    let _g = inner.stripes.lock(&path)?;
                    removed += u64::from(remove_record(inner, &path)?);
                }
            }
            Ok(removed)
        })
        .await
        .in_op("clear_prefix")
    }
}
