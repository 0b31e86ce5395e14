//! `LocalSessions`: what its module docs promise, over memory on a manual clock —
//! copies equal to what the store answers, served without the store, other
//! instances' writes seen within `max_age`, stale copies never kept past a
//! conflict or an append made elsewhere, never past the session's expiry, and
//! concurrent turns and reads through one tier leaving it equal to the store.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::{
    AppendReceipt, ErrorKind, Expected, Lease, LoadedSession, ManualClock, NewMessage, Page,
    Result, Session, SessionKey, SessionPatch, SessionStore, StoreSettings, Turn, TurnReceipt,
};
use chatstate_layers::{LocalSessions, LocalSessionsConfig};
use chatstate_memory::MemoryStore;

const MAX_AGE: Duration = Duration::from_secs(10);
const TTL: Duration = Duration::from_secs(100);

fn memory(clock: &ManualClock, window_size: usize) -> Arc<MemoryStore> {
    Arc::new(
        MemoryStore::builder()
            .settings(StoreSettings {
                window_size,
                session_ttl: TTL,
                ..StoreSettings::default()
            })
            .clock(clock.shared())
            .build(),
    )
}

fn tier<S: SessionStore>(inner: S, clock: &ManualClock, max_age: Duration) -> LocalSessions<S> {
    LocalSessions::with_clock(
        inner,
        LocalSessionsConfig {
            capacity: 100,
            max_age,
            session_ttl: TTL,
            focus_ttl: TTL,
        },
        clock.shared(),
    )
}

fn setup() -> (
    ManualClock,
    Arc<MemoryStore>,
    LocalSessions<Arc<MemoryStore>>,
) {
    let clock = ManualClock::starting_now();
    let store = memory(&clock, 3);
    let local = tier(store.clone(), &clock, MAX_AGE);
    (clock, store, local)
}

fn key(user: &str) -> SessionKey {
    SessionKey::new("acme", "whatsapp", user).unwrap()
}

/// Turns through the tier (creating the session, patching, overflowing the
/// window) keep a copy equal to what the store loads, and reads are answered from
/// it.
#[tokio::test]
async fn turns_keep_a_copy_equal_to_the_store_and_reads_use_it() {
    let (clock, store, local) = setup();
    let k = key("a");
    let r = local
        .commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("oi"))
                .expect(Expected::Version(0)),
        )
        .await
        .unwrap();
    assert!(r.append.created);
    assert_eq!(r.session, None, "the record only when the caller asks");
    for i in 0..6u64 {
        clock.advance(Duration::from_millis(700));
        let held = local.held(&k).await.expect("held after the turn");
        assert_eq!(
            Some(&held),
            store.load(&k).await.unwrap().as_ref(),
            "turn {i}"
        );
        let mut turn = Turn::new()
            .messages([
                NewMessage::user(format!("q{i}")),
                NewMessage::assistant(format!("a{i}")),
            ])
            .expect(Expected::Version(held.session.version));
        if i % 2 == 0 {
            turn = turn.patch(SessionPatch::new().summary(format!("s{i}")));
        }
        local.commit_turn(&k, turn).await.unwrap();
    }
    let before = local.stats();
    let loaded = local.load(&k).await.unwrap();
    assert_eq!(loaded, store.load(&k).await.unwrap());
    let loaded = loaded.unwrap();
    assert_eq!(loaded.messages.len(), 3, "the window of 3");
    assert_eq!(loaded.session.message_count, 13);
    assert_eq!(loaded.session.summary.as_deref(), Some("s4"));
    let after = local.stats();
    assert_eq!(after.hits, before.hits + 1, "answered from the copy");
    assert_eq!(after.misses, before.misses);
    assert_eq!(after.kept_turns, 7);
    assert_eq!(after.dropped, 0);
}

/// Another instance's write is seen once the copy is older than `max_age`; a
/// commit expecting the stale copy's version is the store's `Conflict`, writes
/// nothing and drops the copy, so the next read is the store's.
#[tokio::test]
async fn other_instances_writes_are_seen_within_max_age_and_conflicts_drop_the_copy() {
    let (clock, store, local) = setup();
    let k = key("b");
    local
        .commit_turn(&k, Turn::new().message(NewMessage::user("oi")))
        .await
        .unwrap();
    let v = local.load(&k).await.unwrap().unwrap().session.version;
    // Another instance patches the session.
    store
        .update(&k, SessionPatch::new().summary("elsewhere"), Expected::Any)
        .await
        .unwrap();
    clock.advance(MAX_AGE / 2);
    let stale = local.load(&k).await.unwrap().unwrap();
    assert_eq!(
        stale.session.summary, None,
        "within max_age the copy may lag"
    );
    let e = local
        .commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("late"))
                .expect(Expected::Version(v)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert_eq!(local.stats().dropped, 1);
    let fresh = local.load(&k).await.unwrap().unwrap();
    assert_eq!(fresh.session.summary.as_deref(), Some("elsewhere"));
    assert_eq!(
        fresh.messages.len(),
        1,
        "the conflicting turn wrote nothing"
    );

    // Seen after max_age without any write through this tier.
    store
        .update(&k, SessionPatch::new().summary("later"), Expected::Any)
        .await
        .unwrap();
    clock.advance(MAX_AGE);
    let seen = local.load(&k).await.unwrap().unwrap();
    assert_eq!(seen.session.summary.as_deref(), Some("later"));
}

/// Messages appended elsewhere do not change `version`, so a versioned turn lands
/// after them; the tier sees the store's count is not its copy's plus the turn's
/// and drops the copy rather than keep a window that lacks them.
#[tokio::test]
async fn an_append_made_elsewhere_drops_the_copy_at_the_next_turn() {
    let (_clock, store, local) = setup();
    let k = key("c");
    local
        .commit_turn(&k, Turn::new().message(NewMessage::user("1")))
        .await
        .unwrap();
    let held = local.held(&k).await.unwrap();
    store
        .append_messages(&k, vec![NewMessage::user("2 elsewhere")])
        .await
        .unwrap();
    local
        .commit_turn(
            &k,
            Turn::new()
                .message(NewMessage::user("3"))
                .expect(Expected::Version(held.session.version)),
        )
        .await
        .unwrap();
    assert!(local.held(&k).await.is_none(), "the copy was dropped");
    let loaded = local.load(&k).await.unwrap();
    assert_eq!(loaded, store.load(&k).await.unwrap());
    let contents: Vec<String> = loaded
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, ["1", "2 elsewhere", "3"]);
}

/// A copy is never served past the session's expiry, however long `max_age`;
/// a delete through the tier is seen at once; an update keeps the window.
#[tokio::test]
async fn never_past_expiry_or_a_delete_and_updates_keep_the_window() {
    let clock = ManualClock::starting_now();
    let store = memory(&clock, 20);
    let local = tier(store.clone(), &clock, TTL * 10);
    let k = key("d");
    local
        .commit_turn(&k, Turn::new().message(NewMessage::user("oi")))
        .await
        .unwrap();
    let updated = local
        .update(&k, SessionPatch::new().summary("s"), Expected::Any)
        .await
        .unwrap();
    let held = local.held(&k).await.expect("kept after the update");
    assert_eq!(held.session, updated);
    assert_eq!(Some(held), store.load(&k).await.unwrap());
    clock.advance(TTL + Duration::from_millis(1));
    assert_eq!(local.load(&k).await.unwrap(), None, "expired");

    local
        .commit_turn(&k, Turn::new().message(NewMessage::user("again")))
        .await
        .unwrap();
    assert!(local.held(&k).await.is_some());
    assert!(local.delete(&k).await.unwrap());
    assert_eq!(local.load(&k).await.unwrap(), None, "deleted");
}

/// A store whose `load` and `commit_turn` answers take a random while to arrive,
/// before and after the store applies them (as over a network): answers reach
/// the tier in any order relative to when the store applied them. Gates, when
/// set, hold the next `load`'s answer (read already) until opened, and hold a
/// turn (named by its first message) before the store applies it and/or after.
struct Jittery(
    Arc<MemoryStore>,
    std::sync::Mutex<Option<Gate>>,
    std::sync::Mutex<std::collections::HashMap<String, TurnGates>>,
);

type Gate = tokio::sync::oneshot::Receiver<()>;

/// A turn's gates: before the store applies it, and after.
type TurnGates = (Option<Gate>, Option<Gate>);

impl Jittery {
    fn new(store: Arc<MemoryStore>) -> Self {
        Jittery(store, Default::default(), Default::default())
    }

    /// Holds the next load's answer until the returned sender is used.
    fn gate_load(&self) -> tokio::sync::oneshot::Sender<()> {
        let (open, gate) = tokio::sync::oneshot::channel();
        *self.1.lock().unwrap() = Some(gate);
        open
    }

    /// Holds the turn whose first message is `first` before the store applies
    /// it, and after.
    fn gate_turn(
        &self,
        first: &str,
    ) -> (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let (before, before_gate) = tokio::sync::oneshot::channel();
        let (after, after_gate) = tokio::sync::oneshot::channel();
        self.2
            .lock()
            .unwrap()
            .insert(first.to_string(), (Some(before_gate), Some(after_gate)));
        (before, after)
    }
}

impl Jittery {
    /// Whether the gated load has read the store (it takes the gate after).
    fn load_answered(&self) -> bool {
        self.1.lock().unwrap().is_none()
    }

    /// Whether the turn named `first` has reached the store wrapper (it takes
    /// its gates first, after the tier counted it as a write in flight).
    fn turn_reached(&self, first: &str) -> bool {
        !self.2.lock().unwrap().contains_key(first)
    }

    /// The store's message count of `key`.
    async fn count(&self, key: &SessionKey) -> u64 {
        self.0
            .load(key)
            .await
            .unwrap()
            .map_or(0, |l| l.session.message_count)
    }
}

/// Waits until `cond` holds (polling; at most 10 s, however loaded the machine).
async fn until<F, Fut>(what: &str, cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..10_000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("waited 10 s for: {what}");
}

async fn jitter() {
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..400))).await;
}

#[async_trait]
impl SessionStore for Jittery {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        self.0.create(key, init).await
    }
    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        self.0.get_or_create(key).await
    }
    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        self.0.get(key).await
    }
    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        self.0.get_many(keys).await
    }
    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        jitter().await;
        let read = self.0.load(key).await;
        let gate = self.1.lock().unwrap().take();
        if let Some(gate) = gate {
            let _ = gate.await;
        }
        jitter().await;
        read
    }
    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        self.0.append_messages(key, messages).await
    }
    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        self.0.update(key, patch, expected).await
    }
    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt> {
        let first = turn.messages.first().map(|m| m.content.clone());
        let (before, after) = first
            .and_then(|f| self.2.lock().unwrap().remove(&f))
            .unwrap_or((None, None));
        jitter().await;
        if let Some(gate) = before {
            let _ = gate.await;
        }
        let receipt = self.0.commit_turn(key, turn).await;
        if let Some(gate) = after {
            let _ = gate.await;
        }
        jitter().await;
        receipt
    }
    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        self.0.set_data(key, name, value).await
    }
    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        self.0.get_data_many(key, names).await
    }
    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        self.0.delete_data(key, name).await
    }
    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        self.0.touch(key).await
    }
    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        self.0.delete(key).await
    }
    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        self.0.ttl(key).await
    }
    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        self.0.list(tenant, cursor, limit).await
    }
    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        self.0.try_lock(key, name, lease).await
    }
    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        self.0.extend_lock(held, lease).await
    }
    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        self.0.release_lock(held).await
    }
}

/// A read whose answer arrives after a turn through the tier returned is not
/// kept: it predates the turn, which the tier must keep showing.
#[tokio::test]
async fn a_read_answered_after_a_turn_does_not_replace_the_turns_copy() {
    let (clock, store, _) = setup();
    let k = key("gated");
    store
        .commit_turn(&k, Turn::new().message(NewMessage::user("1")))
        .await
        .unwrap();
    let wire = Jittery::new(store.clone());
    let open = wire.gate_load();
    let local = Arc::new(tier(wire, &clock, MAX_AGE));
    // A read that has its answer (one message) but is held on the way back.
    let slow = tokio::spawn({
        let (local, k) = (Arc::clone(&local), k.clone());
        async move { local.load(&k).await.unwrap() }
    });
    until("the held read read the store", || async {
        local.inner().load_answered()
    })
    .await;
    // Another read keeps a copy, and a turn on it keeps the turn's result.
    local.load(&k).await.unwrap();
    let r = local
        .commit_turn(&k, Turn::new().message(NewMessage::user("2")))
        .await
        .unwrap();
    assert_eq!(r.append.message_count, 2);
    open.send(()).unwrap();
    let old = slow.await.unwrap().unwrap();
    assert_eq!(
        old.session.message_count, 1,
        "the held read predates the turn"
    );
    let now = local.load(&k).await.unwrap().unwrap();
    assert_eq!(now.session.message_count, 2, "the turn's copy stands");
    assert_eq!(Some(now), store.load(&k).await.unwrap());
}

/// A tier over a gated store, with a session of one message in the store.
async fn gated(user: &str) -> (Arc<MemoryStore>, Arc<LocalSessions<Jittery>>, SessionKey) {
    let (clock, store, _) = setup();
    let k = key(user);
    store
        .commit_turn(&k, Turn::new().message(NewMessage::user("1")))
        .await
        .unwrap();
    let local = Arc::new(tier(Jittery::new(store.clone()), &clock, MAX_AGE));
    (store, local, k)
}

fn turn_of(first: &str) -> Turn {
    Turn::new().message(NewMessage::user(first))
}

/// A read that began while a turn through the tier was in flight, answered
/// before the turn landed, is not kept once the turn is done.
#[tokio::test]
async fn a_read_overlapping_a_turn_in_flight_is_not_kept() {
    let (store, local, k) = gated("overlap-read").await;
    let (land, _) = local.inner().gate_turn("w");
    let turn = tokio::spawn({
        let (local, k) = (Arc::clone(&local), k.clone());
        async move { local.commit_turn(&k, turn_of("w")).await.unwrap() }
    });
    until("the turn is in flight", || async {
        local.inner().turn_reached("w")
    })
    .await;
    let answer = local.inner().gate_load();
    let read = tokio::spawn({
        let (local, k) = (Arc::clone(&local), k.clone());
        async move { local.load(&k).await.unwrap().unwrap() }
    });
    until("the read has its answer", || async {
        local.inner().load_answered()
    })
    .await;
    land.send(()).unwrap();
    assert_eq!(turn.await.unwrap().append.message_count, 2);
    answer.send(()).unwrap();
    assert_eq!(
        read.await.unwrap().session.message_count,
        1,
        "read before the turn"
    );
    let now = local.load(&k).await.unwrap().unwrap();
    assert_eq!(now.session.message_count, 2, "the turn is seen at once");
    assert_eq!(Some(now), store.load(&k).await.unwrap());
}

/// Two turns through the tier on one held copy, applied by the store in one
/// order and answered in the other: the tier keeps neither answer alone (each
/// lacks the other's message).
#[tokio::test]
async fn turns_answered_out_of_order_keep_no_copy_lacking_either() {
    let (store, local, k) = gated("reorder").await;
    local.load(&k).await.unwrap();
    assert!(local.held(&k).await.is_some());
    let (w1_land, _) = local.inner().gate_turn("w1");
    let (_, w2_answer) = local.inner().gate_turn("w2");
    let spawn_turn = |first: &'static str| {
        let (local, k) = (Arc::clone(&local), k.clone());
        tokio::spawn(async move { local.commit_turn(&k, turn_of(first)).await.unwrap() })
    };
    let w1 = spawn_turn("w1"); // held before the store applies it
    until("w1 is in flight", || async {
        local.inner().turn_reached("w1")
    })
    .await;
    let w2 = spawn_turn("w2"); // applied first, its answer held
    until("w2 is applied", || async {
        local.inner().count(&k).await == 2
    })
    .await;
    w1_land.send(()).unwrap();
    assert_eq!(w1.await.unwrap().append.message_count, 3, "applied second");
    w2_answer.send(()).unwrap();
    assert_eq!(w2.await.unwrap().append.message_count, 2, "applied first");
    let now = local.load(&k).await.unwrap().unwrap();
    let contents: Vec<&str> = now.messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["1", "w2", "w1"]);
    assert_eq!(Some(now), store.load(&k).await.unwrap());
}

/// A turn whose caller stops waiting (a timeout) after the store applied it,
/// before its answer came back, leaves no copy that predates it.
#[tokio::test]
async fn a_cancelled_turn_leaves_no_stale_copy() {
    let (store, local, k) = gated("cancelled").await;
    local.load(&k).await.unwrap();
    assert!(local.held(&k).await.is_some());
    let (land, _answer) = local.inner().gate_turn("w");
    land.send(()).unwrap(); // applied at once; the answer is held
    let mut turn = Box::pin(local.commit_turn(&k, turn_of("w")));
    // The caller stops waiting once the store applied the turn, before the answer.
    tokio::select! {
        _ = turn.as_mut() => panic!("the answer was held"),
        _ = until("the store applied the turn", || async { local.inner().count(&k).await == 2 }) => {}
    }
    drop(turn); // the caller's future is gone, its answer never read
    let now = local.load(&k).await.unwrap().unwrap();
    assert_eq!(now.session.message_count, 2, "the copy from before is gone");
    assert_eq!(Some(now), store.load(&k).await.unwrap());
}

/// Concurrent turns (unversioned, so all land) and reads through one tier, over
/// a store whose answers arrive out of order: a read that starts after a turn
/// through this tier returned always sees it (no answer that predates it was
/// kept), and once all are done the tier answers what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_turns_and_reads_through_one_tier_never_lose_its_own_writes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    for round in 0..10 {
        let (clock, store, _) = setup();
        let local = Arc::new(tier(Jittery::new(store.clone()), &clock, MAX_AGE));
        let done = Arc::new(AtomicU64::new(0));
        let k = key(&format!("race{round}"));
        local
            .commit_turn(&k, Turn::new().message(NewMessage::user("start")))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (local, done, k) = (Arc::clone(&local), Arc::clone(&done), k.clone());
                tokio::spawn(async move {
                    for i in 0..20 {
                        if t % 2 == 0 {
                            let r = local
                                .commit_turn(
                                    &k,
                                    Turn::new()
                                        .message(NewMessage::user(format!("{t}.{i}")))
                                        .patch(SessionPatch::new().summary(format!("{t}.{i}"))),
                                )
                                .await
                                .unwrap();
                            done.fetch_max(r.append.message_count, Ordering::SeqCst);
                        } else {
                            let floor = done.load(Ordering::SeqCst);
                            let seen = local.load(&k).await.unwrap().unwrap();
                            assert!(
                                seen.session.message_count >= floor,
                                "a read after the turn that made {floor} messages saw {}",
                                seen.session.message_count
                            );
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let truth = store.load(&k).await.unwrap();
        assert_eq!(truth.as_ref().unwrap().session.message_count, 81);
        assert_eq!(local.load(&k).await.unwrap(), truth, "round {round}");
    }
}
