//! An ordered map whose entries expire at a deadline.
//!
//! Hand-written rather than moka: the stores need expiry read from an injectable
//! [`chatstate_core::Clock`] (so TTL tests move a manual clock), entries invisible the
//! instant they expire, ordered range scans (listing a tenant's sessions, clearing a
//! cache prefix) and several parts of a session changed under one lock. moka gives
//! none of those exactly; this is a `BTreeMap` plus a deadline index, the shape
//! mini-redis uses.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use chatstate_core::Timestamp;

struct Slot<V> {
    value: V,
    deadline: Timestamp,
}

/// Entries with deadlines. An entry is live while `now < deadline`; readers never
/// see an expired entry, and [`Expiring::sweep`] frees them in deadline order.
pub(crate) struct Expiring<K, V> {
    entries: BTreeMap<K, Slot<V>>,
    by_deadline: BTreeSet<(Timestamp, K)>,
}

impl<K: Ord + Clone, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Expiring {
            entries: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone, V> Expiring<K, V> {
    /// The live value of `key`.
    pub fn get(&self, key: &K, now: Timestamp) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|s| now < s.deadline)
            .map(|s| &s.value)
    }

    /// The live value of `key`, to change in place.
    pub fn get_mut(&mut self, key: &K, now: Timestamp) -> Option<&mut V> {
        self.entries
            .get_mut(key)
            .filter(|s| now < s.deadline)
            .map(|s| &mut s.value)
    }

    /// The live entry's deadline.
    pub fn deadline(&self, key: &K, now: Timestamp) -> Option<Timestamp> {
        self.entries
            .get(key)
            .filter(|s| now < s.deadline)
            .map(|s| s.deadline)
    }

    /// Inserts or replaces `key`, live until `deadline`.
    pub fn insert(&mut self, key: K, value: V, deadline: Timestamp) {
        if let Some(old) = self.entries.insert(key.clone(), Slot { value, deadline }) {
            self.by_deadline.remove(&(old.deadline, key.clone()));
        }
        self.by_deadline.insert((deadline, key));
    }

    /// Moves a live entry's deadline. `false` when there is no live entry.
    pub fn set_deadline(&mut self, key: &K, deadline: Timestamp, now: Timestamp) -> bool {
        match self.entries.get_mut(key) {
            Some(slot) if now < slot.deadline => {
                self.by_deadline.remove(&(slot.deadline, key.clone()));
                slot.deadline = deadline;
                self.by_deadline.insert((deadline, key.clone()));
                true
            }
            _ => false,
        }
    }

    /// Removes `key`; returns its value if it was live.
    pub fn remove(&mut self, key: &K, now: Timestamp) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.by_deadline.remove(&(slot.deadline, key.clone()));
        (now < slot.deadline).then_some(slot.value)
    }

    /// The live entries from `start` on, in key order.
    pub fn range_from<'a>(
        &'a self,
        start: Bound<&K>,
        now: Timestamp,
    ) -> impl Iterator<Item = (&'a K, &'a V)> + 'a {
        let start = start.cloned();
        self.entries
            .range((start, Bound::Unbounded))
            .filter(move |(_, s)| now < s.deadline)
            .map(|(k, s)| (k, &s.value))
    }

    /// Removes up to `max` expired entries, earliest deadline first; returns how many.
    pub fn sweep(&mut self, now: Timestamp, max: usize) -> usize {
        let mut removed = 0;
        while removed < max {
            match self.by_deadline.first() {
                Some((deadline, _)) if *deadline <= now => {}
                _ => break,
            }
            if let Some((_, key)) = self.by_deadline.pop_first() {
                self.entries.remove(&key);
                removed += 1;
            }
        }
        removed
    }

    /// Entries held, expired-but-unswept included.
    pub fn stored(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_invisible_before_the_sweep() {
        let mut m = Expiring::default();
        m.insert("a", 1, Timestamp(10));
        assert_eq!(m.get(&"a", Timestamp(9)), Some(&1));
        assert_eq!(m.get(&"a", Timestamp(10)), None);
        assert_eq!(m.remove(&"a", Timestamp(10)), None);
        assert_eq!(m.stored(), 0);
    }

    #[test]
    fn sweep_frees_in_deadline_order_and_respects_max() {
        let mut m = Expiring::default();
        for i in 0..10 {
            m.insert(i, i, Timestamp(i64::from(i)));
        }
        assert_eq!(m.sweep(Timestamp(5), 3), 3);
        assert_eq!(m.sweep(Timestamp(5), 100), 3);
        assert_eq!(m.stored(), 4);
        assert!(m.get(&6, Timestamp(5)).is_some());
    }

    #[test]
    fn moving_a_deadline_reindexes() {
        let mut m = Expiring::default();
        m.insert("k", (), Timestamp(5));
        assert!(m.set_deadline(&"k", Timestamp(50), Timestamp(1)));
        assert_eq!(m.sweep(Timestamp(10), 10), 0);
        assert_eq!(m.deadline(&"k", Timestamp(10)), Some(Timestamp(50)));
        m.insert("k", (), Timestamp(7));
        assert_eq!(m.sweep(Timestamp(10), 10), 1);
    }
}
