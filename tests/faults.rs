//! Fault injection: one scenario per fault of issue 5, each driven through
//! the simulator (blkback in its normal or puppet mode, xenstored's fault
//! hooks), each checking that the driver survives it and gives back what it
//! holds: backend dead mid-I/O, backend Closing mid-I/O, a grant revoked
//! while the backend still maps it, `EAGAIN` storms on transactions,
//! spurious event storms, a full ring that queues in the driver, and xenstore
//! connection errors.
#![cfg(feature = "sim")]

use xenblk::abi::blkif::{BlkifResponse, BLKIF_OP_READ, BLKIF_RSP_OKAY};
use xenblk::blkfront::{BackendEvent, Broken, Config, DeviceState, IoError, Recovery};
use xenblk::error::{Error, Violation};
use xenblk::hal::DomId;
use xenblk::sim::blkback::BackendConfig;
use xenblk::sim::{SimDisk, Testbed};
use xenblk::xenbus::XenbusError;
use xenblk::xenstore::XsError;

/// The disk of every scenario.
fn backend(persistent: bool) -> BackendConfig {
    let mut cfg = BackendConfig::blkback();
    // Miri runs a few of these: a smaller disk is much cheaper there.
    cfg.disk_bytes = if cfg!(miri) { 1 << 20 } else { 4 << 20 };
    cfg.persistent = persistent;
    cfg.hotplug_delay_ns = 0;
    cfg
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31) ^ (i as u64 / 7)) as u8)
        .collect()
}

fn one_queue() -> Config {
    Config {
        max_queues: 1,
        max_ring_page_order: 0,
        io_timeout_ns: 1_000_000_000,
        connect_timeout_ns: 2_000_000_000,
        ..Config::default()
    }
}

fn drain(disk: &mut SimDisk<'_>) -> Vec<xenblk::blkfront::Completion> {
    std::iter::from_fn(|| disk.poll()).collect()
}

#[test]
fn backend_dead_mid_io_times_out_within_the_bound() {
    let tb = Testbed::new([backend(true)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).unwrap();
    disk.write(0, &pattern(1, 8192)).unwrap();
    be.update_faults(|f| f.swallow_requests = true);
    let queued: Vec<_> = (0..5u64)
        .map(|i| disk.submit_read(i * 8, vec![0xcc; 4096]).unwrap())
        .collect();
    let start = tb.xen().now_ns();
    let mut buf = vec![0x5a; 4096];
    assert_eq!(disk.read(0, &mut buf), Err(IoError::Timeout));
    let waited = tb.xen().now_ns() - start;
    assert!(
        (1_000_000_000..1_100_000_000).contains(&waited),
        "timed out after {waited} ns, bound 1 s"
    );
    assert_eq!(
        buf,
        vec![0x5a; 4096],
        "a timed-out read leaves the buffer alone"
    );
    assert_eq!(disk.state(), DeviceState::Broken(Broken::Timeout));
    let done = drain(&mut disk);
    assert_eq!(
        done.len(),
        queued.len(),
        "every request in flight completes"
    );
    for c in done {
        assert_eq!(c.result, Err(IoError::Timeout));
        assert_eq!(c.buf, Some(vec![0xcc; 4096]));
    }
    assert_eq!(disk.in_flight(), 0);
    assert_eq!(
        disk.submit_read(0, vec![0; 512]).unwrap_err().error,
        IoError::Broken(Broken::Timeout)
    );
    let _ = disk.close();
    guest.assert_only_mapped_grants_left();
    assert_eq!(
        guest.held().0,
        0,
        "the dead backend mapped nothing: all revoked"
    );
}

#[test]
fn backend_closing_mid_io_aborts_then_reconnects() {
    let tb = Testbed::new([backend(true)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let cfg = Config {
        recovery: Recovery::Abort,
        ..one_queue()
    };
    let mut disk = guest.probe(0, cfg).unwrap();
    be.update_faults(|f| f.closing_after = Some(3));
    let tokens: Vec<_> = (0..8u64)
        .map(|i| disk.submit_write(i * 8, pattern(i, 4096)).unwrap())
        .collect();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(disk.check_backend(), Ok(BackendEvent::Closed));
    assert_eq!(disk.state(), DeviceState::Disconnected);
    let done = drain(&mut disk);
    assert_eq!(done.len(), tokens.len(), "nothing hangs");
    let aborted = done
        .iter()
        .filter(|c| c.result == Err(IoError::Aborted))
        .count();
    assert!(aborted >= 6, "{aborted} of 8 aborted");
    let (grants, ports, _) = guest.held();
    assert_eq!(
        (grants, ports),
        (0, 0),
        "everything given back while closed"
    );
    // The backend comes back (frontend Initialising -> backend InitWait).
    disk.reconnect().expect("reconnect");
    disk.write(0, &pattern(9, 4096)).unwrap();
    let mut back = vec![0; 4096];
    disk.read(0, &mut back).unwrap();
    assert_eq!(back, pattern(9, 4096));
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn a_grant_revoked_while_mapped_is_quarantined_never_reused_and_reported() {
    let tb = Testbed::new([backend(false)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).unwrap();
    be.update_faults(|f| f.hold_responses = true);
    let t = disk.submit_read(0, vec![0xcc; 8192]).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(
        be.held_responses().len(),
        1,
        "the backend holds the request"
    );
    // The backend answers early while it keeps the pages mapped.
    let rsp = BlkifResponse {
        id: be.held_responses()[0].1.id,
        operation: BLKIF_OP_READ,
        status: BLKIF_RSP_OKAY,
    };
    assert!(be.push_forged(tb.xen(), 0, rsp));
    let c = disk.poll().expect("the forged response completes the read");
    // The backend can still write those pages: the data cannot be trusted,
    // so the read fails with its buffer untouched and the device breaks
    // (Linux's blkfront since XSA-396).
    let DeviceState::Broken(cause) = disk.state() else {
        panic!("the device is {:?}, not broken", disk.state());
    };
    assert!(matches!(cause, Broken::Protocol(Violation::StillMapped(_))));
    assert_eq!((c.token, c.result), (t, Err(IoError::Broken(cause))));
    assert_eq!(c.buf, Some(vec![0xcc; 8192]), "the buffer is untouched");
    let q = disk.quarantined();
    assert_eq!(q, 2, "both data pages are still mapped: quarantined");
    // Nothing more goes out, so no quarantined page can come back.
    assert_eq!(
        disk.write(0, &pattern(1, 8192)),
        Err(IoError::Broken(cause))
    );
    assert_eq!(
        be.stats().reused_while_mapped,
        0,
        "a mapped page was reused"
    );
    assert_eq!(disk.quarantined(), q);
    let (grants, ..) = guest.held();
    assert!(grants >= 2, "the quarantined grants are still active");
    // The backend unmaps everything once the frontend is Closed; close
    // retries the quarantined revocations then, and nothing is left.
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn eagain_storms_on_transactions_are_retried_then_reported() {
    // A storm shorter than the retry budget: probe succeeds.
    let tb = Testbed::new([backend(true)]);
    let guest = tb.guest();
    tb.xenstored().fail_next_commits(5);
    let cfg = Config {
        transaction_retries: 8,
        ..one_queue()
    };
    let mut disk = guest.probe(0, cfg).expect("retried");
    disk.write(0, &pattern(2, 4096)).unwrap();
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));

    // A storm longer than it: a typed error, nothing left behind.
    let tb = Testbed::new([backend(true)]);
    let guest = tb.guest();
    tb.xenstored().fail_next_commits(1000);
    let cfg = Config {
        transaction_retries: 8,
        ..one_queue()
    };
    let err = guest.probe(0, cfg).expect_err("must fail");
    assert_eq!(err.error, Error::XenStore(XsError::RetriesExhausted));
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn a_commit_storm_at_teardown_leaves_no_key_naming_a_freed_grant() {
    // Found by the fuzzer: a probe fails after publishing its rings (a
    // hotplug script slower than the connect bound), and xenstore then
    // refuses more commits than the retry budget. The ring keys must still
    // go (removed outside a transaction), or, if a key stays, the grant
    // reference it names must never be handed out again.
    let mut cfg = backend(true);
    cfg.hotplug_delay_ns = 30_000_000;
    let tb = Testbed::new([cfg]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let probe_cfg = Config {
        connect_timeout_ns: 20_000_000,
        transaction_retries: 4,
        ..one_queue()
    };
    // The publish commits; the storm hits the commits after it.
    let fe = be.frontend_path();
    let xsd = tb.xenstored().clone();
    let storm = tb.xen().add_device(StormWhen {
        xsd: xsd.clone(),
        key: format!("{fe}/ring-ref"),
        fired: false,
    });
    let err = guest.probe(0, probe_cfg).expect_err("the probe fails");
    assert!(
        matches!(
            err.error,
            Error::XenStore(XsError::RetriesExhausted)
                | Error::Xenbus(XenbusError::StateTimeout { .. })
        ),
        "{err}"
    );
    tb.xen().remove_device(storm.id());
    let left: Vec<String> = xsd
        .directory(DomId::DOM0, &fe)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.starts_with("ring-ref") || k == "event-channel")
        .collect();
    assert!(left.is_empty(), "ring keys left behind: {left:?}");
    assert_eq!(guest.held(), (0, 0, 0));
}

/// Makes xenstored refuse the next 200 commits once `key` exists.
struct StormWhen {
    xsd: xenblk::sim::xenstored::XenStored,
    key: String,
    fired: bool,
}

impl xenblk::sim::SimDevice for StormWhen {
    fn step(&mut self, _xen: &xenblk::sim::SimXen) -> bool {
        if self.fired || self.xsd.read(DomId::DOM0, &self.key).is_err() {
            return false;
        }
        self.fired = true;
        self.xsd.fail_next_commits(200);
        true
    }
    fn name(&self) -> &str {
        "commit-storm"
    }
}

#[test]
fn spurious_event_storms_do_not_livelock() {
    let tb = Testbed::new([backend(true)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).unwrap();
    be.update_faults(|f| f.hold_responses = true);
    let t = disk.submit_read(8, vec![0; 4096]).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    // 20 000 notifications with nothing on the ring: every poll returns at
    // once with nothing.
    for _ in 0..20_000 {
        assert!(be.notify_frontend(tb.xen(), 0));
        assert!(disk.poll().is_none());
    }
    be.update_faults(|f| f.spurious_notifications = 50_000);
    let _ = tb.xen().run_until_idle();
    assert!(disk.poll().is_none());
    // The real response still gets through, and blocking I/O amid a storm
    // completes.
    assert!(be.release_held(tb.xen(), 0, |_| {}));
    let c = disk.poll().expect("completion after the storm");
    assert_eq!((c.token, c.result), (t, Ok(())));
    be.update_faults(|f| {
        f.hold_responses = false;
        f.spurious_notifications = 50_000;
    });
    disk.write(0, &pattern(4, 4096)).unwrap();
    assert_eq!(disk.state(), DeviceState::Connected);
    assert!(be.stats().notifications_sent > 100_000);
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn a_full_ring_queues_in_the_driver_and_recovers() {
    let tb = Testbed::new([backend(true)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).unwrap();
    be.update_faults(|f| f.hold_responses = true);
    let slots = disk.info().negotiated.ring_slots as usize;
    assert_eq!(slots, 32);
    // Eight more writes than slots, then a flush: all accepted, in order.
    let mut tokens = Vec::new();
    for i in 0..slots as u64 + 8 {
        let t = disk
            .submit_write(i * 8, pattern(i, 4096))
            .expect("accepted");
        tokens.push(t);
        disk.kick();
    }
    let flush = disk.submit_flush().expect("accepted");
    let _ = tb.xen().run_until_idle();
    assert_eq!(
        be.held_responses().len(),
        slots,
        "only the ring's worth went out"
    );
    assert_eq!(disk.in_flight(), slots);
    assert_eq!(disk.outstanding(), slots + 9);
    // One answer frees one slot, and the oldest waiting request takes it.
    assert!(be.release_held(tb.xen(), 0, |_| {}));
    let c = disk.poll().expect("one completion");
    assert_eq!((c.token, c.result), (tokens[0], Ok(())));
    let _ = tb.xen().run_until_idle();
    assert_eq!(be.held_responses().len(), slots);
    let mut done = Vec::new();
    while done.len() < slots + 8 {
        while !be.held_responses().is_empty() {
            assert!(be.release_held(tb.xen(), 0, |_| {}));
        }
        done.extend(drain(&mut disk));
        let _ = tb.xen().run_until_idle();
    }
    assert!(done.iter().all(|c| c.result.is_ok()));
    let order: Vec<_> = done.iter().map(|c| c.token).collect();
    let mut want = tokens[1..].to_vec();
    want.push(flush);
    assert_eq!(order, want, "completed in submission order");
    be.update_faults(|f| f.hold_responses = false);
    for i in [0u64, 39] {
        let mut back = vec![0; 4096];
        disk.read(i * 8, &mut back).unwrap();
        assert_eq!(back, pattern(i, 4096));
    }
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}

#[test]
fn xenstore_connection_errors_are_typed_and_leak_nothing() {
    // Garbage instead of a reply during probe: a typed error, nothing held.
    let tb = Testbed::new([backend(true)]);
    let guest = tb.guest();
    assert!(tb.xenstored().reply_garbage(tb.domid(), vec![0xff; 40]));
    let err = guest
        .probe(0, one_queue())
        .expect_err("garbage must fail the probe");
    assert!(
        matches!(
            err.error,
            Error::XenStore(XsError::Malformed(_) | XsError::Connection)
        ),
        "{err}"
    );
    assert_eq!(guest.held(), (0, 0, 0));
    assert!(guest.store().lock().is_broken());

    // The connection dropped while connected: the rings keep working (they
    // do not need xenstore), state checks fail with a typed error, and
    // close still gives back everything the backend does not map.
    let tb = Testbed::new([backend(true)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let mut disk = guest.probe(0, one_queue()).unwrap();
    disk.write(0, &pattern(5, 4096)).unwrap();
    assert!(tb.xenstored().drop_connection(tb.domid()));
    assert!(disk.check_backend().is_err());
    let mut back = vec![0; 4096];
    disk.read(0, &mut back).unwrap();
    assert_eq!(back, pattern(5, 4096));
    assert!(disk.close().is_err(), "close says the state switch failed");
    assert_eq!(disk.state(), DeviceState::Closed);
    guest.assert_only_mapped_grants_left();
    // The backend never heard of the close and still maps its rings; once
    // it lets go, nothing the frontend holds is granted any more.
    assert!(tb.remove_disk(0));
    drop(be);
    let a = tb.accounting();
    assert_eq!(
        a.grants_mapped_by_others,
        guest.base().grants_mapped_by_others
    );
    assert_eq!(a.bad_frees, 0);
}

/// Regression (found by the `hostile_backend` fuzz target): a read split
/// into parts copied each successful part into the caller's buffer at once,
/// so a read that failed as a whole had still written into the buffer.
#[test]
fn a_read_with_one_failed_part_leaves_the_buffer_alone() {
    let tb = Testbed::new([backend(false)]);
    let be = tb.backend(0);
    let guest = tb.guest();
    let cfg = Config {
        max_indirect_segments: 0,
        ..one_queue()
    };
    let mut disk = guest.probe(0, cfg).unwrap();
    disk.write(0, &pattern(7, 16 * 4096)).unwrap();
    be.update_faults(|f| f.hold_responses = true);
    // 16 pages: a part of 11 segments and one of 5.
    let t = disk.submit_read(0, vec![0xcc; 16 * 4096]).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    assert_eq!(be.held_responses().len(), 2);
    assert!(be.release_held(tb.xen(), 0, |_| {}));
    assert!(disk.poll().is_none(), "one part is still out");
    assert!(be.release_held(tb.xen(), 0, |r| r.status =
        xenblk::abi::blkif::BLKIF_RSP_ERROR));
    let c = disk.poll().expect("the read completes");
    assert_eq!((c.token, c.result), (t, Err(IoError::Backend)));
    assert_eq!(
        c.buf,
        Some(vec![0xcc; 16 * 4096]),
        "a failed read wrote into the caller's buffer"
    );
    // Both parts succeeding still delivers the data.
    let t = disk.submit_read(0, vec![0xcc; 16 * 4096]).unwrap();
    disk.kick();
    let _ = tb.xen().run_until_idle();
    while be.release_held(tb.xen(), 0, |_| {}) {}
    let c = disk.poll().expect("the read completes");
    assert_eq!((c.token, c.result), (t, Ok(())));
    assert_eq!(c.buf, Some(pattern(7, 16 * 4096)));
    assert_eq!(disk.close(), Ok(0));
    assert_eq!(guest.held(), (0, 0, 0));
}
