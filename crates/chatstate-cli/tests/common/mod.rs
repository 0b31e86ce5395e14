//! Running the `chatstate` binary as a process, and a throwaway `redis-server` on a
//! free loopback port (`chatstate-redis`'s test helper, included). A missing
//! `redis-server` fails the test: Redis tests must run.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Which backend a run uses.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    /// `CHATSTATE_BACKEND=memory`.
    Memory,
    /// The file store in `<dir>/chatstate-data` (the default folder, run from `dir`).
    File,
    /// `USE_REDIS=1` with this server.
    Redis(&'a RedisServer),
}

/// Runs `chatstate args…` in `dir` with `backend` and nothing else from the
/// environment's chatstate variables.
pub fn chatstate(dir: &Path, backend: Backend<'_>, args: &[&str]) -> Output {
    chatstate_env(dir, backend, &[], args)
}

/// As [`chatstate`], with extra variables.
pub fn chatstate_env(
    dir: &Path,
    backend: Backend<'_>,
    env: &[(&str, &str)],
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatstate"));
    cmd.current_dir(dir).args(args);
    for var in chatstate::config::env_vars() {
        cmd.env_remove(var.name);
    }
    match backend {
        Backend::Memory => {
            cmd.env("CHATSTATE_BACKEND", "memory");
        }
        Backend::File => {}
        Backend::Redis(server) => {
            cmd.env("USE_REDIS", "1").env("REDIS_URL", server.url());
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("the chatstate binary runs")
}

/// Stdout of a run that must succeed, parsed as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "chatstate failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The Redis crate's throwaway servers (free loopback port, a watchdog that stops
/// the server if the test process dies, a failing test when `redis-server` is
/// missing), used as they are.
#[path = "../../../chatstate-redis/tests/common/mod.rs"]
mod redis_common;

pub use redis_common::RedisServer;
