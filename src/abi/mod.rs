//! `#[repr(C)]` wire types and constants of the Xen public headers.
//!
//! Each submodule mirrors one header. Sizes and offsets are asserted at
//! compile time here, and `tests/abi_layout.rs` checks them against the real
//! headers of Debian's `libxen-dev`.

pub mod blkif;
pub mod sring;
pub mod xs_wire;
