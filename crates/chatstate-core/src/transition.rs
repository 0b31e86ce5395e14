//! The state transitions of sessions, locks and counters, as pure functions.
//!
//! Each rule is written once here. The memory and file backends hold these states and
//! call these functions under their own critical sections (a mutex, a file lock);
//! the Redis backend's Lua scripts are the same rules in Lua, and name the function
//! they mirror. The conformance suite checks that all three agree.
//!
//! Nothing here reads a clock or does I/O: the caller passes `now` and the settings.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::config::StoreSettings;
use crate::error::{Error, Result};
use crate::key::{CounterKey, SessionKey};
use crate::model::{
    AppendReceipt, CounterBatch, Expected, LoadedSession, MAX_SESSION_DATA_NAMES, Message,
    NewMessage, Session, SessionPatch, Turn, TurnReceipt, estimate_tokens, random_id,
};

/// A session's record, its window of recent messages and its side data: what a
/// backend keeps per session. All expire together at [`SessionState::deadline`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionState {
    /// The record.
    pub session: Session,
    /// The newest messages, oldest first, at most the window size.
    pub messages: VecDeque<Message>,
    /// The named side values ([`crate::SessionStore::set_data`]), at most
    /// [`MAX_SESSION_DATA_NAMES`]. Absent in records written before side data
    /// existed (read as none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, Bytes>,
}

impl SessionState {
    /// A new session created at `now` with `init` (already normalized) applied.
    pub fn create(key: &SessionKey, init: &SessionPatch, now: Timestamp) -> SessionState {
        SessionState {
            session: Session::new(key.clone(), random_id(), now, init),
            messages: VecDeque::new(),
            data: BTreeMap::new(),
        }
    }

    /// When a session written at `now` expires: every write sets it again.
    pub fn deadline(settings: &StoreSettings, now: Timestamp) -> Timestamp {
        now.plus(settings.session_ttl)
    }

    /// The only refusal of [`SessionState::append`]: `n` more messages must fit in
    /// `existing`'s `message_count`, which stays at most `i64::MAX` as on Redis
    /// (only a corrupt or imported record lacks the room). A store that hands `append` its stored state by value checks this
    /// first, so a refused append leaves that state where it was.
    pub fn check_room(existing: Option<&SessionState>, n: usize, key: &SessionKey) -> Result<()> {
        // i64::MAX, as Redis counts (HINCRBY): the same limit on every backend.
        let room = |count: u64| {
            count
                .checked_add(n as u64)
                .is_some_and(|total| total <= i64::MAX as u64)
        };
        match existing {
            Some(s) if !room(s.session.message_count) => {
                Err(exhausted("message_count").with_key(key))
            }
            _ => Ok(()),
        }
    }

    /// Appends `messages` (already checked with [`crate::model::check_append`]) to
    /// `existing`, or to a session created now when there is none: numbers them,
    /// keeps the newest `settings.window_size`, sets `last_activity`. A stored
    /// `message_count` with no room left (only a corrupt record has one) is a
    /// `Decode` error, and nothing changes.
    pub fn append(
        existing: Option<SessionState>,
        key: &SessionKey,
        messages: Vec<NewMessage>,
        settings: &StoreSettings,
        now: Timestamp,
    ) -> Result<(SessionState, AppendReceipt)> {
        SessionState::check_room(existing.as_ref(), messages.len(), key)?;
        let created = existing.is_none();
        let mut state =
            existing.unwrap_or_else(|| SessionState::create(key, &SessionPatch::new(), now));
        for m in messages {
            // Cannot overflow: checked for the whole append above.
            state.session.message_count += 1;
            let seq = state.session.message_count;
            state.messages.push_back(m.into_message(seq, now));
        }
        let excess = state.messages.len().saturating_sub(settings.window_size);
        let trimmed_tokens = state
            .messages
            .drain(..excess)
            .map(|m| estimate_tokens(&m.content))
            .sum();
        state.session.last_activity = now;
        let receipt = AppendReceipt {
            message_count: state.session.message_count,
            window_len: state.messages.len(),
            created,
            trimmed_messages: excess as u64,
            trimmed_tokens,
        };
        Ok((state, receipt))
    }

    /// Commits a turn (its patch already normalized, its messages checked with
    /// [`crate::model::check_append`]) to `existing`, all or nothing: `NotFound`
    /// when there is no session and `turn.expected` names a version, `Conflict`
    /// when the record is at another version. A missing session (with
    /// [`Expected::Any`], or `Expected::Version(0)`: a missing session is at
    /// version 0) is created with the patch as its init (version 1);
    /// an existing one gets the patch as [`SessionState::update`] applies it, when
    /// the patch names a field. Then the messages are appended as
    /// [`SessionState::append`] does (which also sets `last_activity`).
    pub fn commit_turn(
        existing: Option<SessionState>,
        key: &SessionKey,
        turn: Turn,
        settings: &StoreSettings,
        now: Timestamp,
    ) -> Result<(SessionState, TurnReceipt)> {
        let Turn {
            messages,
            patch,
            expected,
            return_session,
        } = turn;
        SessionState::check_room(existing.as_ref(), messages.len(), key)?;
        let created = existing.is_none();
        let state = match existing {
            Some(mut state) => {
                check_version(expected, state.session.version)?;
                if !patch.is_empty() {
                    state.update(&patch, expected, now)?;
                }
                state
            }
            // A missing session is at version 0: `Version(0)` is "only if still new".
            None if matches!(expected, Expected::Any | Expected::Version(0)) => {
                SessionState::create(key, &patch, now)
            }
            None => return Err(Error::not_found("no live session has this key")),
        };
        let (state, mut append) = SessionState::append(Some(state), key, messages, settings, now)?;
        append.created = created;
        let receipt = TurnReceipt {
            version: state.session.version,
            append,
            session: return_session.then(|| state.session.clone()),
        };
        Ok((state, receipt))
    }

    /// Applies `patch` (already normalized) if `expected` holds: `Conflict` (naming
    /// both versions) otherwise, with nothing changed.
    pub fn update(
        &mut self,
        patch: &SessionPatch,
        expected: Expected,
        now: Timestamp,
    ) -> Result<()> {
        check_version(expected, self.session.version)?;
        if self.session.version == u64::MAX {
            return Err(exhausted("version"));
        }
        self.session.apply(patch, now);
        Ok(())
    }

    /// Sets side value `name` (already checked with
    /// [`crate::model::check_set_data`]). `InvalidInput`, with nothing changed, when
    /// `name` is new and the session already holds [`MAX_SESSION_DATA_NAMES`]
    /// names. Neither `version`, `updated_at` nor `last_activity` changes (the caller
    /// refreshes the deadline).
    pub fn set_data(&mut self, name: &str, value: Bytes) -> Result<()> {
        if !self.data.contains_key(name) && self.data.len() >= MAX_SESSION_DATA_NAMES {
            return Err(too_many_data_names());
        }
        self.data.insert(name.to_string(), value);
        Ok(())
    }

    /// Marks activity at `now` (the caller refreshes the deadline).
    pub fn touch(&mut self, now: Timestamp) {
        self.session.last_activity = now;
    }

    /// The record and the window, as [`crate::SessionStore::load`] returns them.
    pub fn loaded(&self) -> LoadedSession {
        LoadedSession {
            session: self.session.clone(),
            messages: self.messages.iter().cloned().collect(),
        }
    }
}

/// The error of a side value write over [`MAX_SESSION_DATA_NAMES`] (the Redis
/// script's refusal maps to it too).
pub fn too_many_data_names() -> Error {
    Error::invalid_input(format!(
        "a session holds at most {MAX_SESSION_DATA_NAMES} data names; delete one first"
    ))
}

/// A number read from storage that has no room left to grow: only a corrupt (or
/// hand-edited) record holds one. Refused, never wrapped: a wrapped fence would go
/// back, exactly what fencing exists to prevent.
fn exhausted(what: &str) -> Error {
    Error::decode(format!(
        "stored {what} is at its maximum (a corrupt record)"
    ))
}

/// `Conflict` when an update expecting `expected` meets a record at `version`.
fn check_version(expected: Expected, version: u64) -> Result<()> {
    match expected {
        Expected::Version(want) if want != version => Err(Error::conflict(format!(
            "expected version {want}, the session is at version {version}"
        ))),
        _ => Ok(()),
    }
}

/// One session lock: its holder (owner token and lease deadline) and its fencing
/// number, kept until [`LockState::keep_until`] so that fences only grow.
///
/// The fence must outlive every lease it was handed out with, by at least the
/// session TTL ([`StoreSettings::fence_retention`]); otherwise a lock whose lease is
/// longer than the session TTL would forget its fence and give the next holder a
/// fence below the stale holder's, exactly when fencing matters.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// The owner token and the lease's deadline, while held or until cleared.
    pub holder: Option<(String, Timestamp)>,
    /// The last fencing number handed out (0: never).
    pub fence: u64,
}

impl LockState {
    /// Whether `token` holds the lock at `now`.
    pub fn held_by(&self, token: &str, now: Timestamp) -> bool {
        matches!(&self.holder, Some((t, until)) if t == token && *until > now)
    }

    /// Takes the lock for `lease` when it is free at `now`: a new owner token and a
    /// fence one above the last. `None` (and nothing changed) when it is held; a
    /// `Decode` error (nothing changed) when the stored fence has no room left to
    /// grow, which only a corrupt record has.
    pub fn try_acquire(
        &mut self,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<(String, u64)>> {
        if self.holder.as_ref().is_some_and(|(_, until)| *until > now) {
            return Ok(None);
        }
        self.fence = self
            .fence
            .checked_add(1)
            .ok_or_else(|| exhausted("lock fence"))?;
        let token = random_id();
        self.holder = Some((token.clone(), now.plus(lease)));
        Ok(Some((token, self.fence)))
    }

    /// Sets the lease of `token`'s hold to `lease` from `now`; `false` (nothing
    /// changed) when `token` does not hold the lock.
    pub fn extend(&mut self, token: &str, lease: Duration, now: Timestamp) -> bool {
        if !self.held_by(token, now) {
            return false;
        }
        self.holder = Some((token.to_string(), now.plus(lease)));
        true
    }

    /// Releases `token`'s hold; `false` (nothing changed) when it does not hold the
    /// lock. The fence is kept.
    pub fn release(&mut self, token: &str, now: Timestamp) -> bool {
        if !self.held_by(token, now) {
            return false;
        }
        self.holder = None;
        true
    }

    /// How long the backend must keep this lock's record after a transition at `now`
    /// that left `lease_left` on the lease (zero after a release or a refused try):
    /// the later of `previous` (the record's current deadline, if any) and `now` plus
    /// [`StoreSettings::fence_retention`]. Never earlier than before.
    pub fn keep_until(
        settings: &StoreSettings,
        now: Timestamp,
        lease_left: Duration,
        previous: Option<Timestamp>,
    ) -> Timestamp {
        let wanted = now.plus(settings.fence_retention(lease_left));
        previous.map_or(wanted, |p| p.max(wanted))
    }
}

impl std::fmt::Debug for LockState {
    /// The owner token is redacted, as in [`crate::Lease`]'s `Debug`: it is the proof
    /// of ownership.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockState")
            .field(
                "holder",
                &self.holder.as_ref().map(|(_, until)| ("<redacted>", until)),
            )
            .field("fence", &self.fence)
            .finish()
    }
}

/// Adds `delta` to `value` within the counter range (all of i64), or an
/// [`crate::ErrorKind::InvalidInput`] error naming the counter.
/// Overflow only: a backend checks the key ([`CounterKey::check`]) before it
/// touches anything.
pub fn counter_add(key: &CounterKey, value: i64, delta: i64) -> Result<i64> {
    value.checked_add(delta).ok_or_else(|| {
        Error::invalid_input(format!(
            "counter would leave the i64 range ({value} + {delta})"
        ))
        .with_key(key)
    })
}

/// The new value of every counter a batch touches, computed before anything is
/// written: an invalid key or an overflow anywhere is an error and the caller writes
/// nothing (not the other counters, not the batch id). `current` reads a counter's stored value (0
/// when absent).
pub fn apply_batch(
    batch: &CounterBatch,
    mut current: impl FnMut(&CounterKey) -> Result<i64>,
) -> Result<Vec<(&CounterKey, i64)>> {
    batch
        .deltas()
        .map(|(key, delta)| {
            key.check()?;
            Ok((key, counter_add(key, current(key)?, delta)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key() -> SessionKey {
        SessionKey::new("t", "c", "u").unwrap()
    }

    #[test]
    fn append_numbers_trims_and_creates() {
        let settings = StoreSettings {
            window_size: 2,
            ..StoreSettings::default()
        };
        let msgs = |n: usize| (0..n).map(|i| NewMessage::user(format!("m{i}"))).collect();
        let (state, r) =
            SessionState::append(None, &key(), msgs(3), &settings, Timestamp(5)).unwrap();
        assert!(r.created);
        assert_eq!((r.message_count, r.window_len), (3, 2));
        assert_eq!(state.messages[0].seq, 2);
        assert_eq!(state.session.last_activity, Timestamp(5));
        let (state, r) =
            SessionState::append(Some(state), &key(), msgs(1), &settings, Timestamp(9)).unwrap();
        assert!(!r.created);
        assert_eq!(r.message_count, 4);
        assert_eq!(
            state.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn update_checks_the_version_first() {
        let mut s = SessionState::create(&key(), &SessionPatch::new(), Timestamp(0));
        let err = s
            .update(
                &SessionPatch::new().summary("x"),
                Expected::Version(7),
                Timestamp(1),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert_eq!(s.session.summary, None);
        s.update(
            &SessionPatch::new().summary("x"),
            Expected::Version(1),
            Timestamp(1),
        )
        .unwrap();
        assert_eq!(s.session.version, 2);
    }

    #[test]
    fn fences_grow_and_records_outlive_lease_plus_ttl() {
        let settings = StoreSettings {
            session_ttl: Duration::from_secs(10),
            ..StoreSettings::default()
        };
        let lease = Duration::from_secs(60);
        let mut lock = LockState::default();
        let (token, fence) = lock.try_acquire(lease, Timestamp(0)).unwrap().unwrap();
        assert_eq!(fence, 1);
        assert!(lock.try_acquire(lease, Timestamp(1)).unwrap().is_none());
        let keep = LockState::keep_until(&settings, Timestamp(0), lease, None);
        assert_eq!(keep, Timestamp(70_000));
        // A release keeps the earlier, longer deadline.
        assert!(lock.release(&token, Timestamp(1_000)));
        assert_eq!(
            LockState::keep_until(&settings, Timestamp(1_000), Duration::ZERO, Some(keep)),
            keep
        );
        assert!(!lock.release(&token, Timestamp(1_000)));
        let (_, fence) = lock.try_acquire(lease, Timestamp(2_000)).unwrap().unwrap();
        assert_eq!(fence, 2);
    }

    #[test]
    fn extend_only_by_the_holder_within_the_lease() {
        let mut lock = LockState::default();
        let (token, _) = lock
            .try_acquire(Duration::from_secs(1), Timestamp(0))
            .unwrap()
            .unwrap();
        assert!(!lock.extend("other", Duration::from_secs(5), Timestamp(10)));
        assert!(lock.extend(&token, Duration::from_secs(5), Timestamp(10)));
        assert_eq!(lock.holder.as_ref().unwrap().1, Timestamp(5_010));
        assert!(!lock.extend(&token, Duration::from_secs(5), Timestamp(5_010)));
    }

    /// Numbers read from storage with no room left (a corrupt or hand-edited
    /// record) are refused, never wrapped to 0 (a fence going back) or overflowed (a
    /// panic), and nothing changes.
    #[test]
    fn exhausted_stored_numbers_are_decode_errors_not_wraps() {
        let mut lock = LockState {
            holder: None,
            fence: u64::MAX,
        };
        let err = lock
            .try_acquire(Duration::from_secs(1), Timestamp(0))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!((lock.fence, lock.holder.is_none()), (u64::MAX, true));

        let settings = StoreSettings::default();
        let mut state = SessionState::create(&key(), &SessionPatch::new(), Timestamp(0));
        // The limit is i64::MAX, as Redis counts, on every backend.
        let top = i64::MAX as u64;
        state.session.message_count = top - 1;
        let two = vec![NewMessage::user("a"), NewMessage::user("b")];
        let err = SessionState::append(Some(state.clone()), &key(), two, &settings, Timestamp(1))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        let one = vec![NewMessage::user("a")];
        let (s, r) =
            SessionState::append(Some(state.clone()), &key(), one, &settings, Timestamp(1))
                .unwrap();
        assert_eq!((r.message_count, s.messages[0].seq), (top, top));
        state.session.message_count = u64::MAX;
        let err = SessionState::append(
            Some(state.clone()),
            &key(),
            vec![NewMessage::user("a")],
            &settings,
            Timestamp(1),
        )
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode, "no wrap at u64::MAX either");

        state.session.version = u64::MAX;
        let err = state
            .update(
                &SessionPatch::new().summary("x"),
                Expected::Any,
                Timestamp(2),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Decode);
        assert_eq!(state.session.summary, None);
    }

    #[test]
    fn lock_state_debug_hides_the_owner_token() {
        let mut lock = LockState::default();
        let (token, _) = lock
            .try_acquire(Duration::from_secs(5), Timestamp(0))
            .unwrap()
            .unwrap();
        let shown = format!("{lock:?}");
        assert!(!shown.contains(&token), "{shown}");
        assert!(shown.contains("fence: 1"), "{shown}");
    }

    #[test]
    fn a_batch_that_overflows_anywhere_changes_nothing() {
        let a = CounterKey::new("a").unwrap();
        let b = CounterKey::new("b").unwrap();
        let mut batch = CounterBatch::new();
        batch.add(&a, 1);
        batch.add(&b, 1);
        let values = |k: &CounterKey| Ok(if k.name() == "b" { i64::MAX } else { 0 });
        let err = apply_batch(&batch, values).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_eq!(err.key(), Some("b"));
        let ok = apply_batch(&batch, |_| Ok(i64::MAX - 1)).unwrap();
        assert_eq!(ok, vec![(&a, i64::MAX), (&b, i64::MAX)]);
    }
}
