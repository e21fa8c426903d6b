//! The order the toolstack does things in, and what a guest then sees.
//!
//! libxl introduces a domain (its home and a `device/` directory the guest
//! can read) before it creates any device. A disk created first makes
//! `device/` and `device/vbd/` implicitly, as dom0-only nodes (a node made
//! on the way inherits its parent's permissions, as in C xenstored), while
//! the disk's own directory is still the guest's: the guest cannot list
//! `device/vbd/` (EACCES) but can connect to a vdev it already knows. The
//! simulator models that; `sim::Testbed` always does things in libxl's
//! order, so in a testbed enumerating and probing agree, hot-plugged disks
//! included.
#![cfg(feature = "sim")]

use std::sync::Arc;

use xenblk::blkfront::{BlockFront, Config, SharedStore};
use xenblk::error::XsErrno;
use xenblk::gnttab::GrantTable;
use xenblk::hal::DomId;
use xenblk::sim::blkback::{BackendConfig, BackendStore, SimBlkBack};
use xenblk::sim::xenstored::XenStored;
use xenblk::sim::{vdev_of, SimHal, SimXen, Testbed};
use xenblk::xenbus::XenbusError;
use xenblk::xenstore::{XenStore, XsError};

#[test]
fn in_a_testbed_every_disk_is_listed_and_connects_hot_plugged_ones_too() {
    let mut b = BackendConfig::blkback();
    b.hotplug_delay_ns = 0;
    let tb = Testbed::new([b.clone()]);
    let late = tb.add_disk(BackendConfig::qdisk()).expect("hot-plug");
    let guest = tb.guest();
    let listed = guest.enumerate().expect("enumerate");
    assert_eq!(listed, vec![tb.vdev(0), tb.vdev(late)]);
    for (i, _) in listed.iter().enumerate() {
        let mut d = guest.probe(i, Config::default()).expect("probe");
        d.close().expect("close");
    }
    // one more after the guest is up
    let third = tb.add_disk(b).expect("hot-plug");
    assert_eq!(guest.enumerate().expect("enumerate").len(), 3);
    guest
        .probe(third, Config::default())
        .expect("probe")
        .close()
        .expect("close");
}

#[test]
fn a_disk_made_before_its_domain_is_introduced_is_reachable_but_not_listed() {
    let xen = SimXen::new();
    let xsd = XenStored::new(&xen);
    let dom = DomId(7);
    let mut cfg = BackendConfig::blkback();
    cfg.hotplug_delay_ns = 0;
    let store: Arc<dyn BackendStore> = Arc::new(xsd.clone());
    let vdev = vdev_of(0);
    let _be = SimBlkBack::new(&xen, store, dom, vdev, cfg).expect("backend");
    xsd.with_store(|s| s.introduce_domain(dom));
    let hal: SimHal = xen.hal(dom);
    let gt = GrantTable::new(&hal).expect("grant table");
    let store = SharedStore::new(XenStore::new(xsd.connect(&hal).expect("connect")));
    assert_eq!(
        BlockFront::<SimHal, _>::enumerate(&store),
        Err(XenbusError::Store(XsError::Errno(XsErrno::EACCES))),
        "device/vbd/ was made by dom0 on the way to the disk"
    );
    let mut d = BlockFront::probe(&hal, &gt, &store, vdev, Config::default())
        .expect("the disk's own directory is the guest's");
    d.close().expect("close");
}
