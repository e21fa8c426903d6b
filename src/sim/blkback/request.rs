//! The request processor: validates one ring request the way the imitated
//! backend does, moves the data between the disk and the guest's granted
//! frames, and decides the response.
//!
//! It knows nothing about rings, event channels or the simulator: grants are
//! reached through the [`Grants`] trait (map-and-copy for blkback, grant copy
//! for qdisk, a fake in the unit tests), so every validation rule is tested
//! here on its own.
//!
//! Rules, after Linux `dispatch_rw_block_io` / `xen_blkbk_parse_indirect` /
//! `dispatch_discard_io` / `dispatch_other_io` and QEMU
//! `xen_block_parse_request` (requests as in `io/blkif.h`, "REQUEST CODES"):
//!
//! | check | blkback | qdisk |
//! |---|---|---|
//! | unknown operation | `EOPNOTSUPP` | `ERROR` |
//! | `BLKIF_OP_INDIRECT` | with `indirect_op` READ/WRITE only, else `ERROR` | `ERROR` |
//! | 0 segments on read/write | `ERROR` | OK, nothing done |
//! | more than 11 direct / more than max indirect segments | `ERROR` | `ERROR` |
//! | `last_sect < first_sect`, `last_sect` past the page | `ERROR` | `ERROR` |
//! | past the end of the disk (or overflowing) | `ERROR` | `ERROR` |
//! | anything but a read on a read-only disk | `ERROR` | `ERROR` |
//! | not aligned to a 4096-byte logical sector | `ERROR` | (units are logical) |
//! | flush / barrier / discard not offered | `EOPNOTSUPP` | flush done, barrier `ERROR`, discard ignored |
//!
//! Linux completes a flush the device has no cache for; the simulated blkback
//! answers `EOPNOTSUPP` to any operation it did not advertise, so that a
//! frontend using one shows up in tests.
//!
//! The slot itself is read by `decode`, which turns what no backend can
//! carry out (too many segments, an indirect request that is no read or
//! write) into a malformed request answered here with `ERROR`.
//!
//! Responses echo the request's `id`; the operation is the request's, except
//! that blkback answers an indirect request with its `indirect_op` (Linux's
//! `make_response(.., req_operation, ..)`), and qdisk echoes whatever came.

use std::vec::Vec;

use super::config::{BackendConfig, Offer, Personality};
use super::decode::{indirect_page_segments, Discard, Indirect, Request, Segment};
use super::disk::Disk;
use crate::abi::blkif::{
    BLKIF_DISCARD_SECURE, BLKIF_OP_DISCARD, BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR,
    BLKIF_RSP_OKAY,
};
use crate::hal::{HalError, PAGE_SIZE};
use crate::Result;

/// What a granted frame is mapped for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// An indirect page of segment descriptors (read by the backend).
    Indirect,
    /// Data of a write (read by the backend).
    FromGuest,
    /// Data of a read (written by the backend).
    ToGuest,
}

/// How the processor reaches the frontend's granted frames.
pub(crate) trait Grants {
    /// A mapped (or copy-addressable) frame; dropping it unmaps.
    type Frame;
    /// Maps grant `gref` for `how`.
    fn map(&mut self, gref: u32, how: Use) -> Result<Self::Frame, HalError>;
    /// Copies bytes out of a frame.
    fn read(&mut self, frame: &Self::Frame, offset: usize, buf: &mut [u8]) -> Result<(), HalError>;
    /// Copies bytes into a frame.
    fn write(&mut self, frame: &Self::Frame, offset: usize, data: &[u8]) -> Result<(), HalError>;
}

/// The kind of a request, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    Flush,
    Barrier,
    Discard,
    Unknown,
}

/// What became of one request.
#[derive(Debug)]
pub(crate) struct Outcome<F> {
    /// The response's `id`.
    pub id: u64,
    /// The response's `operation`.
    pub operation: u8,
    /// The response's `status`.
    pub status: i16,
    pub kind: Kind,
    /// It came as `BLKIF_OP_INDIRECT`.
    pub indirect: bool,
    /// A secure discard was carried out.
    pub secure: bool,
    /// Data frames to keep mapped until the response is sent.
    pub frames: Vec<F>,
    /// A `feature-*` key Linux rewrites to `0` after answering EOPNOTSUPP.
    pub disable_feature: Option<&'static str>,
}

impl<F> Outcome<F> {
    fn new(id: u64, operation: u8, kind: Kind, status: i16) -> Self {
        Outcome {
            id,
            operation,
            status,
            kind,
            indirect: false,
            secure: false,
            frames: Vec::new(),
            disable_feature: None,
        }
    }
}

/// Processes one request (decoded from its slot with
/// [`decode`](super::decode::decode)). `fail_io` makes an otherwise valid
/// read, write or discard fail with `BLKIF_RSP_ERROR` (an injected disk
/// error).
pub(crate) fn dispatch<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    req: &Request,
    fail_io: bool,
) -> Outcome<G::Frame> {
    match cfg.personality {
        Personality::Blkback => blkback(cfg, disk, grants, *req, fail_io),
        Personality::Qdisk => qdisk(cfg, disk, grants, *req, fail_io),
    }
}

fn kind_of(op: u8) -> Kind {
    match op {
        BLKIF_OP_READ => Kind::Read,
        BLKIF_OP_WRITE => Kind::Write,
        BLKIF_OP_FLUSH_DISKCACHE => Kind::Flush,
        BLKIF_OP_WRITE_BARRIER => Kind::Barrier,
        BLKIF_OP_DISCARD => Kind::Discard,
        _ => Kind::Unknown,
    }
}

/// The segments of a read/write request, already copied out.
struct Rw {
    op: u8,
    id: u64,
    sector: u64,
    segs: Vec<Segment>,
}

// ----- blkback ---------------------------------------------------------------

fn blkback<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    req: Request,
    fail_io: bool,
) -> Outcome<G::Frame> {
    if req.is_indirect() && cfg.max_indirect_segments.is_none() {
        // Not advertised: an operation this backend does not know.
        return Outcome::new(
            req.id(),
            BLKIF_OP_INDIRECT,
            Kind::Unknown,
            BLKIF_RSP_EOPNOTSUPP,
        );
    }
    match req {
        Request::Discard(Discard {
            flag,
            id,
            sector,
            nr_sectors,
            ..
        }) => blkback_discard(cfg, disk, id, flag, sector, nr_sectors, fail_io),
        // dispatch_other_io.
        Request::Unknown { operation, id } => {
            Outcome::new(id, operation, Kind::Unknown, BLKIF_RSP_EOPNOTSUPP)
        }
        // dispatch_rw_block_io's checks of the slot: answered with
        // req_operation (indirect_op for an indirect request).
        Request::Malformed { id, why } => {
            let op = why.operation();
            let mut out = Outcome::new(id, op, kind_of(op), BLKIF_RSP_ERROR);
            out.indirect = why.indirect();
            out
        }
        Request::Direct(d) => {
            let rw = Rw {
                op: d.operation,
                id: d.id,
                sector: d.sector,
                segs: d.segments().to_vec(),
            };
            blkback_rw(cfg, disk, grants, rw, false, fail_io)
        }
        Request::Indirect(ind) => {
            let mut out = Outcome::new(
                ind.id,
                ind.indirect_op,
                kind_of(ind.indirect_op),
                BLKIF_RSP_ERROR,
            );
            out.indirect = true;
            let n = ind.nr_segments();
            if cfg.max_indirect_segments.is_none_or(|max| n > max as usize) {
                return out;
            }
            let Some(segs) = parse_indirect(grants, &ind) else {
                return out;
            };
            let rw = Rw {
                op: ind.indirect_op,
                id: ind.id,
                sector: ind.sector,
                segs,
            };
            blkback_rw(cfg, disk, grants, rw, true, fail_io)
        }
    }
}

/// Maps the indirect pages (read-only, released at the end as Linux does)
/// and copies out their segment descriptors.
fn parse_indirect<G: Grants>(grants: &mut G, req: &Indirect) -> Option<Vec<Segment>> {
    let n = req.nr_segments();
    let mut segs = Vec::with_capacity(n);
    let mut page = [0u8; PAGE_SIZE];
    for &gref in req.page_grefs() {
        let frame = grants.map(gref, Use::Indirect).ok()?;
        grants.read(&frame, 0, &mut page).ok()?;
        let left = n - segs.len();
        segs.extend(indirect_page_segments(&page).take(left));
    }
    Some(segs)
}

fn offer_status(offer: Offer) -> Option<i16> {
    match offer {
        Offer::Yes => None,
        Offer::No | Offer::Eopnotsupp => Some(BLKIF_RSP_EOPNOTSUPP),
    }
}

fn blkback_rw<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    rw: Rw,
    indirect: bool,
    fail_io: bool,
) -> Outcome<G::Frame> {
    let kind = kind_of(rw.op);
    let mut out = Outcome::new(rw.id, rw.op, kind, BLKIF_RSP_ERROR);
    out.indirect = indirect;
    let is_flush = matches!(kind, Kind::Flush | Kind::Barrier);
    let offer = match kind {
        Kind::Flush => cfg.flush,
        Kind::Barrier => cfg.barrier,
        _ => Offer::Yes,
    };
    if offer == Offer::No {
        out.status = BLKIF_RSP_EOPNOTSUPP;
        return out;
    }
    if rw.segs.is_empty() && !is_flush {
        return out;
    }
    let mut nr_sects: u64 = 0;
    for s in &rw.segs {
        if s.last_sect as usize >= PAGE_SIZE / 512 || s.last_sect < s.first_sect {
            return out;
        }
        nr_sects += u64::from(s.last_sect - s.first_sect) + 1;
    }
    // xen_vbd_translate.
    if rw.op != BLKIF_OP_READ && cfg.read_only {
        return out;
    }
    let disk_sects = disk.len() / 512;
    if nr_sects > 0 {
        match rw.sector.checked_add(nr_sects) {
            Some(end) if end <= disk_sects => {}
            _ => return out,
        }
    }
    let mask = u64::from(cfg.sector_size / 512 - 1);
    for s in &rw.segs {
        let nsec = u64::from(s.last_sect - s.first_sect) + 1;
        if (rw.sector | nsec) & mask != 0 {
            return out;
        }
    }
    if let Some(st) = offer_status(offer) {
        out.status = st;
        out.disable_feature = Some(if kind == Kind::Barrier {
            "feature-barrier"
        } else {
            "feature-flush-cache"
        });
        return out;
    }
    if fail_io {
        return out;
    }
    let how = if rw.op == BLKIF_OP_READ {
        Use::ToGuest
    } else {
        Use::FromGuest
    };
    match move_data(disk, grants, &rw, how, 512) {
        Ok(frames) => {
            out.frames = frames;
            out.status = BLKIF_RSP_OKAY;
        }
        Err(()) => out.status = BLKIF_RSP_ERROR,
    }
    out
}

/// Maps every data segment first (failing before any I/O, as Linux's
/// `xen_blkbk_map_seg` does), then copies. `unit` is the byte size of
/// `sector` and of `first_sect`/`last_sect`. Without segments (a flush or
/// barrier) nothing is moved and `sector`, which `io/blkif.h` gives a
/// meaning only for reads and writes, is not looked at.
fn move_data<G: Grants>(
    disk: &mut Disk,
    grants: &mut G,
    rw: &Rw,
    how: Use,
    unit: u64,
) -> core::result::Result<Vec<G::Frame>, ()> {
    if disk.is_null() || rw.segs.is_empty() {
        return Ok(Vec::new());
    }
    let mut frames = Vec::with_capacity(rw.segs.len());
    for s in &rw.segs {
        frames.push(grants.map(s.gref, how).map_err(|_| ())?);
    }
    let mut off = rw.sector.checked_mul(unit).ok_or(())?;
    let mut buf = Vec::new();
    for (s, f) in rw.segs.iter().zip(&frames) {
        let page_off = (u64::from(s.first_sect) * unit) as usize;
        let len = (u64::from(s.last_sect - s.first_sect + 1) * unit) as usize;
        buf.resize(len, 0);
        if how == Use::ToGuest {
            disk.read(off, &mut buf).map_err(|_| ())?;
            grants.write(f, page_off, &buf).map_err(|_| ())?;
        } else {
            grants.read(f, page_off, &mut buf).map_err(|_| ())?;
            disk.write(off, &buf).map_err(|_| ())?;
        }
        off += len as u64;
    }
    Ok(frames)
}

fn blkback_discard<F>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    id: u64,
    flag: u8,
    sector: u64,
    nr_sectors: u64,
    fail_io: bool,
) -> Outcome<F> {
    let mut out = Outcome::new(id, BLKIF_OP_DISCARD, Kind::Discard, BLKIF_RSP_ERROR);
    if let Some(st) = offer_status(cfg.discard) {
        out.status = st;
        return out;
    }
    if cfg.read_only {
        return out;
    }
    let end = match sector.checked_add(nr_sectors) {
        Some(end) if end <= disk.len() / 512 => end,
        _ => return out,
    };
    let mask = u64::from(cfg.sector_size / 512 - 1);
    if (sector | nr_sectors) & mask != 0 || fail_io {
        return out;
    }
    // Discarded blocks read back as zeroes here (a loop device over a file
    // punches holes); BLKIF_DISCARD_SECURE is ignored unless discard-secure.
    out.secure = cfg.discard_secure && flag & BLKIF_DISCARD_SECURE != 0;
    disk.zero(sector * 512, (end - sector) * 512);
    out.status = BLKIF_RSP_OKAY;
    out
}

// ----- qdisk -----------------------------------------------------------------

fn qdisk<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    req: Request,
    fail_io: bool,
) -> Outcome<G::Frame> {
    let unit = cfg.request_sector_bytes();
    if req.is_indirect() {
        // QEMU knows no BLKIF_OP_INDIRECT: an unknown operation, echoed.
        return Outcome::new(req.id(), BLKIF_OP_INDIRECT, Kind::Unknown, BLKIF_RSP_ERROR);
    }
    let (operation, id, sector, segs) = match req {
        Request::Discard(Discard {
            id,
            sector,
            nr_sectors,
            ..
        }) => return qdisk_discard(cfg, disk, id, sector, nr_sectors, fail_io),
        Request::Unknown { operation, id } => {
            return Outcome::new(id, operation, Kind::Unknown, BLKIF_RSP_ERROR)
        }
        Request::Malformed { id, why } => {
            let op = why.operation();
            return Outcome::new(id, op, qdisk_kind(op), BLKIF_RSP_ERROR);
        }
        // Handled above.
        Request::Indirect(ind) => {
            return Outcome::new(ind.id, BLKIF_OP_INDIRECT, Kind::Unknown, BLKIF_RSP_ERROR)
        }
        Request::Direct(d) => (d.operation, d.id, d.sector, d.segments().to_vec()),
    };
    let kind = qdisk_kind(operation);
    let mut out = Outcome::new(id, operation, kind, BLKIF_RSP_ERROR);
    if kind == Kind::Unknown {
        return out;
    }
    let flush_eopnotsupp = kind == Kind::Flush && cfg.flush == Offer::Eopnotsupp;
    if kind == Kind::Flush && segs.is_empty() {
        if !flush_eopnotsupp {
            out.status = BLKIF_RSP_OKAY;
        } else {
            out.status = BLKIF_RSP_EOPNOTSUPP;
        }
        return out;
    }
    if operation != BLKIF_OP_READ && cfg.read_only {
        return out;
    }
    let mut size: u64 = 0;
    for s in &segs {
        if s.first_sect > s.last_sect || u64::from(s.last_sect) * unit >= PAGE_SIZE as u64 {
            return out;
        }
        size += u64::from(s.last_sect - s.first_sect + 1) * unit;
    }
    let fits = sector
        .checked_mul(unit)
        .and_then(|start| start.checked_add(size))
        .is_some_and(|end| end <= disk.len());
    if !fits {
        return out;
    }
    let ss = u64::from(cfg.sector_size);
    if unit != ss && (sector * unit % ss != 0 || size % ss != 0) {
        // The 2024 rule: 512-byte units, aligned to the logical block size.
        return out;
    }
    if flush_eopnotsupp {
        out.status = BLKIF_RSP_EOPNOTSUPP;
        return out;
    }
    if fail_io {
        return out;
    }
    let how = if operation == BLKIF_OP_READ {
        Use::ToGuest
    } else {
        Use::FromGuest
    };
    let rw = Rw {
        op: operation,
        id,
        sector,
        segs,
    };
    if let Ok(frames) = move_data(disk, grants, &rw, how, unit) {
        out.frames = frames;
        out.status = BLKIF_RSP_OKAY;
    }
    out
}

/// The kind of a direct request to QEMU, which knows no barrier.
fn qdisk_kind(op: u8) -> Kind {
    match op {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_FLUSH_DISKCACHE => kind_of(op),
        _ => Kind::Unknown,
    }
}

fn qdisk_discard<F>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    id: u64,
    sector: u64,
    nr_sectors: u64,
    fail_io: bool,
) -> Outcome<F> {
    let unit = cfg.request_sector_bytes();
    let mut out = Outcome::new(id, BLKIF_OP_DISCARD, Kind::Discard, BLKIF_RSP_ERROR);
    match cfg.discard {
        Offer::Eopnotsupp => {
            out.status = BLKIF_RSP_EOPNOTSUPP;
            return out;
        }
        // Without "unmap", QEMU's block layer ignores discards.
        Offer::No => {
            out.status = BLKIF_RSP_OKAY;
            return out;
        }
        Offer::Yes => {}
    }
    let range = sector
        .checked_add(nr_sectors)
        .filter(|&end| end <= i64::MAX as u64 / unit)
        .map(|end| (sector * unit, end * unit));
    let Some((start, end)) = range else {
        return out;
    };
    if cfg.read_only || end > disk.len() || fail_io {
        return out;
    }
    disk.zero(start, end - start);
    out.status = BLKIF_RSP_OKAY;
    out
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
