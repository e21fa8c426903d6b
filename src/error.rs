//! The one error type of the crate.
//!
//! Every fallible operation returns [`Error`]. It is `Copy + Eq` so that it can
//! be stored in a completion, compared in tests and passed across layers
//! without allocation. Variants that come from something the other side sent
//! (a backend, xenstored, the hypervisor) say so: the driver never panics on
//! such input, it returns one of these.

use core::fmt;

pub use crate::ring::Violation;
use crate::xenbus::XenbusState;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Every error xenblk can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    // ----- memory, hypervisor -----------------------------------------------
    /// A page or heap allocation failed.
    OutOfMemory,
    /// A hypercall returned a negative Xen errno (the value is `-errno`).
    Hypercall(i32),
    /// A wait reached its deadline before the awaited event happened.
    Timeout,

    // ----- grants --------------------------------------------------------------
    /// No free grant reference is left in the grant table.
    GrantRefsExhausted,
    /// A grant reference outside the table, or one that this allocator did not
    /// hand out, was passed in.
    InvalidGrantRef(u32),
    /// Revoking a grant failed because the other domain still maps the page.
    /// The page is quarantined and never reused while this holds.
    GrantInUse(u32),

    // ----- event channels -------------------------------------------------------
    /// An event-channel port that is not open (or out of range) was used.
    InvalidPort(u32),

    // ----- shared ring ----------------------------------------------------------
    /// The ring has no free request slot.
    RingFull,
    /// The other end broke the ring protocol; the ring must not be used again.
    Protocol(Violation),
    /// A shared ring of this order (log2 of its page count) is not supported
    /// (above `ring::MAX_RING_ORDER`).
    InvalidRingOrder(u32),

    // ----- xenstore -------------------------------------------------------------
    /// xenstored answered with an error string.
    XenStore(XsErrno),
    /// A xenstore reply or event could not be parsed.
    XsMalformed(XsMalformed),
    /// A request or reply payload exceeds the 4096-byte protocol limit.
    XsPayloadTooLarge,
    /// The xenstore connection is closed, reset or otherwise unusable.
    XsConnection,
    /// A xenstore path or value contains a byte the protocol forbids (NUL).
    XsInvalidPath,
    /// A transaction kept failing with `EAGAIN` after the retry budget.
    XsTransactionRetriesExhausted,

    // ----- xenbus / keys --------------------------------------------------------
    /// A required key is missing from a xenstore directory.
    MissingKey(&'static str),
    /// A key is present but its value does not parse or is out of range.
    MalformedKey(&'static str),
    /// The other end is in a state this operation cannot proceed from.
    UnexpectedState(XenbusState),
    /// The other end did not reach the wanted state within the caller's bound.
    /// See `blkfront` for the diagnostic report that accompanies this.
    StateTimeout {
        /// The state we were waiting for.
        wanted: XenbusState,
        /// The last state the other end was seen in.
        seen: XenbusState,
    },
    /// No such device.
    NoDevice,

    // ----- block I/O ------------------------------------------------------------
    /// The device is not (or no longer) connected.
    NotConnected,
    /// The device saw a protocol violation or fatal backend error earlier and
    /// refuses all further I/O.
    Broken,
    /// The device was closed.
    Closed,
    /// A write, flush or discard to a read-only disk.
    ReadOnly,
    /// A buffer length or offset is not a multiple of the logical sector size,
    /// or the buffer is empty.
    Misaligned,
    /// The request reaches past the end of the disk.
    OutOfRange,
    /// The backend does not offer (or turned off) the needed feature.
    Unsupported(Feature),
    /// The backend answered `BLKIF_RSP_ERROR`.
    IoError,
    /// The request was cancelled because the backend went away (Closing or
    /// Closed) or the device broke while it was in flight.
    Aborted,
    /// An unknown request token was passed to the driver.
    UnknownToken,
}

/// An optional block-device feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `feature-flush-cache`.
    FlushCache,
    /// `feature-barrier`.
    Barrier,
    /// `feature-discard`.
    Discard,
    /// `discard-secure`.
    SecureDiscard,
    /// `feature-persistent`.
    Persistent,
    /// `feature-max-indirect-segments`.
    Indirect,
}

/// The error strings of `xs_wire.h` (`xsd_errors`), plus one for strings it
/// does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the errno of the same name
pub enum XsErrno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    /// An error string that `xs_wire.h` does not list.
    Unknown,
}

/// What was wrong with a malformed xenstore message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XsMalformed {
    /// The header's `len` exceeds the payload limit.
    Oversize,
    /// The reply's `req_id` matches no outstanding request.
    UnexpectedId,
    /// The reply type neither matches the request nor is `XS_ERROR`.
    UnexpectedType,
    /// A string that must be NUL-terminated is not.
    MissingTerminator,
    /// A string is not UTF-8.
    NotUtf8,
    /// The payload does not have the shape its type requires.
    BadPayload,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfMemory => f.write_str("out of memory"),
            Error::Hypercall(rc) => write!(f, "hypercall failed with Xen errno {}", -rc),
            Error::Timeout => f.write_str("timed out"),
            Error::GrantRefsExhausted => f.write_str("no free grant reference"),
            Error::InvalidGrantRef(r) => write!(f, "invalid grant reference {r}"),
            Error::GrantInUse(r) => {
                write!(
                    f,
                    "grant {r} is still mapped by the other domain; page quarantined"
                )
            }
            Error::InvalidPort(p) => write!(f, "invalid event-channel port {p}"),
            Error::RingFull => f.write_str("shared ring is full"),
            Error::Protocol(v) => write!(f, "ring protocol violation: {v}"),
            Error::InvalidRingOrder(o) => write!(f, "unsupported shared-ring order {o}"),
            Error::XenStore(e) => write!(f, "xenstore error {e:?}"),
            Error::XsMalformed(m) => write!(f, "malformed xenstore message: {m:?}"),
            Error::XsPayloadTooLarge => f.write_str("xenstore payload exceeds 4096 bytes"),
            Error::XsConnection => f.write_str("xenstore connection unusable"),
            Error::XsInvalidPath => f.write_str("xenstore path or value contains NUL"),
            Error::XsTransactionRetriesExhausted => {
                f.write_str("xenstore transaction kept failing with EAGAIN")
            }
            Error::MissingKey(k) => write!(f, "required key '{k}' is missing"),
            Error::MalformedKey(k) => write!(f, "key '{k}' has a malformed value"),
            Error::UnexpectedState(s) => write!(f, "unexpected xenbus state {s:?}"),
            Error::StateTimeout { wanted, seen } => {
                write!(
                    f,
                    "other end never reached {wanted:?}; last seen in {seen:?}"
                )
            }
            Error::NoDevice => f.write_str("no such device"),
            Error::NotConnected => f.write_str("device not connected"),
            Error::Broken => f.write_str("device is broken after a backend error"),
            Error::Closed => f.write_str("device is closed"),
            Error::ReadOnly => f.write_str("device is read-only"),
            Error::Misaligned => f.write_str("length or offset not a multiple of the sector size"),
            Error::OutOfRange => f.write_str("request past the end of the disk"),
            Error::Unsupported(feat) => write!(f, "backend does not support {feat:?}"),
            Error::IoError => f.write_str("backend reported an I/O error"),
            Error::Aborted => f.write_str("request aborted: backend went away"),
            Error::UnknownToken => f.write_str("unknown request token"),
        }
    }
}

impl From<crate::hal::HalError> for Error {
    fn from(e: crate::hal::HalError) -> Self {
        use crate::hal::HalError;
        match e {
            HalError::OutOfMemory => Error::OutOfMemory,
            HalError::Hypercall(rc) => Error::Hypercall(rc),
            HalError::Timeout => Error::Timeout,
            HalError::InvalidPort(p) => Error::InvalidPort(p),
        }
    }
}

impl From<crate::ring::RingError> for Error {
    fn from(e: crate::ring::RingError) -> Self {
        use crate::ring::RingError;
        match e {
            RingError::Full => Error::RingFull,
            RingError::Protocol(v) => Error::Protocol(v),
            RingError::InvalidOrder(o) => Error::InvalidRingOrder(o),
        }
    }
}

impl From<crate::gnttab::GrantError> for Error {
    fn from(e: crate::gnttab::GrantError) -> Self {
        use crate::gnttab::GrantError;
        match e {
            GrantError::Exhausted => Error::GrantRefsExhausted,
            GrantError::InvalidRef(r) => Error::InvalidGrantRef(r),
            GrantError::InUse(r) => Error::GrantInUse(r),
            GrantError::FrameTooLarge(_) => Error::Hypercall(-22),
            GrantError::OutOfBounds => Error::OutOfRange,
            GrantError::Hal(e) => e.into(),
        }
    }
}

impl From<crate::xenstore::XsError> for Error {
    fn from(e: crate::xenstore::XsError) -> Self {
        use crate::xenstore::XsError;
        match e {
            XsError::Errno(e) => Error::XenStore(e),
            XsError::Malformed(m) => Error::XsMalformed(m),
            XsError::PayloadTooLarge => Error::XsPayloadTooLarge,
            XsError::Connection => Error::XsConnection,
            XsError::InvalidPath => Error::XsInvalidPath,
            XsError::RetriesExhausted => Error::XsTransactionRetriesExhausted,
            XsError::Timeout => Error::Timeout,
            XsError::OutOfMemory => Error::OutOfMemory,
        }
    }
}

impl From<crate::xenbus::XenbusError> for Error {
    fn from(e: crate::xenbus::XenbusError) -> Self {
        use crate::xenbus::XenbusError;
        match e {
            XenbusError::Store(e) => e.into(),
            XenbusError::MissingKey(k) => Error::MissingKey(k),
            XenbusError::MalformedKey(k) => Error::MalformedKey(k),
            XenbusError::UnexpectedState(s) => Error::UnexpectedState(s),
            XenbusError::StateTimeout { wanted, seen } => Error::StateTimeout { wanted, seen },
            XenbusError::NoDevice => Error::NoDevice,
        }
    }
}

impl XsErrno {
    /// Maps an `XS_ERROR` payload (without its NUL) to the errno it names.
    pub fn from_name(name: &str) -> XsErrno {
        match name {
            "EINVAL" => XsErrno::EINVAL,
            "EACCES" => XsErrno::EACCES,
            "EEXIST" => XsErrno::EEXIST,
            "EISDIR" => XsErrno::EISDIR,
            "ENOENT" => XsErrno::ENOENT,
            "ENOMEM" => XsErrno::ENOMEM,
            "ENOSPC" => XsErrno::ENOSPC,
            "EIO" => XsErrno::EIO,
            "ENOTEMPTY" => XsErrno::ENOTEMPTY,
            "ENOSYS" => XsErrno::ENOSYS,
            "EROFS" => XsErrno::EROFS,
            "EBUSY" => XsErrno::EBUSY,
            "EAGAIN" => XsErrno::EAGAIN,
            "EISCONN" => XsErrno::EISCONN,
            "E2BIG" => XsErrno::E2BIG,
            "EPERM" => XsErrno::EPERM,
            _ => XsErrno::Unknown,
        }
    }

    /// The wire name of this errno (`"Unknown"` has none and maps to `EIO`).
    pub fn name(self) -> &'static str {
        match self {
            XsErrno::EINVAL => "EINVAL",
            XsErrno::EACCES => "EACCES",
            XsErrno::EEXIST => "EEXIST",
            XsErrno::EISDIR => "EISDIR",
            XsErrno::ENOENT => "ENOENT",
            XsErrno::ENOMEM => "ENOMEM",
            XsErrno::ENOSPC => "ENOSPC",
            XsErrno::EIO => "EIO",
            XsErrno::ENOTEMPTY => "ENOTEMPTY",
            XsErrno::ENOSYS => "ENOSYS",
            XsErrno::EROFS => "EROFS",
            XsErrno::EBUSY => "EBUSY",
            XsErrno::EAGAIN => "EAGAIN",
            XsErrno::EISCONN => "EISCONN",
            XsErrno::E2BIG => "E2BIG",
            XsErrno::EPERM => "EPERM",
            XsErrno::Unknown => "EIO",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Feature::FlushCache => "cache flushes (feature-flush-cache)",
            Feature::Barrier => "write barriers (feature-barrier)",
            Feature::Discard => "discard (feature-discard)",
            Feature::SecureDiscard => "secure discard (discard-secure)",
            Feature::Persistent => "persistent grants (feature-persistent)",
            Feature::Indirect => "indirect descriptors (feature-max-indirect-segments)",
        })
    }
}

impl fmt::Display for XsErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            XsErrno::EINVAL => "invalid argument",
            XsErrno::EACCES => "permission denied",
            XsErrno::EEXIST => "already exists",
            XsErrno::EISDIR => "is a directory",
            XsErrno::ENOENT => "no such entry",
            XsErrno::ENOMEM => "out of memory",
            XsErrno::ENOSPC => "quota exceeded",
            XsErrno::EIO => "input/output error",
            XsErrno::ENOTEMPTY => "directory not empty",
            XsErrno::ENOSYS => "not implemented",
            XsErrno::EROFS => "read-only",
            XsErrno::EBUSY => "busy",
            XsErrno::EAGAIN => "conflict, try again",
            XsErrno::EISCONN => "already connected",
            XsErrno::E2BIG => "too big",
            XsErrno::EPERM => "operation not permitted",
            XsErrno::Unknown => return f.write_str("an error that xs_wire.h does not list"),
        };
        write!(f, "{} ({what})", self.name())
    }
}

impl core::error::Error for XsErrno {}

impl fmt::Display for XsMalformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XsMalformed::Oversize => "a message announces more than 4096 payload bytes",
            XsMalformed::UnexpectedId => "a reply answers no outstanding request",
            XsMalformed::UnexpectedType => "a reply has the wrong type for its request",
            XsMalformed::MissingTerminator => "a string lacks its terminating NUL byte",
            XsMalformed::NotUtf8 => "a string is not valid UTF-8",
            XsMalformed::BadPayload => "a payload does not have the shape its type requires",
        })
    }
}

impl core::error::Error for XsMalformed {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_errno_round_trips_through_its_name() {
        let all = [
            XsErrno::EINVAL,
            XsErrno::EACCES,
            XsErrno::EEXIST,
            XsErrno::EISDIR,
            XsErrno::ENOENT,
            XsErrno::ENOMEM,
            XsErrno::ENOSPC,
            XsErrno::EIO,
            XsErrno::ENOTEMPTY,
            XsErrno::ENOSYS,
            XsErrno::EROFS,
            XsErrno::EBUSY,
            XsErrno::EAGAIN,
            XsErrno::EISCONN,
            XsErrno::E2BIG,
            XsErrno::EPERM,
        ];
        for e in all {
            assert_eq!(XsErrno::from_name(e.name()), e);
        }
        assert_eq!(XsErrno::from_name("EWHATEVER"), XsErrno::Unknown);
    }

    #[test]
    fn display_names_the_missing_key() {
        let s = alloc::format!("{}", Error::MissingKey("sectors"));
        assert!(s.contains("'sectors'"), "{s}");
    }
}
