//! The client table `CLIENTS`: an open-addressed hash table in an mmap-able
//! array of [`crate::ClientEntry`], one cache line each, so a packet finds its
//! client and everything it needs of it in one line, and userspace reads and
//! inserts without syscalls.
//!
//! An entry's `key` holds the MAC in the low 48 bits and the client's slot in
//! the high 16 (see [`index_key`]), or 0 while the entry is free. It is claimed
//! with one compare-and-swap from 0 and never changes afterwards, because slots
//! are never reused while the maps are pinned; so a lookup walks from the MAC's
//! home position to its entry or the first free one, never further than
//! [`INDEX_MAX_PROBES`]. The home position is a hash of the MAC keyed by the
//! maps' random epoch, so clients cannot choose MACs that pile up in one run.
//! The all-zero MAC is never indexed (its key would read as free). `SLOTS`
//! leads from a slot back to its position.

use crate::{MacKey, MAX_CLIENTS};

/// Positions in the table: twice the most clients, so runs stay short.
pub const INDEX_BITS: u32 = 17;
pub const INDEX_ENTRIES: u32 = 1 << INDEX_BITS;
const INDEX_MASK: u32 = INDEX_ENTRIES - 1;
/// Longest walk from a home position; a MAC that finds neither its entry nor a
/// free one within it is treated like a full table.
pub const INDEX_MAX_PROBES: u32 = 64;
/// Mask of the MAC in an index key.
pub const INDEX_MAC_MASK: u64 = (1 << 48) - 1;

const _: () = assert!(MAX_CLIENTS <= 1 << 16, "slots must fit the key's 16 bits");
const _: () = assert!(INDEX_ENTRIES >= 2 * MAX_CLIENTS);

/// The MAC as the low 48 bits of a word.
#[inline(always)]
pub const fn mac_word(mac: &MacKey) -> u64 {
    let a = mac.addr;
    u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], 0, 0])
}

/// The MAC of an index key.
#[inline(always)]
pub const fn index_mac(key: u64) -> MacKey {
    let b = key.to_le_bytes();
    MacKey::new([b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// The index entry of `mac_word` in `slot`.
#[inline(always)]
pub const fn index_key(mac_word: u64, slot: u32) -> u64 {
    mac_word | ((slot as u64) << 48)
}

/// The slot of an index entry.
#[inline(always)]
pub const fn index_slot(key: u64) -> u32 {
    (key >> 48) as u32
}

/// The home position of `mac_word` (a splitmix64 finaliser of the MAC keyed by `seed`).
#[inline(always)]
pub const fn index_home(mac_word: u64, seed: u64) -> u32 {
    let mut x = mac_word ^ seed;
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> (64 - INDEX_BITS)) as u32
}

/// The `i`-th position of a walk from `home`.
#[inline(always)]
pub const fn index_probe(home: u32, i: u32) -> u32 {
    (home + i) & INDEX_MASK
}

/// What a walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The MAC's entry.
    Found { pos: u32, slot: u32 },
    /// The MAC is not indexed; the first free position on its walk.
    Free(u32),
    /// Neither within [`INDEX_MAX_PROBES`].
    Full,
}

/// Walks from the home position of `m` (a [`mac_word`]) until its entry or a
/// free one, reading each position's key with `key_at` (`None`: unreadable,
/// taken as the end of the table). The datapath and userspace both find
/// clients with it, so they always agree on where a MAC is.
#[inline(always)]
pub fn index_find(m: u64, seed: u64, key_at: impl Fn(u32) -> Option<u64>) -> Probe {
    let home = index_home(m, seed);
    for i in 0..INDEX_MAX_PROBES {
        let pos = index_probe(home, i);
        let Some(key) = key_at(pos) else {
            return Probe::Full;
        };
        if key == 0 {
            return Probe::Free(pos);
        }
        if key & INDEX_MAC_MASK == m {
            return Probe::Found {
                pos,
                slot: index_slot(key),
            };
        }
    }
    Probe::Full
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts `n` MACs into a model of the index and returns the longest walk.
    fn longest_walk(macs: impl Iterator<Item = u64>, seed: u64) -> u32 {
        extern crate std;
        let mut table = std::vec![0u64; INDEX_ENTRIES as usize];
        let mut longest = 0;
        for (slot, m) in macs.enumerate() {
            let Probe::Free(pos) = index_find(m, seed, |p| Some(table[p as usize])) else {
                panic!("MAC {m:#x} found no free entry");
            };
            table[pos as usize] = index_key(m, slot as u32);
            let walk = pos.wrapping_sub(index_home(m, seed)) & INDEX_MASK;
            longest = longest.max(walk + 1);
            assert_eq!(
                index_find(m, seed, |p| Some(table[p as usize])),
                Probe::Found {
                    pos,
                    slot: slot as u32
                }
            );
        }
        longest
    }

    #[test]
    fn a_full_table_keeps_walks_within_the_limit() {
        // Sequential MACs (one vendor's block) and scattered ones, several seeds.
        for seed in [1u64, 0x9e37_79b9_7f4a_7c15, 0xdead_beef_0123_4567] {
            let seq = longest_walk((0..MAX_CLIENTS as u64).map(|i| 0x0200_0000_0000 | i), seed);
            let scattered = longest_walk(
                (0..MAX_CLIENTS as u64)
                    .map(|i| i.wrapping_mul(0x5851_f42d_4c95_7f2d) & INDEX_MAC_MASK | 1),
                seed,
            );
            assert!(
                seq < INDEX_MAX_PROBES / 2 && scattered < INDEX_MAX_PROBES / 2,
                "seed {seed:#x}: longest walk {seq} (sequential), {scattered} (scattered) of {}",
                INDEX_MAX_PROBES
            );
        }
    }

    #[test]
    fn keys_round_trip() {
        let mac = MacKey::new([0x02, 0x11, 0x22, 0x33, 0x44, 0xff]);
        let k = index_key(mac_word(&mac), 65_535);
        assert_eq!(index_slot(k), 65_535);
        assert_eq!(index_mac(k), mac);
        assert_eq!(k & INDEX_MAC_MASK, mac_word(&mac));
        assert_ne!(index_key(mac_word(&mac), 0), 0);
        assert_eq!(index_probe(INDEX_ENTRIES - 1, 2), 1);
    }
}
