//! `verify [timeout=<s>] [io-timeout=<s>]`: writes patterns to every
//! connected writable disk, reads them back, and leaves them there for dom0
//! to check; on read-only disks checks that writes are refused and reads
//! work.
//!
//! It starts like `info` (the same report and `xenblk-disk` line per disk,
//! see [`super::info`]). Then, per writable disk (offsets in logical
//! sectors, sizes for 512-byte sectors; every region is also clipped to the
//! disk and skipped, saying so, when it does not fit):
//!
//! 1. requests the driver must refuse: past the end, over the end,
//!    misaligned (half a sector; on a disk of sectors larger than 512 bytes
//!    also a 512-byte write and a read of a sector plus 512 bytes);
//! 2. write, read back, compare: the first sector, 3 sectors across a page
//!    boundary, an aligned page, a page plus a sector at an odd offset,
//!    12 pages plus 5 sectors (more than the 11 segments of a direct
//!    request), 2 MiB plus 3 sectors (more than an indirect request of 256
//!    segments carries), a 128 KiB region to discard, and 2 pages plus 3
//!    sectors ending just before the last sector, and the last sector;
//! 3. flush;
//! 4. discard the 128 KiB region where discard is in use, and read it back:
//!    the read must succeed; whether it reads as zeroes is logged, not
//!    required (blkif.h makes no promise about discarded content);
//! 5. the non-blocking API: 32 writes of 8..34 sectors, back to back,
//!    submitted, one kick, polled to completion; then 32 reads of them the
//!    same way, compared;
//! 6. every region is read again, in reads of at most 256 KiB, and
//!    compared (the discarded one with what step 4 read);
//! 7. per region, `xenblk-verify vdev=.. sector=.. count=.. cksum=..
//!    bytes=..` (512-byte sectors, POSIX `cksum` of the content), which dom0
//!    compares with `dd | cksum` of the image.
//!
//! A pattern sector starts with `xenblk-verify vdev=<n> sector=<s> gen=<g>`
//! (s in 512-byte units) followed by pseudo-random bytes seeded by the same
//! three numbers, so that a misplaced sector is recognisable in a hex dump.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xenblk::blkfront::{Completion, IoError};
use xenblk::hal::{Hal, PAGE_SIZE};
use xenblk::pvh::Xen;

use super::info::{self, Disk, Platform};
use super::{Context, Outcome};
use crate::cksum::Cksum;

/// Requests in each non-blocking batch.
const BATCH: usize = 32;
/// Longest read of the final reread (step 6).
const REREAD_BYTES: usize = 256 << 10;

/// A stretch of the disk, in logical sectors.
#[derive(Clone, Copy, Debug)]
struct Region {
    name: &'static str,
    sector: u64,
    count: u64,
}

impl Region {
    fn end(&self) -> u64 {
        self.sector + self.count
    }
}

/// A region and the content it must have.
struct Kept {
    region: Region,
    data: Vec<u8>,
}

/// Runs `verify`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let cfg = info::config(ctx, &mut outcome);
    let Some(platform) = Platform::open(ctx, &mut outcome) else {
        return outcome;
    };
    let mut attached = info::attach_all(&platform, cfg, &mut outcome);
    for a in &mut attached {
        let Some(disk) = a.disk.as_mut() else {
            continue;
        };
        let mut dev = Dev {
            xen: platform.xen,
            vdev: a.vdev,
            io_timeout_ns: cfg.io_timeout_ns,
            outcome: &mut outcome,
        };
        if disk.info().read_only() {
            dev.read_only(disk);
        } else {
            dev.writable(disk);
        }
    }
    info::close_all(&platform, attached, &mut outcome);
    outcome
}

/// The checks of one disk.
struct Dev<'o> {
    xen: &'static Xen,
    vdev: u32,
    io_timeout_ns: u64,
    outcome: &'o mut Outcome,
}

impl Dev<'_> {
    fn check(&mut self, what: &str, ok: bool, detail: &str) -> bool {
        self.outcome
            .report(&format!("{}/{what}", self.vdev), ok, detail);
        ok
    }

    fn ms_since(&self, t0: u64) -> u64 {
        self.xen.now_ns().saturating_sub(t0) / 1_000_000
    }

    fn read_only(&mut self, d: &mut Disk<'_>) {
        let ss = d.sector_size() as usize;
        let n = d.sectors();
        let r = d.write(0, &vec![0u8; ss]);
        self.check(
            "ro-write-refused",
            r == Err(IoError::ReadOnly),
            &format!("write to a read-only disk: {r:?}"),
        );
        let r = d.discard(0, n.min(8), false);
        self.check(
            "ro-discard-refused",
            matches!(r, Err(IoError::ReadOnly) | Err(IoError::Unsupported(_))),
            &format!("discard on a read-only disk: {r:?}"),
        );
        let spans = [(0, n.min(1)), (n / 2, n.min(16)), (n.saturating_sub(1), 1)];
        for (i, (sector, count)) in spans.into_iter().enumerate() {
            if count == 0 || sector + count > n {
                continue;
            }
            let mut buf = vec![0u8; count as usize * ss];
            let r = d.read(sector, &mut buf);
            let detail = match r {
                Ok(()) => format!(
                    "sector={} count={} cksum={}",
                    sector * ss as u64 / 512,
                    buf.len() / 512,
                    crate::cksum::cksum(&buf)
                ),
                Err(e) => format!("sector={sector}: {e}"),
            };
            self.check(&format!("ro-read-{i}"), r.is_ok(), &detail);
        }
    }

    fn writable(&mut self, d: &mut Disk<'_>) {
        let ss = u64::from(d.sector_size());
        let n = d.sectors();
        self.refusals(d, ss, n);
        let (regions, discard, batch) = layout(ss, n);
        // What a disk of any size would get, for saying what was left out.
        let (all, _, _) = layout(ss, u64::MAX / ss);
        for r in all.iter().chain(&batch_pieces(ss, 0)[..1]) {
            let here =
                regions.iter().any(|k| k.name == r.name) || (r.name == "batch" && batch.is_some());
            if !here {
                crate::out!(
                    "xenblk-unikernel: {}: region {} does not fit a disk of {n} sectors: skipped",
                    self.vdev,
                    r.name
                );
            }
        }
        let mut kept = Vec::new();
        for r in regions {
            if let Some(k) = self.write_read(d, r) {
                kept.push(k);
            }
        }
        let t0 = self.xen.now_ns();
        let r = d.flush();
        let ms = self.ms_since(t0);
        match r {
            Err(IoError::Unsupported(f)) => {
                crate::out!("xenblk-unikernel: {}: flush not offered ({f:?})", self.vdev)
            }
            r => {
                self.check("flush", r.is_ok(), &format!("{r:?} in {ms} ms"));
            }
        }
        if let Some(i) = kept.iter().position(|k| Some(k.region.name) == discard) {
            self.discard(d, &mut kept[i]);
        }
        if let Some(area) = batch {
            if let Some(k) = self.batch(d, area) {
                kept.push(k);
            }
        }
        for k in &kept {
            self.reread(d, k);
        }
        for k in &kept {
            let mut c = Cksum::new();
            c.update(&k.data);
            crate::out!(
                "xenblk-verify vdev={} sector={} count={} cksum={} bytes={}",
                self.vdev,
                k.region.sector * ss / 512,
                k.region.count * ss / 512,
                c.finish(),
                c.len()
            );
        }
    }

    fn refusals(&mut self, d: &mut Disk<'_>, ss: u64, n: u64) {
        let one = vec![0u8; ss as usize];
        let r = d.write(n, &one);
        self.check(
            "refuse-past-end",
            r == Err(IoError::OutOfRange),
            &format!("write at sector {n} of {n}: {r:?}"),
        );
        let mut two = vec![0u8; 2 * ss as usize];
        let r = d.read(n.saturating_sub(1), &mut two);
        self.check(
            "refuse-over-end",
            r == Err(IoError::OutOfRange),
            &format!("2-sector read at the last sector: {r:?}"),
        );
        let r = d.write(0, &one[..ss as usize / 2]);
        self.check(
            "refuse-misaligned",
            r == Err(IoError::Misaligned),
            &format!("write of half a sector: {r:?}"),
        );
        if ss > 512 {
            // What a frontend counting in 512-byte units would send to a disk
            // of larger logical sectors: one 512-byte write, and a read of a
            // sector and 512 bytes.
            let r = d.write(0, &one[..512]);
            self.check(
                "refuse-misaligned-512",
                r == Err(IoError::Misaligned),
                &format!("512-byte write to a disk of {ss}-byte sectors: {r:?}"),
            );
            let mut odd = vec![0u8; ss as usize + 512];
            let r = d.read(0, &mut odd);
            self.check(
                "refuse-misaligned-read",
                r == Err(IoError::Misaligned),
                &format!(
                    "read of {} bytes from a disk of {ss}-byte sectors: {r:?}",
                    odd.len()
                ),
            );
        }
    }

    /// Writes a pattern to `r`, reads it back and compares.
    fn write_read(&mut self, d: &mut Disk<'_>, r: Region) -> Option<Kept> {
        let ss = u64::from(d.sector_size());
        let mut data = vec![0u8; (r.count * ss) as usize];
        fill(self.vdev, r.sector * ss / 512, 1, &mut data);
        let what = format!("rw-{}", r.name);
        let at = format!("sector={} count={} bytes={}", r.sector, r.count, data.len());
        let t0 = self.xen.now_ns();
        if let Err(e) = d.write(r.sector, &data) {
            self.check(&what, false, &format!("{at}: write: {e}"));
            return None;
        }
        let tw = self.ms_since(t0);
        let mut back = vec![0u8; data.len()];
        let t1 = self.xen.now_ns();
        if let Err(e) = d.read(r.sector, &mut back) {
            self.check(&what, false, &format!("{at}: read: {e}"));
            return None;
        }
        let tr = self.ms_since(t1);
        match first_difference(&data, &back) {
            None => {
                self.check(&what, true, &format!("{at} write {tw} ms read {tr} ms"));
                Some(Kept { region: r, data })
            }
            Some(i) => {
                self.check(&what, false, &format!("{at}: differs from byte {i}"));
                None
            }
        }
    }

    /// Discards `k` and reads it back; `k` then holds what the disk has.
    fn discard(&mut self, d: &mut Disk<'_>, k: &mut Kept) {
        let r = k.region;
        if !d.info().negotiated.discard {
            crate::out!(
                "xenblk-unikernel: {}: discard not in use: skipped",
                self.vdev
            );
            return;
        }
        let at = format!("sector={} count={}", r.sector, r.count);
        let res = d.discard(r.sector, r.count, false);
        if !self.check("discard", res.is_ok(), &format!("{at}: {res:?}")) {
            return;
        }
        let mut back = vec![0u8; k.data.len()];
        if let Err(e) = d.read(r.sector, &mut back) {
            self.check("discard-read", false, &format!("{at}: {e}"));
            return;
        }
        let ss = d.sector_size() as usize;
        let zero = back
            .chunks(ss)
            .filter(|s| s.iter().all(|&b| b == 0))
            .count();
        let kept = back
            .chunks(ss)
            .zip(k.data.chunks(ss))
            .filter(|(a, b)| a == b)
            .count();
        let total = back.len() / ss;
        let what = if zero == total {
            String::from("reads as zeroes")
        } else if kept == total {
            String::from("pattern still there (backend did not zero it)")
        } else {
            format!("{zero} sector(s) zero, {kept} unchanged, of {total}")
        };
        self.check("discard-read", true, &format!("{at}: {what}"));
        k.data = back;
    }

    /// 32 writes, one kick, polled to completion; then 32 reads of them.
    fn batch(&mut self, d: &mut Disk<'_>, area: Region) -> Option<Kept> {
        let ss = u64::from(d.sector_size());
        let pieces = batch_pieces(ss, area.sector);
        let mut data = vec![0u8; (area.count * ss) as usize];
        fill(self.vdev, area.sector * ss / 512, 2, &mut data);
        let slice = |p: &Region| {
            let off = ((p.sector - area.sector) * ss) as usize;
            off..off + (p.count * ss) as usize
        };
        let bufs = pieces.iter().map(|p| data[slice(p)].to_vec()).collect();
        let (ok, detail, _) = self.run_batch(d, &pieces, bufs, true);
        if !self.check("batch-write", ok, &detail) {
            return None;
        }
        let bufs = pieces
            .iter()
            .map(|p| vec![0u8; (p.count * ss) as usize])
            .collect();
        let (ok, detail, back) = self.run_batch(d, &pieces, bufs, false);
        let mut bad = None;
        for (i, b) in back.iter().enumerate() {
            if b.as_deref() != Some(&data[slice(&pieces[i])]) {
                bad.get_or_insert(i);
            }
        }
        let ok = ok && bad.is_none();
        let detail = match bad {
            Some(i) if detail.is_empty() || ok => format!("request {i} read back wrong data"),
            Some(i) => format!("{detail}; request {i} read back wrong data"),
            None => detail,
        };
        self.check("batch-read", ok, &detail)
            .then_some(Kept { region: area, data })
    }

    /// Submits one request per piece, kicks once, polls until all complete
    /// (bounded by the I/O timeout). Returns success, a detail, and the
    /// buffers back in piece order.
    fn run_batch(
        &mut self,
        d: &mut Disk<'_>,
        pieces: &[Region],
        bufs: Vec<Vec<u8>>,
        write: bool,
    ) -> (bool, String, Vec<Option<Vec<u8>>>) {
        let t0 = self.xen.now_ns();
        let mut tokens = Vec::new();
        let mut rejected = None;
        for (p, buf) in pieces.iter().zip(bufs) {
            let r = if write {
                d.submit_write(p.sector, buf)
            } else {
                d.submit_read(p.sector, buf)
            };
            match r {
                Ok(t) => tokens.push(t),
                Err(rej) => {
                    rejected.get_or_insert(rej.error);
                    break;
                }
            }
        }
        let in_flight = d.in_flight();
        d.kick();
        let deadline = t0.saturating_add(self.io_timeout_ns);
        let mut back: Vec<Option<Vec<u8>>> = pieces.iter().map(|_| None).collect();
        let mut done = 0;
        let mut failed: Option<(usize, IoError)> = None;
        let mut polls = 0u64;
        while done < tokens.len() {
            match d.poll() {
                Some(c) => {
                    let Completion { token, result, buf } = c;
                    if let Some(i) = tokens.iter().position(|&t| t == token) {
                        done += 1;
                        match result {
                            Ok(()) => back[i] = buf,
                            Err(e) => {
                                failed.get_or_insert((i, e));
                            }
                        }
                    }
                }
                None => {
                    polls += 1;
                    let now = self.xen.now_ns();
                    if now >= deadline {
                        break;
                    }
                    let slice = now.saturating_add(1_000_000).min(deadline);
                    let _ = self.xen.evtchn_wait(&[], Some(slice));
                }
            }
        }
        let ms = self.ms_since(t0);
        let op = if write { "writes" } else { "reads" };
        let mut detail = format!(
            "{} {op} submitted ({in_flight} ring slots), 1 kick, {done} completed in {ms} ms \
             ({polls} empty polls)",
            tokens.len()
        );
        if let Some(e) = rejected {
            detail.push_str(&format!("; submit refused: {e}"));
        }
        if let Some((i, e)) = failed {
            detail.push_str(&format!("; request {i} failed: {e}"));
        }
        if done < tokens.len() {
            detail.push_str("; timed out");
        }
        let ok = rejected.is_none() && failed.is_none() && done == pieces.len();
        (ok, detail, back)
    }

    /// Step 6, in reads of at most [`REREAD_BYTES`] (step 2 already sent
    /// each region whole), so that a small guest has room for it.
    fn reread(&mut self, d: &mut Disk<'_>, k: &Kept) {
        let r = k.region;
        let what = format!("reread-{}", r.name);
        let at = format!("sector={} count={}", r.sector, r.count);
        let ss = d.sector_size() as usize;
        let step = (REREAD_BYTES / ss).max(1) * ss;
        let mut back = vec![0u8; step.min(k.data.len())];
        for (i, want) in k.data.chunks(step).enumerate() {
            let got = &mut back[..want.len()];
            let sector = r.sector + (i * step / ss) as u64;
            if let Err(e) = d.read(sector, got) {
                self.check(&what, false, &format!("{at}: at sector {sector}: {e}"));
                return;
            }
            if let Some(j) = first_difference(want, got) {
                let byte = i * step + j;
                self.check(&what, false, &format!("{at}: differs from byte {byte}"));
                return;
            }
        }
        self.check(&what, true, &at);
    }
}

/// The regions of step 2 for a disk of `n` logical sectors of `ss` bytes,
/// the name of the one to discard, and the batch area. Regions that do not
/// fit, or would overlap the tail, are left out.
fn layout(ss: u64, n: u64) -> (Vec<Region>, Option<&'static str>, Option<Region>) {
    let spp = (PAGE_SIZE as u64 / ss).max(1);
    let kib = |k: u64| (k * 1024).div_ceil(ss);
    let mib = kib(1024);
    let region = |name, sector, count| Region {
        name,
        sector,
        count,
    };
    let mut fixed = vec![
        region("first-sector", 0, 1),
        region("page-straddle", kib(64) + spp.max(2) - 1, 3),
        region("page", kib(128), spp),
        region("odd-page", kib(192) + 1, spp + 1),
        region("segs-12", kib(256) + 3, 12 * spp + 5),
        region("big-2m", mib + 1, 2 * mib + 3),
        region("discard", 4 * mib, kib(128)),
    ];
    let batch_start = 5 * mib;
    let batch_count: u64 = batch_pieces(ss, batch_start).iter().map(|p| p.count).sum();
    let tail_count = 2 * spp + 3;
    // The tail regions need the disk to extend past everything else.
    let tail = n.checked_sub(1 + tail_count).map(|s| {
        [
            region("before-last", s, tail_count),
            region("last-sector", n - 1, 1),
        ]
    });
    let limit = tail.map_or(n, |t| t[0].sector);
    fixed.retain(|r| r.end() <= limit);
    let batch =
        (batch_start + batch_count <= limit).then(|| region("batch", batch_start, batch_count));
    let discard = fixed
        .iter()
        .any(|r| r.name == "discard")
        .then_some("discard");
    if let Some(t) = tail {
        fixed.extend(t);
    }
    (fixed, discard, batch)
}

/// The 32 requests of a batch: 8..34 sectors (for 512-byte sectors), back
/// to back from `start`.
fn batch_pieces(ss: u64, start: u64) -> Vec<Region> {
    let spp = (PAGE_SIZE as u64 / ss).max(1);
    let mut s = start;
    (0..BATCH as u64)
        .map(|k| {
            let count = (k % 4 + 1) * spp + k % 3;
            let r = Region {
                name: "batch",
                sector: s,
                count,
            };
            s += count;
            r
        })
        .collect()
}

/// Fills `buf` with the pattern of generation `gen`, its first byte being
/// 512-byte sector `first512` of disk `vdev`.
pub(super) fn fill(vdev: u32, first512: u64, gen: u32, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_mut(512).enumerate() {
        let s = first512 + i as u64;
        let mut x = mix((u64::from(vdev) << 40) ^ (s << 8) ^ u64::from(gen));
        for w in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            w.copy_from_slice(&bytes[..w.len()]);
        }
        let head = format!("xenblk-verify vdev={vdev} sector={s} gen={gen}\n");
        let n = head.len().min(chunk.len());
        chunk[..n].copy_from_slice(&head.as_bytes()[..n]);
    }
}

/// splitmix64's finaliser: spreads a seed over all bits (never 0 for the
/// xorshift that follows unless the seed maps to 0).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}
