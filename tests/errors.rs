//! The error types: every layer error converts into the top `Error` and
//! comes back out through `source()`, `?` carries a failed probe into
//! `xenblk::Error` and `Box<dyn Error>`, and every variant's `Display` is
//! written in words rather than a Debug name.

use core::error::Error as StdError;
use core::fmt::{Debug, Display};

use xenblk::blkfront::{Broken, IoError, ProbeError, Rejected};
use xenblk::error::{Feature, Violation, XsErrno, XsMalformed};
use xenblk::gnttab::GrantError;
use xenblk::hal::HalError;
use xenblk::ring::RingError;
use xenblk::xenbus::{XenbusError, XenbusState};
use xenblk::xenstore::XsError;
use xenblk::Error;

// ----- one value of every variant ----------------------------------------------
//
// Each list is paired with a `match` without a wildcard, so that a new
// variant does not compile until it is listed here too.

fn all_hal() -> Vec<HalError> {
    let all = vec![
        HalError::OutOfMemory,
        HalError::Hypercall(-22),
        HalError::Timeout,
        HalError::InvalidPort(7),
    ];
    for e in &all {
        match e {
            HalError::OutOfMemory
            | HalError::Hypercall(_)
            | HalError::Timeout
            | HalError::InvalidPort(_) => {}
        }
    }
    all
}

fn all_violations() -> Vec<Violation> {
    let all = vec![
        Violation::ProducerOverrun { prod: 40, cons: 3 },
        Violation::RequestOverrun { prod: 40, cons: 3 },
        Violation::BadId(99),
        Violation::NotInFlight(5),
        Violation::WrongOperation {
            id: 5,
            sent: 0,
            got: 1,
        },
        Violation::UnknownStatus(42),
        Violation::StillMapped(5),
    ];
    for v in &all {
        match v {
            Violation::ProducerOverrun { .. }
            | Violation::RequestOverrun { .. }
            | Violation::BadId(_)
            | Violation::NotInFlight(_)
            | Violation::WrongOperation { .. }
            | Violation::UnknownStatus(_)
            | Violation::StillMapped(_) => {}
        }
    }
    all
}

fn all_ring() -> Vec<RingError> {
    let mut all = vec![RingError::Full, RingError::InvalidOrder(5)];
    all.extend(all_violations().into_iter().map(RingError::Protocol));
    for e in &all {
        match e {
            RingError::Full | RingError::Protocol(_) | RingError::InvalidOrder(_) => {}
        }
    }
    all
}

fn all_grant() -> Vec<GrantError> {
    let mut all = vec![
        GrantError::Exhausted,
        GrantError::InvalidRef(12),
        GrantError::InUse(12),
        GrantError::FrameTooLarge(1 << 40),
        GrantError::OutOfBounds,
    ];
    all.extend(all_hal().into_iter().map(GrantError::Hal));
    for e in &all {
        match e {
            GrantError::Exhausted
            | GrantError::InvalidRef(_)
            | GrantError::InUse(_)
            | GrantError::FrameTooLarge(_)
            | GrantError::OutOfBounds
            | GrantError::Hal(_) => {}
        }
    }
    all
}

fn all_errno() -> Vec<XsErrno> {
    let all = vec![
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
        XsErrno::Unknown,
    ];
    for e in &all {
        match e {
            XsErrno::EINVAL
            | XsErrno::EACCES
            | XsErrno::EEXIST
            | XsErrno::EISDIR
            | XsErrno::ENOENT
            | XsErrno::ENOMEM
            | XsErrno::ENOSPC
            | XsErrno::EIO
            | XsErrno::ENOTEMPTY
            | XsErrno::ENOSYS
            | XsErrno::EROFS
            | XsErrno::EBUSY
            | XsErrno::EAGAIN
            | XsErrno::EISCONN
            | XsErrno::E2BIG
            | XsErrno::EPERM
            | XsErrno::Unknown => {}
        }
    }
    all
}

fn all_malformed() -> Vec<XsMalformed> {
    let all = vec![
        XsMalformed::Oversize,
        XsMalformed::UnexpectedId,
        XsMalformed::UnexpectedType,
        XsMalformed::MissingTerminator,
        XsMalformed::NotUtf8,
        XsMalformed::BadPayload,
    ];
    for m in &all {
        match m {
            XsMalformed::Oversize
            | XsMalformed::UnexpectedId
            | XsMalformed::UnexpectedType
            | XsMalformed::MissingTerminator
            | XsMalformed::NotUtf8
            | XsMalformed::BadPayload => {}
        }
    }
    all
}

fn all_xs() -> Vec<XsError> {
    let mut all = vec![
        XsError::PayloadTooLarge,
        XsError::Connection,
        XsError::InvalidPath,
        XsError::RetriesExhausted,
        XsError::Timeout,
        XsError::OutOfMemory,
    ];
    all.extend(all_errno().into_iter().map(XsError::Errno));
    all.extend(all_malformed().into_iter().map(XsError::Malformed));
    for e in &all {
        match e {
            XsError::Errno(_)
            | XsError::Malformed(_)
            | XsError::PayloadTooLarge
            | XsError::Connection
            | XsError::InvalidPath
            | XsError::RetriesExhausted
            | XsError::Timeout
            | XsError::OutOfMemory => {}
        }
    }
    all
}

fn all_xenbus() -> Vec<XenbusError> {
    let mut all = vec![
        XenbusError::MissingKey("sectors"),
        XenbusError::MalformedKey("sector-size"),
        XenbusError::UnexpectedState(XenbusState::Closing),
        XenbusError::StateTimeout {
            wanted: XenbusState::Connected,
            seen: XenbusState::InitWait,
        },
        XenbusError::NoDevice,
        XenbusError::InUse,
    ];
    all.extend(all_xs().into_iter().map(XenbusError::Store));
    for e in &all {
        match e {
            XenbusError::Store(_)
            | XenbusError::MissingKey(_)
            | XenbusError::MalformedKey(_)
            | XenbusError::UnexpectedState(_)
            | XenbusError::StateTimeout { .. }
            | XenbusError::NoDevice
            | XenbusError::InUse => {}
        }
    }
    all
}

fn all_features() -> Vec<Feature> {
    let all = vec![
        Feature::FlushCache,
        Feature::Barrier,
        Feature::Discard,
        Feature::SecureDiscard,
        Feature::Persistent,
        Feature::Indirect,
    ];
    for f in &all {
        match f {
            Feature::FlushCache
            | Feature::Barrier
            | Feature::Discard
            | Feature::SecureDiscard
            | Feature::Persistent
            | Feature::Indirect => {}
        }
    }
    all
}

fn all_broken() -> Vec<Broken> {
    let mut all = vec![Broken::Timeout];
    all.extend(all_violations().into_iter().map(Broken::Protocol));
    for b in &all {
        match b {
            Broken::Protocol(_) | Broken::Timeout => {}
        }
    }
    all
}

fn all_io() -> Vec<IoError> {
    let mut all = vec![
        IoError::NotConnected,
        IoError::Closed,
        IoError::ReadOnly,
        IoError::Misaligned,
        IoError::OutOfRange,
        IoError::Backend,
        IoError::Aborted,
        IoError::Timeout,
        IoError::UnknownToken,
    ];
    all.extend(all_broken().into_iter().map(IoError::Broken));
    all.extend(all_features().into_iter().map(IoError::Unsupported));
    all.extend(all_grant().into_iter().map(IoError::Grant));
    all.extend(all_hal().into_iter().map(IoError::Hal));
    for e in &all {
        match e {
            IoError::NotConnected
            | IoError::Broken(_)
            | IoError::Closed
            | IoError::ReadOnly
            | IoError::Misaligned
            | IoError::OutOfRange
            | IoError::Unsupported(_)
            | IoError::Backend
            | IoError::Aborted
            | IoError::Timeout
            | IoError::UnknownToken
            | IoError::Grant(_)
            | IoError::Hal(_) => {}
        }
    }
    all
}

/// Every top-level error the conversions produce.
fn all_errors() -> Vec<Error> {
    let mut all: Vec<Error> = Vec::new();
    all.extend(all_hal().into_iter().map(Error::from));
    all.extend(all_ring().into_iter().map(Error::from));
    all.extend(all_grant().into_iter().map(Error::from));
    all.extend(all_xs().into_iter().map(Error::from));
    all.extend(all_xenbus().into_iter().map(Error::from));
    all.extend(all_io().into_iter().map(Error::from));
    all
}

// ----- conversions and sources --------------------------------------------------

/// `e` converted into `Error`: the expected variant, whose `source()` is `e`
/// again.
fn round_trip<E>(e: E, wrap: fn(E) -> Error)
where
    E: StdError + Copy + PartialEq + Debug + 'static,
    Error: From<E>,
{
    let top = Error::from(e);
    assert_eq!(top, wrap(e), "{e:?}");
    let source = top.source().expect("the top error has a source");
    assert_eq!(source.downcast_ref::<E>(), Some(&e), "{e:?}");
}

#[test]
fn each_layer_error_converts_into_error_and_back_out_through_source() {
    for e in all_hal() {
        round_trip(e, Error::Hal);
    }
    for e in all_ring() {
        round_trip(e, Error::Ring);
    }
    for e in all_grant() {
        match e {
            GrantError::Hal(h) => round_trip(h, Error::Hal),
            e => round_trip(e, Error::Grant),
        }
    }
    for e in all_xs() {
        round_trip(e, Error::XenStore);
    }
    for e in all_xenbus() {
        match e {
            XenbusError::Store(s) => round_trip(s, Error::XenStore),
            e => round_trip(e, Error::Xenbus),
        }
    }
    for e in all_io() {
        match e {
            IoError::Grant(_) | IoError::Hal(_) => {}
            e => round_trip(e, Error::Io),
        }
    }
}

#[test]
fn an_error_passed_on_from_a_lower_layer_has_that_layers_shape() {
    let timeout = XsError::Timeout;
    assert_eq!(
        Error::from(XenbusError::Store(timeout)),
        Error::from(timeout),
        "a xenstore error is Error::XenStore, whoever noticed it"
    );
    assert_eq!(
        Error::from(GrantError::Hal(HalError::OutOfMemory)),
        Error::Hal(HalError::OutOfMemory)
    );
    assert_eq!(
        Error::from(IoError::Grant(GrantError::Exhausted)),
        Error::Grant(GrantError::Exhausted)
    );
    assert_eq!(
        Error::from(IoError::Grant(GrantError::Hal(HalError::Timeout))),
        Error::Hal(HalError::Timeout)
    );
    assert_eq!(
        Error::from(IoError::Hal(HalError::InvalidPort(3))),
        Error::Hal(HalError::InvalidPort(3))
    );
}

#[test]
fn the_source_chain_reaches_the_bottom_cause() {
    let v = Violation::StillMapped(4);
    let top = Error::from(IoError::Broken(Broken::Protocol(v)));
    let io = top.source().unwrap();
    assert_eq!(
        io.downcast_ref::<IoError>(),
        Some(&IoError::Broken(Broken::Protocol(v)))
    );
    let broken = io.source().unwrap();
    assert_eq!(broken.downcast_ref::<Broken>(), Some(&Broken::Protocol(v)));
    let violation = broken.source().unwrap();
    assert_eq!(violation.downcast_ref::<Violation>(), Some(&v));
    assert!(violation.source().is_none(), "a violation is the bottom");

    let top = Error::from(XsError::Errno(XsErrno::EACCES));
    let xs = top.source().unwrap();
    let errno = xs.source().unwrap();
    assert_eq!(errno.downcast_ref::<XsErrno>(), Some(&XsErrno::EACCES));

    let ring = RingError::Protocol(Violation::BadId(1));
    assert_eq!(
        ring.source().and_then(|s| s.downcast_ref::<Violation>()),
        Some(&Violation::BadId(1))
    );
    let grant = GrantError::Hal(HalError::OutOfMemory);
    assert_eq!(
        grant.source().and_then(|s| s.downcast_ref::<HalError>()),
        Some(&HalError::OutOfMemory)
    );
    let xenbus = XenbusError::Store(XsError::Connection);
    assert_eq!(
        xenbus.source().and_then(|s| s.downcast_ref::<XsError>()),
        Some(&XsError::Connection)
    );
    assert!(XenbusError::NoDevice.source().is_none());
}

#[test]
fn a_probe_error_keeps_its_error_as_source_and_converts_into_error() {
    let inner = Error::from(XenbusError::MalformedKey("backend-id"));
    let p = ProbeError::from(inner);
    assert_eq!(p.stall, None);
    assert_eq!(
        p.source().and_then(|s| s.downcast_ref::<Error>()),
        Some(&inner)
    );
    assert_eq!(p.to_string(), inner.to_string());
    assert_eq!(Error::from(p), inner);
    assert_eq!(
        ProbeError::from(XsError::Connection).error,
        Error::XenStore(XsError::Connection)
    );
    assert_eq!(
        ProbeError::from(IoError::Grant(GrantError::Exhausted)).error,
        Error::Grant(GrantError::Exhausted)
    );
}

#[test]
fn a_refused_submission_converts_into_its_reason_and_a_boxed_error() {
    let r = || Rejected {
        error: IoError::Grant(GrantError::Exhausted),
        buf: vec![7; 512],
    };
    assert_eq!(
        r().to_string(),
        IoError::Grant(GrantError::Exhausted).to_string()
    );
    assert_eq!(IoError::from(r()), IoError::Grant(GrantError::Exhausted));
    assert_eq!(Error::from(r()), Error::Grant(GrantError::Exhausted));
    // Transparent: the reason's source, not the reason again.
    assert_eq!(
        r().source().and_then(|s| s.downcast_ref::<GrantError>()),
        Some(&GrantError::Exhausted)
    );
    fn boxed() -> Result<(), Box<dyn StdError>> {
        Err(Rejected {
            error: IoError::Closed,
            buf: Vec::new(),
        })?
    }
    assert_eq!(
        boxed().unwrap_err().to_string(),
        IoError::Closed.to_string()
    );
}

// ----- Display ------------------------------------------------------------------

/// The state names of `io/xenbus.h` (`XenbusStateInitWait`, ...), which
/// `XenbusState`'s `Display` prints on purpose, with the number.
const STATE_NAMES: [&str; 9] = [
    "Unknown",
    "Initialising",
    "InitWait",
    "Initialised",
    "Connected",
    "Closing",
    "Closed",
    "Reconfiguring",
    "Reconfigured",
];

fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
}

/// The Rust names in a Debug text: words that start with a capital and
/// are not all capitals (`EACCES` is the protocol's own name), other than
/// the xenbus state names.
fn debug_names(debug: &str) -> Vec<&str> {
    words(debug)
        .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
        .filter(|w| w.chars().any(|c| c.is_ascii_lowercase()))
        .filter(|w| !STATE_NAMES.contains(w))
        .collect()
}

fn assert_readable<E: Display + Debug>(e: &E) {
    let shown = e.to_string();
    let debug = format!("{e:?}");
    assert!(!shown.trim().is_empty(), "{debug}: empty Display");
    assert_ne!(shown, debug, "Display is the Debug text");
    let shown_words: Vec<&str> = words(&shown).collect();
    for name in debug_names(&debug) {
        assert!(
            !shown_words.contains(&name),
            "{debug}: Display {shown:?} contains the Debug name {name:?}"
        );
    }
}

#[test]
fn every_variant_displays_in_words() {
    all_hal().iter().for_each(assert_readable);
    all_violations().iter().for_each(assert_readable);
    all_ring().iter().for_each(assert_readable);
    all_grant().iter().for_each(assert_readable);
    all_errno().iter().for_each(assert_readable);
    all_malformed().iter().for_each(assert_readable);
    all_xs().iter().for_each(assert_readable);
    all_xenbus().iter().for_each(assert_readable);
    all_features().iter().for_each(assert_readable);
    all_broken().iter().for_each(assert_readable);
    all_io().iter().for_each(assert_readable);
    all_errors().iter().for_each(assert_readable);
}

#[test]
fn the_checker_catches_a_debug_name() {
    // A Display that is only a Debug name in disguise must fail the check.
    struct Lazy;
    impl Debug for Lazy {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("UnexpectedId")
        }
    }
    impl Display for Lazy {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("malformed message: UnexpectedId")
        }
    }
    let caught = std::panic::catch_unwind(|| assert_readable(&Lazy));
    assert!(caught.is_err());
}

#[test]
fn the_top_error_displays_as_its_layer_error() {
    for e in all_errors() {
        let inner = e.source().unwrap().to_string();
        assert_eq!(e.to_string(), inner);
    }
    let shown = Error::from(XenbusError::MissingKey("sectors")).to_string();
    assert!(shown.contains("'sectors'"), "{shown}");
    let shown = IoError::Unsupported(Feature::FlushCache).to_string();
    assert!(shown.contains("feature-flush-cache"), "{shown}");
    let shown = XsError::Errno(XsErrno::EACCES).to_string();
    assert!(shown.contains("EACCES"), "{shown}");
}

// ----- `?` from probe -------------------------------------------------------------

#[cfg(feature = "sim")]
mod probe {
    use super::*;
    use xenblk::blkfront::Config;
    use xenblk::sim::blkback::BackendConfig;
    use xenblk::sim::Testbed;

    fn small(mut cfg: BackendConfig) -> BackendConfig {
        cfg.disk_bytes = 1 << 20;
        cfg
    }

    /// A backend that never leaves Initialising: probe gives up with a
    /// stall report.
    fn stalling() -> Testbed {
        let mut cfg = small(BackendConfig::qdisk());
        cfg.direct_io_safe = Some(true);
        cfg.stall_with_direct_io_safe = true;
        Testbed::new([cfg])
    }

    fn quick() -> Config {
        Config {
            connect_timeout_ns: 100_000_000,
            ..Config::default()
        }
    }

    #[test]
    fn probe_and_io_errors_go_into_a_boxed_error_with_question_mark(
    ) -> Result<(), Box<dyn core::error::Error>> {
        let tb = Testbed::new([small(BackendConfig::blkback())]);
        let guest = tb.guest();
        let mut disk = guest.probe(0, Config::default())?;
        disk.write(0, &[7; 512])?;
        let mut back = [0; 512];
        disk.read(0, &mut back)?;
        assert_eq!(back, [7; 512]);
        disk.close()?;
        Ok(())
    }

    fn probe_into_boxed(tb: &Testbed) -> Result<(), Box<dyn core::error::Error>> {
        let guest = tb.guest();
        let _disk = guest.probe(0, quick())?;
        Ok(())
    }

    fn probe_into_error(tb: &Testbed) -> xenblk::Result<()> {
        let guest = tb.guest();
        let mut disk = guest.probe(0, quick())?;
        disk.close()?;
        Ok(())
    }

    #[test]
    fn a_failed_probe_keeps_its_report_in_a_box_and_its_error_in_error() {
        let want = Error::Xenbus(XenbusError::StateTimeout {
            wanted: XenbusState::InitWait,
            seen: XenbusState::Initialising,
        });
        let tb = stalling();
        let boxed = probe_into_boxed(&tb).expect_err("the backend stalls");
        let p = boxed
            .downcast_ref::<ProbeError>()
            .expect("the box holds the ProbeError");
        assert_eq!(p.error, want);
        assert!(p.stall.is_some(), "the report survives in the box");
        assert_eq!(
            p.source().and_then(|s| s.downcast_ref::<Error>()),
            Some(&want)
        );
        assert_readable(p);

        let tb = stalling();
        assert_eq!(probe_into_error(&tb), Err(want));
    }
}

/// A refused submission and a completion show their buffer's length in
/// `Debug`, not its bytes (a request's bytes would fill screens).
#[cfg(feature = "sim")]
#[test]
fn debug_of_rejected_and_completion_shows_the_buffer_length() {
    use xenblk::blkfront::Config;
    use xenblk::sim::{blkback::BackendConfig, Testbed};
    let tb = Testbed::new([BackendConfig::blkback()]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).unwrap();
    let r = disk
        .submit_read(disk.sectors(), vec![7u8; 4096])
        .unwrap_err();
    assert_eq!(
        format!("{r:?}"),
        "Rejected { error: OutOfRange, buf: <4096 bytes> }"
    );
    disk.submit_read(0, vec![0u8; 512]).unwrap();
    disk.kick();
    let c = loop {
        if let Some(c) = disk.poll() {
            break c;
        }
        disk.wait(u64::MAX).unwrap();
    };
    let shown = format!("{c:?}");
    assert!(
        shown.ends_with("result: Ok(()), buf: Some(<512 bytes>) }"),
        "{shown}"
    );
    disk.close().unwrap();
}

/// A probe of a virtual device that does not exist says so, naming it.
#[cfg(feature = "sim")]
#[test]
fn probing_a_vdev_that_does_not_exist_is_no_device_and_names_it() {
    use xenblk::blkfront::Config;
    use xenblk::sim::{blkback::BackendConfig, Testbed};
    use xenblk::xenbus::XenbusError;
    let tb = Testbed::new([BackendConfig::blkback()]);
    let guest = tb.guest();
    let e = guest.probe_vdev(51999, Config::default()).unwrap_err();
    assert_eq!(e.error, xenblk::Error::Xenbus(XenbusError::NoDevice));
    assert_eq!(e.vdev, Some(51999));
    assert_eq!(e.to_string(), "vdev 51999: no such device");
}
