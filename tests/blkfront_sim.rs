//! The block frontend against the simulated Xen: every feature, under the
//! blkback-like and the qdisk-like backend, with data checked against the
//! backend's disk.
#![cfg(feature = "sim")]

mod common;
use common::pattern;

use xenblk::blkfront::{
    BackendEvent, BackendKind, BlockFront, Broken, Config, DeviceState, DirectIoSafe, FlushMethod,
    IoError, Recovery, SectorsUnit, StallCause,
};
use xenblk::error::{Error, Feature, Violation};
use xenblk::hal::{DomId, HalError};
use xenblk::sim::blkback::{BackendConfig, BadId, Faults, Offer, SimBlkBackHandle};
use xenblk::sim::{SimDisk, SimHal, Testbed};
use xenblk::xenbus::{XenbusError, XenbusState};

const VDEV: u32 = 51712;

fn small(mut cfg: BackendConfig) -> BackendConfig {
    cfg.disk_bytes = 8 << 20;
    cfg
}

#[test]
fn blkback_negotiates_every_offered_feature() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let disk = guest.probe(0, Config::default()).expect("probe");
    let i = disk.info();
    assert_eq!(i.kind, BackendKind::Blkback);
    assert_eq!(i.sectors_unit, SectorsUnit::Bytes512);
    assert_eq!(i.capacity_bytes, 8 << 20);
    let n = &i.negotiated;
    assert_eq!(n.ring_page_order, 4);
    assert_eq!(n.ring_slots, 512);
    assert_eq!(n.queues, 2);
    assert_eq!(n.indirect_segments, 256);
    assert!(n.persistent && n.trusted && n.discard);
    assert_eq!(n.flush, Some(FlushMethod::FlushCache));
    assert_eq!(be.state(), XenbusState::Connected);
    assert_eq!(be.stats().queues, 2);
    assert_eq!(be.stats().ring_order, 4);
    let line = i.disk_line();
    assert!(line.contains("features=flush-cache,barrier-offered,discard,persistent,indirect:256,ring-order:4,queues:2"), "{line}");
    let report = format!("{i}");
    assert!(report.contains("direct-io-safe  absent"), "{report}");
}

#[test]
fn qdisk_is_read_with_its_own_conventions() {
    let mut cfg = small(BackendConfig::qdisk());
    cfg.direct_io_safe = Some(false);
    let tb = Testbed::new([cfg]);
    let guest = tb.guest();
    let disk = guest.probe(0, Config::default()).expect("probe");
    let i = disk.info();
    assert_eq!(i.kind, BackendKind::Qdisk);
    assert_eq!(i.sectors_unit, SectorsUnit::LogicalBlocks);
    assert_eq!(i.direct_io_safe, DirectIoSafe::Off);
    assert_eq!(i.physical_sector_size, None);
    let n = &i.negotiated;
    assert_eq!((n.queues, n.indirect_segments, n.persistent), (1, 0, false));
    assert_eq!(n.flush, Some(FlushMethod::FlushCache));
    assert!(!i.offered.barrier);
}

fn roundtrip_sizes(disk: &mut SimDisk<'_>, be: &SimBlkBackHandle) {
    let ss = disk.sector_size() as usize;
    // Sizes around the page, the direct-segment and the indirect limits.
    for (k, &len) in [
        ss,
        4096,
        8192 + ss,
        11 * 4096,
        11 * 4096 + ss,
        64 * 1024,
        300 * 1024,
        1 << 20,
        (1 << 20) + 3 * 4096,
    ]
    .iter()
    .enumerate()
    {
        let len = len / ss * ss;
        let sector = (k as u64 * 97) % 64;
        let data = pattern(k as u64 + 1, len);
        disk.write(sector, &data).expect("write");
        assert_eq!(
            be.disk_read(sector * ss as u64, len).unwrap(),
            data,
            "disk holds write of {len} at {sector}"
        );
        let mut back = vec![0u8; len];
        disk.read(sector, &mut back).expect("read");
        assert_eq!(back, data, "read back {len} at {sector}");
    }
}

#[test]
fn reads_and_writes_of_every_size_under_blkback() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    roundtrip_sizes(&mut disk, &be);
    assert!(
        be.stats().indirect > 0,
        "large requests used indirect descriptors"
    );
}

#[test]
fn reads_and_writes_of_every_size_under_qdisk() {
    let tb = Testbed::new([small(BackendConfig::qdisk())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    roundtrip_sizes(&mut disk, &be);
    assert_eq!(be.stats().indirect, 0);
}

#[test]
fn without_indirect_requests_split_at_eleven_segments() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let cfg = Config {
        max_indirect_segments: 0,
        max_queues: 1,
        max_ring_page_order: 0,
        ..Config::default()
    };
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    assert_eq!(disk.info().negotiated.indirect_segments, 0);
    let data = pattern(7, 100 * 4096);
    disk.write(3, &data).unwrap();
    // 100 pages in parts of 11: ceil(100/11) = 10 requests.
    assert_eq!(be.stats().writes, 10);
    assert_eq!(be.stats().indirect, 0);
    let mut back = vec![0; data.len()];
    disk.read(3, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn four_k_logical_sectors() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.sector_size = 4096;
    cfg.physical_sector_size = Some(4096);
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(disk.sector_size(), 4096);
    assert_eq!(disk.sectors(), (8 << 20) / 4096);
    let data = pattern(9, 3 * 4096);
    disk.write(5, &data).unwrap();
    assert_eq!(be.disk_read(5 * 4096, data.len()).unwrap(), data);
    let r = disk.submit_write(0, vec![0; 512]);
    assert_eq!(r.unwrap_err().error, IoError::Misaligned);
}

/// The frontend's `feature-large-sector-size` key of disk 0, as dom0 sees it.
fn large_sector_flag(tb: &Testbed) -> Option<String> {
    let fe = format!("/local/domain/{}/device/vbd/{}", tb.domid().0, tb.vdev(0));
    tb.xenstored()
        .read(DomId::DOM0, &format!("{fe}/feature-large-sector-size"))
        .ok()
}

#[test]
fn four_k_qdisk_counts_in_logical_blocks_once_the_frontend_says_it_does() {
    // QEMU's xen-block (4.1 through 10.x) counts `sectors` and every ring
    // sector field in logical blocks, and connects with a block size above
    // 512 only to a frontend that writes feature-large-sector-size=1.
    let mut cfg = small(BackendConfig::qdisk());
    cfg.sector_size = 4096;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(large_sector_flag(&tb).as_deref(), Some("1"));
    let i = disk.info();
    assert_eq!(i.sectors_unit, SectorsUnit::LogicalBlocks);
    assert_eq!(i.sectors_raw, Some((8 << 20) / 4096));
    assert_eq!(disk.sectors(), (8 << 20) / 4096);
    assert!(i
        .disk_line()
        .contains(" sector-size=4096 sectors-unit=logical "));
    assert!(format!("{i}").contains("feature-large-sector-size=1"));
    // The backend turns ring sector numbers into byte offsets with the
    // logical block size: the data lands where the caller put it only if
    // the driver counted in the same unit.
    roundtrip_sizes(&mut disk, &be);
    let r = disk.submit_read(0, vec![0; 512]);
    assert_eq!(r.unwrap_err().error, IoError::Misaligned);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(
        large_sector_flag(&tb),
        None,
        "the frontend's keys are removed"
    );
}

#[test]
fn a_qdisk_following_the_2024_rule_is_connected_without_the_flag_in_512_byte_units() {
    // A QEMU following blkif.h's 2024 rule (posted in 2024, in no release
    // yet) refuses feature-large-sector-size and counts in 512-byte units:
    // the driver sees the refusal, tries once more without the flag, and
    // counts as that backend does.
    let mut cfg = small(BackendConfig::qdisk());
    cfg.sector_size = 4096;
    cfg.qdisk_2024_rule = true;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let probe_cfg = Config {
        connect_timeout_ns: 200_000_000,
        ..Config::default()
    };
    let mut disk = guest.probe(0, probe_cfg).expect("probe");
    assert_eq!(large_sector_flag(&tb), None, "tried without the flag");
    let i = disk.info();
    assert_eq!(i.sectors_unit, SectorsUnit::Bytes512);
    assert_eq!(i.sectors_raw, Some((8 << 20) / 512));
    assert_eq!(disk.sectors(), (8 << 20) / 4096);
    assert!(i.disk_line().contains(" sectors-unit=512 "));
    assert!(format!("{i}").contains("refused feature-large-sector-size"));
    roundtrip_sizes(&mut disk, &be);
    assert_eq!(disk.close(), Ok(0));
}

#[test]
fn blkback_gets_no_large_sector_flag_and_counts_in_512_byte_units() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.sector_size = 4096;
    cfg.physical_sector_size = Some(4096);
    let tb = Testbed::new([cfg]);
    let guest = tb.guest();
    let disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(large_sector_flag(&tb), None);
    assert_eq!(disk.info().sectors_unit, SectorsUnit::Bytes512);
    assert_eq!(disk.info().sectors_raw, Some((8 << 20) / 512));
    assert!(disk.info().disk_line().contains(" sectors-unit=512 "));
}

#[test]
fn caps_from_config_limit_what_is_negotiated() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let cfg = Config {
        max_ring_page_order: 1,
        max_queues: 1,
        max_indirect_segments: 32,
        persistent_grants: false,
        ..Config::default()
    };
    let guest = tb.guest();
    let disk = guest.probe(0, cfg).expect("probe");
    let n = &disk.info().negotiated;
    assert_eq!(
        (
            n.ring_page_order,
            n.ring_slots,
            n.queues,
            n.indirect_segments,
            n.persistent
        ),
        (1, 64, 1, 32, false)
    );
}

#[test]
fn persistent_grants_are_reused_and_given_back_on_close() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    for i in 0..20 {
        disk.write(i, &pattern(i, 4096)).unwrap();
    }
    let pinned = be.stats().persistent_grants;
    assert!(
        pinned > 0 && pinned < 20,
        "a LIFO pool reuses a few grants, held {pinned}"
    );
    assert_eq!(disk.close().unwrap(), 0);
    assert_eq!(guest.held(), (0, 0, 0));
}

/// `max_kept_pages` bounds what a device keeps granted (and so
/// allocated) for persistent use, over all its queues; a big write still
/// works, cut into parts that fit; below the minimum per queue persistent
/// grants are not offered.
#[test]
fn max_kept_pages_bounds_the_pages_kept_and_a_tiny_one_turns_them_off() {
    for (max, offered) in [(200usize, true), (80, false)] {
        let tb = Testbed::new([small(BackendConfig::blkback())]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let cfg = Config {
            max_kept_pages: max,
            ..Config::default()
        };
        let mut disk = guest.probe(0, cfg).expect("probe");
        let queues = disk.info().negotiated.queues as usize;
        assert_eq!(queues, 2, "the simulated blkback offers 2 queues");
        assert_eq!(disk.info().negotiated.persistent, offered, "max {max}");
        let data = pattern(9, 4 << 20);
        disk.write(0, &data).expect("4 MiB write");
        let mut back = vec![0u8; data.len()];
        disk.read(0, &mut back).expect("4 MiB read");
        assert!(back == data);
        let pinned = be.stats().persistent_grants;
        assert!(
            pinned <= max,
            "max {max}: the backend holds {pinned} persistent grants"
        );
        if offered {
            assert!(pinned > 0, "max {max}: persistent grants in use");
        } else {
            assert_eq!(pinned, 0, "max {max}: 40 per queue is below the minimum");
        }
        disk.close().unwrap();
        assert_eq!(guest.held(), (0, 0, 0));
    }
}

/// Without persistent grants (qdisk), `max_kept_pages` bounds the idle
/// pages a device keeps for reuse after a big request.
#[test]
fn max_kept_pages_bounds_the_idle_pages_kept_without_persistent_grants() {
    let mut held = Vec::new();
    for max in [Config::default().max_kept_pages, 100] {
        let tb = Testbed::new([small(BackendConfig::qdisk())]);
        let guest = tb.guest();
        let cfg = Config {
            max_kept_pages: max,
            ..Config::default()
        };
        let mut disk = guest.probe(0, cfg).expect("probe");
        assert!(!disk.info().negotiated.persistent);
        let ring_pages = 1usize << disk.info().negotiated.ring_page_order;
        let data = pattern(5, 4 << 20);
        disk.write(0, &data).expect("4 MiB write");
        let mut back = vec![0u8; data.len()];
        disk.read(0, &mut back).expect("4 MiB read");
        assert!(back == data);
        held.push((max, guest.held().2 - ring_pages));
        disk.close().unwrap();
    }
    let (_, by_default) = held[0];
    let (max, limited) = held[1];
    assert!(limited <= max, "{held:?}");
    assert!(
        by_default > 4 * max,
        "the default keeps a ring's worth: {held:?}"
    );
}

#[test]
fn untrusted_backend_gets_no_persistent_grants() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.trusted = Some(false);
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert!(!disk.info().negotiated.trusted);
    assert!(!disk.info().negotiated.persistent);
    disk.write(0, &pattern(1, 8192)).unwrap();
    assert_eq!(be.stats().persistent_grants, 0);
    // Per-request grants are all revoked once requests complete.
    assert_eq!(
        guest.grants().in_use(),
        2 * (1 << 4),
        "only the ring pages stay granted"
    );
}

#[test]
fn flush_uses_flush_cache_or_falls_back_to_barrier() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    disk.flush().unwrap();
    assert_eq!(be.stats().flushes, 1);

    let mut cfg = small(BackendConfig::blkback());
    cfg.flush = Offer::No;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(disk.info().negotiated.flush, Some(FlushMethod::Barrier));
    disk.flush().unwrap();
    assert_eq!(be.stats().barriers, 1);

    let mut cfg = small(BackendConfig::blkback());
    cfg.flush = Offer::No;
    cfg.barrier = Offer::No;
    let tb = Testbed::new([cfg]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(disk.flush(), Err(IoError::Unsupported(Feature::FlushCache)));
}

#[test]
fn eopnotsupp_turns_the_feature_off_and_says_why() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.flush = Offer::Eopnotsupp;
    cfg.discard = Offer::Eopnotsupp;
    let tb = Testbed::new([cfg]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(disk.flush(), Err(IoError::Unsupported(Feature::FlushCache)));
    assert_eq!(disk.info().negotiated.flush, None);
    assert_eq!(
        disk.submit_flush().unwrap_err(),
        IoError::Unsupported(Feature::FlushCache)
    );
    assert_eq!(
        disk.discard(0, 64, false),
        Err(IoError::Unsupported(Feature::Discard))
    );
    assert!(!disk.info().negotiated.discard);
    let report = format!("{}", disk.info());
    assert!(
        report.contains("turned off") && report.contains("EOPNOTSUPP"),
        "{report}"
    );
}

#[test]
fn discard_honours_granularity_and_alignment() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.discard_granularity = 4096;
    cfg.discard_alignment = 1024;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    let ones = vec![0xffu8; 64 * 1024];
    disk.write(0, &ones).unwrap();
    // Sectors 1..=40 (bytes 512..20992): whole units [1024+4096k, ..) inside
    // are 1024..17408, i.e. 4 units.
    disk.discard(1, 40, false).unwrap();
    assert_eq!(be.stats().discards, 1);
    let d = be.disk_read(0, 64 * 1024).unwrap();
    assert!(d[..1024].iter().all(|&b| b == 0xff), "head kept");
    assert!(
        d[1024..17408].iter().all(|&b| b == 0),
        "whole units discarded"
    );
    assert!(d[17408..].iter().all(|&b| b == 0xff), "tail kept");
    // A range holding no whole unit completes without a request.
    disk.discard(3, 2, false).unwrap();
    assert_eq!(be.stats().discards, 1);
}

#[test]
fn secure_discard_only_when_offered() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert_eq!(
        disk.discard(0, 64, true),
        Err(IoError::Unsupported(Feature::SecureDiscard))
    );
    let mut cfg = small(BackendConfig::blkback());
    cfg.discard_secure = true;
    let tb = Testbed::new([cfg]);
    let be2 = tb.backend(0);
    let guest2 = tb.guest();
    let mut disk2 = guest2.probe(0, Config::default()).expect("probe");
    disk2.discard(0, 64, true).unwrap();
    assert_eq!(be2.stats().secure_discards, 1);
    drop(be);
}

#[test]
fn read_only_disks_refuse_writes_and_report_flags() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.read_only = true;
    cfg.cdrom = true;
    cfg.removable = true;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    assert!(disk.info().read_only() && disk.info().cdrom() && disk.info().removable());
    let buf = pattern(3, 4096);
    let r = disk.submit_write(0, buf.clone()).unwrap_err();
    assert_eq!(
        (r.error, r.buf),
        (IoError::ReadOnly, buf),
        "buffer comes back intact"
    );
    assert_eq!(disk.discard(0, 8, false), Err(IoError::ReadOnly));
    // a flush too, before anything is sent (blkback would fail it)
    assert_eq!(disk.flush(), Err(IoError::ReadOnly));
    let mut back = vec![0; 4096];
    disk.read(0, &mut back).unwrap();
    let st = be.stats();
    assert_eq!((st.writes, st.flushes, st.barriers), (0, 0, 0));
}

#[test]
fn malformed_calls_are_refused_with_the_buffer_back() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    let end = disk.sectors();
    for (sector, len, err) in [
        (0, 0, IoError::Misaligned),
        (0, 100, IoError::Misaligned),
        (end, 512, IoError::OutOfRange),
        (end - 1, 1024, IoError::OutOfRange),
        (u64::MAX, 512, IoError::OutOfRange),
    ] {
        let buf = pattern(len as u64, len);
        let r = disk.submit_read(sector, buf.clone()).unwrap_err();
        assert_eq!((r.error, r.buf), (err, buf));
    }
    assert_eq!(disk.discard(end, 1, false), Err(IoError::OutOfRange));
    assert_eq!(disk.outstanding(), 0);
}

#[test]
fn a_batch_of_submits_costs_one_notification() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let cfg = Config {
        max_queues: 1,
        ..Config::default()
    };
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    let before = be.stats().notifications_received;
    let mut tokens = Vec::new();
    for i in 0..32u64 {
        tokens.push(disk.submit_write(i * 8, pattern(i, 4096)).unwrap());
    }
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(be.stats().notifications_received - before, 1);
    let mut seen = Vec::new();
    while seen.len() < 32 {
        match disk.poll() {
            Some(c) => {
                assert_eq!(c.result, Ok(()));
                assert_eq!(
                    c.buf.as_deref(),
                    Some(&pattern(c.token.as_u64() - tokens[0].as_u64(), 4096)[..])
                );
                seen.push(c.token);
            }
            None => {
                let _ = tb.xen().run_until_idle();
            }
        }
    }
    seen.sort();
    assert_eq!(seen, tokens);
    assert!(be.stats().max_requests_per_wakeup >= 32);
}

#[test]
fn a_full_ring_queues_requests_in_the_driver_and_sends_them_in_order() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.max_ring_page_order = Some(0);
    cfg.max_queues = Some(1);
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.update_faults(|f| f.delay_ns = 1_000_000);
    // Twice what the 32 slots hold: the rest waits in the driver.
    let mut tokens = Vec::new();
    for n in 0..64u64 {
        let data = pattern(n, 512);
        tokens.push(disk.submit_write(n, data).expect("accepted"));
    }
    disk.kick();
    assert_eq!(disk.in_flight(), 32, "the ring is full");
    assert_eq!(disk.outstanding(), 64);
    let mut done = Vec::new();
    while done.len() < 64 {
        match disk.poll() {
            Some(c) => {
                assert_eq!(c.result, Ok(()));
                done.push(c.token);
            }
            None => {
                let _ = tb.hal_wait(&disk);
            }
        }
    }
    assert_eq!(done, tokens, "completed in submission order");
    assert_eq!(be.stats().writes, 64);
    for n in 0..64u64 {
        assert_eq!(be.disk_read(n * 512, 512).unwrap(), pattern(n, 512));
    }
    assert_eq!(disk.outstanding(), 0);
}

#[test]
fn the_non_blocking_api_waits_on_the_device_ports() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let cfg = Config {
        max_queues: 2,
        ..Config::default()
    };
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    let ports = disk.ports();
    assert_eq!(ports.len(), disk.info().negotiated.queues as usize);
    assert_eq!(ports.len(), 2);
    assert!(ports[0] != ports[1] && ports.iter().all(|p| p.0 != 0));

    // Nothing in flight: the wait runs to its deadline and says so.
    let deadline = tb.xen().now_ns() + 1_000_000;
    assert_eq!(disk.wait(deadline), Err(IoError::Timeout));
    assert!(tb.xen().now_ns() >= deadline);

    // A slow backend: the wait ends on the response's event, long before
    // its deadline, and the completion is then there to poll.
    be.update_faults(|f| f.delay_ns = 5_000_000);
    let t = disk.submit_read(8, vec![0; 4096]).unwrap();
    disk.kick();
    assert!(disk.poll().is_none());
    let start = tb.xen().now_ns();
    let deadline = start + 1_000_000_000;
    let mut c = None;
    while c.is_none() {
        assert_eq!(disk.wait(deadline), Ok(()));
        c = disk.poll();
    }
    let c = c.unwrap();
    assert_eq!((c.token, c.result), (t, Ok(())));
    let now = tb.xen().now_ns();
    assert!(now >= start + 5_000_000 && now < deadline, "woke at {now}");

    disk.close().unwrap();
    assert!(disk.ports().is_empty());
    // Nothing to wait for on a closed device: it says so instead of
    // returning at once for ever.
    assert_eq!(
        disk.wait(tb.xen().now_ns() + 1_000_000),
        Err(IoError::Closed)
    );
}

trait Waiter {
    fn hal_wait(&self, disk: &SimDisk<'_>) -> Result<(), HalError>;
}

impl Waiter for Testbed {
    fn hal_wait(&self, _disk: &SimDisk<'_>) -> Result<(), HalError> {
        let deadline = self.xen().now_ns() + 10_000_000;
        self.xen().wait_until(Some(deadline), || false)
    }
}

fn hostile(fault: impl FnOnce(&mut Faults), expect: Violation) {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.update_faults(fault);
    let before = pattern(0xbad, 8192);
    let t = disk.submit_read(0, before.clone()).unwrap();
    let t2 = disk.submit_read(16, before.clone()).unwrap();
    let mut got = Vec::new();
    for _ in 0..1000 {
        match disk.poll() {
            Some(c) => got.push(c),
            None if got.len() == 2 => break,
            None => {
                let _ = tb.xen().run_until_idle();
            }
        }
    }
    let cause = Broken::Protocol(expect);
    assert_eq!(disk.state(), DeviceState::Broken(cause));
    assert_eq!(got.len(), 2, "every in-flight request completed");
    let mut tokens: Vec<_> = got.iter().map(|c| c.token).collect();
    tokens.sort();
    assert_eq!(tokens, vec![t, t2], "no stranger token completed");
    for c in &got {
        assert_eq!(c.result, Err(IoError::Broken(cause)), "carries the cause");
        assert_eq!(
            c.buf.as_deref(),
            Some(&before[..]),
            "caller buffer untouched"
        );
    }
    assert_eq!(
        disk.submit_read(0, vec![0; 512]).unwrap_err().error,
        IoError::Broken(cause)
    );
}

/// The cause a broken device keeps.
fn cause(state: DeviceState) -> Broken {
    match state {
        DeviceState::Broken(cause) => cause,
        s => panic!("the device is {s:?}, not broken"),
    }
}

#[test]
fn a_response_with_an_id_out_of_range_breaks_the_device() {
    hostile(
        |f| f.bad_id = Some(BadId::OutOfRange),
        Violation::BadId(u64::MAX),
    );
}

#[test]
fn a_response_producer_jump_breaks_the_device() {
    // The jump target depends on the ring; check the kind of violation.
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.update_faults(|f| f.rsp_prod_jump = Some(1000));
    let t = disk.submit_read(0, vec![7; 4096]).unwrap();
    let mut got = None;
    for _ in 0..100 {
        if let Some(c) = disk.poll() {
            got = Some(c);
            break;
        }
        let _ = tb.xen().run_until_idle();
    }
    let c = got.expect("completion");
    let cause = cause(disk.state());
    assert!(matches!(
        cause,
        Broken::Protocol(Violation::ProducerOverrun { .. })
    ));
    assert_eq!((c.token, c.result), (t, Err(IoError::Broken(cause))));
}

#[test]
fn a_wrong_operation_breaks_the_device() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.update_faults(|f| f.wrong_operation = true);
    let t = disk.submit_read(0, vec![7; 4096]).unwrap();
    let c = loop {
        if let Some(c) = disk.poll() {
            break c;
        }
        let _ = tb.xen().run_until_idle();
    };
    let cause = cause(disk.state());
    assert!(matches!(
        cause,
        Broken::Protocol(Violation::WrongOperation { .. })
    ));
    assert_eq!(
        (c.token, c.result, c.buf),
        (t, Err(IoError::Broken(cause)), Some(vec![7; 4096]))
    );
}

#[test]
fn an_unknown_status_breaks_the_device() {
    hostile(
        |f| f.unknown_status = Some(42),
        Violation::UnknownStatus(42),
    );
}

#[test]
fn a_duplicate_response_breaks_the_device() {
    // Two requests in one batch; the backend answers the first, then sends
    // the first one's id again instead of the second's.
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let cfg = Config {
        max_queues: 1,
        ..Config::default()
    };
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    be.update_faults(|f| f.bad_id = Some(BadId::NotInFlight));
    let a = disk.submit_read(0, vec![1; 4096]).unwrap();
    let b = disk.submit_read(8, vec![2; 4096]).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        while let Some(c) = disk.poll() {
            got.push(c);
        }
        let _ = tb.xen().run_until_idle();
    }
    let cause = cause(disk.state());
    assert!(
        matches!(cause, Broken::Protocol(Violation::NotInFlight(_))),
        "{cause:?}"
    );
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].token, got[0].result), (a, Ok(())));
    assert_eq!(
        (got[1].token, got[1].result, got[1].buf.clone()),
        (b, Err(IoError::Broken(cause)), Some(vec![2; 4096]))
    );
}

#[test]
fn io_errors_are_reported_per_request() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.update_faults(|f| f.io_errors = 1);
    let mut buf = vec![3; 4096];
    assert_eq!(disk.read(0, &mut buf), Err(IoError::Backend));
    assert_eq!(buf, vec![3; 4096], "a failed read leaves the buffer alone");
    disk.read(0, &mut buf).unwrap();
    assert_eq!(disk.state(), DeviceState::Connected);
}

#[test]
fn a_dead_backend_times_out_within_the_bound() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let cfg = Config {
        io_timeout_ns: 2_000_000_000,
        ..Config::default()
    };
    let guest = tb.guest();
    let mut disk = guest.probe(0, cfg).expect("probe");
    be.update_faults(|f| f.swallow_requests = true);
    let start = tb.xen().now_ns();
    let mut buf = vec![0; 4096];
    assert_eq!(disk.read(0, &mut buf), Err(IoError::Timeout));
    let waited = tb.xen().now_ns() - start;
    assert!(
        (2_000_000_000..3_000_000_000).contains(&waited),
        "waited {waited} ns"
    );
    assert_eq!(disk.state(), DeviceState::Broken(Broken::Timeout));
}

/// Requests in flight fail with `Aborted` when the backend closes
/// (`Recovery::Abort`; tests/replay.rs has the default, `Replay`).
const ABORT: Config = Config {
    recovery: Recovery::Abort,
    ..Config::DEFAULT
};

#[test]
fn backend_closing_mid_io_aborts_and_closes_cleanly() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, ABORT).expect("probe");
    be.update_faults(|f| f.closing_after = Some(2));
    let mut tokens = Vec::new();
    for i in 0..6u64 {
        tokens.push(disk.submit_write(i * 8, pattern(i, 4096)).unwrap());
    }
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(disk.check_backend(), Ok(BackendEvent::Closed));
    assert_eq!(disk.state(), DeviceState::Disconnected);
    let mut done = Vec::new();
    while let Some(c) = disk.poll() {
        done.push(c);
    }
    assert_eq!(done.len(), 6, "nothing hangs");
    assert!(done.iter().any(|c| c.result == Err(IoError::Aborted)));
    let fe_state = tb
        .xenstored()
        .read(
            DomId(0),
            &format!("/local/domain/1/device/vbd/{VDEV}/state"),
        )
        .unwrap();
    assert_eq!(fe_state, "6", "frontend went Closing then Closed");
    let (grants, ports, _) = guest.held();
    assert_eq!((grants, ports), (0, 0));
    assert_eq!(
        disk.submit_read(0, vec![0; 512]).unwrap_err().error,
        IoError::NotConnected
    );
}

#[test]
fn reconnect_after_the_backend_returns_picks_up_a_new_size() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, ABORT).expect("probe");
    disk.write(0, &pattern(1, 4096)).unwrap();
    be.update_faults(|f| f.closing_after = Some(0));
    let mut probe = vec![0; 512];
    assert_eq!(disk.read(0, &mut probe), Err(IoError::Aborted));
    assert_eq!(disk.state(), DeviceState::Disconnected);
    be.set_size_bytes(16 << 20).unwrap();
    disk.reconnect().expect("reconnect");
    assert_eq!(disk.state(), DeviceState::Connected);
    assert_eq!(disk.info().capacity_bytes, 16 << 20);
    let mut back = vec![0; 4096];
    disk.read(0, &mut back).unwrap();
    assert_eq!(
        back,
        pattern(1, 4096),
        "data survives, nothing replayed twice"
    );
    assert_eq!(be.stats().writes, 1);
}

#[test]
fn resize_while_connected_is_seen() {
    let tb = Testbed::new([small(BackendConfig::blkback())]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    be.set_size_bytes(32 << 20).unwrap();
    let _ = tb.xen().run_until_idle();
    assert_eq!(
        disk.check_backend(),
        Ok(BackendEvent::Resized {
            old_bytes: 8 << 20,
            new_bytes: 32 << 20
        })
    );
    assert_eq!(disk.sectors(), (32 << 20) / 512);
    disk.write((32 << 20) / 512 - 8, &pattern(2, 4096)).unwrap();
}

#[test]
fn close_gives_back_every_grant_port_and_page() {
    for cfg in [BackendConfig::blkback(), BackendConfig::qdisk()] {
        let tb = Testbed::new([small(cfg)]);
        let guest = tb.guest();
        let mut disk = guest.probe(0, Config::default()).expect("probe");
        disk.write(0, &pattern(5, 1 << 20)).unwrap();
        disk.flush().unwrap();
        assert_eq!(disk.close(), Ok(0));
        assert_eq!(disk.state(), DeviceState::Closed);
        assert_eq!(guest.held(), (0, 0, 0));
        assert_eq!(guest.grants().in_use(), 0);
    }
}

#[test]
fn a_grant_the_backend_keeps_mapped_breaks_the_device_and_is_quarantined() {
    let mut cfg = small(BackendConfig::blkback());
    cfg.persistent = false;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    disk.write(0, &pattern(1, 8192)).unwrap();
    be.update_faults(|f| f.keep_grants_mapped = true);
    // Without persistent grants, a page the backend keeps after answering
    // could still change under us: Linux's blkfront gives up on the device
    // (XSA-396), and so does this one.
    let r = disk.write(0, &pattern(2, 8192));
    let cause = cause(disk.state());
    assert!(matches!(cause, Broken::Protocol(Violation::StillMapped(_))));
    assert_eq!(
        r,
        Err(IoError::Broken(cause)),
        "the write carries the cause"
    );
    assert_eq!(disk.quarantined(), 2, "both pages are never reused");
    let mut back = vec![0; 8192];
    assert_eq!(disk.read(0, &mut back), Err(IoError::Broken(cause)));
    assert_eq!(
        back,
        vec![0; 8192],
        "nothing read into a broken device's buffer"
    );
    be.update_faults(|f| f.keep_grants_mapped = false);
    let _ = be.release_kept_grants();
    assert_eq!(
        disk.close(),
        Ok(0),
        "the quarantine frees what was unmapped"
    );
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn qdisk_with_direct_io_safe_that_never_connects_is_explained() {
    let mut cfg = small(BackendConfig::qdisk());
    cfg.direct_io_safe = Some(true);
    cfg.stall_with_direct_io_safe = true;
    let tb = Testbed::new([cfg]);
    let guest = tb.guest();
    let cfg = Config {
        connect_timeout_ns: 5_000_000_000,
        ..Config::default()
    };
    let err = guest.probe(0, cfg).expect_err("must not connect");
    assert_eq!(
        err.error,
        Error::Xenbus(XenbusError::StateTimeout {
            wanted: XenbusState::InitWait,
            seen: XenbusState::Initialising
        })
    );
    let stall = err.stall.expect("stall report");
    assert_eq!(stall.cause, StallCause::QdiskDirectIoSafe);
    assert_eq!(stall.direct_io_safe, DirectIoSafe::On);
    assert_eq!(stall.kind, BackendKind::Qdisk);
    let line = stall.disk_line();
    assert!(
        line.contains("type=qdisk mode=w connected=no backend-state=1 direct-io-safe=1 cause=qdisk-direct-io-safe"),
        "{line}"
    );
    assert_eq!(guest.held(), (0, 0, 0), "nothing leaked");
}

#[test]
fn enumerate_lists_every_disk() {
    let tb = Testbed::new([
        small(BackendConfig::blkback()),
        small(BackendConfig::qdisk()),
    ]);
    let guest = tb.guest();
    assert_eq!(
        BlockFront::<SimHal, _>::enumerate(guest.store()).unwrap(),
        vec![51712, 51728]
    );
}

#[test]
fn threaded_backend_moves_data_too() {
    let tb = Testbed::builder()
        .threaded()
        .disk(small(BackendConfig::blkback()))
        .build();
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, Config::default()).expect("probe");
    let data = pattern(11, 256 * 1024);
    disk.write(10, &data).unwrap();
    let mut back = vec![0; data.len()];
    disk.read(10, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(be.disk_read(10 * 512, data.len()).unwrap(), data);
    disk.close().unwrap();
    tb.xen().stop_threads();
}

/// Random reads and writes of random sizes and offsets, in both directions,
/// checked against an in-memory model of the disk.
#[test]
fn random_io_matches_a_model_of_the_disk() {
    for (personality, seed) in [
        (BackendConfig::blkback(), 1u64),
        (BackendConfig::qdisk(), 2),
    ] {
        let tb = Testbed::new([small(personality)]);
        let be = tb.backend(0);
        let guest = tb.guest();
        let mut disk = guest.probe(0, Config::default()).expect("probe");
        let size = (8usize << 20) as u64;
        let mut model = vec![0u8; size as usize];
        let mut x = seed;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for op in 0..300u64 {
            let big = next(8) == 0;
            let sectors = 1 + next(if big { 600 } else { 24 });
            let start = next(size / 512 - sectors);
            let len = (sectors * 512) as usize;
            let off = (start * 512) as usize;
            if next(2) == 0 {
                let data = pattern(op ^ seed << 32, len);
                disk.write(start, &data).unwrap();
                model[off..off + len].copy_from_slice(&data);
            } else {
                let mut buf = vec![0xa5; len];
                disk.read(start, &mut buf).unwrap();
                assert_eq!(
                    buf,
                    &model[off..off + len],
                    "op {op}: read {len} at {start}"
                );
            }
        }
        assert_eq!(be.disk_read(0, size as usize).unwrap(), model);
    }
}
