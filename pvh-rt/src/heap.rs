//! The heap: talc over the arena the linker script reserves (`.heap`,
//! `HEAP_SIZE` in `pvh.ld`, 32 MiB, NOLOAD), the global allocator when
//! the `heap` feature is on (the default).
//!
//! Everything xenblk allocates comes from here, including the pages it
//! shares with backends (`Hal::alloc_pages`) and the frames `pvh` maps
//! Xen's `shared_info` and grant table over. The arena is identity-mapped,
//! so a page's guest frame number is its address >> 12.

use core::ptr::addr_of_mut;

#[cfg(feature = "heap")]
use talc::source::Claim;
#[cfg(feature = "heap")]
use talc::TalcLock;

#[cfg(feature = "heap")]
#[global_allocator]
static ALLOCATOR: TalcLock<spinning_top::RawSpinlock, Claim> = TalcLock::new(Claim::standby());

extern "C" {
    /// First byte of the arena (linker script).
    static mut __heap_start: u8;
    /// One past the arena (linker script).
    static mut __heap_end: u8;
}

/// The arena: its first byte and its size, for an allocator of the
/// unikernel's own (with the `heap` feature off).
pub fn arena() -> (*mut u8, usize) {
    (bounds().0, arena_size())
}

/// Size of the heap arena in bytes.
pub fn arena_size() -> usize {
    let (start, end) = bounds();
    end as usize - start as usize
}

fn bounds() -> (*mut u8, *mut u8) {
    (addr_of_mut!(__heap_start), addr_of_mut!(__heap_end))
}

/// Hands the arena to the allocator (the platform's entry does it, before
/// the unikernel's `main`).
#[cfg(feature = "heap")]
///
/// # Safety
///
/// Call once, before the first allocation; nothing else uses the arena.
pub(crate) unsafe fn init() {
    let (start, _) = bounds();
    // SAFETY: the arena is ours alone (linker script), writable, and mapped;
    // the caller promises this runs once.
    let claimed = unsafe { ALLOCATOR.lock().claim(start, arena_size()) };
    if claimed.is_none() {
        panic!("heap: talc refused the {} byte arena", arena_size());
    }
}
