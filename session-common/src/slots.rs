//! Slots: every client in the table has one, an index into the per-client
//! arrays (`COUNTERS`, `POLICY`, `SLOTS`). The datapath takes one for each new
//! MAC it sees and the agent for each client it lets through before the
//! datapath saw it; both take them here, with the same steps, so they always
//! agree:
//!
//! 1. A forgotten client's slot from the free ring `FREE_SLOTS`
//!    ([`free_ring_take`]): the slots between `SlotAllocator::free_head` and
//!    `free_tail` (ring positions modulo [`MAX_CLIENTS`]). A taker reads the
//!    slot at the head, then moves the head on with a compare-and-swap; the
//!    slot is its own if the swap won. Only the agent puts slots in (one
//!    writer of the tail, after the forgetting protocol of `crate::index`
//!    made their entries tombstones), and the ring holds every slot, so it
//!    never overruns.
//! 2. Else a never-used slot from the bump counter `SlotAllocator::next`
//!    ([`bump_take`]), checked before it is added to so that a full table
//!    does not keep counting up.
//!
//! The word operations are the caller's (`atomic_cxchg` in the datapath,
//! `std::sync::atomic` over mmap-ed memory in the agent), passed as closures
//! as [`crate::index_find`] takes its reads.

use crate::MAX_CLIENTS;

/// Takes a slot from the free ring, or `None` when it is empty (or after
/// `tries` swaps lost to other takers). `head` and `tail` read the ring's
/// counters, `slot_at` the slot at a ring position (`None`: unreadable),
/// `advance(h)` swaps the head from `h` to `h + 1` and says whether it won.
#[inline(always)]
pub fn free_ring_take(
    tries: u32,
    head: impl Fn() -> u64,
    tail: impl Fn() -> u64,
    slot_at: impl Fn(u32) -> Option<u64>,
    advance: impl Fn(u64) -> bool,
) -> Option<u32> {
    for _ in 0..tries {
        let h = head();
        if h >= tail() {
            break;
        }
        let Some(slot) = slot_at(free_ring_position(h)) else {
            break;
        };
        if advance(h) && slot < MAX_CLIENTS as u64 {
            return Some(slot as u32);
        }
    }
    None
}

/// Where ring counter `i` (a head or tail value) is in `FREE_SLOTS`.
#[inline(always)]
pub const fn free_ring_position(i: u64) -> u32 {
    (i % MAX_CLIENTS as u64) as u32
}

/// What [`bump_take`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bump {
    /// A never-used slot.
    Taken(u32),
    /// None left, and this is the first call to find so: the caller reports
    /// the full table (once per table).
    FullNow,
    /// None left.
    Full,
}

/// A never-used slot from the bump counter. `next` reads the counter,
/// `fetch_add` adds one and returns the value before, `swap(old, new)` sets
/// it from `old` to `new` and says whether it did. The counter is checked
/// before it is added to, so it stops at [`MAX_CLIENTS`] instead of wrapping;
/// the first refusal moves it one further, so that exactly one caller sees
/// [`Bump::FullNow`].
#[inline(always)]
pub fn bump_take(
    next: impl Fn() -> u32,
    fetch_add: impl Fn() -> u32,
    swap: impl Fn(u32, u32) -> bool,
) -> Bump {
    let n = next();
    if n >= MAX_CLIENTS {
        if n == MAX_CLIENTS && swap(MAX_CLIENTS, MAX_CLIENTS + 1) {
            return Bump::FullNow;
        }
        return Bump::Full;
    }
    match fetch_add() {
        slot if slot < MAX_CLIENTS => Bump::Taken(slot),
        // A racer's add went past the end first: the counter is one past it.
        MAX_CLIENTS => Bump::FullNow,
        _ => Bump::Full,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::cell::Cell;

    #[test]
    fn the_ring_gives_each_freed_slot_once_then_nothing() {
        let ring = [7u64, 3, 9];
        let head = Cell::new(0u64);
        let tail = 3u64;
        let take = || {
            free_ring_take(
                4,
                || head.get(),
                || tail,
                |i| ring.get(i as usize).copied(),
                |h| {
                    let won = head.get() == h;
                    if won {
                        head.set(h + 1);
                    }
                    won
                },
            )
        };
        assert_eq!(
            (take(), take(), take(), take()),
            (Some(7), Some(3), Some(9), None)
        );
    }

    #[test]
    fn a_lost_swap_tries_again_and_gives_up_after_tries() {
        let head = Cell::new(0u64);
        // Another taker wins every swap (moves the head under us).
        let lost = |h: u64| {
            head.set(h + 1);
            false
        };
        let got = free_ring_take(3, || head.get(), || 10, |_| Some(1), lost);
        assert_eq!((got, head.get()), (None, 3));
    }

    #[test]
    fn the_bump_counter_stops_at_the_table_size_and_says_so_once() {
        let next = Cell::new(MAX_CLIENTS - 1);
        let add = || {
            let v = next.get();
            next.set(v + 1);
            v
        };
        let swap = |old: u32, new: u32| {
            let won = next.get() == old;
            if won {
                next.set(new);
            }
            won
        };
        assert_eq!(
            bump_take(|| next.get(), add, swap),
            Bump::Taken(MAX_CLIENTS - 1)
        );
        assert_eq!(bump_take(|| next.get(), add, swap), Bump::FullNow);
        assert_eq!(bump_take(|| next.get(), add, swap), Bump::Full);
        assert_eq!(bump_take(|| next.get(), add, swap), Bump::Full);
        assert_eq!(next.get(), MAX_CLIENTS + 1, "no further count");
        // Racers that passed the check: the add that reached the end says so.
        let racing = |v: u32| move || v;
        let no_swap = |_: u32, _: u32| false;
        assert_eq!(bump_take(|| 0, racing(MAX_CLIENTS), no_swap), Bump::FullNow);
        assert_eq!(
            bump_take(|| 0, racing(MAX_CLIENTS + 1), no_swap),
            Bump::Full
        );
    }
}
