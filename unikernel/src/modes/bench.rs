//! `bench [vdev=<n>|all] [secs=<s>] [ramp=<s>] [ops=<n>] [wait=event|spin]
//! [timeout=<s>] [io-timeout=<s>] [serve]`: measures read throughput on real
//! Xen.
//!
//! It starts like `info` (the report and `xenblk-disk` line of every disk,
//! see [`super::info`]), then runs three jobs on the first connected disk
//! (`vdev=<n>` picks another, `vdev=all` runs them on every connected disk,
//! in `device/vbd` order):
//!
//! | job | what | queue depth |
//! |---|---|---|
//! | `4k-qd1` | 4 KiB reads at random 4 KiB-aligned offsets | 1 |
//! | `4k-qd32` | the same | 32 |
//! | `1m-seq` | 1 MiB reads, one after the other from sector 0, wrapping | 1 |
//!
//! These are the jobs the Linux anchor guest runs with `fio`
//! (`tests/lab/bench/`): `--rw=randread --bs=4k --iodepth=1|32` and
//! `--rw=read --bs=1m`, `--ioengine=libaio --direct=1`, for the same time.
//!
//! Each job first runs for `ramp=` seconds (default 1) without counting,
//! like fio's `--ramp_time`, then counts for `secs=` seconds (default 8) or
//! `ops=` completed requests (default unbounded), whichever comes first;
//! then it stops submitting and drains. Time is the platform clock
//! (`Hal::now_ns`, Xen system time), from the end of the ramp to the last
//! counted completion. The queue is kept full: every completion is answered
//! by a new submission before the next kick, so one kick (at most one
//! notification per queue, `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`) carries
//! every request that could be sent.
//!
//! Waiting: with `wait=event` (the default, like Linux's interrupt-driven
//! blkfront) a poll that found nothing blocks in `SCHEDOP_poll` on the
//! disk's event channels (`BlockFront::wait`), so that dom0's backend gets
//! the CPU; `wait=spin` polls without blocking.
//!
//! With `serve`, the jobs are not run in a row: dom0 hands them out one at a
//! time through xenstore (see [`serve`]), so that the in-guest benchmark
//! (`tests/lab/bench/`) can alternate this guest with the Linux anchor job
//! by job while both stay booted.
//!
//! Per job and disk one line, the machine line of this mode:
//! `xenblk-bench vdev=<n> backend=<phy|qdisk|..> job=<name> iops=<n>
//! mbps=<n> ops=<n> ns=<n> qd=<n> bs=<n> wait=<event|spin> waits=<n>
//! slept-out=<n> max-gap-us=<n>` (blocking waits, those that ran to the end
//! of their slice without an event, the longest time without a completion;
//! served jobs
//! begin with `seq=<n>`; mbps = 10^6 bytes per second, with two decimals),
//! and one check per job
//! (`xenblk-check <vdev>/bench-<job>`: every request completed without an
//! error and at least one was counted; a job gives up when nothing
//! completes for `io-timeout=` seconds).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xenblk::blkfront::{BackendKind, IoError};
use xenblk::hal::Hal;
use xenblk::pvh::Xen;
use xenblk::xenstore::XsError;

use super::info::{self, Disk, Platform};
use super::{Context, Outcome};
use crate::benchcmd::{self, Cmd};

/// One measured job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Job {
    name: &'static str,
    /// Bytes per request.
    bs: usize,
    /// Requests kept in flight.
    qd: usize,
    /// Random offsets (else sequential).
    random: bool,
}

/// The jobs, in the order they run.
const JOBS: [Job; 3] = [
    Job {
        name: "4k-qd1",
        bs: 4096,
        qd: 1,
        random: true,
    },
    Job {
        name: "4k-qd32",
        bs: 4096,
        qd: 32,
        random: true,
    },
    Job {
        name: "1m-seq",
        bs: 1 << 20,
        qd: 1,
        random: false,
    },
];

/// Defaults and bounds of the options.
const DEFAULT_SECS: u64 = 8;
const DEFAULT_RAMP_SECS: u64 = 1;
const MAX_SECS: u64 = 600;
/// Longest single block in `SCHEDOP_poll` before the loop looks again.
const WAIT_SLICE_NS: u64 = 10_000_000;

/// How the loop waits when a poll finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Event,
    Spin,
}

impl Wait {
    fn token(self) -> &'static str {
        match self {
            Wait::Event => "event",
            Wait::Spin => "spin",
        }
    }
}

/// The options of this mode.
#[derive(Clone, Copy, Debug)]
struct Opts {
    measure_ns: u64,
    ramp_ns: u64,
    max_ops: u64,
    wait: Wait,
    /// Longest time without any completion before a job gives up.
    io_timeout_ns: u64,
}

/// Which disks to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    First,
    All,
    Vdev(u32),
}

/// Runs `bench`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let cfg = info::config(ctx, &mut outcome);
    let (opts, which) = options(ctx, cfg.io_timeout_ns, &mut outcome);
    let Some(platform) = Platform::open(ctx, &mut outcome) else {
        return outcome;
    };
    let mut attached = info::attach_all(&platform, cfg, &mut outcome);
    if let Which::Vdev(v) = which {
        if !attached.iter().any(|a| a.vdev == v && a.disk.is_some()) {
            outcome.report(
                "bench",
                false,
                &format!("vdev={v} is not a connected disk of this domain"),
            );
        }
    }
    if ctx.command.args.iter().any(|a| a == "serve") {
        serve(&platform, &mut attached, opts, &mut outcome);
        info::close_all(&platform, attached, &mut outcome);
        return outcome;
    }
    let mut ran = 0;
    for a in &mut attached {
        let Some(disk) = a.disk.as_mut() else {
            continue;
        };
        let chosen = match which {
            Which::First => ran == 0,
            Which::All => true,
            Which::Vdev(v) => v == a.vdev,
        };
        if !chosen {
            continue;
        }
        ran += 1;
        announce(a.vdev, disk, opts);
        for job in JOBS {
            let r = run_job(platform.xen, disk, job, opts);
            report(a.vdev, kind(disk), job, opts, r, None, &mut outcome);
        }
    }
    if ran == 0 && which != Which::All && attached.iter().all(|a| a.disk.is_none()) {
        outcome.report("bench", false, "no connected disk to measure");
    }
    info::close_all(&platform, attached, &mut outcome);
    outcome
}

/// Parses `secs=`, `ramp=`, `ops=`, `wait=` and `vdev=`; a bad value is a
/// failed check (`xenblk-check args/<key>`) and the default is used.
fn options(ctx: &Context<'_>, io_timeout_ns: u64, outcome: &mut Outcome) -> (Opts, Which) {
    let mut bad = |key: &str, v: &str, why: &str| {
        outcome.report(
            &format!("args/{key}"),
            false,
            &format!("{key}={v:?}: {why}; using the default"),
        )
    };
    let mut secs = |key: &str, default: u64, min: u64| match ctx.command.arg(key) {
        None => default,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if (min..=MAX_SECS).contains(&s) => s,
            _ => {
                bad(key, v, &format!("not {min}..={MAX_SECS} seconds"));
                default
            }
        },
    };
    let measure = secs("secs", DEFAULT_SECS, 1);
    let ramp = secs("ramp", DEFAULT_RAMP_SECS, 0);
    let mut bad = |key: &str, v: &str, why: &str| {
        outcome.report(
            &format!("args/{key}"),
            false,
            &format!("{key}={v:?}: {why}; using the default"),
        )
    };
    let max_ops = match ctx.command.arg("ops") {
        None => u64::MAX,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => {
                bad("ops", v, "not a positive count");
                u64::MAX
            }
        },
    };
    let wait = match ctx.command.arg("wait") {
        None | Some("event") => Wait::Event,
        Some("spin") => Wait::Spin,
        Some(v) => {
            bad("wait", v, "not event or spin");
            Wait::Event
        }
    };
    let which = match ctx.command.arg("vdev") {
        None => Which::First,
        Some("all") => Which::All,
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Which::Vdev(n),
            Err(_) => {
                bad("vdev", v, "not a virtual-device number or all");
                Which::First
            }
        },
    };
    let opts = Opts {
        measure_ns: measure * 1_000_000_000,
        ramp_ns: ramp * 1_000_000_000,
        max_ops,
        wait,
        io_timeout_ns,
    };
    (opts, which)
}

/// The backend's kind as a token (`phy` for blkback, `qdisk` for QEMU).
fn kind(d: &Disk<'_>) -> &'static str {
    match d.info().kind {
        BackendKind::Blkback => "phy",
        BackendKind::Qdisk => "qdisk",
        _ => "other",
    }
}

/// Prints the line that says what a disk negotiated and how it is measured.
fn announce(vdev: u32, disk: &Disk<'_>, opts: Opts) {
    let n = &disk.info().negotiated;
    crate::out!(
        "xenblk-unikernel: bench vdev={} backend={} ring-order={} queues={} indirect={} \
         persistent={} ports={:?} wait={} secs={} ramp={}",
        vdev,
        kind(disk),
        n.ring_page_order,
        n.queues,
        n.indirect_segments,
        u8::from(n.persistent),
        disk.ports().iter().map(|p| p.0).collect::<Vec<_>>(),
        opts.wait.token(),
        opts.measure_ns / 1_000_000_000,
        opts.ramp_ns / 1_000_000_000,
    );
}

/// Where dom0 puts the next job (`serve`), relative to the domain's home.
const CMD_KEY: &str = "data/bench-cmd";
/// Where the guest says it is ready, and answers.
const READY_KEY: &str = "data/bench-ready";
const RESULT_KEY: &str = "data/bench-result";
const DONE_KEY: &str = "data/bench-done";
/// The token of the watch on [`CMD_KEY`].
const WATCH_TOKEN: &str = "bench-cmd";
/// How long `serve` waits for a first or next command before it gives up.
const SERVE_IDLE_NS: u64 = 900 * 1_000_000_000;
/// Longest single wait for the watch before the key is read again.
const SERVE_SLICE_NS: u64 = 1_000_000_000;

fn job_named(name: &str) -> Option<Job> {
    JOBS.into_iter().find(|j| j.name == name)
}

/// `bench serve`: jobs one at a time, as dom0 hands them out, so that a
/// harness can interleave this guest's jobs with another guest's, job by
/// job, while both stay booted (tests/lab/bench/serve.sh).
///
/// The guest watches `data/bench-cmd` in its own xenstore home, writes
/// `data/bench-ready` = `1`, and then for every command with a sequence
/// number above the last one it saw: runs the job, prints its
/// `xenblk-bench ... seq=<n>` line, writes the same fields to
/// `data/bench-result` and then `<n>` to `data/bench-done` (dom0 waits on
/// the latter). A command it cannot run is answered with `error=<why>` and
/// counted as a failed check. `quit` (or no command for 15 minutes, a
/// failed check) ends it.
fn serve(p: &Platform, attached: &mut [info::Attached<'_>], opts: Opts, outcome: &mut Outcome) {
    for a in attached.iter() {
        if let Some(d) = a.disk.as_ref() {
            announce(a.vdev, d, opts);
        }
    }
    let set_up = {
        let mut s = p.store.lock();
        s.watch(CMD_KEY, WATCH_TOKEN)
            .and_then(|()| s.write(READY_KEY, "1"))
    };
    if let Err(e) = set_up {
        outcome.report("bench/serve", false, &format!("xenstore: {e}"));
        return;
    }
    crate::out!("xenblk-unikernel: bench serving jobs from {CMD_KEY}");
    let mut last_seq = 0u64;
    let mut served = 0u32;
    let mut idle_since = p.xen.now_ns();
    loop {
        let text = match p.store.lock().read_opt(CMD_KEY) {
            Ok(text) => text,
            Err(e) => {
                outcome.report("bench/serve", false, &format!("read of {CMD_KEY}: {e}"));
                break;
            }
        };
        let fresh = text
            .as_deref()
            .and_then(benchcmd::parse)
            .filter(|(seq, _)| *seq > last_seq);
        let Some((seq, cmd)) = fresh else {
            let now = p.xen.now_ns();
            if now.saturating_sub(idle_since) > SERVE_IDLE_NS {
                outcome.report(
                    "bench/serve",
                    false,
                    &format!("no command for {} s", SERVE_IDLE_NS / 1_000_000_000),
                );
                break;
            }
            // A timeout is the normal way round: the key is read again.
            match p
                .store
                .lock()
                .wait_watch_event_for(WATCH_TOKEN, now.saturating_add(SERVE_SLICE_NS))
            {
                Ok(_) | Err(XsError::Timeout) => {}
                Err(e) => {
                    outcome.report("bench/serve", false, &format!("watch: {e}"));
                    break;
                }
            }
            continue;
        };
        last_seq = seq;
        let mut fail = |why: &str| {
            outcome.report(&format!("bench/serve-{seq}"), false, why);
            format!("seq={seq} error={why}")
        };
        let result = match cmd {
            Ok(Cmd::Quit) => {
                crate::out!("xenblk-unikernel: bench served {served} job(s); quit (seq={seq})");
                answer(p, seq, &format!("seq={seq} quit=1"));
                break;
            }
            Ok(Cmd::Run { vdev, job }) => {
                let disk = attached
                    .iter_mut()
                    .find(|a| a.vdev == vdev)
                    .and_then(|a| a.disk.as_mut());
                match (job_named(job), disk) {
                    (None, _) => fail("unknown-job"),
                    (Some(_), None) => fail("no-such-disk"),
                    (Some(job), Some(disk)) => {
                        let m = run_job(p.xen, disk, job, opts);
                        served += 1;
                        report(vdev, kind(disk), job, opts, m, Some(seq), outcome)
                    }
                }
            }
            Err(bad) => fail(bad.token()),
        };
        answer(p, seq, &result);
        idle_since = p.xen.now_ns();
    }
    let _ = p.store.lock().unwatch(CMD_KEY, WATCH_TOKEN);
}

/// Writes `result` to `data/bench-result`, then `seq` to `data/bench-done`.
fn answer(p: &Platform, seq: u64, result: &str) {
    let mut s = p.store.lock();
    if let Err(e) = s
        .write(RESULT_KEY, result)
        .and_then(|()| s.write(DONE_KEY, &format!("{seq}")))
    {
        crate::out!("xenblk-unikernel: bench could not answer seq={seq}: {e}");
    }
}

/// What one job measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Measured {
    /// Requests completed while counting.
    ops: u64,
    /// Nanoseconds from the end of the ramp to the last counted completion.
    ns: u64,
    /// Requests that completed with an error (counted or not).
    errors: u64,
    /// The first error seen (a completion's, or a refused submission's).
    first_error: Option<IoError>,
    /// Whether the job ended because the I/O timeout passed with requests
    /// still in flight.
    timed_out: bool,
    /// Blocking waits (`wait=event`), ramp included, and how many of them
    /// ran to the end of their slice without an event: many of those mean
    /// the backend's notifications are not arriving.
    waits: u64,
    slept_out: u64,
    /// The longest time between two completions (or from the start to the
    /// first), in nanoseconds.
    max_gap_ns: u64,
}

/// Pseudo-random offsets: xorshift64, fixed seed per job so runs repeat.
struct Offsets {
    x: u64,
    next_seq: u64,
    /// Logical sectors per request.
    per_req: u64,
    /// Requests that fit the disk.
    slots: u64,
    random: bool,
}

impl Offsets {
    fn new(job: Job, sector_size: u64, sectors: u64) -> Offsets {
        let per_req = (job.bs as u64 / sector_size).max(1);
        Offsets {
            x: 0x9E37_79B9_7F4A_7C15,
            next_seq: 0,
            per_req,
            slots: (sectors / per_req).max(1),
            random: job.random,
        }
    }

    /// The logical sector of the next request.
    fn next(&mut self) -> u64 {
        let slot = if self.random {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            self.x % self.slots
        } else {
            let s = self.next_seq;
            self.next_seq = (s + 1) % self.slots;
            s
        };
        slot * self.per_req
    }
}

/// Runs one job on `d` (see the module documentation).
fn run_job(xen: &Xen, d: &mut Disk<'_>, job: Job, o: Opts) -> Measured {
    let ss = u64::from(d.sector_size());
    let mut m = Measured::default();
    if job.bs as u64 % ss != 0 || (job.bs as u64 / ss) > d.sectors() {
        m.first_error = Some(IoError::OutOfRange);
        return m;
    }
    let mut offsets = Offsets::new(job, ss, d.sectors());
    let mut free: Vec<Vec<u8>> = (0..job.qd).map(|_| vec![0u8; job.bs]).collect();
    let mut in_flight = 0usize;
    let t0 = xen.now_ns();
    let counting_from = t0.saturating_add(o.ramp_ns);
    let stop_at = counting_from.saturating_add(o.measure_ns);
    // Started when the last completion was seen; bounds a silent backend.
    let mut last_progress = t0;
    let mut last_counted = counting_from;
    let mut submitting = true;
    loop {
        while submitting && in_flight < job.qd {
            let Some(buf) = free.pop() else { break };
            match d.submit_read(offsets.next(), buf) {
                Ok(_) => in_flight += 1,
                Err(rej) => {
                    // The driver queues what the rings cannot take, so a
                    // refusal is an error, never back pressure.
                    free.push(rej.buf);
                    m.first_error.get_or_insert(rej.error);
                    submitting = false;
                    break;
                }
            }
        }
        d.kick();
        let mut got = 0;
        while let Some(c) = d.poll() {
            got += 1;
            in_flight = in_flight.saturating_sub(1);
            let now = xen.now_ns();
            if let Err(e) = c.result {
                m.errors += 1;
                m.first_error.get_or_insert(e);
            } else if now >= counting_from && m.ops < o.max_ops {
                m.ops += 1;
                last_counted = now;
            }
            free.push(c.buf.unwrap_or_else(|| vec![0u8; job.bs]));
            if submitting {
                // Refill before harvesting more: the ring stays full.
                if let Some(buf) = free.pop() {
                    match d.submit_read(offsets.next(), buf) {
                        Ok(_) => in_flight += 1,
                        Err(rej) => {
                            free.push(rej.buf);
                            m.first_error.get_or_insert(rej.error);
                            submitting = false;
                        }
                    }
                }
            }
        }
        let now = xen.now_ns();
        if got > 0 {
            m.max_gap_ns = m.max_gap_ns.max(now.saturating_sub(last_progress));
            last_progress = now;
        }
        if submitting && (now >= stop_at || m.ops >= o.max_ops || m.first_error.is_some()) {
            submitting = false;
        }
        if !submitting && in_flight == 0 {
            break;
        }
        if got == 0 {
            if now.saturating_sub(last_progress) > o.io_timeout_ns {
                m.timed_out = true;
                break;
            }
            if o.wait == Wait::Event {
                // Early wake-ups and timeouts are both fine: the loop looks again.
                m.waits += 1;
                if d.wait(now.saturating_add(WAIT_SLICE_NS)) == Err(IoError::Timeout) {
                    m.slept_out += 1;
                }
            } else {
                core::hint::spin_loop();
            }
        }
    }
    m.ns = last_counted.saturating_sub(counting_from);
    m
}

/// Prints the job's machine line (with `seq=<n>` when served) and counts
/// its check; returns the line's fields (without the leading word).
fn report(
    vdev: u32,
    backend: &str,
    job: Job,
    o: Opts,
    m: Measured,
    seq: Option<u64>,
    outcome: &mut Outcome,
) -> String {
    let (iops, centi_mbps) = rates(m.ops, job.bs as u64, m.ns);
    let mut fields = String::new();
    if let Some(seq) = seq {
        fields.push_str(&format!("seq={seq} "));
    }
    fields.push_str(&format!(
        "vdev={vdev} backend={backend} job={} iops={iops} mbps={}.{:02} ops={} ns={} qd={} \
         bs={} wait={} waits={} slept-out={} max-gap-us={}",
        job.name,
        centi_mbps / 100,
        centi_mbps % 100,
        m.ops,
        m.ns,
        job.qd,
        job.bs,
        o.wait.token(),
        m.waits,
        m.slept_out,
        m.max_gap_ns / 1000
    ));
    crate::out!("xenblk-bench {fields}");
    let ok = m.ops > 0 && m.errors == 0 && m.first_error.is_none() && !m.timed_out;
    let mut detail = String::new();
    if let Some(e) = m.first_error {
        detail.push_str(&format!("first error: {e}; "));
    }
    if m.timed_out {
        detail.push_str(&format!(
            "no completion for {} s; ",
            o.io_timeout_ns / 1_000_000_000
        ));
    }
    detail.push_str(&format!("{} ops, {} errors", m.ops, m.errors));
    let name = match seq {
        Some(seq) => format!("{vdev}/bench-{}-{seq}", job.name),
        None => format!("{vdev}/bench-{}", job.name),
    };
    outcome.report(&name, ok, &detail);
    if !ok {
        fields.push_str(" error=failed");
    }
    fields
}

/// Requests per second and hundredths of MB/s (10^6 bytes) for `ops`
/// requests of `bs` bytes in `ns` nanoseconds; (0, 0) for no time.
fn rates(ops: u64, bs: u64, ns: u64) -> (u64, u64) {
    if ns == 0 {
        return (0, 0);
    }
    let iops = (u128::from(ops) * 1_000_000_000 / u128::from(ns)) as u64;
    // bytes/s / 10^4 = hundredths of MB/s.
    let centi = (u128::from(ops) * u128::from(bs) * 100_000 / u128::from(ns)) as u64;
    (iops, centi)
}
