//! `info [timeout=<s>] [io-timeout=<s>]`: connects to every virtual disk
//! with the real driver and reports what its backend published and what was
//! negotiated, then closes them.
//!
//! Per disk: the driver's one-screen report, the machine line
//! `xenblk-disk ...` (README), and one check `xenblk-check <vdev>/connect`;
//! then `xenblk-check <vdev>/close`. A backend that does not connect within
//! `timeout=` seconds (default 10) is explained (`xenblk-stall`); how that
//! counts is documented in [`super::disks`].

use super::disks::{self, Platform};
use super::{Context, Outcome};

/// Runs `info`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let cfg = disks::config(ctx, &mut outcome);
    let Some(platform) = Platform::open(ctx, &mut outcome) else {
        return outcome;
    };
    let attached = disks::attach_all(&platform, cfg, &mut outcome);
    disks::close_all(&platform, attached, &mut outcome);
    outcome
}
