//! Read-only ext4 over `xenblk::blockdev::ByteDisk` with ext4-view: an
//! image made by the host's `mke2fs -d` from a directory tree is put on a
//! simulated disk (512-byte and 4 KiB sectors, blkback and qdisk), and
//! every file and directory of the tree is read back through the driver.
#![cfg(all(feature = "sim", feature = "ext4-view"))]

use std::path::Path;
use std::process::Command;

use xenblk::blkfront::Config;
use xenblk::blockdev::ByteDisk;
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::Testbed;

const DISK: u64 = 16 << 20;

/// A small tree: nested directories, an empty file, a file of several
/// extents' worth, one whose size is no multiple of any block size.
fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("hello.txt".into(), b"xenblk reads ext4\n".to_vec()),
        ("empty".into(), Vec::new()),
        (
            "a/b/big.bin".into(),
            (0..300_001u32).map(|i| (i * 7 + i / 4096) as u8).collect(),
        ),
        ("a/odd".into(), vec![0x5a; 4097]),
    ];
    for (name, data) in &files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    files
}

/// An ext4 image of `DISK` bytes holding `dir` (`mke2fs -d`, e2fsprogs,
/// which every Debian system has).
fn mkfs(dir: &Path, image: &Path, block: u32) -> Vec<u8> {
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", &block.to_string(), "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{}k", DISK / 1024))
        .output()
        .expect("running mke2fs (e2fsprogs) to make the test image");
    assert!(
        out.status.success(),
        "mke2fs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(image).unwrap()
}

#[test]
fn ext4_view_reads_every_file_of_an_image_through_the_driver() {
    let work = std::env::temp_dir().join(format!("xenblk-ext4-{}", std::process::id()));
    let src = work.join("tree");
    let files = tree(&src);
    for (name, be_cfg, ss, block) in [
        ("blkback-512", BackendConfig::blkback(), 512, 1024),
        ("blkback-4k", BackendConfig::blkback(), 4096, 4096),
        ("qdisk-4k", BackendConfig::qdisk(), 4096, 4096),
    ] {
        let image = mkfs(&src, &work.join(format!("{name}.img")), block);
        let mut b = be_cfg;
        b.disk_bytes = DISK;
        b.sector_size = ss;
        b.physical_sector_size = Some(ss);
        b.hotplug_delay_ns = 0;
        // ext4-view takes a 'static reader, as a unikernel's disk is: the
        // test's machine lives until the process ends.
        let tb: &'static Testbed = Box::leak(Box::new(Testbed::new([b])));
        tb.backend(0).disk_write(0, &image).unwrap();
        let guest = Box::leak(Box::new(tb.guest()));
        let disk = guest.probe(0, Config::default()).expect("probe");
        let fs = ext4_view::Ext4::load(Box::new(ByteDisk::new(disk)))
            .unwrap_or_else(|e| panic!("{name}: load: {e}"));
        for (path, data) in &files {
            let got = fs
                .read(format!("/{path}").as_str())
                .unwrap_or_else(|e| panic!("{name}: read {path}: {e}"));
            assert!(got == *data, "{name}: {path} differs");
        }
        let mut top: Vec<String> = fs
            .read_dir("/")
            .unwrap()
            .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
            .filter(|n| n != "." && n != ".." && n != "lost+found")
            .collect();
        top.sort();
        assert_eq!(top, ["a", "empty", "hello.txt"], "{name}");
        assert!(!fs.exists("/a/missing").unwrap(), "{name}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
