//! The crate's top error, and the small types several layers share.
//!
//! Each layer has its own error type, which says only what that layer can
//! fail with: [`HalError`] (the hypervisor seam), [`RingError`] (shared
//! rings), [`GrantError`] (grant references and shared memory),
//! [`XsError`] (xenstore), [`XenbusError`] (device keys and states) and
//! [`IoError`] (block I/O). Each converts into [`Error`], which is what
//! operations spanning several layers return (probing a disk, reacting to
//! the backend, closing) and what an application can funnel everything
//! into with `?`. The layer error stays reachable: match on the variant,
//! or walk [`core::error::Error::source`].
//!
//! One failure has one shape in [`Error`], whichever path it took: an error
//! a layer only passes on from the layer below ([`XenbusError::Store`],
//! [`GrantError::Hal`], [`IoError::Grant`], [`IoError::Hal`]) converts into
//! the variant of the layer it came from. A xenstore connection that broke
//! is `Error::XenStore(XsError::Connection)` whether the xenstore client
//! or a xenbus helper noticed.
//!
//! Every error type is `Copy + Eq + Hash`, so that it can be stored in a
//! completion, compared in tests and passed across layers without
//! allocation; each has a [`Display`](fmt::Display) in words and
//! implements [`core::error::Error`]. Variants that come from something the
//! other side sent (a backend, xenstored, the hypervisor) say so: the driver
//! never panics on such input, it returns one of these.
//!
//! The layer errors are re-exported here for convenience.

use core::fmt;

pub use crate::blkfront::{Broken, IoError};
pub use crate::gnttab::GrantError;
pub use crate::hal::HalError;
pub use crate::ring::{RingError, Violation};
pub use crate::xenbus::XenbusError;
pub use crate::xenstore::XsError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Any error xenblk can return: the error of the layer that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// A call into the hypervisor (or its memory allocator) failed.
    Hal(HalError),
    /// A shared ring could not be set up or used.
    Ring(RingError),
    /// A grant-table operation failed.
    Grant(GrantError),
    /// A xenstore request failed.
    XenStore(XsError),
    /// Reading a device's keys, or moving or waiting for its state, failed.
    Xenbus(XenbusError),
    /// Block I/O failed.
    Io(IoError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Hal(e) => e.fmt(f),
            Error::Ring(e) => e.fmt(f),
            Error::Grant(e) => e.fmt(f),
            Error::XenStore(e) => e.fmt(f),
            Error::Xenbus(e) => e.fmt(f),
            Error::Io(e) => e.fmt(f),
        }
    }
}

/// The source of an [`Error`] is the layer error it holds.
impl core::error::Error for Error {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Error::Hal(e) => e,
            Error::Ring(e) => e,
            Error::Grant(e) => e,
            Error::XenStore(e) => e,
            Error::Xenbus(e) => e,
            Error::Io(e) => e,
        })
    }
}

macro_rules! from_layer {
    ($($variant:ident($t:ty)),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::$variant(e)
            }
        }
    )*};
}

from_layer!(Hal(HalError), Ring(RingError), XenStore(XsError));

/// A page allocation's failure becomes [`Error::Hal`].
impl From<GrantError> for Error {
    fn from(e: GrantError) -> Self {
        match e {
            GrantError::Hal(e) => Error::Hal(e),
            e => Error::Grant(e),
        }
    }
}

/// A failed xenstore request becomes [`Error::XenStore`].
impl From<XenbusError> for Error {
    fn from(e: XenbusError) -> Self {
        match e {
            XenbusError::Store(e) => Error::XenStore(e),
            e => Error::Xenbus(e),
        }
    }
}

/// A grant or hypervisor failure on the data path becomes the variant of
/// that layer.
impl From<IoError> for Error {
    fn from(e: IoError) -> Self {
        match e {
            IoError::Grant(e) => e.into(),
            IoError::Hal(e) => Error::Hal(e),
            e => Error::Io(e),
        }
    }
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
        let s = alloc::format!("{}", Error::from(XenbusError::MissingKey("sectors")));
        assert!(s.contains("'sectors'"), "{s}");
    }
}
