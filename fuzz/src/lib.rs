//! What every fuzz target shares: a cap on the size of any one allocation, and reading
//! the input as text.
//!
//! libFuzzer's `-malloc_limit_mb` works through a sanitizer's malloc hooks, and the
//! targets are built with `--sanitizer none` (stable Rust has no sanitizer runtime to
//! hook), so the cap is enforced here instead: each target installs [`Capped`] as its
//! global allocator, which refuses any single allocation above its cap
//! ([`MAX_ALLOCATION`] unless the target says otherwise). Rust then aborts with "memory
//! allocation of N bytes failed", which libFuzzer reports as a crash and saves the input
//! for. The total stays bounded by `-rss_limit_mb`.

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a target may make. Inputs are a few KiB
/// (`-max_len`), so anything near this size is an input that makes the code under test
/// allocate out of proportion to what it was given.
pub const MAX_ALLOCATION: usize = 64 * 1024 * 1024;

/// The system allocator, refusing allocations above `MAX` bytes.
pub struct Capped<const MAX: usize>;

// SAFETY: every call is passed to `System` unchanged, except that over-large requests
// get a null pointer, which `GlobalAlloc` allows for any failed allocation.
unsafe impl<const MAX: usize> GlobalAlloc for Capped<MAX> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller upholds `realloc`'s contract, which `System` shares.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Installs [`Capped`] as the target's global allocator, with [`MAX_ALLOCATION`] or the
/// cap given. Each target calls this once, at the top level.
#[macro_export]
macro_rules! cap_allocations {
    () => {
        $crate::cap_allocations!($crate::MAX_ALLOCATION);
    };
    ($max:expr) => {
        #[global_allocator]
        static ALLOCATOR: $crate::Capped<{ $max }> = $crate::Capped;
    };
}

/// The input as text, or None when it is not UTF-8 (the parsers these targets reach are
/// given `&str`, which the HTTP layer has already checked).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
