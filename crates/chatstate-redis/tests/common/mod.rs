//! Throwaway `redis-server` processes for tests: each on a free loopback port, with
//! no persistence, stopped when the test drops it — or, if the test process dies,
//! by a watchdog shell that waits for the test process to exit. Never port 6379,
//! never a server the tests did not start.
//!
//! A missing `redis-server` fails the test with a clear message: Redis tests must
//! run (`cargo xtask test` and `.ci/run` install it when missing).

#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running throwaway server.
pub struct RedisServer {
    pub port: u16,
    pid: u32,
    watchdog: Child,
    /// `redis-cli`'s arguments to reach it (`-p <port>`, and the TLS ones).
    cli_args: Vec<String>,
    /// Whether it listens for TLS only (`rediss://`).
    tls: bool,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("local addr").port()
}

fn redis_server_path() -> String {
    match Command::new("redis-server").arg("--version").output() {
        Ok(o) if o.status.success() => "redis-server".to_string(),
        _ => panic!(
            "redis-server is not installed: the Redis tests need it \
             (apt-get install -y redis-server; `cargo xtask test` installs it)"
        ),
    }
}

impl RedisServer {
    /// Starts a server with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start(extra: &[&str]) -> RedisServer {
        RedisServer::launch(extra, None)
    }

    /// Starts a server that listens for TLS only (`--port 0 --tls-port <free>`), with
    /// `files`' server certificate; `auth_clients` is `--tls-auth-clients`
    /// (`no`, `optional`, `yes`: whether clients must show a certificate signed by
    /// `files`' CA). Readiness is checked with `redis-cli --tls`.
    pub fn start_tls(files: &TlsFiles, auth_clients: &str, extra: &[&str]) -> RedisServer {
        RedisServer::launch(extra, Some((files, auth_clients)))
    }

    fn launch(extra: &[&str], tls: Option<(&TlsFiles, &str)>) -> RedisServer {
        for _attempt in 0..5 {
            let port = free_port();
            let path = |p: &std::path::Path| p.display().to_string();
            let (listen, mut cli_args): (Vec<String>, Vec<String>) = match tls {
                None => (
                    vec!["--port".into(), port.to_string()],
                    vec!["-p".into(), port.to_string()],
                ),
                Some((files, auth_clients)) => (
                    vec![
                        "--port".into(),
                        "0".into(),
                        "--tls-port".into(),
                        port.to_string(),
                        "--tls-cert-file".into(),
                        path(&files.server_cert),
                        "--tls-key-file".into(),
                        path(&files.server_key),
                        "--tls-ca-cert-file".into(),
                        path(&files.ca),
                        "--tls-auth-clients".into(),
                        auth_clients.into(),
                    ],
                    vec![
                        "--tls".into(),
                        "--cacert".into(),
                        path(&files.ca),
                        "--cert".into(),
                        path(&files.client_cert),
                        "--key".into(),
                        path(&files.client_key),
                        "-p".into(),
                        port.to_string(),
                    ],
                ),
            };
            if let Some(i) = extra.iter().position(|a| *a == "--requirepass") {
                cli_args.push("--no-auth-warning".into());
                cli_args.push("-a".into());
                cli_args.push(extra[i + 1].to_string());
            }
            let args: Vec<String> = listen
                .into_iter()
                .chain(
                    [
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--daemonize",
                        "no",
                        "--loglevel",
                        "warning",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                )
                .chain(extra.iter().map(|s| s.to_string()))
                .collect();
            let (pid, watchdog) = start_watched(&args);
            let server = RedisServer {
                port,
                pid,
                watchdog,
                cli_args,
                tls: tls.is_some(),
            };
            if server.wait_ready() {
                return server;
            }
            drop(server);
        }
        panic!("redis-server did not start on a free port after 5 attempts");
    }

    fn wait_ready(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(o) = Command::new("redis-cli")
                .args(&self.cli_args)
                .arg("PING")
                .output()
                && String::from_utf8_lossy(&o.stdout).contains("PONG")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server (over TLS, with the client certificate,
    /// for a TLS server); returns stdout. The password of `--requirepass` is not
    /// passed: give `-a` in `args` when needed.
    pub fn cli(&self, args: &[&str]) -> String {
        let conn: Vec<&String> = self
            .cli_args
            .iter()
            .take_while(|a| *a != "--no-auth-warning")
            .collect();
        let o = Command::new("redis-cli")
            .args(conn)
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Pauses the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {} failed", self.pid);
    }

    /// Stops the server (as a crash or an operator would).
    pub fn stop(&mut self) {
        // A paused process is killed by SIGKILL too; resume it first anyway so the
        // pid is reaped promptly.
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kill")
            .arg("-9")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && Command::new("kill")
                .arg("-0")
                .arg(self.pid.to_string())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// One server shared by every test of this process (tests isolate by key prefix).
pub fn shared() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start(&[]))
}

/// A key prefix no other fixture of this server uses.
pub fn unique_prefix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A server restarted on a port a stopped [`RedisServer`] had, killed on drop (even
/// when the test fails before the end).
pub struct Restarted(Child);

impl Restarted {
    /// Starts `redis-server` again on `port` (empty: no persistence).
    pub fn on(port: u16) -> Restarted {
        Restarted::with_args(port, &[])
    }

    /// Starts `redis-server` again on `port` with extra arguments (the same
    /// `--dir`/`--appendonly yes` as before, to find the data again), and waits until
    /// it answers (or 10 s).
    pub fn with_args(port: u16, extra: &[&str]) -> Restarted {
        let child = Command::new(redis_server_path())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server restarts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(o) = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "PING"])
                .output()
                && String::from_utf8_lossy(&o.stdout).contains("PONG")
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Restarted(child)
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configuration `vars` alone give, as `Config::from_env` would read them from
/// the environment (the Redis tests' servers and prefixes go in as variables).
pub fn config(vars: &[(&str, &str)]) -> chatstate_core::Config {
    chatstate_core::Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
    .expect("a valid configuration")
}

/// Certificates for TLS tests, made with the `openssl` CLI in a temporary folder
/// (removed on drop): a CA, a server certificate it signs (for `127.0.0.1` and
/// `localhost`), a client certificate it signs, and another CA that signs neither.
/// Keys are ECDSA P-256 (quick to make). A missing `openssl` fails the test.
pub struct TlsFiles {
    dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
    pub other_ca: std::path::PathBuf,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "openssl cannot run ({e}): the TLS tests need the openssl CLI \
                 (apt-get install -y openssl)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        // std only: every crate that includes this module compiles it.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chatstate-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        let d = dir.as_path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = |name: &str| {
            let (key, pem, cn) = (
                format!("{name}.key"),
                format!("{name}.pem"),
                format!("/CN=chatstate test {name}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &cn,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(d, &args);
        };
        ca("ca");
        ca("other-ca");
        let leaf = |name: &str, usage: &str| {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(
                d.join(&ext),
                format!(
                    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                     keyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
                ),
            )
            .expect("the extensions file");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
            openssl(d, &args);
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-CAserial",
                    "ca.srl",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &ext,
                ],
            );
        };
        leaf("server", "serverAuth");
        leaf("client", "clientAuth");
        TlsFiles {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.pem"),
            dir,
        }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server with its certificates (which must outlive it).
pub struct TlsServer {
    pub server: RedisServer,
    pub files: TlsFiles,
}

/// One TLS server (`--tls-auth-clients optional`) shared by every test of this
/// process (tests isolate by key prefix).
pub fn shared_tls() -> &'static TlsServer {
    static SERVER: OnceLock<TlsServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let files = TlsFiles::generate();
        let server = RedisServer::start_tls(&files, "optional", &[]);
        TlsServer { server, files }
    })
}

/// Starts `redis-server` with `args` under a watchdog shell (as [`RedisServer::start`]
/// does): returns the server's pid and the watchdog, which kills the server once the
/// test process is gone.
fn start_watched(args: &[String]) -> (u32, Child) {
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!(
        "{bin} {} >/dev/null 2>&1 & srv=$!; echo $srv; \
         while kill -0 {parent} 2>/dev/null && kill -0 $srv 2>/dev/null; do sleep 0.2; done; \
         kill $srv 2>/dev/null",
        quoted.join(" "),
        bin = redis_server_path(),
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
        .expect("the watchdog prints the server pid");
    (line.trim().parse().expect("a pid"), watchdog)
}

/// `redis-cli -p port [-a password] args…`: stdout.
pub fn cli_auth(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.arg("-p").arg(port.to_string());
    if let Some(pw) = password {
        cmd.args(["--no-auth-warning", "-a", pw]);
    }
    let o = cmd.args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A master, one replica and three Sentinels (quorum 2, the master down after 1 s
/// without an answer, `failover-timeout` 5 s) on free loopback ports, each
/// Sentinel with its own generated config in a fresh temporary directory (they
/// rewrite it). Everything stops on drop, or with the test process (watchdogs).
pub struct SentinelSet {
    /// The master at start (index 0) and the replica (index 1, in a full set).
    pub data: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
    /// The data nodes' password (`--requirepass`, `--masterauth`).
    pub password: Option<String>,
    /// The Sentinels' own password (`requirepass` in their config).
    pub sentinel_password: Option<String>,
    dir: std::path::PathBuf,
}

/// The name the Sentinels monitor the master under.
pub const SENTINEL_MASTER: &str = "m";
/// `sentinel down-after-milliseconds` of a [`SentinelSet`].
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);
/// `sentinel failover-timeout` of a [`SentinelSet`].
pub const SENTINEL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(5000);

impl SentinelSet {
    /// Starts the set and waits until every Sentinel sees the replica and the two
    /// other Sentinels, and the replica is in sync.
    pub fn start(password: Option<&str>, sentinel_password: Option<&str>) -> SentinelSet {
        SentinelSet::start_sized(true, 3, password, sentinel_password, None)
    }

    /// [`SentinelSet::start_small`] with a master that speaks only TLS (`files`'
    /// certificates), which the Sentinel watches over TLS (its own port stays
    /// plain, as the store asks it without TLS).
    pub fn start_small_tls(files: &TlsFiles) -> SentinelSet {
        SentinelSet::start_sized(false, 1, None, None, Some(files))
    }

    /// A master alone watched by one Sentinel: no failover possible, but it settles
    /// at once (a full set waits ~2 s for the Sentinels to find each other), for
    /// tests of what goes through the link rather than of failover.
    pub fn start_small(password: Option<&str>, sentinel_password: Option<&str>) -> SentinelSet {
        SentinelSet::start_sized(false, 1, password, sentinel_password, None)
    }

    fn start_sized(
        with_replica: bool,
        sentinel_count: usize,
        password: Option<&str>,
        sentinel_password: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> SentinelSet {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chatstate-sentinel-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let auth: Vec<&str> = match password {
            Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
            None => vec![],
        };
        // Each data node writes its RDB (a replica's full sync) in a folder of its
        // own under the set's, never the working directory.
        let node_dir = |name: &str| {
            let d = dir.join(name);
            std::fs::create_dir_all(&d).expect("a node folder");
            d.display().to_string()
        };
        let (master_dir, replica_dir) = (node_dir("master"), node_dir("replica"));
        let mut master_args = vec!["--dir", master_dir.as_str()];
        master_args.extend(&auth);
        let master = match tls {
            None => RedisServer::start(&master_args),
            Some(files) => RedisServer::start_tls(files, "optional", &master_args),
        };
        let master_port = master.port.to_string();
        let mut replica_args = vec![
            "--replicaof",
            "127.0.0.1",
            &master_port,
            "--dir",
            replica_dir.as_str(),
        ];
        replica_args.extend(&auth);
        let mut data = vec![master];
        if with_replica {
            data.push(RedisServer::start(&replica_args));
        }
        let quorum = sentinel_count.min(2);
        let mut sentinels = Vec::new();
        for i in 0..sentinel_count {
            sentinels.push(Self::start_sentinel(
                &dir,
                i,
                data[0].port,
                quorum,
                password,
                sentinel_password,
                tls,
            ));
        }
        let set = SentinelSet {
            data,
            sentinels,
            password: password.map(str::to_string),
            sentinel_password: sentinel_password.map(str::to_string),
            dir,
        };
        set.wait_settled();
        set
    }

    fn start_sentinel(
        dir: &std::path::Path,
        i: usize,
        master_port: u16,
        quorum: usize,
        password: Option<&str>,
        sentinel_password: Option<&str>,
        tls: Option<&TlsFiles>,
    ) -> RedisServer {
        for _attempt in 0..5 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel-{i}.log\n\
                 sentinel monitor {m} 127.0.0.1 {master_port} {quorum}\n\
                 sentinel down-after-milliseconds {m} {down}\n\
                 sentinel failover-timeout {m} {failover}\n",
                dir = dir.display(),
                m = SENTINEL_MASTER,
                down = SENTINEL_DOWN_AFTER.as_millis(),
                failover = SENTINEL_FAILOVER_TIMEOUT.as_millis(),
            );
            if let Some(pw) = password {
                text.push_str(&format!("sentinel auth-pass {SENTINEL_MASTER} {pw}\n"));
            }
            if let Some(pw) = sentinel_password {
                text.push_str(&format!("requirepass {pw}\nsentinel sentinel-pass {pw}\n"));
            }
            if let Some(files) = tls {
                // To the master over TLS, as a client with the client certificate.
                text.push_str(&format!(
                    "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-client-cert-file {}\ntls-client-key-file {}\ntls-ca-cert-file {}\n",
                    files.server_cert.display(),
                    files.server_key.display(),
                    files.client_cert.display(),
                    files.client_key.display(),
                    files.ca.display(),
                ));
            }
            std::fs::write(&conf, text).expect("the sentinel config is written");
            let (pid, watchdog) =
                start_watched(&[conf.display().to_string(), "--sentinel".to_string()]);
            let server = RedisServer {
                port,
                pid,
                watchdog,
                cli_args: Vec::new(),
                tls: false,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if cli_auth(port, sentinel_password, &["PING"]).contains("PONG") {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(server);
        }
        panic!("redis-server --sentinel did not start on a free port after 5 attempts");
    }

    /// `SENTINEL MASTER m` on Sentinel `i`, as field → value.
    pub fn sentinel_view(&self, i: usize) -> BTreeMap<String, String> {
        let out = cli_auth(
            self.sentinels[i].port,
            self.sentinel_password.as_deref(),
            &["SENTINEL", "MASTER", SENTINEL_MASTER],
        );
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }

    fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self.data.len() < 2
                || self
                    .cli(1, &["INFO", "replication"])
                    .contains("master_link_status:up");
            let replicas = (self.data.len() - 1).to_string();
            let others = (self.sentinels.len() - 1).to_string();
            let views: Vec<_> = (0..self.sentinels.len())
                .map(|i| self.sentinel_view(i))
                .collect();
            let seen = views.iter().all(|v| {
                v.get("num-slaves") == Some(&replicas)
                    && v.get("num-other-sentinels") == Some(&others)
            });
            if synced && seen {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel set did not settle within 30 s (replica synced: {synced}; \
                 sentinels' views: {views:?}; logs in {})",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-cli` on data node `i` (0: the master at start, 1: the replica), with
    /// the data nodes' password.
    pub fn cli(&self, i: usize, args: &[&str]) -> String {
        cli_auth(self.data[i].port, self.password.as_deref(), args)
    }

    /// `kill -9` data node `i` (as a crash would), and waits until it is gone.
    pub fn kill_data_node(&self, i: usize) {
        let pid = self.data[i].pid.to_string();
        let _ = Command::new("kill")
            .args(["-CONT", &pid])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("kill")
            .args(["-9", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && Command::new("kill")
                .args(["-0", &pid])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The data node on `port`.
    pub fn node(&self, port: u16) -> usize {
        self.data
            .iter()
            .position(|s| s.port == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    /// The master's port as a reachable Sentinel names it now.
    pub fn master_port(&self) -> Option<u16> {
        for s in &self.sentinels {
            let out = cli_auth(
                s.port,
                self.sentinel_password.as_deref(),
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
            );
            if let Some(port) = out.lines().nth(1).and_then(|p| p.trim().parse().ok()) {
                return Some(port);
            }
        }
        None
    }

    /// `host:port,host:port,host:port` of the Sentinels (`REDIS_SENTINELS`).
    pub fn sentinels_var(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A `REDIS_URL` with the data nodes' password and a host that is never used.
    pub fn url_var(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@ignored.invalid:1"),
            None => "redis://ignored.invalid:1".to_string(),
        }
    }

    /// A store builder that reaches the master through these Sentinels.
    pub fn builder(&self) -> chatstate_redis::RedisStoreBuilder {
        chatstate_redis::RedisStore::builder(
            chatstate_core::RedisUrl::parse(&self.url_var()).expect("a valid URL"),
        )
        .topology(chatstate_core::RedisTopology::Sentinel {
            sentinels: chatstate_core::HostPort::parse_list(&self.sentinels_var())
                .expect("valid host:port list"),
            master: SENTINEL_MASTER.to_string(),
            password: self
                .sentinel_password
                .as_deref()
                .map(chatstate_core::Secret::new),
        })
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        // Sentinels first, so they do not fail over while the data nodes stop.
        self.sentinels.clear();
        self.data.clear();
        if std::thread::panicking() {
            eprintln!("Sentinel logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
