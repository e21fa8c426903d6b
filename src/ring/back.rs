//! The back end of a shared ring: takes requests, pushes responses
//! (`BACK_RING_*` and the back-side macros of `io/ring.h`). xenblk itself is
//! a front end; this end serves the simulator's backends and benchmarks.

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use super::{need_notify, RingError, Sring, Violation};
use crate::Result;

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
    /// [`RingError::InvalidOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn attach(shared: NonNull<u8>, order: u32) -> Result<Self, RingError> {
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
    /// [`RingError::InvalidOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn attach_at(
        shared: NonNull<u8>,
        order: u32,
        start: u32,
    ) -> Result<Self, RingError> {
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
    fn refresh(&mut self) -> Result<bool, RingError> {
        if let Some(v) = self.broken {
            return Err(RingError::Protocol(v));
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
    fn violate(&mut self, prod: u32) -> RingError {
        let v = Violation::RequestOverrun {
            prod,
            cons: self.req_cons,
        };
        self.broken = Some(v);
        RingError::Protocol(v)
    }

    /// Takes the next request, if any, copying it out of its slot once with
    /// a volatile load (`RING_COPY_REQUEST`). The shared `req_prod` is read
    /// and validated only when the requests seen last time are used up.
    ///
    /// # Errors
    ///
    /// [`RingError::Protocol`] with [`Violation::RequestOverrun`] if the front end
    /// published more requests than the ring holds or moved `req_prod`
    /// backwards; the ring stays broken.
    #[inline]
    pub fn poll_request(&mut self) -> Result<Option<Req>, RingError> {
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
    pub fn poll_requests(&mut self, mut f: impl FnMut(Req)) -> Result<u32, RingError> {
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
    pub fn has_unconsumed_requests(&mut self) -> Result<bool, RingError> {
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
    /// [`RingError::Full`] if every request taken has a response already
    /// (another response would overwrite a request slot);
    /// [`RingError::Protocol`] if the front end broke the protocol earlier.
    #[inline]
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        if let Some(v) = self.broken {
            return Err(RingError::Protocol(v));
        }
        if self.requests_awaiting_response() == 0 {
            return Err(RingError::Full);
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
    pub fn final_check_for_requests(&mut self) -> Result<bool, RingError> {
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

#[cfg(test)]
mod tests {
    use core::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::ring::{FrontRing, TestPages};

    type Req = [u64; 14];
    type Rsp = [u64; 2];
    type Ring = BackRing<Req, Rsp>;
    const STRIDE: usize = 112;

    /// A well-behaved front end that initialised the ring at `start` and
    /// published `n` requests `[i; 14]`.
    fn front_with(pages: &TestPages, start: u32, n: u64) -> FrontRing<Req, Rsp> {
        // SAFETY: one zeroed page that outlives the ring; the peer is the
        // `BackRing` of the test.
        let mut front = unsafe { FrontRing::init_at(pages.ptr(), 0, start) }.expect("order 0");
        for i in 0..n {
            front.push_request(&[i; 14]).expect("room");
        }
        front.push_requests();
        front
    }

    fn back(pages: &TestPages) -> Ring {
        // SAFETY: as in `front_with`; the page holds a ring.
        unsafe { Ring::attach(pages.ptr(), 0) }.expect("order 0")
    }

    fn overrun(prod: u32, cons: u32) -> RingError {
        RingError::Protocol(Violation::RequestOverrun { prod, cons })
    }

    #[test]
    fn attach_starts_at_the_shared_rsp_prod() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 100, 3);
        let mut ring = back(&pages);
        assert_eq!((ring.req_cons(), ring.rsp_prod_pvt()), (100, 100));
        for i in 0..3 {
            assert_eq!(ring.poll_request(), Ok(Some([i; 14])));
        }
        assert_eq!(ring.poll_request(), Ok(None));
        assert_eq!(ring.requests_awaiting_response(), 3);
    }

    #[test]
    fn attach_at_ignores_the_shared_indices() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 100, 3);
        // SAFETY: as in `back`.
        let mut ring = unsafe { Ring::attach_at(pages.ptr(), 0, 101) }.expect("order 0");
        assert_eq!(ring.poll_request(), Ok(Some([1; 14])));
    }

    #[test]
    fn responses_need_a_taken_request() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 0, 1);
        let mut ring = back(&pages);
        assert_eq!(ring.push_response(&[1, 1]), Err(RingError::Full));
        assert!(ring.poll_request().expect("valid").is_some());
        assert_eq!(ring.push_response(&[1, 1]), Ok(()));
        assert_eq!(ring.push_response(&[2, 2]), Err(RingError::Full));
        // rsp_event is 1 after SHARED_RING_INIT: the first response notifies.
        assert!(ring.push_responses_and_check_notify());
        assert!(!ring.push_responses_and_check_notify());
        assert_eq!(pages.header().rsp_prod.load(SeqCst), 1);
        assert_eq!(pages.peek::<8>(64), 1u64.to_ne_bytes());
    }

    #[test]
    fn req_prod_beyond_the_ring_breaks_it_for_good() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 0, 0);
        let mut ring = back(&pages);
        pages.header().req_prod.store(33, SeqCst);
        assert_eq!(ring.poll_request(), Err(overrun(33, 0)));
        pages.header().req_prod.store(1, SeqCst);
        assert_eq!(ring.poll_request(), Err(overrun(33, 0)));
        assert_eq!(
            ring.poll_requests(|_| panic!("no request")),
            Err(overrun(33, 0))
        );
        assert_eq!(ring.final_check_for_requests(), Err(overrun(33, 0)));
        assert_eq!(ring.push_response(&[0, 0]), Err(overrun(33, 0)));
        assert_eq!(
            ring.violation(),
            Some(Violation::RequestOverrun { prod: 33, cons: 0 })
        );
    }

    #[test]
    fn a_full_ring_of_requests_is_accepted_one_more_is_not() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, u32::MAX - 3, 32);
        let mut ring = back(&pages);
        assert_eq!(ring.poll_requests(|_| ()), Ok(32));
        // Answer one: the front may now have one more outstanding, not two.
        ring.push_response(&[0, 0]).expect("taken");
        pages.header().req_prod.store(30, SeqCst); // (MAX - 3) + 34
        assert_eq!(ring.poll_request(), Err(overrun(30, 28)));
    }

    #[test]
    fn requests_whose_slots_await_responses_are_refused() {
        // RING_REQUEST_CONS_OVERFLOW: 32 taken, none answered, and the
        // front claims a 33rd that would sit in the slot of the first.
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 0, 32);
        let mut ring = back(&pages);
        assert_eq!(ring.poll_requests(|_| ()), Ok(32));
        pages.header().req_prod.store(33, SeqCst);
        assert_eq!(ring.has_unconsumed_requests(), Err(overrun(33, 32)));
    }

    #[test]
    fn req_prod_moving_backward_is_rejected() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 8, 4);
        let mut ring = back(&pages);
        assert!(ring.poll_request().expect("valid").is_some());
        assert!(ring.poll_request().expect("valid").is_some());
        // Behind req_cons (10) but not behind rsp_prod_pvt (8).
        pages.header().req_prod.store(9, SeqCst);
        assert_eq!(ring.poll_requests(|_| ()), Err(overrun(9, 10)));

        let pages = TestPages::new(0);
        let _front = front_with(&pages, 8, 4);
        let mut ring = back(&pages);
        assert!(ring.poll_request().expect("valid").is_some());
        // Seen 12, consumed 1; now only 11 are claimed.
        pages.header().req_prod.store(11, SeqCst);
        assert_eq!(ring.poll_requests(|_| ()), Err(overrun(11, 9)));
    }

    #[test]
    fn garbage_requests_are_delivered_as_copied_once() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 0, 1);
        pages.poke(64, &[0x5a; STRIDE]);
        let mut ring = back(&pages);
        assert_eq!(ring.poll_request(), Ok(Some([0x5a5a_5a5a_5a5a_5a5a; 14])));
        pages.poke(64, &[0x00; STRIDE]);
        assert_eq!(ring.poll_request(), Ok(None));
    }

    #[test]
    fn final_check_arms_req_event_only_when_idle() {
        let pages = TestPages::new(0);
        let _front = front_with(&pages, 20, 1);
        let mut ring = back(&pages);
        pages.header().req_event.store(7, SeqCst);
        assert_eq!(ring.final_check_for_requests(), Ok(true));
        assert_eq!(pages.header().req_event.load(SeqCst), 7);
        assert!(ring.poll_request().expect("valid").is_some());
        assert_eq!(ring.final_check_for_requests(), Ok(false));
        assert_eq!(pages.header().req_event.load(SeqCst), 22);
    }
}
