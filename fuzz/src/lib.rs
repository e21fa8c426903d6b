//! Harnesses of the fuzz targets. Each takes arbitrary bytes and panics
//! only on a broken invariant; `tests/fuzz_replay.rs` in the main crate
//! includes the same files to replay the corpus seeds and past findings.

pub mod hostile;
pub mod keys;
pub mod xs_replies;
