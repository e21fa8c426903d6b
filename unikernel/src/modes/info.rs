//! `info`: what xenstore says about this domain's virtual disks.
//!
//! Until the block driver is wired in, this reads the frontend and backend
//! directories through `xenblk::xenstore` (no connection is made) and prints
//! one `xenblk-vbd` line per disk with what the backend published so far.

use alloc::string::String;

use xenblk::error::XsErrno;
use xenblk::pvh::Xen;
use xenblk::xenstore::{RingTransport, XenStore};
use xenblk::Error;

use super::{Context, Outcome};

/// Backend keys worth showing, in this order (`io/blkif.h`).
const BACKEND_KEYS: &[&str] = &[
    "state",
    "type",
    "mode",
    "sectors",
    "sector-size",
    "physical-sector-size",
    "info",
    "direct-io-safe",
    "feature-flush-cache",
    "feature-barrier",
    "feature-discard",
    "feature-persistent",
    "feature-max-indirect-segments",
    "max-ring-page-order",
    "multi-queue-max-queues",
];

type Store = XenStore<RingTransport<'static, Xen>>;

/// Runs `info`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let mut xs = match ctx.xen.take_xenstore() {
        Ok(xs) => xs,
        Err(e) => {
            crate::out!("xenblk-unikernel: error: no xenstore: {e}");
            outcome.check(false);
            return outcome;
        }
    };
    match xs.read("domid") {
        Ok(domid) => {
            crate::out!("xenblk-unikernel: xenstore ok, domid={domid}");
            outcome.check(true);
        }
        Err(e) => {
            crate::out!("xenblk-unikernel: error: xenstore read of domid: {e}");
            outcome.check(false);
            return outcome;
        }
    }
    let vdevs = match xs.directory("device/vbd") {
        Ok(v) => v,
        Err(Error::XenStore(XsErrno::ENOENT)) => alloc::vec::Vec::new(),
        Err(e) => {
            crate::out!("xenblk-unikernel: error: xenstore directory device/vbd: {e}");
            outcome.check(false);
            return outcome;
        }
    };
    crate::out!("xenblk-unikernel: {} virtual disk(s)", vdevs.len());
    for vdev in &vdevs {
        outcome.check(describe(&mut xs, vdev));
    }
    outcome
}

/// Prints one disk's line; returns whether its directories could be read.
fn describe(xs: &mut Store, vdev: &str) -> bool {
    let front = alloc::format!("device/vbd/{vdev}");
    let backend = match xs.read(&alloc::format!("{front}/backend")) {
        Ok(b) => b,
        Err(e) => {
            crate::out!("xenblk-vbd vdev={vdev} error=no-backend-key ({e})");
            return false;
        }
    };
    let front_state = xs
        .read_opt(&alloc::format!("{front}/state"))
        .ok()
        .flatten()
        .unwrap_or_else(|| String::from("-"));
    let mut line =
        alloc::format!("xenblk-vbd vdev={vdev} backend={backend} frontend-state={front_state}");
    for key in BACKEND_KEYS {
        match xs.read_opt(&alloc::format!("{backend}/{key}")) {
            Ok(Some(v)) => line.push_str(&alloc::format!(" {key}={}", v.replace(' ', "_"))),
            Ok(None) => {}
            Err(e) => {
                crate::out!("{line} error=backend-read ({e})");
                return false;
            }
        }
    }
    crate::out!("{line}");
    true
}
