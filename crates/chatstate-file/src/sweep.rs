//! The sweeper and the verifier.
//!
//! The sweeper walks `sessions/`, `session-locks/`, `focus/`, `cache/` (and
//! `replies/`, whose files start with a JSON header line instead) one folder
//! entry at a time (`read_dir` is streamed, never collected), reads only each file's
//! 32-byte header, and deletes a record whose deadline has passed — after taking its
//! stripe lock and reading the header again, so a record refreshed meanwhile stays.
//! Temporary files older than an hour (left by a crash mid-write) are removed; corrupt
//! files are counted and left for an operator. A file or folder it cannot read or
//! remove (permissions, I/O errors) is counted as skipped, logged, and the sweep goes
//! on. Empty group folders are removed.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use chatstate_core::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::Inner;
use crate::format::{self, HEADER_LEN, TMP_PREFIX, io_error};

/// A temporary file older than this is a leftover of a crash.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Record files looked at.
    pub scanned: u64,
    /// Expired records deleted.
    pub removed: u64,
    /// Files whose header does not decode (left in place, logged).
    pub corrupt: u64,
    /// Files and folders the sweep could not read or remove (permissions, I/O
    /// errors, a folder where a record should be): left in place, logged, and the
    /// sweep went on with the rest.
    pub skipped: u64,
    /// Stale temporary files deleted.
    pub stale_temp_files: u64,
}

/// What [`crate::FileStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Record files read in full.
    pub files: u64,
    /// Files that do not decode, with the reason.
    pub corrupt: Vec<(PathBuf, String)>,
}

/// Calls `f` for every entry of `dir`, streaming; a missing folder has none. A folder
/// that cannot be listed (wholly or from some entry on) is pushed to `unlistable`
/// and the walk goes on; an error of `f` stops it.
fn for_each_entry(
    dir: &Path,
    unlistable: &mut Vec<Error>,
    mut f: impl FnMut(fs::DirEntry) -> Result<()>,
) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            unlistable.push(io_error(dir, "listing", e));
            return Ok(());
        }
    };
    for entry in entries {
        match entry {
            Ok(entry) => f(entry)?,
            Err(e) => {
                unlistable.push(io_error(dir, "listing", e));
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Calls `f` for every file two levels below `kind_dir` (`kind/<group>/<file>`);
/// folders that cannot be listed go to `unlistable`.
fn for_each_file(
    kind_dir: &Path,
    unlistable: &mut Vec<Error>,
    mut f: impl FnMut(&Path, &str) -> Result<()>,
) -> Result<()> {
    let mut in_groups = Vec::new();
    for_each_entry(kind_dir, unlistable, |group| {
        if !group.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            return Ok(());
        }
        for_each_entry(&group.path(), &mut in_groups, |file| {
            let name = file.file_name();
            let name = name.to_string_lossy();
            f(&file.path(), &name)
        })
    })?;
    unlistable.append(&mut in_groups);
    Ok(())
}

/// Removes `path` if it is a temporary file older than [`STALE_TMP`]; returns
/// whether `name` is a temporary file at all.
fn stale_tmp(path: &Path, name: &str, report: &mut SweepReport) -> bool {
    if !name.starts_with(TMP_PREFIX) {
        return false;
    }
    let old = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > STALE_TMP);
    if old {
        match fs::remove_file(path) {
            Ok(()) => report.stale_temp_files += 1,
            // Another sweeper (process) removed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => skip(report, &io_error(path, "removing", e)),
        }
    }
    true
}

/// Counts and logs a file or folder the sweep cannot read or remove, and goes on.
fn skip(report: &mut SweepReport, e: &Error) {
    report.skipped += 1;
    tracing::warn!(error = %e, "chatstate-file sweep skips what it cannot read or remove");
}

pub(crate) fn sweep(inner: &Inner) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let mut unlistable = Vec::new();
    // Temporary files of the one-level records (counters, FORMAT).
    let counters_dir = inner.layout.counters();
    for dir in [counters_dir.parent(), Some(inner.layout.root())]
        .into_iter()
        .flatten()
    {
        for_each_entry(dir, &mut unlistable, |entry| {
            let name = entry.file_name();
            stale_tmp(&entry.path(), &name.to_string_lossy(), &mut report);
            Ok(())
        })?;
    }
    for kind_dir in inner.layout.swept_dirs() {
        for_each_file(&kind_dir, &mut unlistable, |path, name| {
            if stale_tmp(path, name, &mut report) {
                return Ok(());
            }
            report.scanned += 1;
            match format::read_header(path) {
                Ok(Some(h)) if h.deadline <= inner.now() => {
                    // A stripe that cannot be locked is the store's problem, not this
                    // file's: that one stops the sweep.
                    let _g = inner.stripes.lock(path)?;
                    // Read again under the lock: a writer may have refreshed it.
                    match format::read_header(path) {
                        Ok(Some(h)) if h.deadline <= inner.now() => {
                            match format::remove(path, inner.durability) {
                                Ok(true) => report.removed += 1,
                                Ok(false) => {} // removed meanwhile
                                Err(e) => skip(&mut report, &e),
                            }
                        }
                        // Refreshed, gone, or damaged meanwhile: the next sweep sees it.
                        _ => {}
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Decode => {
                    report.corrupt += 1;
                    tracing::warn!(error = %e, "chatstate-file sweep found a corrupt file");
                }
                Err(e) => skip(&mut report, &e),
            }
            Ok(())
        })?;
        // Drop group folders that are now empty (remove_dir fails on a non-empty one,
        // and a writer that loses the race recreates its folder).
        for_each_entry(&kind_dir, &mut unlistable, |group| {
            let _ = fs::remove_dir(group.path());
            Ok(())
        })?;
    }
    // Streamed replies: one level, a JSON header line instead of a record header.
    for_each_entry(&inner.layout.replies_dir(), &mut unlistable, |entry| {
        let path = entry.path();
        if stale_tmp(&path, &entry.file_name().to_string_lossy(), &mut report) {
            return Ok(());
        }
        report.scanned += 1;
        match crate::reply::expired(inner, &path) {
            Ok(true) => {
                let _g = inner.stripes.lock(&path)?;
                if matches!(crate::reply::expired(inner, &path), Ok(true)) {
                    match format::remove(&path, inner.durability) {
                        Ok(true) => report.removed += 1,
                        Ok(false) => {}
                        Err(e) => skip(&mut report, &e),
                    }
                }
            }
            Ok(false) => {}
            Err(e) if e.kind() == ErrorKind::Decode => {
                report.corrupt += 1;
                tracing::warn!(error = %e, "chatstate-file sweep found a corrupt file");
            }
            Err(e) => skip(&mut report, &e),
        }
        Ok(())
    })?;
    for e in &unlistable {
        skip(&mut report, e);
    }
    Ok(report)
}

pub(crate) fn verify(inner: &Inner) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut check = |path: &Path| -> Result<()> {
        report.files += 1;
        let outcome = fs::read(path)
            .map_err(|e| io_error(path, "reading", e))
            .and_then(|bytes| {
                let header = format::decode_header(path, &bytes)?;
                if bytes.len() != HEADER_LEN + header.body_len
                    || crc32fast::hash(&bytes[HEADER_LEN..]) != header.body_crc
                {
                    return Err(chatstate_core::Error::decode(
                        "body length or checksum mismatch",
                    ));
                }
                serde_json::from_slice::<serde_json::Value>(
                    &bytes[HEADER_LEN..HEADER_LEN + header.meta_len],
                )
                .map_err(|_| chatstate_core::Error::decode("metadata is not JSON"))?;
                Ok(())
            });
        match outcome {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::Decode => {
                report
                    .corrupt
                    .push((path.to_path_buf(), e.message().to_string()));
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    let mut unlistable = Vec::new();
    for kind_dir in inner.layout.swept_dirs() {
        for_each_file(&kind_dir, &mut unlistable, |path, name| {
            if name.starts_with(TMP_PREFIX) {
                return Ok(());
            }
            check(path)
        })?;
    }
    if let Some(e) = unlistable.into_iter().next() {
        return Err(e);
    }
    let counters = inner.layout.counters();
    if counters.exists() {
        check(&counters)?;
    }
    Ok(report)
}
