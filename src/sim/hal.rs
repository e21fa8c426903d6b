//! [`SimHal`]: the [`Hal`] of one simulated domain.

use std::fmt;
use std::sync::Arc;

use super::SimXen;
use crate::hal::{DomId, Gfn, GrantEntry, Hal, Pages, Port};
use crate::Result;

/// The platform seam for guest code running as one domain of a [`SimXen`].
/// Cheap to clone; clones act for the same domain.
#[derive(Clone)]
pub struct SimHal {
    xen: SimXen,
    domid: DomId,
    table: Arc<[GrantEntry]>,
}

impl fmt::Debug for SimHal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHal")
            .field("domid", &self.domid)
            .field("grant_entries", &self.table.len())
            .finish()
    }
}

impl SimHal {
    pub(super) fn new(xen: SimXen, domid: DomId, table: Arc<[GrantEntry]>) -> SimHal {
        SimHal { xen, domid, table }
    }

    /// The domain this acts for.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// The simulator behind it.
    pub fn xen(&self) -> &SimXen {
        &self.xen
    }
}

// SAFETY: `alloc_pages` hands out fresh registry memory once (see
// `SimXen::alloc_pages`); the grant table is this domain's `Arc`ed table,
// which never moves and which the simulated hypervisor honours as
// grant_table.h describes; event-channel calls name `self.domid`; the clock
// is monotonic in both modes.
unsafe impl Hal for SimHal {
    fn alloc_pages(&self, count: usize) -> Result<Pages> {
        self.xen.alloc_pages(self.domid, count)
    }

    unsafe fn free_pages(&self, pages: Pages) {
        self.xen.free_pages(self.domid, pages)
    }

    fn gfn_of(&self, vaddr: *const u8) -> Option<Gfn> {
        self.xen.gfn_of(self.domid, vaddr)
    }

    fn grant_table(&self) -> &[GrantEntry] {
        &self.table
    }

    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<Port> {
        self.xen.alloc_unbound(self.domid, remote)
    }

    fn evtchn_notify(&self, port: Port) -> Result<()> {
        self.xen.send(self.domid, port)
    }

    fn evtchn_close(&self, port: Port) -> Result<()> {
        self.xen.close_port(self.domid, port)
    }

    fn evtchn_consume(&self, port: Port) -> bool {
        self.xen.consume(self.domid, port)
    }

    fn evtchn_wait(&self, ports: &[Port], deadline: Option<u64>) -> Result<()> {
        self.xen
            .wait_until(deadline, || self.xen.any_pending(self.domid, ports))
    }

    fn now_ns(&self) -> u64 {
        self.xen.now_ns()
    }
}
