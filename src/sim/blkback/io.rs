//! The data path of a connected backend: take requests off each ring when
//! notified, process them, publish responses and notify only when the
//! frontend asked for it (`io/ring.h` hold-off, `io/blkif.h` "Front->back
//! notifications"), with the faults of the plan applied.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::vec::Vec;

use super::config::Personality;
use super::decode::{self, RawSlot, Request};
use super::request::{self, Grants, Kind, Use};
use super::{BadId, SimBlkBack};
use crate::abi::blkif::{
    BlkifResponse, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP,
    BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use crate::hal::{DomId, GrantRef, HalError, Port};
use crate::ring::BackRing;
use crate::sim::{GrantMapping, SimXen};
use crate::xenbus::XenbusState;
use crate::Result;

/// A data frame a request uses.
#[derive(Debug)]
pub(super) enum Frame {
    /// Mapped (shared with the persistent cache when it is persistent).
    Mapped(Arc<GrantMapping>),
    /// Reached by grant copy (qdisk); nothing is held.
    Copy(u32),
}

/// A response waiting for its time (a slow backend) with the frames its
/// request keeps mapped until then.
#[derive(Debug)]
pub(super) struct Pending {
    pub due_ns: u64,
    pub rsp: BlkifResponse,
    pub frames: Vec<Frame>,
}

/// One connected ring (a queue of `multi-queue-num-queues`).
pub(super) struct Queue {
    /// Declared before `ring_pages`: the ring points into them.
    pub ring: BackRing<RawSlot, BlkifResponse>,
    pub ring_pages: Vec<GrantMapping>,
    pub port: Port,
    /// The last round stopped with requests left (or a final check found
    /// more): serve the ring without waiting for a notification.
    pub more_work: bool,
    /// The frontend broke the ring protocol: the ring is not served again.
    pub halted: bool,
    /// Persistent grants by reference (blkback with `feature-persistent`).
    pub persistent: BTreeMap<u32, Arc<GrantMapping>>,
    pub pending: Vec<Pending>,
    /// Frames kept mapped after their response (`keep_grants_mapped`).
    pub kept: Vec<Frame>,
}

impl Queue {
    /// Data and indirect grants this queue maps now, each counted once.
    pub(super) fn grants_mapped(&self) -> usize {
        let loose = |f: &Frame| matches!(f, Frame::Mapped(m) if !self.is_persistent(m));
        self.persistent.len()
            + self
                .pending
                .iter()
                .flat_map(|p| &p.frames)
                .filter(|f| loose(f))
                .count()
            + self.kept.iter().filter(|f| loose(f)).count()
    }

    /// Whether a non-persistent mapping in `frames` maps a frame that a
    /// held or kept request of this queue still maps through another grant:
    /// the frontend reused a page the backend could still write. (The same
    /// frame through the same grant reference is not that: a hostile
    /// backend that takes a request after its forged answer let the
    /// frontend revoke and reissue the reference maps whatever it now
    /// grants.)
    pub(super) fn maps_any_of(&self, frames: &[Frame]) -> bool {
        let key = |f: &Frame| match f {
            Frame::Mapped(m) if !self.is_persistent(m) => Some((m.gfn(), m.gref())),
            _ => None,
        };
        let held: std::collections::BTreeSet<_> = self
            .pending
            .iter()
            .flat_map(|p| &p.frames)
            .chain(&self.kept)
            .filter_map(key)
            .collect();
        frames
            .iter()
            .filter_map(key)
            .any(|(gfn, gref)| held.iter().any(|&(g, r)| g == gfn && r != gref))
    }

    fn is_persistent(&self, m: &Arc<GrantMapping>) -> bool {
        m.gref()
            .and_then(|g| self.persistent.get(&g.0))
            .is_some_and(|p| Arc::ptr_eq(p, m))
    }

    /// Writes `rsp_prod` directly (the `rsp_prod_jump` fault).
    fn poke_rsp_prod(&self, value: u32) {
        let Some(page) = self.ring_pages.first() else {
            return;
        };
        // SAFETY: the first ring page is mapped (and stays allocated) while
        // `page` lives; `rsp_prod` is the 4-byte-aligned `u32` at offset 8 of
        // `struct blkif_sring`, which both ends only ever access atomically
        // (`SringHeader`), so an atomic store here races with nothing.
        let rsp_prod = unsafe { AtomicU32::from_ptr(page.as_ptr().add(8).cast::<u32>()) };
        rsp_prod.store(value, Ordering::Release);
    }
}

/// How the processor reaches grants from this backend: mapping (with the
/// persistent cache when negotiated) for blkback, grant copy for qdisk.
struct DevGrants<'a> {
    xen: &'a SimXen,
    fe: DomId,
    copy: bool,
    cache: Option<(&'a mut BTreeMap<u32, Arc<GrantMapping>>, usize)>,
}

impl Grants for DevGrants<'_> {
    type Frame = Frame;

    fn map(&mut self, gref: u32, how: Use) -> Result<Frame, HalError> {
        if self.copy {
            return Ok(Frame::Copy(gref));
        }
        let Some((cache, max)) = &mut self.cache else {
            // Linux maps read-only unless the backend writes into the frame.
            let ro = how != Use::ToGuest;
            let m = self
                .xen
                .map_grant(DomId::DOM0, self.fe, GrantRef(gref), ro)?;
            return Ok(Frame::Mapped(Arc::new(m)));
        };
        if let Some(m) = cache.get(&gref) {
            return Ok(Frame::Mapped(Arc::clone(m)));
        }
        // Persistent grants are always mapped writable (blkif.h note 8).
        let m = Arc::new(
            self.xen
                .map_grant(DomId::DOM0, self.fe, GrantRef(gref), false)?,
        );
        if cache.len() < *max {
            cache.insert(gref, Arc::clone(&m));
        }
        Ok(Frame::Mapped(m))
    }

    fn read(&mut self, f: &Frame, off: usize, buf: &mut [u8]) -> Result<(), HalError> {
        match f {
            Frame::Mapped(m) => m.read(off, buf),
            Frame::Copy(g) => {
                self.xen
                    .grant_copy_from(DomId::DOM0, self.fe, GrantRef(*g), off, buf)
            }
        }
    }

    fn write(&mut self, f: &Frame, off: usize, data: &[u8]) -> Result<(), HalError> {
        match f {
            Frame::Mapped(m) => m.write(off, data),
            Frame::Copy(g) => self
                .xen
                .grant_copy_to(DomId::DOM0, self.fe, GrantRef(*g), off, data),
        }
    }
}

/// Whether an injected I/O error applies to this request: a read, write or
/// discard the backend could carry out. A malformed or unknown request never
/// reaches the disk, so it does not use up the fault.
fn does_io(req: &Request) -> bool {
    match req {
        Request::Direct(d) => d.operation == BLKIF_OP_READ || d.operation == BLKIF_OP_WRITE,
        Request::Indirect(_) | Request::Discard(_) => true,
        Request::Unknown { .. } | Request::Malformed { .. } => false,
    }
}

impl SimBlkBack {
    /// Serves every queue once. Returns whether anything happened.
    pub(super) fn io_step(&mut self, xen: &SimXen) -> bool {
        let Some(mut conn) = self.conn.take() else {
            return false;
        };
        let mut progress = false;
        for (i, q) in conn.queues.iter_mut().enumerate() {
            if i == 0 && self.faults.spurious_notifications > 0 {
                for _ in 0..std::mem::take(&mut self.faults.spurious_notifications) {
                    if xen.send(DomId::DOM0, q.port).is_ok() {
                        self.stats.notifications_sent += 1;
                    }
                }
                progress = true;
            }
            let notified = xen.consume(DomId::DOM0, q.port);
            if notified {
                self.stats.notifications_received += 1;
                progress = true;
            }
            if self.state != XenbusState::Connected || q.halted || !(notified || q.more_work) {
                continue;
            }
            q.more_work = false;
            let taken = self.take_requests(xen, q, conn.persistent);
            progress |= taken > 0;
            self.stats.max_requests_per_wakeup = self.stats.max_requests_per_wakeup.max(taken);
            if self.state != XenbusState::Connected {
                break;
            }
        }
        if self.state == XenbusState::Connected {
            for q in &mut conn.queues {
                progress |= self.publish_due(xen, q);
            }
        }
        self.conn = Some(conn);
        progress
    }

    /// The loop of Linux's `do_block_io_op`: take requests until a final
    /// check finds none (at most one ring's worth per round).
    fn take_requests(&mut self, xen: &SimXen, q: &mut Queue, persistent: bool) -> u64 {
        let mut taken = 0u64;
        loop {
            if self.faults.closing_after == Some(0) {
                self.fault_close(q);
                return taken;
            }
            let next = match q.ring.poll_request() {
                Ok(Some(slot)) => slot,
                Ok(None) => match q.ring.final_check_for_requests() {
                    Ok(true) => continue,
                    Ok(false) => return taken,
                    Err(_) => {
                        self.halt(q);
                        return taken;
                    }
                },
                Err(_) => {
                    self.halt(q);
                    return taken;
                }
            };
            taken += 1;
            if let Some(n) = &mut self.faults.closing_after {
                *n -= 1;
                if *n == 0 {
                    self.stats.unanswered += 1;
                    self.fault_close(q);
                    return taken;
                }
            }
            self.handle(xen, q, persistent, &next);
            if taken >= u64::from(q.ring.size()) {
                q.more_work = true;
                return taken;
            }
        }
    }

    fn halt(&mut self, q: &mut Queue) {
        log::warn!(
            "sim blkback {}: frontend broke the ring; halting it",
            self.name
        );
        self.stats.protocol_errors += 1;
        q.halted = true;
    }

    /// `closing_after` fired: drop every unanswered response and go Closing.
    fn fault_close(&mut self, q: &mut Queue) {
        self.faults.closing_after = None;
        self.stats.unanswered += q.pending.len() as u64;
        q.pending.clear();
        self.go_closing();
    }

    fn handle(&mut self, xen: &SimXen, q: &mut Queue, persistent: bool, slot: &RawSlot) {
        let req = decode::decode(slot);
        if let Request::Discard(d) = &req {
            self.stats.last_discard = Some((d.sector, d.nr_sectors));
        }
        let fail_io = self.faults.io_errors > 0 && does_io(&req);
        if fail_io {
            self.faults.io_errors -= 1;
        }
        let mut grants = DevGrants {
            xen,
            fe: self.fe,
            copy: self.cfg.personality == Personality::Qdisk,
            cache: persistent.then_some((&mut q.persistent, self.cfg.max_persistent_grants)),
        };
        let out = request::dispatch(&self.cfg, &mut self.disk, &mut grants, &req, fail_io);
        let s = &mut self.stats;
        match out.kind {
            Kind::Read => s.reads += 1,
            Kind::Write => s.writes += 1,
            Kind::Flush => s.flushes += 1,
            Kind::Barrier => s.barriers += 1,
            Kind::Discard => s.discards += 1,
            Kind::Unknown => s.unknown_ops += 1,
        }
        s.indirect += u64::from(out.indirect || out.operation == BLKIF_OP_INDIRECT);
        s.secure_discards += u64::from(out.secure);
        if let Some(key) = out.disable_feature {
            self.write_be(key, "0");
        }
        if self.faults.swallow_requests {
            self.stats.unanswered += 1;
            return;
        }
        if self.faults.hold_responses {
            self.stats.reused_while_mapped += u64::from(q.maps_any_of(&out.frames));
        }
        let mut due_ns = if self.faults.hold_responses {
            u64::MAX
        } else {
            xen.now_ns().saturating_add(self.faults.delay_ns)
        };
        if out.kind == Kind::Barrier {
            // Drain: the barrier completes after everything before it.
            due_ns = q.pending.iter().map(|p| p.due_ns).fold(due_ns, u64::max);
        }
        q.pending.push(Pending {
            due_ns,
            rsp: BlkifResponse {
                id: out.id,
                operation: out.operation,
                status: out.status,
            },
            frames: out.frames,
        });
    }

    /// Publishes the responses whose time has come, oldest first, unmapping
    /// their frames before the frontend can see them (as Linux's
    /// `__end_block_io_op` unmaps before `make_response`).
    fn publish_due(&mut self, xen: &SimXen, q: &mut Queue) -> bool {
        let now = xen.now_ns();
        let mut pushed = false;
        let mut i = 0;
        while i < q.pending.len() {
            if q.pending[i].due_ns > now {
                i += 1;
                continue;
            }
            let p = q.pending.remove(i);
            let rsp = self.corrupt(p.rsp);
            if self.faults.keep_grants_mapped {
                q.kept.extend(p.frames);
            } else {
                drop(p.frames);
            }
            if q.ring.push_response(&rsp).is_err() {
                break;
            }
            match rsp.status {
                BLKIF_RSP_OKAY => self.stats.ok += 1,
                BLKIF_RSP_ERROR => self.stats.errors += 1,
                BLKIF_RSP_EOPNOTSUPP => self.stats.eopnotsupp += 1,
                _ => {}
            }
            self.last_answered = Some(p.rsp.id);
            pushed = true;
        }
        if !pushed {
            return false;
        }
        if q.ring.push_responses_and_check_notify() {
            self.notify(xen, q.port);
        }
        if let Some(jump) = self.faults.rsp_prod_jump.take() {
            q.poke_rsp_prod(q.ring.rsp_prod_pvt().wrapping_add(jump));
            self.notify(xen, q.port);
        }
        true
    }

    fn notify(&mut self, xen: &SimXen, port: Port) {
        if xen.send(DomId::DOM0, port).is_ok() {
            self.stats.notifications_sent += 1;
        }
    }

    /// Applies the one-shot response faults.
    fn corrupt(&mut self, mut rsp: BlkifResponse) -> BlkifResponse {
        match self.faults.bad_id {
            Some(BadId::OutOfRange) => {
                rsp.id = u64::MAX;
                self.faults.bad_id = None;
            }
            Some(BadId::NotInFlight) => {
                if let Some(prev) = self.last_answered {
                    rsp.id = prev;
                    self.faults.bad_id = None;
                }
            }
            None => {}
        }
        if std::mem::take(&mut self.faults.wrong_operation) {
            rsp.operation = if rsp.operation == BLKIF_OP_READ {
                BLKIF_OP_WRITE
            } else {
                BLKIF_OP_READ
            };
        }
        if let Some(st) = self.faults.unknown_status.take() {
            rsp.status = st;
        }
        rsp
    }

    /// The earliest time a delayed response is due.
    pub(super) fn next_due_ns(&self) -> Option<u64> {
        self.conn
            .as_ref()?
            .queues
            .iter()
            .flat_map(|q| q.pending.iter().map(|p| p.due_ns))
            .filter(|&t| t != u64::MAX)
            .min()
    }
}
