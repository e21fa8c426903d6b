//! Passes the linker script and the non-PIE flags to the one binary of this
//! crate (never as global RUSTFLAGS, so build scripts and proc macros of the
//! dependency graph link as usual).

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let script = manifest.join("..").join("linker").join("unikernel.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    let bin = "xenblk-unikernel";
    // Xen's ELF loader and QEMU's PVH loader place the PT_LOAD segments at
    // their physical addresses and never relocate: link a fixed-address
    // ET_EXEC (rustc asks lld for a static PIE on this target; the later
    // `--no-pie` wins).
    for arg in [
        format!("-T{}", script.display()),
        "--no-pie".to_string(),
        "-zmax-page-size=4096".to_string(),
        "--build-id=none".to_string(),
        "--no-dynamic-linker".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin={bin}={arg}");
    }
}
