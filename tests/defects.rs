//! Defects a red team found in the block frontend at 8fed832, one test each
//! (`dNN_` = defect number). Every test states the behaviour expected once
//! the defect is fixed, so each one fails until then; the failure each one
//! shows at 8fed832 is in the comment above it.
//!
//! The error each test expects is named once, in the constants and helpers
//! below, so that the coming per-layer error types need one change each.
#![cfg(feature = "sim")]

mod common;
use common::pattern;

use xenblk::abi::blkif::BLKIF_RSP_EOPNOTSUPP;
use xenblk::blkfront::{
    BackendEvent, Broken, Completion, Config, DeviceState, IoError, Recovery, RequestToken,
};
use xenblk::error::{Error, Violation};
use xenblk::gnttab::GrantError;
use xenblk::hal::{DomId, GrantRef};
use xenblk::sim::blkback::{BackendConfig, SimBlkBackHandle};
use xenblk::sim::{Guest, SimConfig, SimDisk, SimXen, Testbed};
use xenblk::xenbus::{XenbusError, XenbusState};

// ----- what each test expects (change here when the error API changes) -----

/// d02: a blocking read whose backend goes Closing midway.
const D02_READ_CUT_SHORT: IoError = IoError::Aborted;
/// d03: blocking I/O reaching past the end of the disk.
const D03_PAST_THE_END: IoError = IoError::OutOfRange;
/// d04a: probe of a backend publishing `sector-size` = 1000.
const D04A_PROBE: Error = Error::Xenbus(XenbusError::MalformedKey("sector-size"));
/// d04b: probe of a backend whose hotplug script outlasts the connect bound.
const D04B_PROBE: Error = Error::Xenbus(XenbusError::StateTimeout {
    wanted: XenbusState::Connected,
    seen: XenbusState::InitWait,
});
/// d06: waiting on an idle device whose only event was already seen.
const D06_IDLE_WAIT: IoError = IoError::Timeout;
/// d07a: a request no ring could ever hold may fail, but not as back pressure.
/// Expected after the fix: success (the driver splits or queues it) or a
/// distinct "request too large" error. The data path has no ring-full error
/// any more; what is left that a caller could take for "try again later" is
/// running out of grants or memory.
fn d07a_acceptable(e: IoError) -> bool {
    !matches!(e, IoError::Grant(_) | IoError::Hal(_))
}
/// d08: `BLKIF_RSP_EOPNOTSUPP` answering a plain read (Linux: `BLK_STS_IOERR`).
const D08_READ_EOPNOTSUPP: IoError = IoError::Backend;
/// d10: probe of a backend publishing `sector-size` above 4096.
const D10_PROBE: Error = Error::Xenbus(XenbusError::MalformedKey("sector-size"));
/// d11a: probe with a `backend-id` that names no backend domain.
const D11A_PROBE: Error = Error::Xenbus(XenbusError::MalformedKey("backend-id"));
/// d11c: empty I/O on a closed device.
const D11C_CLOSED: IoError = IoError::Closed;
/// d11d: a read whose data grant the backend still maps after its response.
/// Expected after the fix: the request fails (Linux fails it and marks the
/// device broken); either of today's variants that say so will do.
fn d11d_acceptable(e: IoError) -> bool {
    matches!(
        e,
        IoError::Grant(GrantError::InUse(_))
            | IoError::Broken(Broken::Protocol(Violation::StillMapped(_)))
    )
}

// ----- the world: one guest, simulated backends, step mode ------------------

/// The guest's domain id (what a `Testbed` gives it unless told otherwise).
const GUEST: DomId = DomId(1);
/// What one queue with a one-page ring and no indirect descriptors holds:
/// 32 slots of 11 segments of 4 KiB (1408 KiB).
const RING_SLOTS: u64 = 32;
const RING_BYTES: usize = 32 * 11 * 4096;
/// `sectors` near the top of u64 that still fits when multiplied by 512.
const HUGE_SECTORS: u64 = (1 << 55) - 1;
/// The largest capacity the driver accepts: `i64::MAX` bytes (what a byte
/// offset can address), in 512-byte sectors.
const MAX_SECTORS: u64 = (i64::MAX as u64) / 512;
/// d01: a capacity beyond that bound.
const D01_HUGE: Error = Error::Xenbus(XenbusError::MalformedKey("sectors"));
const SENTINEL: u8 = 0xa5;
const CONNECT_TIMEOUT_NS: u64 = 2_000_000_000;

/// dom0 reads a key.
fn dom0_read(tb: &Testbed, path: &str) -> Option<String> {
    tb.xenstored().read_opt(DomId::DOM0, path).unwrap()
}

/// dom0 writes a key (a hostile or buggy backend, or the toolstack).
fn dom0_write(tb: &Testbed, path: &str, value: &str) {
    tb.xenstored().write(DomId::DOM0, path, value).unwrap();
}

/// The ring keys (`ring-ref*`, and those of `queue-*`) under `fe`, with
/// their values.
fn ring_refs(tb: &Testbed, fe: &str) -> Vec<(String, u32)> {
    let xsd = tb.xenstored();
    let mut dirs = vec![fe.to_string()];
    for n in xsd.directory(DomId::DOM0, fe).unwrap_or_default() {
        if n.starts_with("queue-") {
            dirs.push(format!("{fe}/{n}"));
        }
    }
    let mut out = Vec::new();
    for d in dirs {
        for n in xsd.directory(DomId::DOM0, &d).unwrap_or_default() {
            if n.starts_with("ring-ref") {
                let v = dom0_read(tb, &format!("{d}/{n}")).unwrap_or_default();
                out.push((format!("{d}/{n}"), v.trim().parse().unwrap_or(0)));
            }
        }
    }
    out
}

/// After a failed probe: the frontend is Closed, advertises no ring, and
/// holds nothing it held not before (but pages the backend still maps).
fn torn_down(guest: &Guest<'_>, be: &SimBlkBackHandle) {
    let tb = guest.testbed();
    let fe = be.frontend_path();
    let state = dom0_read(tb, &format!("{fe}/state"));
    assert_eq!(
        state.as_deref(),
        Some("6"),
        "frontend state after the failed probe"
    );
    let keys = tb
        .xenstored()
        .directory(DomId::DOM0, &fe)
        .unwrap_or_default();
    let stale: Vec<_> = keys
        .iter()
        .filter(|k| k.starts_with("ring-ref") || k.starts_with("queue-") || *k == "event-channel")
        .collect();
    assert!(stale.is_empty(), "frontend still advertises {stale:?}");
    let a = tb.accounting();
    let mapped = a.grants_mapped_by_others - guest.base().grants_mapped_by_others;
    let (grants, ports, pages) = guest.held();
    assert_eq!(ports, 0, "event channels left open");
    assert!(
        grants <= mapped && pages <= mapped,
        "{grants} grants, {pages} pages held, {mapped} mapped"
    );
}

fn blkback() -> BackendConfig {
    let mut cfg = BackendConfig::blkback();
    cfg.disk_bytes = 4 << 20;
    cfg.hotplug_delay_ns = 0;
    cfg
}

fn qdisk() -> BackendConfig {
    let mut cfg = BackendConfig::qdisk();
    cfg.disk_bytes = 4 << 20;
    cfg
}

/// One queue, a one-page ring, no indirect descriptors.
fn one_queue() -> Config {
    Config {
        max_queues: 1,
        max_ring_page_order: 0,
        max_indirect_segments: 0,
        io_timeout_ns: 1_000_000_000,
        connect_timeout_ns: CONNECT_TIMEOUT_NS,
        ..Config::default()
    }
}

/// Makes `be` refuse the ring the frontend will offer: it advertises ring
/// order 1 but (configured with `max_ring_page_order = Some(0)`) fails the
/// connection on it (`xenbus_dev_fatal`, backend Closing) without mapping
/// anything. Call after the backend published its InitWait keys.
fn refuse_ring(tb: &Testbed, be: &SimBlkBackHandle) {
    assert_eq!(be.config().max_ring_page_order, Some(0));
    dom0_write(
        tb,
        &format!("{}/max-ring-page-order", be.backend_path()),
        "1",
    );
}

/// Polls (and waits) until `t` completes.
fn complete(xen: &SimXen, disk: &mut SimDisk<'_>, t: RequestToken) -> Completion {
    for _ in 0..10_000 {
        match disk.poll() {
            Some(c) if c.token == t => return c,
            Some(c) => panic!("a stranger completed: {:?}", c.token),
            None => {
                let _ = disk.wait(xen.now_ns() + 10_000_000);
            }
        }
    }
    panic!("{t:?} never completed");
}

/// A write and a read through `disk`, checked against the backend's disk.
fn roundtrip(disk: &mut SimDisk<'_>, be: &SimBlkBackHandle) {
    let data = pattern(77, 8192);
    disk.write(8, &data).expect("write");
    assert_eq!(be.disk_read(8 * 512, data.len()).unwrap(), data);
    let mut back = vec![0; data.len()];
    disk.read(8, &mut back).expect("read");
    assert_eq!(back, data);
}

/// Discards the last `n` sectors; the backend must see no range outside
/// them. Returns whether a discard reached the backend.
fn discard_tail_stays_in_range(disk: &mut SimDisk<'_>, be: &SimBlkBackHandle, n: u64) -> bool {
    let first = disk.sectors() - n;
    let before = be.stats().discards;
    // A typed error is acceptable; a panic or a wider range is not.
    if disk.discard(first, n, false).is_ok() && be.stats().discards > before {
        let (s, len) = be.stats().last_discard.expect("a discard was taken");
        let inside = s >= first && s.checked_add(len).is_some_and(|e| e <= first + n);
        assert!(
            inside,
            "discard of [{first}, +{n}) reached the backend as [{s}, {s}+{len})"
        );
        return true;
    }
    false
}

/// Discards the last sector; the backend must see no range outside it.
fn discard_last_sector_stays_in_range(disk: &mut SimDisk<'_>, be: &SimBlkBackHandle) {
    discard_tail_stays_in_range(disk, be, 1);
}

// ----- the defects ----------------------------------------------------------

/// At 8fed832: panics, "attempt to multiply with overflow" (submit_discard);
/// without overflow checks the backend gets a whole-disk discard [0, 2^55-8).
/// Now a capacity past `i64::MAX` bytes is refused at connect, and at the
/// largest accepted size a discard of the last sector stays inside it.
#[test]
fn d01a_discard_at_the_end_of_a_huge_disk_stays_in_range() {
    let mut cfg = blkback();
    cfg.null_disk = true;
    cfg.disk_bytes = HUGE_SECTORS * 512;
    let tb = Testbed::new([cfg.clone()]);
    let guest = tb.guest();
    let r = guest.probe(0, one_queue());
    assert_eq!(r.err().map(|e| e.error), Some(D01_HUGE));
    assert_eq!(guest.held(), (0, 0, 0), "the refused probe took nothing");
    cfg.disk_bytes = MAX_SECTORS * 512;
    let i = tb.add_disk(cfg).expect("backend");
    let be = tb.backend(i);
    let mut disk = guest.probe(i, one_queue()).expect("probe");
    assert_eq!(disk.sectors(), MAX_SECTORS);
    discard_last_sector_stays_in_range(&mut disk, &be);
    assert!(
        discard_tail_stays_in_range(&mut disk, &be, 17),
        "a whole unit was sent"
    );
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: panics, "attempt to multiply with overflow" (submit_discard);
/// without overflow checks the backend gets a whole-disk discard [0, 2^55-8).
/// Now a resize past the bound is refused and changes nothing; a resize to
/// the bound is taken, and the discard at its end stays inside.
#[test]
fn d01b_discard_at_the_end_after_a_resize_to_a_huge_disk_stays_in_range() {
    let mut cfg = blkback();
    cfg.null_disk = true;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    let small = disk.sectors();
    be.set_size_bytes(HUGE_SECTORS * 512).unwrap();
    assert_eq!(disk.check_backend(), Err(D01_HUGE));
    assert_eq!(disk.sectors(), small, "a refused resize changes nothing");
    discard_last_sector_stays_in_range(&mut disk, &be);
    be.set_size_bytes(MAX_SECTORS * 512).unwrap();
    let ev = disk.check_backend().expect("resize");
    assert!(matches!(ev, BackendEvent::Resized { .. }), "{ev:?}");
    assert_eq!(disk.sectors(), MAX_SECTORS);
    discard_last_sector_stays_in_range(&mut disk, &be);
    assert!(
        discard_tail_stays_in_range(&mut disk, &be, 17),
        "a whole unit was sent"
    );
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "the failed read changed the caller's buffer from byte 0".
#[test]
fn d02_a_failed_blocking_read_leaves_the_buffer_unchanged() {
    let tb = Testbed::new([blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    // Aborted, not replayed: the read must fail for the test to look.
    let cfg = Config {
        recovery: Recovery::Abort,
        ..one_queue()
    };
    let mut disk = guest.probe(0, cfg).expect("probe");
    let len = 2 << 20;
    be.disk_write(0, &pattern(2, len)).unwrap();
    // The first chunk (the ring's 32 requests) completes; the backend goes
    // Closing when it takes the first request of the second chunk.
    be.update_faults(|f| f.closing_after = Some(RING_SLOTS + 1));
    let mut buf = vec![SENTINEL; len];
    assert_eq!(disk.read(0, &mut buf), Err(D02_READ_CUT_SHORT));
    let changed = buf.iter().position(|&b| b != SENTINEL);
    assert_eq!(
        changed, None,
        "the failed read changed the caller's buffer from byte"
    );
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "an out-of-range write sent 32 of them" (its first chunk).
#[test]
fn d03_out_of_range_blocking_io_sends_nothing() {
    let tb = Testbed::new([blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    let old = pattern(3, 4 << 20);
    be.disk_write(0, &old).unwrap();
    let len = 2 << 20; // more than one blocking chunk
    let start = disk.sectors() - (len / 512) as u64 + 1; // ends one sector past the end
    let s0 = be.stats();
    assert_eq!(disk.write(start, &pattern(4, len)), Err(D03_PAST_THE_END));
    let sent = be.stats().writes - s0.writes;
    assert_eq!(sent, 0, "an out-of-range write sent {sent} of them");
    assert!(be.disk_read(0, 4 << 20).unwrap() == old, "the disk changed");
    let mut buf = vec![SENTINEL; len];
    assert_eq!(disk.read(start, &mut buf), Err(D03_PAST_THE_END));
    let sent = be.stats().reads - s0.reads;
    assert_eq!(sent, 0, "an out-of-range read sent {sent} of them");
    assert!(buf.iter().all(|&b| b == SENTINEL), "the buffer changed");
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: frontend state after the failed probe is "3" (Initialised).
#[test]
fn d04a_a_probe_failing_on_a_hostile_sector_size_tears_down() {
    let tb = Testbed::new([qdisk()]);
    let be = tb.backend(0);
    tb.xen().run_until_idle(); // qdisk publishes its geometry at InitWait
    let key = format!("{}/sector-size", be.backend_path());
    dom0_write(&tb, &key, "1000");
    let guest = tb.guest();
    let err = guest
        .probe(0, one_queue())
        .expect_err("sector-size 1000 must fail the probe");
    assert_eq!(err.error, D04A_PROBE);
    torn_down(&guest, &be);
    // Once the key is sane again, probing again connects.
    dom0_write(&tb, &key, "512");
    let mut disk = guest.probe(0, one_queue()).expect("retry");
    roundtrip(&mut disk, &be);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: frontend state after the failed probe is "3" (Initialised).
#[test]
fn d04b_a_probe_timing_out_on_a_slow_hotplug_script_tears_down() {
    let mut cfg = blkback();
    cfg.hotplug_delay_ns = CONNECT_TIMEOUT_NS * 3 / 2;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let err = guest
        .probe(0, one_queue())
        .expect_err("the hotplug script outlasts the connect bound");
    assert_eq!(err.error, D04B_PROBE);
    torn_down(&guest, &be);
    // The script finishes; probing again connects.
    tb.xen().advance_clock(CONNECT_TIMEOUT_NS);
    tb.xen().run_until_idle();
    let mut disk = guest.probe(0, one_queue()).expect("retry");
    roundtrip(&mut disk, &be);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "through disk A's stale .../ring-ref1, dom0 maps disk B's
/// live ring".
#[test]
fn d05_a_failed_probe_leaves_no_ring_ref_naming_another_disks_ring() {
    let mut cfg = blkback();
    cfg.max_ring_page_order = Some(0);
    let tb = Testbed::new([cfg, blkback()]);
    let (be_a, be_b) = (tb.backend(0), tb.backend(1));
    tb.xen().run_until_idle();
    refuse_ring(&tb, &be_a);
    let guest = tb.guest();
    let cfg_a = Config {
        max_ring_page_order: 1,
        ..one_queue()
    };
    assert!(guest.probe(0, cfg_a).is_err());
    let mut disk_b = guest.probe(1, one_queue()).expect("B");
    let b_ring: Vec<u64> = ring_refs(&tb, &be_b.frontend_path())
        .iter()
        .map(|(_, r)| {
            tb.xen()
                .map_grant(DomId::DOM0, tb.domid(), GrantRef(*r), true)
                .unwrap()
                .gfn()
                .0
        })
        .collect();
    let stale = ring_refs(&tb, &be_a.frontend_path());
    for (key, r) in &stale {
        if let Ok(m) = tb
            .xen()
            .map_grant(DomId::DOM0, tb.domid(), GrantRef(*r), true)
        {
            let gfn = m.gfn().0;
            assert!(
                !b_ring.contains(&gfn),
                "through disk A's stale {key}={r}, dom0 maps disk B's live ring"
            );
        }
    }
    assert!(stale.is_empty(), "disk A still advertises {stale:?}");
    roundtrip(&mut disk_b, &be_b);
    assert_eq!(disk_b.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "round 0: wait returned Ok(()) at once".
#[test]
fn d06_one_event_on_an_idle_queue_does_not_make_wait_spin() {
    let tb = Testbed::new([blkback()]);
    let guest = tb.guest();
    let cfg = Config {
        max_queues: 2,
        ..one_queue()
    };
    let mut disk = guest.probe(0, cfg).expect("probe");
    let ports = disk.ports();
    assert_eq!(ports.len(), 2);
    let deadline = tb.xen().now_ns() + 1_000_000;
    assert_eq!(
        disk.wait(deadline),
        Err(D06_IDLE_WAIT),
        "baseline: an idle wait times out"
    );
    tb.xen().inject_event(tb.domid(), ports[1]).unwrap();
    for round in 0..3 {
        while disk.poll().is_some() {}
        let deadline = tb.xen().now_ns() + 1_000_000;
        let r = disk.wait(deadline);
        let now = tb.xen().now_ns();
        assert!(
            r == Err(D06_IDLE_WAIT) && now >= deadline,
            "round {round}: wait returned {r:?} at {now}, deadline {deadline}"
        );
    }
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "an idle device refuses a 2097152-byte read with RingFull".
#[test]
fn d07a_a_request_larger_than_every_ring_is_not_ring_full() {
    let tb = Testbed::new([blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    assert_eq!(disk.info().negotiated.ring_slots as u64, RING_SLOTS);
    let len = 2 << 20;
    assert!(len > RING_BYTES);
    let data = pattern(7, len);
    be.disk_write(0, &data).unwrap();
    match disk.submit_read(0, vec![0; len]) {
        Ok(t) => {
            let c = complete(tb.xen(), &mut disk, t);
            assert_eq!(c.result, Ok(()));
            assert!(c.buf.as_deref() == Some(&data[..]), "wrong data");
        }
        Err(r) => assert!(
            d07a_acceptable(r.error),
            "an idle device refuses a {len}-byte read with {:?}: retrying can never succeed",
            r.error
        ),
    }
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: the blocking read returns Err(RingFull).
#[test]
fn d07b_a_blocking_read_of_ring_capacity_succeeds_beside_an_outstanding_request() {
    let tb = Testbed::new([blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    let data = pattern(8, 4 << 20);
    be.disk_write(0, &data).unwrap();
    let t = disk
        .submit_read(0, vec![0; 4096])
        .expect("one small request");
    let mut buf = vec![0; RING_BYTES];
    assert_eq!(
        disk.read(16, &mut buf),
        Ok(()),
        "blocking read beside one outstanding request"
    );
    assert!(buf == data[16 * 512..16 * 512 + RING_BYTES], "wrong data");
    let c = complete(tb.xen(), &mut disk, t);
    assert_eq!(c.result, Ok(()));
    assert!(c.buf.as_deref() == Some(&data[..4096]), "wrong data");
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: the read completes with Err(Unsupported(Indirect)).
#[test]
fn d08_eopnotsupp_on_a_plain_read_is_an_io_error() {
    let tb = Testbed::new([blkback()]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    assert_eq!(disk.info().negotiated.indirect_segments, 0);
    be.update_faults(|f| f.hold_responses = true);
    let t = disk.submit_read(0, vec![SENTINEL; 512]).unwrap();
    disk.kick();
    tb.xen().run_until_idle();
    assert!(be.release_held(tb.xen(), 0, |r| r.status = BLKIF_RSP_EOPNOTSUPP));
    let c = disk.poll().expect("the read completes");
    assert_eq!(
        (c.token, c.result),
        (t, Err(D08_READ_EOPNOTSUPP)),
        "a plain 512-byte read answered EOPNOTSUPP on a device without indirect"
    );
    assert_eq!(c.buf, Some(vec![SENTINEL; 512]));
    assert!(
        disk.info().disabled.is_empty(),
        "{:?}",
        disk.info().disabled
    );
    be.update_faults(|f| f.hold_responses = false);
    roundtrip(&mut disk, &be);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "read 1 of 1 MiB on an idle device: Err(GrantRefsExhausted)".
#[test]
fn d09_grant_exhaustion_clears_on_an_idle_device() {
    // One grant frame: 504 usable references, room for one queue's pages for
    // a 1 MiB read (257 grants) but not for two such pools kept for good.
    // blkback maps every grant of a persistent connection persistently (up
    // to 1056 per ring), so the frontend cannot revoke pool pages to make
    // room: the fix has to bound what each queue grants (here below ~250).
    let tb = Testbed::builder()
        .sim_config(SimConfig {
            grant_frames: 1,
            ..SimConfig::default()
        })
        .disk(blkback())
        .build();
    let be = tb.backend(0);
    let guest = tb.guest();
    let cfg = Config {
        max_queues: 2,
        max_ring_page_order: 0,
        ..Config::default()
    };
    let mut disk = guest.probe(0, cfg).expect("probe");
    let n = &disk.info().negotiated;
    assert!(
        n.persistent && n.queues == 2 && n.indirect_segments == 256,
        "{n:?}"
    );
    let data = pattern(9, 1 << 20);
    be.disk_write(0, &data).unwrap();
    for i in 0..6 {
        let mut buf = vec![0; 1 << 20];
        let r = disk.read(0, &mut buf);
        assert_eq!(
            r,
            Ok(()),
            "read {i} of 1 MiB on an idle device ({} refs)",
            guest.grants().capacity()
        );
        assert!(buf == data, "read {i}: wrong data");
    }
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: "probe accepted sector-size 8192".
#[test]
fn d10_probe_refuses_a_sector_size_above_4096() {
    for ss in ["8192", "2147483648"] {
        let tb = Testbed::new([qdisk()]);
        let be = tb.backend(0);
        tb.xen().run_until_idle(); // qdisk publishes its geometry at InitWait
        dom0_write(&tb, &format!("{}/sector-size", be.backend_path()), ss);
        let guest = tb.guest();
        match guest.probe(0, one_queue()) {
            Ok(d) => panic!(
                "probe accepted sector-size {ss} (sector_size {})",
                d.sector_size()
            ),
            Err(e) => assert_eq!(e.error, D10_PROBE, "sector-size {ss}"),
        }
        torn_down(&guest, &be);
    }
}

/// At 8fed832: every one of these ids gets StateTimeout { Connected, seen
/// Closing } after the whole connect bound: the rings were granted to that
/// domain, dom0 could not map them.
#[test]
fn d11a_probe_refuses_a_backend_id_that_names_no_backend() {
    for id in [0x7ff0u16, 0xffff, GUEST.0] {
        let tb = Testbed::builder().guest(GUEST).disk(blkback()).build();
        let fe = tb.backend(0).frontend_path();
        dom0_write(&tb, &format!("{fe}/backend-id"), &id.to_string());
        let guest = tb.guest();
        let err = guest
            .probe(0, one_queue())
            .expect_err("a backend-id naming no backend must fail the probe");
        assert_eq!(err.error, D11A_PROBE, "backend-id {id}");
        assert_eq!(guest.held(), (0, 0, 0), "backend-id {id}");
        assert_eq!(ring_refs(&tb, &fe), vec![], "backend-id {id}");
    }
}

/// At 8fed832: "probe gave up 10000000000 ns after the backend went Closing".
#[test]
fn d11b_probe_gives_up_soon_after_the_backend_goes_closing() {
    let mut cfg = blkback();
    cfg.max_ring_page_order = Some(0);
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    tb.xen().run_until_idle();
    refuse_ring(&tb, &be);
    let guest = tb.guest();
    let cfg = Config {
        max_ring_page_order: 1,
        connect_timeout_ns: 10_000_000_000,
        ..one_queue()
    };
    let start = tb.xen().now_ns();
    assert!(guest.probe(0, cfg).is_err());
    let took = tb.xen().now_ns() - start;
    assert!(be.last_error().is_some(), "the backend refused the ring");
    assert!(
        took < cfg.connect_timeout_ns / 10,
        "probe gave up {took} ns after the backend went Closing"
    );
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: read of an empty buffer on a closed device returns Ok(()).
#[test]
fn d11c_empty_io_on_a_closed_device_is_refused() {
    let tb = Testbed::new([blkback()]);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(disk.read(0, &mut []), Err(D11C_CLOSED), "empty read");
    assert_eq!(disk.write(0, &[]), Err(D11C_CLOSED), "empty write");
    assert_eq!(guest.held(), (0, 0, 0));
}

/// At 8fed832: the read returns Ok(()) with data from a page the backend
/// can still write.
#[test]
fn d11d_a_read_whose_grant_cannot_be_revoked_fails_and_breaks_the_device() {
    let mut cfg = blkback();
    cfg.persistent = false;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).expect("probe");
    assert!(!disk.info().negotiated.persistent);
    be.disk_write(0, &pattern(11, 4096)).unwrap();
    be.update_faults(|f| f.keep_grants_mapped = true);
    let mut buf = vec![SENTINEL; 4096];
    let r = disk.read(0, &mut buf);
    assert!(
        matches!(r, Err(e) if d11d_acceptable(e)),
        "read of a still-mapped page: {r:?}"
    );
    assert!(buf.iter().all(|&b| b == SENTINEL), "the buffer changed");
    assert!(
        disk.quarantined() > 0,
        "the still-mapped page is quarantined"
    );
    assert!(
        matches!(disk.state(), DeviceState::Broken(_)),
        "{:?}",
        disk.state()
    );
    // Closed, the backend unmaps everything and nothing is left.
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}
