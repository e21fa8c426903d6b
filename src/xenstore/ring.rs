//! The xenstore ring transport (`docs/misc/xenstore-ring.txt`, the
//! `xenstore_domain_interface` page of `io/xs_wire.h`).
//!
//! The page holds two 1024-byte circular byte queues: `req` from the guest
//! to xenstored and `rsp` back. Each has a free-running `u32` producer and
//! consumer offset; byte `x` of a stream sits at `MASK_XENSTORE_IDX(x)`. A
//! queue is empty when `prod == cons` and full when `prod - cons == 1024`
//! (wrapping arithmetic). The producer fills bytes, then publishes `prod`
//! with release ordering; the consumer reads `prod` with acquire ordering,
//! copies the bytes out, then publishes `cons` with release ordering. Either
//! side signals the event channel after every update.
//!
//! The daemon's offsets are checked before use: an offset pair that claims
//! more than 1024 bytes in a queue is a broken connection
//! ([`XsError::Connection`]), never an out-of-bounds access.

use core::ptr::{addr_of, addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use super::XsError;
use crate::abi::xs_wire::{
    XenstoreDomainInterface, XENSTORE_CONNECTED, XENSTORE_ERROR_NONE, XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR, XENSTORE_SERVER_FEATURE_RECONNECTION,
};
use crate::hal::{Hal, Port, XsTransport};
use crate::Result;

/// `MASK_XENSTORE_IDX` of `io/xs_wire.h`.
#[inline]
pub const fn mask_idx(idx: u32) -> usize {
    (idx as usize) & (XENSTORE_RING_SIZE - 1)
}

struct Indices<'a> {
    req_cons: &'a AtomicU32,
    req_prod: &'a AtomicU32,
    rsp_cons: &'a AtomicU32,
    rsp_prod: &'a AtomicU32,
    server_features: &'a AtomicU32,
    connection: &'a AtomicU32,
    error: &'a AtomicU32,
}

/// An [`XsTransport`] over the shared xenstore page and its event channel.
///
/// Used by the `pvh` platform (page and port from the HVM parameters
/// `HVM_PARAM_STORE_PFN` / `HVM_PARAM_STORE_EVTCHN`) and by the simulator.
#[derive(Debug)]
pub struct RingTransport<'h, H: Hal> {
    hal: &'h H,
    iface: NonNull<XenstoreDomainInterface>,
    port: Port,
    broken: bool,
}

// SAFETY: the transport is the page's one client (`new`'s contract), and it
// touches the page only through its atomics and volatile copies, from
// `&mut self` methods (sending and receiving) or by reading atomics
// (`&self`); moving it to another thread moves that sole access with it.
// `&'h H` crosses along with it, hence `H: Sync`.
unsafe impl<H: Hal + Sync> Send for RingTransport<'_, H> {}

impl<'h, H: Hal> RingTransport<'h, H> {
    /// Wraps the xenstore page `iface`, signalled through `port`.
    ///
    /// # Safety
    ///
    /// `iface` points to a page-aligned `xenstore_domain_interface` that
    /// stays mapped, readable and writable for `'h`; only xenstored (through
    /// the protocol of `xenstore-ring.txt`) and this value access it during
    /// that time; `port` is this domain's event channel to xenstored.
    pub unsafe fn new(hal: &'h H, iface: NonNull<XenstoreDomainInterface>, port: Port) -> Self {
        RingTransport {
            hal,
            iface,
            port,
            broken: false,
        }
    }

    /// The event-channel port.
    pub fn port(&self) -> Port {
        self.port
    }

    /// References to the atomic fields only: the byte arrays are written
    /// by both sides and are never covered by a Rust reference.
    fn idx(&self) -> Indices<'_> {
        let p = self.iface.as_ptr();
        // SAFETY: `new`'s contract keeps the page mapped for `'h`; each
        // reference covers one atomic field, which both sides may access
        // concurrently through atomic operations only.
        unsafe {
            Indices {
                req_cons: &*addr_of!((*p).req_cons),
                req_prod: &*addr_of!((*p).req_prod),
                rsp_cons: &*addr_of!((*p).rsp_cons),
                rsp_prod: &*addr_of!((*p).rsp_prod),
                server_features: &*addr_of!((*p).server_features),
                connection: &*addr_of!((*p).connection),
                error: &*addr_of!((*p).error),
            }
        }
    }

    /// Checks the connection and error fields (`xenstore-ring.txt`, "The
    /// connection error feature" and "The ring reconnection feature").
    /// Returns `Ok(false)` while a reconnection is in progress.
    fn usable(&mut self) -> Result<bool, XsError> {
        if self.broken {
            return Err(XsError::Connection);
        }
        let i = self.idx();
        let features = i.server_features.load(Ordering::Acquire);
        if features & XENSTORE_SERVER_FEATURE_ERROR != 0
            && i.error.load(Ordering::Acquire) != XENSTORE_ERROR_NONE
        {
            log::error!(
                "xenstore: server reports connection error {}",
                i.error.load(Ordering::Relaxed)
            );
            self.broken = true;
            return Err(XsError::Connection);
        }
        if features & XENSTORE_SERVER_FEATURE_RECONNECTION != 0
            && i.connection.load(Ordering::Acquire) != XENSTORE_CONNECTED
        {
            return Ok(false);
        }
        Ok(true)
    }

    fn fail(&mut self, what: &str, prod: u32, cons: u32) -> XsError {
        log::error!("xenstore: {what} offsets out of range (prod {prod}, cons {cons})");
        self.broken = true;
        XsError::Connection
    }
}

impl<H: Hal> XsTransport for RingTransport<'_, H> {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, XsError> {
        if !self.usable()? || bytes.is_empty() {
            return Ok(0);
        }
        let i = self.idx();
        // We own req_prod; xenstored owns req_cons.
        let cons = i.req_cons.load(Ordering::Acquire);
        let mut prod = i.req_prod.load(Ordering::Relaxed);
        let used = prod.wrapping_sub(cons);
        if used as usize > XENSTORE_RING_SIZE {
            return Err(self.fail("request", prod, cons));
        }
        // SAFETY: a field address inside the live page (`new`'s contract);
        // no reference is formed.
        let req = unsafe { addr_of_mut!((*self.iface.as_ptr()).req) }.cast::<u8>();
        let mut written = 0;
        let mut free = XENSTORE_RING_SIZE - used as usize;
        while written < bytes.len() && free > 0 {
            let at = mask_idx(prod);
            let n = (bytes.len() - written)
                .min(free)
                .min(XENSTORE_RING_SIZE - at);
            for (k, &b) in bytes[written..written + n].iter().enumerate() {
                // SAFETY: `at + k < XENSTORE_RING_SIZE` by the choice of `n`;
                // the bytes between prod and cons + 1024 are ours to write
                // (xenstore-ring.txt: only consumed data may be overwritten),
                // and the page is valid per `new`'s contract.
                unsafe { req.add(at + k).write_volatile(b) };
            }
            written += n;
            free -= n;
            prod = prod.wrapping_add(n as u32);
        }
        // Publish the bytes before the index, then signal.
        self.idx().req_prod.store(prod, Ordering::Release);
        self.hal.evtchn_notify(self.port)?;
        Ok(written)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError> {
        if !self.usable()? || buf.is_empty() {
            return Ok(0);
        }
        let i = self.idx();
        let prod = i.rsp_prod.load(Ordering::Acquire);
        let mut cons = i.rsp_cons.load(Ordering::Relaxed);
        let avail = prod.wrapping_sub(cons);
        if avail as usize > XENSTORE_RING_SIZE {
            return Err(self.fail("response", prod, cons));
        }
        if avail == 0 {
            return Ok(0);
        }
        // SAFETY: as for `req` in `send`.
        let rsp = unsafe { addr_of!((*self.iface.as_ptr()).rsp) }.cast::<u8>();
        let mut read = 0;
        let mut left = avail as usize;
        while read < buf.len() && left > 0 {
            let at = mask_idx(cons);
            let n = (buf.len() - read).min(left).min(XENSTORE_RING_SIZE - at);
            for (k, slot) in buf[read..read + n].iter_mut().enumerate() {
                // SAFETY: `at + k < XENSTORE_RING_SIZE`; the bytes between
                // cons and the acquired prod were published by xenstored and
                // are not rewritten until we advance rsp_cons.
                *slot = unsafe { rsp.add(at + k).read_volatile() };
            }
            read += n;
            left -= n;
            cons = cons.wrapping_add(n as u32);
        }
        // Finish reading the bytes before handing the space back, then signal.
        self.idx().rsp_cons.store(cons, Ordering::Release);
        self.hal.evtchn_notify(self.port)?;
        Ok(read)
    }

    fn wait(&mut self, deadline: Option<u64>) -> Result<(), XsError> {
        if self.broken {
            return Err(XsError::Connection);
        }
        self.hal.evtchn_wait(&[self.port], deadline)?;
        // Clear the flag; the caller re-checks both queues afterwards, and
        // xenstored updated the page before signalling.
        self.hal.evtchn_consume(self.port);
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.hal.now_ns()
    }
}
