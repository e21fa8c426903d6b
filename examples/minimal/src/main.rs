//! The smallest xenblk unikernel: boot on xenblk-pvh-rt, find the disks,
//! read sector 0 of each, print its first 32 bytes, close, power off.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::boxed::Box;
use core::error::Error;

use xenblk::blkfront::{BlockFront, Config, SharedStore};
use xenblk::gnttab::GrantTable;
use xenblk::pvh::{ShutdownReason, Xen};
use xenblk_pvh_rt::{out, Boot};

xenblk_pvh_rt::entry!(name = "xenblk-minimal", main = main);

fn main(boot: Boot) -> ! {
    let Ok(xen) = boot.xen else {
        out!("xenblk-minimal: not running under Xen");
        xenblk_pvh_rt::qemu_exit(0x10) // plain QEMU: exit status 33
    };
    match read_first_sectors(xen) {
        Ok(n) => out!("xenblk-minimal: read {n} disk(s)"),
        Err(e) => out!("xenblk-minimal: error: {e}"),
    }
    xen.shutdown(ShutdownReason::Poweroff)
}

fn read_first_sectors(xen: &'static Xen) -> Result<usize, Box<dyn Error>> {
    let grants = GrantTable::new(xen)?;
    let store = SharedStore::new(xen.take_xenstore()?);
    let vdevs = BlockFront::<Xen, _>::enumerate(&store)?;
    for &vdev in &vdevs {
        let mut disk = BlockFront::probe(xen, &grants, &store, vdev, Config::default())?;
        let mut sector = alloc::vec![0u8; disk.sector_size() as usize];
        disk.read(0, &mut sector)?;
        out!(
            "xenblk-minimal: vdev={vdev} sector 0 begins {:02x?}",
            &sector[..32]
        );
        disk.close()?;
    }
    Ok(vdevs.len())
}
