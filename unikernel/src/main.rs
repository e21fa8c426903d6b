//! # xenblk-unikernel
//!
//! An example PVH unikernel that links `xenblk` and runs it on real Xen,
//! on the platform of `xenblk-pvh-rt` (entry, long mode, heap, console,
//! panics; see that crate's contract). Without Xen (plain QEMU) it says so
//! and leaves through QEMU's `isa-debug-exit`. With Xen it runs the mode
//! the command line names (`modes`), prints the closing line
//! `xenblk: N passed, M failed`, and shuts down with `SCHEDOP_shutdown`.
//! Output protocol: the project's `docs/LINES.md`.
//!
//! Memory: the image and its stack end below 2 MiB; the heap is the rest of
//! the domain's RAM (xenblk-pvh-rt sizes it from the memory map), so the
//! xl config's `memory` sets it (`targets/README.md` gives the minimum of
//! each mode).
#![no_std]
#![no_main]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]
#![warn(rust_2018_idioms)]

extern crate alloc;

mod benchcmd;
mod cksum;
mod modes;

use xenblk::pvh::ShutdownReason;
pub(crate) use xenblk_pvh_rt::out;
use xenblk_pvh_rt::{heap, Boot, NoXen};

xenblk_pvh_rt::entry!(name = "xenblk-unikernel", main = main);

/// Written when no Xen was found: QEMU exits with status 33.
pub const QEMU_EXIT_NO_XEN: u32 = 0x10;

fn main(boot: Boot) -> ! {
    let command = modes::Command::parse(boot.cmdline());
    if let Some(start) = &boot.start_info {
        log::debug!("hvm_start_info version {}", start.version);
    }
    let xen = match boot.xen {
        Ok(xen) => xen,
        Err(NoXen::NotFound(signature)) => no_xen(&command, &signature),
        Err(NoXen::InitFailed(e)) => {
            banner(&command);
            out!("xenblk-unikernel: error: Xen platform bring-up failed: {e}");
            out!("xenblk: 0 passed, 1 failed");
            xenblk_pvh_rt::shutdown(ShutdownReason::Poweroff);
        }
    };
    banner(&command);
    if boot.start_info.is_none() {
        log::warn!(
            "no hvm_start_info at {:#x}: empty command line assumed",
            boot.start_info_paddr
        );
    }
    log::info!(
        "Xen {} (CPUID base {:#x}), {} grant frames, PV console {}, heap {} MiB",
        xen.version(),
        xen.cpuid().base,
        xen.grant_frames(),
        if xen.has_console() { "yes" } else { "no" },
        heap::arena_size() >> 20,
    );
    if let Some(what) = command.arg("selftest") {
        selftest(what);
    }
    let outcome = modes::run(&modes::Context {
        xen,
        command: &command,
    });
    out!(
        "xenblk: {} passed, {} failed",
        outcome.passed,
        outcome.failed
    );
    xen.shutdown(if outcome.reboot {
        ShutdownReason::Reboot
    } else {
        ShutdownReason::Poweroff
    })
}

fn banner(command: &modes::Command) {
    out!(
        "xenblk-unikernel: mode={} cmdline=\"{}\"",
        command.mode_name,
        command.cmdline
    );
}

/// The plain-QEMU path: say that no Xen is here, leave through
/// `isa-debug-exit`, else halt.
fn no_xen(command: &modes::Command, signature: &[u8; 12]) -> ! {
    banner(command);
    if let Some(what) = command.arg("selftest") {
        selftest(what);
    }
    let mut sig = [0u8; 12];
    for (s, &b) in sig.iter_mut().zip(signature) {
        *s = if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'.'
        };
    }
    out!(
        "xenblk-unikernel: no Xen hypervisor found (CPUID 0x40000000 leaf signature \"{}\")",
        core::str::from_utf8(&sig).unwrap_or("?")
    );
    xenblk_pvh_rt::qemu_exit(QEMU_EXIT_NO_XEN)
}

/// `selftest=panic` / `selftest=exception`: proves that a panic and a CPU
/// exception end in a `xenblk-panic` line and a crash exit (QEMU exit 35,
/// or `SHUTDOWN_crash` under Xen).
fn selftest(what: &str) {
    match what {
        "panic" => panic!("selftest: deliberate panic"),
        "exception" => {
            // SAFETY: UD2 raises #UD on purpose; the handler never returns.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) }
        }
        other => log::warn!("unknown selftest {other:?} ignored"),
    }
}
