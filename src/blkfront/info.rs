//! What the backend published and what was negotiated: [`BackendInfo`] and
//! its one-screen report.
//!
//! Every key is read through the driver's one parser per key
//! (`blkfront::keys`): a malformed value of a key the driver relies on is an
//! error naming the key, a malformed optional key is recorded as such and
//! reported, never guessed.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::keys::{self, KeyReader};
use super::units::SectorSize;
use crate::abi::blkif::VdiskInfo;
use crate::error::Feature;
use crate::hal::DomId;
use crate::xenbus::{XenbusError, XenbusState};
use crate::Result;

/// Which implementation serves the disk, as far as the frontend can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Linux `xen-blkback` (backend directory under `backend/vbd/`).
    Blkback,
    /// QEMU's `xen-block` ("qdisk", backend directory under `backend/qdisk/`).
    Qdisk,
    /// Anything else (a driver domain, another toolstack's naming).
    Other,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Blkback => "Linux blkback",
            BackendKind::Qdisk => "QEMU qdisk",
            BackendKind::Other => "unrecognised",
        })
    }
}

impl BackendKind {
    /// Classifies a backend from its directory path and its `type` key.
    pub fn classify(backend_path: &str, type_key: Option<&str>) -> BackendKind {
        if backend_path.contains("/backend/qdisk/") || type_key == Some("qdisk") {
            BackendKind::Qdisk
        } else if backend_path.contains("/backend/vbd/") {
            BackendKind::Blkback
        } else {
            BackendKind::Other
        }
    }
}

/// The unit a backend counts sector quantities in: its `sectors` key and
/// the ring's `sector_number`, `first_sect`, `last_sect` and `nr_sectors`.
///
/// Since 2024 `io/blkif.h` says 512-byte units for every backend, as Linux
/// blkback always did; QEMU's qdisk counts logical blocks of `sector-size`
/// bytes (the rule of `blkif.h` before 2024), in every release so far, and
/// connects with a logical block size above 512 only to a frontend that
/// writes `feature-large-sector-size=1`. The two agree when `sector-size`
/// is 512. docs/SECTORS.md has the sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorsUnit {
    /// 512-byte units (blkif.h since 2024; Linux blkback).
    Bytes512,
    /// Logical blocks of `sector-size` bytes (qdisk, with
    /// `feature-large-sector-size=1` written by the frontend).
    LogicalBlocks,
}

impl SectorsUnit {
    /// The token of the `xenblk-disk` line: `512` or `logical`.
    pub fn token(self) -> &'static str {
        match self {
            SectorsUnit::Bytes512 => "512",
            SectorsUnit::LogicalBlocks => "logical",
        }
    }

    /// Why a backend of `kind` is read in this unit.
    pub fn explain(self, kind: BackendKind) -> &'static str {
        match (self, kind) {
            (SectorsUnit::Bytes512, BackendKind::Blkback) => {
                "512-byte units: Linux blkback's convention, and blkif.h's rule since 2024"
            }
            (SectorsUnit::Bytes512, BackendKind::Qdisk) => {
                "512-byte units: this qdisk refused feature-large-sector-size, so it follows \
                 blkif.h's rule since 2024"
            }
            (SectorsUnit::Bytes512, BackendKind::Other) => {
                "512-byte units: blkif.h's rule since 2024 (the backend is not recognised)"
            }
            (SectorsUnit::LogicalBlocks, _) => {
                "logical blocks: QEMU qdisk's convention, agreed with feature-large-sector-size=1"
            }
        }
    }
}

/// The value of the `direct-io-safe` key that libxl writes into the backend
/// directory when the disk line says `direct-io-safe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirectIoSafe {
    /// The key is absent (default 0).
    Absent,
    /// `direct-io-safe = 0`.
    Off,
    /// `direct-io-safe = 1`.
    On,
    /// Present with a value that is neither 0 nor 1.
    Invalid,
}

impl DirectIoSafe {
    /// The token used in the machine-readable `xenblk-disk` line.
    pub fn token(self) -> &'static str {
        match self {
            DirectIoSafe::Absent => "absent",
            DirectIoSafe::Off => "0",
            DirectIoSafe::On => "1",
            DirectIoSafe::Invalid => "invalid",
        }
    }

    /// One line saying what the value means for this backend.
    pub fn explain(self, kind: BackendKind) -> &'static str {
        match (self, kind) {
            (DirectIoSafe::Absent, _) | (DirectIoSafe::Off, _) => {
                "backend may not use O_DIRECT to work around the direct-IO memory lifetime bug \
                 (blkif.h default); it does not control caching"
            }
            (DirectIoSafe::On, BackendKind::Qdisk) => {
                "qdisk may open the image with O_DIRECT (and native AIO); blkif.h: the key grants \
                 permission, it does not control caching"
            }
            (DirectIoSafe::On, _) => {
                "backend may use O_DIRECT; blkback is not affected by the bug and ignores the key; \
                 it does not control caching"
            }
            (DirectIoSafe::Invalid, _) => "value is neither 0 nor 1; a backend may treat it as 0",
        }
    }
}

/// How flushes are sent to this backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMethod {
    /// `BLKIF_OP_FLUSH_DISKCACHE` (`feature-flush-cache`).
    FlushCache,
    /// `BLKIF_OP_WRITE_BARRIER` with no data (`feature-barrier` only).
    Barrier,
}

/// Discard parameters offered by the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscardInfo {
    /// `discard-granularity` in bytes (default: the logical sector size).
    pub granularity: u32,
    /// `discard-alignment` in bytes (default 0).
    pub alignment: u32,
    /// `discard-secure`.
    pub secure: bool,
}

/// What the backend offered, as read from its directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offered {
    /// `feature-flush-cache`.
    pub flush_cache: bool,
    /// `feature-barrier`.
    pub barrier: bool,
    /// `feature-discard` with its parameters.
    pub discard: Option<DiscardInfo>,
    /// `feature-persistent`.
    pub persistent: bool,
    /// `feature-max-indirect-segments` (0 when absent).
    pub max_indirect_segments: u32,
    /// `max-ring-page-order` (or log2 of legacy `max-ring-pages`; 0 when absent).
    pub max_ring_page_order: u32,
    /// `multi-queue-max-queues` (1 when absent).
    pub max_queues: u32,
}

/// What this frontend chose to use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// Ring page order in use.
    pub ring_page_order: u32,
    /// Request slots per ring.
    pub ring_slots: u32,
    /// Number of queues (rings) in use.
    pub queues: u32,
    /// Segments per indirect request (0: indirect descriptors not used).
    pub indirect_segments: u32,
    /// Whether persistent grants are in use.
    pub persistent: bool,
    /// How flushes are sent, if at all.
    pub flush: Option<FlushMethod>,
    /// Whether discard is in use.
    pub discard: bool,
    /// Whether the frontend trusts the backend (`trusted` key of the frontend
    /// directory, default 1). When false the backend only ever sees bounce
    /// pages and no persistent grants.
    pub trusted: bool,
}

/// Everything the backend published and what was negotiated. Its `Display`
/// is a one-screen report for an operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// The `virtual-device` number (the directory name under `device/vbd`).
    pub vdev: u32,
    /// Frontend directory.
    pub frontend_path: String,
    /// Backend directory.
    pub backend_path: String,
    /// Backend domain.
    pub backend_id: DomId,
    /// Which implementation serves the disk.
    pub kind: BackendKind,
    /// The backend's state when this was read.
    pub state: XenbusState,
    /// Raw `sectors` value, if published.
    pub sectors_raw: Option<u64>,
    /// Unit assumed for `sectors`.
    pub sectors_unit: SectorsUnit,
    /// Logical sector size (`sector-size`, bytes).
    pub sector_size: u32,
    /// `physical-sector-size` if published.
    pub physical_sector_size: Option<u32>,
    /// Capacity in bytes, derived from `sectors` and the assumed unit.
    pub capacity_bytes: u64,
    /// The `info` bits (`VDISK_*`), unknown ones kept.
    pub info: VdiskInfo,
    /// `mode` (`r` or `w`).
    pub mode: Option<String>,
    /// `type` (`phy`, `qdisk`, `file`, ...).
    pub type_: Option<String>,
    /// `params` (the backing path as the toolstack passed it).
    pub params: Option<String>,
    /// `physical-device` (`major:minor`, blkback only).
    pub physical_device: Option<String>,
    /// `direct-io-safe`.
    pub direct_io_safe: DirectIoSafe,
    /// Features offered.
    pub offered: Offered,
    /// What this frontend negotiated.
    pub negotiated: Negotiated,
    /// Features turned off at run time, with the reason.
    pub disabled: Vec<(Feature, &'static str)>,
    /// Keys whose value did not parse (key name, raw value).
    pub malformed: Vec<(String, String)>,
    /// Every key of the backend directory, verbatim.
    pub raw: BTreeMap<String, String>,
}

/// Where a disk lives: both ends' directories and the backend's domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// The `virtual-device` number (the directory name under `device/vbd`).
    pub vdev: u32,
    /// Frontend directory.
    pub frontend: String,
    /// Backend directory.
    pub backend: String,
    /// Backend domain.
    pub backend_id: DomId,
}

/// The transport parameters a backend offers (`max-ring-page-order`,
/// `multi-queue-max-queues`, `feature-*`, discard parameters), read from a
/// snapshot of its directory with the same parsers the driver uses, and the
/// malformed keys among them.
pub fn parse_offered(raw: &BTreeMap<String, String>) -> (Offered, Vec<(String, String)>) {
    let mut k = KeyReader::new(raw);
    let o = k.offered();
    (o, k.into_malformed())
}

impl BackendInfo {
    /// Builds the report from a snapshot of the backend directory.
    ///
    /// With `connected` set, the geometry keys are required (`sectors`,
    /// `info`; `sector-size` defaults to 512) and a missing or malformed one
    /// is an error naming it. Without it (a backend that never connected),
    /// whatever is there is reported and nothing is required.
    ///
    /// # Errors
    ///
    /// [`XenbusError::MissingKey`] / [`XenbusError::MalformedKey`] for a required key, and
    /// [`XenbusError::MalformedKey`] for a geometry that makes no sense (a sector
    /// size that is not a power of two from 512 to 4096, a physical sector
    /// size that is not a multiple of it, a capacity that overflows or
    /// exceeds `i64::MAX` bytes).
    pub fn from_keys(
        ends: &Endpoints,
        state: XenbusState,
        raw: BTreeMap<String, String>,
        connected: bool,
    ) -> Result<BackendInfo, XenbusError> {
        let mut k = KeyReader::new(&raw);
        let offered = k.offered();
        let type_ = k.str("type").map(String::from);
        let kind = BackendKind::classify(&ends.backend, type_.as_deref());
        let sectors_unit = keys::sectors_unit(kind);
        let geometry = if connected {
            let ss = k.sector_size()?;
            let sectors = k.sectors()?;
            let info = k.info()?;
            let physical = k.physical_sector_size(ss)?;
            let bytes = keys::capacity_bytes(sectors, sectors_unit, ss)?;
            (Some(sectors), ss, info, physical, bytes)
        } else {
            // Report what is there; a value that would be refused at
            // connect is recorded as malformed.
            let ss = k.sector_size().unwrap_or_else(|_| {
                k.note("sector-size");
                SectorSize::DEFAULT
            });
            let sectors = match k.str("sectors").map(keys::parse_sectors) {
                Some(Ok(s)) => Some(s),
                Some(Err(_)) => {
                    k.note("sectors");
                    None
                }
                None => None,
            };
            let info = VdiskInfo::from_bits_retain(k.opt_u32("info").unwrap_or(0));
            let physical = k.physical_sector_size(ss).unwrap_or_else(|_| {
                k.note("physical-sector-size");
                None
            });
            let bytes = sectors
                .and_then(|s| keys::capacity_bytes(s, sectors_unit, ss).ok())
                .unwrap_or(0);
            (sectors, ss, info, physical, bytes)
        };
        let (sectors_raw, ss, info, physical_sector_size, capacity_bytes) = geometry;
        let mut offered = offered;
        if let Some(d) = offered.discard.as_mut() {
            if d.granularity == 0 {
                d.granularity = ss.bytes();
            }
        }
        let direct_io_safe = k.direct_io_safe();
        let malformed = k.into_malformed();
        Ok(BackendInfo {
            vdev: ends.vdev,
            frontend_path: ends.frontend.clone(),
            backend_path: ends.backend.clone(),
            backend_id: ends.backend_id,
            kind,
            state,
            sectors_raw,
            sectors_unit,
            sector_size: ss.bytes(),
            physical_sector_size,
            capacity_bytes,
            info,
            mode: raw.get("mode").cloned(),
            type_,
            params: raw.get("params").cloned(),
            physical_device: raw.get("physical-device").cloned(),
            direct_io_safe,
            offered,
            negotiated: Negotiated::default(),
            disabled: Vec::new(),
            malformed,
            raw,
        })
    }

    /// Number of logical sectors.
    pub fn logical_sectors(&self) -> u64 {
        self.capacity_bytes / u64::from(self.sector_size.max(1))
    }

    /// Whether the disk refuses writes (`info` has `VDISK_READONLY`, or
    /// `mode` is `r`).
    pub fn read_only(&self) -> bool {
        self.info.contains(VdiskInfo::READONLY) || self.mode.as_deref().map(str::trim) == Some("r")
    }

    /// Whether the backend says the disk is a CD-ROM.
    pub fn cdrom(&self) -> bool {
        self.info.contains(VdiskInfo::CDROM)
    }

    /// Whether the backend says the disk is removable.
    pub fn removable(&self) -> bool {
        self.info.contains(VdiskInfo::REMOVABLE)
    }

    /// The comma-separated feature list of the machine-readable line: what
    /// is in use, with parameters.
    pub fn features_token(&self) -> String {
        let n = &self.negotiated;
        let mut parts: Vec<String> = Vec::new();
        match n.flush {
            Some(FlushMethod::FlushCache) => parts.push("flush-cache".into()),
            Some(FlushMethod::Barrier) => parts.push("barrier".into()),
            None => {}
        }
        if self.offered.barrier && n.flush != Some(FlushMethod::Barrier) {
            parts.push("barrier-offered".into());
        }
        if n.discard {
            parts.push("discard".into());
            if self.offered.discard.is_some_and(|d| d.secure) {
                parts.push("discard-secure".into());
            }
        }
        if n.persistent {
            parts.push("persistent".into());
        }
        if n.indirect_segments > 0 {
            parts.push(alloc::format!("indirect:{}", n.indirect_segments));
        }
        parts.push(alloc::format!("ring-order:{}", n.ring_page_order));
        parts.push(alloc::format!("queues:{}", n.queues));
        parts.join(",")
    }

    /// The stable machine-readable line documented in the README:
    /// `xenblk-disk vdev=… backend=… type=… sectors=… sector-size=…
    /// sectors-unit=… mode=… direct-io-safe=… features=… connected=yes`.
    pub fn disk_line(&self) -> String {
        alloc::format!(
            "xenblk-disk vdev={} backend={} type={} sectors={} sector-size={} sectors-unit={} \
             mode={} direct-io-safe={} features={} connected=yes",
            self.vdev,
            self.backend_path,
            self.type_.as_deref().unwrap_or("-"),
            self.sectors_raw.unwrap_or(0),
            self.sector_size,
            self.sectors_unit.token(),
            self.mode.as_deref().unwrap_or("-"),
            self.direct_io_safe.token(),
            self.features_token(),
        )
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.negotiated;
        let o = &self.offered;
        writeln!(
            f,
            "disk {} ({} backend, domain {})",
            self.vdev, self.kind, self.backend_id.0
        )?;
        writeln!(f, "  frontend        {}", self.frontend_path)?;
        writeln!(
            f,
            "  backend         {}  state {}",
            self.backend_path, self.state
        )?;
        writeln!(
            f,
            "  type/mode       {} / {}   params {}   physical-device {}",
            self.type_.as_deref().unwrap_or("-"),
            self.mode.as_deref().unwrap_or("-"),
            self.params.as_deref().unwrap_or("-"),
            self.physical_device.as_deref().unwrap_or("-"),
        )?;
        writeln!(
            f,
            "  capacity        {} bytes = {} x {} B logical sectors (sectors={} read as {})",
            self.capacity_bytes,
            self.logical_sectors(),
            self.sector_size,
            self.sectors_raw
                .map_or_else(|| String::from("-"), |s| alloc::format!("{s}")),
            self.sectors_unit.explain(self.kind)
        )?;
        writeln!(
            f,
            "  physical sector {}",
            self.physical_sector_size.map_or_else(
                || String::from("not published"),
                |p| alloc::format!("{p} B")
            )
        )?;
        writeln!(
            f,
            "  info            {:#x}: read-only {}, cdrom {}, removable {}",
            self.info.bits(),
            yes_no(self.read_only()),
            yes_no(self.cdrom()),
            yes_no(self.removable())
        )?;
        writeln!(
            f,
            "  direct-io-safe  {}: {}",
            self.direct_io_safe.token(),
            self.direct_io_safe.explain(self.kind)
        )?;
        writeln!(
            f,
            "  offered         flush-cache {}, barrier {}, discard {}, persistent {}, \
             indirect {}, ring order <= {}, queues <= {}",
            yes_no(o.flush_cache),
            yes_no(o.barrier),
            match o.discard {
                Some(d) => alloc::format!(
                    "yes (granularity {}, alignment {}, secure {})",
                    d.granularity,
                    d.alignment,
                    yes_no(d.secure)
                ),
                None => String::from("no"),
            },
            yes_no(o.persistent),
            o.max_indirect_segments,
            o.max_ring_page_order,
            o.max_queues
        )?;
        writeln!(
            f,
            "  negotiated      ring order {} ({} slots) x {} queue(s), indirect {}, persistent {}, \
             flush {}, discard {}, trusted {}",
            n.ring_page_order,
            n.ring_slots,
            n.queues,
            n.indirect_segments,
            yes_no(n.persistent),
            match n.flush {
                Some(FlushMethod::FlushCache) => "flush-cache",
                Some(FlushMethod::Barrier) => "barrier",
                None => "none",
            },
            yes_no(n.discard),
            yes_no(n.trusted)
        )?;
        for (feat, why) in &self.disabled {
            writeln!(f, "  turned off      {feat}: {why}")?;
        }
        for (k, v) in &self.malformed {
            writeln!(f, "  malformed key   {k} = {v:?}")?;
        }
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

    fn ends(vdev: u32, frontend: &str, backend: &str) -> Endpoints {
        Endpoints {
            vdev,
            frontend: frontend.into(),
            backend: backend.into(),
            backend_id: DomId(0),
        }
    }

    fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // The key set Linux blkback publishes at Connected (docs/LAB.md).
    fn blkback_keys() -> BTreeMap<String, String> {
        keys(&[
            ("feature-barrier", "1"),
            ("feature-flush-cache", "1"),
            ("feature-discard", "1"),
            ("discard-granularity", "4096"),
            ("discard-alignment", "0"),
            ("discard-secure", "0"),
            ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "256"),
            ("max-ring-page-order", "4"),
            ("multi-queue-max-queues", "2"),
            ("sector-size", "512"),
            ("physical-sector-size", "512"),
            ("sectors", "131072"),
            ("info", "0"),
            ("mode", "w"),
            ("type", "phy"),
            ("params", "/dev/loop0"),
            ("physical-device", "7:0"),
            ("state", "4"),
        ])
    }

    fn qdisk_keys() -> BTreeMap<String, String> {
        keys(&[
            ("feature-flush-cache", "1"),
            ("feature-discard", "1"),
            ("discard-granularity", "512"),
            ("max-ring-page-order", "4"),
            ("sector-size", "4096"),
            ("sectors", "16384"),
            ("info", "0"),
            ("mode", "w"),
            ("type", "qdisk"),
            ("params", "aio:/tmp/d.img"),
            ("direct-io-safe", "1"),
        ])
    }

    #[test]
    fn blkback_key_set_parses_with_512_byte_sectors() {
        let i = BackendInfo::from_keys(
            &ends(
                51712,
                "device/vbd/51712",
                "/local/domain/0/backend/vbd/3/51712",
            ),
            XenbusState::Connected,
            blkback_keys(),
            true,
        )
        .unwrap();
        assert_eq!(i.kind, BackendKind::Blkback);
        assert_eq!(i.sectors_unit, SectorsUnit::Bytes512);
        assert_eq!(i.capacity_bytes, 131072 * 512);
        assert_eq!(i.offered.max_indirect_segments, 256);
        assert_eq!(i.offered.max_queues, 2);
        assert_eq!(i.offered.max_ring_page_order, 4);
        assert!(i.offered.persistent && i.offered.barrier && i.offered.flush_cache);
        assert_eq!(
            i.offered.discard,
            Some(DiscardInfo {
                granularity: 4096,
                alignment: 0,
                secure: false
            })
        );
        assert_eq!(i.direct_io_safe, DirectIoSafe::Absent);
        assert!(!i.read_only());
        assert!(i.malformed.is_empty());
    }

    #[test]
    fn qdisk_sectors_are_logical_blocks() {
        let i = BackendInfo::from_keys(
            &ends(
                51728,
                "device/vbd/51728",
                "/local/domain/0/backend/qdisk/3/51728",
            ),
            XenbusState::Connected,
            qdisk_keys(),
            true,
        )
        .unwrap();
        assert_eq!(i.kind, BackendKind::Qdisk);
        assert_eq!(i.sectors_unit, SectorsUnit::LogicalBlocks);
        assert_eq!(i.capacity_bytes, 16384 * 4096);
        assert_eq!(i.physical_sector_size, None);
        assert!(!i.offered.barrier && !i.offered.persistent);
        assert_eq!(i.offered.max_queues, 1);
        assert_eq!(i.direct_io_safe, DirectIoSafe::On);
        let report = alloc::format!("{i}");
        assert!(report.contains("O_DIRECT"), "{report}");
        assert!(report.contains("logical blocks"), "{report}");
    }

    #[test]
    fn required_geometry_keys_are_named_in_errors() {
        let mut k = blkback_keys();
        k.remove("sectors");
        let e =
            BackendInfo::from_keys(&ends(1, "f", "/b/vbd/1/1"), XenbusState::Connected, k, true);
        assert_eq!(e, Err(XenbusError::MissingKey("sectors")));
        let mut k = blkback_keys();
        k.insert("info".into(), "zero".into());
        let e =
            BackendInfo::from_keys(&ends(1, "f", "/b/vbd/1/1"), XenbusState::Connected, k, true);
        assert_eq!(e, Err(XenbusError::MalformedKey("info")));
    }

    #[test]
    fn nonsense_geometry_is_rejected() {
        for (key, val) in [
            ("sector-size", "1000"),
            ("sector-size", "256"),
            ("sector-size", "0"),
            ("sector-size", "8192"),
            ("sector-size", "2147483648"),
            ("physical-sector-size", "768"),
            ("sectors", "36028797018963968"),
            ("sectors", "18446744073709551615"),
            ("sectors", "-1"),
            ("sectors", "12abc"),
        ] {
            let mut k = blkback_keys();
            k.insert(key.into(), val.into());
            let r = BackendInfo::from_keys(
                &ends(1, "f", "/b/vbd/1/1"),
                XenbusState::Connected,
                k,
                true,
            );
            assert!(
                matches!(r, Err(XenbusError::MalformedKey(_))),
                "{key}={val} gave {r:?}"
            );
        }
    }

    #[test]
    fn malformed_optional_keys_are_recorded_not_guessed() {
        let mut k = blkback_keys();
        k.insert("feature-max-indirect-segments".into(), "lots".into());
        k.insert("max-ring-page-order".into(), "99999999999".into());
        let i =
            BackendInfo::from_keys(&ends(1, "f", "/b/vbd/1/1"), XenbusState::Connected, k, true)
                .unwrap();
        assert_eq!(i.offered.max_indirect_segments, 0);
        assert_eq!(i.offered.max_ring_page_order, 0);
        assert_eq!(i.malformed.len(), 2);
    }

    #[test]
    fn legacy_max_ring_pages_gives_an_order() {
        let (o, bad) = parse_offered(&keys(&[("max-ring-pages", "8")]));
        assert_eq!(o.max_ring_page_order, 3);
        assert!(bad.is_empty());
        let (o, bad) = parse_offered(&keys(&[("max-ring-pages", "6")]));
        assert_eq!(o.max_ring_page_order, 0);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn read_only_from_info_bit_or_mode() {
        let mut k = blkback_keys();
        k.insert("info".into(), "4".into());
        let i =
            BackendInfo::from_keys(&ends(1, "f", "/b/vbd/1/1"), XenbusState::Connected, k, true)
                .unwrap();
        assert!(i.read_only());
        let mut k = blkback_keys();
        k.insert("mode".into(), "r".into());
        k.insert("info".into(), "3".into());
        let i =
            BackendInfo::from_keys(&ends(1, "f", "/b/vbd/1/1"), XenbusState::Connected, k, true)
                .unwrap();
        assert!(i.read_only() && i.cdrom() && i.removable());
    }

    #[test]
    fn disk_line_has_the_documented_fields_in_order() {
        let mut i = BackendInfo::from_keys(
            &ends(
                51712,
                "device/vbd/51712",
                "/local/domain/0/backend/vbd/3/51712",
            ),
            XenbusState::Connected,
            blkback_keys(),
            true,
        )
        .unwrap();
        i.negotiated = Negotiated {
            ring_page_order: 4,
            ring_slots: 512,
            queues: 2,
            indirect_segments: 256,
            persistent: true,
            flush: Some(FlushMethod::FlushCache),
            discard: true,
            trusted: true,
        };
        assert_eq!(
            i.disk_line(),
            "xenblk-disk vdev=51712 backend=/local/domain/0/backend/vbd/3/51712 type=phy \
             sectors=131072 sector-size=512 sectors-unit=512 mode=w direct-io-safe=absent \
             features=flush-cache,barrier-offered,discard,persistent,indirect:256,ring-order:4,\
             queues:2 connected=yes"
        );
    }
}
