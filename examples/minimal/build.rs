//! The platform's linker script and flags, for this binary only.
fn main() {
    let args = std::env::var("DEP_XENBLK_PVH_RT_LINK_ARGS").expect("xenblk-pvh-rt");
    for arg in args.split('\u{1f}') {
        println!("cargo:rustc-link-arg-bin=xenblk-minimal={arg}");
    }
}
