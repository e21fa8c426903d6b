//! The block frontend driver.
//!
//! [`BlockFront::probe`] follows the connection protocol of `io/blkif.h`
//! (the state diagram under "Frontend XenBus Nodes"): wait for the backend's
//! InitWait, read its transport parameters, publish rings and event channels
//! in one transaction (retried on `EAGAIN`), go Initialised, wait for
//! Connected, read the geometry and features, go Connected.
//!
//! I/O has two levels. Non-blocking: `submit_*` returns a
//! [`RequestToken`]; [`kick`](BlockFront::kick) publishes everything
//! submitted so far with one notification; [`poll`](BlockFront::poll)
//! returns [`Completion`]s. Blocking: [`read`](BlockFront::read),
//! [`write`](BlockFront::write), [`flush`](BlockFront::flush),
//! [`discard`](BlockFront::discard) sit on top. A caller's buffer belongs to
//! the driver from submit until its completion is returned.

pub mod info;
mod lifecycle;
mod queue;
pub mod wire;

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

pub use info::{
    BackendInfo, BackendKind, DirectIoSafe, DiscardInfo, FlushMethod, Negotiated, Offered,
    SectorsUnit, StallCause, StallReport,
};

use crate::abi::blkif::{
    BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ,
    BLKIF_OP_WRITE_BARRIER,
};
use crate::error::Feature;
use crate::gnttab::GrantTable;
use crate::hal::{Hal, Port, XsTransport, PAGE_SIZE};
use crate::xenstore::XenStore;
use crate::{Error, Result};
use queue::Queue;
use wire::{RequestSlot, MAX_INDIRECT_SEGMENTS};

/// The xenstore client as shared by all disks of a domain.
pub type SharedStore<T> = spin::Mutex<XenStore<T>>;

/// Limits the frontend applies on top of what the backend offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Largest ring page order to use (0..=4).
    pub max_ring_page_order: u32,
    /// Most queues to use.
    pub max_queues: u32,
    /// Most segments per indirect request (0 disables indirect descriptors).
    pub max_indirect_segments: u32,
    /// Whether to use persistent grants when the backend offers them.
    pub persistent_grants: bool,
    /// Bound on each wait for a backend state during connection.
    pub connect_timeout_ns: u64,
    /// Bound on a blocking I/O call; past it the device is marked broken.
    pub io_timeout_ns: u64,
    /// Times a xenstore transaction is retried on `EAGAIN`.
    pub transaction_retries: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_ring_page_order: 4,
            max_queues: 4,
            max_indirect_segments: 256,
            persistent_grants: true,
            connect_timeout_ns: 10_000_000_000,
            io_timeout_ns: 30_000_000_000,
            transaction_retries: 16,
        }
    }
}

/// Identifies one submitted request until its [`Completion`] is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestToken(u64);

impl RequestToken {
    /// The token's number (unique per device, increasing).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// A finished request.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Which request.
    pub token: RequestToken,
    /// Its outcome.
    pub result: Result<()>,
    /// The caller's buffer, back from the driver (filled on a successful
    /// read). `None` for flush and discard.
    pub buf: Option<Vec<u8>>,
}

/// A submission the driver refused; the caller's buffer comes back intact.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: Error,
    /// The caller's buffer.
    pub buf: Vec<u8>,
}

/// Why [`BlockFront::probe`] failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeError {
    /// The error.
    pub error: Error,
    /// For a backend that did not reach the awaited state in time: what it
    /// published and the likely cause.
    pub stall: Option<StallReport>,
}

impl From<Error> for ProbeError {
    fn from(error: Error) -> Self {
        ProbeError { error, stall: None }
    }
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.stall {
            Some(s) => write!(f, "{}\n{}", self.error, s),
            None => write!(f, "{}", self.error),
        }
    }
}

/// Where the device stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Rings up, I/O accepted.
    Connected,
    /// The backend closed; in-flight requests were aborted. The device
    /// reconnects when the backend returns to InitWait.
    Disconnected,
    /// The backend broke the protocol (or stopped answering); no further I/O.
    Broken(Error),
    /// [`BlockFront::close`] was called.
    Closed,
}

/// A caller-visible request whose parts are in flight.
struct Pending {
    token: u64,
    parts_left: u32,
    error: Option<Error>,
    buf: Option<Vec<u8>>,
}

/// The requests in flight: a slab indexed by a small number that each part's
/// shadow entry carries (so a completion finds its request without a search),
/// with a free list so that steady-state I/O allocates nothing.
#[derive(Default)]
struct PendingTable {
    slots: Vec<Option<Pending>>,
    free: Vec<u32>,
    len: usize,
}

impl PendingTable {
    fn insert(&mut self, p: Pending) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                if let Some(slot) = self.slots.get_mut(i as usize) {
                    *slot = Some(p);
                }
                i
            }
            None => {
                self.slots.push(Some(p));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut Pending> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    fn remove(&mut self, i: u32) -> Option<Pending> {
        let p = self.slots.get_mut(i as usize)?.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(p)
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Removes every entry, in token order.
    fn drain_sorted(&mut self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self.slots.iter_mut().filter_map(Option::take).collect();
        all.sort_unstable_by_key(|p| p.token);
        self.slots.clear();
        self.free.clear();
        self.len = 0;
        all
    }
}

/// Where a completed part of read `req` puts its data: the staging buffer
/// of a multi-part read (made at its first completed part), else the
/// caller's buffer. Out of line: the common single-part read never calls it.
#[cold]
#[inline(never)]
fn stage<'s>(
    staging: &'s mut Vec<(u32, Vec<u8>)>,
    req: u32,
    p: &'s mut Pending,
) -> Option<&'s mut Vec<u8>> {
    let i = match staging.iter().position(|(r, _)| *r == req) {
        Some(i) => i,
        None if p.parts_left > 1 => {
            let n = p.buf.as_ref().map_or(0, Vec::len);
            staging.push((req, alloc::vec![0u8; n]));
            staging.len() - 1
        }
        None => return p.buf.as_mut(),
    };
    staging.get_mut(i).map(|(_, st)| st)
}

/// What [`BlockFront::check_backend`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// Nothing changed.
    None,
    /// The backend is closing or closed; in-flight I/O was aborted.
    Closed,
    /// The backend came back and the device reconnected.
    Reconnected,
    /// The backend published a new size.
    Resized {
        /// Old capacity in bytes.
        old_bytes: u64,
        /// New capacity in bytes.
        new_bytes: u64,
    },
}

/// A Xen PV block device.
pub struct BlockFront<'a, H: Hal, T: XsTransport> {
    hal: &'a H,
    gt: &'a GrantTable<'a, H>,
    store: &'a SharedStore<T>,
    cfg: Config,
    info: BackendInfo,
    state: DeviceState,
    queues: Vec<Queue>,
    next_queue: usize,
    next_token: u64,
    pending: PendingTable,
    done: VecDeque<Completion>,
    /// Read data of the parts of a multi-part read (by pending index) that
    /// completed while siblings are still in flight: it reaches the
    /// caller's buffer only once every part has succeeded, so a failed read
    /// never writes into it. Kept apart from [`Pending`] because it is rare:
    /// a larger `Pending` costs every request (measured: +3% instructions
    /// per request at QD 32 when this lived in it).
    staging: Vec<(u32, Vec<u8>)>,
    handle: u16,
    /// Pages given up for good because the backend kept them mapped.
    leaked: usize,
}

impl<'a, H: Hal, T: XsTransport> BlockFront<'a, H, T> {
    /// The virtual-device numbers of every disk under `device/vbd`.
    ///
    /// # Errors
    ///
    /// xenstore errors; a missing `device/vbd` directory is an empty list.
    pub fn enumerate(store: &SharedStore<T>) -> Result<Vec<u32>> {
        let mut xs = store.lock();
        let mut v: Vec<u32> = match xs.directory("device/vbd") {
            Ok(names) => names.iter().filter_map(|n| n.parse().ok()).collect(),
            Err(Error::XenStore(crate::error::XsErrno::ENOENT)) => Vec::new(),
            Err(e) => return Err(e),
        };
        v.sort_unstable();
        Ok(v)
    }

    /// Connects to disk `vdev` (the name of its `device/vbd/<vdev>`
    /// directory).
    ///
    /// # Errors
    ///
    /// [`ProbeError`] with [`Error::StateTimeout`] and a [`StallReport`]
    /// when the backend does not reach InitWait or Connected within
    /// `cfg.connect_timeout_ns`; [`Error::MissingKey`] /
    /// [`Error::MalformedKey`] naming a bad key; xenstore, grant and event
    /// channel errors. Every resource taken is given back on failure.
    pub fn probe(
        hal: &'a H,
        gt: &'a GrantTable<'a, H>,
        store: &'a SharedStore<T>,
        vdev: u32,
        cfg: Config,
    ) -> core::result::Result<Self, ProbeError> {
        lifecycle::probe(hal, gt, store, vdev, cfg)
    }

    /// What the backend published and what was negotiated.
    pub fn info(&self) -> &BackendInfo {
        &self.info
    }

    /// The device's state.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.info.sector_size
    }

    /// Capacity in logical sectors.
    pub fn sectors(&self) -> u64 {
        self.info.logical_sectors()
    }

    /// Requests submitted and not yet returned by [`poll`](Self::poll).
    pub fn outstanding(&self) -> usize {
        self.pending.len() + self.done.len()
    }

    /// Ring slots in use across all queues.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(Queue::in_flight).sum()
    }

    /// The event channels of the device's queues, in queue order (one per
    /// queue; empty when the device holds no rings, e.g. after
    /// [`close`](Self::close)). For callers that wait in their own way on
    /// several devices at once; [`wait`](Self::wait) waits on these.
    pub fn ports(&self) -> Vec<Port> {
        self.queues.iter().map(|q| q.port).collect()
    }

    /// Blocks until an event arrives on one of the device's queues, a
    /// completion is ready for [`poll`](Self::poll), or `deadline`
    /// ([`Hal::now_ns`] time) passes: the waiting half of the non-blocking
    /// API, for a caller whose [`poll`](Self::poll) found nothing. Race
    /// free: [`poll`](Self::poll) consumes a queue's event before its final
    /// check of the ring, so a response published after that check leaves
    /// the event pending and this returns at once. Early returns are
    /// allowed; the caller polls again either way.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when `deadline` passed without an event (the
    /// caller may still find work: it polls again), and the platform's
    /// errors from [`Hal::evtchn_wait`].
    pub fn wait(&self, deadline: u64) -> Result<()> {
        if !self.done.is_empty() || self.queues.is_empty() {
            return Ok(());
        }
        self.wait_events(deadline)
    }

    /// Blocks in [`Hal::evtchn_wait`] on every queue's event channel until
    /// one is pending or `deadline` passes (no allocation for up to eight
    /// queues).
    fn wait_events(&self, deadline: u64) -> Result<()> {
        let mut ports = [Port(0); 8];
        if self.queues.len() <= ports.len() {
            for (p, q) in ports.iter_mut().zip(&self.queues) {
                *p = q.port;
            }
            self.hal
                .evtchn_wait(&ports[..self.queues.len()], Some(deadline))
        } else {
            self.hal.evtchn_wait(&self.ports(), Some(deadline))
        }
    }

    /// Pages quarantined because the backend kept them mapped after
    /// revocation (never reused).
    pub fn quarantined(&self) -> usize {
        self.leaked
            + self
                .queues
                .iter()
                .map(|q| q.quarantine.len())
                .sum::<usize>()
    }

    fn usable(&self) -> Result<()> {
        match self.state {
            DeviceState::Connected => Ok(()),
            DeviceState::Disconnected => Err(Error::NotConnected),
            DeviceState::Broken(_) => Err(Error::Broken),
            DeviceState::Closed => Err(Error::Closed),
        }
    }

    /// Checks a data request and returns its 512-byte start sector.
    fn check_rw(&self, sector: u64, len: usize, write: bool) -> Result<u64> {
        self.usable()?;
        if write && self.info.read_only() {
            return Err(Error::ReadOnly);
        }
        let ss = u64::from(self.info.sector_size);
        if len == 0 || len as u64 % ss != 0 {
            return Err(Error::Misaligned);
        }
        let end = sector
            .checked_add(len as u64 / ss)
            .ok_or(Error::OutOfRange)?;
        if end > self.sectors() {
            return Err(Error::OutOfRange);
        }
        sector.checked_mul(ss / 512).ok_or(Error::OutOfRange)
    }

    fn bytes_per_part(&self) -> usize {
        let segs = match self.info.negotiated.indirect_segments as usize {
            0 => crate::abi::blkif::BLKIF_MAX_SEGMENTS_PER_REQUEST,
            n => n.min(MAX_INDIRECT_SEGMENTS),
        };
        segs * PAGE_SIZE
    }

    fn free_slots(&self) -> usize {
        self.queues.iter().map(Queue::free_slots).sum()
    }

    fn pick_queue(&mut self) -> usize {
        let n = self.queues.len();
        for k in 0..n {
            let i = (self.next_queue + k) % n;
            if self.queues[i].free_slots() > 0 {
                self.next_queue = (i + 1) % n;
                return i;
            }
        }
        0
    }

    fn new_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn submit_rw(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
        write: bool,
    ) -> core::result::Result<RequestToken, Rejected> {
        let len = buf.len();
        let wire_sector = match self.check_rw(sector, len, write) {
            Ok(s) => s,
            Err(error) => return Err(Rejected { error, buf }),
        };
        let per_part = self.bytes_per_part();
        let parts = len.div_ceil(per_part);
        if parts > self.free_slots() {
            return Err(Rejected {
                error: Error::RingFull,
                buf,
            });
        }
        let token = self.new_token();
        let indirect = self.info.negotiated.indirect_segments as usize;
        // The entry exists before its parts, which carry its index.
        let req = self.pending.insert(Pending {
            token,
            parts_left: 0,
            error: None,
            buf: None,
        });
        let mut pushed = 0u32;
        let mut failed = None;
        for k in 0..parts {
            let off = k * per_part;
            let plen = per_part.min(len - off);
            let q = self.pick_queue();
            let src = if write {
                Some(&buf[off..off + plen])
            } else {
                None
            };
            let r = self.queues[q].push_rw(
                self.hal,
                self.gt,
                self.handle,
                wire_sector + (off / 512) as u64,
                req,
                off,
                src,
                plen,
                indirect,
            );
            match r {
                Ok(()) => pushed += 1,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        if pushed == 0 {
            self.pending.remove(req);
            return Err(Rejected {
                error: failed.unwrap_or(Error::RingFull),
                buf,
            });
        }
        if let Some(p) = self.pending.get_mut(req) {
            // Parts already pushed will complete; after a failure the request
            // fails as a whole once they do.
            p.parts_left = pushed;
            p.error = failed;
            p.buf = Some(buf);
        }
        Ok(RequestToken(token))
    }

    /// Submits a read of `buf.len()` bytes (a non-zero multiple of the
    /// logical sector size) starting at logical sector `sector`. The buffer
    /// comes back, filled, in the [`Completion`].
    ///
    /// # Errors
    ///
    /// [`Rejected`] (with the buffer) for [`Error::Misaligned`],
    /// [`Error::OutOfRange`], [`Error::RingFull`] (poll, then retry),
    /// [`Error::NotConnected`], [`Error::Broken`], [`Error::Closed`], and
    /// grant or memory exhaustion.
    pub fn submit_read(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
    ) -> core::result::Result<RequestToken, Rejected> {
        self.submit_rw(sector, buf, false)
    }

    /// Submits a write of `buf` at logical sector `sector`. The data is
    /// copied into granted pages before this returns; the buffer comes back
    /// in the [`Completion`].
    ///
    /// # Errors
    ///
    /// As for [`submit_read`](Self::submit_read), plus [`Error::ReadOnly`].
    pub fn submit_write(
        &mut self,
        sector: u64,
        buf: Vec<u8>,
    ) -> core::result::Result<RequestToken, Rejected> {
        self.submit_rw(sector, buf, true)
    }

    /// Submits a cache flush: `BLKIF_OP_FLUSH_DISKCACHE`, or an empty
    /// `BLKIF_OP_WRITE_BARRIER` when the backend only offers barriers.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] when neither is offered (or both were turned
    /// off after `EOPNOTSUPP`); [`Error::RingFull`]; state errors.
    pub fn submit_flush(&mut self) -> Result<RequestToken> {
        self.usable()?;
        let method = self
            .info
            .negotiated
            .flush
            .ok_or(Error::Unsupported(Feature::FlushCache))?;
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        let op = match method {
            FlushMethod::FlushCache => BLKIF_OP_FLUSH_DISKCACHE,
            FlushMethod::Barrier => BLKIF_OP_WRITE_BARRIER,
        };
        let token = self.new_token();
        let q = self.pick_queue();
        let handle = self.handle;
        let req = self.pending.insert(Pending {
            token,
            parts_left: 1,
            error: None,
            buf: None,
        });
        let r =
            self.queues[q].push_control(req, op, |id| RequestSlot::direct(op, handle, id, 0, &[]));
        if let Err(e) = r {
            self.pending.remove(req);
            return Err(e);
        }
        Ok(RequestToken(token))
    }

    /// Submits a discard of `count` logical sectors from `sector`.
    ///
    /// The range is shrunk inwards to whole `discard-granularity` units
    /// (offset by `discard-alignment`): discarding is advisory, and a
    /// partial unit could not be discarded anyway. A range with no whole
    /// unit completes at once, successfully. `secure` asks for
    /// `BLKIF_DISCARD_SECURE`.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] (`Discard`, or `SecureDiscard` when `secure`
    /// is asked and `discard-secure` is not offered), [`Error::ReadOnly`],
    /// [`Error::OutOfRange`], [`Error::RingFull`], state errors.
    pub fn submit_discard(
        &mut self,
        sector: u64,
        count: u64,
        secure: bool,
    ) -> Result<RequestToken> {
        self.usable()?;
        let d = match (self.info.negotiated.discard, self.info.offered.discard) {
            (true, Some(d)) => d,
            _ => return Err(Error::Unsupported(Feature::Discard)),
        };
        if secure && !d.secure {
            return Err(Error::Unsupported(Feature::SecureDiscard));
        }
        if self.info.read_only() {
            return Err(Error::ReadOnly);
        }
        let ss = u64::from(self.info.sector_size);
        let end = sector.checked_add(count).ok_or(Error::OutOfRange)?;
        if count == 0 || end > self.sectors() {
            return Err(if count == 0 {
                Error::Misaligned
            } else {
                Error::OutOfRange
            });
        }
        // A backend's granularity and alignment are bytes; rounded up to whole
        // sectors, so a hostile value can never widen the caller's range.
        let gran = u64::from(d.granularity).max(ss).div_ceil(ss) * ss;
        let align = (u64::from(d.alignment).div_ceil(ss) * ss) % gran;
        let start_b = sector * ss;
        let end_b = end * ss;
        // Units are [align + k*gran, align + (k+1)*gran).
        let first = start_b.saturating_sub(align).div_ceil(gran) * gran + align;
        let last = if end_b < align {
            0
        } else {
            (end_b - align) / gran * gran + align
        };
        let token = self.new_token();
        if last <= first {
            self.done.push_back(Completion {
                token: RequestToken(token),
                result: Ok(()),
                buf: None,
            });
            return Ok(RequestToken(token));
        }
        if self.free_slots() == 0 {
            return Err(Error::RingFull);
        }
        let flag = if secure { BLKIF_DISCARD_SECURE } else { 0 };
        let (s512, n512) = (first / 512, (last - first) / 512);
        let q = self.pick_queue();
        let handle = self.handle;
        let req = self.pending.insert(Pending {
            token,
            parts_left: 1,
            error: None,
            buf: None,
        });
        let r = self.queues[q].push_control(req, BLKIF_OP_DISCARD, |id| {
            RequestSlot::discard(flag, handle, id, s512, n512)
        });
        if let Err(e) = r {
            self.pending.remove(req);
            return Err(e);
        }
        Ok(RequestToken(token))
    }

    /// Publishes everything submitted since the last kick, with at most one
    /// notification per queue (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn kick(&mut self) {
        for q in &mut self.queues {
            if q.publish() {
                let _ = self.hal.evtchn_notify(q.port);
            }
        }
    }

    /// Harvests responses (with the final-check protocol of `ring.h`) and
    /// returns the next finished request, if any. Kicks first.
    pub fn poll(&mut self) -> Option<Completion> {
        if let Some(c) = self.done.pop_front() {
            return Some(c);
        }
        if self.state == DeviceState::Connected {
            self.kick();
            self.harvest(false);
        }
        self.done.pop_front()
    }

    /// Takes the responses of every queue with requests in flight, or of
    /// every queue with `all`. A queue with nothing in flight has nothing to
    /// answer: skipping it saves an event-channel consume and a final check
    /// per queue and poll. Whatever a backend puts on an idle ring is read,
    /// and validated like any response, the next time the queue is busy or
    /// a blocking call waits (which harvests `all`, so that the pending
    /// flags it waits on are clear).
    fn harvest(&mut self, all: bool) {
        for qi in 0..self.queues.len() {
            if !all && self.queues[qi].in_flight() == 0 {
                continue;
            }
            let port = self.queues[qi].port;
            self.hal.evtchn_consume(port);
            loop {
                let r = self.queues[qi].ring.poll_response();
                match r {
                    Ok(Some(rsp)) => {
                        let done = self.queues[qi].complete(self.hal, self.gt, &rsp);
                        match done {
                            Ok(d) => self.finish(qi, d),
                            Err(v) => return self.break_device(Error::Protocol(v)),
                        }
                    }
                    Ok(None) => match self.queues[qi].ring.final_check_for_responses() {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => return self.break_device(e),
                    },
                    Err(e) => return self.break_device(e),
                }
            }
        }
    }

    fn finish(&mut self, qi: usize, d: queue::Done) {
        let mut turn_off = None;
        let mut last = false;
        let q = &self.queues[qi];
        let staging = &mut self.staging;
        if let Some(p) = self.pending.get_mut(d.req) {
            match d.status {
                Ok(()) if d.op == BLKIF_OP_READ && p.error.is_none() => {
                    // A single-part read (the common case) copies straight
                    // into the caller's buffer.
                    let target = if p.parts_left == 1 && staging.is_empty() {
                        p.buf.as_mut()
                    } else {
                        stage(staging, d.req, p)
                    };
                    if let Some(dst) = target.and_then(|b| b.get_mut(d.offset..d.offset + d.len)) {
                        for (i, page) in q.data_pages(d.id).iter().enumerate() {
                            let n = (d.len - i * PAGE_SIZE).min(PAGE_SIZE);
                            // SAFETY: the page is ours and PAGE_SIZE long; its
                            // request is complete and its per-request grant
                            // (if any) was revoked. `dst` holds at least
                            // `i * PAGE_SIZE + n` bytes (parts never exceed
                            // their slice of the buffer).
                            unsafe {
                                core::ptr::copy_nonoverlapping(
                                    page.page.as_ptr(),
                                    dst[i * PAGE_SIZE..].as_mut_ptr(),
                                    n,
                                )
                            };
                        }
                    }
                }
                Ok(()) => {}
                Err(e) => {
                    p.error.get_or_insert(e);
                    if let Error::Unsupported(feat) = e {
                        turn_off = Some(feat);
                    }
                }
            }
            p.parts_left = p.parts_left.saturating_sub(1);
            last = p.parts_left == 0;
            if last && !staging.is_empty() {
                if let Some(i) = staging.iter().position(|(r, _)| *r == d.req) {
                    let (_, st) = staging.swap_remove(i);
                    if let (None, Some(buf)) = (p.error, p.buf.as_mut()) {
                        buf.copy_from_slice(&st);
                    }
                }
            }
        }
        self.queues[qi].release(self.hal, self.gt, d.id);
        if let Some(feat) = turn_off {
            self.turn_off(feat);
        }
        if last {
            if let Some(p) = self.pending.remove(d.req) {
                self.done.push_back(Completion {
                    token: RequestToken(p.token),
                    result: p.error.map_or(Ok(()), Err),
                    buf: p.buf,
                });
            }
        }
    }

    fn turn_off(&mut self, feat: Feature) {
        let n = &mut self.info.negotiated;
        let why = "backend answered EOPNOTSUPP";
        match feat {
            Feature::FlushCache | Feature::Barrier => {
                if n.flush.is_some() {
                    n.flush = None;
                    self.info.disabled.push((feat, why));
                }
            }
            Feature::Discard | Feature::SecureDiscard => {
                if n.discard {
                    n.discard = false;
                    self.info.disabled.push((feat, why));
                }
            }
            Feature::Persistent | Feature::Indirect => {}
        }
    }

    /// Fails every in-flight request with `err`, revoking grants.
    fn abort_in_flight(&mut self, err: Error) {
        let mut reqs = Vec::new();
        for q in &mut self.queues {
            q.abort_all(self.hal, self.gt, |r| reqs.push(r));
        }
        for r in reqs {
            if let Some(p) = self.pending.get_mut(r) {
                p.parts_left = p.parts_left.saturating_sub(1);
                if p.error.is_none() {
                    p.error = Some(err);
                }
            }
        }
        self.staging.clear();
        for p in self.pending.drain_sorted() {
            self.done.push_back(Completion {
                token: RequestToken(p.token),
                result: Err(p.error.unwrap_or(err)),
                buf: p.buf,
            });
        }
    }

    fn break_device(&mut self, e: Error) {
        log::error!("xenblk {}: {e}; device marked broken", self.info.vdev);
        self.state = DeviceState::Broken(e);
        self.abort_in_flight(Error::Broken);
    }

    /// Waits until `token` completes, then returns its completion.
    fn wait_for(&mut self, token: RequestToken) -> Completion {
        let deadline = self.hal.now_ns().saturating_add(self.cfg.io_timeout_ns);
        self.kick();
        loop {
            self.harvest_into_done();
            if let Some(i) = self.done.iter().position(|c| c.token == token) {
                if let Some(c) = self.done.remove(i) {
                    return c;
                }
            }
            if !matches!(self.state, DeviceState::Connected) {
                // abort_in_flight completed everything; unreachable unless the
                // token was never pending.
                return Completion {
                    token,
                    result: Err(Error::UnknownToken),
                    buf: None,
                };
            }
            let now = self.hal.now_ns();
            if now >= deadline {
                log::error!(
                    "xenblk {}: no response within the I/O bound",
                    self.info.vdev
                );
                self.state = DeviceState::Broken(Error::Timeout);
                self.abort_in_flight(Error::Timeout);
                continue;
            }
            let slice = now.saturating_add(10_000_000).min(deadline);
            if self.wait_events(slice).is_err() {
                // Nothing arrived for a while: is the backend still there?
                let _ = self.check_backend();
            }
        }
    }

    fn harvest_into_done(&mut self) {
        if self.state == DeviceState::Connected {
            self.harvest(true);
        }
    }

    /// Reads `buf.len()` bytes from logical sector `sector`, blocking.
    ///
    /// # Errors
    ///
    /// As for [`submit_read`](Self::submit_read), plus the request's own
    /// outcome ([`Error::IoError`], [`Error::Aborted`], [`Error::Timeout`],
    /// [`Error::Broken`]).
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<()> {
        let mut off = 0;
        // Large reads go in chunks the rings can hold at once.
        while off < buf.len() {
            let chunk = self.blocking_chunk(buf.len() - off);
            let tmp = alloc::vec![0u8; chunk];
            let ss = self.info.sector_size as usize;
            let t = self
                .submit_read(sector + (off / ss) as u64, tmp)
                .map_err(|r| r.error)?;
            let c = self.wait_for(t);
            c.result?;
            if let Some(b) = c.buf {
                buf[off..off + chunk].copy_from_slice(&b);
            }
            off += chunk;
        }
        Ok(())
    }

    /// Writes `buf` at logical sector `sector`, blocking.
    ///
    /// # Errors
    ///
    /// As for [`read`](Self::read), plus [`Error::ReadOnly`].
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<()> {
        let mut off = 0;
        while off < buf.len() {
            let chunk = self.blocking_chunk(buf.len() - off);
            let ss = self.info.sector_size as usize;
            let t = self
                .submit_write(sector + (off / ss) as u64, buf[off..off + chunk].to_vec())
                .map_err(|r| r.error)?;
            self.wait_for(t).result?;
            off += chunk;
        }
        Ok(())
    }

    /// The largest piece of a blocking transfer of `left` bytes that fits
    /// the rings, in whole logical sectors.
    fn blocking_chunk(&self, left: usize) -> usize {
        let ss = (self.info.sector_size as usize).max(512);
        let cap = self.bytes_per_part()
            * self
                .queues
                .iter()
                .map(|q| q.shadow.len())
                .sum::<usize>()
                .max(1);
        let cap = (cap.min(1 << 24) / ss).max(1) * ss;
        left.min(cap)
    }

    /// Flushes the backend's write cache, blocking.
    ///
    /// # Errors
    ///
    /// As for [`submit_flush`](Self::submit_flush), plus the outcome.
    pub fn flush(&mut self) -> Result<()> {
        let t = self.submit_flush()?;
        self.wait_for(t).result
    }

    /// Discards `count` logical sectors from `sector`, blocking.
    ///
    /// # Errors
    ///
    /// As for [`submit_discard`](Self::submit_discard), plus the outcome.
    pub fn discard(&mut self, sector: u64, count: u64, secure: bool) -> Result<()> {
        let t = self.submit_discard(sector, count, secure)?;
        self.wait_for(t).result
    }

    /// Looks at the backend's state and size and reacts: aborts in-flight
    /// I/O when it is closing, reconnects when it is back in InitWait after
    /// closing, picks up a new `sectors` value.
    ///
    /// # Errors
    ///
    /// xenstore errors, and the errors of reconnecting.
    pub fn check_backend(&mut self) -> Result<BackendEvent> {
        lifecycle::check_backend(self)
    }

    /// Closes the device: frontend Closing, wait (bounded) for the backend to
    /// close, fail what is in flight, give back every grant, event channel
    /// and ring page, frontend Closed. Pages the backend still maps stay in
    /// quarantine; their count is returned.
    ///
    /// # Errors
    ///
    /// xenstore errors while switching state (resources are released anyway).
    pub fn close(&mut self) -> Result<usize> {
        lifecycle::close(self)
    }

    /// Asks a closed backend to come back and reconnects (frontend
    /// Initialising; blkback answers InitWait). Nothing in flight is replayed:
    /// requests in flight when the backend closed completed with
    /// [`Error::Aborted`].
    ///
    /// # Errors
    ///
    /// [`Error::UnexpectedState`] unless the device is
    /// [`DeviceState::Disconnected`]; otherwise as for [`probe`](Self::probe).
    pub fn reconnect(&mut self) -> core::result::Result<(), ProbeError> {
        lifecycle::reconnect(self)
    }

    /// A debugging name.
    pub fn name(&self) -> String {
        alloc::format!("xvd{}", self.info.vdev)
    }
}
