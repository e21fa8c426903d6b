//! `event_channel.h`: the `EVTCHNOP_*` commands a guest issues and their
//! argument structs. All are passed to `__HYPERVISOR_event_channel_op` as
//! `(cmd, &mut arg)`.
#![allow(non_upper_case_globals)]

use core::mem::{offset_of, size_of};

use crate::hal::{DomId, Port};

// ----- enum event_channel_op ---------------------------------------------------------

/// `EVTCHNOP_bind_interdomain`: connect to a port another domain offered.
pub const EVTCHNOP_bind_interdomain: u32 = 0;
/// `EVTCHNOP_bind_virq`.
pub const EVTCHNOP_bind_virq: u32 = 1;
/// `EVTCHNOP_close`: close a local port.
pub const EVTCHNOP_close: u32 = 3;
/// `EVTCHNOP_send`: notify the remote end of a local port.
pub const EVTCHNOP_send: u32 = 4;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_status: u32 = 5;
/// `EVTCHNOP_alloc_unbound`: a new local port that a named domain may bind.
pub const EVTCHNOP_alloc_unbound: u32 = 6;
/// `EVTCHNOP_bind_vcpu`.
pub const EVTCHNOP_bind_vcpu: u32 = 8;
/// `EVTCHNOP_unmask`: clear a port's mask bit (and re-raise it if pending).
pub const EVTCHNOP_unmask: u32 = 9;
/// `EVTCHNOP_reset`.
pub const EVTCHNOP_reset: u32 = 10;

/// `EVTCHN_2L_NR_CHANNELS`: ports addressable by the 2-level ABI of
/// `shared_info` on x86_64 (64 words of 64 bits).
pub const EVTCHN_2L_NR_CHANNELS: usize = 4096;

/// `struct evtchn_alloc_unbound` (`EVTCHNOP_alloc_unbound`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain allocating (`DOMID_SELF`).
    pub dom: u16,
    /// IN: the domain that may bind the port.
    pub remote_dom: u16,
    /// OUT: the new port.
    pub port: u32,
}

/// `struct evtchn_bind_interdomain` (`EVTCHNOP_bind_interdomain`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnBindInterdomain {
    /// IN: the domain that allocated the unbound port.
    pub remote_dom: u16,
    /// IN: that domain's port.
    pub remote_port: u32,
    /// OUT: the local end.
    pub local_port: u32,
}

/// `struct evtchn_close` (`EVTCHNOP_close`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnClose {
    /// IN: the local port.
    pub port: u32,
}

/// `struct evtchn_send` (`EVTCHNOP_send`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnSend {
    /// IN: the local port whose remote end is notified.
    pub port: u32,
}

/// `struct evtchn_unmask` (`EVTCHNOP_unmask`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvtchnUnmask {
    /// IN: the local port.
    pub port: u32,
}

impl EvtchnAllocUnbound {
    /// The argument for a new port of this domain that `remote` may bind.
    pub fn new(remote: DomId) -> Self {
        EvtchnAllocUnbound {
            dom: DomId::SELF.0,
            remote_dom: remote.0,
            port: 0,
        }
    }
}

impl EvtchnBindInterdomain {
    /// The argument for binding `remote_port` of domain `remote`.
    pub fn new(remote: DomId, remote_port: Port) -> Self {
        EvtchnBindInterdomain {
            remote_dom: remote.0,
            remote_port: remote_port.0,
            local_port: 0,
        }
    }
}

impl EvtchnClose {
    /// The argument for closing `port`.
    pub fn new(port: Port) -> Self {
        EvtchnClose { port: port.0 }
    }
}

impl EvtchnSend {
    /// The argument for notifying the remote end of `port`.
    pub fn new(port: Port) -> Self {
        EvtchnSend { port: port.0 }
    }
}

impl EvtchnUnmask {
    /// The argument for unmasking `port`.
    pub fn new(port: Port) -> Self {
        EvtchnUnmask { port: port.0 }
    }
}

// ----- layout (x86_64) ---------------------------------------------------------------

const _: () = assert!(size_of::<EvtchnAllocUnbound>() == 8);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, dom) == 0);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, remote_dom) == 2);
const _: () = assert!(offset_of!(EvtchnAllocUnbound, port) == 4);

const _: () = assert!(size_of::<EvtchnBindInterdomain>() == 12);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_dom) == 0);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, remote_port) == 4);
const _: () = assert!(offset_of!(EvtchnBindInterdomain, local_port) == 8);

const _: () = assert!(size_of::<EvtchnClose>() == 4);
const _: () = assert!(offset_of!(EvtchnClose, port) == 0);
const _: () = assert!(size_of::<EvtchnSend>() == 4);
const _: () = assert!(offset_of!(EvtchnSend, port) == 0);
const _: () = assert!(size_of::<EvtchnUnmask>() == 4);
const _: () = assert!(offset_of!(EvtchnUnmask, port) == 0);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_fill_in_domid_self_and_ports() {
        let a = EvtchnAllocUnbound::new(DomId(3));
        assert_eq!((a.dom, a.remote_dom, a.port), (0x7ff0, 3, 0));
        let b = EvtchnBindInterdomain::new(DomId(0), Port(17));
        assert_eq!((b.remote_dom, b.remote_port, b.local_port), (0, 17, 0));
        assert_eq!(EvtchnClose::new(Port(5)).port, 5);
        assert_eq!(EvtchnSend::new(Port(6)).port, 6);
        assert_eq!(EvtchnUnmask::new(Port(7)).port, 7);
    }
}
