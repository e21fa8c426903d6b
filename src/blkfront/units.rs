//! Units in types. The caller counts logical sectors of `sector-size` bytes
//! ([`LogicalSector`]). A backend counts `sectors`, and the ring's sector
//! fields, in 512-byte units ([`Sector512`]: the 2024 rule of `io/blkif.h`,
//! and what Linux blkback always did) or in logical blocks (QEMU's qdisk);
//! [`WireUnit`] says which, and [`WireSector`] is a ring field in that unit.
//! They never mix without a conversion that checks for overflow.

use core::fmt;

/// A position or length in 512-byte units: the `sector_number` and
/// `nr_sectors` fields of the ring, and the `sectors` key of a backend that
/// follows the 2024 rule of `io/blkif.h` (Linux blkback always did).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sector512(pub u64);

/// A position or length in logical sectors (`sector-size` bytes each): what
/// the caller's API counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogicalSector(pub u64);

/// A logical sector size the driver accepts: a power of two from 512 to
/// 4096 bytes. Larger sizes are refused at connect: the driver's data pages
/// are 4 KiB, and a request is cut into parts at page boundaries, which
/// must also be sector boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SectorSize(u32);

impl SectorSize {
    /// 512 bytes, the default when `sector-size` is absent.
    pub const DEFAULT: SectorSize = SectorSize(512);
    /// The largest accepted size.
    pub const MAX: u32 = 4096;

    /// `bytes` if it is a power of two in `512..=4096`.
    pub fn new(bytes: u32) -> Option<SectorSize> {
        (bytes.is_power_of_two() && (512..=Self::MAX).contains(&bytes)).then_some(SectorSize(bytes))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// `log2` of the size (it is a power of two): byte counts divide by a
    /// shift and test alignment with a mask, on the hot path.
    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// How many 512-byte units one logical sector holds (1 to 8).
    pub fn units512(self) -> u64 {
        u64::from(self.0 / 512)
    }

    /// Logical sector `s` in 512-byte units, `None` on overflow.
    pub fn to_512(self, s: LogicalSector) -> Option<Sector512> {
        s.0.checked_mul(self.units512()).map(Sector512)
    }

    /// Whether `bytes` is a whole number of logical sectors.
    pub fn divides(self, bytes: u64) -> bool {
        bytes & (u64::from(self.0) - 1) == 0
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} B", self.0)
    }
}

/// The unit of the ring's sector fields (`sector_number`, `first_sect`,
/// `last_sect`, a discard's `nr_sectors`) for one connection: 512 bytes,
/// or the logical sector size for a backend that counts in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WireUnit(SectorSize);

impl WireUnit {
    /// 512-byte units.
    pub const BYTES_512: WireUnit = WireUnit(SectorSize::DEFAULT);

    /// Units of the logical sector size `ss`.
    pub fn logical(ss: SectorSize) -> WireUnit {
        WireUnit(ss)
    }

    /// Bytes per unit.
    pub fn bytes(self) -> u32 {
        self.0.bytes()
    }

    /// `log2` of [`bytes`](Self::bytes).
    pub fn shift(self) -> u32 {
        self.0.shift()
    }

    /// Whether `bytes` is a whole number of units.
    pub fn divides(self, bytes: usize) -> bool {
        self.0.divides(bytes as u64)
    }

    /// Logical sector `s` (of size `ss`) in this unit, `None` on overflow.
    /// `ss` is never smaller than the unit.
    pub fn from_logical(self, s: LogicalSector, ss: SectorSize) -> Option<WireSector> {
        s.0.checked_mul(u64::from(ss.bytes() / self.bytes()))
            .map(WireSector)
    }
}

/// A sector field as the ring carries it, in the connection's [`WireUnit`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireSector(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_powers_of_two_from_512_to_4096_are_sector_sizes() {
        for ok in [512, 1024, 2048, 4096] {
            assert_eq!(SectorSize::new(ok).map(SectorSize::bytes), Some(ok));
        }
        for bad in [0, 1, 256, 511, 513, 1000, 8192, 1 << 31, u32::MAX] {
            assert_eq!(SectorSize::new(bad), None, "{bad}");
        }
    }

    #[test]
    fn conversion_to_512_byte_units_checks_overflow() {
        let ss = SectorSize::new(4096).unwrap();
        assert_eq!(ss.units512(), 8);
        assert_eq!(ss.to_512(LogicalSector(3)), Some(Sector512(24)));
        assert_eq!(ss.to_512(LogicalSector(u64::MAX / 8 + 1)), None);
        assert!(ss.divides(8192) && !ss.divides(512));
    }

    #[test]
    fn ring_fields_count_in_the_connection_unit() {
        let ss = SectorSize::new(4096).unwrap();
        let s = LogicalSector(5);
        assert_eq!(
            WireUnit::BYTES_512.from_logical(s, ss),
            Some(WireSector(40))
        );
        assert_eq!(
            WireUnit::logical(ss).from_logical(s, ss),
            Some(WireSector(5))
        );
        assert_eq!(WireUnit::logical(ss).bytes(), 4096);
        let big = LogicalSector(u64::MAX / 4);
        assert_eq!(WireUnit::BYTES_512.from_logical(big, ss), None);
    }
}
