//! The PVH start-of-day structure (`arch-x86/hvm/start_info.h`, `struct
//! hvm_start_info`, [`HvmStartInfo`]): only the command line is used.

use alloc::string::String;

use xenblk::abi::hvm::{HvmStartInfo, HVM_START_INFO_V0_SIZE};

/// Longest command line read (Xen's own limit is 1024 bytes).
const CMDLINE_MAX: usize = 4096;

/// What the loader told us.
#[derive(Debug)]
pub struct StartInfo {
    /// `version` of the structure.
    pub version: u32,
    /// The command line (non-printable bytes shown as `?`), trimmed.
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
        // Only the version-0 head is read: a version-0 structure may end there.
        let mut si = HvmStartInfo::default();
        // SAFETY: the loader put at least a version-0 structure at `paddr`
        // (caller); it is plain old data, copied bytewise into `si`.
        unsafe {
            core::ptr::copy_nonoverlapping(
                paddr as usize as *const u8,
                (&mut si as *mut HvmStartInfo).cast::<u8>(),
                HVM_START_INFO_V0_SIZE,
            );
        }
        if !si.is_valid() {
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
                cmdline.push(if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '?'
                });
            }
        }
        Some(StartInfo {
            version: si.version,
            cmdline: String::from(cmdline.trim()),
        })
    }
}
