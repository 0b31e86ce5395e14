//! SessionStore on the file store: one record per session (the session and its
//! message window), one lock file per session lock (holder, lease, fence).

use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use chatstate_core::ResultExt;
use chatstate_core::key::{check_lock_name, check_scope};
use chatstate_core::model::random_id;
use chatstate_core::{
    AppendReceipt, Error, ErrorKind, Expected, Lease, LoadedSession, Message, NewMessage, Page,
    Result, Session, SessionKey, SessionPatch, SessionStore, StoreSettings, Timestamp,
};
use serde::{Deserialize, Serialize};

use crate::format::Kind;
use crate::{FileStore, Inner, collision, is_record_name, record_names, remove_record};

impl Inner {
    fn session_deadline(&self, now: Timestamp) -> Timestamp {
        now.plus(self.settings.session_ttl)
    }

    fn read_session(&self, key: &SessionKey, now: Timestamp) -> Result<Option<SessionFile>> {
        let path = self.layout.session(key);
        match self.read_live::<SessionFile>(&path, Kind::Session, now)? {
            Some((file, _)) if file.session.key == *key => Ok(Some(file)),
            Some(_) => Err(collision(&path)),
            None => Ok(None),
        }
    }

    fn write_session(&self, file: &SessionFile, now: Timestamp) -> Result<()> {
        let path = self.layout.session(&file.session.key);
        self.write(&path, Kind::Session, self.session_deadline(now), file, &[])
    }

    fn new_session(&self, key: &SessionKey, init: &SessionPatch, now: Timestamp) -> SessionFile {
        SessionFile {
            session: Session::new(key.clone(), random_id(), now, init),
            messages: Vec::new(),
        }
    }
}

/// A session file's metadata: the record and its message window.
#[derive(Serialize, Deserialize)]
struct SessionFile {
    session: Session,
    messages: Vec<Message>,
}

/// A session lock file's metadata.
#[derive(Serialize, Deserialize)]
struct LockFile {
    key: SessionKey,
    name: String,
    holder: Option<(String, Timestamp)>,
    fence: u64,
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
            let file = inner.new_session(&key, &init, now);
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
            let file = inner.new_session(&key, &SessionPatch::new(), now);
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
        self.blocking(move |inner| {
            Ok(inner
                .read_session(&key, inner.now())?
                .map(|f| LoadedSession {
                    session: f.session,
                    messages: f.messages,
                }))
        })
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
            let (mut file, created) = match inner.read_session(&key, now)? {
                Some(f) => (f, false),
                None => (inner.new_session(&key, &SessionPatch::new(), now), true),
            };
            for m in messages {
                file.session.message_count += 1;
                file.messages
                    .push(m.into_message(file.session.message_count, now));
            }
            let window = inner.settings.window_size;
            if file.messages.len() > window {
                let excess = file.messages.len() - window;
                file.messages.drain(..excess);
            }
            file.session.last_activity = now;
            inner.write_session(&file, now)?;
            Ok(AppendReceipt {
                message_count: file.session.message_count,
                window_len: file.messages.len(),
                created,
            })
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
            if let Expected::Version(want) = expected
                && file.session.version != want
            {
                return Err(Error::conflict(format!(
                    "expected version {want}, the session is at version {}",
                    file.session.version
                ))
                .with_key(&key));
            }
            file.session.apply(&patch, now);
            inner.write_session(&file, now)?;
            Ok(file.session)
        })
        .await
        .in_op("update")
    }

    async fn touch(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let _g = inner.stripes.lock(&inner.layout.session(&key))?;
            let now = inner.now();
            let Some(mut file) = inner.read_session(&key, now)? else {
                return Ok(false);
            };
            file.session.last_activity = now;
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
            match inner.read_live::<SessionFile>(&path, Kind::Session, now)? {
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
                let file = match inner.read_live::<SessionFile>(&path, Kind::Session, now) {
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
            let mut file = match inner.read_live::<LockFile>(&path, Kind::SessionLock, now)? {
                Some((f, _)) if f.key != key || f.name != name => return Err(collision(&path)),
                Some((f, _)) => f,
                None => LockFile {
                    key: key.clone(),
                    name: name.clone(),
                    holder: None,
                    fence: 0,
                },
            };
            if file.holder.as_ref().is_some_and(|(_, until)| *until > now) {
                return Ok(None);
            }
            file.fence += 1;
            let token = random_id();
            file.holder = Some((token.clone(), now.plus(lease)));
            let keep_until = inner.session_deadline(now).max(now.plus(lease));
            inner.write(&path, Kind::SessionLock, keep_until, &file, &[])?;
            Ok(Some(Lease {
                key,
                name,
                token,
                fence: file.fence,
            }))
        })
        .await
        .in_op("try_lock")
    }

    async fn extend_lock(&self, held: &Lease, lease: Duration) -> Result<bool> {
        let lease = StoreSettings::check_ttl(lease).in_op("extend_lock")?;
        let held = held.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&held.key, &held.name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((mut file, _)) = inner.read_live::<LockFile>(&path, Kind::SessionLock, now)?
            else {
                return Ok(false);
            };
            match &file.holder {
                Some((token, until))
                    if *token == held.token && *until > now && file.key == held.key =>
                {
                    file.holder = Some((token.clone(), now.plus(lease)));
                    let keep_until = inner.session_deadline(now).max(now.plus(lease));
                    inner.write(&path, Kind::SessionLock, keep_until, &file, &[])?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
        .in_op("extend_lock")
    }

    async fn release_lock(&self, held: &Lease) -> Result<bool> {
        let held = held.clone();
        self.blocking(move |inner| {
            let path = inner.layout.session_lock(&held.key, &held.name);
            let _g = inner.stripes.lock(&path)?;
            let now = inner.now();
            let Some((mut file, record)) =
                inner.read_live::<LockFile>(&path, Kind::SessionLock, now)?
            else {
                return Ok(false);
            };
            match &file.holder {
                Some((token, until))
                    if *token == held.token && *until > now && file.key == held.key =>
                {
                    // Keep the file (and its fence) until its retention runs out.
                    file.holder = None;
                    inner.write(&path, Kind::SessionLock, record.header.deadline, &file, &[])?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })
        .await
        .in_op("release_lock")
    }
}
