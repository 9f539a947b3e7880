//! Keeping the daemon's resident memory close to what it actually holds.
//!
//! glibc raises its mmap threshold each time a large block is freed, so after a
//! few big temporary buffers (a commit of every session, a poll of every device)
//! later large blocks come from the heap and their pages stay resident after they
//! are freed. A fixed threshold keeps large blocks in their own mappings, which go
//! back to the system when freed; a trim after bulk work returns freed heap pages.
//!
//! The daemon's largest tables (the indexes of devices and sessions, the session
//! records at tens of thousands of devices) sit in 2 MiB pages where the kernel
//! has them ([`Allocator`]). A poll wakes every 250 ms and touches a few entries
//! of each table, spread over it by the hash; after a sleep each 4 KiB page it
//! touches can cost microseconds to reach again (a TLB and page-walk miss that a
//! virtual machine pays twice), where one 2 MiB page covers five hundred of them.

use std::alloc::{GlobalAlloc, Layout, System};

/// Large blocks (at least this many bytes) get their own mapping.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// The size of a transparent huge page on the targets the daemon runs on.
const HUGE_PAGE: usize = 2 << 20;

/// The system's page size (4 KiB on x86-64; 4, 16 or 64 KiB on arm64).
fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; it allocates nothing.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096)
}

/// The daemon's global allocator: the system's, except that a block of at least
/// one huge page gets a mapping of its own, aligned to 2 MiB, whose whole huge
/// pages are marked for transparent huge pages (`MADV_HUGEPAGE`). The rest of
/// such a block, under 2 MiB, keeps small pages, so no block holds more memory
/// resident than it touches plus less than one huge page. Where the kernel has
/// no transparent huge pages (or they are off) the advice fails and the block
/// is an ordinary mapping. Binaries opt in with `#[global_allocator]`.
pub struct Allocator;

/// Whether `layout` is served by a mapping of its own.
fn huge(layout: Layout) -> bool {
    layout.size() >= HUGE_PAGE && layout.align() <= HUGE_PAGE
}

/// A 2 MiB-aligned anonymous mapping of `size` bytes (zeroed), or null.
fn map_huge(size: usize) -> *mut u8 {
    let len = size.next_multiple_of(page_size());
    // Room to slide the start to the next 2 MiB boundary.
    let Some(span) = len.checked_add(HUGE_PAGE) else {
        return std::ptr::null_mut();
    };
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let base = raw as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let head = start - base;
    let tail = span - head - len;
    // SAFETY: both ranges lie inside the mapping made above and outside the
    // block handed out; unmapping them only gives back address space.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    let whole = len / HUGE_PAGE * HUGE_PAGE;
    // SAFETY: advice on the block's own whole huge pages; it changes how the
    // kernel backs them, never their contents. A kernel without transparent
    // huge pages answers EINVAL, and the block stays in small pages.
    unsafe {
        libc::madvise(start as *mut libc::c_void, whole, libc::MADV_HUGEPAGE);
    }
    start as *mut u8
}

// SAFETY: blocks of huge layouts come from `map_huge` and go back through
// `munmap` with the length they were mapped with (the layout's size, which the
// caller passes back unchanged); every other block is the system allocator's.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if huge(layout) {
            map_huge(layout.size())
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if huge(layout) {
            // A fresh anonymous mapping is zeroed by the kernel.
            map_huge(layout.size())
        } else {
            // SAFETY: the caller's layout, passed on.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if huge(layout) {
            // SAFETY: `ptr` is a block of `map_huge` of this size (the caller's
            // contract), mapped with the size rounded up to a page.
            unsafe {
                libc::munmap(
                    ptr as *mut libc::c_void,
                    layout.size().next_multiple_of(page_size()),
                );
            }
        } else {
            // SAFETY: the caller's block and layout, passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !huge(layout) && !huge(new) {
            // SAFETY: the caller's block, layout and size, passed on.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new` is a valid non-zero layout (the caller's contract).
        let to = unsafe { self.alloc(new) };
        if !to.is_null() {
            // SAFETY: both blocks are live and distinct, each at least this long.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, to, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        to
    }
}

/// Sets the allocator up for a long-running daemon. Call once at start.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes glibc's allocator settings.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Returns freed heap memory to the system, after bulk work.
pub fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kB of `AnonHugePages` of the mapping that holds `addr`, from smaps.
    fn huge_kb_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let range = line
                .split_once(' ')
                .and_then(|(range, _)| range.split_once('-'))
                .and_then(|(a, b)| {
                    Some((
                        usize::from_str_radix(a, 16).ok()?,
                        usize::from_str_radix(b, 16).ok()?,
                    ))
                });
            if let Some((a, b)) = range {
                inside = (a..b).contains(&addr);
            } else if let Some(v) = line.strip_prefix("AnonHugePages:").filter(|_| inside) {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    fn thp_available() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|s| !s.contains("[never]"))
    }

    #[test]
    fn a_block_of_a_huge_page_or_more_starts_on_a_2_mib_boundary_zeroed_and_in_huge_pages() {
        let size = 5 * HUGE_PAGE + 12_345;
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: a non-zero layout; the block is freed below with it.
        let p = unsafe { Allocator.alloc_zeroed(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % HUGE_PAGE, 0, "aligned to 2 MiB");
        // SAFETY: the block is `size` bytes long and live.
        let block = unsafe { std::slice::from_raw_parts_mut(p, size) };
        assert!(block.iter().all(|&b| b == 0), "zeroed");
        block.fill(7);
        if thp_available() {
            // Five whole huge pages were advised; the kernel may fall back to
            // small pages under fragmentation, but not for all five here.
            let kb = huge_kb_at(p as usize);
            assert!(kb >= 2048, "AnonHugePages of the block: {kb} kB");
        } else {
            eprintln!("transparent huge pages are off here: alignment checked only");
        }
        // SAFETY: the block and its layout, from the alloc above.
        unsafe { Allocator.dealloc(p, layout) };
    }

    #[test]
    fn a_block_keeps_its_bytes_when_it_grows_into_or_shrinks_out_of_a_mapping_of_its_own() {
        let small = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: non-zero layouts; each block is freed with its own layout.
        unsafe {
            let p = Allocator.alloc(small);
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            let big = 3 * HUGE_PAGE;
            let q = Allocator.realloc(p, small, big);
            assert_eq!(q as usize % HUGE_PAGE, 0);
            assert!((0..1000).all(|i| *q.add(i) == i as u8), "grown: bytes kept");
            *q.add(big - 1) = 9;
            let r = Allocator.realloc(q, Layout::from_size_align(big, 8).unwrap(), 500);
            assert!((0..500).all(|i| *r.add(i) == i as u8), "shrunk: bytes kept");
            Allocator.dealloc(r, Layout::from_size_align(500, 8).unwrap());
        }
    }
}
