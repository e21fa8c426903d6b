//! Finding Xen, the hypercall page, and the hypercalls themselves.
//!
//! # The contract of the hypercall wrappers
//!
//! [`hypercall2`] and [`hypercall3`] are each one `asm!` block: `call` to
//! `xenblk_hypercall_page + 32 * op` (the stub Xen wrote there: `mov $op,
//! %eax; vmcall` or `vmmcall`; `ret`), the arguments in Xen's registers
//! (`xen.h`, "x86_64: rdi, rsi, rdx, r10, r8"), the result in `rax`.
//!
//! - **The page** is defined here, 4 KiB aligned in `.text` (so
//!   executable), filled with `int3` until [`init_hypercall_page`] tells Xen
//!   its address; a hypercall before that traps. Its symbol,
//!   `xenblk_hypercall_page`, is hidden and carries the crate's name, so it
//!   does not clash with a unikernel's own hypercall page; nothing else is
//!   exported.
//! - **`call` pushes a return address**, so the blocks do not claim
//!   `nostack`: the compiler keeps the stack aligned and usable for them.
//! - **Every argument register is clobbered**, used or not (`rdi`, `rsi`,
//!   `rdx`, `r10`, `r8`), and `rax`: a release Xen preserves the unused
//!   ones, but a debug Xen overwrites them on purpose (`clobber_regs` in
//!   `xen/arch/x86/hvm/hypercall.c`). Flags are clobbered; memory may
//!   change (no `nomem`), which is what a hypercall that fills an argument
//!   struct needs.
//!
//! (xenblk once called xen-sys 0.0.0-pre2's wrappers instead; they export
//! unmangled global `hypercall_1`..`hypercall_5` symbols and need a global
//! `HYPERCALL_PAGE`, both of which can clash with a unikernel's own; claim
//! `nostack` around the `call`; mark only the passed registers clobbered;
//! and pass `hypercall_5`'s fifth argument in `r9`, where Xen reads `r8`.)

use core::arch::{asm, global_asm, x86_64::__cpuid};

use crate::abi::xen::__HYPERVISOR_xen_version;
use crate::hal::HalError;
use crate::Result;

/// `XENVER_version` (`version.h`): returns `major << 16 | minor`.
#[allow(non_upper_case_globals)]
const XENVER_version: u32 = 0;
/// `XENVER_extraversion` (`version.h`): fills a 16-byte `xen_extraversion_t`.
#[allow(non_upper_case_globals)]
const XENVER_extraversion: u32 = 1;

// The hypercall page (`XEN_ELFNOTE_HYPERCALL_PAGE` is for PV guests; an
// HVM/PVH guest asks for it through the MSR). `int3` until Xen fills it.
global_asm!(
    ".pushsection .text.xenblk_hypercall_page, \"ax\", @progbits",
    ".balign 4096",
    ".globl xenblk_hypercall_page",
    ".hidden xenblk_hypercall_page",
    ".type xenblk_hypercall_page, @object",
    "xenblk_hypercall_page:",
    ".fill 4096, 1, 0xcc",
    ".size xenblk_hypercall_page, 4096",
    ".popsection",
);

extern "C" {
    /// The page defined above.
    static xenblk_hypercall_page: [u8; 4096];
}

/// The entries of the page (32 bytes each).
const ENTRIES: u32 = 128;

/// `"XenVMMXenVMM"`: the signature in `ebx`, `ecx`, `edx` of Xen's first
/// CPUID leaf (`arch-x86/cpuid.h`).
pub const XEN_CPUID_SIGNATURE: [u8; 12] = *b"XenVMMXenVMM";

/// Where Xen's CPUID leaves are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenCpuid {
    /// The first leaf (`0x4000_0000`, or `0x4000_0100` when Xen also offers
    /// Viridian leaves to a Windows guest).
    pub base: u32,
    /// The highest Xen leaf.
    pub max_leaf: u32,
}

/// `CPUID` of `leaf`. `__cpuid` is a safe function since Rust 1.87 and an
/// unsafe one before; the crate builds on 1.85 (its rust-version).
#[allow(unused_unsafe)]
fn cpuid(leaf: u32) -> core::arch::x86_64::CpuidResult {
    // SAFETY: CPUID exists on every x86_64 CPU and only reads; any leaf may
    // be asked for (an unknown one returns zeros or the highest basic leaf).
    unsafe { __cpuid(leaf) }
}

/// The 12 signature bytes of hypervisor leaf `leaf`, and its `eax`.
fn hypervisor_leaf(leaf: u32) -> ([u8; 12], u32) {
    // Leaves in the 0x4000_0000 range are reserved for hypervisors and
    // harmless to read.
    let r = cpuid(leaf);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&r.ebx.to_le_bytes());
    sig[4..8].copy_from_slice(&r.ecx.to_le_bytes());
    sig[8..12].copy_from_slice(&r.edx.to_le_bytes());
    (sig, r.eax)
}

/// Finds Xen's CPUID leaves: scans `0x4000_0000..=0x4001_0000` in steps of
/// `0x100` for the signature `XenVMMXenVMM` with at least the leaves up to
/// `base + 2` (the hypercall-page MSR). Without Xen, returns the signature
/// bytes of leaf `0x4000_0000`, whatever they are.
///
/// # Errors
///
/// `Err(signature of leaf 0x4000_0000)` when no Xen leaves exist.
pub fn detect() -> core::result::Result<XenCpuid, [u8; 12]> {
    let mut base = 0x4000_0000u32;
    while base <= 0x4001_0000 {
        let (sig, eax) = hypervisor_leaf(base);
        if sig == XEN_CPUID_SIGNATURE && eax >= base + 2 {
            return Ok(XenCpuid {
                base,
                max_leaf: eax,
            });
        }
        base += 0x100;
    }
    Err(hypervisor_leaf(0x4000_0000).0)
}

/// Asks Xen to fill the hypercall page: CPUID leaf `base + 2` gives the
/// number of hypercall pages in `eax` and the MSR in `ebx`; writing the
/// page's guest-physical address to the MSR makes Xen write its stubs
/// (`vmcall`/`vmmcall`) into it.
///
/// # Safety
///
/// Memory must be identity-mapped (guest-virtual == guest-physical) at least
/// where the image lives, and `xen` must come from [`detect`] on this CPU.
/// Call once, before any hypercall.
///
/// # Errors
///
/// [`HalError::Hypercall`] (`-ENOSYS`) when Xen offers no hypercall page.
pub unsafe fn init_hypercall_page(xen: XenCpuid) -> Result<(), HalError> {
    let leaf = cpuid(xen.base + 2);
    if leaf.eax == 0 {
        return Err(HalError::Hypercall(-38));
    }
    let gpa = core::ptr::addr_of!(xenblk_hypercall_page) as u64;
    // SAFETY: the caller promises identity mapping, so `gpa` is the page's
    // guest-physical address; the page is ours, 4 KiB aligned, and holds
    // nothing but the `int3` filler Xen overwrites. WRMSR to Xen's
    // hypercall MSR is intercepted by Xen and has no other effect.
    unsafe {
        asm!(
            "wrmsr",
            in("ecx") leaf.ebx,
            in("eax") gpa as u32,
            in("edx") (gpa >> 32) as u32,
            options(nostack, preserves_flags),
        );
    }
    Ok(())
}

/// A two-argument hypercall (`rdi`, `rsi`).
///
/// # Safety
///
/// The hypercall page is set up; `a1`, `a2` are what hypercall `op`
/// expects, any pointer among them to memory that is valid (and
/// identity-mapped) for the access that hypercall makes.
pub unsafe fn hypercall2(op: u32, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded to the caller; the register contract is the
    // module's: every argument register and rax clobbered, the stack usable.
    unsafe { hypercall3(op, a1, a2, 0) }
}

/// A three-argument hypercall (`rdi`, `rsi`, `rdx`).
///
/// # Safety
///
/// As for [`hypercall2`].
pub unsafe fn hypercall3(op: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    if op >= ENTRIES {
        // No stub: the call would land past the page.
        return -38; // -ENOSYS
    }
    let entry = core::ptr::addr_of!(xenblk_hypercall_page) as u64 + u64::from(op) * 32;
    let ret: i64;
    // SAFETY: the caller promises the page holds Xen's stubs and that the
    // arguments suit `op`; `entry` is `op`'s stub, inside the page, and
    // returns with the result in rax.
    unsafe {
        asm!(
            "call rax",
            inlateout("rax") entry => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            lateout("r10") _,
            lateout("r8") _,
        );
    }
    ret
}

/// Maps a hypercall return value: negative is `-errno`.
pub fn check(rc: i64) -> Result<u64, HalError> {
    if rc < 0 {
        Err(HalError::Hypercall(i32::try_from(rc).unwrap_or(i32::MIN)))
    } else {
        Ok(rc as u64)
    }
}

/// `__HYPERVISOR_xen_version(XENVER_version)`: `(major, minor)`.
///
/// # Safety
///
/// The hypercall page is set up.
pub unsafe fn xen_version() -> (u16, u16) {
    // SAFETY: XENVER_version takes no argument buffer.
    let v = unsafe { hypercall2(__HYPERVISOR_xen_version, XENVER_version.into(), 0) };
    ((v >> 16) as u16, v as u16)
}

/// `XENVER_extraversion` (e.g. `".7"`), NUL-trimmed.
///
/// # Safety
///
/// The hypercall page is set up.
pub unsafe fn xen_extraversion() -> [u8; 16] {
    let mut buf = [0u8; 16];
    // SAFETY: Xen writes at most 16 bytes (`xen_extraversion_t`) into
    // `buf`, which lives on our identity-mapped stack.
    let rc = unsafe {
        hypercall2(
            __HYPERVISOR_xen_version,
            XENVER_extraversion.into(),
            buf.as_mut_ptr() as u64,
        )
    };
    if rc < 0 {
        buf = [0; 16];
    }
    buf
}

/// Issues hypercall `op` with command `cmd` and a pointer to `arg`, the
/// shape of `memory_op`, `hvm_op`, `event_channel_op` and `sched_op`.
///
/// # Safety
///
/// The hypercall page is set up, and `T` is the argument struct `op`/`cmd`
/// expects (Xen may write it).
pub unsafe fn op_with_arg<T>(op: u32, cmd: u32, arg: &mut T) -> Result<u64, HalError> {
    // SAFETY: forwarded; `arg` is valid, identity-mapped memory of the
    // expected type.
    check(unsafe { hypercall2(op, cmd.into(), arg as *mut T as u64) })
}
