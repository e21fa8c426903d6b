//! The PVH start-of-day structure (`arch-x86/hvm/start_info.h`, `struct
//! hvm_start_info`, [`HvmStartInfo`]): the command line, and (version 1)
//! the memory map the heap is sized from ([`LoaderMemory`]).

use alloc::string::String;
use core::mem::size_of;

use xenblk::abi::hvm::{
    HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo, HVM_START_INFO_V0_SIZE,
};

use crate::memmap::Region;

/// Longest command line read (Xen's own limit is 1024 bytes).
const CMDLINE_MAX: usize = 4096;

/// Memory-map entries read (Xen gives a PVH guest a handful).
pub const MAP_MAX: usize = 128;
/// Modules whose memory is kept out of the heap (Xen passes a PVH guest
/// its ramdisk as module 0).
const MODULES_MAX: usize = 8;
/// Ranges the loader placed: the start info, the map, the command line,
/// the module list and the modules.
const IN_USE_MAX: usize = 4 + MODULES_MAX;

/// The loader's view of memory, read before there is a heap: the memory
/// map (version 1 of the start info) and the ranges the loader put
/// things in.
#[derive(Clone, Copy, Debug)]
pub struct LoaderMemory {
    /// `version` of the start info (0 when there was none).
    pub version: u32,
    map: [(u64, u64, u32); MAP_MAX],
    map_len: usize,
    /// Entries the map had (more than [`MAP_MAX`] are not read).
    pub map_entries: u32,
    in_use: [Region; IN_USE_MAX],
    in_use_len: usize,
}

impl LoaderMemory {
    /// The memory map: `(addr, size, type)` per entry read.
    pub fn map(&self) -> &[(u64, u64, u32)] {
        &self.map[..self.map_len]
    }

    /// What the loader placed in memory the heap must not take.
    pub fn in_use(&self) -> &[Region] {
        &self.in_use[..self.in_use_len]
    }

    fn keep(&mut self, r: Option<Region>) {
        if let Some(r) = r {
            if !r.is_empty() && self.in_use_len < IN_USE_MAX {
                self.in_use[self.in_use_len] = r;
                self.in_use_len += 1;
            }
        }
    }

    /// Reads the memory map and the loader's ranges from the start info at
    /// `paddr`; no allocation. Without a (valid) start info, or of version
    /// 0, the map is empty.
    ///
    /// # Safety
    ///
    /// As for [`StartInfo::read`].
    pub unsafe fn read(paddr: u32) -> LoaderMemory {
        let mut out = LoaderMemory {
            version: 0,
            map: [(0, 0, 0); MAP_MAX],
            map_len: 0,
            map_entries: 0,
            in_use: [Region::default(); IN_USE_MAX],
            in_use_len: 0,
        };
        if paddr == 0 {
            return out;
        }
        // SAFETY: caller; the version-0 head first, as in StartInfo::read.
        let head: HvmStartInfo = unsafe { read_head(paddr) };
        if !head.is_valid() {
            return out;
        }
        out.version = head.version;
        let si = if head.version >= 1 {
            // SAFETY: a version-1 structure is whole at `paddr` (caller).
            unsafe { (paddr as usize as *const HvmStartInfo).read_unaligned() }
        } else {
            head
        };
        let si_len = if head.version >= 1 {
            size_of::<HvmStartInfo>()
        } else {
            HVM_START_INFO_V0_SIZE
        };
        out.keep(Region::at(u64::from(paddr), si_len as u64));
        if si.cmdline_paddr != 0 && si.cmdline_paddr < (1 << 32) {
            let p = si.cmdline_paddr as usize as *const u8;
            let mut n = 0;
            // SAFETY: a NUL-terminated string the loader placed (caller),
            // read up to the NUL or the bound.
            while n < CMDLINE_MAX && unsafe { p.add(n).read_volatile() } != 0 {
                n += 1;
            }
            out.keep(Region::at(si.cmdline_paddr, n as u64 + 1));
        }
        let mods = (si.nr_modules as usize).min(MODULES_MAX);
        if mods != 0 && si.modlist_paddr != 0 && si.modlist_paddr < (1 << 32) {
            out.keep(Region::at(
                si.modlist_paddr,
                (mods * size_of::<HvmModlistEntry>()) as u64,
            ));
            let list = si.modlist_paddr as usize as *const HvmModlistEntry;
            for i in 0..mods {
                // SAFETY: the loader's module list (caller), `mods` entries.
                let m = unsafe { list.add(i).read_unaligned() };
                out.keep(Region::at(m.paddr, m.size));
            }
        }
        if let Some((map_paddr, entries)) = si.memmap() {
            if map_paddr < (1 << 32) {
                out.map_entries = entries;
                let n = (entries as usize).min(MAP_MAX);
                out.keep(Region::at(
                    map_paddr,
                    (n * size_of::<HvmMemmapTableEntry>()) as u64,
                ));
                let map = map_paddr as usize as *const HvmMemmapTableEntry;
                for i in 0..n {
                    // SAFETY: the loader's memory map (caller), `entries` long.
                    let e = unsafe { map.add(i).read_unaligned() };
                    out.map[i] = (e.addr, e.size, e.ty);
                }
                out.map_len = n;
            }
        }
        out
    }
}

/// The version-0 head of the start info at `paddr`.
///
/// # Safety
///
/// As for [`StartInfo::read`].
unsafe fn read_head(paddr: u32) -> HvmStartInfo {
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
    si
}

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
        // SAFETY: caller.
        let si = unsafe { read_head(paddr) };
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
