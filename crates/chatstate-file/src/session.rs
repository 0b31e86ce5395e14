//! SessionStore on the file store: one record per session (the session and its
//! message window), one lock file per session lock (holder, lease, fence).

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::ResultExt;
use chatstate_core::key::{check_lock_name, check_scope};
use chatstate_core::model::check_turn;
use chatstate_core::transition::{LockState, SessionState};
use chatstate_core::{
    AppendReceipt, Capabilities, Error, ErrorKind, Expected, Lease, LoadedSession, NewMessage,
    Page, Result, Session, SessionKey, SessionPatch, SessionStore, StoreSettings, Timestamp, Turn,
    TurnReceipt,
};
use serde::{Deserialize, Serialize};

use crate::format::Kind;
use crate::{FileStore, Inner, collision, is_record_name, record_names, remove_record};

impl Inner {
    fn read_session(&self, key: &SessionKey, now: Timestamp) -> Result<Option<SessionState>> {
        let path = self.layout.session(key);
        match self.read_live::<SessionState>(&path, Kind::Session, now)? {
            Some((file, _)) if file.session.key == *key => Ok(Some(file)),
            Some(_) => Err(collision(&path)),
            None => Ok(None),
        }
    }

    /// Writes a session's record and window (the file's JSON metadata is the core's
    /// [`SessionState`]), expiring a session TTL from `now`.
    fn write_session(&self, file: &SessionState, now: Timestamp) -> Result<()> {
        let path = self.layout.session(&file.session.key);
        let deadline = SessionState::deadline(&self.settings, now);
        self.write(&path, Kind::Session, deadline, file, &[])
    }

    /// Runs a lock transition on `held`'s lock under its stripe; when it succeeds,
    /// keeps the file (and its fence) for `lease_left` plus the session TTL, never
    /// shorter than before.
    fn change_lock(
        &self,
        held: &Lease,
        lease_left: Duration,
        change: impl FnOnce(&mut LockState, Timestamp) -> bool,
    ) -> Result<bool> {
        let path = self.layout.session_lock(&held.key, &held.name);
        let _g = self.stripes.lock(&path)?;
        let now = self.now();
        let Some((mut file, record)) = self.read_live::<LockFile>(&path, Kind::SessionLock, now)?
        else {
            return Ok(false);
        };
        if file.key != held.key || file.name != held.name || !change(&mut file.state, now) {
            return Ok(false);
        }
        let previous = Some(record.header.deadline);
        let keep = LockState::keep_until(&self.settings, now, lease_left, previous);
        self.write(&path, Kind::SessionLock, keep, &file, &[])?;
        Ok(true)
    }
}

/// A session lock file's metadata: which lock, and the core's [`LockState`]
/// (holder and fence, flattened: the JSON is `{"key", "name", "holder", "fence"}`).
#[derive(Serialize, Deserialize)]
struct LockFile {
    key: SessionKey,
    name: String,
    #[serde(flatten)]
    state: LockState,
}

#[async_trait]
impl SessionStore for FileStore {
    async fn create(&self, key: &SessionKey, init: SessionPatch) -> Result<Session> {
        let init = init.normalize(&self.inner.settings).in_op("create")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            if inner.read_session(&key, now)?.is_some() {
                return Err(
                    Error::new(ErrorKind::AlreadyExists, "a live session has this key")
                        .with_key(&key),
                );
            }
            let file = SessionState::create(&key, &init, now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("create")
    }

    async fn get_or_create(&self, key: &SessionKey) -> Result<Session> {
        let key = key.clone();
        self.blocking(move |inner| {
            if let Some(file) = inner.read_session(&key, inner.now())? {
                return Ok(file.session);
            }
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            if let Some(file) = inner.read_session(&key, now)? {
                return Ok(file.session);
            }
            let file = SessionState::create(&key, &SessionPatch::new(), now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("get_or_create")
    }

    async fn get(&self, key: &SessionKey) -> Result<Option<Session>> {
        let key = key.clone();
        self.blocking(move |inner| Ok(inner.read_session(&key, inner.now())?.map(|f| f.session)))
            .await
            .in_op("get")
    }

    async fn get_many(&self, keys: &[SessionKey]) -> Result<Vec<Option<Session>>> {
        let keys = keys.to_vec();
        self.blocking(move |inner| {
            let now = inner.now();
            keys.iter()
                .map(|k| Ok(inner.read_session(k, now)?.map(|f| f.session)))
                .collect()
        })
        .await
        .in_op("get_many")
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<LoadedSession>> {
        let key = key.clone();
        self.blocking(move |inner| Ok(inner.read_session(&key, inner.now())?.map(|f| f.loaded())))
            .await
            .in_op("load")
    }

    async fn append_messages(
        &self,
        key: &SessionKey,
        messages: Vec<NewMessage>,
    ) -> Result<AppendReceipt> {
        chatstate_core::model::check_append(&messages, &self.inner.settings)
            .in_op("append_messages")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let existing = inner.read_session(&key, now)?;
            let (file, receipt) =
                SessionState::append(existing, &key, messages, &inner.settings, now)?;
            inner.write_session(&file, now)?;
            Ok(receipt)
        })
        .await
        .in_op("append_messages")
    }

    async fn update(
        &self,
        key: &SessionKey,
        patch: SessionPatch,
        expected: Expected,
    ) -> Result<Session> {
        let patch = patch.normalize(&self.inner.settings).in_op("update")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let mut file = inner
                .read_session(&key, now)?
                .ok_or_else(|| Error::not_found("no live session has this key").with_key(&key))?;
            file.update(&patch, expected, now)
                .map_err(|e| e.with_key(&key))?;
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("update")
    }

    async fn commit_turn(&self, key: &SessionKey, turn: Turn) -> Result<TurnReceipt> {
        let turn = check_turn(turn, &self.inner.settings).in_op("commit_turn")?;
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let existing = inner.read_session(&key, now)?;
            let (file, receipt) =
                SessionState::commit_turn(existing, &key, turn, &inner.settings, now)
                    .map_err(|e| e.with_key(&key))?;
            inner.write_session(&file, now)?;
            Ok(receipt)
        })
        .await
        .in_op("commit_turn")
    }

    async fn set_data(&self, key: &SessionKey, name: &str, value: Bytes) -> Result<()> {
        chatstate_core::model::check_set_data(name, &value, &self.inner.settings)
            .in_op("set_data")?;
        let (key, name) = (key.clone(), name.to_string());
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let mut file = inner
                .read_session(&key, now)?
                .ok_or_else(|| Error::not_found("no live session has this key").with_key(&key))?;
            file.set_data(&name, value).map_err(|e| e.with_key(&key))?;
            inner.write_session(&file, now)
        })
        .await
        .in_op("set_data")
    }

    async fn get_data_many(
        &self,
        key: &SessionKey,
        names: &[String],
    ) -> Result<Vec<Option<Bytes>>> {
        let (key, names) = (key.clone(), names.to_vec());
        self.blocking(move |inner| {
            let file = inner.read_session(&key, inner.now())?;
            Ok(names
                .iter()
                .map(|n| file.as_ref().and_then(|f| f.data.get(n).cloned()))
                .collect())
        })
        .await
        .in_op("get_data_many")
    }

    async fn delete_data(&self, key: &SessionKey, name: &str) -> Result<bool> {
        let (key, name) = (key.clone(), name.to_string());
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let Some(mut file) = inner.read_session(&key, now)? else {
                return Ok(false);
            };
            let existed = file.data.remove(&name).is_some();
            inner.write_session(&file, now)?;
            Ok(existed)
        })
        .await
        .in_op("delete_data")
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let Some(mut file) = inner.read_session(&key, now)? else {
                return Ok(false);
            };
            file.touch(now);
            inner.write_session(&file, now)?;
            Ok(true)
        })
        .await
        .in_op("touch")
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session(&key);
            let _g = inner.stripes.lock(&path)?;
            remove_record(inner, &path)
        })
        .await
        .in_op("delete")
    }

    async fn ttl(&self, key: &SessionKey) -> Result<Option<Duration>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let now = inner.now();
            let path = inner.layout.session(&key);
            match inner.read_live::<SessionState>(&path, Kind::Session, now)? {
                Some((file, _)) if file.session.key != key => Err(collision(&path)),
                Some((_, record)) => Ok(Some(now.until(record.header.deadline))),
                None => Ok(None),
            }
        })
        .await
        .in_op("ttl")
    }

    async fn list(
        &self,
        tenant: &str,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page<SessionKey>> {
        check_scope("tenant", tenant).in_op("list")?;
        chatstate_core::model::check_list_limit(limit).in_op("list")?;
        if let Some(c) = &cursor
            && !is_record_name(c)
        {
            return Err(Error::invalid_input("list cursor is malformed").with_operation("list"));
        }
        let tenant = tenant.to_string();
        self.blocking(move |inner| {
            let dir = inner.layout.tenant_dir(&tenant);
            let names = record_names(&dir)?;
            let start = match &cursor {
                Some(c) => Bound::Excluded(c.clone()),
                None => Bound::Unbounded,
            };
            let now = inner.now();
            let mut items = Vec::new();
            let mut last_name = None;
            let mut more = false;
            for name in names.range((start, Bound::Unbounded)) {
                let path = dir.join(name);
                let file = match inner.read_live::<SessionState>(&path, Kind::Session, now) {
                    Ok(Some((file, _))) => file,
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "chatstate-file list skips an unreadable session");
                        continue;
                    }
                };
                if file.session.key.tenant() != tenant {
                    continue;
                }
                if items.len() == limit {
                    more = true;
                    break;
                }
                items.push(file.session.key);
                last_name = Some(name.clone());
            }
            Ok(Page {
                items,
                next_cursor: if more { last_name } else { None },
            })
        })
        .await
        .in_op("list")
    }

    async fn try_lock(
        &self,
        key: &SessionKey,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Lease>> {
        check_lock_name(name).in_op("try_lock")?;
        let lease = StoreSettings::check_ttl(lease).in_op("try_lock")?;
        let (key, name) = (key.clone(), name.to_string());
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&key, &name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let (mut file, previous) =
                match inner.read_live::<LockFile>(&path, Kind::SessionLock, now)? {
                    Some((f, _)) if f.key != key || f.name != name => {
                        return Err(collision(&path));
                    }
                    Some((f, record)) => (f, Some(record.header.deadline)),
                    None => (
                        LockFile {
                            key: key.clone(),
                            name: name.clone(),
                            state: LockState::default(),
                        },
                        None,
                    ),
                };
            let acquired = file
                .state
                .try_acquire(lease, now)
                .map_err(|e| e.with_key(path.display()))?;
            let Some((token, fence)) = acquired else {
                return Ok(None);
            };
            let keep = LockState::keep_until(&inner.settings, now, lease, previous);
            inner.write(&path, Kind::SessionLock, keep, &file, &[])?;
            Ok(Some(Lease {
                key,
                name,
                token,
                fence,
            }))
        })
        .await
        .in_op("try_lock")
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        let held = held.clone();
        self.blocking(move |inner| {
            inner.change_lock(&held, lease, |state, now| {
                state.extend(&held.token, lease, now)
            })
        })
        .await
        .in_op("extend_lock")
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        let held = held.clone();
        self.blocking(move |inner| {
            inner.change_lock(&held, Duration::ZERO, |state, now| {
                state.release(&held.token, now)
            })
        })
        .await
        .in_op("release_lock")
    }

    fn capabilities(&self) -> Capabilities {
        FileStore::capabilities(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chatstate_core::SessionStoreExt;

    /// Rewrites a record's JSON metadata (`from` replaced by `to`) with valid
    /// checksums, as another tool or an operator's edit could leave it.
    fn plant(path: &std::path::Path, kind: Kind, from: &str, to: &str) {
        let record = crate::format::read(path, kind)
            .expect("read")
            .expect("live record");
        let meta = String::from_utf8(record.meta().to_vec()).expect("JSON metadata");
        assert!(meta.contains(from), "{meta}");
        let planted = meta.replace(from, to);
        let bytes = crate::format::encode(
            path,
            kind,
            record.header.deadline,
            planted.as_bytes(),
            record.payload(),
        )
        .expect("encode");
        std::fs::write(path, bytes).expect("plant");
    }

    /// A stored fence at u64::MAX (a hand-edited or foreign record) is a `Decode`
    /// error: neither a panicking task (`Internal`) nor a fence wrapped back to 0.
    #[tokio::test]
    async fn a_stored_fence_at_its_maximum_neither_panics_nor_goes_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::builder(dir.path())
            .sweep_interval(None)
            .open()
            .expect("open");
        let key = SessionKey::new("t", "c", "u").expect("key");
        let lease = store
            .try_lock(&key, "job", Duration::from_secs(5))
            .await
            .expect("try_lock")
            .expect("free");
        assert!(store.release_lock(&lease).await.expect("release"));
        let path = store.inner.layout.session_lock(&key, "job");
        plant(
            &path,
            Kind::SessionLock,
            "\"fence\":1",
            &format!("\"fence\":{}", u64::MAX),
        );
        let err = store
            .try_lock(&key, "job", Duration::from_secs(5))
            .await
            .expect_err("an exhausted fence is refused");
        assert_eq!(err.kind(), ErrorKind::Decode, "{err}");
    }

    /// A session record whose checksums are right but whose metadata holds a stored
    /// value where another type belongs (a phone number as `message_count`): the
    /// read is a `Decode` error naming the file, and no error path shows the value.
    #[tokio::test]
    async fn corrupt_metadata_errors_never_show_stored_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStore::builder(dir.path())
            .sweep_interval(None)
            .open()
            .expect("open");
        let key = SessionKey::new("t", "c", "u").expect("key");
        store
            .append_message(&key, NewMessage::user("oi"))
            .await
            .expect("append");
        let path = store.inner.layout.session(&key);
        plant(
            &path,
            Kind::Session,
            "\"message_count\":1",
            "\"message_count\":\"+5511987654321\"",
        );
        let errors = vec![
            store.get(&key).await.map(|_| ()),
            store.load(&key).await.map(|_| ()),
            store
                .append_message(&key, NewMessage::user("x"))
                .await
                .map(|_| ()),
            store.touch(&key).await.map(|_| ()),
        ];
        for r in errors {
            let e = r.expect_err("a corrupt record fails");
            assert_eq!(e.kind(), ErrorKind::Decode, "{e}");
            let shown = format!(
                "{e} {e:?} {:?}",
                std::error::Error::source(&e).map(|s| s.to_string())
            );
            assert!(!shown.contains("5511987654321"), "value leaked: {shown}");
            assert!(
                shown.contains("line 1, column"),
                "the error says where: {shown}"
            );
        }
    }
}
