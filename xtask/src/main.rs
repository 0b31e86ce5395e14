//! Project automation, run as `cargo xtask <command>`.
//!
//! - `test`: everything CI checks, in order: installs `redis-server` when it is
//!   missing (the Redis tests start their own servers and must run), `cargo fmt
//!   --check`, `cargo clippy` with `-D warnings`, the whole test suite
//!   (cargo-nextest when installed, else `cargo test`), the doc tests, `cargo doc`
//!   with `-D warnings` (no broken intra-doc link), then a summary
//!   of conformance cases the stores reported they cannot run (never silent).
//! - `bench [--quick] [--out FILE]`: `chatstate bench` (release build) against
//!   memory, file and Redis — its own `redis-server` on a free loopback port
//!   unless `REDIS_URL` is set — beside raw moka and redis-rs; writes the Markdown
//!   table between the markers of `BENCHMARKS.md` (or into `--out FILE`),
//!   `docs/bench.json` and the chart `docs/bench.svg`. `--quick` takes under two
//!   minutes.
//! - `bench --criterion [args]`: the criterion benchmarks (`cargo bench
//!   --workspace [args]`), e.g. `cargo xtask bench --criterion -- --quick`; the
//!   old spelling `cargo xtask bench -- --quick` still works.
//! - `soak [--kills N]`: the file store's SIGKILL crash test
//!   (`crates/chatstate-file/tests/crash.rs`) with N kills instead of CI's 25
//!   (default 1,000), then its result. Not part of `test`: it takes minutes.
//!
//! Hand-written on `std::process` only: it runs a handful of commands in order,
//! which needs no dependency (and keeps `cargo xtask` fast to build).

use std::env;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        Some("soak") => soak(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test | bench [--quick] [--out FILE] | bench --criterion [args] | soak [--kills N]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // xtask/ lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// A cargo command for `xtask test`'s steps. Incremental compilation is off unless the
/// caller set `CARGO_INCREMENTAL`: its caches roughly doubled the disk a full test build
/// takes (a CI run failed with "No space left on device" while linking), and a test run
/// from a clean clone gains nothing from them.
fn test_cargo(cargo: &str) -> Command {
    let mut cmd = Command::new(cargo);
    if env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

fn run(step: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("==> {step}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("{step}: could not start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{step} failed ({status})"))
    }
}

fn has_nextest() -> bool {
    Command::new(cargo())
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Makes sure `redis-server` and `redis-cli` are installed, installing Debian's
/// package when they are not (as root, with apt-get).
fn ensure_redis() -> Result<(), String> {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if have("redis-server") && have("redis-cli") {
        return Ok(());
    }
    eprintln!("==> installing redis-server (the Redis tests need it)");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let installed = apt(&["update", "-qq"])
        && apt(&["install", "-y", "-qq", "redis-server"])
        && have("redis-server");
    if !installed {
        return Err("redis-server is missing and could not be installed: \
                    install it (apt-get install redis-server) and run again"
            .into());
    }
    Ok(())
}

fn test() -> Result<(), String> {
    let cargo = cargo();
    ensure_redis()?;
    run(
        "cargo fmt --check",
        test_cargo(&cargo).args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy -D warnings",
        test_cargo(&cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;

    let skip_dir = root().join("target").join("conformance");
    let _ = std::fs::remove_dir_all(&skip_dir);
    std::fs::create_dir_all(&skip_dir).map_err(|e| format!("creating {skip_dir:?}: {e}"))?;

    let mut tests = test_cargo(&cargo);
    if has_nextest() {
        tests.args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ]);
    } else {
        eprintln!("(cargo-nextest not installed: using cargo test)");
        tests.args([
            "test",
            "--workspace",
            "--all-features",
            "--lib",
            "--bins",
            "--tests",
        ]);
    }
    tests.env("CHATSTATE_SKIP_LOG_DIR", &skip_dir);
    run("tests", &mut tests)?;
    run(
        "doc tests",
        test_cargo(&cargo).args(["test", "--workspace", "--all-features", "--doc"]),
    )?;
    run(
        "cargo doc -D warnings (every intra-doc link resolves)",
        test_cargo(&cargo)
            .args(["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;

    run_examples(&cargo)?;

    let skipped = std::fs::read_to_string(skip_dir.join("skipped.log")).unwrap_or_default();
    let lines: Vec<&str> = skipped.lines().collect();
    if lines.is_empty() {
        eprintln!("conformance: no case skipped");
    } else {
        eprintln!(
            "conformance: {} case(s) skipped by the capabilities the stores report:",
            lines.len()
        );
        for line in lines {
            eprintln!("  {line}");
        }
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}

/// The seed systems' examples (`crates/chatstate-cli/examples`), each run on the
/// memory backend and on the file store in a fresh folder: they assert what they
/// show, so a broken one fails the step.
const EXAMPLES: [&str; 5] = ["luni", "lia", "saas", "whatsapp", "streaming"];

fn run_examples(cargo: &str) -> Result<(), String> {
    let dir = root().join("target").join("examples-data");
    let _ = std::fs::remove_dir_all(&dir);
    for example in EXAMPLES {
        for (backend, value) in [("CHATSTATE_BACKEND", "memory"), ("CHATSTATE_FILE_DIR", "")] {
            let mut cmd = test_cargo(cargo);
            cmd.args(["run", "-q", "-p", "chatstate-cli", "--example", example])
                .env_remove("USE_REDIS")
                .env_remove("CHATSTATE_BACKEND");
            let what = if value.is_empty() {
                cmd.env(backend, dir.join(example));
                "file"
            } else {
                cmd.env(backend, value);
                "memory"
            };
            run(&format!("example {example} ({what})"), &mut cmd)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// What `cargo xtask bench` was asked.
#[derive(Debug, Default, PartialEq)]
struct BenchArgs {
    quick: bool,
    out: Option<PathBuf>,
    /// `Some(args)`: run criterion with these arguments instead.
    criterion: Option<Vec<String>>,
}

fn parse_bench(args: &[String]) -> Result<BenchArgs, String> {
    let mut parsed = BenchArgs::default();
    // The old spelling, `bench -- <criterion args>`, still runs criterion.
    if args.first().is_some_and(|a| a == "--") {
        parsed.criterion = Some(args.to_vec());
        return Ok(parsed);
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--criterion" => {
                // Passed to `cargo bench --workspace` as they are.
                parsed.criterion = Some(it.by_ref().cloned().collect());
            }
            "--quick" => parsed.quick = true,
            "--out" => parsed.out = Some(PathBuf::from(it.next().ok_or("--out needs a file")?)),
            other => {
                return Err(format!(
                    "bench: unknown argument {other:?} (usage: bench [--quick] [--out FILE] | bench --criterion [args])"
                ));
            }
        }
    }
    Ok(parsed)
}

/// A `redis-server` this process started on a free loopback port, stopped on drop.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Result<OwnRedis, String> {
        ensure_redis()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        let server = OwnRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let pong = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "PING"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false);
            if pong {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err("redis-server did not answer within 10 s".into())
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench(args: &[String]) -> Result<(), String> {
    let args = parse_bench(args)?;
    if let Some(extra) = args.criterion {
        let mut cmd = Command::new(cargo());
        cmd.args(["bench", "--workspace"]);
        cmd.args(extra);
        return run("cargo bench (criterion)", &mut cmd);
    }
    let (_server, url) = match env::var("REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => (None, url),
        _ => {
            let server = OwnRedis::start()?;
            let url = format!("redis://127.0.0.1:{}", server.port);
            (Some(server), url)
        }
    };
    let docs = root().join("docs");
    std::fs::create_dir_all(&docs).map_err(|e| format!("creating {docs:?}: {e}"))?;
    let markdown = args.out.unwrap_or_else(|| root().join("BENCHMARKS.md"));
    let mut cmd = Command::new(cargo());
    cmd.args([
        "run",
        "--release",
        "-q",
        "-p",
        "chatstate-cli",
        "--",
        "bench",
    ])
    .arg("--redis-url")
    .arg(&url)
    .arg("--markdown")
    .arg(&markdown)
    .arg("--json-out")
    .arg(docs.join("bench.json"))
    .arg("--svg")
    .arg(docs.join("bench.svg"));
    if args.quick {
        cmd.arg("--quick");
    }
    run("chatstate bench", &mut cmd)?;
    eprintln!(
        "xtask bench: table in {}, docs/bench.json, docs/bench.svg",
        markdown.display()
    );
    Ok(())
}

/// Kills the file store's crash test does by default in `soak`.
const DEFAULT_SOAK_KILLS: u64 = 1_000;

/// The number after `--kills` (or in `--kills=N`), or the default.
fn parse_kills(args: &[String]) -> Result<u64, String> {
    let mut kills = DEFAULT_SOAK_KILLS;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match arg.strip_prefix("--kills=") {
            Some(v) => v.to_string(),
            None if arg == "--kills" => it.next().ok_or("--kills needs a number")?.to_string(),
            None => {
                return Err(format!(
                    "soak: unknown argument {arg:?} (usage: soak [--kills N])"
                ));
            }
        };
        kills = value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("--kills must be a positive number, not {value:?}"))?;
    }
    Ok(kills)
}

/// Runs the SIGKILL crash test of the file store with `--kills N` kills (each kill is
/// one round of `a_killed_writer_loses_no_acknowledged_write`, through its
/// `CHATSTATE_CRASH_ROUNDS` variable), echoing its output, then prints the result.
fn soak(args: &[String]) -> Result<(), String> {
    let kills = parse_kills(args)?;
    let step = format!("file store crash soak: {kills} SIGKILLs");
    eprintln!("==> {step}");
    let started = Instant::now();
    let mut child = Command::new(cargo())
        .args([
            "test",
            "--package",
            "chatstate-file",
            "--test",
            "crash",
            "--",
            "--exact",
            "a_killed_writer_loses_no_acknowledged_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CHATSTATE_CRASH_ROUNDS", kills.to_string())
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{step}: could not start: {e}"))?;
    // Echo the test's lines; keep the seed (to replay) and its summary.
    let (mut seed, mut summary) = (None, None);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            // libtest's "test … ... " may precede it on the same line.
            if let Some(at) = line.find("crash test seed") {
                seed = Some(line[at..].to_string());
            } else if line.starts_with(&format!("{kills} rounds in")) {
                summary = Some(line);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("{step}: could not wait: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    let seed = seed.unwrap_or_else(|| "(no seed printed)".into());
    match (status.success(), summary) {
        (true, Some(summary)) => {
            println!(
                "soak passed: {kills} SIGKILLs, no acknowledged write lost, no corrupt file \
                 ({summary}); {seed}; {took:.0} s with the build"
            );
            Ok(())
        }
        (true, None) => Err(format!(
            "{step}: the test passed but printed no summary; did it run? ({seed})"
        )),
        (false, _) => Err(format!("{step} failed ({status}); {seed}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn bench_arguments() {
        assert_eq!(parse_bench(&[]), Ok(BenchArgs::default()));
        let quick = parse_bench(&args(&["--quick", "--out", "x.md"])).expect("valid");
        assert!(
            quick.quick && quick.out == Some(PathBuf::from("x.md")) && quick.criterion.is_none()
        );
        let crit = parse_bench(&args(&["--criterion", "--", "--quick"])).expect("valid");
        assert_eq!(crit.criterion, Some(args(&["--", "--quick"])));
        let old = parse_bench(&args(&["--", "--quick"])).expect("valid");
        assert_eq!(old.criterion, Some(args(&["--", "--quick"])));
        assert!(parse_bench(&args(&["--out"])).is_err());
        assert!(parse_bench(&args(&["--fast"])).is_err());
    }

    #[test]
    fn soak_kills_default_to_a_thousand_and_take_both_spellings() {
        assert_eq!(parse_kills(&[]), Ok(1_000));
        assert_eq!(parse_kills(&args(&["--kills", "200"])), Ok(200));
        assert_eq!(parse_kills(&args(&["--kills=7"])), Ok(7));
        for bad in [
            &["--kills"][..],
            &["--kills", "0"],
            &["--kills", "-3"],
            &["--kills=many"],
            &["--rounds", "5"],
        ] {
            assert!(parse_kills(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
