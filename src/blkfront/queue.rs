//! One ring of the block frontend: the shared ring, its event channel, the
//! shadow table of what was sent, and the pool of granted data pages.
//!
//! Data flows one way per direction (ARCHITECTURE.md): caller bytes are
//! copied into pages this queue owns, the pages are granted, the request is
//! written into a ring slot whose index doubles as the wire `id`; each
//! response is copied out once, validated against the shadow (id in range,
//! slot in flight, operation matches, status known — the checks Linux's
//! `blkif_interrupt` makes since XSA-396), and only then are grants revoked
//! and data copied back.

use alloc::vec::Vec;

use crate::abi::blkif::{
    BlkifRequestSegment, BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER,
    BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use crate::blkfront::wire::{encode_segment, RequestSlot, SEGS_PER_INDIRECT_PAGE};
use crate::error::{Feature, Violation};
use crate::gnttab::GrantTable;
use crate::hal::{DomId, GrantRef, Hal, Pages, Port, PAGE_SIZE};
use crate::ring::FrontRing;
use crate::{Error, Result};

/// The blkif ring as this driver uses it.
pub(crate) type BlkRing = FrontRing<RequestSlot, BlkifResponse>;

/// One page used for data or indirect descriptors, and its grant.
pub(crate) struct DataPage {
    pub(crate) page: Pages,
    /// The grant the backend uses for this page, if any.
    pub(crate) gref: Option<GrantRef>,
    /// Whether `gref` is per request (revoked at completion) rather than
    /// persistent.
    pub(crate) transient: bool,
}

/// What a request slot carries while it is in flight.
#[derive(Default)]
pub(crate) struct Shadow {
    pub(crate) in_flight: bool,
    /// The operation a matching response must carry (`indirect_op` for an
    /// indirect request: that is what backends echo).
    pub(crate) op: u8,
    /// The caller-visible request this slot is part of (its index in the
    /// driver's table of pending requests).
    pub(crate) req: u32,
    /// Byte offset of this part within the caller's buffer.
    pub(crate) offset: usize,
    /// Bytes this part carries.
    pub(crate) len: usize,
    /// Data pages, in order. Emptied when the slot is released, keeping its
    /// capacity for the next request (no allocation per request).
    pub(crate) pages: Vec<DataPage>,
    /// Indirect descriptor pages (likewise reused).
    pub(crate) indirect: Vec<DataPage>,
}

/// The outcome of one validated response. Its slot stays taken, with its
/// data pages, until [`Queue::release`]: read data is copied out of
/// [`Queue::data_pages`] in between.
pub(crate) struct Done {
    /// The slot (the wire id).
    pub(crate) id: u32,
    pub(crate) req: u32,
    pub(crate) op: u8,
    pub(crate) status: Result<()>,
    pub(crate) offset: usize,
    pub(crate) len: usize,
}

/// One ring and everything that belongs to it.
pub(crate) struct Queue {
    pub(crate) ring: BlkRing,
    pub(crate) ring_pages: Option<Pages>,
    pub(crate) ring_grefs: Vec<GrantRef>,
    pub(crate) port: Port,
    pub(crate) shadow: Vec<Shadow>,
    free_ids: Vec<u32>,
    /// LIFO pool of idle data pages (persistently granted when `persistent`).
    pool: Vec<DataPage>,
    pub(crate) persistent: bool,
    pub(crate) backend: DomId,
    /// Requests pushed but not yet published to the backend.
    unpublished: bool,
    /// Pages whose grant the backend still held at revocation: never reused.
    pub(crate) quarantine: Vec<(GrantRef, Pages)>,
}

impl Queue {
    pub(crate) fn new(
        ring: BlkRing,
        ring_pages: Pages,
        ring_grefs: Vec<GrantRef>,
        port: Port,
        persistent: bool,
        backend: DomId,
    ) -> Queue {
        let slots = ring.size() as usize;
        let mut shadow = Vec::with_capacity(slots);
        shadow.resize_with(slots, Shadow::default);
        Queue {
            ring,
            ring_pages: Some(ring_pages),
            ring_grefs,
            port,
            shadow,
            // Popped from the end: low ids go out first.
            free_ids: (0..slots as u32).rev().collect(),
            pool: Vec::new(),
            persistent,
            backend,
            unpublished: false,
            quarantine: Vec::new(),
        }
    }

    /// Free request slots.
    pub(crate) fn free_slots(&self) -> usize {
        self.free_ids.len()
    }

    /// Requests in flight.
    pub(crate) fn in_flight(&self) -> usize {
        self.shadow.len() - self.free_ids.len()
    }

    /// A page from the LIFO pool, or a new one (persistently granted when
    /// persistent grants are in use).
    fn take_page<H: Hal>(&mut self, hal: &H, gt: &GrantTable<'_, H>) -> Result<DataPage> {
        if let Some(p) = self.pool.pop() {
            return Ok(p);
        }
        let page = hal.alloc_pages(1)?;
        let gref = if self.persistent {
            match gt.grant_access(self.backend, page.gfn(), false) {
                Ok(g) => Some(g),
                Err(e) => {
                    // SAFETY: the page was never granted or shared.
                    unsafe { hal.free_pages(page) };
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(DataPage {
            page,
            gref,
            transient: false,
        })
    }

    /// Grants `p` for one request unless it is persistently granted.
    fn grant_for_request<H: Hal>(
        &self,
        gt: &GrantTable<'_, H>,
        p: &mut DataPage,
        readonly: bool,
    ) -> Result<GrantRef> {
        if let Some(g) = p.gref {
            return Ok(g);
        }
        let g = gt.grant_access(self.backend, p.page.gfn(), readonly)?;
        p.gref = Some(g);
        p.transient = true;
        Ok(g)
    }

    /// Ends per-request grants and returns pages to the pool. A grant the
    /// backend still maps sends its page to quarantine instead: it is never
    /// reused while the backend may write to it.
    pub(crate) fn recycle<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        pages: &mut Vec<DataPage>,
    ) {
        let cap = self.shadow.len() * 4 + 64;
        for mut p in pages.drain(..) {
            if p.transient {
                let g = p.gref.take().unwrap_or(GrantRef(0));
                p.transient = false;
                if gt.end_access_and_free(g).is_err() {
                    log::warn!(
                        "grant {} still mapped by domain {}: page quarantined",
                        g.0,
                        self.backend.0
                    );
                    self.quarantine.push((g, p.page));
                    continue;
                }
            }
            if self.pool.len() < cap || p.gref.is_some() {
                self.pool.push(p);
            } else {
                // SAFETY: a page without any grant is not shared.
                unsafe { hal.free_pages(p.page) };
            }
        }
    }

    /// Pushes one read or write part of `len` bytes (a non-zero multiple of
    /// 512) at 512-byte sector `sector`. `src` holds the bytes to write
    /// (`None` for a read). `indirect_segs` is the negotiated indirect limit
    /// (0 when not in use). Nothing is published until
    /// [`publish`](Queue::publish). On error nothing was pushed and every
    /// resource taken here is given back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push_rw<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        handle: u16,
        sector: u64,
        req: u32,
        offset: usize,
        src: Option<&[u8]>,
        len: usize,
        indirect_segs: usize,
    ) -> Result<()> {
        let nsegs = len.div_ceil(PAGE_SIZE);
        if nsegs == 0 || len % 512 != 0 || src.is_some_and(|s| s.len() != len) {
            return Err(Error::Misaligned);
        }
        if nsegs > BLKIF_MAX_SEGMENTS_PER_REQUEST.max(indirect_segs) {
            return Err(Error::OutOfRange);
        }
        let id = *self.free_ids.last().ok_or(Error::RingFull)?;
        let write = src.is_some();
        // The free slot's own (empty) vectors, with their capacity.
        let s = &mut self.shadow[id as usize];
        let mut pages = core::mem::take(&mut s.pages);
        let mut indirect = core::mem::take(&mut s.indirect);
        pages.clear();
        indirect.clear();
        if let Err(e) = self.prepare(hal, gt, &mut pages, &mut indirect, src, len, nsegs, write) {
            self.give_back(hal, gt, id, pages, indirect);
            return Err(e);
        }
        let op = if write { BLKIF_OP_WRITE } else { BLKIF_OP_READ };
        let slot = if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            let mut segs = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
            for (i, p) in pages.iter().enumerate() {
                segs[i] = segment(i, p, len);
            }
            RequestSlot::direct(op, handle, u64::from(id), sector, &segs[..nsegs])
        } else {
            let mut igrefs = [0u32; 8];
            for (k, p) in indirect.iter().enumerate() {
                igrefs[k] = p.gref.map_or(0, |g| g.0);
            }
            RequestSlot::indirect(
                op,
                nsegs as u16,
                u64::from(id),
                sector,
                handle,
                &igrefs[..indirect.len()],
            )
        };
        if let Err(e) = self.ring.push_request(&slot) {
            self.give_back(hal, gt, id, pages, indirect);
            return Err(e);
        }
        self.free_ids.pop();
        let s = &mut self.shadow[id as usize];
        s.in_flight = true;
        s.op = op;
        s.req = req;
        s.offset = offset;
        s.len = len;
        s.pages = pages;
        s.indirect = indirect;
        self.unpublished = true;
        Ok(())
    }

    /// Returns the pages of a part that was not sent to the pool, and the
    /// emptied vectors to free slot `id`.
    fn give_back<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        id: u32,
        mut pages: Vec<DataPage>,
        mut indirect: Vec<DataPage>,
    ) {
        self.recycle(hal, gt, &mut pages);
        self.recycle(hal, gt, &mut indirect);
        if let Some(s) = self.shadow.get_mut(id as usize) {
            s.pages = pages;
            s.indirect = indirect;
        }
    }

    /// Takes and fills the data pages (and indirect pages) of one part.
    #[allow(clippy::too_many_arguments)]
    fn prepare<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        pages: &mut Vec<DataPage>,
        indirect: &mut Vec<DataPage>,
        src: Option<&[u8]>,
        len: usize,
        nsegs: usize,
        write: bool,
    ) -> Result<()> {
        for i in 0..nsegs {
            let mut p = self.take_page(hal, gt)?;
            if let Some(src) = src {
                let chunk = &src[i * PAGE_SIZE..len.min((i + 1) * PAGE_SIZE)];
                // SAFETY: the page is ours and PAGE_SIZE long; the backend
                // does not access it while no request using it is in flight
                // (a persistent grant is only used by requests we send).
                unsafe {
                    core::ptr::copy_nonoverlapping(chunk.as_ptr(), p.page.as_ptr(), chunk.len())
                };
            }
            let r = self.grant_for_request(gt, &mut p, write);
            pages.push(p);
            r?;
        }
        if nsegs <= BLKIF_MAX_SEGMENTS_PER_REQUEST {
            return Ok(());
        }
        for chunk in pages.chunks(SEGS_PER_INDIRECT_PAGE) {
            let base = indirect.len() * SEGS_PER_INDIRECT_PAGE;
            let mut p = self.take_page(hal, gt)?;
            for (j, dp) in chunk.iter().enumerate() {
                let bytes = encode_segment(&segment(base + j, dp, len));
                // SAFETY: at most 512 descriptors of 8 bytes fit in the page,
                // which is ours and not visible to the backend until the
                // request is published.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        p.page.as_ptr().add(j * bytes.len()),
                        bytes.len(),
                    )
                };
            }
            let r = self.grant_for_request(gt, &mut p, true);
            indirect.push(p);
            r?;
        }
        Ok(())
    }

    /// Pushes a request without data (flush, barrier, discard) built by
    /// `slot_of(id)`; `op` is the operation its response must echo.
    pub(crate) fn push_control(
        &mut self,
        req: u32,
        op: u8,
        slot_of: impl FnOnce(u64) -> RequestSlot,
    ) -> Result<()> {
        let id = *self.free_ids.last().ok_or(Error::RingFull)?;
        self.ring.push_request(&slot_of(u64::from(id)))?;
        self.free_ids.pop();
        let s = &mut self.shadow[id as usize];
        s.in_flight = true;
        s.op = op;
        s.req = req;
        s.offset = 0;
        s.len = 0;
        self.unpublished = true;
        Ok(())
    }

    /// Publishes pushed requests; returns whether the backend must be
    /// notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub(crate) fn publish(&mut self) -> bool {
        if !self.unpublished {
            return false;
        }
        self.unpublished = false;
        self.ring.push_requests_and_check_notify()
    }

    /// Validates one response against the shadow and takes its slot out of
    /// flight (revoking per-request grants); [`release`](Queue::release)
    /// frees it once the data is copied out. A bad response returns the
    /// violation and changes nothing; the caller then breaks the device.
    pub(crate) fn complete<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        rsp: &BlkifResponse,
    ) -> core::result::Result<Done, Violation> {
        let id = rsp.id;
        let idx = usize::try_from(id).map_err(|_| Violation::BadId(id))?;
        let s = self.shadow.get_mut(idx).ok_or(Violation::BadId(id))?;
        if !s.in_flight {
            return Err(Violation::NotInFlight(id));
        }
        if rsp.operation != s.op {
            return Err(Violation::WrongOperation {
                id,
                sent: s.op,
                got: rsp.operation,
            });
        }
        let status = match rsp.status {
            BLKIF_RSP_OKAY => Ok(()),
            BLKIF_RSP_ERROR => Err(Error::IoError),
            BLKIF_RSP_EOPNOTSUPP => Err(Error::Unsupported(match s.op {
                BLKIF_OP_FLUSH_DISKCACHE => Feature::FlushCache,
                BLKIF_OP_WRITE_BARRIER => Feature::Barrier,
                BLKIF_OP_DISCARD => Feature::Discard,
                _ => Feature::Indirect,
            })),
            other => return Err(Violation::UnknownStatus(other)),
        };
        s.in_flight = false;
        let (req, op, offset, len) = (s.req, s.op, s.offset, s.len);
        let mut indirect = core::mem::take(&mut s.indirect);
        self.recycle(hal, gt, &mut indirect);
        let s = &mut self.shadow[idx];
        s.indirect = indirect;
        // Per-request grants of data pages end now, before anyone reads the
        // data: after a successful revoke the backend can no longer change it.
        for p in s.pages.iter_mut().filter(|p| p.transient) {
            let g = p.gref.unwrap_or(GrantRef(0));
            if gt.end_access_and_free(g).is_ok() {
                p.gref = None;
                p.transient = false;
            }
        }
        Ok(Done {
            id: idx as u32,
            req,
            op,
            status,
            offset,
            len,
        })
    }

    /// The data pages of slot `id` (completed, not yet released).
    pub(crate) fn data_pages(&self, id: u32) -> &[DataPage] {
        self.shadow.get(id as usize).map_or(&[], |s| &s.pages)
    }

    /// Frees slot `id` after [`complete`](Queue::complete): its pages go
    /// back to the pool (or quarantine), the slot to the free list.
    pub(crate) fn release<H: Hal>(&mut self, hal: &H, gt: &GrantTable<'_, H>, id: u32) {
        let Some(s) = self.shadow.get_mut(id as usize) else {
            return;
        };
        if s.in_flight {
            return;
        }
        let mut pages = core::mem::take(&mut s.pages);
        self.recycle(hal, gt, &mut pages);
        self.shadow[id as usize].pages = pages;
        self.free_ids.push(id);
    }

    /// Retires every in-flight slot without a response (the backend went
    /// away or broke the protocol), calling `f` with each slot's token.
    /// Grants are revoked; pages the backend still maps are quarantined.
    pub(crate) fn abort_all<H: Hal>(
        &mut self,
        hal: &H,
        gt: &GrantTable<'_, H>,
        mut f: impl FnMut(u32),
    ) {
        for idx in 0..self.shadow.len() {
            if !self.shadow[idx].in_flight {
                continue;
            }
            let s = &mut self.shadow[idx];
            s.in_flight = false;
            let pages = core::mem::take(&mut s.pages);
            let indirect = core::mem::take(&mut s.indirect);
            let req = s.req;
            self.give_back(hal, gt, idx as u32, pages, indirect);
            self.free_ids.push(idx as u32);
            f(req);
        }
        self.unpublished = false;
    }

    /// Gives back every page and grant this queue holds except its ring and
    /// what is quarantined: the pool, with persistent grants revoked.
    pub(crate) fn drain_pool<H: Hal>(&mut self, hal: &H, gt: &GrantTable<'_, H>) {
        for mut p in self.pool.drain(..) {
            if let Some(g) = p.gref.take() {
                if gt.end_access_and_free(g).is_err() {
                    self.quarantine.push((g, p.page));
                    continue;
                }
            }
            // SAFETY: the page's grant (if any) was revoked successfully.
            unsafe { hal.free_pages(p.page) };
        }
    }
}

/// The segment descriptor of data page `i` of a part of `len` bytes: data
/// always starts at offset 0 of our own pages, so only the last page may be
/// partial.
fn segment(i: usize, p: &DataPage, len: usize) -> BlkifRequestSegment {
    let bytes = (len - i * PAGE_SIZE).min(PAGE_SIZE);
    BlkifRequestSegment {
        gref: p.gref.map_or(0, |g| g.0),
        first_sect: 0,
        last_sect: (bytes / 512 - 1) as u8,
    }
}
