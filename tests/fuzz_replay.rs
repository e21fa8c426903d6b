//! Replays the fuzz targets' seed corpus and every past finding
//! (`fuzz/corpus/<target>/seed-*`, `fuzz/regressions/<target>/*`) through the
//! same harnesses `cargo fuzz` runs, plus a few hundred inputs from a fixed
//! pseudo-random stream, so `cargo test` keeps every one of them fixed
//! without nightly; and checks that a `hostile_backend` input runs the same
//! on the reused machine the fuzzer keeps as on a new one. Open findings
//! (`fuzz/findings/`) are not replayed: see its README.
//!
//! `XENBLK_FUZZ_DIR=<dir>` also replays and times every file of
//! `<dir>/<target>`; `XENBLK_FUZZ_ONE=<file>` runs one `hostile_backend`
//! input (with `XENBLK_FUZZ_TRACE=1`, step by step, `-- --nocapture`).
#![cfg(feature = "sim")]

#[allow(dead_code)]
#[path = "../fuzz/src/hostile.rs"]
mod hostile;
#[path = "../fuzz/src/keys.rs"]
mod keys;
#[path = "../fuzz/src/xs_replies.rs"]
mod xs_replies;

use std::path::Path;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for (dir, prefix) in [("corpus", "seed-"), ("regressions", "")] {
        let Ok(rd) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                out.push((name, std::fs::read(e.path()).expect("read input")));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// Fixed pseudo-random inputs (xorshift), the same on every run.
fn stream(seed: u64, n: usize, len: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8]), random: usize, len: usize) {
    // XENBLK_FUZZ_DIR=<dir>: also replay (and time) every file of <dir>/<target>,
    // e.g. a whole local corpus.
    if let Some(dir) = std::env::var_os("XENBLK_FUZZ_DIR") {
        if let Ok(rd) = std::fs::read_dir(Path::new(&dir).join(target)) {
            for e in rd.flatten() {
                let data = std::fs::read(e.path()).expect("read input");
                let t = std::time::Instant::now();
                run(&data);
                eprintln!("{:?} {:?}", t.elapsed(), e.path());
            }
        }
    }
    for (name, data) in inputs(target) {
        eprintln!("{target}/{name}");
        run(&data);
    }
    for data in stream(target.len() as u64, random, len) {
        run(&data);
    }
}

#[test]
fn hostile_backend_seeds_and_findings() {
    replay(
        "hostile_backend",
        hostile::run,
        if cfg!(miri) { 0 } else { 64 },
        300,
    );
}

/// The fuzzer reuses one machine ([`Testbed::reset_to`]) from input to
/// input; a finding must replay from its input alone. Every seed, every
/// finding and a few random inputs, each run on the machine the previous
/// one left behind, must see exactly what it sees on a new machine.
///
/// [`Testbed::reset_to`]: xenblk::sim::Testbed::reset_to
#[test]
fn hostile_backend_runs_on_a_reset_machine_as_on_a_new_one() {
    let mut all: Vec<Vec<u8>> = inputs("hostile_backend")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    all.extend(stream(7, if cfg!(miri) { 0 } else { 16 }, 300));
    let mut seen = std::collections::BTreeSet::new();
    for (i, data) in all.iter().enumerate() {
        let fresh = hostile::run_fresh(data);
        let reused = hostile::run_reused(data);
        eprintln!("input {i}: digest {fresh:016x}");
        assert_eq!(
            fresh, reused,
            "input {i} ran differently on a reused machine"
        );
        seen.insert(fresh);
    }
    assert!(seen.len() > all.len() / 2, "the digests tell runs apart");
}

#[test]
fn xenstore_replies_seeds_and_findings() {
    replay(
        "xenstore_replies",
        xs_replies::run,
        if cfg!(miri) { 4 } else { 500 },
        200,
    );
}

#[test]
fn backend_keys_seeds_and_findings() {
    replay(
        "backend_keys",
        keys::run,
        if cfg!(miri) { 4 } else { 500 },
        120,
    );
}

/// `XENBLK_FUZZ_ONE=<file>`: runs that one hostile_backend input (with
/// `XENBLK_FUZZ_TRACE=1` for its account), e.g. to look at a finding.
#[test]
fn hostile_backend_one_input() {
    if let Some(f) = std::env::var_os("XENBLK_FUZZ_ONE") {
        hostile::run(&std::fs::read(f).expect("read input"));
    }
}
