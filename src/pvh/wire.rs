//! Hypercall argument structs and constants `pvh` needs that `crate::abi`
//! does not (yet) declare, x86_64 layout, with compile-time layout asserts.
//!
//! Private to `pvh`. Each item names the header and struct it mirrors.
#![allow(non_upper_case_globals)]

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8};

/// `DOMID_SELF` (`xen.h`).
pub(super) const DOMID_SELF: u16 = 0x7ff0;

// ----- xen.h: hypercall numbers ----------------------------------------------------------
// Taken from xen-sys's bindgen output where it has them.

pub(super) use xen_sys::{
    __HYPERVISOR_event_channel_op, __HYPERVISOR_grant_table_op, __HYPERVISOR_hvm_op,
    __HYPERVISOR_memory_op, __HYPERVISOR_sched_op, __HYPERVISOR_xen_version,
};

// ----- version.h ---------------------------------------------------------------------------

/// `XENVER_version`: returns `major << 16 | minor`.
pub(super) const XENVER_version: u32 = 0;
/// `XENVER_extraversion`: fills a `xen_extraversion_t` (16 chars).
pub(super) const XENVER_extraversion: u32 = 1;

// ----- memory.h ----------------------------------------------------------------------------

/// `XENMEM_add_to_physmap`.
pub(super) const XENMEM_add_to_physmap: u32 = 7;
/// `XENMAPSPACE_shared_info`.
pub(super) const XENMAPSPACE_shared_info: u32 = 0;
/// `XENMAPSPACE_grant_table`.
pub(super) const XENMAPSPACE_grant_table: u32 = 1;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct XenAddToPhysmap {
    pub domid: u16,
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}
const _: () = assert!(size_of::<XenAddToPhysmap>() == 24);
const _: () = assert!(offset_of!(XenAddToPhysmap, idx) == 8);

// ----- grant_table.h -----------------------------------------------------------------------

/// `GNTTABOP_query_size`.
pub(super) const GNTTABOP_query_size: u32 = 6;
/// `GNTST_okay`.
pub(super) const GNTST_okay: i16 = 0;

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GnttabQuerySize {
    pub dom: u16,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
}
const _: () = assert!(size_of::<GnttabQuerySize>() == 16);
const _: () = assert!(offset_of!(GnttabQuerySize, status) == 12);

// ----- hvm/hvm_op.h, hvm/params.h ------------------------------------------------------------

/// `HVMOP_get_param`.
pub(super) const HVMOP_get_param: u32 = 1;
/// `HVM_PARAM_STORE_PFN`.
pub(super) const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`.
pub(super) const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_CONSOLE_PFN`.
pub(super) const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`.
pub(super) const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct XenHvmParam {
    pub domid: u16,
    pub pad: u16,
    pub index: u32,
    pub value: u64,
}
const _: () = assert!(size_of::<XenHvmParam>() == 16);

// ----- event_channel.h ---------------------------------------------------------------------

/// `EVTCHNOP_close`.
pub(super) const EVTCHNOP_close: u32 = 3;
/// `EVTCHNOP_send`.
pub(super) const EVTCHNOP_send: u32 = 4;
/// `EVTCHNOP_alloc_unbound`.
pub(super) const EVTCHNOP_alloc_unbound: u32 = 6;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}
const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);

/// `struct evtchn_send` and `struct evtchn_close`: one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct EvtchnPort {
    pub port: u32,
}

// ----- sched.h -----------------------------------------------------------------------------

/// `SCHEDOP_shutdown`.
pub(super) const SCHEDOP_shutdown: u32 = 2;
/// `SCHEDOP_poll`.
pub(super) const SCHEDOP_poll: u32 = 3;
/// `SHUTDOWN_poweroff`.
pub(super) const SHUTDOWN_poweroff: u32 = 0;
/// `SHUTDOWN_crash`.
pub(super) const SHUTDOWN_crash: u32 = 3;

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct SchedShutdown {
    pub reason: u32,
}

/// `struct sched_poll` (x86_64: the guest handle is one pointer).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct SchedPoll {
    pub ports: *const u32,
    pub nr_ports: u32,
    pub timeout: u64,
}
const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, timeout) == 16);

// ----- xen.h: shared_info ------------------------------------------------------------------

/// Ports of the 2-level event-channel ABI on x86_64 (`EVTCHN_2L_NR_CHANNELS`).
pub(super) const EVTCHN_2L_NR_CHANNELS: u32 = 4096;
/// `XEN_LEGACY_MAX_VCPUS` on x86.
const XEN_LEGACY_MAX_VCPUS: usize = 32;

/// `struct vcpu_time_info`, fields as atomics: Xen rewrites them under the
/// `version` seqlock while we read.
#[repr(C)]
#[derive(Debug)]
pub(super) struct VcpuTimeInfo {
    pub version: AtomicU32,
    pub pad0: AtomicU32,
    pub tsc_timestamp: AtomicU64,
    pub system_time: AtomicU64,
    pub tsc_to_system_mul: AtomicU32,
    /// `tsc_shift` (an `int8_t`), `flags`, `pad1[2]`.
    pub shift_flags: AtomicU32,
}
const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);

/// `struct vcpu_info` (x86_64).
#[repr(C)]
#[derive(Debug)]
pub(super) struct VcpuInfo {
    pub evtchn_upcall_pending: AtomicU8,
    pub evtchn_upcall_mask: AtomicU8,
    pub pad: [u8; 6],
    pub evtchn_pending_sel: AtomicU64,
    /// `struct arch_vcpu_info`: `cr2`, `pad`.
    pub arch: [AtomicU64; 2],
    pub time: VcpuTimeInfo,
}
const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

/// The head of `struct shared_info` (x86_64) up to the event-channel
/// bitmaps; the rest of the page (wallclock, `arch_shared_info`) is unused.
#[repr(C)]
#[derive(Debug)]
pub(super) struct SharedInfo {
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// One bit per port: set by Xen when an event is pending.
    pub evtchn_pending: [AtomicU64; 64],
    /// One bit per port: a set bit keeps Xen from raising an upcall.
    pub evtchn_mask: [AtomicU64; 64],
}
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(size_of::<SharedInfo>() <= 4096);

// ----- io/console.h ------------------------------------------------------------------------

/// Size of `xencons_interface.out`.
pub(super) const XENCONS_OUT_SIZE: u32 = 2048;

/// `struct xencons_interface`.
#[repr(C)]
#[derive(Debug)]
pub(super) struct XenconsInterface {
    pub input: [u8; 1024],
    pub out: [u8; XENCONS_OUT_SIZE as usize],
    pub in_cons: AtomicU32,
    pub in_prod: AtomicU32,
    pub out_cons: AtomicU32,
    pub out_prod: AtomicU32,
}
const _: () = assert!(offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(size_of::<XenconsInterface>() == 3088);
