//! A test-only encoder of request slots for the simulator's own tests,
//! written from `io/blkif.h` (x86_64) with the offsets spelled out here,
//! independently of both the driver's encoder and `decode`'s constants, so
//! that the simulator is tested without the code it exists to check.

use super::decode::{RawSlot, Segment, SLOT_SIZE};
use crate::abi::blkif::{BLKIF_OP_DISCARD, BLKIF_OP_INDIRECT};

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// The 8 bytes of a `struct blkif_request_segment`: `gref` at 0,
/// `first_sect` at 4, `last_sect` at 5, padding at 6 and 7.
pub(super) fn segment(s: Segment) -> [u8; 8] {
    let mut b = [0u8; 8];
    put(&mut b, 0, &s.gref.to_le_bytes());
    b[4] = s.first_sect;
    b[5] = s.last_sect;
    b
}

/// A `struct blkif_request` with `segs` (at most 11) and `nr_segments` set
/// to their number.
pub(super) fn direct(
    operation: u8,
    handle: u16,
    id: u64,
    sector: u64,
    segs: &[Segment],
) -> RawSlot {
    assert!(segs.len() <= 11, "a slot holds 11 segments");
    let mut b = [0u8; SLOT_SIZE];
    b[0] = operation; // operation
    b[1] = segs.len() as u8; // nr_segments
    put(&mut b, 2, &handle.to_le_bytes()); // handle (blkif_vdev_t)
    put(&mut b, 8, &id.to_le_bytes()); // id, after 4 bytes of padding
    put(&mut b, 16, &sector.to_le_bytes()); // sector_number
    for (i, s) in segs.iter().enumerate() {
        put(&mut b, 24 + 8 * i, &segment(*s)); // seg[i]
    }
    RawSlot(b)
}

/// A `struct blkif_request_indirect` with `grefs` (at most 8) as its
/// `indirect_grefs`.
pub(super) fn indirect(
    indirect_op: u8,
    nr_segments: u16,
    id: u64,
    sector: u64,
    handle: u16,
    grefs: &[u32],
) -> RawSlot {
    assert!(grefs.len() <= 8, "indirect_grefs has 8 entries");
    let mut b = [0u8; SLOT_SIZE];
    b[0] = BLKIF_OP_INDIRECT; // operation
    b[1] = indirect_op; // indirect_op
    put(&mut b, 2, &nr_segments.to_le_bytes()); // nr_segments (uint16_t)
    put(&mut b, 8, &id.to_le_bytes()); // id
    put(&mut b, 16, &sector.to_le_bytes()); // sector_number
    put(&mut b, 24, &handle.to_le_bytes()); // handle, after sector_number
    for (i, g) in grefs.iter().enumerate() {
        put(&mut b, 28 + 4 * i, &g.to_le_bytes()); // indirect_grefs[i]
    }
    RawSlot(b)
}

/// A `struct blkif_request_discard`.
pub(super) fn discard(flag: u8, handle: u16, id: u64, sector: u64, nr_sectors: u64) -> RawSlot {
    let mut b = [0u8; SLOT_SIZE];
    b[0] = BLKIF_OP_DISCARD; // operation
    b[1] = flag; // flag
    put(&mut b, 2, &handle.to_le_bytes()); // handle
    put(&mut b, 8, &id.to_le_bytes()); // id
    put(&mut b, 16, &sector.to_le_bytes()); // sector_number
    put(&mut b, 24, &nr_sectors.to_le_bytes()); // nr_sectors
    RawSlot(b)
}

/// A deterministic xorshift64* generator for garbage inputs.
pub(super) struct Prng(pub u64);

impl Prng {
    pub(super) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value below `n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub(super) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }
}
