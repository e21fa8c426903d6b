//! The simulated disk: bytes in memory, or a "null" disk that keeps nothing.

use std::vec::Vec;

use crate::blkfront::IoError;
use crate::hal::HalError;
use crate::Result;

/// The backing store of a simulated backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Disk {
    /// `None` for a null disk.
    data: Option<Vec<u8>>,
    len: u64,
}

impl Disk {
    /// A zeroed disk of `len` bytes, or a null disk of that size.
    pub(crate) fn new(len: u64, null: bool) -> Result<Disk, HalError> {
        let data = if null {
            None
        } else {
            let n = usize::try_from(len).map_err(|_| HalError::OutOfMemory)?;
            Some(vec![0u8; n])
        };
        Ok(Disk { data, len })
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether this disk keeps no data.
    pub(crate) fn is_null(&self) -> bool {
        self.data.is_none()
    }

    fn range(&self, off: u64, len: usize) -> Result<core::ops::Range<usize>, IoError> {
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= self.len)
            .ok_or(IoError::OutOfRange)?;
        Ok(off as usize..end as usize)
    }

    /// Copies `buf.len()` bytes from byte offset `off` (zeroes on a null disk).
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = self.range(off, buf.len())?;
        match &self.data {
            Some(d) => buf.copy_from_slice(&d[r]),
            None => buf.fill(0),
        }
        Ok(())
    }

    /// Writes `data` at byte offset `off` (dropped on a null disk).
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> Result<(), IoError> {
        let r = self.range(off, data.len())?;
        if let Some(d) = &mut self.data {
            d[r].copy_from_slice(data);
        }
        Ok(())
    }

    /// Zeroes `len` bytes at `off` (a discard), clamped to the disk.
    pub(crate) fn zero(&mut self, off: u64, len: u64) {
        let end = off.saturating_add(len).min(self.len);
        if let Some(d) = &mut self.data {
            if off < end {
                d[off as usize..end as usize].fill(0);
            }
        }
    }

    /// Grows (with zeroes) or shrinks the disk to `len` bytes.
    pub(crate) fn resize(&mut self, len: u64) -> Result<(), HalError> {
        if let Some(d) = &mut self.data {
            let n = usize::try_from(len).map_err(|_| HalError::OutOfMemory)?;
            d.resize(n, 0);
        }
        self.len = len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_writes_and_refuses_the_end() {
        let mut d = Disk::new(4096, false).unwrap();
        d.write(100, &[1, 2, 3]).unwrap();
        let mut b = [0u8; 4];
        d.read(99, &mut b).unwrap();
        assert_eq!(b, [0, 1, 2, 3]);
        assert_eq!(d.write(4094, &[0; 3]), Err(IoError::OutOfRange));
        assert_eq!(d.read(u64::MAX, &mut b), Err(IoError::OutOfRange));
        d.zero(101, 1);
        d.read(100, &mut b[..3]).unwrap();
        assert_eq!(&b[..3], &[1, 0, 3]);
        d.zero(4000, 1 << 40);
        d.resize(8192).unwrap();
        assert_eq!(d.len(), 8192);
        d.write(8000, &[9]).unwrap();
    }

    #[test]
    fn a_null_disk_keeps_nothing_but_checks_ranges() {
        let mut d = Disk::new(1 << 40, true).unwrap();
        assert!(d.is_null());
        d.write(0, &[7; 8]).unwrap();
        let mut b = [1u8; 8];
        d.read(0, &mut b).unwrap();
        assert_eq!(b, [0; 8]);
        assert_eq!(d.read((1 << 40) - 4, &mut b), Err(IoError::OutOfRange));
    }
}
