//! What only a Redis Cluster asks of the store, against clusters this test process
//! starts on free ports (never 6379): one slot per session operation, one round
//! trip per slot for multi-key calls, walks over every master, the inventory, and a
//! slot migration and a master failover in the middle of a workload.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate_conformance::inventory;
use chatstate_core::{
    BatchReads, CacheKey, FocusKey, HostPort, Inventory, KeyLayout, KvCache, NewMessage, PutMode,
    ReadBatch, RecordKind, RedisTopology, RedisUrl, SessionKey, SessionStore, StoreSettings,
};
use chatstate_redis::RedisStore;
use common::cluster::{self, Cluster};

async fn store_on(cluster: &Cluster) -> RedisStore {
    store_with(cluster, &cluster.seeds(), &common::unique_prefix()).await
}

async fn store_with(cluster: &Cluster, seeds: &str, prefix: &str) -> RedisStore {
    let _ = cluster;
    RedisStore::builder(RedisUrl::parse("redis://127.0.0.1").unwrap())
        .topology(RedisTopology::Cluster {
            nodes: HostPort::parse_list(seeds).unwrap(),
        })
        .prefix(prefix)
        .settings(StoreSettings::default())
        .fail_fast(true)
        .connect()
        .await
        .unwrap()
}

fn keyslot(cluster: &Cluster, key: &str) -> u16 {
    cluster.nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", key])
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_session_stays_in_one_slot_and_a_tenant_spreads_over_shards() {
    let c = cluster::shared();
    let s = store_on(c).await;
    let layout = KeyLayout::clustered(s.layout().prefix()).unwrap();
    let mut slots = HashSet::new();
    let mut keys = BTreeSet::new();
    for i in 0..48 {
        let key = SessionKey::new("acme", "wa", format!("55{i}")).unwrap();
        s.append_messages(&key, vec![NewMessage::user("oi")])
            .await
            .unwrap();
        let lease = s
            .try_lock(&key, "remind", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(lease.is_some());
        let base = layout.session_base(&key);
        let slot = keyslot(c, &format!("{base}:ctx"));
        for part in [":msgs", ":lock:remind", ":fence:remind"] {
            assert_eq!(keyslot(c, &format!("{base}{part}")), slot, "{part}");
        }
        assert_eq!(keyslot(c, &layout.session_index_of(&key)), slot);
        slots.insert(slot);
        keys.insert(key);
    }
    assert!(
        slots.len() >= 8,
        "48 sessions of one tenant in {} slots",
        slots.len()
    );
    // Listed exactly once each, across the shards, in small pages.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.list("acme", cursor, 7).await.unwrap();
        listed.extend(page.items);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), keys.len());
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), keys);
    let sent = s.commands_by_name();
    assert!(!sent.contains_key("KEYS"), "{sent:?}");
    let shown = format!("{s:?}");
    assert!(
        shown.contains("Redis Cluster through 127.0.0.1:"),
        "{shown}"
    );
}

#[tokio::test]
async fn multi_key_cache_calls_take_one_round_trip_per_slot() {
    let c = cluster::shared();
    let s = store_on(c).await;
    let keys: Vec<CacheKey> = (0..40)
        .map(|i| CacheKey::new("customers", format!("c{i}")).unwrap())
        .collect();
    let slots: HashSet<u16> = keys
        .iter()
        .map(|k| keyslot(c, &s.layout().cache(k)))
        .collect();
    assert!(slots.len() > 30, "40 keys in {} slots", slots.len());
    // The first write loads the script on every master (NOSCRIPT, then EVAL: two
    // round trips per slot that time); then one per slot.
    let entries: Vec<(CacheKey, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"warm")))
        .collect();
    s.set_many(entries, None).await.unwrap();
    // The same for the delete script (keys of the same slots, none stored).
    let absent: Vec<CacheKey> = keys
        .iter()
        .map(|k| CacheKey::new("customers", format!("{}-absent", k.key())).unwrap())
        .collect();
    s.delete_many(&absent).await.unwrap();
    s.delete_many(&keys).await.unwrap();
    let before = s.round_trips().round_trips;
    s.set_many(
        keys.iter()
            .map(|k| (k.clone(), Bytes::from(k.key().to_string())))
            .collect(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(s.round_trips().round_trips - before, slots.len() as u64);
    let before = s.round_trips().round_trips;
    let got = KvCache::get_many(&s, &keys).await.unwrap();
    assert_eq!(s.round_trips().round_trips - before, slots.len() as u64);
    for (k, v) in keys.iter().zip(&got) {
        assert_eq!(v.as_deref(), Some(k.key().as_bytes()));
    }
    let before = s.round_trips().round_trips;
    assert_eq!(s.delete_many(&keys[..20]).await.unwrap(), 20);
    let deleted_slots: HashSet<u16> = keys[..20]
        .iter()
        .map(|k| keyslot(c, &s.layout().cache(k)))
        .collect();
    assert_eq!(
        s.round_trips().round_trips - before,
        deleted_slots.len() as u64
    );
    let got = KvCache::get_many(&s, &keys).await.unwrap();
    assert!(got[..20].iter().all(Option::is_none));
    assert!(got[20..].iter().all(Option::is_some));
}

/// Aliases on a Cluster: an entry's alias set shares its slot; an aliased write
/// is one round trip for the entry and its set, then one per slot of the alias
/// keys; resolving is two (the alias, then the entry with its set).
#[tokio::test]
async fn aliased_writes_take_one_round_trip_plus_one_per_alias_slot() {
    let c = cluster::shared();
    let s = store_on(c).await;
    let layout = s.layout();
    let entry = CacheKey::new("contacts", "1").unwrap();
    let other = CacheKey::new("contacts", "2").unwrap();
    let aliases: Vec<CacheKey> = (0..6)
        .map(|i| CacheKey::new("phone", format!("+55119999900{i}")).unwrap())
        .collect();
    let stored = layout.cache(&entry);
    assert_eq!(
        keyslot(c, &stored),
        keyslot(c, &layout.cache_alias_set(&stored)),
        "an entry and its alias set share a slot"
    );
    let alias_slots: HashSet<u16> = aliases
        .iter()
        .map(|a| keyslot(c, &layout.cache_alias(a)))
        .collect();
    assert!(alias_slots.len() > 1, "aliases in several slots");
    // Warm-up: every master learns the scripts.
    s.set_with_aliases(&entry, Bytes::from_static(b"warm"), None, &aliases)
        .await
        .unwrap();
    s.get_by_alias(&aliases[0]).await.unwrap();

    let before = s.round_trips().round_trips;
    s.set_with_aliases(&entry, Bytes::from_static(b"ana"), None, &aliases)
        .await
        .unwrap();
    assert_eq!(
        s.round_trips().round_trips - before,
        1 + alias_slots.len() as u64
    );
    let before = s.round_trips().round_trips;
    let found = s.get_by_alias(&aliases[3]).await.unwrap();
    assert_eq!(s.round_trips().round_trips - before, 2);
    assert_eq!(found, Some((entry.clone(), Bytes::from_static(b"ana"))));

    // Moved to another entry (whose alias set may live on another master): the
    // first entry's set still lists it, but the alias names the other entry.
    s.set_with_aliases(&other, Bytes::from_static(b"bia"), None, &aliases[3..4])
        .await
        .unwrap();
    assert_eq!(
        s.get_by_alias(&aliases[3]).await.unwrap(),
        Some((other.clone(), Bytes::from_static(b"bia")))
    );
    assert_eq!(
        s.get_by_alias(&aliases[0]).await.unwrap(),
        Some((entry.clone(), Bytes::from_static(b"ana")))
    );
}

/// A read batch on a Cluster costs one round trip per slot its keys fall in (the
/// session's keys share one), sent concurrently; each part answers as its own call.
#[tokio::test]
async fn a_read_batch_takes_one_round_trip_per_slot() {
    let c = cluster::shared();
    let s = store_on(c).await;
    let session = SessionKey::new("acme", "whatsapp", "+5511").unwrap();
    let focus = FocusKey::new("acme", "flow").unwrap();
    let keys: Vec<CacheKey> = (0..6)
        .map(|i| CacheKey::new("customers", format!("c{i}")).unwrap())
        .collect();
    s.append_messages(&session, vec![NewMessage::user("oi")])
        .await
        .unwrap();
    chatstate_core::FocusStore::put(
        &s,
        &focus,
        Bytes::from_static(b"billing"),
        PutMode::Overwrite,
        None,
    )
    .await
    .unwrap();
    KvCache::set(&s, &keys[0], Bytes::from_static(b"Ana"), None)
        .await
        .unwrap();
    let layout = s.layout();
    let slots: HashSet<u16> = std::iter::once(format!("{}:ctx", layout.session_base(&session)))
        .chain(std::iter::once(layout.focus(&focus)))
        .chain(keys.iter().map(|k| layout.cache(k)))
        .map(|k| keyslot(c, &k))
        .collect();
    assert!(slots.len() > 3, "{} slots", slots.len());
    let reads = BatchReads {
        session: Some(session.clone()),
        focus: vec![focus.clone()],
        cache: keys.clone(),
    };
    let before = s.round_trips().round_trips;
    let read = s.read_batch(&reads).await.unwrap();
    assert_eq!(s.round_trips().round_trips - before, slots.len() as u64);
    assert_eq!(read.session, s.load(&session).await.unwrap());
    assert_eq!(
        read.focus,
        [chatstate_core::FocusStore::get(&s, &focus).await.unwrap()]
    );
    assert_eq!(read.cache, KvCache::get_many(&s, &keys).await.unwrap());
    assert_eq!(read.cache[0].as_deref(), Some(&b"Ana"[..]));
}

#[tokio::test]
async fn clear_prefix_and_the_inventory_walk_every_master() {
    let c = cluster::shared();
    let s = store_on(c).await;
    let entries: Vec<(CacheKey, Bytes)> = (0..300)
        .map(|i| {
            (
                CacheKey::new("tools", format!("r{i}")).unwrap(),
                Bytes::from_static(b"x"),
            )
        })
        .collect();
    s.set_many(entries.clone(), None).await.unwrap();
    // Every master holds some of them.
    let pattern = format!("{}:kv:tools:*", s.layout().prefix());
    for (_, port, _) in c.masters() {
        let found = c.node(port).cli(&["--scan", "--pattern", &pattern]);
        assert!(found.lines().count() > 0, "master {port} holds none");
    }
    let page = s.scan(RecordKind::Cache, None, 1000).await.unwrap();
    assert_eq!(page.records.len(), 300);
    assert_eq!(s.clear_prefix("tools", "").await.unwrap(), 300);
    let left = KvCache::get_many(
        &s,
        &entries.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert!(left.iter().all(Option::is_none));
}

#[tokio::test]
async fn inventory_paging_returns_every_record_once() {
    let s = store_on(cluster::shared()).await;
    inventory::paging_returns_every_record_once(&s).await;
}

#[tokio::test]
async fn inventory_restore_is_exact_idempotent_and_keeps_newer() {
    inventory::restore_is_exact_idempotent_and_keeps_newer(&store_on(cluster::shared()).await)
        .await;
}

/// What a workload task saw acknowledged: per session the messages whose append
/// returned Ok, per cache key the value whose set returned Ok.
#[derive(Default)]
struct Acked {
    messages: BTreeMap<SessionKey, Vec<(String, Instant)>>,
    cache: BTreeMap<CacheKey, (String, Instant)>,
    failures: u64,
}

/// Runs `tasks` writers over `sessions` sessions and as many cache keys until
/// `stop`; every acknowledged write is recorded with the time it was acknowledged.
async fn workload(
    s: RedisStore,
    tasks: usize,
    sessions: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Acked {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (s, stop, acked) = (s.clone(), stop.clone(), acked.clone());
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = (n as usize * tasks + t) % sessions;
                let key = SessionKey::new("load", "wa", format!("u{i}")).unwrap();
                let text = format!("t{t}-{n}");
                match s
                    .append_messages(&key, vec![NewMessage::user(text.clone())])
                    .await
                {
                    Ok(_) => acked
                        .lock()
                        .unwrap()
                        .messages
                        .entry(key)
                        .or_default()
                        .push((text.clone(), Instant::now())),
                    Err(_) => {
                        acked.lock().unwrap().failures += 1;
                        // A breaker open fails calls at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                let ck = CacheKey::new("cust", format!("k{t}-{}", n % 50)).unwrap();
                match KvCache::set(&s, &ck, Bytes::from(text.clone()), None).await {
                    Ok(()) => {
                        acked
                            .lock()
                            .unwrap()
                            .cache
                            .insert(ck, (text, Instant::now()));
                    }
                    Err(_) => {
                        acked.lock().unwrap().failures += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                n += 1;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    Arc::try_unwrap(acked)
        .map_err(|_| ())
        .unwrap()
        .into_inner()
        .unwrap()
}

/// Checks every acknowledged write outside `window` (all of them when `None`) is
/// stored, and that no message is stored twice; answers how many acknowledged
/// writes inside it were lost.
async fn check_acked(s: &RedisStore, acked: &Acked, window: Option<(Instant, Instant)>) -> usize {
    let mut lost = 0;
    let may_lose = |at: &Instant| window.is_some_and(|(from, to)| *at >= from && *at < to);
    for (key, sent) in &acked.messages {
        let loaded = s.load(key).await.unwrap();
        let stored: Vec<String> = loaded
            .map(|l| l.messages.into_iter().map(|m| m.content).collect())
            .unwrap_or_default();
        let unique: HashSet<&String> = stored.iter().collect();
        assert_eq!(
            unique.len(),
            stored.len(),
            "a message stored twice in {key}"
        );
        // The window keeps the newest 20: check those the window must still hold.
        let window: Vec<&(String, Instant)> = sent.iter().rev().take(20).collect();
        for (text, at) in window {
            if !stored.contains(text) {
                assert!(may_lose(at), "acknowledged message {text} of {key} lost");
                lost += 1;
            }
        }
    }
    for (key, (text, at)) in &acked.cache {
        let got = KvCache::get(s, key).await.unwrap();
        if got.as_deref() != Some(text.as_bytes()) {
            assert!(
                may_lose(at),
                "acknowledged cache value of {key} lost: {got:?}"
            );
            lost += 1;
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_mid_workload_loses_no_acknowledged_write() {
    let c = Cluster::start(3, 0);
    let s = store_on(&c).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = tokio::spawn(workload(s.clone(), 8, 200, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let masters = c.masters();
    let (from, to) = (&masters[0].0, &masters[1].0);
    let seed = format!("127.0.0.1:{}", c.nodes[0].port);
    let out = tokio::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &seed,
            "--cluster-from",
            from,
            "--cluster-to",
            to,
            "--cluster-slots",
            "3000",
            "--cluster-yes",
            "--cluster-pipeline",
            "20",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = work.await.unwrap();
    let total: usize = acked.messages.values().map(Vec::len).sum();
    assert!(total > 200, "the workload ran: {total} appends");
    // Every write either acknowledged or refused before running; refusals that ran
    // nothing (MOVED, ASK, TRYAGAIN) are followed, so hardly any call fails.
    assert!(
        acked.failures * 100 <= total as u64,
        "{} of {total} calls failed during the migration",
        acked.failures
    );
    assert_eq!(check_acked(&s, &acked, None).await, 0);
    // The migration moved slots while the workload ran.
    assert_ne!(c.masters(), masters, "the reshard moved slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_mid_workload_serves_again_and_loses_only_the_replication_window() {
    let c = Cluster::start(3, 1);
    // The store knows only the victim as a seed: after the kill it finds the
    // cluster again through the nodes it learned at connect.
    let victim = c.masters()[0].1;
    let s = store_with(&c, &format!("127.0.0.1:{victim}"), &common::unique_prefix()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let work = tokio::spawn(workload(s.clone(), 8, 200, stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed_at = Instant::now();
    // SAFETY of the test: only this cluster's own node, by pid.
    let mut nodes = c;
    let idx = nodes.nodes.iter().position(|n| n.port == victim).unwrap();
    nodes.nodes[idx].stop();
    // Service returns within the failover time (until a live node says
    // `cluster_state:ok` again) + 5 s: a write to 64 keys over many slots succeeds.
    let deadline = killed_at + Duration::from_secs(30);
    let live = nodes
        .nodes
        .iter()
        .find(|n| n.port != victim && !n.cli(&["ROLE"]).contains("slave"))
        .unwrap();
    let mut failed_over: Option<Instant> = None;
    let probe_keys: Vec<CacheKey> = (0..64)
        .map(|i| CacheKey::new("probe", format!("p{i}")).unwrap())
        .collect();
    let back = loop {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            s.set_many(
                probe_keys
                    .iter()
                    .map(|k| (k.clone(), Bytes::from_static(b"1")))
                    .collect(),
                None,
            ),
        )
        .await;
        let ok = matches!(r, Ok(Ok(())));
        if failed_over.is_none()
            && Instant::now() > killed_at + Duration::from_millis(1500)
            && live.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
        {
            failed_over = Some(Instant::now());
        }
        if ok {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no service 30 s after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed_over = failed_over.unwrap_or(back);
    assert!(
        back <= failed_over + Duration::from_secs(5),
        "service came back {:?} after the failover",
        back - failed_over
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = work.await.unwrap();
    let before_kill = acked
        .messages
        .values()
        .flatten()
        .filter(|(_, at)| *at < killed_at)
        .count();
    assert!(
        before_kill > 50,
        "the workload ran before the kill: {before_kill}"
    );
    // The bound: Redis replicates asynchronously, so writes the dead master
    // acknowledged in its last moments may not have reached its replica. Every
    // write acknowledged more than 1 s before the kill must be there.
    // Writes acknowledged after the kill went to live masters (or to the promoted
    // replica): none of them may be lost (100 ms of slack for a reply that was on
    // its way when the kill was sent).
    let lost = check_acked(
        &s,
        &acked,
        Some((
            killed_at - Duration::from_secs(1),
            killed_at + Duration::from_millis(100),
        )),
    )
    .await;
    eprintln!(
        "failover: the cluster served again {:?} after the kill, the store {:?}; {lost} \
         acknowledged writes lost in the last second before it; {} failures",
        failed_over - killed_at,
        back - killed_at,
        acked.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_across_a_resharding_is_refused_not_silently_incomplete() {
    let c = Cluster::start(3, 0);
    let s = store_on(&c).await;
    let entries: Vec<(CacheKey, Bytes)> = (0..200)
        .map(|i| {
            (
                CacheKey::new("walk", format!("k{i}")).unwrap(),
                Bytes::from_static(b"v"),
            )
        })
        .collect();
    s.set_many(entries.clone(), None).await.unwrap();
    let first = s.scan(RecordKind::Cache, None, 10).await.unwrap();
    let cursor = first.next_cursor.expect("more than one page");
    let masters = c.masters();
    let out = tokio::process::Command::new("redis-cli")
        .args([
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{}", c.nodes[0].port),
            "--cluster-from",
            &masters[0].0,
            "--cluster-to",
            &masters[1].0,
            "--cluster-slots",
            "100",
            "--cluster-yes",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    // Resuming the walk after the slots moved: a Conflict, not a page that may
    // miss or repeat records.
    let err = s
        .scan(RecordKind::Cache, Some(cursor), 10)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), chatstate_core::ErrorKind::Conflict, "{err}");
    assert!(err.message().contains("start the walk again"), "{err}");
    // A new walk sees everything once; clear_prefix removes everything.
    let page = s.scan(RecordKind::Cache, None, 1000).await.unwrap();
    assert_eq!(page.records.len(), 200);
    assert_eq!(s.clear_prefix("walk", "").await.unwrap(), 200);
}

/// Two instances whose buses subscribe on different nodes: an invalidation
/// published through one (routed by the channel's slot) reaches the other (a
/// Cluster delivers every PUBLISH to every node).
#[tokio::test]
async fn the_invalidation_bus_reaches_every_instance_on_a_cluster() {
    let c = cluster::shared();
    let prefix = common::unique_prefix();
    let seeds: Vec<String> = c.seeds().split(',').map(str::to_string).collect();
    let a = store_with(c, &seeds.join(","), &prefix).await;
    let rotated: Vec<String> = seeds[1..].iter().chain(&seeds[..1]).cloned().collect();
    let b = store_with(c, &rotated.join(","), &prefix).await;
    let bus_a = chatstate_redis::RedisBus::new(&a).unwrap();
    let bus_b = chatstate_redis::RedisBus::new(&b).unwrap();
    let mut rx_b = chatstate_core::InvalidationBus::subscribe(&bus_b);
    let mut rx_a = chatstate_core::InvalidationBus::subscribe(&bus_a);
    for rx in [&mut rx_a, &mut rx_b] {
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            first.expect("subscribed").unwrap(),
            chatstate_core::BusEvent::Reset
        );
    }
    let what = chatstate_core::Invalidation::Key(CacheKey::new("answers", "q1").unwrap());
    chatstate_core::InvalidationBus::publish(&bus_a, "instance-a", &what)
        .await
        .unwrap();
    for rx in [&mut rx_a, &mut rx_b] {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            got.expect("received in time").unwrap(),
            chatstate_core::BusEvent::Invalidate {
                origin: "instance-a".into(),
                what: what.clone(),
            }
        );
    }
}

/// A Cluster whose nodes speak only TLS: the store connects with `rediss://` and
/// the CA, and everything that reaches nodes by address (SCAN over the masters,
/// the breaker's probe of the seeds) goes over TLS too; another CA is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_verifies_the_nodes_and_serves() {
    let files = common::TlsFiles::generate();
    let c = Cluster::start_tls(3, &files);
    let open = |ca: std::path::PathBuf| {
        RedisStore::builder(RedisUrl::parse("rediss://127.0.0.1").unwrap())
            .topology(RedisTopology::Cluster {
                nodes: HostPort::parse_list(&c.seeds()).unwrap(),
            })
            .tls(chatstate_core::TlsConfig {
                ca_cert: Some(ca),
                ..Default::default()
            })
            .prefix(common::unique_prefix())
            .fail_fast(true)
            .connect()
    };
    let s = open(files.ca.clone()).await.unwrap();
    let key = SessionKey::new("acme", "wa", "5511").unwrap();
    s.append_messages(&key, vec![NewMessage::user("oi")])
        .await
        .unwrap();
    assert_eq!(s.load(&key).await.unwrap().unwrap().messages.len(), 1);
    let entries: Vec<(CacheKey, Bytes)> = (0..30)
        .map(|i| {
            (
                CacheKey::new("tls", format!("k{i}")).unwrap(),
                Bytes::from_static(b"v"),
            )
        })
        .collect();
    s.set_many(entries, None).await.unwrap();
    assert_eq!(s.clear_prefix("tls", "").await.unwrap(), 30);
    assert_eq!(s.list("acme", None, 10).await.unwrap().items, vec![key]);
    let err = open(files.other_ca.clone()).await.unwrap_err();
    assert_eq!(err.kind(), chatstate_core::ErrorKind::Config, "{err}");
    assert!(err.message().contains("not trusted"), "{err}");
}
