//! `io/console.h`: the PV console ring page (`HVM_PARAM_CONSOLE_PFN`).

use core::mem::{offset_of, size_of};
use core::sync::atomic::AtomicU32;

/// Size of the input ring (`in[]`, console to guest).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the output ring (`out[]`, guest to console).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `struct xencons_interface`. The byte rings are plain arrays (access them
/// with volatile copies through a raw pointer); the free-running
/// `XENCONS_RING_IDX` indices are atomics. Index `i` of a ring is
/// `i % size` (`MASK_XENCONS_IDX`).
#[repr(C)]
#[derive(Debug)]
pub struct XenconsInterface {
    /// Input from the console daemon.
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Output to the console daemon.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Input consumer (guest).
    pub in_cons: AtomicU32,
    /// Input producer (daemon).
    pub in_prod: AtomicU32,
    /// Output consumer (daemon).
    pub out_cons: AtomicU32,
    /// Output producer (guest).
    pub out_prod: AtomicU32,
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<XenconsInterface>() == 3088);
const _: () = assert!(offset_of!(XenconsInterface, in_) == 0);
const _: () = assert!(offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(offset_of!(XenconsInterface, in_prod) == 3076);
const _: () = assert!(offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(offset_of!(XenconsInterface, out_prod) == 3084);
