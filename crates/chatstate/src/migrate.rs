//! Lossless moves between backends: [`export`] to JSON lines, [`import`] from them,
//! and [`migrate`] from one backend straight to another — idempotent, resumable,
//! with a dry run, a count report and progress. Built on
//! [`chatstate_core::Inventory`], which every backend implements
//! (`Stores::inventory`); exposed as library functions until a CLI crate lands.
//!
//! ```no_run
//! # async fn demo() -> chatstate::Result<()> {
//! use chatstate::{Config, Stores, migrate::{MigrateOptions, migrate}};
//! let file = Stores::open(&Config::from_env()?).await?; // USE_REDIS=0
//! let mut redis_config = Config::from_env()?;
//! redis_config.backend = chatstate::BackendKind::Redis;
//! // A migration must reach Redis itself: fail rather than open a fallback
//! // (CHATSTATE_REDIS_FALLBACK would otherwise migrate into the file store).
//! redis_config.redis.fail_fast = true;
//! redis_config.redis.fallback = chatstate::RedisFallback::None;
//! let redis = Stores::open(&redis_config).await?;
//! let dry = migrate(file.inventory.as_ref(), redis.inventory.as_ref(),
//!     MigrateOptions { dry_run: true, ..Default::default() }).await?;
//! println!("{dry}");
//! let done = migrate(file.inventory.as_ref(), redis.inventory.as_ref(),
//!     MigrateOptions::default()).await?;
//! assert_eq!(done.total().failed, 0);
//! # Ok(()) }
//! ```
//!
//! ## What moves, and what does not
//!
//! Every live session (record, every field, `version`, `message_count`,
//! timestamps, the message window, the side data, the remaining TTL), every focus document
//! (value, `version`, `updated_at`, TTL), every counter (name, labels, day/hour
//! bucket, exact value), and — with `include_cache` — every cache entry (bytes and
//! TTL). Not moved: session **locks and fencing numbers** (a lease belongs to a
//! process of the old deployment, and fences must only grow on the backend that
//! hands them out), **applied counter batch ids** (the values already include those
//! batches; an id guards a retry against the backend that applied it), and expired
//! records. The reasons are in [`chatstate_core::inventory`].
//!
//! ## Idempotent, with a conflict rule
//!
//! A restore writes the exact state (a counter's value is *set*, never added, so a
//! re-run never counts twice). Per record: absent in the target → written; equal →
//! `unchanged` (nothing written, TTL untouched); a target session *newer* by
//! `(version, message_count, last_activity)` — or focus document by `(version,
//! updated_at)` — is left alone and counted `skipped_newer`; anything else is
//! overwritten by the record. Counters and cache entries have no version: the
//! source's value wins. So run `migrate` (or `import`) **before** traffic reaches
//! the target, then switch. Re-running it before the target takes traffic is safe
//! and reports what is already there as `unchanged`; once the target takes
//! traffic, a re-run still leaves newer sessions and documents alone, but sets
//! counters and cache entries back to the source's values (losing increments made
//! since) and brings back records deleted on the target.
//!
//! ## Resuming
//!
//! Both ways work: re-run from the start (idempotent: done records count as
//! `unchanged`), or resume a [`migrate`] from the last [`Resume`] point its
//! progress callback reported (`MigrateOptions::resume`), which skips the pages
//! already done. An [`export`] is read-only on the source: re-run it. An [`import`]
//! that stopped (a malformed line, the target unreachable) is re-run on the same
//! file; records before the stop count as `unchanged`.
//!
//! ## The file format (JSON lines, format version 1)
//!
//! UTF-8, one JSON object per line, `\n`-separated. The first line is the header:
//!
//! ```text
//! {"format":"chatstate-export","version":1,"exported_at_ms":1795323723456,"include_cache":true}
//! ```
//!
//! then one line per record, with a `kind` and explicit fields (times are
//! milliseconds since the Unix epoch, UTC; `ttl_ms` is the time the record had
//! left when it was exported, and an import sets it again from the moment it
//! writes — time spent in the file does not count):
//!
//! ```text
//! {"kind":"session","tenant":"acme","channel":"whatsapp","user":"+5511…","id":"…","version":3,
//!  "message_count":25,"created_at_ms":…,"last_activity_ms":…,"updated_at_ms":…,"summary":"…"|null,
//!  "focus":"…"|null,"paused":false,"token_estimate":0,"metadata_b64":null,"context_b64":"Q1MxS…",
//!  "stats_b64":null,"ttl_ms":259199000,
//!  "messages":[{"seq":24,"role":"user","content":"oi","metadata_b64":null,"at_ms":…}, …],
//!  "data_b64":{"thread_id":"InRocl80MiI="}}
//! {"kind":"focus","scope":"…","name":"…","version":2,"updated_at_ms":…,"value_b64":"…","ttl_ms":…}
//! {"kind":"counter","name":"messages","labels":{"type":"text"},"bucket":"2026-11-22","value":"-42"}
//! {"kind":"cache","namespace":"customers","key":"42","value_b64":"…","ttl_ms":…}
//! {"kind":"cache","namespace":"contacts","key":"7","value_b64":"…","ttl_ms":…,"aliases":[{"namespace":"phone","key":"+5511999990000"}]}
//! ```
//!
//! (one line each in the file). Choices, and why:
//!
//! - **Bytes are standard base64** (RFC 4648 with padding, in fields ending
//!   `_b64`): metadata, context, stats, side data (`data_b64`, name → bytes; left
//!   out when a session has none, so lines of older exports, which lack it, import
//!   as sessions without side data), focus and cache values are the bytes the
//!   app stored — usually a codec header (`CS1B`/`CS1J`) and bincode or JSON, but
//!   any bytes are allowed. Re-encoding them into a "codec-neutral" JSON form would
//!   need the app's types (bincode is not self-describing) and would not be
//!   byte-exact; base64 is lossless and every language decodes it.
//! - **Cache aliases** (`aliases`: the entry's secondary keys, each a namespace
//!   and key, as `KvCache::set_with_aliases` gave them) are left out when an entry
//!   has none, so lines of older exports import as entries without aliases; an
//!   import gives each entry its aliases back, for the entry's TTL.
//! - **Counter values are decimal strings** (`"-9223372036854775808"`): an i64 can
//!   exceed the 2^53 that JavaScript numbers hold exactly (the protobuf JSON
//!   mapping does the same). Import also accepts a JSON integer. Other numbers
//!   (`version`, `message_count`, `seq`) are JSON integers.
//! - **A bucket** is its UTC date, `YYYY-MM-DD` for a day and `YYYY-MM-DDTHH` for an
//!   hour (as in Redis keys), `null` for none; labels are a JSON object.
//! - **Unknown fields are refused**, so a misspelt field never silently drops data.
//!
//! Reading: blank lines are skipped; the header must come first; an unknown
//! `kind`, a line that is not JSON, a missing or mistyped field, bad base64 or an
//! invalid key is an [`ErrorKind::Decode`] error naming the line number (never
//! quoting the line's values), never a panic. [`import`] writes as it reads: it
//! stops at the first bad line, after writing the (whole) records before it, and
//! nothing after. Check a file first with `dry_run`, which reads every line and
//! writes nothing.

mod jsonl;

use std::fmt;
use std::io::{BufRead, Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use chatstate_core::{
    Clock, Error, ErrorKind, Inventory, Record, RecordKind, RestoreMode, Restored, Result,
    SystemClock,
};

/// Records asked per [`Inventory::scan`] page, by default.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// Failures a [`Report`] lists one by one (every failure is counted).
pub const MAX_LISTED_FAILURES: usize = 100;
/// The longest line [`import`] reads, by default (64 MiB).
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Counts for one kind of record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindReport {
    /// Records read from the source (export, migrate) or the file (import).
    pub read: u64,
    /// Records written: lines to the file (export), records to the target
    /// (import, migrate). In a dry run, records that would be written.
    pub written: u64,
    /// Records the target already held exactly (nothing written).
    pub unchanged: u64,
    /// Records the target held in a newer state (left alone).
    pub skipped_newer: u64,
    /// Records that could not be read (a corrupt file) or that the target refused
    /// (over its value limit, a key of another type, ...).
    pub failed: u64,
}

impl KindReport {
    fn add(&mut self, other: &KindReport) {
        self.read += other.read;
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.skipped_newer += other.skipped_newer;
        self.failed += other.failed;
    }

    fn count(&mut self, outcome: Restored) {
        match outcome {
            Restored::Written => self.written += 1,
            Restored::Unchanged => self.unchanged += 1,
            Restored::SkippedNewer => self.skipped_newer += 1,
        }
    }
}

/// One record that failed: which (its key, never its value) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The record's kind.
    pub kind: RecordKind,
    /// The error's kind.
    pub error: ErrorKind,
    /// The error, as text (it names the key or file; it holds no stored value).
    pub message: String,
}

/// What an export, import or migration did, per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Sessions.
    pub sessions: KindReport,
    /// Focus documents.
    pub focus: KindReport,
    /// Counters.
    pub counters: KindReport,
    /// Cache entries.
    pub cache: KindReport,
    /// Whether this was a dry run (nothing written; `written` counts what would be).
    pub dry_run: bool,
    /// The first [`MAX_LISTED_FAILURES`] failures.
    pub failures: Vec<Failure>,
}

impl Report {
    /// An empty report of a run, and the restore mode that run writes with.
    fn begin(dry_run: bool) -> (Report, RestoreMode) {
        let report = Report {
            dry_run,
            ..Report::default()
        };
        let mode = if dry_run {
            RestoreMode::DryRun
        } else {
            RestoreMode::Write
        };
        (report, mode)
    }

    /// The counts of one kind.
    pub fn kind(&self, kind: RecordKind) -> &KindReport {
        match kind {
            RecordKind::Session => &self.sessions,
            RecordKind::Focus => &self.focus,
            RecordKind::Counter => &self.counters,
            RecordKind::Cache => &self.cache,
        }
    }

    fn kind_mut(&mut self, kind: RecordKind) -> &mut KindReport {
        match kind {
            RecordKind::Session => &mut self.sessions,
            RecordKind::Focus => &mut self.focus,
            RecordKind::Counter => &mut self.counters,
            RecordKind::Cache => &mut self.cache,
        }
    }

    /// The counts of every kind added up.
    pub fn total(&self) -> KindReport {
        let mut total = KindReport::default();
        for kind in RecordKind::ALL {
            total.add(self.kind(kind));
        }
        total
    }

    fn fail(&mut self, kind: RecordKind, error: &Error) {
        self.kind_mut(kind).failed += 1;
        if self.failures.len() < MAX_LISTED_FAILURES {
            self.failures.push(Failure {
                kind,
                error: error.kind(),
                message: error.to_string(),
            });
        }
    }
}

impl fmt::Display for Report {
    /// A table of the counts, one row per kind (for logs and a future CLI).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<8} {:>10} {:>10} {:>10} {:>14} {:>8}{}",
            "kind",
            "read",
            if self.dry_run {
                "would write"
            } else {
                "written"
            },
            "unchanged",
            "skipped_newer",
            "failed",
            if self.dry_run { "  (dry run)" } else { "" }
        )?;
        let rows = RecordKind::ALL
            .into_iter()
            .map(|k| (k.as_str(), *self.kind(k)))
            .chain([("total", self.total())]);
        for (name, r) in rows {
            writeln!(
                f,
                "{name:<8} {:>10} {:>10} {:>10} {:>14} {:>8}",
                r.read, r.written, r.unchanged, r.skipped_newer, r.failed
            )?;
        }
        Ok(())
    }
}

/// Where a [`migrate`] resumes: the kind it was walking and the cursor of the next
/// page (`None`: the kind's first page). Kinds are walked in
/// [`RecordKind::ALL`]'s order, so every kind before `kind` is done.
///
/// Its text form (`session`, or `session <cursor>`) is what a CLI would print and
/// take back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The kind being walked.
    pub kind: RecordKind,
    /// The next page of that kind.
    pub cursor: Option<String>,
}

impl fmt::Display for Resume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cursor {
            Some(c) => write!(f, "{} {c}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl FromStr for Resume {
    type Err = Error;

    fn from_str(s: &str) -> Result<Resume> {
        let (kind, cursor) = match s.split_once(' ') {
            Some((k, c)) => (k, Some(c.to_string())),
            None => (s, None),
        };
        Ok(Resume {
            kind: kind.parse()?,
            cursor,
        })
    }
}

/// Where a run is, for a progress display: called after every page (export,
/// migrate) or every [`DEFAULT_PAGE_SIZE`] lines (import), and once at the end.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The kind being walked (import: of the last line read).
    pub kind: RecordKind,
    /// The counts so far.
    pub report: &'a Report,
    /// Migrate: where to resume from if the run stops now (`None` once done).
    pub resume: Option<&'a Resume>,
    /// Import: the last line read.
    pub line: Option<u64>,
}

/// A progress callback (a future CLI attaches a progress bar).
pub type ProgressFn = Arc<dyn Fn(&Progress<'_>) + Send + Sync>;

fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// Options of [`export`].
#[derive(Clone)]
pub struct ExportOptions {
    /// Whether cache entries are exported too (default `false`: a cache can be
    /// rebuilt, and is often the bulk of the data).
    pub include_cache: bool,
    /// Records asked per page ([`DEFAULT_PAGE_SIZE`]).
    pub page_size: usize,
    /// Called after every page.
    pub progress: ProgressFn,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            include_cache: false,
            page_size: DEFAULT_PAGE_SIZE,
            progress: no_progress(),
        }
    }
}

/// Options of [`import`].
#[derive(Clone)]
pub struct ImportOptions {
    /// Read and check every line, decide every record, write nothing.
    pub dry_run: bool,
    /// Whether cache lines are imported (default `true`: whatever the file holds).
    pub include_cache: bool,
    /// The longest line read ([`DEFAULT_MAX_LINE_BYTES`]); a longer one is a
    /// `Decode` error naming it.
    pub max_line_bytes: usize,
    /// Called every [`DEFAULT_PAGE_SIZE`] lines and at the end.
    pub progress: ProgressFn,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            dry_run: false,
            include_cache: true,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            progress: no_progress(),
        }
    }
}

/// Options of [`migrate`].
#[derive(Clone)]
pub struct MigrateOptions {
    /// Read everything, decide every record against the target, write nothing.
    pub dry_run: bool,
    /// Whether cache entries move too (default `false`).
    pub include_cache: bool,
    /// Records asked per page ([`DEFAULT_PAGE_SIZE`]).
    pub page_size: usize,
    /// Resume from here (a point the progress callback reported) instead of the
    /// start.
    pub resume: Option<Resume>,
    /// Called after every page, with the point to resume from.
    pub progress: ProgressFn,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            dry_run: false,
            include_cache: false,
            page_size: DEFAULT_PAGE_SIZE,
            resume: None,
            progress: no_progress(),
        }
    }
}

macro_rules! debug_options {
    ($t:ty, $($field:ident),*) => {
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}
debug_options!(ExportOptions, include_cache, page_size);
debug_options!(ImportOptions, dry_run, include_cache, max_line_bytes);
debug_options!(MigrateOptions, dry_run, include_cache, page_size, resume);

fn kinds(include_cache: bool) -> impl Iterator<Item = RecordKind> {
    RecordKind::ALL
        .into_iter()
        .filter(move |k| include_cache || *k != RecordKind::Cache)
}

fn io_error(what: &'static str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Unavailable, what).with_source(e)
}

/// Writes every live record of `from` to `out` as JSON lines (the format in the
/// module docs), a header first. Returns the counts: `read` and `written` per
/// kind, `failed` for records the source could not read (listed in
/// [`Report::failures`], naming the file or key). Blocking writes: pass a buffered
/// writer; it is flushed at the end.
pub async fn export(
    from: &dyn Inventory,
    out: &mut dyn Write,
    options: ExportOptions,
) -> Result<Report> {
    let mut report = Report::default();
    let header = jsonl::header_line(SystemClock.now(), options.include_cache)?;
    writeln!(out, "{header}").map_err(|e| io_error("writing the export failed", e))?;
    for kind in kinds(options.include_cache) {
        let mut cursor = None;
        loop {
            let page = from.scan(kind, cursor, options.page_size).await?;
            for e in &page.unreadable {
                report.fail(kind, e);
            }
            for record in &page.records {
                report.kind_mut(kind).read += 1;
                let line = jsonl::encode(record)?;
                writeln!(out, "{line}").map_err(|e| io_error("writing the export failed", e))?;
                report.kind_mut(kind).written += 1;
            }
            (options.progress)(&Progress {
                kind,
                report: &report,
                resume: None,
                line: None,
            });
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    out.flush()
        .map_err(|e| io_error("writing the export failed", e))?;
    Ok(report)
}

/// Restores one record into `to`, counting the outcome; a temporary error (the
/// target unreachable) stops the run, any other failure is counted and the run
/// goes on.
async fn restore_counted(
    to: &dyn Inventory,
    record: &Record,
    mode: RestoreMode,
    report: &mut Report,
) -> Result<()> {
    let kind = record.kind();
    match to.restore(record, mode).await {
        Ok(outcome) => report.kind_mut(kind).count(outcome),
        Err(e) if e.is_temporary() => return Err(e),
        Err(e) => report.fail(kind, &e),
    }
    Ok(())
}

/// Reads JSON lines written by [`export`] (or by anything following the format)
/// and restores every record into `to`, under the conflict rule. A malformed line
/// stops the import with a `Decode` error naming its line number; the records
/// before it were written whole, nothing after it (see the module docs). With
/// `dry_run`, every line is read and checked and every record decided, and nothing
/// is written.
pub async fn import(
    to: &dyn Inventory,
    input: &mut dyn BufRead,
    options: ImportOptions,
) -> Result<Report> {
    let (mut report, mode) = Report::begin(options.dry_run);
    let mut line = Vec::new();
    let mut n: u64 = 0;
    let mut header_seen = false;
    let mut last_kind = RecordKind::Session;
    loop {
        line.clear();
        let limit = u64::try_from(options.max_line_bytes.saturating_add(1)).unwrap_or(u64::MAX);
        let read = Read::take(&mut *input, limit)
            .read_until(b'\n', &mut line)
            .map_err(|e| io_error("reading the import failed", e))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > options.max_line_bytes {
            return Err(jsonl::line_error(
                n,
                format_args!("is longer than {} bytes", options.max_line_bytes),
            ));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !header_seen {
            jsonl::decode_header(n, &line)?;
            header_seen = true;
            continue;
        }
        let record = jsonl::decode(n, &line)?;
        last_kind = record.kind();
        if last_kind == RecordKind::Cache && !options.include_cache {
            continue;
        }
        report.kind_mut(last_kind).read += 1;
        restore_counted(to, &record, mode, &mut report).await?;
        if n.is_multiple_of(DEFAULT_PAGE_SIZE as u64) {
            (options.progress)(&Progress {
                kind: last_kind,
                report: &report,
                resume: None,
                line: Some(n),
            });
        }
    }
    if !header_seen {
        return Err(jsonl::line_error(
            n.max(1),
            "no header: the input is empty or not a chatstate export",
        ));
    }
    (options.progress)(&Progress {
        kind: last_kind,
        report: &report,
        resume: None,
        line: Some(n),
    });
    Ok(report)
}

/// Moves every live record from `from` to `to`, page by page, under the conflict
/// rule (see the module docs): idempotent — a re-run reports what is there as
/// `unchanged` — and resumable from the [`Resume`] point the progress callback
/// reports after each page. With `dry_run`, everything is read and decided against
/// the target, and nothing is written.
///
/// A temporary error of either side (unreachable, timed out) stops the run with
/// that error; resume from the last reported point, or re-run. A record the source
/// cannot read or the target refuses is counted as `failed`, listed in
/// [`Report::failures`], and the run goes on.
pub async fn migrate(
    from: &dyn Inventory,
    to: &dyn Inventory,
    options: MigrateOptions,
) -> Result<Report> {
    let (mut report, mode) = Report::begin(options.dry_run);
    let start = options.resume.clone();
    for kind in kinds(options.include_cache) {
        let mut cursor = match &start {
            Some(r) if kind < r.kind => continue,
            Some(r) if kind == r.kind => r.cursor.clone(),
            _ => None,
        };
        loop {
            let page = from.scan(kind, cursor, options.page_size).await?;
            for e in &page.unreadable {
                report.fail(kind, e);
            }
            for record in &page.records {
                report.kind_mut(kind).read += 1;
                restore_counted(to, record, mode, &mut report).await?;
            }
            let resume = match &page.next_cursor {
                Some(c) => Some(Resume {
                    kind,
                    cursor: Some(c.clone()),
                }),
                None => kinds(options.include_cache)
                    .find(|k| *k > kind)
                    .map(|next| Resume {
                        kind: next,
                        cursor: None,
                    }),
            };
            (options.progress)(&Progress {
                kind,
                report: &report,
                resume: resume.as_ref(),
                line: None,
            });
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_points_round_trip_as_text() {
        for r in [
            Resume {
                kind: RecordKind::Focus,
                cursor: None,
            },
            Resume {
                kind: RecordKind::Counter,
                cursor: Some("17 cs:cnt:{counters}:hits a=1".into()),
            },
        ] {
            assert_eq!(r.to_string().parse::<Resume>().unwrap(), r);
        }
        assert!("nope".parse::<Resume>().is_err());
    }
}
