//! The simulated hypervisor: domains, memory, the clock, waiting, and the
//! accounting tests use to prove nothing leaked.
//!
//! Grant-table operations live in `grant.rs`, event channels in `event.rs`,
//! the device runner in `device.rs`; all of them are methods of [`SimXen`].

use std::alloc::{self, Layout};
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::device::DeviceTable;
use super::event::PortSlot;
use super::grant::{self, Active};
use super::hal::SimHal;
use crate::abi::event_channel::EVTCHN_2L_NR_CHANNELS;
use crate::hal::HalError;
use crate::hal::{DomId, Gfn, GrantEntry, Pages, GNTTAB_RESERVED, PAGE_SIZE};
use crate::Result;

/// Grant entries per 4096-byte grant-table frame (8-byte v1 entries).
const ENTRIES_PER_FRAME: usize = PAGE_SIZE / core::mem::size_of::<GrantEntry>();

/// Tunables of a [`SimXen`], fixed at construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Grant-table frames per domain (512 entries each). Xen's default
    /// `max_grant_frames` gives a guest far more; 4 frames (2048 entries)
    /// keeps tests small while exercising exhaustion.
    pub grant_frames: usize,
    /// Highest number of event-channel ports per domain, port 0 included
    /// (`EVTCHN_2L_NR_CHANNELS` is 4096 on 64-bit).
    pub max_ports: u32,
    /// Threaded mode only: a wait without a deadline gives up with
    /// [`HalError::Timeout`] after this many nanoseconds of real time, so that a
    /// deadlock fails a test instead of hanging it.
    pub unbounded_wait_ns: u64,
    /// Step mode only: a single wait steps the devices at most this many
    /// rounds before it reports [`HalError::Timeout`] (a livelock guard).
    pub max_steps_per_wait: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            grant_frames: 4,
            max_ports: EVTCHN_2L_NR_CHANNELS as u32,
            unbounded_wait_ns: 30_000_000_000,
            max_steps_per_wait: 1_000_000,
        }
    }
}

/// What one domain holds right now, from [`SimXen::accounting`].
///
/// After a driver is closed, everything but `bad_frees` and `leaked_pages`
/// should be back where it was before the driver was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Live pages this domain allocated and has not freed.
    pub pages: usize,
    /// Entries of its grant table (from `GNTTAB_RESERVED` on; the reserved
    /// ones belong to the toolstack) whose type is not `GTF_invalid`.
    pub grants_active: usize,
    /// Entries of its grant table currently mapped (or being copied) by
    /// another domain.
    pub grants_mapped_by_others: usize,
    /// Mappings this domain holds of other domains' pages.
    pub mappings_held: usize,
    /// Open event-channel ports (unbound or bound).
    pub ports_open: usize,
    /// Calls of `free_pages` the simulator refused: pages still granted or
    /// still mapped by another domain, or pages it never handed out.
    pub bad_frees: u64,
    /// Pages leaked (never freed) because of a refused free.
    pub leaked_pages: usize,
}

/// Why [`SimXen::reset`] (or [`Testbed::reset`](super::Testbed::reset))
/// refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResetError {
    /// The simulator runs in threaded mode.
    Threaded,
    /// This domain still holds this many mappings of another's memory (or
    /// pins of its grants), e.g. through a backend handle kept alive.
    StillMapped(DomId, usize),
    /// A [`Testbed`](super::Testbed) was asked to become a machine with
    /// another [`SimConfig`] or mode than it was built with.
    Config,
    /// Re-creating a disk failed (as [`TestbedBuilder::build`](super::TestbedBuilder::build) would).
    Disk(crate::Error),
}

impl fmt::Display for ResetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetError::Threaded => f.write_str("a threaded simulator cannot be reset"),
            ResetError::StillMapped(d, n) => {
                write!(f, "d{} still holds {n} mappings of another domain", d.0)
            }
            ResetError::Config => f.write_str("the simulator was made with another configuration"),
            ResetError::Disk(e) => write!(f, "re-creating a disk: {e}"),
        }
    }
}

impl std::error::Error for ResetError {}

/// A handle to one simulated Xen. Cheap to clone; all clones share the
/// hypervisor. `Send + Sync`.
#[derive(Clone)]
pub struct SimXen {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for SimXen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimXen")
            .field("threaded", &self.is_threaded())
            .field("now_ns", &self.now_ns())
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) config: SimConfig,
    pub(super) state: Mutex<State>,
    pub(super) devices: Mutex<DeviceTable>,
    /// Generation counter bumped on every event; waiters sleep on `cv`.
    wake: Mutex<u64>,
    cv: Condvar,
    clock: Clock,
    runner: Mutex<Option<JoinHandle<()>>>,
    stop: AtomicBool,
}

enum Clock {
    /// Step mode: nanoseconds that only move when a wait finds nothing to do.
    Virtual(AtomicU64),
    /// Threaded mode: real time since creation.
    Real(Instant),
}

/// Everything the hypervisor state lock protects.
pub(super) struct State {
    pub(super) config: SimConfig,
    pub(super) domains: BTreeMap<DomId, Domain>,
    pub(super) memory: Memory,
}

/// One domain, created the first time anything names it.
pub(super) struct Domain {
    /// The v1 grant table the guest writes; shared with its `SimHal`s.
    pub(super) table: Arc<[GrantEntry]>,
    /// Xen's "active grant" entries: pins of this domain's grants.
    pub(super) active: BTreeMap<u32, Active>,
    pub(super) ports: Vec<PortSlot>,
    pub(super) pages: usize,
    pub(super) page_limit: Option<usize>,
    pub(super) bad_frees: u64,
    pub(super) leaked_pages: usize,
    pub(super) mappings_held: usize,
}

impl State {
    /// The domain `id`, created with an empty grant table on first use.
    pub(super) fn domain(&mut self, id: DomId) -> &mut Domain {
        let frames = self.config.grant_frames;
        self.domains.entry(id).or_insert_with(|| Domain {
            table: (0..frames * ENTRIES_PER_FRAME)
                .map(|_| GrantEntry::default())
                .collect(),
            active: BTreeMap::new(),
            ports: Vec::new(),
            pages: 0,
            page_limit: None,
            bad_frees: 0,
            leaked_pages: 0,
            mappings_held: 0,
        })
    }
}

/// One run of pages from `alloc_pages`. Keeps the pointer returned by the
/// allocator (with its provenance) so every access and the final `dealloc`
/// derive from it; gfns are synthetic, never derived from addresses.
pub(super) struct Region {
    ptr: NonNull<u8>,
    count: usize,
    owner: DomId,
    /// False once freed with a fault: the memory is kept (leaked) until the
    /// whole simulator is dropped, because someone may still use it.
    live: bool,
    /// Per page: how many mappings or copies by other domains pin it.
    maps: Vec<u32>,
}

// SAFETY: `Region` only records where memory is; the memory itself is plain
// bytes owned by the simulator, and every access goes through the state lock
// or a `GrantMapping`, which keeps the region alive.
unsafe impl Send for Region {}

/// The page registry, keyed by first gfn.
pub(super) struct Memory {
    regions: BTreeMap<u64, Region>,
    /// Live regions by start address, for `gfn_of`.
    by_addr: BTreeMap<usize, u64>,
    next_gfn: u64,
    /// Regions taken out of the registry by [`SimXen::reset`] while a
    /// `Pages` may still name them: kept allocated (and unreachable through
    /// any gfn) until the simulator is dropped, like leaked regions.
    retired: Vec<Region>,
}

/// The first synthetic gfn: well away from 0 so a zeroed entry never names
/// a real frame.
const FIRST_GFN: u64 = 0x1_0000;

impl Memory {
    fn region(&self, gfn: u64) -> Option<(u64, &Region)> {
        let (&start, r) = self.regions.range(..=gfn).next_back()?;
        (gfn - start < r.count as u64).then_some((start, r))
    }

    /// The address of frame `gfn` if it is live memory owned by `owner`.
    pub(super) fn frame_ptr(&self, owner: DomId, gfn: u64) -> Option<NonNull<u8>> {
        let (start, r) = self.region(gfn)?;
        if !r.live || r.owner != owner {
            return None;
        }
        let off = usize::try_from(gfn - start).ok()? * PAGE_SIZE;
        // SAFETY: `gfn - start < count`, so the offset stays inside the
        // allocation of `count * PAGE_SIZE` bytes.
        Some(unsafe { r.ptr.add(off) })
    }

    /// Adds `delta` (+1 or -1) to the mapping count of frame `gfn`.
    pub(super) fn add_map(&mut self, gfn: u64, delta: i32) {
        let Some((&start, r)) = self.regions.range_mut(..=gfn).next_back() else {
            return;
        };
        if let Some(m) = usize::try_from(gfn - start)
            .ok()
            .and_then(|i| r.maps.get_mut(i))
        {
            *m = m.saturating_add_signed(delta);
        }
    }

    fn mapped_pages_of(&self, owner: DomId) -> usize {
        self.regions
            .values()
            .filter(|r| r.live && r.owner == owner)
            .map(|r| r.maps.iter().filter(|&&m| m > 0).count())
            .sum()
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        for r in self.regions.values().chain(&self.retired) {
            if r.live {
                // Still owned by a `Pages` somewhere: leave it valid.
                continue;
            }
            // SAFETY: a region that is not live was given back by its owner
            // (who promised not to use it again); the last mapping died with
            // the last `SimXen` clone, which is being dropped now. `ptr` and
            // the layout are exactly what `alloc_zeroed` got.
            unsafe { alloc::dealloc(r.ptr.as_ptr(), page_layout(r.count)) }
        }
    }
}

fn page_layout(count: usize) -> Layout {
    // `alloc_pages` checked that this size is representable.
    Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).unwrap_or(Layout::new::<u8>())
}

/// Locks, recovering the data of a mutex poisoned by a panicking test thread.
pub(super) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for SimXen {
    fn default() -> Self {
        SimXen::new()
    }
}

impl SimXen {
    /// A deterministic simulator in step mode: devices only run when guest
    /// code waits (or a test calls [`step`](SimXen::step)), and the clock is
    /// virtual.
    pub fn new() -> SimXen {
        SimXen::with_config(SimConfig::default(), false)
    }

    /// A simulator in threaded mode: devices run on a background thread and
    /// the clock is real time. [`stop_threads`](SimXen::stop_threads) ends the
    /// thread; it also ends on its own once every handle is dropped.
    pub fn new_threaded() -> SimXen {
        SimXen::with_config(SimConfig::default(), true)
    }

    /// A simulator with explicit tunables, in step or threaded mode.
    pub fn with_config(config: SimConfig, threaded: bool) -> SimXen {
        let clock = if threaded {
            Clock::Real(Instant::now())
        } else {
            Clock::Virtual(AtomicU64::new(0))
        };
        let xen = SimXen {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    config,
                    domains: BTreeMap::new(),
                    memory: Memory {
                        regions: BTreeMap::new(),
                        by_addr: BTreeMap::new(),
                        next_gfn: FIRST_GFN,
                        retired: Vec::new(),
                    },
                }),
                devices: Mutex::new(DeviceTable::default()),
                wake: Mutex::new(0),
                cv: Condvar::new(),
                clock,
                runner: Mutex::new(None),
                stop: AtomicBool::new(false),
            }),
        };
        if threaded {
            let weak = Arc::downgrade(&xen.inner);
            let handle = std::thread::Builder::new()
                .name("xenblk-sim".into())
                .spawn(move || run_devices(weak));
            match handle {
                Ok(h) => *lock(&xen.inner.runner) = Some(h),
                Err(e) => log::error!("sim: cannot start the device thread: {e}"),
            }
        }
        xen
    }

    /// The tunables this simulator was made with.
    pub fn config(&self) -> SimConfig {
        self.inner.config
    }

    /// Whether devices run on a background thread.
    pub fn is_threaded(&self) -> bool {
        matches!(self.inner.clock, Clock::Real(_))
    }

    /// Stops the device thread of threaded mode and waits for it. Devices are
    /// then only run by explicit [`step`](SimXen::step) calls.
    pub fn stop_threads(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.wake();
        let handle = lock(&self.inner.runner).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() && h.join().is_err() {
                log::error!("sim: the device thread panicked");
            }
        }
    }

    /// The platform seam for guest code running as `domid`.
    pub fn hal(&self, domid: DomId) -> SimHal {
        let table = Arc::clone(&self.state().domain(domid).table);
        SimHal::new(self.clone(), domid, table)
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    // ----- memory ---------------------------------------------------------------

    /// Limits the live pages of `domid` (None: no limit), to test allocation
    /// failure.
    pub fn set_page_limit(&self, domid: DomId, limit: Option<usize>) {
        self.state().domain(domid).page_limit = limit;
    }

    pub(super) fn alloc_pages(&self, domid: DomId, count: usize) -> Result<Pages, HalError> {
        let bytes = count.checked_mul(PAGE_SIZE).ok_or(HalError::OutOfMemory)?;
        let layout =
            Layout::from_size_align(bytes, PAGE_SIZE).map_err(|_| HalError::OutOfMemory)?;
        if count == 0 {
            return Err(HalError::OutOfMemory);
        }
        let mut st = self.state();
        let dom = st.domain(domid);
        if dom.page_limit.is_some_and(|l| dom.pages + count > l) {
            return Err(HalError::OutOfMemory);
        }
        let gfn = st.memory.next_gfn;
        // v1 grant entries carry 32-bit frames.
        if gfn + count as u64 > u64::from(u32::MAX) {
            return Err(HalError::OutOfMemory);
        }
        // SAFETY: the layout has a non-zero size (count >= 1).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(HalError::OutOfMemory)?;
        st.memory.next_gfn += count as u64;
        st.memory.by_addr.insert(ptr.as_ptr().addr(), gfn);
        st.memory.regions.insert(
            gfn,
            Region {
                ptr,
                count,
                owner: domid,
                live: true,
                maps: vec![0; count],
            },
        );
        st.domain(domid).pages += count;
        // SAFETY: fresh zeroed, page-aligned memory of `count` pages that
        // only this `Pages` hands out; page i has gfn `gfn + i`; it stays
        // allocated until `free_pages` (or forever, if that free is refused).
        Ok(unsafe { Pages::new(ptr, Gfn(gfn), count) })
    }

    pub(super) fn free_pages(&self, domid: DomId, pages: Pages) {
        let mut st = self.state();
        let State {
            domains, memory, ..
        } = &mut *st;
        let start = pages.gfn().0;
        let known = memory.regions.get(&start).is_some_and(|r| {
            r.live && r.owner == domid && r.ptr == pages.as_non_null() && r.count == pages.count()
        });
        let Some(dom) = domains.get_mut(&domid).filter(|_| known) else {
            log::error!(
                "sim: d{} freed pages it does not own (gfn {start:#x})",
                domid.0
            );
            if let Some(d) = domains.get_mut(&domid) {
                d.bad_frees += 1;
            }
            return;
        };
        let end = start + pages.count() as u64;
        let granted = dom.table.iter().any(|e| {
            e.flags.load(Ordering::Acquire) & grant::GTF_TYPE_MASK != 0
                && (start..end).contains(&u64::from(e.frame.load(Ordering::Relaxed)))
        });
        let Some(region) = memory.regions.get_mut(&start) else {
            return;
        };
        let mapped = region.maps.iter().any(|&m| m > 0);
        dom.pages -= region.count;
        memory.by_addr.remove(&region.ptr.as_ptr().addr());
        if granted || mapped {
            log::error!(
                "sim: d{} freed gfn {start:#x}+{} while it is {}; leaking it",
                domid.0,
                region.count,
                if mapped {
                    "mapped by another domain"
                } else {
                    "still granted"
                }
            );
            region.live = false;
            dom.bad_frees += 1;
            dom.leaked_pages += region.count;
            return;
        }
        if let Some(r) = memory.regions.remove(&start) {
            // SAFETY: the region is live, owned by the caller, matches the
            // `Pages` token exactly, and nobody maps or may map it (no grant
            // entry names it, no mapping pins it). Pointer and layout are the
            // ones `alloc_zeroed` used.
            unsafe { alloc::dealloc(r.ptr.as_ptr(), page_layout(r.count)) }
        }
    }

    pub(super) fn gfn_of(&self, domid: DomId, vaddr: *const u8) -> Option<Gfn> {
        let st = self.state();
        let addr = vaddr.addr();
        let (&base, &gfn) = st.memory.by_addr.range(..=addr).next_back()?;
        let (_, r) = st.memory.region(gfn)?;
        let page = (addr - base) / PAGE_SIZE;
        (r.live && r.owner == domid && page < r.count).then(|| Gfn(gfn + page as u64))
    }

    // ----- accounting -----------------------------------------------------------

    /// What `domid` holds right now.
    pub fn accounting(&self, domid: DomId) -> Accounting {
        let mut st = self.state();
        let dom = st.domain(domid);
        Accounting {
            pages: dom.pages,
            grants_active: dom
                .table
                .iter()
                .skip(GNTTAB_RESERVED)
                .filter(|e| e.flags.load(Ordering::Acquire) & grant::GTF_TYPE_MASK != 0)
                .count(),
            grants_mapped_by_others: dom.active.len(),
            mappings_held: dom.mappings_held,
            ports_open: dom.ports.iter().filter(|p| p.is_open()).count(),
            bad_frees: dom.bad_frees,
            leaked_pages: dom.leaked_pages,
        }
    }

    /// [`Accounting::bad_frees`] of `domid` alone: unlike
    /// [`accounting`](Self::accounting) it does not scan the grant table,
    /// so a harness can check it after every step.
    pub fn bad_frees(&self, domid: DomId) -> u64 {
        self.state().domains.get(&domid).map_or(0, |d| d.bad_frees)
    }

    /// How many pages owned by `domid` other domains currently map.
    pub fn pages_mapped_by_others(&self, domid: DomId) -> usize {
        self.state().memory.mapped_pages_of(domid)
    }

    // ----- reuse ----------------------------------------------------------------

    /// Puts a step-mode simulator back into the state [`SimXen::with_config`]
    /// made it in (same [`SimConfig`]), so that one simulator can serve run
    /// after run (a fuzzer's inputs) and each run starts exactly as on a new
    /// one: no devices (the next one added gets the first id again), no
    /// domains (grant tables, ports, page limits and counters are made
    /// afresh on first use), no pages (gfns are handed out from the first
    /// one again), and the clock at 0.
    ///
    /// First every device is taken out of the simulator and the simulator's
    /// references to them dropped (devices added with
    /// [`add_weak_device`](Self::add_weak_device) live on while their handles
    /// do, but are no longer stepped). Then, if no domain maps another's
    /// memory, the rest is wiped. A region given back by its owner (a
    /// refused free) is freed now; a region still owned (a `Pages` value
    /// never given back, e.g. leaked by a dropped grant-table quarantine)
    /// stays allocated until the simulator is dropped but leaves the
    /// registry: its gfns may be handed out again, and a later free of it is
    /// refused (and counted in `bad_frees`).
    ///
    /// Returns how many pages were still owned and so retired.
    ///
    /// # Errors
    ///
    /// [`ResetError::Threaded`] in threaded mode (nothing changes);
    /// [`ResetError::StillMapped`] while a mapping ([`GrantMapping`] or the
    /// pin of a grant copy) is alive, e.g. held by a device handle someone
    /// kept: the devices are gone then, everything else is as it was.
    ///
    /// [`GrantMapping`]: super::GrantMapping
    pub fn reset(&self) -> Result<usize, ResetError> {
        if self.is_threaded() {
            return Err(ResetError::Threaded);
        }
        // Dropped outside the lock: a device's drop may call the simulator.
        let devices = core::mem::take(&mut *lock(&self.inner.devices));
        drop(devices);
        let mut st = self.state();
        if let Some((&id, d)) = st
            .domains
            .iter()
            .find(|(_, d)| d.mappings_held > 0 || !d.active.is_empty())
        {
            let n = d.mappings_held.max(d.active.len());
            return Err(ResetError::StillMapped(id, n));
        }
        if st
            .memory
            .regions
            .values()
            .any(|r| r.maps.iter().any(|&m| m > 0))
        {
            return Err(ResetError::StillMapped(DomId::DOM0, 0));
        }
        let mut retired_pages = 0;
        let memory = &mut st.memory;
        for (_, r) in core::mem::take(&mut memory.regions) {
            if r.live {
                retired_pages += r.count;
                memory.retired.push(r);
            } else {
                // SAFETY: a region that is not live was given back by its
                // owner, who promised not to use it again, and no mapping
                // pins any of its pages (checked above: every count is 0,
                // and no domain holds a mapping). Pointer and layout are the
                // ones `alloc_zeroed` used.
                unsafe { alloc::dealloc(r.ptr.as_ptr(), page_layout(r.count)) }
            }
        }
        memory.by_addr.clear();
        memory.next_gfn = FIRST_GFN;
        st.domains.clear();
        drop(st);
        if let Clock::Virtual(t) = &self.inner.clock {
            t.store(0, Ordering::SeqCst);
        }
        self.wake();
        Ok(retired_pages)
    }

    // ----- time and waiting -----------------------------------------------------

    /// Nanoseconds on the simulator's clock: virtual in step mode, real
    /// (since creation) in threaded mode.
    pub fn now_ns(&self) -> u64 {
        match &self.inner.clock {
            Clock::Virtual(t) => t.load(Ordering::SeqCst),
            Clock::Real(start) => u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Step mode: moves the virtual clock forward by `ns`. Threaded mode:
    /// does nothing (real time moves on its own).
    pub fn advance_clock(&self, ns: u64) {
        if let Clock::Virtual(t) = &self.inner.clock {
            t.fetch_add(ns, Ordering::SeqCst);
            self.wake();
        }
    }

    fn clock_to(&self, at: u64) {
        if let Clock::Virtual(t) = &self.inner.clock {
            t.fetch_max(at, Ordering::SeqCst);
        }
    }

    /// Wakes every waiter (and the device thread) to re-check its condition.
    pub(super) fn wake(&self) {
        let mut g = lock(&self.inner.wake);
        *g = g.wrapping_add(1);
        // Only threaded mode sleeps on the condition variable; in step mode
        // a notification would be a system call for nobody.
        if self.is_threaded() {
            self.inner.cv.notify_all();
        }
    }

    /// Waits until `ready()` holds or `deadline` (on [`now_ns`](Self::now_ns))
    /// passes. This is how every simulated guest wait is built; simulated
    /// transports (xenstore rings) use it too.
    ///
    /// Step mode: steps the devices while they make progress; when they are
    /// idle, moves the clock to the earliest device wake-up before the
    /// deadline, or else to the deadline. Threaded mode: sleeps until woken by
    /// an event (or a short poll interval) and re-checks.
    ///
    /// # Errors
    ///
    /// [`HalError::Timeout`] when the deadline passes first, and also when
    /// nothing could ever make `ready()` true (step mode with no deadline and
    /// idle devices; threaded mode after [`SimConfig::unbounded_wait_ns`]).
    pub fn wait_until(
        &self,
        deadline: Option<u64>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), HalError> {
        if self.is_threaded() {
            return self.wait_threaded(deadline, ready);
        }
        let mut rounds = 0u64;
        loop {
            if ready() {
                return Ok(());
            }
            if rounds >= self.inner.config.max_steps_per_wait {
                log::error!("sim: devices kept busy for {rounds} rounds; giving up (livelock?)");
                return Err(HalError::Timeout);
            }
            rounds += 1;
            if self.step() {
                continue;
            }
            let now = self.now_ns();
            if let Some(t) = self.next_wakeup_ns() {
                if t > now && deadline.is_none_or(|d| t < d) {
                    self.clock_to(t);
                    continue;
                }
            }
            match deadline {
                Some(d) => self.clock_to(d),
                None => log::warn!("sim: waiting without deadline, but nothing can run"),
            }
            return if ready() {
                Ok(())
            } else {
                Err(HalError::Timeout)
            };
        }
    }

    fn wait_threaded(
        &self,
        deadline: Option<u64>,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), HalError> {
        let bound = deadline.unwrap_or_else(|| {
            self.now_ns()
                .saturating_add(self.inner.config.unbounded_wait_ns)
        });
        loop {
            let seen = *lock(&self.inner.wake);
            if ready() {
                return Ok(());
            }
            let now = self.now_ns();
            if now >= bound {
                if deadline.is_none() {
                    log::error!("sim: unbounded wait gave up after {} ns", now);
                }
                return Err(HalError::Timeout);
            }
            let nap = Duration::from_nanos((bound - now).min(10_000_000));
            let g = lock(&self.inner.wake);
            if *g == seen {
                let _ = self
                    .inner
                    .cv
                    .wait_timeout(g, nap)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

/// The device thread of threaded mode. Holds only a weak reference between
/// rounds, so dropping every `SimXen` ends it.
fn run_devices(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.stop.load(Ordering::SeqCst) {
            return;
        }
        let xen = SimXen { inner };
        let seen = *lock(&xen.inner.wake);
        if xen.step() {
            continue;
        }
        let now = xen.now_ns();
        let nap = xen
            .next_wakeup_ns()
            .map_or(2_000_000, |t| t.saturating_sub(now).min(2_000_000));
        let g = lock(&xen.inner.wake);
        if *g == seen && nap > 0 {
            let _ = xen
                .inner
                .cv
                .wait_timeout(g, Duration::from_nanos(nap))
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::{GrantRef, Hal, Port};
    use crate::sim::{SimDevice, SimHal};

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;

    /// A backend that answers every event on its port with one event back,
    /// `delay_ns` after it arrived.
    struct Echo {
        port: Port,
        delay_ns: u64,
        due: Option<u64>,
        answered: u32,
    }

    impl SimDevice for Echo {
        fn step(&mut self, xen: &SimXen) -> bool {
            if xen.consume(BACK, self.port) {
                self.due = Some(xen.now_ns() + self.delay_ns);
                return true;
            }
            match self.due {
                Some(t) if t <= xen.now_ns() => {
                    self.due = None;
                    self.answered += 1;
                    xen.send(BACK, self.port).is_ok()
                }
                _ => false,
            }
        }
        fn name(&self) -> &str {
            "echo"
        }
        fn next_wakeup_ns(&self) -> Option<u64> {
            self.due
        }
    }

    fn pair(xen: &SimXen) -> (SimHal, Port, Port) {
        let hal = xen.hal(FRONT);
        let front = hal.evtchn_alloc_unbound(BACK).unwrap();
        let back = xen.bind_interdomain(BACK, FRONT, front).unwrap();
        assert!(xen.consume(BACK, back), "bind leaves the new port pending");
        (hal, front, back)
    }

    #[test]
    fn pages_are_zeroed_aligned_and_have_contiguous_gfns() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let a = hal.alloc_pages(3).unwrap();
        let b = hal.alloc_pages(1).unwrap();
        assert_eq!(a.as_ptr().addr() % PAGE_SIZE, 0);
        // SAFETY: our own live pages, `len` bytes.
        let bytes = unsafe { std::slice::from_raw_parts(a.as_ptr(), a.len()) };
        assert!(bytes.iter().all(|&x| x == 0));
        assert_eq!(b.gfn().0, a.gfn().0 + 3, "gfns come from one counter");

        // SAFETY: in bounds of `a`.
        let inside = unsafe { a.as_ptr().add(PAGE_SIZE + 5) };
        assert_eq!(hal.gfn_of(inside), a.page_gfn(1));
        assert_eq!(xen.hal(BACK).gfn_of(inside), None, "not BACK's memory");
        assert_eq!(hal.gfn_of(&0u8), None);
        assert_eq!(xen.accounting(FRONT).pages, 4);

        let a_ptr = a.as_ptr();
        // SAFETY: no grants, no further use.
        unsafe { hal.free_pages(a) };
        assert_eq!(hal.gfn_of(a_ptr), None);
        // SAFETY: as above.
        unsafe { hal.free_pages(b) };
        assert_eq!(xen.accounting(FRONT), Accounting::default());
    }

    #[test]
    fn page_limit_makes_allocation_fail() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        xen.set_page_limit(FRONT, Some(2));
        assert_eq!(hal.alloc_pages(3).unwrap_err(), HalError::OutOfMemory);
        assert_eq!(hal.alloc_pages(0).unwrap_err(), HalError::OutOfMemory);
        let p = hal.alloc_pages(2).unwrap();
        // SAFETY: no grants, no further use.
        unsafe { hal.free_pages(p) };
    }

    #[test]
    fn freeing_granted_or_mapped_pages_is_caught_and_leaked() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let granted = hal.alloc_pages(1).unwrap();
        let mapped = hal.alloc_pages(1).unwrap();
        let e = &hal.grant_table()[9];
        e.domid.store(BACK.0, Ordering::Relaxed);
        e.frame.store(mapped.gfn().0 as u32, Ordering::Relaxed);
        e.flags.store(grant::GTF_PERMIT_ACCESS, Ordering::Release);
        let map = xen.map_grant(BACK, FRONT, GrantRef(9), false).unwrap();
        let e8 = &hal.grant_table()[8];
        e8.frame.store(granted.gfn().0 as u32, Ordering::Relaxed);
        e8.flags.store(grant::GTF_PERMIT_ACCESS, Ordering::Release);

        // SAFETY: this free is the bug the simulator must survive: it is
        // refused and the memory stays allocated, so nothing dangles.
        unsafe { hal.free_pages(granted) };
        e8.flags.store(0, Ordering::Release);
        e.flags
            .fetch_and(!grant::GTF_PERMIT_ACCESS, Ordering::Release);
        // SAFETY: as above.
        unsafe { hal.free_pages(mapped) };
        let acct = xen.accounting(FRONT);
        assert_eq!((acct.pages, acct.bad_frees, acct.leaked_pages), (0, 2, 2));

        // The backend's mapping still works on the leaked page.
        map.write(0, b"ok").unwrap();
        drop(map);

        // Pages another domain made are not ours to free.
        let theirs = xen.hal(BACK).alloc_pages(1).unwrap();
        // SAFETY: refused by the simulator, so the memory stays valid.
        unsafe { hal.free_pages(theirs) };
        assert_eq!(xen.accounting(FRONT).bad_frees, 3);
        assert_eq!(xen.accounting(BACK).pages, 1, "still BACK's");
        // BACK can still free it (and must, for Miri's leak check).
        let theirs_gfn = Gfn(xen.state().memory.next_gfn - 1);
        let ptr = xen.state().memory.frame_ptr(BACK, theirs_gfn.0).unwrap();
        // SAFETY: exactly the run BACK allocated above: live, one page, and
        // the first `Pages` was consumed by the refused free.
        let theirs = unsafe { Pages::new(ptr, theirs_gfn, 1) };
        // SAFETY: no grants, no further use.
        unsafe { xen.hal(BACK).free_pages(theirs) };
        assert_eq!(xen.accounting(BACK).pages, 0);
    }

    #[test]
    fn a_reset_frees_what_was_given_back_and_waits_for_mappings() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let kept = hal.alloc_pages(1).unwrap();
        let e = &hal.grant_table()[9];
        e.domid.store(BACK.0, Ordering::Relaxed);
        e.frame.store(kept.gfn().0 as u32, Ordering::Relaxed);
        e.flags.store(grant::GTF_PERMIT_ACCESS, Ordering::Release);
        let map = xen.map_grant(BACK, FRONT, GrantRef(9), false).unwrap();
        e.flags
            .fetch_and(!grant::GTF_PERMIT_ACCESS, Ordering::Release);
        // SAFETY: refused (the page is mapped), so the memory stays valid
        // for the mapping; it is given back, for the reset to free.
        unsafe { hal.free_pages(kept) };
        let (hal2, front, _) = pair(&xen);
        xen.advance_clock(5);
        assert_eq!(xen.accounting(FRONT).bad_frees, 1);
        assert_eq!(xen.reset(), Err(ResetError::StillMapped(BACK, 1)));
        assert_eq!(xen.accounting(FRONT).bad_frees, 1, "nothing wiped");
        map.write(0, b"still mapped").unwrap();
        drop(map);
        assert_eq!(xen.reset(), Ok(0), "the leaked page is freed, none retired");
        assert_eq!(xen.now_ns(), 0);
        assert_eq!(xen.accounting(FRONT), Accounting::default());
        assert_eq!(xen.accounting(BACK), Accounting::default());
        // A port from before names nothing now; numbering starts again.
        assert_eq!(
            hal2.evtchn_notify(front),
            Err(HalError::InvalidPort(front.0))
        );
        let hal = xen.hal(FRONT);
        let p = hal.alloc_pages(1).unwrap();
        assert_eq!(p.gfn(), Gfn(FIRST_GFN), "gfns start again");
        assert_eq!(hal.evtchn_alloc_unbound(BACK), Ok(Port(1)));
        // SAFETY: no grants, no further use.
        unsafe { hal.free_pages(p) };
        let threaded = SimXen::new_threaded();
        assert_eq!(threaded.reset(), Err(ResetError::Threaded));
        threaded.stop_threads();
    }

    #[test]
    fn step_mode_runs_devices_and_moves_virtual_time() {
        let xen = SimXen::new();
        let (hal, front, back) = pair(&xen);
        let echo = xen.add_device(Echo {
            port: back,
            delay_ns: 5_000,
            due: None,
            answered: 0,
        });
        assert_eq!(xen.devices(), vec![(echo.id(), "echo".to_string())]);

        hal.evtchn_notify(front).unwrap();
        assert_eq!(hal.evtchn_wait(&[front], Some(1_000_000)), Ok(()));
        assert_eq!(
            xen.now_ns(),
            5_000,
            "clock moved to the device's wake-up only"
        );
        assert!(hal.evtchn_consume(front));
        assert_eq!(echo.lock().answered, 1);

        // Nothing pending, nothing runnable: the deadline is reached exactly.
        assert_eq!(
            hal.evtchn_wait(&[front], Some(50_000)),
            Err(HalError::Timeout)
        );
        assert_eq!(xen.now_ns(), 50_000);
        // Without a deadline a deadlock ends in a timeout, not a hang.
        assert_eq!(hal.evtchn_wait(&[front], None), Err(HalError::Timeout));
        assert_eq!(xen.now_ns(), 50_000);

        // A slow device past the deadline: timeout at the deadline.
        echo.lock().delay_ns = 1_000_000;
        hal.evtchn_notify(front).unwrap();
        assert_eq!(
            hal.evtchn_wait(&[front], Some(60_000)),
            Err(HalError::Timeout)
        );
        assert_eq!(xen.now_ns(), 60_000);
        assert_eq!(hal.evtchn_wait(&[front], None), Ok(()));
        assert_eq!(xen.now_ns(), 1_050_000);

        assert!(xen.remove_device(echo.id()));
        assert!(!xen.remove_device(echo.id()));
        assert!(!xen.step());
    }

    #[test]
    fn a_locked_device_is_skipped_not_deadlocked() {
        let xen = SimXen::new();
        let (hal, front, back) = pair(&xen);
        let echo = xen.add_device(Echo {
            port: back,
            delay_ns: 0,
            due: None,
            answered: 0,
        });
        hal.evtchn_notify(front).unwrap();
        {
            let _held = echo.lock();
            assert_eq!(hal.evtchn_wait(&[front], Some(10)), Err(HalError::Timeout));
        }
        assert_eq!(hal.evtchn_wait(&[front], Some(20)), Ok(()));
        assert_eq!(xen.run_until_idle(), 0);
    }

    #[test]
    fn a_livelocked_device_is_cut_off() {
        struct Busy;
        impl SimDevice for Busy {
            fn step(&mut self, _: &SimXen) -> bool {
                true
            }
            fn name(&self) -> &str {
                "busy"
            }
        }
        let config = SimConfig {
            max_steps_per_wait: 50,
            ..SimConfig::default()
        };
        let xen = SimXen::with_config(config, false);
        xen.add_device(Box::new(Busy) as Box<dyn SimDevice>);
        assert_eq!(xen.wait_until(None, || false), Err(HalError::Timeout));
        assert_eq!(xen.run_until_idle(), 50);
    }

    #[test]
    fn advance_clock_moves_only_virtual_time() {
        let xen = SimXen::new();
        xen.advance_clock(7);
        assert_eq!(xen.now_ns(), 7);
        assert_eq!(xen.hal(FRONT).now_ns(), 7);
        assert!(!xen.is_threaded());
    }
}
