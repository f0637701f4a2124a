//! The reference table of one connection: which of our objects the peer holds, under which
//! luid, and how many times. Integer ids and counts only; the objects themselves stay in
//! Python, keyed by luid.
//!
//! Twisted's rules: luids start at 1 and are never reused on a connection; every `remote` we
//! send adds one to the object's count and every `decref` the peer sends takes one away; the
//! entry goes at zero. Twisted frees an entry as soon as a `decref` brings it to zero, which
//! loses objects when a peer's decref overtakes an answer that still names them (the peer's
//! proxy for an argument dies before its echoing answer is written). Here a call whose
//! arguments carried an object *pins* its entry until the call's reply has been read, so such
//! a `local` still resolves.

use std::fmt;

use crate::ids::OwnKeyMap;

/// Why a table operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefError {
    /// Registering one more object would exceed the table's size limit.
    Full { limit: usize },
    /// The peer named a luid that is not in the table (a decref or unpin too many).
    Unknown { luid: u64 },
}

impl fmt::Display for RefError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefError::Full { limit } => {
                write!(f, "Maximum PB reference count exceeded: the peer already holds max_refs={limit} of our objects")
            }
            RefError::Unknown { luid } => write!(f, "no object with luid {luid} is referenced by the peer"),
        }
    }
}

impl std::error::Error for RefError {}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The caller's identity for the object (Python's `id()`).
    key: u64,
    /// `remote` occurrences sent minus `decref`s received.
    count: u64,
    /// Calls in flight whose arguments carried the object.
    pins: u64,
}

/// Objects of ours that the peer may name, by luid.
#[derive(Debug)]
pub struct RefTable {
    next_luid: u64,
    /// Object identity -> luid.
    luids: OwnKeyMap<u64, u64>,
    entries: OwnKeyMap<u64, Entry>,
    limit: usize,
}

impl RefTable {
    /// A table holding at most `limit` objects at once.
    pub fn new(limit: usize) -> RefTable {
        RefTable { next_luid: 1, luids: OwnKeyMap::default(), entries: OwnKeyMap::default(), limit }
    }

    /// Record one more `remote` of the object `key`; returns its luid and whether the entry is
    /// new (the caller must then keep the object under that luid).
    pub fn send(&mut self, key: u64) -> Result<(u64, bool), RefError> {
        if let Some(&luid) = self.luids.get(&key) {
            let entry = self.entries.get_mut(&luid).expect("luid index and entries agree");
            entry.count += 1;
            return Ok((luid, false));
        }
        if self.entries.len() >= self.limit {
            return Err(RefError::Full { limit: self.limit });
        }
        let luid = self.next_luid;
        self.next_luid += 1;
        self.luids.insert(key, luid);
        self.entries.insert(luid, Entry { key, count: 1, pins: 0 });
        Ok((luid, true))
    }

    /// Keep `luid` alive until [`RefTable::unpin`], whatever decrefs arrive meanwhile.
    pub fn pin(&mut self, luid: u64) -> Result<(), RefError> {
        self.entries.get_mut(&luid).ok_or(RefError::Unknown { luid })?.pins += 1;
        Ok(())
    }

    /// Drop one pin; returns true if that freed the entry.
    pub fn unpin(&mut self, luid: u64) -> Result<bool, RefError> {
        let entry = self.entries.get_mut(&luid).ok_or(RefError::Unknown { luid })?;
        entry.pins = entry.pins.checked_sub(1).ok_or(RefError::Unknown { luid })?;
        Ok(self.free_if_unused(luid))
    }

    /// The peer dropped `count` references; returns true if that freed the entry.
    pub fn decref(&mut self, luid: u64, count: u64) -> Result<bool, RefError> {
        let entry = self.entries.get_mut(&luid).ok_or(RefError::Unknown { luid })?;
        entry.count = entry.count.checked_sub(count).ok_or(RefError::Unknown { luid })?;
        Ok(self.free_if_unused(luid))
    }

    fn free_if_unused(&mut self, luid: u64) -> bool {
        let entry = self.entries[&luid];
        if entry.count > 0 || entry.pins > 0 {
            return false;
        }
        self.entries.remove(&luid);
        self.luids.remove(&entry.key);
        true
    }

    /// The luid of `key`, if the peer holds it.
    pub fn luid_of(&self, key: u64) -> Option<u64> {
        self.luids.get(&key).copied()
    }

    /// Whether `luid` is in the table.
    pub fn contains(&self, luid: u64) -> bool {
        self.entries.contains_key(&luid)
    }

    /// The peer's count for `luid` (0 if absent).
    pub fn count(&self, luid: u64) -> u64 {
        self.entries.get(&luid).map_or(0, |e| e.count)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Forget everything (the connection is gone); luids stay unique.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.luids.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn luids_start_at_one_and_repeat_sends_count() {
        let mut t = RefTable::new(10);
        assert_eq!(t.send(100), Ok((1, true)));
        assert_eq!(t.send(200), Ok((2, true)));
        assert_eq!(t.send(100), Ok((1, false)));
        assert_eq!(t.count(1), 2);
        assert_eq!(t.decref(1, 1), Ok(false));
        assert_eq!(t.decref(1, 1), Ok(true));
        assert!(!t.contains(1));
        // A freed object gets a fresh luid; luids are never reused.
        assert_eq!(t.send(100), Ok((3, true)));
    }

    #[test]
    fn unknown_and_excess_decrefs_are_refused() {
        let mut t = RefTable::new(10);
        assert_eq!(t.decref(7, 1), Err(RefError::Unknown { luid: 7 }));
        t.send(1).unwrap();
        assert_eq!(t.decref(1, 2), Err(RefError::Unknown { luid: 1 }));
        assert_eq!(t.count(1), 1);
    }

    #[test]
    fn a_pin_outlives_the_last_decref() {
        let mut t = RefTable::new(10);
        let (luid, _) = t.send(5).unwrap();
        t.pin(luid).unwrap();
        assert_eq!(t.decref(luid, 1), Ok(false));
        assert!(t.contains(luid));
        assert_eq!(t.unpin(luid), Ok(true));
        assert!(t.is_empty());
        assert_eq!(t.unpin(luid), Err(RefError::Unknown { luid }));
    }

    #[test]
    fn the_limit_is_enforced() {
        let mut t = RefTable::new(2);
        t.send(1).unwrap();
        t.send(2).unwrap();
        assert_eq!(t.send(3), Err(RefError::Full { limit: 2 }));
        assert_eq!(t.send(1), Ok((1, false)));
        t.decref(2, 1).unwrap();
        assert_eq!(t.send(3), Ok((3, true)));
    }

    proptest! {
        /// Whatever the interleaving, an entry lives exactly while sends outnumber decrefs or a
        /// pin is held, and the two indexes agree.
        #[test]
        fn counts_match_a_model(ops in proptest::collection::vec((0u8..4, 0u64..4), 0..200)) {
            let mut t = RefTable::new(usize::MAX);
            let mut model: std::collections::HashMap<u64, (u64, u64, u64)> = std::collections::HashMap::new(); // key -> (luid, count, pins)
            for (op, key) in ops {
                match op {
                    0 => {
                        let (luid, new) = t.send(key).unwrap();
                        let e = model.entry(key).or_insert((luid, 0, 0));
                        prop_assert_eq!(new, e.1 == 0 && e.2 == 0);
                        prop_assert_eq!(e.0, luid);
                        e.1 += 1;
                    }
                    1 | 2 => {
                        let Some(&(luid, count, pins)) = model.get(&key) else { continue };
                        let freed = if op == 1 {
                            if count == 0 { continue }
                            model.insert(key, (luid, count - 1, pins));
                            t.decref(luid, 1).unwrap()
                        } else {
                            if pins == 0 { continue }
                            model.insert(key, (luid, count, pins - 1));
                            t.unpin(luid).unwrap()
                        };
                        let (_, c, p) = model[&key];
                        prop_assert_eq!(freed, c == 0 && p == 0);
                        if freed { model.remove(&key); }
                    }
                    _ => {
                        if let Some(e) = model.get_mut(&key) {
                            t.pin(e.0).unwrap();
                            e.2 += 1;
                        }
                    }
                }
                prop_assert_eq!(t.len(), model.len());
                for (key, (luid, count, _)) in &model {
                    prop_assert_eq!(t.luid_of(*key), Some(*luid));
                    prop_assert_eq!(t.count(*luid), *count);
                }
            }
        }
    }
}
