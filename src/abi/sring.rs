//! `io/ring.h`: the header of a shared ring page.

use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicU32;

/// The header of a shared ring (`struct NAME_sring` up to `ring[]`): the four
/// free-running indices, then 48 bytes of padding (`__pad`, used by some
/// protocols, e.g. netif's `pvt`). Slots start at offset 64.
#[repr(C)]
#[derive(Debug)]
pub struct SringHeader {
    /// Request producer index (written by the front end).
    pub req_prod: AtomicU32,
    /// Request event threshold (written by the back end).
    pub req_event: AtomicU32,
    /// Response producer index (written by the back end).
    pub rsp_prod: AtomicU32,
    /// Response event threshold (written by the front end).
    pub rsp_event: AtomicU32,
    /// Padding to 64 bytes.
    pub pad: [u8; 48],
}

/// Offset of `ring[]` in a shared ring page.
pub const SRING_HEADER_SIZE: usize = 64;

/// Slots of a shared ring that occupies `ring_bytes` bytes (header included)
/// with slots of `slot_size` bytes: as many as fit after the header, rounded
/// down to a power of two (`__CONST_RING_SIZE` in `io/ring.h`). 0 when not
/// even one slot fits or `slot_size` is 0.
pub const fn ring_slots(ring_bytes: usize, slot_size: usize) -> usize {
    if slot_size == 0 || ring_bytes <= SRING_HEADER_SIZE {
        return 0;
    }
    let fit = (ring_bytes - SRING_HEADER_SIZE) / slot_size;
    if fit == 0 {
        0
    } else {
        1 << (usize::BITS - 1 - fit.leading_zeros())
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<SringHeader>() == SRING_HEADER_SIZE);
const _: () = assert!(offset_of!(SringHeader, req_prod) == 0);
const _: () = assert!(offset_of!(SringHeader, req_event) == 4);
const _: () = assert!(offset_of!(SringHeader, rsp_prod) == 8);
const _: () = assert!(offset_of!(SringHeader, rsp_event) == 12);
const _: () = assert!(offset_of!(SringHeader, pad) == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_down_to_a_power_of_two() {
        // 4032 / 112 = 36 -> 32; 4032 / 16 = 252 -> 128; 4032 / 64 = 63 -> 32.
        assert_eq!(ring_slots(4096, 112), 32);
        assert_eq!(ring_slots(4096, 16), 128);
        assert_eq!(ring_slots(4096, 64), 32);
        // Exactly a power of two stays.
        assert_eq!(ring_slots(64 + 8 * 64, 64), 8);
        assert_eq!(ring_slots(64 + 8 * 64 - 1, 64), 4);
    }

    #[test]
    fn degenerate_rings_have_no_slots() {
        assert_eq!(ring_slots(4096, 0), 0);
        assert_eq!(ring_slots(64, 8), 0);
        assert_eq!(ring_slots(0, 8), 0);
        assert_eq!(ring_slots(64 + 7, 8), 0);
        assert_eq!(ring_slots(64 + 8, 8), 1);
    }

    #[test]
    fn huge_rings_do_not_overflow() {
        assert_eq!(ring_slots(usize::MAX, 1), 1 << (usize::BITS - 1));
    }
}
