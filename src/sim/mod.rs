//! A simulated Xen on the host (feature `sim`).
//!
//! [`SimXen`] models the parts of the hypervisor a PV block frontend touches,
//! closely enough that the generic layers of xenblk (and the crate users' own
//! code) run against it unchanged:
//!
//! - **memory**: each domain allocates zeroed, page-aligned pages that get
//!   synthetic guest frame numbers; freeing a page another domain still maps,
//!   or that is still granted, is caught and counted instead of being freed;
//! - **grant tables** (`grant_table.h`, version 1): each domain has a real
//!   table of [`GrantEntry`](crate::hal::GrantEntry)s that its guest code
//!   writes; other domains map or copy granted frames through
//!   [`SimXen::map_grant`] and [`SimXen::grant_copy_from`], which validate the
//!   entry and set `GTF_reading` / `GTF_writing` exactly like Xen's v1 path;
//! - **event channels** (`event_channel.h`): unbound ports, inter-domain
//!   binding, send, close, pending flags, and a notification counter per port;
//! - **time**: a virtual clock in step mode, the real monotonic clock in
//!   threaded mode;
//! - **devices**: simulated backends and xenstored implement [`SimDevice`] and
//!   are driven by the simulator.
//!
//! # A whole machine in one call
//!
//! [`Testbed`] builds what a driver test needs — a [`SimXen`], a simulated
//! xenstored, the guest domain introduced as the toolstack does, and one
//! simulated backend per virtual disk (numbered as Linux does, see
//! [`vdev_of`]) — and [`Testbed::guest`] gives the guest's grant table and
//! xenstore client, through which [`Guest::probe`] connects a disk:
//!
//! ```
//! use xenblk::blkfront::Config;
//! use xenblk::sim::{blkback::BackendConfig, Testbed};
//!
//! let tb = Testbed::builder().disk(BackendConfig::blkback()).build();
//! let guest = tb.guest();
//! let mut disk = guest.probe(0, Config::default()).unwrap();
//! let mut buf = vec![0xff; 512];
//! disk.read(0, &mut buf).unwrap();
//! assert_eq!(buf, vec![0; 512]);
//! ```
//!
//! The rest of this page is the machinery underneath, for tests that need
//! its pieces one by one. A test that wants to be the backend itself, one
//! request and one response at a time (or to break the ring protocol on
//! purpose), attaches a [`RingPeer`] to the frontend's ring instead of
//! adding a simulated backend.
//!
//! # Step mode and threaded mode
//!
//! [`SimXen::new`] is deterministic: nothing runs on its own. Whenever guest
//! code waits ([`Hal::evtchn_wait`](crate::hal::Hal::evtchn_wait) on a
//! [`SimHal`], or [`SimXen::wait_until`]), the simulator steps the devices
//! until the awaited event is pending; when no device can make progress it
//! moves the virtual clock to the next device wake-up, or to the deadline and
//! returns [`HalError::Timeout`](crate::hal::HalError::Timeout). A deadlock therefore ends
//! in a timeout, never in a hung test.
//!
//! [`SimXen::new_threaded`] runs the devices on a background thread instead
//! and uses real time; guest waits block on a condition variable.
//!
//! # Devices
//!
//! [`SimXen::add_device`] takes a device by value and returns a
//! [`DeviceHandle`] through which tests reach the same device (for inspection
//! or fault injection) while the simulator drives it. Devices are kept behind a
//! lock separate from the hypervisor state, so [`SimDevice::step`] may call
//! any [`SimXen`] method. A device that is locked by a test is skipped by the
//! runner until it is released. A device that holds what holds the simulator
//! (grant mappings, a xenstored handle) is added with
//! [`SimXen::add_weak_device`] instead, and lives as long as its handle.
//!
//! # Example: a guest, a backend device, and a grant
//!
//! ```
//! use xenblk::hal::{DomId, GrantRef, Hal, Port};
//! use xenblk::gnttab::GrantTable;
//! use xenblk::sim::{SimDevice, SimXen};
//!
//! const GUEST: DomId = DomId(1);
//!
//! /// A toy backend: on each event, writes "pong" into the granted page and
//! /// signals back.
//! struct Pong { port: Port, gref: GrantRef }
//!
//! impl SimDevice for Pong {
//!     fn step(&mut self, xen: &SimXen) -> bool {
//!         if !xen.consume(DomId::DOM0, self.port) {
//!             return false;
//!         }
//!         let page = xen.map_grant(DomId::DOM0, GUEST, self.gref, false).unwrap();
//!         page.write(0, b"pong").unwrap();
//!         page.unmap();
//!         xen.send(DomId::DOM0, self.port).is_ok()
//!     }
//!     fn name(&self) -> &str { "pong" }
//! }
//!
//! let xen = SimXen::new();
//! let guest = xen.hal(GUEST);
//! let grants = GrantTable::new(&guest).unwrap();
//! let page = guest.alloc_pages(1).unwrap();
//! let gref = grants.grant_access(DomId::DOM0, page.gfn(), false).unwrap();
//! let port = guest.evtchn_alloc_unbound(DomId::DOM0).unwrap();
//! let back = xen.bind_interdomain(DomId::DOM0, GUEST, port).unwrap();
//! let pong = xen.add_device(Pong { port: back, gref });
//!
//! guest.evtchn_notify(port).unwrap();
//! guest.evtchn_wait(&[port], Some(1_000_000)).unwrap(); // steps `Pong`
//! assert!(guest.evtchn_consume(port));
//! // SAFETY: our own live page; the backend unmapped it.
//! assert_eq!(unsafe { core::slice::from_raw_parts(page.as_ptr(), 4) }, b"pong");
//!
//! xen.remove_device(pong.id());
//! grants.end_access_and_free(gref).unwrap();
//! // SAFETY: the grant ended; nothing uses the page afterwards.
//! unsafe { guest.free_pages(page) };
//! guest.evtchn_close(port).unwrap();
//! let left = xen.accounting(GUEST);
//! assert_eq!((left.pages, left.grants_active, left.ports_open), (0, 0, 0));
//! ```

pub mod blkback;
mod device;
mod event;
mod grant;
mod hal;
mod peer;
mod testbed;
mod xen;
pub mod xenstored;

pub use device::{DeviceHandle, DeviceId, SimDevice};
pub use event::PortInfo;
pub use grant::GrantMapping;
pub use hal::SimHal;
pub use peer::RingPeer;
pub use testbed::{vdev_of, Guest, SimDisk, Testbed, TestbedBuilder};
pub use xen::{Accounting, ResetError, SimConfig, SimXen};

/// Xen errno values (`xen/errno.h`) the simulator returns inside
/// [`HalError::Hypercall`](crate::hal::HalError::Hypercall), negated as hypercalls do.
pub mod errno {
    /// Operation not permitted: e.g. a grant that is not `GTF_permit_access`
    /// for the mapping domain.
    pub const EPERM: i32 = 1;
    /// The grant entry kept changing under a compare-exchange.
    pub const EAGAIN: i32 = 11;
    /// Invalid argument: grant reference out of range, frame not owned by
    /// the granting domain, copy crossing a page boundary, port in the wrong
    /// state.
    pub const EINVAL: i32 = 22;
    /// No free event-channel port.
    pub const ENOSPC: i32 = 28;
    /// A write to a read-only grant.
    pub const EROFS: i32 = 30;
}
