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
