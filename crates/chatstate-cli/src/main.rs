//! The `chatstate` command. See the crate docs (`chatstate_cli`) for the layout.
// The command dispatcher is one large async fn over every store call; its future
// type is deep enough to pass rustc's default query depth in the test build.
#![recursion_limit = "256"]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use chatstate::{BackendKind, CacheKey, Config, FocusKey, SessionKey, Stores};
use chatstate_cli::demo::{self, DemoOptions, Scenario};
use chatstate_cli::{bench, conformance, ops};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// The short-term memory of chat apps, from the command line. The backend comes
/// from the environment: the file store in ./chatstate-data by default,
/// USE_REDIS=1 (with REDIS_URL) for Redis, CHATSTATE_BACKEND=memory.
#[derive(Parser)]
#[command(name = "chatstate", version)]
struct Cli {
    /// Print JSON instead of text (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the seed systems' workloads and print per operation: count, p50/p99,
    /// round trips beside a naive client, cache hit rate, counters flushed.
    Demo {
        /// Which workload (several allowed).
        #[arg(long, value_enum, default_value = "all")]
        scenario: Vec<Scenario>,
        /// Simulated users per scenario (each its own instance on Redis).
        #[arg(long, default_value_t = 8)]
        users: usize,
        /// Seconds each scenario runs.
        #[arg(long, default_value_t = 4.0)]
        duration: f64,
    },
    /// Backend reachable, server version, maxmemory-policy, TLS, latency, records
    /// per kind, file store check.
    Status {
        /// Skip counting records per kind: counting reads every record (a full
        /// scan), which on a large production Redis is real load.
        #[arg(long)]
        no_counts: bool,
    },
    /// Show one record.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// List records.
    List {
        #[command(subcommand)]
        what: List,
    },
    /// Every counter with its labels, bucket and value.
    Stats,
    /// Remove a tenant's sessions or a cache namespace (a dry run unless --yes).
    Purge {
        /// The tenant whose sessions to remove.
        #[arg(
            long,
            conflicts_with = "namespace",
            required_unless_present = "namespace"
        )]
        tenant: Option<String>,
        /// The cache namespace to remove.
        #[arg(long)]
        namespace: Option<String>,
        /// Only cache keys starting with this (with --namespace).
        #[arg(long, requires = "namespace", default_value = "")]
        prefix: String,
        /// Really remove them (without it: a dry run that counts).
        #[arg(long)]
        yes: bool,
    },
    /// Remove expired records of the file store now.
    Sweep,
    /// Write every record to a JSON lines file.
    Export {
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Cache entries too.
        #[arg(long)]
        include_cache: bool,
    },
    /// Restore records from a JSON lines file (idempotent).
    Import {
        /// The file to read.
        #[arg(long = "in")]
        input: PathBuf,
        /// Read and check every line, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy every record from the configured backend to another.
    Migrate {
        /// The target backend (its settings from the same environment).
        #[arg(long, value_enum)]
        to: Target,
        /// The target folder (file target).
        #[arg(long)]
        to_dir: Option<PathBuf>,
        /// Count what would be written, write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Cache entries too.
        #[arg(long)]
        include_cache: bool,
    },
    /// Run the conformance suite against the configured backend, under a fresh
    /// prefix or folder it removes afterwards; non-zero exit on a failure.
    Conformance {
        /// Only cases whose name contains this.
        #[arg(long)]
        only: Option<String>,
        /// Cases running at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Time chatstate on memory, file and Redis against raw moka and redis-rs
    /// (`cargo xtask bench` runs this with a server of its own).
    Bench {
        /// 2,000 samples per operation instead of 20,000.
        #[arg(long)]
        quick: bool,
        /// The Redis to measure (left out when not given).
        #[arg(long)]
        redis_url: Option<String>,
        /// Write the Markdown table between the markers of this file.
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write the JSON report here.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Write the SVG chart here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// A session and its message window.
    Session {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        channel: String,
        #[arg(long)]
        user: String,
    },
    /// A focus document.
    Focus {
        #[arg(long)]
        scope: String,
        #[arg(long)]
        name: String,
    },
    /// A counter, every label set and bucket.
    Counter {
        #[arg(long)]
        name: String,
    },
    /// A cache entry.
    Cache {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        key: String,
    },
}

#[derive(Subcommand)]
enum List {
    /// A tenant's sessions.
    Sessions {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Memory,
    File,
    Redis,
}

/// What went wrong, as one line.
type Failure = String;

fn main() -> ExitCode {
    let env_help =
        std::iter::once("Configuration (environment; durations take 300, 5m, 72h):".to_string())
            .chain(
                chatstate::config::env_vars()
                    .iter()
                    .map(|v| format!("  {:<42} default {}", v.name, v.default.replace('`', ""))),
            )
            .collect::<Vec<_>>()
            .join("\n");
    let matches = Cli::command().after_help(env_help).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatstate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("chatstate: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn fail(e: impl std::fmt::Display) -> Failure {
    e.to_string()
}

/// Prints `value` as JSON, or `text()` as text.
fn print<T: Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Failure> {
    if json {
        let mut out = serde_json::to_string_pretty(value).map_err(fail)?;
        out.push('\n');
        out_str(&out)
    } else {
        out_str(&text())
    }
}

/// Writes to stdout. A closed pipe (`chatstate list … | head -1`) ends the process
/// quietly with success, as other command-line tools do, instead of a panic; any
/// other write error is a failure.
fn out_str(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("cannot write the output: {e}")),
    }
}

/// A progress bar on a terminal; plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(len: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(len);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar }
    }

    fn step(&self, msg: &str) {
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(msg.to_string());
            }
            None => eprintln!("{msg}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

async fn open(config: &Config) -> Result<Stores, Failure> {
    Stores::open(config).await.map_err(fail)
}

async fn run(cli: Cli) -> Result<bool, Failure> {
    let json = cli.json;
    if let Command::Bench {
        quick,
        redis_url,
        markdown,
        json_out,
        svg,
    } = cli.command
    {
        return run_bench(json, quick, redis_url, markdown, json_out, svg).await;
    }
    let config = Config::from_env().map_err(fail)?;
    match cli.command {
        Command::Demo {
            scenario,
            users,
            duration,
        } => {
            if !(duration > 0.0 && duration <= 3_600.0) {
                return Err("--duration must be between 0 and 3600 seconds".into());
            }
            if users == 0 || users > 1_000 {
                return Err("--users must be between 1 and 1000".into());
            }
            let mut scenarios: Vec<Scenario> = Vec::new();
            for s in scenario.into_iter().flat_map(Scenario::expand) {
                if !scenarios.contains(&s) {
                    scenarios.push(s);
                }
            }
            let options = DemoOptions {
                scenarios,
                users,
                duration: Duration::from_secs_f64(duration),
            };
            let progress = Progress::new(options.scenarios.len() as u64);
            let reports = demo::run(&config, &options, |s, d| {
                progress.step(&format!(
                    "running {} with {users} users for {:.1} s",
                    serde_json::to_string(&s)
                        .unwrap_or_default()
                        .trim_matches('"'),
                    d.as_secs_f64()
                ))
            })
            .await
            .map_err(fail)?;
            progress.finish();
            let backend = ops::backend_name(config.backend);
            print(json, &reports, || demo::render(&reports, backend))?;
        }
        Command::Status { no_counts } => {
            let stores = open(&config).await?;
            let status = ops::status(&config, &stores, !no_counts)
                .await
                .map_err(fail)?;
            print(json, &status, || status.to_string())?;
            let healthy =
                status.reachable && status.verify.as_ref().is_none_or(|v| v.corrupt.is_empty());
            return Ok(healthy);
        }
        Command::Inspect { what } => {
            let stores = open(&config).await?;
            match what {
                Inspect::Session {
                    tenant,
                    channel,
                    user,
                } => {
                    let key = SessionKey::new(tenant, channel, user).map_err(fail)?;
                    let v = ops::inspect_session(&stores, &key).await.map_err(fail)?;
                    print(json, &v, || {
                        let mut s = format!(
                            "session {} — {} messages, version {}, created {}, last activity {}, ttl {}\n",
                            v.id,
                            v.message_count,
                            v.version,
                            v.created_at,
                            v.last_activity,
                            v.ttl_seconds.map_or("none".into(), |t| format!("{t} s"))
                        );
                        if let Some(sum) = &v.summary {
                            s.push_str(&format!(
                                "summary ({} chars): {sum}\n",
                                sum.chars().count()
                            ));
                        }
                        if let Some(f) = &v.focus {
                            s.push_str(&format!("focus: {f}\n"));
                        }
                        if v.paused {
                            s.push_str("paused\n");
                        }
                        for (role, content) in &v.messages {
                            s.push_str(&format!("  {role}: {content}\n"));
                        }
                        s
                    })?;
                }
                Inspect::Focus { scope, name } => {
                    let key = FocusKey::new(scope, name).map_err(fail)?;
                    let v = ops::inspect_focus(&stores, &key).await.map_err(fail)?;
                    print(json, &v, || {
                        format!(
                            "version {}, updated {}\n{}\n",
                            v.version, v.updated_at, v.value
                        )
                    })?;
                }
                Inspect::Counter { name } => {
                    let v = ops::inspect_counter(&stores, &name).await.map_err(fail)?;
                    print(json, &v, || counters_text(&v))?;
                }
                Inspect::Cache { namespace, key } => {
                    let key = CacheKey::new(namespace, key).map_err(fail)?;
                    let v = ops::inspect_cache(&stores, &key).await.map_err(fail)?;
                    print(json, &v, || {
                        let aliases = if v.aliases.is_empty() {
                            String::new()
                        } else {
                            format!(", aliases {}", v.aliases.join(" "))
                        };
                        format!(
                            "{} bytes, ttl {}{aliases}\n{}\n",
                            v.bytes,
                            v.ttl_seconds.map_or("none".into(), |t| format!("{t} s")),
                            v.value
                        )
                    })?;
                }
            }
        }
        Command::List {
            what: List::Sessions { tenant },
        } => {
            let stores = open(&config).await?;
            let keys = ops::list_sessions(&stores, &tenant).await.map_err(fail)?;
            let rows: Vec<[&str; 2]> = keys.iter().map(|k| [k.channel(), k.user()]).collect();
            print(json, &rows, || {
                let mut s: String = rows.iter().map(|[c, u]| format!("{c}\t{u}\n")).collect();
                s.push_str(&format!("{} sessions of tenant {tenant}\n", rows.len()));
                s
            })?;
        }
        Command::Stats => {
            let stores = open(&config).await?;
            let v = ops::counters(&stores).await.map_err(fail)?;
            print(json, &v, || counters_text(&v))?;
        }
        Command::Purge {
            tenant,
            namespace,
            prefix,
            yes,
        } => {
            let stores = open(&config).await?;
            let report = match (tenant, namespace) {
                (Some(t), _) => ops::purge_tenant(&stores, &t, yes).await,
                (None, Some(n)) => ops::purge_namespace(&stores, &n, &prefix, yes).await,
                (None, None) => return Err("give --tenant or --namespace".into()),
            }
            .map_err(fail)?;
            print(json, &report, || report.to_string())?;
        }
        Command::Sweep => {
            let stores = open(&config).await?;
            let v = ops::sweep(&config, &stores).await.map_err(fail)?;
            print(json, &v, || {
                format!(
                    "{}: {} files scanned, {} expired removed, {} corrupt; {}\n",
                    v.backend, v.scanned, v.removed, v.corrupt, v.note
                )
            })?;
        }
        Command::Export { out, include_cache } => {
            let stores = open(&config).await?;
            let r = ops::export(&stores, &out, include_cache)
                .await
                .map_err(fail)?;
            return report(json, &r);
        }
        Command::Import { input, dry_run } => {
            let stores = open(&config).await?;
            let r = ops::import(&stores, &input, dry_run).await.map_err(fail)?;
            return report(json, &r);
        }
        Command::Migrate {
            to,
            to_dir,
            dry_run,
            include_cache,
        } => {
            let stores = open(&config).await?;
            let to = match to {
                Target::Memory => BackendKind::Memory,
                Target::File => BackendKind::File,
                Target::Redis => BackendKind::Redis,
            };
            let r = ops::migrate(
                &config,
                &stores,
                to,
                to_dir.as_deref(),
                dry_run,
                include_cache,
            )
            .await
            .map_err(fail)?;
            return report(json, &r);
        }
        Command::Conformance { only, concurrency } => {
            let backend = Arc::new(conformance::EnvBackend::new(config));
            let cases: Vec<_> = chatstate_conformance::runner::all_cases()
                .into_iter()
                .filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o)))
                .collect();
            if cases.is_empty() {
                return Err("no conformance case matches --only".into());
            }
            if !json {
                out_str(&format!(
                    "conformance: {} cases against {} ({})\n",
                    cases.len(),
                    chatstate_conformance::Backend::name(backend.as_ref()),
                    backend.place()
                ))?;
            }
            let options = chatstate_conformance::runner::RunOptions {
                concurrency: concurrency.max(1),
                ..Default::default()
            };
            let mut stdout = std::io::stdout();
            let ran =
                conformance::run_and_report(backend.clone(), &cases, options, json, &mut stdout)
                    .await;
            // Whatever the run's reporting did (a closed pipe included), remove what
            // the run wrote before saying anything else.
            let cleaned = backend.clean_up().await;
            let ok = ran.map_err(fail)?;
            let cleaned = cleaned.map_err(fail)?;
            if !json {
                out_str(&format!("clean-up: {cleaned}\n"))?;
            }
            return Ok(ok);
        }
        Command::Bench { .. } => unreachable!("handled above"),
    }
    Ok(true)
}

fn counters_text(v: &[ops::CounterView]) -> String {
    let mut s: String = v
        .iter()
        .map(|c| {
            format!(
                "{}{}{} = {}\n",
                c.name,
                if c.labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", c.labels)
                },
                c.bucket
                    .as_ref()
                    .map_or(String::new(), |b| format!(" @{b}")),
                c.value
            )
        })
        .collect();
    s.push_str(&format!("{} counters\n", v.len()));
    s
}

/// Prints a move report; `false` (a non-zero exit) when any record failed.
fn report(json: bool, r: &chatstate::Report) -> Result<bool, Failure> {
    print(json, &ops::MoveReport::from(r), || r.to_string())?;
    Ok(r.total().failed == 0)
}

async fn run_bench(
    json: bool,
    quick: bool,
    redis_url: Option<String>,
    markdown: Option<PathBuf>,
    json_out: Option<PathBuf>,
    svg: Option<PathBuf>,
) -> Result<bool, Failure> {
    let size = if quick {
        bench::BenchSize::QUICK
    } else {
        bench::BenchSize::FULL
    };
    let steps = (bench::OPERATIONS.len() * if redis_url.is_some() { 3 } else { 2 }
        + if redis_url.is_some() { 2 } else { 1 }) as u64;
    let progress = Progress::new(steps);
    let report = bench::run(redis_url.as_deref(), size, |s| progress.step(s))
        .await
        .map_err(fail)?;
    progress.finish();
    let table = bench::markdown(&report);
    if let Some(path) = &markdown {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        std::fs::write(path, bench::splice(&old, &table))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &json_out {
        let doc = serde_json::to_string_pretty(&report).map_err(fail)?;
        std::fs::write(path, doc).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &svg {
        bench::chart(&report, path).map_err(fail)?;
    }
    print(json, &report, || table.clone())?;
    Ok(true)
}
