//! The client table `CLIENTS`: an open-addressed hash table in an mmap-able
//! array of [`crate::ClientEntry`], one cache line each, so a packet finds its
//! client and everything it needs of it in one line, and userspace reads and
//! inserts without syscalls.
//!
//! An entry's `key` holds the MAC in the low 48 bits and the client's slot in
//! the high 16 (see [`index_key`]), or 0 while the entry was never used. It is
//! claimed with one compare-and-swap and never becomes 0 again: when the agent
//! forgets an idle client, the key becomes a tombstone ([`index_retired`], then
//! [`INDEX_REUSABLE`] once no packet can still be using the entry), whose MAC
//! is a group address no client has. So a lookup still walks from the MAC's
//! home position to its entry or the first never-used one, never further than
//! [`INDEX_MAX_PROBES`], and a new client takes the first reusable entry on
//! its walk. The home position is a hash of the MAC keyed by the
//! maps' random epoch, so clients cannot choose MACs that pile up in one run.
//! The all-zero MAC is never indexed (its key would read as free). `SLOTS`
//! leads from a slot back to its position.

use crate::{MacAddr, MAX_CLIENTS};

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

/// The key of an entry whose client in `slot` was forgotten, while packets
/// may still be using it (a group MAC, so it matches no client).
#[inline(always)]
pub const fn index_retired(slot: u32) -> u64 {
    index_key(0x01, slot)
}

/// The key of an entry a new client may take (a group MAC, so it matches no client).
pub const INDEX_REUSABLE: u64 = 0x03;

/// Whether `key` holds a client: not free, not a tombstone (clients' MACs are
/// unicast, and the group bit is bit 0 of the word).
#[inline(always)]
pub const fn index_live(key: u64) -> bool {
    key != 0 && key & 1 == 0
}

/// The MAC as the low 48 bits of a word.
#[inline(always)]
pub const fn mac_word(mac: &MacAddr) -> u64 {
    let a = mac.addr;
    u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], 0, 0])
}

/// The MAC of an index key.
#[inline(always)]
pub const fn index_mac(key: u64) -> MacAddr {
    let b = key.to_le_bytes();
    MacAddr::new([b[0], b[1], b[2], b[3], b[4], b[5]])
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
    (crate::mix64(mac_word ^ seed) >> (64 - INDEX_BITS)) as u32
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
    /// The MAC is not indexed; the first position on its walk it may take,
    /// whose key is now `key` (0 or [`INDEX_REUSABLE`]).
    Free { pos: u32, key: u64 },
    /// Neither within [`INDEX_MAX_PROBES`].
    Full,
}

/// Walks from the home position of `m` (a [`mac_word`]) until its entry or a
/// never-used one, reading each position's key with `key_at` (`None`:
/// unreadable, taken as the end of the table). The datapath and userspace both
/// find clients with it, so they always agree on where a MAC is.
#[inline(always)]
pub fn index_find(m: u64, seed: u64, key_at: impl Fn(u32) -> Option<u64>) -> Probe {
    let home = index_home(m, seed);
    // The first reusable entry (NONE: none yet), taken only once the MAC is
    // known to be absent. A plain word and no `continue`: the loop then keeps
    // the shape that older verifiers (Linux 6.1) accept.
    const NONE: u32 = u32::MAX;
    let mut reusable = NONE;
    for i in 0..INDEX_MAX_PROBES {
        let pos = index_probe(home, i);
        let Some(key) = key_at(pos) else {
            break;
        };
        if key == 0 {
            if reusable != NONE {
                break;
            }
            return Probe::Free { pos, key: 0 };
        }
        // A tombstone's MAC is a group address, so it never matches `m` below.
        if key == INDEX_REUSABLE && reusable == NONE {
            reusable = pos;
        }
        if key & INDEX_MAC_MASK == m {
            return Probe::Found {
                pos,
                slot: index_slot(key),
            };
        }
    }
    if reusable != NONE {
        return Probe::Free {
            pos: reusable,
            key: INDEX_REUSABLE,
        };
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
            let Probe::Free { pos, key: 0 } = index_find(m, seed, |p| Some(table[p as usize]))
            else {
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
    fn tombstones_are_walked_past_and_reused_only_when_reusable() {
        extern crate std;
        let seed = 0x1234_5678_9abc_def1;
        let mut table = std::vec![0u64; INDEX_ENTRIES as usize];
        let find = |t: &[u64], m: u64| index_find(m, seed, |p| Some(t[p as usize]));
        // Three MACs on one walk: the same home, so they sit in a row.
        let a = 0x0200_0000_0002u64;
        let home = index_home(a, seed);
        let same_home: std::vec::Vec<u64> = (4u64..)
            .step_by(2)
            .filter(|m| index_home(*m, seed) == home)
            .take(2)
            .collect();
        let (b, c) = (same_home[0], same_home[1]);
        for (slot, m) in [a, b, c].into_iter().enumerate() {
            let Probe::Free { pos, key: 0 } = find(&table, m) else {
                panic!("no free entry for {m:#x}");
            };
            table[pos as usize] = index_key(m, slot as u32);
        }
        let pos_a = index_probe(home, 0);
        let pos_c = index_probe(home, 2);
        // Forgotten: c is still found past the tombstone; a is not, and its
        // entry is not taken while packets may be using it.
        table[pos_a as usize] = index_retired(0);
        assert!(!index_live(table[pos_a as usize]));
        assert_eq!(
            find(&table, c),
            Probe::Found {
                pos: pos_c,
                slot: 2
            }
        );
        assert_eq!(
            find(&table, a),
            Probe::Free {
                pos: index_probe(home, 3),
                key: 0
            }
        );
        // Once reusable, the first MAC absent from the walk takes it, and c is
        // still found; also on a walk of tombstones with no never-used entry.
        table[pos_a as usize] = INDEX_REUSABLE;
        let mut tombstones = std::vec![INDEX_REUSABLE; INDEX_ENTRIES as usize];
        tombstones[pos_c as usize] = index_key(c, 2);
        for t in [&table, &tombstones] {
            let reuse = Probe::Free {
                pos: pos_a,
                key: INDEX_REUSABLE,
            };
            assert_eq!(find(t, a), reuse);
            assert_eq!(
                find(t, c),
                Probe::Found {
                    pos: pos_c,
                    slot: 2
                }
            );
        }
        assert!(index_live(index_key(a, 0)) && !index_live(INDEX_REUSABLE) && !index_live(0));
    }

    #[test]
    fn keys_round_trip() {
        let mac = MacAddr::new([0x02, 0x11, 0x22, 0x33, 0x44, 0xff]);
        let k = index_key(mac_word(&mac), 65_535);
        assert_eq!(index_slot(k), 65_535);
        assert_eq!(index_mac(k), mac);
        assert_eq!(k & INDEX_MAC_MASK, mac_word(&mac));
        assert_ne!(index_key(mac_word(&mac), 0), 0);
        assert_eq!(index_probe(INDEX_ENTRIES - 1, 2), 1);
    }
}
