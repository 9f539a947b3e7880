//! Hash maps keyed by the store's own sequential ids (never by client input), with a
//! multiplicative hash instead of SipHash: lookups on the poll path cost a few
//! nanoseconds instead of tens.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Fx-style hash: rotate, xor, multiply by an odd constant per word.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_i64(&mut self, n: i64) {
        self.add(n as u64);
    }
}

/// A map kept as a dense vector of entries plus an id index. A hash map of large
/// values leaves up to half of its value-sized buckets empty; here only the small
/// index has empty buckets, which halves the memory of big tables.
#[derive(Debug, Clone)]
pub struct DenseMap<K, V> {
    entries: Vec<(K, V)>,
    index: IdMap<K, u32>,
}

impl<K, V> Default for DenseMap<K, V> {
    fn default() -> Self {
        DenseMap {
            entries: Vec::new(),
            index: IdMap::default(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> DenseMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve_exact(additional);
        self.index.reserve(additional);
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.index.contains_key(k)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let i = *self.index.get(k)?;
        Some(&self.entries[i as usize].1)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.index.get(k)?;
        Some(&mut self.entries[i as usize].1)
    }

    /// Where each of `keys` is, for [`DenseMap::at`] and [`DenseMap::at_mut`]
    /// while the map does not change: a removal moves another entry into the
    /// removed one's place, and an old position then gives that entry's value.
    /// Looked up in one tight pass: a large map's lookups miss the cache, and
    /// a pass that does nothing else has many of them under way at once, where
    /// a loop that does more work after each lookup waits for each.
    pub fn positions(&self, keys: impl Iterator<Item = K>) -> Vec<Option<u32>> {
        keys.map(|k| {
            let i = self.index.get(&k).copied();
            // The entry's key is read too, so that its line is on its way.
            if let Some(e) = i.and_then(|i| self.entries.get(i as usize)) {
                std::hint::black_box(e.0);
            }
            i
        })
        .collect()
    }

    /// The value at a position of [`DenseMap::positions`] (taken since the
    /// map last changed).
    pub fn at(&self, at: u32) -> Option<&V> {
        self.entries.get(at as usize).map(|(_, v)| v)
    }

    /// [`DenseMap::at`], to change the value.
    pub fn at_mut(&mut self, at: u32) -> Option<&mut V> {
        self.entries.get_mut(at as usize).map(|(_, v)| v)
    }

    /// Inserts or replaces; returns the replaced value.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        match self.index.get(&k) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i as usize].1, v)),
            None => {
                let i =
                    u32::try_from(self.entries.len()).expect("DenseMap holds at most 2^32 entries");
                self.entries.push((k, v));
                self.index.insert(k, i);
                None
            }
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.index.remove(k)? as usize;
        let (_, v) = self.entries.swap_remove(i);
        if let Some((moved, _)) = self.entries.get(i) {
            self.index.insert(*moved, i as u32);
        }
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets() {
        // The low bits pick hashbrown's bucket: sequential ids must not pile up.
        let mut buckets = [0u32; 64];
        for id in 0..64_000u64 {
            let mut h = IdHasher::default();
            h.write_u64(id);
            buckets[(h.finish() & 63) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(*max < min * 2, "uneven buckets: {min}..{max}");
        let m: IdMap<i64, i64> = (0..1000).map(|i| (i, -i)).collect();
        assert_eq!(m[&500], -500);
    }

    #[test]
    fn dense_map_matches_a_hash_map() {
        let mut d: DenseMap<u64, u64> = DenseMap::default();
        let mut h: HashMap<u64, u64> = HashMap::new();
        let mut x = 7u64;
        for step in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % 500;
            if x.is_multiple_of(3) {
                assert_eq!(d.remove(&k), h.remove(&k), "step {step}: remove {k}");
            } else {
                assert_eq!(
                    d.insert(k, step),
                    h.insert(k, step),
                    "step {step}: insert {k}"
                );
            }
            assert_eq!(d.len(), h.len());
        }
        for (k, v) in &h {
            assert_eq!(d.get(k), Some(v));
        }
        let mut all: Vec<_> = d.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        let mut want: Vec<_> = h.iter().map(|(k, v)| (*k, *v)).collect();
        want.sort_unstable();
        assert_eq!(all, want);
        // Positions find what `get` finds, and nothing for a key not held.
        let keys: Vec<u64> = (0..600).collect();
        let at = d.positions(keys.iter().copied());
        assert_eq!(at.len(), keys.len());
        for (k, at) in keys.iter().zip(at) {
            assert_eq!(at.and_then(|at| d.at(at)), h.get(k), "position of {k}");
            if let Some(v) = at.and_then(|at| d.at_mut(at)) {
                *v += 1;
            }
        }
        for (k, v) in &h {
            assert_eq!(d.get(k), Some(&(v + 1)), "{k} changed through its position");
        }
    }
}
