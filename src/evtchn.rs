//! Event channels: [`EventChannel`] owns one port of this domain
//! (`event_channel.h`), allocated unbound for a remote domain to bind to, and
//! closes it when dropped.
//!
//! A frontend allocates the port with [`EventChannel::alloc_unbound`],
//! publishes [`port`](EventChannel::port) in xenstore (`event-channel`), and
//! the backend binds it with `EVTCHNOP_bind_interdomain`. From then on
//! [`notify`](EventChannel::notify) signals the backend and the backend's
//! notifications show up as the pending flag, which
//! [`consume`](EventChannel::consume) tests and clears and
//! [`wait`](EventChannel::wait) blocks on.

use core::fmt;

use crate::hal::{DomId, Hal, HalError, Port};

/// One event-channel port owned by this domain.
pub struct EventChannel<'h, H: Hal> {
    hal: &'h H,
    port: Port,
    open: bool,
}

impl<H: Hal> fmt::Debug for EventChannel<'_, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventChannel")
            .field("port", &self.port)
            .field("open", &self.open)
            .finish()
    }
}

impl<'h, H: Hal> EventChannel<'h, H> {
    /// `EVTCHNOP_alloc_unbound`: a new port that `remote` may bind to.
    ///
    /// # Errors
    ///
    /// What [`Hal::evtchn_alloc_unbound`] returns (no free port, hypercall
    /// failure).
    pub fn alloc_unbound(hal: &'h H, remote: DomId) -> Result<Self, HalError> {
        let port = hal.evtchn_alloc_unbound(remote)?;
        Ok(EventChannel {
            hal,
            port,
            open: true,
        })
    }

    /// The port number, as published in xenstore.
    pub fn port(&self) -> Port {
        self.port
    }

    /// `EVTCHNOP_send`: signals the other end.
    ///
    /// # Errors
    ///
    /// What [`Hal::evtchn_notify`] returns.
    pub fn notify(&self) -> Result<(), HalError> {
        self.hal.evtchn_notify(self.port)
    }

    /// Tests and clears the pending flag; returns whether an event arrived
    /// since the last call.
    pub fn consume(&self) -> bool {
        self.hal.evtchn_consume(self.port)
    }

    /// Blocks until the port is pending or `deadline` ([`Hal::now_ns`] time)
    /// passes; does not clear the flag. May return early: re-check the ring.
    ///
    /// # Errors
    ///
    /// [`HalError::Timeout`] at the deadline.
    pub fn wait(&self, deadline: Option<u64>) -> Result<(), HalError> {
        self.hal.evtchn_wait(&[self.port], deadline)
    }

    /// `EVTCHNOP_close`. Dropping closes too, but ignores the error.
    ///
    /// # Errors
    ///
    /// What [`Hal::evtchn_close`] returns.
    pub fn close(mut self) -> Result<(), HalError> {
        self.open = false;
        self.hal.evtchn_close(self.port)
    }
}

impl<H: Hal> Drop for EventChannel<'_, H> {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.hal.evtchn_close(self.port) {
                log::warn!("evtchn: closing port {} on drop: {e}", self.port.0);
            }
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::sim::{PortInfo, SimXen};

    const FRONT: DomId = DomId(1);
    const BACK: DomId = DomId::DOM0;

    #[test]
    fn a_bound_pair_signals_both_ways() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let ch = EventChannel::alloc_unbound(&hal, BACK).unwrap();
        let back = xen.bind_interdomain(BACK, FRONT, ch.port()).unwrap();

        assert!(!ch.consume());
        xen.send(BACK, back).unwrap();
        assert!(ch.consume());
        assert!(!ch.consume(), "consume clears the flag");

        ch.notify().unwrap();
        assert!(xen.consume(BACK, back));
        assert_eq!(xen.notify_count(FRONT, ch.port()), 1);
    }

    #[test]
    fn wait_returns_when_pending_and_times_out_otherwise() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let ch = EventChannel::alloc_unbound(&hal, BACK).unwrap();
        let back = xen.bind_interdomain(BACK, FRONT, ch.port()).unwrap();

        assert_eq!(ch.wait(Some(1_000)), Err(HalError::Timeout));
        xen.send(BACK, back).unwrap();
        assert_eq!(ch.wait(Some(2_000)), Ok(()));
        assert!(ch.consume(), "wait leaves the flag set");
    }

    #[test]
    fn close_and_drop_free_the_port_and_unbind_the_peer() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let ch = EventChannel::alloc_unbound(&hal, BACK).unwrap();
        let port = ch.port();
        let back = xen.bind_interdomain(BACK, FRONT, port).unwrap();
        assert_eq!(xen.accounting(FRONT).ports_open, 1);

        ch.close().unwrap();
        assert_eq!(xen.accounting(FRONT).ports_open, 0);
        assert_eq!(
            xen.port_info(BACK, back),
            Some(PortInfo::Unbound { remote: FRONT })
        );
        assert_eq!(hal.evtchn_notify(port), Err(HalError::InvalidPort(port.0)));

        {
            let _dropped = EventChannel::alloc_unbound(&hal, BACK).unwrap();
            assert_eq!(xen.accounting(FRONT).ports_open, 1);
        }
        assert_eq!(xen.accounting(FRONT).ports_open, 0);
    }

    #[test]
    fn drop_after_an_external_close_only_logs() {
        let xen = SimXen::new();
        let hal = xen.hal(FRONT);
        let ch = EventChannel::alloc_unbound(&hal, BACK).unwrap();
        xen.close_port(FRONT, ch.port()).unwrap();
        drop(ch); // the close inside fails with InvalidPort and is ignored
        assert_eq!(xen.accounting(FRONT).ports_open, 0);
    }
}
