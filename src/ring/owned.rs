//! Rings that own their memory, so that code above this module builds a
//! shared ring without `unsafe`.
//!
//! [`FrontRing::init`] is `unsafe` because the ring keeps a raw pointer into
//! memory it does not own. [`OwnedFrontRing`] holds that memory next to the
//! ring, behind the [`RingMemory`] contract, and drops the ring first; the
//! entry types are restricted to [`RingEntry`], plain data the peer may fill
//! with any bytes.

use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use super::FrontRing;
use super::RingError;
use crate::abi::blkif::{BlkifResponse, RequestSlot};
use crate::hal::PAGE_SIZE;

/// Memory a shared ring can live in.
///
/// # Safety
///
/// Implementors promise that [`base`](Self::base) returns the same
/// page-aligned pointer for the whole life of the value, valid for reads and
/// writes of [`len`](Self::len) bytes of initialised memory, and that nothing
/// in this address space accesses that memory except through the pointer
/// handed out here (another domain, the ring's peer, may write it at any
/// time).
pub unsafe trait RingMemory {
    /// Start of the memory.
    fn base(&self) -> NonNull<u8>;
    /// Size in bytes.
    fn len(&self) -> usize;
    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A type every bit pattern of which is a valid value (integers, arrays and
/// `repr(C)` structs of them), so that it can be read from a slot the peer
/// wrote.
///
/// # Safety
///
/// Implementors promise exactly that, and that the type has no drop glue.
pub unsafe trait RingEntry: Copy {}

// SAFETY: plain integers.
unsafe impl RingEntry for u8 {}
// SAFETY: plain integers.
unsafe impl RingEntry for u16 {}
// SAFETY: plain integers.
unsafe impl RingEntry for u32 {}
// SAFETY: plain integers.
unsafe impl RingEntry for u64 {}
// SAFETY: an array of plain data is plain data.
unsafe impl<T: RingEntry, const N: usize> RingEntry for [T; N] {}
// SAFETY: `repr(C)` struct of integers (`abi::blkif`).
unsafe impl RingEntry for BlkifResponse {}
// SAFETY: `repr(C)` array of `u64` words (`abi::blkif`).
unsafe impl RingEntry for RequestSlot {}

/// A [`FrontRing`] together with the memory it lives in.
///
/// Dereferences to the ring. Fields drop in order: the ring (which holds
/// only a raw pointer) before the memory.
pub struct OwnedFrontRing<M: RingMemory, Req: RingEntry, Rsp: RingEntry> {
    ring: FrontRing<Req, Rsp>,
    mem: M,
}

impl<M: RingMemory, Req: RingEntry, Rsp: RingEntry> OwnedFrontRing<M, Req, Rsp> {
    /// Initialises a ring of `1 << order` pages at the start of `mem`
    /// (`XEN_FRONT_RING_INIT`).
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidOrder`] when `order` is too large or `mem` is
    /// smaller than `PAGE_SIZE << order` (or not page-aligned); `mem` comes
    /// back with the error.
    pub fn init(mem: M, order: u32) -> core::result::Result<Self, (RingError, M)> {
        let need = PAGE_SIZE.checked_shl(order).unwrap_or(usize::MAX);
        if mem.len() < need || mem.base().as_ptr().align_offset(PAGE_SIZE) != 0 {
            return Err((RingError::InvalidOrder(order), mem));
        }
        // SAFETY: `RingMemory` promises page-aligned, initialised memory of
        // `mem.len() >= PAGE_SIZE << order` bytes that only this pointer
        // reaches and that stays put while `mem` lives; `mem` lives in this
        // value and outlives the ring (dropped after it). `RingEntry` makes
        // both entry types valid for any bytes the peer leaves.
        match unsafe { FrontRing::init(mem.base(), order) } {
            Ok(ring) => Ok(OwnedFrontRing { ring, mem }),
            Err(e) => Err((e, mem)),
        }
    }

    /// The memory under the ring.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The memory under the ring, for changes that leave its contents alone
    /// (ending grants, say).
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// Drops the ring and returns its memory.
    pub fn into_memory(self) -> M {
        self.mem
    }
}

impl<M: RingMemory, Req: RingEntry, Rsp: RingEntry> Deref for OwnedFrontRing<M, Req, Rsp> {
    type Target = FrontRing<Req, Rsp>;
    fn deref(&self) -> &Self::Target {
        &self.ring
    }
}

impl<M: RingMemory, Req: RingEntry, Rsp: RingEntry> DerefMut for OwnedFrontRing<M, Req, Rsp> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.ring
    }
}
