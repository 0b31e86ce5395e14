//! The suite as a list a program can run: every case by name ([`all_cases`]), and
//! [`run`], which runs them against one [`Backend`] outside `cargo test` — what
//! `chatstate conformance` does against a user's own Redis or folder.
//!
//! A case fails by panicking (an assertion); here each case runs in its own tokio
//! task, so a panic becomes [`CaseResult::Failed`] with the panic's message and the
//! next case runs. A case that takes longer than the timeout fails too.
//! The panic hook is left alone: a program that does not want the default hook's
//! lines on stderr installs its own around the run.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Backend, Ctx, Outcome};

/// A case's future, boxed so that every case has one type.
pub type CaseFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One conformance case: its name and how to run it.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name (the function in [`crate::cases`]).
    pub name: &'static str,
    /// Runs the case.
    pub run: fn(Ctx) -> CaseFuture,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Implementation detail of [`all_cases`].
#[doc(hidden)]
#[macro_export]
macro_rules! __case_table {
    (; $($case:ident),* $(,)?) => {
        vec![$($crate::runner::Case {
            name: stringify!($case),
            run: |ctx| Box::pin($crate::cases::$case(ctx)),
        }),*]
    };
}

/// Every case of the suite, in the order [`crate::conformance_suite!`] lists them
/// (the same list: the names are written once), then the model test
/// ([`MODEL_CASE`]).
pub fn all_cases() -> Vec<Case> {
    let mut cases: Vec<Case> = crate::__with_case_names! { __case_table {} };
    cases.push(Case {
        name: MODEL_CASE,
        run: |ctx| Box::pin(model(ctx)),
    });
    cases
}

/// The name of the model test in [`all_cases`] (as in [`crate::conformance_suite!`]).
pub const MODEL_CASE: &str = "model_matches_reference";

/// The model test ([`crate::model`]) as a case: 24 random sequences on a backend on
/// a manual clock, 6 on real time (each `Advance` sleeps), as the backends' own
/// suites run it. It builds its own runtime, so it runs on a thread of its own.
async fn model(ctx: Ctx) -> Outcome {
    let probe = ctx.open().await;
    let cases = match probe.time {
        crate::TimeControl::Manual(_) => 24,
        crate::TimeControl::Real => 6,
    };
    drop(probe);
    let backend = ctx.backend.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::model::run_shared(backend, cases)
        }));
        let _ = tx.send(run);
    });
    match rx.await {
        Ok(Ok(())) => Outcome::Passed,
        // The model test's own failure (seed and shrunk sequence), as the case's.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the model test's thread ended without a result"),
    }
}

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseResult {
    /// The behaviour holds.
    Passed,
    /// The stores report they lack what the case needs (the reason).
    Skipped(String),
    /// The behaviour does not hold (the failed assertion's message), or the case
    /// ran out of time.
    Failed(String),
}

/// A case's name, how it ended and how long it took.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case.
    pub name: &'static str,
    /// How it ended.
    pub result: CaseResult,
    /// Its wall time.
    pub elapsed: Duration,
}

/// Counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Cases that passed.
    pub passed: usize,
    /// Cases skipped by a capability the stores lack.
    pub skipped: usize,
    /// Cases that failed.
    pub failed: usize,
}

impl Summary {
    /// Whether no case failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// How [`run`] runs the cases.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Cases running at once (TTL cases on real time mostly wait).
    pub concurrency: usize,
    /// The time a case may take before it counts as failed.
    pub timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 8,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Runs `cases` against `backend` (call it inside a multi-threaded tokio runtime),
/// calling `on_case` as each one ends (in the order they end), and returns the
/// counts. Never panics on a failing case.
pub async fn run(
    backend: Arc<dyn Backend>,
    cases: &[Case],
    options: RunOptions,
    mut on_case: impl FnMut(&CaseReport),
) -> Summary {
    let limit = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for case in cases.iter().copied() {
        let ctx = Ctx::new(backend.clone());
        let limit = limit.clone();
        let timeout = options.timeout;
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring cannot fail.
            let _permit = limit.acquire_owned().await;
            let started = Instant::now();
            let mut task = tokio::spawn((case.run)(ctx));
            let result = match tokio::time::timeout(timeout, &mut task).await {
                Ok(Ok(Outcome::Passed)) => CaseResult::Passed,
                Ok(Ok(Outcome::Skipped(reason))) => CaseResult::Skipped(reason),
                Ok(Err(join)) => CaseResult::Failed(match join.try_into_panic() {
                    Ok(payload) => panic_message(payload.as_ref()),
                    Err(join) => format!("the case's task ended: {join}"),
                }),
                Err(_) => {
                    // Stop it, so it writes nothing after the run (and its clean-up).
                    task.abort();
                    let _ = task.await;
                    CaseResult::Failed(format!("no result within {timeout:?}"))
                }
            };
            CaseReport {
                name: case.name,
                result,
                elapsed: started.elapsed(),
            }
        });
    }
    let mut summary = Summary::default();
    while let Some(joined) = tasks.join_next().await {
        let report = match joined {
            Ok(report) => report,
            // The wrapper itself does nothing that panics; count it rather than lose it.
            Err(e) => CaseReport {
                name: "?",
                result: CaseResult::Failed(format!("the runner's task ended: {e}")),
                elapsed: Duration::ZERO,
            },
        };
        match &report.result {
            CaseResult::Passed => summary.passed += 1,
            CaseResult::Skipped(_) => summary.skipped += 1,
            CaseResult::Failed(_) => summary.failed += 1,
        }
        on_case(&report);
    }
    summary
}

/// The text of a panic payload (`panic!("...")` gives a `String` or a `&str`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the case panicked".to_string())
}
