//! Ring benchmark: `xenblk::ring::{FrontRing, BackRing}` against the C
//! macros of Xen's `io/ring.h` (`bench/benches/c/ring_bench.c`), side by side
//! in one process, over the same page-aligned memory, with the same two
//! threads, the same batching policy and the same spinning "event channel".
//!
//! `cargo bench -p xenblk-bench --bench ring` (or `make bench-ring`) runs
//! every configuration several times, interleaving the sides, and prints the
//! medians, the notifications per request, callgrind's instructions per round
//! trip, and one line `ring-order=<n> rust/c=<ratio>` per ring order. The
//! method is described in `docs/PERFORMANCE.md`, which `make bench` updates.
//!
//! Environment:
//! - `XENBLK_BENCH_SCALE` (default 1): multiplies round trips and repetitions
//!   for a longer, steadier run.
//! - `XENBLK_BENCH_BATCH` (default 8): requests per push (and responses per
//!   push on the back end).
//! - `XENBLK_BENCH_ORDERS` (default `0,2,4`): ring orders to measure.
//! - `XENBLK_BENCH_PIN=1`: pin the front thread to CPU 0, the back to CPU 1
//!   (both sides alike). Default: not pinned.
//! - `XENBLK_BENCH_CALLGRIND=0`: skip the instruction counts.
//! - `XENBLK_BENCH_DOC=<path>`: rewrite the results section of that file
//!   (docs/PERFORMANCE.md), between its `ring-bench` markers.

use std::alloc::Layout;
use std::fmt::Write as _;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use xenblk_bench::{callgrind_total, command_line, env_num, loadavg, machine, median, update_doc};

use xenblk::abi::blkif::{
    BlkifRequest, BlkifRequestSegment, BlkifResponse, BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_OP_READ, BLKIF_RSP_OKAY,
};
use xenblk::hal::PAGE_SIZE;
use xenblk::ring::{BackRing, FrontRing};

type Front = FrontRing<BlkifRequest, BlkifResponse>;
type Back = BackRing<BlkifRequest, BlkifResponse>;

// ----- shared with the C shim ---------------------------------------------------------

/// The "event channel" of one direction (`struct rb_event` in the C shim):
/// a pending flag alone on its cache line. `notify` sets it; `wait` spins
/// (with `pause`) until it can clear it, yielding the CPU every
/// `SPINS_PER_YIELD` spins. Identical to `rb_notify` / `rb_wait`.
#[repr(C, align(64))]
struct Event {
    pending: AtomicU32,
    _pad: [u8; 60],
}

const SPINS_PER_YIELD: u32 = 4096;

impl Event {
    fn new() -> Self {
        Event {
            pending: AtomicU32::new(0),
            _pad: [0; 60],
        }
    }

    #[inline(always)]
    fn notify(&self) {
        self.pending.store(1, Ordering::Release);
    }

    #[inline(always)]
    fn wait(&self) {
        let mut spins = 0;
        loop {
            if self.pending.load(Ordering::Relaxed) != 0
                && self.pending.swap(0, Ordering::Acquire) != 0
            {
                return;
            }
            std::hint::spin_loop();
            spins += 1;
            if spins == SPINS_PER_YIELD {
                spins = 0;
                std::thread::yield_now();
            }
        }
    }
}

/// Both directions (`struct rb_events`).
#[repr(C)]
struct Events {
    to_back: Event,
    to_front: Event,
}

/// What one loop reports (`struct rb_stats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    done: u64,
    notifications: u64,
    waits: u64,
    checksum: u64,
    errors: u64,
}

// ----- the Rust side ------------------------------------------------------------------

/// The request of round trip `n`: a one-segment read, as the C shim's
/// `rb_fill_request` builds it.
#[inline(always)]
fn request(n: u64) -> BlkifRequest {
    let mut seg = [BlkifRequestSegment::default(); BLKIF_MAX_SEGMENTS_PER_REQUEST];
    seg[0] = BlkifRequestSegment {
        gref: n as u32,
        first_sect: 0,
        last_sect: 7,
    };
    BlkifRequest {
        operation: BLKIF_OP_READ,
        nr_segments: 1,
        handle: 0xca00,
        id: n,
        sector_number: n * 8,
        seg,
    }
}

/// Front end: produce up to `batch` requests, push-and-check-notify, take the
/// responses; when no request can be sent, final-check and wait. The mirror
/// of `rb_front` in the C shim.
fn rust_front(ring: &mut Front, n: u64, batch: u32, ev: &Events) -> Stats {
    let mut st = Stats::default();
    let mut sent = 0u64;
    while st.done < n {
        let mut k = 0;
        while k < batch && sent < n && !ring.is_full() {
            if ring.push_request(&request(sent)).is_err() {
                st.errors += 1;
                return st;
            }
            sent += 1;
            k += 1;
        }
        if k > 0 && ring.push_requests_and_check_notify() {
            st.notifications += 1;
            ev.to_back.notify();
        }
        loop {
            let taken = ring.poll_responses(|rsp| {
                if rsp.id != st.done || rsp.status != BLKIF_RSP_OKAY {
                    st.errors += 1;
                }
                st.checksum = st.checksum.wrapping_add(rsp.id);
                st.done += 1;
            });
            if taken.is_err() {
                st.errors += 1;
                return st;
            }
            if (sent < n && !ring.is_full()) || st.done == n {
                break;
            }
            match ring.final_check_for_responses() {
                Ok(true) => {}
                Ok(false) => {
                    st.waits += 1;
                    ev.to_front.wait();
                }
                Err(_) => {
                    st.errors += 1;
                    return st;
                }
            }
        }
    }
    st
}

/// Back end: take every request, answer each, push-and-check-notify every
/// `batch` responses and when drained, then final-check and (with `ev`)
/// wait; without `ev` it returns once drained. The mirror of `rb_back`.
/// Returns `false` on a protocol error.
#[inline(always)]
fn rust_back(ring: &mut Back, n: u64, batch: u32, ev: Option<&Events>, st: &mut Stats) -> bool {
    loop {
        let mut k = 0;
        loop {
            let req = match ring.poll_request() {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(_) => {
                    st.errors += 1;
                    return false;
                }
            };
            let rsp = BlkifResponse {
                id: req.id,
                operation: req.operation,
                status: BLKIF_RSP_OKAY,
            };
            if ring.push_response(&rsp).is_err() {
                st.errors += 1;
                return false;
            }
            st.checksum = st.checksum.wrapping_add(req.id);
            st.done += 1;
            k += 1;
            if k == batch {
                if ring.push_responses_and_check_notify() {
                    st.notifications += 1;
                    if let Some(ev) = ev {
                        ev.to_front.notify();
                    }
                }
                k = 0;
            }
        }
        if k > 0 && ring.push_responses_and_check_notify() {
            st.notifications += 1;
            if let Some(ev) = ev {
                ev.to_front.notify();
            }
        }
        let mut more = match ring.final_check_for_requests() {
            Ok(more) => more,
            Err(_) => {
                st.errors += 1;
                return false;
            }
        };
        if let Some(ev) = ev {
            if !more && st.done < n {
                st.waits += 1;
                ev.to_back.wait();
                more = true;
            }
        }
        if !(more && st.done < n) {
            return true;
        }
    }
}

/// Single-threaded ping-pong for callgrind (the mirror of `rb_c_*_pingpong`):
/// `n` round trips, `batch` at a time, no waiting. Not mangled, so
/// callgrind's `--toggle-collect` can name it.
///
/// # Safety
///
/// `shared` is page-aligned, valid for `PAGE_SIZE << order` bytes, and used
/// by nothing else during the call.
#[no_mangle]
#[inline(never)]
pub unsafe extern "C" fn xenblk_bench_rust_pingpong(
    shared: *mut u8,
    order: u32,
    n: u64,
    batch: u32,
    front_st: &mut Stats,
    back_st: &mut Stats,
) {
    *front_st = Stats::default();
    *back_st = Stats::default();
    let Some(base) = NonNull::new(shared) else {
        front_st.errors += 1;
        return;
    };
    // SAFETY: the caller's contract; the back end below is the one peer.
    let front = unsafe { Front::init(base, order) };
    // SAFETY: as above, on the ring `front` initialised.
    let back = unsafe { Back::attach(base, order) };
    let (Ok(mut front), Ok(mut back)) = (front, back) else {
        front_st.errors += 1;
        return;
    };
    let mut sent = 0u64;
    while front_st.done < n {
        let mut k = 0;
        while k < batch && sent < n && !front.is_full() {
            if front.push_request(&request(sent)).is_err() {
                front_st.errors += 1;
                return;
            }
            sent += 1;
            k += 1;
        }
        if front.push_requests_and_check_notify() {
            front_st.notifications += 1;
        }
        if !rust_back(&mut back, u64::MAX, batch, None, back_st) {
            return;
        }
        let taken = front.poll_responses(|rsp| {
            if rsp.id != front_st.done || rsp.status != BLKIF_RSP_OKAY {
                front_st.errors += 1;
            }
            front_st.checksum = front_st.checksum.wrapping_add(rsp.id);
            front_st.done += 1;
        });
        if taken.is_err() || front.final_check_for_responses() != Ok(false) {
            front_st.errors += 1;
            return;
        }
    }
}

// ----- the C side ---------------------------------------------------------------------

/// A loop of either end: `(shared, order, n, batch, events, stats)`.
type CLoop = unsafe extern "C" fn(*mut u8, u32, u64, u32, *const Events, *mut Stats);
/// The ping-pong: `(shared, order, n, batch, front stats, back stats)`.
type CPingPong = unsafe extern "C" fn(*mut u8, u32, u64, u32, *mut Stats, *mut Stats);

/// The entry points of one build of the C shim.
struct CFns {
    init: unsafe extern "C" fn(*mut u8),
    front: CLoop,
    back: CLoop,
    pingpong: CPingPong,
}

#[cfg(xenblk_c_ring)]
mod c {
    use super::{CFns, Events, Stats};

    macro_rules! variant {
        ($name:ident: $init:ident, $front:ident, $back:ident, $pingpong:ident) => {
            extern "C" {
                fn $init(shared: *mut u8);
                fn $front(s: *mut u8, o: u32, n: u64, b: u32, ev: *const Events, st: *mut Stats);
                fn $back(s: *mut u8, o: u32, n: u64, b: u32, ev: *const Events, st: *mut Stats);
                fn $pingpong(s: *mut u8, o: u32, n: u64, b: u32, f: *mut Stats, k: *mut Stats);
            }
            pub(super) const $name: CFns = CFns {
                init: $init,
                front: $front,
                back: $back,
                pingpong: $pingpong,
            };
        };
    }
    variant!(LOCK: rb_c_lock_init, rb_c_lock_front, rb_c_lock_back, rb_c_lock_pingpong);
    variant!(MFENCE: rb_c_mfence_init, rb_c_mfence_front, rb_c_mfence_back, rb_c_mfence_pingpong);
}

/// Whether `bench/build.rs` compiled the C baseline in.
const HAVE_C: bool = cfg!(xenblk_c_ring);

/// Which implementation runs a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// `xenblk::ring`.
    Rust,
    /// `io/ring.h` with `xen_mb()` = `lock; addl` (Linux/x86-64 `virt_mb()`).
    CLock,
    /// `io/ring.h` with `xen_mb()` = `mfence` (`__sync_synchronize()`).
    CMfence,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Rust => "rust",
            Side::CLock => "c-lock",
            Side::CMfence => "c-mfence",
        }
    }

    fn parse(s: &str) -> Option<Side> {
        [Side::Rust, Side::CLock, Side::CMfence]
            .into_iter()
            .find(|side| side.name() == s)
    }

    /// The C entry points, `None` for Rust or without the C baseline.
    fn c_fns(self) -> Option<&'static CFns> {
        #[cfg(xenblk_c_ring)]
        match self {
            Side::Rust => None,
            Side::CLock => Some(&c::LOCK),
            Side::CMfence => Some(&c::MFENCE),
        }
        #[cfg(not(xenblk_c_ring))]
        None
    }
}

// ----- memory, threads ----------------------------------------------------------------

/// `1 << order` page-aligned pages standing in for the granted ring.
struct Pages {
    ptr: NonNull<u8>,
    layout: Layout,
    order: u32,
}

impl Pages {
    fn new(order: u32) -> Pages {
        let layout = Layout::from_size_align(PAGE_SIZE << order, PAGE_SIZE).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).expect("ring allocation");
        Pages { ptr, layout, order }
    }

    fn zero(&self) {
        // SAFETY: the allocation is ours, live and `layout.size()` long; no
        // ring uses it between runs.
        unsafe { self.ptr.as_ptr().write_bytes(0, self.layout.size()) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The ring memory as an address, to hand to the C threads.
#[derive(Clone, Copy)]
struct Shared(*mut u8);
// SAFETY: only an address; the protocol decides who touches what behind it.
unsafe impl Send for Shared {}

extern "C" {
    fn sched_setaffinity(pid: i32, size: usize, mask: *const u64) -> i32;
}

/// Pins the calling thread to `cpu` (best effort); `None` unpins it.
fn pin(cpu: Option<u32>) {
    let mask: u64 = match cpu {
        Some(c) => 1 << c,
        None => !0,
    };
    // SAFETY: pid 0 is the calling thread; the mask is 8 valid bytes.
    unsafe { sched_setaffinity(0, 8, &mask) };
}

/// One timed two-thread run.
struct Sample {
    elapsed: Duration,
    front: Stats,
    back: Stats,
}

/// Starts `back` on a new thread and `front` on this one, lined up on a
/// barrier; times `front` (it ends when the last response is in).
fn two_threads(
    pinned: bool,
    front: impl FnOnce() -> Stats,
    back: impl FnOnce() -> Stats + Send,
) -> Sample {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let back = s.spawn(|| {
            if pinned {
                pin(Some(1));
            }
            start.wait();
            back()
        });
        if pinned {
            pin(Some(0));
        }
        start.wait();
        let t0 = Instant::now();
        let front = front();
        let elapsed = t0.elapsed();
        let back = back.join().expect("back thread");
        if pinned {
            pin(None);
        }
        Sample {
            elapsed,
            front,
            back,
        }
    })
}

/// Runs `n` round trips of `side` over `pages` with two threads.
fn run_threaded(side: Side, pages: &Pages, n: u64, batch: u32, pinned: bool) -> Sample {
    pages.zero();
    let events = Events {
        to_back: Event::new(),
        to_front: Event::new(),
    };
    let ev = &events;
    let order = pages.order;
    if let Some(fns) = side.c_fns() {
        let shared = Shared(pages.ptr.as_ptr());
        // SAFETY: `pages` is a zeroed, page-aligned ring of `1 << order`
        // pages that outlives both threads; only these two ends use it.
        unsafe { (fns.init)(shared.0) };
        return two_threads(
            pinned,
            move || {
                let shared = shared;
                let mut st = Stats::default();
                // SAFETY: as for `init`; this is the one front end, and `ev`
                // and `st` outlive the call.
                unsafe { (fns.front)(shared.0, order, n, batch, ev, &mut st) };
                st
            },
            move || {
                let shared = shared;
                let mut st = Stats::default();
                // SAFETY: as for the front; this is the one back end.
                unsafe { (fns.back)(shared.0, order, n, batch, ev, &mut st) };
                st
            },
        );
    }
    // SAFETY: as above: zeroed, page-aligned, `PAGE_SIZE << order` bytes that
    // outlive the scoped threads; these two rings are its only users.
    let mut front = unsafe { Front::init(pages.ptr, order) }.expect("order");
    // SAFETY: as above; `front` initialised the ring.
    let mut back = unsafe { Back::attach(pages.ptr, order) }.expect("order");
    two_threads(
        pinned,
        move || rust_front(&mut front, n, batch, ev),
        move || {
            let mut st = Stats::default();
            rust_back(&mut back, n, batch, Some(ev), &mut st);
            st
        },
    )
}

/// Runs the single-threaded ping-pong of `side` on fresh pages.
fn run_pingpong(side: Side, order: u32, n: u64, batch: u32) -> (Stats, Stats) {
    let pages = Pages::new(order);
    let (mut f, mut b) = (Stats::default(), Stats::default());
    let base = pages.ptr.as_ptr();
    match side.c_fns() {
        // SAFETY: `pages` is ours alone for the call.
        Some(fns) => unsafe { (fns.pingpong)(base, order, n, batch, &mut f, &mut b) },
        // SAFETY: as above.
        None => unsafe { xenblk_bench_rust_pingpong(base, order, n, batch, &mut f, &mut b) },
    }
    (f, b)
}

/// Checks that a run did what it claims: `n` round trips, in order, each
/// answered once.
fn check(side: Side, order: u32, n: u64, front: &Stats, back: &Stats) {
    let sum = n * n.saturating_sub(1) / 2;
    let ok = front.done == n
        && back.done == n
        && front.errors == 0
        && back.errors == 0
        && front.checksum == sum
        && back.checksum == sum;
    assert!(
        ok,
        "{} order {order}: wrong result: front {front:?} back {back:?}",
        side.name()
    );
}

// ----- the run ------------------------------------------------------------------------

/// Settings from the environment (see the module docs).
struct Config {
    orders: Vec<u32>,
    batch: u32,
    round_trips: u64,
    reps: usize,
    pinned: bool,
    callgrind: bool,
    doc: Option<String>,
}

impl Config {
    fn from_env() -> Config {
        let scale = env_num("XENBLK_BENCH_SCALE", 1);
        let orders = std::env::var("XENBLK_BENCH_ORDERS")
            .ok()
            .map(|v| v.split(',').filter_map(|o| o.trim().parse().ok()).collect())
            .filter(|v: &Vec<u32>| !v.is_empty())
            .unwrap_or_else(|| vec![0, 2, 4]);
        Config {
            orders,
            batch: env_num("XENBLK_BENCH_BATCH", 8) as u32,
            round_trips: (1 << 18) * scale,
            reps: 25 * scale as usize,
            pinned: std::env::var("XENBLK_BENCH_PIN").is_ok_and(|v| v == "1"),
            callgrind: std::env::var("XENBLK_BENCH_CALLGRIND").map_or(true, |v| v != "0"),
            doc: std::env::var("XENBLK_BENCH_DOC").ok(),
        }
    }
}

/// The medians of one (order, side) over all repetitions.
#[derive(Clone, Copy, Default)]
struct Summary {
    /// Round trips per second.
    rate: f64,
    /// Notifications per request, both directions.
    notify: f64,
    /// Waits per request, both ends.
    waits: f64,
    /// Instructions per round trip (callgrind), if measured.
    instr: Option<f64>,
}

/// Median over repetitions of the per-repetition ratio of Rust's rate to
/// side `c`'s rate. Pairing runs made moments apart cancels most of the
/// drift of a shared machine.
fn paired_ratio(samples: &[Vec<(f64, f64, f64)>], c: usize) -> f64 {
    median(
        samples[0]
            .iter()
            .zip(&samples[c])
            .map(|(rust, c)| c.0 / rust.0)
            .collect(),
    )
}

/// Instructions per round trip of `side`'s ping-pong under callgrind.
fn callgrind(side: Side, order: u32, batch: u32) -> Option<f64> {
    const N: u64 = 200_000;
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "xenblk-ring-callgrind-{}-{}-{order}.out",
        std::process::id(),
        side.name()
    ));
    let func = match side {
        Side::Rust => "xenblk_bench_rust_pingpong".to_string(),
        Side::CLock => "rb_c_lock_pingpong".to_string(),
        Side::CMfence => "rb_c_mfence_pingpong".to_string(),
    };
    let status = std::process::Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg("--collect-atstart=no")
        .arg(format!("--toggle-collect={func}"))
        .arg(&exe)
        .args([
            "--pingpong",
            side.name(),
            &order.to_string(),
            &N.to_string(),
        ])
        .arg(batch.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    let total = callgrind_total(&text?)?;
    Some(total / N as f64)
}

/// `--pingpong <side> <order> <n> <batch>`: the callgrind child.
fn pingpong_child(args: &[String]) -> std::process::ExitCode {
    let parsed = (|| {
        let side = Side::parse(args.first()?)?;
        let order = args.get(1)?.parse().ok()?;
        let n = args.get(2)?.parse().ok()?;
        let batch = args.get(3)?.parse().ok()?;
        Some((side, order, n, batch))
    })();
    let Some((side, order, n, batch)) = parsed else {
        eprintln!("usage: --pingpong <rust|c-lock|c-mfence> <order> <n> <batch>");
        return std::process::ExitCode::FAILURE;
    };
    let (f, b) = run_pingpong(side, order, n, batch);
    check(side, order, n, &f, &b);
    println!(
        "{} order {order}: {n} round trips, {} notifications",
        side.name(),
        f.notifications + b.notifications
    );
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pingpong") {
        return pingpong_child(&args[i + 1..]);
    }
    let cfg = Config::from_env();
    let sides: Vec<Side> = if HAVE_C {
        vec![Side::Rust, Side::CLock, Side::CMfence]
    } else {
        println!("C baseline unavailable (no xen/io/ring.h or not the host target): Rust only");
        vec![Side::Rust]
    };
    let n = cfg.round_trips;
    println!(
        "ring benchmark: blkif ring (112-byte requests, 16-byte responses), batch {}, \
         {n} round trips x {} runs per configuration, threads {}",
        cfg.batch,
        cfg.reps,
        if cfg.pinned { "pinned" } else { "not pinned" }
    );

    let pages: Vec<Pages> = cfg.orders.iter().map(|&o| Pages::new(o)).collect();
    // samples[order][side] = (seconds, notifications/request, waits/request)
    let mut samples = vec![vec![Vec::new(); sides.len()]; pages.len()];
    let load_before = loadavg();
    let t0 = Instant::now();
    for rep in 0..cfg.reps {
        for (oi, p) in pages.iter().enumerate() {
            // Rotate who goes first, so drift in the machine's load hits
            // every side alike.
            for k in 0..sides.len() {
                let si = (k + rep) % sides.len();
                let side = sides[si];
                let s = run_threaded(side, p, n, cfg.batch, cfg.pinned);
                check(side, p.order, n, &s.front, &s.back);
                let notes = (s.front.notifications + s.back.notifications) as f64 / n as f64;
                let waits = (s.front.waits + s.back.waits) as f64 / n as f64;
                samples[oi][si].push((s.elapsed.as_secs_f64(), notes, waits));
            }
        }
    }
    let wall = t0.elapsed();
    let load = format!("{load_before} before, {} after", loadavg());

    let mut summary = vec![vec![Summary::default(); sides.len()]; pages.len()];
    for (oi, p) in pages.iter().enumerate() {
        for (si, &side) in sides.iter().enumerate() {
            let v = &samples[oi][si];
            summary[oi][si] = Summary {
                rate: n as f64 / median(v.iter().map(|s| s.0).collect()),
                notify: median(v.iter().map(|s| s.1).collect()),
                waits: median(v.iter().map(|s| s.2).collect()),
                instr: if cfg.callgrind && side != Side::CMfence {
                    callgrind(side, p.order, cfg.batch)
                } else {
                    None
                },
            };
        }
    }

    // The table, as Markdown (printed and written into the doc).
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| order | slots | side | round trips/s (median) | notifications/request | waits/request | instructions/round trip |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|");
    for (oi, p) in pages.iter().enumerate() {
        for (si, &side) in sides.iter().enumerate() {
            let s = summary[oi][si];
            let instr = s.instr.map_or("-".to_string(), |i| format!("{i:.1}"));
            let _ = writeln!(
                table,
                "| {} | {} | {} | {:.2} M | {:.4} | {:.4} | {instr} |",
                p.order,
                32 << p.order,
                side.name(),
                s.rate / 1e6,
                s.notify,
                s.waits
            );
        }
    }
    let mut ratios = String::new();
    if HAVE_C {
        let _ = writeln!(
            ratios,
            "| order | rust / c-lock | rust / c-mfence | rust / C (the lower) | instructions rust / c-lock |"
        );
        let _ = writeln!(ratios, "|---|---|---|---|---|");
        for (oi, p) in pages.iter().enumerate() {
            let s = &summary[oi];
            let lock = paired_ratio(&samples[oi], 1);
            let mfence = paired_ratio(&samples[oi], 2);
            let best = lock.min(mfence);
            let instr = match (s[0].instr, s[1].instr) {
                (Some(r), Some(c)) => format!("{:.2}", r / c),
                _ => "-".into(),
            };
            let _ = writeln!(
                ratios,
                "| {} | {lock:.3} | {mfence:.3} | {best:.3} | {instr} |",
                p.order
            );
        }
    }
    println!("\n{table}");
    if HAVE_C {
        println!("{ratios}");
    }
    println!(
        "measured in {:.1} s, load average {load}",
        wall.as_secs_f64()
    );
    // The machine-readable lines: Rust against the faster C build.
    let mut lines = String::new();
    for (oi, p) in pages.iter().enumerate() {
        if HAVE_C {
            // Against whichever C build did better against Rust.
            let ratio = paired_ratio(&samples[oi], 1).min(paired_ratio(&samples[oi], 2));
            let _ = writeln!(lines, "ring-order={} rust/c={ratio:.3}", p.order);
        } else {
            let _ = writeln!(lines, "ring-order={} rust/c=unavailable", p.order);
        }
    }
    print!("{lines}");

    if let Some(path) = &cfg.doc {
        let mut body = String::new();
        let _ = writeln!(
            body,
            "Measured {} on {} (rustc: {}; C: {}).",
            command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            machine(),
            command_line("rustc", &["-V"]),
            command_line("cc", &["--version"]),
        );
        let _ = writeln!(
            body,
            "Batch {}, {n} round trips per run, {} runs per configuration (medians), \
             threads {}, load average {load} (2 CPUs: above 2, the runs shared \
             their cores).\n",
            cfg.batch,
            cfg.reps,
            if cfg.pinned { "pinned" } else { "not pinned" }
        );
        let scale = std::env::var("XENBLK_BENCH_SCALE").unwrap_or_default();
        let _ = writeln!(
            body,
            "Reproduce: `{}make bench`.\n",
            if scale.is_empty() {
                String::new()
            } else {
                format!("XENBLK_BENCH_SCALE={scale} ")
            }
        );
        body.push_str(&table);
        body.push('\n');
        if HAVE_C {
            body.push_str(&ratios);
            body.push('\n');
        }
        let _ = writeln!(body, "```text\n{lines}```");
        update_doc(path, "ring-bench", &body);
    }
    std::process::ExitCode::SUCCESS
}
