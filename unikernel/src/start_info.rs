//! The PVH start-of-day structure (`arch-x86/hvm/start_info.h`, `struct
//! hvm_start_info`): only the command line is used.

use alloc::string::String;

/// `XEN_HVM_START_MAGIC_VALUE`.
const START_MAGIC: u32 = 0x336e_c578;
/// Longest command line read (Xen's own limit is 1024 bytes).
const CMDLINE_MAX: usize = 4096;

/// The head of `struct hvm_start_info` (version 0 fields).
#[repr(C)]
struct HvmStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
}
const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 40);

/// What the loader told us.
#[derive(Debug)]
pub struct StartInfo {
    /// `version` of the structure.
    pub version: u32,
    /// The command line (non-printable bytes shown as `?`).
    pub cmdline: String,
}

impl StartInfo {
    /// Reads the structure the loader left at `paddr`, or `None` when the
    /// magic value is not there.
    ///
    /// # Safety
    ///
    /// `paddr` is the `%ebx` of the PVH entry, and memory below 4 GiB is
    /// identity-mapped.
    pub unsafe fn read(paddr: u32) -> Option<StartInfo> {
        if paddr == 0 {
            return None;
        }
        // SAFETY: the loader put the structure at `paddr` (caller); volatile
        // because nothing in Rust wrote it.
        let si = unsafe { core::ptr::read_volatile(paddr as usize as *const HvmStartInfo) };
        if si.magic != START_MAGIC {
            return None;
        }
        let mut cmdline = String::new();
        if si.cmdline_paddr != 0 && si.cmdline_paddr < (1 << 32) {
            let p = si.cmdline_paddr as usize as *const u8;
            for i in 0..CMDLINE_MAX {
                // SAFETY: a NUL-terminated string the loader placed (caller);
                // reading stops at the NUL or the bound.
                let b = unsafe { p.add(i).read_volatile() };
                if b == 0 {
                    break;
                }
                cmdline.push(if b.is_ascii_graphic() || b == b' ' { b as char } else { '?' });
            }
        }
        let _ = (si.flags, si.nr_modules, si.modlist_paddr, si.rsdp_paddr);
        Some(StartInfo {
            version: si.version,
            cmdline: String::from(cmdline.trim()),
        })
    }
}
