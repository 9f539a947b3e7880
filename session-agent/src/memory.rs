//! Keeping the daemon's resident memory close to what it actually holds.
//!
//! glibc raises its mmap threshold each time a large block is freed, so after a
//! few big temporary buffers (a commit of every session, a poll of every device)
//! later large blocks come from the heap and their pages stay resident after they
//! are freed. A fixed threshold keeps large blocks in their own mappings, which go
//! back to the system when freed; a trim after bulk work returns freed heap pages.

/// Large blocks (at least this many bytes) get their own mapping.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: i32 = 256 * 1024;

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
