//! Maps keyed by object identity (an address), for the encoders' tracking of shared containers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hasher for object addresses: they are distinct and 16-byte aligned, so one multiply spreads
/// them well enough, at a fraction of SipHash's cost.
#[derive(Default)]
pub struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Map keyed by object address.
pub type PtrMap<V> = HashMap<usize, V, BuildHasherDefault<PtrHasher>>;

/// Hasher for keys this side chooses — request ids, the luids it gives out, the names it files
/// objects under. A peer can look such keys up but never insert one, so it cannot pile them
/// into one bucket, and a keyed hash (SipHash, the default) would buy nothing but its cost.
#[derive(Default)]
pub struct OwnKeyHasher(u64);

impl OwnKeyHasher {
    #[inline(always)]
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for OwnKeyHasher {
    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and a tag from the top ones: fold the
        // well-mixed high half down so both vary.
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }
}

/// Map keyed by what this side chooses (see [`OwnKeyHasher`]).
pub type OwnKeyMap<K, V> = HashMap<K, V, BuildHasherDefault<OwnKeyHasher>>;

/// Map from object address to a small value, for the encoders' tracking of every container of a
/// value. The entries are kept in insertion order; the table over them, open addressing with
/// linear probing over a power-of-two table at most half full, holds one word per slot: the
/// entry's index and a tag from the address's hash, so that a probe compares tags without reading
/// the entry. A table of words (a quarter of one of (address, value) pairs) keeps the lookups of a
/// value with thousands of containers, one at a random place each, in the nearest caches.
#[derive(Default)]
pub struct IdMap<V> {
    /// 0 for an empty slot, else `tag << 32 | (index + 1)`.
    slots: Vec<u64>,
    /// (address, value) in the order they were inserted.
    entries: Vec<(usize, V)>,
}

impl<V: Copy + Default> IdMap<V> {
    /// The value for `key`, or None after inserting `value` for it.
    #[inline(always)]
    pub fn get_or_insert(&mut self, key: usize, value: V) -> Option<&mut V> {
        debug_assert!(key != 0);
        if (self.entries.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let (mut i, tag) = self.home(key);
        // The table has a power-of-two number of slots (at least 64, after `grow`).
        let mask = self.slots.len().wrapping_sub(1);
        loop {
            // SAFETY: `i <= mask < slots.len()`: `home` gives a slot index and each step masks it.
            let place = unsafe { self.slots.get_unchecked_mut(i) };
            let slot = *place;
            if slot == 0 {
                // At most half the slots are used, and there are fewer than 2**31 of them.
                *place = tag | (self.entries.len() as u64 + 1);
                self.entries.push((key, value));
                return None;
            }
            if slot & TAG == tag {
                let index = (slot as u32 - 1) as usize;
                if self.entries[index].0 == key {
                    return Some(&mut self.entries[index].1);
                }
            }
            i = (i + 1) & mask;
        }
    }

    pub fn contains_key(&self, key: usize) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let (mut i, tag) = self.home(key);
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return false;
            }
            if slot & TAG == tag && self.entries[(slot as u32 - 1) as usize].0 == key {
                return true;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys from the `from`th inserted on, in the order they were inserted.
    pub fn keys_from(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        self.entries.get(from..).unwrap_or_default().iter().map(|&(key, _)| key)
    }

    /// Slots in the table (twice the entries it holds before it grows).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Empty the map, in time proportional to what was inserted when that is small beside the
    /// table.
    pub fn clear(&mut self) {
        if self.entries.len() * 8 >= self.slots.len() {
            self.slots.fill(0);
        } else {
            let mask = self.slots.len() - 1;
            for (index, &(key, _)) in self.entries.iter().enumerate() {
                let (mut i, _) = self.home(key);
                while self.slots[i] as u32 as usize != index + 1 {
                    i = (i + 1) & mask;
                }
                self.slots[i] = 0;
            }
        }
        self.entries.clear();
    }

    /// The slot a key's probe starts at, and its tag.
    #[inline(always)]
    fn home(&self, key: usize) -> (usize, u64) {
        // Addresses are 16-byte aligned: the low bits say nothing. Within each 64 KiB of addresses
        // the slots follow the addresses (objects made one after another, met one after another,
        // are looked up at neighbouring slots, which the cache brings in together); each 64 KiB
        // starts at a place of its own, from a multiply's high bits. The tag is the low half of
        // a multiply of the whole address (two addresses share it only 64 GiB apart).
        let (a, region) = (key as u64 >> 4, key as u64 >> 16);
        let start = region.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let mask = (self.slots.len() as u64).wrapping_sub(1);
        (((a.wrapping_add(start)) & mask) as usize, a.wrapping_mul(0x9E37_79B9_7F4A_7C15) << 32)
    }

    #[cold]
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        assert!(size <= 1 << 32, "more objects than an identity map can track");
        self.slots.clear();
        self.slots.resize(size, 0);
        for (index, &(key, _)) in self.entries.iter().enumerate() {
            let (mut i, tag) = self.home(key);
            while self.slots[i] != 0 {
                i = (i + 1) & (size - 1);
            }
            self.slots[i] = tag | (index as u64 + 1);
        }
    }
}

/// The tag half of an [`IdMap`] slot.
const TAG: u64 = !0 << 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_map_inserts_finds_grows_and_empties() {
        let mut m: IdMap<u32> = IdMap::default();
        assert!(!m.contains_key(16));
        // Addresses that share their low bits, as objects do, across several growths.
        let keys: Vec<usize> = (1..=1000).map(|i| i * 48).collect();
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(m.get_or_insert(k, n as u32), None);
        }
        assert!(m.capacity() >= 2 * keys.len());
        for (n, &k) in keys.iter().enumerate() {
            assert!(m.contains_key(k));
            let v = m.get_or_insert(k, 0).expect("present");
            assert_eq!(*v, n as u32);
            *v += 1;
        }
        assert_eq!(m.get_or_insert(48, 0).copied(), Some(1));
        assert!(!m.contains_key(40));
        let capacity = m.capacity();
        m.clear();
        assert!(!m.contains_key(48));
        assert_eq!(m.capacity(), capacity);
        assert_eq!(m.get_or_insert(48, 7), None);
        assert_eq!(m.get_or_insert(48, 0).copied(), Some(7));
    }

    #[test]
    fn id_map_keys_that_collide_and_a_few_after_many() {
        let mut m: IdMap<usize> = IdMap::default();
        // Addresses the same distance into many 64 KiB regions, and runs of neighbours: keys that
        // would pile into few slots if the regions did not start at places of their own.
        let keys: Vec<usize> = (1..=300)
            .flat_map(|region| (0..4).map(move |i| (region << 16) + 0x40 + 16 * i))
            .chain((1..=500).map(|i| (1 << 28) + 16 * i))
            .collect();
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(m.get_or_insert(k, n), None, "{k:#x}");
        }
        assert_eq!((m.len(), m.keys_from(1198).take(3).collect::<Vec<_>>()), (1700, keys[1198..1201].to_vec()));
        for (n, &k) in keys.iter().enumerate() {
            assert_eq!(m.get_or_insert(k, 0).copied(), Some(n), "{k:#x}");
        }
        // Emptied slot by slot when a few keys are in a large table, wholesale otherwise: either
        // way nothing is left.
        m.clear();
        assert!(m.is_empty() && keys.iter().all(|&k| !m.contains_key(k)));
        for &k in &keys[..5] {
            assert_eq!(m.get_or_insert(k, 1), None);
        }
        m.clear();
        assert!(keys.iter().all(|&k| !m.contains_key(k)));
        assert_eq!(m.get_or_insert(keys[3], 2), None);
    }
}
