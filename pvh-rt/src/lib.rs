//! # xenblk-pvh-rt — a PVH platform for unikernels that use xenblk
//!
//! Everything between Xen's PVH loader and a unikernel's `main`: the Xen ELF
//! notes and the 32-bit entry, long mode with early page tables, an IDT that
//! turns CPU exceptions into panics, the heap, the `hvm_start_info` command
//! line, the console (Xen's debug port `0xe9` and the PV console ring, and a
//! `log` backend), a panic handler, and `xenblk::pvh::Xen` brought up.
//!
//! ## Using it
//!
//! ```ignore
//! // src/main.rs of a binary crate built for x86_64-unknown-none
//! #![no_std]
//! #![no_main]
//! xenblk_pvh_rt::entry!(name = "my-guest", main = main);
//!
//! fn main(boot: xenblk_pvh_rt::Boot) -> ! {
//!     xenblk_pvh_rt::out!("hello from {}", boot.cmdline());
//!     match boot.xen {
//!         Ok(xen) => xen.shutdown(xenblk::pvh::ShutdownReason::Poweroff),
//!         // Plain QEMU: exit status (1 << 1) | 1 = 3 through isa-debug-exit.
//!         Err(no_xen) => {
//!             xenblk_pvh_rt::out!("{no_xen}");
//!             xenblk_pvh_rt::qemu_exit(1)
//!         }
//!     }
//! }
//! ```
//!
//! ```ignore
//! // build.rs: the link arguments, for this one binary (the Cargo binary
//! // name, which need not be the guest name of `entry!`). Without them the
//! // link fails with some twenty "rust-lld: error: relocation R_X86_64_64
//! // cannot be used against symbol 'pvh_start32'; recompile with -fPIC"
//! // lines.
//! fn main() {
//!     let args = std::env::var("DEP_XENBLK_PVH_RT_LINK_ARGS").expect("xenblk-pvh-rt");
//!     for a in args.split('\u{1f}') {
//!         println!("cargo:rustc-link-arg-bin=my-guest={a}");
//!     }
//! }
//! ```
//!
//! Build for `x86_64-unknown-none` (`--target`, or `build.target` in
//! `.cargo/config.toml`); boot with `type = "pvh"`,
//! `kernel = "<the ELF>"` and a `memory` that holds the image (under 2 MiB
//! for the example unikernel) and the heap your guest needs.
//!
//! ## The contract
//!
//! - **Memory.** The image is linked at 1 MiB (`pvh.ld`): text, data, then
//!   NOLOAD bss and a 256 KiB stack, below 8 MiB. The boot code
//!   identity-maps the first 4 GiB with 2 MiB pages (virtual == physical,
//!   present + writable), which `xenblk::pvh` relies on: a frame number is
//!   an address >> 12. Nothing above 4 GiB is mapped. The heap is every
//!   page of RAM in the start info's memory map (version 1, which Xen and
//!   QEMU give a PVH guest) between the image's end and 4 GiB, less what
//!   the loader placed there ([`heap`], [`memmap`]): it grows with the xl
//!   config's `memory`.
//! - **Interrupts** stay disabled for the whole run; the IDT only catches
//!   exceptions, each of which ends in the panic handler. Event channels are
//!   polled (`SCHEDOP_poll`), never delivered as interrupts: `xenblk::pvh`
//!   masks every port and the upcall at bring-up, so a unikernel that wants
//!   event-channel interrupts cannot use this platform as it is.
//! - **xenstore**: `Xen::take_xenstore` hands out the domain's one
//!   connection once per run; share it (`xenblk::blkfront::SharedStore`).
//! - **Symbols.** The crate defines `pvh_start32` (the entry), the section
//!   `.note.xen`, the functions `xenblk_pvh_rt_entry` and
//!   `xenblk_pvh_rt_exception`, the table `xenblk_pvh_rt_exc_stubs`, the
//!   linker symbols of `pvh.ld` (`__bss_*`, `__stack_*`, `__image_*`), a `#[panic_handler]`, and with the `heap` feature (on by
//!   default) the `#[global_allocator]`. [`entry!`] defines
//!   `xenblk_pvh_main` and the guest-name note. xenblk itself adds only the
//!   hidden `xenblk_hypercall_page`.
//! - **One CPU.** Everything runs on the boot vCPU.
//! - **Leaving.** A panic prints `xenblk-panic: ...`, then crashes the
//!   domain (`SHUTDOWN_crash`), or without Xen ends QEMU through
//!   `isa-debug-exit` (exit status 35).
#![no_std]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]
#![warn(rust_2018_idioms)]

extern crate alloc;

mod boot;
pub mod console;
pub mod heap;
pub mod memmap;
pub mod start_info;

pub use boot::ExceptionFrame;
pub use start_info::StartInfo;

use core::ptr::addr_of;

use x86_64::instructions::port::Port;
use xenblk::hal::HalError;
use xenblk::pvh::{self, ShutdownReason, Xen};

/// QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,
/// iosize=4`): writing `v` ends QEMU with exit status `(v << 1) | 1`.
const QEMU_EXIT_PORT: u16 = 0xf4;
/// What the panic handler writes without Xen: QEMU exits with status 35.
pub const QEMU_EXIT_PANIC: u32 = 0x11;

/// Why `xenblk::pvh::Xen` is not there.
#[derive(Debug)]
pub enum NoXen {
    /// No Xen CPUID leaves: the signature found instead (plain QEMU shows
    /// `TCGTCGTCGTCG` or zeros).
    NotFound([u8; 12]),
    /// Xen is there, but its platform could not be brought up.
    InitFailed(HalError),
}

/// Says what was found instead of Xen, or why it could not be brought up.
impl core::fmt::Display for NoXen {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NoXen::NotFound(sig) => {
                f.write_str("no Xen hypervisor (CPUID 0x40000000 signature \"")?;
                for &b in sig {
                    let c = if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    };
                    core::fmt::Write::write_char(f, c)?;
                }
                f.write_str("\")")
            }
            NoXen::InitFailed(e) => write!(f, "Xen found, but its platform failed: {e}"),
        }
    }
}

/// What the platform hands to the unikernel's `main`.
#[derive(Debug)]
pub struct Boot {
    /// The start-of-day structure, when the loader left a valid one.
    pub start_info: Option<StartInfo>,
    /// The address the loader passed it at (`%ebx`).
    pub start_info_paddr: u32,
    /// The Xen platform, console attached.
    pub xen: Result<&'static Xen, NoXen>,
}

impl Boot {
    /// The command line (`cmdline` of the xl config), empty when none.
    pub fn cmdline(&self) -> &str {
        self.start_info.as_ref().map_or("", |s| s.cmdline.as_str())
    }
}

/// Declares the unikernel's entry: `main` is called once the platform is
/// up, and `name` becomes the image's `XEN_ELFNOTE_GUEST_OS` note (the
/// crate's version its `GUEST_VERSION`).
///
/// ```ignore
/// xenblk_pvh_rt::entry!(name = "my-guest", main = main);
/// fn main(boot: xenblk_pvh_rt::Boot) -> ! { loop {} }
/// ```
#[macro_export]
macro_rules! entry {
    (name = $name:literal, main = $main:path $(,)?) => {
        ::core::arch::global_asm!(
            ".pushsection .note.xen, \"a\", @note",
            ".balign 4",
            ".long 4, 2f - 1f, 6", // XEN_ELFNOTE_GUEST_OS
            ".asciz \"Xen\"",
            ".balign 4",
            concat!("1: .asciz \"", $name, "\""),
            "2: .balign 4",
            ".long 4, 2f - 1f, 7", // XEN_ELFNOTE_GUEST_VERSION
            ".asciz \"Xen\"",
            ".balign 4",
            concat!("1: .asciz \"", env!("CARGO_PKG_VERSION"), "\""),
            "2: .balign 4",
            ".popsection",
            options(att_syntax)
        );

        /// The unikernel's entry, called by the platform.
        #[unsafe(no_mangle)]
        fn xenblk_pvh_main(boot: $crate::Boot) -> ! {
            let main: fn($crate::Boot) -> ! = $main;
            main(boot)
        }
    };
}

extern "Rust" {
    /// Defined by [`entry!`].
    fn xenblk_pvh_main(boot: Boot) -> !;
}

/// The end of the boot code's identity map (4 GiB).
const IDENTITY_MAP_END: u64 = 1 << 32;

extern "C" {
    /// One past the image, its bss and stack (linker script).
    static __image_end: u8;
}

/// Called by the boot code in long mode with the `hvm_start_info` address.
#[unsafe(no_mangle)]
extern "C" fn xenblk_pvh_rt_entry(start_info_paddr: u32) -> ! {
    boot::install_exception_handlers();
    // SAFETY: `start_info_paddr` is the PVH entry's %ebx and the boot code
    // identity-mapped the first 4 GiB.
    let loader = unsafe { start_info::LoaderMemory::read(start_info_paddr) };
    let reach = memmap::Region {
        start: addr_of!(__image_end) as u64,
        end: IDENTITY_MAP_END,
    };
    heap::set_plan(memmap::plan(loader.map(), reach, loader.in_use()));
    #[cfg(feature = "heap")]
    // SAFETY: first and only call, after set_plan, before any allocation.
    unsafe {
        heap::init()
    };
    console::init_log(log::LevelFilter::Info);
    // SAFETY: `start_info_paddr` is the PVH entry's %ebx and the boot code
    // identity-mapped the first 4 GiB.
    let start_info = unsafe { StartInfo::read(start_info_paddr) };
    let xen = match pvh::detect() {
        // SAFETY: PVH guest on x86_64-unknown-none, identity-mapped below
        // 4 GiB (boot), interrupts off, heap up, `cpuid` from `detect`.
        Ok(cpuid) => match unsafe { Xen::init(cpuid) } {
            Ok(xen) => {
                console::attach_xen(xen);
                Ok(xen)
            }
            Err(e) => Err(NoXen::InitFailed(e)),
        },
        Err(signature) => Err(NoXen::NotFound(signature)),
    };
    let boot = Boot {
        start_info,
        start_info_paddr,
        xen,
    };
    // SAFETY: `entry!` defines it with this signature; it is called once.
    unsafe { xenblk_pvh_main(boot) }
}

/// Called by the exception stubs of the boot code.
#[unsafe(no_mangle)]
extern "C" fn xenblk_pvh_rt_exception(frame: &ExceptionFrame) -> ! {
    // Not a panic!: its location would be this file, not the fault's.
    out!(
        "xenblk-panic: CPU exception {} ({}, error {:#x}) at rip {:#x}, rsp {:#x}",
        frame.vector,
        exception_name(frame.vector),
        frame.error,
        frame.rip,
        frame.rsp
    );
    crash()
}

/// The mnemonic and name of exception `vector` (Intel SDM vol. 3, table
/// 6-1).
fn exception_name(vector: u64) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range exceeded",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack-segment fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 floating-point error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD floating-point",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        _ => "reserved",
    }
}

/// Ends the domain after a `xenblk-panic` line: `SHUTDOWN_crash`, or
/// without Xen QEMU's exit with status 35.
fn crash() -> ! {
    if let Some(xen) = Xen::get() {
        xen.shutdown(ShutdownReason::Crash);
    }
    // SAFETY: the boot code identity-mapped memory before any Rust ran.
    unsafe { pvh::shutdown_early(ShutdownReason::Crash) };
    qemu_exit(QEMU_EXIT_PANIC)
}

/// Shuts the domain down with `reason`, before or after `Xen` is up.
pub fn shutdown(reason: ShutdownReason) -> ! {
    if let Some(xen) = Xen::get() {
        xen.shutdown(reason);
    }
    // SAFETY: the boot code identity-mapped memory before any Rust ran.
    unsafe { pvh::shutdown_early(reason) };
    halt()
}

/// Writes `code` to QEMU's `isa-debug-exit` (QEMU exits with status
/// `(code << 1) | 1`), then halts if still running.
pub fn qemu_exit(code: u32) -> ! {
    // SAFETY: port 0xf4 is QEMU's debug-exit device when present, and
    // unused otherwise.
    unsafe { Port::<u32>::new(QEMU_EXIT_PORT).write(code) };
    halt()
}

/// Halts for good (interrupts off).
pub fn halt() -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        x86_64::instructions::hlt();
    }
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
    crash()
}
