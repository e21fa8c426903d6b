//! `xen.h` (with `arch-x86/xen.h`, `arch-x86/xen-x86_64.h`): the shared-info
//! page on x86_64, as far as a guest uses it: per-vCPU upcall flags and time,
//! and the 2-level event-channel `evtchn_pending` / `evtchn_mask` bitmaps.
//! Also `io/console.h`: the PV console ring page (`HVM_PARAM_CONSOLE_PFN`),
//! the other page a guest shares with a daemon from boot.
//!
//! Every field is an atomic because the hypervisor writes this page while the
//! guest reads it; a `&SharedInfo` over the real page is therefore sound.
//! The helpers below implement the bit addressing of the 2-level ABI
//! (`xen.h`, `struct shared_info`: port `p` is bit `p % 64` of word `p / 64`).

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicI8, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::abi::event_channel::EVTCHN_2L_NR_CHANNELS;
use crate::hal::Port;

/// `XEN_LEGACY_MAX_VCPUS` (x86): `vcpu_info` slots in the shared-info page.
pub const XEN_LEGACY_MAX_VCPUS: usize = 32;
/// Bits in one `xen_ulong_t` word of the event-channel bitmaps.
const BITS_PER_WORD: usize = 64;
/// Words in `evtchn_pending` and in `evtchn_mask` (`sizeof(xen_ulong_t) * 8`).
pub const EVTCHN_WORDS: usize = 64;

/// `struct vcpu_time_info` (interface version > 0x040600: with `flags`).
/// Read it with the version protocol of `xen.h`: retry while `version` is
/// odd or changed across the read.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: AtomicU32,
    /// Padding.
    pub pad0: AtomicU32,
    /// TSC at the last update.
    pub tsc_timestamp: AtomicU64,
    /// Nanoseconds since boot at the last update.
    pub system_time: AtomicU64,
    /// TSC-to-ns multiplier (32.32 fixed point, after `tsc_shift`).
    pub tsc_to_system_mul: AtomicU32,
    /// TSC shift (left if positive, right if negative).
    pub tsc_shift: AtomicI8,
    /// `XEN_PVCLOCK_*` flags.
    pub flags: AtomicU8,
    /// Padding.
    pub pad1: [AtomicU8; 2],
}

/// `struct arch_vcpu_info` (x86_64).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ArchVcpuInfo {
    /// Faulting address (PV only).
    pub cr2: AtomicU64,
    /// Padding to make `vcpu_info` 64 bytes.
    pub pad: AtomicU64,
}

/// `struct vcpu_info`: 64 bytes per vCPU.
#[repr(C)]
#[derive(Debug, Default)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU; the guest clears
    /// it before scanning.
    pub evtchn_upcall_pending: AtomicU8,
    /// Masks upcalls to this vCPU (`XEN_HAVE_PV_UPCALL_MASK` on x86).
    pub evtchn_upcall_mask: AtomicU8,
    /// Selector: bit `i` set when word `i` of `evtchn_pending` may have a
    /// newly pending, unmasked port.
    pub evtchn_pending_sel: AtomicU64,
    /// Architecture part.
    pub arch: ArchVcpuInfo,
    /// System time.
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (x86_64; PV-only fields).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ArchSharedInfo {
    /// `max_pfn`.
    pub max_pfn: AtomicU64,
    /// `pfn_to_mfn_frame_list_list`.
    pub pfn_to_mfn_frame_list_list: AtomicU64,
    /// `nmi_reason`.
    pub nmi_reason: AtomicU64,
    /// `p2m_cr3`.
    pub p2m_cr3: AtomicU64,
    /// `p2m_vaddr`.
    pub p2m_vaddr: AtomicU64,
    /// `p2m_generation`.
    pub p2m_generation: AtomicU64,
}

/// `struct shared_info` (x86_64), mapped with `XENMAPSPACE_shared_info`.
#[repr(C)]
#[derive(Debug)]
pub struct SharedInfo {
    /// Per-vCPU state of the first 32 vCPUs.
    pub vcpu_info: [VcpuInfo; XEN_LEGACY_MAX_VCPUS],
    /// 2-level ABI: one pending bit per port, set by Xen, cleared by the
    /// guest.
    pub evtchn_pending: [AtomicU64; EVTCHN_WORDS],
    /// 2-level ABI: one mask bit per port, written by the guest only.
    pub evtchn_mask: [AtomicU64; EVTCHN_WORDS],
    /// Wallclock version counter (same protocol as `VcpuTimeInfo`).
    pub wc_version: AtomicU32,
    /// Wallclock seconds (low 32 bits).
    pub wc_sec: AtomicU32,
    /// Wallclock nanoseconds.
    pub wc_nsec: AtomicU32,
    /// Wallclock seconds (high 32 bits).
    pub wc_sec_hi: AtomicU32,
    /// Architecture part.
    pub arch: ArchSharedInfo,
}

impl Default for SharedInfo {
    fn default() -> Self {
        SharedInfo {
            vcpu_info: core::array::from_fn(|_| VcpuInfo::default()),
            evtchn_pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            wc_version: AtomicU32::new(0),
            wc_sec: AtomicU32::new(0),
            wc_nsec: AtomicU32::new(0),
            wc_sec_hi: AtomicU32::new(0),
            arch: ArchSharedInfo::default(),
        }
    }
}

/// Word index and bit mask of `port` in the 2-level bitmaps, or `None` for a
/// port the 2-level ABI cannot address.
pub fn evtchn_word_bit(port: Port) -> Option<(usize, u64)> {
    let p = usize::try_from(port.0).ok()?;
    if p >= EVTCHN_2L_NR_CHANNELS {
        return None;
    }
    Some((p / BITS_PER_WORD, 1u64 << (p % BITS_PER_WORD)))
}

impl SharedInfo {
    /// Whether `port`'s pending bit is set (false for an unaddressable port).
    pub fn is_pending(&self, port: Port) -> bool {
        evtchn_word_bit(port)
            .and_then(|(w, bit)| {
                Some(self.evtchn_pending.get(w)?.load(Ordering::Acquire) & bit != 0)
            })
            .unwrap_or(false)
    }

    /// Atomically clears `port`'s pending bit and returns whether it was set
    /// (false for an unaddressable port).
    pub fn test_and_clear_pending(&self, port: Port) -> bool {
        evtchn_word_bit(port)
            .and_then(|(w, bit)| {
                Some(
                    self.evtchn_pending
                        .get(w)?
                        .fetch_and(!bit, Ordering::AcqRel)
                        & bit
                        != 0,
                )
            })
            .unwrap_or(false)
    }

    /// Sets `port`'s pending bit, as Xen does on a notification; returns
    /// whether it was already set. For simulators; a guest never sets it.
    /// Returns `None` for an unaddressable port.
    pub fn set_pending(&self, port: Port) -> Option<bool> {
        let (w, bit) = evtchn_word_bit(port)?;
        Some(self.evtchn_pending.get(w)?.fetch_or(bit, Ordering::AcqRel) & bit != 0)
    }

    /// Whether `port` is masked (true for an unaddressable port, which can
    /// never raise an upcall).
    pub fn is_masked(&self, port: Port) -> bool {
        evtchn_word_bit(port)
            .and_then(|(w, bit)| Some(self.evtchn_mask.get(w)?.load(Ordering::Acquire) & bit != 0))
            .unwrap_or(true)
    }

    /// Sets `port`'s mask bit. Returns `false` for an unaddressable port.
    /// (Unmasking goes through `EVTCHNOP_unmask`, so that Xen re-raises an
    /// event that became pending while masked.)
    pub fn mask(&self, port: Port) -> bool {
        match evtchn_word_bit(port).and_then(|(w, bit)| Some((self.evtchn_mask.get(w)?, bit))) {
            Some((word, bit)) => {
                word.fetch_or(bit, Ordering::AcqRel);
                true
            }
            None => false,
        }
    }
}

// ----- io/console.h ------------------------------------------------------------------

/// Size of the input ring (`in[]`, console to guest).
pub const XENCONS_IN_SIZE: usize = 1024;
/// Size of the output ring (`out[]`, guest to console).
pub const XENCONS_OUT_SIZE: usize = 2048;

/// `struct xencons_interface`. The byte rings are plain arrays (access them
/// with volatile copies through a raw pointer); the free-running
/// `XENCONS_RING_IDX` indices are atomics. Index `i` of a ring is
/// `i % size` (`MASK_XENCONS_IDX`).
#[repr(C)]
#[derive(Debug)]
pub struct XenconsInterface {
    /// Input from the console daemon.
    pub in_: [u8; XENCONS_IN_SIZE],
    /// Output to the console daemon.
    pub out: [u8; XENCONS_OUT_SIZE],
    /// Input consumer (guest).
    pub in_cons: AtomicU32,
    /// Input producer (daemon).
    pub in_prod: AtomicU32,
    /// Output consumer (daemon).
    pub out_cons: AtomicU32,
    /// Output producer (guest).
    pub out_prod: AtomicU32,
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<VcpuTimeInfo>() == 32);
const _: () = assert!(offset_of!(VcpuTimeInfo, version) == 0);
const _: () = assert!(offset_of!(VcpuTimeInfo, pad0) == 4);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_timestamp) == 8);
const _: () = assert!(offset_of!(VcpuTimeInfo, system_time) == 16);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_to_system_mul) == 24);
const _: () = assert!(offset_of!(VcpuTimeInfo, tsc_shift) == 28);
const _: () = assert!(offset_of!(VcpuTimeInfo, flags) == 29);
const _: () = assert!(offset_of!(VcpuTimeInfo, pad1) == 30);

const _: () = assert!(size_of::<ArchVcpuInfo>() == 16);
const _: () = assert!(offset_of!(ArchVcpuInfo, cr2) == 0);
const _: () = assert!(offset_of!(ArchVcpuInfo, pad) == 8);

const _: () = assert!(size_of::<VcpuInfo>() == 64);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_pending) == 0);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_upcall_mask) == 1);
const _: () = assert!(offset_of!(VcpuInfo, evtchn_pending_sel) == 8);
const _: () = assert!(offset_of!(VcpuInfo, arch) == 16);
const _: () = assert!(offset_of!(VcpuInfo, time) == 32);

const _: () = assert!(size_of::<ArchSharedInfo>() == 48);
const _: () = assert!(offset_of!(ArchSharedInfo, max_pfn) == 0);
const _: () = assert!(offset_of!(ArchSharedInfo, pfn_to_mfn_frame_list_list) == 8);
const _: () = assert!(offset_of!(ArchSharedInfo, nmi_reason) == 16);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_cr3) == 24);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_vaddr) == 32);
const _: () = assert!(offset_of!(ArchSharedInfo, p2m_generation) == 40);

const _: () = assert!(size_of::<SharedInfo>() == 3136);
const _: () = assert!(size_of::<SharedInfo>() <= crate::hal::PAGE_SIZE);
const _: () = assert!(offset_of!(SharedInfo, vcpu_info) == 0);
const _: () = assert!(offset_of!(SharedInfo, evtchn_pending) == 2048);
const _: () = assert!(offset_of!(SharedInfo, evtchn_mask) == 2560);
const _: () = assert!(offset_of!(SharedInfo, wc_version) == 3072);
const _: () = assert!(offset_of!(SharedInfo, wc_sec) == 3076);
const _: () = assert!(offset_of!(SharedInfo, wc_nsec) == 3080);
const _: () = assert!(offset_of!(SharedInfo, wc_sec_hi) == 3084);
const _: () = assert!(offset_of!(SharedInfo, arch) == 3088);
const _: () = assert!(EVTCHN_WORDS * BITS_PER_WORD == EVTCHN_2L_NR_CHANNELS);

const _: () = assert!(size_of::<XenconsInterface>() == 3088);
const _: () = assert!(offset_of!(XenconsInterface, in_) == 0);
const _: () = assert!(offset_of!(XenconsInterface, out) == 1024);
const _: () = assert!(offset_of!(XenconsInterface, in_cons) == 3072);
const _: () = assert!(offset_of!(XenconsInterface, in_prod) == 3076);
const _: () = assert!(offset_of!(XenconsInterface, out_cons) == 3080);
const _: () = assert!(offset_of!(XenconsInterface, out_prod) == 3084);

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::boxed::Box;

    #[test]
    fn word_bit_addresses_the_2l_bitmap() {
        assert_eq!(evtchn_word_bit(Port(0)), Some((0, 1)));
        assert_eq!(evtchn_word_bit(Port(63)), Some((0, 1 << 63)));
        assert_eq!(evtchn_word_bit(Port(64)), Some((1, 1)));
        assert_eq!(evtchn_word_bit(Port(4095)), Some((63, 1 << 63)));
        assert_eq!(evtchn_word_bit(Port(4096)), None);
        assert_eq!(evtchn_word_bit(Port(u32::MAX)), None);
    }

    #[test]
    fn pending_bits_set_test_and_clear() {
        let si = Box::<SharedInfo>::default();
        let p = Port(130);
        assert!(!si.is_pending(p));
        assert_eq!(si.set_pending(p), Some(false));
        assert_eq!(si.set_pending(p), Some(true));
        assert!(si.is_pending(p));
        // Only bit 130 % 64 = 2 of word 2 is set.
        assert_eq!(si.evtchn_pending[2].load(Ordering::Relaxed), 1 << 2);
        assert!(!si.is_pending(Port(129)));
        assert!(si.test_and_clear_pending(p));
        assert!(!si.test_and_clear_pending(p));
        assert!(!si.is_pending(p));
        assert_eq!(si.set_pending(Port(5000)), None);
        assert!(!si.test_and_clear_pending(Port(5000)));
    }

    #[test]
    fn clearing_one_port_leaves_its_neighbours() {
        let si = Box::<SharedInfo>::default();
        for p in [7, 8, 9] {
            si.set_pending(Port(p));
        }
        assert!(si.test_and_clear_pending(Port(8)));
        assert!(si.is_pending(Port(7)));
        assert!(si.is_pending(Port(9)));
    }

    #[test]
    fn mask_bits() {
        let si = Box::<SharedInfo>::default();
        assert!(!si.is_masked(Port(64)));
        assert!(si.mask(Port(64)));
        assert!(si.is_masked(Port(64)));
        assert!(!si.is_masked(Port(65)));
        assert_eq!(si.evtchn_mask[1].load(Ordering::Relaxed), 1);
        assert!(!si.mask(Port(4096)));
        assert!(si.is_masked(Port(4096)));
    }
}
