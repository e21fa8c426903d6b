//! What a simulated block backend offers, and the exact xenstore key sets it
//! (and the toolstack that created it) publishes.
//!
//! The key sets follow what was measured on Xen 4.17 with Linux 6.1 blkback
//! and QEMU 7.2 qdisk (docs/LAB.md, "What the backends publish"), with
//! the key meanings of the "Backend XenBus Nodes" section of `io/blkif.h`.

use std::string::{String, ToString};
use std::vec::Vec;

use super::DiskImage;
use crate::abi::blkif::{VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE};
use crate::hal::{DomId, PAGE_SIZE};
use crate::xenbus::XenbusError;
use crate::Result;

/// Which real backend the simulator imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Personality {
    /// Linux `xen-blkback`: directory `backend/vbd/`, geometry published at
    /// Connected, grant mapping (persistent when negotiated), indirect
    /// requests, multi-queue; sector quantities always in 512-byte units.
    Blkback,
    /// QEMU `xen-block` ("qdisk"): directory `backend/qdisk/`, geometry
    /// published already at InitWait, grant copy, no indirect requests, no
    /// barrier; `sectors` and all sector quantities in logical blocks of
    /// `sector-size` bytes.
    Qdisk,
}

/// How an optional operation is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Not advertised (blkback writes the `feature-*` key as `0`, qdisk
    /// leaves it out). A request using it anyway is refused.
    No,
    /// Advertised and carried out.
    Yes,
    /// Advertised, but every request answers `BLKIF_RSP_EOPNOTSUPP`, as
    /// `blkif.h` allows ("may still be returned at any time"). Like Linux,
    /// the blkback personality then rewrites `feature-flush-cache` /
    /// `feature-barrier` to `0`.
    Eopnotsupp,
}

impl Offer {
    /// Whether the feature key says "1".
    pub fn advertised(self) -> bool {
        self != Offer::No
    }
}

/// Everything a simulated backend offers. Start from [`BackendConfig::blkback`]
/// or [`BackendConfig::qdisk`] and change fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Which backend to imitate.
    pub personality: Personality,
    /// Size of the disk in bytes (a multiple of `sector_size`).
    pub disk_bytes: u64,
    /// A disk that keeps no data: reads return zeroes without touching the
    /// guest's pages, writes are dropped, and data grants are neither mapped
    /// nor copied. For benchmarks of the frontend's own overhead.
    pub null_disk: bool,
    /// What the disk starts with (zeroes past its end; `None`: all zeroes),
    /// shared copy-on-write between the disks made from it. Ignored by a
    /// null disk.
    pub image: Option<DiskImage>,
    /// Logical sector size (`sector-size`): 512 or 4096.
    pub sector_size: u32,
    /// `physical-sector-size`; `None` leaves the key out (qdisk never writes
    /// it).
    pub physical_sector_size: Option<u32>,
    /// `mode=r` and `VDISK_READONLY`: every request but a read fails.
    pub read_only: bool,
    /// `device-type=cdrom` in the frontend directory and `VDISK_CDROM`.
    pub cdrom: bool,
    /// `removable=1` and `VDISK_REMOVABLE`.
    pub removable: bool,
    /// The `bootable` key.
    pub bootable: bool,
    /// The frontend directory's `trusted` key (libxl writes `1`); `None`
    /// leaves it out.
    pub trusted: Option<bool>,
    /// The backend directory's `direct-io-safe` key, written by the toolstack
    /// at creation; `None` leaves it out.
    pub direct_io_safe: Option<bool>,
    /// qdisk only: with `direct-io-safe=1`, never leave Initialising — the
    /// Debian failure (QEMU built without libaio refuses `aio=native`).
    pub stall_with_direct_io_safe: bool,
    /// qdisk only: follow blkif.h's 2024 rule, as a QEMU patch posted in
    /// 2024 would (not merged in any release so far; docs/SECTORS.md):
    /// `sectors` and ring sector fields in 512-byte units, and a frontend
    /// that writes `feature-large-sector-size=1` refused when the logical
    /// block size is not 512. Off: every released QEMU from 4.1 to 10.x
    /// (Debian 12's 7.2 and Debian 13's 10.0 alike): logical blocks, and
    /// the flag required for a block size other than 512.
    pub qdisk_2024_rule: bool,
    /// The `params` key.
    pub params: String,
    /// The `dev` key (the guest-side name, e.g. `xvda`); empty (the
    /// default): named from the virtual-device number as libxl names it
    /// (`xvda`..`xvdp`, then the extended form's `xvdq`...).
    pub dev: String,
    /// blkback only: the `physical-device` the hotplug script writes
    /// (`MAJOR:MINOR` in hex).
    pub physical_device: String,
    /// blkback only: virtual nanoseconds between InitWait and the hotplug
    /// script writing `physical-device`; the backend connects only after it.
    pub hotplug_delay_ns: u64,
    /// `feature-flush-cache`.
    pub flush: Offer,
    /// `feature-barrier` (blkback only; qdisk never offers it).
    pub barrier: Offer,
    /// `feature-discard`.
    pub discard: Offer,
    /// `discard-granularity` in bytes.
    pub discard_granularity: u32,
    /// `discard-alignment` in bytes.
    pub discard_alignment: u32,
    /// `discard-secure` (blkback only): honour `BLKIF_DISCARD_SECURE`.
    pub discard_secure: bool,
    /// `feature-persistent` (blkback only).
    pub persistent: bool,
    /// Most grants kept mapped persistently per ring (Linux's
    /// `max_persistent_grants`, 1056); more are mapped per request.
    pub max_persistent_grants: usize,
    /// `feature-max-indirect-segments` (blkback only); `None` refuses
    /// `BLKIF_OP_INDIRECT`.
    pub max_indirect_segments: Option<u32>,
    /// `max-ring-page-order`; `None` leaves the key out (one-page rings only).
    pub max_ring_page_order: Option<u32>,
    /// `multi-queue-max-queues` (blkback only); `None` leaves the key out
    /// (one queue only).
    pub max_queues: Option<u32>,
}

impl BackendConfig {
    /// Linux 6.1 blkback on a loop device, as measured (docs/LAB.md): flush,
    /// barrier, discard (granularity 4096), persistent grants, 256 indirect
    /// segments, ring order 4, 2 queues, 512-byte sectors, 8 MiB.
    pub fn blkback() -> BackendConfig {
        BackendConfig {
            personality: Personality::Blkback,
            disk_bytes: 8 << 20,
            null_disk: false,
            image: None,
            sector_size: 512,
            physical_sector_size: Some(512),
            read_only: false,
            cdrom: false,
            removable: false,
            bootable: true,
            trusted: Some(true),
            direct_io_safe: None,
            stall_with_direct_io_safe: false,
            qdisk_2024_rule: false,
            params: "/var/lib/xen/images/disk.img".to_string(),
            dev: String::new(),
            physical_device: "7:0".to_string(),
            hotplug_delay_ns: 0,
            flush: Offer::Yes,
            barrier: Offer::Yes,
            discard: Offer::Yes,
            discard_granularity: 4096,
            discard_alignment: 0,
            discard_secure: false,
            persistent: true,
            max_persistent_grants: 1056,
            max_indirect_segments: Some(256),
            max_ring_page_order: Some(4),
            max_queues: Some(2),
        }
    }

    /// QEMU 7.2 qdisk, as measured: flush, discard (granularity 512), ring
    /// order 4; no barrier, persistent grants, indirect requests, multi-queue
    /// or `physical-sector-size`; 512-byte sectors, 8 MiB.
    /// `stall_with_direct_io_safe` is on, as with Debian's QEMU; it only
    /// matters when `direct_io_safe` is set.
    pub fn qdisk() -> BackendConfig {
        BackendConfig {
            personality: Personality::Qdisk,
            physical_sector_size: None,
            stall_with_direct_io_safe: true,
            params: "aio:/var/lib/xen/images/disk.img".to_string(),
            physical_device: String::new(),
            barrier: Offer::No,
            discard_granularity: 512,
            discard_secure: false,
            persistent: false,
            max_indirect_segments: None,
            max_queues: None,
            ..BackendConfig::blkback()
        }
    }

    /// Checks the values for consistency.
    ///
    /// # Errors
    ///
    /// [`XenbusError::MalformedKey`] naming the offending setting.
    pub fn validate(&self) -> Result<(), XenbusError> {
        if self.sector_size != 512 && self.sector_size != 4096 {
            return Err(XenbusError::MalformedKey("sector-size"));
        }
        if self.disk_bytes % u64::from(self.sector_size) != 0 {
            return Err(XenbusError::MalformedKey("sectors"));
        }
        if let Some(p) = self.physical_sector_size {
            if p == 0 || p % self.sector_size != 0 {
                return Err(XenbusError::MalformedKey("physical-sector-size"));
            }
        }
        if self.max_ring_page_order.is_some_and(|o| o > MAX_RING_ORDER) {
            return Err(XenbusError::MalformedKey("max-ring-page-order"));
        }
        if self.max_queues == Some(0) {
            return Err(XenbusError::MalformedKey("multi-queue-max-queues"));
        }
        if self
            .max_indirect_segments
            .is_some_and(|n| n as usize > super::decode::MAX_INDIRECT_SEGMENTS || n == 0)
        {
            return Err(XenbusError::MalformedKey("feature-max-indirect-segments"));
        }
        if self.personality == Personality::Qdisk
            && (self.barrier != Offer::No
                || self.persistent
                || self.max_indirect_segments.is_some()
                || self.max_queues.is_some())
        {
            return Err(XenbusError::MalformedKey(
                "qdisk offers no barrier, persistent, indirect or queues",
            ));
        }
        Ok(())
    }

    /// The backend device type directory: `vbd` or `qdisk`.
    pub fn backend_kind(&self) -> &'static str {
        match self.personality {
            Personality::Blkback => "vbd",
            Personality::Qdisk => "qdisk",
        }
    }

    /// The `info` bitmap (`VDISK_*`).
    pub fn info(&self) -> u32 {
        let mut info = 0;
        if self.cdrom {
            info |= VDISK_CDROM;
        }
        if self.removable {
            info |= VDISK_REMOVABLE;
        }
        if self.read_only {
            info |= VDISK_READONLY;
        }
        info
    }

    /// The `sectors` value: 512-byte units for blkback (what Linux writes,
    /// whatever the logical sector size), logical blocks for qdisk (what
    /// QEMU writes), unless `qdisk_2024_rule`.
    pub fn sectors_key(&self, disk_bytes: u64) -> u64 {
        disk_bytes / self.request_sector_bytes()
    }

    /// Bytes per unit of `sectors`, `sector_number`, `first_sect`,
    /// `last_sect` and `nr_sectors`: 512 for blkback, `sector-size` for
    /// qdisk (512 with `qdisk_2024_rule`).
    pub fn request_sector_bytes(&self) -> u64 {
        match self.personality {
            Personality::Blkback => 512,
            Personality::Qdisk if self.qdisk_2024_rule => 512,
            Personality::Qdisk => u64::from(self.sector_size),
        }
    }

    /// Whether the qdisk stall applies: the backend never leaves Initialising.
    pub fn stalls(&self) -> bool {
        self.personality == Personality::Qdisk
            && self.stall_with_direct_io_safe
            && self.direct_io_safe == Some(true)
    }
}

/// A list of `(relative key, value)` pairs, written in order.
pub type Keys = Vec<(String, String)>;

fn kv(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

fn flag(b: bool) -> &'static str {
    if b {
        "1"
    } else {
        "0"
    }
}

/// The guest-side name libxl gives virtual-device number `vdev`: `xvd`
/// and the disk index in letters (a = 0, ..., z = 25, aa = 26, ...), from
/// the xvd form `202 << 8 | index << 4` or the extended form
/// `1 << 28 | index << 8`; `vdev<n>` for any other number.
pub fn dev_name(vdev: u32) -> String {
    let index = if vdev >> 8 == 202 {
        (vdev >> 4) & 0xf
    } else if vdev >> 28 == 1 {
        (vdev >> 8) & 0xf_ffff
    } else {
        return format!("vdev{vdev}");
    };
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("xvd{}", String::from_utf8(letters).unwrap_or_default())
}

/// The frontend directory as libxl creates it, before the frontend runs.
pub fn toolstack_frontend_keys(cfg: &BackendConfig, backend_path: &str, vdev: u32) -> Keys {
    let mut k = vec![
        kv("backend", backend_path),
        kv("backend-id", DomId::DOM0.0),
        kv("device-type", if cfg.cdrom { "cdrom" } else { "disk" }),
        kv("state", "1"),
    ];
    if let Some(t) = cfg.trusted {
        k.push(kv("trusted", flag(t)));
    }
    k.push(kv("virtual-device", vdev));
    k
}

/// The backend directory as libxl creates it (state 1, before the backend
/// runs), `direct-io-safe` included when configured; `dev` names `vdev`
/// unless `cfg.dev` is set.
pub fn toolstack_backend_keys(
    cfg: &BackendConfig,
    frontend_path: &str,
    fe: DomId,
    vdev: u32,
) -> Keys {
    let mut k = vec![
        kv("frontend", frontend_path),
        kv("frontend-id", fe.0),
        kv("online", "1"),
        kv("state", "1"),
        kv(
            "type",
            match cfg.personality {
                Personality::Blkback => "phy",
                Personality::Qdisk => "qdisk",
            },
        ),
        kv("mode", if cfg.read_only { "r" } else { "w" }),
        kv("params", &cfg.params),
        kv(
            "dev",
            if cfg.dev.is_empty() {
                dev_name(vdev)
            } else {
                cfg.dev.clone()
            },
        ),
        kv("removable", flag(cfg.removable)),
        kv("bootable", flag(cfg.bootable)),
    ];
    if let Some(d) = cfg.direct_io_safe {
        k.push(kv("direct-io-safe", flag(d)));
    }
    k
}

/// What the backend adds on its way to InitWait. blkback: only the ring
/// transport keys (`feature-persistent` comes with Connected, as the lab saw
/// real blkback do). qdisk: discard, flush, ring order, and the geometry
/// already.
pub fn initwait_keys(cfg: &BackendConfig, disk_bytes: u64) -> Keys {
    let mut k = Keys::new();
    match cfg.personality {
        Personality::Blkback => {
            if let Some(o) = cfg.max_ring_page_order {
                k.push(kv("max-ring-page-order", o));
            }
            if let Some(q) = cfg.max_queues {
                k.push(kv("multi-queue-max-queues", q));
            }
        }
        Personality::Qdisk => {
            if cfg.discard.advertised() {
                k.push(kv("feature-discard", "1"));
                k.push(kv("discard-granularity", cfg.discard_granularity));
                k.push(kv("discard-alignment", cfg.discard_alignment));
            }
            if cfg.flush.advertised() {
                k.push(kv("feature-flush-cache", "1"));
            }
            if let Some(o) = cfg.max_ring_page_order {
                k.push(kv("max-ring-page-order", o));
            }
            k.push(kv("info", cfg.info()));
            k.push(kv("sector-size", cfg.sector_size));
            k.push(kv("sectors", cfg.sectors_key(disk_bytes)));
        }
    }
    k
}

/// What blkback writes (in one transaction) just before Connected; nothing
/// for qdisk, which published everything at InitWait.
pub fn connected_keys(cfg: &BackendConfig, disk_bytes: u64) -> Keys {
    let mut k = Keys::new();
    if cfg.personality == Personality::Qdisk {
        return k;
    }
    k.push(kv("feature-flush-cache", flag(cfg.flush.advertised())));
    if cfg.discard.advertised() {
        k.push(kv("discard-granularity", cfg.discard_granularity));
        k.push(kv("discard-alignment", cfg.discard_alignment));
        k.push(kv("discard-secure", flag(cfg.discard_secure)));
    }
    k.push(kv("feature-discard", flag(cfg.discard.advertised())));
    k.push(kv("feature-barrier", flag(cfg.barrier.advertised())));
    k.push(kv("feature-persistent", flag(cfg.persistent)));
    if let Some(n) = cfg.max_indirect_segments {
        k.push(kv("feature-max-indirect-segments", n));
    }
    k.push(kv("sectors", cfg.sectors_key(disk_bytes)));
    k.push(kv("info", cfg.info()));
    k.push(kv("sector-size", cfg.sector_size));
    if let Some(p) = cfg.physical_sector_size {
        k.push(kv("physical-sector-size", p));
    }
    k
}

const _: () = assert!(PAGE_SIZE == 4096);

/// Largest ring order any backend offers (Linux and QEMU: 4).
pub(crate) use crate::ring::MAX_RING_ORDER;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: &Keys) -> Vec<&str> {
        let mut v: Vec<&str> = k.iter().map(|(n, _)| n.as_str()).collect();
        v.sort_unstable();
        v
    }

    fn get<'a>(k: &'a Keys, name: &str) -> Option<&'a str> {
        k.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn blkback_initwait_has_only_transport_keys() {
        let c = BackendConfig::blkback();
        let k = initwait_keys(&c, c.disk_bytes);
        assert_eq!(names(&k), ["max-ring-page-order", "multi-queue-max-queues"]);
        assert_eq!(get(&k, "max-ring-page-order"), Some("4"));
        assert_eq!(get(&k, "multi-queue-max-queues"), Some("2"));
    }

    #[test]
    fn blkback_connected_keys_match_the_lab() {
        let c = BackendConfig::blkback();
        let k = connected_keys(&c, 8 << 20);
        for (n, v) in [
            ("feature-barrier", "1"),
            ("feature-flush-cache", "1"),
            ("feature-discard", "1"),
            ("discard-granularity", "4096"),
            ("discard-alignment", "0"),
            ("discard-secure", "0"),
            ("feature-persistent", "1"),
            ("feature-max-indirect-segments", "256"),
            ("sector-size", "512"),
            ("physical-sector-size", "512"),
            ("sectors", "16384"),
            ("info", "0"),
        ] {
            assert_eq!(get(&k, n), Some(v), "{n}");
        }
        assert_eq!(k.len(), 12);
    }

    #[test]
    fn qdisk_publishes_geometry_at_initwait_and_nothing_blkback_only() {
        let mut c = BackendConfig::qdisk();
        c.sector_size = 4096;
        let k = initwait_keys(&c, 8 << 20);
        assert_eq!(get(&k, "sectors"), Some("2048"), "logical blocks");
        assert_eq!(get(&k, "sector-size"), Some("4096"));
        assert_eq!(get(&k, "discard-granularity"), Some("512"));
        assert_eq!(get(&k, "max-ring-page-order"), Some("4"));
        for absent in [
            "feature-barrier",
            "feature-persistent",
            "feature-max-indirect-segments",
            "multi-queue-max-queues",
            "physical-sector-size",
        ] {
            assert_eq!(get(&k, absent), None, "{absent}");
        }
        assert!(connected_keys(&c, 8 << 20).is_empty());
    }

    #[test]
    fn dev_names_follow_libxl() {
        for (vdev, name) in [
            (202 << 8, "xvda"),
            ((202 << 8) | (15 << 4), "xvdp"),
            ((1 << 28) | (16 << 8), "xvdq"),
            ((1 << 28) | (25 << 8), "xvdz"),
            ((1 << 28) | (26 << 8), "xvdaa"),
            ((1 << 28) | (701 << 8), "xvdzz"),
            ((1 << 28) | (702 << 8), "xvdaaa"),
            (768, "vdev768"),
        ] {
            assert_eq!(dev_name(vdev), name, "{vdev:#x}");
        }
    }

    #[test]
    fn toolstack_dirs_match_libxl() {
        let mut c = BackendConfig::qdisk();
        c.direct_io_safe = Some(true);
        c.read_only = true;
        let b = toolstack_backend_keys(&c, "/local/domain/3/device/vbd/51712", DomId(3), 51712);
        assert_eq!(get(&b, "direct-io-safe"), Some("1"));
        assert_eq!(get(&b, "type"), Some("qdisk"));
        assert_eq!(get(&b, "mode"), Some("r"));
        assert_eq!(get(&b, "frontend-id"), Some("3"));
        assert_eq!(get(&b, "state"), Some("1"));
        assert_eq!(get(&b, "dev"), Some("xvda"));
        let b = toolstack_backend_keys(&c, "/x", DomId(3), 51728);
        assert_eq!(get(&b, "dev"), Some("xvdb"));
        c.dev = "hda".to_string();
        let b = toolstack_backend_keys(&c, "/x", DomId(3), 51728);
        assert_eq!(get(&b, "dev"), Some("hda"), "an explicit name stays");
        let f = toolstack_frontend_keys(&c, "/local/domain/0/backend/qdisk/3/51712", 51712);
        assert_eq!(
            names(&f),
            [
                "backend",
                "backend-id",
                "device-type",
                "state",
                "trusted",
                "virtual-device"
            ]
        );
        c.trusted = None;
        c.cdrom = true;
        let f = toolstack_frontend_keys(&c, "x", 1);
        assert_eq!(get(&f, "trusted"), None);
        assert_eq!(get(&f, "device-type"), Some("cdrom"));
        assert_eq!(c.info(), VDISK_CDROM | VDISK_READONLY);
    }

    #[test]
    fn switches_turn_keys_off() {
        let mut c = BackendConfig::blkback();
        c.flush = Offer::No;
        c.discard = Offer::No;
        c.max_indirect_segments = None;
        c.physical_sector_size = None;
        c.max_queues = None;
        c.max_ring_page_order = None;
        let k = connected_keys(&c, 4096);
        assert_eq!(get(&k, "feature-flush-cache"), Some("0"));
        assert_eq!(get(&k, "feature-discard"), Some("0"));
        assert_eq!(get(&k, "discard-granularity"), None);
        assert_eq!(get(&k, "feature-max-indirect-segments"), None);
        assert_eq!(get(&k, "physical-sector-size"), None);
        assert!(initwait_keys(&c, 4096).is_empty());
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert_eq!(BackendConfig::blkback().validate(), Ok(()));
        assert_eq!(BackendConfig::qdisk().validate(), Ok(()));
        let mut c = BackendConfig::blkback();
        c.sector_size = 1024;
        assert!(c.validate().is_err());
        let mut c = BackendConfig::blkback();
        c.disk_bytes = 1000;
        assert!(c.validate().is_err());
        let mut c = BackendConfig::qdisk();
        c.persistent = true;
        assert!(c.validate().is_err());
        let mut c = BackendConfig::blkback();
        c.max_ring_page_order = Some(MAX_RING_ORDER + 1);
        assert!(c.validate().is_err());
    }
}
