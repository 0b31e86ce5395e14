//! Switching backends with the environment: each backend keeps its own data, and
//! switching back finds it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;

use chatstate::{BackendKind, Config, NewMessage, SessionKey, SessionStoreExt, Stores};

fn config(vars: &[(&str, &str)]) -> Config {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_lookup(|name| map.get(name).cloned()).unwrap()
}

#[tokio::test]
async fn the_flag_picks_the_backend_and_switching_back_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let key = SessionKey::new("acme", "whatsapp", "u1").unwrap();

    let file = config(&[("USE_REDIS", "0"), ("CHATSTATE_FILE_DIR", &dir_s)]);
    let stores = Stores::open(&file).await.unwrap();
    assert_eq!(stores.backend, BackendKind::File);
    stores
        .sessions
        .append_message(&key, NewMessage::user("kept on disk"))
        .await
        .unwrap();
    drop(stores);

    let memory = config(&[("CHATSTATE_BACKEND", "memory")]);
    let stores = Stores::open(&memory).await.unwrap();
    assert_eq!(stores.backend, BackendKind::Memory);
    assert!(
        stores.sessions.load(&key).await.unwrap().is_none(),
        "memory starts empty"
    );

    let back = Stores::open(&file).await.unwrap();
    let loaded = back.sessions.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.messages[0].content, "kept on disk",
        "switching back finds the data"
    );

    let tiered = back.tiered_cache(&file);
    let counters = back.batched_counters(&file).unwrap();
    let c = chatstate::CounterKey::new("messages").unwrap();
    counters.add(&c, 2);
    counters.shutdown().await.unwrap();
    assert_eq!(back.counters.get(&c).await.unwrap(), 2);
    drop(tiered);
}

#[tokio::test]
async fn use_redis_with_no_server_is_a_clear_temporary_error() {
    // A loopback port nothing listens on (never 6379).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:s3cret@127.0.0.1:{port}");
    let redis = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("REDIS_CONNECT_TIMEOUT_MS", "300"),
    ]);
    // By default the stores open anyway and every call fails at once, temporarily.
    let stores = Stores::open(&redis).await.unwrap();
    let key = SessionKey::new("acme", "whatsapp", "u1").unwrap();
    let err = stores
        .sessions
        .append_message(&key, NewMessage::user("oi"))
        .await
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{:?}", stores.health()).contains("s3cret"));
    // With CHATSTATE_REDIS_FAIL_FAST=1, opening is the error.
    let fail_fast = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("REDIS_CONNECT_TIMEOUT_MS", "300"),
        ("CHATSTATE_REDIS_FAIL_FAST", "1"),
    ]);
    let err = Stores::open(&fail_fast).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// `CHATSTATE_CODEC` reaches the stores: typed values written with `stores.codec`
/// are stored in that codec (bincode here; JSON, readable by other languages, by
/// default), and either reads back whatever codec the reader holds.
#[tokio::test]
async fn chatstate_codec_is_the_stores_codec() {
    use chatstate::{CacheKey, Codec, KvCache, KvCacheExt};
    let stores = Stores::open(&config(&[
        ("CHATSTATE_BACKEND", "memory"),
        ("CHATSTATE_CODEC", "bincode"),
    ]))
    .await
    .unwrap();
    assert_eq!(stores.codec, Codec::Bincode);
    let key = CacheKey::new("customers", "42").unwrap();
    stores
        .cache
        .set_value(&key, &("Ana", 31u8), None, stores.codec)
        .await
        .unwrap();
    let raw = KvCache::get(stores.cache.as_ref(), &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..4], b"CS1B");
    let back: (String, u8) = stores
        .cache
        .get_value(&key, Codec::Json)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, ("Ana".to_string(), 31), "read by the header's codec");
    let default = Stores::open(&config(&[("CHATSTATE_BACKEND", "memory")]))
        .await
        .unwrap();
    assert_eq!(default.codec, Codec::Json);
    default
        .cache
        .set_value(&key, &("Ana", 31), None, default.codec)
        .await
        .unwrap();
    let raw = KvCache::get(default.cache.as_ref(), &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&raw[..], b"CS1J[\"Ana\",31]", "JSON by default");
    assert!(
        !default.capabilities().persistent,
        "memory reports it is not persistent"
    );
}

#[tokio::test]
async fn every_backend_opens_a_reply_stream_and_the_coalesced_writer_writes_through() {
    use chatstate::{CoalesceConfig, ReplyStream, RunId, RunStatus};
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    for cfg in [
        config(&[("CHATSTATE_BACKEND", "memory")]),
        config(&[
            ("USE_REDIS", "0"),
            ("CHATSTATE_FILE_DIR", &dir_s),
            ("CHATSTATE_STREAM_TTL_SECONDS", "60"),
        ]),
    ] {
        let stores = Stores::open(&cfg).await.unwrap();
        let replies = stores.coalesced_replies(CoalesceConfig::default());
        let run = RunId::new("facade").unwrap();
        replies.start(&run, None).await.unwrap();
        for t in ["Ol", "á", "!"] {
            replies.append(&run, t).await.unwrap();
        }
        replies.finish(&run, RunStatus::Done).await.unwrap();
        let read = stores.replies.read(&run, 0).await.unwrap();
        let text: String = read.chunks.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(text, "Olá!", "{:?}", stores.backend);
        assert_eq!(read.chunks.len(), 1, "three tokens, one write");
        assert_eq!(read.finished, Some(RunStatus::Done));
    }
}
