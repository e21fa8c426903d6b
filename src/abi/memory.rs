//! `memory.h`: `XENMEM_add_to_physmap`, with which an HVM/PVH guest places
//! the shared-info page and the grant-table frames in its physical memory.
#![allow(non_upper_case_globals)]

use core::mem::{offset_of, size_of};

use crate::hal::{DomId, Gfn};

/// `XENMEM_add_to_physmap`: `__HYPERVISOR_memory_op` command taking a
/// [`XenAddToPhysmap`].
pub const XENMEM_add_to_physmap: u32 = 7;
/// `XENMEM_remove_from_physmap`: undo a mapping (`struct
/// xen_remove_from_physmap`).
pub const XENMEM_remove_from_physmap: u32 = 15;

// ----- enum phys_map_space -------------------------------------------------------------

/// `XENMAPSPACE_shared_info`: map the shared-info page (`idx` 0).
pub const XENMAPSPACE_shared_info: u32 = 0;
/// `XENMAPSPACE_grant_table`: map grant-table frame `idx`.
pub const XENMAPSPACE_grant_table: u32 = 1;
/// `XENMAPSPACE_gmfn`.
pub const XENMAPSPACE_gmfn: u32 = 2;
/// `XENMAPSPACE_gmfn_range`.
pub const XENMAPSPACE_gmfn_range: u32 = 3;
/// `XENMAPIDX_grant_table_status`: or'd into `idx` to map a v2 status frame.
pub const XENMAPIDX_grant_table_status: u64 = 0x8000_0000;

/// `struct xen_add_to_physmap` (x86_64: `xen_ulong_t` and `xen_pfn_t` are
/// 64-bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenAddToPhysmap {
    /// The domain whose physical map changes (`DOMID_SELF`).
    pub domid: u16,
    /// Pages to go through, for `XENMAPSPACE_gmfn_range` only.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space (grant-table frame number, 0 for shared info).
    pub idx: u64,
    /// Guest frame number where the page appears.
    pub gpfn: u64,
}

impl XenAddToPhysmap {
    /// The argument for placing page `idx` of `space` (`XENMAPSPACE_*`) of
    /// this domain at guest frame `gpfn`.
    pub fn new(space: u32, idx: u64, gpfn: Gfn) -> Self {
        XenAddToPhysmap {
            domid: DomId::SELF.0,
            size: 0,
            space,
            idx,
            gpfn: gpfn.0,
        }
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<XenAddToPhysmap>() == 24);
const _: () = assert!(offset_of!(XenAddToPhysmap, domid) == 0);
const _: () = assert!(offset_of!(XenAddToPhysmap, size) == 2);
const _: () = assert!(offset_of!(XenAddToPhysmap, space) == 4);
const _: () = assert!(offset_of!(XenAddToPhysmap, idx) == 8);
const _: () = assert!(offset_of!(XenAddToPhysmap, gpfn) == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_to_physmap_for_self() {
        let a = XenAddToPhysmap::new(XENMAPSPACE_grant_table, 2, Gfn(0x1234));
        assert_eq!(a.domid, 0x7ff0);
        assert_eq!((a.size, a.space, a.idx, a.gpfn), (0, 1, 2, 0x1234));
    }
}
