//! What the server says about itself (`INFO`), for status pages and the CLI.

use serde::Serialize;

use crate::RedisStore;

/// A Redis server's state in a few numbers, from one `INFO` (one round trip). On a
/// Cluster, the node the command reached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerSummary {
    /// `redis_version` (a Valkey reports the Redis version it is compatible with).
    pub version: String,
    /// `redis_mode`: `standalone`, `sentinel` or `cluster`.
    pub mode: String,
    /// `role`: `master` or `slave`.
    pub role: String,
    /// `uptime_in_seconds`.
    pub uptime_seconds: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
    /// `used_memory`, bytes.
    pub used_memory_bytes: u64,
    /// `maxmemory`, bytes (0: no limit).
    pub maxmemory_bytes: u64,
    /// `maxmemory_policy` (empty when the server does not say).
    pub maxmemory_policy: String,
}

impl ServerSummary {
    /// Reads the fields above from `INFO`'s text; missing ones stay empty or 0.
    pub fn parse(info: &str) -> ServerSummary {
        let mut s = ServerSummary::default();
        for line in info.lines() {
            let Some((k, v)) = line.trim_end().split_once(':') else {
                continue;
            };
            let n = || v.parse::<u64>().unwrap_or(0);
            match k {
                "redis_version" => s.version = v.to_string(),
                "redis_mode" => s.mode = v.to_string(),
                "role" => s.role = v.to_string(),
                "uptime_in_seconds" => s.uptime_seconds = n(),
                "connected_clients" => s.connected_clients = n(),
                "used_memory" => s.used_memory_bytes = n(),
                "maxmemory" => s.maxmemory_bytes = n(),
                "maxmemory_policy" => s.maxmemory_policy = v.to_string(),
                _ => {}
            }
        }
        s
    }
}

impl RedisStore {
    /// The server's version, role, memory and clients, from one `INFO` (one
    /// counted round trip).
    pub async fn server_summary(&self) -> chatstate_core::Result<ServerSummary> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg("default");
        let info: String = self.inner.conn.cmd(&cmd, "server_summary", None).await?;
        Ok(ServerSummary::parse(&info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_names_and_leaves_the_rest() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\
                    uptime_in_seconds:42\r\n# Clients\r\nconnected_clients:3\r\n\
                    # Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\n\
                    maxmemory_policy:noeviction\r\n# Replication\r\nrole:master\r\n";
        let s = ServerSummary::parse(info);
        assert_eq!(
            s,
            ServerSummary {
                version: "7.0.15".into(),
                mode: "standalone".into(),
                role: "master".into(),
                uptime_seconds: 42,
                connected_clients: 3,
                used_memory_bytes: 1_048_576,
                maxmemory_bytes: 0,
                maxmemory_policy: "noeviction".into(),
            }
        );
        assert_eq!(ServerSummary::parse("garbage\n:"), ServerSummary::default());
    }
}
