//! Passes the platform's linker script and link flags (xenblk-pvh-rt's
//! `DEP_XENBLK_PVH_RT_LINK_ARGS`) to the one binary of this crate, never as
//! global RUSTFLAGS, so build scripts and proc macros link as usual.

fn main() {
    let args = std::env::var("DEP_XENBLK_PVH_RT_LINK_ARGS")
        .expect("xenblk-pvh-rt publishes its link arguments");
    for arg in args.split('\u{1f}') {
        println!("cargo:rustc-link-arg-bin=xenblk-unikernel={arg}");
    }
}
