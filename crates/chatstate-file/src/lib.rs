//! # chatstate-file
//!
//! The file backend: all four chatstate traits on a local folder. What a bot runs on
//! with `USE_REDIS=0`, or with no Redis at all — built to be trusted with users'
//! conversations on a single box.
//!
//! ## Layout
//!
//! - [`FileStore`] (this file): the store, its builder, and the record helpers the
//!   traits share. Every operation runs on tokio's blocking pool.
//! - `session`, `focus`, `counters`, `cache`: each trait, with the metadata its
//!   records carry.
//! - `export`: [`chatstate_core::Inventory`] — every record enumerated (folder by
//!   folder, with a cursor), read with its deadline, restored exactly with the same
//!   crash-safe write, for moves between backends.
//! - `paths`: where each record lives; ids become names that cannot escape the folder
//!   or collide. The folder layout is documented there and below.
//! - `format`: the record format (header with deadline and two CRC-32s, JSON
//!   metadata, raw payload) and the atomic write (temp file, fsync, rename, fsync of
//!   the folder).
//! - `stripes`: writer exclusion across threads and processes (256 `flock`ed lock
//!   files).
//! - `reply`: [`ReplyStream`](chatstate_core::ReplyStream) — one append-only file of
//!   JSON lines per run; followers poll it every 20 ms (the module says why polling
//!   rather than file notifications). Not part of the inventory: replies are
//!   short-lived and not moved between backends.
//! - `sweep`: the sweeper (expired records, stale temp files) and [`FileStore::verify`].
//!
//! ## Folder layout (for operators)
//!
//! ```text
//! <dir>/FORMAT                                          "chatstate-file 2"
//! <dir>/sessions/<tenant>/<channel>~<user>.s            session record + message window
//! <dir>/session-locks/<tenant>/<channel>~<user>~<name>.l   a session lock: holder, lease, fence
//! <dir>/focus/<scope>/<name>.f                          focus document (payload = the value)
//! <dir>/cache/<namespace>/<key>.k                       cache entry (payload = the value)
//! <dir>/counters/counters.c                             all counters + recently applied batch ids
//! <dir>/replies/<run>.r                                 a streamed reply: JSON lines, append-only
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
//!   hold across threads and across processes sharing the folder, however each
//!   spells it (the folder is canonicalized at open and stripes hash paths relative
//!   to it).
//! - **Private:** on Unix the folders the store creates are 0700 and its files 0600
//!   (before the umask), so other users of the box cannot read the conversations.
//!   A folder that already exists keeps its mode.
//! - **TTL:** an expired record is invisible at once (its deadline is in its
//!   header); the sweeper deletes it later, reading headers only, one folder entry
//!   at a time, so a folder of 100k expired sessions is swept without loading them.
//! - **Counters** live in one file so a batch is applied atomically with its batch id
//!   (a retried flush never counts twice). Each `add` rewrites that file: use the
//!   batched counter layer for per-message counts.
//! - **Size:** a record's metadata and payload together must be under 4 GiB (the
//!   header stores `u32` lengths); a write over that is `InvalidInput`, refused
//!   before anything is written. `max_value_bytes` (1 MiB by default) normally
//!   refuses such values first.
//! - `set_many` checks every value (against `max_value_bytes` and the record limit)
//!   before writing any, then writes each entry on its own: a crash in the middle
//!   can leave some entries written.
//!
//! ## What it must never do
//!
//! Write a record in place, follow an id out of its folder, or panic on a file's
//! contents.

#![warn(missing_docs)]

mod batch;
mod cache;
mod counters;
mod export;
mod focus;
mod format;
mod paths;
mod reply;
mod session;
mod stripes;
mod sweep;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chatstate_core::{
    Config, Error, ErrorKind, Result, SharedClock, StoreSettings, Timestamp, system_clock,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use format::Durability;
pub use sweep::{SweepReport, VerifyReport};

use format::{Kind, Record, TMP_PREFIX};
use paths::Layout;
use stripes::Stripes;

/// The content of the `FORMAT` file this build writes and accepts.
const FORMAT_LINE: &str = "chatstate-file 2";
/// The format before lock stripes were named by the path relative to the
/// canonical folder: the same records, so it is upgraded in place at open, and a
/// process of that older build then refuses the folder instead of locking
/// different stripes (which would lose appends and hand out one fence twice).
const FORMAT_LINE_1: &str = "chatstate-file 1";
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

    /// Opens the store, creating the folder if needed (mode 0700 on Unix). A folder
    /// written by another format version is a `Config` error.
    ///
    /// The folder is canonicalized (made absolute, symlinks resolved) once, here, so
    /// processes that spell it differently — `./chatstate-data`, `dir/.`, an absolute
    /// path, a symlink — share its locks.
    pub fn open(self) -> Result<FileStore> {
        self.settings.validate()?;
        format::ensure_dir(&self.dir.join("locks"), self.durability)?;
        // One folder, one root, however it was spelled: stripes hash paths relative
        // to this, and every path the store prints starts with it.
        let root = fs::canonicalize(&self.dir)
            .map_err(|e| format::io_error(&self.dir, "resolving the folder", e))?;
        let layout = Layout::new(root);
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
    let write = || format::write_atomic(&path, format!("{FORMAT_LINE}\n").as_bytes(), durability);
    match fs::read_to_string(&path) {
        Ok(s) if s.trim() == FORMAT_LINE => Ok(()),
        Ok(s) if s.trim() == FORMAT_LINE_1 => write(),
        Ok(s) => Err(Error::config(format!(
            "{} says {:?}; this build reads {FORMAT_LINE:?}",
            path.display(),
            s.trim().chars().take(64).collect::<String>()
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => write(),
        Err(e) => Err(format::io_error(&path, "reading", e)),
    }
}

/// The sweeper: one pass per interval (on the blocking pool) while the store lives.
async fn sweep_loop(store: Weak<Inner>, interval: Duration) {
    chatstate_core::background::every(store, interval, |inner: Arc<Inner>| async move {
        match tokio::task::spawn_blocking(move || sweep::sweep(&inner)).await {
            Ok(Ok(report)) if report.removed > 0 || report.corrupt > 0 || report.skipped > 0 => {
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

    /// The store's folder, canonicalized at open (absolute, symlinks resolved).
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

    /// What this store can do: its data outlives the store and the process.
    pub fn capabilities(&self) -> chatstate_core::Capabilities {
        chatstate_core::Capabilities::PERSISTENT
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

/// A corrupt record's metadata: names the file and where the JSON went wrong, never
/// the stored values (serde's message would quote them: phone numbers, messages).
fn meta_error(path: &Path, e: serde_json::Error) -> Error {
    let what = format!("file {} is corrupt: its metadata", path.display());
    chatstate_core::codec::json_decode_error(&what, &e)
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
        let meta = meta_json(meta)?;
        let bytes = format::encode(path, kind, deadline, &meta, payload)?;
        format::write_atomic(path, &bytes, self.durability)
    }
}

/// A record's metadata as the JSON it is stored as.
fn meta_json<M: Serialize>(meta: &M) -> Result<Vec<u8>> {
    serde_json::to_vec(meta)
        .map_err(|e| Error::new(ErrorKind::Internal, "metadata does not encode").with_source(e))
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
