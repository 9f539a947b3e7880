//! The accounting book's index in memory: which sessions are open, on which
//! device, and when each one's next interim update is due.
//!
//! At 65,536 open sessions a hash map of them and an ordered set of due times
//! held about 4.7 MiB (half the hash map's buckets empty, the set's tree nodes
//! part full). Here the open sessions are one vector sorted by session id, 28
//! bytes each (with the phase their row is under in the book), and the due
//! times 16 bytes each ([`Due`], with room for an eighth more): about 2.8 MiB.
//! Session ids are the store's sequential ids, so a session that opens goes
//! at the end of the vector; one that closes is marked and the marks are
//! swept once they are a quarter of the vector. A search reads the id of
//! every 64th entry, then one block of 64 (a few pages, where a search of
//! the whole vector reads a cold page at each step once a second asleep has
//! left it out of the caches). A due time whose session closed or moved on
//! is stale and dropped when it comes first; they are built afresh when
//! stale ones outnumber the live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use session_model::{DeviceId, SessionId};

/// Entries of `open` per [`Index::fence`] entry.
const BLOCK: usize = 64;

/// In [`Entry::next`]: a session that sends no interim updates.
const NO_UPDATES: i64 = i64::MAX;
/// In [`Entry::next`]: a session that closed (swept later).
const CLOSED: i64 = i64::MIN;

/// 28 bytes: packed to 4 bytes' alignment, so the phase takes no 4 bytes of
/// padding more (the fields are read and written whole, never borrowed).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
pub(crate) struct Entry {
    id: SessionId,
    device: DeviceId,
    /// Its next interim update, [`NO_UPDATES`] or [`CLOSED`].
    next: i64,
    /// The first part of its row's key in the book ([`crate::acct`]'s
    /// `phase`): the row is found without a search.
    phase: u32,
}

/// Which sessions are open, and by when their next interim update is due.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Sorted by id, with closed ones marked.
    open: Vec<Entry>,
    /// The id of every [`BLOCK`]th entry of `open`: a search reads this small
    /// array and then one block, a few pages, where a search of the whole
    /// vector reads a page at each of its steps (each a miss after a second
    /// asleep).
    fence: Vec<SessionId>,
    closed: usize,
    /// `(next, id)` of the sessions that send updates, soonest on top; some stale.
    due: Due,
    /// `open` holds entries [`Index::load`]ed out of order: [`Index::settle`]
    /// sorts it.
    unordered: bool,
    /// Those [`Index::due`] took off the heap and found due, in order: they
    /// stay due until their next moves, and a round moves them all (each
    /// back onto the heap at its new time, far below its top), so they are
    /// not put back on it, where each would climb to the top and be taken off
    /// again (two walks of the heap's depth each, through cold memory).
    held: Vec<(i64, SessionId)>,
}

impl Entry {
    /// Session `id` open on `device`, its row under `phase`; its next interim
    /// update at `next_interim` (none when `interim_secs` is 0).
    pub(crate) fn new(
        id: SessionId,
        device: DeviceId,
        phase: u32,
        interim_secs: u64,
        next_interim: i64,
    ) -> Self {
        let next = if interim_secs > 0 {
            next_interim.clamp(CLOSED + 1, NO_UPDATES - 1)
        } else {
            NO_UPDATES
        };
        Entry {
            id,
            device,
            next,
            phase,
        }
    }
}

/// Grows `v` by an eighth when full rather than doubling it: a table of every
/// open session would otherwise hold up to twice their room.
fn room<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.capacity() / 8 + 16);
    }
}

impl Index {
    /// An index with room for `n` sessions.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Index {
            open: Vec::with_capacity(n),
            fence: Vec::with_capacity(n.div_ceil(BLOCK)),
            closed: 0,
            due: Due::default(),
            held: Vec::new(),
            unordered: false,
        }
    }

    /// A session as the book's rows come when it opens (in the order of
    /// their keys, not of their ids): kept at the end, and put in order by
    /// [`Index::settle`], which must come before any other use.
    pub(crate) fn load(&mut self, e: Entry) {
        room(&mut self.open);
        self.open.push(e);
        self.unordered = true;
    }

    /// Where `id` is in `open`, or where it would go.
    fn search(&self, id: SessionId) -> Result<usize, usize> {
        // The last block whose first id is at most `id`.
        let block = self.fence.partition_point(|&f| f <= id).saturating_sub(1);
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.open.len());
        match self.open[start..end].binary_search_by_key(&id, |e| e.id) {
            Ok(i) => Ok(start + i),
            Err(i) => Err(start + i),
        }
    }

    /// The fence of `open` afresh, after entries moved.
    fn refence(&mut self) {
        self.fence.clear();
        self.fence
            .extend(self.open.iter().step_by(BLOCK).map(|e| e.id));
    }

    fn find(&self, id: SessionId) -> Option<usize> {
        let i = self.search(id).ok()?;
        (self.open[i].next != CLOSED).then_some(i)
    }

    /// The session of `e` is open (again, or moved on).
    pub(crate) fn insert(&mut self, e: Entry) {
        let Entry { id, next, .. } = e;
        match self.search(id) {
            Ok(i) => {
                let was = std::mem::replace(&mut self.open[i], e).next;
                if was == CLOSED {
                    self.closed -= 1;
                } else if was == next {
                    return;
                }
            }
            Err(i) => {
                room(&mut self.open);
                self.open.insert(i, e);
                if i + 1 == self.open.len() {
                    // At the end, as the store's growing ids come.
                    if i % BLOCK == 0 {
                        room(&mut self.fence);
                        self.fence.push(id);
                    }
                } else {
                    self.refence();
                }
            }
        }
        if next != NO_UPDATES {
            self.push_due(next, id);
        }
    }

    fn push_due(&mut self, next: i64, id: SessionId) {
        let live = self.open.len() - self.closed;
        if self.due.len() >= 2 * live + 1024 {
            self.rebuild_due();
        }
        self.due.push((next, id));
    }

    /// The open sessions in the order of their ids, and their due times in
    /// order with room for an eighth more: after the book's sessions were
    /// [`Index::load`]ed, or the late ones moved on at a start.
    pub(crate) fn settle(&mut self) {
        if std::mem::take(&mut self.unordered) {
            // Stable: of a session loaded twice (a damaged book), the entry
            // loaded first stays, the one of its lower phase.
            self.open.sort_by_key(|e| e.id);
            self.open.dedup_by_key(|e| e.id);
            self.refence();
        }
        self.rebuild_due();
    }

    /// The due times of the live entries only.
    fn rebuild_due(&mut self) {
        let live = self
            .open
            .iter()
            .filter(|e| e.next != CLOSED && e.next != NO_UPDATES)
            .map(|e| (e.next, e.id));
        self.due.rebuild(live);
        self.held.clear();
    }

    /// Session `id` closed.
    pub(crate) fn remove(&mut self, id: SessionId) {
        let Some(i) = self.find(id) else {
            return;
        };
        self.open[i].next = CLOSED;
        self.closed += 1;
        if self.closed > self.open.len() / 4 + 16 {
            self.open.retain(|e| e.next != CLOSED);
            self.refence();
            self.closed = 0;
            self.open
                .shrink_to(self.open.len() + self.open.len() / 8 + 16);
        }
    }

    /// The next interim update of session `id` as the index holds it; `None`
    /// when it is not open or sends none.
    pub(crate) fn next_interim(&self, id: SessionId) -> Option<i64> {
        let next = self.open[self.find(id)?].next;
        (next != NO_UPDATES).then_some(next)
    }

    /// The phase session `id`'s row is under; `None` when it is not open.
    pub(crate) fn phase(&self, id: SessionId) -> Option<u32> {
        Some(self.open[self.find(id)?].phase)
    }

    pub(crate) fn contains(&self, id: SessionId) -> bool {
        self.find(id).is_some()
    }

    pub(crate) fn len(&self) -> usize {
        self.open.len() - self.closed
    }

    /// The open sessions, each with its device, by id.
    pub(crate) fn sessions(&self) -> impl Iterator<Item = (SessionId, DeviceId)> + '_ {
        self.open
            .iter()
            .filter(|e| e.next != CLOSED)
            .map(|e| (e.id, e.device))
    }

    /// The open sessions whose next interim update is at `now` or before,
    /// soonest first (then by id). They stay due until their next moves.
    pub(crate) fn due(&mut self, now: i64) -> Vec<SessionId> {
        let live = |index: &Self, at: i64, id: SessionId| {
            index.find(id).is_some_and(|i| index.open[i].next == at)
        };
        let mut hits = std::mem::take(&mut self.held);
        hits.retain(|&(at, id)| live(self, at, id));
        // Held ones no longer due (the clock went back) go back on the heap.
        let mut i = 0;
        while i < hits.len() {
            if hits[i].0 > now {
                let (at, id) = hits.swap_remove(i);
                self.due.push((at, id));
            } else {
                i += 1;
            }
        }
        while let Some((at, id)) = self.due.peek() {
            if at > now {
                break;
            }
            self.due.pop();
            if live(self, at, id) {
                hits.push((at, id));
            }
        }
        hits.sort_unstable();
        hits.dedup();
        let ids = hits.iter().map(|&(_, id)| id).collect();
        // No room kept past a burst (the late ones at a start).
        hits.shrink_to(2 * hits.len() + 64);
        self.held = hits;
        ids
    }
}

/// Due times, soonest first: a run in order, where a session's next time
/// goes when it is no sooner than the run's last (as each round's are: now
/// plus the interim, one interval for every session alike), and a heap for the
/// others. Taking the soonest off the run and adding at its end touch only its
/// two ends; a heap's walk from top to bottom reads a cold page at each level.
#[derive(Debug, Default)]
struct Due {
    run: VecDeque<(i64, SessionId)>,
    heap: BinaryHeap<Reverse<(i64, SessionId)>>,
}

impl Due {
    fn len(&self) -> usize {
        self.run.len() + self.heap.len()
    }

    fn push(&mut self, entry: (i64, SessionId)) {
        if self.run.back().is_none_or(|&last| last <= entry) {
            if self.run.len() == self.run.capacity() {
                self.run.reserve_exact(self.run.capacity() / 8 + 16);
            }
            self.run.push_back(entry);
        } else {
            if self.heap.len() == self.heap.capacity() {
                self.heap.reserve_exact(self.heap.capacity() / 8 + 16);
            }
            self.heap.push(Reverse(entry));
        }
    }

    fn peek(&self) -> Option<(i64, SessionId)> {
        match (self.run.front(), self.heap.peek()) {
            (Some(&r), Some(&Reverse(h))) => Some(r.min(h)),
            (Some(&r), None) => Some(r),
            (None, Some(&Reverse(h))) => Some(h),
            (None, None) => None,
        }
    }

    fn pop(&mut self) {
        let from_run = match (self.run.front(), self.heap.peek()) {
            (Some(r), Some(Reverse(h))) => r <= h,
            (run, _) => run.is_some(),
        };
        if from_run {
            self.run.pop_front();
        } else {
            self.heap.pop();
            if self.heap.is_empty() {
                // No room kept past a burst of times out of order.
                self.heap.shrink_to(64);
            }
        }
    }

    /// Only `entries`, all in the run (in the larger of the two's room).
    fn rebuild(&mut self, entries: impl Iterator<Item = (i64, SessionId)>) {
        let heap = std::mem::take(&mut self.heap).into_vec();
        let run = std::mem::take(&mut self.run);
        let mut v: Vec<_> = if heap.capacity() > run.capacity() {
            drop(run);
            heap.into_iter().map(|Reverse(e)| e).collect()
        } else {
            drop(heap);
            run.into()
        };
        v.clear();
        v.extend(entries);
        v.sort_unstable();
        v.shrink_to(v.len() + v.len() / 8 + 16);
        self.run = v.into();
        self.heap = BinaryHeap::new();
    }

    /// Entries it has room for.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.run.capacity() + self.heap.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The index as a map and an ordered set: what the index must answer.
    #[derive(Default)]
    struct Model {
        open: BTreeMap<SessionId, (DeviceId, i64, u32)>,
        due: BTreeSet<(i64, SessionId)>,
    }

    impl Model {
        fn insert(&mut self, id: SessionId, device: DeviceId, phase: u32, interim: u64, next: i64) {
            self.remove(id);
            // The two ends of the range are the index's marks: a time there
            // is taken as the nearest other.
            let next = if interim > 0 {
                next.clamp(CLOSED + 1, NO_UPDATES - 1)
            } else {
                NO_UPDATES
            };
            if next != NO_UPDATES {
                self.due.insert((next, id));
            }
            self.open.insert(id, (device, next, phase));
        }
        fn remove(&mut self, id: SessionId) {
            if let Some((_, at, _)) = self.open.remove(&id) {
                self.due.remove(&(at, id));
            }
        }
        fn due(&self, now: i64) -> Vec<SessionId> {
            self.due
                .range(..=(now, SessionId::MAX))
                .map(|&(_, id)| id)
                .collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(SessionId, DeviceId, u32, u64, i64),
        Remove(SessionId),
        /// The index made afresh from the model's sessions, loaded in the
        /// order of their phases as a book's rows come.
        Reload,
        Due(i64),
        Settle,
    }

    /// A next interim time: mostly near, sometimes at either end of the range
    /// (a damaged row's).
    fn next() -> impl Strategy<Value = i64> {
        prop_oneof![20 => 0i64..400, 1 => Just(i64::MIN), 1 => Just(i64::MAX)]
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few ids, so that the same sessions open, move on and close again.
        prop_oneof![
            4 => (0u64..300, -5i64..5, any::<u32>(), 0u64..3, next())
                .prop_map(|(id, d, p, i, n)| Op::Insert(id, d, p, i, n)),
            2 => (0u64..300).prop_map(Op::Remove),
            1 => (0i64..400).prop_map(Op::Due),
            1 => Just(Op::Settle),
            1 => Just(Op::Reload),
        ]
    }

    fn check(index: &mut Index, model: &Model, now: i64) {
        assert_eq!(index.due(now), model.due(now), "due at {now}");
        assert_eq!(index.len(), model.open.len());
        let held: Vec<_> = index.sessions().collect();
        let want: Vec<_> = model.open.iter().map(|(&s, &(d, _, _))| (s, d)).collect();
        assert_eq!(held, want);
        for (&id, &(_, next, phase)) in &model.open {
            assert!(index.contains(id));
            assert_eq!(index.phase(id), Some(phase), "phase of {id}");
            let want = (next != NO_UPDATES).then_some(next);
            assert_eq!(index.next_interim(id), want, "next of {id}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn the_index_answers_as_a_map_and_an_ordered_set_of_the_same_changes(
            ops in proptest::collection::vec(op(), 1..600)
        ) {
            let mut index = Index::default();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(id, d, p, i, n) => {
                        index.insert(Entry::new(id, d, p, i, n));
                        model.insert(id, d, p, i, n);
                    }
                    Op::Remove(id) => {
                        index.remove(id);
                        model.remove(id);
                        prop_assert!(!index.contains(id));
                        prop_assert_eq!(index.phase(id), None);
                    }
                    Op::Due(now) => check(&mut index, &model, now),
                    Op::Settle => index.settle(),
                    Op::Reload => {
                        let mut rows: Vec<_> = model.open.iter().collect();
                        rows.sort_by_key(|&(&id, &(_, _, phase))| (phase, id));
                        index = Index::with_capacity(rows.len());
                        for (&id, &(d, next, phase)) in rows {
                            // A session without updates as the book has it.
                            let interim = u64::from(next != NO_UPDATES);
                            index.load(Entry::new(id, d, phase, interim, next));
                        }
                        index.settle();
                    }
                }
            }
            check(&mut index, &model, 400);
            check(&mut index, &model, i64::MAX - 1);
        }
    }

    #[test]
    fn closed_sessions_and_stale_due_times_do_not_pile_up() {
        let mut index = Index::default();
        // Sessions open and close, and each open one moves its next update on
        // many times, as a day of rounds does.
        for round in 0..200i64 {
            for id in 0..1_000u64 {
                let id = id + 500 * round as u64;
                index.insert(Entry::new(id, 1, 0, 600, round * 10 + (id % 7) as i64));
            }
            for id in 0..500u64 {
                index.remove(id + 500 * round as u64);
            }
        }
        assert_eq!(index.len(), 500);
        assert!(
            index.open.len() <= 500 + 500 / 3 + 16,
            "{}",
            index.open.len()
        );
        // At most twice the most sessions open at once (1,000), and a margin.
        assert!(index.due.len() <= 2 * 1_000 + 1024, "{}", index.due.len());
        assert_eq!(index.due(i64::MAX - 1).len(), 500);
    }

    #[test]
    fn a_full_index_of_65536_sessions_holds_about_28_and_16_bytes_each() {
        let n = 65_536;
        let mut index = Index::with_capacity(n);
        // In the order of their ids, not of their times.
        for id in 0..n as u64 {
            index.insert(Entry::new(
                id,
                id as i64,
                (id % 600) as u32,
                600,
                1_000 + (id % 600) as i64,
            ));
        }
        index.settle();
        let bytes = index.open.capacity() * std::mem::size_of::<Entry>()
            + index.due.capacity() * std::mem::size_of::<(i64, SessionId)>();
        // 28 bytes a session, 16 for its due time and room for an eighth more.
        assert!(bytes <= n * 28 + (n + n / 8 + 16) * 16, "{bytes} bytes");
        // One more session grows the tables by an eighth, not twice.
        index.insert(Entry::new(n as u64, 0, 0, 600, 1_000));
        assert!(index.open.capacity() <= n + n / 8 + 16);
        assert!(index.due.capacity() <= n + n / 8 + 32);
        assert_eq!(
            index.due(1_000),
            vec![0, 600, 1_200]
                .into_iter()
                .chain((1_800..n as u64).step_by(600))
                .chain([n as u64])
                .collect::<Vec<_>>()
        );
    }
}
