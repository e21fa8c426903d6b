//! The simulated backend's own reading of a request slot and of indirect
//! pages, written from `io/blkif.h` and nothing else.
//!
//! A test double that decodes with the code it checks cannot catch an
//! encoding bug: if the driver put a field at the wrong offset, both ends
//! would agree. So nothing here comes from `crate::blkfront` (nor from
//! `offset_of!` on the crate's `abi` structs): every field is read at the
//! byte offset the C compiler gives it on x86_64, written out as a number
//! next to the header's declaration. The tests decode the driver's encoders'
//! output with this decoder field by field: a disagreement is a bug on one
//! side or the other.
//!
//! # Layout (x86_64)
//!
//! Little-endian; `blkif_vdev_t` is `uint16_t`, `blkif_sector_t` is
//! `uint64_t` (both `#define`d at the top of `io/blkif.h`), `grant_ref_t`
//! is `uint32_t` (`grant_table.h`). `uint64_t` is 8-aligned, so every
//! layout pads to offset 8 before `id`. A ring slot is
//! `sizeof(union blkif_sring_entry)` = `sizeof(struct blkif_request)` = 112
//! bytes; the other two request layouts overlay its start.
//!
//! ```text
//! off  struct blkif_request   struct blkif_request_indirect   struct blkif_request_discard
//!   0  u8  operation          u8  operation (6)                u8  operation (5)
//!   1  u8  nr_segments        u8  indirect_op                  u8  flag
//!   2  u16 handle             u16 nr_segments                  u16 handle
//!   4  (4 bytes padding)      (4 bytes padding)                (4 bytes padding)
//!   8  u64 id                 u64 id                           u64 id
//!  16  u64 sector_number      u64 sector_number                u64 sector_number
//!  24  seg[11], 8 bytes each  u16 handle                       u64 nr_sectors
//!  26                         (2 bytes padding)                (32: end)
//!  28                         u32 indirect_grefs[8]
//!  60                         (4 bytes padding; 64: end)
//! 112  end
//!
//! struct blkif_request_segment, 8 bytes (also each entry of an indirect page):
//!   0  u32 gref   4  u8 first_sect   5  u8 last_sect   6  (2 bytes padding)
//! ```
//!
//! On i386 `uint64_t` is only 4-aligned: `id` sits at 4, `sector_number` at
//! 12 and `seg` at 20 (108 bytes), and `struct blkif_request_indirect` has
//! its `#ifdef __i386__` `uint64_t pad` to stay 64 bytes. The simulator
//! speaks only the native x86_64 layout (it refuses `protocol` values other
//! than `x86_64-abi`), so none of that is decoded here.
//!
//! # Malformed requests
//!
//! Every byte pattern decodes to a [`Request`]. What the slot alone shows to
//! be impossible to carry out becomes [`Request::Malformed`], which every
//! personality answers with `BLKIF_RSP_ERROR` (the structural checks of
//! Linux's `dispatch_rw_block_io`): more than 11 segments in a direct
//! request, an indirect request that is neither a read nor a write, or one
//! with no segments or more than eight indirect pages hold. Checks that need
//! the backend's configuration or the disk (segment sector ranges, the
//! advertised indirect limit, read-only disks, the end of the disk:
//! `xen_vbd_translate`) stay in `request`.

use core::mem::size_of;

use crate::abi::blkif::{
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RING_SLOT_SIZE,
};
use crate::hal::PAGE_SIZE;

/// Bytes of one ring slot: `sizeof(union blkif_sring_entry)` on x86_64, the
/// size of `struct blkif_request` (24 bytes of header and 11 segments of 8).
pub(crate) const SLOT_SIZE: usize = 112;

/// `sizeof(struct blkif_request_segment)`: a `grant_ref_t`, two `uint8_t`
/// and 2 bytes of padding to the struct's 4-byte alignment.
pub(crate) const SEGMENT_SIZE: usize = 8;

/// Segment descriptors in one indirect page:
/// `PAGE_SIZE / sizeof(struct blkif_request_segment)` (`io/blkif.h`,
/// `BLKIF_OP_INDIRECT`).
pub(crate) const SEGS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / SEGMENT_SIZE;

/// The most segments an indirect request can describe: what
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages hold (Linux's
/// `MAX_INDIRECT_SEGMENTS`).
pub(crate) const MAX_INDIRECT_SEGMENTS: usize =
    SEGS_PER_INDIRECT_PAGE * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;

// The numbers above against the crate's abi module (itself checked against
// the C header by tests/abi_layout.rs).
const _: () = assert!(SLOT_SIZE == BLKIF_RING_SLOT_SIZE);
const _: () = assert!(SLOT_SIZE == SEG + BLKIF_MAX_SEGMENTS_PER_REQUEST * SEGMENT_SIZE);
const _: () = assert!(SEGS_PER_INDIRECT_PAGE == 512 && MAX_INDIRECT_SEGMENTS == 4096);

// ----- byte offsets (x86_64) -------------------------------------------------

/// `operation`: the first `uint8_t` of all three request layouts.
const OPERATION: usize = 0;
/// `struct blkif_request.nr_segments` (`uint8_t`).
const NR_SEGMENTS: usize = 1;
/// `struct blkif_request.handle` (`blkif_vdev_t`), and
/// `struct blkif_request_discard.handle`.
const HANDLE: usize = 2;
/// `id` (`uint64_t`) in all three layouts, after 4 bytes of padding.
const ID: usize = 8;
/// `sector_number` (`blkif_sector_t`) in all three layouts.
const SECTOR_NUMBER: usize = 16;
/// `struct blkif_request.seg[0]`.
const SEG: usize = 24;

/// `struct blkif_request_indirect.indirect_op` (`uint8_t`).
const INDIRECT_OP: usize = 1;
/// `struct blkif_request_indirect.nr_segments` (`uint16_t`).
const INDIRECT_NR_SEGMENTS: usize = 2;
/// `struct blkif_request_indirect.handle` (`blkif_vdev_t`), after
/// `sector_number`: not where the other layouts keep it.
const INDIRECT_HANDLE: usize = 24;
/// `struct blkif_request_indirect.indirect_grefs[0]` (`grant_ref_t`), after 2
/// bytes of padding.
const INDIRECT_GREFS: usize = 28;

/// `struct blkif_request_discard.flag` (`uint8_t`).
const DISCARD_FLAG: usize = 1;
/// `struct blkif_request_discard.nr_sectors` (`uint64_t`).
const DISCARD_NR_SECTORS: usize = 24;

/// `struct blkif_request_segment.gref` (`grant_ref_t`).
const SEG_GREF: usize = 0;
/// `struct blkif_request_segment.first_sect` (`uint8_t`).
const SEG_FIRST_SECT: usize = 4;
/// `struct blkif_request_segment.last_sect` (`uint8_t`).
const SEG_LAST_SECT: usize = 5;

// Every field read lies inside what it is read from.
const _: () = assert!(INDIRECT_GREFS + 4 * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST <= 64);
const _: () = assert!(DISCARD_NR_SECTORS + 8 <= 32 && 64 <= SLOT_SIZE);
const _: () = assert!(SEG_LAST_SECT < SEGMENT_SIZE && SEG_GREF + 4 <= SEG_FIRST_SECT);

// ----- the slot --------------------------------------------------------------

/// One ring slot's bytes as the frontend left them: what the simulator's
/// back ring copies out (8-aligned like `union blkif_sring_entry`, so its
/// stride is the C one; any bit pattern is a valid value).
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawSlot(pub(crate) [u8; SLOT_SIZE]);

const _: () = assert!(size_of::<RawSlot>() == SLOT_SIZE);

// SAFETY: a `repr(C)` array of bytes: every bit pattern is a valid value,
// and there is no drop glue.
unsafe impl crate::ring::RingEntry for RawSlot {}

impl Default for RawSlot {
    fn default() -> Self {
        RawSlot([0; SLOT_SIZE])
    }
}

impl core::fmt::Debug for RawSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("RawSlot(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

// ----- what a slot says ------------------------------------------------------

/// A `struct blkif_request_segment`: one data frame of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Grant reference of the frame.
    pub gref: u32,
    /// First sector of the frame to transfer (inclusive).
    pub first_sect: u8,
    /// Last sector of the frame to transfer (inclusive).
    pub last_sect: u8,
}

/// Reads one segment descriptor from its 8 bytes (fewer read as zeroes;
/// callers always pass 8).
fn segment(b: &[u8]) -> Segment {
    let mut raw = [0u8; SEGMENT_SIZE];
    let n = b.len().min(SEGMENT_SIZE);
    raw[..n].copy_from_slice(&b[..n]);
    Segment {
        gref: u32_at(&raw, SEG_GREF),
        first_sect: raw[SEG_FIRST_SECT],
        last_sect: raw[SEG_LAST_SECT],
    }
}

/// The segment descriptors of one indirect page, in order (512 of them for
/// a full page; a shorter slice gives the whole descriptors it holds).
pub(crate) fn indirect_page_segments(page: &[u8]) -> impl Iterator<Item = Segment> + '_ {
    page.chunks_exact(SEGMENT_SIZE).map(segment)
}

/// A read, write, barrier or flush in `struct blkif_request`, with at most
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST` segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Direct {
    /// `BLKIF_OP_READ`, `_WRITE`, `_WRITE_BARRIER` or `_FLUSH_DISKCACHE`.
    pub operation: u8,
    /// Device handle.
    pub handle: u16,
    /// The frontend's id.
    pub id: u64,
    /// Start sector.
    pub sector: u64,
    /// `nr_segments`, at most 11 (a decoding invariant).
    nr_segments: u8,
    segs: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

impl Direct {
    /// The `nr_segments` segments the request carries.
    pub(crate) fn segments(&self) -> &[Segment] {
        let n = usize::from(self.nr_segments).min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        &self.segs[..n]
    }
}

/// A `struct blkif_request_indirect` with a read or write of
/// `1..=MAX_INDIRECT_SEGMENTS` segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Indirect {
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Device handle.
    pub handle: u16,
    /// The frontend's id.
    pub id: u64,
    /// Start sector.
    pub sector: u64,
    /// In `1..=MAX_INDIRECT_SEGMENTS` (a decoding invariant).
    nr_segments: u16,
    grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

impl Indirect {
    /// Number of segments in the indirect pages.
    pub(crate) fn nr_segments(&self) -> usize {
        usize::from(self.nr_segments)
    }

    /// Grant references of the indirect pages that hold the segments:
    /// `ceil(nr_segments / SEGS_PER_INDIRECT_PAGE)` of them (the rest of
    /// `indirect_grefs` means nothing).
    pub(crate) fn page_grefs(&self) -> &[u32] {
        let pages = self
            .nr_segments()
            .div_ceil(SEGS_PER_INDIRECT_PAGE)
            .min(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
        &self.grefs[..pages]
    }
}

/// A `struct blkif_request_discard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Discard {
    /// `BLKIF_DISCARD_SECURE` or zero (other bits as sent).
    pub flag: u8,
    /// Device handle.
    pub handle: u16,
    /// The frontend's id.
    pub id: u64,
    /// Start sector.
    pub sector: u64,
    /// Number of sectors to discard.
    pub nr_sectors: u64,
}

/// Why a request cannot be carried out, whatever the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Malformed {
    /// A direct read, write, barrier or flush claiming more segments than
    /// the 11 a slot holds.
    TooManySegments {
        /// The request's `operation`.
        operation: u8,
        /// `nr_segments` as sent (12 or more).
        nr_segments: u8,
    },
    /// `BLKIF_OP_INDIRECT` with an `indirect_op` other than read or write.
    IndirectOp {
        /// `indirect_op` as sent.
        indirect_op: u8,
    },
    /// `BLKIF_OP_INDIRECT` with no segments, or more than
    /// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST` pages hold.
    IndirectSegments {
        /// `indirect_op` (read or write).
        indirect_op: u8,
        /// `nr_segments` as sent.
        nr_segments: u16,
    },
}

impl Malformed {
    /// The operation Linux blkback answers with: the request's, or
    /// `indirect_op` for an indirect request (`dispatch_rw_block_io`'s
    /// `req_operation`).
    pub(crate) fn operation(&self) -> u8 {
        match *self {
            Malformed::TooManySegments { operation, .. } => operation,
            Malformed::IndirectOp { indirect_op } => indirect_op,
            Malformed::IndirectSegments { indirect_op, .. } => indirect_op,
        }
    }

    /// Whether the request came as `BLKIF_OP_INDIRECT`.
    pub(crate) fn indirect(&self) -> bool {
        !matches!(self, Malformed::TooManySegments { .. })
    }
}

/// What one ring slot asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// A read, write, barrier or flush in the slot itself.
    Direct(Direct),
    /// A read or write whose segments are in indirect pages.
    Indirect(Indirect),
    /// A discard.
    Discard(Discard),
    /// An operation `io/blkif.h` defines no request for (including
    /// `BLKIF_OP_RESERVED_1`): only `operation` and `id` are read.
    Unknown {
        /// `operation` as sent.
        operation: u8,
        /// The frontend's id.
        id: u64,
    },
    /// A known operation no backend can carry out as sent.
    Malformed {
        /// The frontend's id.
        id: u64,
        /// What is wrong.
        why: Malformed,
    },
}

impl Request {
    /// The frontend's id (at offset 8 in every layout).
    pub(crate) fn id(&self) -> u64 {
        match *self {
            Request::Direct(Direct { id, .. })
            | Request::Indirect(Indirect { id, .. })
            | Request::Discard(Discard { id, .. })
            | Request::Unknown { id, .. }
            | Request::Malformed { id, .. } => id,
        }
    }

    /// Whether the request came as `BLKIF_OP_INDIRECT` (well formed or not).
    pub(crate) fn is_indirect(&self) -> bool {
        match self {
            Request::Indirect(_) => true,
            Request::Malformed { why, .. } => why.indirect(),
            _ => false,
        }
    }
}

/// Decodes one slot. Never fails and never panics: see the module
/// documentation for what is [`Request::Malformed`].
pub(crate) fn decode(slot: &RawSlot) -> Request {
    let b = &slot.0;
    let id = u64_at(b, ID);
    let sector = u64_at(b, SECTOR_NUMBER);
    match b[OPERATION] {
        operation @ (BLKIF_OP_READ
        | BLKIF_OP_WRITE
        | BLKIF_OP_WRITE_BARRIER
        | BLKIF_OP_FLUSH_DISKCACHE) => {
            let nr_segments = b[NR_SEGMENTS];
            if usize::from(nr_segments) > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                return Request::Malformed {
                    id,
                    why: Malformed::TooManySegments {
                        operation,
                        nr_segments,
                    },
                };
            }
            let mut segs = [Segment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            let raw = b[SEG..].chunks_exact(SEGMENT_SIZE);
            for (s, raw) in segs.iter_mut().zip(raw).take(usize::from(nr_segments)) {
                *s = segment(raw);
            }
            Request::Direct(Direct {
                operation,
                handle: u16_at(b, HANDLE),
                id,
                sector,
                nr_segments,
                segs,
            })
        }
        BLKIF_OP_INDIRECT => {
            let indirect_op = b[INDIRECT_OP];
            if indirect_op != BLKIF_OP_READ && indirect_op != BLKIF_OP_WRITE {
                return Request::Malformed {
                    id,
                    why: Malformed::IndirectOp { indirect_op },
                };
            }
            let nr_segments = u16_at(b, INDIRECT_NR_SEGMENTS);
            if nr_segments == 0 || usize::from(nr_segments) > MAX_INDIRECT_SEGMENTS {
                return Request::Malformed {
                    id,
                    why: Malformed::IndirectSegments {
                        indirect_op,
                        nr_segments,
                    },
                };
            }
            let mut grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
            for (i, g) in grefs.iter_mut().enumerate() {
                *g = u32_at(b, INDIRECT_GREFS + 4 * i);
            }
            Request::Indirect(Indirect {
                indirect_op,
                handle: u16_at(b, INDIRECT_HANDLE),
                id,
                sector,
                nr_segments,
                grefs,
            })
        }
        BLKIF_OP_DISCARD => Request::Discard(Discard {
            flag: b[DISCARD_FLAG],
            handle: u16_at(b, HANDLE),
            id,
            sector,
            nr_sectors: u64_at(b, DISCARD_NR_SECTORS),
        }),
        operation => Request::Unknown { operation, id },
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
