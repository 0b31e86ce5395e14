//! TLS for `rediss://` URLs, through redis-rs's own rustls support.
//!
//! - [`certificates`] reads `REDIS_CA_CERT` and `REDIS_CLIENT_CERT`/`REDIS_CLIENT_KEY`
//!   into redis-rs's [`redis::TlsCertificates`] (for any topology: the Sentinel and
//!   Cluster clients take the same value). Without a CA file the server's
//!   certificate is verified against the system's roots.
//! - [`client`] builds the client of one server.
//! - [`insecure_warning`] logs, at every start, that `REDIS_TLS_INSECURE=1` turns
//!   verification off.
//! - [`handshake_failure`] tells a refused handshake (a misconfiguration: never
//!   fixed by retrying) from an outage.
//!
//! rustls needs a process-wide crypto provider; redis-rs uses whatever is
//! installed (`CryptoProvider::get_default`, `ClientConfig::builder`), so
//! [`install_crypto_provider`] installs ring's before any TLS client is built.
//! Certificate contents and keys never appear in errors or logs: only the variable
//! and the file's path.

use std::path::Path;

use chatstate_core::{Error, RedisUrl, Result, TlsConfig};
use redis::IntoConnectionInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Installs ring as rustls's process-wide crypto provider, unless one is installed
/// already (by this crate earlier, or by the application: that one is kept).
pub(crate) fn install_crypto_provider() {
    // An error only says a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the PEM file `path` named by the variable `var`.
fn read_pem(var: &str, path: &Path) -> Result<Vec<u8>> {
    // The io error says why ("No such file or directory"), never what is inside.
    std::fs::read(path)
        .map_err(|e| Error::config(format!("{var} {}: cannot read: {e}", path.display())))
}

/// A PEM file of one or more certificates (checked here, so that the error names
/// the variable; redis-rs parses it again).
fn read_certs(var: &str, path: &Path) -> Result<Vec<u8>> {
    let pem = read_pem(var, path)?;
    let parsed: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match parsed {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        _ => Err(Error::config(format!(
            "{var} {}: not a PEM file of certificates (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ))),
    }
}

/// The certificates `tls` names, read from their files: `None` when there is no CA
/// file and no client certificate (the system's roots, no client authentication).
/// A missing, unreadable or unparsable file is a `Config` error naming the
/// variable and the path.
pub(crate) fn certificates(tls: &TlsConfig) -> Result<Option<redis::TlsCertificates>> {
    let root_cert = match &tls.ca_cert {
        Some(path) => Some(read_certs("REDIS_CA_CERT", path)?),
        None => None,
    };
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let client_cert = read_certs("REDIS_CLIENT_CERT", cert)?;
            let client_key = read_pem("REDIS_CLIENT_KEY", key)?;
            if PrivateKeyDer::from_pem_slice(&client_key).is_err() {
                return Err(Error::config(format!(
                    "REDIS_CLIENT_KEY {}: not a PEM private key (PKCS#8, PKCS#1 or SEC1)",
                    key.display()
                )));
            }
            Some(redis::ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        // One without the other is refused when the configuration is read.
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::config(
                "REDIS_CLIENT_CERT and REDIS_CLIENT_KEY must be set together (mutual TLS needs both)",
            ));
        }
        (None, None) => None,
    };
    Ok(
        (root_cert.is_some() || client_tls.is_some()).then_some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// Logs that the server's certificate is not verified, when `tls.insecure`: at
/// every start, so that it is never forgotten in a deployment.
pub(crate) fn insecure_warning(tls: &TlsConfig) {
    if tls.insecure {
        tracing::warn!(
            "REDIS_TLS_INSECURE=1: the Redis server's TLS certificate is NOT verified; \
             anyone on the network path can impersonate it (use REDIS_CA_CERT instead)"
        );
    }
}

/// A client for the one server `url` names; for `rediss://`, with `tls`'s
/// certificates, and without verifying the server when `tls.insecure`.
pub(crate) fn client(url: &RedisUrl, tls: &TlsConfig) -> Result<redis::Client> {
    let unusable = |e: redis::RedisError| {
        Error::config(format!("REDIS_URL {url} is not usable: {}", e.category()))
    };
    let info = url.expose().into_connection_info().map_err(unusable)?;
    if !url.is_tls() {
        // (`Config` refuses this too; a builder may not have gone through it.)
        if tls.is_set() {
            return Err(Error::config(format!(
                "TLS settings are given but REDIS_URL {url} is not a rediss:// URL"
            )));
        }
        return redis::Client::open(info).map_err(unusable);
    }
    install_crypto_provider();
    let info = match info.addr().clone() {
        redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure,
            tls_params,
        } => info.set_addr(redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: insecure || tls.insecure,
            tls_params,
        }),
        _ => info,
    };
    match certificates(tls)? {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    }
    .map_err(unusable)
}

/// The rustls error inside `e`, if any. redis-rs keeps an I/O error behind an
/// `Arc<dyn Error>` (its `source`), and tokio-rustls wraps rustls's error in that
/// `io::Error` (whose own `source` skips it): unwrap both layers.
fn rustls_error(e: &redis::RedisError) -> Option<&rustls::Error> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let source = std::error::Error::source(e)?;
    let inner: &(dyn std::error::Error + 'static) = match source.downcast_ref::<Shared>() {
        Some(shared) => shared.as_ref(),
        None => source,
    };
    inner.downcast_ref::<rustls::Error>().or_else(|| {
        inner
            .downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
    })
}

/// What a failed TLS handshake says, when `e` is one that retrying cannot fix: the
/// server's certificate is not trusted (`REDIS_CA_CERT`), or the server refused the
/// client's (`REDIS_CLIENT_CERT`). It is a misconfiguration, not an outage: the
/// error is `Config`, and it neither trips the circuit breaker nor lets a store
/// open in the background. Other TLS failures stay what their I/O error says.
pub(crate) fn handshake_failure(e: &redis::RedisError) -> Option<String> {
    use rustls::AlertDescription as A;
    match rustls_error(e)? {
        rustls::Error::InvalidCertificate(why) => Some(format!(
            "TLS handshake with Redis failed: the server's certificate is not trusted \
             ({why:?}; REDIS_CA_CERT, or the host name in REDIS_URL?)"
        )),
        rustls::Error::AlertReceived(
            alert @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied),
        ) => Some(format!(
            "TLS handshake with Redis failed: the server refused the client certificate \
             ({alert:?}; REDIS_CLIENT_CERT and REDIS_CLIENT_KEY?)"
        )),
        _ => None,
    }
}
