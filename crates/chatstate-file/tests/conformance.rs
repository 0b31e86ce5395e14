//! The whole conformance suite against the file backend (fsync on), each fixture in
//! its own temporary folder, on a manual clock.

use std::sync::Arc;

use async_trait::async_trait;
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_core::{Error, ErrorKind, ManualClock, Result, StoreSettings};
use chatstate_file::FileStore;
use tempfile::TempDir;

struct FileBackend;

/// What a fixture keeps alive, and what reopen needs: the folder and the clock.
struct Guard {
    dir: Arc<TempDir>,
    clock: ManualClock,
}

fn fixture(dir: Arc<TempDir>, clock: ManualClock, settings: StoreSettings) -> Result<Fixture> {
    let open = || {
        FileStore::builder(dir.path())
            .settings(settings.clone())
            .clock(clock.shared())
            .open()
    };
    let store = Arc::new(open()?);
    // The same folder opened again: the "other instance" of the reply cases.
    let peer = Arc::new(open()?);
    Ok(Fixture {
        reads: store.clone(),
        sessions: store.clone(),
        focus: store.clone(),
        counters: store.clone(),
        replies: store.clone(),
        replies_peer: peer,
        cache: store,
        time: TimeControl::Manual(clock.clone()),
        settings,
        guard: Some(Box::new(Guard { dir, clock })),
    })
}

#[async_trait]
impl Backend for FileBackend {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let dir = tempfile::tempdir()
            .map_err(|e| Error::new(ErrorKind::Unavailable, "no temp dir").with_source(e))?;
        fixture(Arc::new(dir), ManualClock::starting_now(), settings)
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        let guard = old
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "not a file fixture"))?;
        fixture(guard.dir.clone(), guard.clock.clone(), old.settings.clone())
    }
}

chatstate_conformance::conformance_suite!(FileBackend, model_cases = 24);
