//! `sim`: under construction.

pub mod blkback;
