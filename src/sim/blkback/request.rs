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
//! Responses echo the request's `id`; the operation is the request's, except
//! that blkback answers an indirect request with its `indirect_op` (Linux's
//! `make_response(.., req_operation, ..)`), and qdisk echoes whatever came.

use std::vec::Vec;

use super::config::{BackendConfig, Offer, Personality};
use super::disk::Disk;
use crate::abi::blkif::{
    BlkifRequestSegment, BLKIF_DISCARD_SECURE, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
};
use crate::blkfront::wire::{decode_segment, Decoded, SEGS_PER_INDIRECT_PAGE};
use crate::hal::PAGE_SIZE;
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
    fn map(&mut self, gref: u32, how: Use) -> Result<Self::Frame>;
    /// Copies bytes out of a frame.
    fn read(&mut self, frame: &Self::Frame, offset: usize, buf: &mut [u8]) -> Result<()>;
    /// Copies bytes into a frame.
    fn write(&mut self, frame: &Self::Frame, offset: usize, data: &[u8]) -> Result<()>;
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
/// [`RequestSlot::decode`](crate::blkfront::wire::RequestSlot::decode)). `fail_io` makes an otherwise valid read, write or
/// discard fail with `BLKIF_RSP_ERROR` (an injected disk error).
pub(crate) fn dispatch<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    req: &Decoded,
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
    segs: Vec<BlkifRequestSegment>,
}

// ----- blkback ---------------------------------------------------------------

fn blkback<G: Grants>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    grants: &mut G,
    req: Decoded,
    fail_io: bool,
) -> Outcome<G::Frame> {
    match req {
        Decoded::Discard {
            flag,
            id,
            sector,
            nr_sectors,
            ..
        } => blkback_discard(cfg, disk, id, flag, sector, nr_sectors, fail_io),
        Decoded::Direct {
            operation,
            id,
            sector,
            nr_segments,
            segments,
            ..
        } => {
            let kind = kind_of(operation);
            if kind == Kind::Unknown {
                // dispatch_other_io.
                return Outcome::new(id, operation, kind, BLKIF_RSP_EOPNOTSUPP);
            }
            let n = usize::from(nr_segments);
            if n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
                return Outcome::new(id, operation, kind, BLKIF_RSP_ERROR);
            }
            let rw = Rw {
                op: operation,
                id,
                sector,
                segs: segments[..n].to_vec(),
            };
            blkback_rw(cfg, disk, grants, rw, false, fail_io)
        }
        Decoded::Indirect {
            indirect_op,
            nr_segments,
            id,
            sector,
            indirect_grefs,
            ..
        } => {
            let Some(max) = cfg.max_indirect_segments else {
                return Outcome::new(id, BLKIF_OP_INDIRECT, Kind::Unknown, BLKIF_RSP_EOPNOTSUPP);
            };
            let kind = kind_of(indirect_op);
            let mut out = Outcome::new(id, indirect_op, kind, BLKIF_RSP_ERROR);
            out.indirect = true;
            if indirect_op != BLKIF_OP_READ && indirect_op != BLKIF_OP_WRITE {
                return out;
            }
            let n = usize::from(nr_segments);
            if n == 0 || n > max as usize {
                return out;
            }
            let Some(segs) = parse_indirect(grants, n, &indirect_grefs) else {
                return out;
            };
            let rw = Rw {
                op: indirect_op,
                id,
                sector,
                segs,
            };
            blkback_rw(cfg, disk, grants, rw, true, fail_io)
        }
    }
}

/// Maps the indirect pages (read-only, released at the end as Linux does)
/// and copies out `n` segment descriptors.
fn parse_indirect<G: Grants>(
    grants: &mut G,
    n: usize,
    grefs: &[u32],
) -> Option<Vec<BlkifRequestSegment>> {
    let pages = n.div_ceil(SEGS_PER_INDIRECT_PAGE);
    let mut segs = Vec::with_capacity(n);
    let mut page = [0u8; PAGE_SIZE];
    for &gref in grefs.get(..pages)? {
        let frame = grants.map(gref, Use::Indirect).ok()?;
        grants.read(&frame, 0, &mut page).ok()?;
        for raw in page.chunks_exact(8) {
            if segs.len() == n {
                break;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(raw);
            segs.push(decode_segment(&b));
        }
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
    req: Decoded,
    fail_io: bool,
) -> Outcome<G::Frame> {
    let unit = u64::from(cfg.sector_size);
    let (operation, id, sector, nr_segments, segments) = match req {
        Decoded::Discard {
            id,
            sector,
            nr_sectors,
            ..
        } => return qdisk_discard(cfg, disk, id, sector, nr_sectors, fail_io),
        Decoded::Indirect { id, .. } => {
            return Outcome::new(id, BLKIF_OP_INDIRECT, Kind::Unknown, BLKIF_RSP_ERROR)
        }
        Decoded::Direct {
            operation,
            id,
            sector,
            nr_segments,
            segments,
            ..
        } => (operation, id, sector, nr_segments, segments),
    };
    let kind = match operation {
        BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_FLUSH_DISKCACHE => kind_of(operation),
        _ => Kind::Unknown,
    };
    let mut out = Outcome::new(id, operation, kind, BLKIF_RSP_ERROR);
    if kind == Kind::Unknown {
        return out;
    }
    let flush_eopnotsupp = kind == Kind::Flush && cfg.flush == Offer::Eopnotsupp;
    if kind == Kind::Flush && nr_segments == 0 {
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
    let n = usize::from(nr_segments);
    if n > BLKIF_MAX_SEGMENTS_PER_REQUEST {
        return out;
    }
    let segs = segments[..n].to_vec();
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

fn qdisk_discard<F>(
    cfg: &BackendConfig,
    disk: &mut Disk,
    id: u64,
    sector: u64,
    nr_sectors: u64,
    fail_io: bool,
) -> Outcome<F> {
    let unit = u64::from(cfg.sector_size);
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
