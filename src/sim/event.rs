//! Event channels (`event_channel.h`): `EVTCHNOP_alloc_unbound`,
//! `EVTCHNOP_bind_interdomain`, `EVTCHNOP_send`, `EVTCHNOP_close`, and the
//! per-port pending flag of the 2-level ABI.
//!
//! Port 0 is never allocated, as in Xen. Closing one end of an inter-domain
//! channel puts the other end back to unbound (remote = the closer), where a
//! send is silently dropped, exactly like Xen's `evtchn_close` and
//! `evtchn_send` on `ECS_UNBOUND`.

use super::errno::{EINVAL, ENOSPC};
use super::xen::Domain;
use super::SimXen;
use crate::hal::HalError;
use crate::hal::{DomId, Port};
use crate::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortState {
    Free,
    Unbound { remote: DomId },
    Interdomain { dom: DomId, port: Port },
}

/// One port of a domain.
#[derive(Debug)]
pub(super) struct PortSlot {
    state: PortState,
    pending: bool,
    sent: u64,
}

impl PortSlot {
    pub(super) fn is_open(&self) -> bool {
        self.state != PortState::Free
    }
}

/// The state of an open port, from [`SimXen::port_info`] (`EVTCHNOP_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortInfo {
    /// Allocated, waiting for `remote` to bind (or its peer closed).
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote_port` of `remote_dom`.
    Interdomain {
        /// The peer domain.
        remote_dom: DomId,
        /// The peer's port.
        remote_port: Port,
    },
}

fn slot(dom: &mut Domain, port: Port) -> Result<&mut PortSlot, HalError> {
    usize::try_from(port.0)
        .ok()
        .filter(|&i| i != 0)
        .and_then(|i| dom.ports.get_mut(i))
        .filter(|s| s.is_open())
        .ok_or(HalError::InvalidPort(port.0))
}

/// Opens the lowest free port (never 0) of `dom` in `state`.
fn open(dom: &mut Domain, max_ports: u32, state: PortState) -> Result<Port, HalError> {
    if dom.ports.is_empty() {
        // Port 0 is reserved: a permanently unusable slot.
        dom.ports.push(PortSlot {
            state: PortState::Free,
            pending: false,
            sent: 0,
        });
    }
    let free = dom.ports.iter().skip(1).position(|s| !s.is_open());
    let index = match free {
        Some(i) => i + 1,
        None if dom.ports.len() < max_ports as usize => {
            dom.ports.push(PortSlot {
                state: PortState::Free,
                pending: false,
                sent: 0,
            });
            dom.ports.len() - 1
        }
        None => return Err(HalError::Hypercall(-ENOSPC)),
    };
    let s = &mut dom.ports[index];
    *s = PortSlot {
        state,
        pending: false,
        sent: 0,
    };
    Ok(Port(index as u32))
}

impl SimXen {
    /// `EVTCHNOP_alloc_unbound` for `dom`: a new port `remote` may bind to.
    ///
    /// # Errors
    ///
    /// `Hypercall(-ENOSPC)` when `dom` has no free port.
    pub fn alloc_unbound(&self, dom: DomId, remote: DomId) -> Result<Port, HalError> {
        let mut st = self.state();
        let max = st.config.max_ports;
        open(st.domain(dom), max, PortState::Unbound { remote })
    }

    /// `EVTCHNOP_bind_interdomain`: `local` connects a new port to
    /// `remote_port` of `remote_dom`, which must be unbound and allocated
    /// for `local`. As Xen does, the new local port starts pending, so a
    /// notification sent before the bind is not lost.
    ///
    /// # Errors
    ///
    /// `InvalidPort` when `remote_port` is not open; `Hypercall(-EINVAL)` when
    /// it is bound already or allocated for another domain;
    /// `Hypercall(-ENOSPC)` when `local` has no free port.
    pub fn bind_interdomain(
        &self,
        local: DomId,
        remote_dom: DomId,
        remote_port: Port,
    ) -> Result<Port, HalError> {
        let mut st = self.state();
        let max = st.config.max_ports;
        let remote = slot(st.domain(remote_dom), remote_port)?;
        if remote.state != (PortState::Unbound { remote: local }) {
            return Err(HalError::Hypercall(-EINVAL));
        }
        let port = open(
            st.domain(local),
            max,
            PortState::Interdomain {
                dom: remote_dom,
                port: remote_port,
            },
        )?;
        slot(st.domain(local), port)?.pending = true;
        slot(st.domain(remote_dom), remote_port)?.state =
            PortState::Interdomain { dom: local, port };
        drop(st);
        self.wake();
        Ok(port)
    }

    /// `EVTCHNOP_send` from `port` of `dom`: marks the peer port pending and
    /// counts the notification. On an unbound port the event is dropped.
    ///
    /// # Errors
    ///
    /// `InvalidPort` when `port` is not open.
    pub fn send(&self, dom: DomId, port: Port) -> Result<(), HalError> {
        let mut st = self.state();
        let s = slot(st.domain(dom), port)?;
        s.sent += 1;
        if let PortState::Interdomain { dom: rd, port: rp } = s.state {
            if let Ok(peer) = slot(st.domain(rd), rp) {
                peer.pending = true;
            }
        }
        drop(st);
        self.wake();
        Ok(())
    }

    /// `EVTCHNOP_close` of `port` of `dom`. A connected peer goes back to
    /// unbound.
    ///
    /// # Errors
    ///
    /// `InvalidPort` when `port` is not open.
    pub fn close_port(&self, dom: DomId, port: Port) -> Result<(), HalError> {
        let mut st = self.state();
        let s = slot(st.domain(dom), port)?;
        let old = s.state;
        s.state = PortState::Free;
        s.pending = false;
        if let PortState::Interdomain { dom: rd, port: rp } = old {
            if let Ok(peer) = slot(st.domain(rd), rp) {
                peer.state = PortState::Unbound { remote: dom };
            }
        }
        drop(st);
        self.wake();
        Ok(())
    }

    /// Tests and clears the pending flag of `port` of `dom`; false for a port
    /// that is not open.
    pub fn consume(&self, dom: DomId, port: Port) -> bool {
        let mut st = self.state();
        slot(st.domain(dom), port).is_ok_and(|s| std::mem::take(&mut s.pending))
    }

    /// Whether `port` of `dom` is pending (without clearing it).
    pub fn is_pending(&self, dom: DomId, port: Port) -> bool {
        let mut st = self.state();
        slot(st.domain(dom), port).is_ok_and(|s| s.pending)
    }

    /// Whether any of `ports` of `dom` is pending.
    pub fn any_pending(&self, dom: DomId, ports: &[Port]) -> bool {
        let mut st = self.state();
        let d = st.domain(dom);
        ports.iter().any(|&p| slot(d, p).is_ok_and(|s| s.pending))
    }

    /// Fault injection: marks `port` of `dom` pending although nobody sent
    /// anything (a spurious event).
    ///
    /// # Errors
    ///
    /// `InvalidPort` when `port` is not open.
    pub fn inject_event(&self, dom: DomId, port: Port) -> Result<(), HalError> {
        slot(self.state().domain(dom), port)?.pending = true;
        self.wake();
        Ok(())
    }

    /// How many `send`s `dom` made on `port` since it was opened (0 for a
    /// port that is not open).
    pub fn notify_count(&self, dom: DomId, port: Port) -> u64 {
        let mut st = self.state();
        slot(st.domain(dom), port).map_or(0, |s| s.sent)
    }

    /// The state of `port` of `dom`, or `None` when it is not open.
    pub fn port_info(&self, dom: DomId, port: Port) -> Option<PortInfo> {
        let mut st = self.state();
        let s = slot(st.domain(dom), port).ok()?;
        Some(match s.state {
            PortState::Unbound { remote } => PortInfo::Unbound { remote },
            PortState::Interdomain { dom, port } => PortInfo::Interdomain {
                remote_dom: dom,
                remote_port: port,
            },
            PortState::Free => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hal::Hal;
    use crate::sim::SimConfig;

    const A: DomId = DomId(1);
    const B: DomId = DomId(2);
    const C: DomId = DomId(3);

    #[test]
    fn binding_follows_xen_rules() {
        let xen = SimXen::new();
        let pa = xen.alloc_unbound(A, B).unwrap();
        assert_ne!(pa, Port(0), "port 0 is never handed out");
        assert_eq!(xen.port_info(A, pa), Some(PortInfo::Unbound { remote: B }));
        assert_eq!(
            xen.bind_interdomain(C, A, pa),
            Err(HalError::Hypercall(-EINVAL)),
            "allocated for B, not C"
        );
        assert_eq!(
            xen.bind_interdomain(B, A, Port(0)),
            Err(HalError::InvalidPort(0))
        );
        assert_eq!(
            xen.bind_interdomain(B, A, Port(999)),
            Err(HalError::InvalidPort(999))
        );

        let pb = xen.bind_interdomain(B, A, pa).unwrap();
        assert!(xen.is_pending(B, pb), "bind sets the local port pending");
        assert_eq!(
            xen.port_info(A, pa),
            Some(PortInfo::Interdomain {
                remote_dom: B,
                remote_port: pb
            })
        );
        assert_eq!(
            xen.bind_interdomain(B, A, pa),
            Err(HalError::Hypercall(-EINVAL))
        );
    }

    #[test]
    fn send_close_and_counters() {
        let xen = SimXen::new();
        let pa = xen.alloc_unbound(A, B).unwrap();
        xen.send(A, pa).unwrap(); // unbound: dropped, not an error
        let pb = xen.bind_interdomain(B, A, pa).unwrap();
        xen.consume(B, pb);
        for _ in 0..3 {
            xen.send(A, pa).unwrap();
        }
        assert_eq!(xen.notify_count(A, pa), 4);
        assert_eq!(xen.notify_count(B, pb), 0);
        assert!(xen.consume(B, pb));
        assert!(!xen.consume(B, pb), "events coalesce into one pending flag");
        assert!(!xen.is_pending(A, pa));

        xen.close_port(B, pb).unwrap();
        assert_eq!(xen.port_info(A, pa), Some(PortInfo::Unbound { remote: B }));
        assert_eq!(xen.send(B, pb), Err(HalError::InvalidPort(pb.0)));
        assert_eq!(xen.close_port(B, pb), Err(HalError::InvalidPort(pb.0)));
        xen.send(A, pa).unwrap();
        assert!(!xen.consume(B, pb));
        xen.close_port(A, pa).unwrap();
        assert_eq!(xen.accounting(A).ports_open, 0);
        assert_eq!(xen.accounting(B).ports_open, 0);
    }

    #[test]
    fn injected_events_and_port_exhaustion() {
        let config = SimConfig {
            max_ports: 3,
            ..SimConfig::default()
        };
        let xen = SimXen::with_config(config, false);
        let hal = xen.hal(A);
        let p1 = hal.evtchn_alloc_unbound(B).unwrap();
        let p2 = hal.evtchn_alloc_unbound(B).unwrap();
        assert_eq!(
            hal.evtchn_alloc_unbound(B),
            Err(HalError::Hypercall(-ENOSPC))
        );
        assert_eq!(xen.inject_event(A, Port(7)), Err(HalError::InvalidPort(7)));
        xen.inject_event(A, p2).unwrap();
        assert_eq!(hal.evtchn_wait(&[p1, p2], None), Ok(()));
        assert!(!hal.evtchn_consume(p1));
        assert!(hal.evtchn_consume(p2));
        hal.evtchn_close(p1).unwrap();
        assert_eq!(
            hal.evtchn_alloc_unbound(C),
            Ok(p1),
            "lowest free port reused"
        );
        hal.evtchn_close(p1).unwrap();
        hal.evtchn_close(p2).unwrap();
    }
}
