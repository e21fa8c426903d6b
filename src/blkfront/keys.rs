//! Every xenstore key the driver reads, each with exactly one parser.
//!
//! Connect, resize, the report and the stall diagnosis all read keys
//! through this module, so a key means the same thing everywhere. Numbers
//! and flags use the strict parsers of [`crate::xenbus`] (decimal digits
//! only, surrounding whitespace or a trailing NUL tolerated; a flag is `0`
//! or `1`). A malformed key the driver relies on is an error naming it; a
//! malformed optional key is recorded for the report and treated as absent,
//! never guessed.
//!
//! Key names and defaults: `io/blkif.h`, "Backend XenBus Nodes" and
//! "Frontend XenBus Nodes".

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::info::{BackendKind, DirectIoSafe, DiscardInfo, Offered, SectorsUnit};
use super::units::SectorSize;
use crate::abi::blkif::VdiskInfo;
use crate::xenbus::{self, XenbusError, XenbusState};
use crate::Result;

/// The largest capacity accepted, in bytes: `i64::MAX`, the most a byte
/// offset (`loff_t`) can address. Anything above it is a hostile or broken
/// `sectors` value; keeping under it leaves every sector computation room
/// without overflow.
pub const MAX_CAPACITY_BYTES: u64 = i64::MAX as u64;

/// A snapshot of a directory (key -> value) and what did not parse in it.
pub(super) struct KeyReader<'r> {
    raw: &'r BTreeMap<String, String>,
    malformed: Vec<(String, String)>,
}

impl<'r> KeyReader<'r> {
    pub(super) fn new(raw: &'r BTreeMap<String, String>) -> Self {
        KeyReader {
            raw,
            malformed: Vec::new(),
        }
    }

    /// The raw value of `key`.
    pub(super) fn str(&self, key: &str) -> Option<&'r str> {
        self.raw.get(key).map(String::as_str)
    }

    /// The malformed optional keys seen so far, as (key, value).
    pub(super) fn into_malformed(self) -> Vec<(String, String)> {
        self.malformed
    }

    /// Records `key` (if present) as malformed.
    pub(super) fn note(&mut self, key: &str) {
        if let Some(v) = self.str(key) {
            self.record(key, v);
        }
    }

    fn record(&mut self, key: &str, value: &str) {
        if !self.malformed.iter().any(|(k, _)| k == key) {
            self.malformed.push((key.into(), value.into()));
        }
    }

    /// An optional decimal `u32`; malformed is recorded and absent.
    pub(super) fn opt_u32(&mut self, key: &'static str) -> Option<u32> {
        let v = self.str(key)?;
        let r = xenbus::parse_u32(key, v).ok();
        if r.is_none() {
            self.record(key, v);
        }
        r
    }

    /// An optional flag (`feature-*`, `discard-secure`): absent is off;
    /// malformed is recorded and off.
    pub(super) fn flag(&mut self, key: &'static str) -> bool {
        let Some(v) = self.str(key) else {
            return false;
        };
        match xenbus::parse_bool(key, v) {
            Ok(b) => b,
            Err(_) => {
                self.record(key, v);
                false
            }
        }
    }

    /// `sectors`, required once connected.
    ///
    /// # Errors
    ///
    /// `MissingKey("sectors")`, `MalformedKey("sectors")`.
    pub(super) fn sectors(&self) -> Result<u64, XenbusError> {
        parse_sectors(
            self.str("sectors")
                .ok_or(XenbusError::MissingKey("sectors"))?,
        )
    }

    /// `info` (`VDISK_*` bits), required once connected.
    ///
    /// # Errors
    ///
    /// `MissingKey("info")`, `MalformedKey("info")`.
    pub(super) fn info(&self) -> Result<VdiskInfo, XenbusError> {
        xenbus::parse_u32(
            "info",
            self.str("info").ok_or(XenbusError::MissingKey("info"))?,
        )
        .map(VdiskInfo::from_bits_retain)
    }

    /// `sector-size`: 512 when absent.
    ///
    /// # Errors
    ///
    /// `MalformedKey("sector-size")` for anything but a power of two from
    /// 512 to 4096 (see [`SectorSize`]).
    pub(super) fn sector_size(&self) -> Result<SectorSize, XenbusError> {
        match self.str("sector-size") {
            None => Ok(SectorSize::DEFAULT),
            Some(v) => xenbus::parse_u32("sector-size", v)
                .ok()
                .and_then(SectorSize::new)
                .ok_or(XenbusError::MalformedKey("sector-size")),
        }
    }

    /// `physical-sector-size`, if published.
    ///
    /// # Errors
    ///
    /// `MalformedKey("physical-sector-size")` for garbage, 0, or a value
    /// that is not a multiple of the logical sector size.
    pub(super) fn physical_sector_size(
        &self,
        logical: SectorSize,
    ) -> Result<Option<u32>, XenbusError> {
        let Some(v) = self.str("physical-sector-size") else {
            return Ok(None);
        };
        match xenbus::parse_u32("physical-sector-size", v) {
            Ok(p) if p != 0 && p % logical.bytes() == 0 => Ok(Some(p)),
            _ => Err(XenbusError::MalformedKey("physical-sector-size")),
        }
    }

    /// `direct-io-safe` (libxl writes it into the backend directory).
    pub(super) fn direct_io_safe(&self) -> DirectIoSafe {
        direct_io_safe(self.str("direct-io-safe"))
    }

    /// The transport and feature keys: what the backend offers. Missing keys
    /// take blkif.h's defaults; malformed ones count as absent and are
    /// recorded. Discard granularity 0 (absent) stays 0 here and means "the
    /// logical sector size".
    pub(super) fn offered(&mut self) -> Offered {
        let max_ring_page_order = match self.opt_u32("max-ring-page-order") {
            Some(o) => o,
            // Legacy key: a page count, a power of two.
            None => match self.opt_u32("max-ring-pages") {
                Some(n) if n.is_power_of_two() => n.trailing_zeros(),
                Some(_) => {
                    if let Some(v) = self.str("max-ring-pages") {
                        self.record("max-ring-pages", v);
                    }
                    0
                }
                None => 0,
            },
        };
        let max_queues = self.opt_u32("multi-queue-max-queues").unwrap_or(1).max(1);
        let persistent = self.flag("feature-persistent");
        let max_indirect_segments = self.opt_u32("feature-max-indirect-segments").unwrap_or(0);
        let flush_cache = self.flag("feature-flush-cache");
        let barrier = self.flag("feature-barrier");
        let discard = self.flag("feature-discard").then(|| DiscardInfo {
            granularity: self.opt_u32("discard-granularity").unwrap_or(0),
            alignment: self.opt_u32("discard-alignment").unwrap_or(0),
            secure: self.flag("discard-secure"),
        });
        Offered {
            flush_cache,
            barrier,
            discard,
            persistent,
            max_indirect_segments,
            max_ring_page_order,
            max_queues,
        }
    }
}

/// Parses a `sectors` value (the same at connect and on resize).
///
/// # Errors
///
/// `MalformedKey("sectors")`.
pub(super) fn parse_sectors(value: &str) -> Result<u64, XenbusError> {
    xenbus::parse_u64("sectors", value)
}

/// The unit `kind` counts in, for `sectors` and for the ring's sector
/// fields alike. The rule, and why (the sources are in docs/SECTORS.md):
///
/// - Linux blkback counts 512-byte units whatever the logical sector size,
///   in every version; `io/blkif.h` made that the rule for every backend in
///   2024 (Xen 221f2748e8da, first in 4.20, backported to 4.18.4/4.19.1).
///   An unrecognised backend is held to that rule too.
/// - QEMU's qdisk (`hw/block/xen-block.c`, from QEMU 4.1 through at least
///   10.2, so Debian 12's 7.2 and Debian 13's 10.0 alike) counts in logical
///   blocks, and refuses to connect to a frontend with a logical block size
///   other than 512 unless the frontend writes `feature-large-sector-size=1`
///   (which this driver does for qdisk, see [`wants_large_sector_flag`]).
///   With 512-byte sectors both rules agree.
pub(super) fn sectors_unit(kind: BackendKind) -> SectorsUnit {
    match kind {
        BackendKind::Blkback | BackendKind::Other => SectorsUnit::Bytes512,
        BackendKind::Qdisk => SectorsUnit::LogicalBlocks,
    }
}

/// Whether the frontend writes `feature-large-sector-size=1` for a backend
/// of `kind`: only for qdisk, the one backend that reads it (blkif.h since
/// 2024 tells frontends not to write it otherwise). It promises what the
/// driver then does for qdisk: count every sector quantity in logical
/// blocks.
pub(super) fn wants_large_sector_flag(kind: BackendKind) -> bool {
    kind == BackendKind::Qdisk
}

/// The capacity in bytes that `sectors` means in `unit` (the same at
/// connect and on resize).
///
/// # Errors
///
/// `MalformedKey("sectors")` when it overflows, exceeds
/// [`MAX_CAPACITY_BYTES`], or is not a whole number of logical sectors.
pub(super) fn capacity_bytes(
    sectors: u64,
    unit: SectorsUnit,
    ss: SectorSize,
) -> Result<u64, XenbusError> {
    let unit_bytes = match unit {
        SectorsUnit::Bytes512 => 512,
        SectorsUnit::LogicalBlocks => u64::from(ss.bytes()),
    };
    sectors
        .checked_mul(unit_bytes)
        .filter(|&b| b <= MAX_CAPACITY_BYTES && ss.divides(b))
        .ok_or(XenbusError::MalformedKey("sectors"))
}

/// Parses a `state` value.
///
/// # Errors
///
/// `MalformedKey("state")`.
pub(super) fn parse_state(value: &str) -> Result<XenbusState, XenbusError> {
    xenbus::parse_state(value)
}

/// The `direct-io-safe` value: absent, `0`, `1`, or anything else.
pub(super) fn direct_io_safe(value: Option<&str>) -> DirectIoSafe {
    match value.map(|v| xenbus::parse_bool("direct-io-safe", v)) {
        None => DirectIoSafe::Absent,
        Some(Ok(false)) => DirectIoSafe::Off,
        Some(Ok(true)) => DirectIoSafe::On,
        Some(Err(_)) => DirectIoSafe::Invalid,
    }
}

/// Whether a backend whose `feature-persistent` reads `value` may keep the
/// grants of a frontend that offered persistent grants: `1`, or a value
/// that is not a flag at all (blkback decides from the frontend's offer
/// alone, so only a clean `0` or no key says it will not). The report still
/// lists a malformed value as such.
pub(super) fn persistent_in_use(value: Option<&str>) -> bool {
    match value.map(|v| xenbus::parse_bool("feature-persistent", v)) {
        None | Some(Ok(false)) => false,
        Some(Ok(true)) | Some(Err(_)) => true,
    }
}

/// The frontend directory's `trusted` key (libxl writes `1`; absent means
/// trusted, as blkif.h's default). A value that is not a flag is read as
/// untrusted: the safe side.
pub(super) fn trusted(value: Option<&str>) -> bool {
    value.is_none_or(|v| xenbus::parse_bool("trusted", v) == Ok(true))
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
    fn flags_are_zero_or_one_and_anything_else_is_recorded() {
        let raw = keys(&[
            ("feature-barrier", "1"),
            ("feature-flush-cache", "0\n"),
            ("feature-discard", "2"),
            ("feature-persistent", "yes"),
        ]);
        let mut k = KeyReader::new(&raw);
        assert!(k.flag("feature-barrier"));
        assert!(!k.flag("feature-flush-cache"));
        assert!(!k.flag("feature-discard"));
        assert!(!k.flag("feature-persistent"));
        assert!(!k.flag("feature-absent"));
        let bad: Vec<_> = k.into_malformed().into_iter().map(|(k, _)| k).collect();
        assert_eq!(bad, ["feature-discard", "feature-persistent"]);
        assert_eq!(direct_io_safe(Some("2")), DirectIoSafe::Invalid);
        assert_eq!(direct_io_safe(Some(" 1")), DirectIoSafe::On);
        assert!(trusted(None) && trusted(Some("1")));
        assert!(!trusted(Some("0")) && !trusted(Some("")) && !trusted(Some("true")));
    }

    #[test]
    fn persistent_grants_are_in_use_unless_the_backend_clearly_says_no() {
        assert!(persistent_in_use(Some("1")));
        assert!(
            persistent_in_use(Some("2251799813685247")),
            "malformed: it may"
        );
        assert!(!persistent_in_use(Some("0")));
        assert!(!persistent_in_use(None));
    }

    #[test]
    fn sectors_parse_the_same_everywhere_and_capacity_is_bounded() {
        for bad in ["+5", "-1", "0x10", "1e9", "", "5 5"] {
            assert_eq!(
                parse_sectors(bad),
                Err(XenbusError::MalformedKey("sectors")),
                "{bad:?}"
            );
        }
        assert_eq!(parse_sectors(" 42\n"), Ok(42));
        let s512 = SectorSize::DEFAULT;
        let s4k = SectorSize::new(4096).unwrap();
        let b = SectorsUnit::Bytes512;
        let l = SectorsUnit::LogicalBlocks;
        assert_eq!(capacity_bytes(8, b, s512), Ok(4096));
        assert_eq!(capacity_bytes(8, l, s4k), Ok(32768));
        assert_eq!(
            capacity_bytes(7, b, s4k),
            Err(XenbusError::MalformedKey("sectors"))
        );
        let top = MAX_CAPACITY_BYTES / 512;
        assert_eq!(capacity_bytes(top, b, s512), Ok(top * 512));
        for huge in [top + 1, 1 << 55, u64::MAX] {
            assert_eq!(
                capacity_bytes(huge, b, s512),
                Err(XenbusError::MalformedKey("sectors"))
            );
        }
        assert_eq!(
            capacity_bytes(1 << 52, l, s4k),
            Err(XenbusError::MalformedKey("sectors"))
        );
    }

    #[test]
    fn sector_sizes_outside_512_to_4096_are_malformed() {
        for (v, ok) in [
            ("512", true),
            ("4096", true),
            ("8192", false),
            ("2147483648", false),
            ("1000", false),
            ("x", false),
        ] {
            let raw = keys(&[("sector-size", v)]);
            let r = KeyReader::new(&raw).sector_size();
            assert_eq!(r.is_ok(), ok, "{v}: {r:?}");
        }
        let raw = keys(&[]);
        assert_eq!(KeyReader::new(&raw).sector_size(), Ok(SectorSize::DEFAULT));
    }
}
