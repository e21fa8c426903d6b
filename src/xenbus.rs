//! Xenbus: the `XenbusState` machine of `io/xenbus.h`, other-end watches and
//! device enumeration.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::error::XsErrno;
use crate::hal::{DomId, XsTransport};
use crate::xenstore::{XenStore, XsError};
use crate::Result;

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

/// How a xenbus operation (reading a device's keys, moving or waiting for
/// its state, finding devices) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XenbusError {
    /// The xenstore request under it failed.
    Store(XsError),
    /// A required key is missing from a xenstore directory.
    MissingKey(&'static str),
    /// A key is present but its value does not parse or is out of range.
    MalformedKey(&'static str),
    /// The other end is in a state this operation cannot proceed from.
    UnexpectedState(XenbusState),
    /// The other end did not reach the wanted state within the caller's
    /// bound. `blkfront` hands a diagnostic report with it.
    StateTimeout {
        /// The state waited for.
        wanted: XenbusState,
        /// The last state the other end was seen in.
        seen: XenbusState,
    },
    /// No such device (its directory is gone, or points nowhere).
    NoDevice,
    /// The device is driven already, by another driver of this domain.
    InUse,
}

impl fmt::Display for XenbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XenbusError::Store(e) => write!(f, "{e}"),
            XenbusError::MissingKey(k) => write!(f, "required key '{k}' is missing"),
            XenbusError::MalformedKey(k) => write!(f, "key '{k}' has a malformed value"),
            XenbusError::UnexpectedState(s) => {
                write!(
                    f,
                    "the other end went to state {s}, which ends this operation"
                )
            }
            XenbusError::StateTimeout { wanted, seen } => write!(
                f,
                "the other end did not reach state {wanted} in time; it was last seen in {seen}"
            ),
            XenbusError::NoDevice => f.write_str("no such device"),
            XenbusError::InUse => {
                f.write_str("the device is in use by another driver of this domain")
            }
        }
    }
}

impl core::error::Error for XenbusError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            XenbusError::Store(e) => Some(e),
            _ => None,
        }
    }
}

impl From<XsError> for XenbusError {
    fn from(e: XsError) -> Self {
        XenbusError::Store(e)
    }
}

// ----- typed key parsers ----------------------------------------------------------------

/// The decimal digits of a key's value with surrounding ASCII whitespace
/// (including a trailing newline or NUL some writers leave) removed, or
/// `MalformedKey(name)`.
fn digits<'a>(name: &'static str, value: &'a str) -> Result<&'a str, XenbusError> {
    let t = value.trim_matches(|c: char| c.is_ascii_whitespace() || c == '\0');
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XenbusError::MalformedKey(name));
    }
    Ok(t)
}

/// Parses a decimal `u32` key value (no sign, no hex).
///
/// # Errors
///
/// [`XenbusError::MalformedKey`]`(name)` for anything else or an overflow.
pub fn parse_u32(name: &'static str, value: &str) -> Result<u32, XenbusError> {
    digits(name, value)?
        .parse()
        .map_err(|_| XenbusError::MalformedKey(name))
}

/// Parses a decimal `u64` key value.
///
/// # Errors
///
/// As for [`parse_u32`].
pub fn parse_u64(name: &'static str, value: &str) -> Result<u64, XenbusError> {
    digits(name, value)?
        .parse()
        .map_err(|_| XenbusError::MalformedKey(name))
}

/// Parses a boolean key value: `0` or `1`.
///
/// # Errors
///
/// [`XenbusError::MalformedKey`]`(name)` for anything else.
pub fn parse_bool(name: &'static str, value: &str) -> Result<bool, XenbusError> {
    match digits(name, value)? {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(XenbusError::MalformedKey(name)),
    }
}

/// Parses the value of a `state` key (`enum xenbus_state` in decimal).
///
/// # Errors
///
/// `MalformedKey("state")` for garbage or a number outside the enum.
pub fn parse_state(value: &str) -> Result<XenbusState, XenbusError> {
    XenbusState::from_u32(parse_u32("state", value)?).ok_or(XenbusError::MalformedKey("state"))
}

// ----- reading keys of a device directory ----------------------------------------------------

/// Reads `<dir>/<name>`.
///
/// # Errors
///
/// [`XenbusError::MissingKey`]`(name)` when it does not exist; any error of the
/// read.
pub fn read_key<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<String, XenbusError> {
    read_key_opt(xs, dir, name)?.ok_or(XenbusError::MissingKey(name))
}

/// Reads `<dir>/<name>`, `None` when it does not exist.
///
/// # Errors
///
/// Any error of the read but `ENOENT`.
pub fn read_key_opt<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<Option<String>, XenbusError> {
    Ok(xs.read_opt(&format!("{dir}/{name}"))?)
}

/// Reads and parses a decimal `u32` key.
///
/// # Errors
///
/// [`XenbusError::MissingKey`], [`XenbusError::MalformedKey`], or the read's error.
pub fn read_u32<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<u32, XenbusError> {
    parse_u32(name, &read_key(xs, dir, name)?)
}

/// Reads and parses an optional decimal `u32` key.
///
/// # Errors
///
/// [`XenbusError::MalformedKey`], or the read's error.
pub fn read_u32_opt<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<Option<u32>, XenbusError> {
    read_key_opt(xs, dir, name)?
        .map(|v| parse_u32(name, &v))
        .transpose()
}

/// Reads and parses a decimal `u64` key.
///
/// # Errors
///
/// As for [`read_u32`].
pub fn read_u64<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<u64, XenbusError> {
    parse_u64(name, &read_key(xs, dir, name)?)
}

/// Reads and parses an optional decimal `u64` key.
///
/// # Errors
///
/// As for [`read_u32_opt`].
pub fn read_u64_opt<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<Option<u64>, XenbusError> {
    read_key_opt(xs, dir, name)?
        .map(|v| parse_u64(name, &v))
        .transpose()
}

/// Reads an optional `0`/`1` key (`feature-*` keys are absent when off).
///
/// # Errors
///
/// As for [`read_u32_opt`].
pub fn read_bool_opt<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    name: &'static str,
) -> Result<Option<bool>, XenbusError> {
    read_key_opt(xs, dir, name)?
        .map(|v| parse_bool(name, &v))
        .transpose()
}

// ----- state -----------------------------------------------------------------------------

/// Reads `<dir>/state`. A missing key reads as [`XenbusState::Unknown`],
/// as Linux's `xenbus_read_driver_state` does (the other end vanished or
/// has not started).
///
/// # Errors
///
/// `MalformedKey("state")`, or the read's error.
pub fn read_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
) -> Result<XenbusState, XenbusError> {
    match read_key_opt(xs, dir, "state")? {
        Some(v) => parse_state(&v),
        None => Ok(XenbusState::Unknown),
    }
}

/// How often [`switch_state`] retries its transaction on `EAGAIN`.
pub const SWITCH_STATE_RETRIES: u32 = 16;

/// Writes `state` to `<dir>/state` in a transaction that first checks the
/// key still exists, so that a device directory the toolstack removed is
/// not recreated (as Linux's `xenbus_switch_state` does).
///
/// # Errors
///
/// [`XenbusError::NoDevice`] when `<dir>/state` is gone; transaction and write
/// errors.
pub fn switch_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    state: XenbusState,
) -> Result<(), XenbusError> {
    let key = format!("{dir}/state");
    xs.transaction(SWITCH_STATE_RETRIES, |xs, tx| {
        if xs.read_opt_tx(tx, &key)?.is_none() {
            return Err(XenbusError::NoDevice);
        }
        Ok(xs.write_tx(tx, &key, state.as_str())?)
    })
}

/// Registers a watch on `<dir>/state` with `token`.
///
/// # Errors
///
/// As for [`XenStore::watch`].
pub fn watch_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    token: &str,
) -> Result<(), XenbusError> {
    Ok(xs.watch(&format!("{dir}/state"), token)?)
}

/// Removes the watch of [`watch_state`].
///
/// # Errors
///
/// As for [`XenStore::unwatch`].
pub fn unwatch_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    token: &str,
) -> Result<(), XenbusError> {
    Ok(xs.unwatch(&format!("{dir}/state"), token)?)
}

/// Waits until `<dir>/state` satisfies `accept`, re-reading it on every
/// event of the watch `token` (registered with [`watch_state`] beforehand;
/// other watches' events stay queued). Returns the accepted state.
///
/// # Errors
///
/// [`XsError::Timeout`] (as [`XenbusError::Store`]) at `deadline` (on
/// [`XsTransport::now_ns`]);
/// `MalformedKey("state")`; xenstore errors.
pub fn wait_state_until<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    token: &str,
    deadline: u64,
    mut accept: impl FnMut(XenbusState) -> bool,
) -> Result<XenbusState, XenbusError> {
    loop {
        let s = read_state(xs, dir)?;
        if accept(s) {
            return Ok(s);
        }
        xs.wait_watch_event_for(token, deadline)?;
    }
}

/// Waits until `<dir>/state` is `wanted`, as [`wait_state_until`] does.
///
/// # Errors
///
/// [`XenbusError::UnexpectedState`] if the other end moves to `Closing` or
/// `Closed` while a state before those is wanted; [`XenbusError::StateTimeout`]
/// with the last state seen at `deadline`; otherwise as for
/// [`wait_state_until`].
pub fn wait_for_state<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    token: &str,
    wanted: XenbusState,
    deadline: u64,
) -> Result<XenbusState, XenbusError> {
    let closing = |s: XenbusState| {
        matches!(s, XenbusState::Closing | XenbusState::Closed) && wanted < XenbusState::Closing
    };
    match wait_state_until(xs, dir, token, deadline, |s| s == wanted || closing(s)) {
        Ok(s) if s == wanted => Ok(s),
        Ok(s) => Err(XenbusError::UnexpectedState(s)),
        Err(XenbusError::Store(XsError::Timeout)) => {
            let seen = read_state(xs, dir).unwrap_or(XenbusState::Unknown);
            Err(XenbusError::StateTimeout { wanted, seen })
        }
        Err(e) => Err(e),
    }
}

// ----- the other end and enumeration ------------------------------------------------------

/// The other end of a device: its directory and domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherEnd {
    /// Absolute path of the other end's directory.
    pub path: String,
    /// The domain serving it.
    pub domid: DomId,
}

/// Whether `p` is a well-formed absolute xenstore path (`xenstore.txt`:
/// `[A-Za-z0-9-/_@]`, no `//`, no trailing `/`, at most 3072 bytes).
fn is_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && p.len() <= crate::abi::xs_wire::XENSTORE_ABS_PATH_MAX
        && !p.ends_with('/')
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@'))
}

/// Reads the other end of device directory `dir` from its `path_key` and
/// `id_key` keys, validates both, and checks the directory exists.
///
/// # Errors
///
/// [`XenbusError::MissingKey`] / [`XenbusError::MalformedKey`] naming the key (a path
/// that is not absolute and well formed; a domain id that is not decimal or
/// is one of the reserved `DOMID_*` values); [`XenbusError::NoDevice`] when the
/// other end's directory does not exist; xenstore errors.
pub fn read_otherend<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    path_key: &'static str,
    id_key: &'static str,
) -> Result<OtherEnd, XenbusError> {
    let o = read_otherend_keys(xs, dir, path_key, id_key)?;
    if xs.read_opt(&o.path)?.is_none() {
        return Err(XenbusError::NoDevice);
    }
    Ok(o)
}

/// Reads and validates the other end's keys as [`read_otherend`] does,
/// without checking that its directory exists yet (a frontend may start
/// before the toolstack has created the backend).
///
/// # Errors
///
/// As for [`read_otherend`], but [`XenbusError::NoDevice`] only when `dir`
/// itself does not exist.
pub fn read_otherend_keys<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
    path_key: &'static str,
    id_key: &'static str,
) -> Result<OtherEnd, XenbusError> {
    let path = match read_key(xs, dir, path_key) {
        // no key because no directory: no such device at all
        Err(XenbusError::MissingKey(_)) if xs.read_opt(dir)?.is_none() => {
            return Err(XenbusError::NoDevice);
        }
        r => r?,
    };
    if !is_abs_path(&path) {
        return Err(XenbusError::MalformedKey(path_key));
    }
    let id = read_u32(xs, dir, id_key)?;
    // DOMID_FIRST_RESERVED (xen.h): ids from 0x7ff0 up are not real domains.
    if id >= u32::from(DomId::SELF.0) {
        return Err(XenbusError::MalformedKey(id_key));
    }
    Ok(OtherEnd {
        path,
        domid: DomId(id as u16),
    })
}

/// The backend of frontend directory `dir` (`backend`, `backend-id`).
///
/// # Errors
///
/// As for [`read_otherend`].
pub fn read_backend<T: XsTransport>(
    xs: &mut XenStore<T>,
    dir: &str,
) -> Result<OtherEnd, XenbusError> {
    read_otherend(xs, dir, "backend", "backend-id")
}

/// This domain's home (`/local/domain/<id>`), from its `domid` key and
/// `XS_GET_DOMAIN_PATH`.
///
/// # Errors
///
/// `MissingKey("domid")`, `MalformedKey("domid")`, xenstore errors.
pub fn home_path<T: XsTransport>(xs: &mut XenStore<T>) -> Result<String, XenbusError> {
    let id = own_domid(xs)?;
    Ok(xs.get_domain_path(id)?)
}

/// This domain's id, from its `domid` key.
///
/// # Errors
///
/// `MissingKey("domid")`, `MalformedKey("domid")` (also for a reserved
/// id), xenstore errors.
pub fn own_domid<T: XsTransport>(xs: &mut XenStore<T>) -> Result<DomId, XenbusError> {
    let id = parse_u32(
        "domid",
        &xs.read("domid").map_err(|e| match e {
            XsError::Errno(XsErrno::ENOENT) => XenbusError::MissingKey("domid"),
            e => XenbusError::Store(e),
        })?,
    )?;
    match u16::try_from(id) {
        Ok(id) if id < DomId::SELF.0 => Ok(DomId(id)),
        _ => Err(XenbusError::MalformedKey("domid")),
    }
}

/// One virtual block device of this domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VbdEntry {
    /// The device number (`vdev`, `docs/misc/vbd-interface.txt`), the
    /// directory's name.
    pub vdev: u32,
    /// The frontend directory, absolute when the home could be found
    /// ([`home_path`]), else relative to it (`device/vbd/<vdev>`).
    pub frontend: String,
    /// The backend directory (absolute).
    pub backend: String,
    /// The backend's domain.
    pub backend_id: DomId,
}

/// Lists `device/vbd/*` of this domain, in `vdev` order. Entries whose name
/// is not a number, or whose `backend` / `backend-id` are missing,
/// malformed, point nowhere or to a directory we may not read, are skipped
/// with a warning.
///
/// # Errors
///
/// xenstore errors other than a missing `device/vbd` (which yields an
/// empty list).
pub fn enumerate_vbds<T: XsTransport>(xs: &mut XenStore<T>) -> Result<Vec<VbdEntry>, XenbusError> {
    let base = match home_path(xs) {
        Ok(home) => format!("{home}/device/vbd"),
        Err(e) => {
            log::debug!("xenbus: home path unknown ({e}); using relative paths");
            String::from("device/vbd")
        }
    };
    let names = match xs.directory(&base) {
        Ok(n) => n,
        Err(XsError::Errno(XsErrno::ENOENT)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names {
        let Ok(vdev) = parse_u32("vdev", &name) else {
            log::warn!("xenbus: ignoring {base}/{name}: not a device number");
            continue;
        };
        let frontend = format!("{base}/{name}");
        match read_backend(xs, &frontend) {
            Ok(o) => out.push(VbdEntry {
                vdev,
                frontend,
                backend: o.path,
                backend_id: o.domid,
            }),
            Err(
                e @ (XenbusError::MissingKey(_)
                | XenbusError::MalformedKey(_)
                | XenbusError::NoDevice
                | XenbusError::Store(XsError::Errno(XsErrno::EACCES))),
            ) => {
                log::warn!("xenbus: ignoring {frontend}: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    out.sort_by_key(|v| v.vdev);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_parsing_tolerates_whitespace_only() {
        assert_eq!(parse_state("4"), Ok(XenbusState::Connected));
        assert_eq!(parse_state(" 6\n"), Ok(XenbusState::Closed));
        assert_eq!(parse_state("1\0"), Ok(XenbusState::Initialising));
        for bad in ["", " ", "9", "-1", "+4", "4a", "0x4", "４", "99999999999"] {
            assert_eq!(
                parse_state(bad),
                Err(XenbusError::MalformedKey("state")),
                "{bad:?}"
            );
        }
        for s in 0..=8 {
            let st = XenbusState::from_u32(s).unwrap();
            assert_eq!(parse_state(st.as_str()), Ok(st));
        }
    }

    #[test]
    fn key_parsers_name_the_key() {
        assert_eq!(parse_u32("ring-ref", "4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_u32("ring-ref", "4294967296"),
            Err(XenbusError::MalformedKey("ring-ref"))
        );
        assert_eq!(parse_u64("sectors", " 18446744073709551615 "), Ok(u64::MAX));
        assert_eq!(
            parse_u64("sectors", "1e9"),
            Err(XenbusError::MalformedKey("sectors"))
        );
        assert_eq!(parse_bool("feature-barrier", "1"), Ok(true));
        assert_eq!(parse_bool("feature-barrier", "0\n"), Ok(false));
        for bad in ["2", "true", "", "01"] {
            assert_eq!(
                parse_bool("f", bad),
                Err(XenbusError::MalformedKey("f")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn absolute_paths_are_validated() {
        assert!(is_abs_path("/local/domain/0/backend/vbd/1/768"));
        for bad in ["", "/", "local/x", "/a//b", "/a/", "/a b", "/a\nb"] {
            assert!(!is_abs_path(bad), "{bad:?}");
        }
    }
}

#[cfg(all(test, feature = "sim"))]
mod sim_tests {
    use super::*;
    use crate::hal::Hal;
    use crate::sim::xenstored::{Access, Perm, SimXsTransport, XenStored};
    use crate::sim::{SimDevice, SimHal, SimXen};

    const G: DomId = DomId(4);
    const FE: &str = "/local/domain/4/device/vbd";
    const BE: &str = "/local/domain/0/backend/vbd/4";

    /// Writes a frontend/backend pair the way the toolstack does.
    fn add_vbd(xsd: &XenStored, vdev: &str, state: &str) {
        let (fe, be) = (format!("{FE}/{vdev}"), format!("{BE}/{vdev}"));
        for (k, v) in [
            ("backend", be.as_str()),
            ("backend-id", "0"),
            ("state", "1"),
        ] {
            xsd.write(DomId::DOM0, &format!("{fe}/{k}"), v).unwrap();
        }
        xsd.write(DomId::DOM0, &format!("{be}/state"), state)
            .unwrap();
        xsd.set_perms(DomId::DOM0, &fe, &[Perm::new(G, Access::None)])
            .unwrap();
        xsd.set_perms(
            DomId::DOM0,
            &format!("{fe}/state"),
            &[Perm::new(G, Access::None)],
        )
        .unwrap();
        for p in [be.clone(), format!("{be}/state")] {
            let perms = [
                Perm::new(DomId::DOM0, Access::None),
                Perm::new(G, Access::Read),
            ];
            xsd.set_perms(DomId::DOM0, &p, &perms).unwrap();
        }
    }

    fn setup(xen: &SimXen) -> (XenStored, SimHal) {
        let xsd = XenStored::new(xen);
        let hal = xen.hal(G);
        (xsd, hal)
    }

    fn client<'h>(xsd: &XenStored, hal: &'h SimHal) -> XenStore<SimXsTransport<'h>> {
        let mut xs = XenStore::new(xsd.connect(hal).unwrap());
        xs.set_timeout_ns(1_000_000_000);
        xs
    }

    #[test]
    fn enumeration_finds_valid_vbds_and_skips_junk() {
        let xen = SimXen::new();
        let (xsd, hal) = setup(&xen);
        let mut xs = client(&xsd, &hal);
        assert_eq!(enumerate_vbds(&mut xs).unwrap(), []);
        add_vbd(&xsd, "5632", "2");
        add_vbd(&xsd, "768", "2");
        add_vbd(&xsd, "junk", "2");
        add_vbd(&xsd, "832", "2");
        xsd.write(DomId::DOM0, &format!("{FE}/832/backend-id"), "32752")
            .unwrap();
        add_vbd(&xsd, "848", "2");
        xsd.rm(DomId::DOM0, &format!("{FE}/848/backend")).unwrap();
        add_vbd(&xsd, "864", "2");
        xsd.write(DomId::DOM0, &format!("{FE}/864/backend"), "/nowhere/at/all")
            .unwrap();
        add_vbd(&xsd, "880", "2");
        let nothing = "/local/domain/4/device/nothing";
        xsd.write(DomId::DOM0, &format!("{FE}/880/backend"), nothing)
            .unwrap();
        let got = enumerate_vbds(&mut xs).unwrap();
        let want: Vec<VbdEntry> = [768, 5632]
            .iter()
            .map(|&v| VbdEntry {
                vdev: v,
                frontend: format!("{FE}/{v}"),
                backend: format!("{BE}/{v}"),
                backend_id: DomId::DOM0,
            })
            .collect();
        assert_eq!(got, want);
        let fe832 = format!("{FE}/832");
        assert_eq!(
            read_backend(&mut xs, &fe832),
            Err(XenbusError::MalformedKey("backend-id"))
        );
        let fe848 = format!("{FE}/848");
        assert_eq!(
            read_backend(&mut xs, &fe848),
            Err(XenbusError::MissingKey("backend"))
        );
        let fe864 = format!("{FE}/864");
        let eacces = XenbusError::Store(XsError::Errno(XsErrno::EACCES));
        assert_eq!(read_backend(&mut xs, &fe864), Err(eacces));
        let fe880 = format!("{FE}/880");
        assert_eq!(read_backend(&mut xs, &fe880), Err(XenbusError::NoDevice));
        let nowhere = format!("{FE}/999");
        assert_eq!(read_backend(&mut xs, &nowhere), Err(XenbusError::NoDevice));
    }

    #[test]
    fn state_keys_read_switch_and_missing() {
        let xen = SimXen::new();
        let (xsd, hal) = setup(&xen);
        let mut xs = client(&xsd, &hal);
        add_vbd(&xsd, "768", "2");
        let fe = format!("{FE}/768");
        assert_eq!(read_state(&mut xs, &fe), Ok(XenbusState::Initialising));
        assert_eq!(
            read_state(&mut xs, &format!("{BE}/768")),
            Ok(XenbusState::InitWait)
        );
        switch_state(&mut xs, &fe, XenbusState::Initialised).unwrap();
        assert_eq!(xsd.read(DomId::DOM0, &format!("{fe}/state")).unwrap(), "3");
        xsd.write(DomId::DOM0, &format!("{fe}/state"), "garbage")
            .unwrap();
        assert_eq!(
            read_state(&mut xs, &fe),
            Err(XenbusError::MalformedKey("state"))
        );
        assert_eq!(
            read_state(&mut xs, &format!("{FE}/999")),
            Ok(XenbusState::Unknown)
        );
        // The toolstack removed the device: switching must not recreate it.
        xsd.rm(DomId::DOM0, &fe).unwrap();
        assert_eq!(
            switch_state(&mut xs, &fe, XenbusState::Closed),
            Err(XenbusError::NoDevice)
        );
        assert!(!xsd.store().exists(&fe));
    }

    #[test]
    fn typed_reads_report_missing_and_malformed_keys() {
        let xen = SimXen::new();
        let (xsd, hal) = setup(&xen);
        let mut xs = client(&xsd, &hal);
        add_vbd(&xsd, "768", "2");
        let be = format!("{BE}/768");
        for (k, v) in [
            ("sectors", "2097152"),
            ("feature-barrier", "1"),
            ("info", "x"),
        ] {
            xsd.write(DomId::DOM0, &format!("{be}/{k}"), v).unwrap();
        }
        assert_eq!(read_u64(&mut xs, &be, "sectors"), Ok(2_097_152));
        assert_eq!(
            read_u64(&mut xs, &be, "sector-size"),
            Err(XenbusError::MissingKey("sector-size"))
        );
        assert_eq!(read_u32_opt(&mut xs, &be, "sector-size"), Ok(None));
        assert_eq!(
            read_u32(&mut xs, &be, "info"),
            Err(XenbusError::MalformedKey("info"))
        );
        assert_eq!(
            read_bool_opt(&mut xs, &be, "feature-barrier"),
            Ok(Some(true))
        );
        assert_eq!(read_bool_opt(&mut xs, &be, "feature-discard"), Ok(None));
        assert_eq!(
            read_u64_opt(&mut xs, &be, "info"),
            Err(XenbusError::MalformedKey("info"))
        );
        assert_eq!(home_path(&mut xs).unwrap(), "/local/domain/4");
    }

    /// A backend that moves its state key to each of `script` in turn, one
    /// per step.
    struct Backend {
        xsd: XenStored,
        key: String,
        script: Vec<&'static str>,
    }

    impl SimDevice for Backend {
        fn step(&mut self, _: &SimXen) -> bool {
            if self.script.is_empty() {
                return false;
            }
            let next = self.script.remove(0);
            self.xsd.write(DomId::DOM0, &self.key, next).is_ok()
        }
        fn name(&self) -> &str {
            "scripted-backend"
        }
    }

    #[test]
    fn waiting_for_the_other_end() {
        let xen = SimXen::new();
        let (xsd, hal) = setup(&xen);
        let mut xs = client(&xsd, &hal);
        add_vbd(&xsd, "768", "1");
        let be = format!("{BE}/768");
        watch_state(&mut xs, &be, "be").unwrap();
        let dev = xen.add_device(Backend {
            xsd: xsd.clone(),
            key: format!("{be}/state"),
            script: vec!["2", "3", "4"],
        });
        let deadline = hal.now_ns() + 1_000_000_000;
        let s = wait_for_state(&mut xs, &be, "be", XenbusState::Connected, deadline);
        assert_eq!(s, Ok(XenbusState::Connected));
        xen.remove_device(dev.id());

        // Closing while waiting for Connected is an unexpected state.
        let dev = xen.add_device(Backend {
            xsd: xsd.clone(),
            key: format!("{be}/state"),
            script: vec!["5"],
        });
        xsd.write(DomId::DOM0, &format!("{be}/state"), "2").unwrap();
        let deadline = hal.now_ns() + 1_000_000_000;
        let s = wait_for_state(&mut xs, &be, "be", XenbusState::Connected, deadline);
        assert_eq!(s, Err(XenbusError::UnexpectedState(XenbusState::Closing)));

        // Nobody moves: a state timeout naming what was seen.
        let deadline = hal.now_ns() + 10_000_000;
        let s = wait_for_state(&mut xs, &be, "be", XenbusState::Closed, deadline);
        let want = XenbusError::StateTimeout {
            wanted: XenbusState::Closed,
            seen: XenbusState::Closing,
        };
        assert_eq!(s, Err(want));
        unwatch_state(&mut xs, &be, "be").unwrap();
        xen.remove_device(dev.id());
    }
}
