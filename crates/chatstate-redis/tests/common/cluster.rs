//! A throwaway Redis Cluster: `redis-server --cluster-enabled yes` on free loopback
//! ports (each node in a folder of its own for its `nodes.conf`), joined with
//! `redis-cli --cluster create`, and ready once every node says `cluster_state:ok`
//! and knows every other. Nodes are [`RedisServer`]s: stopped on drop, and by their
//! watchdog if the test process dies.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::RedisServer;

/// A running cluster.
pub struct Cluster {
    /// Every node: the first `masters` were created as masters.
    pub nodes: Vec<RedisServer>,
    dirs: Vec<PathBuf>,
}

fn node_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chatstate-cluster-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a node folder");
    dir
}

impl Cluster {
    /// Starts `masters` masters with `replicas` replicas each (the slots spread
    /// evenly by `redis-cli --cluster create`), and waits until the cluster serves.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        Cluster::launch(masters, replicas, None)
    }

    /// As [`Cluster::start`], every node listening for TLS only (clients,
    /// replication and the cluster bus), with `files`' certificates; clients may
    /// show a client certificate (`--tls-auth-clients optional`).
    pub fn start_tls(masters: usize, files: &super::TlsFiles) -> Cluster {
        Cluster::launch(masters, 0, Some(files))
    }

    fn launch(masters: usize, replicas: usize, tls: Option<&super::TlsFiles>) -> Cluster {
        let total = masters * (1 + replicas);
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..total {
            let dir = node_dir();
            // The cluster bus port is the client port + 10000 by default, which a
            // TLS-only node (`--port 0`) does not have: name one.
            let bus_port = super::free_port().to_string();
            let args = vec![
                "--cluster-port",
                bus_port.as_str(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
                // Replicas sync at once (the default waits 5 s for more replicas).
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                dir.to_str().expect("a UTF-8 temp path"),
            ];
            let node = match tls {
                None => RedisServer::start(&args),
                Some(files) => {
                    // Nodes connect to each other (the bus, replication) as TLS
                    // clients: with the client certificate (the server one is for
                    // serverAuth only).
                    let (cert, key) = (
                        files.client_cert.display().to_string(),
                        files.client_key.display().to_string(),
                    );
                    let mut args = args.clone();
                    args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                    args.extend(["--tls-client-cert-file", cert.as_str()]);
                    args.extend(["--tls-client-key-file", key.as_str()]);
                    RedisServer::start_tls(files, "optional", &args)
                }
            };
            nodes.push(node);
            dirs.push(dir);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let replicas = replicas.to_string();
        let mut create: Vec<&str> = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        // Through the first node's redis-cli arguments (TLS ones included).
        let out = nodes[0].cli(&create);
        assert!(
            out.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed: {out}"
        );
        let cluster = Cluster { nodes, dirs };
        cluster.wait_ok(Duration::from_secs(30));
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok` and knows all nodes,
    /// and every replica is in sync with its master (a replica that never synced
    /// cannot take over).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let replication = n.cli(&["INFO", "replication"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ready: {}",
                self.nodes[0].cli(&["CLUSTER", "INFO"])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `host:port,host:port,…` of every node: `REDIS_CLUSTER_NODES`.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node id and port of each master serving slots, with the slot ranges
    /// (`CLUSTER NODES` fields 9 on).
    pub fn masters(&self) -> Vec<(String, u16, Vec<String>)> {
        self.nodes[0]
            .cli(&["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split(' ').collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                (f.get(2)?.contains("master") && f.len() > 8).then(|| {
                    (
                        f[0].to_string(),
                        port,
                        f[8..].iter().map(|s| s.to_string()).collect(),
                    )
                })
            })
            .collect()
    }

    /// The node serving `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of this cluster")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One 3-master cluster shared by every test of this process (tests isolate by key
/// prefix).
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(3, 0))
}
