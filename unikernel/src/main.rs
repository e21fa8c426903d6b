//! # xenblk-unikernel
//!
//! An example PVH unikernel that links `xenblk` and runs it on real Xen.
//! Boot (`boot`): the PVH entry note, long mode, identity-mapped 4 GiB.
//! Then: heap, command line, CPUID looks for Xen. Without Xen (plain QEMU)
//! it says so and leaves through QEMU's `isa-debug-exit`. With Xen it brings
//! up `xenblk::pvh::Xen`, runs the mode the command line names (`modes`),
//! prints the closing line `xenblk: N passed, M failed`, and shuts down with
//! `SCHEDOP_shutdown`. Output protocol: the project's `docs/LINES.md`.
//!
//! Memory: the image, stack and a 32 MiB heap end below 48 MiB; run it with
//! `memory=64` in the xl config (see `targets/README.md`).
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
mod boot;
mod cksum;
mod console;
mod heap;
mod modes;
mod start_info;

use x86_64::instructions::port::Port;
use xenblk::pvh::{self, ShutdownReason, Xen};

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,
/// iosize=4`): writing `v` ends QEMU with exit status `(v << 1) | 1`.
const QEMU_EXIT_PORT: u16 = 0xf4;
/// Written when no Xen was found: QEMU exits with status 33.
pub const QEMU_EXIT_NO_XEN: u32 = 0x10;
/// Written on a panic without Xen: QEMU exits with status 35.
pub const QEMU_EXIT_PANIC: u32 = 0x11;

/// Called by `boot` in long mode with the `hvm_start_info` address.
#[no_mangle]
extern "C" fn xenblk_rust_entry(start_info_paddr: u32) -> ! {
    boot::install_exception_handlers();
    // SAFETY: first and only call, before any allocation.
    unsafe { heap::init() };
    console::init_log(log::LevelFilter::Info);

    // SAFETY: `start_info_paddr` is the PVH entry's %ebx and the boot code
    // identity-mapped the first 4 GiB.
    let start = unsafe { start_info::StartInfo::read(start_info_paddr) };
    let cmdline = start.as_ref().map_or("", |s| s.cmdline.as_str());
    let command = modes::Command::parse(cmdline);
    if let Some(start) = &start {
        log::debug!("hvm_start_info version {}", start.version);
    }
    let cpuid = match pvh::detect() {
        Ok(cpuid) => cpuid,
        Err(signature) => no_xen(&command, &signature),
    };
    // SAFETY: PVH guest on x86_64-unknown-none, identity-mapped below 4 GiB
    // (boot), interrupts off, heap up, `cpuid` from `detect`.
    let xen = match unsafe { Xen::init(cpuid) } {
        Ok(xen) => xen,
        Err(e) => {
            banner(&command);
            out!("xenblk-unikernel: error: Xen platform bring-up failed: {e}");
            out!("xenblk: 0 passed, 1 failed");
            // SAFETY: as for `Xen::init` above.
            unsafe { pvh::shutdown_early(ShutdownReason::Poweroff) };
            halt();
        }
    };
    console::attach_xen(xen);
    banner(&command);
    if start.is_none() {
        log::warn!("no hvm_start_info at {start_info_paddr:#x}: empty command line assumed");
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
    xen.shutdown(ShutdownReason::Poweroff)
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
    qemu_exit(QEMU_EXIT_NO_XEN)
}

/// Writes `code` to QEMU's `isa-debug-exit`, then halts if still running.
fn qemu_exit(code: u32) -> ! {
    // SAFETY: port 0xf4 is QEMU's debug-exit device when present, and
    // unused otherwise.
    unsafe { Port::<u32>::new(QEMU_EXIT_PORT).write(code) };
    halt()
}

fn halt() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
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

/// Called by the exception stubs of `boot`.
#[no_mangle]
extern "C" fn xenblk_exception(frame: &boot::ExceptionFrame) -> ! {
    panic!(
        "CPU exception {} (error {:#x}) at rip {:#x}, rsp {:#x}",
        frame.vector, frame.error, frame.rip, frame.rsp
    );
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => out!(
            "xenblk-panic: {} at {}:{}",
            info.message(),
            l.file(),
            l.line()
        ),
        None => out!("xenblk-panic: {}", info.message()),
    }
    if let Some(xen) = Xen::get() {
        xen.shutdown(ShutdownReason::Crash);
    }
    // SAFETY: the boot code identity-mapped memory before any Rust ran.
    unsafe { pvh::shutdown_early(ShutdownReason::Crash) };
    qemu_exit(QEMU_EXIT_PANIC)
}
