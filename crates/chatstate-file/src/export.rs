//! Inventory on the file store: every record enumerated folder by folder, read with
//! the deadline in its header, restored with the store's own crash-safe write
//! (temp file, fsync, rename, fsync of the folder) under the record's stripe lock,
//! deciding by the core's rules ([`chatstate_core::inventory`]).
//!
//! - **Order and cursors.** Sessions, focus documents and cache entries are walked
//!   as `kind/<group>/<file>` in name order (the names are the hashed components of
//!   `paths`); a cursor is the last `(group, file)` visited (returned, or reported
//!   unreadable, so each is reported once), and a page resumes
//!   strictly after it. Counters live in one file: they are walked in key order, the
//!   cursor is the last counter's key.
//! - **Unreadable files** (torn, flipped, another key's hash) are reported in
//!   [`InventoryPage::unreadable`], naming the file, and the walk goes on.
//! - **Restore over a corrupt record** treats it as absent and writes the record
//!   (the same as a focus `Overwrite` put): the corrupt file held nothing readable.

use std::ops::Bound;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chatstate_core::inventory::{
    check_scan_limit, cursor, decide_focus, decide_session, decide_value, session_record,
    session_state,
};
use chatstate_core::transition::SessionState;
use chatstate_core::{
    CacheRecord, CounterKey, CounterRecord, ErrorKind, FocusDoc, FocusRecord, Inventory,
    InventoryPage, Record, RecordKey, RecordKind, RestoreMode, Restored, Result, ResultExt,
    SessionKey, SessionRecord, Timestamp,
};

use crate::cache::{CacheMeta, read_entry};
use crate::focus::FocusMeta;
use crate::format::Kind;
use crate::{FileStore, Inner, collision, record_names};

impl Inner {
    /// A session's record with its remaining TTL.
    fn read_session_record(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<SessionRecord>> {
        let path = self.layout.session(key);
        self.session_record_at(&path, now)?
            .map(|r| {
                if r.session.key == *key {
                    Ok(r)
                } else {
                    Err(collision(&path))
                }
            })
            .transpose()
    }

    fn session_record_at(&self, path: &Path, now: Timestamp) -> Result<Option<SessionRecord>> {
        Ok(self
            .read_live::<SessionState>(path, Kind::Session, now)?
            .map(|(state, file)| session_record(&state, now.until(file.header.deadline))))
    }

    fn focus_record_at(&self, path: &Path, now: Timestamp) -> Result<Option<FocusRecord>> {
        Ok(self
            .read_live::<FocusMeta>(path, Kind::Focus, now)?
            .map(|(meta, file)| FocusRecord {
                doc: FocusDoc {
                    key: meta.key,
                    value: Bytes::copy_from_slice(file.payload()),
                    version: meta.version,
                    updated_at: meta.updated_at,
                },
                ttl: now.until(file.header.deadline),
            }))
    }

    fn cache_record_at(&self, path: &Path, now: Timestamp) -> Result<Option<CacheRecord>> {
        let Some((meta, file)) = self.read_live::<CacheMeta>(path, Kind::Cache, now)? else {
            return Ok(None);
        };
        Ok(Some(CacheRecord {
            aliases: crate::cache::live_aliases(self, &meta.key, meta.aliases, now)?,
            key: meta.key,
            value: Bytes::copy_from_slice(file.payload()),
            ttl: now.until(file.header.deadline),
        }))
    }

    /// Up to `limit` records under `kind_dir` (`kind/<group>/<file>`) after
    /// `after`, read with `read`; a record whose file is not where its key puts it
    /// (`path_of`) is another key's hash and reported unreadable.
    fn walk(
        &self,
        kind_dir: &Path,
        after: Option<(String, String)>,
        limit: usize,
        read: impl Fn(&Path) -> Result<Option<Record>>,
        path_of: impl Fn(&Record) -> PathBuf,
    ) -> Result<InventoryPage> {
        let mut page = InventoryPage {
            records: Vec::new(),
            unreadable: Vec::new(),
            next_cursor: None,
        };
        let groups = record_names(kind_dir)?;
        let start_group = match &after {
            Some((g, _)) => Bound::Included(g.clone()),
            None => Bound::Unbounded,
        };
        for group in groups.range((start_group, Bound::Unbounded)) {
            let dir = kind_dir.join(group);
            let names = record_names(&dir)?;
            let start = match &after {
                Some((g, n)) if g == group => Bound::Excluded(n.clone()),
                _ => Bound::Unbounded,
            };
            for name in names.range((start, Bound::Unbounded)) {
                let path = dir.join(name);
                match read(&path) {
                    Ok(Some(record)) if path_of(&record) == path => {
                        if page.records.len() == limit {
                            return Ok(page);
                        }
                        page.records.push(record);
                        page.next_cursor = Some(cursor::join(&[group, name]));
                    }
                    Ok(Some(_)) => {
                        page.unreadable.push(collision(&path));
                        // The next page starts after it: reported once.
                        page.next_cursor = Some(cursor::join(&[group, name]));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        page.unreadable.push(e.with_operation("scan"));
                        page.next_cursor = Some(cursor::join(&[group, name]));
                    }
                }
            }
        }
        // The walk ended: no next page.
        page.next_cursor = None;
        Ok(page)
    }

    fn scan_counters(&self, after: Option<CounterKey>, limit: usize) -> Result<InventoryPage> {
        let values: std::collections::BTreeMap<CounterKey, i64> =
            self.read_counters()?.values.into_iter().collect();
        let start = match &after {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let mut items: Vec<(&CounterKey, &i64)> = values
            .range::<CounterKey, _>((start, Bound::Unbounded))
            .take(limit.saturating_add(1))
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        Ok(InventoryPage {
            next_cursor: more
                .then(|| items.last().map(|(k, _)| cursor::counter(k)))
                .flatten(),
            records: items
                .into_iter()
                .map(|(k, v)| {
                    Record::Counter(CounterRecord {
                        key: k.clone(),
                        value: *v,
                    })
                })
                .collect(),
            unreadable: Vec::new(),
        })
    }

    fn read_record(&self, key: &RecordKey, now: Timestamp) -> Result<Option<Record>> {
        Ok(match key {
            RecordKey::Session(k) => self.read_session_record(k, now)?.map(Record::Session),
            RecordKey::Focus(k) => {
                let path = self.layout.focus(k);
                match self.focus_record_at(&path, now)? {
                    Some(r) if r.doc.key != *k => return Err(collision(&path)),
                    other => other.map(Record::Focus),
                }
            }
            RecordKey::Counter(k) => {
                k.check()?;
                self.read_counters()?
                    .values
                    .into_iter()
                    .find(|(c, _)| c == k)
                    .map(|(key, value)| Record::Counter(CounterRecord { key, value }))
            }
            RecordKey::Cache(k) => match read_entry(self, k, now)? {
                Some((value, deadline, listed)) => Some(Record::Cache(CacheRecord {
                    key: k.clone(),
                    value,
                    ttl: now.until(deadline),
                    aliases: crate::cache::live_aliases(self, k, listed, now)?,
                })),
                None => None,
            },
        })
    }

    fn restore_record(&self, record: &Record, write: bool) -> Result<Restored> {
        // A corrupt target record holds nothing readable: the restore replaces it.
        fn or_absent<T>(r: Result<Option<T>>) -> Result<Option<T>> {
            match r {
                Err(e) if e.kind() == ErrorKind::Decode => Ok(None),
                other => other,
            }
        }
        match record {
            Record::Session(r) => {
                let key = &r.session.key;
                let path = self.layout.session(key);
                let _g = self.stripes.lock(&path)?;
                let now = self.now();
                let existing = or_absent(self.read_session_record(key, now))?;
                let existing = existing.as_ref().map(session_state);
                let outcome = decide_session(existing.as_ref(), r);
                if write && outcome == Restored::Written {
                    let state = session_state(r);
                    self.write(&path, Kind::Session, now.plus(r.ttl), &state, &[])?;
                }
                Ok(outcome)
            }
            Record::Focus(r) => {
                let path = self.layout.focus(&r.doc.key);
                let _g = self.stripes.lock(&path)?;
                let now = self.now();
                let existing = match or_absent(self.focus_record_at(&path, now))? {
                    Some(e) if e.doc.key != r.doc.key => return Err(collision(&path)),
                    other => other,
                };
                let outcome = decide_focus(existing.as_ref().map(|e| &e.doc), &r.doc);
                if write && outcome == Restored::Written {
                    let meta = FocusMeta {
                        key: r.doc.key.clone(),
                        version: r.doc.version,
                        updated_at: r.doc.updated_at,
                    };
                    self.write(&path, Kind::Focus, now.plus(r.ttl), &meta, &r.doc.value)?;
                }
                Ok(outcome)
            }
            Record::Cache(r) => {
                let now = self.now();
                let existing = match or_absent(read_entry(self, &r.key, now))? {
                    Some((value, _, listed)) => Some((
                        value,
                        crate::cache::live_aliases(self, &r.key, listed, now)?,
                    )),
                    None => None,
                };
                let existing = existing.as_ref().map(|(v, a)| (v.as_ref(), a));
                // Compared as stored: sorted, each alias once.
                let aliases = chatstate_core::key::check_aliases(&r.key, &r.aliases)?;
                let outcome = decide_value(existing.as_ref(), &(r.value.as_ref(), &aliases));
                if write && outcome == Restored::Written {
                    crate::cache::write_aliased(self, &r.key, &r.value, aliases, now.plus(r.ttl))?;
                }
                Ok(outcome)
            }
            Record::Counter(r) => self.change_counters(|values, _| {
                let outcome = decide_value(values.get(&r.key), &r.value);
                let changed = write && outcome == Restored::Written;
                if changed {
                    values.insert(r.key.clone(), r.value);
                }
                Ok((outcome, changed))
            }),
        }
    }
}

#[async_trait]
impl Inventory for FileStore {
    async fn scan(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<InventoryPage> {
        check_scan_limit(limit).in_op("scan")?;
        if kind == RecordKind::Counter {
            let after = cursor.as_deref().map(cursor::parse_counter).transpose()?;
            return self
                .blocking(move |inner| inner.scan_counters(after, limit))
                .await
                .in_op("scan");
        }
        let after = cursor.as_deref().map(cursor::pair).transpose()?;
        self.blocking(move |inner| {
            let now = inner.now();
            let root = inner.layout.root();
            match kind {
                RecordKind::Session => inner.walk(
                    &root.join("sessions"),
                    after,
                    limit,
                    |p| Ok(inner.session_record_at(p, now)?.map(Record::Session)),
                    |r| match r {
                        Record::Session(s) => inner.layout.session(&s.session.key),
                        _ => PathBuf::new(),
                    },
                ),
                RecordKind::Focus => inner.walk(
                    &root.join("focus"),
                    after,
                    limit,
                    |p| Ok(inner.focus_record_at(p, now)?.map(Record::Focus)),
                    |r| match r {
                        Record::Focus(f) => inner.layout.focus(&f.doc.key),
                        _ => PathBuf::new(),
                    },
                ),
                _ => inner.walk(
                    &root.join("cache"),
                    after,
                    limit,
                    |p| Ok(inner.cache_record_at(p, now)?.map(Record::Cache)),
                    |r| match r {
                        Record::Cache(c) => inner.layout.cache(&c.key),
                        _ => PathBuf::new(),
                    },
                ),
            }
        })
        .await
        .in_op("scan")
    }

    async fn read(&self, key: &RecordKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.blocking(move |inner| inner.read_record(&key, inner.now()))
            .await
            .in_op("read")
    }

    async fn restore(&self, record: &Record, mode: RestoreMode) -> Result<Restored> {
        record.check(&self.inner.settings).in_op("restore")?;
        let record = record.clone();
        self.blocking(move |inner| inner.restore_record(&record, mode == RestoreMode::Write))
            .await
            .in_op("restore")
    }
}
