//! The request slot of the blkif ring, encoded and decoded without `unsafe`.
//!
//! `io/blkif.h` overlays three request layouts on one ring slot
//! (`blkif_request`, `blkif_request_indirect`, `blkif_request_discard`); the
//! slot is as large as the largest, `struct blkif_request` (112 bytes on
//! x86_64). [`RequestSlot`] is that slot as plain words, and the encoders
//! below place each field at the offset the header gives it (the offsets come
//! from the `abi` structs, which are checked against the C header). Backends
//! (the simulator's) decode with [`RequestSlot::decode`].

use core::mem::{offset_of, size_of};

use crate::abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_INDIRECT,
};

pub use crate::abi::blkif::RequestSlot;

/// Size of one request slot: `sizeof(struct blkif_request)`.
pub const SLOT_SIZE: usize = size_of::<BlkifRequest>();
const WORDS: usize = SLOT_SIZE / 8;
const _: () = assert!(SLOT_SIZE == size_of::<RequestSlot>());
const _: () = assert!(size_of::<BlkifRequestIndirect>() <= SLOT_SIZE);
const _: () = assert!(size_of::<BlkifRequestDiscard>() <= SLOT_SIZE);

/// Segments described by one indirect page: `PAGE_SIZE / sizeof(segment)`.
pub const SEGS_PER_INDIRECT_PAGE: usize = crate::hal::PAGE_SIZE / size_of::<BlkifRequestSegment>();

/// The most segments one indirect request can carry.
pub const MAX_INDIRECT_SEGMENTS: usize =
    SEGS_PER_INDIRECT_PAGE * BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST;

/// A request as a backend sees it after decoding a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Read, write, flush or barrier: `struct blkif_request`.
    Direct {
        /// `BLKIF_OP_*`.
        operation: u8,
        /// Device handle.
        handle: u16,
        /// The frontend's id.
        id: u64,
        /// Start sector (512-byte units).
        sector: u64,
        /// `nr_segments` as sent (may exceed 11: a backend must reject that).
        nr_segments: u8,
        /// The 11 segment slots (only the first `nr_segments` are meaningful).
        segments: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
    },
    /// `BLKIF_OP_INDIRECT`.
    Indirect {
        /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE` (as sent; a backend validates).
        indirect_op: u8,
        /// Number of segments in the indirect pages.
        nr_segments: u16,
        /// The frontend's id.
        id: u64,
        /// Start sector (512-byte units).
        sector: u64,
        /// Device handle.
        handle: u16,
        /// Grant references of the indirect pages.
        indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    },
    /// `BLKIF_OP_DISCARD`.
    Discard {
        /// `BLKIF_DISCARD_SECURE` or 0.
        flag: u8,
        /// Device handle.
        handle: u16,
        /// The frontend's id.
        id: u64,
        /// Start sector (512-byte units).
        sector: u64,
        /// Number of 512-byte sectors.
        nr_sectors: u64,
    },
}

struct Bytes([u8; SLOT_SIZE]);

impl Bytes {
    fn put(&mut self, off: usize, v: &[u8]) {
        self.0[off..off + v.len()].copy_from_slice(v);
    }
    fn u8(&self, off: usize) -> u8 {
        self.0[off]
    }
    fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.0[off], self.0[off + 1]])
    }
    fn u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[off..off + 4]);
        u32::from_le_bytes(b)
    }
    fn u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[off..off + 8]);
        u64::from_le_bytes(b)
    }
    fn into_slot(self) -> RequestSlot {
        let mut w = [0u64; WORDS];
        for (i, word) in w.iter_mut().enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.0[i * 8..i * 8 + 8]);
            *word = u64::from_le_bytes(b);
        }
        RequestSlot(w)
    }
}

const SEG_BASE: usize = offset_of!(BlkifRequest, seg);
const SEG_SIZE: usize = size_of::<BlkifRequestSegment>();

impl RequestSlot {
    fn bytes(&self) -> Bytes {
        let mut b = [0u8; SLOT_SIZE];
        for (i, word) in self.0.iter().enumerate() {
            b[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        Bytes(b)
    }

    /// A `struct blkif_request`. Only the first 11 segments of `segs` are
    /// used; callers never pass more.
    pub fn direct(
        operation: u8,
        handle: u16,
        id: u64,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> RequestSlot {
        let n = segs.len().min(BLKIF_MAX_SEGMENTS_PER_REQUEST);
        let mut b = Bytes([0; SLOT_SIZE]);
        b.put(offset_of!(BlkifRequest, operation), &[operation]);
        b.put(offset_of!(BlkifRequest, nr_segments), &[n as u8]);
        b.put(offset_of!(BlkifRequest, handle), &handle.to_le_bytes());
        b.put(offset_of!(BlkifRequest, id), &id.to_le_bytes());
        b.put(
            offset_of!(BlkifRequest, sector_number),
            &sector.to_le_bytes(),
        );
        for (i, s) in segs[..n].iter().enumerate() {
            Self::put_seg(&mut b, SEG_BASE + i * SEG_SIZE, s);
        }
        b.into_slot()
    }

    fn put_seg(b: &mut Bytes, at: usize, s: &BlkifRequestSegment) {
        b.put(
            at + offset_of!(BlkifRequestSegment, gref),
            &s.gref.to_le_bytes(),
        );
        b.put(
            at + offset_of!(BlkifRequestSegment, first_sect),
            &[s.first_sect],
        );
        b.put(
            at + offset_of!(BlkifRequestSegment, last_sect),
            &[s.last_sect],
        );
    }

    /// A `struct blkif_request_indirect`. Only the first 8 of `grefs` are used.
    pub fn indirect(
        indirect_op: u8,
        nr_segments: u16,
        id: u64,
        sector: u64,
        handle: u16,
        grefs: &[u32],
    ) -> RequestSlot {
        let mut b = Bytes([0; SLOT_SIZE]);
        b.put(
            offset_of!(BlkifRequestIndirect, operation),
            &[BLKIF_OP_INDIRECT],
        );
        b.put(
            offset_of!(BlkifRequestIndirect, indirect_op),
            &[indirect_op],
        );
        b.put(
            offset_of!(BlkifRequestIndirect, nr_segments),
            &nr_segments.to_le_bytes(),
        );
        b.put(offset_of!(BlkifRequestIndirect, id), &id.to_le_bytes());
        b.put(
            offset_of!(BlkifRequestIndirect, sector_number),
            &sector.to_le_bytes(),
        );
        b.put(
            offset_of!(BlkifRequestIndirect, handle),
            &handle.to_le_bytes(),
        );
        let base = offset_of!(BlkifRequestIndirect, indirect_grefs);
        for (i, g) in grefs
            .iter()
            .take(BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST)
            .enumerate()
        {
            b.put(base + 4 * i, &g.to_le_bytes());
        }
        b.into_slot()
    }

    /// A `struct blkif_request_discard`.
    pub fn discard(flag: u8, handle: u16, id: u64, sector: u64, nr_sectors: u64) -> RequestSlot {
        let mut b = Bytes([0; SLOT_SIZE]);
        b.put(
            offset_of!(BlkifRequestDiscard, operation),
            &[BLKIF_OP_DISCARD],
        );
        b.put(offset_of!(BlkifRequestDiscard, flag), &[flag]);
        b.put(
            offset_of!(BlkifRequestDiscard, handle),
            &handle.to_le_bytes(),
        );
        b.put(offset_of!(BlkifRequestDiscard, id), &id.to_le_bytes());
        b.put(
            offset_of!(BlkifRequestDiscard, sector_number),
            &sector.to_le_bytes(),
        );
        b.put(
            offset_of!(BlkifRequestDiscard, nr_sectors),
            &nr_sectors.to_le_bytes(),
        );
        b.into_slot()
    }

    /// The `operation` byte (common to all layouts).
    pub fn operation(&self) -> u8 {
        self.bytes().u8(0)
    }

    /// The `id` (at the same offset in all layouts).
    pub fn id(&self) -> u64 {
        self.bytes().u64(offset_of!(BlkifRequest, id))
    }

    /// Decodes the slot as a backend would. Never fails: validation of the
    /// values (segment counts, sector ranges) is the backend's job.
    pub fn decode(&self) -> Decoded {
        let b = self.bytes();
        match b.u8(0) {
            BLKIF_OP_INDIRECT => {
                let base = offset_of!(BlkifRequestIndirect, indirect_grefs);
                let mut indirect_grefs = [0u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST];
                for (i, g) in indirect_grefs.iter_mut().enumerate() {
                    *g = b.u32(base + 4 * i);
                }
                Decoded::Indirect {
                    indirect_op: b.u8(offset_of!(BlkifRequestIndirect, indirect_op)),
                    nr_segments: b.u16(offset_of!(BlkifRequestIndirect, nr_segments)),
                    id: b.u64(offset_of!(BlkifRequestIndirect, id)),
                    sector: b.u64(offset_of!(BlkifRequestIndirect, sector_number)),
                    handle: b.u16(offset_of!(BlkifRequestIndirect, handle)),
                    indirect_grefs,
                }
            }
            BLKIF_OP_DISCARD => Decoded::Discard {
                flag: b.u8(offset_of!(BlkifRequestDiscard, flag)),
                handle: b.u16(offset_of!(BlkifRequestDiscard, handle)),
                id: b.u64(offset_of!(BlkifRequestDiscard, id)),
                sector: b.u64(offset_of!(BlkifRequestDiscard, sector_number)),
                nr_sectors: b.u64(offset_of!(BlkifRequestDiscard, nr_sectors)),
            },
            operation => {
                let mut segments = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
                for (i, s) in segments.iter_mut().enumerate() {
                    let at = SEG_BASE + i * SEG_SIZE;
                    *s = BlkifRequestSegment {
                        gref: b.u32(at + offset_of!(BlkifRequestSegment, gref)),
                        first_sect: b.u8(at + offset_of!(BlkifRequestSegment, first_sect)),
                        last_sect: b.u8(at + offset_of!(BlkifRequestSegment, last_sect)),
                    };
                }
                Decoded::Direct {
                    operation,
                    handle: b.u16(offset_of!(BlkifRequest, handle)),
                    id: b.u64(offset_of!(BlkifRequest, id)),
                    sector: b.u64(offset_of!(BlkifRequest, sector_number)),
                    nr_segments: b.u8(offset_of!(BlkifRequest, nr_segments)),
                    segments,
                }
            }
        }
    }
}

/// Encodes one segment descriptor for an indirect page (8 bytes, the layout
/// of `struct blkif_request_segment`).
pub fn encode_segment(s: &BlkifRequestSegment) -> [u8; SEG_SIZE] {
    let mut out = [0u8; SEG_SIZE];
    out[offset_of!(BlkifRequestSegment, gref)..][..4].copy_from_slice(&s.gref.to_le_bytes());
    out[offset_of!(BlkifRequestSegment, first_sect)] = s.first_sect;
    out[offset_of!(BlkifRequestSegment, last_sect)] = s.last_sect;
    out
}

/// Decodes one segment descriptor from an indirect page.
pub fn decode_segment(b: &[u8; SEG_SIZE]) -> BlkifRequestSegment {
    let mut g = [0u8; 4];
    g.copy_from_slice(&b[offset_of!(BlkifRequestSegment, gref)..][..4]);
    BlkifRequestSegment {
        gref: u32::from_le_bytes(g),
        first_sect: b[offset_of!(BlkifRequestSegment, first_sect)],
        last_sect: b[offset_of!(BlkifRequestSegment, last_sect)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::blkif::{BLKIF_OP_READ, BLKIF_OP_WRITE};

    fn seg(g: u32, f: u8, l: u8) -> BlkifRequestSegment {
        BlkifRequestSegment {
            gref: g,
            first_sect: f,
            last_sect: l,
        }
    }

    #[test]
    fn direct_round_trips_and_truncates_at_eleven_segments() {
        let segs: [BlkifRequestSegment; 12] =
            core::array::from_fn(|i| seg(1000 + i as u32, i as u8 % 8, 7));
        let s = RequestSlot::direct(BLKIF_OP_WRITE, 0xca00, u64::MAX - 1, 1 << 40, &segs);
        match s.decode() {
            Decoded::Direct {
                operation,
                handle,
                id,
                sector,
                nr_segments,
                segments,
            } => {
                assert_eq!(
                    (operation, handle, id, sector),
                    (BLKIF_OP_WRITE, 0xca00, u64::MAX - 1, 1 << 40)
                );
                assert_eq!(nr_segments, 11);
                assert_eq!(&segments[..], &segs[..11]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.id(), u64::MAX - 1);
        assert_eq!(s.operation(), BLKIF_OP_WRITE);
    }

    #[test]
    fn indirect_and_discard_round_trip() {
        let s = RequestSlot::indirect(BLKIF_OP_READ, 300, 7, 99, 3, &[1, 2, 3]);
        assert_eq!(
            s.decode(),
            Decoded::Indirect {
                indirect_op: BLKIF_OP_READ,
                nr_segments: 300,
                id: 7,
                sector: 99,
                handle: 3,
                indirect_grefs: [1, 2, 3, 0, 0, 0, 0, 0],
            }
        );
        let s = RequestSlot::discard(1, 2, 3, 4, 5);
        assert_eq!(
            s.decode(),
            Decoded::Discard {
                flag: 1,
                handle: 2,
                id: 3,
                sector: 4,
                nr_sectors: 5
            }
        );
        assert_eq!(s.id(), 3);
    }

    #[test]
    fn wire_bytes_sit_where_the_header_puts_them() {
        // struct blkif_request on x86_64: operation@0 nr_segments@1 handle@2
        // id@8 sector_number@16 seg[0]@24 (gref u32, first_sect, last_sect).
        let s = RequestSlot::direct(
            1,
            0x0102,
            0x1122334455667788,
            0x99,
            &[seg(0xaabbccdd, 2, 5)],
        );
        let b = s.bytes().0;
        assert_eq!(&b[0..4], &[1, 1, 0x02, 0x01]);
        assert_eq!(&b[8..16], &0x1122334455667788u64.to_le_bytes());
        assert_eq!(b[16], 0x99);
        assert_eq!(&b[24..30], &[0xdd, 0xcc, 0xbb, 0xaa, 2, 5]);
        assert_eq!(SLOT_SIZE, 112);
        assert_eq!(SEGS_PER_INDIRECT_PAGE, 512);
    }

    #[test]
    fn segment_codec_round_trips() {
        let s = seg(0xdeadbeef, 3, 7);
        assert_eq!(decode_segment(&encode_segment(&s)), s);
    }
}
