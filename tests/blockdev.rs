//! `xenblk::blockdev` on the simulator: byte-addressed reads and writes
//! against a model of the disk on 512-byte and 4 KiB-sector disks (both
//! backends), and two independent FAT implementations — `fatfs` over the
//! `embedded-io` adapter, embedded-sdmmc's over its `BlockDevice` adapter —
//! reading each other's files on one disk.
#![cfg(all(feature = "sim", feature = "embedded-io", feature = "embedded-sdmmc"))]

mod common;
use common::Rng;

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

use embedded_io_adapters::std::ToStd;
use xenblk::blkfront::{Config, IoError};
use xenblk::blockdev::{BlockDevError, ByteDisk, SdmmcDisk};
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::Testbed;

/// blkback with 512-byte sectors, blkback and qdisk with 4 KiB ones.
fn backends(bytes: u64) -> Vec<(&'static str, BackendConfig)> {
    let mut out = Vec::new();
    for (name, mut b, ss) in [
        ("blkback-512", BackendConfig::blkback(), 512),
        ("blkback-4k", BackendConfig::blkback(), 4096),
        ("qdisk-4k", BackendConfig::qdisk(), 4096),
    ] {
        b.disk_bytes = bytes;
        b.sector_size = ss;
        b.physical_sector_size = Some(ss);
        b.hotplug_delay_ns = 0;
        out.push((name, b));
    }
    out
}

#[test]
fn unaligned_reads_and_writes_match_a_model_of_the_disk() {
    const DISK: usize = 1 << 20;
    for (name, b) in backends(DISK as u64) {
        let tb = Testbed::new([b]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut d = ByteDisk::new(guest.probe(0, Config::default()).expect("probe"));
        assert_eq!(d.len(), DISK as u64, "{name}");
        let mut model = be.disk_read(0, DISK).unwrap();
        let mut rng = Rng(0x5eed);
        for i in 0..300 {
            let len = 1 + rng.below(if i % 8 == 0 { 40_000 } else { 5000 }) as usize;
            let off = rng.below((DISK - len) as u64) as usize;
            if rng.below(2) == 0 {
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                d.write_at(off as u64, &data).expect("write_at");
                model[off..off + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0xee; len];
                d.read_at(off as u64, &mut buf).expect("read_at");
                assert!(
                    buf == model[off..off + len],
                    "{name}: read_at({off}, {len})"
                );
            }
        }
        assert!(be.disk_read(0, DISK).unwrap() == model, "{name}: the disk");
        let mut disk = d.into_inner();
        assert_eq!(disk.close(), Ok(0), "{name}");
        drop(disk);
        assert_eq!(guest.held(), (0, 0, 0), "{name}");
    }
}

#[test]
fn a_range_past_the_end_or_a_failed_read_changes_nothing() {
    for (name, b) in backends(1 << 20) {
        let tb = Testbed::new([b]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut d = ByteDisk::new(guest.probe(0, Config::default()).expect("probe"));
        let end = d.len();
        let before = be.disk_read(0, end as usize).unwrap();

        // One byte past the end, unaligned at the start: refused whole.
        let mut buf = vec![0x11; 5000];
        assert_eq!(
            d.read_at(end - 4999, &mut buf),
            Err(BlockDevError::Io(IoError::OutOfRange)),
            "{name}"
        );
        assert!(buf.iter().all(|&b| b == 0x11), "{name}: buffer changed");
        assert_eq!(
            d.write_at(end - 4999, &[0x22; 5000]),
            Err(BlockDevError::Io(IoError::OutOfRange)),
            "{name}"
        );
        assert_eq!(
            d.write_at(u64::MAX - 1, &[0x22; 4]),
            Err(BlockDevError::Io(IoError::OutOfRange)),
            "{name}"
        );
        assert!(
            be.disk_read(0, end as usize).unwrap() == before,
            "{name}: disk changed"
        );

        // The backend fails the read of a partial write's first sector: the
        // write is not sent at all.
        be.update_faults(|f| f.io_errors = 1);
        assert!(d.write_at(100, &[0x33; 100]).is_err(), "{name}");
        assert!(
            be.disk_read(0, end as usize).unwrap() == before,
            "{name}: disk changed"
        );
        // And a failed unaligned read leaves the buffer alone.
        be.update_faults(|f| f.io_errors = 1);
        assert!(d.read_at(100, &mut buf[..100]).is_err(), "{name}");
        assert!(buf.iter().all(|&b| b == 0x11), "{name}: buffer changed");
    }
}

#[test]
fn the_stream_reads_to_the_end_and_refuses_to_write_past_it() {
    use embedded_io::{Read, Seek, SeekFrom, Write};
    let tb = Testbed::new([BackendConfig::blkback()]);
    let guest = tb.guest();
    let mut d = ByteDisk::new(guest.probe(0, Config::default()).expect("probe"));
    let end = d.len();
    assert_eq!(d.seek(SeekFrom::End(-3)), Ok(end - 3));
    assert_eq!(d.write(b"abcdef"), Ok(3));
    assert_eq!(
        d.write(b"x"),
        Err(BlockDevError::EndOfDisk),
        "nothing fits at the end"
    );
    assert_eq!(
        embedded_io::Error::kind(&BlockDevError::EndOfDisk),
        embedded_io::ErrorKind::WriteZero
    );
    assert_eq!(d.seek(SeekFrom::Current(-3)), Ok(end - 3));
    let mut buf = [0u8; 8];
    assert_eq!(d.read(&mut buf), Ok(3));
    assert_eq!(&buf[..3], b"abc");
    assert_eq!(d.read(&mut buf), Ok(0), "end of disk");
    assert_eq!(d.seek(SeekFrom::Start(end + 100)), Ok(end + 100));
    assert_eq!(d.read(&mut buf), Ok(0), "past the end of disk");
    assert_eq!(
        d.seek(SeekFrom::Current(-(end as i64) - 101)),
        Err(BlockDevError::InvalidSeek)
    );
    assert_eq!(d.position(), end + 100, "a refused seek moves nothing");
    // blkback offers flush-cache; a backend without it has nothing to flush.
    assert_eq!(d.flush(), Ok(()));
}

// ----- FAT over both adapters ---------------------------------------------------

/// The first partition: 1 MiB in, to the end of the disk.
const PART_START: u64 = 1 << 20;

/// A master boot record with one FAT16 (LBA) partition from `PART_START`.
fn mbr(disk_bytes: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[4] = 0x0e; // FAT16, LBA
    e[8..12].copy_from_slice(&((PART_START / 512) as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(((disk_bytes - PART_START) / 512) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// A window `[start, start + len)` of a stream, as a stream of its own
/// (the partition, for fatfs, which formats and mounts whole streams).
struct Window<S> {
    inner: S,
    start: u64,
    len: u64,
    pos: u64,
}

impl<S: std::io::Seek> Window<S> {
    fn cur(&mut self) -> std::io::Result<()> {
        self.inner.seek(SeekFrom::Start(self.start + self.pos))?;
        Ok(())
    }
    fn room(&self, want: usize) -> usize {
        (self.len.saturating_sub(self.pos)).min(want as u64) as usize
    }
}

impl<S: std::io::Read + std::io::Seek> std::io::Read for Window<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.room(buf.len());
        self.cur()?;
        let n = self.inner.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<S: std::io::Write + std::io::Seek> std::io::Write for Window<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.room(buf.len());
        self.cur()?;
        let n = self.inner.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<S> std::io::Seek for Window<S> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| std::io::Error::other("seek before the start"))?;
        Ok(self.pos)
    }
}

struct Clock;

impl embedded_sdmmc::TimeSource for Clock {
    fn get_timestamp(&self) -> embedded_sdmmc::Timestamp {
        embedded_sdmmc::Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 11,
            zero_indexed_day: 1,
            hours: 12,
            minutes: 0,
            seconds: 0,
        }
    }
}

fn text(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"xenblk FAT round trip\n"[i % 22]).collect()
}

#[test]
fn fatfs_and_embedded_sdmmc_read_each_others_files_on_one_disk() {
    const DISK: u64 = 32 << 20;
    for (name, b) in backends(DISK) {
        let tb = Testbed::new([b]);
        let guest = tb.guest();
        let mut bytes = ByteDisk::new(guest.probe(0, Config::default()).expect("probe"));
        bytes.write_at(0, &mbr(DISK)).expect("MBR");

        // fatfs, through embedded-io (bridged to std::io), formats the
        // partition and writes a file in a directory.
        let mut stream = ToStd::new(bytes);
        {
            let mut part = Window {
                inner: &mut stream,
                start: PART_START,
                len: DISK - PART_START,
                pos: 0,
            };
            fatfs::format_volume(
                &mut part,
                fatfs::FormatVolumeOptions::new()
                    .fat_type(fatfs::FatType::Fat16)
                    .volume_label(*b"XENBLK     "),
            )
            .expect("format");
            let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new()).expect("mount");
            let root = fs.root_dir();
            root.create_dir("DATA").expect("mkdir");
            let mut f = root.create_file("DATA/FROMFAT.TXT").expect("create");
            f.write_all(&text(70_000)).expect("write");
            f.flush().expect("flush");
            drop(f);
            drop(root);
            fs.unmount().expect("unmount");
        }

        // embedded-sdmmc, through its BlockDevice, finds the partition,
        // reads that file and writes one of its own.
        let sd = SdmmcDisk::new(stream.into_inner().into_inner());
        {
            let vm: embedded_sdmmc::VolumeManager<_, _, 4, 4, 1> =
                embedded_sdmmc::VolumeManager::new(sd, Clock);
            let vol = vm
                .open_volume(embedded_sdmmc::VolumeIdx(0))
                .unwrap_or_else(|e| panic!("{name}: open_volume: {e:?}"));
            let root = vol.open_root_dir().expect("root");
            let dir = root.open_dir("DATA").expect("DATA");
            let f = dir
                .open_file_in_dir("FROMFAT.TXT", embedded_sdmmc::Mode::ReadOnly)
                .expect("open");
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            while !f.is_eof() {
                let n = f.read(&mut buf).expect("read");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(
                got == text(70_000),
                "{name}: embedded-sdmmc read another file"
            );
            f.close().expect("close");
            let g = dir
                .open_file_in_dir("FROMSD.TXT", embedded_sdmmc::Mode::ReadWriteCreate)
                .expect("create");
            g.write(&text(9_999)).expect("write");
            g.close().expect("close");
            dir.close().expect("close dir");
            root.close().expect("close root");
            vol.close().expect("close volume");
            let (sd, _clock) = vm.free();
            bytes = ByteDisk::new(sd.into_inner());
        }

        // fatfs reads embedded-sdmmc's file back, and the listing.
        let mut stream = ToStd::new(bytes);
        {
            let mut part = Window {
                inner: &mut stream,
                start: PART_START,
                len: DISK - PART_START,
                pos: 0,
            };
            let fs = fatfs::FileSystem::new(&mut part, fatfs::FsOptions::new()).expect("mount");
            assert_eq!(fs.volume_label().trim_end(), "XENBLK", "{name}");
            let root = fs.root_dir();
            let mut names: Vec<String> = root
                .open_dir("DATA")
                .expect("DATA")
                .iter()
                .map(|e| e.expect("entry").short_file_name())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            assert_eq!(names, ["FROMFAT.TXT", "FROMSD.TXT"], "{name}");
            let mut got = Vec::new();
            root.open_file("DATA/FROMSD.TXT")
                .expect("open")
                .read_to_end(&mut got)
                .expect("read");
            assert!(got == text(9_999), "{name}: fatfs read another file");
            // (Seek on the std side goes through the adapter's Seek too.)
            let mut f = root.open_file("DATA/FROMFAT.TXT").expect("open");
            f.seek(SeekFrom::Start(69_990)).expect("seek");
            let mut tail = Vec::new();
            f.read_to_end(&mut tail).expect("read");
            assert_eq!(tail, text(70_000)[69_990..], "{name}");
        }
        let mut disk = stream.into_inner().into_inner();
        assert_eq!(disk.close(), Ok(0), "{name}");
        drop(disk);
        assert_eq!(guest.held(), (0, 0, 0), "{name}");
    }
}
