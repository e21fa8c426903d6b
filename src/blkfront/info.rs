//! What the backend published and what was negotiated: [`BackendInfo`], and
//! the explanation of a backend that never connects: [`StallReport`].
//!
//! Key names and defaults follow the "Backend XenBus Nodes" section of
//! `io/blkif.h`. Values are parsed strictly: a malformed value of a key we
//! rely on is an error naming the key, a malformed optional key is recorded
//! as such and reported, never guessed.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::abi::blkif::{VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE};
use crate::error::Feature;
use crate::hal::DomId;
use crate::xenbus::XenbusState;
use crate::{Error, Result};

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

/// The unit the backend used for the `sectors` key.
///
/// `blkif.h` says `sectors` counts units of `sector-size`. QEMU's qdisk does
/// that; Linux blkback writes the size in 512-byte units whatever the logical
/// sector size. The two agree when `sector-size` is 512.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorsUnit {
    /// `sectors` counts 512-byte units (Linux blkback's convention).
    Bytes512,
    /// `sectors` counts logical blocks of `sector-size` bytes (blkif.h, qdisk).
    LogicalBlocks,
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
    fn parse(v: Option<&str>) -> DirectIoSafe {
        match v.map(str::trim) {
            None => DirectIoSafe::Absent,
            Some("0") => DirectIoSafe::Off,
            Some("1") => DirectIoSafe::On,
            Some(_) => DirectIoSafe::Invalid,
        }
    }

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
    /// The `info` bits (`VDISK_*`).
    pub info: u32,
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

fn parse_u64(v: &str) -> Option<u64> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_u32(v: &str) -> Option<u32> {
    parse_u64(v).and_then(|x| u32::try_from(x).ok())
}

fn parse_bool(v: &str) -> Option<bool> {
    match parse_u64(v)? {
        0 => Some(false),
        _ => Some(true),
    }
}

/// Reads typed values out of a backend directory snapshot, recording
/// malformed optional keys instead of guessing.
struct Keys<'a> {
    raw: &'a BTreeMap<String, String>,
    malformed: Vec<(String, String)>,
}

impl<'a> Keys<'a> {
    fn str(&self, key: &str) -> Option<&'a str> {
        self.raw.get(key).map(String::as_str)
    }

    fn opt<T>(&mut self, key: &str, parse: fn(&str) -> Option<T>) -> Option<T> {
        let v = self.str(key)?;
        let parsed = parse(v);
        if parsed.is_none() {
            self.malformed.push((key.into(), v.into()));
        }
        parsed
    }

    fn flag(&mut self, key: &str) -> bool {
        self.opt(key, parse_bool).unwrap_or(false)
    }

    fn required<T>(&self, key: &'static str, parse: fn(&str) -> Option<T>) -> Result<T> {
        let v = self.str(key).ok_or(Error::MissingKey(key))?;
        parse(v).ok_or(Error::MalformedKey(key))
    }
}

/// The transport parameters a backend offers at InitWait
/// (`max-ring-page-order`, `multi-queue-max-queues`, `feature-persistent`,
/// `feature-max-indirect-segments`). Missing keys take blkif.h's defaults;
/// malformed ones are treated as absent and recorded.
pub fn parse_offered(raw: &BTreeMap<String, String>) -> (Offered, Vec<(String, String)>) {
    let mut k = Keys {
        raw,
        malformed: Vec::new(),
    };
    let max_ring_page_order = match k.opt("max-ring-page-order", parse_u32) {
        Some(o) => o,
        // Legacy key: a page count, a power of two.
        None => match k.opt("max-ring-pages", parse_u32) {
            Some(n) if n.is_power_of_two() => n.trailing_zeros(),
            Some(n) => {
                k.malformed
                    .push(("max-ring-pages".into(), alloc::format!("{n}")));
                0
            }
            None => 0,
        },
    };
    let max_queues = k
        .opt("multi-queue-max-queues", parse_u32)
        .unwrap_or(1)
        .max(1);
    let persistent = k.flag("feature-persistent");
    let max_indirect_segments = k
        .opt("feature-max-indirect-segments", parse_u32)
        .unwrap_or(0);
    let flush_cache = k.flag("feature-flush-cache");
    let barrier = k.flag("feature-barrier");
    let discard = if k.flag("feature-discard") {
        Some(DiscardInfo {
            granularity: k.opt("discard-granularity", parse_u32).unwrap_or(0),
            alignment: k.opt("discard-alignment", parse_u32).unwrap_or(0),
            secure: k.flag("discard-secure"),
        })
    } else {
        None
    };
    let offered = Offered {
        flush_cache,
        barrier,
        discard,
        persistent,
        max_indirect_segments,
        max_ring_page_order,
        max_queues,
    };
    (offered, k.malformed)
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
    /// [`Error::MissingKey`] / [`Error::MalformedKey`] for a required key, and
    /// [`Error::MalformedKey`] for a geometry that makes no sense (a sector
    /// size that is not a power of two of at least 512, a physical sector size
    /// that is not a multiple of it, a capacity that overflows).
    #[allow(clippy::too_many_arguments)]
    pub fn from_keys(
        vdev: u32,
        frontend_path: &str,
        backend_path: &str,
        backend_id: DomId,
        state: XenbusState,
        raw: BTreeMap<String, String>,
        connected: bool,
    ) -> Result<BackendInfo> {
        let (offered, mut malformed) = parse_offered(&raw);
        let mut k = Keys {
            raw: &raw,
            malformed: Vec::new(),
        };
        let type_ = k.str("type").map(String::from);
        let kind = BackendKind::classify(backend_path, type_.as_deref());
        let sectors_unit = match kind {
            BackendKind::Blkback => SectorsUnit::Bytes512,
            BackendKind::Qdisk | BackendKind::Other => SectorsUnit::LogicalBlocks,
        };
        let (sectors_raw, sector_size, info) = if connected {
            let sectors = k.required("sectors", parse_u64)?;
            let info = k.required("info", parse_u32)?;
            let ss = match k.str("sector-size") {
                None => 512,
                Some(_) => k.required("sector-size", parse_u32)?,
            };
            (Some(sectors), ss, info)
        } else {
            (
                k.opt("sectors", parse_u64),
                k.opt("sector-size", parse_u32).unwrap_or(512),
                k.opt("info", parse_u32).unwrap_or(0),
            )
        };
        if !sector_size.is_power_of_two() || sector_size < 512 {
            if connected {
                return Err(Error::MalformedKey("sector-size"));
            }
            k.malformed
                .push(("sector-size".into(), alloc::format!("{sector_size}")));
        }
        let physical_sector_size = k.opt("physical-sector-size", parse_u32);
        if let Some(p) = physical_sector_size {
            if connected && (p == 0 || p % sector_size != 0) {
                return Err(Error::MalformedKey("physical-sector-size"));
            }
        }
        let unit = match sectors_unit {
            SectorsUnit::Bytes512 => 512u64,
            SectorsUnit::LogicalBlocks => u64::from(sector_size),
        };
        let capacity_bytes = match sectors_raw {
            Some(s) => match s.checked_mul(unit) {
                Some(b) => b,
                None if connected => return Err(Error::MalformedKey("sectors")),
                None => 0,
            },
            None => 0,
        };
        if connected && capacity_bytes % u64::from(sector_size) != 0 {
            return Err(Error::MalformedKey("sectors"));
        }
        let mut offered = offered;
        if let Some(d) = offered.discard.as_mut() {
            if d.granularity == 0 {
                d.granularity = sector_size;
            }
        }
        let direct_io_safe = DirectIoSafe::parse(k.str("direct-io-safe"));
        malformed.append(&mut k.malformed);
        Ok(BackendInfo {
            vdev,
            frontend_path: frontend_path.into(),
            backend_path: backend_path.into(),
            backend_id,
            kind,
            state,
            sectors_raw,
            sectors_unit,
            sector_size,
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
        self.info & VDISK_READONLY != 0 || self.mode.as_deref().map(str::trim) == Some("r")
    }

    /// Whether the backend says the disk is a CD-ROM.
    pub fn cdrom(&self) -> bool {
        self.info & VDISK_CDROM != 0
    }

    /// Whether the backend says the disk is removable.
    pub fn removable(&self) -> bool {
        self.info & VDISK_REMOVABLE != 0
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
    /// `xenblk-disk vdev=… backend=… type=… sectors=… sector-size=… mode=…
    /// direct-io-safe=… features=… connected=yes`.
    pub fn disk_line(&self) -> String {
        alloc::format!(
            "xenblk-disk vdev={} backend={} type={} sectors={} sector-size={} mode={} \
             direct-io-safe={} features={} connected=yes",
            self.vdev,
            self.backend_path,
            self.type_.as_deref().unwrap_or("-"),
            self.sectors_raw.unwrap_or(0),
            self.sector_size,
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
            "disk {} ({:?} backend, domain {})",
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
            match self.sectors_unit {
                SectorsUnit::Bytes512 => "512-byte units, Linux blkback's convention",
                SectorsUnit::LogicalBlocks => "logical blocks, blkif.h/qdisk convention",
            }
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
            self.info,
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
            writeln!(f, "  turned off      {feat:?}: {why}")?;
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
        let dio = DirectIoSafe::parse(raw.get("direct-io-safe").map(String::as_str));
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
        let direct_io_safe = DirectIoSafe::parse(raw.get("direct-io-safe").map(String::as_str));
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
    pub fn error(&self) -> Error {
        Error::StateTimeout {
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
            "disk {} did not connect ({:?} backend)",
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

    // The key set Linux blkback publishes at Connected (XEN-LAB.md).
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
            51712,
            "device/vbd/51712",
            "/local/domain/0/backend/vbd/3/51712",
            DomId(0),
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
            51728,
            "device/vbd/51728",
            "/local/domain/0/backend/qdisk/3/51728",
            DomId(0),
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
        let e = BackendInfo::from_keys(
            1,
            "f",
            "/b/vbd/1/1",
            DomId(0),
            XenbusState::Connected,
            k,
            true,
        );
        assert_eq!(e, Err(Error::MissingKey("sectors")));
        let mut k = blkback_keys();
        k.insert("info".into(), "zero".into());
        let e = BackendInfo::from_keys(
            1,
            "f",
            "/b/vbd/1/1",
            DomId(0),
            XenbusState::Connected,
            k,
            true,
        );
        assert_eq!(e, Err(Error::MalformedKey("info")));
    }

    #[test]
    fn nonsense_geometry_is_rejected() {
        for (key, val) in [
            ("sector-size", "1000"),
            ("sector-size", "256"),
            ("sector-size", "0"),
            ("physical-sector-size", "768"),
            ("sectors", "18446744073709551615"),
            ("sectors", "-1"),
            ("sectors", "12abc"),
        ] {
            let mut k = blkback_keys();
            k.insert(key.into(), val.into());
            let r = BackendInfo::from_keys(
                1,
                "f",
                "/b/vbd/1/1",
                DomId(0),
                XenbusState::Connected,
                k,
                true,
            );
            assert!(
                matches!(r, Err(Error::MalformedKey(_))),
                "{key}={val} gave {r:?}"
            );
        }
    }

    #[test]
    fn malformed_optional_keys_are_recorded_not_guessed() {
        let mut k = blkback_keys();
        k.insert("feature-max-indirect-segments".into(), "lots".into());
        k.insert("max-ring-page-order".into(), "99999999999".into());
        let i = BackendInfo::from_keys(
            1,
            "f",
            "/b/vbd/1/1",
            DomId(0),
            XenbusState::Connected,
            k,
            true,
        )
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
        let i = BackendInfo::from_keys(
            1,
            "f",
            "/b/vbd/1/1",
            DomId(0),
            XenbusState::Connected,
            k,
            true,
        )
        .unwrap();
        assert!(i.read_only());
        let mut k = blkback_keys();
        k.insert("mode".into(), "r".into());
        k.insert("info".into(), "3".into());
        let i = BackendInfo::from_keys(
            1,
            "f",
            "/b/vbd/1/1",
            DomId(0),
            XenbusState::Connected,
            k,
            true,
        )
        .unwrap();
        assert!(i.read_only() && i.cdrom() && i.removable());
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
            Error::StateTimeout {
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
    fn disk_line_has_the_documented_fields_in_order() {
        let mut i = BackendInfo::from_keys(
            51712,
            "device/vbd/51712",
            "/local/domain/0/backend/vbd/3/51712",
            DomId(0),
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
             sectors=131072 sector-size=512 mode=w direct-io-safe=absent \
             features=flush-cache,barrier-offered,discard,persistent,indirect:256,ring-order:4,\
             queues:2 connected=yes"
        );
    }
}
