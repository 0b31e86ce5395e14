//! Running the `chatstate` binary as a process, and a throwaway `redis-server` on a
//! free loopback port (the pattern of `chatstate-redis`'s test helpers: a watchdog
//! shell stops the server when the test process dies). A missing `redis-server`
//! fails the test: Redis tests must run.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
    for name in chatstate::config::ENV_VARS {
        cmd.env_remove(name);
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

/// A running throwaway server.
pub struct RedisServer {
    pub port: u16,
    watchdog: Child,
    pid: u32,
}

impl RedisServer {
    /// Starts one on a free loopback port (never 6379); panics when `redis-server`
    /// is missing.
    pub fn start() -> RedisServer {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            installed,
            "redis-server is not installed: the Redis tests need it (apt-get install -y redis-server)"
        );
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let script = format!(
                "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no \
                 --daemonize no --loglevel warning >/dev/null 2>&1 & srv=$!; echo $srv; \
                 while kill -0 {parent} 2>/dev/null && kill -0 $srv 2>/dev/null; do sleep 0.2; done; \
                 kill $srv 2>/dev/null",
                parent = std::process::id()
            );
            let mut watchdog = Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .expect("sh starts");
            let mut line = String::new();
            BufReader::new(watchdog.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("the watchdog prints the pid");
            let server = RedisServer {
                port,
                watchdog,
                pid: line.trim().parse().expect("a pid"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if server.cli(&["PING"]).contains("PONG") {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("redis-server did not start after 5 attempts");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli -p <port> args…`: stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.pid.to_string()).status();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}
