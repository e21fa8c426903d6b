//! `#[repr(C)]` wire types and constants of the Xen public headers.
//!
//! Each submodule mirrors one header (or a closely related group) of Xen
//! 4.17's public interface, x86_64 layout; constants keep their C spelling so
//! that they can be grepped in the headers. Sizes and offsets are asserted at
//! compile time in each file, and `tests/abi_layout.rs` checks every struct
//! and constant against the real headers of Debian's `libxen-dev`.
//!
//! | module | header |
//! |---|---|
//! | [`blkif`] | `io/blkif.h` |
//! | [`sring`] | `io/ring.h` |
//! | [`xs_wire`] | `io/xs_wire.h` |
//! | [`grant`] | `grant_table.h` |
//! | [`event_channel`] | `event_channel.h` |
//! | [`sched`] | `sched.h` |
//! | [`memory`] | `memory.h` |
//! | [`hvm`] | `hvm/hvm_op.h`, `hvm/params.h`, `arch-x86/hvm/start_info.h` |
//! | [`shared_info`] | `xen.h` (`shared_info`, `vcpu_info`), `io/console.h` |
//! | [`xen`] | `xen.h` (hypercall numbers, domain ids) |
//!
//! xenbus states (`io/xenbus.h`) are [`crate::xenbus::XenbusState`].

pub mod blkif;
pub mod event_channel;
pub mod grant;
pub mod hvm;
pub mod memory;
pub mod sched;
pub mod shared_info;
pub mod sring;
pub mod xen;
pub mod xs_wire;
