//! Shared-memory view of a BPF_F_MMAPABLE array map.

use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
    ptr::NonNull,
};

use aya::maps::MapData;

use crate::error::{AgentError, Result};

/// An mmap of (a range of) a BPF array whose values are `T`: reads and writes
/// need no syscall.
///
/// The kernel updates the memory concurrently, so values are only accessed
/// through raw pointers (volatile copies, atomics), never through references.
/// The kernel maps every page of the range at once, so a mapping counts fully
/// towards the process's resident memory: arrays read only now and then are
/// mapped for that moment ([`MmapArray::map_range`]).
pub struct MmapArray<T> {
    /// Start of the mapping (page aligned).
    base: NonNull<u8>,
    /// Index of the first entry in range, and its byte offset from `base`.
    first: u32,
    skew: usize,
    len: u32,
    bytes: usize,
    _t: PhantomData<T>,
}

// SAFETY: the mapping is shared memory accessed only through raw pointers
// (atomics and volatile copies), from any thread alike.
unsafe impl<T> Send for MmapArray<T> {}
// SAFETY: as for Send: no access goes through a reference to a `T`.
unsafe impl<T> Sync for MmapArray<T> {}

impl<T: Copy> MmapArray<T> {
    /// Maps `len` entries of the array map behind `fd`.
    pub fn map(fd: BorrowedFd<'_>, len: u32, what: &str) -> Result<Self> {
        Self::map_range(fd, 0, len, what)
    }

    /// Maps entries `first..first + len` of the array map behind `fd` (the
    /// pages that hold them).
    pub fn map_range(fd: BorrowedFd<'_>, first: u32, len: u32, what: &str) -> Result<Self> {
        // The kernel lays the values out at 8-byte strides; our types are already multiples of 8.
        const { assert!(size_of::<T>().is_multiple_of(8)) };
        // SAFETY: sysconf reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let start = size_of::<T>() * first as usize;
        let offset = start / page * page;
        let end = (start + size_of::<T>() * len.max(1) as usize).div_ceil(page) * page;
        let bytes = end - offset;
        // SAFETY: a new shared mapping of the map's fd at a page-aligned
        // offset, which the kernel checks against the map's size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AgentError::from_io(
                format!("mmap of map {what}"),
                std::io::Error::last_os_error(),
            ));
        }
        let Some(base) = NonNull::new(p.cast()) else {
            return Err(AgentError::from_io(
                format!("mmap of map {what} returned no address"),
                std::io::ErrorKind::InvalidData.into(),
            ));
        };
        Ok(Self {
            base,
            first,
            skew: start - offset,
            len,
            bytes,
            _t: PhantomData,
        })
    }

    /// Maps the first `len` entries of the array pinned as `dir/name`.
    pub fn open_pin(dir: &Path, name: &str, len: u32) -> Result<Self> {
        Self::map(open_pinned(dir, name)?.fd().as_fd(), len, name)
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pointer to entry `i` (an index into the whole array); panics when out of range.
    pub fn entry(&self, i: u32) -> *mut T {
        assert!(
            i >= self.first && i - self.first < self.len,
            "index {i} outside {}..{}",
            self.first,
            self.first + self.len
        );
        let at = self.skew + (i - self.first) as usize * size_of::<T>();
        // SAFETY: `i` is in range (checked above), so `at` lies inside the mapping.
        unsafe { self.base.as_ptr().add(at).cast() }
    }

    /// A copy of entry `i` (fields may be mid-update individually, never torn within a u64).
    pub fn get(&self, i: u32) -> T {
        // SAFETY: `entry` checked the bounds of the live mapping; the copy is
        // volatile because the kernel writes the memory concurrently.
        unsafe { std::ptr::read_volatile(self.entry(i)) }
    }

    /// Overwrites entry `i` (a volatile write: nobody else may be writing it).
    pub fn set(&self, i: u32, value: T) {
        // SAFETY: as for `get`; the callers own the entry while they reset it.
        unsafe { self.entry(i).write_volatile(value) }
    }
}

/// An atomic view of memory shared with the datapath: field `$field` of
/// entry `$i` of the [`MmapArray`] `$array` as a `std::sync::atomic::$atomic`
/// (`cell!(clients, pos, flags: AtomicU32)`), or the whole entry of an array
/// of `u64` (`cell!(slots, slot => AtomicU64)`). The one place the agent turns
/// the shared maps into references.
macro_rules! cell {
    ($array:expr, $i:expr, $field:ident : $atomic:ident) => {{
        let entry = $array.entry($i);
        // SAFETY: `entry` checked that `$i` lies in the live MAP_SHARED
        // mapping, which the borrow of `$array` keeps mapped; the field lies
        // inside the entry and is naturally aligned (the shared types are
        // repr(C) of u32/u64 fields at 8-byte strides); the kernel and every
        // process touch it only through atomics.
        unsafe { ::std::sync::atomic::$atomic::from_ptr(&raw mut (*entry).$field) }
    }};
    ($array:expr, $i:expr, $outer:ident . $field:ident : $atomic:ident) => {{
        let entry = $array.entry($i);
        // SAFETY: as above, for a field of a struct field of the entry.
        unsafe { ::std::sync::atomic::$atomic::from_ptr(&raw mut (*entry).$outer.$field) }
    }};
    ($array:expr, $i:expr => $atomic:ident) => {{
        let entry = $array.entry($i);
        // SAFETY: as above, for an entry that is a whole u64.
        unsafe { ::std::sync::atomic::$atomic::from_ptr(entry) }
    }};
}
pub(crate) use cell;

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map_range`, once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// The map pinned as `dir/name`.
pub fn open_pinned(dir: &Path, name: &str) -> Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path)
        .map_err(|e| AgentError::bpf(format!("opening pinned map {}", path.display()), e))
}
