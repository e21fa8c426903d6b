//! The simulated disk: bytes in memory, a "null" disk that keeps nothing,
//! or a copy-on-write disk over a shared [`DiskImage`].

use std::boxed::Box;
use std::fmt;
use std::sync::Arc;
use std::vec::Vec;

use crate::blkfront::IoError;
use crate::hal::HalError;
use crate::Result;

/// Bytes per page of a copy-on-write disk.
const COW_PAGE: usize = 4096;

/// The content a simulated disk starts with
/// ([`BackendConfig::image`](super::BackendConfig::image)), shared by every
/// disk made from it: a disk copies a 4 KiB page of it only when that page
/// is first written, so making a disk from a large image costs nothing (a
/// fuzzer makes one per input). Past the image's end the disk reads zeroes.
#[derive(Clone, PartialEq, Eq)]
pub struct DiskImage(Arc<[u8]>);

impl DiskImage {
    /// An image holding `bytes`.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> DiskImage {
        DiskImage(bytes.into())
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for DiskImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskImage({} bytes)", self.0.len())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Data {
    Null,
    Flat(Vec<u8>),
    /// Pages written so far, by index; the rest read from `base` (its first
    /// `base_len` bytes: a shrink cuts it) or as zeroes.
    Cow {
        base: DiskImage,
        base_len: usize,
        pages: Vec<Option<Box<[u8]>>>,
    },
}

/// The backing store of a simulated backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Disk {
    data: Data,
    len: u64,
}

impl Disk {
    /// A zeroed disk of `len` bytes, or a null disk of that size.
    pub(crate) fn new(len: u64, null: bool) -> Result<Disk, HalError> {
        let data = if null {
            Data::Null
        } else {
            let n = usize::try_from(len).map_err(|_| HalError::OutOfMemory)?;
            Data::Flat(vec![0u8; n])
        };
        Ok(Disk { data, len })
    }

    /// A disk of `len` bytes that starts as `image` (zeroes past its end),
    /// copying pages on first write.
    pub(crate) fn with_image(len: u64, image: &DiskImage) -> Result<Disk, HalError> {
        let n = usize::try_from(len).map_err(|_| HalError::OutOfMemory)?;
        let mut pages = Vec::new();
        pages.resize_with(n.div_ceil(COW_PAGE), || None);
        Ok(Disk {
            data: Data::Cow {
                base: image.clone(),
                base_len: image.len().min(n),
                pages,
            },
            len,
        })
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether this disk keeps no data.
    pub(crate) fn is_null(&self) -> bool {
        self.data == Data::Null
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
            Data::Flat(d) => buf.copy_from_slice(&d[r]),
            Data::Null => buf.fill(0),
            Data::Cow {
                base,
                base_len,
                pages,
            } => {
                let mut at = r.start;
                for chunk in buf.chunks_mut(COW_PAGE) {
                    // Pieces never cross a page: split each chunk at one.
                    let mut done = 0;
                    while done < chunk.len() {
                        let (pg, o) = (at / COW_PAGE, at % COW_PAGE);
                        let n = (COW_PAGE - o).min(chunk.len() - done);
                        let dst = &mut chunk[done..done + n];
                        match &pages[pg] {
                            Some(p) => dst.copy_from_slice(&p[o..o + n]),
                            None => copy_base(base.bytes(), *base_len, at, dst),
                        }
                        at += n;
                        done += n;
                    }
                }
            }
        }
        Ok(())
    }

    /// The page `pg` of a copy-on-write disk, copied from the image (or
    /// zeroed) on first use.
    fn cow_page<'p>(
        base: &DiskImage,
        base_len: usize,
        pages: &'p mut [Option<Box<[u8]>>],
        pg: usize,
    ) -> &'p mut [u8] {
        pages[pg].get_or_insert_with(|| {
            let mut p = vec![0u8; COW_PAGE].into_boxed_slice();
            copy_base(base.bytes(), base_len, pg * COW_PAGE, &mut p);
            p
        })
    }

    /// Runs `f` on every piece of `range` (a byte range inside the disk) as
    /// writable bytes, each piece inside one page for a copy-on-write disk.
    fn modify(&mut self, range: core::ops::Range<usize>, mut f: impl FnMut(usize, &mut [u8])) {
        match &mut self.data {
            Data::Null => {}
            Data::Flat(d) => f(range.start, &mut d[range]),
            Data::Cow {
                base,
                base_len,
                pages,
            } => {
                let mut at = range.start;
                while at < range.end {
                    let (pg, o) = (at / COW_PAGE, at % COW_PAGE);
                    let n = (COW_PAGE - o).min(range.end - at);
                    let page = Self::cow_page(base, *base_len, pages, pg);
                    f(at, &mut page[o..o + n]);
                    at += n;
                }
            }
        }
    }

    /// Writes `data` at byte offset `off` (dropped on a null disk).
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> Result<(), IoError> {
        let r = self.range(off, data.len())?;
        let start = r.start;
        self.modify(r, |at, dst| {
            let from = at - start;
            dst.copy_from_slice(&data[from..from + dst.len()]);
        });
        Ok(())
    }

    /// Zeroes `len` bytes at `off` (a discard), clamped to the disk.
    pub(crate) fn zero(&mut self, off: u64, len: u64) {
        let end = off.saturating_add(len).min(self.len);
        if off < end {
            self.modify(off as usize..end as usize, |_, d| d.fill(0));
        }
    }

    /// Grows (with zeroes) or shrinks the disk to `len` bytes.
    pub(crate) fn resize(&mut self, len: u64) -> Result<(), HalError> {
        let n = usize::try_from(len).map_err(|_| HalError::OutOfMemory);
        match &mut self.data {
            Data::Null => {}
            Data::Flat(d) => d.resize(n?, 0),
            Data::Cow {
                base_len, pages, ..
            } => {
                let n = n?;
                // What a shrink cut off reads as zeroes after a regrow.
                *base_len = (*base_len).min(n);
                if n % COW_PAGE != 0 {
                    if let Some(Some(p)) = pages.get_mut(n / COW_PAGE) {
                        p[n % COW_PAGE..].fill(0);
                    }
                }
                pages.resize_with(n.div_ceil(COW_PAGE), || None);
            }
        }
        self.len = len;
        Ok(())
    }
}

/// Copies the image bytes at `at..at + dst.len()` into `dst`, zeroes past
/// `base_len`.
fn copy_base(base: &[u8], base_len: usize, at: usize, dst: &mut [u8]) {
    let have = base_len.saturating_sub(at).min(dst.len());
    if have > 0 {
        dst[..have].copy_from_slice(&base[at..at + have]);
    }
    dst[have..].fill(0);
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
    fn a_copy_on_write_disk_reads_its_image_and_keeps_writes_to_itself() {
        let img: Vec<u8> = (0..3 * COW_PAGE + 100).map(|i| (i % 251) as u8).collect();
        let image = DiskImage::new(img.clone());
        let mut flat = Disk::new(5 * COW_PAGE as u64, false).unwrap();
        flat.write(0, &img).unwrap();
        let mut cow = Disk::with_image(5 * COW_PAGE as u64, &image).unwrap();
        let other = Disk::with_image(5 * COW_PAGE as u64, &image).unwrap();
        // The same operations on a flat copy and on the overlay, compared
        // byte for byte: unaligned, across pages, past the image's end.
        let ops: [(u64, usize); 5] = [(5, 9000), (4090, 12), (11_000, 700), (0, 1), (16_380, 4)];
        for (k, &(off, len)) in ops.iter().enumerate() {
            let data = vec![k as u8 + 1; len];
            flat.write(off, &data).unwrap();
            cow.write(off, &data).unwrap();
        }
        flat.zero(3000, 2000);
        cow.zero(3000, 2000);
        let whole = |d: &Disk| {
            let mut b = vec![0xee; d.len() as usize];
            d.read(0, &mut b).unwrap();
            b
        };
        assert!(whole(&flat) == whole(&cow));
        let mut b = vec![0; 7];
        cow.read(3 * COW_PAGE as u64 + 97, &mut b).unwrap();
        assert_eq!(&b[..3], &img[3 * COW_PAGE + 97..]);
        assert_eq!(&b[3..], &[0; 4], "past the image: zeroes");
        // Another disk of the same image never saw those writes.
        other.read(0, &mut b).unwrap();
        assert_eq!(b, img[..7]);
        assert_eq!(image.bytes(), &img[..]);
        // A shrink cuts the image; a regrow reads zeroes there.
        for d in [&mut flat, &mut cow] {
            d.resize(100).unwrap();
            d.resize(5 * COW_PAGE as u64).unwrap();
        }
        assert!(whole(&flat) == whole(&cow));
        assert_eq!(
            cow.write(5 * COW_PAGE as u64, &[1]),
            Err(IoError::OutOfRange)
        );
        assert!(!cow.is_null());
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
