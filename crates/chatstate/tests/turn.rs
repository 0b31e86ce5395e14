//! A chat turn through the facade (issue 13): `Stores::read_batch` (the backend's
//! read batch, with a tiered cache's local tier answering first) and
//! `commit_turn`, on memory, file and a throwaway redis-server this test starts
//! (never 6379), with the round trips each costs on Redis.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../chatstate-redis/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use chatstate::{
    BackendKind, BatchReads, CacheKey, Config, Expected, FocusKey, FocusStore, KvCache, NewMessage,
    PutMode, SessionKey, SessionPatch, SessionStore, Stores, Turn,
};

use common::config;

fn redis_config() -> Config {
    config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &common::shared().url()),
        ("CHATSTATE_KEY_PREFIX", &common::unique_prefix()),
    ])
}

fn local_configs(dir: &std::path::Path) -> Vec<Config> {
    let memory = Config {
        backend: BackendKind::Memory,
        ..Config::default()
    };
    let mut file = Config {
        backend: BackendKind::File,
        ..Config::default()
    };
    file.file_dir = dir.to_path_buf();
    vec![memory, file]
}

fn reads(key: &SessionKey) -> BatchReads {
    BatchReads::new()
        .session(key.clone())
        .focus(FocusKey::new("acme", "flow").unwrap())
        .cache(CacheKey::new("customers", "42").unwrap())
        .cache(CacheKey::new("customers", "43").unwrap())
}

/// One turn on `stores` (tiered or not): read, commit, read again; the second read
/// answers what the first wrote. Returns the second read's cache part.
async fn a_turn(stores: &Stores, key: &SessionKey) -> Vec<Option<Bytes>> {
    stores
        .focus
        .put(
            &FocusKey::new("acme", "flow").unwrap(),
            Bytes::from_static(b"billing"),
            PutMode::Overwrite,
            None,
        )
        .await
        .unwrap();
    stores
        .cache
        .set(
            &CacheKey::new("customers", "42").unwrap(),
            Bytes::from_static(b"Ana"),
            None,
        )
        .await
        .unwrap();
    let before = stores.read_batch(&reads(key)).await.unwrap();
    assert_eq!(before.session, None);
    assert_eq!(
        before.focus[0].as_ref().map(|d| d.value.clone()),
        Some(Bytes::from_static(b"billing"))
    );
    assert_eq!(before.cache, [Some(Bytes::from_static(b"Ana")), None]);
    let receipt = stores
        .sessions
        .commit_turn(
            key,
            Turn::new()
                .messages([NewMessage::user("oi"), NewMessage::assistant("olá")])
                .patch(SessionPatch::new().summary("greeted")),
        )
        .await
        .unwrap();
    assert_eq!(receipt.version, 1);
    let after = stores.read_batch(&reads(key)).await.unwrap();
    let loaded = after.session.unwrap();
    assert_eq!(loaded.session.summary.as_deref(), Some("greeted"));
    assert_eq!(loaded.messages.len(), 2);
    stores
        .sessions
        .commit_turn(
            key,
            Turn::new()
                .message(NewMessage::user("tchau"))
                .expect(Expected::Version(loaded.session.version)),
        )
        .await
        .unwrap();
    after.cache
}

/// On memory and file, plain and tiered: the read batch answers what was
/// written, and a tiered cache's local tier answers the cache entries it holds.
#[tokio::test]
async fn read_batch_and_turn_on_memory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    for config in local_configs(dir.path()) {
        let plain = Stores::open(&config).await.unwrap();
        let key = SessionKey::new("acme", "whatsapp", "plain").unwrap();
        assert_eq!(
            a_turn(&plain, &key).await[0],
            Some(Bytes::from_static(b"Ana"))
        );

        let tiered = Stores::open(&config)
            .await
            .unwrap()
            .with_tiered_cache(&config);
        let key = SessionKey::new("acme", "whatsapp", "tiered").unwrap();
        a_turn(&tiered, &key).await;
        let hits = tiered.tiered().unwrap().stats().local_hits;
        let read = tiered.read_batch(&reads(&key)).await.unwrap();
        assert_eq!(read.cache[0], Some(Bytes::from_static(b"Ana")));
        assert!(
            tiered.tiered().unwrap().stats().local_hits > hits,
            "the local tier answered the entry it holds ({:?})",
            config.backend
        );
    }
}

/// On Redis: a read batch of a session, a document and two entries is one round
/// trip; a turn commit is one; with a tiered cache holding every entry the read
/// batch is still one (the session and the document) and a batch of held entries
/// alone is none. What the local tier misses is read in the same round trip and
/// kept locally.
#[tokio::test]
async fn redis_read_batch_and_turn_commit_are_one_round_trip_each() {
    let config = redis_config();
    let stores = Stores::open(&config).await.unwrap();
    let key = SessionKey::new("acme", "whatsapp", "+5511").unwrap();
    a_turn(&stores, &key).await; // warms the scripts (a first use may resend)
    let trips = || stores.round_trips().unwrap().round_trips;

    let before = trips();
    let read = stores.read_batch(&reads(&key)).await.unwrap();
    assert_eq!(trips() - before, 1, "the read batch is one round trip");
    assert_eq!(read.session.unwrap().messages.len(), 3);
    let before = trips();
    stores
        .sessions
        .commit_turn(
            &key,
            Turn::new()
                .messages([NewMessage::user("q"), NewMessage::assistant("a")])
                .patch(SessionPatch::new().summary("s")),
        )
        .await
        .unwrap();
    assert_eq!(trips() - before, 1, "the turn commit is one round trip");

    let tiered = Stores::open(&config)
        .await
        .unwrap()
        .with_tiered_cache(&config);
    // The bus says Reset once subscribed, dropping the local tier: wait for it, or
    // the copies kept below may be dropped mid-test (seen under load).
    let up = tokio::time::timeout(Duration::from_secs(5), async {
        while tiered.tiered().unwrap().stats().resets == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "the tiered cache's subscription came up");
    let trips = || tiered.round_trips().unwrap().round_trips;
    let before = trips();
    let first = tiered.read_batch(&reads(&key)).await.unwrap();
    assert_eq!(
        trips() - before,
        1,
        "local misses ride along with the session"
    );
    assert_eq!(first.cache, [Some(Bytes::from_static(b"Ana")), None]);
    let before = trips();
    let hits = tiered.tiered().unwrap().stats().local_hits;
    let second = tiered.read_batch(&reads(&key)).await.unwrap();
    assert_eq!(trips() - before, 1, "the session and the document only");
    assert_eq!(second.cache, first.cache);
    assert!(
        tiered.tiered().unwrap().stats().local_hits > hits,
        "the held customer was answered from the local tier"
    );
    assert_eq!(second.session, first.session);
    let before = trips();
    let hits = tiered.tiered().unwrap().stats().local_hits;
    let cached = tiered
        .read_batch(&BatchReads::new().cache(CacheKey::new("customers", "42").unwrap()))
        .await
        .unwrap();
    assert_eq!(cached.cache, [Some(Bytes::from_static(b"Ana"))]);
    assert_eq!(trips() - before, 0, "held entries alone cost no round trip");
    assert_eq!(tiered.tiered().unwrap().stats().local_hits, hits + 1);

    // A change through the tiered cache is seen by the next read batch.
    tiered
        .cache
        .set(
            &CacheKey::new("customers", "42").unwrap(),
            Bytes::from_static(b"Ana Maria"),
            None,
        )
        .await
        .unwrap();
    let read = tiered.read_batch(&reads(&key)).await.unwrap();
    assert_eq!(read.cache[0], Some(Bytes::from_static(b"Ana Maria")));
    let _ = SessionStore::delete(stores.sessions.as_ref(), &key).await;
    let _ = KvCache::delete(
        stores.cache.as_ref(),
        &CacheKey::new("customers", "42").unwrap(),
    )
    .await;
}

/// A cache-only read batch through a tiered cache, with Redis gone and nothing held
/// locally, returns the store's own error: its kind, the key and the source.
#[tokio::test]
async fn a_tiered_cache_only_read_batch_returns_the_stores_own_error() {
    let mut server = common::RedisServer::start(&[]);
    let config = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &server.url()),
        ("CHATSTATE_KEY_PREFIX", &common::unique_prefix()),
        ("REDIS_COMMAND_TIMEOUT_MS", "500"),
        ("REDIS_CONNECT_TIMEOUT_MS", "500"),
    ]);
    let stores = Stores::open(&config)
        .await
        .unwrap()
        .with_tiered_cache(&config);
    server.stop();
    let err = stores
        .read_batch(&BatchReads::new().cache(CacheKey::new("customers", "7").unwrap()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            chatstate::ErrorKind::Unavailable | chatstate::ErrorKind::Timeout
        ),
        "{err}"
    );
    assert_eq!(err.operation(), Some("read_batch"), "{err}");
    assert!(err.key().is_some(), "names the key: {err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "keeps the cause: {err}"
    );
}

/// With the local session tier and the tiered cache, a turn whose session,
/// customer and focus document this instance holds is one round trip: the read
/// batch is answered locally, the commit is the only trip; the copies it keeps
/// equal what Redis holds.
#[tokio::test]
async fn a_turn_held_locally_is_one_round_trip_on_redis() {
    let config = redis_config();
    let stores = Stores::open(&config)
        .await
        .unwrap()
        .with_tiered_cache(&config)
        .with_local_sessions(&config);
    let up = tokio::time::timeout(Duration::from_secs(5), async {
        while stores.tiered().unwrap().stats().resets == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "the tiered cache's subscription came up");
    let key = SessionKey::new("acme", "whatsapp", "+5511local").unwrap();
    // Warms the turn script (a server's first use of it takes a resend).
    let warm = SessionKey::new("acme", "whatsapp", "+5511warm").unwrap();
    stores
        .sessions
        .commit_turn(&warm, Turn::new().message(NewMessage::user("warm")))
        .await
        .unwrap();
    let customer = CacheKey::new("customers", "local-1").unwrap();
    stores
        .cache
        .set(&customer, Bytes::from_static(b"Ana"), None)
        .await
        .unwrap();
    let order = FocusKey::new("acme:+5511local", "order").unwrap();
    stores
        .focus
        .put(
            &order,
            Bytes::from_static(b"pizza"),
            PutMode::Overwrite,
            None,
        )
        .await
        .unwrap();
    let reads = BatchReads::new()
        .session(key.clone())
        .focus(order.clone())
        .cache(customer.clone());
    let trips = || stores.round_trips().unwrap().round_trips;
    let mut version = 0;
    for turn in 0..3u64 {
        let before = trips();
        let read = stores.read_batch(&reads).await.unwrap();
        let read_trips = trips() - before;
        if turn > 0 {
            assert_eq!(read_trips, 0, "turn {turn}: the read is answered locally");
        }
        assert_eq!(read.cache, [Some(Bytes::from_static(b"Ana"))]);
        assert_eq!(
            read.focus[0].as_ref().map(|d| &d.value[..]),
            Some(&b"pizza"[..]),
            "turn {turn}: the focus document"
        );
        let seen = read.session.as_ref().map_or(0, |s| s.session.version);
        assert_eq!(seen, version, "turn {turn}: the read shows the last commit");
        let before = trips();
        let receipt = stores
            .sessions
            .commit_turn(
                &key,
                Turn::new()
                    .messages([NewMessage::user("q"), NewMessage::assistant("a")])
                    .patch(SessionPatch::new().summary(format!("turn {turn}")))
                    .expect(Expected::Version(seen)),
            )
            .await
            .unwrap();
        assert_eq!(
            trips() - before,
            1,
            "turn {turn}: the commit is one round trip"
        );
        version = receipt.version;
    }
    let held = stores.local_sessions().unwrap().held(&key).await.unwrap();
    let fresh = Stores::open(&config).await.unwrap();
    assert_eq!(Some(held), fresh.sessions.load(&key).await.unwrap());
    let held = stores.local_focus().unwrap().held(&order).await;
    assert_eq!(held, fresh.focus.get(&order).await.unwrap());
    assert!(held.is_some());
    let _ = FocusStore::delete(stores.focus.as_ref(), &order).await;
    for k in [&key, &warm] {
        let _ = SessionStore::delete(stores.sessions.as_ref(), k).await;
    }
    let _ = KvCache::delete(stores.cache.as_ref(), &customer).await;
}
