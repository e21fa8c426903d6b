//! `pvh`: [`Hal`] on real Xen, from a PVH guest.
//!
//! The only module that talks to the hypervisor, and the only user of
//! xen-sys (see [`hypercall`] for the contract of its raw wrappers and which
//! of them are sound to use). It assumes what the example unikernel
//! provides: x86_64 long mode on `x86_64-unknown-none` (no red zone), all
//! memory below 4 GiB identity-mapped (guest-virtual == guest-physical, so a
//! guest frame number is `address >> 12`), a global allocator, and no
//! interrupts: every event-channel port stays masked, upcalls are never
//! enabled, and waits are `SCHEDOP_poll` with a timeout.
//!
//! Bring-up ([`Xen::init`]):
//! 1. CPUID `0x4000_0000 + n*0x100` finds Xen ([`hypercall::detect`]); leaf
//!    `base + 2` names the MSR that makes Xen fill the hypercall page;
//! 2. `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)` places the
//!    `shared_info` page over a page of our own heap (`memory.h`); all
//!    event-channel ports are masked there (`xen.h`, "Event channels");
//! 3. `GNTTABOP_query_size` and `XENMAPSPACE_grant_table` map up to
//!    [`MAX_GRANT_FRAMES`] frames of the version-1 grant table the same way
//!    (`grant_table.h`);
//! 4. `HVMOP_get_param` reads the xenstore and console pages and ports
//!    (`hvm/params.h`).
//!
//! Time ([`Hal::now_ns`]) is Xen system time, computed from `vcpu_time_info`
//! in `shared_info` (`xen.h`, "Current system time"), which is also the clock
//! of `SCHEDOP_poll`'s absolute timeout.

pub mod hypercall;

mod console;

use core::alloc::Layout;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use crate::abi::event_channel::{
    EVTCHNOP_alloc_unbound, EVTCHNOP_bind_interdomain, EVTCHNOP_close, EVTCHNOP_send,
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnClose, EvtchnSend, EVTCHN_2L_NR_CHANNELS,
};
use crate::abi::grant::{GNTST_okay, GNTTABOP_query_size, GnttabQuerySize};
use crate::abi::hvm::{
    HVMOP_get_param, XenHvmParam, HVM_PARAM_CONSOLE_EVTCHN, HVM_PARAM_CONSOLE_PFN,
    HVM_PARAM_STORE_EVTCHN, HVM_PARAM_STORE_PFN,
};
use crate::abi::memory::{
    XENMAPSPACE_grant_table, XENMAPSPACE_shared_info, XENMEM_add_to_physmap, XenAddToPhysmap,
};
use crate::abi::sched::{
    SCHEDOP_poll, SCHEDOP_shutdown, SHUTDOWN_crash, SHUTDOWN_poweroff, SHUTDOWN_reboot, SchedPoll,
    SchedShutdown,
};
use crate::abi::shared_info::{SharedInfo, XenconsInterface};
use crate::abi::xen::{
    __HYPERVISOR_event_channel_op, __HYPERVISOR_grant_table_op, __HYPERVISOR_hvm_op,
    __HYPERVISOR_memory_op, __HYPERVISOR_sched_op,
};
use crate::abi::xs_wire::XenstoreDomainInterface;
use crate::hal::{DomId, Gfn, GrantEntry, Hal, HalError, Pages, Port, PAGE_SIZE};
use crate::xenstore::{RingTransport, XenStore, XsError};
use crate::Result;

use console::ConsoleRing;
use hypercall::{check, hypercall3, op_with_arg};
pub use hypercall::{detect, XenCpuid, XEN_CPUID_SIGNATURE};

/// Ports of the 2-level event-channel ABI, as a `u32` like [`Port`]'s value.
const NR_PORTS: u32 = EVTCHN_2L_NR_CHANNELS as u32;

/// At most this many grant-table frames are mapped (512 version-1 entries
/// each). The toolstack's default limit (`max_grant_frames`) is 32 too.
pub const MAX_GRANT_FRAMES: u32 = 32;

/// Highest guest frame the identity map covers (4 GiB).
const IDENTITY_MAPPED_FRAMES: u64 = 1 << 20;

/// `SCHEDOP_poll` refuses more ports than this (`sched.h`, 128 in Xen).
const POLL_MAX_PORTS: usize = 128;

/// Why the domain shuts down (`sched.h`, `enum sched_shutdown_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`: finished.
    Poweroff,
    /// `SHUTDOWN_reboot`: the toolstack builds the domain again (`xl
    /// reboot`, or `on_reboot` in the xl config).
    Reboot,
    /// `SHUTDOWN_crash`: something went wrong (a panic).
    Crash,
}

/// The hypervisor's version, e.g. `4.17.7`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// `XENVER_extraversion`, NUL-padded (e.g. `".7"`).
    pub extra: [u8; 16],
}

impl fmt::Display for XenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        for &b in self.extra.iter().take_while(|&&b| b != 0) {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Xen, as seen from this PVH guest: the [`Hal`] of the real platform.
///
/// One exists per domain, made by [`Xen::init`] and kept in a static.
#[derive(Debug)]
pub struct Xen {
    cpuid: XenCpuid,
    version: XenVersion,
    shared: NonNull<SharedInfo>,
    grant_table: NonNull<GrantEntry>,
    grant_frames: u32,
    store: Option<(NonNull<XenstoreDomainInterface>, Port)>,
    console: Option<ConsoleRing>,
    /// Set once the xenstore page has been handed to a transport.
    store_taken: AtomicBool,
    /// The highest time handed out, so [`Hal::now_ns`] never goes back.
    last_ns: AtomicU64,
}

// SAFETY: the pointers lead to pages shared with Xen and other domains that
// live for the rest of the run; every access through them is atomic or
// volatile, and the console ring is behind its own lock.
unsafe impl Send for Xen {}
// SAFETY: as above.
unsafe impl Sync for Xen {}

static XEN: spin::Once<Xen> = spin::Once::new();

// A disk on real Xen can live in a static or move to another CPU's thread:
// `Xen` is `Sync` (it lives in the static above), so the xenstore ring
// transport and the whole `BlockFront` over it are `Send`.
const _: () = {
    const fn send<T: Send>() {}
    send::<crate::blkfront::BlockFront<'static, Xen, RingTransport<'static, Xen>>>();
    send::<crate::blkfront::SharedStore<RingTransport<'static, Xen>>>();
};
/// Set once the hypercall page is filled.
static HYPERCALLS_READY: AtomicBool = AtomicBool::new(false);

/// `SCHEDOP_shutdown` without a [`Xen`] (a bring-up that failed half-way,
/// or a panic before it): sets up the hypercall page first if Xen is there
/// and it is not set up yet. Does not return under Xen; returns without Xen,
/// and the caller must find another way out.
///
/// # Safety
///
/// As for [`Xen::init`]: a PVH guest with memory identity-mapped.
pub unsafe fn shutdown_early(reason: ShutdownReason) {
    if !HYPERCALLS_READY.load(Ordering::Acquire) {
        let Ok(cpuid) = detect() else {
            return;
        };
        // SAFETY: the caller's promise; a second fill of the page (after a
        // half-done `init`) writes the same stubs.
        if unsafe { hypercall::init_hypercall_page(cpuid) }.is_err() {
            return;
        }
        HYPERCALLS_READY.store(true, Ordering::Release);
    }
    let mut arg = SchedShutdown::new(match reason {
        ShutdownReason::Poweroff => SHUTDOWN_poweroff,
        ShutdownReason::Reboot => SHUTDOWN_reboot,
        ShutdownReason::Crash => SHUTDOWN_crash,
    });
    for _ in 0..3 {
        // SAFETY: the hypercall page is set up; `arg` is the struct
        // SCHEDOP_shutdown takes. It does not return on success.
        let _ = unsafe { op_with_arg(__HYPERVISOR_sched_op, SCHEDOP_shutdown, &mut arg) };
    }
}

/// Allocates `count` zeroed pages from the global allocator, never freed.
fn leak_pages(count: usize) -> Result<NonNull<u8>, HalError> {
    let layout =
        Layout::from_size_align(count * PAGE_SIZE, PAGE_SIZE).map_err(|_| HalError::OutOfMemory)?;
    // SAFETY: `layout` has a non-zero size (callers pass count >= 1).
    NonNull::new(unsafe { alloc::alloc::alloc_zeroed(layout) }).ok_or(HalError::OutOfMemory)
}

/// `XENMEM_add_to_physmap`: places page `idx` of `space` at frame `gfn`.
///
/// # Safety
///
/// The hypercall page is set up, and `gfn` is a frame we own whose previous
/// content nobody uses any more (Xen replaces it).
unsafe fn add_to_physmap(space: u32, idx: u64, gfn: u64) -> Result<(), HalError> {
    let mut arg = XenAddToPhysmap::new(space, idx, Gfn(gfn));
    // SAFETY: forwarded; `arg` is the struct XENMEM_add_to_physmap takes.
    unsafe { op_with_arg(__HYPERVISOR_memory_op, XENMEM_add_to_physmap, &mut arg) }.map(drop)
}

/// `HVMOP_get_param` for this domain.
///
/// # Safety
///
/// The hypercall page is set up.
unsafe fn hvm_param(index: u32) -> Result<u64, HalError> {
    let mut arg = XenHvmParam::get(index);
    // SAFETY: forwarded; `arg` is the struct HVMOP_get_param takes.
    unsafe { op_with_arg(__HYPERVISOR_hvm_op, HVMOP_get_param, &mut arg) }?;
    Ok(arg.value)
}

/// Maps the grant table over freshly allocated pages; returns the table and
/// the number of frames mapped.
///
/// # Safety
///
/// The hypercall page is set up; memory is identity-mapped.
unsafe fn map_grant_table() -> Result<(NonNull<GrantEntry>, u32), HalError> {
    let mut q = GnttabQuerySize::new();
    // SAFETY: `q` is the struct GNTTABOP_query_size takes; count 1.
    check(unsafe {
        hypercall3(
            __HYPERVISOR_grant_table_op,
            GNTTABOP_query_size.into(),
            &mut q as *mut GnttabQuerySize as u64,
            1,
        )
    })?;
    if q.status != GNTST_okay {
        return Err(HalError::Hypercall(q.status.into()));
    }
    let frames = q
        .max_nr_frames
        .clamp(1, MAX_GRANT_FRAMES)
        .max(q.nr_frames.min(MAX_GRANT_FRAMES));
    let base = leak_pages(frames as usize)?;
    let gfn0 = base.as_ptr() as u64 >> 12;
    let mut mapped = 0;
    for i in 0..frames {
        // SAFETY: the page was just allocated for this and nobody uses it.
        match unsafe { add_to_physmap(XENMAPSPACE_grant_table, i.into(), gfn0 + u64::from(i)) } {
            Ok(()) => mapped += 1,
            Err(e) if i == 0 => return Err(e),
            Err(e) => {
                log::warn!("pvh: grant-table frame {i} not mapped ({e}); using {mapped}");
                break;
            }
        }
    }
    Ok((base.cast(), mapped))
}

impl Xen {
    /// Brings up the platform (see the module docs) once and returns it;
    /// later calls return the same platform.
    ///
    /// # Safety
    ///
    /// Runs on a PVH guest as the module docs describe: `x86_64-unknown-none`
    /// code, memory below 4 GiB identity-mapped (including the image and the
    /// whole heap), interrupts off, a global allocator; `cpuid` comes from
    /// [`detect`].
    ///
    /// # Errors
    ///
    /// [`HalError::Hypercall`] when Xen refuses a step, [`HalError::OutOfMemory`]
    /// when the heap cannot supply the pages to map Xen's frames over.
    pub unsafe fn init(cpuid: XenCpuid) -> Result<&'static Xen, HalError> {
        if let Some(xen) = XEN.get() {
            return Ok(xen);
        }
        // SAFETY: the caller's promises are the ones this needs.
        unsafe { hypercall::init_hypercall_page(cpuid) }?;
        HYPERCALLS_READY.store(true, Ordering::Release);
        // SAFETY: the hypercall page is set up from here on.
        let (major, minor) = unsafe { hypercall::xen_version() };
        // SAFETY: as above.
        let extra = unsafe { hypercall::xen_extraversion() };

        let shared = leak_pages(1)?;
        // SAFETY: a fresh page of ours.
        unsafe { add_to_physmap(XENMAPSPACE_shared_info, 0, shared.as_ptr() as u64 >> 12) }?;
        let shared: NonNull<SharedInfo> = shared.cast();
        // SAFETY: the page now is Xen's shared_info; all fields are atomics.
        let si = unsafe { shared.as_ref() };
        // No upcalls ever (`xen.h`, `vcpu_info.evtchn_upcall_mask`), and every
        // port masked: events only set pending bits and wake SCHEDOP_poll.
        si.vcpu_info[0]
            .evtchn_upcall_mask
            .store(1, Ordering::SeqCst);
        for word in &si.evtchn_mask {
            word.store(u64::MAX, Ordering::SeqCst);
        }

        // SAFETY: hypercall page set up; identity mapping promised.
        let (grant_table, grant_frames) = unsafe { map_grant_table() }?;

        // SAFETY: hypercall page set up.
        let store = match unsafe {
            (
                hvm_param(HVM_PARAM_STORE_PFN),
                hvm_param(HVM_PARAM_STORE_EVTCHN),
            )
        } {
            (Ok(pfn), Ok(port))
                if pfn != 0 && pfn < IDENTITY_MAPPED_FRAMES && port < u64::from(NR_PORTS) =>
            {
                NonNull::new((pfn << 12) as *mut XenstoreDomainInterface)
                    .map(|p| (p, Port(port as u32)))
            }
            _ => None,
        };
        // SAFETY: hypercall page set up.
        let console = match unsafe {
            (
                hvm_param(HVM_PARAM_CONSOLE_PFN),
                hvm_param(HVM_PARAM_CONSOLE_EVTCHN),
            )
        } {
            (Ok(pfn), Ok(port))
                if pfn != 0 && pfn < IDENTITY_MAPPED_FRAMES && port < u64::from(NR_PORTS) =>
            {
                NonNull::new((pfn << 12) as *mut XenconsInterface)
                    .map(|p| ConsoleRing::new(p, Port(port as u32)))
            }
            _ => None,
        };

        Ok(XEN.call_once(|| Xen {
            cpuid,
            version: XenVersion {
                major,
                minor,
                extra,
            },
            shared,
            grant_table,
            grant_frames,
            store,
            console,
            store_taken: AtomicBool::new(false),
            last_ns: AtomicU64::new(0),
        }))
    }

    /// The platform, if [`Xen::init`] succeeded.
    pub fn get() -> Option<&'static Xen> {
        XEN.get()
    }

    /// Where Xen's CPUID leaves are.
    pub fn cpuid(&self) -> XenCpuid {
        self.cpuid
    }

    /// The hypervisor's version.
    pub fn version(&self) -> XenVersion {
        self.version
    }

    /// Number of grant-table frames mapped ([`Hal::grant_table`] has 512
    /// entries per frame).
    pub fn grant_frames(&self) -> u32 {
        self.grant_frames
    }

    /// The xenstore page and its event channel (`HVM_PARAM_STORE_PFN`,
    /// `HVM_PARAM_STORE_EVTCHN`). The page lives for the rest of the run and
    /// is shared with xenstored: access it only with atomics (indices) and
    /// volatile copies (rings), and only if [`take_xenstore`](Xen::take_xenstore)
    /// was not used — one reader and one writer on our side.
    ///
    /// # Errors
    ///
    /// [`XsError::Connection`] when the toolstack gave this domain no
    /// usable xenstore page (absent, or above the identity map).
    pub fn xenstore_interface(&self) -> Result<(NonNull<XenstoreDomainInterface>, Port), XsError> {
        self.store.ok_or(XsError::Connection)
    }

    /// The xenstore connection of this domain: a [`XenStore`] client over a
    /// [`RingTransport`] on the page and port of
    /// [`xenstore_interface`](Xen::xenstore_interface). The page admits one
    /// reader and one writer, so this succeeds once per run; keep the
    /// client (e.g. share it behind a lock) rather than asking again.
    ///
    /// # Errors
    ///
    /// [`XsError::Connection`] without a usable xenstore page, or when the
    /// connection was already taken.
    pub fn take_xenstore(&self) -> Result<XenStore<RingTransport<'_, Xen>>, XsError> {
        let (iface, port) = self.xenstore_interface()?;
        if self.store_taken.swap(true, Ordering::AcqRel) {
            return Err(XsError::Connection);
        }
        // SAFETY: the page is xenstored's `xenstore_domain_interface` for this
        // domain, identity-mapped for the rest of the run (so for `'_`);
        // `store_taken` makes this transport its only user on our side;
        // `port` is our xenstore event channel (HVM_PARAM_STORE_EVTCHN).
        let transport = unsafe { RingTransport::new(self, iface, port) };
        Ok(XenStore::new(transport))
    }

    /// Whether the PV console ring (`HVM_PARAM_CONSOLE_PFN`) is there.
    pub fn has_console(&self) -> bool {
        self.console.is_some()
    }

    /// `SCHEDOP_shutdown`: ends the domain. A PVH guest that merely halts
    /// with interrupts off is destroyed without a trace, so every exit goes
    /// through here. Flushes the PV console first (bounded by 2 s), so that
    /// xenconsoled logs everything.
    pub fn shutdown(&self, reason: ShutdownReason) -> ! {
        self.console_flush(2_000_000_000);
        // SAFETY: a `Xen` exists, so `init`'s promises hold.
        unsafe { shutdown_early(reason) };
        loop {
            // SAFETY: halting with interrupts off only stops this vCPU.
            unsafe { core::arch::asm!("cli; hlt", options(nomem, nostack)) };
        }
    }

    /// `EVTCHNOP_bind_interdomain`: a local port connected to `remote_port`
    /// of domain `remote` (which `remote` allocated unbound for us). With
    /// [`DomId::SELF`] and a port from [`Hal::evtchn_alloc_unbound`]`(SELF)`
    /// this makes a loopback pair, which the `platform` check of the example
    /// unikernel uses. Like every port here, the new one stays masked.
    /// Xen marks the new port pending right away (`event_channel.c`:
    /// notifications sent to the unbound remote port may have been lost), so
    /// expect one event at once.
    ///
    /// # Errors
    ///
    /// [`HalError::Hypercall`] with Xen's errno (e.g. `-EINVAL` for a remote
    /// port that is not unbound for us).
    pub fn evtchn_bind_interdomain(
        &self,
        remote: DomId,
        remote_port: Port,
    ) -> Result<Port, HalError> {
        let mut arg = EvtchnBindInterdomain::new(remote, remote_port);
        // SAFETY: hypercall page set up; `arg` is `struct
        // evtchn_bind_interdomain`.
        unsafe {
            op_with_arg(
                __HYPERVISOR_event_channel_op,
                EVTCHNOP_bind_interdomain,
                &mut arg,
            )
        }?;
        let port = Port(arg.local_port);
        Self::check_port(port)?;
        Ok(port)
    }

    fn shared(&self) -> &SharedInfo {
        // SAFETY: mapped in `init` and never unmapped; all fields atomic.
        unsafe { self.shared.as_ref() }
    }

    /// Xen system time in ns from `vcpu_time_info` (`xen.h`): read under the
    /// `version` seqlock (odd while Xen updates it), then
    /// `system_time + ((rdtsc - tsc_timestamp) << tsc_shift) * mul >> 32`.
    fn system_time(&self) -> u64 {
        let t = &self.shared().vcpu_info[0].time;
        let mut tries = 0u32;
        loop {
            let v1 = t.version.load(Ordering::Acquire);
            let stamp = t.tsc_timestamp.load(Ordering::Relaxed);
            let system = t.system_time.load(Ordering::Relaxed);
            let mul = t.tsc_to_system_mul.load(Ordering::Relaxed);
            let shift = t.tsc_shift.load(Ordering::Relaxed);
            let tsc = rdtsc();
            fence(Ordering::Acquire);
            let v2 = t.version.load(Ordering::Relaxed);
            tries += 1;
            // Xen holds the seqlock for a few instructions; the bound only
            // guards against a broken hypervisor.
            if (v1 == v2 && v1 & 1 == 0) || tries > 1_000_000 {
                let mut delta = tsc.saturating_sub(stamp);
                delta = match shift {
                    s if s >= 0 => delta.checked_shl(s as u32).unwrap_or(u64::MAX),
                    s => delta >> s.unsigned_abs().min(63),
                };
                let ns = (u128::from(delta) * u128::from(mul)) >> 32;
                return system.saturating_add(ns as u64);
            }
            core::hint::spin_loop();
        }
    }

    fn check_port(port: Port) -> Result<(), HalError> {
        if port.0 < NR_PORTS {
            Ok(())
        } else {
            Err(HalError::InvalidPort(port.0))
        }
    }

    /// `EVTCHNOP_send` / `EVTCHNOP_close` with `arg` for `port`.
    fn port_op<T>(&self, cmd: u32, port: Port, mut arg: T) -> Result<(), HalError> {
        Self::check_port(port)?;
        // SAFETY: hypercall page set up; callers pass `struct evtchn_send`
        // for EVTCHNOP_send and `struct evtchn_close` for EVTCHNOP_close.
        match unsafe { op_with_arg(__HYPERVISOR_event_channel_op, cmd, &mut arg) } {
            Ok(_) => Ok(()),
            Err(HalError::Hypercall(-22)) => Err(HalError::InvalidPort(port.0)), // -EINVAL
            Err(e) => Err(e),
        }
    }

    /// `SCHEDOP_poll` on `ports` until `timeout` (absolute Xen system time,
    /// 0 = none). Returns when a port is pending, at the timeout, or early.
    fn poll(&self, ports: &[u32], timeout: u64) -> Result<(), HalError> {
        let Some(mut arg) = SchedPoll::new(ports, timeout) else {
            return Err(HalError::InvalidPort(u32::MAX));
        };
        // SAFETY: hypercall page set up; `arg` is `struct sched_poll` and
        // its handle points at `ports`, valid for the call.
        unsafe { op_with_arg(__HYPERVISOR_sched_op, SCHEDOP_poll, &mut arg) }.map(drop)
    }
}

/// `rdtsc`, ordered after earlier loads (`lfence`).
fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: LFENCE and RDTSC only read the time-stamp counter.
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    u64::from(hi) << 32 | u64::from(lo)
}

// SAFETY: `alloc_pages` hands out fresh zeroed page-aligned heap memory,
// identity-mapped so that gfn = address >> 12; `grant_table` is this domain's
// v1 grant table, mapped in `init` and never moved or unmapped; event-channel
// operations name DOMID_SELF's ports; `now_ns` is clamped to be monotonic.
unsafe impl Hal for Xen {
    fn alloc_pages(&self, count: usize) -> Result<Pages, HalError> {
        if count == 0 {
            return Err(HalError::OutOfMemory);
        }
        let ptr = leak_pages(count)?;
        let gfn = Gfn(ptr.as_ptr() as u64 >> 12);
        // SAFETY: `leak_pages` returned `count` zeroed, page-aligned pages
        // owned by nobody else; identity mapping makes page i frame gfn + i.
        Ok(unsafe { Pages::new(ptr, gfn, count) })
    }

    unsafe fn free_pages(&self, pages: Pages) {
        let Ok(layout) = Layout::from_size_align(pages.len(), PAGE_SIZE) else {
            return;
        };
        // SAFETY: `pages` came from `alloc_pages` with this very layout, and
        // the caller promises nothing uses it any more.
        unsafe { alloc::alloc::dealloc(pages.as_ptr(), layout) };
    }

    fn gfn_of(&self, vaddr: *const u8) -> Option<Gfn> {
        let frame = vaddr as u64 >> 12;
        (frame < IDENTITY_MAPPED_FRAMES).then_some(Gfn(frame))
    }

    fn grant_table(&self) -> &[GrantEntry] {
        let len = self.grant_frames as usize * (PAGE_SIZE / core::mem::size_of::<GrantEntry>());
        // SAFETY: `grant_frames` pages at `grant_table` hold Xen's grant
        // table for the rest of the run; GrantEntry is all atomics.
        unsafe { core::slice::from_raw_parts(self.grant_table.as_ptr(), len) }
    }

    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<Port, HalError> {
        let mut arg = EvtchnAllocUnbound::new(remote);
        // SAFETY: hypercall page set up; `arg` is `struct evtchn_alloc_unbound`.
        unsafe {
            op_with_arg(
                __HYPERVISOR_event_channel_op,
                EVTCHNOP_alloc_unbound,
                &mut arg,
            )
        }?;
        let port = Port(arg.port);
        // Masked like every port (it already is: `init` masked all 4096).
        Self::check_port(port)?;
        Ok(port)
    }

    fn evtchn_notify(&self, port: Port) -> Result<(), HalError> {
        self.port_op(EVTCHNOP_send, port, EvtchnSend::new(port))
    }

    fn evtchn_close(&self, port: Port) -> Result<(), HalError> {
        self.port_op(EVTCHNOP_close, port, EvtchnClose::new(port))
    }

    fn evtchn_consume(&self, port: Port) -> bool {
        self.shared().test_and_clear_pending(port)
    }

    fn evtchn_wait(&self, ports: &[Port], deadline: Option<u64>) -> Result<(), HalError> {
        let mut list = [0u32; POLL_MAX_PORTS];
        for p in ports {
            Self::check_port(*p)?;
        }
        for (slot, p) in list.iter_mut().zip(ports) {
            *slot = p.0;
        }
        let n = ports.len().min(POLL_MAX_PORTS);
        let any_pending = || ports.iter().any(|&p| self.shared().is_pending(p));
        if any_pending() {
            return Ok(());
        }
        let now = self.now_ns();
        let mut timeout = match deadline {
            Some(d) if d <= now => return Err(HalError::Timeout),
            Some(d) => d,
            None if n == 0 => return Ok(()), // nothing could ever wake us
            None => 0,
        };
        if ports.len() > POLL_MAX_PORTS {
            // Ports past the 128th cannot wake the poll: wake up often.
            let soon = now.saturating_add(1_000_000);
            timeout = if timeout == 0 {
                soon
            } else {
                timeout.min(soon)
            };
        }
        self.poll(&list[..n], timeout)?;
        if any_pending() {
            return Ok(());
        }
        match deadline {
            Some(d) if self.now_ns() >= d => Err(HalError::Timeout),
            _ => Ok(()), // early: callers re-check
        }
    }

    fn now_ns(&self) -> u64 {
        let t = self.system_time();
        let prev = self.last_ns.fetch_max(t, Ordering::AcqRel);
        prev.max(t)
    }
}
