//! Playing the back end of one ring by hand: [`RingPeer`].
//!
//! The simulated blkback answers a frontend the way a real backend does.
//! Unit tests of the frontend's ring code need the opposite: a backend that
//! does exactly what the test says, one request and one response at a time,
//! and that can also break the protocol on purpose. `RingPeer` is that: the
//! back end of a ring the frontend granted, attached the way a backend
//! attaches (map the ring grants, `BACK_RING_ATTACH`, bind the event
//! channel), with safe calls to take requests, push responses, poke the
//! shared indices and slots, and map the data grants a request names.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use std::vec::Vec;

use super::errno::EINVAL;
use super::{GrantMapping, SimXen};
use crate::abi::sring::{SringHeader, SRING_HEADER_SIZE};
use crate::hal::{DomId, GrantRef, HalError, Port, PAGE_SIZE};
use crate::ring::{BackRing, RingEntry, RingError, MAX_RING_ORDER};
use crate::Result;

/// The back end of one shared ring, played by a test.
///
/// `Req` and `Rsp` are the ring's entry types as the backend reads them
/// (for blkif, the simulator's own `RawSlot` and
/// [`BlkifResponse`](crate::abi::blkif::BlkifResponse)).
///
/// Dropping the peer (or [`detach`](Self::detach)) unmaps the ring and
/// closes the backend's port; data grants mapped through
/// [`map_grant`](Self::map_grant) are separate values the test drops when
/// it wants the backend to let go of them.
pub struct RingPeer<Req: RingEntry, Rsp: RingEntry> {
    /// Declared before `pages`: the ring points into them and drops first.
    ring: BackRing<Req, Rsp>,
    /// The ring pages, mapped in order (one contiguous run).
    pages: Vec<GrantMapping>,
    xen: SimXen,
    backend: DomId,
    frontend: DomId,
    /// The backend's end of the event channel.
    port: Port,
    /// The frontend's end.
    front_port: Port,
}

impl<Req: RingEntry, Rsp: RingEntry> core::fmt::Debug for RingPeer<Req, Rsp> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingPeer")
            .field("backend", &self.backend)
            .field("frontend", &self.frontend)
            .field("port", &self.port)
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl<Req: RingEntry, Rsp: RingEntry> RingPeer<Req, Rsp> {
    /// Byte stride of a slot (`sizeof(union NAME_sring_entry)`): the larger
    /// entry, rounded up to the larger alignment, as `ring` lays slots out.
    const ENTRY: usize = {
        let size = if size_of::<Req>() > size_of::<Rsp>() {
            size_of::<Req>()
        } else {
            size_of::<Rsp>()
        };
        let align = if align_of::<Req>() > align_of::<Rsp>() {
            align_of::<Req>()
        } else {
            align_of::<Rsp>()
        };
        size.div_ceil(align) * align
    };

    /// Attaches `backend` to the ring `frontend` granted it with `grefs`
    /// (one reference per page, in order: a ring of `grefs.len()` pages)
    /// and binds the frontend's unbound `port`. The pending flag the bind
    /// leaves on the new port is cleared: from here on
    /// [`take_event`](Self::take_event) reports only what the frontend sends.
    ///
    /// # Errors
    ///
    /// What [`SimXen::map_grant`] and [`SimXen::bind_interdomain`] return;
    /// `Hal(Hypercall(-EINVAL))` when the number of references is not a
    /// power of two of at most `1 << MAX_RING_ORDER`, when the pages are
    /// not one contiguous run of the frontend's memory (the simulator's
    /// limit, as for its blkback), or when somebody else maps the ring
    /// already. Nothing is held on error.
    pub fn attach(
        xen: &SimXen,
        backend: DomId,
        frontend: DomId,
        grefs: &[GrantRef],
        port: Port,
    ) -> Result<Self> {
        let n = grefs.len();
        if !n.is_power_of_two() || n > 1 << MAX_RING_ORDER {
            return Err(HalError::Hypercall(-EINVAL).into());
        }
        let order = n.trailing_zeros();
        let mut pages = Vec::with_capacity(n);
        for &g in grefs {
            pages.push(xen.map_grant(backend, frontend, g, false)?);
        }
        let base = pages[0].as_ptr();
        let contiguous = pages
            .iter()
            .enumerate()
            .all(|(i, m)| m.as_ptr() == base.wrapping_add(i * PAGE_SIZE));
        // Ours must be the only mapping of each ring page: another back end
        // of the same ring would race this one.
        let exclusive = grefs.iter().all(|&g| xen.grant_pins(frontend, g) == 1);
        let Some(base) = NonNull::new(base).filter(|_| contiguous && exclusive) else {
            return Err(HalError::Hypercall(-EINVAL).into());
        };
        // SAFETY: `pages` pins `n = 1 << order` frames of the frontend that
        // are one run of its memory (checked above), page-aligned and valid
        // for `PAGE_SIZE << order` bytes while the mappings live; they live
        // in `self` next to the ring, which drops first. Nobody else maps
        // them (checked above), so the one front end is the only peer; the
        // frontend initialised the ring before granting it. `RingEntry`
        // makes `Req` and `Rsp` valid for any bytes the frontend leaves.
        // The raw accessors below touch the same memory only with atomics
        // (the header) and volatile copies (slots), as the frontend does.
        let ring = unsafe { BackRing::attach(base, order) }?;
        let local = xen.bind_interdomain(backend, frontend, port)?;
        xen.consume(backend, local);
        Ok(RingPeer {
            ring,
            pages,
            xen: xen.clone(),
            backend,
            frontend,
            port: local,
            front_port: port,
        })
    }

    /// Unmaps the ring and closes the port. Same as dropping.
    pub fn detach(self) {}

    /// Slots of the ring.
    pub fn size(&self) -> u32 {
        self.ring.size()
    }

    /// The backend's port of the event channel.
    pub fn port(&self) -> Port {
        self.port
    }

    /// The back ring itself, for what the calls here do not cover.
    pub fn ring(&mut self) -> &mut BackRing<Req, Rsp> {
        &mut self.ring
    }

    // ----- requests ------------------------------------------------------------

    /// Takes the next published request, if any.
    ///
    /// # Errors
    ///
    /// [`RingError::Protocol`] when the frontend's `req_prod` is impossible.
    pub fn take_request(&mut self) -> Result<Option<Req>, RingError> {
        self.ring.poll_request()
    }

    /// Takes every published request.
    ///
    /// # Errors
    ///
    /// As for [`take_request`](Self::take_request).
    pub fn take_requests(&mut self) -> Result<Vec<Req>, RingError> {
        let mut all = Vec::new();
        self.ring.poll_requests(|r| all.push(r))?;
        Ok(all)
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: when nothing is waiting, asks to be
    /// notified of the next request (`req_event = req_cons + 1`). `true`
    /// means requests are waiting.
    ///
    /// # Errors
    ///
    /// As for [`take_request`](Self::take_request).
    pub fn final_check(&mut self) -> Result<bool, RingError> {
        self.ring.final_check_for_requests()
    }

    /// Tests and clears the backend's port: whether the frontend notified
    /// since the last call (or since [`attach`](Self::attach)).
    pub fn take_event(&self) -> bool {
        self.xen.consume(self.backend, self.port)
    }

    /// How many notifications the frontend sent on its port since it was
    /// opened.
    pub fn notifications(&self) -> u64 {
        self.xen.notify_count(self.frontend, self.front_port)
    }

    // ----- responses -----------------------------------------------------------

    /// Writes a response into the slot of the oldest request taken and not
    /// yet answered, without publishing it.
    ///
    /// # Errors
    ///
    /// [`RingError::Full`] when every request taken is answered already.
    pub fn push_response(&mut self, rsp: &Rsp) -> Result<(), RingError> {
        self.ring.push_response(rsp)
    }

    /// Publishes the responses written (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`)
    /// and notifies the frontend if it asked for it. Returns whether it
    /// notified.
    ///
    /// # Errors
    ///
    /// What [`SimXen::send`] returns.
    pub fn publish(&mut self) -> Result<bool, HalError> {
        let notify = self.ring.push_responses_and_check_notify();
        if notify {
            self.xen.send(self.backend, self.port)?;
        }
        Ok(notify)
    }

    /// [`push_response`](Self::push_response) then
    /// [`publish`](Self::publish).
    ///
    /// # Errors
    ///
    /// As for both.
    pub fn respond(&mut self, rsp: &Rsp) -> Result<bool> {
        self.push_response(rsp)?;
        Ok(self.publish()?)
    }

    /// Notifies the frontend unconditionally.
    ///
    /// # Errors
    ///
    /// What [`SimXen::send`] returns.
    pub fn notify(&self) -> Result<(), HalError> {
        self.xen.send(self.backend, self.port)
    }

    // ----- raw access, for a backend that breaks the protocol ----------------

    fn header_word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset % 4 == 0 && offset < 16);
        let base = self.pages[0].as_ptr();
        // SAFETY: the first ring page is mapped while `self` lives (and the
        // reference does not outlive `&self`); the four indices at offsets
        // 0, 4, 8 and 12 of its page-aligned start are `AtomicU32`s of
        // `SringHeader`, which both ends only access atomically. Only the
        // word is borrowed, never the non-atomic padding.
        unsafe { &*base.add(offset).cast::<AtomicU32>() }
    }

    /// The shared `req_prod` as the frontend left it.
    pub fn req_prod(&self) -> u32 {
        self.header_word(core::mem::offset_of!(SringHeader, req_prod))
            .load(Ordering::Acquire)
    }

    /// The shared `req_event`.
    pub fn req_event(&self) -> u32 {
        self.header_word(core::mem::offset_of!(SringHeader, req_event))
            .load(Ordering::Acquire)
    }

    /// Overwrites the shared `req_event` (when the frontend should notify).
    pub fn set_req_event(&self, v: u32) {
        self.header_word(core::mem::offset_of!(SringHeader, req_event))
            .store(v, Ordering::SeqCst);
    }

    /// The shared `rsp_prod`.
    pub fn rsp_prod(&self) -> u32 {
        self.header_word(core::mem::offset_of!(SringHeader, rsp_prod))
            .load(Ordering::Acquire)
    }

    /// Overwrites the shared `rsp_prod` behind the back ring's back: the
    /// ring does not know, and later publishes overwrite it again.
    pub fn poke_rsp_prod(&self, v: u32) {
        self.header_word(core::mem::offset_of!(SringHeader, rsp_prod))
            .store(v, Ordering::Release);
    }

    /// The shared `rsp_event` (the frontend's wish to be notified).
    pub fn rsp_event(&self) -> u32 {
        self.header_word(core::mem::offset_of!(SringHeader, rsp_event))
            .load(Ordering::Acquire)
    }

    /// Writes `rsp` into the slot of free-running index `idx` (masked to
    /// the ring), whatever the protocol says that slot holds now. Nothing
    /// is published: see [`poke_rsp_prod`](Self::poke_rsp_prod).
    pub fn poke_response(&self, idx: u32, rsp: &Rsp) {
        let slot = (idx & (self.size() - 1)) as usize;
        let off = SRING_HEADER_SIZE + slot * Self::ENTRY;
        let base = self.pages[0].as_ptr();
        // SAFETY: the slot lies inside the `PAGE_SIZE << order` bytes of the
        // ring's contiguous mapping (`ring_slots` chose the slot count so
        // that `64 + size * ENTRY` fits), which lives while `self` does; the
        // offset is a multiple of `align_of::<Rsp>()` from a page-aligned
        // base. The frontend reads slots only with volatile copies of plain
        // data (`RingEntry`), so any bytes written here are a valid value.
        unsafe { base.add(off).cast::<Rsp>().write_volatile(*rsp) }
    }

    // ----- data grants -----------------------------------------------------------

    /// Maps data grant `gref` of the frontend, writable or read-only, as the
    /// backend would to serve a request. The mapping holds until dropped.
    ///
    /// # Errors
    ///
    /// As for [`SimXen::map_grant`]: `Hypercall(-EROFS)` for a writable
    /// mapping of a read-only grant, `Hypercall(-EPERM)` for a reference
    /// that is not granted to the backend.
    pub fn map_grant(&self, gref: GrantRef, writable: bool) -> Result<GrantMapping, HalError> {
        self.xen
            .map_grant(self.backend, self.frontend, gref, !writable)
    }

    /// The `PAGE_SIZE` bytes of data grant `gref`, through a read-only
    /// mapping held only for the copy.
    ///
    /// # Errors
    ///
    /// As for [`map_grant`](Self::map_grant).
    pub fn read_grant(&self, gref: GrantRef) -> Result<Vec<u8>, HalError> {
        let m = self.map_grant(gref, false)?;
        let mut buf = vec![0; PAGE_SIZE];
        m.read(0, &mut buf)?;
        Ok(buf)
    }
}

impl<Req: RingEntry, Rsp: RingEntry> Drop for RingPeer<Req, Rsp> {
    fn drop(&mut self) {
        // The ring and then its pages drop after this, in field order.
        if let Err(e) = self.xen.close_port(self.backend, self.port) {
            log::warn!("sim ring peer: closing port {:?}: {e}", self.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gnttab::{GrantTable, SharedPages};
    use crate::hal::Hal;
    use crate::ring::{OwnedFrontRing, Violation};
    use crate::sim::{Accounting, SimHal};

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;

    type Front<'a> = OwnedFrontRing<SharedPages<'a, SimHal>, u64, u64>;

    fn front<'a>(gt: &'a GrantTable<'a, SimHal>, order: u32) -> Front<'a> {
        let mem = SharedPages::alloc_granted(gt, 1 << order, BACK, false, 0).unwrap();
        Front::init(mem, order).map_err(|(e, _)| e).unwrap()
    }

    #[test]
    fn requests_and_responses_go_round_with_notifications_as_asked() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let gt = GrantTable::new(&hal).unwrap();
        let mut ring = front(&gt, 1);
        let port = hal.evtchn_alloc_unbound(BACK).unwrap();
        let mut peer =
            RingPeer::<u64, u64>::attach(&xen, BACK, FRONT, ring.memory().grefs(), port).unwrap();
        assert_eq!(peer.size(), ring.size());
        assert!(!peer.take_event(), "the bind's own event is cleared");

        ring.push_request(&7).unwrap();
        assert_eq!(peer.req_prod(), 0, "not published yet");
        assert!(ring.push_requests_and_check_notify());
        hal.evtchn_notify(port).unwrap();
        assert!(peer.take_event());
        assert_eq!((peer.notifications(), peer.req_prod()), (1, 1));
        assert_eq!(peer.take_request().unwrap(), Some(7));
        assert_eq!(peer.take_request().unwrap(), None);
        assert!(!peer.final_check().unwrap());
        assert_eq!(peer.req_event(), 2);

        assert!(peer.respond(&8).unwrap(), "rsp_event starts at 1");
        assert!(hal.evtchn_consume(port));
        assert_eq!(peer.rsp_prod(), 1);
        assert_eq!(ring.poll_response().unwrap(), Some(8));
        assert!(!ring.final_check_for_responses().unwrap());
        assert_eq!(peer.rsp_event(), 2);
        assert_eq!(peer.push_response(&9), Err(RingError::Full));
    }

    #[test]
    fn pokes_reach_the_front_end_behind_the_back_rings_back() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let gt = GrantTable::new(&hal).unwrap();
        let mut ring = front(&gt, 0);
        let port = hal.evtchn_alloc_unbound(BACK).unwrap();
        let peer =
            RingPeer::<u64, u64>::attach(&xen, BACK, FRONT, ring.memory().grefs(), port).unwrap();
        for r in [1, 2] {
            ring.push_request(&r).unwrap();
        }
        ring.push_requests();
        // A response nobody took a request for, in a slot past the ring's
        // end (masked), then an impossible producer index.
        peer.poke_response(peer.size() + 1, &0xdead);
        peer.poke_rsp_prod(2);
        assert_eq!(
            ring.poll_response().unwrap(),
            Some(1),
            "slot 0 still holds request 1"
        );
        assert_eq!(ring.poll_response().unwrap(), Some(0xdead));
        peer.poke_rsp_prod(9);
        assert_eq!(
            ring.poll_response(),
            Err(RingError::Protocol(Violation::ProducerOverrun {
                prod: 9,
                cons: 2
            }))
        );
        peer.set_req_event(40);
        assert_eq!(peer.req_event(), 40);
    }

    #[test]
    fn attach_refuses_what_it_cannot_serve_and_holds_nothing() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let gt = GrantTable::new(&hal).unwrap();
        let ring = front(&gt, 2);
        let g = ring.memory().grefs().to_vec();
        let port = hal.evtchn_alloc_unbound(BACK).unwrap();
        let attach =
            |grefs: &[GrantRef]| RingPeer::<u64, u64>::attach(&xen, BACK, FRONT, grefs, port);
        let einval = crate::Error::Hal(HalError::Hypercall(-EINVAL));

        assert_eq!(attach(&[]).unwrap_err(), einval);
        assert_eq!(attach(&g[..3]).unwrap_err(), einval, "3 pages");
        let reversed = [g[1], g[0]];
        assert_eq!(
            attach(&reversed).unwrap_err(),
            einval,
            "not one run in order"
        );
        assert_eq!(xen.accounting(BACK), Accounting::default());

        let first = attach(&g).unwrap();
        let held = xen.accounting(BACK);
        assert_eq!((held.mappings_held, held.ports_open), (4, 1));
        let other = hal.evtchn_alloc_unbound(BACK).unwrap();
        let second = RingPeer::<u64, u64>::attach(&xen, BACK, FRONT, &g, other);
        assert_eq!(second.unwrap_err(), einval, "two back ends on one ring");
        assert_eq!(xen.accounting(BACK), held);

        first.detach();
        assert_eq!(xen.accounting(BACK), Accounting::default());
        assert!(
            xen.port_info(FRONT, port).is_some(),
            "the frontend's port stays open"
        );
        let again = RingPeer::<u64, u64>::attach(&xen, BACK, FRONT, &g, other).unwrap();
        drop(again);
        assert_eq!(xen.accounting(BACK), Accounting::default());
    }
}
