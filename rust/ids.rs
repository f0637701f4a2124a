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

/// Map from object address to a small value, for the jelly writer's tracking of every container
/// of a value: open addressing with linear probing over a power-of-two table at most half full,
/// so a lookup or an insertion is a multiply and, nearly always, one or two compares. Emptied in
/// time proportional to what was inserted, not to the table's size.
#[derive(Default)]
pub struct IdMap<V> {
    /// (address, value); address 0 marks an empty slot (no object lives at address 0).
    slots: Vec<(usize, V)>,
    /// The slots in use, to empty them.
    used: Vec<usize>,
    /// 64 - log2(slots.len()): the address's hash is shifted right by this much.
    shift: u32,
}

impl<V: Copy + Default> IdMap<V> {
    /// The value for `key`, or None after inserting `value` for it.
    #[inline(always)]
    pub fn get_or_insert(&mut self, key: usize, value: V) -> Option<&mut V> {
        debug_assert!(key != 0);
        if (self.used.len() + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].0;
            if k == key {
                return Some(&mut self.slots[i].1);
            }
            if k == 0 {
                self.slots[i] = (key, value);
                self.used.push(i);
                return None;
            }
            i = (i + 1) & (self.slots.len() - 1);
        }
    }

    pub fn contains_key(&self, key: usize) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let mut i = self.home(key);
        loop {
            match self.slots[i].0 {
                0 => return false,
                k if k == key => return true,
                _ => i = (i + 1) & (self.slots.len() - 1),
            }
        }
    }

    /// Slots in the table (twice the entries it holds before it grows).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn clear(&mut self) {
        for &i in &self.used {
            self.slots[i] = (0, V::default());
        }
        self.used.clear();
    }

    #[inline(always)]
    fn home(&self, key: usize) -> usize {
        // Addresses are 16-byte aligned: the low bits say nothing; the multiply's high bits mix
        // all the others.
        ((key as u64 >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    #[cold]
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(64);
        let old = std::mem::replace(&mut self.slots, vec![(0, V::default()); size]);
        self.shift = 64 - size.trailing_zeros();
        let used = std::mem::take(&mut self.used);
        self.used = Vec::with_capacity(size / 2);
        for i in used {
            let (key, value) = old[i];
            let mut j = self.home(key);
            while self.slots[j].0 != 0 {
                j = (j + 1) & (size - 1);
            }
            self.slots[j] = (key, value);
            self.used.push(j);
        }
    }
}

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
}
