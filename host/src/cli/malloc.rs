//! How the process's allocator keeps freed memory.
//!
//! glibc's malloc hands large freed blocks back to the system at once (its
//! trim and mmap thresholds start at 128 KiB), so a host moving payloads of
//! hundreds of KiB faulted fresh pages in for every copy of every message:
//! at 256 KiB a message cost the host 352 µs of CPU, and 234 µs with freed
//! memory kept (docs/performance.md, payload sizes). `jetplug-bench` sets
//! the same for its native consumer, so the two are compared alike.

/// Keeps memory the process freed for reuse, up to 256 MiB, and serves
/// blocks under 32 MiB from the heap. Call first thing in `main`, before
/// any thread starts. `GLIBC_TUNABLES` with malloc settings of its own
/// wins; elsewhere than glibc it does nothing.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."));
    if tuned {
        return;
    }
    // SAFETY: mallopt only sets two of malloc's thresholds; the caller
    // runs it before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// Does nothing: the thresholds are glibc's.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
