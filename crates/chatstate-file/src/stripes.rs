//! Writer exclusion, within a process and across processes sharing a folder.
//!
//! 256 lock files (`locks/00.lock` … `ff.lock`); a record's stripe comes from a hash
//! of its path relative to the store's (canonical) root, so processes that spell the
//! folder differently still agree on it. A writer takes the stripe's in-process mutex (threads of one process
//! share the open file, and `flock` does not exclude holders of the same open file)
//! and then an exclusive `flock` on it (other processes). Readers take no lock: every
//! write is an atomic rename, so a reader sees a whole old or a whole new record.
//!
//! A fixed set of stripes rather than a lock file per record: lock files are never
//! created or deleted on the hot path, and the folder never fills with them. Two
//! records in one stripe only wait for each other.

use std::fs::File;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chatstate_core::Result;

use crate::format::{io_error, new_file_options};
use crate::paths::Layout;

pub(crate) struct Stripes {
    layout: Layout,
    /// Opened on first use, so a store that touches few stripes holds few files.
    files: Vec<Mutex<Option<File>>>,
}

/// An exclusive hold on one stripe; released on drop.
pub(crate) struct StripeGuard<'a> {
    file: MutexGuard<'a, Option<File>>,
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        // Closing would release it too; unlocking explicitly keeps the file open for
        // the next writer. An unlock error leaves the lock to be released at exit.
        if let Some(f) = self.file.as_ref() {
            let _ = f.unlock();
        }
    }
}

impl Stripes {
    /// Stripes under `layout`'s `locks/` folder (which must exist).
    pub fn new(layout: &Layout) -> Self {
        Stripes {
            layout: layout.clone(),
            files: (0..256).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Holds the stripe of `record` exclusively, against threads and processes.
    pub fn lock(&self, record: &Path) -> Result<StripeGuard<'_>> {
        let stripe = self.layout.stripe_of(record);
        let mut slot = self.files[usize::from(stripe)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            let path = self.layout.lock_stripe(stripe);
            let file = new_file_options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_error(&path, "opening lock file", e))?;
            *slot = Some(file);
        }
        if let Some(file) = slot.as_ref() {
            file.lock()
                .map_err(|e| io_error(record, "locking the stripe of", e))?;
        }
        Ok(StripeGuard { file: slot })
    }
}
