//! SessionStore in memory: sessions and their locks, through the core's
//! transitions ([`chatstate_core::transition`]).

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::key::{check_lock_name, check_scope, escape, unescape};
use chatstate_core::model::check_turn;
use chatstate_core::transition::{LockState, SessionState};
use chatstate_core::{
    AppendReceipt, Error, ErrorKind, Expected, Lease, LoadedSession, NewMessage, Page, Result,
    ResultExt, Session, SessionKey, SessionPatch, SessionStore, StoreSettings, Turn, TurnReceipt,
};

use crate::{MemoryStore, Triple, lock, triple};

#[async_trait]
impl SessionStore for MemoryStore {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        let init = init.normalize(&self.inner.settings).in_op("create")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        if sessions.get(&k, now).is_some() {
            return Err(
                Error::new(ErrorKind::AlreadyExists, "a live session has this key")
                    .with_operation("create")
                    .with_key(key),
            );
        }
        let state = SessionState::create(key, &init, now);
        let session = state.session.clone();
        sessions.insert(k, state, self.inner.session_deadline(now));
        Ok(session)
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        if let Some(e) = sessions.get(&k, now) {
            return Ok(e.session.clone());
        }
        let state = SessionState::create(key, &SessionPatch::new(), now);
        let session = state.session.clone();
        sessions.insert(k, state, self.inner.session_deadline(now));
        Ok(session)
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .get(&triple(key), now)
            .map(|e| e.session.clone()))
    }

    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        let now = self.inner.now();
        let sessions = lock(&self.inner.sessions);
        Ok(keys
            .iter()
            .map(|k| sessions.get(&triple(k), now).map(|e| e.session.clone()))
            .collect())
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .get(&triple(key), now)
            .map(SessionState::loaded))
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        chatstate_core::model::check_append(&messages, &self.inner.settings)
            .in_op("append_messages")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        // Checked before the stored state is taken out: a refusal leaves it there.
        SessionState::check_room(sessions.get(&k, now), messages.len(), key)
            .in_op("append_messages")?;
        let existing = sessions.remove(&k, now);
        let (state, receipt) =
            SessionState::append(existing, key, messages, &self.inner.settings, now)
                .in_op("append_messages")?;
        sessions.insert(k, state, self.inner.session_deadline(now));
        Ok(receipt)
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let patch = patch.normalize(&self.inner.settings).in_op("update")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        let entry = sessions.get_mut(&k, now).ok_or_else(|| {
            Error::not_found("no live session has this key")
                .with_operation("update")
                .with_key(key)
        })?;
        entry
            .update(&patch, expected, now)
            .map_err(|e| e.with_operation("update").with_key(key))?;
        let session = entry.session.clone();
        sessions.set_deadline(&k, self.inner.session_deadline(now), now);
        Ok(session)
    }

    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt> {
        let turn = check_turn(turn, &self.inner.settings).in_op("commit_turn")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        // A copy is transitioned: a refused turn leaves the stored session as it was.
        let existing = sessions.get(&k, now).cloned();
        let (state, receipt) =
            SessionState::commit_turn(existing, key, turn, &self.inner.settings, now)
                .map_err(|e| e.with_operation("commit_turn").with_key(key))?;
        sessions.insert(k, state, self.inner.session_deadline(now));
        Ok(receipt)
    }

    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        chatstate_core::model::check_set_data(name, &value, &self.inner.settings)
            .in_op("set_data")?;
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        let state = sessions.get_mut(&k, now).ok_or_else(|| {
            Error::not_found("no live session has this key")
                .with_operation("set_data")
                .with_key(key)
        })?;
        state
            .set_data(name, value)
            .map_err(|e| e.with_operation("set_data").with_key(key))?;
        sessions.set_deadline(&k, self.inner.session_deadline(now), now);
        Ok(())
    }

    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        let now = self.inner.now();
        let sessions = lock(&self.inner.sessions);
        let state = sessions.get(&triple(key), now);
        Ok(names
            .iter()
            .map(|n| state.and_then(|e| e.data.get(n).cloned()))
            .collect())
    }

    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        let Some(state) = sessions.get_mut(&k, now) else {
            return Ok(false);
        };
        let existed = state.data.remove(name).is_some();
        sessions.set_deadline(&k, self.inner.session_deadline(now), now);
        Ok(existed)
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let now = self.inner.now();
        let mut sessions = lock(&self.inner.sessions);
        let k = triple(key);
        match sessions.get_mut(&k, now) {
            Some(e) => {
                e.touch(now);
                sessions.set_deadline(&k, self.inner.session_deadline(now), now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .remove(&triple(key), now)
            .is_some())
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        let now = self.inner.now();
        Ok(lock(&self.inner.sessions)
            .deadline(&triple(key), now)
            .map(|d| now.until(d)))
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        check_scope("tenant", tenant).in_op("list")?;
        chatstate_core::model::check_list_limit(limit).in_op("list")?;
        let start: Triple = match &cursor {
            None => (tenant.to_string(), String::new(), String::new()),
            Some(c) => {
                let (channel, user) = decode_cursor(c).ok_or_else(|| {
                    Error::invalid_input("list cursor is malformed").with_operation("list")
                })?;
                (tenant.to_string(), channel, user)
            }
        };
        let bound = if cursor.is_some() {
            Bound::Excluded(&start)
        } else {
            Bound::Included(&start)
        };
        let now = self.inner.now();
        let sessions = lock(&self.inner.sessions);
        let mut items: Vec<SessionKey> = sessions
            .range_from(bound, now)
            .take_while(|((t, _, _), _)| t == tenant)
            .take(limit.saturating_add(1))
            .map(|(_, e)| e.session.key.clone())
            .collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|k| encode_cursor(k.channel(), k.user()))
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        check_lock_name(name).in_op("try_lock")?;
        let lease = StoreSettings::check_ttl(lease).in_op("try_lock")?;
        let now = self.inner.now();
        let mut locks = lock(&self.inner.locks);
        let k = (triple(key), name.to_string());
        // Transition a copy: a held lock (None) or a refused one (an exhausted
        // fence) leaves the stored record, fence and deadline, exactly as it was.
        let mut state = locks.get(&k, now).cloned().unwrap_or_default();
        let acquired = state
            .try_acquire(lease, now)
            .map_err(|e| e.with_operation("try_lock").with_key(key))?;
        if acquired.is_some() {
            let previous = locks.deadline(&k, now);
            let keep = LockState::keep_until(&self.inner.settings, now, lease, previous);
            locks.insert(k, state, keep);
        }
        Ok(acquired.map(|(token, fence)| Lease {
            key: key.clone(),
            name: name.to_string(),
            token,
            fence,
        }))
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        self.change_lock(held, lease, |state, now| {
            state.extend(&held.token, lease, now)
        })
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        self.change_lock(held, Duration::ZERO, |state, now| {
            state.release(&held.token, now)
        })
    }

    fn capabilities(&self) -> chatstate_core::Capabilities {
        MemoryStore::capabilities(self)
    }
}

impl MemoryStore {
    /// Runs a lock transition on `held`'s lock; when it succeeds, keeps the lock's
    /// record (and fence) for `lease_left` plus the session TTL, never shorter than
    /// before.
    fn change_lock(
        &self,
        held: &Lease,
        lease_left: Duration,
        change: impl FnOnce(&mut LockState, chatstate_core::Timestamp) -> bool,
    ) -> Result<bool> {
        let now = self.inner.now();
        let mut locks = lock(&self.inner.locks);
        let k = (triple(&held.key), held.name.clone());
        let previous = locks.deadline(&k, now);
        let Some(state) = locks.get_mut(&k, now) else {
            return Ok(false);
        };
        if !change(state, now) {
            return Ok(false);
        }
        let keep = LockState::keep_until(&self.inner.settings, now, lease_left, previous);
        locks.set_deadline(&k, keep, now);
        Ok(true)
    }
}

/// A list cursor: the last key's escaped channel and user.
fn encode_cursor(channel: &str, user: &str) -> String {
    format!("{}:{}", escape(channel), escape(user))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let (c, u) = cursor.split_once(':')?;
    Some((unescape(c)?, unescape(u)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_roundtrips_ids_with_separators() {
        let c = encode_cursor("a:b", "c%d");
        assert_eq!(decode_cursor(&c), Some(("a:b".into(), "c%d".into())));
        assert_eq!(decode_cursor("no-separator"), None);
    }
}
