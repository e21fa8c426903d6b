//! Driver benchmark: `xenblk::blkfront::BlockFront` against the simulated
//! blkback (`xenblk::sim`), 4 KiB random reads and writes through the
//! non-blocking API (`submit_read` / `submit_write`, `kick`, `poll`), with a
//! fixed number of requests kept in flight (the queue depth).
//!
//! Every configuration is a product of: backend (`null`: the simulated
//! blkback's null disk, which completes without mapping or copying; `mem`:
//! an in-memory disk, mapped and copied), operation (read, write), queue
//! depth (1, 32, 128), queues (1, 4), persistent grants (on, off).
//!
//! Three measurements, described in `docs/PERFORMANCE.md`:
//! - **step mode** (the primary wall-clock figure): one thread, the
//!   simulator's deterministic mode. The loop submits, kicks, steps the
//!   backend once (which answers everything published), polls every
//!   completion and resubmits. Reported: IOPS and ns per request of the
//!   whole loop, and the guest's ns per request (the loop minus the timed
//!   backend steps).
//! - **threaded mode**: the simulator's device thread runs the backend; the
//!   front thread polls (spinning, yielding the CPU after a while). Depends
//!   on the scheduler of a shared 2-core machine; reported for a subset.
//! - **callgrind**: instructions per request of the guest side (the driver
//!   and the simulated hypercalls it makes, with the backend's steps
//!   subtracted), in step mode, single-threaded, fixed seed, setup
//!   excluded. Exact and repeatable; compared against
//!   `bench/benches/baseline.txt`.
//!
//! The run closes with one line per (queue depth, queues, persistent) of
//! the canonical workload, null-backend 4 KiB reads:
//! `driver qd=<n> queues=<n> persistent=<0|1> iops=<n> instr/req=<n>`.
//!
//! Environment:
//! - `XENBLK_BENCH_SCALE` (default 1): multiplies requests and repetitions.
//! - `XENBLK_BENCH_FILTER=<substring>`: only configurations whose name
//!   (e.g. `null-read-qd32-q1-p1`) contains it.
//! - `XENBLK_BENCH_THREADED=0`: skip threaded mode.
//! - `XENBLK_BENCH_CALLGRIND=0`: skip the instruction counts;
//!   `XENBLK_BENCH_CALLGRIND=null`: count the null backend only.
//! - `XENBLK_BENCH_KEEP_CALLGRIND=1`: keep callgrind's output files (for
//!   `callgrind_annotate`) and print their paths.
//! - `XENBLK_BENCH_UPDATE_BASELINE=1`: rewrite `bench/benches/baseline.txt` with
//!   this run's instruction counts.
//! - `XENBLK_BENCH_DOC=<path>`: rewrite the results between the
//!   `driver-bench` markers of that file (docs/PERFORMANCE.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use xenblk_bench::{callgrind_total, command_line, env_num, loadavg, machine, median, update_doc};

use xenblk::blkfront::{Completion, Config};
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::{SimConfig, SimDisk, SimXen, Testbed};

/// Bytes per request.
const IO: usize = 4096;
/// Disk size: random 4 KiB blocks are spread over it.
const DISK_BYTES: u64 = 32 << 20;
/// The fixed seed of the sector sequence.
const SEED: u64 = 0x5eed_f00d_b10c;

// ----- configurations -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Case {
    /// Null disk (no mapping, no copy) or memory disk.
    null: bool,
    write: bool,
    qd: usize,
    queues: u32,
    persistent: bool,
}

impl Case {
    fn name(&self) -> String {
        format!(
            "{}-{}-qd{}-q{}-p{}",
            if self.null { "null" } else { "mem" },
            if self.write { "write" } else { "read" },
            self.qd,
            self.queues,
            u8::from(self.persistent)
        )
    }

    fn parse(s: &str) -> Option<Case> {
        let mut it = s.split('-');
        let null = match it.next()? {
            "null" => true,
            "mem" => false,
            _ => return None,
        };
        let write = match it.next()? {
            "write" => true,
            "read" => false,
            _ => return None,
        };
        let qd = it.next()?.strip_prefix("qd")?.parse().ok()?;
        let queues = it.next()?.strip_prefix('q')?.parse().ok()?;
        let persistent = it.next()?.strip_prefix('p')? == "1";
        Some(Case {
            null,
            write,
            qd,
            queues,
            persistent,
        })
    }

    /// The canonical workload of the machine-readable lines.
    fn canonical(&self) -> bool {
        self.null && !self.write
    }

    fn all() -> Vec<Case> {
        let mut v = Vec::new();
        for null in [true, false] {
            for write in [false, true] {
                for qd in [1, 32, 128] {
                    for queues in [1, 4] {
                        for persistent in [true, false] {
                            v.push(Case {
                                null,
                                write,
                                qd,
                                queues,
                                persistent,
                            });
                        }
                    }
                }
            }
        }
        v
    }
}

// ----- the rig ------------------------------------------------------------------------

/// The simulated machine of one configuration: one blkback disk.
fn testbed(case: Case, threaded: bool) -> Testbed {
    // Enough grant entries for 4 queues x 16 ring pages and QD 128 of
    // per-request or persistent grants.
    let cfg = SimConfig {
        grant_frames: 8,
        ..SimConfig::default()
    };
    let mut be = BackendConfig::blkback();
    be.disk_bytes = DISK_BYTES;
    be.null_disk = case.null;
    be.persistent = true;
    be.max_queues = Some(4);
    let tb = Testbed::builder().sim_config(cfg).disk(be);
    if threaded { tb.threaded() } else { tb }.build()
}

fn front_config(case: Case) -> Config {
    Config {
        max_queues: case.queues,
        persistent_grants: case.persistent,
        ..Config::default()
    }
}

/// xorshift64*: the random 4 KiB blocks, the same every run.
struct Rng(u64);

impl Rng {
    fn next_sector(&mut self, sector_size: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let blocks = DISK_BYTES / IO as u64;
        (r >> 11) % blocks * (IO as u64 / sector_size)
    }
}

/// What one measured loop did.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    done: u64,
    errors: u64,
    /// Time spent in the backend's steps (step mode).
    backend: Duration,
    /// Polls that found nothing (threaded mode).
    empty_polls: u64,
}

/// The state of the closed loop: queue depth `qd`, `n` requests in all.
struct Loop<'d, 'a> {
    disk: &'d mut SimDisk<'a>,
    case: Case,
    n: u64,
    submitted: u64,
    rng: Rng,
    sector_size: u64,
    run: Run,
}

impl Loop<'_, '_> {
    fn submit(&mut self, buf: Vec<u8>) {
        let sector = self.rng.next_sector(self.sector_size);
        let r = if self.case.write {
            self.disk.submit_write(sector, buf)
        } else {
            self.disk.submit_read(sector, buf)
        };
        match r {
            Ok(_) => self.submitted += 1,
            Err(rej) => panic!("{}: submit refused: {}", self.case.name(), rej.error),
        }
    }

    /// Submits the first `qd` requests.
    fn prime(&mut self) {
        for _ in 0..self.case.qd.min(self.n as usize) {
            self.submit(vec![0u8; IO]);
        }
        self.disk.kick();
    }

    /// Takes one completion: checks it and resubmits its buffer.
    fn complete(&mut self, c: Completion) {
        self.run.done += 1;
        match (c.result, c.buf) {
            (Ok(()), Some(buf)) if buf.len() == IO => {
                if self.submitted < self.n {
                    self.submit(buf);
                }
            }
            _ => self.run.errors += 1,
        }
    }

    /// Harvests everything there is; returns how many completed.
    fn drain(&mut self) -> u64 {
        let before = self.run.done;
        while let Some(c) = self.disk.poll() {
            self.complete(c);
        }
        self.disk.kick();
        self.run.done - before
    }
}

/// One step of every simulated device (the backend and xenstored). Not
/// mangled, so callgrind's `--toggle-collect` can leave it out.
#[no_mangle]
#[inline(never)]
pub fn xenblk_bench_backend_step(xen: &SimXen) -> bool {
    xen.step()
}

/// The measured loop of step mode: submit, kick, step the backend, poll,
/// resubmit, until `n` requests completed. Not mangled, so callgrind can
/// count exactly this.
#[no_mangle]
#[inline(never)]
fn xenblk_bench_step_loop(l: &mut Loop<'_, '_>, xen: &SimXen, time_backend: bool) {
    l.prime();
    while l.run.done < l.n && l.run.errors == 0 {
        if time_backend {
            let t = Instant::now();
            xenblk_bench_backend_step(xen);
            l.run.backend += t.elapsed();
        } else {
            xenblk_bench_backend_step(xen);
        }
        if l.drain() == 0 && !xenblk_bench_backend_step(xen) {
            l.run.errors += 1;
        }
    }
}

/// The loop of threaded mode: the device thread answers; this thread polls.
fn threaded_loop(l: &mut Loop<'_, '_>) {
    l.prime();
    let mut idle = 0u32;
    let give_up = Instant::now() + Duration::from_secs(60);
    while l.run.done < l.n && l.run.errors == 0 {
        if l.drain() > 0 {
            idle = 0;
            continue;
        }
        l.run.empty_polls += 1;
        idle += 1;
        if idle % 64 == 0 {
            std::thread::yield_now();
            if Instant::now() > give_up {
                l.run.errors += 1;
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Step,
    Threaded,
}

/// Sets up `case` and runs `reps` timed loops of `n` requests on the same
/// connected device (after one warm-up loop); returns (elapsed, run) per rep.
fn measure(case: Case, mode: Mode, n: u64, reps: usize) -> Vec<(Duration, Run)> {
    let tb = testbed(case, mode == Mode::Threaded);
    let guest = tb.guest();
    let mut disk = guest
        .probe(0, front_config(case))
        .unwrap_or_else(|e| panic!("{}: probe: {e}", case.name()));
    check_negotiated(case, &disk);
    let sector_size = u64::from(disk.sector_size());
    let mut out = Vec::new();
    for rep in 0..=reps {
        let mut l = Loop {
            disk: &mut disk,
            case,
            n: if rep == 0 { n / 4 + 1 } else { n },
            submitted: 0,
            rng: Rng(SEED + rep as u64),
            sector_size,
            run: Run::default(),
        };
        let t0 = Instant::now();
        match mode {
            Mode::Step => xenblk_bench_step_loop(&mut l, tb.xen(), true),
            Mode::Threaded => threaded_loop(&mut l),
        }
        let elapsed = t0.elapsed();
        let run = l.run;
        assert!(
            run.errors == 0 && run.done == l.n,
            "{}: run failed: {run:?}",
            case.name()
        );
        if rep > 0 {
            out.push((elapsed, run));
        }
    }
    // Dropping the testbed stops the device thread of threaded mode.
    out
}

fn check_negotiated(case: Case, disk: &SimDisk<'_>) {
    let n = &disk.info().negotiated;
    assert_eq!(n.queues, case.queues, "{}: queues", case.name());
    assert_eq!(n.persistent, case.persistent, "{}: persistent", case.name());
    assert!(
        n.ring_slots as usize >= case.qd,
        "{}: ring too small",
        case.name()
    );
}

// ----- callgrind ----------------------------------------------------------------------

/// Requests counted per configuration under callgrind (after a warm-up).
const CG_REQUESTS: u64 = 4096;

/// `--callgrind-child <case> <n>`: set up, warm up (uncounted), then run the
/// counted step-mode loop once.
fn callgrind_child(args: &[String]) -> std::process::ExitCode {
    let parsed = (|| {
        Some((
            Case::parse(args.first()?)?,
            args.get(1)?.parse::<u64>().ok()?,
        ))
    })();
    let Some((case, n)) = parsed else {
        eprintln!("usage: --callgrind-child <case> <requests>");
        return std::process::ExitCode::FAILURE;
    };
    let tb = testbed(case, false);
    let guest = tb.guest();
    let mut disk = guest
        .probe(0, front_config(case))
        .unwrap_or_else(|e| panic!("{}: probe: {e}", case.name()));
    check_negotiated(case, &disk);
    let sector_size = u64::from(disk.sector_size());
    // The warm-up fills the page pools (and the backend's persistent-grant
    // cache) so that the counted loop measures the steady state.
    for (rep, n) in [(0, case.qd as u64 * 2 + 64), (1, n)] {
        let mut l = Loop {
            disk: &mut disk,
            case,
            n,
            submitted: 0,
            rng: Rng(SEED + rep),
            sector_size,
            run: Run::default(),
        };
        if rep == 0 {
            warm_up(&mut l, tb.xen());
        } else {
            counted(&mut l, tb.xen());
        }
        assert!(
            l.run.errors == 0 && l.run.done == n,
            "{}: {:?}",
            case.name(),
            l.run
        );
    }
    println!("{}: {n} requests", case.name());
    std::process::ExitCode::SUCCESS
}

#[inline(never)]
fn warm_up(l: &mut Loop<'_, '_>, xen: &SimXen) {
    xenblk_bench_step_loop(l, xen, false);
}

/// The counted run (callgrind collects inside this function only).
#[no_mangle]
#[inline(never)]
fn xenblk_bench_counted(l: &mut Loop<'_, '_>, xen: &SimXen) {
    xenblk_bench_step_loop(l, xen, false);
}

fn counted(l: &mut Loop<'_, '_>, xen: &SimXen) {
    xenblk_bench_counted(l, xen);
}

/// Instructions per request of `case` under callgrind: (guest side, backend
/// steps), or `None` without valgrind. With `keep`, the callgrind output file
/// is kept and its path printed (for `callgrind_annotate`).
///
/// Collection is on in `xenblk_bench_counted` only; the backend's share is
/// the inclusive cost of `xenblk_bench_backend_step` as `callgrind_annotate`
/// computes it from the call graph, and the guest's is the rest. (Toggling
/// collection off inside the backend step instead leaks: part of the libc
/// calls made there, a memset of the memory backend's bounce buffer for
/// one, stays counted.)
fn callgrind(case: Case, keep: bool) -> Option<(f64, f64)> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "xenblk-driver-callgrind-{}-{}.out",
        std::process::id(),
        case.name()
    ));
    let status = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg("--toggle-collect=xenblk_bench_counted")
        .arg(&exe)
        .args(["--callgrind-child", &case.name(), &CG_REQUESTS.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let annotated = std::process::Command::new("callgrind_annotate")
        .arg("--inclusive=yes")
        .arg("--threshold=100")
        .arg(&out)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    let text = std::fs::read_to_string(&out).ok();
    if keep {
        println!("callgrind output kept: {}", out.display());
    } else {
        let _ = std::fs::remove_file(&out);
    }
    if !status.success() {
        eprintln!("{}: callgrind run failed ({status})", case.name());
        return None;
    }
    let total = callgrind_total(&text?)?;
    // A line such as `4,110,089 (39.18%)  benches/driver.rs:xenblk_bench_backend_step [..]`.
    let backend: f64 = annotated?
        .lines()
        .find(|l| l.contains(":xenblk_bench_backend_step ") && !l.contains("=>"))?
        .split_whitespace()
        .next()?
        .replace(',', "")
        .parse()
        .ok()?;
    let n = CG_REQUESTS as f64;
    Some(((total - backend) / n, backend / n))
}

// ----- baseline -----------------------------------------------------------------------

const BASELINE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/baseline.txt");

/// `<case> instr/req=<n>` lines of `bench/benches/baseline.txt`.
fn read_baseline() -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(BASELINE).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let v = it.next()?.strip_prefix("instr/req=")?.parse().ok()?;
            Some((name.to_string(), v))
        })
        .collect()
}

fn write_baseline(counts: &BTreeMap<String, f64>) {
    let mut s = String::from(
        "# Instructions per request (callgrind, guest side, step mode) per driver\n\
         # bench configuration: the reference `make bench-driver` prints\n\
         # its deltas against. Rewrite with XENBLK_BENCH_UPDATE_BASELINE=1 when\n\
         # the driver got faster (and say so in docs/PERFORMANCE.md).\n",
    );
    for (name, v) in counts {
        let _ = writeln!(s, "{name} instr/req={v:.0}");
    }
    match std::fs::write(BASELINE, s) {
        Ok(()) => println!("updated {BASELINE}"),
        Err(e) => eprintln!("cannot write {BASELINE}: {e}"),
    }
}

fn delta(now: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => {
            let pct = (now - b) / b * 100.0;
            let flag = if pct > 1.0 { " REGRESSION" } else { "" };
            format!("{b:.0} ({pct:+.1}%{flag})")
        }
        _ => "-".into(),
    }
}

// ----- the run ------------------------------------------------------------------------

/// Medians of one configuration.
#[derive(Clone, Copy, Default)]
struct Summary {
    /// Step mode: requests per second of the whole loop.
    step_iops: f64,
    /// Step mode: ns per request, whole loop.
    step_ns: f64,
    /// Step mode: ns per request outside the backend's steps.
    guest_ns: f64,
    /// Threaded mode: requests per second, if measured.
    thr_iops: Option<f64>,
    /// Callgrind: guest instructions per request, if measured.
    instr: Option<f64>,
    /// Callgrind: instructions per request in the backend's steps.
    backend_instr: Option<f64>,
}

fn fmt_iops(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else {
        format!("{:.0} k", v / 1e3)
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--callgrind-child") {
        return callgrind_child(&args[i + 1..]);
    }
    let scale = env_num("XENBLK_BENCH_SCALE", 1);
    let filter = std::env::var("XENBLK_BENCH_FILTER").unwrap_or_default();
    let threaded = std::env::var("XENBLK_BENCH_THREADED").map_or(true, |v| v != "0");
    let cg = std::env::var("XENBLK_BENCH_CALLGRIND").unwrap_or_default();
    let keep = std::env::var("XENBLK_BENCH_KEEP_CALLGRIND").is_ok_and(|v| v == "1");
    let doc = std::env::var("XENBLK_BENCH_DOC").ok();
    let cases: Vec<Case> = Case::all()
        .into_iter()
        .filter(|c| c.name().contains(&filter))
        .collect();
    let n = 20_000 * scale;
    let reps = 5 * scale as usize;
    let thr_n = 10_000 * scale;
    let thr_reps = 3 * scale as usize;
    println!(
        "driver benchmark: {} configurations; step mode {n} requests x {reps} runs, \
         threaded mode {thr_n} x {thr_reps} (null reads){}",
        cases.len(),
        if threaded { "" } else { " [skipped]" }
    );
    let load_before = loadavg();
    let t0 = Instant::now();

    // Step mode: repetitions interleaved over the configurations, so drift
    // in the machine's load hits them alike.
    let mut step: Vec<Vec<(Duration, Run)>> = vec![Vec::new(); cases.len()];
    for _ in 0..reps {
        for (i, &c) in cases.iter().enumerate() {
            step[i].extend(measure(c, Mode::Step, n, 1));
        }
    }
    let mut summary = vec![Summary::default(); cases.len()];
    for (i, s) in step.iter().enumerate() {
        let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
        summary[i].step_ns = median(s.iter().map(|(d, _)| per(*d)).collect());
        summary[i].guest_ns = median(s.iter().map(|(d, r)| per(*d - r.backend)).collect());
        summary[i].step_iops = 1e9 / summary[i].step_ns;
    }
    if threaded {
        let mut thr: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
        for _ in 0..thr_reps {
            for (i, &c) in cases.iter().enumerate() {
                if c.canonical() {
                    let r = measure(c, Mode::Threaded, thr_n, 1);
                    thr[i].extend(r.iter().map(|(d, _)| thr_n as f64 / d.as_secs_f64()));
                }
            }
        }
        for (i, v) in thr.into_iter().enumerate() {
            if !v.is_empty() {
                summary[i].thr_iops = Some(median(v));
            }
        }
    }
    let wall = t0.elapsed();
    let load = format!("{load_before} before, {} after", loadavg());

    // Callgrind.
    let baseline = read_baseline();
    let mut counts = BTreeMap::new();
    if cg != "0" {
        for (i, &c) in cases.iter().enumerate() {
            if cg != "null" || c.null {
                if let Some((guest, backend)) = callgrind(c, keep) {
                    summary[i].instr = Some(guest);
                    summary[i].backend_instr = Some(backend);
                    counts.insert(c.name(), guest);
                }
            }
        }
    }

    let mut table = String::new();
    let _ = writeln!(
        table,
        "| backend | op | QD | queues | persistent | step IOPS | step ns/req | guest ns/req | threaded IOPS | instr/req | baseline (delta) | backend instr/req |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, c) in cases.iter().enumerate() {
        let s = summary[i];
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} |",
            if c.null { "null" } else { "mem" },
            if c.write { "write" } else { "read" },
            c.qd,
            c.queues,
            if c.persistent { "on" } else { "off" },
            fmt_iops(s.step_iops),
            s.step_ns,
            s.guest_ns,
            s.thr_iops.map_or("-".into(), fmt_iops),
            s.instr.map_or("-".into(), |v| format!("{v:.0}")),
            s.instr
                .map_or("-".into(), |v| delta(v, baseline.get(&c.name()).copied())),
            s.backend_instr.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    println!("\n{table}");
    println!(
        "measured in {:.1} s, load average {load}",
        wall.as_secs_f64()
    );
    let mut lines = String::new();
    for (i, c) in cases.iter().enumerate() {
        if !c.canonical() {
            continue;
        }
        let s = summary[i];
        let _ = writeln!(
            lines,
            "driver qd={} queues={} persistent={} iops={:.0} instr/req={}",
            c.qd,
            c.queues,
            u8::from(c.persistent),
            s.step_iops,
            s.instr.map_or("unavailable".into(), |v| format!("{v:.0}"))
        );
    }
    print!("{lines}");

    if std::env::var("XENBLK_BENCH_UPDATE_BASELINE").is_ok_and(|v| v == "1") && !counts.is_empty() {
        let mut all = baseline.clone();
        all.extend(counts.clone());
        write_baseline(&all);
    }

    if let Some(path) = &doc {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "Measured {} on {} (rustc: {}; valgrind: {}).",
            command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine(),
            command_line("rustc", &["-V"]),
            command_line("valgrind", &["--version"]),
        );
        let _ = writeln!(
            body,
            "Step mode {n} requests per run, {reps} runs per configuration (medians); \
             threaded mode {thr_n} requests x {thr_reps} runs, null reads only; \
             callgrind {CG_REQUESTS} requests after a warm-up; \
             load average {load} (2 CPUs).\n"
        );
        let _ = writeln!(
            body,
            "Reproduce: `{}make bench-driver`.\n",
            if scale > 1 {
                format!("XENBLK_BENCH_SCALE={scale} ")
            } else {
                String::new()
            }
        );
        body.push_str(&table);
        let _ = writeln!(body, "\n```text\n{lines}```");
        update_doc(path, "driver-bench", &body);
    }
    std::process::ExitCode::SUCCESS
}
