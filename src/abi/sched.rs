//! `sched.h`: the `SCHEDOP_*` commands a guest issues (passed to
//! `__HYPERVISOR_sched_op` as `(cmd, &mut arg)`) and shutdown reasons.
#![allow(non_upper_case_globals)]

use core::mem::{offset_of, size_of};

// ----- enum sched_op -----------------------------------------------------------------

/// `SCHEDOP_yield`: give up the CPU (no argument).
pub const SCHEDOP_yield: u32 = 0;
/// `SCHEDOP_block`: sleep until an event is pending (no argument).
pub const SCHEDOP_block: u32 = 1;
/// `SCHEDOP_shutdown`: stop the domain ([`SchedShutdown`]).
pub const SCHEDOP_shutdown: u32 = 2;
/// `SCHEDOP_poll`: sleep until one of some ports is pending or a timeout
/// ([`SchedPoll`]).
pub const SCHEDOP_poll: u32 = 3;
/// `SCHEDOP_remote_shutdown`: (privileged) shut another domain down.
pub const SCHEDOP_remote_shutdown: u32 = 4;
/// `SCHEDOP_shutdown_code`: record the reason for a later shutdown.
pub const SCHEDOP_shutdown_code: u32 = 5;
/// `SCHEDOP_watchdog`.
pub const SCHEDOP_watchdog: u32 = 6;

// ----- enum sched_shutdown_reason --------------------------------------------------------

/// `SHUTDOWN_poweroff`: exited normally.
pub const SHUTDOWN_poweroff: u32 = 0;
/// `SHUTDOWN_reboot`.
pub const SHUTDOWN_reboot: u32 = 1;
/// `SHUTDOWN_suspend`.
pub const SHUTDOWN_suspend: u32 = 2;
/// `SHUTDOWN_crash`: tell the toolstack the domain crashed.
pub const SHUTDOWN_crash: u32 = 3;
/// `SHUTDOWN_watchdog`.
pub const SHUTDOWN_watchdog: u32 = 4;
/// `SHUTDOWN_soft_reset`.
pub const SHUTDOWN_soft_reset: u32 = 5;

/// `struct sched_shutdown` (`SCHEDOP_shutdown`, `SCHEDOP_shutdown_code`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedShutdown {
    /// `SHUTDOWN_*`.
    pub reason: u32,
}

/// `struct sched_poll` (`SCHEDOP_poll`): x86_64 layout, the guest handle is
/// one pointer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedPoll {
    /// `XEN_GUEST_HANDLE(evtchn_port_t)`: the ports to wait on.
    pub ports: *const u32,
    /// Number of entries at `ports`.
    pub nr_ports: u32,
    /// Absolute system time (ns, as in `vcpu_time_info.system_time`) at which
    /// to give up; 0 waits without a timeout.
    pub timeout: u64,
}

impl SchedShutdown {
    /// The argument for shutting down with `reason` (`SHUTDOWN_*`).
    pub fn new(reason: u32) -> Self {
        SchedShutdown { reason }
    }
}

impl SchedPoll {
    /// The argument for waiting on `ports` until `timeout` (absolute system
    /// time in ns, 0 for none). `None` if there are more than `u32::MAX`
    /// ports.
    ///
    /// The value borrows `ports` through a raw pointer without a lifetime:
    /// pass it to the hypervisor only while `ports` is alive and unmoved.
    pub fn new(ports: &[u32], timeout: u64) -> Option<Self> {
        Some(SchedPoll {
            ports: ports.as_ptr(),
            nr_ports: u32::try_from(ports.len()).ok()?,
            timeout,
        })
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<SchedShutdown>() == 4);
const _: () = assert!(offset_of!(SchedShutdown, reason) == 0);

const _: () = assert!(size_of::<SchedPoll>() == 24);
const _: () = assert!(offset_of!(SchedPoll, ports) == 0);
const _: () = assert!(offset_of!(SchedPoll, nr_ports) == 8);
const _: () = assert!(offset_of!(SchedPoll, timeout) == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_points_at_the_ports() {
        let ports = [3u32, 9, 12];
        let p = SchedPoll::new(&ports, 1_000).unwrap();
        assert_eq!(p.ports, ports.as_ptr());
        assert_eq!(p.nr_ports, 3);
        assert_eq!(p.timeout, 1_000);
        let none = SchedPoll::new(&[], 0).unwrap();
        assert_eq!(none.nr_ports, 0);
        assert_eq!(SchedShutdown::new(SHUTDOWN_crash).reason, 3);
    }
}
