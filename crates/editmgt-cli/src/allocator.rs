//! The process allocator's settings for CPU runs.
//!
//! Every Burn operation on the `flex` CPU backend returns a new buffer, and the MGT's
//! activations are tens of megabytes each (`[2, 2304, 4096]` f32 is 75 MB). glibc's `malloc`
//! serves blocks that large with a fresh `mmap` and unmaps them on `free`, so every operation
//! pays page faults and page clearing for its output. Serving them from the heap and keeping
//! freed memory for reuse made the MGT forward bench about 15% faster (5.51 s -> 4.77 s,
//! `benches/README.md`). The price is that memory freed during a run is not handed back to the
//! system until the process ends, so `--low-memory` leaves the defaults alone.

/// Serves large blocks from the heap and keeps freed memory for reuse (glibc on Linux); does
/// nothing elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    // SAFETY: `mallopt` only changes allocator parameters; it is called at start-up, before
    // any other thread exists. A refused setting (return value 0) leaves the default in place,
    // which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Serves large blocks from the heap and keeps freed memory for reuse (glibc on Linux); does
/// nothing elsewhere.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}
