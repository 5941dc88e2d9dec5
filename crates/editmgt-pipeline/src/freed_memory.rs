//! Handing freed memory back to the system.
//!
//! glibc's `malloc` keeps most freed blocks of a few megabytes in its heaps for reuse, and
//! returns them to the system only from the top of a heap. The transformer's weights are such
//! blocks, so dropping the transformer (as [`Editor::edit_once`](crate::Editor::edit_once) does)
//! frees them for the process but leaves them resident; the VQ decoder's large buffers are
//! mapped afresh and then sit on top of them. `malloc_trim` hands the free pages back.

/// Returns the allocator's free pages to the system where it keeps them (glibc's
/// `malloc_trim`); does nothing elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn return_to_system() {
    // SAFETY: `malloc_trim` only releases pages of free chunks; glibc allows it at any time and
    // from any thread. Its return value (whether anything was released) is not needed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Returns the allocator's free pages to the system where it keeps them (glibc's
/// `malloc_trim`); does nothing elsewhere.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn return_to_system() {}
