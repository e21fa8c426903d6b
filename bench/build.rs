//! Build script of `xenblk-bench`: compiles the C baseline of the ring
//! benchmark (`bench/benches/c/ring_bench.c`, the `io/ring.h` macros) when it
//! can, and links it into the benchmarks only. The library `xenblk` has no
//! build script and never links any C.
//!
//! It does nothing (and the benchmark reports "C baseline unavailable") when
//! the target is not the host (e.g. `x86_64-unknown-none`), when the Xen
//! public headers (`xen/io/ring.h`, Debian `libxen-dev`) are missing, or when
//! the C compiler fails.

use std::env;
use std::path::{Path, PathBuf};

/// The cfg the benchmark checks for the C baseline.
const CFG: &str = "xenblk_c_ring";

fn main() {
    println!("cargo::rustc-check-cfg=cfg({CFG})");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=benches/c/ring_bench.c");
    println!("cargo::rerun-if-env-changed=XENBLK_XEN_INCLUDE");

    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    if target.is_empty() || target != host {
        return;
    }
    let include = env::var_os("XENBLK_XEN_INCLUDE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let ring_h = include.join("xen/io/ring.h");
    println!("cargo::rerun-if-changed={}", ring_h.display());
    if !ring_h.is_file() || !include.join("xen/io/blkif.h").is_file() {
        println!(
            "cargo::warning=xen/io/ring.h not found under {}: the ring benchmark runs without its C baseline",
            include.display()
        );
        return;
    }
    if compile(&include).is_none() {
        println!("cargo::warning=compiling benches/c/ring_bench.c failed: no C baseline");
        return;
    }
    println!("cargo::rustc-cfg={CFG}");
}

/// Compiles the shim twice (the `xen_mb()` of Linux, a locked add, and
/// `mfence`) into one static archive and links it into the benchmarks.
fn compile(include: &Path) -> Option<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR")?);
    let mut objects = Vec::new();
    for (variant, define) in [("lock", "RB_MB_LOCKED_ADD"), ("mfence", "RB_MB_MFENCE")] {
        let objs = cc::Build::new()
            .file("benches/c/ring_bench.c")
            .include(include)
            .opt_level(2)
            .debug(true)
            .warnings(true)
            .extra_warnings(true)
            .define(define, None)
            .define("RB_VARIANT", Some(variant))
            .cargo_metadata(false)
            .try_compile_intermediates()
            .ok()?;
        for o in objs {
            // Both variants compile the same file: give each object its own name.
            let named = out.join(format!("ring_bench_{variant}.o"));
            std::fs::rename(&o, &named).ok()?;
            objects.push(named);
        }
    }
    for o in &objects {
        println!("cargo::rustc-link-arg-benches={}", o.display());
    }
    Some(())
}
