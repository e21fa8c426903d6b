//! Xenbus: the `XenbusState` machine of `io/xenbus.h`, other-end watches and
//! device enumeration.

use core::fmt;

/// The states of `enum xenbus_state` in `io/xenbus.h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum XenbusState {
    /// 0: `XenbusStateUnknown`.
    Unknown = 0,
    /// 1: `XenbusStateInitialising`.
    Initialising = 1,
    /// 2: `XenbusStateInitWait` — finished early initialisation, waiting for
    /// information from the peer or hotplug scripts.
    InitWait = 2,
    /// 3: `XenbusStateInitialised` — waiting for a connection from the peer.
    Initialised = 3,
    /// 4: `XenbusStateConnected`.
    Connected = 4,
    /// 5: `XenbusStateClosing` — the device is being closed due to an error
    /// or an unplug event.
    Closing = 5,
    /// 6: `XenbusStateClosed`.
    Closed = 6,
    /// 7: `XenbusStateReconfiguring`.
    Reconfiguring = 7,
    /// 8: `XenbusStateReconfigured`.
    Reconfigured = 8,
}

impl XenbusState {
    /// Maps the numeric value of a `state` key to a state.
    pub fn from_u32(v: u32) -> Option<XenbusState> {
        Some(match v {
            0 => XenbusState::Unknown,
            1 => XenbusState::Initialising,
            2 => XenbusState::InitWait,
            3 => XenbusState::Initialised,
            4 => XenbusState::Connected,
            5 => XenbusState::Closing,
            6 => XenbusState::Closed,
            7 => XenbusState::Reconfiguring,
            8 => XenbusState::Reconfigured,
            _ => return None,
        })
    }

    /// The decimal text written to a `state` key.
    pub fn as_str(self) -> &'static str {
        match self {
            XenbusState::Unknown => "0",
            XenbusState::Initialising => "1",
            XenbusState::InitWait => "2",
            XenbusState::Initialised => "3",
            XenbusState::Connected => "4",
            XenbusState::Closing => "5",
            XenbusState::Closed => "6",
            XenbusState::Reconfiguring => "7",
            XenbusState::Reconfigured => "8",
        }
    }
}

impl fmt::Display for XenbusState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            XenbusState::Unknown => "Unknown",
            XenbusState::Initialising => "Initialising",
            XenbusState::InitWait => "InitWait",
            XenbusState::Initialised => "Initialised",
            XenbusState::Connected => "Connected",
            XenbusState::Closing => "Closing",
            XenbusState::Closed => "Closed",
            XenbusState::Reconfiguring => "Reconfiguring",
            XenbusState::Reconfigured => "Reconfigured",
        };
        write!(f, "{} ({})", name, *self as u8)
    }
}
