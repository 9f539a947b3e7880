//! Where the datapath's `unsafe` lives: access to memory the kernel hands the
//! programs (map values, packet data, the skb, sockets) and the helpers that
//! cannot go wrong, each behind a safe function with the reason it is sound.
//!
//! Everything is `#[inline(always)]` and compiles to the loads, stores and
//! atomics the raw accesses did. What the verifier has to walk still depends
//! on how the compiler lays the code out, which shifts with details of the
//! source: options are matched, not `Option::map`ped (a closure is inlined
//! later, and XDP ingress cost 7% more), and `load_or` checks in the sense
//! that keeps TC ingress cheapest. Measure (`cargo test -p session-agent
//! --test verifier -- --nocapture`, and on 6.1) after changing any of it.
#![allow(clippy::manual_map)]
//!
//! Map values are shared with the other CPUs and with userspace (through
//! mmap), which read and write them while a program runs. They are therefore
//! never borrowed as `&T`/`&mut T` (that would promise Rust no one else writes
//! them): a [`Shared`] points to one and reads and writes it with volatile or
//! atomic accesses only, field by field ([`at!`]).

use core::{
    intrinsics::{
        atomic_cxchg, atomic_or, atomic_xadd,
        AtomicOrdering::{Relaxed, SeqCst},
    },
    marker::PhantomData,
    mem::size_of,
    ptr::NonNull,
};

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, BPF_F_CURRENT_NETNS},
    cty::c_void,
    helpers::{
        bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect, bpf_sk_assign, bpf_sk_release,
        bpf_skc_lookup_tcp,
    },
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};

/// A value in map memory (or the skb), valid for `'a`, that others may read
/// and write meanwhile: read and written by volatile or atomic accesses only.
///
/// `'a` is the borrow of the map it came from. Maps are statics, so that is
/// `'static` in practice; what bounds the value's life for real is the
/// program's run, and nothing outlives that: a BPF program returns every time,
/// has no heap, and its globals are maps, which hold bytes, not pointers (the
/// verifier refuses to store a pointer in a map).
///
/// - An array's value (`Array`, `PerCpuArray`) is allocated with the map and
///   freed with it; the program holds a reference to the map while loaded.
/// - A hash map's value can be deleted meanwhile (by userspace or another CPU,
///   and an LRU map evicts), but the kernel frees it only after an RCU grace
///   period, and a program runs inside an RCU read-side section: the memory
///   stays valid for the run. (A preallocated map may hand the element to a
///   new key at once: then this reads or writes that key's value, which is a
///   race over the data, as with userspace, never over memory.)
pub struct Shared<'a, T> {
    ptr: *mut T,
    _life: PhantomData<&'a T>,
}

impl<T> Clone for Shared<'_, T> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    /// # Safety
    ///
    /// `ptr` is non-null, aligned for `T`, and points to a `T` that stays
    /// allocated for `'a` (see the type's notes for map and skb memory).
    #[inline(always)]
    pub unsafe fn new(ptr: *mut T) -> Self {
        Shared {
            ptr,
            _life: PhantomData,
        }
    }

    /// # Safety
    ///
    /// `place` points into the value `self` points to (made by `&raw mut` of
    /// one of its fields; [`at!`] does it).
    #[doc(hidden)]
    #[inline(always)]
    pub unsafe fn within<F>(self, place: *mut F) -> Shared<'a, F> {
        // SAFETY: a place within a valid, aligned `T` is a valid, aligned `F`
        // for as long (the caller's promise).
        unsafe { Shared::new(place) }
    }

    #[doc(hidden)]
    #[inline(always)]
    pub fn as_ptr(self) -> *mut T {
        self.ptr
    }

    /// Reads the value: one load per word, never merged with another read or
    /// left out (the value changes under us).
    #[inline(always)]
    pub fn get(self) -> T
    where
        T: Copy,
    {
        // SAFETY: valid and aligned for 'a (`new`); `T: Copy` so the bits are
        // a value whatever writer put them there; volatile: no `&T` is made.
        unsafe { core::ptr::read_volatile(self.ptr) }
    }

    /// Writes the value (see [`get`](Self::get)).
    #[inline(always)]
    pub fn set(self, v: T) {
        // SAFETY: valid and aligned for 'a (`new`); map values and the skb's
        // writable fields are plain data, so no old value needs dropping.
        unsafe { core::ptr::write_volatile(self.ptr, v) }
    }
}

/// The field `$field` (or an element of an array field, `v6[i]`) of the value
/// a [`Shared`] points to, as a [`Shared`] of its own:
/// `at!(cfg, flags).get()`, `at!(c, blocked_packets).add(1)`.
macro_rules! at {
    ($shared:expr, $($field:tt)+) => {{
        let s: $crate::mem::Shared<'_, _> = $shared;
        // SAFETY: `s` points to a valid value for its lifetime (`Shared`);
        // `&raw mut` of one of its fields (an index is bounds-checked) makes
        // no reference and points within it, as `within` asks.
        unsafe { s.within(&raw mut (*s.as_ptr()).$($field)+) }
    }};
}
pub(crate) use at;

/// The integer words of map values that atomics update (the BPF atomic
/// instructions take 32 and 64-bit words).
pub trait Word: Copy + sealed::Sealed {}
impl Word for u32 {}
impl Word for u64 {}
impl Word for i64 {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
    impl Sealed for i64 {}
}

impl<T: Word> Shared<'_, T> {
    /// Adds `v` atomically, the old value unused: BPF's non-fetching `lock add`
    /// (for counters).
    #[inline(always)]
    pub fn add(self, v: T) {
        // SAFETY: valid and aligned for 'a; an atomic add of a 32 or 64-bit
        // integer (`Word`), which BPF has.
        unsafe { atomic_xadd::<T, T, { Relaxed }>(self.ptr, v) };
    }

    /// Sets the bits of `v` atomically, the old value unused: BPF's
    /// non-fetching `lock or`.
    #[inline(always)]
    pub fn or(self, v: T) {
        // SAFETY: valid and aligned for 'a; an atomic or of a 32 or 64-bit
        // integer (`Word`), which BPF has.
        unsafe { atomic_or::<T, T, { Relaxed }>(self.ptr, v) };
    }

    /// Adds `v` atomically and returns the value before. SeqCst: LLVM's BPF
    /// backend lowers a relaxed fetch-add to the non-fetching `lock add` and
    /// returns garbage.
    #[inline(always)]
    pub fn fetch_add(self, v: T) -> T {
        // SAFETY: as in `add`; BPF_FETCH (target-cpu v3) returns the old value.
        unsafe { atomic_xadd::<T, T, { SeqCst }>(self.ptr, v) }
    }

    /// Stores `new` if the value is `old`: the value found, and whether it was
    /// `old` (and `new` stored).
    #[inline(always)]
    pub fn compare_exchange(self, old: T, new: T) -> (T, bool) {
        // SAFETY: valid and aligned for 'a; BPF_CMPXCHG on a 32 or 64-bit word.
        unsafe { atomic_cxchg::<T, { SeqCst }, { SeqCst }>(self.ptr, old, new) }
    }
}

/// A map's values as [`Shared`]: `CLIENTS.cell(pos)`, `BINDINGS.cell(&key)`.
/// The lookups are aya's; what is added is the lifetime and the accessors.
pub trait Cells<K, V> {
    /// The value at `key`, for as long as the map is borrowed.
    fn cell(&self, key: K) -> Option<Shared<'_, V>>;
}

impl<V> Cells<u32, V> for Array<V> {
    #[inline(always)]
    fn cell(&self, index: u32) -> Option<Shared<'_, V>> {
        match self.get_ptr_mut(index) {
            // SAFETY: a non-null pointer from the lookup helper to an aligned
            // value that lives as long as the map (see `Shared`).
            Some(p) => Some(unsafe { Shared::new(p) }),
            None => None,
        }
    }
}

/// A per-CPU array's value on this CPU ([`PerCpuArray`]): as a [`Shared`], but
/// updated by plain loads and stores, not atomics, since no other CPU touches
/// it. The datapath's programs run one at a time on a CPU (with
/// preemption disabled, or migration on PREEMPT_RT, where a program may be
/// interrupted by another and a count lost, as with any per-CPU counter).
pub struct Local<'a, T> {
    ptr: *mut T,
    _life: PhantomData<&'a T>,
}

impl<T> Clone for Local<'_, T> {
    #[inline(always)]
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Local<'_, T> {}

impl Local<'_, u64> {
    /// Adds `v` (a load, an add and a store: not atomic, nor need it be).
    #[inline(always)]
    pub fn add(self, v: u64) {
        // SAFETY: valid and aligned for 'a (from `cell`); plain data; a raw
        // place makes no reference to memory another program may write.
        unsafe { *self.ptr += v };
    }
}

/// This CPU's values of a per-CPU map, as [`Local`]: `STATS.cell(idx)`.
pub trait LocalCells<V> {
    fn cell(&self, index: u32) -> Option<Local<'_, V>>;
}

impl<V> LocalCells<V> for PerCpuArray<V> {
    #[inline(always)]
    fn cell(&self, index: u32) -> Option<Local<'_, V>> {
        // (A non-null pointer from the lookup helper to this CPU's copy, which
        // lives as long as the map, as for `Array`.)
        match self.get_ptr_mut(index) {
            Some(ptr) => Some(Local {
                ptr,
                _life: PhantomData,
            }),
            None => None,
        }
    }
}

impl<'k, K, V> Cells<&'k K, V> for HashMap<K, V> {
    #[inline(always)]
    fn cell(&self, key: &'k K) -> Option<Shared<'_, V>> {
        match self.get_ptr_mut(key) {
            // SAFETY: a non-null pointer from the lookup helper; the value stays
            // allocated for the program's run, deleted or not (RCU; see `Shared`).
            Some(p) => Some(unsafe { Shared::new(p) }),
            None => None,
        }
    }
}

impl<'k, K, V> Cells<&'k K, V> for LruHashMap<K, V> {
    #[inline(always)]
    fn cell(&self, key: &'k K) -> Option<Shared<'_, V>> {
        match self.get_ptr_mut(key) {
            // SAFETY: as for `HashMap` (an eviction frees after RCU too).
            Some(p) => Some(unsafe { Shared::new(p) }),
            None => None,
        }
    }
}

/// Reads a `$T` at `$offset` into a packet of `$data..$data_end` (addresses
/// from the context): `Some`, or `None` if it does not fit, or with `else` the
/// value of `$fallback` (TC: `bpf_skb_load_bytes`, which reads paged data too).
/// The check is the form the verifier follows: the packet pointer plus the
/// constant size, compared with `data_end`, before the load.
///
/// Packet memory is read in `$T`'s words whatever the address: the BPF machine
/// loads from any address (the verifier allows unaligned packet access where
/// it is cheap, and with NET_IP_ALIGN elsewhere the IP header is word
/// aligned); `$T`'s alignment only picks the width of the loads.
///
/// A macro, not a function: expanded in place, the programs compile to the
/// code they did with the check written out in `Packet::load`, while an
/// inlined function (or closure) changed the layout enough to cost the
/// verifier up to twice as much (TC egress on Linux 6.1).
macro_rules! load {
    ($T:ty, $data:expr, $data_end:expr, $offset:expr) => {{
        let start: usize = $data + $offset as usize;
        if start + core::mem::size_of::<$T>() > $data_end {
            None
        } else {
            // SAFETY: see `load_unchecked`.
            Some(unsafe { $crate::mem::load_unchecked::<$T>(start) })
        }
    }};
    ($T:ty, $data:expr, $data_end:expr, $offset:expr, else $fallback:expr) => {{
        let start: usize = $data + $offset as usize;
        if start + core::mem::size_of::<$T>() <= $data_end {
            // SAFETY: see `load_unchecked`.
            Some(unsafe { $crate::mem::load_unchecked::<$T>(start) })
        } else {
            $fallback
        }
    }};
}
pub(crate) use load;

/// # Safety
///
/// `start..start + size_of::<T>()` lies within a packet's linear data, which
/// the context says is readable for the program's run (what [`load!`] checks).
/// `T: Copy` is plain data (integers and arrays of them), so any bytes are a
/// value; the alignment is the machine's concern only (see [`load!`]).
#[doc(hidden)]
#[inline(always)]
pub unsafe fn load_unchecked<T: Copy>(start: usize) -> T {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::read(start as *const T) }
}

/// Reads the field `$field` of a TC program's skb (`skb_field!(ctx, mark)`),
/// for the fields the context does not wrap; the kernel rewrites the access to
/// the field of the real `sk_buff` it stands for.
///
/// A plain load, unlike map values': nothing else writes the skb while the
/// program runs, and the compiler keeps what it read (it reloads after a
/// helper call, which is given the pointer).
macro_rules! skb_field {
    ($ctx:expr, $field:ident) => {{
        let ctx: &aya_ebpf::programs::TcContext = $ctx;
        // SAFETY: the context pointer the program was called with, valid for
        // the run; a field read through the raw pointer makes no reference.
        unsafe { (*ctx.skb.skb).$field }
    }};
}
pub(crate) use skb_field;

/// Writes the field `$field` of a TC program's skb (one the verifier lets a
/// TC program write: `mark`, `priority`, ...); see [`skb_field!`].
macro_rules! set_skb_field {
    ($ctx:expr, $field:ident, $value:expr) => {{
        let ctx: &aya_ebpf::programs::TcContext = $ctx;
        let value = $value;
        // SAFETY: as in `skb_field!`; the field is plain data.
        unsafe { (*ctx.skb.skb).$field = value };
    }};
}
pub(crate) use set_skb_field;

/// CLOCK_MONOTONIC in nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments that cannot fail.
    unsafe { bpf_ktime_get_ns() }
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: cheaper, behind by up to a tick.
#[inline(always)]
pub fn coarse_ns() -> u64 {
    // SAFETY: a helper without arguments that cannot fail.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// `bpf_redirect(ifindex, 0)`: the TC action that sends the packet out of
/// `ifindex` (`TC_ACT_REDIRECT`, or `TC_ACT_SHOT` for a bad index).
#[inline(always)]
pub fn redirect(ifindex: u32) -> i32 {
    // SAFETY: a helper of two scalars; it only records where the packet goes.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// A counted reference to a socket from [`lookup_tcp`]. Not dropped: it must
/// be given back by [`Sock::release`] (the verifier refuses a program that
/// can return holding one, so a path that forgets fails to load).
pub struct Sock(NonNull<bpf_sock>);

/// `bpf_skc_lookup_tcp` of the tuple `t` (a `struct bpf_sock_tuple` half:
/// the IPv4 or the IPv6 one, by its size) in the packet's network namespace.
#[inline(always)]
pub fn lookup_tcp<T>(ctx: &TcContext, t: &mut T) -> Option<Sock> {
    // SAFETY: the helper reads `size_of::<T>()` bytes of `t`, a valid stack
    // value of that size, and returns a counted reference or null.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb as *mut c_void,
            t as *mut T as *mut bpf_sock_tuple,
            size_of::<T>() as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    // (A null pointer is `None`: the Option is the helper's own return value.)
    match NonNull::new(sk) {
        Some(sk) => Some(Sock(sk)),
        None => None,
    }
}

impl Sock {
    /// The socket's TCP state (`BPF_TCP_*`).
    #[inline(always)]
    pub fn state(&self) -> u32 {
        // SAFETY: the socket stays valid while the reference is held
        // (`release` takes it by value).
        unsafe { (*self.0.as_ptr()).state }
    }

    /// `bpf_sk_assign`: the packet is delivered to this socket; 0 on success.
    #[inline(always)]
    pub fn assign(&self, ctx: &TcContext) -> i64 {
        // SAFETY: the program's own skb and a socket whose reference is held.
        unsafe {
            bpf_sk_assign(
                ctx.skb.skb as *mut c_void,
                self.0.as_ptr() as *mut c_void,
                0,
            )
        }
    }

    /// Gives the reference back.
    #[inline(always)]
    pub fn release(self) {
        // SAFETY: a counted reference from the lookup, released once (by value).
        unsafe { bpf_sk_release(self.0.as_ptr() as *mut c_void) };
    }
}

/// The bytes of words as they are in memory (MAC addresses read as `u16`s).
#[inline(always)]
pub fn mac_bytes(words: [u16; 3]) -> [u8; 6] {
    // SAFETY: same size, no padding, and every bit pattern is a `[u8; 6]`.
    unsafe { core::mem::transmute::<[u16; 3], [u8; 6]>(words) }
}

/// The bytes of words as they are in memory (IPv6 addresses read as `u32`s).
#[inline(always)]
pub fn addr_bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, no padding, and every bit pattern is a `[u8; 16]`.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}
