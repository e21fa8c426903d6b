//! A disk as bytes, and the block-device traits of other crates over it.
//!
//! [`ByteDisk`] reads and writes any number of bytes at any offset of a
//! [`BlockFront`]: a range that does not start and end on a logical sector
//! (the disk's [`sector_size`](BlockFront::sector_size): 512 or 4096 bytes,
//! `docs/SECTORS.md`) is widened to whole sectors, read, and for a write
//! merged and written back (read-modify-write). Each call is one request to
//! the driver, checked whole before anything is sent.
//!
//! Over it, each behind a feature:
//! - `embedded-io`: [`embedded_io::Read`], [`embedded_io::Write`] and
//!   [`embedded_io::Seek`] (a positioned stream over the whole disk), for
//!   filesystem crates written against those traits;
//! - `embedded-sdmmc`: [`embedded_sdmmc::BlockDevice`] (512-byte blocks,
//!   on any logical sector size), for embedded-sdmmc's FAT;
//! - `ext4-view`: [`ext4_view::Ext4Read`], for reading an ext4 filesystem
//!   with `ext4_view::Ext4::load` (the disk must be `'static`, as a
//!   unikernel's is).
//!
//! Read-modify-write is not atomic against another writer of the same
//! sector (another request in flight on this disk, or another guest sharing
//! it): use one adapter per disk and nothing else beside it.

use alloc::vec;
use core::fmt;

/// The embedded-io version the adapter implements (feature `embedded-io`),
/// so that its traits need no dependency of the caller's own.
#[cfg(feature = "embedded-io")]
pub use embedded_io;
/// The embedded-sdmmc version the adapter implements (feature
/// `embedded-sdmmc`).
#[cfg(feature = "embedded-sdmmc")]
pub use embedded_sdmmc;
/// The ext4-view version the adapter implements (feature `ext4-view`).
#[cfg(feature = "ext4-view")]
pub use ext4_view;

use crate::blkfront::{BlockFront, IoError};
use crate::error::Feature;
use crate::hal::{Hal, XsTransport};

/// What a [`ByteDisk`] or an adapter over it can fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockDevError {
    /// The driver refused or failed the request (out of range, read-only,
    /// the backend's error, a broken device...).
    Io(IoError),
    /// A write starting at or past the end of the disk: nothing was
    /// written (embedded-io's `WriteZero`).
    EndOfDisk,
    /// A seek before the start of the disk, or past `u64::MAX`; the
    /// position is unchanged.
    InvalidSeek,
}

impl fmt::Display for BlockDevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockDevError::Io(e) => write!(f, "disk I/O failed: {e}"),
            BlockDevError::EndOfDisk => f.write_str("write at or past the end of the disk"),
            BlockDevError::InvalidSeek => {
                f.write_str("seek before the start of the disk or past 2^64 bytes")
            }
        }
    }
}

impl core::error::Error for BlockDevError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            BlockDevError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<IoError> for BlockDevError {
    fn from(e: IoError) -> BlockDevError {
        BlockDevError::Io(e)
    }
}

/// A disk read and written in bytes, at any offset and length.
///
/// It owns the [`BlockFront`] ([`get_mut`](Self::get_mut) and
/// [`into_inner`](Self::into_inner) give it back) and a position for the
/// stream adapters.
pub struct ByteDisk<'a, H: Hal, T: XsTransport> {
    disk: BlockFront<'a, H, T>,
    pos: u64,
}

impl<H: Hal, T: XsTransport> fmt::Debug for ByteDisk<'_, H, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteDisk")
            .field("disk", &self.disk.name())
            .field("len", &self.len())
            .field("pos", &self.pos)
            .finish()
    }
}

/// The whole sectors that cover `[off, off + len)`: (first sector, byte
/// offset of `off` in it, bytes covered), or `None` when the range
/// overflows.
fn cover(off: u64, len: usize, ss: u64) -> Option<(u64, usize, usize)> {
    let end = off.checked_add(len as u64)?;
    let first = off / ss;
    let last = end.div_ceil(ss);
    let bytes = usize::try_from((last - first).checked_mul(ss)?).ok()?;
    Some((first, (off - first * ss) as usize, bytes))
}

impl<'a, H: Hal, T: XsTransport> ByteDisk<'a, H, T> {
    /// Wraps `disk`, positioned at byte 0.
    pub fn new(disk: BlockFront<'a, H, T>) -> ByteDisk<'a, H, T> {
        ByteDisk { disk, pos: 0 }
    }

    /// The disk's size in bytes (its logical sectors times their size).
    pub fn len(&self) -> u64 {
        self.disk
            .sectors()
            .saturating_mul(u64::from(self.disk.sector_size()))
    }

    /// Whether the disk holds no bytes (never connected, or empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream position (embedded-io's `Seek`).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The disk.
    pub fn get_ref(&self) -> &BlockFront<'a, H, T> {
        &self.disk
    }

    /// The disk, to use directly (e.g. to reconnect it).
    pub fn get_mut(&mut self) -> &mut BlockFront<'a, H, T> {
        &mut self.disk
    }

    /// The disk back.
    pub fn into_inner(self) -> BlockFront<'a, H, T> {
        self.disk
    }

    fn checked(&self, off: u64, len: usize) -> Result<(u64, usize, usize), BlockDevError> {
        let ss = u64::from(self.disk.sector_size());
        match cover(off, len, ss) {
            Some(c) if off + len as u64 <= self.len() => Ok(c),
            _ => Err(IoError::OutOfRange.into()),
        }
    }

    /// Reads `buf.len()` bytes from byte `off`.
    ///
    /// # Errors
    ///
    /// [`IoError::OutOfRange`] (nothing read) when the range passes the end
    /// of the disk; otherwise as for [`BlockFront::read`]. On any error
    /// `buf` is unchanged.
    pub fn read_at(&mut self, off: u64, buf: &mut [u8]) -> Result<(), BlockDevError> {
        let (first, skip, bytes) = self.checked(off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if skip == 0 && bytes == buf.len() {
            // Whole sectors: straight into the caller's buffer (the driver
            // leaves it unchanged when the read fails).
            return Ok(self.disk.read(first, buf)?);
        }
        let mut cov = vec![0u8; bytes];
        self.disk.read(first, &mut cov)?;
        buf.copy_from_slice(&cov[skip..skip + buf.len()]);
        Ok(())
    }

    /// Writes `buf` at byte `off`; partial sectors at either end are read
    /// first and merged.
    ///
    /// # Errors
    ///
    /// [`IoError::OutOfRange`] (nothing written) when the range passes the
    /// end of the disk; as for [`BlockFront::read`] when a partial sector
    /// could not be read (nothing written); otherwise as for
    /// [`BlockFront::write`]. A write that fails may have reached part of
    /// its range, as on any block device (blkif promises whole sectors, not
    /// whole requests).
    pub fn write_at(&mut self, off: u64, buf: &[u8]) -> Result<(), BlockDevError> {
        let (first, skip, bytes) = self.checked(off, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if skip == 0 && bytes == buf.len() {
            return Ok(self.disk.write(first, buf)?);
        }
        let ss = self.disk.sector_size() as usize;
        let mut cov = vec![0u8; bytes];
        // Read what the write keeps: the first sector when the write starts
        // inside it, the last when it ends inside it (one read when both
        // are the same sector, or the range is two sectors or fewer).
        let head = skip != 0;
        let tail = (skip + buf.len()) % ss != 0;
        if bytes <= 2 * ss {
            self.disk.read(first, &mut cov)?;
        } else {
            if head {
                self.disk.read(first, &mut cov[..ss])?;
            }
            if tail {
                let last = first + (bytes / ss) as u64 - 1;
                self.disk.read(last, &mut cov[bytes - ss..])?;
            }
        }
        cov[skip..skip + buf.len()].copy_from_slice(buf);
        Ok(self.disk.write(first, &cov)?)
    }

    /// Makes completed writes durable: a cache flush (or barrier) when the
    /// backend offers one. A backend that offers neither has no cache to
    /// flush, as Linux's blkfront also assumes (it then runs the disk
    /// write-through), so that is `Ok`.
    ///
    /// # Errors
    ///
    /// As for [`BlockFront::flush`].
    pub fn flush(&mut self) -> Result<(), BlockDevError> {
        match self.disk.flush() {
            Err(IoError::Unsupported(Feature::FlushCache)) => Ok(()),
            r => Ok(r?),
        }
    }
}

#[cfg(feature = "embedded-io")]
mod embedded_io_impl {
    use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};

    use super::{BlockDevError, ByteDisk};
    use crate::blkfront::IoError;
    use crate::hal::{Hal, XsTransport};

    /// The largest piece one stream read or write moves (`read_exact` and
    /// `write_all` call again for the rest), so that the bounce buffer of
    /// an unaligned call stays small.
    const STREAM_PIECE: usize = 1 << 20;

    impl embedded_io::Error for BlockDevError {
        fn kind(&self) -> ErrorKind {
            match self {
                BlockDevError::EndOfDisk => ErrorKind::WriteZero,
                BlockDevError::InvalidSeek => ErrorKind::InvalidInput,
                BlockDevError::Io(e) => match e {
                    IoError::OutOfRange | IoError::Misaligned => ErrorKind::InvalidInput,
                    IoError::ReadOnly => ErrorKind::PermissionDenied,
                    IoError::NotConnected | IoError::Closed => ErrorKind::NotConnected,
                    IoError::Broken(_) => ErrorKind::BrokenPipe,
                    IoError::Aborted => ErrorKind::Interrupted,
                    IoError::Timeout => ErrorKind::TimedOut,
                    IoError::Unsupported(_) => ErrorKind::Unsupported,
                    IoError::Grant(_) => ErrorKind::OutOfMemory,
                    IoError::Hal(crate::hal::HalError::OutOfMemory) => ErrorKind::OutOfMemory,
                    _ => ErrorKind::Other,
                },
            }
        }
    }

    impl<H: Hal, T: XsTransport> ByteDisk<'_, H, T> {
        /// Moves the stream position to `base + delta`.
        fn seek_to(&mut self, base: u64, delta: i64) -> Result<u64, BlockDevError> {
            let pos = base
                .checked_add_signed(delta)
                .ok_or(BlockDevError::InvalidSeek)?;
            self.pos = pos;
            Ok(pos)
        }

        /// How many bytes from the position a stream read or write may move:
        /// up to `want`, never past the end of the disk.
        fn room(&self, want: usize) -> usize {
            let left = self.len().saturating_sub(self.pos);
            usize::try_from(left).map_or(want, |l| l.min(want))
        }
    }

    impl<H: Hal, T: XsTransport> ErrorType for ByteDisk<'_, H, T> {
        type Error = BlockDevError;
    }

    /// Reads from the position; `Ok(0)` at or past the end of the disk.
    impl<H: Hal, T: XsTransport> Read for ByteDisk<'_, H, T> {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, BlockDevError> {
            let n = self.room(buf.len().min(STREAM_PIECE));
            if n == 0 {
                return Ok(0);
            }
            self.read_at(self.pos, &mut buf[..n])?;
            self.pos += n as u64;
            Ok(n)
        }
    }

    /// Writes at the position, up to the end of the disk;
    /// [`BlockDevError::EndOfDisk`] when none of `buf` fits.
    impl<H: Hal, T: XsTransport> Write for ByteDisk<'_, H, T> {
        fn write(&mut self, buf: &[u8]) -> Result<usize, BlockDevError> {
            if buf.is_empty() {
                return Ok(0);
            }
            let n = self.room(buf.len().min(STREAM_PIECE));
            if n == 0 {
                return Err(BlockDevError::EndOfDisk);
            }
            self.write_at(self.pos, &buf[..n])?;
            self.pos += n as u64;
            Ok(n)
        }

        fn flush(&mut self) -> Result<(), BlockDevError> {
            ByteDisk::flush(self)
        }
    }

    /// A position past the end is allowed: reads there return `Ok(0)`,
    /// writes [`BlockDevError::EndOfDisk`].
    impl<H: Hal, T: XsTransport> Seek for ByteDisk<'_, H, T> {
        fn seek(&mut self, pos: SeekFrom) -> Result<u64, BlockDevError> {
            match pos {
                SeekFrom::Start(p) => self.seek_to(p, 0),
                SeekFrom::End(d) => self.seek_to(self.len(), d),
                SeekFrom::Current(d) => self.seek_to(self.pos, d),
            }
        }
    }
}

/// [`embedded_sdmmc::BlockDevice`] over a disk: 512-byte blocks whatever
/// the disk's logical sector size (a 4 KiB-sector disk is read and written
/// through [`ByteDisk`]'s read-modify-write).
#[cfg(feature = "embedded-sdmmc")]
pub struct SdmmcDisk<'a, H: Hal, T: XsTransport> {
    // `BlockDevice` takes `&self`; the lock is never contended (nothing
    // inside calls back), and unlike a `RefCell` it has no panicking path.
    inner: spin::Mutex<ByteDisk<'a, H, T>>,
}

#[cfg(feature = "embedded-sdmmc")]
mod sdmmc_impl {
    use alloc::vec;

    use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};

    use super::{BlockDevError, ByteDisk, SdmmcDisk};
    use crate::blkfront::{BlockFront, IoError};
    use crate::hal::{Hal, XsTransport};

    const LEN: u64 = Block::LEN as u64;

    impl<'a, H: Hal, T: XsTransport> SdmmcDisk<'a, H, T> {
        /// Wraps `disk`.
        pub fn new(disk: BlockFront<'a, H, T>) -> SdmmcDisk<'a, H, T> {
            SdmmcDisk {
                inner: spin::Mutex::new(ByteDisk::new(disk)),
            }
        }

        /// The disk back.
        pub fn into_inner(self) -> BlockFront<'a, H, T> {
            self.inner.into_inner().into_inner()
        }

        fn range(start: BlockIdx, count: usize) -> Result<(u64, usize), BlockDevError> {
            let off = u64::from(start.0)
                .checked_mul(LEN)
                .ok_or(IoError::OutOfRange)?;
            let bytes = count.checked_mul(Block::LEN).ok_or(IoError::OutOfRange)?;
            Ok((off, bytes))
        }
    }

    impl<H: Hal, T: XsTransport> core::fmt::Debug for SdmmcDisk<'_, H, T> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.debug_struct("SdmmcDisk").finish_non_exhaustive()
        }
    }

    impl<H: Hal, T: XsTransport> BlockDevice for SdmmcDisk<'_, H, T> {
        type Error = BlockDevError;

        /// One request for all of `blocks`; on error they are unchanged.
        fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), BlockDevError> {
            let (off, bytes) = Self::range(start, blocks.len())?;
            let mut buf = vec![0u8; bytes];
            self.inner.lock().read_at(off, &mut buf)?;
            for (b, src) in blocks.iter_mut().zip(buf.chunks_exact(Block::LEN)) {
                b.contents.copy_from_slice(src);
            }
            Ok(())
        }

        /// One request for all of `blocks`.
        fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), BlockDevError> {
            let (off, bytes) = Self::range(start, blocks.len())?;
            let mut buf = vec![0u8; bytes];
            for (b, dst) in blocks.iter().zip(buf.chunks_exact_mut(Block::LEN)) {
                dst.copy_from_slice(&b.contents);
            }
            self.inner.lock().write_at(off, &buf)
        }

        /// Whole 512-byte blocks (at most `u32::MAX`, embedded-sdmmc's
        /// limit: 2 TiB).
        fn num_blocks(&self) -> Result<BlockCount, BlockDevError> {
            let n = self.inner.lock().len() / LEN;
            Ok(BlockCount(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    }
}

/// Reads for ext4-view: each call one [`ByteDisk::read_at`].
#[cfg(feature = "ext4-view")]
impl<H: Hal, T: XsTransport> ext4_view::Ext4Read for ByteDisk<'_, H, T> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), alloc::boxed::Box<dyn core::error::Error + Send + Sync + 'static>> {
        Ok(self.read_at(start_byte, dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::cover;

    #[test]
    fn cover_widens_to_whole_sectors() {
        assert_eq!(cover(0, 512, 512), Some((0, 0, 512)));
        assert_eq!(cover(1, 1, 512), Some((0, 1, 512)));
        assert_eq!(cover(511, 2, 512), Some((0, 511, 1024)));
        assert_eq!(cover(4096 + 100, 8000, 4096), Some((1, 100, 8192)));
        assert_eq!(cover(8192, 0, 4096), Some((2, 0, 0)));
        assert_eq!(cover(u64::MAX, 2, 512), None);
    }
}
