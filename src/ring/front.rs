//! The front end of a shared ring: pushes requests, takes responses
//! (`FRONT_RING_*` and the front-side macros of `io/ring.h`).

use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use super::{need_notify, RingError, Sring, Violation};
use crate::Result;

/// The front end of a shared ring (`struct NAME_front_ring`).
///
/// Requests are written into slots privately ([`push_request`]) and made
/// visible to the back end in one step ([`push_requests_and_check_notify`]).
/// Responses are validated against the requests in flight, copied out once
/// and handed over by value ([`poll_response`], [`poll_responses`]).
///
/// All indices are free-running `RING_IDX` (`u32`) values compared with
/// wrapping arithmetic, so a ring may start anywhere ([`init_at`]) and runs
/// across `u32::MAX` without a hiccup.
///
/// [`push_request`]: FrontRing::push_request
/// [`push_requests_and_check_notify`]: FrontRing::push_requests_and_check_notify
/// [`poll_response`]: FrontRing::poll_response
/// [`poll_responses`]: FrontRing::poll_responses
/// [`init_at`]: FrontRing::init_at
pub struct FrontRing<Req: Copy, Rsp: Copy> {
    sring: Sring<Req, Rsp>,
    /// `req_prod_pvt`: the next request slot to fill.
    req_prod_pvt: u32,
    /// `rsp_cons`: the next response to take.
    rsp_cons: u32,
    /// The last `req_prod` this end published (ring.h re-reads it from the
    /// shared page; our copy cannot be scribbled on by the peer).
    req_prod_pub: u32,
    /// The last validated `rsp_prod`: responses in `rsp_cons..rsp_prod_seen`
    /// may be read without touching the shared index again.
    rsp_prod_seen: u32,
    /// Set on the first protocol violation; the ring is dead from then on.
    broken: Option<Violation>,
}

// SAFETY: a `FrontRing` is the unique owner of the front end of the shared
// memory (the constructors' contract); moving it to another thread moves that
// ownership, and the values it moves through the ring are `Send`. It is not
// `Sync` (the `NonNull` inside keeps it so): `&FrontRing` offers nothing that
// would be unsound to share, but sharing would invite two producers.
unsafe impl<Req: Copy + Send, Rsp: Copy + Send> Send for FrontRing<Req, Rsp> {}

impl<Req: Copy, Rsp: Copy> FrontRing<Req, Rsp> {
    /// Initialises the shared ring and its front end (`XEN_FRONT_RING_INIT`:
    /// `SHARED_RING_INIT` then `FRONT_RING_INIT`): all indices 0, both event
    /// indices 1, padding zeroed.
    ///
    /// # Safety
    ///
    /// - `shared` is page-aligned and valid for reads and writes of
    ///   `PAGE_SIZE << order` bytes of initialised (for instance zeroed)
    ///   memory, and stays so for as long as the returned ring lives.
    /// - Nobody but this ring and the one peer end of this ring (another
    ///   domain, or one [`BackRing`](super::BackRing) in this address space)
    ///   accesses that memory while the ring lives, and the peer only through
    ///   the `io/ring.h` protocol — though it may break that protocol in any
    ///   way, the ring survives it. No other `FrontRing` uses the memory.
    /// - `Req` and `Rsp` are plain data that is valid for every bit pattern
    ///   (integers, and arrays and `repr(C)` structs of them: no `bool`,
    ///   `char`, enums, references or pointers), because the peer may write
    ///   anything into a slot.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn init(shared: NonNull<u8>, order: u32) -> Result<Self, RingError> {
        // SAFETY: the caller's contract is ours.
        unsafe { Self::init_at(shared, order, 0) }
    }

    /// Like [`init`](FrontRing::init), but starts every index at `start`
    /// (`req_prod = rsp_prod = start`, `req_event = rsp_event = start + 1`).
    /// `io/ring.h` only requires both ends to agree on the start; tests use
    /// this to run a ring across the `u32` wrap.
    ///
    /// # Safety
    ///
    /// As for [`init`](FrontRing::init).
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn init_at(shared: NonNull<u8>, order: u32, start: u32) -> Result<Self, RingError> {
        // SAFETY: the caller's contract is `Sring::new`'s.
        let sring = unsafe { Sring::<Req, Rsp>::new(shared, order)? };
        // SHARED_RING_INIT. The peer is not attached yet; it learns about the
        // ring through xenstore, which orders these stores before its reads.
        let next = start.wrapping_add(1);
        sring.req_prod().store(start, Ordering::Relaxed);
        sring.rsp_prod().store(start, Ordering::Relaxed);
        sring.req_event().store(next, Ordering::Relaxed);
        sring.rsp_event().store(next, Ordering::Release);
        let pad = core::mem::offset_of!(crate::abi::sring::SringHeader, pad);
        // SAFETY: the 48 padding bytes lie inside the first page, which the
        // caller gave us; nobody holds a reference to them.
        unsafe {
            shared
                .as_ptr()
                .add(pad)
                .cast::<[u8; 48]>()
                .write_volatile([0; 48])
        };
        Ok(Self::with_indices(sring, start))
    }

    /// Attaches a front end to a shared ring without touching the shared
    /// page (`FRONT_RING_ATTACH`), with both private indices at `start`,
    /// for example when reconnecting to a ring whose indices are known.
    ///
    /// # Safety
    ///
    /// As for [`init`](FrontRing::init); in addition, the memory must already
    /// hold a shared ring.
    ///
    /// # Errors
    ///
    /// [`RingError::InvalidOrder`] if `order > MAX_RING_ORDER`.
    pub unsafe fn attach(shared: NonNull<u8>, order: u32, start: u32) -> Result<Self, RingError> {
        // SAFETY: the caller's contract is `Sring::new`'s.
        let sring = unsafe { Sring::<Req, Rsp>::new(shared, order)? };
        Ok(Self::with_indices(sring, start))
    }

    fn with_indices(sring: Sring<Req, Rsp>, start: u32) -> Self {
        FrontRing {
            sring,
            req_prod_pvt: start,
            rsp_cons: start,
            req_prod_pub: start,
            rsp_prod_seen: start,
            broken: None,
        }
    }

    /// Number of slots (`RING_SIZE`), a power of two.
    #[inline]
    pub fn size(&self) -> u32 {
        self.sring.size()
    }

    /// Free request slots (`RING_FREE_REQUESTS`).
    #[inline]
    pub fn free_requests(&self) -> u32 {
        self.size() - self.requests_in_flight()
    }

    /// Whether no request slot is free (`RING_FULL`).
    #[inline]
    pub fn is_full(&self) -> bool {
        self.free_requests() == 0
    }

    /// Requests written (published or not) whose responses have not been
    /// taken yet: `req_prod_pvt - rsp_cons`.
    #[inline]
    pub fn requests_in_flight(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Requests written with [`push_request`](FrontRing::push_request) but
    /// not yet published.
    #[inline]
    pub fn unpublished_requests(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_pub)
    }

    /// Forgets the requests pushed since the last publish: the backend never
    /// saw them, and their slots are written again by the next pushes.
    #[inline]
    pub fn discard_unpublished(&mut self) {
        self.req_prod_pvt = self.req_prod_pub;
    }

    /// `req_prod_pvt`: the index the next request will take.
    #[inline]
    pub fn req_prod_pvt(&self) -> u32 {
        self.req_prod_pvt
    }

    /// `rsp_cons`: the index of the next response to take.
    #[inline]
    pub fn rsp_cons(&self) -> u32 {
        self.rsp_cons
    }

    /// The protocol violation that broke this ring, if any.
    #[inline]
    pub fn violation(&self) -> Option<Violation> {
        self.broken
    }

    /// Writes `req` into the next free slot with one volatile store, without
    /// publishing it (`RING_GET_REQUEST` + `req_prod_pvt++`). The request is
    /// never read back from shared memory: keep your own shadow copy.
    ///
    /// # Errors
    ///
    /// [`RingError::Full`] if no slot is free; [`RingError::Protocol`] if the
    /// back end broke the protocol earlier.
    #[inline]
    pub fn push_request(&mut self, req: &Req) -> Result<(), RingError> {
        if let Some(v) = self.broken {
            return Err(RingError::Protocol(v));
        }
        if self.requests_in_flight() >= self.size() {
            return Err(RingError::Full);
        }
        self.sring.write_req(self.req_prod_pvt, req);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the written requests (`RING_PUSH_REQUESTS`): a `Release`
    /// store of `req_prod`, so the back end sees the slots before the index.
    #[inline]
    pub fn push_requests(&mut self) {
        self.sring
            .req_prod()
            .store(self.req_prod_pvt, Ordering::Release);
        self.req_prod_pub = self.req_prod_pvt;
    }

    /// Publishes the written requests and says whether the back end must be
    /// notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`): `Release` store of
    /// `req_prod` (the `xen_wmb()`), full fence (the `xen_mb()`: the back end
    /// sees the new requests before we read `req_event`), then notify iff
    /// `(new - req_event) < (new - old)`, i.e. this push moved `req_prod`
    /// past the index the back end asked to be woken at.
    ///
    /// With nothing new to publish it returns `false` without a barrier.
    #[inline]
    pub fn push_requests_and_check_notify(&mut self) -> bool {
        let old = self.req_prod_pub;
        let new = self.req_prod_pvt;
        if new == old {
            return false;
        }
        self.sring.req_prod().store(new, Ordering::Release);
        self.req_prod_pub = new;
        fence(Ordering::SeqCst);
        let event = self.sring.req_event().load(Ordering::Relaxed);
        need_notify(old, new, event)
    }

    /// Reads `rsp_prod` (`Acquire`: slots up to it are then safe to read)
    /// and validates it before use. The back end may only answer requests we
    /// published: `rsp_prod - rsp_cons` must not exceed `req_prod - rsp_cons`
    /// (stricter than `RING_RESPONSE_PROD_OVERFLOW`, which allows a whole
    /// ring), nor fall below what we saw last time (a producer never moves
    /// backwards). Returns whether responses are waiting.
    #[inline]
    fn refresh(&mut self) -> Result<bool, RingError> {
        if let Some(v) = self.broken {
            return Err(RingError::Protocol(v));
        }
        let prod = self.sring.rsp_prod().load(Ordering::Acquire);
        let cons = self.rsp_cons;
        let avail = prod.wrapping_sub(cons);
        if avail > self.req_prod_pub.wrapping_sub(cons)
            || avail < self.rsp_prod_seen.wrapping_sub(cons)
        {
            return Err(self.violate(prod));
        }
        self.rsp_prod_seen = prod;
        Ok(avail != 0)
    }

    #[cold]
    fn violate(&mut self, prod: u32) -> RingError {
        let v = Violation::ProducerOverrun {
            prod,
            cons: self.rsp_cons,
        };
        self.broken = Some(v);
        RingError::Protocol(v)
    }

    /// Takes the next response, if any: copies it out of its slot once with
    /// a volatile load and advances `rsp_cons`. The shared `rsp_prod` is read
    /// (and validated) only when the responses seen last time are used up,
    /// so a run of polls costs one shared read.
    ///
    /// # Errors
    ///
    /// [`RingError::Protocol`] with [`Violation::ProducerOverrun`] if the back
    /// end published more responses than requests are in flight, or moved
    /// `rsp_prod` backwards; the ring stays broken and every later call
    /// returns the same error.
    #[inline]
    pub fn poll_response(&mut self) -> Result<Option<Rsp>, RingError> {
        if self.rsp_cons == self.rsp_prod_seen && !self.refresh()? {
            return Ok(None);
        }
        let rsp = self.sring.read_rsp(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(rsp))
    }

    /// Takes every response available now: reads `rsp_prod` once, then hands
    /// each response (copied out once) to `f` in order. Returns how many.
    ///
    /// # Errors
    ///
    /// As for [`poll_response`](FrontRing::poll_response); on error no
    /// response is taken.
    #[inline]
    pub fn poll_responses(&mut self, mut f: impl FnMut(Rsp)) -> Result<u32, RingError> {
        self.refresh()?;
        let start = self.rsp_cons;
        let end = self.rsp_prod_seen;
        let mut idx = start;
        while idx != end {
            f(self.sring.read_rsp(idx));
            idx = idx.wrapping_add(1);
        }
        self.rsp_cons = end;
        Ok(end.wrapping_sub(start))
    }

    /// Whether responses are waiting (`RING_HAS_UNCONSUMED_RESPONSES`),
    /// reading `rsp_prod` only if none are known.
    ///
    /// # Errors
    ///
    /// As for [`poll_response`](FrontRing::poll_response).
    #[inline]
    pub fn has_unconsumed_responses(&mut self) -> Result<bool, RingError> {
        if self.rsp_cons != self.rsp_prod_seen {
            return Ok(true);
        }
        self.refresh()
    }

    /// The check before going to sleep (`RING_FINAL_CHECK_FOR_RESPONSES`):
    /// if no response is waiting, sets `rsp_event = rsp_cons + 1` so the back
    /// end notifies on its very next response, issues a full fence, and
    /// checks again. `true` means responses are waiting: do not sleep.
    ///
    /// # Errors
    ///
    /// As for [`poll_response`](FrontRing::poll_response).
    #[inline]
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.has_unconsumed_responses()? {
            return Ok(true);
        }
        self.sring
            .rsp_event()
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.refresh()
    }
}

impl<Req: Copy, Rsp: Copy> core::fmt::Debug for FrontRing<Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrontRing")
            .field("size", &self.size())
            .field("req_prod_pvt", &self.req_prod_pvt)
            .field("req_prod_pub", &self.req_prod_pub)
            .field("rsp_cons", &self.rsp_cons)
            .field("rsp_prod_seen", &self.rsp_prod_seen)
            .field("broken", &self.broken)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::ring::{TestPages, MAX_RING_ORDER};

    /// A blkif-sized request and response made of words (no padding).
    type Req = [u64; 14];
    type Rsp = [u64; 2];
    type Ring = FrontRing<Req, Rsp>;
    const STRIDE: usize = 112;

    fn req(n: u64) -> Req {
        [n; 14]
    }

    fn ring_at(pages: &TestPages, start: u32) -> Ring {
        // SAFETY: `pages` is one zeroed page that outlives the ring; the test
        // itself plays the back end, only through the header and slots.
        unsafe { Ring::init_at(pages.ptr(), 0, start) }.expect("order 0")
    }

    /// Plays a back end: writes response `rsp` into the slot of `idx`.
    fn answer(pages: &TestPages, idx: u32, rsp: Rsp) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&rsp[0].to_ne_bytes());
        bytes[8..].copy_from_slice(&rsp[1].to_ne_bytes());
        pages.poke(64 + (idx as usize % 32) * STRIDE, &bytes);
    }

    fn overrun(prod: u32, cons: u32) -> RingError {
        RingError::Protocol(Violation::ProducerOverrun { prod, cons })
    }

    #[test]
    fn init_at_writes_shared_ring_init_over_garbage() {
        let pages = TestPages::new(0);
        pages.poke(0, &[0xff; 64]);
        let ring = ring_at(&pages, 7);
        let h = pages.header();
        assert_eq!(h.req_prod.load(SeqCst), 7);
        assert_eq!(h.rsp_prod.load(SeqCst), 7);
        assert_eq!(h.req_event.load(SeqCst), 8);
        assert_eq!(h.rsp_event.load(SeqCst), 8);
        assert_eq!(pages.peek::<48>(16), [0; 48]);
        assert_eq!((ring.size(), ring.free_requests()), (32, 32));
        assert_eq!((ring.req_prod_pvt(), ring.rsp_cons()), (7, 7));
    }

    #[test]
    fn attach_leaves_the_shared_page_alone() {
        let pages = TestPages::new(0);
        pages.poke(0, &[0xee; 64]);
        // SAFETY: as in `ring_at`; the page holds a (garbage) ring header.
        let mut ring = unsafe { Ring::attach(pages.ptr(), 0, 40) }.expect("order 0");
        assert_eq!(pages.peek::<64>(0), [0xee; 64]);
        assert_eq!(ring.req_prod_pvt(), 40);
        ring.push_request(&req(1)).expect("room");
        // req_event is garbage (0xeeeeeeee), far from 41: no notification.
        assert!(!ring.push_requests_and_check_notify());
        assert_eq!(pages.header().req_prod.load(SeqCst), 41);
    }

    #[test]
    fn orders_above_the_maximum_are_rejected() {
        let pages = TestPages::new(0);
        // SAFETY: the order is rejected before the memory is touched.
        let r = unsafe { Ring::init(pages.ptr(), MAX_RING_ORDER + 1) };
        assert_eq!(r.err(), Some(RingError::InvalidOrder(MAX_RING_ORDER + 1)));
        assert_eq!(pages.peek::<64>(0), [0; 64]);
    }

    #[test]
    fn pushes_fill_exactly_the_ring_and_stay_private_until_published() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..32 {
            assert_eq!(ring.free_requests(), 32 - n);
            ring.push_request(&req(u64::from(n) + 1))
                .expect("free slot");
        }
        assert!(ring.is_full());
        assert_eq!(ring.push_request(&req(99)), Err(RingError::Full));
        assert_eq!(pages.header().req_prod.load(SeqCst), 0, "not published yet");
        assert_eq!(ring.unpublished_requests(), 32);
        // Each request sits in its own slot, in order.
        for n in 0..32usize {
            let word = u64::from_ne_bytes(pages.peek::<8>(64 + n * STRIDE + 104));
            assert_eq!(word, n as u64 + 1);
        }
        // req_event is 1: the first push past index 0 notifies.
        assert!(ring.push_requests_and_check_notify());
        assert_eq!(pages.header().req_prod.load(SeqCst), 32);
        assert_eq!(ring.unpublished_requests(), 0);
        // Nothing new: no notification and no change.
        assert!(!ring.push_requests_and_check_notify());
    }

    #[test]
    fn responses_are_taken_in_order_and_free_their_slots() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        assert_eq!(ring.poll_response(), Ok(None));
        for idx in 0..3 {
            answer(&pages, idx, [u64::from(idx), 7]);
        }
        pages.header().rsp_prod.store(3, SeqCst);
        assert_eq!(ring.has_unconsumed_responses(), Ok(true));
        for idx in 0..3u32 {
            assert_eq!(ring.poll_response(), Ok(Some([u64::from(idx), 7])));
        }
        assert_eq!(ring.poll_response(), Ok(None));
        assert_eq!((ring.requests_in_flight(), ring.free_requests()), (0, 32));
    }

    #[test]
    fn rsp_prod_jumping_forward_breaks_the_ring_for_good() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        pages.header().rsp_prod.store(4, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(4, 0)));
        // Even once the back end behaves again, the ring stays broken.
        pages.header().rsp_prod.store(1, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(4, 0)));
        assert_eq!(
            ring.poll_responses(|_| panic!("no response")),
            Err(overrun(4, 0))
        );
        assert_eq!(ring.has_unconsumed_responses(), Err(overrun(4, 0)));
        assert_eq!(ring.final_check_for_responses(), Err(overrun(4, 0)));
        assert_eq!(ring.push_request(&req(9)), Err(overrun(4, 0)));
        assert_eq!(
            ring.violation(),
            Some(Violation::ProducerOverrun { prod: 4, cons: 0 })
        );
    }

    #[test]
    fn rsp_prod_far_ahead_is_rejected_not_indexed() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        ring.push_request(&req(0)).expect("room");
        ring.push_requests();
        pages.header().rsp_prod.store(0x8000_0000, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(0x8000_0000, 0)));
    }

    #[test]
    fn rsp_prod_jumping_backward_is_rejected() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 5);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        // Behind where the ring started.
        pages.header().rsp_prod.store(4, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(4, 5)));

        let mut ring = ring_at(&pages, 5);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        pages.header().rsp_prod.store(7, SeqCst);
        assert!(ring.poll_response().expect("valid").is_some());
        assert!(ring.poll_response().expect("valid").is_some());
        // Behind what we have consumed.
        pages.header().rsp_prod.store(6, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(6, 7)));
    }

    #[test]
    fn rsp_prod_moving_back_inside_the_seen_window_is_rejected() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        pages.header().rsp_prod.store(3, SeqCst);
        assert!(ring.poll_response().expect("valid").is_some());
        // Seen 3, consumed 1; now the back end claims only 2.
        pages.header().rsp_prod.store(2, SeqCst);
        assert_eq!(ring.poll_responses(|_| ()), Err(overrun(2, 1)));
    }

    #[test]
    fn exactly_every_published_request_may_be_answered() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, u32::MAX - 1);
        for n in 0..32 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        pages.header().rsp_prod.store(30, SeqCst); // (MAX - 1) + 32, wrapped
        let mut seen = 0;
        assert_eq!(ring.poll_responses(|_| seen += 1), Ok(32));
        assert_eq!(seen, 32);
        assert_eq!(ring.free_requests(), 32);
    }

    #[test]
    fn responses_to_unpublished_requests_are_rejected() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..4 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        ring.push_request(&req(4)).expect("room");
        ring.push_request(&req(5)).expect("room");
        // Six requests written, four published: a fifth response is forged.
        pages.header().rsp_prod.store(5, SeqCst);
        assert_eq!(ring.poll_response(), Err(overrun(5, 0)));
    }

    #[test]
    fn garbage_in_a_slot_is_delivered_as_copied_and_never_reread() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        ring.push_request(&req(1)).expect("room");
        ring.push_requests();
        pages.poke(64, &[0xa5; STRIDE]);
        pages.header().rsp_prod.store(1, SeqCst);
        let got = ring.poll_response().expect("valid index");
        assert_eq!(got, Some([0xa5a5_a5a5_a5a5_a5a5; 2]));
        // The back end rewrites the consumed slot: nothing is delivered again.
        pages.poke(64, &[0x11; STRIDE]);
        assert_eq!(ring.poll_response(), Ok(None));
        assert_eq!(ring.final_check_for_responses(), Ok(false));
    }

    #[test]
    fn a_batch_reads_rsp_prod_once() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 0);
        for n in 0..3 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        for idx in 0..3 {
            answer(&pages, idx, [u64::from(idx), 0]);
        }
        pages.header().rsp_prod.store(2, SeqCst);
        let mut got = std::vec::Vec::new();
        let n = ring.poll_responses(|r| {
            // The back end publishes a third response mid-batch.
            pages.header().rsp_prod.store(3, SeqCst);
            got.push(r[0]);
        });
        assert_eq!((n, got.as_slice()), (Ok(2), &[0, 1][..]));
        assert_eq!(ring.poll_response(), Ok(Some([2, 0])));
    }

    #[test]
    fn final_check_arms_rsp_event_only_when_idle() {
        let pages = TestPages::new(0);
        let mut ring = ring_at(&pages, 10);
        for n in 0..2 {
            ring.push_request(&req(n)).expect("room");
        }
        ring.push_requests();
        pages.header().rsp_event.store(999, SeqCst);
        pages.header().rsp_prod.store(11, SeqCst);
        assert_eq!(ring.final_check_for_responses(), Ok(true));
        assert_eq!(pages.header().rsp_event.load(SeqCst), 999, "untouched");
        assert!(ring.poll_response().expect("valid").is_some());
        assert_eq!(ring.final_check_for_responses(), Ok(false));
        assert_eq!(pages.header().rsp_event.load(SeqCst), 12);
    }
}
