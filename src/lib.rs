//! # xenblk — a `no_std` Xen PV block frontend
//!
//! xenblk finds its virtual disks in xenstore, negotiates features with the
//! backend the toolstack gave it (Linux blkback, QEMU qdisk, a driver domain),
//! shares rings and data pages through grant references, and moves requests
//! through the shared ring without locks. It reports every property the
//! backend publishes — including `direct-io-safe` — so an operator can see why
//! a disk behaves as it does.
//!
//! ## Layers, bottom up
//!
//! | module | job |
//! |---|---|
//! | [`abi`] | `#[repr(C)]` wire types of the Xen public headers |
//! | [`ring`] | the lock-free shared ring of `io/ring.h` |
//! | [`hal`] | the one seam to the hypervisor |
//! | [`xenstore`] | xenstore client over a byte transport |
//! | [`gnttab`], [`evtchn`] | grant references and event channels |
//! | [`xenbus`] | device enumeration and the `XenbusState` machine |
//! | [`blkfront`] | the block frontend driver |
//! | [`blockdev`] | a disk as bytes; `embedded-io` and `embedded-sdmmc` adapters (features) |
//! | `pvh` (feature `pvh`) | `hal` on real Xen from a PVH guest |
//! | `sim` (feature `sim`) | a simulated Xen on the host |
//!
//! Everything above `hal` is generic and runs in host tests against `sim`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(
    unsafe_op_in_unsafe_fn,
    missing_docs,
    clippy::undocumented_unsafe_blocks
)]
#![warn(rust_2018_idioms)]

#[allow(unused_extern_crates)] // used by blkfront and xenstore
extern crate alloc;

pub mod abi;
pub mod blkfront;
pub mod blockdev;
pub mod control;
pub mod error;
pub mod evtchn;
pub mod gnttab;
pub mod hal;
pub mod ring;
pub mod xenbus;
pub mod xenstore;

// Built for the guest target; its docs build on any x86_64 host too, so
// that they appear on docs.rs.
#[cfg(all(feature = "pvh", target_arch = "x86_64", any(target_os = "none", doc)))]
pub mod pvh;

#[cfg(feature = "sim")]
pub mod sim;

pub use error::{Error, Result};

/// The README's examples, compiled and run as doctests against the
/// simulator, so that they cannot rot.
#[cfg(all(
    doctest,
    feature = "sim",
    feature = "embedded-io",
    feature = "embedded-sdmmc"
))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
