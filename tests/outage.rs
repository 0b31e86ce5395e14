//! Redis refusing, pausing, crashing and coming back, against real servers the tests
//! start: the facade's start-up choices (lazy start, fail fast, fallback), the
//! circuit breaker's bound, and a workload of sessions, a cache with a loader and
//! batched counters that rides out a SIGSTOP, a kill and a restart.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../crates/chatstate-redis/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate::{
    BackendKind, BreakerState, CacheKey, Config, CounterKey, ErrorKind, NewMessage, SessionKey,
    SessionStoreExt, Stores,
};

use common::config;

/// A loopback port nothing listens on: a server started there and stopped.
fn dead_port() -> u16 {
    let server = common::RedisServer::start(&[]);
    server.port
}

/// How fast a call must fail once the breaker is open: it touches no socket, so
/// anything near a timeout is a failure of the promise (generous for a loaded CI).
const FAIL_FAST_BOUND: Duration = Duration::from_millis(150);

/// Retries `append` every 50 ms until it succeeds; the time it took.
async fn time_until_served(stores: &Stores, key: &SessionKey) -> Duration {
    let start = Instant::now();
    loop {
        if stores
            .sessions
            .append_message(key, NewMessage::user("probe"))
            .await
            .is_ok()
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "service did not come back within 10 s: {:?}",
            stores.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_at_start_the_stores_open_fail_fast_and_connect_when_it_comes_up() {
    let port = dead_port();
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = common::unique_prefix();
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_KEY_PREFIX", &prefix),
        ("CHATSTATE_REDIS_BREAKER_OPEN_MS", "200"),
    ]);
    let opening = Instant::now();
    let stores = Stores::open(&cfg).await.unwrap();
    assert!(
        opening.elapsed() <= cfg.redis.connect_timeout + Duration::from_secs(1),
        "opening waits at most the connect timeout: {:?}",
        opening.elapsed()
    );
    assert_eq!(stores.backend, BackendKind::Redis);
    let health = stores.health();
    assert_ne!(health.breaker, BreakerState::Closed, "{health:?}");
    assert!(!health.reachable);
    assert_eq!(health.last_error, Some(ErrorKind::Unavailable));
    assert!(health.fallback_from.is_none());

    let key = SessionKey::new("acme", "whatsapp", "u1").unwrap();
    for _ in 0..5 {
        let t = Instant::now();
        let err = stores
            .sessions
            .append_message(&key, NewMessage::user("early"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(t.elapsed() < FAIL_FAST_BOUND, "{:?}", t.elapsed());
        let t = Instant::now();
        let err = stores
            .cache
            .get(&CacheKey::new("c", "1").unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        assert!(t.elapsed() < FAIL_FAST_BOUND, "{:?}", t.elapsed());
    }

    let _up = common::Restarted::on(port);
    let back = time_until_served(&stores, &key).await;
    assert!(back < Duration::from_secs(5), "served again after {back:?}");
    let health = stores.health();
    assert_eq!(health.breaker, BreakerState::Closed);
    assert!(health.reachable);
    let loaded = stores.sessions.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.session.message_count, 1,
        "only the served append landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_refuses_to_open_without_showing_the_password() {
    let port = dead_port();
    let url = format!("redis://bot:s3cret-pw@127.0.0.1:{port}/0");
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_REDIS_FAIL_FAST", "1"),
    ]);
    let err = Stores::open(&cfg).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(!format!("{err:?}").contains("s3cret-pw"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_fallback_serves_from_the_file_store_when_redis_is_down_at_start() {
    let port = dead_port();
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let url = format!("redis://127.0.0.1:{port}");
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_REDIS_FALLBACK", "file"),
        ("CHATSTATE_FILE_DIR", &dir_s),
    ]);
    let stores = Stores::open(&cfg).await.unwrap();
    assert_eq!(stores.backend, BackendKind::File, "the fallback serves");
    let health = stores.health();
    let fallback = health.fallback_from.clone().unwrap();
    assert_eq!(fallback.configured, BackendKind::Redis);
    assert!(fallback.reason.contains("cannot connect"), "{fallback:?}");
    assert!(health.reachable);
    assert_eq!(health.breaker, BreakerState::Closed);

    let key = SessionKey::new("acme", "whatsapp", "u1").unwrap();
    stores
        .sessions
        .append_message(&key, NewMessage::user("kept in the fallback"))
        .await
        .unwrap();
    drop(stores);

    // It really is the file store in CHATSTATE_FILE_DIR: the file backend opened on
    // its own finds the session.
    let file = config(&[("USE_REDIS", "0"), ("CHATSTATE_FILE_DIR", &dir_s)]);
    let stores = Stores::open(&file).await.unwrap();
    let loaded = stores.sessions.load(&key).await.unwrap().unwrap();
    assert_eq!(loaded.messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_fallback_serves_from_memory_and_a_reachable_redis_is_used() {
    let port = dead_port();
    let url = format!("redis://127.0.0.1:{port}");
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_REDIS_FALLBACK", "memory"),
    ]);
    let stores = Stores::open(&cfg).await.unwrap();
    assert_eq!(stores.backend, BackendKind::Memory);
    assert_eq!(
        stores.health().fallback_from.map(|f| f.configured),
        Some(BackendKind::Redis)
    );
    let key = SessionKey::new("acme", "whatsapp", "u1").unwrap();
    stores
        .sessions
        .append_message(&key, NewMessage::user("oi"))
        .await
        .unwrap();

    // With Redis up, the fallback is not taken.
    let server = common::shared();
    let prefix = common::unique_prefix();
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &server.url()),
        ("CHATSTATE_KEY_PREFIX", &prefix),
        ("CHATSTATE_REDIS_FALLBACK", "memory"),
    ]);
    let stores = Stores::open(&cfg).await.unwrap();
    assert_eq!(stores.backend, BackendKind::Redis);
    assert!(stores.health().fallback_from.is_none());
    assert!(stores.health().reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_fail_even_with_a_fallback_configured() {
    let server = common::RedisServer::start(&["--requirepass", "right-pw"]);
    let url = format!("redis://:wrong-pw@127.0.0.1:{}", server.port);
    let cfg = config(&[
        ("USE_REDIS", "1"),
        ("REDIS_URL", &url),
        ("CHATSTATE_REDIS_FALLBACK", "file"),
    ]);
    let err = Stores::open(&cfg).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    // Without a fallback too: a misconfiguration is not an outage to wait out.
    let cfg = config(&[("USE_REDIS", "1"), ("REDIS_URL", &url)]);
    assert_eq!(
        Stores::open(&cfg).await.unwrap_err().kind(),
        ErrorKind::Config
    );
}

/// Whether the breaker has been open for at least `settle`: long enough that every
/// call that went to Redis before it opened (and a cache load another call joins)
/// has ended within its command timeout. From then on, every call must fail fast.
fn open_for_at_least(stores: &Stores, settle: Duration) -> bool {
    use chatstate::Clock;
    let h = stores.health();
    let open_ms = chatstate::SystemClock.now().as_millis() - h.since.as_millis();
    h.breaker != BreakerState::Closed && open_ms >= settle.as_millis() as i64
}

/// A throwaway `redis-server` with an append-only file fsynced on every write, in
/// a fresh folder: a `kill -9` then loses no acknowledged write, and
/// [`Durable::restart`] finds the data again.
struct Durable {
    server: common::RedisServer,
    args: Vec<String>,
    _data: tempfile::TempDir,
}

impl Durable {
    fn start() -> Durable {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().to_str().unwrap().to_string();
        let args: Vec<String> = [
            "--dir",
            &dir,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ]
        .map(String::from)
        .to_vec();
        let server =
            common::RedisServer::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
        Durable {
            server,
            args,
            _data: data,
        }
    }

    /// Starts the server again on its port, with its data.
    fn restart(&self) -> common::Restarted {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        common::Restarted::with_args(self.server.port, &args)
    }

    /// The outage tests' configuration: this server under a fresh key prefix,
    /// 300 ms command timeout, a breaker that probes after 200 ms, plus `extra`.
    fn config(&self, extra: &[(&str, &str)]) -> Config {
        let (url, prefix) = (self.server.url(), common::unique_prefix());
        let mut vars = vec![
            ("USE_REDIS", "1"),
            ("REDIS_URL", url.as_str()),
            ("CHATSTATE_KEY_PREFIX", prefix.as_str()),
            ("REDIS_COMMAND_TIMEOUT_MS", "300"),
            ("CHATSTATE_REDIS_BREAKER_OPEN_MS", "200"),
        ];
        vars.extend_from_slice(extra);
        config(&vars)
    }
}

/// The longest any call of the workload may take: the connect timeout (a call that
/// finds the connection being re-established) plus the command timeout (300 ms
/// each in the workload's config), with a second of slack for a loaded machine. A
/// cache `get_or_load` makes up to three calls (read, write-back, announcement).
const CALL_BOUND: Duration = Duration::from_millis(1600);

/// What the workload saw.
#[derive(Default)]
struct Tally {
    /// Calls that started while the breaker was open and took longer than the bound.
    slow_while_open: Mutex<Vec<(&'static str, Duration)>>,
    /// Calls that failed at once because the breaker was open.
    failed_fast: AtomicU64,
    /// Errors of a kind an outage must not produce.
    wrong_errors: Mutex<Vec<String>>,
    /// Cache requests, and those answered with the right value.
    cache_requests: AtomicU64,
    cache_served: AtomicU64,
    /// Counter increments made.
    added: AtomicU64,
}

impl Tally {
    fn check(&self, what: &'static str, started_open: bool, took: Duration) {
        if started_open && took > FAIL_FAST_BOUND {
            self.slow_while_open.lock().unwrap().push((what, took));
        }
    }
}

/// The value the loader of cache key `n` returns (and so the only value a request
/// for it may be answered with).
fn cache_value(n: u64) -> Bytes {
    Bytes::from(format!("customer-{n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_rides_out_a_pause_a_crash_and_a_restart() {
    // Persistence with an fsync per write, so a kill -9 keeps every acknowledged
    // write and the checks below can be exact.
    let mut redis = Durable::start();
    let cfg = redis.config(&[
        ("REDIS_CONNECT_TIMEOUT_MS", "300"),
        ("CHATSTATE_REDIS_BREAKER_FAILURES", "3"),
        ("CHATSTATE_COUNTER_FLUSH_SECONDS", "1"),
    ]);
    let stores = Stores::open(&cfg).await.unwrap();
    let cache = Arc::new(stores.tiered_cache(&cfg));
    let counters = Arc::new(stores.batched_counters(&cfg).unwrap());
    let counter = CounterKey::new("messages_in").unwrap();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let settle = cfg.redis.command_timeout + Duration::from_millis(50);

    const TASKS: usize = 6;
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let (stores, cache, counters, counter, tally, stop) = (
            stores.clone(),
            cache.clone(),
            counters.clone(),
            counter.clone(),
            tally.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let key = SessionKey::new("acme", "whatsapp", format!("user-{task}")).unwrap();
            let (mut attempted, mut acked) = (0u64, 0u64);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // A session append: served, or a temporary error; never slow once
                // the breaker is open, never hung.
                let open = open_for_at_least(&stores, settle);
                let t = Instant::now();
                let appended = tokio::time::timeout(
                    CALL_BOUND,
                    stores
                        .sessions
                        .append_message(&key, NewMessage::user(format!("m{i}"))),
                )
                .await
                .expect("an append hung");
                tally.check("append", open, t.elapsed());
                attempted += 1;
                match appended {
                    Ok(_) => acked += 1,
                    Err(e) if e.is_temporary() => {
                        if e.message().contains("circuit breaker") {
                            tally.failed_fast.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => tally.wrong_errors.lock().unwrap().push(e.to_string()),
                }

                // A cache read with a loader: always answered, with the right value.
                let n = (i * 7 + task as u64) % 20;
                let ckey = CacheKey::new("customers", n.to_string()).unwrap();
                let open = open_for_at_least(&stores, settle);
                let t = Instant::now();
                tally.cache_requests.fetch_add(1, Ordering::Relaxed);
                let got = tokio::time::timeout(
                    3 * CALL_BOUND,
                    cache.get_or_load_bytes(&ckey, Some(Duration::from_secs(60)), || async move {
                        Ok(Some(cache_value(n)))
                    }),
                )
                .await
                .expect("a cache read hung");
                tally.check("get_or_load", open, t.elapsed());
                match got {
                    Ok(Some(v)) if v == cache_value(n) => {
                        tally.cache_served.fetch_add(1, Ordering::Relaxed);
                    }
                    other => tally
                        .wrong_errors
                        .lock()
                        .unwrap()
                        .push(format!("cache request not served: {other:?}")),
                }

                // A counter increment: local, never fails.
                counters.add(&counter, 1);
                tally.added.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (key, attempted, acked)
        }));
    }
    let watcher = SessionKey::new("acme", "whatsapp", "watcher").unwrap();

    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. Redis pauses (SIGSTOP): calls time out, then the breaker opens.
    redis.server.pause();
    let paused = Instant::now();
    let mut opened = false;
    while paused.elapsed() < Duration::from_millis(2500) {
        opened |= stores.health().breaker != BreakerState::Closed;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(opened, "the breaker opened during the pause");
    redis.server.resume();
    let back = time_until_served(&stores, &watcher).await;
    eprintln!("service back {back:?} after SIGCONT");
    assert!(back < Duration::from_secs(5), "back {back:?} after SIGCONT");

    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Redis dies (kill -9), stays down, and restarts on the same port.
    redis.server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = stores.health();
    assert_ne!(health.breaker, BreakerState::Closed, "{health:?}");
    assert!(!health.reachable);
    let _restarted = redis.restart();
    let back = time_until_served(&stores, &watcher).await;
    eprintln!("service back {back:?} after the restart");
    assert!(
        back < Duration::from_secs(5),
        "back {back:?} after the restart"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    for w in workers {
        sessions.push(
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("a worker hung")
                .expect("a worker panicked"),
        );
    }

    assert!(
        tally.slow_while_open.lock().unwrap().is_empty(),
        "calls started with the breaker open took longer than {FAIL_FAST_BOUND:?}: {:?}",
        tally.slow_while_open.lock().unwrap()
    );
    {
        let wrong = tally.wrong_errors.lock().unwrap();
        assert!(
            wrong.is_empty(),
            "{} calls went wrong, the first: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        );
    }
    assert!(
        tally.failed_fast.load(Ordering::Relaxed) > 0,
        "the breaker failed calls at once during the outages"
    );
    let requests = tally.cache_requests.load(Ordering::Relaxed);
    assert_eq!(tally.cache_served.load(Ordering::Relaxed), requests);
    assert!(
        requests > 100,
        "the workload ran: {requests} cache requests"
    );

    // Every acknowledged append survived (an unacknowledged one may have landed:
    // a timeout does not say the write did not happen).
    for (key, attempted, acked) in sessions {
        let loaded = stores.sessions.get(&key).await.unwrap().unwrap();
        assert!(
            loaded.message_count >= acked && loaded.message_count <= attempted,
            "{key:?}: {} stored, {acked} acknowledged, {attempted} attempted",
            loaded.message_count
        );
    }

    // Every increment counted exactly once, after the outages.
    let flushed = Instant::now();
    loop {
        match counters.flush().await {
            Ok(report) if report.is_complete() => break,
            other => assert!(
                flushed.elapsed() < Duration::from_secs(10),
                "the counters did not flush: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = stores.counters.get(&counter).await.unwrap();
    assert_eq!(stored, tally.added.load(Ordering::Relaxed) as i64);
}

/// Polls `check` every 20 ms until it holds, for at most `within`.
async fn until<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < within {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_tier_answers_while_redis_is_down_and_a_failed_delete_holds_after_it_returns() {
    use chatstate::KvCache;
    let mut redis = Durable::start();
    let cfg = redis.config(&[]);
    // Two instances of an app, each with its own connection, bus and local tier.
    let (a, b) = (
        Stores::open(&cfg).await.unwrap(),
        Stores::open(&cfg).await.unwrap(),
    );
    let (ca, cb) = (a.tiered_cache(&cfg), b.tiered_cache(&cfg));
    let (k1, k2) = (
        CacheKey::new("customers", "1").unwrap(),
        CacheKey::new("customers", "2").unwrap(),
    );
    let v = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    // Each bus says Reset once subscribed, which would drop the copies made below:
    // wait until each instance hears the other's writes (its subscription is up).
    let probe = CacheKey::new("probe", "p").unwrap();
    assert!(
        until(Duration::from_secs(5), || async {
            ca.set(&probe, v("x"), None).await.unwrap();
            cb.set(&probe, v("y"), None).await.unwrap();
            ca.stats().invalidations > 0 && cb.stats().invalidations > 0
        })
        .await,
        "both subscriptions are up"
    );
    ca.set(&k1, v("ana"), None).await.unwrap();
    ca.set(&k2, v("bia"), None).await.unwrap();
    // Both instances hold both keys locally (a copy read while an announcement
    // arrives is not kept: read until two reads in a row are local hits).
    for cache in [&ca, &cb] {
        assert!(
            until(Duration::from_secs(2), || async {
                let before = cache.stats().local_hits;
                assert_eq!(cache.get(&k1).await.unwrap(), Some(v("ana")));
                assert_eq!(cache.get(&k2).await.unwrap(), Some(v("bia")));
                cache.stats().local_hits == before + 2
            })
            .await,
            "copies kept locally"
        );
    }

    // Redis dies: both buses notice, and the local tiers keep answering.
    redis.server.stop();
    assert!(
        until(Duration::from_secs(5), || async {
            ca.stats().bus_losses > 0 && cb.stats().bus_losses > 0
        })
        .await,
        "both buses noticed the loss"
    );
    assert_eq!(ca.get(&k1).await.unwrap(), Some(v("ana")));
    assert_eq!(cb.get(&k2).await.unwrap(), Some(v("bia")));
    let served = ca
        .get_or_load_bytes(&k1, None, || async { Ok(Some(v("from-the-database"))) })
        .await
        .unwrap();
    assert_eq!(
        served,
        Some(v("ana")),
        "the stale copy answers before the loader"
    );
    assert!(ca.stats().stale_served >= 2 && cb.stats().stale_served >= 1);

    // A delete during the outage fails, and this instance no longer serves the key.
    let err = ca.delete(&k2).await.unwrap_err();
    assert!(err.is_temporary(), "{err}");
    assert_eq!(
        ca.get(&k2).await.unwrap(),
        None,
        "a pending delete reads as missing"
    );

    // Redis returns (with its data: the delete never reached it).
    let _restarted = redis.restart();
    assert!(
        until(Duration::from_secs(5), || async {
            let _ = ca.get(&k1).await;
            ca.stats().pending_deletes == 0
        })
        .await,
        "the pending delete was replayed within 5 s: {:?}",
        ca.stats()
    );
    assert_eq!(a.cache.get(&k2).await.unwrap(), None, "gone from Redis");
    // No instance serves the deleted value after recovery.
    assert!(
        until(Duration::from_secs(2), || async {
            cb.get(&k2).await.ok() == Some(None)
        })
        .await,
        "the other instance stopped serving it"
    );
    for _ in 0..5 {
        assert_eq!(ca.get(&k2).await.unwrap(), None);
        assert_eq!(cb.get(&k2).await.unwrap(), None);
    }
    assert_eq!(cb.get(&k1).await.unwrap(), Some(v("ana")));
}
