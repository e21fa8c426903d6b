//! Hands the linker script and the link flags of a PVH image to the
//! unikernel's own build script (cargo's `links` metadata): a dependency
//! cannot pass link arguments to a binary itself, and they must never be
//! global RUSTFLAGS.

use std::path::PathBuf;

/// Separates the arguments in `DEP_XENBLK_PVH_RT_LINK_ARGS` (a path may
/// hold spaces).
const SEP: char = '\u{1f}';

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let script = dir.join("pvh.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    // Xen's ELF loader and QEMU's PVH loader place the PT_LOAD segments at
    // their physical addresses and never relocate: link a fixed-address
    // ET_EXEC (rustc asks lld for a static PIE on this target; the later
    // `--no-pie` wins).
    let args = [
        format!("-T{}", script.display()),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
        "--build-id=none".to_string(),
        "--no-dynamic-linker".to_string(),
    ];
    println!("cargo:link_args={}", args.join(&SEP.to_string()));
}
