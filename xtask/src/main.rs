//! Project automation, run as `cargo xtask <command>`.
//!
//! - `test`: everything CI checks, in order: installs `redis-server` when it is
//!   missing (the Redis tests start their own servers and must run), `cargo fmt
//!   --check`, `cargo clippy` with `-D warnings`, the whole test suite
//!   (cargo-nextest when installed, else `cargo test`), the doc tests, then a summary
//!   of conformance cases a backend declared it cannot run (never silent).
//! - `bench`: the criterion benchmarks (`cargo bench --workspace`); extra arguments
//!   go to criterion, e.g. `cargo xtask bench -- --quick`.
//!
//! Hand-written on `std::process` only: it runs a handful of commands in order,
//! which needs no dependency (and keeps `cargo xtask` fast to build).

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("bench") => bench(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask test | bench [-- criterion args]");
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
        Command::new(&cargo).args(["fmt", "--all", "--", "--check"]),
    )?;
    run(
        "cargo clippy -D warnings",
        Command::new(&cargo).args([
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

    let mut tests = Command::new(&cargo);
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
        Command::new(&cargo).args(["test", "--workspace", "--all-features", "--doc"]),
    )?;

    let skipped = std::fs::read_to_string(skip_dir.join("skipped.log")).unwrap_or_default();
    let lines: Vec<&str> = skipped.lines().collect();
    if lines.is_empty() {
        eprintln!("conformance: no case skipped");
    } else {
        eprintln!(
            "conformance: {} case(s) skipped by a backend's declared capabilities:",
            lines.len()
        );
        for line in lines {
            eprintln!("  {line}");
        }
    }
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn bench(extra: &[String]) -> Result<(), String> {
    let mut cmd = Command::new(cargo());
    cmd.args(["bench", "--workspace"]);
    cmd.args(extra);
    run("cargo bench", &mut cmd)
}
