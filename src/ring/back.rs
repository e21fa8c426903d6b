//! The back end of a shared ring: takes requests, pushes responses
//! (`BACK_RING_*` and the back-side macros of `io/ring.h`). xenblk itself is
//! a front end; this end serves the simulator's backends and benchmarks.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use super::{need_notify, Sring};
use crate::error::Violation;
use crate::{Error, Result};

/// The back end of a shared ring (`struct NAME_back_ring`).
///
/// The mirror image of [`FrontRing`](super::FrontRing): requests are
/// validated, copied out once and handed over by value
/// ([`poll_request`](BackRing::poll_request)); responses are written
/// privately ([`push_response`](BackRing::push_response)) and published in
/// one step ([`push_responses_and_check_notify`]).
///
/// [`push_responses_and_check_notify`]: BackRing::push_responses_and_check_notify
pub struct BackRing<Req: Copy, Rsp: Copy> {
    sring: Sring<Req, Rsp>,
    /// `rsp_prod_pvt`: the slot the next response goes into.
    rsp_prod_pvt: u32,
    /// `req_cons`: the next request to take.
    req_cons: u32,
    /// The last `rsp_prod` this end published.
    rsp_prod_pub: u32,
    /// The last validated `req_prod`.
    req_prod_seen: u32,
    /// Set on the first protocol violation; the ring is dead from then on.
    broken: Option<Violation>,
}

// SAFETY: as for `FrontRing`: the value uniquely owns the back end of the
// shared memory, and what it moves through the ring is `Send`.
unsafe impl<Req: Copy + Send, Rsp: Copy + Send> Send for BackRing<Req, Rsp> {}

impl<Req: Copy, Rsp: Copy> BackRing<Req, Rsp> {
    /// Attaches the back end to a ring the front end initialised
    /// (`BACK_RING_ATTACH`), starting both private indices at the shared
    /// `rsp_prod` as it is now: requests between it and `req_prod` are
    /// waiting. Nothing read here is trusted later; the first
    /// [`poll_request`](BackRing::poll_request) validates `req_prod`.
    ///
    /// # Safety
    ///
    /// As for [`FrontRing::init`](super::FrontRing::init), with the roles
    /// swapped (no other `BackRing` uses the memory; the peer is the one
    /// front end); in addition, the memory must already hold a shared ring.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRingOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn attach(shared: NonNull<u8>, order: u32) -> Result<Self> {
        // SAFETY: the caller's contract is `Sring::new`'s.
        let sring = unsafe { Sring::<Req, Rsp>::new(shared, order)? };
        let start = sring.rsp_prod().load(Ordering::Acquire);
        Ok(Self::with_indices(sring, start))
    }

    /// Attaches the back end with both private indices at `start`
    /// (`BACK_RING_ATTACH` with an explicit index; `BACK_RING_INIT` is
    /// `start == 0`).
    ///
    /// # Safety
    ///
    /// As for [`attach`](BackRing::attach).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRingOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn attach_at(shared: NonNull<u8>, order: u32, start: u32) -> Result<Self> {
        // SAFETY: the caller's contract is `Sring::new`'s.
        let sring = unsafe { Sring::<Req, Rsp>::new(shared, order)? };
        Ok(Self::with_indices(sring, start))
    }

    fn with_indices(sring: Sring<Req, Rsp>, start: u32) -> Self {
        BackRing {
            sring,
            rsp_prod_pvt: start,
            req_cons: start,
            rsp_prod_pub: start,
            req_prod_seen: start,
            broken: None,
        }
    }

    /// Number of slots (`RING_SIZE`), a power of two.
    #[inline]
    pub fn size(&self) -> u32 {
        self.sring.size()
    }

    /// Requests taken that have no response written yet:
    /// `req_cons - rsp_prod_pvt`.
    #[inline]
    pub fn requests_awaiting_response(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// `req_cons`: the index of the next request to take.
    #[inline]
    pub fn req_cons(&self) -> u32 {
        self.req_cons
    }

    /// `rsp_prod_pvt`: the index the next response will take.
    #[inline]
    pub fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The protocol violation that broke this ring, if any.
    #[inline]
    pub fn violation(&self) -> Option<Violation> {
        self.broken
    }

    /// Reads `req_prod` (`Acquire`) and validates it before use: the front
    /// end cannot have more requests outstanding than slots
    /// (`RING_REQUEST_PROD_OVERFLOW`: `req_prod - rsp_prod_pvt <= size`),
    /// `req_prod` must not fall behind `req_cons` nor behind what we saw last
    /// time. With that, `RING_REQUEST_CONS_OVERFLOW` (a request whose slot
    /// still awaits its response) cannot happen.
    #[inline]
    fn refresh(&mut self) -> Result<bool> {
        if let Some(v) = self.broken {
            return Err(Error::Protocol(v));
        }
        let prod = self.sring.req_prod().load(Ordering::Acquire);
        let cons = self.req_cons;
        let unconsumed = prod.wrapping_sub(cons);
        let outstanding = prod.wrapping_sub(self.rsp_prod_pvt);
        if outstanding > self.size()
            || unconsumed > outstanding
            || unconsumed < self.req_prod_seen.wrapping_sub(cons)
        {
            return Err(self.violate(prod));
        }
        self.req_prod_seen = prod;
        Ok(unconsumed != 0)
    }

    #[cold]
    fn violate(&mut self, prod: u32) -> Error {
        let v = Violation::RequestOverrun {
            prod,
            cons: self.req_cons,
        };
        self.broken = Some(v);
        Error::Protocol(v)
    }

    /// Takes the next request, if any, copying it out of its slot once with
    /// a volatile load (`RING_COPY_REQUEST`). The shared `req_prod` is read
    /// and validated only when the requests seen last time are used up.
    ///
    /// # Errors
    ///
    /// [`Error::Protocol`] with [`Violation::RequestOverrun`] if the front end
    /// published more requests than the ring holds or moved `req_prod`
    /// backwards; the ring stays broken.
    #[inline]
    pub fn poll_request(&mut self) -> Result<Option<Req>> {
        if self.req_cons == self.req_prod_seen && !self.refresh()? {
            return Ok(None);
        }
        let req = self.sring.read_req(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(Some(req))
    }

    /// Takes every request available now, reading `req_prod` once, and hands
    /// each (copied out once) to `f` in order. Returns how many.
    ///
    /// # Errors
    ///
    /// As for [`poll_request`](BackRing::poll_request); on error no request
    /// is taken.
    #[inline]
    pub fn poll_requests(&mut self, mut f: impl FnMut(Req)) -> Result<u32> {
        self.refresh()?;
        let start = self.req_cons;
        let end = self.req_prod_seen;
        let mut idx = start;
        while idx != end {
            f(self.sring.read_req(idx));
            idx = idx.wrapping_add(1);
        }
        self.req_cons = end;
        Ok(end.wrapping_sub(start))
    }

    /// Whether requests are waiting (`RING_HAS_UNCONSUMED_REQUESTS`).
    ///
    /// # Errors
    ///
    /// As for [`poll_request`](BackRing::poll_request).
    #[inline]
    pub fn has_unconsumed_requests(&mut self) -> Result<bool> {
        if self.req_cons != self.req_prod_seen {
            return Ok(true);
        }
        self.refresh()
    }

    /// Writes `rsp` into the slot of the oldest request taken and not yet
    /// answered (`RING_GET_RESPONSE(rsp_prod_pvt)` + `rsp_prod_pvt++`),
    /// without publishing it.
    ///
    /// # Errors
    ///
    /// [`Error::RingFull`] if every request taken has a response already
    /// (another response would overwrite a request slot);
    /// [`Error::Protocol`] if the front end broke the protocol earlier.
    #[inline]
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<()> {
        if let Some(v) = self.broken {
            return Err(Error::Protocol(v));
        }
        if self.requests_awaiting_response() == 0 {
            return Err(Error::RingFull);
        }
        self.sring.write_rsp(self.rsp_prod_pvt, rsp);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the written responses (`RING_PUSH_RESPONSES`): a `Release`
    /// store of `rsp_prod`.
    #[inline]
    pub fn push_responses(&mut self) {
        self.sring
            .rsp_prod()
            .store(self.rsp_prod_pvt, Ordering::Release);
        self.rsp_prod_pub = self.rsp_prod_pvt;
    }

    /// Publishes the written responses and says whether the front end must
    /// be notified (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`): `Release` store
    /// of `rsp_prod`, full fence, then notify iff
    /// `(new - rsp_event) < (new - old)`. With nothing new it returns `false`
    /// without a barrier.
    #[inline]
    pub fn push_responses_and_check_notify(&mut self) -> bool {
        let old = self.rsp_prod_pub;
        let new = self.rsp_prod_pvt;
        if new == old {
            return false;
        }
        self.sring.rsp_prod().store(new, Ordering::Release);
        self.rsp_prod_pub = new;
        fence(Ordering::SeqCst);
        let event = self.sring.rsp_event().load(Ordering::Relaxed);
        need_notify(old, new, event)
    }

    /// The check before going to sleep (`RING_FINAL_CHECK_FOR_REQUESTS`):
    /// if no request is waiting, sets `req_event = req_cons + 1`, issues a
    /// full fence and checks again. `true` means requests are waiting.
    ///
    /// # Errors
    ///
    /// As for [`poll_request`](BackRing::poll_request).
    #[inline]
    pub fn final_check_for_requests(&mut self) -> Result<bool> {
        if self.has_unconsumed_requests()? {
            return Ok(true);
        }
        self.sring
            .req_event()
            .store(self.req_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.refresh()
    }
}

impl<Req: Copy, Rsp: Copy> core::fmt::Debug for BackRing<Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("BackRing")
            .field("size", &self.size())
            .field("req_cons", &self.req_cons)
            .field("req_prod_seen", &self.req_prod_seen)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("rsp_prod_pub", &self.rsp_prod_pub)
            .field("broken", &self.broken)
            .finish()
    }
}
