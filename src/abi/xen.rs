//! `xen.h`: hypercall numbers a guest uses, reserved domain ids and the
//! `console_io` commands.
//!
//! On x86 a hypercall `nr` is a call to offset `nr * HYPERCALL_ENTRY_SIZE` of
//! the hypercall page (arguments in `rdi, rsi, rdx, r10, r8`, result in
//! `rax`).
#![allow(non_upper_case_globals)]

// ----- __HYPERVISOR_* ------------------------------------------------------------------

/// `__HYPERVISOR_memory_op` (`XENMEM_*`).
pub const __HYPERVISOR_memory_op: u32 = 12;
/// `__HYPERVISOR_set_timer_op`: one-shot timer at an absolute system time.
pub const __HYPERVISOR_set_timer_op: u32 = 15;
/// `__HYPERVISOR_xen_version` (`XENVER_*`).
pub const __HYPERVISOR_xen_version: u32 = 17;
/// `__HYPERVISOR_console_io` (`CONSOLEIO_*`): the hypervisor's own console.
pub const __HYPERVISOR_console_io: u32 = 18;
/// `__HYPERVISOR_grant_table_op` (`GNTTABOP_*`).
pub const __HYPERVISOR_grant_table_op: u32 = 20;
/// `__HYPERVISOR_vcpu_op` (`VCPUOP_*`).
pub const __HYPERVISOR_vcpu_op: u32 = 24;
/// `__HYPERVISOR_sched_op` (`SCHEDOP_*`, the new-style call).
pub const __HYPERVISOR_sched_op: u32 = 29;
/// `__HYPERVISOR_event_channel_op` (`EVTCHNOP_*`, the new-style call).
pub const __HYPERVISOR_event_channel_op: u32 = 32;
/// `__HYPERVISOR_physdev_op`.
pub const __HYPERVISOR_physdev_op: u32 = 33;
/// `__HYPERVISOR_hvm_op` (`HVMOP_*`).
pub const __HYPERVISOR_hvm_op: u32 = 34;

/// Bytes per entry of the x86 hypercall page (the page holds 128 stubs).
pub const HYPERCALL_ENTRY_SIZE: usize = 32;

/// Offset of hypercall `nr`'s stub in the hypercall page, or `None` if `nr`
/// lies beyond the page.
pub const fn hypercall_page_offset(nr: u32) -> Option<usize> {
    match (nr as usize).checked_mul(HYPERCALL_ENTRY_SIZE) {
        Some(off) if off < crate::hal::PAGE_SIZE => Some(off),
        _ => None,
    }
}

// ----- domid_t -------------------------------------------------------------------------

/// `DOMID_FIRST_RESERVED`: ids from here on are not real domains.
pub const DOMID_FIRST_RESERVED: u16 = 0x7FF0;
/// `DOMID_SELF`: the calling domain.
pub const DOMID_SELF: u16 = 0x7FF0;
/// `DOMID_IO`.
pub const DOMID_IO: u16 = 0x7FF1;
/// `DOMID_XEN`.
pub const DOMID_XEN: u16 = 0x7FF2;
/// `DOMID_INVALID`.
pub const DOMID_INVALID: u16 = 0x7FF4;

// ----- console_io ----------------------------------------------------------------------

/// `CONSOLEIO_write`: `console_io(CONSOLEIO_write, len, buf)`.
pub const CONSOLEIO_write: u32 = 0;
/// `CONSOLEIO_read`.
pub const CONSOLEIO_read: u32 = 1;

// ----- start_info flags (used in hvm_start_info.flags) ---------------------------------

/// `SIF_PRIVILEGED`: the domain is privileged.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
/// `SIF_INITDOMAIN`: the domain is the initial control domain.
pub const SIF_INITDOMAIN: u32 = 1 << 1;

const _: () = assert!(DOMID_SELF == crate::hal::DomId::SELF.0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_offsets_stay_in_the_page() {
        assert_eq!(hypercall_page_offset(0), Some(0));
        assert_eq!(hypercall_page_offset(__HYPERVISOR_sched_op), Some(29 * 32));
        assert_eq!(hypercall_page_offset(127), Some(4064));
        assert_eq!(hypercall_page_offset(128), None);
        assert_eq!(hypercall_page_offset(u32::MAX), None);
    }
}
