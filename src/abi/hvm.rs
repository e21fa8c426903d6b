//! `hvm/hvm_op.h`, `hvm/params.h` and `arch-x86/hvm/start_info.h`: the HVM
//! parameters a PVH guest reads (where its xenstore and console pages are)
//! and the start-of-day structure a PVH kernel is entered with.
#![allow(non_upper_case_globals)]

use core::mem::{offset_of, size_of};

use crate::hal::DomId;

// ----- hvm/hvm_op.h -------------------------------------------------------------------

/// `HVMOP_set_param`: `__HYPERVISOR_hvm_op` command taking a [`XenHvmParam`].
pub const HVMOP_set_param: u32 = 0;
/// `HVMOP_get_param`: `__HYPERVISOR_hvm_op` command taking a [`XenHvmParam`].
pub const HVMOP_get_param: u32 = 1;

/// `struct xen_hvm_param` (`HVMOP_get_param` / `HVMOP_set_param`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XenHvmParam {
    /// IN: the domain (`DOMID_SELF`).
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// IN: `HVM_PARAM_*`.
    pub index: u32,
    /// IN (set) / OUT (get): the value.
    pub value: u64,
}

// ----- hvm/params.h -------------------------------------------------------------------

/// `HVM_PARAM_CALLBACK_IRQ`: how event-channel upcalls are delivered; the
/// type sits in bits 56..64 (`HVM_PARAM_CALLBACK_IRQ_TYPE_MASK`).
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_CALLBACK_IRQ_TYPE_MASK`.
pub const HVM_PARAM_CALLBACK_IRQ_TYPE_MASK: u64 = 0xFF00_0000_0000_0000;
/// `HVM_PARAM_CALLBACK_TYPE_GSI`: the value is a GSI.
pub const HVM_PARAM_CALLBACK_TYPE_GSI: u64 = 0;
/// `HVM_PARAM_CALLBACK_TYPE_PCI_INTX`: the value is a PCI INTx line.
pub const HVM_PARAM_CALLBACK_TYPE_PCI_INTX: u64 = 1;
/// `HVM_PARAM_CALLBACK_TYPE_VECTOR` (x86): bits 0..8 are an IDT vector.
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2;
/// `HVM_PARAM_STORE_PFN`: frame of the xenstore ring page.
pub const HVM_PARAM_STORE_PFN: u32 = 1;
/// `HVM_PARAM_STORE_EVTCHN`: event channel to xenstored.
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
/// `HVM_PARAM_TIMER_MODE`.
pub const HVM_PARAM_TIMER_MODE: u32 = 10;
/// `HVM_PARAM_CONSOLE_PFN`: frame of the PV console ring page.
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
/// `HVM_PARAM_CONSOLE_EVTCHN`: event channel to xenconsoled.
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
/// `HVM_PARAM_VM_GENERATION_ID_ADDR`.
pub const HVM_PARAM_VM_GENERATION_ID_ADDR: u32 = 34;

// ----- arch-x86/hvm/start_info.h ----------------------------------------------------------

/// `XEN_HVM_START_MAGIC_VALUE`: [`HvmStartInfo::magic`] of a valid structure.
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_HVM_MEMMAP_TYPE_ACPI`.
pub const XEN_HVM_MEMMAP_TYPE_ACPI: u32 = 3;
/// `XEN_HVM_MEMMAP_TYPE_NVS`.
pub const XEN_HVM_MEMMAP_TYPE_NVS: u32 = 4;
/// `XEN_HVM_MEMMAP_TYPE_UNUSABLE`.
pub const XEN_HVM_MEMMAP_TYPE_UNUSABLE: u32 = 5;
/// `XEN_HVM_MEMMAP_TYPE_DISABLED`.
pub const XEN_HVM_MEMMAP_TYPE_DISABLED: u32 = 6;
/// `XEN_HVM_MEMMAP_TYPE_PMEM`.
pub const XEN_HVM_MEMMAP_TYPE_PMEM: u32 = 7;

/// `struct hvm_start_info`: what `%ebx` points to at a PVH entry. Version 1
/// added `memmap_paddr` / `memmap_entries`; a version-0 structure ends at
/// `memmap_paddr`, so read those fields only when `version >= 1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Version of this structure.
    pub version: u32,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Entries at `modlist_paddr`.
    pub nr_modules: u32,
    /// Physical address of an array of [`HvmModlistEntry`].
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0 if none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0 if none).
    pub rsdp_paddr: u64,
    /// (version 1) Physical address of an array of [`HvmMemmapTableEntry`].
    pub memmap_paddr: u64,
    /// (version 1) Entries at `memmap_paddr`; 0 means no map.
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_modlist_entry`: one module handed to the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmModlistEntry {
    /// Physical address of the module.
    pub paddr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Physical address of its command line (0 if none).
    pub cmdline_paddr: u64,
    /// Reserved.
    pub reserved: u64,
}

/// `struct hvm_memmap_table_entry`: one region of the memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapTableEntry {
    /// Base address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*`.
    pub ty: u32,
    /// Must be zero.
    pub reserved: u32,
}

impl XenHvmParam {
    /// The argument for reading this domain's parameter `index`
    /// (`HVM_PARAM_*`) with `HVMOP_get_param`.
    pub fn get(index: u32) -> Self {
        XenHvmParam {
            domid: DomId::SELF.0,
            pad: 0,
            index,
            value: 0,
        }
    }

    /// The argument for setting this domain's parameter `index` to `value`
    /// with `HVMOP_set_param`.
    pub fn set(index: u32, value: u64) -> Self {
        XenHvmParam {
            value,
            ..XenHvmParam::get(index)
        }
    }
}

impl HvmStartInfo {
    /// Whether `magic` is [`XEN_HVM_START_MAGIC_VALUE`].
    pub fn is_valid(&self) -> bool {
        self.magic == XEN_HVM_START_MAGIC_VALUE
    }

    /// Physical address and entry count of the memory map, if the structure
    /// is version 1 or later and has one.
    pub fn memmap(&self) -> Option<(u64, u32)> {
        (self.version >= 1 && self.memmap_entries != 0 && self.memmap_paddr != 0)
            .then_some((self.memmap_paddr, self.memmap_entries))
    }
}

/// Size of a version-0 [`HvmStartInfo`] (up to, without, `memmap_paddr`).
pub const HVM_START_INFO_V0_SIZE: usize = offset_of!(HvmStartInfo, memmap_paddr);

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<XenHvmParam>() == 16);
const _: () = assert!(offset_of!(XenHvmParam, domid) == 0);
const _: () = assert!(offset_of!(XenHvmParam, pad) == 2);
const _: () = assert!(offset_of!(XenHvmParam, index) == 4);
const _: () = assert!(offset_of!(XenHvmParam, value) == 8);

const _: () = assert!(size_of::<HvmStartInfo>() == 56);
const _: () = assert!(offset_of!(HvmStartInfo, magic) == 0);
const _: () = assert!(offset_of!(HvmStartInfo, version) == 4);
const _: () = assert!(offset_of!(HvmStartInfo, flags) == 8);
const _: () = assert!(offset_of!(HvmStartInfo, nr_modules) == 12);
const _: () = assert!(offset_of!(HvmStartInfo, modlist_paddr) == 16);
const _: () = assert!(offset_of!(HvmStartInfo, cmdline_paddr) == 24);
const _: () = assert!(offset_of!(HvmStartInfo, rsdp_paddr) == 32);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_paddr) == 40);
const _: () = assert!(offset_of!(HvmStartInfo, memmap_entries) == 48);
const _: () = assert!(offset_of!(HvmStartInfo, reserved) == 52);

const _: () = assert!(size_of::<HvmModlistEntry>() == 32);
const _: () = assert!(offset_of!(HvmModlistEntry, paddr) == 0);
const _: () = assert!(offset_of!(HvmModlistEntry, size) == 8);
const _: () = assert!(offset_of!(HvmModlistEntry, cmdline_paddr) == 16);
const _: () = assert!(offset_of!(HvmModlistEntry, reserved) == 24);

const _: () = assert!(size_of::<HvmMemmapTableEntry>() == 24);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, addr) == 0);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, size) == 8);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, ty) == 16);
const _: () = assert!(offset_of!(HvmMemmapTableEntry, reserved) == 20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_arguments() {
        let g = XenHvmParam::get(HVM_PARAM_STORE_PFN);
        assert_eq!((g.domid, g.pad, g.index, g.value), (0x7ff0, 0, 1, 0));
        let s = XenHvmParam::set(
            HVM_PARAM_CALLBACK_IRQ,
            (HVM_PARAM_CALLBACK_TYPE_VECTOR << 56) | 0xf3,
        );
        assert_eq!(s.index, 0);
        assert_eq!(s.value & HVM_PARAM_CALLBACK_IRQ_TYPE_MASK, 2 << 56);
    }

    #[test]
    fn memmap_needs_version_1_and_entries() {
        let mut si = HvmStartInfo {
            magic: XEN_HVM_START_MAGIC_VALUE,
            version: 0,
            memmap_paddr: 0x9000,
            memmap_entries: 4,
            ..Default::default()
        };
        assert!(si.is_valid());
        assert_eq!(si.memmap(), None);
        si.version = 1;
        assert_eq!(si.memmap(), Some((0x9000, 4)));
        si.memmap_entries = 0;
        assert_eq!(si.memmap(), None);
        si.magic = 0;
        assert!(!si.is_valid());
    }
}
