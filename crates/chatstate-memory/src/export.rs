//! Inventory in memory: every record enumerated in key order, read with its
//! deadline, restored under the same mutex the store's own writes take (so a
//! restore is atomic against them), deciding by the core's rules
//! ([`chatstate_core::inventory`]).
//!
//! Cursors are the last key returned (its ids escaped and joined,
//! [`chatstate_core::inventory::cursor`]); a page resumes strictly after it, so a
//! walk returns each record live for the whole walk exactly once.

use std::ops::Bound;

use async_trait::async_trait;
use chatstate_core::inventory::{
    check_scan_limit, cursor, decide_focus, decide_session, decide_value, session_record,
    session_state,
};
use chatstate_core::{
    CacheRecord, CounterRecord, FocusRecord, Inventory, InventoryPage, Record, RecordKey,
    RecordKind, RestoreMode, Restored, Result, ResultExt, Timestamp,
};

use crate::expiring::Expiring;
use crate::{MemoryStore, Triple, lock, triple};

/// The page of an ordered map after `start`: up to `limit` items, and the cursor of
/// the last one when more follow.
fn page<K: Clone, T>(
    mut items: impl Iterator<Item = (K, T)>,
    limit: usize,
    cursor_of: impl Fn(&K) -> String,
) -> (Vec<T>, Option<String>) {
    let mut out = Vec::new();
    let mut last = None;
    for (k, t) in items.by_ref() {
        if out.len() == limit {
            return (out, last.as_ref().map(&cursor_of));
        }
        last = Some(k);
        out.push(t);
    }
    (out, None)
}

/// Up to `n` live entries of `map` after `after` (from the start for `None`),
/// with their remaining TTL.
fn live_after<'a, K: Ord + Clone, V>(
    map: &'a Expiring<K, V>,
    after: Option<&K>,
    now: Timestamp,
    n: usize,
) -> Vec<(K, (&'a V, std::time::Duration))> {
    let start = match after {
        Some(k) => Bound::Excluded(k),
        None => Bound::Unbounded,
    };
    map.range_from(start, now)
        .take(n)
        .filter_map(|(k, v)| {
            let ttl = now.until(map.deadline(k, now)?);
            Some((k.clone(), (v, ttl)))
        })
        .collect()
}

#[async_trait]
impl Inventory for MemoryStore {
    async fn scan(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<InventoryPage> {
        check_scan_limit(limit).in_op("scan")?;
        let now = self.inner.now();
        let (records, next_cursor) = match kind {
            RecordKind::Session => {
                let after: Option<Triple> = match &cursor {
                    Some(c) => {
                        let mut p = cursor::split(c, 3)?.into_iter();
                        let mut next = || p.next().unwrap_or_default();
                        Some((next(), next(), next()))
                    }
                    None => None,
                };
                let sessions = lock(&self.inner.sessions);
                let items = live_after(&sessions, after.as_ref(), now, limit.saturating_add(1))
                    .into_iter()
                    .map(|(k, (s, ttl))| (k, Record::Session(session_record(s, ttl))));
                page(items, limit, |(t, c, u)| cursor::join(&[t, c, u]))
            }
            RecordKind::Focus => {
                let after = cursor.as_deref().map(cursor::pair).transpose()?;
                let focus = lock(&self.inner.focus);
                let items = live_after(&focus, after.as_ref(), now, limit.saturating_add(1))
                    .into_iter()
                    .map(|(k, (d, ttl))| {
                        let record = FocusRecord {
                            doc: d.clone(),
                            ttl,
                        };
                        (k, Record::Focus(record))
                    });
                page(items, limit, |(s, n)| cursor::join(&[s, n]))
            }
            RecordKind::Cache => {
                let after = cursor.as_deref().map(cursor::pair).transpose()?;
                let cache = lock(&self.inner.cache);
                let items =
                    live_after(&cache.entries, after.as_ref(), now, limit.saturating_add(1))
                        .into_iter()
                        .map(|(k, (e, ttl))| {
                            let key = chatstate_core::CacheKey::new(k.0.as_str(), k.1.as_str());
                            (k, key.map(|key| (key, e.value.clone(), ttl)))
                        });
                let (items, next) = page(items, limit, |(n, k)| cursor::join(&[n, k]));
                let records = items
                    .into_iter()
                    .map(|r| {
                        r.map(|(key, value, ttl)| {
                            let aliases = cache.live_aliases(&key, now);
                            Record::Cache(CacheRecord {
                                key,
                                value,
                                ttl,
                                aliases,
                            })
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (records, next)
            }
            RecordKind::Counter => {
                let after = cursor.as_deref().map(cursor::parse_counter).transpose()?;
                let counters = lock(&self.inner.counters);
                let start = match &after {
                    Some(k) => Bound::Excluded(k),
                    None => Bound::Unbounded,
                };
                let items = counters
                    .values
                    .range((start, Bound::Unbounded))
                    .take(limit.saturating_add(1))
                    .map(|(k, v)| {
                        let record = CounterRecord {
                            key: k.clone(),
                            value: *v,
                        };
                        (k.clone(), Record::Counter(record))
                    });
                page(items, limit, cursor::counter)
            }
        };
        Ok(InventoryPage {
            records,
            unreadable: Vec::new(),
            next_cursor,
        })
    }

    async fn read(&self, key: &RecordKey) -> Result<Option<Record>> {
        let now = self.inner.now();
        Ok(match key {
            RecordKey::Session(k) => {
                let sessions = lock(&self.inner.sessions);
                let t = triple(k);
                sessions
                    .get(&t, now)
                    .zip(sessions.deadline(&t, now))
                    .map(|(s, deadline)| Record::Session(session_record(s, now.until(deadline))))
            }
            RecordKey::Focus(k) => {
                let focus = lock(&self.inner.focus);
                let f = (k.scope().to_string(), k.name().to_string());
                focus
                    .get(&f, now)
                    .zip(focus.deadline(&f, now))
                    .map(|(d, deadline)| {
                        Record::Focus(FocusRecord {
                            doc: d.clone(),
                            ttl: now.until(deadline),
                        })
                    })
            }
            RecordKey::Counter(k) => {
                k.check().in_op("read")?;
                lock(&self.inner.counters).values.get(k).map(|v| {
                    Record::Counter(CounterRecord {
                        key: k.clone(),
                        value: *v,
                    })
                })
            }
            RecordKey::Cache(k) => {
                let cache = lock(&self.inner.cache);
                let c = (k.namespace().to_string(), k.key().to_string());
                cache
                    .value(&c, now)
                    .zip(cache.entries.deadline(&c, now))
                    .map(|(v, deadline)| {
                        Record::Cache(CacheRecord {
                            key: k.clone(),
                            value: v.clone(),
                            ttl: now.until(deadline),
                            aliases: cache.live_aliases(k, now),
                        })
                    })
            }
        })
    }

    async fn restore(&self, record: &Record, mode: RestoreMode) -> Result<Restored> {
        record.check(&self.inner.settings).in_op("restore")?;
        let now = self.inner.now();
        let write = mode == RestoreMode::Write;
        Ok(match record {
            Record::Session(r) => {
                let mut sessions = lock(&self.inner.sessions);
                let k = triple(&r.session.key);
                let outcome = decide_session(sessions.get(&k, now), r);
                if write && outcome == Restored::Written {
                    sessions.insert(k, session_state(r), now.plus(r.ttl));
                }
                outcome
            }
            Record::Focus(r) => {
                let mut focus = lock(&self.inner.focus);
                let k = (r.doc.key.scope().to_string(), r.doc.key.name().to_string());
                let outcome = decide_focus(focus.get(&k, now), &r.doc);
                if write && outcome == Restored::Written {
                    focus.insert(k, r.doc.clone(), now.plus(r.ttl));
                }
                outcome
            }
            Record::Counter(r) => {
                let mut counters = lock(&self.inner.counters);
                let outcome = decide_value(counters.values.get(&r.key), &r.value);
                if write && outcome == Restored::Written {
                    counters.values.insert(r.key.clone(), r.value);
                }
                outcome
            }
            Record::Cache(r) => {
                let mut cache = lock(&self.inner.cache);
                let k = (r.key.namespace().to_string(), r.key.key().to_string());
                let existing = cache
                    .value(&k, now)
                    .map(|v| (v.as_ref(), cache.live_aliases(&r.key, now)));
                // Compared as stored: sorted, each alias once.
                let aliases = chatstate_core::key::check_aliases(&r.key, &r.aliases)?;
                let outcome = decide_value(existing.as_ref(), &(r.value.as_ref(), aliases.clone()));
                if write && outcome == Restored::Written {
                    cache.set_with_aliases(&r.key, r.value.clone(), aliases, now.plus(r.ttl), now);
                }
                outcome
            }
        })
    }
}
