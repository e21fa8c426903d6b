//! The data plane: the rings of a connected device, the requests in flight
//! and the ones waiting for room, and what was negotiated ([`Limits`]).
//!
//! Nothing here touches xenstore. A request is checked as a whole before any
//! part of it is sent (range, alignment, read-only, state), then cut into
//! parts of at most [`Limits::part_bytes`] and pushed onto the rings as slots
//! free up: a request of any size is accepted, and one that does not fit
//! the rings right now waits in the driver, in order, until it does.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::info::{DiscardInfo, FlushMethod};
use super::queue::{Done, Queue, RwPart};
use super::request::{Completion, Op, Pending, PendingId, PendingTable, Rejected, RequestToken};
use super::units::{LogicalSector, SectorSize, WireSector, WireUnit};
use super::wire::RequestSlot;
use super::{Broken, DeviceState, IoError};
use crate::abi::blkif::{
    BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
    BLKIF_OP_WRITE_BARRIER,
};
use crate::error::Feature;
use crate::gnttab::GrantError;
use crate::hal::{Hal, Port};
use crate::ring::RingError;
use crate::Result;

/// What the connection negotiated, as the data plane needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    /// The device handle written into every request (the vdev's low bits).
    pub(super) handle: u16,
    pub(super) sector_size: SectorSize,
    /// Capacity in logical sectors.
    pub(super) sectors: u64,
    pub(super) read_only: bool,
    /// Largest part of one ring request, a multiple of 4096.
    pub(super) part_bytes: usize,
    /// Segments per indirect request (0: not in use).
    pub(super) indirect_segments: usize,
    pub(super) flush: Option<FlushMethod>,
    /// Discard in use, with the backend's parameters.
    pub(super) discard: Option<DiscardInfo>,
    /// The unit of the ring's sector fields.
    pub(super) wire_unit: WireUnit,
}

/// The part of a discard of `count` logical sectors from `start` made of
/// whole units of `gran` bytes starting at `align + k * gran`, in the ring's
/// `unit`; `None` when no whole unit lies inside. Discarding is advisory and
/// a partial unit could not be discarded anyway, so the range only ever
/// shrinks: the result lies inside the caller's range whatever the backend
/// published. Computed in `u128`, so no value can overflow it.
pub(super) fn discard_range(
    start: u64,
    count: u64,
    ss: SectorSize,
    gran: u32,
    align: u32,
    unit: WireUnit,
) -> Option<(WireSector, WireSector)> {
    let ssb = u128::from(ss.bytes());
    let gran = u128::from(gran).max(ssb).div_ceil(ssb) * ssb;
    let align = (u128::from(align).div_ceil(ssb) * ssb) % gran;
    let start_b = u128::from(start) * ssb;
    let end_b = start_b + u128::from(count) * ssb;
    let first = start_b.saturating_sub(align).div_ceil(gran) * gran + align;
    let last = if end_b < align {
        0
    } else {
        (end_b - align) / gran * gran + align
    };
    if last <= first || first < start_b || last > end_b {
        return None;
    }
    // Both ends are whole logical sectors, so whole units of the ring.
    let unit = u128::from(unit.bytes());
    let s = u64::try_from(first / unit).ok()?;
    let n = u64::try_from((last - first) / unit).ok()?;
    Some((WireSector(s), WireSector(n)))
}

/// The data plane of one device.
pub(super) struct Io<'a, H: Hal> {
    queues: Vec<Queue<'a, H>>,
    limits: Limits,
    state: DeviceState,
    pending: PendingTable,
    /// Requests with parts not yet on a ring, oldest first.
    waiting: VecDeque<PendingId>,
    done: VecDeque<Completion>,
    /// Read data of multi-part reads into the caller's buffer, until every
    /// part has succeeded (rare: kept apart so `Pending` stays small).
    staging: Vec<(PendingId, Vec<u8>)>,
    next_queue: usize,
    next_token: u64,
    /// Features the backend refused at run time, not yet reported.
    turned_off: Vec<Feature>,
}

impl<'a, H: Hal> Io<'a, H> {
    /// A data plane with no rings (not connected yet).
    pub(super) fn new(limits: Limits) -> Self {
        Io {
            queues: Vec::new(),
            limits,
            state: DeviceState::Disconnected,
            pending: PendingTable::default(),
            waiting: VecDeque::new(),
            done: VecDeque::new(),
            staging: Vec::new(),
            next_queue: 0,
            next_token: 1,
            turned_off: Vec::new(),
        }
    }

    /// Takes over the rings of a new connection. Requests parked by
    /// [`park_all`](Self::park_all) are replayed on them: each is checked
    /// again under the new `limits` (the backend may differ in sector size,
    /// capacity, read-only, flush and discard), those that no longer fit
    /// fail with the error their submission would now get, and the rest
    /// wait to be cut into parts afresh, in token order.
    pub(super) fn attach(&mut self, queues: Vec<Queue<'a, H>>, limits: Limits) -> Replayed {
        let old = self.limits;
        self.queues = queues;
        self.limits = limits;
        self.next_queue = 0;
        self.state = DeviceState::Connected;
        let mut r = Replayed::default();
        if self.waiting.is_empty() {
            return r;
        }
        for id in core::mem::take(&mut self.waiting) {
            let Some(p) = self.pending.get_mut(id) else {
                continue;
            };
            match rebase(p, &old, &limits) {
                Ok(true) => {
                    r.requests += 1;
                    self.waiting.push_back(id);
                }
                Ok(false) => {
                    // A discard with no whole unit of the new granularity
                    // left inside: nothing to send, done.
                    p.pushed = p.total();
                    r.requests += 1;
                    self.complete_if_finished(id);
                }
                Err(e) => {
                    p.fail(e);
                    r.failed += 1;
                    self.complete_if_finished(id);
                }
            }
        }
        self.refill();
        r
    }

    /// Takes every request not yet completed off the rings, to be replayed
    /// by the next [`attach`](Self::attach): their slots are retired (grants
    /// ended, pages the backend still maps quarantined), what parts of them
    /// completed is forgotten (each is sent again whole), and they wait in
    /// token order. A request one of whose parts already failed completes
    /// now with that error. Returns the rings, to be torn down, and how many
    /// requests wait.
    pub(super) fn park_all(&mut self) -> (Vec<Queue<'a, H>>, usize) {
        for q in &mut self.queues {
            q.abort_all(|_| {});
        }
        self.staging.clear();
        self.waiting.clear();
        self.state = DeviceState::Disconnected;
        for id in self.pending.ids_sorted() {
            let Some(p) = self.pending.get_mut(id) else {
                continue;
            };
            p.in_flight = 0;
            if p.error.is_some() {
                p.pushed = p.total();
                self.complete(id);
            } else {
                p.pushed = 0;
                self.waiting.push_back(id);
            }
        }
        (core::mem::take(&mut self.queues), self.waiting.len())
    }

    /// Gives up the rings (to be torn down by the connection), failing what
    /// is in flight with `err` first.
    pub(super) fn detach(&mut self, err: IoError) -> Vec<Queue<'a, H>> {
        self.abort_all(err);
        core::mem::take(&mut self.queues)
    }

    /// Requests waiting for a reconnect to be replayed (none while
    /// connected).
    pub(super) fn parked(&self) -> usize {
        if self.state == DeviceState::Disconnected {
            self.pending.len()
        } else {
            0
        }
    }

    pub(super) fn state(&self) -> DeviceState {
        self.state
    }

    pub(super) fn set_state(&mut self, s: DeviceState) {
        self.state = s;
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Capacity changed (a resize).
    /// Requests still waiting, none of whose parts was sent, that reach
    /// past the new end fail with [`IoError::OutOfRange`] (nothing sent),
    /// as they would have at submission.
    pub(super) fn set_sectors(&mut self, sectors: u64) {
        self.limits.sectors = sectors;
        let l = self.limits;
        let per = u64::from(l.sector_size.bytes() / l.wire_unit.bytes());
        let end = u128::from(sectors) * u128::from(per);
        let unit = u128::from(l.wire_unit.bytes());
        let mut gone = Vec::new();
        for &id in &self.waiting {
            let Some(p) = self.pending.get_mut(id) else {
                continue;
            };
            let reach = match p.op {
                Op::Read { sector } | Op::Write { sector } => {
                    let len = p.buf.as_ref().map_or(0, Vec::len) as u128;
                    u128::from(sector.0) + len.div_ceil(unit)
                }
                Op::Discard { sector, count, .. } => u128::from(sector.0) + u128::from(count.0),
                Op::Flush { .. } => 0,
            };
            if p.pushed == 0 && reach > end {
                p.fail(IoError::OutOfRange);
                gone.push(id);
            }
        }
        if !gone.is_empty() {
            self.waiting.retain(|id| !gone.contains(id));
            for id in gone {
                self.complete_if_finished(id);
            }
        }
    }

    /// Features refused since the last call.
    pub(super) fn take_turned_off(&mut self) -> Option<Vec<Feature>> {
        (!self.turned_off.is_empty()).then(|| core::mem::take(&mut self.turned_off))
    }

    pub(super) fn outstanding(&self) -> usize {
        self.pending.len() + self.done.len()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.queues.iter().map(Queue::in_flight).sum()
    }

    pub(super) fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// The event channels, in queue order.
    pub(super) fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.queues.iter().map(Queue::port)
    }

    pub(super) fn queue_count(&self) -> usize {
        self.queues.len()
    }

    fn usable(&self) -> Result<(), IoError> {
        match self.state {
            DeviceState::Connected => Ok(()),
            DeviceState::Disconnected => Err(IoError::NotConnected),
            DeviceState::Broken(cause) => Err(IoError::Broken(cause)),
            DeviceState::Closed => Err(IoError::Closed),
        }
    }

    /// Checks a whole read or write of `len` bytes at logical sector
    /// `sector` and returns its start in the ring's unit.
    ///
    /// # Errors
    ///
    /// State errors first, then [`IoError::ReadOnly`], [`IoError::Misaligned`]
    /// (also for `len == 0`), [`IoError::OutOfRange`].
    pub(super) fn check_rw(
        &self,
        sector: u64,
        len: usize,
        write: bool,
    ) -> Result<WireSector, IoError> {
        self.usable()?;
        let l = &self.limits;
        if write && l.read_only {
            return Err(IoError::ReadOnly);
        }
        let len = len as u64;
        if len == 0 || !l.sector_size.divides(len) {
            return Err(IoError::Misaligned);
        }
        let end = sector
            .checked_add(len >> l.sector_size.shift())
            .ok_or(IoError::OutOfRange)?;
        if end > l.sectors {
            return Err(IoError::OutOfRange);
        }
        l.wire_unit
            .from_logical(LogicalSector(sector), l.sector_size)
            .ok_or(IoError::OutOfRange)
    }

    /// Checks that the device takes I/O (for an empty blocking call, which
    /// has nothing else to check).
    pub(super) fn check_usable(&self) -> Result<(), IoError> {
        self.usable()
    }

    fn new_token(&mut self) -> RequestToken {
        let t = RequestToken(self.next_token);
        self.next_token += 1;
        t
    }

    /// Submits a read or a write of `buf` at logical sector `sector`.
    /// `private`: the buffer is the driver's own (a blocking call), so read
    /// data may land in it directly.
    pub(super) fn submit_rw(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
        write: bool,
        private: bool,
    ) -> core::result::Result<RequestToken, Rejected> {
        let wire = match self.check_rw(sector, buf.len(), write) {
            Ok(s) => s,
            Err(error) => return Err(Rejected { error, buf }),
        };
        let direct = private || buf.len() <= self.limits.part_bytes;
        let op = if write {
            Op::Write { sector: wire }
        } else {
            Op::Read { sector: wire }
        };
        let token = self.new_token();
        let id = self.pending.insert(Pending {
            token,
            op,
            buf: Some(buf),
            pushed: 0,
            in_flight: 0,
            error: None,
            direct,
            private,
        });
        match self.admit(id) {
            Ok(()) => Ok(token),
            Err(error) => {
                let buf = self.refuse(id, error).and_then(|p| p.buf);
                Err(Rejected {
                    error,
                    buf: buf.unwrap_or_default(),
                })
            }
        }
    }

    /// Submits a cache flush.
    pub(super) fn submit_flush(&mut self) -> Result<RequestToken, IoError> {
        self.usable()?;
        let op = match self.limits.flush {
            Some(FlushMethod::FlushCache) => BLKIF_OP_FLUSH_DISKCACHE,
            Some(FlushMethod::Barrier) => BLKIF_OP_WRITE_BARRIER,
            None => return Err(IoError::Unsupported(Feature::FlushCache)),
        };
        // blkback fails a flush of a read-only disk as a write; refuse it
        // before it is sent, as a write is
        if self.limits.read_only {
            return Err(IoError::ReadOnly);
        }
        self.submit_control(Op::Flush { op })
    }

    /// Submits a discard of `count` logical sectors from `sector`.
    pub(super) fn submit_discard(
        &mut self,
        sector: u64,
        count: u64,
        secure: bool,
    ) -> Result<RequestToken, IoError> {
        self.usable()?;
        let l = self.limits;
        let d = l.discard.ok_or(IoError::Unsupported(Feature::Discard))?;
        if secure && !d.secure {
            return Err(IoError::Unsupported(Feature::SecureDiscard));
        }
        if l.read_only {
            return Err(IoError::ReadOnly);
        }
        if count == 0 {
            return Err(IoError::Misaligned);
        }
        match sector.checked_add(count) {
            Some(end) if end <= l.sectors => {}
            _ => return Err(IoError::OutOfRange),
        }
        let unit = l.wire_unit;
        match discard_range(
            sector,
            count,
            l.sector_size,
            d.granularity,
            d.alignment,
            unit,
        ) {
            Some((sector, count)) => self.submit_control(Op::Discard {
                sector,
                count,
                secure,
            }),
            None => {
                // No whole unit inside: nothing to send, done at once.
                let token = self.new_token();
                self.done.push_back(Completion {
                    token,
                    result: Ok(()),
                    buf: None,
                });
                Ok(token)
            }
        }
    }

    fn submit_control(&mut self, op: Op) -> Result<RequestToken, IoError> {
        let token = self.new_token();
        let id = self.pending.insert(Pending {
            token,
            op,
            buf: None,
            pushed: 0,
            in_flight: 0,
            error: None,
            direct: true,
            private: false,
        });
        match self.admit(id) {
            Ok(()) => Ok(token),
            Err(e) => {
                self.refuse(id, e);
                Err(e)
            }
        }
    }

    /// Takes back request `id`, which [`admit`](Self::admit) refused with
    /// `e` (nothing of it was sent). A refusal because the ring is broken
    /// breaks the device, after the request is out of the way.
    fn refuse(&mut self, id: PendingId, e: IoError) -> Option<Pending> {
        let p = self.pending.remove(id);
        if let IoError::Broken(cause) = e {
            self.break_device(cause);
        }
        p
    }

    /// Pushes what fits of a new request now and queues the rest. An error
    /// means nothing of it was sent: the caller takes it back with
    /// [`refuse`](Self::refuse).
    #[inline]
    fn admit(&mut self, id: PendingId) -> Result<(), IoError> {
        if !self.waiting.is_empty() {
            // Older requests are waiting for room: keep the order.
            self.waiting.push_back(id);
            self.refill();
            return Ok(());
        }
        match self.push(id) {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.waiting.push_back(id);
                Ok(())
            }
            Err(e @ IoError::Broken(cause)) => {
                let sent = self.pending.get_mut(id).is_some_and(|p| p.pushed > 0);
                if sent {
                    // Parts are on the ring: breaking fails them, and with
                    // them the request.
                    self.break_device(cause);
                    Ok(())
                } else {
                    // Taken back by the caller, who then breaks the device.
                    Err(e)
                }
            }
            Err(e) => {
                if self.in_flight() > 0 {
                    // Memory or grants ran out, and come back as requests
                    // complete (this one's own parts among them): the rest
                    // waits, nothing is failed half-done.
                    self.waiting.push_back(id);
                    Ok(())
                } else {
                    // Nothing is in flight, so nothing of it was sent.
                    Err(e)
                }
            }
        }
    }

    /// Pushes as many parts of request `id` as the rings take. `Ok(true)`:
    /// all of it is on a ring; `Ok(false)`: no slot is free for the rest.
    ///
    /// # Errors
    ///
    /// Memory or grant exhaustion (after giving back idle persistent
    /// grants once); parts pushed before stay pushed.
    #[inline]
    fn push(&mut self, id: PendingId) -> Result<bool, IoError> {
        let mut purged = false;
        loop {
            match self.push_one(id) {
                Ok(Some(true)) => return Ok(true),
                Ok(Some(false)) => {}
                Ok(None) => return Ok(false),
                Err(IoError::Grant(GrantError::Exhausted)) if !purged => {
                    purged = true;
                    let freed: usize = self.queues.iter_mut().map(Queue::purge_idle).sum();
                    if freed == 0 {
                        return Err(IoError::Grant(GrantError::Exhausted));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Pushes the next part of request `id` on the first queue, round
    /// robin, that takes it: `Some(true)` when that was its last part,
    /// `None` when no queue has room.
    #[inline]
    fn push_one(&mut self, id: PendingId) -> Result<Option<bool>, IoError> {
        let n = self.queues.len();
        let mut short = None;
        // Round robin from `next_queue`, without a division per step.
        let mut qi = self.next_queue.min(n.saturating_sub(1));
        for _ in 0..n {
            let here = qi;
            qi = if qi + 1 == n { 0 } else { qi + 1 };
            if self.queues[here].free_slots() == 0 {
                continue;
            }
            match self.push_on(here, id) {
                Ok(Some(last)) => {
                    self.next_queue = qi;
                    return Ok(Some(last));
                }
                Ok(None) => {}
                // Out of grants or memory for this queue's new pages:
                // another queue may have idle pages of its own.
                Err(e @ (IoError::Grant(_) | IoError::Hal(_))) => short = Some(e),
                Err(e) => return Err(e),
            }
        }
        short.map_or(Ok(None), Err)
    }

    /// Pushes the next part of request `id` on queue `qi`; `None` when it
    /// has no room.
    fn push_on(&mut self, qi: usize, id: PendingId) -> Result<Option<bool>, IoError> {
        let Limits {
            handle,
            part_bytes,
            indirect_segments,
            wire_unit,
            ..
        } = self.limits;
        let Some(p) = self.pending.get_mut(id) else {
            return Ok(Some(true));
        };
        let q = &mut self.queues[qi];
        match p.op {
            Op::Read { sector } | Op::Write { sector } => {
                let write = matches!(p.op, Op::Write { .. });
                let buf = p.buf.as_deref().unwrap_or_default();
                let off = p.pushed;
                let len = part_bytes.min(buf.len() - off);
                let part = RwPart {
                    pending: id,
                    sector: WireSector(sector.0 + (off >> wire_unit.shift()) as u64),
                    offset: off,
                    len,
                    data: write.then(|| &buf[off..off + len]),
                };
                if !q.push_rw(&part, handle, indirect_segments)? {
                    return Ok(None);
                }
                p.pushed += len;
            }
            Op::Flush { op } => {
                if !q.push_control(id, op, |wid| RequestSlot::direct(op, handle, wid, 0, &[]))? {
                    return Ok(None);
                }
                p.pushed = 1;
            }
            Op::Discard {
                sector,
                count,
                secure,
            } => {
                let flag = if secure { BLKIF_DISCARD_SECURE } else { 0 };
                let pushed = q.push_control(id, BLKIF_OP_DISCARD, |wid| {
                    RequestSlot::discard(flag, handle, wid, sector.0, count.0)
                })?;
                if !pushed {
                    return Ok(None);
                }
                p.pushed = 1;
            }
        }
        p.in_flight += 1;
        Ok(Some(p.all_pushed()))
    }

    /// Pushes waiting requests while the rings have room.
    fn refill(&mut self) {
        while let Some(&id) = self.waiting.front() {
            match self.push(id) {
                Ok(true) => {
                    self.waiting.pop_front();
                }
                Ok(false) => return,
                Err(IoError::Broken(cause)) => return self.break_device(cause),
                Err(e) => {
                    if self.in_flight() > 0 {
                        // Completions will give resources back.
                        return;
                    }
                    self.waiting.pop_front();
                    if let Some(p) = self.pending.get_mut(id) {
                        p.fail(e);
                    }
                    self.complete_if_finished(id);
                }
            }
        }
    }

    /// Publishes everything pushed, one notification per queue at most.
    pub(super) fn kick(&mut self) {
        for q in &mut self.queues {
            q.kick();
        }
    }

    /// Harvests responses, pushes waiting requests into the room they left,
    /// and returns the next finished request, if any.
    pub(super) fn poll(&mut self) -> Option<Completion> {
        if let Some(c) = self.done.pop_front() {
            return Some(c);
        }
        if self.state == DeviceState::Connected {
            self.progress();
        }
        self.done.pop_front()
    }

    /// Publishes what was pushed, harvests responses, and pushes waiting
    /// requests into the room they left.
    pub(super) fn progress(&mut self) {
        self.kick();
        self.harvest();
        if !self.waiting.is_empty() {
            self.refill();
            self.kick();
        }
    }

    /// Takes every response. A queue with nothing in flight is looked at
    /// only if its event fired; its event is consumed either way, so that
    /// a wait afterwards blocks until something new happens.
    fn harvest(&mut self) {
        for qi in 0..self.queues.len() {
            // A queue with nothing in flight has nothing to answer; what a
            // backend puts on an idle ring is read, and validated like any
            // response, once the queue is busy again. Its event is consumed
            // by `consume_idle_events` before a wait instead, so that it
            // cannot keep a waiter awake.
            if self.queues[qi].in_flight() == 0 {
                continue;
            }
            self.queues[qi].consume_event();
            loop {
                match self.queues[qi].next_response() {
                    Ok(Some(rsp)) => match self.queues[qi].complete(&rsp) {
                        Ok(d) => self.finish(qi, d),
                        Err(v) => return self.break_device(Broken::Protocol(v)),
                    },
                    Ok(None) => break,
                    Err(RingError::Protocol(v)) => return self.break_device(Broken::Protocol(v)),
                    // Polling fails with nothing else.
                    Err(RingError::Full | RingError::InvalidOrder(_)) => break,
                }
                if self.state != DeviceState::Connected {
                    return;
                }
            }
        }
    }

    /// Accounts one validated response: copies read data out, releases the
    /// slot, and completes the request when it was the last part.
    fn finish(&mut self, qi: usize, d: Done) {
        let id = d.busy.pending;
        let Io {
            queues,
            pending,
            staging,
            turned_off,
            limits,
            ..
        } = self;
        let q = &mut queues[qi];
        let mut finished = false;
        if let Some(p) = pending.get_mut(id) {
            p.in_flight = p.in_flight.saturating_sub(1);
            match d.status {
                Ok(()) if d.busy.op == BLKIF_OP_READ && p.error.is_none() => {
                    let (off, len) = (d.busy.offset, d.busy.len);
                    let dst = if p.direct {
                        p.buf.as_deref_mut()
                    } else {
                        Some(stage(staging, id, p.total()))
                    };
                    let r = match dst.and_then(|b| b.get_mut(off..off + len)) {
                        Some(dst) => q.read_data(d.slot, dst),
                        None => Err(IoError::OutOfRange),
                    };
                    if let Err(e) = r {
                        p.fail(e);
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    if let IoError::Unsupported(feat) = e {
                        if turn_off(limits, feat) {
                            turned_off.push(feat);
                        }
                    }
                    p.fail(e);
                }
            }
            finished = p.finished();
        }
        q.release(d.slot);
        if finished {
            self.complete(id);
        }
    }

    fn complete_if_finished(&mut self, id: PendingId) {
        if self.pending.get_mut(id).is_some_and(|p| p.finished()) {
            self.complete(id);
        }
    }

    /// Moves finished request `id` to the completions.
    fn complete(&mut self, id: PendingId) {
        if !self.staging.is_empty() {
            self.unstage(id);
        }
        if let Some(c) = self.pending.take_completion(id) {
            self.done.push_back(c);
        }
    }

    /// Copies a multi-part read's staged data into its buffer if every part
    /// succeeded, and drops the staging buffer either way.
    #[cold]
    fn unstage(&mut self, id: PendingId) {
        let Some(i) = self.staging.iter().position(|(s, _)| *s == id) else {
            return;
        };
        let (_, st) = self.staging.swap_remove(i);
        if let Some(p) = self.pending.get_mut(id) {
            if let (None, Some(buf)) = (p.error, p.buf.as_mut()) {
                buf.copy_from_slice(&st);
            }
        }
    }

    /// Fails every request not yet completed with `err`; grants are ended,
    /// pages the backend still maps are quarantined.
    pub(super) fn abort_all(&mut self, err: IoError) {
        for q in &mut self.queues {
            q.abort_all(|_| {});
        }
        self.waiting.clear();
        self.staging.clear();
        for mut p in self.pending.drain_sorted() {
            p.in_flight = 0;
            p.fail(err);
            self.done.push_back(p.into_completion());
        }
    }

    /// Marks the device broken with `cause` (a protocol violation, or no
    /// answer within the I/O bound) and fails everything not yet completed:
    /// with [`IoError::Timeout`] for a timeout, else with
    /// [`IoError::Broken`] carrying the cause.
    pub(super) fn break_device(&mut self, cause: Broken) {
        log::error!("xenblk: {cause}; device marked broken");
        self.state = DeviceState::Broken(cause);
        self.abort_all(match cause {
            Broken::Timeout => IoError::Timeout,
            cause @ Broken::Protocol(_) => IoError::Broken(cause),
        });
    }

    /// Consumes the events of queues with nothing in flight (which
    /// [`harvest`](Self::harvest) leaves alone), so that a wait blocks
    /// until something new happens. Nothing can legitimately arrive on such
    /// a queue, so nothing is lost.
    pub(super) fn consume_idle_events(&self) {
        for q in self.queues.iter().filter(|q| q.in_flight() == 0) {
            q.consume_event();
        }
    }

    /// Removes and returns the completion of `token`, if it is done.
    pub(super) fn take_done(&mut self, token: RequestToken) -> Option<Completion> {
        let i = self.done.iter().position(|c| c.token == token)?;
        self.done.remove(i)
    }
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Replayed {
    /// Requests sent again (or found to need nothing sent).
    pub(super) requests: usize,
    /// Requests that the new connection could not take, failed with the
    /// error their submission would now get.
    pub(super) failed: usize,
}

/// Restates parked request `p`, made under `old`, for a connection with
/// limits `new`: the same bytes of the disk in the new ring unit, the flush
/// method the new backend offers, a discard shrunk to its granularity.
/// `Ok(false)`: a discard left with no whole unit, nothing to send.
///
/// # Errors
///
/// What a submission would get now: [`IoError::ReadOnly`],
/// [`IoError::Misaligned`] (a new sector size the request is not a
/// multiple of), [`IoError::OutOfRange`] (a smaller disk),
/// [`IoError::Unsupported`] (a feature the new backend does not offer).
fn rebase(p: &mut Pending, old: &Limits, new: &Limits) -> Result<bool, IoError> {
    let ou = u128::from(old.wire_unit.bytes());
    let nu = u128::from(new.wire_unit.bytes());
    let ss = new.sector_size;
    let ssb = u128::from(ss.bytes());
    let cap = u128::from(new.sectors) * ssb;
    // The checks in the order a submission makes them.
    let write = matches!(p.op, Op::Write { .. });
    match &mut p.op {
        Op::Read { sector } | Op::Write { sector } => {
            if write && new.read_only {
                return Err(IoError::ReadOnly);
            }
            let len = p.buf.as_ref().map_or(0, Vec::len);
            let start = u128::from(sector.0) * ou;
            if start % ssb != 0 || !ss.divides(len as u64) {
                return Err(IoError::Misaligned);
            }
            if start + len as u128 > cap {
                return Err(IoError::OutOfRange);
            }
            *sector = WireSector(u64::try_from(start / nu).map_err(|_| IoError::OutOfRange)?);
            p.direct = p.private || len <= new.part_bytes;
        }
        Op::Flush { op } => {
            *op = match new.flush {
                Some(FlushMethod::FlushCache) => BLKIF_OP_FLUSH_DISKCACHE,
                Some(FlushMethod::Barrier) => BLKIF_OP_WRITE_BARRIER,
                None => return Err(IoError::Unsupported(Feature::FlushCache)),
            };
            if new.read_only {
                return Err(IoError::ReadOnly);
            }
        }
        Op::Discard {
            sector,
            count,
            secure,
        } => {
            let d = new.discard.ok_or(IoError::Unsupported(Feature::Discard))?;
            if *secure && !d.secure {
                return Err(IoError::Unsupported(Feature::SecureDiscard));
            }
            if new.read_only {
                return Err(IoError::ReadOnly);
            }
            let start = u128::from(sector.0) * ou;
            let end = start + u128::from(count.0) * ou;
            if end > cap {
                return Err(IoError::OutOfRange);
            }
            // The whole logical sectors of the new size inside the range.
            let (first, last) = (start.div_ceil(ssb), end / ssb);
            if last <= first {
                return Ok(false);
            }
            let (first, n) = (first as u64, (last - first) as u64);
            match discard_range(first, n, ss, d.granularity, d.alignment, new.wire_unit) {
                Some((s, c)) => (*sector, *count) = (s, c),
                None => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// The staging buffer of multi-part read `id` (made at its first completed
/// part). Out of line: the common single-part read never calls it.
#[cold]
#[inline(never)]
fn stage(staging: &mut Vec<(PendingId, Vec<u8>)>, id: PendingId, len: usize) -> &mut [u8] {
    let i = match staging.iter().position(|(s, _)| *s == id) {
        Some(i) => i,
        None => {
            staging.push((id, alloc::vec![0u8; len]));
            staging.len() - 1
        }
    };
    &mut staging[i].1
}

/// Turns a feature off after the backend refused it; returns whether it was
/// on.
fn turn_off(l: &mut Limits, feat: Feature) -> bool {
    match feat {
        Feature::FlushCache | Feature::Barrier => l.flush.take().is_some(),
        Feature::Discard | Feature::SecureDiscard => l.discard.take().is_some(),
        Feature::Persistent | Feature::Indirect => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W512: WireUnit = WireUnit::BYTES_512;

    fn ss(b: u32) -> SectorSize {
        SectorSize::new(b).unwrap()
    }

    #[test]
    fn discard_ranges_shrink_to_whole_units_inside_the_callers_range() {
        // 512-byte sectors, 4 KiB granularity, no alignment: [1, 17) holds
        // the unit [8, 16).
        assert_eq!(
            discard_range(1, 16, ss(512), 4096, 0, W512),
            Some((WireSector(8), WireSector(8)))
        );
        // No whole unit.
        assert_eq!(discard_range(1, 6, ss(512), 4096, 0, W512), None);
        // Alignment 1024: units start at 2, 10, 18, ...
        assert_eq!(
            discard_range(0, 20, ss(512), 4096, 1024, W512),
            Some((WireSector(2), WireSector(16)))
        );
        // A granularity below the sector size counts as the sector size.
        assert_eq!(
            discard_range(3, 2, ss(4096), 512, 0, W512),
            Some((WireSector(24), WireSector(16)))
        );
        // The same in a backend's logical blocks.
        let w4k = WireUnit::logical(ss(4096));
        assert_eq!(
            discard_range(3, 2, ss(4096), 512, 0, w4k),
            Some((WireSector(3), WireSector(2)))
        );
    }

    #[test]
    fn discard_ranges_never_overflow_or_widen_whatever_the_backend_says() {
        let top = (u64::MAX / 512) - 1;
        for gran in [0, 1, 512, 4096, 1 << 20, u32::MAX] {
            for align in [0, 1, 511, 4096, u32::MAX] {
                for (start, count) in [(top - 1, 1), (0, top), (top / 2, top / 2), (7, 1)] {
                    if let Some((s, n)) = discard_range(start, count, ss(512), gran, align, W512) {
                        assert!(s.0 >= start, "{gran} {align} {start} {count}");
                        assert!(s.0 + n.0 <= start + count, "{gran} {align} {start} {count}");
                        assert!(n.0 > 0);
                    }
                }
            }
        }
    }
}
