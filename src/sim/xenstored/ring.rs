//! The daemon's side of a xenstore ring (`docs/misc/xenstore-ring.txt`):
//! consumes the `req` queue and produces into `rsp`, mirroring the guest's
//! [`RingTransport`](crate::xenstore::RingTransport). The guest's offsets
//! are checked like a real xenstored does: a bad pair is
//! `XENSTORE_ERROR_RINGIDX`.

use std::collections::VecDeque;
use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::abi::xs_wire::{
    XenstoreDomainInterface as Iface, XENSTORE_CONNECTED, XENSTORE_ERROR_NONE,
    XENSTORE_ERROR_RINGIDX, XENSTORE_RING_SIZE, XENSTORE_SERVER_FEATURE_ERROR,
};
use crate::sim::GrantMapping;
use crate::xenstore::ring::mask_idx;

/// Where the simulator starts both queues' offsets: close to wrapping, so
/// every connection crosses `u32::MAX` early.
pub(super) const START_IDX: u32 = u32::MAX - 600;

/// The daemon's mapping of a guest's xenstore page.
pub(super) struct DaemonRing {
    page: GrantMapping,
}

impl DaemonRing {
    /// Takes over a freshly allocated (zeroed) page: advertises the error
    /// feature, marks it connected and sets the starting offsets.
    pub(super) fn new(page: GrantMapping) -> DaemonRing {
        let r = DaemonRing { page };
        for f in [
            offset_of!(Iface, req_cons),
            offset_of!(Iface, req_prod),
            offset_of!(Iface, rsp_cons),
            offset_of!(Iface, rsp_prod),
        ] {
            r.word(f).store(START_IDX, Ordering::Relaxed);
        }
        r.word(offset_of!(Iface, connection))
            .store(XENSTORE_CONNECTED, Ordering::Relaxed);
        r.word(offset_of!(Iface, error))
            .store(XENSTORE_ERROR_NONE, Ordering::Relaxed);
        r.word(offset_of!(Iface, server_features))
            .store(XENSTORE_SERVER_FEATURE_ERROR, Ordering::Release);
        r
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset + 4 <= size_of::<Iface>());
        // SAFETY: `offset` is one of the 4-aligned u32 index fields of the
        // interface, inside the 4096-byte frame that stays mapped while
        // `self.page` lives; both sides access these words atomically only.
        unsafe { &*self.page.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    fn byte_ptr(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset < 2 * XENSTORE_RING_SIZE);
        // SAFETY: inside the mapped frame (offset < 2048 < 4096).
        unsafe { self.page.as_ptr().add(offset) }
    }

    /// Sets the connection error indicator.
    pub(super) fn set_error(&self, code: u32) {
        self.word(offset_of!(Iface, error))
            .store(code, Ordering::Release);
    }

    /// Fault hook: publishes a response producer `ahead` bytes past the
    /// guest's consumer.
    pub(super) fn corrupt_rsp_prod(&self, ahead: u32) {
        let cons = self
            .word(offset_of!(Iface, rsp_cons))
            .load(Ordering::Acquire);
        self.word(offset_of!(Iface, rsp_prod))
            .store(cons.wrapping_add(ahead), Ordering::Release);
    }

    /// Copies available request bytes into `buf` and hands the space back.
    /// Returns the count, or the error code for a bad offset pair.
    pub(super) fn read_requests(&self, buf: &mut [u8]) -> Result<usize, u32> {
        let prod = self
            .word(offset_of!(Iface, req_prod))
            .load(Ordering::Acquire);
        let mut cons = self
            .word(offset_of!(Iface, req_cons))
            .load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons) as usize;
        if avail > XENSTORE_RING_SIZE {
            return Err(XENSTORE_ERROR_RINGIDX);
        }
        let n = avail.min(buf.len());
        for slot in &mut buf[..n] {
            let at = offset_of!(Iface, req) + mask_idx(cons);
            // SAFETY: a byte of the req queue between cons and the acquired
            // prod: published by the guest, not rewritten until we advance.
            *slot = unsafe { self.byte_ptr(at).read_volatile() };
            cons = cons.wrapping_add(1);
        }
        if n > 0 {
            self.word(offset_of!(Iface, req_cons))
                .store(cons, Ordering::Release);
        }
        Ok(n)
    }

    /// Writes as much of `out` as fits into the rsp queue and publishes it.
    /// Returns the count, or the error code for a bad offset pair.
    pub(super) fn write_replies(&self, out: &mut VecDeque<u8>) -> Result<usize, u32> {
        let cons = self
            .word(offset_of!(Iface, rsp_cons))
            .load(Ordering::Acquire);
        let mut prod = self
            .word(offset_of!(Iface, rsp_prod))
            .load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons) as usize;
        if used > XENSTORE_RING_SIZE {
            return Err(XENSTORE_ERROR_RINGIDX);
        }
        let n = (XENSTORE_RING_SIZE - used).min(out.len());
        for b in out.drain(..n) {
            let at = offset_of!(Iface, rsp) + mask_idx(prod);
            // SAFETY: a free byte of the rsp queue (between prod and
            // cons + 1024), which the guest does not read until published.
            unsafe { self.byte_ptr(at).write_volatile(b) };
            prod = prod.wrapping_add(1);
        }
        if n > 0 {
            self.word(offset_of!(Iface, rsp_prod))
                .store(prod, Ordering::Release);
        }
        Ok(n)
    }
}
