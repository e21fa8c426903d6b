//! The one seam between xenblk and the hypervisor.
//!
//! Everything above this module is generic over [`Hal`] (memory that can be
//! shared, the grant table, event channels, time) and over [`XsTransport`]
//! (the byte stream to xenstored). Two implementations exist: `pvh` talks to
//! real Xen from a PVH guest, `sim` is a simulated Xen on the host.
//!
//! The split of promises follows `virtio-drivers`' `Hal`: **Implementation
//! safety** lists what an implementor guarantees, **Safety** on an `unsafe fn`
//! lists what a caller guarantees.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32};

use crate::xenstore::XsError;
use crate::Result;

/// How a call into the hypervisor (or the platform's memory allocator) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HalError {
    /// No memory (pages, or heap for bookkeeping) is left.
    OutOfMemory,
    /// A hypercall returned a negative Xen errno; the value is `-errno` as
    /// the hypercall returned it.
    Hypercall(i32),
    /// A wait reached its deadline before any awaited event arrived.
    Timeout,
    /// An event-channel port that is not open (or out of range) was used.
    InvalidPort(u32),
}

impl fmt::Display for HalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HalError::OutOfMemory => f.write_str("out of memory"),
            HalError::Hypercall(rc) => {
                write!(f, "hypercall failed with Xen errno {}", rc.unsigned_abs())
            }
            HalError::Timeout => f.write_str("timed out waiting for an event"),
            HalError::InvalidPort(p) => write!(f, "event-channel port {p} is not open"),
        }
    }
}

impl core::error::Error for HalError {}

/// Size of a Xen page (`XEN_PAGE_SIZE`). Grants, rings and segments all work
/// in units of this.
pub const PAGE_SIZE: usize = 4096;

/// A Xen domain id (`domid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomId(pub u16);

impl DomId {
    /// The control domain.
    pub const DOM0: DomId = DomId(0);
    /// `DOMID_SELF`.
    pub const SELF: DomId = DomId(0x7ff0);
}

/// A grant reference (`grant_ref_t`): an index into the granting domain's
/// grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantRef(pub u32);

/// An event-channel port (`evtchn_port_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(pub u32);

/// A guest frame number: guest-physical address >> 12 (`xen_pfn_t` as used
/// in grant entries and ring references).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gfn(pub u64);

/// One version-1 grant-table entry as it sits in memory shared with the
/// hypervisor (`grant_entry_v1_t` in `grant_table.h`): `flags`, `domid`,
/// `frame`, 8 bytes.
///
/// The fields are atomics because the hypervisor (and, through it, the other
/// domain) updates `flags` concurrently (`GTF_reading` / `GTF_writing`).
/// `crate::abi` asserts that this has the layout of the C struct.
#[repr(C)]
#[derive(Debug, Default)]
pub struct GrantEntry {
    /// `GTF_*` flags; written last when granting, cleared with a
    /// compare-exchange when revoking.
    pub flags: AtomicU16,
    /// The domain being granted access.
    pub domid: AtomicU16,
    /// The frame being granted.
    pub frame: AtomicU32,
}

/// A run of zeroed, page-aligned memory that can be shared with another
/// domain, obtained from [`Hal::alloc_pages`].
///
/// The memory is virtually contiguous, and page `i` of it has guest frame
/// number `gfn().0 + i`. The value is a unique token: it is not `Clone`, and
/// giving it back to [`Hal::free_pages`] ends its life.
#[derive(Debug)]
pub struct Pages {
    ptr: NonNull<u8>,
    gfn: Gfn,
    count: usize,
}

// SAFETY: `Pages` is a unique owner of plain memory, like `Box<[u8]>`; the
// pointer is never aliased by another `Pages`.
unsafe impl Send for Pages {}
// SAFETY: `Pages` offers no interior mutability through `&self`; it only hands
// out raw pointers, whose use is governed by the callers' own unsafe code.
unsafe impl Sync for Pages {}

impl Pages {
    /// Wraps memory described by a [`Hal`] implementation.
    ///
    /// # Safety
    ///
    /// `ptr` must point to `count * PAGE_SIZE` bytes of zeroed (at the time of
    /// the call), page-aligned, readable and writable memory that nobody else
    /// owns, whose page `i` has guest frame number `gfn.0 + i`, and which stays
    /// valid until the value is given back to the `Hal` that made it.
    pub unsafe fn new(ptr: NonNull<u8>, gfn: Gfn, count: usize) -> Pages {
        Pages { ptr, gfn, count }
    }

    /// Start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start of the memory, non-null.
    pub fn as_non_null(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Guest frame number of the first page.
    pub fn gfn(&self) -> Gfn {
        self.gfn
    }

    /// Guest frame number of page `i`, or `None` past the end.
    pub fn page_gfn(&self, i: usize) -> Option<Gfn> {
        (i < self.count).then(|| Gfn(self.gfn.0 + i as u64))
    }

    /// Number of pages.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.count * PAGE_SIZE
    }

    /// Whether the run is empty (never true for memory from a `Hal`).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The hypervisor services xenblk needs.
///
/// # Implementation safety
///
/// Implementors promise that:
/// - [`alloc_pages`](Hal::alloc_pages) returns memory as described by
///   [`Pages::new`], never handed out twice while live;
/// - [`grant_table`](Hal::grant_table) returns the domain's real version-1
///   grant table: the slice stays valid and at the same address for the life
///   of `self`, the hypervisor honours the entries written there as
///   `grant_table.h` describes, and entry 0..[`GNTTAB_RESERVED`] are owned by
///   the toolstack (xenblk never touches them);
/// - event-channel methods act on this domain's ports only;
/// - [`now_ns`](Hal::now_ns) is monotonic.
///
/// A `Hal` carries no locks around the grant table or ports: the layers above
/// give each grant reference and port exactly one owner.
pub unsafe trait Hal {
    // ----- memory ---------------------------------------------------------------

    /// Allocates `count` zeroed pages that may be shared with other domains.
    ///
    /// # Errors
    ///
    /// [`HalError::OutOfMemory`] when no memory is left.
    fn alloc_pages(&self, count: usize) -> Result<Pages, HalError>;

    /// Gives pages back.
    ///
    /// # Safety
    ///
    /// `pages` came from this `Hal`; no reference or pointer into it is used
    /// afterwards, and no grant to it is still active (the caller revoked
    /// every grant, or quarantined the pages instead of freeing them).
    unsafe fn free_pages(&self, pages: Pages);

    /// The guest frame number of the page holding `vaddr`, if this platform
    /// can translate arbitrary guest memory (zero-copy I/O). The default says
    /// it cannot, and the driver then copies through its own pages.
    fn gfn_of(&self, vaddr: *const u8) -> Option<Gfn> {
        let _ = vaddr;
        None
    }

    // ----- grant table ----------------------------------------------------------

    /// This domain's version-1 grant table.
    fn grant_table(&self) -> &[GrantEntry];

    // ----- event channels ---------------------------------------------------------

    /// `EVTCHNOP_alloc_unbound`: a new port that `remote` may bind to.
    ///
    /// # Errors
    ///
    /// [`HalError::Hypercall`] with the hypervisor's errno.
    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<Port, HalError>;

    /// `EVTCHNOP_send`: signals the other end of `port`.
    ///
    /// # Errors
    ///
    /// [`HalError::InvalidPort`] for a port that is not open, or
    /// [`HalError::Hypercall`].
    fn evtchn_notify(&self, port: Port) -> Result<(), HalError>;

    /// `EVTCHNOP_close`: closes `port`.
    ///
    /// # Errors
    ///
    /// As for [`evtchn_notify`](Hal::evtchn_notify).
    fn evtchn_close(&self, port: Port) -> Result<(), HalError>;

    /// Tests and clears the pending flag of `port`. Returns whether it was set.
    fn evtchn_consume(&self, port: Port) -> bool;

    /// Blocks until at least one of `ports` is pending or `deadline` (in
    /// [`now_ns`](Hal::now_ns) time) has passed. Does not clear pending flags.
    /// `None` waits without a bound. A spurious early return is allowed:
    /// callers re-check their rings.
    ///
    /// # Errors
    ///
    /// [`HalError::Timeout`] when the deadline passed with none of the ports
    /// pending.
    fn evtchn_wait(&self, ports: &[Port], deadline: Option<u64>) -> Result<(), HalError>;

    // ----- time -------------------------------------------------------------------

    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// Number of grant references reserved for the toolstack
/// (`GNTTAB_NR_RESERVED_ENTRIES` in `grant_table.h`): the console and
/// xenstore pages.
pub const GNTTAB_RESERVED: usize = 8;

/// A byte stream to xenstored. The message framing (`xsd_sockmsg`) lives in
/// [`crate::xenstore`]; a transport only moves bytes.
///
/// [`crate::xenstore::RingTransport`] implements it over the shared
/// `xenstore_domain_interface` page, on real Xen and in the simulator alike.
/// Tests implement it directly to feed the client arbitrary bytes.
pub trait XsTransport {
    /// Copies as many bytes of `bytes` as fit into the request stream without
    /// blocking, notifies xenstored if any were written, and returns the count.
    ///
    /// # Errors
    ///
    /// [`XsError::Connection`] when the connection is unusable.
    fn send(&mut self, bytes: &[u8]) -> Result<usize, XsError>;

    /// Copies up to `buf.len()` available reply bytes without blocking and
    /// returns the count (0 when none are available).
    ///
    /// # Errors
    ///
    /// As for [`send`](XsTransport::send).
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, XsError>;

    /// Blocks until the stream may have moved (space to send, bytes to
    /// receive) or `deadline` passes. Spurious returns are allowed.
    ///
    /// # Errors
    ///
    /// [`XsError::Timeout`] at the deadline; [`XsError::Connection`] when the
    /// connection is unusable.
    fn wait(&mut self, deadline: Option<u64>) -> Result<(), XsError>;

    /// Monotonic time in nanoseconds, on the same clock as `wait`'s deadline.
    fn now_ns(&self) -> u64;
}
