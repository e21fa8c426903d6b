//! The heap: every page of RAM the loader's memory map gives the guest
//! above the image (up to 4 GiB, the identity map), less what the loader
//! placed there (start info, command line, modules); see
//! [`crate::memmap`]. With the `heap` feature (the default) talc over
//! those regions is the global allocator; without it, bring your own over
//! [`regions`].
//!
//! So the heap grows with the xl config's `memory`: nothing in the linker
//! script fixes its size. Everything xenblk allocates comes from here,
//! including the pages it shares with backends (`Hal::alloc_pages`) and
//! the frames `pvh` maps Xen's `shared_info` and grant table over. The
//! regions are identity-mapped, so a page's guest frame number is its
//! address >> 12.

use spin::Once;

use crate::memmap::{Plan, Region};

#[cfg(feature = "heap")]
use talc::source::Claim;
#[cfg(feature = "heap")]
use talc::TalcLock;

#[cfg(feature = "heap")]
#[global_allocator]
static ALLOCATOR: TalcLock<spinning_top::RawSpinlock, Claim> = TalcLock::new(Claim::standby());

/// The regions, fixed at boot.
static PLAN: Once<Plan> = Once::new();

/// The heap's regions: page-aligned, disjoint, identity-mapped RAM that
/// nothing else uses (empty before the platform's entry has run).
pub fn regions() -> &'static [Region] {
    PLAN.get().map_or(&[], Plan::regions)
}

/// The largest region, as a pointer and a length, for an allocator of the
/// unikernel's own (with the `heap` feature off); `None` when the loader
/// gave no memory map.
pub fn arena() -> Option<(*mut u8, usize)> {
    let r = PLAN.get()?.largest()?;
    Some((r.start as usize as *mut u8, r.len() as usize))
}

/// Bytes in all regions.
pub fn arena_size() -> usize {
    PLAN.get().map_or(0, |p| p.total() as usize)
}

/// Fixes the regions (the platform's entry, once, before `main`).
pub(crate) fn set_plan(plan: Plan) {
    PLAN.call_once(|| plan);
}

/// Hands every region to the allocator (the platform's entry does it,
/// before the unikernel's `main`). Panics (the panic handler needs no
/// heap) when there is nothing to hand.
///
/// # Safety
///
/// Call once, after [`set_plan`] and before the first allocation; nothing
/// else uses the regions.
#[cfg(feature = "heap")]
pub(crate) unsafe fn init() {
    let regions = regions();
    if regions.is_empty() {
        panic!("heap: the loader's memory map gives no RAM above the image (start info version 0 or no map?)");
    }
    for r in regions {
        // SAFETY: each region is RAM no one else uses, mapped and writable
        // (memmap::plan, the boot code's identity map); the caller
        // promises this runs once.
        let claimed = unsafe {
            ALLOCATOR
                .lock()
                .claim(r.start as usize as *mut u8, r.len() as usize)
        };
        if claimed.is_none() {
            panic!("heap: talc refused the region {:#x}..{:#x}", r.start, r.end);
        }
    }
}
