//! `hold [secs=<s>] [timeout=<s>] [io-timeout=<s>]`: keeps writing until
//! the toolstack asks the guest to go (`xl shutdown`, `xl reboot`), then
//! goes the way Xen's guests do: acknowledges the request, stops
//! submitting, lets what is in flight finish, flushes, checks what it
//! wrote, closes every disk (the backends see Closed), and shuts down
//! with the reason asked for.
//!
//! It starts like `info` (the report and `xenblk-disk` line of every disk,
//! see [`super::info`]) and watches `control/shutdown`
//! ([`xenblk::control::Control`]). Then, on every writable disk at once,
//! passes over the first [`REGION_BYTES`] (or the whole disk, if smaller)
//! in [`CHUNK_BYTES`] writes, [`DEPTH`] in flight per disk, each chunk
//! holding `verify`'s pattern with the pass as its generation; the guest
//! keeps, per chunk, the pass of its last completed write, so it knows
//! what the disk holds at any moment. Without a request, it ends after `secs=` seconds
//! (default 120) as if asked to power off.
//!
//! A disk whose backend goes away meanwhile (`xl block-detach`: seen by
//! `BlockFront::poll`, its writes in flight fail with `Aborted` at once) is
//! written no more: `xenblk-hold vdev=<n>: the backend went away ...` and
//! at the end `xenblk-check <vdev>/hold-detached` (nothing left in flight,
//! no other error, the device disconnected).
//!
//! When it goes, per disk: `xenblk-check <vdev>/hold-drain` (every write
//! in flight completed), `<vdev>/hold-flush`, `<vdev>/hold-readback` (the
//! region read back equals what the completed writes left), and the line
//! `xenblk-verify vdev=<n> sector=0 count=<c> cksum=<k> bytes=<b>` of the
//! region (512-byte units), which dom0 compares with the image as in
//! `verify`; then `xenblk-control request=<poweroff|reboot|none>
//! acknowledged=<yes|no> writes=<n> passes=<n>`, the closing line, and the
//! shutdown.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use xenblk::blkfront::{BackendEvent, DeviceState, IoError};
use xenblk::control::{Control, ControlRequest};
use xenblk::hal::Hal;
use xenblk::pvh::Xen;

use super::info::{self, Disk, Platform};
use super::verify;
use super::{Context, Outcome};
use crate::cksum::Cksum;

/// The stretch of each disk written over and over.
pub const REGION_BYTES: u64 = 4 << 20;
/// Bytes per write.
pub const CHUNK_BYTES: usize = 64 << 10;
/// Writes in flight per disk.
pub const DEPTH: usize = 4;
/// How often the control key is looked at, in nanoseconds.
const CONTROL_EVERY_NS: u64 = 50_000_000;
/// Longest single block in `SCHEDOP_poll`.
const WAIT_SLICE_NS: u64 = 10_000_000;
const DEFAULT_SECS: u64 = 120;
const MAX_SECS: u64 = 3600;

/// The pattern of `chunk` at `pass` on disk `vdev`: `verify`'s, each
/// 512-byte sector naming itself (disk, sector, pass as its generation).
fn pattern(vdev: u32, chunk: u64, pass: u32, out: &mut [u8]) {
    verify::fill(vdev, chunk * (CHUNK_BYTES as u64 / 512), pass, out);
}

/// One writable disk's job.
struct Writer {
    vdev: u32,
    chunks: u64,
    /// Per chunk: the pass of its last completed write (`None`: never
    /// written by this guest).
    done: Vec<Option<u32>>,
    /// The next chunk to write, and the pass it belongs to.
    next_chunk: u64,
    pass: u32,
    in_flight: usize,
    writes: u64,
    /// Writes that completed with `Aborted` when the backend went away.
    aborted: u64,
    /// The backend went away (`xl block-detach`): no more writes.
    detached: bool,
    failed: Option<IoError>,
    free: Vec<Vec<u8>>,
    /// In flight: (token, chunk, pass).
    pending: Vec<(u64, u64, u32)>,
}

/// Runs `hold`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let cfg = info::config(ctx, &mut outcome);
    let secs = match ctx.command.arg("secs").map(str::parse::<u64>) {
        None => DEFAULT_SECS,
        Some(Ok(s)) if (1..=MAX_SECS).contains(&s) => s,
        Some(_) => {
            outcome.report("args/secs", false, "not 1..=3600 seconds; using 120");
            DEFAULT_SECS
        }
    };
    let Some(platform) = Platform::open(ctx, &mut outcome) else {
        return outcome;
    };
    let mut control = match Control::new(&platform.store) {
        Ok(c) => Some(c),
        Err(e) => {
            outcome.report("control", false, &format!("control/shutdown: {e}"));
            None
        }
    };
    let mut attached = info::attach_all(&platform, cfg, &mut outcome);
    let xen = platform.xen;
    let mut writers: Vec<(usize, Writer)> = Vec::new();
    for (i, a) in attached.iter().enumerate() {
        let Some(d) = &a.disk else { continue };
        if d.info().read_only() {
            crate::out!("xenblk-hold vdev={}: read-only, not written", a.vdev);
            continue;
        }
        let ss = u64::from(d.sector_size());
        let bytes = REGION_BYTES.min(d.sectors() * ss);
        let chunks = bytes / CHUNK_BYTES as u64;
        if chunks == 0 || CHUNK_BYTES as u64 % ss != 0 {
            crate::out!(
                "xenblk-hold vdev={}: too small or odd sectors, not written",
                a.vdev
            );
            continue;
        }
        writers.push((
            i,
            Writer {
                vdev: a.vdev,
                chunks,
                done: vec![None; chunks as usize],
                next_chunk: 0,
                pass: 0,
                in_flight: 0,
                writes: 0,
                aborted: 0,
                detached: false,
                failed: None,
                free: (0..DEPTH).map(|_| vec![0u8; CHUNK_BYTES]).collect(),
                pending: Vec::new(),
            },
        ));
    }
    crate::out!(
        "xenblk-hold: writing {} disk(s) until the toolstack asks (at most {secs} s)",
        writers.len()
    );
    let t0 = xen.now_ns();
    let end = t0.saturating_add(secs * 1_000_000_000);
    let mut next_look = t0;
    let request = loop {
        let now = xen.now_ns();
        if now >= next_look {
            next_look = now.saturating_add(CONTROL_EVERY_NS);
            if let Some(c) = control.as_mut() {
                match c.poll() {
                    Ok(Some(ControlRequest::Unsupported(w))) => {
                        crate::out!(
                            "xenblk-control: request {w:?} not supported, left unacknowledged"
                        );
                    }
                    Ok(Some(r)) => break Some(r),
                    Ok(None) => {}
                    Err(e) => log::warn!("control/shutdown: {e}"),
                }
            }
        }
        if now >= end {
            break None;
        }
        let mut progress = false;
        for (i, w) in writers.iter_mut() {
            let Some(d) = attached[*i].disk.as_mut() else {
                continue;
            };
            progress |= step(w, d, true);
        }
        if !progress {
            if let Some((i, _)) = writers.first() {
                if let Some(d) = attached[*i].disk.as_ref() {
                    let _ = d.wait(now.saturating_add(WAIT_SLICE_NS));
                }
            }
        }
    };
    let word = match &request {
        Some(ControlRequest::Poweroff) => "poweroff",
        Some(ControlRequest::Reboot) => "reboot",
        _ => "none",
    };
    crate::out!("xenblk-control: request={word}: stopping, draining, checking, closing");
    for (i, w) in writers.iter_mut() {
        let Some(d) = attached[*i].disk.as_mut() else {
            continue;
        };
        finish(xen, w, d, cfg.io_timeout_ns, &mut outcome);
    }
    let writes: u64 = writers.iter().map(|(_, w)| w.writes).sum();
    let passes = writers.iter().map(|(_, w)| w.pass).max().unwrap_or(0);
    info::close_all(&platform, attached, &mut outcome);
    drop(control);
    crate::out!(
        "xenblk-control request={word} acknowledged={} writes={writes} passes={passes}",
        if request.is_some() { "yes" } else { "no" }
    );
    outcome.reboot = request == Some(ControlRequest::Reboot);
    outcome
}

/// Submits what fits and harvests completions; returns whether anything
/// happened.
fn step(w: &mut Writer, d: &mut Disk<'_>, submitting: bool) -> bool {
    let mut progress = false;
    let spc = CHUNK_BYTES as u64 / u64::from(d.sector_size());
    while submitting && !w.detached && w.failed.is_none() && w.in_flight < DEPTH {
        let Some(mut buf) = w.free.pop() else { break };
        let chunk = w.next_chunk;
        pattern(w.vdev, chunk, w.pass, &mut buf);
        match d.submit_write(chunk * spc, buf) {
            Ok(t) => {
                w.pending.push((t.as_u64(), chunk, w.pass));
                w.in_flight += 1;
                w.next_chunk += 1;
                if w.next_chunk == w.chunks {
                    w.next_chunk = 0;
                    w.pass += 1;
                }
            }
            Err(rej) => {
                w.free.push(rej.buf);
                w.failed = Some(rej.error);
            }
        }
    }
    d.kick();
    while let Some(c) = d.poll() {
        progress = true;
        w.in_flight = w.in_flight.saturating_sub(1);
        let at = w.pending.iter().position(|p| p.0 == c.token.as_u64());
        let Some(at) = at else { continue };
        let (_, chunk, pass) = w.pending.swap_remove(at);
        match c.result {
            Ok(()) => {
                w.writes += 1;
                // A chunk is never twice in flight (DEPTH < chunks, in
                // order), so the last completion is what the disk holds.
                if let Some(slot) = w.done.get_mut(chunk as usize) {
                    *slot = Some(pass);
                }
            }
            Err(IoError::Aborted) if w.detached || d.state() == DeviceState::Disconnected => {
                w.aborted += 1;
            }
            Err(e) => {
                w.failed.get_or_insert(e);
            }
        }
        w.free.push(c.buf.unwrap_or_else(|| vec![0u8; CHUNK_BYTES]));
    }
    if !w.detached && d.take_backend_event() == Some(BackendEvent::Closed) {
        w.detached = true;
        progress = true;
        crate::out!(
            "xenblk-hold vdev={}: the backend went away (xl block-detach?) after {} write(s); the rest of it is left alone",
            w.vdev, w.writes
        );
    }
    progress
}

/// Drains, flushes, reads the region back and prints its verify line.
fn finish(xen: &Xen, w: &mut Writer, d: &mut Disk<'_>, io_timeout_ns: u64, outcome: &mut Outcome) {
    let vdev = w.vdev;
    if w.detached {
        // In flight when it went: failed at once with Aborted (nothing may
        // be waited for on a disk that is gone).
        outcome.report(
            &format!("{vdev}/hold-detached"),
            w.in_flight == 0 && w.failed.is_none() && d.state() == DeviceState::Disconnected,
            &format!(
                "{} write(s) completed, {} aborted when the backend went, {} in flight, device {:?}, first other error {:?}",
                w.writes, w.aborted, w.in_flight, d.state(), w.failed
            ),
        );
        return;
    }
    let t0 = xen.now_ns();
    while w.in_flight > 0 && xen.now_ns().saturating_sub(t0) < io_timeout_ns {
        if !step(w, d, false) {
            let _ = d.wait(xen.now_ns().saturating_add(WAIT_SLICE_NS));
        }
    }
    outcome.report(
        &format!("{vdev}/hold-drain"),
        w.in_flight == 0 && w.failed.is_none(),
        &format!(
            "{} write(s) completed, {} still in flight, first error {:?}",
            w.writes, w.in_flight, w.failed
        ),
    );
    let r = d.flush();
    outcome.report(&format!("{vdev}/hold-flush"), r.is_ok(), &format!("{r:?}"));
    let ss = u64::from(d.sector_size());
    let spc = CHUNK_BYTES as u64 / ss;
    let mut sum = Cksum::new();
    let mut want = vec![0u8; CHUNK_BYTES];
    let mut got = vec![0u8; CHUNK_BYTES];
    let mut bad = None;
    let mut unknown = 0u64;
    for chunk in 0..w.chunks {
        if let Err(e) = d.read(chunk * spc, &mut got) {
            bad = Some(format!("chunk {chunk}: read: {e}"));
            break;
        }
        match w.done[chunk as usize] {
            Some(pass) => {
                pattern(vdev, chunk, pass, &mut want);
                if want != got && bad.is_none() {
                    bad = Some(format!("chunk {chunk} differs from pass {pass}"));
                }
            }
            // Never completed: whatever the disk had stays (the image's).
            None => unknown += 1,
        }
        sum.update(&got);
    }
    outcome.report(
        &format!("{vdev}/hold-readback"),
        bad.is_none(),
        &bad.unwrap_or_else(|| {
            format!(
                "{} chunk(s) equal to their last completed write, {unknown} never written",
                w.chunks - unknown
            )
        }),
    );
    crate::out!(
        "xenblk-verify vdev={vdev} sector=0 count={} cksum={} bytes={}",
        w.chunks * CHUNK_BYTES as u64 / 512,
        sum.finish(),
        sum.len()
    );
}
