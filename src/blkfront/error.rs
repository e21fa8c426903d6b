//! The errors of the block frontend: [`IoError`] for the data path,
//! [`Broken`] for the cause a broken device keeps, [`ProbeError`] for a
//! disk that did not connect.

use core::fmt;

use super::stall::StallReport;
use crate::error::{Error, Feature};
use crate::gnttab::GrantError;
use crate::hal::HalError;
use crate::ring::{RingError, Violation};
use crate::xenbus::XenbusError;
use crate::xenstore::XsError;

/// Why a device stopped taking I/O for good: what [`DeviceState::Broken`]
/// keeps, and what every request failed by the break carries
/// ([`IoError::Broken`]).
///
/// [`DeviceState::Broken`]: super::DeviceState::Broken
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Broken {
    /// The backend broke the ring protocol (an impossible producer index, a
    /// response that matches no request in flight, a page it still maps).
    Protocol(Violation),
    /// The backend did not answer a blocking call within the I/O bound
    /// ([`Config::io_timeout_ns`](super::Config::io_timeout_ns)).
    Timeout,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Protocol(v) => write!(f, "the backend broke the protocol: {v}"),
            Broken::Timeout => f.write_str("the backend did not answer within the I/O timeout"),
        }
    }
}

impl core::error::Error for Broken {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Broken::Protocol(v) => Some(v),
            Broken::Timeout => None,
        }
    }
}

impl From<Violation> for Broken {
    fn from(v: Violation) -> Self {
        Broken::Protocol(v)
    }
}

/// How a block request (or a wait for one) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoError {
    /// The device is not connected (the backend closed; it may come back).
    NotConnected,
    /// The device broke earlier, or broke while the request was in flight,
    /// and refuses all further I/O; the cause it broke for.
    Broken(Broken),
    /// The device was closed.
    Closed,
    /// A write, flush or discard to a read-only disk.
    ReadOnly,
    /// A buffer length or offset is not a multiple of the logical sector
    /// size, or the request is empty.
    Misaligned,
    /// The request reaches past the end of the disk.
    OutOfRange,
    /// The backend does not offer (or turned off) the needed feature.
    Unsupported(Feature),
    /// The backend answered `BLKIF_RSP_ERROR` (or refused a read or write).
    Backend,
    /// The request was cancelled because the backend went away (Closing or
    /// Closed) while it was in flight.
    Aborted,
    /// No answer within the I/O bound (the request that hit it, and every
    /// other one in flight then: the device breaks with
    /// [`Broken::Timeout`]), or a [`wait`](super::BlockFront::wait) that
    /// reached its deadline.
    Timeout,
    /// An unknown request token was passed to the driver.
    UnknownToken,
    /// Sharing memory with the backend failed (no grant reference or page
    /// left, while nothing else was in flight to give one back).
    Grant(GrantError),
    /// A call into the hypervisor failed.
    Hal(HalError),
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoError::NotConnected => f.write_str("the device is not connected"),
            IoError::Broken(b) => write!(f, "the device is broken: {b}"),
            IoError::Closed => f.write_str("the device is closed"),
            IoError::ReadOnly => f.write_str("the disk is read-only"),
            IoError::Misaligned => f.write_str(
                "the request is empty, or its length or offset is not a multiple of the \
                 sector size",
            ),
            IoError::OutOfRange => f.write_str("the request reaches past the end of the disk"),
            IoError::Unsupported(feat) => write!(f, "the backend does not support {feat}"),
            IoError::Backend => f.write_str("the backend reported an I/O error"),
            IoError::Aborted => f.write_str("the request was aborted: the backend went away"),
            IoError::Timeout => f.write_str("no answer from the backend in time"),
            IoError::UnknownToken => f.write_str("unknown request token"),
            IoError::Grant(e) => write!(f, "sharing memory with the backend failed: {e}"),
            IoError::Hal(e) => write!(f, "a hypervisor call failed: {e}"),
        }
    }
}

impl core::error::Error for IoError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            IoError::Broken(b) => Some(b),
            IoError::Grant(e) => Some(e),
            IoError::Hal(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Broken> for IoError {
    fn from(b: Broken) -> Self {
        IoError::Broken(b)
    }
}

impl From<GrantError> for IoError {
    fn from(e: GrantError) -> Self {
        IoError::Grant(e)
    }
}

impl From<HalError> for IoError {
    fn from(e: HalError) -> Self {
        IoError::Hal(e)
    }
}

/// Why [`BlockFront::probe`](super::BlockFront::probe) (or
/// [`reconnect`](super::BlockFront::reconnect)) failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeError {
    /// The error, as the variant of the layer that failed.
    pub error: Error,
    /// For a backend that did not reach the awaited state (in time, or at
    /// all because it closed): what it published and the likely cause.
    pub stall: Option<StallReport>,
    /// The virtual device probed (`BlockFront::probe` sets it; `None` for
    /// one made by a conversion from [`Error`]).
    pub vdev: Option<u32>,
}

/// `vdev <n>: <error>`, then the stall report when there is one.
impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v) = self.vdev {
            write!(f, "vdev {v}: ")?;
        }
        match &self.stall {
            Some(s) => write!(f, "{}\n{}", self.error, s),
            None => write!(f, "{}", self.error),
        }
    }
}

/// The source of a `ProbeError` is its [`error`](ProbeError::error).
impl core::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Keeps the error and drops the stall report.
impl From<ProbeError> for Error {
    fn from(e: ProbeError) -> Self {
        e.error
    }
}

impl From<Error> for ProbeError {
    fn from(error: Error) -> Self {
        ProbeError {
            error,
            stall: None,
            vdev: None,
        }
    }
}

macro_rules! probe_error_from {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ProbeError {
            fn from(e: $t) -> Self {
                Error::from(e).into()
            }
        }
    )*};
}

probe_error_from!(
    HalError,
    RingError,
    GrantError,
    XsError,
    XenbusError,
    IoError
);
