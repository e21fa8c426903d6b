//! `io/ring.h`: the header of a shared ring page.

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
