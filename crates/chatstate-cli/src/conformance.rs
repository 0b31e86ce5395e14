//! `chatstate conformance`: the whole conformance suite against the configured
//! backend — a user's own Redis, a Valkey, a managed service, a folder — with every
//! fixture under a key prefix (Redis) or a subfolder (file) made for this run, and
//! everything it wrote removed at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chatstate::{
    BackendKind, Config, Error, ErrorKind, ManualClock, RedisStore, Result, StoreSettings,
};
use chatstate_conformance::{Backend, Fixture, TimeControl};
use chatstate_file::FileStore;
use chatstate_memory::MemoryStore;

/// The configured backend as a conformance [`Backend`]: each fixture fresh and
/// isolated, under this run's prefix or folder.
pub struct EnvBackend {
    config: Config,
    /// This run's id (random): part of every prefix and folder it makes.
    run: String,
    next: AtomicU64,
    /// Whether the file store's folder was there before this run (if not, the run
    /// removes it again when it is left empty).
    dir_existed: bool,
}

/// What a fixture keeps alive, and what reopening needs.
struct Guard {
    /// Redis: the fixture's prefix; file: its folder.
    place: String,
    clock: Option<ManualClock>,
}

impl EnvBackend {
    /// A backend for `config`, with a new random run id.
    pub fn new(config: Config) -> EnvBackend {
        let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
        EnvBackend {
            dir_existed: config.file_dir.exists(),
            config,
            run,
            next: AtomicU64::new(0),
        }
    }

    /// Where this run writes: the Redis key prefix stem, or the folder.
    pub fn place(&self) -> String {
        match self.config.backend {
            BackendKind::Memory => "process memory".into(),
            BackendKind::File => self.run_dir().display().to_string(),
            _ => format!("keys {}*", self.prefix_stem()),
        }
    }

    /// `<prefix>.conformance-<run>-` (a prefix allows `A-Z a-z 0-9 _ - .`, 64 at most).
    fn prefix_stem(&self) -> String {
        let mut base = self.config.key_prefix.clone();
        base.truncate(24);
        format!("{base}.conformance-{}-", self.run)
    }

    fn run_dir(&self) -> PathBuf {
        self.config
            .file_dir
            .join(format!(".conformance-{}", self.run))
    }

    async fn open_at(
        &self,
        place: String,
        clock: Option<ManualClock>,
        settings: StoreSettings,
    ) -> Result<Fixture> {
        let time = |clock: &ManualClock| TimeControl::Manual(clock.clone());
        match self.config.backend {
            BackendKind::Memory => {
                let clock = clock.unwrap_or_else(ManualClock::starting_now);
                let store = Arc::new(
                    MemoryStore::builder()
                        .settings(settings.clone())
                        .clock(clock.shared())
                        .build(),
                );
                let guard = Guard {
                    place,
                    clock: Some(clock.clone()),
                };
                Ok(Fixture::of_one(
                    store.clone(),
                    store,
                    time(&clock),
                    settings,
                    Some(Box::new(guard)),
                ))
            }
            BackendKind::File => {
                let clock = clock.unwrap_or_else(ManualClock::starting_now);
                let open = || {
                    FileStore::builder(&place)
                        .settings(settings.clone())
                        .clock(clock.shared())
                        .open()
                };
                // The same folder opened again: the "other instance".
                let (store, peer) = (Arc::new(open()?), Arc::new(open()?));
                let guard = Guard {
                    place,
                    clock: Some(clock.clone()),
                };
                Ok(Fixture::of_one(
                    store,
                    peer,
                    time(&clock),
                    settings,
                    Some(Box::new(guard)),
                ))
            }
            _ => {
                let mut config = self.config.clone();
                config.key_prefix = place.clone();
                config.store = settings.clone();
                config.redis.fail_fast = true;
                // A second client of the same keys: the "other instance".
                let store = Arc::new(RedisStore::from_config(&config).await?);
                let peer = Arc::new(RedisStore::from_config(&config).await?);
                let guard = Guard { place, clock: None };
                Ok(Fixture::of_one(
                    store,
                    peer,
                    TimeControl::Real,
                    settings,
                    Some(Box::new(guard)),
                ))
            }
        }
    }

    /// Removes everything this run wrote: the run's folder, or every key under the
    /// run's prefix (`SCAN` + `UNLINK`). Returns what was removed, in words.
    pub async fn clean_up(&self) -> Result<String> {
        match self.config.backend {
            BackendKind::Memory => Ok("nothing to remove (memory)".into()),
            BackendKind::File => {
                let dir = self.run_dir();
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| {
                        Error::new(
                            ErrorKind::Unavailable,
                            format!("cannot remove {}", dir.display()),
                        )
                        .with_source(e)
                    })?;
                }
                if !self.dir_existed {
                    // Only succeeds when empty: never removes anything else.
                    let _ = std::fs::remove_dir(&self.config.file_dir);
                }
                Ok(format!("removed {}", dir.display()))
            }
            _ => {
                // The store's own walk: every master of a Cluster, the master a
                // Sentinel names, or the one server.
                let store = RedisStore::from_config(&self.config).await?;
                let pattern = format!("{}*", self.prefix_stem());
                let removed = store.unlink_matching(&pattern).await?;
                Ok(format!("removed {removed} keys matching {pattern}"))
            }
        }
    }
}

#[async_trait]
impl Backend for EnvBackend {
    fn name(&self) -> &'static str {
        match self.config.backend {
            BackendKind::Memory => "memory",
            BackendKind::File => "file",
            _ => "redis",
        }
    }

    async fn open(&self, settings: StoreSettings) -> Result<Fixture> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let place = match self.config.backend {
            BackendKind::File => self.run_dir().join(n.to_string()).display().to_string(),
            _ => format!("{}{n}", self.prefix_stem()),
        };
        self.open_at(place, None, settings).await
    }

    async fn reopen(&self, old: &Fixture) -> Result<Fixture> {
        let guard = old
            .guard
            .as_ref()
            .and_then(|g| g.downcast_ref::<Guard>())
            .ok_or_else(|| Error::new(ErrorKind::Internal, "not a fixture of this run"))?;
        if self.config.backend == BackendKind::Memory {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "memory does not persist data",
            ));
        }
        self.open_at(
            guard.place.clone(),
            guard.clock.clone(),
            old.settings.clone(),
        )
        .await
    }
}

/// How a run went, for `--json`.
#[derive(Debug, serde::Serialize)]
pub struct CaseLine {
    /// The case.
    pub name: &'static str,
    /// `passed`, `skipped` or `failed`.
    pub result: &'static str,
    /// Why it was skipped or how it failed.
    pub detail: Option<String>,
    /// Wall time, milliseconds.
    pub ms: u128,
}

/// Runs `cases` against `backend`, writing a line per case to `out` as it ends
/// (text), or one JSON document at the end (`json`); returns whether every case
/// passed or was skipped. Panics of failing cases are caught and reported, never
/// printed by the default hook.
pub async fn run_and_report(
    backend: Arc<dyn Backend>,
    cases: &[chatstate_conformance::runner::Case],
    options: chatstate_conformance::runner::RunOptions,
    json: bool,
    out: &mut dyn std::io::Write,
) -> std::io::Result<bool> {
    use chatstate_conformance::runner::{self, CaseResult};
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut lines = Vec::new();
    let mut write_error = None;
    let summary = runner::run(backend, cases, options, |report| {
        let (result, detail) = match &report.result {
            CaseResult::Passed => ("passed", None),
            CaseResult::Skipped(why) => ("skipped", Some(why.clone())),
            CaseResult::Failed(why) => ("failed", Some(why.clone())),
        };
        let line = CaseLine {
            name: report.name,
            result,
            detail,
            ms: report.elapsed.as_millis(),
        };
        if !json {
            let text = match &line.detail {
                Some(d) => format!("{:<8} {} ({} ms): {d}", line.result, line.name, line.ms),
                None => format!("{:<8} {} ({} ms)", line.result, line.name, line.ms),
            };
            if let Err(e) = writeln!(out, "{text}") {
                write_error.get_or_insert(e);
            }
        }
        lines.push(line);
    })
    .await;
    std::panic::set_hook(hook);
    if let Some(e) = write_error {
        return Err(e);
    }
    if json {
        let doc = serde_json::json!({
            "passed": summary.passed,
            "skipped": summary.skipped,
            "failed": summary.failed,
            "cases": lines,
        });
        writeln!(out, "{doc}")?;
    } else {
        writeln!(
            out,
            "{} passed, {} skipped, {} failed",
            summary.passed, summary.skipped, summary.failed
        )?;
    }
    Ok(summary.ok())
}
