//! `io/blkif.h`: block-device requests, responses and constants (x86_64
//! layout), and the slot count of a blkif shared ring (`io/ring.h`,
//! `DEFINE_RING_TYPES(blkif, ...)`).

use core::mem::{align_of, offset_of, size_of};

use crate::abi::sring::ring_slots;
use crate::hal::PAGE_SIZE;

/// `BLKIF_OP_READ`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`.
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_RESERVED_1`: reserved, never sent.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// `BLKIF_OP_DISCARD`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`.
pub const BLKIF_OP_INDIRECT: u8 = 6;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// `BLKIF_DISCARD_SECURE`.
pub const BLKIF_DISCARD_SECURE: u8 = 1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// `BLKIF_RSP_ERROR`.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `VDISK_CDROM` bit of the `info` key.
pub const VDISK_CDROM: u32 = 0x1;
/// `VDISK_REMOVABLE` bit of the `info` key.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `VDISK_READONLY` bit of the `info` key.
pub const VDISK_READONLY: u32 = 0x4;

bitflags::bitflags! {
    /// The backend's `info` key (`VDISK_*` bits). Bits this type does not
    /// name are kept as the backend wrote them.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct VdiskInfo: u32 {
        /// [`VDISK_CDROM`].
        const CDROM = VDISK_CDROM;
        /// [`VDISK_REMOVABLE`].
        const REMOVABLE = VDISK_REMOVABLE;
        /// [`VDISK_READONLY`].
        const READONLY = VDISK_READONLY;
        // Bits of later versions, or a backend's own.
        const _ = !0;
    }
}

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestSegment {
    /// Grant reference of the data frame.
    pub gref: u32,
    /// First 512-byte sector in the frame (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector in the frame (inclusive).
    pub last_sect: u8,
}

/// `struct blkif_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Number of segments.
    pub nr_segments: u8,
    /// Device handle (`blkif_vdev_t`).
    pub handle: u16,
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector on disk.
    pub sector_number: u64,
    /// Segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_request_discard`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestDiscard {
    /// `BLKIF_OP_DISCARD`.
    pub operation: u8,
    /// `BLKIF_DISCARD_SECURE` or 0.
    pub flag: u8,
    /// Device handle.
    pub handle: u16,
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Number of sectors.
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect` (x86_64 layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Number of segments (in the indirect pages).
    pub nr_segments: u16,
    /// Private guest value, echoed in the response.
    pub id: u64,
    /// Start sector.
    pub sector_number: u64,
    /// Device handle.
    pub handle: u16,
    /// Grant references of the pages holding the segments.
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

/// Words in one [`RequestSlot`].
pub const REQUEST_SLOT_WORDS: usize = size_of::<BlkifRequest>() / 8;

/// One request slot of a blkif ring as plain 8-byte words: room for the
/// largest request layout, `struct blkif_request` (112 bytes on x86_64);
/// `blkif_request_indirect` and `blkif_request_discard` overlay it. The
/// driver encodes requests into it field by field (`blkfront::wire`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestSlot(pub [u64; REQUEST_SLOT_WORDS]);

const _: () = assert!(size_of::<BlkifRequest>() % 8 == 0);
const _: () = assert!(size_of::<RequestSlot>() == size_of::<BlkifRequest>());

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkifResponse {
    /// Copied from the request.
    pub id: u64,
    /// Copied from the request.
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

/// Size of one slot of a blkif ring: `sizeof(union blkif_sring_entry)`, the
/// larger of a request and a response, rounded up to their alignment.
pub const BLKIF_RING_SLOT_SIZE: usize = {
    let size = if size_of::<BlkifRequest>() > size_of::<BlkifResponse>() {
        size_of::<BlkifRequest>()
    } else {
        size_of::<BlkifResponse>()
    };
    let align = if align_of::<BlkifRequest>() > align_of::<BlkifResponse>() {
        align_of::<BlkifRequest>()
    } else {
        align_of::<BlkifResponse>()
    };
    size.div_ceil(align) * align
};

/// Slots of a blkif ring of `1 << order` pages
/// (`__CONST_RING_SIZE(blkif, XEN_PAGE_SIZE << order)`): 32 for one page.
/// Returns 0 for an order whose ring size overflows `usize`.
pub const fn blkif_ring_slots(order: u32) -> usize {
    match 1usize.checked_shl(order) {
        Some(pages) => match pages.checked_mul(PAGE_SIZE) {
            Some(bytes) => ring_slots(bytes, BLKIF_RING_SLOT_SIZE),
            None => 0,
        },
        None => 0,
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<BlkifRequestSegment>() == 8);
const _: () = assert!(offset_of!(BlkifRequestSegment, gref) == 0);
const _: () = assert!(offset_of!(BlkifRequestSegment, first_sect) == 4);
const _: () = assert!(offset_of!(BlkifRequestSegment, last_sect) == 5);

const _: () = assert!(size_of::<BlkifRequest>() == 112);
const _: () = assert!(offset_of!(BlkifRequest, operation) == 0);
const _: () = assert!(offset_of!(BlkifRequest, nr_segments) == 1);
const _: () = assert!(offset_of!(BlkifRequest, handle) == 2);
const _: () = assert!(offset_of!(BlkifRequest, id) == 8);
const _: () = assert!(offset_of!(BlkifRequest, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequest, seg) == 24);

const _: () = assert!(size_of::<BlkifRequestDiscard>() == 32);
const _: () = assert!(offset_of!(BlkifRequestDiscard, operation) == 0);
const _: () = assert!(offset_of!(BlkifRequestDiscard, flag) == 1);
const _: () = assert!(offset_of!(BlkifRequestDiscard, handle) == 2);
const _: () = assert!(offset_of!(BlkifRequestDiscard, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestDiscard, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);

const _: () = assert!(size_of::<BlkifRequestIndirect>() == 64);
const _: () = assert!(offset_of!(BlkifRequestIndirect, operation) == 0);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_op) == 1);
const _: () = assert!(offset_of!(BlkifRequestIndirect, nr_segments) == 2);
const _: () = assert!(offset_of!(BlkifRequestIndirect, id) == 8);
const _: () = assert!(offset_of!(BlkifRequestIndirect, sector_number) == 16);
const _: () = assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
const _: () = assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);

const _: () = assert!(size_of::<BlkifResponse>() == 16);
const _: () = assert!(offset_of!(BlkifResponse, id) == 0);
const _: () = assert!(offset_of!(BlkifResponse, operation) == 8);
const _: () = assert!(offset_of!(BlkifResponse, status) == 10);

// Every request variant fits a slot, and `id` sits at the same offset in all.
const _: () = assert!(BLKIF_RING_SLOT_SIZE == 112);
const _: () = assert!(size_of::<BlkifRequestDiscard>() <= BLKIF_RING_SLOT_SIZE);
const _: () = assert!(size_of::<BlkifRequestIndirect>() <= BLKIF_RING_SLOT_SIZE);
const _: () = assert!(offset_of!(BlkifRequestDiscard, id) == offset_of!(BlkifRequest, id));
const _: () = assert!(offset_of!(BlkifRequestIndirect, id) == offset_of!(BlkifRequest, id));

// Slots per ring order (io/ring.h: (4096 << order - 64) / 112, rounded down
// to a power of two).
const _: () = assert!(blkif_ring_slots(0) == 32);
const _: () = assert!(blkif_ring_slots(1) == 64);
const _: () = assert!(blkif_ring_slots(2) == 128);
const _: () = assert!(blkif_ring_slots(3) == 256);
const _: () = assert!(blkif_ring_slots(4) == 512);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_slots_follow_ring_h() {
        for order in 0..=10u32 {
            let bytes = PAGE_SIZE << order;
            let fit = (bytes - 64) / 112;
            let slots = blkif_ring_slots(order);
            assert!(slots.is_power_of_two(), "order {order}: {slots}");
            assert!(
                slots <= fit && fit < 2 * slots,
                "order {order}: {slots} vs {fit}"
            );
        }
    }

    #[test]
    fn absurd_orders_give_zero_slots() {
        assert_eq!(blkif_ring_slots(usize::BITS), 0);
        assert_eq!(blkif_ring_slots(u32::MAX), 0);
        assert_eq!(blkif_ring_slots(usize::BITS - 1), 0);
    }
}
