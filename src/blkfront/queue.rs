//! One ring of the block frontend: the shared ring and its event channel,
//! the shadow of every request slot, and the pool of data pages.
//!
//! Data flows one way per direction. A request part's bytes are copied into
//! pages this queue owns, the pages are granted, and the request is written
//! into a ring slot whose shadow index ([`SlotId`]) is the wire `id`. Each
//! response is copied out of the ring once and validated against the shadow
//! — id in range, slot in flight, operation as sent, status known: the
//! checks Linux's `blkif_interrupt` makes since XSA-396 — and only then are
//! per-request grants ended and data copied back. A per-request grant the
//! backend still maps after answering is a protocol violation (as in Linux's
//! `blkif_completion`): its page goes to the quarantine and the device
//! breaks.
//!
//! Pages and grants are owned values ([`SharedPage`], [`SharedPages`]):
//! whatever this queue drops is ended and freed, or quarantined while the
//! backend still maps it.

use alloc::vec::Vec;

use super::request::PendingId;
use super::units::{WireSector, WireUnit};
use super::wire::{encode_segment, RequestSlot, SEGS_PER_INDIRECT_PAGE};
use super::{Broken, IoError};
use crate::abi::blkif::{
    BlkifRequestSegment, BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use crate::error::Feature;
use crate::evtchn::EventChannel;
use crate::gnttab::{GrantError, GrantTable, SharedPage, SharedPages};
use crate::hal::{DomId, GrantRef, Hal, HalError, Port, PAGE_SIZE};
use crate::ring::{OwnedFrontRing, RingError, Violation};
use crate::Result;

/// The blkif ring as this driver uses it, on its own granted pages.
type BlkRing<'a, H> = OwnedFrontRing<SharedPages<'a, H>, RequestSlot, BlkifResponse>;

/// The index of a ring slot's shadow entry, sent as the request's wire
/// `id`. The driver only ever trusts ids it can look up here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotId(u32);

impl SlotId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// How a data page is shared with the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lease {
    /// Granted once and kept granted while it is in the pool
    /// (`feature-persistent`).
    Persistent,
    /// Granted for one request, revoked when its response arrives.
    PerRequest,
}

struct DataPage<'a, H: Hal> {
    mem: SharedPage<'a, H>,
    lease: Lease,
}

/// A slot in flight: what its response must carry, and which part of which
/// request it is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Busy {
    /// The operation a matching response echoes (`indirect_op` for an
    /// indirect request: that is what backends send back).
    pub(super) op: u8,
    /// The request this part belongs to.
    pub(super) pending: PendingId,
    /// Byte offset of this part within the request's buffer.
    pub(super) offset: usize,
    /// Bytes this part carries (0 for control requests).
    pub(super) len: usize,
}

/// Where a ring slot stands.
#[derive(Clone, Copy, Debug)]
enum State {
    Free,
    InFlight(Busy),
    /// Answered and validated; its pages are still held for the copy-out.
    Answered,
}

struct Slot<'a, H: Hal> {
    state: State,
    /// Data pages of the part in flight, in order (emptied on release; the
    /// capacity stays, so that steady-state I/O allocates nothing).
    pages: Vec<DataPage<'a, H>>,
    /// Indirect descriptor pages.
    indirect: Vec<DataPage<'a, H>>,
}

/// A read or write part to push: `len` bytes (a non-zero multiple of the
/// ring's unit) at `sector`, `offset` bytes into request `pending`'s buffer. `data` holds
/// the bytes to write (`None` for a read).
pub(super) struct RwPart<'b> {
    pub(super) pending: PendingId,
    pub(super) sector: WireSector,
    pub(super) offset: usize,
    pub(super) len: usize,
    pub(super) data: Option<&'b [u8]>,
}

/// One validated response. Its slot stays taken, with its data pages, until
/// [`Queue::release`]: read data is copied out with [`Queue::read_data`]
/// in between.
pub(super) struct Done {
    pub(super) slot: SlotId,
    pub(super) busy: Busy,
    pub(super) status: Result<(), IoError>,
}

/// Grants kept by a queue that uses persistent grants.
struct Persistent {
    /// Most pages kept granted at once.
    cap: usize,
    /// Pages granted persistently now (in the pool or in flight).
    granted: usize,
}

/// Idle private pages kept for reuse beyond what is in flight.
const IDLE_PRIVATE_PAGES: usize = 64;

/// The data pages of one queue that are not in flight, and how new ones
/// are shared.
struct Pool<'a, H: Hal> {
    table: &'a GrantTable<'a, H>,
    backend: DomId,
    /// The device number, tagging this queue's pages in the quarantine.
    owner: u32,
    /// Idle pages, used LIFO.
    idle: Vec<DataPage<'a, H>>,
    persistent: Option<Persistent>,
    /// Most idle private (per-request) pages kept for reuse.
    keep_private: usize,
    /// Whether the frontend offered persistent grants (`feature-persistent`
    /// written as 1), whatever was decided at Connected.
    offered_persistent: bool,
}

impl<'a, H: Hal> Pool<'a, H> {
    /// Whether `n` pages can be had now: always without persistent grants;
    /// with them, only from the budget (idle pages, or room to grant more).
    /// A part waits rather than go beyond the budget, so that a backend that
    /// keeps every grant it sees mapped (blkback does, up to 1056 per ring)
    /// never holds more than the budget.
    fn can_supply(&self, n: usize) -> bool {
        match &self.persistent {
            None => true,
            Some(b) => self.idle.len() + b.cap.saturating_sub(b.granted) >= n,
        }
    }

    /// A page from the pool (an idle one first: the steady state), or a new
    /// one: granted persistently when persistent grants are in use,
    /// private (granted per request) otherwise.
    ///
    /// # Errors
    ///
    /// [`GrantError::Exhausted`] once the persistent budget is spent (a
    /// caller checks [`can_supply`](Self::can_supply) first), and the
    /// errors of allocating or granting a page.
    #[inline(always)]
    fn take(&mut self) -> Result<DataPage<'a, H>, GrantError> {
        if let Some(p) = self.idle.pop() {
            return Ok(p);
        }
        self.take_new()
    }

    /// [`take`](Self::take) without an idle page.
    #[cold]
    fn take_new(&mut self) -> Result<DataPage<'a, H>, GrantError> {
        match &mut self.persistent {
            Some(b) if b.granted >= b.cap => Err(GrantError::Exhausted),
            Some(b) => {
                let mut mem = SharedPage::alloc(self.table, self.owner)?;
                // On error the page drops (never granted: freed).
                mem.grant(self.backend, false)?;
                b.granted += 1;
                Ok(DataPage {
                    mem,
                    lease: Lease::Persistent,
                })
            }
            None => Ok(DataPage {
                mem: SharedPage::alloc(self.table, self.owner)?,
                lease: Lease::PerRequest,
            }),
        }
    }

    /// The reference the backend uses for `p` in this request, granting it
    /// now if it is per-request: read-only when the backend only reads the
    /// page, unless the frontend offered persistent grants (blkback then
    /// maps every grant writable, hoping to keep it, as Linux's blkfront
    /// expects; it decides from the frontend's offer alone, so a backend
    /// whose own key the frontend could not read may still do so).
    fn grant_for(
        &self,
        p: &mut DataPage<'a, H>,
        backend_reads: bool,
    ) -> Result<GrantRef, GrantError> {
        match (p.lease, p.mem.gref()) {
            (Lease::Persistent, Some(g)) => Ok(g),
            _ => p
                .mem
                .grant(self.backend, backend_reads && !self.offered_persistent),
        }
    }

    /// Gives a page back to the pool (ending a per-request grant), or drops
    /// it when the pool holds enough.
    fn recycle(&mut self, mut p: DataPage<'a, H>) {
        if p.lease == Lease::PerRequest && p.mem.revoke().is_err() {
            self.quarantine(p);
            return;
        }
        if p.lease == Lease::Persistent || self.idle.len() < self.keep_private {
            self.idle.push(p);
        }
        // Otherwise `p` drops here: private, so freed.
    }

    fn quarantine(&mut self, p: DataPage<'a, H>) {
        if p.lease == Lease::Persistent {
            if let Some(b) = &mut self.persistent {
                b.granted = b.granted.saturating_sub(1);
            }
        }
        p.mem.release();
    }
}

/// One ring and everything that belongs to it.
pub(super) struct Queue<'a, H: Hal> {
    ring: BlkRing<'a, H>,
    channel: EventChannel<'a, H>,
    slots: Vec<Slot<'a, H>>,
    free: Vec<SlotId>,
    pool: Pool<'a, H>,
    /// The unit of the ring's sector fields.
    unit: WireUnit,
    /// Requests pushed but not yet published to the backend.
    unpublished: bool,
    /// Set by [`abort_all`](Queue::abort_all): the backend may still answer
    /// what it was sent, under ids that mean nothing now, so the ring takes
    /// no more requests.
    retired: bool,
}

impl<'a, H: Hal> Queue<'a, H> {
    /// A ring of `1 << order` pages granted to `backend`, and an unbound
    /// event channel for it.
    ///
    /// # Errors
    ///
    /// Memory, grant and event-channel errors; nothing is held on error.
    pub(super) fn new(
        hal: &'a H,
        table: &'a GrantTable<'a, H>,
        backend: DomId,
        order: u32,
        owner: u32,
    ) -> Result<Self> {
        let mem = SharedPages::alloc_granted(table, 1 << order, backend, false, owner)?;
        let ring = BlkRing::init(mem, order).map_err(|(e, _mem)| e)?;
        let channel = EventChannel::alloc_unbound(hal, backend)?;
        let n = ring.size() as usize;
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(n)
            .map_err(|_| HalError::OutOfMemory)?;
        slots.resize_with(n, || Slot {
            state: State::Free,
            pages: Vec::new(),
            indirect: Vec::new(),
        });
        Ok(Queue {
            ring,
            channel,
            slots,
            // Popped from the end: low ids go out first.
            free: (0..n as u32).rev().map(SlotId).collect(),
            pool: Pool {
                table,
                backend,
                owner,
                idle: Vec::new(),
                persistent: None,
                keep_private: n + IDLE_PRIVATE_PAGES,
                offered_persistent: false,
            },
            unit: WireUnit::BYTES_512,
            unpublished: false,
            retired: false,
        })
    }

    /// The grant references of the ring pages, in order.
    pub(super) fn ring_grefs(&self) -> &[GrantRef] {
        self.ring.memory().grefs()
    }

    /// The event channel's port.
    pub(super) fn port(&self) -> Port {
        self.channel.port()
    }

    /// Request slots of the ring.
    pub(super) fn size(&self) -> usize {
        self.slots.len()
    }

    /// Free request slots (none once retired).
    pub(super) fn free_slots(&self) -> usize {
        if self.retired {
            0
        } else {
            self.free.len()
        }
    }

    /// Requests in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Records that the frontend offered persistent grants: every page is
    /// then granted writable. Called at Connected, before any request.
    pub(super) fn offered_persistent_grants(&mut self) {
        self.pool.offered_persistent = true;
    }

    /// Sets the unit of the ring's sector fields (512 bytes until told
    /// otherwise). Called at Connected, before any request.
    pub(super) fn set_wire_unit(&mut self, unit: WireUnit) {
        self.unit = unit;
    }

    /// From now on keep up to `cap` data pages granted persistently. Called
    /// at Connected, before any data page exists.
    pub(super) fn use_persistent_grants(&mut self, cap: usize) {
        self.pool.persistent = Some(Persistent { cap, granted: 0 });
    }

    /// Keeps at most `max` idle private (per-request) pages for reuse
    /// (`Config::max_kept_pages`), instead of a ring's slots plus
    /// [`IDLE_PRIVATE_PAGES`].
    pub(super) fn keep_idle_private(&mut self, max: usize) {
        self.pool.keep_private = self.pool.keep_private.min(max);
    }

    /// Ends the grants of idle persistent pages the backend no longer maps
    /// and frees those pages; returns how many. Called when grant
    /// references run out, so that exhaustion clears.
    pub(super) fn purge_idle(&mut self) -> usize {
        let pool = &mut self.pool;
        let before = pool.idle.len();
        pool.idle
            .retain_mut(|p| !(p.lease == Lease::Persistent && p.mem.revoke().is_ok()));
        // The pages whose grant ended drop with `retain_mut`: private, freed.
        let freed = before - pool.idle.len();
        if let Some(b) = &mut pool.persistent {
            b.granted = b.granted.saturating_sub(freed);
        }
        freed
    }

    /// Pushes one read or write part. Nothing is published until
    /// [`kick`](Self::kick). Returns `false` when no slot (or, with persistent grants, not enough of the page budget) is free. When it
    /// returns anything but `true`, nothing was pushed and every page taken
    /// here went back.
    ///
    /// # Errors
    ///
    /// Memory and grant errors; [`IoError::Broken`] when the ring refuses
    /// the request because the backend broke the protocol (the caller
    /// breaks the device).
    pub(super) fn push_rw(
        &mut self,
        part: &RwPart<'_>,
        handle: u16,
        indirect_segs: usize,
    ) -> Result<bool, IoError> {
        let nsegs = part.len.div_ceil(PAGE_SIZE);
        if nsegs == 0
            || !self.unit.divides(part.len)
            || part.data.is_some_and(|d| d.len() != part.len)
            || nsegs > BLKIF_MAX_SEGMENTS_PER_REQUEST.max(indirect_segs)
        {
            return Err(IoError::Misaligned);
        }
        let Some(&id) = self.free.last().filter(|_| !self.retired) else {
            return Ok(false);
        };
        let pages = nsegs + indirect_pages(nsegs);
        if !self.pool.can_supply(pages) {
            // Within the persistent budget only: wait for pages to come back.
            return Ok(false);
        }
        let write = part.data.is_some();
        let slot = &mut self.slots[id.index()];
        let r = prepare(&mut self.pool, part, nsegs, self.unit, slot);
        let r = r.and_then(|()| {
            let op = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
            let req = encode(op, handle, id, part, self.unit, slot)?;
            Ok(push_slot(&mut self.ring, &req)?.then_some(op))
        });
        match r {
            Ok(Some(op)) => {
                self.free.pop();
                slot.state = State::InFlight(Busy {
                    op,
                    pending: part.pending,
                    offset: part.offset,
                    len: part.len,
                });
                self.unpublished = true;
                Ok(true)
            }
            r => {
                give_back(&mut self.pool, slot);
                r.map(|_| false)
            }
        }
    }

    /// Pushes a request without data (flush, barrier, discard) built by
    /// `slot_of(wire id)`; `op` is the operation its response must echo.
    /// Returns `false` (nothing pushed) when no slot is free.
    ///
    /// # Errors
    ///
    /// [`IoError::Broken`] as for [`push_rw`](Self::push_rw).
    pub(super) fn push_control(
        &mut self,
        pending: PendingId,
        op: u8,
        slot_of: impl FnOnce(u64) -> RequestSlot,
    ) -> Result<bool, IoError> {
        let Some(&id) = self.free.last().filter(|_| !self.retired) else {
            return Ok(false);
        };
        if !push_slot(&mut self.ring, &slot_of(u64::from(id.0)))? {
            return Ok(false);
        }
        self.free.pop();
        self.slots[id.index()].state = State::InFlight(Busy {
            op,
            pending,
            offset: 0,
            len: 0,
        });
        self.unpublished = true;
        Ok(true)
    }

    /// Publishes pushed requests and notifies the backend if it asked for
    /// it (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub(super) fn kick(&mut self) {
        if !self.unpublished {
            return;
        }
        self.unpublished = false;
        if self.ring.push_requests_and_check_notify() {
            // A failed notify leaves the requests published; the backend
            // finds them when it next looks (or the I/O bound fires).
            let _ = self.channel.notify();
        }
    }

    /// Tests and clears the queue's event.
    pub(super) fn consume_event(&self) -> bool {
        self.channel.consume()
    }

    /// The next response, following the final-check protocol of `ring.h`:
    /// `Ok(None)` only once the backend has been asked to notify on the next
    /// one and none slipped in.
    ///
    /// # Errors
    ///
    /// [`RingError::Protocol`] when the backend's producer index is
    /// impossible (polling fails with nothing else).
    pub(super) fn next_response(&mut self) -> Result<Option<BlkifResponse>, RingError> {
        loop {
            if let Some(r) = self.ring.poll_response()? {
                return Ok(Some(r));
            }
            if !self.ring.final_check_for_responses()? {
                return Ok(None);
            }
        }
    }

    /// Validates one response against the shadow and takes its slot out of
    /// flight, ending per-request grants before anyone looks at the data;
    /// [`release`](Self::release) frees the slot once data is copied out.
    ///
    /// # Errors
    ///
    /// The [`Violation`] when the response does not match a request in
    /// flight (nothing changed), or when the backend still maps a page it
    /// was granted for this request only (the slot is then out of flight;
    /// the caller breaks the device).
    pub(super) fn complete(
        &mut self,
        rsp: &BlkifResponse,
    ) -> core::result::Result<Done, Violation> {
        let idx = usize::try_from(rsp.id).map_err(|_| Violation::BadId(rsp.id))?;
        let slot = self.slots.get_mut(idx).ok_or(Violation::BadId(rsp.id))?;
        let State::InFlight(busy) = slot.state else {
            return Err(Violation::NotInFlight(rsp.id));
        };
        if rsp.operation != busy.op {
            return Err(Violation::WrongOperation {
                id: rsp.id,
                sent: busy.op,
                got: rsp.operation,
            });
        }
        let status = match rsp.status {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_ERROR => Err(IoError::Backend),
            BLKIF_RSP_EOPNOTSUPP => Err(match busy.op {
                BLKIF_OP_FLUSH_DISKCACHE => IoError::Unsupported(Feature::FlushCache),
                BLKIF_OP_WRITE_BARRIER => IoError::Unsupported(Feature::Barrier),
                BLKIF_OP_DISCARD => IoError::Unsupported(Feature::Discard),
                // Reads and writes have no feature to turn off: an I/O error,
                // as Linux's blkif_interrupt treats any failed data request.
                _ => IoError::Backend,
            }),
            other => return Err(Violation::UnknownStatus(other)),
        };
        slot.state = State::Answered;
        // Per-request pages exist only without persistent grants: one the
        // backend still maps after answering could still change under us.
        let mut still_mapped = false;
        for p in slot.pages.iter_mut().chain(slot.indirect.iter_mut()) {
            if p.lease == Lease::PerRequest && p.mem.revoke().is_err() {
                still_mapped = true;
            }
        }
        if still_mapped {
            self.release(SlotId(idx as u32));
            return Err(Violation::StillMapped(rsp.id));
        }
        Ok(Done {
            slot: SlotId(idx as u32),
            busy,
            status,
        })
    }

    /// Copies the data of completed slot `slot` into `dst` (`dst.len()` is
    /// the part's length).
    ///
    /// # Errors
    ///
    /// [`IoError::OutOfRange`] when `dst` is longer than the slot's pages.
    pub(super) fn read_data(&self, slot: SlotId, dst: &mut [u8]) -> Result<(), IoError> {
        let pages = self.slots.get(slot.index()).map_or(&[][..], |s| &s.pages);
        if dst.len() > pages.len() * PAGE_SIZE {
            return Err(IoError::OutOfRange);
        }
        for (chunk, p) in dst.chunks_mut(PAGE_SIZE).zip(pages) {
            p.mem.read(0, chunk)?;
        }
        Ok(())
    }

    /// Frees slot `slot` after [`complete`](Self::complete): its pages go
    /// back to the pool (or the quarantine), the slot to the free list.
    pub(super) fn release(&mut self, slot: SlotId) {
        let Some(s) = self.slots.get_mut(slot.index()) else {
            return;
        };
        if !matches!(s.state, State::Answered) {
            return;
        }
        s.state = State::Free;
        give_back(&mut self.pool, s);
        self.free.push(slot);
    }

    /// Retires every slot in flight without a response (the backend went
    /// away or broke the protocol), calling `f` with each slot's request.
    /// Per-request grants are ended; pages the backend still maps go to the
    /// quarantine. Requests pushed but not yet published never reach the
    /// backend. The queue takes no requests afterwards: what was published
    /// may still be answered, under ids that now mean nothing, so the ring
    /// is only good for tearing down.
    pub(super) fn abort_all(&mut self, mut f: impl FnMut(PendingId)) {
        self.ring.discard_unpublished();
        self.unpublished = false;
        self.retired = true;
        for i in 0..self.slots.len() {
            if let State::InFlight(busy) = self.slots[i].state {
                self.slots[i].state = State::Answered;
                self.release(SlotId(i as u32));
                f(busy.pending);
            }
        }
    }

    /// Keeps the ring's grant references allocated for good (see
    /// [`SharedPages::keep_references`]): a frontend key may still name
    /// them.
    pub(super) fn keep_ring_refs(&mut self) {
        self.ring.memory_mut().keep_references();
    }

    /// Ends the ring's grants (the teardown step before the frontend keys
    /// that name them are removed). The references stay allocated until the
    /// queue is dropped.
    ///
    /// # Errors
    ///
    /// [`GrantError::InUse`] when the backend still maps the ring: dropping
    /// the queue then quarantines it.
    pub(super) fn revoke_ring(&mut self) -> Result<(), GrantError> {
        self.ring.memory_mut().revoke()
    }
}

/// Writes `req` into the ring's next slot; `false` when the ring has no
/// free slot (the caller's "no slot" path: the free list and the ring agree,
/// so it is not expected).
///
/// # Errors
///
/// [`IoError::Broken`] when the ring is broken: the backend broke the
/// protocol.
fn push_slot<H: Hal>(ring: &mut BlkRing<'_, H>, req: &RequestSlot) -> Result<bool, IoError> {
    match ring.push_request(req) {
        Ok(()) => Ok(true),
        Err(RingError::Protocol(v)) => Err(IoError::Broken(Broken::Protocol(v))),
        // Pushing never fails with `InvalidOrder` (only setting up does).
        Err(RingError::Full | RingError::InvalidOrder(_)) => Ok(false),
    }
}

/// Indirect descriptor pages a part of `nsegs` segments needs.
pub(super) fn indirect_pages(nsegs: usize) -> usize {
    if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
        0
    } else {
        nsegs.div_ceil(SEGS_PER_INDIRECT_PAGE)
    }
}

/// Takes, fills and grants the data pages (and indirect pages) of one part
/// into the free slot `slot`. Pages taken so far stay in the slot on error.
fn prepare<'a, H: Hal>(
    pool: &mut Pool<'a, H>,
    part: &RwPart<'_>,
    nsegs: usize,
    unit: WireUnit,
    slot: &mut Slot<'a, H>,
) -> Result<(), IoError> {
    for i in 0..nsegs {
        let mut p = pool.take()?;
        let r = match part.data {
            // The backend does not look at the page while no request using
            // it is in flight (a persistent grant is only used by the
            // requests we send).
            Some(d) => p
                .mem
                .write(0, &d[i * PAGE_SIZE..part.len.min((i + 1) * PAGE_SIZE)])
                .and_then(|()| pool.grant_for(&mut p, true)),
            None => pool.grant_for(&mut p, false),
        };
        slot.pages.push(p);
        r?;
    }
    if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return Ok(());
    }
    for k in 0..nsegs.div_ceil(SEGS_PER_INDIRECT_PAGE) {
        let mut p = pool.take()?;
        let first = k * SEGS_PER_INDIRECT_PAGE;
        let last = nsegs.min(first + SEGS_PER_INDIRECT_PAGE);
        let mut r = Ok(());
        for (j, dp) in slot.pages[first..last].iter().enumerate() {
            r = r.and_then(|()| {
                let bytes = encode_segment(&segment(first + j, dp, part.len, unit)?);
                p.mem.write(j * bytes.len(), &bytes)
            });
        }
        let r = r.and_then(|()| pool.grant_for(&mut p, true));
        slot.indirect.push(p);
        r?;
    }
    Ok(())
}

/// Returns every page of `slot` to the pool (or the quarantine).
fn give_back<'a, H: Hal>(pool: &mut Pool<'a, H>, slot: &mut Slot<'a, H>) {
    while let Some(p) = slot.pages.pop() {
        pool.recycle(p);
    }
    while let Some(p) = slot.indirect.pop() {
        pool.recycle(p);
    }
}

/// The segment descriptor of data page `i` of a part of `len` bytes, in
/// the ring's `unit`: data always starts at offset 0 of our own pages, so
/// only the last page may be partial.
///
/// # Errors
///
/// [`GrantError::InvalidRef`] for a page without a grant.
fn segment<H: Hal>(
    i: usize,
    p: &DataPage<'_, H>,
    len: usize,
    unit: WireUnit,
) -> Result<BlkifRequestSegment, GrantError> {
    let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
    Ok(BlkifRequestSegment {
        gref: p.mem.gref().ok_or(GrantError::InvalidRef(0))?.0,
        first_sect: 0,
        last_sect: ((bytes >> unit.shift()) - 1) as u8,
    })
}

/// The ring slot of a read or write part whose pages are all granted.
///
/// # Errors
///
/// [`GrantError::InvalidRef`] for a page without a grant (never the case
/// after `prepare`).
fn encode<H: Hal>(
    op: u8,
    handle: u16,
    id: SlotId,
    part: &RwPart<'_>,
    unit: WireUnit,
    slot: &Slot<'_, H>,
) -> Result<RequestSlot, GrantError> {
    let (pages, indirect) = (&slot.pages, &slot.indirect);
    let wire_id = u64::from(id.0);
    if pages.len() <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
        let mut segs = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
        for (i, p) in pages.iter().enumerate() {
            segs[i] = segment(i, p, part.len, unit)?;
        }
        Ok(RequestSlot::direct(
            op,
            handle,
            wire_id,
            part.sector.0,
            &segs[..pages.len()],
        ))
    } else {
        let mut grefs = [0u32; 8];
        for (g, p) in grefs.iter_mut().zip(indirect.iter()) {
            *g = p.mem.gref().ok_or(GrantError::InvalidRef(0))?.0;
        }
        let n = indirect.len().min(grefs.len());
        Ok(RequestSlot::indirect(
            op,
            pages.len() as u16,
            wire_id,
            part.sector.0,
            handle,
            &grefs[..n],
        ))
    }
}

#[cfg(all(test, feature = "sim"))]
#[path = "queue_tests/mod.rs"]
mod tests;
