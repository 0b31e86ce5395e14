//! `rediss://` against real TLS servers this test process starts (`redis-server
//! --port 0 --tls-port <free>`), with certificates made by the `openssl` CLI: a CA
//! file, mutual TLS, a certificate from another CA, the insecure flag and its
//! warning, unreadable files, and the invalidation bus. A missing `redis-server` or
//! `openssl` fails the tests.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chatstate_core::{
    BusEvent, CacheKey, Config, Error, ErrorKind, Invalidation, InvalidationBus, KvCache,
    NewMessage, SessionKey, SessionStore, SessionStoreExt,
};
use chatstate_redis::{RedisBus, RedisStore};
use common::{RedisServer, TlsFiles};

/// The configuration of a store on `url` with fail-fast on (unless `background`)
/// and the TLS variables `tls`.
fn config(url: &str, tls: &[(&str, &Path)], fail_fast: bool) -> Config {
    let prefix = common::unique_prefix();
    let paths: Vec<(&str, String)> = tls
        .iter()
        .map(|(k, p)| (*k, p.display().to_string()))
        .collect();
    let mut vars: Vec<(&str, &str)> = vec![
        ("CHATSTATE_BACKEND", "redis"),
        ("REDIS_URL", url),
        ("CHATSTATE_KEY_PREFIX", &prefix),
        ("REDIS_CONNECT_TIMEOUT_MS", "2000"),
        (
            "CHATSTATE_REDIS_FAIL_FAST",
            if fail_fast { "1" } else { "0" },
        ),
    ];
    vars.extend(paths.iter().map(|(k, v)| (*k, v.as_str())));
    common::config(&vars)
}

async fn open(url: &str, tls: &[(&str, &Path)]) -> Result<RedisStore, Error> {
    RedisStore::from_config(&config(url, tls, true)).await
}

/// A session append and load, and a cache set and get: real work over the link.
async fn works(store: &RedisStore) {
    let k = SessionKey::new("acme", "web", "u1").unwrap();
    store
        .append_message(&k, NewMessage::user("over TLS"))
        .await
        .unwrap();
    let loaded = store.load(&k).await.unwrap().unwrap();
    assert_eq!(loaded.messages.len(), 1);
    assert_eq!(loaded.messages[0].content, "over TLS");
    let ck = CacheKey::new("answers", "q1").unwrap();
    store
        .set(
            &ck,
            Bytes::from_static(b"42"),
            Some(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(
        KvCache::get(store, &ck).await.unwrap(),
        Some(Bytes::from_static(b"42"))
    );
}

#[tokio::test]
async fn a_ca_file_verifies_the_server_and_the_store_works() {
    let tls = common::shared_tls();
    let store = open(&tls.server.url(), &[("REDIS_CA_CERT", &tls.files.ca)])
        .await
        .unwrap();
    works(&store).await;
    // `localhost` is in the certificate as well as 127.0.0.1.
    let by_name = format!("rediss://localhost:{}", tls.server.port);
    works(
        &open(&by_name, &[("REDIS_CA_CERT", &tls.files.ca)])
            .await
            .unwrap(),
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let files = TlsFiles::generate();
    let server = RedisServer::start_tls(&files, "yes", &[]);
    let ca = ("REDIS_CA_CERT", files.ca.as_path());

    let refused = open(&server.url(), &[ca]).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Config, "{refused}");
    assert!(
        refused.message().contains("client certificate"),
        "{refused}"
    );

    let store = open(
        &server.url(),
        &[
            ca,
            ("REDIS_CLIENT_CERT", &files.client_cert),
            ("REDIS_CLIENT_KEY", &files.client_key),
        ],
    )
    .await
    .unwrap();
    works(&store).await;
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_a_config_error() {
    let tls = common::shared_tls();
    for fail_fast in [true, false] {
        let cfg = config(
            &tls.server.url(),
            &[("REDIS_CA_CERT", &tls.files.other_ca)],
            fail_fast,
        );
        // Without fail-fast too: a misconfiguration never opens in the background.
        let err = RedisStore::from_config(&cfg).await.unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Config,
            "fail_fast {fail_fast}: {err}"
        );
        assert!(err.message().contains("not trusted"), "{err}");
        assert!(err.message().contains("REDIS_CA_CERT"), "{err}");
    }
    // No CA file: the system's roots do not know the test CA either.
    let err = open(&tls.server.url(), &[]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("not trusted"), "{err}");
}

/// The messages of the `WARN` events logged on this thread while it is installed.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() == tracing::Level::WARN
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// Current-thread runtime: the subscriber set for this thread sees the connect.
#[tokio::test(flavor = "current_thread")]
async fn insecure_connects_without_a_ca_and_warns_at_every_start() {
    let tls = common::shared_tls();
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let vars = |prefix: &str| {
        common::config(&[
            ("CHATSTATE_BACKEND", "redis"),
            ("REDIS_URL", &tls.server.url()),
            ("CHATSTATE_KEY_PREFIX", prefix),
            ("REDIS_TLS_INSECURE", "1"),
            ("CHATSTATE_REDIS_FAIL_FAST", "1"),
        ])
    };
    for start in 1..=2 {
        let store = RedisStore::from_config(&vars(&common::unique_prefix()))
            .await
            .unwrap();
        works(&store).await;
        let seen = warnings.0.lock().unwrap().clone();
        let insecure = seen
            .iter()
            .filter(|m| m.contains("REDIS_TLS_INSECURE") && m.contains("NOT verified"))
            .count();
        assert_eq!(insecure, start, "one warning per start: {seen:?}");
    }
}

#[tokio::test]
async fn unreadable_certificate_files_are_config_errors_naming_the_variable() {
    let tls = common::shared_tls();
    let url = format!("rediss://:pw-s3cret@127.0.0.1:{}", tls.server.port);
    let missing = Path::new("/nonexistent/chatstate/ca.pem");
    let cases: [(&[(&str, &Path)], &str); 4] = [
        (&[("REDIS_CA_CERT", missing)], "REDIS_CA_CERT"),
        // A key is not a certificate.
        (&[("REDIS_CA_CERT", &tls.files.server_key)], "REDIS_CA_CERT"),
        (
            &[
                ("REDIS_CLIENT_CERT", &tls.files.client_cert),
                ("REDIS_CLIENT_KEY", missing),
            ],
            "REDIS_CLIENT_KEY",
        ),
        (
            &[
                ("REDIS_CLIENT_CERT", &tls.files.client_key),
                ("REDIS_CLIENT_KEY", &tls.files.client_key),
            ],
            "REDIS_CLIENT_CERT",
        ),
    ];
    for (vars, var) in cases {
        let err = open(&url, vars).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.message().contains(var), "{err}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains("pw-s3cret"), "{shown}");
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        }
    }
    let err = open(&url, &[("REDIS_CA_CERT", missing)]).await.unwrap_err();
    assert!(
        err.message()
            .contains("/nonexistent/chatstate/ca.pem: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn the_invalidation_bus_works_over_tls() {
    let tls = common::shared_tls();
    let store = open(&tls.server.url(), &[("REDIS_CA_CERT", &tls.files.ca)])
        .await
        .unwrap();
    let bus = RedisBus::new(&store).unwrap();
    let mut rx = bus.subscribe();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        first.expect("subscribed over TLS").unwrap(),
        BusEvent::Reset
    );
    let what = Invalidation::Key(CacheKey::new("answers", "q1").unwrap());
    bus.publish("instance-a", &what).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        got.expect("received in time").unwrap(),
        BusEvent::Invalidate {
            origin: "instance-a".into(),
            what,
        }
    );
}

#[tokio::test]
async fn tls_settings_on_a_plain_url_are_refused_by_the_builder_too() {
    let tls = common::shared_tls();
    let plain = format!("redis://127.0.0.1:{}", tls.server.port);
    let err = RedisStore::builder(chatstate_core::RedisUrl::parse(&plain).unwrap())
        .tls(chatstate_core::TlsConfig {
            ca_cert: Some(tls.files.ca.clone()),
            ..Default::default()
        })
        .fail_fast(true)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.message().contains("rediss://"), "{err}");
}
