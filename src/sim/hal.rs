//! [`SimHal`]: the [`Hal`] of one simulated domain.

use std::fmt;
use std::sync::Arc;

use super::SimXen;
use crate::hal::{DomId, Gfn, GrantEntry, Hal, HalError, Pages, Port};
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
    fn alloc_pages(&self, count: usize) -> Result<Pages, HalError> {
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

    fn evtchn_alloc_unbound(&self, remote: DomId) -> Result<Port, HalError> {
        self.xen.alloc_unbound(self.domid, remote)
    }

    fn evtchn_notify(&self, port: Port) -> Result<(), HalError> {
        self.xen.send(self.domid, port)
    }

    fn evtchn_close(&self, port: Port) -> Result<(), HalError> {
        self.xen.close_port(self.domid, port)
    }

    fn evtchn_consume(&self, port: Port) -> bool {
        self.xen.consume(self.domid, port)
    }

    fn evtchn_wait(&self, ports: &[Port], deadline: Option<u64>) -> Result<(), HalError> {
        self.xen
            .wait_until(deadline, || self.xen.any_pending(self.domid, ports))
    }

    fn now_ns(&self) -> u64 {
        self.xen.now_ns()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRONT: DomId = DomId(1);

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn simhal_is_shareable_across_threads() {
        assert_send_sync::<SimHal>();
        assert_send_sync::<SimXen>();
        assert_send_sync::<super::super::GrantMapping>();
    }

    #[test]
    fn clones_and_new_hals_share_one_grant_table() {
        let xen = SimXen::new();
        let a = xen.hal(FRONT);
        let b = a.clone();
        let c = xen.hal(FRONT);
        let other = xen.hal(DomId(2));
        assert_eq!(a.grant_table().as_ptr(), b.grant_table().as_ptr());
        assert_eq!(a.grant_table().as_ptr(), c.grant_table().as_ptr());
        assert_ne!(a.grant_table().as_ptr(), other.grant_table().as_ptr());
        assert_eq!(a.grant_table().len(), 4 * 512, "default: 4 frames");
        assert_eq!((a.domid(), other.domid()), (FRONT, DomId(2)));
        assert_eq!(a.xen().now_ns(), 0);
    }

    #[test]
    fn waiting_on_ports_that_are_not_open_times_out() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        assert_eq!(
            hal.evtchn_wait(&[Port(0), Port(5)], Some(10)),
            Err(HalError::Timeout)
        );
        assert_eq!(hal.evtchn_wait(&[], None), Err(HalError::Timeout));
        assert!(!hal.evtchn_consume(Port(5)));
        assert_eq!(hal.evtchn_close(Port(5)), Err(HalError::InvalidPort(5)));
        assert_eq!(hal.now_ns(), 10);
    }
}
