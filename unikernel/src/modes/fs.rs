//! `fs [timeout=<s>] [io-timeout=<s>]`: a FAT filesystem on every writable
//! disk, through `xenblk::blockdev::SdmmcDisk` and embedded-sdmmc.
//!
//! It starts like `info` (the same report and `xenblk-disk` line per disk,
//! see [`super::info`]). dom0 made each disk an MBR with one FAT partition
//! holding `DATA.BIN` (random bytes), `CKSUM.TXT` (the POSIX `cksum` line
//! of `DATA.BIN`: `<crc> <bytes> DATA.BIN`) and a directory `DOCS`. Per
//! disk:
//!
//! 1. mount partition 0 and list the root and every directory in it, one
//!    line per entry: `xenblk-fs vdev=<n> entry=/<DIR/>NAME size=<bytes>
//!    dir=0|1` (check `<vdev>/fs-mount`);
//! 2. read `CKSUM.TXT`, read `DATA.BIN` through and compare its POSIX
//!    cksum and length with it (check `<vdev>/fs-read`);
//! 3. create `GUEST.TXT` (text lines naming the disk and their number,
//!    [`GUEST_BYTES`] bytes, so not a whole number of sectors or clusters),
//!    close it, open it again and compare what it reads with what was
//!    written (check `<vdev>/fs-write`), then print `xenblk-fs vdev=<n>
//!    wrote=GUEST.TXT cksum=<crc> bytes=<n>` for dom0, which reads the file
//!    back with mtools after the guest is gone and runs `fsck.fat -n` on the
//!    partition;
//! 4. close the volume and flush the disk.
//!
//! On a read-only disk steps 1 and 2 are the same, and step 3 is creating
//! `GUEST.TXT`, which must fail with the driver's `ReadOnly` (check
//! `<vdev>/fs-write-refused`); dom0 checks that the file is not there. The guest has no calendar
//! clock: files it writes carry a fixed time stamp ([`Clock`]).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xenblk::blkfront::IoError;
use xenblk::blockdev::embedded_sdmmc::{
    self as sdmmc, Mode as FileMode, TimeSource, Timestamp, VolumeIdx, VolumeManager,
};
use xenblk::blockdev::{BlockDevError, SdmmcDisk};
use xenblk::hal::Hal;
use xenblk::pvh::Xen;

use super::info::{self, Disk, Platform};
use super::{Context, Outcome};
use crate::cksum::cksum;

/// The size of the file the guest writes.
pub const GUEST_BYTES: usize = 70_001;
/// Its name.
const GUEST_FILE: &str = "GUEST.TXT";
/// The checksum file dom0 writes, and the file it names.
const CKSUM_FILE: &str = "CKSUM.TXT";
/// Bytes read from a file per call.
const CHUNK: usize = 8192;

/// The time stamp of every file the guest writes: 2026-01-01 00:00:00.
pub struct Clock;

impl TimeSource for Clock {
    fn get_timestamp(&self) -> Timestamp {
        Timestamp {
            year_since_1970: 56,
            zero_indexed_month: 0,
            zero_indexed_day: 0,
            hours: 0,
            minutes: 0,
            seconds: 0,
        }
    }
}

type Fs<'a> = VolumeManager<SdmmcDisk<'a, Xen, info::Transport>, Clock, 4, 4, 1>;
type FsError = sdmmc::Error<BlockDevError>;

/// Runs `fs`.
pub fn run(ctx: &Context<'_>) -> Outcome {
    let mut outcome = Outcome::default();
    let cfg = info::config(ctx, &mut outcome);
    let Some(platform) = Platform::open(ctx, &mut outcome) else {
        return outcome;
    };
    let mut attached = info::attach_all(&platform, cfg, &mut outcome);
    for a in &mut attached {
        let vdev = a.vdev;
        let Some(disk) = a.disk.take() else { continue };
        a.disk = Some(on_disk(platform.xen, vdev, disk, &mut outcome));
    }
    info::close_all(&platform, attached, &mut outcome);
    outcome
}

/// The checks of one disk; gives the disk back whatever happened.
fn on_disk<'a>(xen: &Xen, vdev: u32, disk: Disk<'a>, outcome: &mut Outcome) -> Disk<'a> {
    let read_only = disk.info().read_only();
    let fs: Fs<'a> = VolumeManager::new(SdmmcDisk::new(disk), Clock);
    let mut report = |what: &str, r: Result<String, String>| {
        let ok = r.is_ok();
        let detail = r.unwrap_or_else(|e| e);
        outcome.report(&format!("{vdev}/{what}"), ok, &detail);
        ok
    };
    match mount_and_list(vdev, &fs) {
        Ok(n) => {
            report(
                "fs-mount",
                Ok(format!("partition 0 mounted, {n} entries listed")),
            );
            report("fs-read", read_checked(xen, &fs));
            if read_only {
                report("fs-write-refused", write_refused(&fs));
            } else {
                report("fs-write", write_and_read_back(vdev, &fs));
            }
        }
        Err(e) => {
            report("fs-mount", Err(format!("partition 0: {e:?}")));
        }
    }
    let (sd, _) = fs.free();
    let mut disk = sd.into_inner();
    // embedded-sdmmc writes through; what it wrote must be on the medium
    // before dom0 looks.
    if read_only {
        return disk;
    }
    if let Err(e) = disk.flush() {
        outcome.report(&format!("{vdev}/fs-flush"), false, &format!("{e}"));
    }
    disk
}

/// Mounts partition 0, prints every entry of the root and of each of its
/// directories, and returns how many there were.
fn mount_and_list(vdev: u32, fs: &Fs<'_>) -> Result<usize, FsError> {
    let volume = fs.open_volume(VolumeIdx(0))?;
    let root = volume.open_root_dir()?;
    let mut dirs = Vec::new();
    let mut n = 0;
    root.iterate_dir(|e| {
        let name = format!("{}", e.name);
        if name == "." || name == ".." || e.attributes.is_volume() {
            return;
        }
        let dir = e.attributes.is_directory();
        crate::out!(
            "xenblk-fs vdev={vdev} entry=/{name}{} size={} dir={}",
            if dir { "/" } else { "" },
            e.size,
            u8::from(dir)
        );
        n += 1;
        if dir {
            dirs.push(name);
        }
    })?;
    for d in dirs {
        let sub = root.open_dir(d.as_str())?;
        sub.iterate_dir(|e| {
            let name = format!("{}", e.name);
            if name == "." || name == ".." {
                return;
            }
            crate::out!(
                "xenblk-fs vdev={vdev} entry=/{d}/{name} size={} dir={}",
                e.size,
                u8::from(e.attributes.is_directory())
            );
            n += 1;
        })?;
    }
    Ok(n)
}

/// The whole content of file `name` in the root directory.
fn read_file(fs: &Fs<'_>, name: &str, limit: usize) -> Result<Vec<u8>, String> {
    let volume = fs.open_volume(VolumeIdx(0)).map_err(|e| format!("{e:?}"))?;
    let root = volume.open_root_dir().map_err(|e| format!("{e:?}"))?;
    let file = root
        .open_file_in_dir(name, FileMode::ReadOnly)
        .map_err(|e| format!("{name}: {e:?}"))?;
    let len = file.length() as usize;
    if len > limit {
        return Err(format!(
            "{name}: {len} bytes, more than the {limit} expected"
        ));
    }
    let mut out = Vec::with_capacity(len);
    let mut buf = vec![0u8; CHUNK];
    while !file.is_eof() {
        let got = file.read(&mut buf).map_err(|e| format!("{name}: {e:?}"))?;
        if got == 0 {
            break;
        }
        out.extend_from_slice(&buf[..got]);
    }
    if out.len() != len {
        return Err(format!(
            "{name}: read {} bytes, the directory says {len}",
            out.len()
        ));
    }
    Ok(out)
}

/// Step 2: `DATA.BIN` against the line dom0 wrote into `CKSUM.TXT`.
fn read_checked(xen: &Xen, fs: &Fs<'_>) -> Result<String, String> {
    let line = read_file(fs, CKSUM_FILE, 256)?;
    let line = core::str::from_utf8(&line).map_err(|_| format!("{CKSUM_FILE}: not text"))?;
    let mut words = line.split_whitespace();
    let (Some(crc), Some(bytes), Some(name), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Err(format!(
            "{CKSUM_FILE}: {line:?} is not `<crc> <bytes> <name>`"
        ));
    };
    let (Ok(crc), Ok(bytes)) = (crc.parse::<u32>(), bytes.parse::<usize>()) else {
        return Err(format!(
            "{CKSUM_FILE}: {line:?} is not `<crc> <bytes> <name>`"
        ));
    };
    let t0 = xen.now_ns();
    let data = read_file(fs, name, 16 << 20)?;
    let ms = xen.now_ns().saturating_sub(t0) / 1_000_000;
    let (got_crc, got_len) = (cksum(&data), data.len() as u64);
    if got_crc == crc && got_len == bytes as u64 {
        Ok(format!(
            "{name}: cksum {got_crc} {got_len}, as {CKSUM_FILE} says (read in {ms} ms)"
        ))
    } else {
        Err(format!(
            "{name}: cksum {got_crc} {got_len}, {CKSUM_FILE} says {crc} {bytes}"
        ))
    }
}

/// Step 3 on a read-only disk: creating `GUEST.TXT` fails with the
/// driver's `ReadOnly`.
fn write_refused(fs: &Fs<'_>) -> Result<String, String> {
    let volume = fs.open_volume(VolumeIdx(0)).map_err(|e| format!("{e:?}"))?;
    let root = volume.open_root_dir().map_err(|e| format!("{e:?}"))?;
    let r = root
        .open_file_in_dir(GUEST_FILE, FileMode::ReadWriteCreateOrTruncate)
        .map(|f| f.close());
    match r {
        Err(sdmmc::Error::DeviceError(BlockDevError::Io(IoError::ReadOnly))) => Ok(format!(
            "creating {GUEST_FILE} fails with the driver's ReadOnly"
        )),
        Err(e) => Err(format!("creating {GUEST_FILE}: {e:?}, not ReadOnly")),
        Ok(_) => Err(format!(
            "creating {GUEST_FILE} on a read-only disk succeeded"
        )),
    }
}

/// The content of `GUEST.TXT` on disk `vdev`: numbered lines, cut at
/// [`GUEST_BYTES`].
fn guest_content(vdev: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(GUEST_BYTES + 64);
    let mut i = 0u32;
    while out.len() < GUEST_BYTES {
        out.extend_from_slice(format!("xenblk-fs vdev={vdev} line={i}\n").as_bytes());
        i += 1;
    }
    out.truncate(GUEST_BYTES);
    out
}

/// Step 3.
fn write_and_read_back(vdev: u32, fs: &Fs<'_>) -> Result<String, String> {
    let data = guest_content(vdev);
    {
        let volume = fs.open_volume(VolumeIdx(0)).map_err(|e| format!("{e:?}"))?;
        let root = volume.open_root_dir().map_err(|e| format!("{e:?}"))?;
        let file = root
            .open_file_in_dir(GUEST_FILE, FileMode::ReadWriteCreateOrTruncate)
            .map_err(|e| format!("create {GUEST_FILE}: {e:?}"))?;
        for chunk in data.chunks(CHUNK) {
            file.write(chunk)
                .map_err(|e| format!("write {GUEST_FILE}: {e:?}"))?;
        }
        file.close()
            .map_err(|e| format!("close {GUEST_FILE}: {e:?}"))?;
    }
    let back = read_file(fs, GUEST_FILE, GUEST_BYTES)?;
    if back != data {
        let at = back.iter().zip(&data).position(|(a, b)| a != b);
        return Err(format!(
            "{GUEST_FILE}: read back {} bytes, differs from what was written at {at:?}",
            back.len()
        ));
    }
    crate::out!(
        "xenblk-fs vdev={vdev} wrote={GUEST_FILE} cksum={} bytes={}",
        cksum(&data),
        data.len()
    );
    Ok(format!(
        "{GUEST_FILE}: {} bytes written, closed, read back equal",
        data.len()
    ))
}
