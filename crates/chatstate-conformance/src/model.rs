//! The model test: random sequences of operations run against a backend and against
//! a plain in-memory reference model, which must agree after every step.
//!
//! The key space is small on purpose (3 sessions, 4 cache keys in 2 namespaces whose
//! names share a prefix, 3 counters, 2 focus documents), so that operations keep
//! hitting the same keys. Time moves in half units; every TTL is a whole number of
//! units.
//!
//! ## Time on real-clock backends
//!
//! On a manual clock the model is exact: an entry expires when the elapsed time is at
//! least its TTL. On real time (Redis) an operation lands a little after the model
//! thinks it does, so when a deadline is within a quarter unit of now the entry is
//! "maybe alive": the model accepts either answer and follows the one the backend
//! gave (an entry a read found gone stays gone; an append that created a new session
//! continues from the new one).
//!
//! ## Reproducing a failure
//!
//! The failure message prints the seed and the shrunk operation sequence; run again
//! with `PROPTEST_RNG_SEED=<seed>` to replay the same cases.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chatstate_core::{
    Bucket, CacheKey, Clock, CounterKey, ErrorKind, Expected, FocusDoc, FocusKey, Labels,
    LoadedSession, NewMessage, PutMode, Role, Session, SessionKey, SessionPatch, StoreSettings,
    Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

use crate::{Backend, Fixture, TimeControl};

/// Messages kept per session in the model test.
const WINDOW: usize = 3;
/// Session, cache and focus TTLs, in time units.
const TTL_UNITS: u32 = 3;
/// Namespaces of the cache keys: the second starts with the first.
const NAMESPACES: [&str; 2] = ["users", "users:archive"];
/// Cache keys as (namespace index, key).
const CACHE_KEYS: [(usize, &str); 4] = [(0, "a"), (0, "b"), (1, "a"), (1, "b")];
const USERS: [&str; 3] = ["u0", "u1", "u2"];
const FOCUS_SCOPE: &str = "flow";
const FOCUS_NAMES: [&str; 2] = ["a", "b"];
/// The counter name `list` is checked on; counter 2 shares its prefix.
const COUNTER_NAME: &str = "hits";

/// One step of a model test case.
#[derive(Clone, Debug)]
enum Op {
    KvSet {
        key: usize,
        value: u8,
        /// Whole units; `None` uses the configured cache TTL.
        ttl_units: Option<u32>,
    },
    KvGet {
        key: usize,
    },
    KvDelete {
        key: usize,
    },
    KvExists {
        key: usize,
    },
    KvClearNamespace {
        namespace: usize,
    },
    Append {
        session: usize,
        count: usize,
    },
    Load {
        session: usize,
    },
    Summarize {
        session: usize,
        summary: u8,
    },
    /// `commit_turn`: `count` messages, a summary patch when `summary` is set,
    /// expecting the model's version (0 for no session) when `versioned`, a
    /// version the session is not at when `stale` too.
    Turn {
        session: usize,
        count: usize,
        summary: Option<u8>,
        versioned: bool,
        stale: bool,
    },
    SessionDelete {
        session: usize,
    },
    CounterAdd {
        counter: usize,
        delta: i64,
    },
    CounterGet {
        counter: usize,
    },
    FocusPut {
        key: usize,
        value: u8,
    },
    FocusGet {
        key: usize,
    },
    FocusDelete {
        key: usize,
    },
    /// Lets `halves` half units pass.
    Advance {
        halves: u32,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let kv = 0..CACHE_KEYS.len();
    let sess = 0..USERS.len();
    let cnt = 0..3usize;
    let foc = 0..FOCUS_NAMES.len();
    prop_oneof![
        4 => (kv.clone(), 0..8u8, proptest::option::weighted(0.8, 1..=4u32))
            .prop_map(|(key, value, ttl_units)| Op::KvSet { key, value, ttl_units }),
        3 => kv.clone().prop_map(|key| Op::KvGet { key }),
        1 => kv.clone().prop_map(|key| Op::KvDelete { key }),
        1 => kv.prop_map(|key| Op::KvExists { key }),
        1 => (0..NAMESPACES.len()).prop_map(|namespace| Op::KvClearNamespace { namespace }),
        4 => (sess.clone(), 1..=3usize).prop_map(|(session, count)| Op::Append { session, count }),
        2 => sess.clone().prop_map(|session| Op::Load { session }),
        2 => (sess.clone(), 0..4u8).prop_map(|(session, summary)| Op::Summarize { session, summary }),
        3 => (sess.clone(), 0..=3usize, proptest::option::of(0..4u8), any::<bool>(), proptest::bool::weighted(0.2))
            .prop_map(|(session, count, summary, versioned, stale)| Op::Turn { session, count, summary, versioned, stale }),
        1 => sess.prop_map(|session| Op::SessionDelete { session }),
        3 => (cnt.clone(), -3..=3i64).prop_map(|(counter, delta)| Op::CounterAdd { counter, delta }),
        1 => cnt.prop_map(|counter| Op::CounterGet { counter }),
        3 => (foc.clone(), 0..8u8).prop_map(|(key, value)| Op::FocusPut { key, value }),
        2 => foc.clone().prop_map(|key| Op::FocusGet { key }),
        1 => foc.prop_map(|key| Op::FocusDelete { key }),
        3 => (0..=6u32).prop_map(|halves| Op::Advance { halves }),
    ]
}

fn cache_key(i: usize) -> CacheKey {
    let (ns, key) = CACHE_KEYS[i];
    CacheKey::new(NAMESPACES[ns], key).expect("a valid cache key")
}

fn session_key(i: usize) -> SessionKey {
    SessionKey::new("acme", "whatsapp", USERS[i]).expect("a valid session key")
}

fn counter_key(i: usize) -> CounterKey {
    let key = match i {
        0 => CounterKey::new(COUNTER_NAME),
        1 => CounterKey::new(COUNTER_NAME)
            .map(|k| k.with_labels(Labels::from_pairs([("kind", "a")]).expect("valid labels"))),
        _ => CounterKey::new("hits_total"),
    };
    key.expect("a valid counter key")
}

fn focus_key(i: usize) -> FocusKey {
    FocusKey::new(FOCUS_SCOPE, FOCUS_NAMES[i]).expect("a valid focus key")
}

/// Whether an entry with a deadline is alive now, as far as the model can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Live {
    Yes,
    No,
    /// The deadline is too close to now to tell on a real clock.
    Maybe,
}

#[derive(Clone, Debug)]
struct KvEntry {
    value: Bytes,
    deadline: i64,
}

#[derive(Clone, Debug)]
struct SessionEntry {
    /// (seq, role, content), oldest first.
    window: VecDeque<(u64, Role, String)>,
    message_count: u64,
    summary: Option<String>,
    version: u64,
    deadline: i64,
}

impl SessionEntry {
    /// Appends `messages`, numbered, keeping the newest `WINDOW`.
    fn append(&mut self, messages: Vec<NewMessage>) {
        for m in messages {
            self.message_count += 1;
            self.window
                .push_back((self.message_count, m.role, m.content));
            while self.window.len() > WINDOW {
                self.window.pop_front();
            }
        }
    }
}

#[derive(Clone, Debug)]
struct FocusEntry {
    value: Bytes,
    version: u64,
    deadline: i64,
}

/// The reference model: plain maps, deadlines in model milliseconds.
#[derive(Debug, Default)]
struct Model {
    kv: BTreeMap<usize, KvEntry>,
    sessions: BTreeMap<usize, SessionEntry>,
    counters: [i64; 3],
    focus: BTreeMap<usize, FocusEntry>,
}

/// Checks what a read saw against what the model expects; returns whether the entry
/// is present (the model follows the backend when it could not tell).
fn observe(live: Live, present: bool, what: &str) -> Result<bool, String> {
    match (live, present) {
        (Live::Yes, false) => Err(format!(
            "{what}: the backend has nothing, the model has a live entry"
        )),
        (Live::No, true) => Err(format!(
            "{what}: the backend has an entry, the model has none (never written, deleted \
             or expired)"
        )),
        (_, present) => Ok(present),
    }
}

fn ensure(ok: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(msg()) }
}

/// One model test case in progress: the fixture, the model, and the model clock.
struct Run<'a> {
    fx: &'a Fixture,
    unit: Duration,
    /// How close to now a deadline must be to count as "maybe" (0 on a manual clock).
    margin_ms: i64,
    manual_start: Timestamp,
    real_start: Instant,
    model: Model,
    next_message: u64,
}

impl Run<'_> {
    fn now_ms(&self) -> i64 {
        match &self.fx.time {
            TimeControl::Manual(clock) => clock.now().0 - self.manual_start.0,
            TimeControl::Real => {
                i64::try_from(self.real_start.elapsed().as_millis()).unwrap_or(i64::MAX)
            }
        }
    }

    fn ms(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// Alive when `elapsed < ttl`, i.e. `now < deadline`.
    fn live(&self, deadline: Option<i64>) -> Live {
        let Some(deadline) = deadline else {
            return Live::No;
        };
        let now = self.now_ms();
        if deadline - now > self.margin_ms {
            Live::Yes
        } else if now - deadline >= self.margin_ms {
            Live::No
        } else {
            Live::Maybe
        }
    }

    fn kv_live(&self, key: usize) -> Live {
        self.live(self.model.kv.get(&key).map(|e| e.deadline))
    }

    fn session_live(&self, s: usize) -> Live {
        self.live(self.model.sessions.get(&s).map(|e| e.deadline))
    }

    fn focus_live(&self, key: usize) -> Live {
        self.live(self.model.focus.get(&key).map(|e| e.deadline))
    }

    fn settings(&self) -> &StoreSettings {
        &self.fx.settings
    }

    /// Checks a read of cache key `key`.
    fn check_kv(&mut self, key: usize, got: Option<Bytes>, what: &str) -> Result<(), String> {
        let what = format!("{what} {:?}", cache_key(key));
        if !observe(self.kv_live(key), got.is_some(), &what)? {
            self.model.kv.remove(&key);
            return Ok(());
        }
        let want = &self.model.kv[&key].value;
        ensure(got.as_ref() == Some(want), || {
            format!("{what}: backend has {got:?}, model has {want:?}")
        })
    }

    /// Checks a load of session `s`.
    fn check_session(
        &mut self,
        s: usize,
        got: Option<LoadedSession>,
        what: &str,
    ) -> Result<(), String> {
        let what = format!("{what} {:?}", session_key(s));
        let Some(got) = got else {
            observe(self.session_live(s), false, &what)?;
            self.model.sessions.remove(&s);
            return Ok(());
        };
        observe(self.session_live(s), true, &what)?;
        let want = &self.model.sessions[&s];
        let got_window: Vec<(u64, Role, String)> = got
            .messages
            .iter()
            .map(|m| (m.seq, m.role, m.content.clone()))
            .collect();
        let want_window: Vec<(u64, Role, String)> = want.window.iter().cloned().collect();
        ensure(got_window == want_window, || {
            format!("{what}: window (oldest first) is {got_window:?}, model has {want_window:?}")
        })?;
        self.check_record(&got.session, s, &what)
    }

    fn check_record(&self, got: &Session, s: usize, what: &str) -> Result<(), String> {
        let want = &self.model.sessions[&s];
        ensure(got.key == session_key(s), || {
            format!("{what}: record has key {:?}", got.key)
        })?;
        ensure(
            (got.message_count, got.version, &got.summary)
                == (want.message_count, want.version, &want.summary),
            || {
                format!(
                    "{what}: (message_count, version, summary) is {:?}, model has {:?}",
                    (got.message_count, got.version, &got.summary),
                    (want.message_count, want.version, &want.summary)
                )
            },
        )
    }

    /// Checks a read of focus document `key`.
    fn check_focus(
        &mut self,
        key: usize,
        got: Option<&FocusDoc>,
        what: &str,
    ) -> Result<(), String> {
        let what = format!("{what} {:?}", focus_key(key));
        if !observe(self.focus_live(key), got.is_some(), &what)? {
            self.model.focus.remove(&key);
            return Ok(());
        }
        let want = &self.model.focus[&key];
        let got = got.expect("present");
        ensure(
            got.key == focus_key(key) && got.value == want.value && got.version == want.version,
            || {
                format!(
                    "{what}: backend has {:?} v{}, model has {:?} v{}",
                    got.value, got.version, want.value, want.version
                )
            },
        )
    }

    /// Runs one operation and checks its result.
    async fn step(&mut self, op: &Op) -> Result<(), String> {
        let fx = self.fx;
        let e = |what: &str| {
            let what = what.to_string();
            move |err: chatstate_core::Error| format!("{what} failed: {err}")
        };
        match *op {
            Op::KvSet {
                key,
                value,
                ttl_units,
            } => {
                let ttl = ttl_units.map(|u| self.unit * u);
                let bytes = Bytes::from(format!("v{value}"));
                let deadline = self.now_ms() + Self::ms(ttl.unwrap_or(self.settings().cache_ttl));
                fx.cache
                    .set(&cache_key(key), bytes.clone(), ttl)
                    .await
                    .map_err(e("kv set"))?;
                self.model.kv.insert(
                    key,
                    KvEntry {
                        value: bytes,
                        deadline,
                    },
                );
            }
            Op::KvGet { key } => {
                let got = fx.cache.get(&cache_key(key)).await.map_err(e("kv get"))?;
                self.check_kv(key, got, "kv get")?;
            }
            Op::KvExists { key } => {
                let live = self.kv_live(key);
                let got = fx
                    .cache
                    .exists(&cache_key(key))
                    .await
                    .map_err(e("kv exists"))?;
                if !observe(live, got, &format!("kv exists {:?}", cache_key(key)))? {
                    self.model.kv.remove(&key);
                }
            }
            Op::KvDelete { key } => {
                let live = self.kv_live(key);
                let got = fx
                    .cache
                    .delete(&cache_key(key))
                    .await
                    .map_err(e("kv delete"))?;
                observe(
                    live,
                    got,
                    &format!("kv delete {:?} (its result)", cache_key(key)),
                )?;
                self.model.kv.remove(&key);
            }
            Op::KvClearNamespace { namespace } => {
                let keys: Vec<usize> = (0..CACHE_KEYS.len())
                    .filter(|&i| CACHE_KEYS[i].0 == namespace)
                    .collect();
                let (mut sure, mut maybe) = (0u64, 0u64);
                for &k in &keys {
                    match self.kv_live(k) {
                        Live::Yes => sure += 1,
                        Live::Maybe => maybe += 1,
                        Live::No => {}
                    }
                }
                let got = fx
                    .cache
                    .clear_prefix(NAMESPACES[namespace], "")
                    .await
                    .map_err(e("kv clear_prefix"))?;
                ensure(sure <= got && got <= sure + maybe, || {
                    format!(
                        "clear_prefix({:?}, \"\") returned {got}, the model has {sure} live \
                         entries (and {maybe} maybe expired)",
                        NAMESPACES[namespace]
                    )
                })?;
                for k in keys {
                    self.model.kv.remove(&k);
                }
            }
            Op::Append { session, count } => {
                let mut messages = Vec::new();
                for _ in 0..count {
                    let n = self.next_message;
                    self.next_message += 1;
                    let role = if n.is_multiple_of(2) {
                        Role::User
                    } else {
                        Role::Assistant
                    };
                    messages.push(NewMessage::new(role, format!("m{n}")));
                }
                let live = self.session_live(session);
                let deadline = self.now_ms() + Self::ms(self.settings().session_ttl);
                let receipt = fx
                    .sessions
                    .append_messages(&session_key(session), messages.clone())
                    .await
                    .map_err(e("append_messages"))?;
                let what = format!("append_messages {:?}", session_key(session));
                // `created` is whether there was no live session before.
                observe(
                    live,
                    !receipt.created,
                    &format!(
                        "{what} returned created = {} (created means there was no live \
                         session)",
                        receipt.created
                    ),
                )?;
                if receipt.created {
                    self.model.sessions.insert(
                        session,
                        SessionEntry {
                            window: VecDeque::new(),
                            message_count: 0,
                            summary: None,
                            version: 1,
                            deadline,
                        },
                    );
                }
                let entry = self
                    .model
                    .sessions
                    .get_mut(&session)
                    .expect("a live or new session");
                entry.append(messages);
                entry.deadline = deadline;
                let want = (entry.message_count, entry.window.len());
                ensure((receipt.message_count, receipt.window_len) == want, || {
                    format!(
                        "{what}: receipt (message_count, window_len) is {:?}, model has \
                             {want:?}",
                        (receipt.message_count, receipt.window_len)
                    )
                })?;
            }
            Op::Load { session } => {
                let got = fx
                    .sessions
                    .load(&session_key(session))
                    .await
                    .map_err(e("load"))?;
                self.check_session(session, got, "load")?;
            }
            Op::Summarize { session, summary } => {
                let live = self.session_live(session);
                let deadline = self.now_ms() + Self::ms(self.settings().session_ttl);
                let text = format!("s{summary}");
                let what = format!("update summary {:?}", session_key(session));
                let got = match fx
                    .sessions
                    .update(
                        &session_key(session),
                        SessionPatch::new().summary(text.clone()),
                        Expected::Any,
                    )
                    .await
                {
                    Ok(s) => Some(s),
                    Err(err) if err.kind() == ErrorKind::NotFound => None,
                    Err(err) => return Err(format!("{what} failed: {err}")),
                };
                if !observe(live, got.is_some(), &what)? {
                    self.model.sessions.remove(&session);
                } else {
                    let entry = self
                        .model
                        .sessions
                        .get_mut(&session)
                        .expect("a live session");
                    entry.version += 1;
                    entry.summary = Some(text);
                    entry.deadline = deadline;
                    self.check_record(got.as_ref().expect("updated"), session, &what)?;
                }
            }
            Op::Turn {
                session,
                count,
                summary,
                versioned,
                stale,
            } => {
                let live = self.session_live(session);
                let deadline = self.now_ms() + Self::ms(self.settings().session_ttl);
                let model_version = match live {
                    Live::Yes => self.model.sessions.get(&session).map_or(0, |e| e.version),
                    _ => 0,
                };
                // A version the session is certainly not at, or the model's own;
                // none when the model cannot tell whether the session is alive.
                let expected = match (versioned, live) {
                    (false, _) | (true, Live::Maybe) => Expected::Any,
                    (true, _) if stale => Expected::Version(model_version + 1),
                    (true, _) => Expected::Version(model_version),
                };
                let mut messages = Vec::new();
                for _ in 0..count {
                    let n = self.next_message;
                    self.next_message += 1;
                    messages.push(NewMessage::new(Role::User, format!("m{n}")));
                }
                let mut patch = SessionPatch::new();
                if let Some(sm) = summary {
                    patch = patch.summary(format!("t{sm}"));
                }
                let what = format!(
                    "commit_turn {:?} ({count} messages, summary {summary:?}, {expected:?})",
                    session_key(session)
                );
                let got = fx
                    .sessions
                    .commit_turn(
                        &session_key(session),
                        chatstate_core::Turn::new()
                            .messages(messages.clone())
                            .patch(patch)
                            .expect(expected),
                    )
                    .await;
                let receipt = match (got, expected, live) {
                    (Ok(r), _, _) => r,
                    (Err(err), Expected::Version(_), _) if stale => {
                        let want = if live == Live::Yes {
                            ErrorKind::Conflict
                        } else {
                            ErrorKind::NotFound
                        };
                        ensure(err.kind() == want, || {
                            format!("{what}: {err}, expected a {want:?}")
                        })?;
                        // Nothing written: the model stays as it is.
                        return Ok(());
                    }
                    (Err(err), _, _) => return Err(format!("{what} failed: {err}")),
                };
                ensure(!stale || !versioned || live == Live::Maybe, || {
                    format!("{what}: landed, though it expected a version the session is not at")
                })?;
                observe(
                    live,
                    !receipt.append.created,
                    &format!("{what} returned created = {}", receipt.append.created),
                )?;
                if receipt.append.created {
                    self.model.sessions.insert(
                        session,
                        SessionEntry {
                            window: VecDeque::new(),
                            message_count: 0,
                            summary: summary.map(|sm| format!("t{sm}")),
                            version: 1,
                            deadline,
                        },
                    );
                } else if let Some(sm) = summary {
                    let entry = self
                        .model
                        .sessions
                        .get_mut(&session)
                        .expect("a live session");
                    entry.version += 1;
                    entry.summary = Some(format!("t{sm}"));
                }
                let entry = self
                    .model
                    .sessions
                    .get_mut(&session)
                    .expect("a live or new session");
                entry.append(messages);
                entry.deadline = deadline;
                let want = (entry.version, entry.message_count, entry.window.len());
                let have = (
                    receipt.version,
                    receipt.append.message_count,
                    receipt.append.window_len,
                );
                ensure(have == want, || {
                    format!(
                        "{what}: receipt (version, message_count, window_len) is {have:?}, \
                         model has {want:?}"
                    )
                })?;
            }
            Op::SessionDelete { session } => {
                let live = self.session_live(session);
                let got = fx
                    .sessions
                    .delete(&session_key(session))
                    .await
                    .map_err(e("session delete"))?;
                observe(
                    live,
                    got,
                    &format!("session delete {:?} (its result)", session_key(session)),
                )?;
                self.model.sessions.remove(&session);
            }
            Op::CounterAdd { counter, delta } => {
                let got = fx
                    .counters
                    .add(&counter_key(counter), delta)
                    .await
                    .map_err(e("counter add"))?;
                self.model.counters[counter] += delta;
                let want = self.model.counters[counter];
                ensure(got == want, || {
                    format!(
                        "counter add {:?} {delta} returned {got}, model has {want}",
                        counter_key(counter)
                    )
                })?;
            }
            Op::CounterGet { counter } => {
                let got = fx
                    .counters
                    .get(&counter_key(counter))
                    .await
                    .map_err(e("counter get"))?;
                let want = self.model.counters[counter];
                ensure(got == want, || {
                    format!(
                        "counter get {:?} is {got}, model has {want}",
                        counter_key(counter)
                    )
                })?;
            }
            Op::FocusPut { key, value } => {
                let live = self.focus_live(key);
                let old_version = self.model.focus.get(&key).map(|f| f.version);
                let deadline = self.now_ms() + Self::ms(self.settings().focus_ttl);
                let bytes = Bytes::from(format!("f{value}"));
                let doc = fx
                    .focus
                    .put(&focus_key(key), bytes.clone(), PutMode::Overwrite, None)
                    .await
                    .map_err(e("focus put"))?;
                let what = format!("focus put {:?}", focus_key(key));
                // A put over a live document bumps its version; otherwise it starts at 1.
                let over_live = match old_version {
                    Some(v) if doc.version == v + 1 => true,
                    _ if doc.version == 1 => false,
                    _ => {
                        return Err(format!(
                            "{what}: returned version {}, model had {old_version:?} ({live:?} alive)",
                            doc.version
                        ));
                    }
                };
                observe(live, over_live, &format!("{what} (returned version)"))?;
                ensure(doc.value == bytes && doc.key == focus_key(key), || {
                    format!("{what}: returned {doc:?}")
                })?;
                self.model.focus.insert(
                    key,
                    FocusEntry {
                        value: bytes,
                        version: doc.version,
                        deadline,
                    },
                );
            }
            Op::FocusGet { key } => {
                let got = fx
                    .focus
                    .get(&focus_key(key))
                    .await
                    .map_err(e("focus get"))?;
                self.check_focus(key, got.as_ref(), "focus get")?;
            }
            Op::FocusDelete { key } => {
                let live = self.focus_live(key);
                let got = fx
                    .focus
                    .delete(&focus_key(key))
                    .await
                    .map_err(e("focus delete"))?;
                observe(
                    live,
                    got,
                    &format!("focus delete {:?} (its result)", focus_key(key)),
                )?;
                self.model.focus.remove(&key);
            }
            Op::Advance { halves } => fx.advance(self.unit * halves / 2).await,
        }
        Ok(())
    }

    /// Reads everything observable and compares it with the model.
    async fn sweep(&mut self) -> Result<(), String> {
        let fx = self.fx;
        let e =
            |what: &'static str| move |err: chatstate_core::Error| format!("{what} failed: {err}");

        let keys: Vec<CacheKey> = (0..CACHE_KEYS.len()).map(cache_key).collect();
        let got = fx
            .cache
            .get_many(&keys)
            .await
            .map_err(e("sweep kv get_many"))?;
        for (i, v) in got.into_iter().enumerate() {
            self.check_kv(i, v, "sweep kv get_many")?;
        }

        for s in 0..USERS.len() {
            let got = fx
                .sessions
                .load(&session_key(s))
                .await
                .map_err(e("sweep load"))?;
            self.check_session(s, got, "sweep load")?;
        }

        let keys: Vec<CounterKey> = (0..3).map(counter_key).collect();
        let got = fx
            .counters
            .get_many(&keys)
            .await
            .map_err(e("sweep counter get_many"))?;
        ensure(got[..] == self.model.counters[..], || {
            format!(
                "counter get_many {keys:?} is {got:?}, model has {:?}",
                self.model.counters
            )
        })?;
        // Whether a counter at 0 is listed is the backend's choice: compare the rest.
        let mut listed = fx
            .counters
            .list(COUNTER_NAME, None)
            .await
            .map_err(e("sweep counter list"))?;
        listed.retain(|(_, v)| *v != 0);
        let mut want: Vec<(Labels, i64)> = (0..2)
            .map(|i| (counter_key(i).labels().clone(), self.model.counters[i]))
            .filter(|(_, v)| *v != 0)
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        ensure(listed == want, || {
            format!(
                "counter list({COUNTER_NAME:?}, None) without zeros is {listed:?}, model has {want:?}"
            )
        })?;
        let bucketed = fx
            .counters
            .list(COUNTER_NAME, Some(Bucket::Day(0)))
            .await
            .map_err(e("sweep counter list bucket"))?;
        ensure(bucketed.is_empty(), || {
            format!("counter list of an unused bucket is {bucketed:?}")
        })?;

        for k in 0..FOCUS_NAMES.len() {
            let got = fx
                .focus
                .get(&focus_key(k))
                .await
                .map_err(e("sweep focus get"))?;
            self.check_focus(k, got.as_ref(), "sweep focus get")?;
        }
        let listed = fx
            .focus
            .list(FOCUS_SCOPE)
            .await
            .map_err(e("sweep focus list"))?;
        for (k, name) in FOCUS_NAMES.iter().enumerate() {
            let in_list = listed.iter().find(|d| d.key.name() == *name);
            self.check_focus(k, in_list, "sweep focus list")?;
        }
        let names: Vec<&str> = listed.iter().map(|d| d.key.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        ensure(
            names == sorted && names.iter().all(|n| FOCUS_NAMES.contains(n)),
            || {
                format!(
                    "focus list({FOCUS_SCOPE:?}) is not the scope's documents sorted by name: {names:?}"
                )
            },
        )?;
        Ok(())
    }
}

fn model_settings(unit: Duration) -> StoreSettings {
    StoreSettings {
        session_ttl: unit * TTL_UNITS,
        cache_ttl: unit * TTL_UNITS,
        focus_ttl: unit * TTL_UNITS,
        window_size: WINDOW,
        ..StoreSettings::default()
    }
}

/// Runs one case: a fresh fixture, then every op checked against the model.
async fn run_ops(backend: &dyn Backend, ops: &[Op]) -> Result<(), TestCaseError> {
    let unit = backend.time_unit();
    let fx = backend
        .open(model_settings(unit))
        .await
        .map_err(|err| TestCaseError::fail(format!("opening a fixture failed: {err}")))?;
    let (margin_ms, manual_start) = match &fx.time {
        TimeControl::Manual(clock) => (0, clock.now()),
        TimeControl::Real => (Run::ms(unit / 4), Timestamp(0)),
    };
    let mut run = Run {
        fx: &fx,
        unit,
        margin_ms,
        manual_start,
        real_start: Instant::now(),
        model: Model::default(),
        next_message: 0,
    };
    for (i, op) in ops.iter().enumerate() {
        let result = match run.step(op).await {
            Ok(()) => run.sweep().await,
            Err(msg) => Err(msg),
        };
        if let Err(msg) = result {
            return Err(TestCaseError::fail(format!(
                "after op #{i} {op:?} (model time {} ms): {msg}\nops up to here: {:?}",
                run.now_ms(),
                &ops[..=i]
            )));
        }
    }
    Ok(())
}

/// Runs the model test against `backend`: `cases` random sequences of 1 to 39
/// operations, each on a fresh fixture, compared with the reference model after every
/// operation. Panics with the seed and the shrunk failing sequence on a mismatch.
pub fn run<B: Backend>(backend: B, cases: u32) {
    run_shared(Arc::new(backend), cases)
}

/// [`run`] on a backend already behind an `Arc` (what [`crate::runner`] has). Builds
/// its own runtime: call it from a thread that is not inside one.
pub fn run_shared(backend: Arc<dyn Backend>, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the model test");
    let name = backend.name();

    // Probe once: a real-clock backend sleeps through every Advance, so shrink less.
    let real_time = {
        let fx = rt
            .block_on(backend.open(model_settings(backend.time_unit())))
            .unwrap_or_else(|err| panic!("backend {name} failed to open a fixture: {err}"));
        matches!(fx.time, TimeControl::Real)
    };

    let defaults = Config::default();
    let seed = match defaults.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => RandomState::new().hash_one(name),
    };
    let config = Config {
        cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(seed),
        max_shrink_iters: if real_time {
            64
        } else {
            defaults.max_shrink_iters
        },
        ..defaults
    };
    let mut runner = TestRunner::new(config);
    let strategy = proptest::collection::vec(op_strategy(), 1..40);
    let result = runner.run(&strategy, |ops| rt.block_on(run_ops(&*backend, &ops)));
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, ops)) => panic!(
            "model test failed on backend {name} (reproduce with PROPTEST_RNG_SEED={seed}):\n\
             {reason}\nminimal failing sequence ({} ops):\n{ops:#?}",
            ops.len()
        ),
        Err(TestError::Abort(reason)) => {
            panic!("model test aborted on backend {name} (PROPTEST_RNG_SEED={seed}): {reason}")
        }
    }
}
