//! The explanation of a backend that never connects: [`StallReport`] and
//! its likely [`StallCause`], read with the driver's own key parsers.

use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt;

use super::info::{BackendKind, DirectIoSafe};
use super::keys;
use crate::xenbus::{XenbusError, XenbusState};

/// Why a backend that never connected is probably stuck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallCause {
    /// A qdisk backend asked for `direct-io-safe=1` stays in Initialising:
    /// QEMU then wants O_DIRECT with native AIO, and a QEMU built without
    /// libaio refuses to open the image.
    QdiskDirectIoSafe,
    /// The backend directory does not exist (no backend was created, or it
    /// was removed).
    NoBackendDirectory,
    /// A blkback backend waits in InitWait without `physical-device`: its
    /// hotplug script did not run or failed.
    HotplugScript,
    /// A qdisk backend with a logical block size above 512 stayed in
    /// InitWait after the frontend published its rings: QEMU's xen-block
    /// refuses such a disk to a frontend that does not write
    /// `feature-large-sector-size=1`, and a QEMU that follows blkif.h's
    /// 2024 rule refuses one that does.
    QdiskSectorSize,
    /// The backend reached InitWait but never Connected after the frontend
    /// published its rings.
    NeverConnected,
    /// The backend is closing or closed.
    BackendClosed,
    /// Nothing specific is known.
    Unknown,
}

impl StallCause {
    /// A short token for machine-readable lines.
    pub fn token(self) -> &'static str {
        match self {
            StallCause::QdiskDirectIoSafe => "qdisk-direct-io-safe",
            StallCause::QdiskSectorSize => "qdisk-sector-size",
            StallCause::NoBackendDirectory => "no-backend-directory",
            StallCause::HotplugScript => "hotplug-script",
            StallCause::NeverConnected => "never-connected",
            StallCause::BackendClosed => "backend-closed",
            StallCause::Unknown => "unknown",
        }
    }

    /// A sentence an operator can act on.
    pub fn explain(self) -> &'static str {
        match self {
            StallCause::QdiskDirectIoSafe => {
                "the qdisk backend never left Initialising and direct-io-safe=1 was requested: with \
                 it QEMU opens the image with O_DIRECT and aio=native, which a QEMU built without \
                 libaio (Debian's qemu-system-xen) refuses ('aio=native was specified, but is not \
                 supported in this build' in /var/log/xen/qemu-dm-<domain>.log); drop \
                 direct-io-safe from the disk line or use backendtype=phy"
            }
            StallCause::NoBackendDirectory => {
                "the backend directory does not exist: the toolstack created no backend for this \
                 disk, or removed it"
            }
            StallCause::HotplugScript => {
                "blkback waits in InitWait without physical-device: the block hotplug script did \
                 not run or failed (see /var/log/xen/xl-<domain>.log in the backend domain)"
            }
            StallCause::QdiskSectorSize => {
                "the qdisk backend has a logical block size above 512 and never connected: \
                 QEMU's xen-block refuses that to a frontend without \
                 feature-large-sector-size=1 ('logical_block_size != 512 not supported by \
                 frontend'), and a QEMU following blkif.h's 2024 rule refuses a frontend with it; \
                 /var/log/xen/qemu-dm-<domain>.log says which (xenblk writes the flag, and tries \
                 once more without it)"
            }
            StallCause::NeverConnected => {
                "the backend saw the frontend's rings but never connected; check the backend \
                 domain's kernel log or device-model log"
            }
            StallCause::BackendClosed => "the backend is closing or closed",
            StallCause::Unknown => "the backend made no progress; no specific cause is known",
        }
    }

    /// Infers the likely cause from the backend's state and directory.
    pub fn diagnose(
        state: Option<XenbusState>,
        kind: BackendKind,
        raw: &BTreeMap<String, String>,
    ) -> StallCause {
        let dio = keys::direct_io_safe(raw.get("direct-io-safe").map(String::as_str));
        match state {
            None => StallCause::NoBackendDirectory,
            Some(XenbusState::Closing) | Some(XenbusState::Closed) => StallCause::BackendClosed,
            Some(XenbusState::Unknown) | Some(XenbusState::Initialising)
                if kind == BackendKind::Qdisk && dio == DirectIoSafe::On =>
            {
                StallCause::QdiskDirectIoSafe
            }
            Some(XenbusState::InitWait)
                if kind == BackendKind::Blkback && !raw.contains_key("physical-device") =>
            {
                StallCause::HotplugScript
            }
            Some(XenbusState::InitWait)
                if kind == BackendKind::Qdisk
                    && raw.get("sector-size").is_some_and(|v| {
                        crate::xenbus::parse_u32("sector-size", v).is_ok_and(|n| n != 512)
                    }) =>
            {
                StallCause::QdiskSectorSize
            }
            Some(XenbusState::InitWait) | Some(XenbusState::Initialised) => {
                StallCause::NeverConnected
            }
            _ => StallCause::Unknown,
        }
    }
}

/// The report on a disk whose backend did not connect within the caller's
/// bound: everything readable, and the likely cause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StallReport {
    /// The disk.
    pub vdev: u32,
    /// Backend directory.
    pub backend_path: String,
    /// The state the frontend waited for.
    pub wanted: XenbusState,
    /// The backend's last state (`None`: no state key / no directory).
    pub backend_state: Option<XenbusState>,
    /// Which implementation serves the disk.
    pub kind: BackendKind,
    /// `direct-io-safe` as published.
    pub direct_io_safe: DirectIoSafe,
    /// The likely cause.
    pub cause: StallCause,
    /// Every key of the backend directory, verbatim.
    pub raw: BTreeMap<String, String>,
}

impl StallReport {
    /// Builds a report from what could be read.
    pub fn new(
        vdev: u32,
        backend_path: &str,
        wanted: XenbusState,
        backend_state: Option<XenbusState>,
        raw: BTreeMap<String, String>,
    ) -> StallReport {
        let kind = BackendKind::classify(backend_path, raw.get("type").map(String::as_str));
        let direct_io_safe = keys::direct_io_safe(raw.get("direct-io-safe").map(String::as_str));
        let cause = StallCause::diagnose(backend_state, kind, &raw);
        StallReport {
            vdev,
            backend_path: backend_path.into(),
            wanted,
            backend_state,
            kind,
            direct_io_safe,
            cause,
            raw,
        }
    }

    /// The error to hand the caller with this report.
    pub fn error(&self) -> XenbusError {
        XenbusError::StateTimeout {
            wanted: self.wanted,
            seen: self.backend_state.unwrap_or(XenbusState::Unknown),
        }
    }

    /// The machine-readable line for a disk that did not connect.
    pub fn disk_line(&self) -> String {
        alloc::format!(
            "xenblk-disk vdev={} backend={} type={} mode={} connected=no backend-state={} \
             direct-io-safe={} cause={}",
            self.vdev,
            self.backend_path,
            self.raw.get("type").map_or("-", String::as_str),
            self.raw.get("mode").map_or("-", String::as_str),
            self.backend_state.map_or(0, |s| s as u8),
            self.direct_io_safe.token(),
            self.cause.token(),
        )
    }
}

impl fmt::Display for StallReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "disk {} did not connect ({} backend)",
            self.vdev, self.kind
        )?;
        writeln!(f, "  backend         {}", self.backend_path)?;
        match self.backend_state {
            Some(s) => writeln!(f, "  backend state   {s}, waited for {}", self.wanted)?,
            None => writeln!(
                f,
                "  backend state   unreadable, waited for {}",
                self.wanted
            )?,
        }
        writeln!(
            f,
            "  direct-io-safe  {}: {}",
            self.direct_io_safe.token(),
            self.direct_io_safe.explain(self.kind)
        )?;
        writeln!(f, "  likely cause    {}", self.cause.explain())?;
        write!(f, "  keys            {}", self.raw.len())?;
        for (k, v) in &self.raw {
            write!(f, "\n    {k} = {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn qdisk_with_direct_io_safe_stuck_in_initialising_names_the_cause() {
        let k = keys(&[
            ("direct-io-safe", "1"),
            ("type", "qdisk"),
            ("mode", "w"),
            ("params", "aio:/tmp/d.img"),
            ("state", "1"),
        ]);
        let r = StallReport::new(
            51712,
            "/local/domain/0/backend/qdisk/3/51712",
            XenbusState::InitWait,
            Some(XenbusState::Initialising),
            k,
        );
        assert_eq!(r.cause, StallCause::QdiskDirectIoSafe);
        let line = r.disk_line();
        assert!(line.contains("mode=w connected=no"), "{line}");
        assert!(line.contains("backend-state=1"), "{line}");
        assert!(line.contains("direct-io-safe=1"), "{line}");
        assert!(line.contains("type=qdisk"), "{line}");
        assert!(line.contains("cause=qdisk-direct-io-safe"), "{line}");
        let text = alloc::format!("{r}");
        assert!(text.contains("aio=native"), "{text}");
        assert_eq!(
            r.error(),
            XenbusError::StateTimeout {
                wanted: XenbusState::InitWait,
                seen: XenbusState::Initialising
            }
        );
    }

    #[test]
    fn the_same_stall_without_direct_io_safe_is_not_blamed_on_it() {
        let k = keys(&[("type", "qdisk"), ("state", "1")]);
        let r = StallReport::new(
            1,
            "/local/domain/0/backend/qdisk/3/1",
            XenbusState::InitWait,
            Some(XenbusState::Initialising),
            k,
        );
        assert_eq!(r.cause, StallCause::Unknown);
        let r = StallReport::new(
            1,
            "/x/backend/vbd/3/1",
            XenbusState::InitWait,
            None,
            BTreeMap::new(),
        );
        assert_eq!(r.cause, StallCause::NoBackendDirectory);
        let r = StallReport::new(
            1,
            "/x/backend/vbd/3/1",
            XenbusState::Connected,
            Some(XenbusState::InitWait),
            keys(&[("type", "phy")]),
        );
        assert_eq!(r.cause, StallCause::HotplugScript);
    }

    #[test]
    fn a_qdisk_above_512_bytes_left_in_initwait_is_blamed_on_the_sector_size() {
        let qdisk = |ss: &str| keys(&[("type", "qdisk"), ("sector-size", ss), ("state", "2")]);
        let path = "/local/domain/0/backend/qdisk/3/51712";
        let r = StallReport::new(
            51712,
            path,
            XenbusState::Connected,
            Some(XenbusState::InitWait),
            qdisk("4096"),
        );
        assert_eq!(r.cause, StallCause::QdiskSectorSize);
        assert!(r.disk_line().contains("cause=qdisk-sector-size"));
        assert!(r.cause.explain().contains("feature-large-sector-size"));
        let r = StallReport::new(
            51712,
            path,
            XenbusState::Connected,
            Some(XenbusState::InitWait),
            qdisk("512"),
        );
        assert_eq!(r.cause, StallCause::NeverConnected);
    }
}
