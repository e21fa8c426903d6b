//! `BlockFront` is `Send` wherever its platform and transport are, so a
//! disk can live in a static or move to another thread.
#![cfg(feature = "sim")]

use xenblk::blkfront::{BlockFront, SharedStore};
use xenblk::sim::xenstored::SimXsTransport;
use xenblk::sim::SimHal;

fn send<T: Send>() {}
fn sync<T: Sync>() {}

#[test]
fn a_disk_on_the_simulator_is_send_and_its_shared_parts_sync() {
    send::<BlockFront<'static, SimHal, SimXsTransport<'static>>>();
    send::<SharedStore<SimXsTransport<'static>>>();
    sync::<SharedStore<SimXsTransport<'static>>>();
    sync::<xenblk::gnttab::GrantTable<'static, SimHal>>();
}
