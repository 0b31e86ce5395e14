//! Redis through Sentinel, against real servers this test process starts on free
//! ports (a master, a replica and three Sentinels per failover test: see
//! `common::SentinelSet`): connecting from the variables with passwords on both
//! sides, following a master killed mid-workload (service back within the failover
//! plus 5 s, acknowledged writes lost only within the documented replication
//! window, the invalidation bus back on the new master), and a demoted master's
//! `READONLY` replies moving the store to the new master.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate_core::{
    BusEvent, CacheKey, ErrorKind, Invalidation, InvalidationBus, KvCache, NewMessage, SessionKey,
    SessionStore, SessionStoreExt,
};
use chatstate_redis::{RedisBus, RedisStore};
use common::{SENTINEL_DOWN_AFTER, SENTINEL_FAILOVER_TIMEOUT, SentinelSet};

/// Writes acknowledged this long before the master died may be lost in the
/// failover (the bound the crate docs state, "Sentinel"): a connected replica
/// receives each write as the master executes it, and reports its offset every
/// second, so a replica the master considers in sync is at most about 1 s behind.
const LOSS_WINDOW: Duration = Duration::from_secs(1);

/// Waits (off the runtime's threads) until the Sentinels name a master other than
/// the one on `old_port`; returns its port.
async fn wait_for_new_master(set: &Arc<SentinelSet>, old_port: u16, within: Duration) -> u16 {
    let set = set.clone();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + within;
        loop {
            if let Some(port) = set.master_port()
                && port != old_port
            {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinels named no new master within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("no panic")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_through_sentinel_with_both_passwords_from_the_variables() {
    let set = SentinelSet::start_small(Some("master-secret"), Some("sentinel-secret"));
    let prefix = common::unique_prefix();
    let (url, sentinels) = (set.url_var(), set.sentinels_var());
    let vars = |sentinel_pw: &'static str| {
        common::config(&[
            ("REDIS_URL", &url),
            ("REDIS_SENTINELS", &sentinels),
            ("REDIS_SENTINEL_MASTER", common::SENTINEL_MASTER),
            ("REDIS_SENTINEL_PASSWORD", sentinel_pw),
            ("CHATSTATE_KEY_PREFIX", &prefix),
            ("CHATSTATE_REDIS_FAIL_FAST", "1"),
        ])
    };
    let store = RedisStore::from_config(&vars("sentinel-secret"))
        .await
        .expect("connects through the Sentinel");
    assert!(
        store.pool().is_none(),
        "no pool to one address via Sentinel"
    );

    let k = SessionKey::new("acme", "web", "u1").unwrap();
    store
        .append_message(&k, NewMessage::user("hello"))
        .await
        .unwrap();
    let loaded = store.load(&k).await.unwrap().expect("the session");
    assert_eq!(loaded.messages[0].content, "hello");
    let ck = CacheKey::new("ns", "k").unwrap();
    store
        .set(&ck, Bytes::from_static(b"v"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        KvCache::get(&store, &ck).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    // The data is on the master the Sentinel names.
    let keys = set.cli(0, &["--scan", "--pattern", &format!("{prefix}*")]);
    assert!(keys.lines().count() >= 2, "keys on the master: {keys:?}");

    let shown = format!("{store:?}");
    for secret in ["master-secret", "sentinel-secret"] {
        assert!(!shown.contains(secret), "{shown}");
    }

    // Refused credentials are a Config error, the Sentinels' as the master's.
    let err = RedisStore::from_config(&vars("wrong-sentinel-secret"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let bad_master = common::config(&[
        ("REDIS_URL", "redis://:wrong-master@ignored.invalid:1"),
        ("REDIS_SENTINELS", &sentinels),
        ("REDIS_SENTINEL_MASTER", common::SENTINEL_MASTER),
        ("REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
    ]);
    let err = RedisStore::from_config(&bad_master).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(!err.to_string().contains("wrong-master"), "{err}");

    // An unknown master name: unreachable (temporary), not a crash or a Config error.
    let unknown = common::config(&[
        ("REDIS_URL", &url),
        ("REDIS_SENTINELS", &sentinels),
        ("REDIS_SENTINEL_MASTER", "nobody"),
        ("REDIS_SENTINEL_PASSWORD", "sentinel-secret"),
        ("CHATSTATE_REDIS_FAIL_FAST", "1"),
    ]);
    let err = RedisStore::from_config(&unknown).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
}

/// What a workload task wrote and when the store acknowledged it.
#[derive(Clone, Debug)]
enum Write {
    Cache(CacheKey),
    Session(SessionKey),
}

struct Acked {
    write: Write,
    at: Instant,
}

/// Writes until `stop`: task `t` sets cache keys (or, for task 0, appends the first
/// message of a new session), one write every 5 ms; returns the acknowledged ones.
async fn workload(store: RedisStore, t: usize, stop: Arc<AtomicBool>) -> Vec<Acked> {
    let mut acked = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let write = if t == 0 {
            Write::Session(
                SessionKey::new("acme", "web", format!("w{t}-{i}")).expect("a valid key"),
            )
        } else {
            Write::Cache(CacheKey::new("w", format!("{t}-{i}")).expect("a valid key"))
        };
        let result = match &write {
            Write::Cache(k) => {
                store
                    .set(
                        k,
                        Bytes::from(format!("v{i}")),
                        Some(Duration::from_secs(600)),
                    )
                    .await
            }
            Write::Session(k) => store
                .append_message(k, NewMessage::user(format!("m{i}")))
                .await
                .map(|_| ()),
        };
        if result.is_ok() {
            acked.push(Acked {
                write,
                at: Instant::now(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acked
}

async fn present(store: &RedisStore, write: &Write) -> bool {
    match write {
        Write::Cache(k) => KvCache::get(store, k)
            .await
            .expect("read on the new master")
            .is_some(),
        Write::Session(k) => store
            .load(k)
            .await
            .expect("read on the new master")
            .is_some_and(|s| !s.messages.is_empty()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_and_only_the_replication_window_is_lost() {
    let set = Arc::new(SentinelSet::start(Some("pw"), None));
    let store = set
        .builder()
        .prefix(common::unique_prefix())
        .connect()
        .await
        .expect("connects through the Sentinels");
    let bus = RedisBus::new(&store).expect("a bus");
    let mut events = bus.subscribe();
    let old_port = set.master_port().expect("a master");
    assert_eq!(old_port, set.data[0].port);

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|t| tokio::spawn(workload(store.clone(), t, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // kill -9 the master mid-workload.
    let killed_at = Instant::now();
    {
        let set = set.clone();
        tokio::task::spawn_blocking(move || set.kill_data_node(0))
            .await
            .unwrap();
    }
    let new_port = wait_for_new_master(&set, old_port, Duration::from_secs(30)).await;
    let switched = killed_at.elapsed();
    assert_eq!(new_port, set.data[1].port, "the replica was promoted");

    // Writes succeed again: wait for the first write acknowledged by the new master.
    let probe = CacheKey::new("probe", "after").unwrap();
    let recovered = loop {
        if store
            .set(
                &probe,
                Bytes::from_static(b"x"),
                Some(Duration::from_secs(600)),
            )
            .await
            .is_ok()
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < switched + Duration::from_secs(10),
            "no write succeeded 10 s after the Sentinels named the new master"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Keep the workload going a little on the new master, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("no panic"));
    }
    eprintln!(
        "failover: Sentinels named the new master {switched:?} after the kill, writes \
         succeeded again {recovered:?} after it; {} writes acknowledged",
        acked.len()
    );
    // How fast the Sentinels fail over is theirs (a split vote retries after twice
    // the failover-timeout), so it is reported, not asserted; what the store adds
    // on top of it is.
    if switched > SENTINEL_DOWN_AFTER + SENTINEL_FAILOVER_TIMEOUT {
        eprintln!("the Sentinels were slow: {switched:?}");
    }
    assert!(
        recovered <= switched + Duration::from_secs(5),
        "writes came back {recovered:?} after the kill, the failover took {switched:?}: \
         more than 5 s later"
    );

    // Every acknowledged write is on the new master, except those acknowledged
    // within LOSS_WINDOW before the kill (and before the new master was named).
    let window_start = killed_at - LOSS_WINDOW;
    let window_end = killed_at + switched;
    let (mut before, mut after, mut in_window, mut lost_in_window) = (0, 0, 0, 0);
    for a in &acked {
        let here = present(&store, &a.write).await;
        if a.at >= window_start && a.at < window_end {
            in_window += 1;
            lost_in_window += usize::from(!here);
        } else {
            assert!(
                here,
                "{:?}, acknowledged {:?} {} the kill, is lost",
                a.write,
                if a.at < killed_at {
                    killed_at - a.at
                } else {
                    a.at - killed_at
                },
                if a.at < killed_at { "before" } else { "after" }
            );
            if a.at < window_start {
                before += 1;
            } else {
                after += 1;
            }
        }
    }
    eprintln!(
        "{before} writes before the window and {after} after it all kept; \
         {lost_in_window} of {in_window} in the window lost"
    );
    assert!(
        before > 50 && after > 10,
        "the workload ran on both masters"
    );

    // The invalidation bus follows the master too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let what = Invalidation::Key(CacheKey::new("ns", "after-failover").unwrap());
    'delivered: loop {
        assert!(
            Instant::now() < deadline,
            "the bus delivered nothing after the failover"
        );
        let _ = bus.publish("other-instance", &what).await;
        let until = tokio::time::Instant::now() + Duration::from_millis(200);
        while let Ok(Ok(event)) = tokio::time::timeout_at(until, events.recv()).await {
            if let BusEvent::Invalidate { what: got, .. } = event
                && got == what
            {
                break 'delivered;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_master_answering_readonly_moves_the_store_to_the_new_master() {
    let set = Arc::new(SentinelSet::start(None, None));
    let store = set
        .builder()
        .prefix(common::unique_prefix())
        .connect()
        .await
        .expect("connects through the Sentinels");
    let k = CacheKey::new("ro", "k").unwrap();
    let put = |v: &'static str| {
        let (store, k) = (store.clone(), k.clone());
        async move {
            store
                .set(
                    &k,
                    Bytes::from_static(v.as_bytes()),
                    Some(Duration::from_secs(600)),
                )
                .await
        }
    };
    put("before").await.expect("writes go to the master");
    let old_port = set.data[0].port;

    // A failover the Sentinels run while the old master stays up: they promote the
    // replica at once, but reconfigure the old master (and drop its clients) only
    // when they next look at it, seconds later. Meanwhile demote it by hand, as that
    // reconfiguration would, without dropping the store's connection to it: from
    // now on it answers writes with READONLY over a socket that stays up.
    let out = common::cli_auth(
        set.sentinels[0].port,
        None,
        &["SENTINEL", "FAILOVER", common::SENTINEL_MASTER],
    );
    assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
    let new_port = wait_for_new_master(&set, old_port, Duration::from_secs(15)).await;
    assert_eq!(new_port, set.data[1].port);
    let out = set.cli(0, &["REPLICAOF", "127.0.0.1", &new_port.to_string()]);
    assert!(out.contains("OK"), "REPLICAOF: {out}");
    let demoted_at = Instant::now();

    // Writes: refused with READONLY at most briefly, then on the new master.
    let mut refusals = Vec::new();
    let recovered = loop {
        match put("after").await {
            Ok(()) => break demoted_at.elapsed(),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                refusals.push(e.to_string());
            }
        }
        assert!(
            demoted_at.elapsed() < Duration::from_secs(5),
            "writes still fail 5 s after the demotion: {refusals:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("READONLY: writes back {recovered:?} after the demotion; refusals {refusals:?}");
    assert!(
        !refusals.is_empty() && refusals.iter().all(|r| r.contains("READONLY")),
        "the demoted master's READONLY moved the store: {refusals:?}"
    );
    assert!(
        recovered < Duration::from_secs(2),
        "writes came back {recovered:?} after the demotion"
    );
    let node = set.node(new_port);
    let keys = set.cli(
        node,
        &[
            "--scan",
            "--pattern",
            &format!("{}*", store.layout().prefix()),
        ],
    );
    let values: Vec<String> = keys
        .lines()
        .map(|key| set.cli(node, &["GET", key]).trim().to_string())
        .collect();
    assert!(
        values.iter().any(|v| v == "after"),
        "the write went to the new master: {values:?}"
    );
}

/// A master that speaks only TLS, found through a Sentinel: `rediss://` in
/// `REDIS_URL` and `REDIS_CA_CERT` apply to the master the Sentinel names (and to
/// the bus's connection to it); another CA is refused with a Config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_master_found_through_sentinel_is_verified_with_the_ca() {
    let files = common::TlsFiles::generate();
    let set = SentinelSet::start_small_tls(&files);
    let open = |ca: &std::path::Path| {
        let ca = ca.display().to_string();
        let vars = [
            ("REDIS_URL", "rediss://ignored.invalid:1".to_string()),
            ("REDIS_SENTINELS", set.sentinels_var()),
            ("REDIS_SENTINEL_MASTER", common::SENTINEL_MASTER.to_string()),
            ("REDIS_CA_CERT", ca),
            ("CHATSTATE_REDIS_FAIL_FAST", "1".to_string()),
            ("CHATSTATE_KEY_PREFIX", common::unique_prefix()),
        ];
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let config = common::config(&vars);
        async move { RedisStore::from_config(&config).await }
    };
    let store = open(&files.ca).await.unwrap();
    let key = chatstate_core::SessionKey::new("acme", "wa", "5511").unwrap();
    chatstate_core::SessionStore::append_messages(
        &store,
        &key,
        vec![chatstate_core::NewMessage::user("oi")],
    )
    .await
    .unwrap();
    let loaded = chatstate_core::SessionStore::load(&store, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.messages.len(), 1);
    let bus = RedisBus::new(&store).unwrap();
    let mut rx = chatstate_core::InvalidationBus::subscribe(&bus);
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert_eq!(
        first.expect("subscribed over TLS").unwrap(),
        chatstate_core::BusEvent::Reset
    );
    let err = open(&files.other_ca).await.unwrap_err();
    assert_eq!(err.kind(), chatstate_core::ErrorKind::Config, "{err}");
    assert!(err.message().contains("not trusted"), "{err}");
}
